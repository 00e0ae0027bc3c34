//! The listening socket: bound here, accepted from by tiny_http, and shut
//! here when the daemon stops taking new connections. With TLS, the
//! public socket is the TLS front door's ([`crate::tls::Front`]), and
//! tiny_http listens on a loopback port of its own that only the front
//! connects to.

use super::cuts::Cuts;
use super::doors::{self, DoorConfig, Doors, FrontMode};
use crate::metrics::Metrics;
use crate::socket;
use crate::tls::{Front, FrontConfig, Relayed, ServerTls};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;
use tiny_http::Server;

/// Connections the kernel completes before lockd accepts them. The
/// standard library listens with 128, which a fleet reconnecting at once
/// overflows: the kernel then drops their handshakes, and each client
/// retries only after a second or more. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const BACKLOG: libc::c_int = 4096;

/// The most bytes of answers a connection may have waiting in the kernel,
/// unsent, before writing more to it waits (`TCP_NOTSENT_LOWAT`, which
/// accepted connections inherit): a client that does not read holds this
/// much and the one answer being written, and its next request is answered
/// only once the answers before it have left.
const UNSENT: usize = 64 * 1024;

/// The most bytes a client may have sent that lockd has not read yet,
/// waiting in the kernel (`SO_RCVBUF`, which accepted connections
/// inherit; the kernel doubles it for its bookkeeping). Left to itself the
/// kernel grows it to `net.ipv4.tcp_rmem`'s maximum (32 MiB here) for a
/// client that keeps sending what lockd does not read yet: a few hundred
/// such connections put the whole machine's TCP under memory pressure, and
/// every other connection loses packets.
pub const UNREAD: libc::c_int = 64 * 1024;

/// A tiny_http server and a handle on its listening socket.
pub struct Listener {
    pub server: Arc<Server>,
    /// The same socket as the server's, to stop accepting on.
    socket: Arc<TcpListener>,
    /// The other doors of the port (see [`super::doors`]), if it has them.
    doors: Option<Doors>,
    /// Where connections cut off are counted.
    cuts: Arc<Cuts>,
    /// The TLS front door, if lockd serves TLS.
    front: Option<Front>,
}

impl Listener {
    /// Listens on `addr`. Accepted connections inherit from the listening
    /// socket (on Linux) `TCP_NODELAY`, so that an answer never waits for
    /// the client's delayed acknowledgement of its first part, the bound
    /// on answers waiting unsent ([`UNSENT`]), and read and
    /// write timeouts of `idle`: a connection silent that long, between
    /// requests or within one, is closed, and a client that does not take
    /// its answer cannot hold a thread for longer.
    ///
    /// With `--max-connections`, at most that many connections are open
    /// at once; the others are answered 503. New connections pass through
    /// the front door as `--front` says. (See [`super::doors`].)
    pub fn bind(
        addr: &str,
        idle: Option<Duration>,
        doors: DoorConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let needs_doors = doors.max_connections.is_some() || doors.front != FrontMode::Never;
        let (listener, group) = if needs_doors {
            let group = doors::bind_group(addr, BACKLOG, UNREAD)?;
            for socket in group.sockets() {
                configure(socket, idle)?;
            }
            (group.serving.try_clone()?, Some(group))
        } else {
            let listener = TcpListener::bind(addr)?;
            socket::set(&listener, libc::SOL_SOCKET, libc::SO_RCVBUF, &UNREAD)?;
            socket::listen(&listener, BACKLOG)?;
            configure(&listener, idle)?;
            (listener, None)
        };
        let socket = Arc::new(listener.try_clone()?);
        let cuts = Arc::new(Cuts::new(metrics));
        let doors = match group {
            Some(group) => Some(Doors::start(group, doors, cuts.clone())?),
            None => None,
        };
        let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        Ok(Self {
            server: Arc::new(server),
            socket,
            doors,
            cuts,
            front: None,
        })
    }

    /// Listens on `addr` for TLS: the front door accepts there, and relays
    /// each connection to tiny_http listening on a loopback port. At most
    /// `max_connections` are open at once (more are closed at once).
    pub fn bind_tls(
        addr: &str,
        idle: Option<Duration>,
        max_connections: Option<usize>,
        tls: Arc<ServerTls>,
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let public = TcpListener::bind(addr)?;
        socket::listen(&public, BACKLOG)?;
        socket::set(&public, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1_i32)?;
        let doors = DoorConfig {
            max_connections: None,
            front: FrontMode::Never,
            bounds: super::front::Bounds {
                max_header: 0,
                max_body: 0,
                idle,
            },
        };
        let mut inner = Self::bind("127.0.0.1:0", idle, doors, metrics)?;
        let upstream = inner
            .server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("tiny_http listens on no IP address"))?;
        let config = FrontConfig {
            idle,
            max_connections,
            handshake_timeout,
        };
        inner.front = Some(Front::start(public, upstream, tls, config)?);
        Ok(inner)
    }

    /// The address clients connect to.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        match &self.front {
            Some(front) => Some(front.local_addr()),
            None => self.server.server_addr().to_ip(),
        }
    }

    /// With TLS, passes on what was answered and ends every relayed
    /// connection cleanly (close_notify), by `deadline`.
    pub fn finish(&self, deadline: std::time::Instant) {
        if let Some(front) = &self.front {
            front.relayed().finish(deadline);
        }
    }

    /// Whether the TLS front door stopped accepting by itself.
    pub fn failed(&self) -> bool {
        self.front.as_ref().is_some_and(Front::failed)
    }

    /// With TLS, who is behind each connection tiny_http sees.
    pub fn relayed(&self) -> Option<Arc<Relayed>> {
        self.front.as_ref().map(Front::relayed)
    }

    /// New connections are refused from now on; those open stay open.
    pub fn stop_accepting(&self) {
        if let Some(front) = &self.front {
            front.stop_accepting();
        }
        if let Some(doors) = &self.doors {
            doors.stop();
        }
        // Ends tiny_http's accept loop.
        socket::stop_listening(&*self.socket);
    }

    /// Where connections cut off for what they made lockd hold are
    /// counted (they send new connections through the front door).
    pub fn cuts(&self) -> Arc<Cuts> {
        self.cuts.clone()
    }

    /// The clients passing through the front door, if there is one.
    pub fn front_clients(&self) -> Option<Arc<super::front::Clients>> {
        self.doors.as_ref().and_then(Doors::front_clients)
    }

    /// A view of the connections waiting to be accepted.
    pub fn accept_queue(&self) -> AcceptQueue {
        AcceptQueue(self.socket.clone())
    }
}

/// Sets what accepted connections inherit from `listener` (see
/// [`Listener::bind`]).
fn configure(listener: &TcpListener, idle: Option<Duration>) -> std::io::Result<()> {
    socket::set(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1_i32)?;
    let unsent = UNSENT as libc::c_int;
    socket::set(
        listener,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        &unsent,
    )?;
    if let Some(idle) = idle {
        let tv = socket::timeval(idle);
        socket::set(listener, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        socket::set(listener, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    }
    Ok(())
}

/// The listening socket's queue of connections not accepted yet.
#[derive(Clone)]
pub struct AcceptQueue(Arc<TcpListener>);

impl AcceptQueue {
    /// How many connections wait to be accepted now.
    pub fn waiting(&self) -> std::io::Result<u32> {
        // SAFETY: tcp_info is plain data; getsockopt fills at most `len`
        // bytes of it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt on a socket we own, into a buffer of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // For a listening socket, Linux reports its accept queue's length
        // in tcpi_unacked.
        Ok(info.tcpi_unacked)
    }
}
