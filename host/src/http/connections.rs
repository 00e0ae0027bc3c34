//! Requests of one connection are answered in the order they were sent.
//!
//! A client may send several requests on one connection without waiting
//! for the answers (HTTP pipelining), and tiny_http hands them out as
//! they arrive. Handled side by side, a pipelined `lock` then `unlock`
//! could reach the lock table in either order. So a connection has at
//! most one request in progress: the others queue behind it, holding no
//! thread, and whoever answers a request takes the connection's next one.
//! Requests of different connections never wait for each other.
//!
//! tiny_http reads a connection's requests as fast as they come, whether
//! or not the client reads its answers, so the queue is bounded: a client
//! that has [`JUDGED_AT`] requests waiting while an answer to it has been
//! stuck in writing for [`STUCK`] (it does not read), or [`MAX_QUEUED`]
//! requests or `--max-queued` bytes waiting at all, is hung up on (by
//! [`super::watch`]), and the requests it left are dropped unanswered.
//!
//! A connection is remembered while it is open, with the bytes of the
//! requests it sent: [`super::watch`] holds them against what the kernel
//! says lockd read from it, to find heads tiny_http is still reading.

use super::peer;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::Request;

/// The most requests a connection may have waiting behind the one in
/// progress: far more than a client pipelining in earnest sends ahead of
/// reading its answers.
pub const MAX_QUEUED: usize = 4096;

/// Requests waiting from which a client that does not read is hung up on.
pub const JUDGED_AT: usize = 64;

/// How long writing an answer may be stuck before the client is taken not
/// to read.
pub const STUCK: Duration = Duration::from_secs(1);

/// Requests sent ahead of their answers on all connections straight to
/// the HTTP server together, in bytes, from which new connections pass
/// through the front door (see [`super::doors`]): tiny_http reads each
/// connection's requests as fast as they come, and hundreds of
/// connections doing so take the cores from everyone else.
pub const PIPELINED: usize = 1 << 20;

/// What lockd holds for a queued request beyond its head and body: the
/// request's parts and the channels tiny_http orders it by.
pub const PER_REQUEST: usize = 2048;

/// The connections lockd has taken requests from: what is in progress on
/// each, what queues behind it, and what each has sent in all.
pub struct Connections {
    known: Mutex<HashMap<SocketAddr, Connection>>,
    /// What requests queued behind one in progress hold, on all
    /// connections together.
    queued: AtomicUsize,
    /// The most bytes of requests a connection may have queued.
    max_queued: usize,
}

/// How long a connection hung up on stays known after its socket is gone
/// from lockd's descriptors, so that what it sent and tiny_http still
/// holds is dropped as it comes out: a socket lockd shut and its client
/// then closed has no peer to list it by, while tiny_http may still hand
/// out what it read before (a flood's backlog drains within seconds).
/// lockd, which shut it first, keeps its addresses in `TIME_WAIT` for
/// 60 s, so a new connection from them within this time is all but
/// impossible; one would be hung up on at the watch's next look.
const DROPPING: Duration = Duration::from_secs(10);

/// The most connections lockd keeps a copy of the socket of (one more
/// descriptor each); the others' answers are written as before.
pub const MAX_ADOPTED: usize = 4096;

/// The most sockets copied at one look.
const ADOPTED_PER_LOOK: usize = 64;

/// A connection as the watch found it among lockd's descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Sighting {
    /// A descriptor of its socket (which may be closed and reused by the
    /// time it is used: see [`peer::adopt`]).
    pub fd: libc::c_int,
    /// Its address on lockd's side.
    pub local: SocketAddr,
    /// Whether it is established (not shut by lockd or its client).
    pub established: bool,
    /// Whether another connection has, or may have, the same peer address
    /// (to another of lockd's addresses; lockd listening on all of them):
    /// requests do not tell which is whose, so no socket is copied.
    pub shared: bool,
}

/// One connection lockd has taken a request from.
#[derive(Default)]
struct Connection {
    /// Whether a request of it is in progress.
    busy: bool,
    /// Requests waiting behind the one in progress, with what each holds.
    queued: VecDeque<(Request, usize)>,
    /// What the queued requests hold, in all.
    queued_bytes: usize,
    /// Since when an answer is being written to it, and its length.
    writing: Option<(Instant, usize)>,
    /// Whether the body of its request in progress is being read.
    reading_body: bool,
    /// Since when it is to be hung up on, if it is.
    overflowed: Option<Instant>,
    /// Bytes of its requests taken in so far: heads, and bodies as long
    /// as they said they are.
    taken: u64,
    /// Requests taken in so far.
    requests: u64,
    /// The last round of [`Connections::forget_gone`] that saw it open.
    seen: u64,
    /// lockd's own copy of its socket's descriptor, once the watch has
    /// found it established (see [`Connections::socket_of`]).
    socket: Option<Arc<OwnedFd>>,
}

/// What became of a request taken in.
pub enum Admitted {
    /// Its connection had nothing in progress: it is in progress now.
    Now(Request),
    /// Queued behind its connection's request in progress; `presses` if
    /// what all connections have queued just passed [`PIPELINED`].
    Queued { presses: bool },
    /// Queued, and its connection has too much waiting now: hang up on it.
    Overflowing(SocketAddr),
    /// Queued while lockd is under pressure, the second behind the request
    /// in progress: its connection sends requests ahead of their answers
    /// straight to the HTTP server, and is hung up on, to come back
    /// through the front door (see [`super::doors`]).
    Pipelining(SocketAddr),
    /// Its connection was hung up on or cut off: to be dropped unanswered.
    /// (tiny_http read it before. A request waiting in tiny_http's queue
    /// holds its connection's socket, which the watch sees, shut or not,
    /// and so the connection stays known; and while that socket exists,
    /// no new connection can have its addresses.)
    Dropped(Request),
}

/// What one connection holds and has sent, as [`Connections::held`] tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes of requests taken in so far.
    pub taken: u64,
    /// Requests taken in so far.
    pub requests: u64,
    /// Bytes of requests queued, and of an answer being written.
    pub bytes: usize,
    /// Requests queued behind the one in progress.
    pub queued: usize,
    /// Whether it is to be hung up on.
    pub overflowed: bool,
    /// Whether nothing of it is in progress.
    pub idle: bool,
    /// Whether a request body of it is being read.
    pub reading_body: bool,
}

impl Connections {
    /// Connections that may each queue `max_queued` bytes of requests.
    pub fn new(max_queued: usize) -> Self {
        Self {
            known: Mutex::default(),
            queued: AtomicUsize::new(0),
            max_queued,
        }
    }

    /// Takes `request` in: in progress now if its connection had nothing
    /// in progress, or queued behind the request in progress. `size` is
    /// what it sent (head and declared body), `holds` what queueing it
    /// holds; `pressed` if lockd is under pressure, when a connection
    /// that queues two requests is hung up on at once.
    pub fn admit(&self, request: Request, size: usize, holds: usize, pressed: bool) -> Admitted {
        let Some(&addr) = request.remote_addr() else {
            return Admitted::Now(request);
        };
        let mut known = self.lock();
        let connection = known.entry(addr).or_default();
        connection.taken += size as u64;
        connection.requests += 1;
        if connection.overflowed.is_some() {
            return Admitted::Dropped(request);
        }
        if !connection.busy {
            connection.busy = true;
            return Admitted::Now(request);
        }
        connection.queued.push_back((request, holds));
        connection.queued_bytes += holds;
        let queued = connection.queued.len();
        let unread = connection
            .writing
            .is_some_and(|(since, _)| since.elapsed() >= STUCK);
        let over = queued >= MAX_QUEUED
            || connection.queued_bytes > self.max_queued
            || (queued >= JUDGED_AT && unread);
        let before = self.queued.fetch_add(holds, Ordering::Relaxed);
        // One request queued may be a client sending its next call as soon
        // as it has its answer, before the worker that wrote the answer
        // took the connection's next: two are sent ahead.
        let pipelines = pressed && queued >= 2;
        if over || pipelines {
            connection.overflowed = Some(Instant::now());
            return match over {
                true => Admitted::Overflowing(addr),
                false => Admitted::Pipelining(addr),
            };
        }
        Admitted::Queued {
            presses: before <= PIPELINED && before + holds > PIPELINED,
        }
    }

    /// Notes that an answer of `len` bytes is being written to `addr`
    /// (`Some`), or has been (`None`).
    pub fn writing(&self, addr: Option<SocketAddr>, len: Option<usize>) {
        let Some(addr) = addr else { return };
        if let Some(connection) = self.lock().get_mut(&addr) {
            connection.writing = len.map(|len| (Instant::now(), len));
        }
    }

    /// Notes that the body of `addr`'s request in progress is being read
    /// (`true`), or has been, `read` bytes of it (which count as taken in
    /// when its request did not say how long it is).
    pub fn reading_body(&self, addr: Option<SocketAddr>, reading: bool, uncounted: usize) {
        let Some(addr) = addr else { return };
        if let Some(connection) = self.lock().get_mut(&addr) {
            connection.reading_body = reading;
            connection.taken += uncounted as u64;
        }
    }

    /// Takes `excess` off the bytes `addr` is counted to have sent.
    pub fn forgive(&self, addr: SocketAddr, excess: u64) {
        if let Some(connection) = self.lock().get_mut(&addr) {
            connection.taken = connection.taken.saturating_sub(excess);
        }
    }

    /// Marks `addr` as hung up on: the requests it queued, and those
    /// still to come out of tiny_http's queue, are dropped. (It may have
    /// none taken in yet: a connection cut off in a flood.)
    pub fn overflowed(&self, addr: Option<SocketAddr>) {
        let Some(addr) = addr else { return };
        let mut known = self.lock();
        let connection = known.entry(addr).or_default();
        connection.overflowed.get_or_insert_with(Instant::now);
    }

    /// Whether `addr` was hung up on (or cut off).
    pub fn is_overflowed(&self, addr: SocketAddr) -> bool {
        self.lock()
            .get(&addr)
            .is_some_and(|c| c.overflowed.is_some())
    }

    /// Called when the request in progress on `addr` has been answered:
    /// the connection's next request, now in progress, if one queues, and
    /// whether it is one that overflowed (to be dropped, not answered).
    pub fn next(&self, addr: Option<SocketAddr>) -> Option<(Request, bool)> {
        let addr = addr?;
        let mut known = self.lock();
        let connection = known.get_mut(&addr)?;
        let overflowed = connection.overflowed.is_some();
        match connection.queued.pop_front() {
            Some((request, holds)) => {
                connection.queued_bytes -= holds;
                self.queued.fetch_sub(holds, Ordering::Relaxed);
                Some((request, overflowed))
            }
            None => {
                connection.busy = false;
                None
            }
        }
    }

    /// What each connection holds and has sent.
    pub fn held(&self) -> HashMap<SocketAddr, Held> {
        self.lock()
            .iter()
            .map(|(&addr, c)| {
                let writing = c.writing.map_or(0, |(_, len)| len);
                let held = Held {
                    taken: c.taken,
                    requests: c.requests,
                    bytes: c.queued_bytes + writing,
                    queued: c.queued.len(),
                    overflowed: c.overflowed.is_some(),
                    idle: !c.busy,
                    reading_body: c.reading_body,
                };
                (addr, held)
            })
            .collect()
    }

    /// Round `round` of looking at the open connections saw `open` open: forgets the idle ones that neither it nor the
    /// round before saw (a connection taken in after a look began is
    /// kept), but for those hung up on less than [`DROPPING`] ago; keeps a
    /// copy of the socket of those established (see `socket_of`), and
    /// lets go of those no longer.
    pub fn forget_gone(&self, round: u64, open: &HashMap<SocketAddr, Sighting>) {
        let mut known = self.lock();
        let mut adopted = known.values().filter(|c| c.socket.is_some()).count();
        // A few system calls each, under the lock requests are taken in
        // under: a storm of new connections is adopted over a few looks.
        let most = (adopted + ADOPTED_PER_LOOK).min(MAX_ADOPTED);
        for (addr, connection) in known.iter_mut() {
            let sighting = open.get(addr);
            if sighting.is_some() || connection.seen == 0 {
                connection.seen = round;
            }
            match sighting {
                // A connection that has been answered once is likely to
                // ask again: its answers can be written without a thread
                // of their own (see `socket_of`).
                Some(s) if s.established && !s.shared && connection.socket.is_none() => {
                    if connection.requests > 1 && adopted < most {
                        connection.socket = peer::adopt(s.fd, *addr, s.local).map(Arc::new);
                        adopted += usize::from(connection.socket.is_some());
                    }
                }
                Some(s) if s.established && !s.shared => {}
                // Shut or gone: its socket is let go.
                _ => connection.socket = None,
            }
        }
        known.retain(|_, c| {
            c.busy || c.seen + 1 >= round || c.overflowed.is_some_and(|at| at.elapsed() < DROPPING)
        });
    }

    /// lockd's own copy of the socket of the connection at `addr`, if it
    /// has one: the socket that connection was found to have, for as long
    /// as the copy is held. (A client that reconnects from the same
    /// address before the copy is let go has a new socket, which the copy
    /// is not: writing to it fails, as the old one is shut.)
    pub fn socket_of(&self, addr: SocketAddr) -> Option<Arc<OwnedFd>> {
        self.lock().get(&addr)?.socket.clone()
    }

    /// Lets go of the copy of `addr`'s socket, which failed.
    pub fn drop_socket(&self, addr: SocketAddr) {
        if let Some(connection) = self.lock().get_mut(&addr) {
            connection.socket = None;
        }
    }

    /// The descriptors of lockd's own copies of sockets, which the watch
    /// does not look at.
    pub fn own_sockets(&self) -> HashSet<libc::c_int> {
        self.lock()
            .values()
            .filter_map(|c| Some(c.socket.as_ref()?.as_raw_fd()))
            .collect()
    }

    /// Connections known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Connection>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::TestRequest;

    impl Connections {
        fn admit_one(&self, request: Request) -> Admitted {
            self.admit(request, 100, 1000, false)
        }
    }

    fn request(from: &str, path: &str) -> Request {
        TestRequest::new()
            .with_remote_addr(from.parse().unwrap())
            .with_path(path)
            .into()
    }

    #[test]
    fn a_later_request_waits_for_the_earlier_one_of_its_connection_only() {
        let connections = Connections::new(usize::MAX);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let first = connections.admit_one(request("127.0.0.1:1000", "/1"));
        assert!(matches!(first, Admitted::Now(r) if r.url() == "/1"));
        assert!(matches!(
            connections.admit_one(request("127.0.0.1:1000", "/2")),
            Admitted::Queued { .. }
        ));
        assert!(matches!(
            connections.admit_one(request("127.0.0.1:1000", "/3")),
            Admitted::Queued { .. }
        ));
        let other = connections.admit_one(request("127.0.0.1:1001", "/x"));
        assert!(
            matches!(other, Admitted::Now(_)),
            "another connection's request goes ahead at once"
        );
        let urls: Vec<String> = std::iter::from_fn(|| connections.next(Some(a)))
            .map(|(r, _)| r.url().to_owned())
            .collect();
        assert_eq!(urls, ["/2", "/3"]);
        assert!(
            connections
                .next(Some("127.0.0.1:1001".parse().unwrap()))
                .is_none()
        );
        assert_eq!(connections.len(), 2, "idle connections are remembered");
        let sighting = Sighting {
            fd: -1,
            local: "127.0.0.1:8000".parse().unwrap(),
            established: true,
            shared: false,
        };
        let open = [(a, sighting)].into_iter().collect();
        connections.forget_gone(1, &open);
        connections.forget_gone(2, &open);
        connections.forget_gone(3, &open);
        assert_eq!(connections.len(), 1, "closed connections are forgotten");
    }

    #[test]
    fn a_connection_queueing_too_many_requests_overflows_once() {
        let connections = Connections::new(usize::MAX);
        let from = "127.0.0.1:1000";
        assert!(matches!(
            connections.admit_one(request(from, "/0")),
            Admitted::Now(_)
        ));
        for i in 1..MAX_QUEUED {
            assert!(matches!(
                connections.admit_one(request(from, &format!("/{i}"))),
                Admitted::Queued { .. }
            ));
        }
        let addr = from.parse().unwrap();
        assert!(matches!(
            connections.admit_one(request(from, "/last")),
            Admitted::Overflowing(a) if a == addr
        ));
        assert!(matches!(
            connections.admit_one(request(from, "/later")),
            Admitted::Dropped(r) if r.url() == "/later"
        ));
        let (_, overflowed) = connections.next(Some(addr)).unwrap();
        assert!(overflowed, "what it left is dropped");
    }

    #[test]
    fn a_connection_cut_off_with_nothing_in_progress_has_what_comes_after_dropped() {
        let connections = Connections::new(usize::MAX);
        let from = "127.0.0.1:1000";
        let addr = from.parse().unwrap();
        assert!(matches!(
            connections.admit_one(request(from, "/0")),
            Admitted::Now(_)
        ));
        assert!(connections.next(Some(addr)).is_none());
        connections.overflowed(Some(addr));
        // Its socket gone from lockd's descriptors (shut, then closed by
        // its client), while tiny_http still hands out what it read.
        let none = HashMap::new();
        for round in 1..5 {
            connections.forget_gone(round, &none);
        }
        assert_dropped(&connections, from, 1..3);
        assert!(matches!(
            connections.admit_one(request("127.0.0.1:1001", "/x")),
            Admitted::Now(_)
        ));
    }

    #[test]
    fn a_connection_cut_off_before_any_request_of_it_came_out_has_them_all_dropped() {
        let connections = Connections::new(usize::MAX);
        let from = "127.0.0.1:1000";
        connections.overflowed(Some(from.parse().unwrap()));
        assert_dropped(&connections, from, 0..3);
    }

    /// Requests `paths` of the connection `from`, each dropped unanswered.
    fn assert_dropped(connections: &Connections, from: &str, paths: std::ops::Range<usize>) {
        for i in paths {
            assert!(
                matches!(
                    connections.admit_one(request(from, &format!("/{i}"))),
                    Admitted::Dropped(_)
                ),
                "request {i} of a connection cut off is not answered"
            );
        }
    }

    #[test]
    fn a_connection_queueing_too_many_bytes_overflows() {
        let connections = Connections::new(10_000);
        let from = "127.0.0.1:1000";
        assert!(matches!(
            connections.admit_one(request(from, "/0")),
            Admitted::Now(_)
        ));
        for i in 1..=10 {
            let admitted = connections.admit_one(request(from, &format!("/{i}")));
            assert!(matches!(admitted, Admitted::Queued { .. }), "{i}");
        }
        let admitted = connections.admit_one(request(from, "/11"));
        assert!(matches!(admitted, Admitted::Overflowing(_)));
        let held = connections.held()[&from.parse().unwrap()];
        assert_eq!(held.bytes, 11_000);
        assert_eq!((held.taken, held.requests), (1200, 12));
    }

    #[test]
    fn under_pressure_a_connection_that_queues_is_hung_up_on_at_once() {
        let connections = Connections::new(usize::MAX);
        let (from, other) = ("127.0.0.1:1000", "127.0.0.1:1001");
        let admit = |from, path: &str| connections.admit(request(from, path), 100, 1000, true);
        assert!(matches!(admit(from, "/0"), Admitted::Now(_)));
        assert!(
            matches!(admit(other, "/x"), Admitted::Now(_)),
            "one request at a time is welcome under pressure"
        );
        let addr: SocketAddr = from.parse().unwrap();
        assert!(
            matches!(admit(from, "/1"), Admitted::Queued { .. }),
            "a client's next call may come before its connection is free"
        );
        assert!(matches!(admit(from, "/2"), Admitted::Pipelining(a) if a == addr));
        assert!(matches!(admit(from, "/3"), Admitted::Dropped(_)));
        assert!(connections.is_overflowed(addr));
        assert!(!connections.is_overflowed(other.parse().unwrap()));
    }

    #[test]
    fn what_all_connections_queue_presses_once_it_passes_the_bound() {
        let connections = Connections::new(usize::MAX);
        let holds = PIPELINED / 4 + 1;
        let mut presses = Vec::new();
        for c in 0..8 {
            let from = format!("127.0.0.1:{}", 1000 + c);
            let first = connections.admit(request(&from, "/0"), 100, holds, false);
            assert!(matches!(first, Admitted::Now(_)));
            match connections.admit(request(&from, "/1"), 100, holds, false) {
                Admitted::Queued { presses: p } => presses.push(p),
                _ => panic!("{from}: not queued"),
            }
        }
        // The fourth queued request passes the bound: it presses, once.
        assert_eq!(
            presses,
            [false, false, false, true, false, false, false, false]
        );
        // Answered, they queue no more: passing the bound again presses again.
        for c in 0..8 {
            let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + c).parse().unwrap();
            assert!(connections.next(Some(addr)).is_some());
        }
        let again = connections.admit(request("127.0.0.1:1000", "/2"), 100, PIPELINED + 1, false);
        assert!(matches!(again, Admitted::Queued { presses: true }));
    }

    #[test]
    fn a_connection_that_does_not_read_overflows_sooner() {
        let connections = Connections::new(usize::MAX);
        let from = "127.0.0.1:1000";
        let addr: SocketAddr = from.parse().unwrap();
        assert!(matches!(
            connections.admit_one(request(from, "/0")),
            Admitted::Now(_)
        ));
        connections.writing(Some(addr), Some(100));
        for i in 1..JUDGED_AT {
            let admitted = connections.admit_one(request(from, &format!("/{i}")));
            assert!(
                matches!(admitted, Admitted::Queued { .. }),
                "{i}: writing only since now"
            );
        }
        // The answer has been stuck in writing for a while now.
        connections.lock().get_mut(&addr).unwrap().writing =
            Some((Instant::now().checked_sub(STUCK).unwrap(), 100));
        let admitted = connections.admit_one(request(from, "/stuck"));
        assert!(matches!(admitted, Admitted::Overflowing(_)));
    }
}
