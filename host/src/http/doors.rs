//! The doors of lockd's port: straight to the HTTP server, the refusal
//! of connections past `--max-connections`, and the front door
//! ([`super::front`]) new connections pass through while lockd is under
//! pressure.
//!
//! tiny_http accepts every connection and gives it a thread; it has no
//! hook to refuse one or read it another way. So lockd's listening socket
//! shares its port (`SO_REUSEPORT`) with two sockets of lockd's own, and
//! a classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) chooses where the kernel puts each new
//! connection: on the listening socket; on the overflow socket once
//! `--max-connections` are open, whose thread answers `503 Service
//! Unavailable` and closes; or on the front door's. A classic BPF program
//! cannot read a counter of lockd's, so it names one door, swapped by a
//! thread that looks every [`LOOK_EVERY`] (and at once when pressure is
//! noted): open connections are the
//! kernel's own count (established connections on the port, by
//! `sock_diag`, taken only with `--max-connections`), so a burst can pass
//! the maximum by what arrives in that time; pressure is a connection cut
//! off for what it made lockd hold (see [`Cuts`]), and the front door
//! stays in use until none was for [`CALM_AFTER`].
//!
//! Connections from lockd's own address ([`OWN_SOURCE`], over IPv4)
//! always go straight to the HTTP server: the pool keeper's, to rescue
//! connections tiny_http's pool stranded, and the front door's own.

use super::cuts::Cuts;
use super::front::{self, Clients, Front, OWN_SOURCE};
use super::peer;
use crate::socket;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the route is looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(50);

/// How long after the last connection cut off new connections still pass
/// through the front door.
pub const CALM_AFTER: Duration = Duration::from_secs(10);

/// When new connections pass through the front door (`--front`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FrontMode {
    /// While lockd is under pressure.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// How the port's doors are kept.
#[derive(Debug, Clone, Copy)]
pub struct DoorConfig {
    pub max_connections: Option<usize>,
    pub front: FrontMode,
    /// What a request passing through the front door must keep to.
    pub bounds: front::Bounds,
}

/// Where new connections go: the index of the socket in the port's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Serve = 0,
    Refuse = 1,
    Front = 2,
}

/// The sockets sharing lockd's port, in the order the kernel numbers them.
pub struct Group {
    pub serving: TcpListener,
    overflow: TcpListener,
    front: TcpListener,
}

impl Group {
    /// Its sockets.
    pub fn sockets(&self) -> [&TcpListener; 3] {
        [&self.serving, &self.overflow, &self.front]
    }
}

/// Binds the listening sockets sharing `addr`'s port: the one to serve
/// from, the overflow socket, the front door's (in that order: the kernel
/// numbers a port's sockets as they listen). Binding first without
/// `SO_REUSEPORT` makes a port already in use an error: a second daemon
/// must not share the port unnoticed.
/// Accepted connections inherit `receive_buffer` as their `SO_RCVBUF`.
pub fn bind_group(
    addr: &str,
    backlog: libc::c_int,
    receive_buffer: libc::c_int,
) -> std::io::Result<Group> {
    let probe = TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    let listener = || reuseport_listener(addr, backlog, receive_buffer);
    Ok(Group {
        serving: listener()?,
        overflow: listener()?,
        front: listener()?,
    })
}

/// The overflow socket's and the front door's threads, and the router.
pub struct Doors {
    stop: Arc<AtomicBool>,
    overflow: Arc<TcpListener>,
    front: Option<Arc<Front>>,
    threads: Vec<JoinHandle<()>>,
}

impl Doors {
    /// Starts the doors of `group` (its serving socket being the one
    /// tiny_http accepts from) and the router choosing among them.
    pub fn start(group: Group, config: DoorConfig, cuts: Arc<Cuts>) -> std::io::Result<Self> {
        let Group {
            serving,
            overflow,
            front,
        } = group;
        let local = serving.local_addr()?;
        let front = match (config.front, front::upstream_of(local)) {
            (FrontMode::Never, _) => None,
            (FrontMode::Always, None) => {
                return Err(std::io::Error::other(
                    "--front always needs an IPv4 address to listen on",
                ));
            }
            (FrontMode::Auto, None) => None,
            (mode, Some(upstream)) => {
                match Front::start(front, upstream, config.bounds, cuts.clone()) {
                    Ok(front) => Some(Arc::new(front)),
                    Err(e) if mode == FrontMode::Auto => {
                        tracing::warn!("no front door for times of pressure: {e}");
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let overflow = Arc::new(overflow);
        let mut router = Router {
            max: config.max_connections,
            front: front.clone(),
            always: config.front == FrontMode::Always,
            cuts,
            seen: 0,
            pressed_until: None,
            counted: None,
            now: Route::Serve,
        };
        router.now = router.next(local);
        attach(&serving, router.now)?;
        router.cuts.set_front(router.now == Route::Front);
        let mut threads = Vec::new();
        if let Some(max) = config.max_connections {
            let (socket, stop) = (overflow.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("lockd-overflow".into())
                    .spawn(move || refuse(&socket, &stop, max))?,
            );
        }
        if config.max_connections.is_some() || router.front.is_some() && !router.always {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("lockd-router".into())
                    .spawn(move || router.run(&serving, local, &stop))?,
            );
        }
        Ok(Self {
            stop,
            overflow,
            front,
            threads,
        })
    }

    /// The clients passing through the front door, if there is one.
    pub fn front_clients(&self) -> Option<Arc<Clients>> {
        self.front.as_ref().map(|front| front.clients())
    }

    /// Stops refusing, passing through the front door and routing: only
    /// the serving socket may take connections, until it stops too.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Ends the refusing thread.
        socket::stop_listening(&*self.overflow);
        if let Some(front) = &self.front {
            front.stop_accepting();
        }
    }
}

impl Drop for Doors {
    fn drop(&mut self) {
        self.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Chooses the door for new connections.
struct Router {
    max: Option<usize>,
    front: Option<Arc<Front>>,
    always: bool,
    cuts: Arc<Cuts>,
    /// Cuts seen at the last look.
    seen: u64,
    /// Until when the front door is in use, after the last cut seen.
    pressed_until: Option<Instant>,
    /// When open connections were last counted, and whether they were
    /// `max` or more.
    counted: Option<(Instant, bool)>,
    now: Route,
}

impl Router {
    fn run(mut self, serving: &TcpListener, local: SocketAddr, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            // Pressure is acted on at once; the count of connections and
            // the calm after pressure every LOOK_EVERY.
            self.cuts.wait(LOOK_EVERY);
            let next = self.next(local);
            if next == self.now {
                continue;
            }
            if let Err(e) = attach(serving, next) {
                tracing::error!("routing new connections: {e}");
                continue;
            }
            self.cuts.set_front(next == Route::Front);
            match next {
                Route::Refuse => tracing::warn!(
                    "{} connections open (--max-connections): new ones get 503",
                    self.max.unwrap_or_default()
                ),
                Route::Front => tracing::warn!(
                    "connections were cut off for what they made lockd hold: new ones pass \
                     through the front door, one request at a time, until none is for {}s",
                    CALM_AFTER.as_secs()
                ),
                Route::Serve => tracing::info!("new connections go straight to the HTTP server"),
            }
            self.now = next;
        }
    }

    /// The door for new connections now.
    fn next(&mut self, local: SocketAddr) -> Route {
        if self.full(local) {
            return Route::Refuse;
        }
        let cuts = self.cuts.pressing();
        if cuts != self.seen {
            self.seen = cuts;
            self.pressed_until = Some(Instant::now() + CALM_AFTER);
        }
        let pressed = self
            .pressed_until
            .is_some_and(|until| Instant::now() < until);
        if self.front.is_some() && (self.always || pressed) {
            Route::Front
        } else {
            Route::Serve
        }
    }

    /// Whether `--max-connections` are open. They are counted (a dump of
    /// the port's connections) at most every [`LOOK_EVERY`], however
    /// often pressure wakes the router.
    fn full(&mut self, local: SocketAddr) -> bool {
        let Some(max) = self.max else {
            return false;
        };
        if self
            .counted
            .is_some_and(|(at, _)| at.elapsed() < LOOK_EVERY)
        {
            return self.counted.is_some_and(|(_, full)| full);
        }
        // The front door's own connections to the HTTP server are not
        // counted: each of its clients counts once.
        let through = self.front.as_ref().map_or(0, |f| f.clients().upstreams());
        let full = match peer::established_on(local) {
            Ok(open) => open.saturating_sub(through) >= max,
            Err(e) => {
                tracing::warn!("counting open connections: {e}");
                false
            }
        };
        self.counted = Some((Instant::now(), full));
        full
    }
}

/// Answers each connection on the overflow socket with 503 and closes it.
fn refuse(socket: &TcpListener, stop: &AtomicBool, max: usize) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        refusal(max).len()
    ) + &refusal(max);
    for stream in socket.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let _ = say_and_close(&mut stream, answer.as_bytes());
    }
}

fn refusal(max: usize) -> String {
    format!("lockd has {max} connections open (--max-connections); try again\n")
}

/// Writes `answer` and closes gently: the request is read first (what has
/// arrived within a moment), and after the answer what else comes, so that
/// closing does not reset the connection before the client reads.
fn say_and_close(stream: &mut TcpStream, answer: &[u8]) -> std::io::Result<()> {
    let moment = Some(Duration::from_millis(100));
    stream.set_read_timeout(moment)?;
    stream.set_write_timeout(moment)?;
    let mut scratch = [0; 4096];
    let _ = stream.read(&mut scratch);
    stream.write_all(answer)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    while matches!(stream.read(&mut scratch), Ok(n) if n > 0) {}
    Ok(())
}

/// Makes the kernel put new connections on the socket `route` names, but
/// those from lockd's own address ([`OWN_SOURCE`], over IPv4), which
/// always reach tiny_http.
fn attach(serving: &TcpListener, route: Route) -> std::io::Result<()> {
    const LOAD_BYTE: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = match route {
        Route::Serve => vec![op(RETURN, 0, 0, Route::Serve as u32)],
        _ => vec![
            // IP version 4 (the high half of the first byte)...
            op(LOAD_BYTE, 0, 0, SKF_NET_OFF as u32),
            op(AND, 0, 0, 0xf0),
            op(JUMP_IF_EQUAL, 0, 3, 0x40),
            // ...and the source address, 12 bytes into the header.
            op(LOAD_WORD, 0, 0, (SKF_NET_OFF + 12) as u32),
            op(JUMP_IF_EQUAL, 0, 1, u32::from(OWN_SOURCE)),
            op(RETURN, 0, 0, Route::Serve as u32),
            op(RETURN, 0, 0, route as u32),
        ],
    };
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // The program lives across the call; the kernel copies it.
    socket::set(
        serving,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

/// Classic BPF's offset of the network header (`SKF_NET_OFF`).
const SKF_NET_OFF: i32 = -0x100000;

/// A listening TCP socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn reuseport_listener(
    addr: SocketAddr,
    backlog: libc::c_int,
    receive_buffer: libc::c_int,
) -> std::io::Result<TcpListener> {
    let listener = socket::tcp_for(addr)?;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        socket::set(&listener, libc::SOL_SOCKET, option, &1_i32)?;
    }
    socket::set(
        &listener,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        &receive_buffer,
    )?;
    socket::bind(&listener, addr)?;
    socket::listen(&listener, backlog)?;
    Ok(TcpListener::from(listener))
}
