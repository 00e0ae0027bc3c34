//! A streamed answer of one etcd member, read a line at a time as it
//! comes (chunked HTTP/1.1): etcd's watch.

use super::http::{Connection, Failure, left, request_head, send};
use crate::tls::Stream as Transport;
use rustls::ClientConfig;
use std::io::{ErrorKind, Read as _};
use std::sync::Arc;
use std::time::Instant;

/// A streamed answer (chunked), read a line at a time as it comes: etcd's
/// watch.
pub struct Stream {
    stream: Transport,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet handed out as lines.
    body: Vec<u8>,
    chunk: Chunk,
}

/// Where the decoding of the chunked body stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk's size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// After a chunk's bytes, at the line end that closes it.
    End,
    /// The body has ended.
    Done,
}

impl Stream {
    /// Posts `body` to `path` at `authority` and reads the answer's head,
    /// before `deadline`; fails unless the answer is a 200 streamed in
    /// chunks.
    pub fn open(
        authority: &str,
        tls: Option<Arc<ClientConfig>>,
        path: &str,
        headers: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Self, String> {
        let connection = Connection::new(authority, tls);
        let stream = connection.connect(deadline).map_err(|f| match f {
            Failure::NotSent(why) | Failure::NoAnswer(why) => why,
        })?;
        let mut stream = stream.into_inner();
        let head = request_head(authority, path, headers, body.len());
        send(&mut stream, head.as_bytes(), body, deadline).map_err(|e| e.to_string())?;
        let mut this = Self {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            chunk: Chunk::Size,
        };
        let end = loop {
            if let Some(at) = this.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if !this.fill(deadline)? {
                return Err(format!("{authority}: no answer in time"));
            }
        };
        let head = String::from_utf8_lossy(&this.raw[..end]).into_owned();
        this.raw.drain(..end + 4);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        let chunked = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
            })
        });
        if status != "200" || !chunked {
            return Err(format!("{authority}: not a stream: {head:?}"));
        }
        Ok(this)
    }

    /// The next line of the body (its newline kept), or `None` if none
    /// came before `until`. Fails once the stream ended or broke.
    pub fn next_line(&mut self, until: Instant) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(at) = self.body.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.body.drain(..=at).collect()));
            }
            if self.decode()? {
                continue;
            }
            if self.chunk == Chunk::Done {
                return Err("the stream ended".into());
            }
            if !self.fill(until)? {
                return Ok(None);
            }
        }
    }

    /// Reads what has come, waiting until `until`; whether anything came.
    fn fill(&mut self, until: Instant) -> Result<bool, String> {
        let Ok(timeout) = left(until) else {
            return Ok(false);
        };
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut buf = [0; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Decodes what it can of the raw bytes into body bytes; whether it
    /// made progress.
    fn decode(&mut self) -> Result<bool, String> {
        let mut progress = false;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(at) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(progress);
                    };
                    let line = String::from_utf8_lossy(&self.raw[..at]).into_owned();
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| format!("bad chunk size {line:?}"))?;
                    self.raw.drain(..at + 2);
                    self.chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if self.raw.is_empty() {
                        return Ok(progress);
                    }
                    let n = left.min(self.raw.len());
                    self.body.extend(self.raw.drain(..n));
                    self.chunk = if n == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::End => {
                    if self.raw.len() < 2 {
                        return Ok(progress);
                    }
                    self.raw.drain(..2);
                    self.chunk = Chunk::Size;
                }
                Chunk::Done => return Ok(progress),
            }
            progress = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn a_stream_hands_out_lines_across_chunks_as_they_come() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (more, go) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0; 1024];
            let _ = stream.read(&mut head).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n")
                .unwrap();
            go.recv().unwrap();
            stream
                .write_all(b"6\r\n:1}\n{}\r\n2\r\n\n\n\r\n0\r\n\r\n")
                .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = Stream::open(&addr, None, "/w", "", b"{}", deadline).unwrap();
        // Half a line so far: nothing yet.
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(stream.next_line(soon), Ok(None));
        more.send(()).unwrap();
        assert_eq!(
            stream.next_line(deadline),
            Ok(Some(b"{\"a\":1}\n".to_vec()))
        );
        assert_eq!(stream.next_line(deadline), Ok(Some(b"{}\n".to_vec())));
        assert_eq!(stream.next_line(deadline), Ok(Some(b"\n".to_vec())));
        assert!(stream.next_line(deadline).is_err());
    }
}
