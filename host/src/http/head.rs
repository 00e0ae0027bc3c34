//! A request's size as lockd counts it against its bounds.
//!
//! tiny_http hands out requests parsed, so the head's bytes are counted
//! back from its parts: the request line, each header as `Name: value`,
//! each line with its CRLF, and the empty line ending the head. For the
//! way clients write heads this is the number of bytes sent; whitespace
//! around a header's value that a client adds beyond one space is not
//! counted.

use super::answer::Answer;
use super::connections::PER_REQUEST;
use tiny_http::Request;

/// Bodies tiny_http reads along with the head (and holds while the
/// request queues): those it is told are at most this long.
const READ_WITH_HEAD: usize = 1024;

/// The bytes of `request`'s head.
pub fn len(request: &Request) -> usize {
    // "METHOD SP target SP HTTP/x.y CRLF"
    let line = request.method().as_str().len() + 1 + request.url().len() + 1 + 8 + 2;
    let headers: usize = request
        .headers()
        .iter()
        .map(|h| h.field.as_str().len() + 2 + h.value.len() + 2)
        .sum();
    line + headers + 2
}

/// The bytes `request` was sent in: its head and its body as long as it
/// says it is.
pub fn sent(request: &Request, head: usize) -> usize {
    head.saturating_add(request.body_length().unwrap_or(0))
}

/// What lockd holds while `request` waits its turn: its head, its body if
/// tiny_http read it with the head, and the request's own parts.
pub fn held(request: &Request, head: usize) -> usize {
    let body = request
        .body_length()
        .filter(|&len| len <= READ_WITH_HEAD)
        .unwrap_or(0);
    head + body + PER_REQUEST
}

/// The refusal of a head over `max` bytes.
pub fn too_long(max: usize) -> Answer {
    Answer::text(
        431,
        format!("request head larger than {max} bytes (--max-header)\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::{Header, Method, TestRequest};

    #[test]
    fn a_head_counts_as_sent() {
        let request: Request = TestRequest::new()
            .with_method(Method::Post)
            .with_path("/RPC2")
            .with_header(Header::from_bytes("Host", "lockd").unwrap())
            .with_body("hello")
            .into();
        let head = "POST /RPC2 HTTP/1.1\r\nHost: lockd\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(len(&request), head.len());
        assert_eq!(sent(&request, len(&request)), head.len() + 5);
        assert_eq!(held(&request, 10), 10 + 5 + PER_REQUEST);
    }
}
