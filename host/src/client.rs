//! A small XML-RPC client for the command line: one HTTP/1.0 request per
//! call, over plain TCP or TLS. A failed call says how far it got, which
//! is what tells a caller whether it may have happened
//! ([`failover`](crate::failover) acts on it).

use crate::tls::{ClientFiles, Stream, time_left};
use crate::xmlrpc::{self, Fault, Value};
use anyhow::{Context as _, bail};
use base64::Engine as _;
use rustls::ClientConfig;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The longest answer read: far above any lockd answer (lists come in
/// pages), well below what would hurt the client.
const MAX_ANSWER: usize = 64 << 20;

/// Where a daemon listens: `http://host:port/path` or `https://...`.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    tls: Option<Arc<ClientConfig>>,
    path: String,
    /// The `Authorization` header's value, if the URL names a user.
    authorization: Option<String>,
    timeout: Duration,
}

/// Why a call did not return a value.
#[derive(Debug)]
pub enum CallError {
    /// The daemon answered with a fault.
    Fault(Fault),
    /// The daemon could not be reached (name, connection or TLS handshake):
    /// the call was not sent, so it did not happen.
    Unreached(anyhow::Error),
    /// The daemon answered its own HTTP 503: it turned the call away
    /// before reading it (`--max-connections`).
    Refused(String),
    /// The call was sent but no whole answer came (timed out, the
    /// connection was cut, or a proxy in front answered 502, 503 or 504):
    /// it may have happened.
    NoAnswer(anyhow::Error),
    /// The daemon answered with something else than an XML-RPC response
    /// (another HTTP status, or not XML-RPC): not a lockd daemon, or not
    /// one this client may use.
    Transport(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Fault(fault) => f.write_str(&fault.message),
            CallError::Refused(body) => write!(f, "the daemon answered HTTP 503: {body}"),
            CallError::Unreached(e) | CallError::NoAnswer(e) | CallError::Transport(e) => {
                write!(f, "{e:#}")
            }
        }
    }
}

impl Client {
    /// A client for `url`, which must be
    /// `http[s]://[user:password@]host[:port][/path]` (user and password
    /// percent-encoded, as Python's `ServerProxy` takes them): with a user,
    /// calls authenticate with HTTP Basic. An https URL's server must show
    /// a certificate of one of the system's CAs.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Self::with_tls(url, &ClientFiles::default())
    }

    /// A client for `url` whose TLS trusts and shows what `files` name;
    /// naming files makes sense only for an https URL.
    pub fn with_tls(url: &str, files: &ClientFiles) -> anyhow::Result<Self> {
        let (rest, default_port, tls) = if let Some(rest) = url.strip_prefix("https://") {
            let config = files.config().map_err(anyhow::Error::msg)?;
            (rest, 443, Some(config))
        } else if let Some(rest) = url.strip_prefix("http://") {
            if files.ca.is_some() || files.cert.is_some() {
                bail!("{url:?} is not an https:// URL: certificates are for TLS");
            }
            (rest, 80, None)
        } else {
            bail!("{url:?} is not an http:// or https:// URL");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (authorization, authority) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let credentials = percent_decode(userinfo)
                    .with_context(|| format!("{url:?} has a malformed user or password"))?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                (Some(format!("Basic {encoded}")), host)
            }
            None => (None, authority),
        };
        if authority.is_empty() || authority.starts_with(':') {
            bail!("{url:?} names no host");
        }
        let has_port = authority
            .rsplit(':')
            .next()
            .is_some_and(|p| p.parse::<u16>().is_ok())
            && !authority.ends_with(']');
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        Ok(Self {
            authority,
            tls,
            path: path.to_owned(),
            authorization,
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client, giving up on a call that has not been answered
    /// whole `timeout` after it set out (30 s by default), name lookup and
    /// connection included.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// Calls `method` with `params`.
    pub fn call(&self, method: &str, params: &[Value]) -> Result<Value, CallError> {
        let deadline = Instant::now() + self.timeout;
        let body = xmlrpc::encode_call(method, params);
        let mut stream = self
            .send(body.as_bytes(), deadline)
            .map_err(CallError::Unreached)?;
        let response = read_answer(&mut stream).map_err(CallError::NoAnswer)?;
        let body = answer_body(response)?;
        match xmlrpc::parse_response(&body) {
            Ok(result) => result.map_err(CallError::Fault),
            Err(e) => Err(CallError::Transport(anyhow::anyhow!(
                "the daemon's answer is not an XML-RPC response: {e}"
            ))),
        }
    }

    /// Connects and writes the request: once this returns, the daemon may
    /// act on it. Every read and write of the stream returned ends by
    /// `deadline`.
    fn send(&self, body: &[u8], deadline: Instant) -> anyhow::Result<Stream> {
        let tcp = connect(&self.authority, deadline)?;
        let addr = tcp.peer_addr()?;
        let mut stream = Stream::by(tcp, self.tls.as_ref(), &self.authority, Some(deadline))
            .map_err(anyhow::Error::msg)?;
        let authorization = self
            .authorization
            .as_ref()
            .map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let head = format!(
            "POST {} HTTP/1.0\r\nHost: {}\r\nContent-Type: text/xml\r\n{authorization}Content-Length: {}\r\n\r\n",
            self.path,
            self.authority,
            body.len()
        );
        // One write: a request is either sent whole or the daemon cannot
        // act on it (it waits for the body its head announced).
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream
            .write_all(&request)
            .with_context(|| format!("sending the call to lockd at {addr}"))?;
        Ok(stream)
    }
}

/// A connection to the first address of `authority` that takes one, by
/// `deadline`.
fn connect(authority: &str, deadline: Instant) -> anyhow::Result<TcpStream> {
    let mut failed = None;
    for addr in resolve(authority, time_left(deadline)?)? {
        match TcpStream::connect_timeout(&addr, time_left(deadline)?) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => {
                failed =
                    Some(anyhow::Error::new(e).context(format!("connecting to lockd at {addr}")))
            }
        }
    }
    Err(failed.unwrap_or_else(|| anyhow::anyhow!("{authority} has no address")))
}

/// The addresses of `authority`, looked up within `within` (a name server
/// that does not answer holds up only a thread of its own).
fn resolve(authority: &str, within: Duration) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(addr) = authority.parse() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = mpsc::channel();
    let name = authority.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(name.to_socket_addrs().map(Iterator::collect));
    });
    match rx.recv_timeout(within) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(e).with_context(|| format!("resolving {authority}")),
        Err(_) => bail!("resolving {authority} took longer than the call's time"),
    }
}

/// Reads the answer to its end (or the length its head declares), by the
/// stream's deadline however slowly it comes, and no longer than
/// [`MAX_ANSWER`].
fn read_answer(stream: &mut Stream) -> anyhow::Result<Vec<u8>> {
    let mut response = Vec::new();
    let mut buf = [0; 16 * 1024];
    // Where the final head ends and the body it declares, once read.
    let mut head = None;
    loop {
        if head.is_none() {
            head = final_head(&response);
        }
        if let Some((end, _, Some(length))) = &head
            && response.len() >= end + length
        {
            return Ok(response);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(response),
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The deadline passed, or the socket's time limit (what was
            // left of it) ran out.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!(
                    "no whole answer came within the call's time ({} bytes did)",
                    response.len()
                )
            }
            Err(e) => return Err(e).context("reading the daemon's answer"),
        }
        if response.len() > MAX_ANSWER {
            bail!("the answer is longer than {} MiB", MAX_ANSWER >> 20);
        }
    }
}

/// Where the final head of `response` ends (past any 1xx interim ones),
/// that head, and the body length it declares; `None` until it is whole.
fn final_head(response: &[u8]) -> Option<(usize, String, Option<usize>)> {
    let mut start = 0;
    loop {
        let end = start
            + response[start..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")?
            + 4;
        let head = String::from_utf8_lossy(&response[start..end - 4]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status.len() == 3 && status.starts_with('1') {
            start = end;
            continue;
        }
        let declared = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        return Some((end, head, declared));
    }
}

/// The body of an HTTP answer read to its end (or to the length its head
/// declares), if it is a whole 200 answer.
fn answer_body(mut response: Vec<u8>) -> Result<Vec<u8>, CallError> {
    let Some((end, head, declared)) = final_head(&response) else {
        return Err(CallError::NoAnswer(anyhow::anyhow!(
            "the daemon's answer ended before its HTTP header did ({} bytes)",
            response.len()
        )));
    };
    let mut body = response.split_off(end);
    if let Some(declared) = declared {
        if body.len() < declared {
            return Err(CallError::NoAnswer(anyhow::anyhow!(
                "the daemon's answer was cut short ({} of {declared} bytes)",
                body.len()
            )));
        }
        body.truncate(declared);
    }
    let status = head.split_whitespace().nth(1).unwrap_or("");
    // Enough of the body to tell what answered, on one line.
    let text = || {
        let text = String::from_utf8_lossy(&body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    };
    match status {
        "200" => Ok(body),
        // lockd's own 503, sent before it reads the call.
        "503" if body.starts_with(b"lockd has ") => Err(CallError::Refused(text())),
        // A proxy's: the call may have reached a lockd behind it.
        "502" | "503" | "504" => Err(CallError::NoAnswer(anyhow::anyhow!(
            "answered HTTP {status} by something in front of lockd: {}",
            text()
        ))),
        _ => Err(CallError::Transport(anyhow::anyhow!(
            "the daemon answered HTTP {status}: {}",
            text()
        ))),
    }
}

/// `%XX` escapes decoded; anything else as it is.
fn percent_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).context("a % escape is cut short")?;
            let hex = std::str::from_utf8(hex)
                .ok()
                .context("a % escape is not hex")?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .ok()
                    .context("a % escape is not hex")?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}
