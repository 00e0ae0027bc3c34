//! The front door: new connections pass through it while lockd is under
//! pressure (see [`super::doors`]), or always with `--front always`.
//!
//! tiny_http reads each connection's requests as fast as they come, on a
//! thread per connection, into one queue: hundreds of connections sending
//! requests without reading the answers fill that queue faster than it
//! can be emptied, and a fresh client's request waits behind all of it.
//! The front door reads for tiny_http instead, one request at a time: a
//! request's head (at most `--max-header`, else 431), its body (at most
//! `--max-body`, else 413), passed on whole over a loopback connection of
//! its own; and nothing more from that client until the answer has come
//! back and been passed on. A client that does not read its answers stops
//! being read; what it sent waits in the kernel, and what a connection
//! makes lockd hold is one request and one answer in passing.
//!
//! Each connection has a thread of its own, asleep while it waits. A
//! client that hangs up is hung up on upstream (half-closed, as the
//! client did), so that a call waiting for a lock notices, as it does on
//! a connection straight to the HTTP server. The HTTP server sees the
//! front's loopback connections, which come from lockd's own address
//! ([`OWN_SOURCE`]), and always reach it directly.

use super::answer::Answer;
use super::cuts::{Cuts, Reason};
use super::framing::{self, Body, Refusal};
use crate::acceptor::Acceptor;
use crate::socket;
use std::collections::HashSet;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::pool_keeper::KEEPER_SOURCE as OWN_SOURCE;

/// Whether a connection from `peer` is lockd's own (the front door's or
/// the pool keeper's).
pub fn is_own(peer: SocketAddr) -> bool {
    peer.ip() == std::net::IpAddr::V4(OWN_SOURCE)
}

/// A connection thread's stack: a relay needs little.
const STACK: usize = 256 * 1024;

/// How long a connection refused at the front door is kept before it is
/// closed.
const LINGER: Duration = Duration::from_millis(500);

/// The most bytes read in one piece, either way; also the most of a
/// request body held before it is passed on.
const CHUNK: usize = 16 * 1024;

/// The bounds a request must keep to be passed on.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_header: usize,
    pub max_body: usize,
    /// A connection silent this long between requests is closed.
    pub idle: Option<Duration>,
}

/// The front door's accept thread.
pub struct Front {
    acceptor: Acceptor,
    clients: Arc<Clients>,
}

/// The clients passing through the front door now, by address: their
/// connections share the HTTP server's port, but are the front door's to
/// read (see [`super::watch`]); and how many of them have a connection to
/// the HTTP server.
#[derive(Debug, Default)]
pub struct Clients(Mutex<HashSet<SocketAddr>>, AtomicUsize);

impl Clients {
    /// Whether the connection from `peer` to lockd's port is the front
    /// door's.
    pub fn contains(&self, peer: &SocketAddr) -> bool {
        self.lock().contains(peer)
    }

    /// How many of them have a connection to the HTTP server, which
    /// shares its port too.
    pub fn upstreams(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Front {
    /// Accepts on `socket` and passes requests on to the HTTP server at
    /// `upstream`, connecting from [`OWN_SOURCE`]; fails if that cannot
    /// be done.
    pub fn start(
        socket: TcpListener,
        upstream: SocketAddr,
        bounds: Bounds,
        cuts: Arc<Cuts>,
    ) -> io::Result<Self> {
        drop(connect(upstream).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reaching the HTTP server from {OWN_SOURCE}: {e}"),
            )
        })?);
        let clients = Arc::new(Clients::default());
        let door = Arc::new(Door {
            upstream,
            bounds,
            clients: clients.clone(),
            cuts,
        });
        let acceptor = Acceptor::start("lockd-front", socket, move |client, from| {
            door.take(client, from);
        })?;
        Ok(Self { acceptor, clients })
    }

    /// The clients passing through now.
    pub fn clients(&self) -> Arc<Clients> {
        self.clients.clone()
    }

    /// New connections are refused from now on; those open stay open.
    pub fn stop_accepting(&self) {
        self.acceptor.stop_accepting();
    }
}

/// What the accept thread needs to start a connection's thread.
struct Door {
    upstream: SocketAddr,
    bounds: Bounds,
    clients: Arc<Clients>,
    /// Where the clients refused or cut off are counted.
    cuts: Arc<Cuts>,
}

impl Door {
    /// Starts the thread of a connection just accepted.
    fn take(self: &Arc<Self>, client: TcpStream, from: SocketAddr) {
        self.clients.lock().insert(from);
        let door = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lockd-front-conn".into())
            .stack_size(STACK)
            .spawn(move || door.serve(client, from));
        if let Err(e) = spawned {
            self.clients.lock().remove(&from);
            tracing::warn!("{from}: starting its front door thread: {e}");
        }
    }

    /// One connection's life, listed in [`Clients`] until it ends.
    fn serve(&self, client: TcpStream, from: SocketAddr) {
        let relay = Relay::new(client, self.upstream, self.bounds, self);
        match relay.run() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                tracing::warn!("{from} takes no answer: closed at the front door");
                self.cuts.cut(Reason::Queue);
            }
            Err(e) => tracing::debug!("{from} through the front door: {e}"),
            Ok(()) => {}
        }
        self.clients.lock().remove(&from);
    }
}

/// A connection to the HTTP server at `upstream`, from [`OWN_SOURCE`].
fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let stream = socket::tcp_for(upstream)?;
    socket::bind_for_connect(&stream, OWN_SOURCE.into())?;
    socket::connect(&stream, upstream)?;
    let stream = TcpStream::from(stream);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Where the HTTP server listening on `listen` is reached from
/// [`OWN_SOURCE`]: over IPv4 only.
pub fn upstream_of(listen: SocketAddr) -> Option<SocketAddr> {
    match listen {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            Some((Ipv4Addr::LOCALHOST, v4.port()).into())
        }
        SocketAddr::V4(_) => Some(listen),
        SocketAddr::V6(_) => None,
    }
}

/// Where a request from the client is.
enum Asked {
    /// Its head is being read.
    Head,
    /// Its body is being passed on.
    Body(Body),
    /// Passed on whole: nothing more is read until its answer is back.
    Sent,
}

/// Where the answer to the request in passing is.
enum Answering {
    /// No request in passing.
    Nothing,
    /// Its head is being read; the request was a `HEAD` request if set.
    Head(bool),
    /// Its body is being passed on; the server closes after it if set.
    Body(Body, bool),
}

/// One client's connection and its loopback connection.
struct Relay {
    client: TcpStream,
    upstream_addr: SocketAddr,
    upstream: Option<TcpStream>,
    bounds: Bounds,
    /// Bytes from the client not passed on yet.
    inbox: Vec<u8>,
    /// Bytes from the server not passed on yet (an answer's head).
    outbox: Vec<u8>,
    asked: Asked,
    answering: Answering,
    /// The answer came before the request's body was all passed on.
    answered_early: bool,
    /// The client shut its sending side.
    client_done: bool,
    /// Where a client refused is counted.
    cuts: Arc<Cuts>,
    /// Where the front door's connections to the HTTP server are counted.
    clients: Arc<Clients>,
}

impl Relay {
    fn new(client: TcpStream, upstream_addr: SocketAddr, bounds: Bounds, door: &Door) -> Self {
        Self {
            client,
            upstream_addr,
            upstream: None,
            bounds,
            inbox: Vec::new(),
            outbox: Vec::new(),
            asked: Asked::Head,
            answering: Answering::Nothing,
            answered_early: false,
            client_done: false,
            cuts: door.cuts.clone(),
            clients: door.clients.clone(),
        }
    }

    /// Relays until the connection ends, counting its connection to the
    /// HTTP server in [`Clients`] while it has one.
    fn run(mut self) -> io::Result<()> {
        let ran = self.relay();
        if self.upstream.is_some() {
            self.clients.1.fetch_sub(1, Ordering::Relaxed);
        }
        ran
    }

    fn relay(&mut self) -> io::Result<()> {
        // Writing to a client that does not read gives up after this.
        self.client.set_write_timeout(self.bounds.idle)?;
        loop {
            // An answer passed on whole lets the next request through.
            let going = self.pass_requests()? && self.pass_answers()? && self.pass_requests()?;
            if !going || !self.wait()? {
                return Ok(());
            }
        }
    }

    /// Passes on what the client sent, as far as it goes; false once the
    /// connection is to end.
    fn pass_requests(&mut self) -> io::Result<bool> {
        loop {
            match &mut self.asked {
                Asked::Head => {
                    let head = match framing::request(&self.inbox) {
                        Ok(Some(head)) => head,
                        Ok(None) if self.inbox.len() > self.bounds.max_header => {
                            return self.refuse(
                                super::head::too_long(self.bounds.max_header),
                                Reason::Head,
                            );
                        }
                        Ok(None) => {
                            // A head cut short by a client that is done:
                            // the server's last answer, if any, ends it.
                            if self.client_done {
                                self.shut_upstream();
                            }
                            return Ok(true);
                        }
                        Err(Refusal::TooManyFields) => {
                            return self.refuse(
                                super::head::too_long(self.bounds.max_header),
                                Reason::Head,
                            );
                        }
                        Err(Refusal::Malformed(why)) => {
                            return self
                                .refuse(Answer::text(400, format!("{why}\n")), Reason::Malformed);
                        }
                    };
                    if head.len > self.bounds.max_header {
                        return self
                            .refuse(super::head::too_long(self.bounds.max_header), Reason::Head);
                    }
                    if let Body::Length(n) = head.body
                        && n > self.bounds.max_body as u64
                    {
                        return self.refuse(super::too_large(self.bounds.max_body), Reason::Body);
                    }
                    // The HTTP server leaves a chunked body it does not
                    // read where it is, and would read it as requests.
                    let read = head.post && matches!(head.path.as_str(), "/" | "/RPC2");
                    if matches!(head.body, Body::Chunked(_)) && !read {
                        let why = "a chunked body on a request that takes none\n";
                        return self.refuse(Answer::text(400, why), Reason::Malformed);
                    }
                    if self.upstream.is_none() {
                        self.upstream = Some(connect(self.upstream_addr)?);
                        self.clients.1.fetch_add(1, Ordering::Relaxed);
                    }
                    self.send_upstream(head.len)?;
                    self.asked = Asked::Body(head.body);
                    self.answering = Answering::Head(head.head_only);
                    self.answered_early = false;
                }
                Asked::Body(Body::None | Body::Length(0) | Body::UntilClose) => self.sent(),
                Asked::Body(Body::Length(left)) => {
                    let n = (*left).min(self.inbox.len() as u64);
                    if n == 0 {
                        return Ok(true);
                    }
                    *left -= n;
                    self.send_upstream(n as usize)?;
                }
                Asked::Body(Body::Chunked(chunks)) => {
                    if self.inbox.is_empty() {
                        return Ok(true);
                    }
                    // Malformed chunks, or more than the server reads
                    // (it answers 413 past --max-body, and closes).
                    let (n, ended) = chunks
                        .feed(&self.inbox)
                        .map_err(|_| io::Error::other("a request body of malformed chunks"))?;
                    if chunks.data > 2 * self.bounds.max_body as u64 {
                        return Err(io::Error::other("a chunked body past --max-body"));
                    }
                    self.send_upstream(n)?;
                    if ended {
                        self.sent();
                    }
                }
                Asked::Sent => return Ok(true),
            }
        }
    }

    /// The request in passing has been passed on whole.
    fn sent(&mut self) {
        self.asked = if self.answered_early {
            Asked::Head
        } else {
            Asked::Sent
        };
        if self.client_done && self.inbox.is_empty() {
            self.shut_upstream();
        }
    }

    /// Passes the first `n` bytes of the inbox on to the server. If the
    /// server closed meanwhile (it answered early, a body too long, say),
    /// what it answered is passed on before the connection ends.
    fn send_upstream(&mut self, n: usize) -> io::Result<()> {
        if let Some(upstream) = &mut self.upstream
            && let Err(e) = upstream.write_all(&self.inbox[..n])
        {
            let _ = upstream.set_read_timeout(Some(Duration::from_millis(100)));
            let mut last = Vec::new();
            let _ = upstream.read_to_end(&mut last);
            self.outbox.extend_from_slice(&last);
            let _ = self.client.write_all(&self.outbox);
            return Err(e);
        }
        self.inbox.drain(..n);
        Ok(())
    }

    /// Tells the server the client is done sending, as the client did.
    fn shut_upstream(&self) {
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Passes on what the server answered, as far as it goes; false once
    /// the connection is to end.
    fn pass_answers(&mut self) -> io::Result<bool> {
        loop {
            match &mut self.answering {
                Answering::Nothing => {
                    // The server speaks unasked only to close (a timeout),
                    // or to answer what it read as more requests than
                    // were passed on: either way the connection ends.
                    if self.outbox.is_empty() {
                        return Ok(true);
                    }
                    let _ = self.client.write_all(&self.outbox);
                    if let Some(upstream) = &self.upstream {
                        let _ = upstream.shutdown(std::net::Shutdown::Both);
                    }
                    return Ok(false);
                }
                Answering::Head(to_head) => {
                    let head = match framing::answer(&self.outbox, *to_head) {
                        Ok(Some(head)) => head,
                        Ok(None) if self.outbox.len() > CHUNK => {
                            return Err(io::Error::other("an answer head without end"));
                        }
                        Ok(None) => return Ok(true),
                        Err(Refusal::Malformed(why)) => return Err(io::Error::other(why)),
                        Err(Refusal::TooManyFields) => {
                            return Err(io::Error::other("an answer with too many fields"));
                        }
                    };
                    self.send_client(head.len)?;
                    if !head.interim {
                        self.answering = Answering::Body(head.body, head.close);
                    }
                }
                Answering::Body(Body::None | Body::Length(0), close) => {
                    let close = *close;
                    if !self.answered() || close {
                        return Ok(false);
                    }
                }
                Answering::Body(Body::Length(left), _) => {
                    let n = (*left).min(self.outbox.len() as u64);
                    if n == 0 {
                        return Ok(true);
                    }
                    *left -= n;
                    self.send_client(n as usize)?;
                }
                Answering::Body(Body::Chunked(chunks), close) => {
                    if self.outbox.is_empty() {
                        return Ok(true);
                    }
                    let close = *close;
                    let (n, ended) = chunks
                        .feed(&self.outbox)
                        .map_err(|_| io::Error::other("an answer of malformed chunks"))?;
                    self.send_client(n)?;
                    if ended && (!self.answered() || close) {
                        return Ok(false);
                    }
                }
                Answering::Body(Body::UntilClose, _) => {
                    let n = self.outbox.len();
                    self.send_client(n)?;
                    return Ok(true);
                }
            }
        }
    }

    /// An answer has been passed on whole: the next request may be read.
    /// False if the client is done sending and nothing of it is left.
    fn answered(&mut self) -> bool {
        self.answering = Answering::Nothing;
        match self.asked {
            Asked::Sent => self.asked = Asked::Head,
            _ => self.answered_early = true,
        }
        !(self.client_done && self.inbox.is_empty())
    }

    /// Passes the first `n` bytes of the outbox on to the client.
    fn send_client(&mut self, n: usize) -> io::Result<()> {
        self.client.write_all(&self.outbox[..n])?;
        self.outbox.drain(..n);
        Ok(())
    }

    /// Answers the client itself, between requests, and ends the
    /// connection.
    fn refuse(&mut self, answer: Answer, reason: Reason) -> io::Result<bool> {
        tracing::debug!(status = answer.status, "refused at the front door");
        self.cuts.cut(reason);
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown(std::net::Shutdown::Both);
        }
        let _ = self.client.write_all(&answer.closing_bytes());
        linger(&self.client);
        Ok(false)
    }

    /// Sleeps until either side sent something the relay can take, or
    /// hung up; false once the connection is to end.
    fn wait(&mut self) -> io::Result<bool> {
        let read_client = match self.asked {
            Asked::Head => self.inbox.len() <= self.bounds.max_header,
            Asked::Body(_) => self.inbox.len() < CHUNK,
            Asked::Sent => false,
        };
        // A client done sending is not looked at again (poll skips a
        // negative descriptor).
        let mut fds = [
            libc::pollfd {
                fd: if self.client_done {
                    -1
                } else {
                    self.client.as_raw_fd()
                },
                events: if read_client { libc::POLLIN } else { 0 } | libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: self.upstream.as_ref().map_or(-1, |u| u.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Silence ends a connection only while nothing is being answered:
        // a call may wait for its lock as long as it asked to.
        let timeout = match self.bounds.idle {
            Some(idle) if matches!(self.answering, Answering::Nothing) => {
                idle.as_millis().min(i32::MAX as u128) as i32
            }
            _ => -1,
        };
        // SAFETY: `fds` is an array of `fds.len()` pollfd entries.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(true),
                _ => Err(e),
            };
        }
        if ready == 0 {
            return Ok(false);
        }
        let (client, upstream) = (fds[0].revents, fds[1].revents);
        if upstream & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !self.read_upstream() {
            return Ok(false);
        }
        if client & (libc::POLLHUP | libc::POLLERR) != 0 || (read_client && client != 0) {
            return self.read_client();
        }
        if client & libc::POLLRDHUP != 0 {
            // The client is done sending while its request is in passing:
            // what it sent before is kept for after the answer (up to a
            // head's worth), and the relay says so upstream.
            self.take_what_is_left();
            self.client_hung_up();
        }
        Ok(true)
    }

    /// Reads what the client sent; false once the connection is to end.
    fn read_client(&mut self) -> io::Result<bool> {
        let mut buffer = [0; CHUNK];
        let room = match self.asked {
            Asked::Head => {
                self.bounds.max_header + 1 - self.inbox.len().min(self.bounds.max_header)
            }
            _ => CHUNK,
        };
        match self.client.read(&mut buffer[..room.clamp(1, CHUNK)]) {
            Ok(0) => {
                self.client_hung_up();
                // Between requests, the connection ends with the client.
                Ok(!matches!(self.answering, Answering::Nothing))
            }
            Ok(n) => {
                self.inbox.extend_from_slice(&buffer[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(_) => {
                self.client_hung_up();
                Ok(false)
            }
        }
    }

    /// Reads what a client done sending left unread, up to a head and a
    /// chunk more than the inbox holds.
    fn take_what_is_left(&mut self) {
        let cap = self.bounds.max_header + CHUNK;
        let mut buffer = [0; CHUNK];
        while self.inbox.len() < cap {
            let room = (cap - self.inbox.len()).min(CHUNK);
            match self.client.peek(&mut buffer[..1]) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            match self.client.read(&mut buffer[..room]) {
                Ok(n) if n > 0 => self.inbox.extend_from_slice(&buffer[..n]),
                _ => return,
            }
        }
    }

    /// The client is done sending: the server is told once what it sent
    /// has been passed on.
    fn client_hung_up(&mut self) {
        self.client_done = true;
        if self.inbox.is_empty() {
            self.shut_upstream();
        }
    }

    /// Reads what the server sent; false once the connection is to end.
    fn read_upstream(&mut self) -> bool {
        let Some(upstream) = &mut self.upstream else {
            return true;
        };
        let mut buffer = [0; CHUNK];
        match upstream.read(&mut buffer) {
            Ok(n) if n > 0 => {
                self.outbox.extend_from_slice(&buffer[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            _ => {
                // The server closed: what it sent is passed on, and the
                // client's connection ends with it.
                let _ = self.client.write_all(&self.outbox);
                false
            }
        }
    }
}

/// Closes gently, after [`LINGER`]: what the client sends meanwhile (up
/// to [`CHUNK`] bytes) is read, so that closing does not reset the
/// connection before the client reads its answer. A client that keeps
/// sending is not read further, and waits the rest of the time: one that
/// sends heads without end can open a connection at most every
/// [`LINGER`], whatever it sends.
fn linger(client: &TcpStream) {
    let _ = client.shutdown(std::net::Shutdown::Write);
    let until = std::time::Instant::now() + LINGER;
    let mut scratch = [0; 4096];
    let (mut client, mut left) = (client, CHUNK);
    while left > 0 {
        let Some(wait) = until.checked_duration_since(std::time::Instant::now()) else {
            return;
        };
        let _ = client.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        match client.read(&mut scratch) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
    if let Some(wait) = until.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(wait);
    }
}
