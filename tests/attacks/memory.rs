//! What one client can make lockd hold: a head without end, requests
//! pipelined without reading the answers, by hundreds of connections at
//! once. Each attack prints lockd's peak memory and the slowest fresh
//! client's answer; the attackers' connections are closed, the daemon's
//! memory stays bounded, fresh clients are answered throughout, and once
//! the attackers are gone the daemon is idle.

use crate::support::{TestServer, http11, raw_http};
use lockd::client::Client;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a fresh client may wait for its answer during an attack.
const PROMPT: Duration = Duration::from_secs(1);

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had since
/// [`reset_peak`], in bytes: the kernel's own high-water mark, so no
/// moment is missed between looks.
fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Starts process `pid`'s high-water mark of resident memory afresh.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// CPU time process `pid` has used so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Fresh clients, each on a new connection, asking `lockd.status` one
/// after another while an attack lasts, and lockd's peak memory meanwhile.
struct Watch {
    stop: Arc<AtomicBool>,
    pid: u32,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl Watch {
    fn start(server: &TestServer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, pid) = (server.url(), server.pid());
        reset_peak(pid);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let began = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let client = Client::new(&url).unwrap().with_timeout(PROMPT * 30);
                    let asked = Instant::now();
                    let answer = client.call("lockd.status", &["fresh".into()]);
                    answers.push(asked.elapsed());
                    if asked.elapsed() > PROMPT / 4 {
                        eprintln!(
                            "a fresh client waited {:?}, {:?} into the attack",
                            asked.elapsed(),
                            asked - began
                        );
                    }
                    assert!(answer.is_ok(), "a fresh client was answered {answer:?}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                answers
            })
        };
        Self {
            stop,
            pid,
            thread: Some(thread),
        }
    }

    /// Stops asking; prints and returns the peak memory and the answers'
    /// p99 and maximum.
    fn finish(mut self, what: &str, idle: u64) -> (u64, Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut answers = self.thread.take().unwrap().join().unwrap();
        answers.sort();
        let p99 = answers[answers.len() * 99 / 100];
        let max = *answers.last().unwrap();
        let above = peak_rss(self.pid).saturating_sub(idle);
        eprintln!(
            "{what}: peak RSS {:.1} MiB above idle ({:.1} MiB); {} fresh clients, p99 {p99:?}, max {max:?}",
            above as f64 / 1048576.0,
            idle as f64 / 1048576.0,
            answers.len()
        );
        (above, p99, max)
    }
}

/// The CPU the daemon uses over the 5 s after an attack ended, as a
/// share of one core.
fn cpu_after(server: &TestServer) -> f64 {
    let pid = server.pid();
    let (before, start) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let share = (cpu(pid) - before).as_secs_f64() / start.elapsed().as_secs_f64();
    eprintln!(
        "CPU over the 5 s after the attack: {:.1} % of a core",
        share * 100.0
    );
    share
}

/// Connections that send a head without end: each starts a request and
/// then sends one header's value for ever. `open` connections at once,
/// each replaced when lockd closes it, for `span`; returns how many lockd
/// closed.
fn endless_heads(addr: &str, open: usize, span: Duration) -> usize {
    let closed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + span;
    let attackers: Vec<_> = (0..open)
        .map(|_| {
            let (addr, closed) = (addr.to_owned(), closed.clone());
            std::thread::spawn(move || {
                yield_the_cores();
                let chunk = vec![b'a'; 16 * 1024];
                while Instant::now() < deadline {
                    let Ok(mut stream) = attacker_connection(&addr, None) else {
                        continue;
                    };
                    stream
                        .set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let head = b"POST / HTTP/1.1\r\nHost: lockd\r\nX-Big: ";
                    if stream.write_all(head).is_err() {
                        closed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Until lockd closes it (a write fails), or the attack
                    // is over (then this connection must still be closed
                    // by lockd: its head is over any bound by now).
                    loop {
                        match stream.write(&chunk) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        if Instant::now() >= deadline {
                            assert!(
                                closed_by_lockd(&mut stream),
                                "a connection sending an endless head was left open"
                            );
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().unwrap();
    }
    closed.load(Ordering::Relaxed) as usize
}

/// Lowers the calling thread's priority to the least, so that attackers
/// running beside lockd take the cores only while lockd leaves them.
fn yield_the_cores() {
    // SAFETY: gettid and setpriority on the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Whether lockd closes `stream` (its reading side sees the end, or a
/// reset) within a few seconds.
fn closed_by_lockd(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut scratch = [0; 4096];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn two_hundred_endless_heads_are_cut_off_and_cost_nobody_else() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    server.call("lockd.status", &["warm-up"]).unwrap();
    let idle = rss(server.pid());
    let watch = Watch::start(&server);
    let closed = endless_heads(&server.addr, 200, Duration::from_secs(20));
    let (above, _, max) = watch.finish("200 endless heads for 20 s", idle);
    let cut = server.metric("lockd_connections_cut_total{reason=\"head\"}");
    eprintln!("{closed} attacking connections closed by lockd, {cut} counted cut for their heads");
    assert!(server.is_running(), "{}", server.log());
    assert!(closed >= 200, "only {closed} connections were closed");
    assert!(above < 128 << 20, "RSS grew {above} bytes above idle");
    assert!(max < PROMPT, "a fresh client waited {max:?}");
    let share = cpu_after(&server);
    assert!(
        share < 0.05,
        "{:.1} % of a core after the attack",
        share * 100.0
    );
    assert!(
        cut >= closed as f64,
        "{cut} connections counted cut for their heads"
    );
}

/// `lockd.list("")` as an HTTP/1.1 request, twenty times.
fn twenty_lists() -> Vec<u8> {
    let call = lockd::xmlrpc::encode_call("lockd.list", &["".into()]);
    http11(&call).repeat(20).into_bytes()
}

/// An attacker's connection to `addr`, with a receive buffer of
/// `receive` bytes if given. Its send buffer is bounded as a remote
/// attacker's would be on its own machine: here attackers and lockd share
/// the kernel, and 200 attackers' unsent bytes (the kernel lets each grow
/// to megabytes) would put every connection on the machine, fresh clients'
/// included, under TCP memory pressure, whatever lockd does.
fn attacker_connection(addr: &str, receive: Option<libc::c_int>) -> std::io::Result<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = lockd::socket::tcp_for(addr)?;
    let send: libc::c_int = 64 * 1024;
    lockd::socket::set(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, &send)?;
    if let Some(size) = receive {
        lockd::socket::set(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, &size)?;
    }
    lockd::socket::connect(&socket, addr)?;
    Ok(TcpStream::from(socket))
}

#[test]
fn two_hundred_connections_pipelining_lists_without_reading_cost_nobody_else() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    // 300 held locks with long names and holders: each list answers
    // about 250 KB.
    let holder = "h".repeat(500);
    for i in 0..300 {
        let name = format!("{i:03}-{}", "n".repeat(196));
        server.call("lock", &[&name, &holder]).unwrap();
    }
    let idle = rss(server.pid());
    let watch = Watch::start(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    let requests = Arc::new(twenty_lists());
    let attackers: Vec<_> = (0..200)
        .map(|_| {
            let (addr, requests) = (server.addr.clone(), requests.clone());
            std::thread::spawn(move || {
                yield_the_cores();
                while Instant::now() < deadline {
                    let Ok(mut stream) = attacker_connection(&addr, Some(4096)) else {
                        continue;
                    };
                    stream
                        .set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    while Instant::now() < deadline {
                        match stream.write_all(&requests) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().unwrap();
    }
    let (above, p99, max) = watch.finish("200 connections pipelining lists for 30 s", idle);

    assert!(server.is_running(), "{}", server.log());
    assert!(above < 256 << 20, "RSS grew {above} bytes above idle");
    assert!(
        p99 < PROMPT && max < PROMPT,
        "fresh clients waited up to {max:?}"
    );
    let share = cpu_after(&server);
    assert!(
        share < 0.05,
        "{:.1} % of a core after the attack",
        share * 100.0
    );
}

/// A request whose head (request line, headers, the empty line) is
/// exactly `size` bytes long.
fn head_of(size: usize) -> Vec<u8> {
    let body = lockd::xmlrpc::encode_call("lockd.status", &["head".into()]);
    let start = format!(
        "POST / HTTP/1.1\r\nHost: lockd\r\nConnection: close\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nX-Pad: ",
        body.len()
    );
    let pad = size - start.len() - "\r\n\r\n".len();
    format!("{start}{}\r\n\r\n{body}", "p".repeat(pad)).into_bytes()
}

#[test]
fn a_head_at_the_bound_is_served_and_one_byte_more_is_refused() {
    let _alone = crate::support::alone();
    let server = TestServer::start_with(&["--max-header", "4096"]);
    let (status, body) = raw_http(&server.addr, &head_of(4096));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<methodResponse>"), "{body}");
    let (status, body) = raw_http(&server.addr, &head_of(4097));
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("4096"), "{body}");
    // The default bound, 8 KiB.
    let server = TestServer::start();
    assert_eq!(raw_http(&server.addr, &head_of(8192)).0, 200);
    assert_eq!(raw_http(&server.addr, &head_of(8193)).0, 431);
    let cut = server.metric("lockd_connections_cut_total{reason=\"head\"}");
    assert_eq!(cut, 1.0);
}

#[test]
fn a_content_length_past_any_memory_is_refused_and_the_daemon_lives_on() {
    let _alone = crate::support::alone();
    let mut server = TestServer::start();
    // A terabyte, ten, and lengths past what an address can count.
    let lengths = [
        "1000000000000",
        "10000000000000",
        "9223372036854775808",
        "18446744073709551615",
    ];
    for length in lengths {
        let request =
            format!("POST / HTTP/1.1\r\nHost: lockd\r\nContent-Length: {length}\r\n\r\n<?xml");
        let (status, body) = raw_http(&server.addr, request.as_bytes());
        assert_eq!(status, 413, "Content-Length {length}: {body}");
        assert!(
            server.is_running(),
            "Content-Length {length}:\n{}",
            server.log()
        );
    }
    server.call("lockd.status", &["after"]).unwrap();
}
