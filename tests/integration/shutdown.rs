//! Stopping: SIGTERM during load answers every request already sent, keeps
//! every acknowledged lock, and releases the directory.

use crate::support::{TestServer, call_xml, holder_of, http11, temp_lock_dir, wait_until};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How one request on a keep-alive connection went.
enum Outcome {
    /// A whole answer; whether it asked to close the connection.
    Answered { ok: bool, close: bool },
    /// The request was sent whole and the connection broke before a whole
    /// answer came.
    Broken(String),
}

fn exchange(stream: &mut TcpStream, body: &str) -> Option<Outcome> {
    let request = http11(body);
    // Not sent whole: not in flight.
    stream.write_all(request.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Some(Outcome::Broken(format!("EOF after {head:?}"))),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
            Err(e) => return Some(Outcome::Broken(format!("{e} after {head:?}"))),
        }
    }
    let lower = head.to_ascii_lowercase();
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if let Err(e) = reader.read_exact(&mut body) {
        return Some(Outcome::Broken(format!("{e} in the body after {head:?}")));
    }
    let ok = head.starts_with("HTTP/1.1 200") && !String::from_utf8_lossy(&body).contains("fault");
    let close = lower.contains("connection: close");
    Some(Outcome::Answered { ok, close })
}

#[derive(Default)]
struct Record {
    /// Resources this client was last told it holds.
    held: Vec<bool>,
    answered: usize,
    broken: Vec<String>,
}

/// Locks and unlocks its own resources until the daemon refuses to connect.
fn client(addr: String, me: usize, answers: Arc<AtomicUsize>) -> Record {
    let mut record = Record {
        held: vec![false; 3],
        ..Record::default()
    };
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for i in 0.. {
        let r = i % 3;
        let (method, resource) = (
            if record.held[r] { "unlock" } else { "lock" },
            format!("stop-{me}-{r}"),
        );
        match exchange(&mut stream, &call_xml(method, &[&resource, "c"])) {
            None => break,
            Some(Outcome::Broken(why)) => {
                record.broken.push(format!("{method} {resource}: {why}"));
                break;
            }
            Some(Outcome::Answered { ok, close }) => {
                record.answered += 1;
                answers.fetch_add(1, Ordering::Relaxed);
                assert!(ok, "{method} {resource} failed");
                record.held[r] = method == "lock";
                if close {
                    match TcpStream::connect(&addr) {
                        Ok(fresh) => stream = fresh,
                        Err(_) => break,
                    }
                }
            }
        }
    }
    record
}

#[test]
fn sigterm_during_load_answers_what_was_sent_and_keeps_what_was_acknowledged() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        let mut server = TestServer::start_in(&dir, &["--sync", sync]);
        let answers = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..8)
            .map(|me| {
                let (addr, answers) = (server.addr.clone(), answers.clone());
                std::thread::spawn(move || client(addr, me, answers))
            })
            .collect();
        // Stopped in the middle of the load: after some answers, with
        // every client still asking.
        wait_until("200 answers", || answers.load(Ordering::Relaxed) >= 200);
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(20));
        let records: Vec<Record> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(status.success(), "{sync}: exit {status}\n{}", server.log());
        assert!(server.log().contains("stopped"), "{}", server.log());
        let broken: Vec<&String> = records.iter().flat_map(|r| &r.broken).collect();
        assert!(broken.is_empty(), "{sync}: broken: {broken:?}");
        let answered: usize = records.iter().map(|r| r.answered).sum();
        assert!(answered > 100, "{sync}: only {answered} answers");
        for (me, record) in records.iter().enumerate() {
            for (r, held) in record.held.iter().enumerate() {
                let file = dir.join(format!("stop-{me}-{r}.resource.lock"));
                match std::fs::read_to_string(&file) {
                    Ok(content) => assert!(*held && holder_of(&content) == "c", "{file:?}"),
                    Err(_) => assert!(!held, "{sync}: acknowledged lock {file:?} is not on disk"),
                }
            }
        }
        eprintln!(
            "--sync={sync}: {answered} answers, none broken; every acknowledged lock on disk"
        );
        // The directory is free for the next daemon at once.
        drop(server);
        let next = TestServer::start_in(&dir, &["--sync", sync]);
        drop(next);
    }
}

#[test]
fn sighup_is_a_reload_and_never_stops_the_daemon() {
    // `systemctl reload` sends SIGHUP; without TLS there is nothing to
    // reload, and the daemon must go on (SIGHUP's default ends a process).
    let mut server = TestServer::start();
    server.call("lock", &["r", "c"]).unwrap();
    server.signal(libc::SIGHUP);
    wait_until("the reload to be logged", || {
        server.log().contains("SIGHUP: nothing to reload")
    });
    assert!(server.is_running());
    let holder = server.call("lockd.status", &["r"]).unwrap();
    assert_eq!(
        holder
            .member("client")
            .and_then(lockd::xmlrpc::Value::as_str),
        Some("c")
    );
}
