//! Bad requests get their fault or HTTP status, and the daemon goes on
//! serving everyone else.

use crate::support::{TestServer, call_xml, fault_code, post, raw_http};
use lockd::xmlrpc::Value;

#[test]
fn malformed_requests_get_their_fault_and_the_daemon_keeps_serving() {
    let server = TestServer::start();
    let cases: &[(&str, i32)] = &[
        ("<methodCall><methodName>lock", -32700),
        ("not xml at all", -32700),
        ("<a></b>", -32700),
        ("\u{0}\u{1}", -32700),
        ("<?xml version='1.0'?><notACall/>", -32600),
        ("<methodCall><params/></methodCall>", -32600),
        (
            "<methodCall><methodName>lock</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
            -32600,
        ),
        (
            "<methodCall><methodName>nosuch</methodName></methodCall>",
            -32601,
        ),
        (
            "<methodCall><methodName>lock</methodName></methodCall>",
            -32602,
        ),
        (
            "<methodCall><methodName>lock</methodName><params><param><value><int>1</int></value></param><param><value>c</value></param></params></methodCall>",
            -32602,
        ),
    ];
    for &(body, code) in cases {
        let (status, answer) = post(&server.addr, body);
        assert_eq!(status, 200, "{body}");
        assert_eq!(fault_code(&answer), code, "{body} -> {answer}");
        // Every bad request is followed by a good one that works.
        let (_, answer) = post(&server.addr, &call_xml("lock", &["after-bad", "c"]));
        assert!(answer.contains("<nil/>"), "{answer}");
        let (_, answer) = post(&server.addr, &call_xml("unlock", &["after-bad", "c"]));
        assert!(answer.contains("<nil/>"), "{answer}");
    }
}

#[test]
fn entities_are_never_expanded() {
    let server = TestServer::start();
    let billion_laughs = "<?xml version='1.0'?>\
        <!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>\
        <methodCall><methodName>lock</methodName><params>\
        <param><value>&lol2;</value></param><param><value>c</value></param>\
        </params></methodCall>";
    let (status, answer) = post(&server.addr, billion_laughs);
    assert_eq!(status, 200);
    assert_eq!(fault_code(&answer), -32700);
    let undefined = "<methodCall><methodName>lock</methodName><params>\
        <param><value>&xxe;</value></param><param><value>c</value></param>\
        </params></methodCall>";
    assert_eq!(fault_code(&post(&server.addr, undefined).1), -32700);
    // The predefined ones and character references are just text.
    let predefined = "<methodCall><methodName>lock</methodName><params>\
        <param><value>a&amp;b&#x2F;&#99;</value></param><param><value>c</value></param>\
        </params></methodCall>";
    assert!(post(&server.addr, predefined).1.contains("<nil/>"));
    assert!(server.dir.join("a%26b%2Fc.resource.lock").exists());
}

#[test]
fn oversized_bodies_get_413_and_others_are_still_served() {
    let server = TestServer::start_with(&["--max-body", "4096"]);
    let big = call_xml("lock", &[&"x".repeat(5000), "c"]);
    assert_eq!(post(&server.addr, &big).0, 413);
    // A body that claims to be small and is not is cut at the limit too.
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        big.len(),
        big
    );
    assert_eq!(raw_http(&server.addr, chunked.as_bytes()).0, 413);
    assert_eq!(server.call("lock", &["small", "c"]), Ok(Value::Nil));
}

#[test]
fn other_http_methods_and_paths() {
    let server = TestServer::start();
    let (status, _) = raw_http(&server.addr, b"GET /RPC2 HTTP/1.0\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _) = raw_http(
        &server.addr,
        b"POST /elsewhere HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 404);
}

#[test]
fn every_value_type_is_accepted_where_a_string_is_not_needed() {
    let server = TestServer::start();
    // methodSignature takes a string; an untyped <value> is one.
    let body = "<?xml version='1.0'?><methodCall><methodName>system.methodSignature</methodName>\
        <params><param><value>unlock</value></param></params></methodCall>";
    let (_, answer) = post(&server.addr, body);
    let value = lockd::xmlrpc::parse_response(answer.as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(
        value,
        Value::Array(vec![Value::Array(vec![
            "nil".into(),
            "string".into(),
            "string".into()
        ])])
    );
    // Every other type is a wrong parameter for lock, reported as such.
    for typed in [
        "<i4>1</i4>",
        "<i8>9000000000</i8>",
        "<boolean>1</boolean>",
        "<double>1.5</double>",
        "<dateTime.iso8601>20261126T08:00:00</dateTime.iso8601>",
        "<base64>eHl6</base64>",
        "<nil/>",
        "<array><data><value>a</value></data></array>",
        "<struct><member><name>a</name><value>b</value></member></struct>",
    ] {
        let body = format!(
            "<methodCall><methodName>lock</methodName><params><param><value>{typed}</value></param>\
             <param><value>c</value></param></params></methodCall>"
        );
        let (_, answer) = post(&server.addr, &body);
        assert_eq!(fault_code(&answer), -32602, "{typed}: {answer}");
    }
}

/// Sends `bodies` as pipelined HTTP/1.1 requests on one connection, all
/// before reading anything, and returns the answers' bodies in order.
fn pipeline(addr: &str, bodies: &[String]) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut pipeline = String::new();
    for body in bodies {
        pipeline.push_str(&format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream.write_all(pipeline.as_bytes()).unwrap();
    let mut received = String::new();
    let mut buf = [0; 65536];
    while received.matches("</methodResponse>").count() < bodies.len() {
        let n = stream.read(&mut buf).expect("all answers within 20 s");
        assert!(n > 0, "connection closed after {received}");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    received
        .split("</methodResponse>")
        .take(bodies.len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn pipelined_requests_on_one_connection_are_all_answered_in_order() {
    let server = TestServer::start();
    let multicall = "<?xml version='1.0'?><methodCall><methodName>system.multicall</methodName>\
        <params><param><value><array><data>\
        <value><struct><member><name>methodName</name><value>lock</value></member>\
        <member><name>params</name><value><array><data><value>p1</value><value>c</value></data></array></value></member>\
        </struct></value></data></array></value></param></params></methodCall>";
    let bodies: Vec<String> = (0..20)
        .flat_map(|round| {
            [
                multicall.to_owned(),
                call_xml("lock", &[&format!("p2-{round}"), "c"]),
            ]
        })
        .collect();
    let answers = pipeline(&server.addr, &bodies);
    // The first multicall takes the lock, the later ones find it taken; every
    // plain lock succeeds.
    assert!(
        answers[0].contains("<array><data>\n<value><nil/>"),
        "{}",
        answers[0]
    );
    for round in 0..20 {
        assert!(
            answers[2 * round + 1].contains("<nil/>"),
            "{}",
            answers[2 * round + 1]
        );
        if round > 0 {
            assert!(
                answers[2 * round].contains("faultCode"),
                "{}",
                answers[2 * round]
            );
        }
    }
}

#[test]
fn pipelined_requests_are_applied_in_the_order_sent() {
    let server = TestServer::start_with(&["--sync", "none"]);
    // lock, unlock, lock, unlock, ... of one resource: each succeeds only
    // if the one before it was applied first.
    let bodies: Vec<String> = (0..200)
        .map(|i| {
            let method = if i % 2 == 0 { "lock" } else { "unlock" };
            call_xml(method, &["pipelined", "c"])
        })
        .collect();
    for (i, answer) in pipeline(&server.addr, &bodies).iter().enumerate() {
        assert!(!answer.contains("faultCode"), "request {i}: {answer}");
    }
}
