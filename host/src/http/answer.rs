//! An HTTP answer, written through tiny_http, or byte for byte when the
//! connection must close after it (tiny_http does not let a response say
//! `Connection: close`).

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};
use tiny_http::{Header, Request, Response};

/// Status, headers and body of one answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
        }
    }

    /// Plain text.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the answer to `request`'s connection; with `close`, it says
    /// `Connection: close` so that the client opens no further request on
    /// it.
    pub fn send(self, request: Request, close: bool) -> std::io::Result<()> {
        if !close {
            let mut response = Response::from_data(self.body).with_status_code(self.status);
            for (name, value) in self.headers {
                let header =
                    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header");
                response.add_header(header);
            }
            return request.respond(response);
        }
        let bytes = self.closing_bytes();
        let mut writer = request.into_writer();
        writer.write_all(&bytes)?;
        writer.flush()
    }

    /// The answer as written when the connection closes after it.
    pub fn closing_bytes(&self) -> Vec<u8> {
        self.bytes("", "Connection: close\r\n")
    }

    /// The answer as tiny_http writes it on a connection that stays open
    /// (its `Server` and `Date` headers first), for writing it without
    /// tiny_http.
    pub fn keep_alive_bytes(&self) -> Vec<u8> {
        let date = DATE.with_borrow_mut(|(second, text)| {
            let now = SystemTime::now();
            let this = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if *second != this || text.is_empty() {
                *second = this;
                *text = httpdate::fmt_http_date(now);
            }
            text.clone()
        });
        self.bytes(&format!("Server: tiny-http (Rust)\r\nDate: {date}\r\n"), "")
    }

    fn bytes(&self, first: &str, connection: &str) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n{first}",
            self.status,
            reason(self.status)
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\n{connection}\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

thread_local! {
    /// The `Date` header's text, made once a second per thread: the
    /// second and its text.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}
