//! Connections: however many arrive at once, each one is served while the
//! others stay open.

use crate::support::{TestServer, call_xml};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends one keep-alive request on `stream` and reads its answer.
fn answer(stream: &mut TcpStream, body: &str) -> Result<String, String> {
    let request = format!(
        "POST /RPC2 HTTP/1.1\r\nHost: lockd\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&received).contains("</methodResponse>") {
        match stream.read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}

#[test]
fn bursts_of_new_connections_are_all_served_while_the_others_stay_open() {
    let server = TestServer::start_with(&["--sync", "none"]);
    for round in 0..6 {
        // Connections arrive together, right after the previous burst's
        // connections closed, and none closes before all are answered.
        let mut streams: Vec<TcpStream> = (0..32)
            .map(|_| TcpStream::connect(&server.addr).unwrap())
            .collect();
        let start = Instant::now();
        for (i, stream) in streams.iter_mut().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let body = call_xml("lock", &[&format!("burst-{round}-{i}"), "c"]);
            let answer = answer(stream, &body)
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: no answer: {e}"));
            assert!(answer.contains("<nil/>"), "{answer}");
        }
        eprintln!(
            "round {round}: 32 connections answered in {:?}",
            start.elapsed()
        );
    }
}
