//! `--max-connections`: a bound on open connections, without a relay.
//!
//! tiny_http accepts every connection and gives it a thread; it has no
//! hook to refuse one. So lockd's listening socket shares its port
//! (`SO_REUSEPORT`) with an overflow socket of lockd's own, and a classic
//! BPF program attached to the pair (`SO_ATTACH_REUSEPORT_CBPF`) chooses
//! where the kernel puts each new connection: on the listening socket
//! while fewer than the maximum are open, on the overflow socket once the
//! maximum is reached, whose thread answers `503 Service Unavailable` and
//! closes. A classic BPF program cannot read a counter of lockd's, so it is
//! a constant (`return 0` or `return 1`), swapped when the count crosses
//! the maximum; the count is the kernel's own (established connections on
//! the port, by `sock_diag`), taken every [`LOOK_EVERY`]: a burst can pass
//! the maximum by what arrives in that time. The pool keeper's own
//! connections always go through (they come from 127.0.0.2), to rescue
//! connections tiny_http's pool stranded before the maximum was reached.

use super::peer;
use crate::pool_keeper::KEEPER_SOURCE;
use crate::socket;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often open connections are counted.
pub const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Where new connections go: the index of the socket in the port's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Serve = 0,
    Refuse = 1,
}

/// The overflow socket, its thread, and the thread routing connections.
pub struct Overflow {
    stop: Arc<AtomicBool>,
    socket: Arc<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds two listening sockets sharing `addr`'s port: the one to serve
/// from, then the overflow socket (in that order: the kernel numbers a
/// port's sockets as they bind). Binding first without `SO_REUSEPORT`
/// makes a port already in use an error, as without `--max-connections`:
/// a second daemon must not share the port unnoticed.
pub fn bind_pair(addr: &str, backlog: libc::c_int) -> std::io::Result<(TcpListener, TcpListener)> {
    let probe = TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    let serving = reuseport_listener(addr, backlog)?;
    let overflow = reuseport_listener(addr, backlog)?;
    Ok((serving, overflow))
}

impl Overflow {
    /// Starts routing connections between `serving` (lockd's listening
    /// socket) and `overflow` so that at most `max` are open at once.
    pub fn start(
        serving: &TcpListener,
        overflow: TcpListener,
        max: usize,
    ) -> std::io::Result<Self> {
        let local = serving.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let socket = Arc::new(overflow);
        attach(serving, Route::Serve)?;
        let refuser = {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lockd-overflow".into())
                .spawn(move || refuse(&socket, &stop, max))?
        };
        let router = {
            let serving = serving.try_clone()?;
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lockd-max-connections".into())
                .spawn(move || route(&serving, local, max, &stop))?
        };
        Ok(Self {
            stop,
            socket,
            threads: vec![refuser, router],
        })
    }
}

impl Overflow {
    /// Stops refusing and routing: the overflow socket takes no more
    /// connections.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Ends the refusing thread.
        socket::stop_listening(&*self.socket);
    }
}

impl Drop for Overflow {
    fn drop(&mut self) {
        self.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Counts open connections and swaps the route when the count crosses
/// `max`.
fn route(serving: &TcpListener, local: SocketAddr, max: usize, stop: &AtomicBool) {
    let mut now = Route::Serve;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(LOOK_EVERY);
        let open = match peer::established_on(local) {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!("counting open connections: {e}");
                continue;
            }
        };
        let next = if open >= max {
            Route::Refuse
        } else {
            Route::Serve
        };
        if next == now {
            continue;
        }
        match attach(serving, next) {
            Ok(()) if next == Route::Refuse => tracing::warn!(
                "{open} connections open (--max-connections {max}): new ones get 503"
            ),
            Ok(()) => tracing::info!("{open} connections open: new ones are served again"),
            Err(e) => {
                tracing::error!("routing new connections: {e}");
                continue;
            }
        }
        now = next;
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
/// those of lockd's pool keeper (from [`KEEPER_SOURCE`], over IPv4),
/// which always reach tiny_http.
fn attach(serving: &TcpListener, route: Route) -> std::io::Result<()> {
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let ipv4 = serving.local_addr()?.is_ipv4();
    let mut program = match route {
        Route::Serve => vec![op(RETURN, 0, 0, Route::Serve as u32)],
        Route::Refuse if ipv4 => vec![
            // The IPv4 source address, 12 bytes into the network header.
            op(LOAD_WORD, 0, 0, (SKF_NET_OFF + 12) as u32),
            op(JUMP_IF_EQUAL, 0, 1, u32::from(KEEPER_SOURCE)),
            op(RETURN, 0, 0, Route::Serve as u32),
            op(RETURN, 0, 0, Route::Refuse as u32),
        ],
        Route::Refuse => vec![op(RETURN, 0, 0, Route::Refuse as u32)],
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
fn reuseport_listener(addr: SocketAddr, backlog: libc::c_int) -> std::io::Result<TcpListener> {
    let listener = socket::tcp_for(addr)?;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        socket::set(&listener, libc::SOL_SOCKET, option, &1_i32)?;
    }
    socket::bind(&listener, addr)?;
    socket::listen(&listener, backlog)?;
    Ok(TcpListener::from(listener))
}
