//! Hostile and careless clients: stalled uploads, waits inside multicalls,
//! requests pipelined behind a wait, clients that never read their
//! answers. Through each, fresh clients keep being answered, for longer
//! than any watchdog of the daemon runs, and the daemon keeps running.

use crate::support::{TestServer, call_xml, http11};
use lockd::client::Client;
use lockd::xmlrpc::Value;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How long each attack lasts while fresh clients are served: longer than
/// the daemon's 30 s watchdog.
const SPAN: Duration = Duration::from_secs(40);

/// The longest a fresh client may wait for each answer.
const ANSWERED: Duration = Duration::from_secs(2);

/// Fresh clients, one after another, each on new connections, lock and
/// unlock a resource of their own throughout `SPAN`; each answer must come
/// within [`ANSWERED`]. Then the daemon must still be running.
fn fresh_clients_are_served_throughout(server: &mut TestServer) {
    let client = Client::new(&server.url()).unwrap().with_timeout(ANSWERED);
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < SPAN {
        let resource = format!("fresh-{served}");
        for method in ["lock", "unlock"] {
            let asked = Instant::now();
            let answer = client.call(method, &[resource.as_str().into(), "fresh".into()]);
            assert!(
                matches!(answer, Ok(Value::Nil)),
                "{method} after {:?} of the attack, answered after {:?}: {answer:?}\n{}",
                start.elapsed(),
                asked.elapsed(),
                server.log()
            );
        }
        served += 1;
        // A steady trickle of fresh clients, not a flood of them.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.is_running(), "{}", server.log());
    eprintln!("{served} fresh clients served during the attack");
}

/// `lockd.acquire(resource, client, {wait: 100})` as XML.
fn waiting_acquire(resource: &str, client: &str) -> String {
    lockd::xmlrpc::encode_call("lockd.acquire", &waiting_acquire_params(resource, client))
}

/// The parameters of `lockd.acquire(resource, client, {wait: 100})`.
fn waiting_acquire_params(resource: &str, client: &str) -> Vec<Value> {
    let options = Value::Struct(vec![("wait".into(), Value::Int(100))]);
    vec![resource.into(), client.into(), options]
}

#[test]
fn three_hundred_uploads_stalled_in_their_bodies_stop_nobody() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    let stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream
                .write_all(
                    b"POST / HTTP/1.1\r\nHost: lockd\r\nContent-Type: text/xml\r\n\
                      Content-Length: 100000\r\n\r\n<methodCall>",
                )
                .unwrap();
            stream
        })
        .collect();
    fresh_clients_are_served_throughout(&mut server);
    drop(stalled);
}

#[test]
fn forty_multicalls_each_waiting_for_a_lock_stop_nobody() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    server.call("lock", &["busy", "holder"]).unwrap();
    let waiting: Vec<TcpStream> = (0..40)
        .map(|i| {
            let entry = Value::Struct(vec![
                ("methodName".into(), "lockd.acquire".into()),
                (
                    "params".into(),
                    Value::Array(waiting_acquire_params("busy", &format!("w{i}"))),
                ),
            ]);
            let body = lockd::xmlrpc::encode_call("system.multicall", &[Value::Array(vec![entry])]);
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream.write_all(http11(&body).as_bytes()).unwrap();
            stream
        })
        .collect();
    server.wait_for_waiters(40);
    fresh_clients_are_served_throughout(&mut server);
    // The waits are still there, and end with the lock's release: the
    // first waiter in line (whichever of the 40 reached the daemon first)
    // gets the lock, and its multicall is answered with it.
    server.call("unlock", &["busy", "holder"]).unwrap();
    let mut holder = None;
    crate::support::wait_until("the lock to go to a waiter", || {
        holder = server
            .call("lockd.status", &["busy"])
            .unwrap()
            .member("client")
            .cloned();
        holder.is_some()
    });
    let holder = holder.and_then(|h| h.as_str().map(str::to_owned)).unwrap();
    let first: usize = holder.strip_prefix('w').unwrap().parse().unwrap();
    let mut first = &waiting[first];
    first.set_read_timeout(Some(SPAN)).unwrap();
    let mut answer = vec![0; 4096];
    let n = first.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.contains("<name>token</name>"), "{answer}");
    assert!(
        answer.contains(&format!("<string>{holder}</string>")),
        "{answer}"
    );
}

#[test]
fn forty_connections_pipelining_behind_a_waiting_acquire_stop_nobody() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    server.call("lock", &["busy", "holder"]).unwrap();
    let _waiting: Vec<TcpStream> = (0..40)
        .map(|i| {
            let client = format!("w{i}");
            let mut pipeline = http11(&waiting_acquire("busy", &client));
            for k in 0..5 {
                let resource = format!("behind-{i}-{k}");
                pipeline.push_str(&http11(&call_xml("lock", &[&resource, &client])));
            }
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream.write_all(pipeline.as_bytes()).unwrap();
            stream
        })
        .collect();
    server.wait_for_waiters(40);
    fresh_clients_are_served_throughout(&mut server);
    // The requests behind each wait are still queued behind it, unapplied.
    assert_eq!(
        server.call("lockd.list", &["behind-"]),
        Ok(Value::Array(vec![]))
    );
}

#[test]
fn forty_connections_that_never_read_their_answers_stop_nobody() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    // Each client sends 1,000 pipelined calls, each answered with a 6.5 KB
    // list, and reads nothing. With a small receive buffer, its answers
    // soon fill the connection (a socket buffers 4 MB at most) and the
    // daemon can write no more to it.
    let holder = "h".repeat(1000);
    for i in 0..5 {
        server
            .call("lock", &[&format!("unread-{i}"), &holder])
            .unwrap();
    }
    let calls = 1000;
    let request = http11(&call_xml("lockd.list", &["unread-"]));
    let mut streams = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..40 {
        let stream = small_receive_buffer_connection(&server.addr);
        streams.push(stream.try_clone().unwrap());
        let request = request.clone();
        writers.push(std::thread::spawn(move || {
            let mut stream = stream;
            for _ in 0..calls {
                if stream.write_all(request.as_bytes()).is_err() {
                    return;
                }
            }
        }));
    }
    fresh_clients_are_served_throughout(&mut server);
    // None may have been answered: all forty may be hung up on first.
    let answered = server.count(
        "lockd_requests_total",
        "lockd_requests_total{method=\"lockd.list\"}",
    );
    eprintln!("{answered} of {} calls answered", 40 * calls);
    assert!(
        answered < (40 * calls) as f64,
        "all calls were answered: no client was left unread, the test proves nothing"
    );
    for stream in &streams {
        let _ = stream.shutdown(Shutdown::Both);
    }
    for writer in writers {
        writer.join().unwrap();
    }
}

/// A connection to `addr` whose receive buffer is as small as the kernel
/// allows.
fn small_receive_buffer_connection(addr: &str) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = lockd::socket::tcp_for(addr).unwrap();
    let size: libc::c_int = 4096;
    lockd::socket::set(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, &size).unwrap();
    lockd::socket::connect(&socket, addr).unwrap();
    TcpStream::from(socket)
}

#[test]
fn a_waiter_whose_connection_closes_is_never_given_the_lock() {
    let server = TestServer::start();
    server.call("lock", &["r", "holder"]).unwrap();
    let mut gone = TcpStream::connect(&server.addr).unwrap();
    gone.write_all(http11(&waiting_acquire("r", "gone")).as_bytes())
        .unwrap();
    server.wait_for_waiters(1);
    let mut behind = TcpStream::connect(&server.addr).unwrap();
    behind
        .write_all(http11(&waiting_acquire("r", "behind")).as_bytes())
        .unwrap();
    server.wait_for_waiters(2);
    drop(gone);
    // Released at once: the lock must pass over the client that left.
    server.call("unlock", &["r", "holder"]).unwrap();
    behind.set_read_timeout(Some(SPAN)).unwrap();
    let mut answer = vec![0; 4096];
    let n = behind.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.contains("<string>behind</string>"), "{answer}");
    let status = server.call("lockd.status", &["r"]).unwrap();
    assert_eq!(status.member("client"), Some(&Value::from("behind")));
    assert!(
        !server.log().contains("client=gone"),
        "the lock went to the client that left:\n{}",
        server.log()
    );

    // One that leaves while the lock stays held leaves the line too.
    let mut leaves = TcpStream::connect(&server.addr).unwrap();
    leaves
        .write_all(http11(&waiting_acquire("r", "leaves")).as_bytes())
        .unwrap();
    server.wait_for_waiters(1);
    drop(leaves);
    server.wait_for_waiters(0);
}

#[test]
fn the_holder_takes_its_lock_again_reentrantly_while_others_wait() {
    let server = TestServer::start();
    let acquire = |client: &str, options: Value| {
        server
            .client()
            .call("lockd.acquire", &["re".into(), client.into(), options])
    };
    let first = acquire("A", Value::Struct(vec![])).unwrap();
    let mut waiter = TcpStream::connect(&server.addr).unwrap();
    waiter
        .write_all(http11(&waiting_acquire("re", "B")).as_bytes())
        .unwrap();
    server.wait_for_waiters(1);
    let again = acquire(
        "A",
        Value::Struct(vec![("reentrant".into(), Value::Bool(true))]),
    )
    .unwrap();
    assert_eq!(again.member("token"), first.member("token"));
    // Not for anyone else: C is refused, and B still waits.
    let other = acquire(
        "C",
        Value::Struct(vec![("reentrant".into(), Value::Bool(true))]),
    );
    assert!(
        matches!(&other, Err(lockd::client::CallError::Fault(f)) if f.code == 1),
        "{other:?}"
    );
    server.wait_for_waiters(1);
}

#[test]
fn names_xml_cannot_carry_are_refused_and_answers_stay_well_formed() {
    let (_tmp, dir) = crate::support::temp_lock_dir();
    // A lock file written by hand (or by an older lockd) whose holder
    // holds a control character.
    std::fs::write(dir.join("ctl2.resource.lock"), "x\u{1}y\n").unwrap();
    let server = TestServer::start_in(&dir, &[]);
    let body = "<?xml version='1.0'?><methodCall><methodName>lock</methodName><params>\
                <param><value><string>ctl</string></value></param>\
                <param><value><string>a&#1;b</string></value></param></params></methodCall>";
    let (status, answer) = crate::support::post(&server.addr, body);
    assert_eq!(status, 200);
    assert_eq!(crate::support::fault_code(&answer), 4, "{answer}");
    let printed = crate::support::python("well_formed.py", &[&server.url(), "ctl2"]);
    assert!(printed.contains("x\u{fffd}y"), "{printed}");
}

#[test]
fn long_client_names_cost_no_more_per_pair_than_short_ones() {
    let _alone = crate::support::alone();
    let server = TestServer::start_with(&["--sync", "none"]);
    let printed = crate::support::python("long_names.py", &[&server.url(), "40"]);
    let per_pair = |label: &str| -> f64 {
        printed
            .lines()
            .find_map(|l| {
                l.strip_prefix(label)?
                    .trim()
                    .strip_suffix(" ms")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {label} in {printed}"))
    };
    let (short, long) = (per_pair("10-byte client:"), per_pair("1000-byte client:"));
    eprintln!(
        "per acquire+release pair: {short:.2} ms with a 10-byte client, {long:.2} ms with a 1,000-byte one"
    );
    // A reply written in two pieces waits for the client's delayed
    // acknowledgement, 40 ms a pair; a longer name costs only its bytes.
    assert!(long < 3.0 * short + 5.0, "{printed}");
}

/// The status code of a `GET /healthz` on a fresh connection.
fn healthz(addr: &str) -> u16 {
    crate::support::raw_http(addr, b"GET /healthz HTTP/1.0\r\n\r\n").0
}

#[test]
fn connections_past_max_connections_get_503_and_are_served_again_once_others_close() {
    let server = TestServer::start_with(&["--max-connections", "20"]);
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    crate::support::wait_until("a fresh connection refused with 503", || {
        healthz(&server.addr) == 503
    });
    // The connections already open are served all the same.
    let mut one = &held[0];
    one.write_all(http11(&call_xml("lockd.list", &[])).as_bytes())
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = one.read(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    held.truncate(10);
    crate::support::wait_until("fresh connections served again", || {
        healthz(&server.addr) == 200
    });
    assert!(
        server.log().contains("new ones get 503"),
        "{}",
        server.log()
    );
}

#[test]
fn a_second_daemon_cannot_share_the_port_of_one_with_max_connections() {
    let first = TestServer::start_with(&["--max-connections", "100"]);
    let (_tmp, dir) = crate::support::temp_lock_dir();
    let refused = std::process::Command::new(crate::support::LOCKD)
        .args([
            "serve",
            "--max-connections",
            "100",
            "--listen",
            &first.addr,
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(70), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{refused:?}"
    );
}
