//! Requests of one connection are answered in the order they were sent.
//!
//! A client may send several requests on one connection without waiting
//! for the answers (HTTP pipelining), and tiny_http hands them out as
//! they arrive. Handled side by side, a pipelined `lock` then `unlock`
//! could reach the lock table in either order. So a connection has at
//! most one request in progress: the others queue behind it, holding no
//! thread, and whoever answers a request takes the connection's next one.
//! Requests of different connections never wait for each other.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use tiny_http::Request;

/// The connections with a request in progress, and what queues behind it.
#[derive(Default)]
pub struct Connections {
    busy: Mutex<HashMap<SocketAddr, VecDeque<Request>>>,
}

impl Connections {
    /// Takes `request` in: returns it if its connection had nothing in
    /// progress (it is in progress now), or queues it behind the request
    /// in progress.
    pub fn admit(&self, request: Request) -> Option<Request> {
        let Some(&addr) = request.remote_addr() else {
            return Some(request);
        };
        let mut busy = self.lock();
        match busy.get_mut(&addr) {
            Some(queued) => {
                queued.push_back(request);
                None
            }
            None => {
                busy.insert(addr, VecDeque::new());
                Some(request)
            }
        }
    }

    /// Called when the request in progress on `addr` has been answered:
    /// the connection's next request, now in progress, if one queues.
    pub fn next(&self, addr: Option<SocketAddr>) -> Option<Request> {
        let addr = addr?;
        let mut busy = self.lock();
        let queued = busy.get_mut(&addr)?;
        let next = queued.pop_front();
        if next.is_none() {
            busy.remove(&addr);
        }
        next
    }

    /// Connections with a request in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, VecDeque<Request>>> {
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
        assert_eq!(first.map(|r| r.url().to_owned()).as_deref(), Some("/1"));
        assert!(connections.admit(request("127.0.0.1:1000", "/2")).is_none());
        assert!(connections.admit(request("127.0.0.1:1000", "/3")).is_none());
        let other = connections.admit(request("127.0.0.1:1001", "/x"));
        assert!(
            other.is_some(),
            "another connection's request goes ahead at once"
        );
        let urls: Vec<String> = std::iter::from_fn(|| connections.next(Some(a)))
            .map(|r| r.url().to_owned())
            .collect();
        assert_eq!(urls, ["/2", "/3"]);
        assert!(
            connections
                .next(Some("127.0.0.1:1001".parse().unwrap()))
                .is_none()
        );
        assert_eq!(connections.len(), 0, "finished connections are forgotten");
    }
}
