//! The front door (`--front always`): every request passes through it one
//! at a time, and is answered as it would be straight from the HTTP
//! server; what it refuses, it refuses itself, counted.

use crate::support::{TestServer, call_xml, http11, raw_http};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

fn through_front() -> TestServer {
    TestServer::start_with(&["--front", "always"])
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads from `stream` until `done` says what came is whole.
fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut received = String::new();
    let mut buf = [0; 65536];
    while !done(&received) {
        let n = stream.read(&mut buf).expect("an answer within 20 s");
        assert!(n > 0, "connection closed after {received:?}");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    received
}

#[test]
fn pipelined_requests_pass_one_at_a_time_and_are_answered_in_order() {
    let server = through_front();
    let mut stream = connect(&server);
    let calls = [
        call_xml("lock", &["p", "c"]),
        call_xml("lockd.status", &["p"]),
        call_xml("unlock", &["p", "c"]),
        call_xml("lockd.status", &["p"]),
    ];
    let pipeline: String = calls.iter().map(|c| http11(c)).collect();
    stream.write_all(pipeline.as_bytes()).unwrap();
    let received = read_until(&mut stream, |r| r.matches("</methodResponse>").count() == 4);
    let answers: Vec<&str> = received.split("</methodResponse>").collect();
    assert!(answers[0].contains("<nil/>"), "{}", answers[0]);
    assert!(answers[1].contains("<name>client</name>"), "{}", answers[1]);
    assert!(answers[2].contains("<nil/>"), "{}", answers[2]);
    assert!(
        !answers[3].contains("<name>client</name>"),
        "{}",
        answers[3]
    );
    assert!(!received.contains("<fault>"), "{received}");
}

#[test]
fn chunked_bodies_expect_continue_and_head_requests_pass_through() {
    let server = through_front();
    server.call("lock", &["held", "c"]).unwrap();
    let body = call_xml("lockd.status", &["held"]);
    // Chunked, in two chunks, one with an extension. (No trailer: the
    // HTTP server's chunked reader takes none, front door or not.)
    let (half, rest) = body.split_at(body.len() / 2);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x};x=1\r\n{half}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        half.len(),
        rest.len()
    );
    let (status, answer) = raw_http(&server.addr, chunked.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<name>client</name>"), "{answer}");
    // Expect: 100-continue: the body is sent only once 100 came back.
    let mut stream = connect(&server);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let interim = read_until(&mut stream, |r| r.contains("\r\n\r\n"));
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(body.as_bytes()).unwrap();
    let answer = read_until(&mut stream, |r| r.contains("</methodResponse>"));
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    // HEAD: a head without a body, and the connection goes on.
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = read_until(&mut stream, |r| r.contains("\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(http11(&body).as_bytes()).unwrap();
    let answer = read_until(&mut stream, |r| r.contains("</methodResponse>"));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "nothing of the HEAD answer left over: {answer}"
    );
}

#[test]
fn a_long_answer_passes_whole_and_a_half_closed_client_still_gets_its_answer() {
    let server = through_front();
    for i in 0..300 {
        server
            .call(
                "lock",
                &[&format!("{i:03}-{}", "n".repeat(196)), &"h".repeat(500)],
            )
            .unwrap();
    }
    let mut stream = connect(&server);
    stream
        .write_all(http11(&call_xml("lockd.list", &[""])).as_bytes())
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer.matches("<name>resource</name>").count(),
        300,
        "{}",
        &answer[..answer.len().min(300)]
    );
    // Chunked, as the HTTP server sends long answers: whole to its last chunk.
    assert!(
        answer.ends_with("</methodResponse>\n\r\n0\r\n\r\n"),
        "{}",
        &answer[answer.len() - 100..]
    );
}

#[test]
fn heads_bodies_and_ambiguous_requests_are_refused_at_the_front_and_counted() {
    let server = through_front();
    // A head one byte over --max-header (8 KiB): 431.
    let padding = 8192 - "GET / HTTP/1.1\r\nX: \r\n\r\n".len() + 1;
    let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(padding));
    let (status, _) = raw_http(&server.addr, head.as_bytes());
    assert_eq!(status, 431);
    // A head without end: 431 too, once it passes the bound.
    let mut stream = connect(&server);
    let _ = stream.write_all(b"POST / HTTP/1.1\r\nX-Big: ");
    let _ = stream.write_all(&[b'a'; 20_000]);
    let answer = read_until(&mut stream, |r| r.contains("\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let refused: [(&[u8], u16); 4] = [
        // A declared body over --max-body: 413, before any of it is sent.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n",
            413,
        ),
        // Delimited two ways: 400.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        // A head the HTTP server would read another way (a line ending
        // without CR): 400, nothing smuggled.
        (
            b"POST / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
        // A chunked body on a request that takes none (the HTTP server
        // would read it as requests): 400.
        (
            b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (request, expected) in refused {
        let (status, _) = raw_http(&server.addr, request);
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(request));
    }
    let cut = |reason: &str| {
        server.metric(&format!(
            "lockd_connections_cut_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(
        (cut("head"), cut("body"), cut("malformed")),
        (2.0, 1.0, 3.0)
    );
    assert_eq!(
        server.call("lockd.status", &["x"]),
        Ok(lockd::xmlrpc::Value::Nil)
    );
}

#[test]
fn a_waiting_call_whose_client_hangs_up_at_the_front_is_not_given_the_lock() {
    let server = through_front();
    server.call("lock", &["busy", "holder"]).unwrap();
    let mut stream = connect(&server);
    let wait = r#"<?xml version="1.0"?><methodCall><methodName>lockd.acquire</methodName><params><param><value><string>busy</string></value></param><param><value><string>leaver</string></value></param><param><value><struct><member><name>wait</name><value><int>100</int></value></member></struct></value></param></params></methodCall>"#;
    stream.write_all(http11(wait).as_bytes()).unwrap();
    server.wait_for_waiters(1);
    drop(stream);
    crate::support::wait_until("the waiter leaves its line", || {
        server.metric("lockd_waiters") == 0.0
    });
    server.call("unlock", &["busy", "holder"]).unwrap();
    let status = server
        .client()
        .call("lockd.status", &["busy".into()])
        .unwrap();
    assert_eq!(status, lockd::xmlrpc::Value::Nil, "the lock went to nobody");
}
