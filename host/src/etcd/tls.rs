//! TLS to etcd's client port (`https://` endpoints): every member's
//! certificate is checked against the CA the operator names, and this
//! host shows its own certificate when given one (etcd's
//! `--client-cert-auth`).

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

/// The PEM files of TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA (one or more certificates) that signed the members'.
    pub ca: Option<PathBuf>,
    /// This host's certificate (chain), and its private key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The client configuration, or `None` if no file is named.
    pub fn load(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err("a client certificate for etcd needs --etcd-ca too".into());
            }
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate in it", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("etcd client certificate: {e}"))?
            }
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        };
        Ok(Some(Arc::new(config)))
    }
}

/// Whether `e` is a member's refusal of the TLS handshake (this host's
/// certificate, or the lack of one): with TLS 1.3 it comes after the
/// client has finished its part, on the first read. The member handles a
/// request only once the handshake is done on its side, so a request sent
/// meanwhile surely did not happen.
pub fn handshake_refused(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    let Some(rustls::Error::AlertReceived(alert)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        alert,
        A::HandshakeFailure
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

/// A connection to a member: plain, or TLS over TCP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// `tcp` as it is, or with TLS to `host` (its handshake done, within
    /// the timeouts set on `tcp`).
    pub fn new(
        tcp: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        host: &str,
    ) -> Result<Self, String> {
        let Some(config) = tls else {
            return Ok(Self::Plain(tcp));
        };
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
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.read(buf),
            Self::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.write(buf),
            Self::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.flush(),
            Self::Tls(tls) => tls.flush(),
        }
    }
}
