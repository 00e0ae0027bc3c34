//! Where HTTP/1.1 messages end, for the front door ([`super::front`]): a
//! request's or an answer's head, and how its body is delimited. The
//! front passes bytes on unchanged; it only needs to know when one
//! request has been passed on whole and when its answer has come back.
//!
//! A request is refused when lockd's HTTP server could delimit it another
//! way than the front: both `Content-Length` and `Transfer-Encoding`, a
//! coding other than `chunked`, or lengths that disagree.

/// How a message's body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// This many bytes.
    Length(u64),
    /// Chunks, the last of length 0.
    Chunked(Chunks),
    /// Everything until the sender closes (answers only).
    UntilClose,
}

/// A request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Its length in bytes, the empty line included.
    pub len: usize,
    pub body: Body,
    /// Whether it is a `HEAD` request, whose answer has no body.
    pub head_only: bool,
    /// Whether it is a `POST`, and to which path (without the query).
    pub post: bool,
    pub path: String,
}

/// An answer's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerHead {
    pub len: usize,
    pub body: Body,
    /// A 1xx answer: the final one follows.
    pub interim: bool,
    /// The server closes the connection after it.
    pub close: bool,
}

/// Why a message cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x, or delimited in a way that could be read two ways.
    Malformed(String),
    /// More header fields than [`MAX_FIELDS`].
    TooManyFields,
}

/// The most header fields a head may have.
pub const MAX_FIELDS: usize = 1024;

/// The head at the start of `bytes`, if it is complete there.
pub fn request(bytes: &[u8]) -> Result<Option<RequestHead>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e)),
    };
    // The HTTP server ends lines at CRLF only: a head it would read
    // another way than httparse is not passed on.
    let bare_lf = bytes[..len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
    if bare_lf {
        return Err(Refusal::Malformed("a line ending without CR".into()));
    }
    let body = match delimiting(parsed.headers)? {
        (None, None) => Body::None,
        (Some(0), None) => Body::None,
        (Some(n), None) => Body::Length(n),
        (None, Some(Coding::Chunked)) => Body::Chunked(Chunks::default()),
        (None, Some(Coding::Other)) => {
            return Err(Refusal::Malformed(
                "a Transfer-Encoding other than chunked".into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Refusal::Malformed(
                "both Content-Length and Transfer-Encoding".into(),
            ));
        }
    };
    let path = parsed.path.unwrap_or_default();
    Ok(Some(RequestHead {
        len,
        body,
        head_only: parsed.method == Some("HEAD"),
        post: parsed.method == Some("POST"),
        path: path.split('?').next().unwrap_or_default().to_owned(),
    }))
}

/// The answer's head at the start of `bytes`, if it is complete there,
/// for a request that was a `HEAD` request if `to_head`.
pub fn answer(bytes: &[u8], to_head: bool) -> Result<Option<AnswerHead>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e)),
    };
    let status = parsed.code.unwrap_or(0);
    let interim = (100..200).contains(&status);
    let says = |token: &str| {
        parsed.headers.iter().any(|f| {
            f.name.eq_ignore_ascii_case("connection")
                && String::from_utf8_lossy(f.value)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    // HTTP/1.0 closes unless it says it keeps the connection alive.
    let close = says("close") || (parsed.version == Some(0) && !says("keep-alive"));
    let bodiless = interim || to_head || status == 204 || status == 304;
    let body = match delimiting(parsed.headers)? {
        _ if bodiless => Body::None,
        (_, Some(Coding::Chunked)) => Body::Chunked(Chunks::default()),
        (_, Some(Coding::Other)) => Body::UntilClose,
        (Some(0), None) => Body::None,
        (Some(n), None) => Body::Length(n),
        (None, None) => Body::UntilClose,
    };
    let close = close || body == Body::UntilClose;
    Ok(Some(AnswerHead {
        len,
        body,
        interim,
        close,
    }))
}

enum Coding {
    Chunked,
    Other,
}

/// The `Content-Length` and `Transfer-Encoding` of a head.
fn delimiting(fields: &[httparse::Header<'_>]) -> Result<(Option<u64>, Option<Coding>), Refusal> {
    let mut length: Option<u64> = None;
    let mut coding = None;
    for field in fields {
        if field.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(field.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Refusal::Malformed("a Content-Length that is no length".into()))?;
            if length.is_some_and(|l| l != value) {
                return Err(Refusal::Malformed("Content-Lengths that disagree".into()));
            }
            length = Some(value);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(field.value);
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            coding = Some(
                if coding.is_none() && last.eq_ignore_ascii_case("chunked") {
                    Coding::Chunked
                } else {
                    Coding::Other
                },
            );
        }
    }
    Ok((length, coding))
}

fn refusal(e: httparse::Error) -> Refusal {
    match e {
        httparse::Error::TooManyHeaders => Refusal::TooManyFields,
        e => Refusal::Malformed(e.to_string()),
    }
}

/// Where a chunked body is: fed its bytes as they come, it tells how many
/// of them belong to the body, and when the body has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunks {
    state: ChunkState,
    /// Bytes of chunk data so far.
    pub data: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk's size line: its hex digits so far.
    #[default]
    Size0,
    Size(u64),
    /// After the size, an extension up to the line's end.
    Extension(u64),
    SizeEnd(u64),
    /// In a chunk's data: bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or of the
    /// empty line ending the body).
    LineStart,
    Trailer,
    TrailerEnd,
    LastLf,
    Done,
}

impl Chunks {
    /// Feeds `bytes`: how many of them belong to the body, and whether
    /// the body ended with them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), Refusal> {
        use ChunkState::*;
        let bad = |what: &str| Err(Refusal::Malformed(format!("chunked body: {what}")));
        let mut at = 0;
        while at < bytes.len() && self.state != Done {
            if let Data(left) = self.state {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.data += take;
                self.state = if take == left {
                    DataCr
                } else {
                    Data(left - take)
                };
                continue;
            }
            let byte = bytes[at];
            self.state = match self.state {
                Size0 | Size(_) if byte.is_ascii_hexdigit() => {
                    let size = match self.state {
                        Size(n) => n,
                        _ => 0,
                    };
                    let digit = u64::from((byte as char).to_digit(16).unwrap_or(0));
                    match size.checked_mul(16).and_then(|n| n.checked_add(digit)) {
                        Some(n) => Size(n),
                        None => return bad("a chunk size past counting"),
                    }
                }
                Size(n) if byte == b';' || byte == b' ' || byte == b'\t' => Extension(n),
                Size(n) if byte == b'\r' => SizeEnd(n),
                Extension(n) if byte == b'\r' => SizeEnd(n),
                Extension(n) => Extension(n),
                SizeEnd(0) if byte == b'\n' => LineStart,
                SizeEnd(n) if byte == b'\n' => Data(n),
                DataCr if byte == b'\r' => DataLf,
                DataLf if byte == b'\n' => Size0,
                LineStart if byte == b'\r' => LastLf,
                LineStart | Trailer if byte != b'\r' => Trailer,
                Trailer => TrailerEnd,
                TrailerEnd if byte == b'\n' => LineStart,
                LastLf if byte == b'\n' => Done,
                _ => return bad("not chunks"),
            };
            at += 1;
        }
        Ok((at, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_ends_at_its_empty_line_and_says_how_its_body_ends() {
        let bytes = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET";
        let head = request(bytes).unwrap().unwrap();
        assert_eq!(head.len, bytes.len() - 8);
        assert_eq!(head.body, Body::Length(5));
        assert!(!head.head_only);
        assert_eq!(request(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let head = request(b"HEAD / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.body, head.head_only), (Body::None, true));
        let chunked = request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(chunked.unwrap().unwrap().body, Body::Chunked(_)));
    }

    #[test]
    fn a_request_that_could_be_delimited_two_ways_is_refused() {
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "NOT HTTP\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\n",
        ] {
            assert!(
                matches!(request(head.as_bytes()), Err(Refusal::Malformed(_))),
                "{head:?}"
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_FIELDS + 1)
        );
        assert_eq!(request(many.as_bytes()), Err(Refusal::TooManyFields));
    }

    #[test]
    fn an_answer_says_how_its_body_ends() {
        let answer_of = |text: &str, to_head| answer(text.as_bytes(), to_head).unwrap().unwrap();
        let a = answer_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        assert_eq!(
            (a.body, a.interim, a.close),
            (Body::Length(3), false, false)
        );
        let a = answer_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(a.body, Body::None, "an answer to HEAD has no body");
        let a = answer_of("HTTP/1.1 100 Continue\r\n\r\n", false);
        assert!(a.interim);
        let a = answer_of(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(matches!(a.body, Body::Chunked(_)) && a.close);
        let a = answer_of("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((a.body, a.close), (Body::UntilClose, true));
        let a = answer_of("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(a.close, "HTTP/1.0 closes");
        let a = answer_of(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!a.close, "unless it says keep-alive");
    }

    #[test]
    fn chunks_end_after_the_last_chunk_and_its_trailers_whichever_way_they_come_cut() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 1..body.len() {
            let mut chunks = Chunks::default();
            let (used, done) = chunks.feed(&body[..cut]).unwrap();
            assert_eq!((used, done), (cut, false), "cut at {cut}");
            let mut rest = body[cut..].to_vec();
            rest.extend_from_slice(b"NEXT");
            let (used, done) = chunks.feed(&rest).unwrap();
            assert_eq!((used, done), (body.len() - cut, true), "cut at {cut}");
            assert_eq!(chunks.data, 31);
        }
        let mut chunks = Chunks::default();
        assert_eq!(chunks.feed(b"0\r\n\r\n").unwrap(), (5, true));
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXY", b"fffffffffffffffff\r\n"] {
            assert!(Chunks::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
