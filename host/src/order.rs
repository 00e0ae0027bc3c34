//! Requests of one connection are handled in the order they were sent.
//!
//! A client may send several requests on one connection without waiting
//! for the answers (HTTP pipelining). Workers take requests from one queue
//! in arrival order, but once taken, two requests could reach the lock
//! table in either order: a pipelined `lock` then `unlock` could fail. So
//! each request draws a ticket of its connection as it is taken from the
//! queue, and is handled only when the connection's earlier requests have
//! been. Requests of different connections never wait for each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tiny_http::{Request, Server};

/// Tickets per connection, drawn in the order requests leave the queue.
#[derive(Default)]
pub struct Order {
    /// Held while taking a request from the queue and drawing its ticket,
    /// so tickets follow queue order.
    taking: Mutex<()>,
    connections: Mutex<HashMap<SocketAddr, Turns>>,
    turn_passed: Condvar,
}

/// One connection's tickets: `next` to be drawn, `serving` whose turn it is.
#[derive(Debug, Default)]
struct Turns {
    next: u64,
    serving: u64,
    /// Workers waiting for a later turn of this connection.
    waiting: usize,
}

/// A request's place in its connection's order; [`Ticket::wait`] turns it
/// into the [`Turn`] during which the request is handled.
#[must_use]
pub struct Ticket {
    order: Arc<Order>,
    place: Option<(SocketAddr, u64)>,
}

/// While alive, no later request of the same connection is handled.
pub struct Turn {
    order: Arc<Order>,
    place: Option<(SocketAddr, u64)>,
}

impl Order {
    /// The next request from `server` with its ticket; `None` once the
    /// server has stopped.
    pub fn next(self: &Arc<Self>, server: &Server) -> Option<(Request, Ticket)> {
        let _taking = lock(&self.taking);
        let request = server.recv().ok()?;
        let place = request.remote_addr().map(|&addr| {
            let mut connections = lock(&self.connections);
            let turns = connections.entry(addr).or_default();
            let ticket = turns.next;
            turns.next += 1;
            (addr, ticket)
        });
        Some((
            request,
            Ticket {
                order: self.clone(),
                place,
            },
        ))
    }

    /// Connections with requests in progress.
    #[cfg(test)]
    fn connections(&self) -> usize {
        lock(&self.connections).len()
    }
}

impl Ticket {
    /// Waits until the connection's earlier requests have been handled.
    pub fn wait(self) -> Turn {
        if let Some((addr, ticket)) = self.place {
            let mut connections = lock(&self.order.connections);
            loop {
                let turns = connections
                    .get_mut(&addr)
                    .expect("a connection with a ticket out");
                if turns.serving == ticket {
                    break;
                }
                turns.waiting += 1;
                connections = self
                    .order
                    .turn_passed
                    .wait(connections)
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(turns) = connections.get_mut(&addr) {
                    turns.waiting -= 1;
                }
            }
        }
        Turn {
            order: self.order,
            place: self.place,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some((addr, _)) = self.place else { return };
        let mut connections = lock(&self.order.connections);
        let Some(turns) = connections.get_mut(&addr) else {
            return;
        };
        turns.serving += 1;
        if turns.serving == turns.next {
            connections.remove(&addr);
        } else if turns.waiting > 0 {
            self.order.turn_passed.notify_all();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ticket(order: &Arc<Order>, addr: SocketAddr) -> Ticket {
        let mut connections = lock(&order.connections);
        let turns = connections.entry(addr).or_default();
        let ticket = turns.next;
        turns.next += 1;
        Ticket {
            order: order.clone(),
            place: Some((addr, ticket)),
        }
    }

    #[test]
    fn a_later_request_waits_for_the_earlier_one_of_its_connection_only() {
        let order = Arc::new(Order::default());
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let first = ticket(&order, a);
        let second = ticket(&order, a);
        let other = ticket(&order, b);
        let log = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            let log2 = log.clone();
            let later = s.spawn(move || {
                let _turn = second.wait();
                log2.lock().unwrap().push("second");
            });
            // Another connection's request goes ahead at once.
            drop(other.wait());
            std::thread::sleep(Duration::from_millis(50));
            log.lock().unwrap().push("first");
            drop(first.wait());
            later.join().unwrap();
        });
        assert_eq!(*log.lock().unwrap(), ["first", "second"]);
        assert_eq!(order.connections(), 0, "finished connections are forgotten");
    }
}
