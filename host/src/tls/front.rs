//! lockd's TLS front door: accepts on the public port, runs each
//! connection's handshake and relay on a thread of its own (see
//! [`super::relay`]), and hands the plaintext to lockd's HTTP server over
//! a loopback connection.
//!
//! The accept thread only accepts: a client that never finishes its
//! handshake holds its own sleeping thread until the handshake timeout,
//! never the door. The HTTP server sees each TLS connection as one
//! loopback connection, so everything it does per connection (ordering,
//! noticing a client that hung up, hanging up on one) works unchanged.
//! [`Relayed`] tells it who is at the other end: the client's address and
//! the user its certificate names. A loopback connection that lockd did
//! not make itself is not in it, and is refused.

use super::relay;
use super::server::{ServerTls, user_of};
use crate::acceptor::Acceptor;
use crate::metrics::Sample;
use rustls::ServerConnection;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connection thread's stack: a handshake and a relay need little.
const STACK: usize = 256 * 1024;

/// How long a connection whose handshake failed is kept to let its client
/// read why (see [`relay::linger`]).
const LINGER: Duration = Duration::from_secs(1);

/// How the front treats connections.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// A client that takes nothing of what waits for it for this long is
    /// closed (silence is the HTTP server's to judge).
    pub idle: Option<Duration>,
    /// Connections past this many open at once are closed at once.
    pub max_connections: Option<usize>,
    /// The longest a client may take to complete its handshake.
    pub handshake_timeout: Duration,
}

/// Who is at the other end of a relayed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub client: SocketAddr,
    /// The user its certificate names, if it showed one.
    pub user: Option<String>,
}

/// A connection being relayed: who is behind it, and its loopback
/// connection to the HTTP server.
#[derive(Debug)]
struct Relay {
    peer: Peer,
    upstream: TcpStream,
}

/// The connections being relayed, by the address their loopback
/// connection to the HTTP server comes from.
#[derive(Debug, Default)]
pub struct Relayed {
    relays: Mutex<HashMap<SocketAddr, Relay>>,
    open: AtomicUsize,
    /// Handshakes that failed or timed out, since the start.
    pub failed_handshakes: AtomicU64,
}

impl Relayed {
    /// Who is behind the loopback connection from `from`, if lockd made it.
    pub fn peer(&self, from: Option<&SocketAddr>) -> Option<Peer> {
        self.lock().get(from?).map(|relay| relay.peer.clone())
    }

    /// Winds the relays down, for a daemon that stops once it has answered
    /// what it took: each loopback connection is shut for writing, so the
    /// HTTP server closes it once its answers are written, and the relay
    /// passes them on and ends the TLS connection with close_notify.
    /// Returns once every relay has ended, or at `deadline`.
    pub fn finish(&self, deadline: Instant) {
        for relay in self.lock().values() {
            let _ = relay.upstream.shutdown(std::net::Shutdown::Write);
        }
        while !self.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// TLS connections open, handshaking or relaying.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// What `/metrics` shows of TLS.
    pub fn samples(&self) -> Vec<Sample> {
        vec![
            Sample {
                name: "lockd_tls_connections",
                help: "TLS connections open now, in their handshake or relayed",
                kind: "gauge",
                value: self.open() as u64,
            },
            Sample {
                name: "lockd_tls_handshake_failures_total",
                help: "TLS handshakes that failed or timed out",
                kind: "counter",
                value: self.failed_handshakes.load(Ordering::Relaxed),
            },
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Relay>> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The TLS front door and its accept thread.
pub struct Front {
    addr: SocketAddr,
    acceptor: Acceptor,
    relayed: Arc<Relayed>,
}

impl Front {
    /// Accepts TLS connections on `public` and relays them to the HTTP
    /// server listening on `upstream`.
    pub fn start(
        public: TcpListener,
        upstream: SocketAddr,
        tls: Arc<ServerTls>,
        config: FrontConfig,
    ) -> io::Result<Self> {
        let addr = public.local_addr()?;
        let relayed = Arc::new(Relayed::default());
        let door = Arc::new(Door {
            upstream,
            tls,
            config,
            relayed: relayed.clone(),
        });
        let acceptor = Acceptor::start("lockd-tls-accept", public, move |stream, client| {
            door.take(stream, client);
        })?;
        Ok(Self {
            addr,
            acceptor,
            relayed,
        })
    }

    /// The public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who is behind each relayed connection.
    pub fn relayed(&self) -> Arc<Relayed> {
        self.relayed.clone()
    }

    /// Whether the accept thread ended without being told to stop (it
    /// panicked): nobody accepts TLS connections any more.
    pub fn failed(&self) -> bool {
        self.acceptor.failed()
    }

    /// New connections are refused from now on; those open stay open.
    pub fn stop_accepting(&self) {
        self.acceptor.stop_accepting();
    }
}

/// What the accept thread needs to start a connection's thread.
struct Door {
    upstream: SocketAddr,
    tls: Arc<ServerTls>,
    config: FrontConfig,
    relayed: Arc<Relayed>,
}

impl Door {
    /// Starts the thread of a connection just accepted, unless as many
    /// as `--max-connections` are open.
    fn take(self: &Arc<Self>, stream: TcpStream, client: SocketAddr) {
        if let Some(max) = self.config.max_connections
            && self.relayed.open() >= max
        {
            tracing::debug!("{client}: {max} connections open, closing the new one");
            return;
        }
        self.relayed.open.fetch_add(1, Ordering::Relaxed);
        let spawned = {
            let door = self.clone();
            std::thread::Builder::new()
                .name("lockd-tls".into())
                .stack_size(STACK)
                .spawn(move || door.serve(stream, client))
        };
        if let Err(e) = spawned {
            self.relayed.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("{client}: starting its TLS thread: {e}");
        }
    }

    /// One connection's life: its handshake, then its relay. It is
    /// counted open until it ends, however it ends.
    fn serve(&self, stream: TcpStream, client: SocketAddr) {
        let _open = Counted(&self.relayed);
        if let Err(e) = self.relay(&stream, client) {
            tracing::debug!("TLS connection from {client}: {e}");
        }
    }

    fn relay(&self, stream: &TcpStream, client: SocketAddr) -> io::Result<()> {
        // (TCP_NODELAY comes from the listening socket, as over plain HTTP.)
        let mut tls = ServerConnection::new(self.tls.current()).map_err(io::Error::other)?;
        let deadline = Instant::now() + self.config.handshake_timeout;
        if let Err(e) = relay::handshake(&mut tls, stream, deadline) {
            self.relayed
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            relay::linger(stream, LINGER);
            return Err(io::Error::new(e.kind(), format!("handshake: {e}")));
        }
        let user = tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(user_of);
        let upstream = TcpStream::connect(self.upstream)?;
        upstream.set_nodelay(true)?;
        let from = upstream.local_addr()?;
        let relay = Relay {
            peer: Peer { client, user },
            upstream: upstream.try_clone()?,
        };
        self.relayed.lock().insert(from, relay);
        let _registered = Registered(&self.relayed, from);
        relay::relay(&mut tls, stream, &upstream, self.config.idle)
    }
}

/// A connection counted open in [`Relayed`] (by the accept thread) until
/// this is dropped.
struct Counted<'a>(&'a Relayed);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A relay listed in [`Relayed`] until this is dropped.
struct Registered<'a>(&'a Relayed, SocketAddr);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}
