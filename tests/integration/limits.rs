//! Limits and hostile clients: each limit exceeded, and others served
//! meanwhile.

use crate::support::{TestServer, call_xml};
use lockd::client::{CallError, Client};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Answered within this, a client was served: one kept waiting by others'
/// connections would wait for their idle timeout, or for ever. (Generous:
/// the tests run many daemons at once on two cores.)
const SERVED: Duration = Duration::from_secs(4);

/// Serves `n` lock/unlock pairs on fresh connections and returns how long
/// the slowest took.
fn served_meanwhile(server: &TestServer, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let start = Instant::now();
        let resource = format!("meanwhile-{i}");
        server.call("lock", &[&resource, "c"]).unwrap();
        server.call("unlock", &[&resource, "c"]).unwrap();
        slowest = slowest.max(start.elapsed());
    }
    slowest
}

fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0; 64];
    // Closed: EOF, or reset.
    !matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        || e.kind() == std::io::ErrorKind::TimedOut)
}

#[test]
fn silent_and_slow_connections_are_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(&["--idle-timeout", "0.5"]);
    // Silent from the start; silent after a request (keep-alive); and a
    // request whose header stops half-way.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let mut after_request = TcpStream::connect(&server.addr).unwrap();
    let body = call_xml("lockd.list", &[]);
    write!(
        after_request,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut half = TcpStream::connect(&server.addr).unwrap();
    half.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let start = Instant::now();
    assert!(served_meanwhile(&server, 20) < SERVED);
    for (name, stream) in [
        ("silent", &mut silent),
        ("after a request", &mut after_request),
        ("half a header", &mut half),
    ] {
        if name == "after a request" {
            let mut answer = [0; 4096];
            let n = stream.read(&mut answer).unwrap();
            assert!(String::from_utf8_lossy(&answer[..n]).contains("200 OK"));
        }
        assert!(
            closed_within(stream, Duration::from_secs(5)),
            "{name}: still open after {:?}",
            start.elapsed()
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "closed too soon"
    );
}

#[test]
fn many_slow_loris_connections_do_not_stop_others_being_served() {
    let server = TestServer::start_with(&["--idle-timeout", "30"]);
    let mut loris: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    for round in 0..5 {
        // A byte at a time, never a whole header.
        for stream in &mut loris {
            let _ = stream.write_all(&[b"POST /"[round % 6]]);
        }
        let slowest = served_meanwhile(&server, 10);
        eprintln!("round {round}: slowest of 10 lock/unlock pairs {slowest:?}");
        assert!(slowest < SERVED, "round {round}: {slowest:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn waiters_past_max_waiters_are_refused_at_once_and_others_still_wait() {
    let server = TestServer::start_with(&["--max-waiters", "2", "--lock-delay", "0"]);
    server.call("lock", &["busy", "holder"]).unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            let url = server.url();
            let waiter = std::thread::spawn(move || {
                let options = lockd::xmlrpc::Value::Struct(vec![(
                    "wait".into(),
                    lockd::xmlrpc::Value::Int(60),
                )]);
                Client::new(&url).unwrap().call(
                    "lockd.acquire",
                    &["busy".into(), format!("waiter-{i}").into(), options],
                )
            });
            server.wait_for_waiters(i + 1);
            waiter
        })
        .collect();
    let options =
        lockd::xmlrpc::Value::Struct(vec![("wait".into(), lockd::xmlrpc::Value::Int(60))]);
    match server
        .client()
        .call("lockd.acquire", &["busy".into(), "third".into(), options])
    {
        Err(CallError::Fault(fault)) => {
            assert_eq!(fault.code, 6, "{fault}");
            assert!(fault.message.contains("2 clients wait already"), "{fault}");
        }
        other => panic!("{other:?}"),
    }
    assert!(served_meanwhile(&server, 5) < SERVED);
    server.call("unlock", &["busy", "holder"]).unwrap();
    for waiter in waiters {
        let lock = waiter.join().unwrap().unwrap();
        let client = lock
            .member("client")
            .and_then(|c| c.as_str())
            .unwrap()
            .to_owned();
        server.call("lockd.release", &["busy", &client]).unwrap();
    }
}

#[test]
fn waits_are_cut_to_max_wait() {
    let server = TestServer::start_with(&["--max-wait", "0.3"]);
    server.call("lock", &["busy", "holder"]).unwrap();
    let options =
        lockd::xmlrpc::Value::Struct(vec![("wait".into(), lockd::xmlrpc::Value::Int(100))]);
    let start = Instant::now();
    match server
        .client()
        .call("lockd.acquire", &["busy".into(), "patient".into(), options])
    {
        Err(CallError::Fault(fault)) => assert_eq!(fault.code, 6, "{fault}"),
        other => panic!("{other:?}"),
    }
    // Not before max-wait, nor anywhere near the 100 s asked for.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}

#[test]
fn a_wait_longer_than_the_idle_timeout_still_gets_its_answer() {
    let server = TestServer::start_with(&["--idle-timeout", "0.3", "--lock-delay", "0"]);
    server.call("lock", &["r", "holder"]).unwrap();
    let url = server.url();
    let waiter = std::thread::spawn(move || {
        let options =
            lockd::xmlrpc::Value::Struct(vec![("wait".into(), lockd::xmlrpc::Value::Int(60))]);
        Client::new(&url)
            .unwrap()
            .call("lockd.acquire", &["r".into(), "waiter".into(), options])
            .unwrap()
    });
    server.wait_for_waiters(1);
    // The wait outlasts the idle timeout three times over.
    std::thread::sleep(Duration::from_millis(900));
    server.call("unlock", &["r", "holder"]).unwrap();
    let lock = waiter.join().unwrap();
    assert_eq!(
        lock.member("client").and_then(|c| c.as_str()),
        Some("waiter")
    );
}

#[test]
fn out_of_file_descriptors_the_daemon_stops_with_an_error_for_its_service_manager() {
    // tiny_http stops accepting for good when accept() fails; a daemon
    // that can no longer accept must not linger half-alive.
    let mut server = TestServer::start_with(&["--wedged-after", "2"]);
    let pid = server.pid().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=48:48"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
    let _held: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(&server.addr).ok())
        .collect();
    let exit = server.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(70), "{}", server.log());
    assert!(
        server.log().contains("stopped accepting"),
        "{}",
        server.log()
    );
}
