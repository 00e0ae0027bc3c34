//! Keeps every accepted connection served.
//!
//! tiny_http gives each accepted connection to a thread of its pool for the
//! connection's whole life. When connections arrive together while pool
//! threads are idle, the pool can count an idle thread that has already
//! been handed the previous connection, and queue the new connection behind
//! it instead of starting a thread: that connection is then not read until
//! some other connection closes, which with keep-alive clients may be never
//! (32 connections opened at once left one unanswered for good).
//!
//! Every accepted connection makes the pool run its queue: a thread that
//! finishes a connection takes the oldest queued one, so each connection
//! opened and closed at once (a nudge) brings at most one stranded
//! connection to a thread. Stranded connections cannot be seen from
//! outside the pool, so the keeper nudges once every [`BUSY`] while
//! requests are coming in, and [`BURST`] times every [`IDLE`] when none
//! came (connections that send nothing, or clients stranded before their
//! first request): about 50 and 32 connections a second, well under 1% of
//! a core either way. It also sends a probe request each round; one not
//! answered within [`PROMPT`] is itself stranded, and the keeper then
//! nudges in bursts of [`RESCUE_BURST`], a millisecond apart, until it is
//! (for at most [`PERSIST`]). Workers
//! answer the probe without counting or logging it.
//!
//! Stranded connections that have sent something are seen from outside
//! after all: the connection watch ([`crate::http`]) finds connections
//! lockd accepted and never read a byte of although they wait to be read,
//! and tells the keeper ([`Stranded`]), which nudges once for each at once:
//! a burst of hundreds of connections is then all served within a look,
//! not at a nudge per round.
//!
//! The keeper also watches tiny_http's accept thread, which ends for good
//! when `accept` fails (or panics, when the process runs out of file
//! descriptors): connections then stay in the listening socket's accept
//! queue. A queue that has never shrunk nor emptied for `wedged_after`
//! means nobody accepts any more, and the daemon exits to be restarted.
//! How busy the workers are plays no part in it: a daemon whose clients
//! keep it busy goes on.

use crate::http::AcceptQueue;
use crate::socket;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the keeper connects while requests are being served.
pub const BUSY: Duration = Duration::from_millis(20);
/// How often the keeper connects when no request came since the last time.
pub const IDLE: Duration = Duration::from_millis(250);
/// Nudges per round when no request came since the last one.
pub const BURST: usize = 8;
/// A probe answered later than this was stranded.
pub const PROMPT: Duration = Duration::from_millis(20);
/// Nudges between two looks at a stranded probe.
const RESCUE_BURST: usize = 16;
/// The longest the keeper nudges for one stranded probe.
pub const PERSIST: Duration = Duration::from_secs(1);
/// The path of the keeper's probe; workers answer it with 204.
pub const PROBE_PATH: &str = "/.lockd-pool-keeper";
/// The most nudges for connections found stranded at one look.
pub const MAX_RESCUE: usize = 4096;

/// Connections found stranded (accepted, waiting to be read, never read),
/// for the keeper to rescue.
#[derive(Debug, Default)]
pub struct Stranded {
    count: Mutex<usize>,
    found: Condvar,
}

impl Stranded {
    /// Notes that `n` connections are stranded now.
    pub fn found(&self, n: usize) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = (*count).max(n);
        self.found.notify_all();
    }

    /// Waits for stranded connections to be found, for `at_most`; takes
    /// how many were.
    fn wait(&self, at_most: Duration) -> usize {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (mut count, _) = self
            .found
            .wait_timeout_while(count, at_most, |n| *n == 0)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *count)
    }
}

/// The keeper's thread; stopped when dropped.
pub struct PoolKeeper {
    stop: Arc<AtomicBool>,
    wedged: Arc<AtomicBool>,
    stranded: Arc<Stranded>,
    thread: Option<JoinHandle<()>>,
}

impl PoolKeeper {
    /// Starts keeping the pool of the server listening on `listen`, which
    /// counts the requests it receives in `requests`; `queue` is its
    /// listening socket's accept queue. See [`wedged`](Self::wedged).
    pub fn start(
        listen: SocketAddr,
        queue: AcceptQueue,
        requests: Arc<AtomicU64>,
        wedged_after: Duration,
    ) -> std::io::Result<Self> {
        let target = reachable(listen);
        let stop = Arc::new(AtomicBool::new(false));
        let wedged = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let found_wedged = wedged.clone();
        let stranded = Arc::new(Stranded::default());
        let rescue = stranded.clone();
        let thread = std::thread::Builder::new()
            .name("lockd-pool-keeper".into())
            .spawn(move || {
                let mut seen = requests.load(Ordering::Relaxed);
                let mut watch = AcceptWatch::default();
                // When the next round is due, and its nudges.
                let mut round = (Instant::now() + IDLE, BURST);
                while !stopped.load(Ordering::Relaxed) {
                    let found = rescue.wait(round.0.saturating_duration_since(Instant::now()));
                    if found > 0 {
                        rescue_stranded(target, found, &stopped);
                    }
                    if let Ok(len) = queue.waiting()
                        && watch.stuck(len, Instant::now(), wedged_after)
                    {
                        tracing::error!(
                            "connections have waited {wedged_after:?} to be accepted and none \
                             was: the HTTP server no longer accepts them"
                        );
                        found_wedged.store(true, Ordering::Relaxed);
                        return;
                    }
                    if Instant::now() < round.0 {
                        continue;
                    }
                    if let Err(e) = keep(target, round.1, &stopped) {
                        tracing::debug!("pool keeper: {e}");
                    }
                    let now = requests.load(Ordering::Relaxed);
                    round = match now == seen {
                        true => (Instant::now() + IDLE, BURST),
                        false => (Instant::now() + BUSY, 1),
                    };
                    seen = now;
                }
            })?;
        Ok(Self {
            stop,
            wedged,
            stranded,
            thread: Some(thread),
        })
    }

    /// Where connections found stranded are told.
    pub fn stranded(&self) -> Arc<Stranded> {
        self.stranded.clone()
    }

    /// Whether new connections are no longer served.
    pub fn wedged(&self) -> bool {
        self.wedged.load(Ordering::Relaxed)
    }
}

impl Drop for PoolKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Tells a listening socket whose connections are being accepted from
/// one whose connections are not.
#[derive(Default)]
struct AcceptWatch {
    /// Since when the accept queue has not been empty, and how long it
    /// was last seen.
    waiting: Option<(Instant, u32)>,
}

impl AcceptWatch {
    /// Notes the queue's length `len` at `now`; true once it has neither
    /// emptied nor shrunk for `limit`.
    fn stuck(&mut self, len: u32, now: Instant, limit: Duration) -> bool {
        match self.waiting {
            _ if len == 0 => self.waiting = None,
            Some((_, last)) if len < last => self.waiting = Some((now, len)),
            Some((since, _)) => {
                self.waiting = Some((since, len));
                return now.duration_since(since) >= limit;
            }
            None => self.waiting = Some((now, len)),
        }
        false
    }
}

/// Nudges once for each of `found` connections found stranded
/// ([`MAX_RESCUE`] at most), for at most [`PERSIST`]; stops at the first
/// nudge that cannot connect (a full listen queue: more would only wait).
fn rescue_stranded(target: SocketAddr, found: usize, stopped: &AtomicBool) {
    let until = Instant::now() + PERSIST;
    for _ in 0..found.min(MAX_RESCUE) {
        if stopped.load(Ordering::Relaxed) || Instant::now() >= until {
            return;
        }
        if connect(target, Duration::from_millis(100)).is_err() {
            return;
        }
    }
}

/// Nudges `nudges` times, sends a probe and, if it is stranded, nudges the
/// pool until it is answered or [`PERSIST`] has passed.
fn keep(target: SocketAddr, nudges: usize, stopped: &AtomicBool) -> std::io::Result<()> {
    for _ in 0..nudges {
        connect(target, Duration::from_secs(1))?;
    }
    let mut probe = connect(target, Duration::from_secs(1))?;
    probe.write_all(format!("GET {PROBE_PATH} HTTP/1.0\r\n\r\n").as_bytes())?;
    probe.set_read_timeout(Some(PROMPT))?;
    let mut byte = [0; 1];
    let mut answered = |probe: &mut TcpStream| match probe.read(&mut byte) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e),
    };
    if answered(&mut probe)? {
        return Ok(());
    }
    probe.set_read_timeout(Some(Duration::from_millis(1)))?;
    let start = Instant::now();
    let mut nudges = 0;
    while !stopped.load(Ordering::Relaxed) && start.elapsed() < PERSIST {
        // Connections arriving in a burst are stranded by the hundred:
        // rescue them in bursts too. A full listen backlog makes
        // connecting time out: keep trying.
        for _ in 0..RESCUE_BURST {
            let _ = connect(target, Duration::from_millis(100));
        }
        nudges += RESCUE_BURST;
        if answered(&mut probe)? {
            tracing::debug!("pool keeper: {nudges} connections brought stranded ones to threads");
            break;
        }
    }
    Ok(())
}

/// The address the keeper's connections come from when it reaches lockd
/// over IPv4: `--max-connections` lets them through to tiny_http even while
/// it turns clients away (see [`crate::http::overflow`]), so that
/// connections stranded before then are still rescued.
pub const KEEPER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A connection to `target`, from [`KEEPER_SOURCE`] if it is an IPv4
/// address (every 127.0.0.0/8 address is this machine's); from wherever
/// the kernel says if that cannot be (no such address here, or a firewall
/// refusing it).
fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    if !target.is_ipv4() {
        return TcpStream::connect_timeout(&target, timeout);
    }
    let from_keeper = || -> std::io::Result<TcpStream> {
        let stream = socket::tcp_for(target)?;
        // connect(2) gives up after SO_SNDTIMEO.
        let tv = socket::timeval(timeout);
        socket::set(&stream, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
        // The keeper closes first: hundreds of nudges a second leave
        // their ports in TIME_WAIT.
        socket::bind_for_connect(&stream, KEEPER_SOURCE.into())?;
        socket::connect(&stream, target)?;
        Ok(TcpStream::from(stream))
    };
    from_keeper().or_else(|_| TcpStream::connect_timeout(&target, timeout))
}

/// Where to connect to reach a server listening on `listen`: a wildcard
/// address is reached on the loopback address of its family.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accept_queue_is_stuck_only_if_it_never_shrinks_for_the_limit() {
        let limit = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watch = AcceptWatch::default();
        assert!(!watch.stuck(0, at(0), limit));
        assert!(!watch.stuck(3, at(1), limit));
        assert!(!watch.stuck(5, at(20), limit));
        assert!(!watch.stuck(2, at(30), limit), "it shrank: accepts happen");
        assert!(!watch.stuck(9, at(59), limit));
        assert!(
            watch.stuck(9, at(61), limit),
            "neither shrank nor emptied for 31 s"
        );
        let mut busy = AcceptWatch::default();
        for s in 0..100 {
            // A busy server with connections always waiting, but taken.
            assert!(!busy.stuck(10 - (s % 3) as u32, at(s), limit), "at {s}");
        }
    }

    #[test]
    fn stranded_connections_found_wake_the_keeper() {
        let stranded = Arc::new(Stranded::default());
        let found = stranded.clone();
        let finder = std::thread::spawn(move || found.found(3));
        // Woken by what was found, however long it waits otherwise.
        assert_eq!(stranded.wait(Duration::from_secs(600)), 3);
        finder.join().unwrap();
        assert_eq!(stranded.wait(Duration::ZERO), 0, "taken");
        stranded.found(3);
        stranded.found(2);
        assert_eq!(
            stranded.wait(Duration::ZERO),
            3,
            "the most found at a look, not the sum of looks"
        );
    }

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:8000".parse().unwrap()),
            "[::1]:8000".parse().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3:8000".parse().unwrap()),
            "10.1.2.3:8000".parse().unwrap()
        );
    }
}
