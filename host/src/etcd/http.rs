//! One JSON request and its answer over a kept-alive HTTP/1.1 connection
//! to one etcd member's client port, within a deadline. Nothing here knows
//! etcd's API.

use crate::tls::Stream as Transport;
use rustls::ClientConfig;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far an exchange got before it failed: the caller must know whether
/// the member may have acted on the request.
#[derive(Debug)]
pub enum Failure {
    /// Nothing was sent (the connection could not be made): the request
    /// surely did not happen.
    NotSent(String),
    /// Sent, but no whole answer came back: it may have happened.
    NoAnswer(String),
}

/// A member's answer: the HTTP status and the body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A connection to one member, made on first use and again after a
/// failure.
pub struct Connection {
    authority: String,
    /// TLS to the member, if its endpoint is `https://`.
    tls: Option<Arc<ClientConfig>>,
    stream: Option<BufReader<Transport>>,
}

impl Connection {
    /// A connection to `authority` (`host:port`), with `tls` if given,
    /// not yet made.
    pub fn new(authority: &str, tls: Option<Arc<ClientConfig>>) -> Self {
        Self {
            authority: authority.to_owned(),
            tls,
            stream: None,
        }
    }

    /// Posts `body` (JSON) to `path` with extra `headers`, and reads the
    /// answer, all before `deadline`. A kept-alive connection the member
    /// closed meanwhile is made again once, before anything else is sent.
    pub fn post(
        &mut self,
        path: &str,
        headers: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let request = request_head(&self.authority, path, headers, body.len());
        let reused = self.stream.is_some();
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.connect(deadline)?,
        };
        let sent = send(stream.get_mut(), request.as_bytes(), body, deadline);
        let sent = match sent {
            // A kept-alive connection the member had closed: nothing of
            // this request reached it.
            Err(_) if reused => {
                stream = self.connect(deadline)?;
                send(stream.get_mut(), request.as_bytes(), body, deadline)
            }
            other => other,
        };
        // A write that failed left the request incomplete (bytes it could
        // not hand to the kernel never left), and a member acts only on a
        // whole request.
        if let Err(e) = sent {
            return Err(Failure::NotSent(format!(
                "sending to {}: {e}",
                self.authority
            )));
        }
        match read_answer(&mut stream, deadline) {
            Ok((answer, keep)) => {
                if keep {
                    self.stream = Some(stream);
                }
                Ok(answer)
            }
            Err(e) if super::tls::handshake_refused(&e) => Err(Failure::NotSent(format!(
                "{} refused the TLS handshake: {e}",
                self.authority
            ))),
            Err(e) => Err(Failure::NoAnswer(format!(
                "reading {}'s answer: {e}",
                self.authority
            ))),
        }
    }

    pub(super) fn connect(&self, deadline: Instant) -> Result<BufReader<Transport>, Failure> {
        let not_sent =
            |e: String| Failure::NotSent(format!("connecting to {}: {e}", self.authority));
        let addr: SocketAddr = self
            .authority
            .to_socket_addrs()
            .map_err(|e| not_sent(e.to_string()))?
            .next()
            .ok_or_else(|| not_sent("no address".into()))?;
        let time = left(deadline).map_err(not_sent)?;
        let stream =
            TcpStream::connect_timeout(&addr, time).map_err(|e| not_sent(e.to_string()))?;
        let left = left(deadline).map_err(not_sent)?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(left)))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|e| not_sent(e.to_string()))?;
        // A handshake that fails has sent nothing of a request.
        let transport =
            Transport::new(stream, self.tls.as_ref(), &self.authority).map_err(not_sent)?;
        Ok(BufReader::new(transport))
    }
}

/// The head of a POST of `length` bytes of JSON to `path` at `authority`,
/// with extra `headers` (each ending in CRLF).
pub(super) fn request_head(authority: &str, path: &str, headers: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {length}\r\n\r\n"
    )
}

/// The time left until `deadline`, or an error once it has passed.
pub(super) fn left(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("deadline passed".into());
    }
    Ok(left)
}

pub(super) fn send(
    stream: &mut Transport,
    head: &[u8],
    body: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    let timeout = left(deadline).map_err(std::io::Error::other)?;
    stream.tcp().set_write_timeout(Some(timeout))?;
    stream.write_all(head)?;
    stream.write_all(body)?;
    stream.flush()
}

/// Reads one answer; returns it and whether the connection may be used
/// again.
fn read_answer(
    stream: &mut BufReader<Transport>,
    deadline: Instant,
) -> std::io::Result<(Answer, bool)> {
    let mut line = String::new();
    let next_line = |stream: &mut BufReader<Transport>, line: &mut String| {
        line.clear();
        let timeout = left(deadline).map_err(std::io::Error::other)?;
        stream.get_ref().tcp().set_read_timeout(Some(timeout))?;
        if stream.read_line(line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    };
    next_line(stream, &mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        next_line(stream, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    let timeout = left(deadline).map_err(std::io::Error::other)?;
    stream.get_ref().tcp().set_read_timeout(Some(timeout))?;
    if chunked {
        loop {
            next_line(stream, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, if any, up to the empty line that ends them.
                loop {
                    next_line(stream, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            stream.read_exact(&mut body[start..])?;
            next_line(stream, &mut line)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        stream.read_exact(&mut body)?;
    } else {
        stream.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((Answer { status, body }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering each request on one connection with the next of
    /// `answers`.
    fn serve(answers: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            for answer in answers {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                reader.get_mut().write_all(answer).unwrap();
            }
        });
        addr
    }

    #[test]
    fn chunked_and_sized_answers_follow_each_other_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\nGrpc-Trailer-X: y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        ]);
        let mut connection = Connection::new(&addr, None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = connection.post("/x", "", b"{}", deadline).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"{\"a\":1}\n"[..])
        );
        let second = connection.post("/y", "", b"{}", deadline).unwrap();
        assert_eq!((second.status, second.body.as_slice()), (200, &b"{}"[..]));
    }
}
