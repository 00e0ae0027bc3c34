//! TLS as a client (to etcd's members, and from the command line to
//! lockd): the roots to check the server against, the client's own
//! certificate if it has one, and a stream that is plain TCP or TLS.

use super::files;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a client's trust and identity come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFiles<'a> {
    /// CA certificates to check the server against; `None` for the
    /// system's.
    pub ca: Option<&'a Path>,
    /// The client's certificate (chain) and private key, shown when the
    /// server asks for one.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl ClientFiles<'_> {
    /// The client configuration these files make.
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        let roots = match self.ca {
            Some(ca) => files::roots(ca)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(files::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (self.cert, self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(files::certificates(cert)?, files::private_key(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?,
            _ => return Err("a client certificate and its key go together".into()),
        };
        Ok(Arc::new(config))
    }
}

/// The system's CA certificates.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(ToString::to_string);
        return Err(format!(
            "no CA certificates found on this system{}: name one with --ca",
            why.map_or(String::new(), |why| format!(" ({why})"))
        ));
    }
    Ok(roots)
}

/// A connection to a server: plain, or TLS over TCP.
pub enum Stream {
    Plain(Timed),
    Tls(Box<StreamOwned<ClientConnection, Timed>>),
}

/// TCP whose reads and writes end by a deadline if it has one, however
/// slowly bytes come: each waits at most what is left of it (TLS reads a
/// record in as many reads as its bytes take).
pub struct Timed {
    tcp: TcpStream,
    deadline: Option<Instant>,
}

/// What is left until `deadline`; an error once it has passed.
pub fn time_left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            ErrorKind::TimedOut,
            "the call's time ran out",
        ));
    }
    Ok(left)
}

impl Timed {
    /// `tcp` without a deadline: its own timeouts apply.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            deadline: None,
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            self.tcp.set_read_timeout(Some(time_left(deadline)?))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            self.tcp.set_write_timeout(Some(time_left(deadline)?))?;
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl Deref for Timed {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Stream {
    /// `tcp` as it is, or with TLS to the server at `authority`
    /// (`host:port`, the port optional; its certificate must name the
    /// host), the handshake done within the timeouts set on `tcp`.
    pub fn new(
        tcp: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        authority: &str,
    ) -> Result<Self, String> {
        Self::by(tcp, tls, authority, None)
    }

    /// [`new`](Self::new), every read and write (the TLS handshake's too)
    /// ending by `deadline` if given.
    pub fn by(
        tcp: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        authority: &str,
        deadline: Option<Instant>,
    ) -> Result<Self, String> {
        let tcp = Timed { tcp, deadline };
        let Some(config) = tls else {
            return Ok(Self::Plain(tcp));
        };
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let mut connection =
            ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        let mut tcp = tcp;
        while connection.is_handshaking() {
            connection
                .complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        }
        Ok(Self::Tls(Box::new(StreamOwned::new(connection, tcp))))
    }

    /// The TCP connection beneath, for its timeouts.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => &tcp.tcp,
            Self::Tls(tls) => &tls.get_ref().tcp,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.read(buf),
            Self::Tls(tls) => tls.read(buf).map_err(|e| alert_behind(tls, e)),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.write(buf),
            Self::Tls(tls) => tls.write(buf).map_err(|e| alert_behind(tls, e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.flush(),
            Self::Tls(tls) => tls.flush().map_err(|e| alert_behind(tls, e)),
        }
    }
}

/// The server's alert behind a failed read or write, if it sent one: with
/// TLS 1.3 a server refuses a client's certificate (or its lack of one)
/// after the client has finished its handshake, and the client's next
/// write may then fail (broken pipe) before it reads why.
fn alert_behind(
    tls: &mut StreamOwned<ClientConnection, Timed>,
    error: std::io::Error,
) -> std::io::Error {
    if matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(_))
    ) {
        return error;
    }
    let _ = tls.sock.set_nonblocking(true);
    let read = tls.conn.read_tls(&mut tls.sock);
    let _ = tls.sock.set_nonblocking(false);
    match (read, tls.conn.process_new_packets()) {
        (Ok(_), Err(alert @ rustls::Error::AlertReceived(_))) => {
            std::io::Error::new(std::io::ErrorKind::InvalidData, alert)
        }
        _ => error,
    }
}
