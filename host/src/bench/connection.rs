//! One keep-alive HTTP/1.1 connection of the load, plain or TLS.

use crate::tls::Stream;
use anyhow::{Context as _, bail};
use rustls::ClientConfig;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

pub struct Connection {
    stream: BufReader<Stream>,
    head: String,
}

impl Connection {
    /// Connects to `addr`, with TLS if `tls` is given (the handshake done).
    pub fn open(addr: &str, tls: Option<&Arc<ClientConfig>>) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let stream = Stream::new(tcp, tls, addr).map_err(anyhow::Error::msg)?;
        Ok(Self {
            stream: BufReader::new(stream),
            head: format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\n"),
        })
    }

    /// Posts `body` and returns whether the answer was a fault.
    pub fn call(&mut self, body: &str) -> anyhow::Result<bool> {
        let request = format!("{}Content-Length: {}\r\n\r\n{body}", self.head, body.len());
        // Calls alternate with answers: nothing is buffered unread here.
        let writer = self.stream.get_mut();
        writer.write_all(request.as_bytes())?;
        writer.flush()?;
        let mut line = String::new();
        let mut length = None;
        let mut status_line = true;
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            if status_line {
                if !line.starts_with("HTTP/1.1 200") {
                    bail!("HTTP error: {}", line.trim());
                }
                status_line = false;
            } else if line == "\r\n" {
                break;
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no Content-Length")?];
        self.stream.read_exact(&mut body)?;
        Ok(body.windows(7).any(|w| w == b"<fault>"))
    }
}
