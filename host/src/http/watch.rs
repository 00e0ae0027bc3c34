//! What connections make lockd hold, looked at every [`EVERY`]: heads
//! tiny_http is still reading, and the sum of all a connection holds.
//!
//! tiny_http reads a request's head until it ends, with no bound, before
//! lockd sees the request. The kernel tells (`TCP_INFO` of each socket
//! among lockd's descriptors, see [`super::peer::open_on`]) how many bytes
//! lockd has read from each connection;
//! [`Connections`] knows the bytes of the requests tiny_http turned them
//! into. What lies between is what tiny_http holds: a head it is still
//! reading, or requests it has not handed out yet. A connection holding
//! more than `--max-header` (and [`SLACK`]) so at two looks in a row, with
//! no request of it taken in between and no body of it being read, is
//! sending a head without end: it is answered 431, if nothing of it is in
//! progress, and cut off. A head that ends within the bound is measured
//! exactly when its request is taken (see [`super::head`]).
//!
//! When all that connections hold (those bytes, requests queued behind
//! one in progress, answers being written) passes `--max-buffered`, the
//! connections holding most are cut off first, until the rest is within
//! it; a connection holding less than [`FLOOR`] is never cut for it.

use super::connections::{Connections, Held, PIPELINED, Sighting};
use super::cuts::{Cuts, Reason};
use super::front::{Clients, is_own};
use super::peer;
use crate::pool_keeper::Stranded;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often connections are looked at.
pub const EVERY: Duration = Duration::from_millis(50);

/// How soon connections are looked at again while one holds more than
/// half the head bound: a head without end costs the CPU that reads it
/// until it is cut off.
pub const SOON: Duration = Duration::from_millis(10);

/// What tiny_http may hold of a connection beyond a head at the bound
/// without it counting as a head without end: what it reads ahead, and
/// what counting a head back from its parts may miss.
pub const SLACK: usize = 16 * 1024;

/// Looks after which a connection still not read is told to the pool
/// keeper again.
pub const NUDGE_AGAIN: u64 = 20;

/// A connection holding less is never cut off to keep within
/// `--max-buffered`.
pub const FLOOR: usize = 64 * 1024;

/// The bounds looked after.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `--max-header`.
    pub max_header: usize,
    /// `--max-buffered`.
    pub max_buffered: usize,
}

/// The thread looking at connections.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Looks at the connections to `local` every [`EVERY`].
    pub fn start(
        local: SocketAddr,
        connections: Arc<Connections>,
        cuts: Arc<Cuts>,
        front: Option<Arc<Clients>>,
        stranded: Option<Arc<Stranded>>,
        bounds: Bounds,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut looker = Looker {
            local,
            connections,
            cuts,
            front,
            stranded,
            bounds,
            round: 0,
            over: HashMap::new(),
            unpicked: HashMap::new(),
            last_words: super::head::too_long(bounds.max_header).closing_bytes(),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lockd-watch".into())
                .spawn(move || {
                    let mut wait = EVERY;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(wait);
                        wait = match looker.look() {
                            Ok(Look::Calm) => EVERY,
                            Ok(Look::Growing) => SOON,
                            Err(e) => {
                                tracing::warn!("looking at connections: {e}");
                                EVERY
                            }
                        };
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a look found.
enum Look {
    /// Nothing near the head bound.
    Calm,
    /// A connection nearing (or past) it.
    Growing,
}

struct Looker {
    local: SocketAddr,
    connections: Arc<Connections>,
    cuts: Arc<Cuts>,
    /// The front door's clients, which share the port but are not the
    /// HTTP server's to read.
    front: Option<Arc<Clients>>,
    bounds: Bounds,
    round: u64,
    /// Connections over the head bound at the last look, with the
    /// requests they had sent then.
    over: HashMap<SocketAddr, u64>,
    /// Where connections found stranded in tiny_http's pool are told.
    stranded: Option<Arc<Stranded>>,
    /// Connections never read although bytes wait, with the look that
    /// told the keeper of each.
    unpicked: HashMap<SocketAddr, u64>,
    last_words: Vec<u8>,
}

impl Looker {
    fn look(&mut self) -> std::io::Result<Look> {
        self.round += 1;
        // Requests taken in before the kernel is asked were read before.
        let before = self.connections.held();
        let own = self.connections.own_sockets();
        let mut open = peer::open_on(self.local.port(), &own)?;
        if let Some(front) = &self.front {
            open.retain(|connection| !front.contains(&connection.peer));
        }
        let after = self.connections.held();
        let limit = self.bounds.max_header + SLACK;
        let mut over = HashMap::new();
        let mut cuts: Vec<(peer::Open, Reason, bool)> = Vec::new();
        let mut holders = Vec::with_capacity(open.len());
        let mut total = 0;
        let mut pipelined = 0;
        let mut pipeliners = Vec::new();
        let mut hang_ups = Vec::new();
        let mut look = Look::Calm;
        let mut unpicked = HashMap::new();
        let mut stranded = 0;
        for connection in &open {
            // Shut (by lockd or its client): what it holds is being let
            // go; it stays known while its socket is (see `forget_gone`).
            let (addr, Some(read)) = (connection.peer, connection.read) else {
                continue;
            };
            if read == 0 && connection.unread > 0 {
                // Each is told once, and again if it is still not read
                // [`NUDGE_AGAIN`] looks later.
                let told = self.unpicked.get(&addr).copied();
                let told = told.filter(|&at| self.round < at + NUDGE_AGAIN);
                unpicked.insert(addr, told.unwrap_or(self.round));
                stranded += usize::from(told.is_none());
            }
            let held = after.get(&addr).copied().unwrap_or(Held {
                idle: true,
                ..Held::default()
            });
            if let Some(earlier) = before.get(&addr) {
                // Counting heads back can count a byte or so more than was
                // sent: what a quiet connection was counted beyond what was
                // read is forgiven, so that it is never credit for later.
                let quiet = earlier.idle && held.idle && earlier.requests == held.requests;
                if quiet && earlier.taken > read {
                    self.connections.forgive(addr, earlier.taken - read);
                }
            }
            let unseen = usize::try_from(read.saturating_sub(held.taken)).unwrap_or(usize::MAX);
            if held.overflowed {
                // Counted when it overflowed; hung up on here.
                hang_ups.push(*connection);
                continue;
            }
            // While new connections pass through the front door, one
            // straight to the HTTP server that sends requests ahead of
            // its answers is sent there too.
            // (A body being read is not requests sent ahead.)
            let pipelining =
                !held.reading_body && (held.queued > 1 || (!held.idle && unseen > SLACK));
            // More read than a head may be: requests tiny_http has not
            // handed out yet (their connection's first ones, in a flood),
            // or a head without end.
            let over_head = !held.reading_body && unseen > limit;
            // Nothing of it came out as a request yet: for all lockd
            // knows, one head.
            let reason = match held.requests {
                0 => Reason::Head,
                _ => Reason::Queue,
            };
            if (pipelining || over_head) && !is_own(addr) && self.cuts.front() {
                cuts.push((*connection, reason, held.idle));
                continue;
            }
            let pipelining = pipelining && !is_own(addr);
            if pipelining {
                pipelined += unseen.saturating_add(held.bytes);
                look = Look::Growing;
            }
            // (A body being read is bounded by `--max-body` instead.)
            if !held.reading_body && unseen > limit / 2 {
                look = Look::Growing;
                if unseen > limit {
                    // Requests tiny_http read and has not handed out yet
                    // are taken in by the next look; a head is not.
                    let again = self.over.get(&addr) == Some(&held.requests);
                    if again || unseen > 2 * limit {
                        cuts.push((*connection, Reason::Head, held.idle));
                        continue;
                    }
                    over.insert(addr, held.requests);
                }
            }
            if pipelining {
                pipeliners.push((*connection, reason, held.idle));
            }
            let holds = unseen.saturating_add(held.bytes);
            total += holds;
            holders.push((holds, *connection, pipelining));
        }
        self.over = over;
        // Never read although something waits: stranded in tiny_http's
        // pool (see `crate::pool_keeper`), or just accepted, its thread
        // about to read. A nudge too many costs a thread for a few
        // seconds; one too few leaves a client unanswered.
        self.unpicked = unpicked;
        if let Some(found) = self.stranded.as_ref().filter(|_| stranded > 0) {
            found.found(stranded);
        }
        if pipelined > PIPELINED {
            self.cuts.press();
            if self.front.is_some() {
                // The press opens the front door: those pipelining are
                // sent there now, not a look later (while lockd is
                // flooded, a look can take a tenth of a second).
                holders.retain(|&(_, _, pipelining)| !pipelining);
                total = holders.iter().map(|&(holds, ..)| holds).sum();
                cuts.append(&mut pipeliners);
            }
        }
        if total > self.bounds.max_buffered {
            holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
            for (holds, connection, _) in holders {
                if total <= self.bounds.max_buffered || holds < FLOOR {
                    break;
                }
                cuts.push((connection, Reason::Budget, false));
                total -= holds;
            }
        }
        let open: HashMap<SocketAddr, Sighting> = open
            .iter()
            .map(|o| {
                let sighting = Sighting {
                    fd: o.fd,
                    local: o.local,
                    established: o.read.is_some(),
                    // Listening on all addresses, a peer may have a
                    // connection to each (through NAT) before a look tells
                    // them apart: no socket is copied then.
                    shared: o.shared || self.local.ip().is_unspecified(),
                };
                (o.peer, sighting)
            })
            .collect();
        self.connections.forget_gone(self.round, &open);
        if !cuts.is_empty() {
            self.cut(&cuts);
        }
        for connection in &hang_ups {
            if let Err(e) = peer::cut_open(connection, libc::SHUT_RDWR, &[]) {
                tracing::warn!("hanging up on {}: {e}", connection.peer);
            }
        }
        Ok(look)
    }

    fn cut(&self, cuts: &[(peer::Open, Reason, bool)]) {
        for (connection, reason, idle) in cuts {
            let last_words: &[u8] = if *reason == Reason::Head && *idle {
                &self.last_words
            } else {
                &[]
            };
            let peer = connection.peer;
            match peer::cut_open(connection, libc::SHUT_RDWR, last_words) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!("{peer}: cutting it off: {e}");
                    continue;
                }
            }
            tracing::warn!(
                "{peer}: {}: cut off",
                match reason {
                    Reason::Head => "sends a request head without end",
                    Reason::Queue => "pipelines while lockd is under pressure",
                    _ => "holds the most while lockd holds more than --max-buffered",
                }
            );
            self.connections.overflowed(Some(peer));
            self.cuts.cut(*reason);
        }
    }
}
