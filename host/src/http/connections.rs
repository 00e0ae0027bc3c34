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
//! requests waiting at all, is hung up on (see [`super::peer::hang_up`]),
//! and the requests it left are dropped unanswered.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::Request;

/// The most requests a connection may have waiting behind the one in
/// progress: far more than a client pipelining in earnest sends ahead of
/// reading its answers (a queued request costs about a kilobyte).
pub const MAX_QUEUED: usize = 4096;

/// Requests waiting from which a client that does not read is hung up on.
pub const JUDGED_AT: usize = 64;

/// How long writing an answer may be stuck before the client is taken not
/// to read.
pub const STUCK: Duration = Duration::from_secs(1);

/// The connections with a request in progress, and what queues behind it.
#[derive(Default)]
pub struct Connections {
    busy: Mutex<HashMap<SocketAddr, Busy>>,
}

/// A connection with a request in progress.
#[derive(Default)]
struct Busy {
    queued: VecDeque<Request>,
    /// Since when an answer is being written to it, if one is.
    writing: Option<Instant>,
    /// Set once it is to be hung up on.
    overflowed: bool,
}

/// What became of a request taken in.
pub enum Admitted {
    /// Its connection had nothing in progress: it is in progress now.
    Now(Request),
    /// Queued behind its connection's request in progress.
    Queued,
    /// Queued, and its connection has too many requests waiting now: hang
    /// up on it.
    Overflowing(SocketAddr),
}

impl Connections {
    /// Takes `request` in: in progress now if its connection had nothing
    /// in progress, or queued behind the request in progress.
    pub fn admit(&self, request: Request) -> Admitted {
        let Some(&addr) = request.remote_addr() else {
            return Admitted::Now(request);
        };
        let mut busy = self.lock();
        let Some(connection) = busy.get_mut(&addr) else {
            busy.insert(addr, Busy::default());
            return Admitted::Now(request);
        };
        connection.queued.push_back(request);
        let queued = connection.queued.len();
        let unread = connection
            .writing
            .is_some_and(|since| since.elapsed() >= STUCK);
        if (queued >= MAX_QUEUED || (queued >= JUDGED_AT && unread)) && !connection.overflowed {
            connection.overflowed = true;
            return Admitted::Overflowing(addr);
        }
        Admitted::Queued
    }

    /// Notes that an answer to `addr` is being written (`true`) or has
    /// been (`false`).
    pub fn writing(&self, addr: Option<SocketAddr>, writing: bool) {
        let Some(addr) = addr else { return };
        if let Some(connection) = self.lock().get_mut(&addr) {
            connection.writing = writing.then(Instant::now);
        }
    }

    /// Called when the request in progress on `addr` has been answered:
    /// the connection's next request, now in progress, if one queues, and
    /// whether it is one that overflowed (to be dropped, not answered).
    pub fn next(&self, addr: Option<SocketAddr>) -> Option<(Request, bool)> {
        let addr = addr?;
        let mut busy = self.lock();
        let connection = busy.get_mut(&addr)?;
        let overflowed = connection.overflowed;
        let next = connection.queued.pop_front();
        if next.is_none() {
            busy.remove(&addr);
        }
        next.map(|request| (request, overflowed))
    }

    /// Connections with a request in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Busy>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::TestRequest;

    fn request(from: &str, path: &str) -> Request {
        TestRequest::new()
            .with_remote_addr(from.parse().unwrap())
            .with_path(path)
            .into()
    }

    #[test]
    fn a_later_request_waits_for_the_earlier_one_of_its_connection_only() {
        let connections = Connections::default();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let first = connections.admit(request("127.0.0.1:1000", "/1"));
        assert!(matches!(first, Admitted::Now(r) if r.url() == "/1"));
        assert!(matches!(
            connections.admit(request("127.0.0.1:1000", "/2")),
            Admitted::Queued
        ));
        assert!(matches!(
            connections.admit(request("127.0.0.1:1000", "/3")),
            Admitted::Queued
        ));
        let other = connections.admit(request("127.0.0.1:1001", "/x"));
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
        assert_eq!(connections.len(), 0, "finished connections are forgotten");
    }

    #[test]
    fn a_connection_queueing_too_many_requests_overflows_once() {
        let connections = Connections::default();
        let from = "127.0.0.1:1000";
        assert!(matches!(
            connections.admit(request(from, "/0")),
            Admitted::Now(_)
        ));
        for i in 1..MAX_QUEUED {
            assert!(matches!(
                connections.admit(request(from, &format!("/{i}"))),
                Admitted::Queued
            ));
        }
        let addr = from.parse().unwrap();
        assert!(matches!(
            connections.admit(request(from, "/last")),
            Admitted::Overflowing(a) if a == addr
        ));
        assert!(matches!(
            connections.admit(request(from, "/later")),
            Admitted::Queued
        ));
        let (_, overflowed) = connections.next(Some(addr)).unwrap();
        assert!(overflowed, "what it left is dropped");
    }

    #[test]
    fn a_connection_that_does_not_read_overflows_sooner() {
        let connections = Connections::default();
        let from = "127.0.0.1:1000";
        let addr: SocketAddr = from.parse().unwrap();
        assert!(matches!(
            connections.admit(request(from, "/0")),
            Admitted::Now(_)
        ));
        connections.writing(Some(addr), true);
        for i in 1..JUDGED_AT {
            let admitted = connections.admit(request(from, &format!("/{i}")));
            assert!(
                matches!(admitted, Admitted::Queued),
                "{i}: writing only since now"
            );
        }
        // The answer has been stuck in writing for a while now.
        connections.lock().get_mut(&addr).unwrap().writing = Instant::now().checked_sub(STUCK);
        let admitted = connections.admit(request(from, "/stuck"));
        assert!(matches!(admitted, Admitted::Overflowing(_)));
    }
}
