//! The HTTP transport: takes requests from tiny_http, answers each in its
//! connection's turn, and writes the answers back.
//!
//! A request flows down in one worker: [`connections`] admits it (or
//! queues it behind its connection's request in progress), [`respond`]
//! routes it, reads its body and has [`rpc::handle_parking`] answer it,
//! and the worker writes the answer and takes the connection's next
//! request. A call that waits for a lock is parked without a thread; its
//! answer is written, and its connection goes on, from a thread started
//! when the wait ends.

use crate::auth::{AuthFile, Role};
use crate::locks::{Lockd, Presence};
use crate::metrics::Metrics;
use crate::pool_keeper::{self, PoolKeeper};
use crate::rpc::{self, Answered, Spawn};
use crate::tls::Relayed;
use connections::{Admitted, Connections};
use cuts::{Cuts, Reason};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};
use workers::Workers;

mod answer;
mod caller;
mod connections;
mod cuts;
mod doors;
mod exposition;
mod framing;
mod front;
mod head;
mod listener;
mod pages;
mod peer;
mod resume;
mod status_page;
mod watch;
mod workers;

use answer::Answer;
pub use doors::{DoorConfig, FrontMode};
pub use front::Bounds as FrontBounds;
pub use listener::{AcceptQueue, Listener};
use resume::Resume;

/// How the transport treats requests.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Request bodies longer than this get 413.
    pub max_body: usize,
    /// Request heads longer than this get 431 (see [`watch`]).
    pub max_header: usize,
    /// The most bytes of requests one connection may queue behind its
    /// request in progress.
    pub max_queued: usize,
    /// The most all connections together may make lockd hold.
    pub max_buffered: usize,
    /// Threads always ready to take requests; more are started while
    /// clients stall (see [`workers`]).
    pub workers: usize,
    /// Who may call; `None` lets everyone do everything.
    pub auth: Option<Arc<AuthFile>>,
    /// How long connections may wait in the listen queue, none taken,
    /// before tiny_http's accept loop is taken to have died (and the
    /// daemon stops, to be restarted).
    pub wedged_after: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            max_header: 8 << 10,
            max_queued: 1 << 20,
            max_buffered: 64 << 20,
            workers: 16,
            auth: None,
            wedged_after: Duration::from_secs(30),
        }
    }
}

/// What the workers share.
struct Shared {
    lockd: Arc<Lockd>,
    /// The address listened on, if it is a TCP one.
    local: Option<SocketAddr>,
    /// With TLS, who is behind each connection (all come from loopback).
    relayed: Option<Arc<Relayed>>,
    config: ServeConfig,
    connections: Arc<Connections>,
    /// Goes on with a connection on another thread: the rest of a parked
    /// call once its wait ends, an answer the socket did not take at once.
    spawn: Spawn,
    /// Requests taken from tiny_http so far.
    taken: Arc<AtomicU64>,
    /// Requests taken and not answered yet.
    in_progress: AtomicUsize,
    /// Set when the daemon is stopping: answers close their connection.
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    /// Where connections cut off are counted.
    cuts: Arc<Cuts>,
}

/// Serves `listener` until `stop` is set, then stops gracefully (see
/// [`drain`]). If the server fails instead (tiny_http stops accepting for
/// good when `accept` fails, as it does when the process runs out of file
/// descriptors), it stops the same way and returns the error, so that the
/// daemon exits and its service manager can start it again.
pub fn serve(
    listener: Listener,
    lockd: Arc<Lockd>,
    config: &ServeConfig,
    stop: &AtomicBool,
) -> Result<(), String> {
    let shared = Arc::new(Shared {
        metrics: lockd.metrics_handle(),
        local: listener.server.server_addr().to_ip(),
        relayed: listener.relayed(),
        lockd,
        config: config.clone(),
        connections: Arc::new(Connections::new(config.max_queued)),
        spawn: {
            let resume = Resume::default();
            Arc::new(move |job| resume.run(job))
        },
        taken: Arc::default(),
        in_progress: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        cuts: listener.cuts(),
    });
    let keeper = match listener.server.server_addr().to_ip() {
        Some(addr) => match PoolKeeper::start(
            addr,
            listener.accept_queue(),
            shared.taken.clone(),
            config.wedged_after,
        ) {
            Ok(keeper) => Some(keeper),
            Err(e) => {
                tracing::warn!("not keeping the connection pool: {e}");
                None
            }
        },
        None => None,
    };
    let bounds = watch::Bounds {
        max_header: config.max_header,
        max_buffered: config.max_buffered,
    };
    let watch = shared.local.map(|local| {
        watch::Watch::start(
            local,
            shared.connections.clone(),
            shared.cuts.clone(),
            listener.front_clients(),
            keeper.as_ref().map(PoolKeeper::stranded),
            bounds,
        )
    });
    let watch = match watch.transpose() {
        Ok(watch) => watch,
        Err(e) => return Err(format!("starting the connection watch: {e}")),
    };
    let workers = Workers::start(
        listener.server.clone(),
        config.workers,
        Taker(shared.clone()),
    );
    let wedged = || keeper.as_ref().is_some_and(PoolKeeper::wedged) || listener.failed();
    while !stop.load(Ordering::Relaxed) && !workers.failed() && !wedged() {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(keeper);
    drop(watch);
    drain(&listener, &shared, &workers);
    if stop.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err("the HTTP server stopped accepting connections (see the log)".into())
    }
}

/// Stops gracefully: refuses new connections, ends waits for locks (fault
/// 6), answers every request already received (each answer closing its
/// connection), and lets the workers go once no request has come for a
/// moment (or after [`DRAIN_LIMIT`]).
fn drain(listener: &Listener, shared: &Shared, workers: &Workers<Taker>) {
    tracing::info!("stopping: refusing new connections, answering the requests received");
    workers.stopping();
    listener.stop_accepting();
    shared.draining.store(true, Ordering::Relaxed);
    shared.lockd.stop_waiting();
    let start = Instant::now();
    let mut seen = shared.taken.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = shared.taken.load(Ordering::Relaxed);
        let quiet = now == seen && shared.in_progress.load(Ordering::Relaxed) == 0;
        if quiet || start.elapsed() > DRAIN_LIMIT {
            break;
        }
        seen = now;
    }
    if !workers.stop(start + DRAIN_LIMIT + Duration::from_secs(1)) {
        tracing::warn!(
            "stopping with {} workers still writing to or reading from stalled clients",
            workers.running()
        );
    }
    listener.finish(Instant::now() + Duration::from_secs(1));
}

/// The longest a stopping daemon keeps answering.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The workers' handler: requests go through [`Connections`] in the order
/// tiny_http hands them out.
struct Taker(Arc<Shared>);

/// What a worker does with a request it took.
enum Taken {
    Serve(Request),
    /// A request of a connection that was cut off, dropped unanswered
    /// (outside the lock all requests are taken under: dropping it may
    /// read what the kernel holds of its body).
    Drop(Request),
}

impl workers::Handler for Taker {
    type Admitted = Taken;

    fn admit(&self, request: Request) -> Option<Taken> {
        if request.url() == pool_keeper::PROBE_PATH {
            return Some(Taken::Serve(request));
        }
        self.0.taken.fetch_add(1, Ordering::Relaxed);
        self.0.in_progress.fetch_add(1, Ordering::Relaxed);
        let head = head::len(&request);
        let (sent, held) = (head::sent(&request, head), head::held(&request, head));
        let pressed =
            self.0.cuts.front() && request.remote_addr().is_some_and(|&a| !front::is_own(a));
        // A connection hung up on is hung up on by the watch at its next
        // look: finding the socket reads every descriptor's name, which
        // it does anyway, once for all. What it queued is dropped.
        match self.0.connections.admit(request, sent, held, pressed) {
            Admitted::Now(request) => Some(Taken::Serve(request)),
            Admitted::Queued { presses } => {
                if presses {
                    self.0.cuts.press();
                }
                None
            }
            Admitted::Overflowing(addr) => {
                tracing::warn!(
                    "{addr} sends requests without reading the answers: hanging up on it"
                );
                self.0.cuts.cut(Reason::Queue);
                None
            }
            Admitted::Pipelining(addr) => {
                tracing::warn!("{addr}: pipelines while lockd is under pressure: hanging up on it");
                self.0.cuts.cut(Reason::Queue);
                None
            }
            Admitted::Dropped(request) => Some(Taken::Drop(request)),
        }
    }

    fn quick(&self, taken: &Taken) -> bool {
        matches!(taken, Taken::Drop(_))
    }

    fn handle(&self, taken: Taken) {
        let request = match taken {
            Taken::Serve(request) => request,
            Taken::Drop(request) => return drop_unanswered(&self.0, request),
        };
        if request.url() == pool_keeper::PROBE_PATH {
            if let Some((refusal, reason)) = over_bounds(&self.0.config, &request) {
                // Counted in progress as refusing ends it.
                self.0.in_progress.fetch_add(1, Ordering::Relaxed);
                refuse(&self.0, request, refusal, reason, Instant::now());
                return;
            }
            let _ = Answer::text(204, "").send(request, true);
            return;
        }
        serve_connection(&self.0, request);
    }
}

/// Answers `request` and then the requests queued behind it on its
/// connection, until the connection has none left or one is parked.
fn serve_connection(shared: &Arc<Shared>, mut request: Request) {
    loop {
        let addr = request.remote_addr().copied();
        if let Parked::Yes = respond(shared, request) {
            return;
        }
        match next(shared, addr) {
            Some(next) => request = next,
            None => return,
        }
    }
}

/// The next request of the connection at `addr` to answer, if any; the
/// requests of a connection that was hung up on are dropped instead.
fn next(shared: &Shared, addr: Option<SocketAddr>) -> Option<Request> {
    answerable(shared, addr, shared.connections.next(addr))
}

/// [`next`], starting from `taken`, the request already taken from the
/// connection at `addr` (and whether it was hung up on).
fn answerable(
    shared: &Shared,
    addr: Option<SocketAddr>,
    mut taken: Option<(Request, bool)>,
) -> Option<Request> {
    loop {
        let (request, overflowed) = taken?;
        if !overflowed {
            return Some(request);
        }
        drop_unanswered(shared, request);
        taken = shared.connections.next(addr);
    }
}

/// Drops a request of a connection that was hung up on. Unanswered:
/// tiny_http would write a 500 to its shut socket, costing more than
/// taking the request in did (thousands of them after a pipelining
/// flood); taking its writer says it is answered. Its body is read only
/// as far as the kernel holds it (a length past counting panics instead;
/// see `refuse`).
fn drop_unanswered(shared: &Shared, request: Request) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(request.into_writer());
    }));
    shared.in_progress.fetch_sub(1, Ordering::Relaxed);
}

/// Whether a request waits for a lock, to be answered later.
enum Parked {
    Yes,
    No,
}

/// Answers `request`: XML-RPC calls through [`rpc::handle_parking`]; the
/// health check, metrics and status page at once.
fn respond(shared: &Arc<Shared>, mut request: Request) -> Parked {
    let taken = Instant::now();
    let lockd = &shared.lockd;
    let config = &shared.config;
    if let Some((refusal, reason)) = over_bounds(config, &request) {
        refuse(shared, request, refusal, reason, taken);
        return Parked::No;
    }
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let get = matches!(request.method(), Method::Get | Method::Head);
    if get && path == "/healthz" {
        // For load balancers and service managers: no credentials needed.
        let answer = match lockd.health() {
            Ok(()) => Answer::text(200, "ok\n"),
            Err(e) => Answer::text(503, format!("{e}\n")),
        };
        send(shared, request, answer, taken);
        return Parked::No;
    }
    let role = match caller::role(&request, config.auth.as_deref(), shared.relayed.as_deref()) {
        Ok(role) => role,
        Err(refusal) => {
            send(shared, request, refusal, taken);
            return Parked::No;
        }
    };
    let answer = match (request.method(), path.as_str()) {
        (Method::Post, "/" | "/RPC2") => {
            let addr = request.remote_addr().copied();
            shared.connections.reading_body(addr, true, 0);
            let read = read_body(&mut request, config.max_body);
            // A body that did not say its length counts as taken in now.
            let uncounted = match (&read, request.body_length()) {
                (Ok(body), None) => body.len(),
                _ => 0,
            };
            shared.connections.reading_body(addr, false, uncounted);
            match read {
                Ok(body) => return call(shared, request, &body, role, taken),
                Err(answer) if answer.status == 413 => {
                    refuse(shared, request, answer, Reason::Body, taken);
                    return Parked::No;
                }
                Err(answer) => answer,
            }
        }
        (Method::Get | Method::Head, "/") => pages::status(lockd, request.url()),
        (Method::Get | Method::Head, "/metrics") => {
            let accept = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str());
            pages::metrics(lockd, shared.relayed.as_deref(), accept)
        }
        (_, "/") => Answer::text(405, "XML-RPC takes POST; the status page GET\n")
            .with("Allow", "GET, HEAD, POST"),
        (_, "/RPC2") => Answer::text(405, "XML-RPC takes POST\n").with("Allow", "POST"),
        _ => Answer::text(404, "not found\n"),
    };
    send(shared, request, answer, taken);
    Parked::No
}

/// Answers an XML-RPC call now, or parks it until its lock wait ends.
fn call(shared: &Arc<Shared>, request: Request, body: &[u8], role: Role, taken: Instant) -> Parked {
    let socket = socket_for(shared, &request);
    let waiting = Waiting {
        shared: shared.clone(),
        request,
        taken,
        socket,
    };
    let addr = waiting.request.remote_addr().copied();
    let present = || presence(shared, addr);
    match rpc::handle_parking(&shared.lockd, body, role, &shared.spawn, present, waiting) {
        Answered::Now(xml, waiting) => {
            send(
                shared,
                waiting.request,
                Answer::new(200, "text/xml", xml),
                taken,
            );
            Parked::No
        }
        Answered::Later => Parked::Yes,
    }
}

/// Whether the client at `addr` is still connected, for a call that may
/// wait for a lock or for its turn: not if lockd cut it off (known at
/// once), nor if the kernel says its connection is no longer established
/// (asked at most every [`ASK_KERNEL_EVERY`]; if the kernel cannot be
/// asked, the client is taken to be there).
fn presence(shared: &Shared, addr: Option<SocketAddr>) -> Option<Presence> {
    let (local, addr) = (shared.local?, addr?);
    let connections = shared.connections.clone();
    let asked: Mutex<Option<(Instant, bool)>> = Mutex::new(None);
    Some(Arc::new(move || {
        if connections.is_overflowed(addr) {
            return false;
        }
        let mut asked = asked.lock().unwrap_or_else(|p| p.into_inner());
        match *asked {
            Some((at, established)) if at.elapsed() < ASK_KERNEL_EVERY => established,
            _ => {
                let established = match peer::established(local, addr) {
                    Ok(established) => established,
                    Err(e) => {
                        tracing::debug!("asking whether {addr} is still connected: {e}");
                        true
                    }
                };
                *asked = Some((Instant::now(), established));
                established
            }
        }
    }))
}

/// How often the kernel is asked whether one waiting client is still
/// connected.
const ASK_KERNEL_EVERY: Duration = Duration::from_millis(250);

/// A call parked until its lock wait ends, or until the batch its change
/// is committed in has run.
struct Waiting {
    shared: Arc<Shared>,
    request: Request,
    taken: Instant,
    /// lockd's copy of the connection's socket, if its answer can be
    /// written from the thread that has it (see [`socket_for`]).
    socket: Option<Arc<OwnedFd>>,
}

impl rpc::Later for Waiting {
    /// Answers, then goes on with the connection's next requests.
    fn answer(self, xml: String) {
        let addr = self.request.remote_addr().copied();
        let answer = Answer::new(200, "text/xml", xml);
        send(&self.shared, self.request, answer, self.taken);
        if let Some(next) = next(&self.shared, addr) {
            serve_connection(&self.shared, next);
        }
    }

    /// A connection whose socket lockd holds a copy of, and whose answer
    /// leaves it open, is answered from the thread that has the result.
    fn prompt(&self) -> bool {
        self.socket.is_some()
    }

    /// Writes what the socket takes at once; the rest, and the
    /// connection's next requests, on a thread of their own.
    fn answer_here(self, xml: String, spawn: &rpc::Spawn) {
        // Written at once only to a socket holding nothing outstanding (so that
        // what tiny_http may hold for it, below, fits without waiting),
        // and while lockd is not stopping (its answers close their
        // connections); otherwise as any answer, on a thread that may
        // wait for the client.
        let prompt = !self.shared.draining.load(Ordering::Relaxed)
            && self
                .socket
                .as_deref()
                .is_some_and(|socket| peer::outstanding(socket) == Some(0));
        if !prompt {
            return spawn(Box::new(move || self.answer(xml)));
        }
        let Waiting {
            shared,
            request,
            taken,
            socket,
        } = self;
        let addr = request.remote_addr().copied();
        tracing::debug!(
            method = %request.method(),
            path = request.url(),
            status = 200,
            "request"
        );
        let bytes = Answer::new(200, "text/xml", xml).keep_alive_bytes();
        shared.metrics.observe_request(taken.elapsed());
        // tiny_http writes to the connection by itself only the 505 to a
        // request of a later HTTP version, into its buffer: flushed first
        // (into a socket holding nothing, so at once), it goes out before
        // this answer, in the order of the requests. Holding the writer
        // makes tiny_http's next such write wait until it is dropped.
        let mut writer = request.into_writer();
        let sent = match (writer.flush(), socket.as_deref()) {
            (Ok(()), Some(socket)) => peer::send_now(socket, &bytes),
            _ => Ok(0),
        };
        let sent = match sent {
            Ok(sent) => sent,
            Err(e) => {
                // Its socket failed: lockd's copy is let go, and the
                // answer written as any other (to the socket tiny_http
                // has, which is this client's in any case).
                tracing::debug!("writing an answer at once: {e}");
                if let Some(addr) = addr {
                    shared.connections.drop_socket(addr);
                }
                0
            }
        };
        if sent == bytes.len() {
            drop(writer);
            shared.in_progress.fetch_sub(1, Ordering::Relaxed);
            // The connection's next request, if it sent one meanwhile, on
            // another thread: even dropping one (of a connection hung up
            // on) may wait for the client.
            if let Some(taken) = shared.connections.next(addr) {
                spawn(Box::new(move || {
                    if let Some(next) = answerable(&shared, addr, Some(taken)) {
                        serve_connection(&shared, next);
                    }
                }));
            }
            return;
        }
        shared.connections.writing(addr, Some(bytes.len()));
        spawn(Box::new(move || {
            let written = writer
                .write_all(&bytes[sent..])
                .and_then(|()| writer.flush());
            if let Err(e) = written {
                tracing::debug!("writing a response failed: {e}");
            }
            drop(writer);
            shared.connections.writing(addr, None);
            shared.in_progress.fetch_sub(1, Ordering::Relaxed);
            if let Some(next) = next(&shared, addr) {
                serve_connection(&shared, next);
            }
        }));
    }
}

/// lockd's copy of the socket of `request`'s connection, if its answer
/// may be written straight to it: the watch has found the connection
/// established, and it stays open after the answer (HTTP/1.1, no
/// `Connection: close`, lockd not stopping).
fn socket_for(shared: &Shared, request: &Request) -> Option<Arc<OwnedFd>> {
    let closes = request.http_version() != &tiny_http::HTTPVersion(1, 1)
        || shared.draining.load(Ordering::Relaxed)
        || request.headers().iter().any(|h| {
            h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("close")
        });
    if closes {
        return None;
    }
    shared.connections.socket_of(*request.remote_addr()?)
}

/// Writes `answer` to `request`'s connection.
fn send(shared: &Shared, request: Request, answer: Answer, taken: Instant) {
    // Bodies cut short leave the connection unusable; while stopping, no
    // connection is reused.
    let close =
        answer.status == 413 || answer.status == 400 || shared.draining.load(Ordering::Relaxed);
    tracing::debug!(
        method = %request.method(),
        path = request.url(),
        status = answer.status,
        "request"
    );
    // Counted before it is written: a client that has its answer finds
    // its request counted (and a client slow to read does not stretch the
    // latency of lockd's work).
    shared.metrics.observe_request(taken.elapsed());
    let addr = request.remote_addr().copied();
    shared.connections.writing(addr, Some(answer.body.len()));
    if let Err(e) = answer.send(request, close) {
        tracing::debug!("writing a response failed: {e}");
    }
    shared.connections.writing(addr, None);
    shared.in_progress.fetch_sub(1, Ordering::Relaxed);
}

/// Answers `request` with `refusal` and cuts its connection off, for
/// `reason`. The answer is written to the socket directly and the socket
/// shut before tiny_http drops the request: a request dropped with its
/// body unread has tiny_http read the rest of the body first, as long as
/// the client said it is (see [`crate::reserve`]); with the socket shut,
/// that is what the kernel already holds.
fn refuse(shared: &Shared, request: Request, refusal: Answer, reason: Reason, taken: Instant) {
    let addr = request.remote_addr().copied();
    tracing::debug!(path = request.url(), status = refusal.status, "refused");
    shared.metrics.observe_request(taken.elapsed());
    shared.cuts.cut(reason);
    shared.connections.overflowed(addr);
    let words = refusal.closing_bytes();
    let cut = match (shared.local, addr) {
        (Some(local), Some(peer)) => {
            let cut = peer::Cut {
                peer,
                how: libc::SHUT_RDWR,
                last_words: &words,
            };
            peer::cut(local.port(), &shared.connections.own_sockets(), &[cut])
        }
        _ => Ok(0),
    };
    match cut {
        Ok(1) => {
            // A length past what an address can count makes tiny_http's
            // allocation panic instead; the connection is cut either way.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(request)));
            if dropped.is_err() {
                tracing::warn!("{addr:?}: a request body of a length past counting, refused");
            }
        }
        Ok(_) | Err(_) => {
            if let Err(e) = refusal.send(request, true) {
                tracing::debug!("writing a refusal failed: {e}");
            }
        }
    }
    shared.in_progress.fetch_sub(1, Ordering::Relaxed);
}

fn too_large(max: usize) -> Answer {
    Answer::text(413, format!("request body larger than {max} bytes\n"))
}

/// The refusal of `request`, and why, if its head is over `--max-header`
/// or its declared body over `--max-body`: checked before anything else,
/// so that no request with a body too large to read is let go unread.
fn over_bounds(config: &ServeConfig, request: &Request) -> Option<(Answer, Reason)> {
    if head::len(request) > config.max_header {
        return Some((head::too_long(config.max_header), Reason::Head));
    }
    let declared = request.body_length().unwrap_or(0);
    (declared > config.max_body).then(|| (too_large(config.max_body), Reason::Body))
}

/// The request body, or 413 when it turns out longer than `max` (without
/// reading more than `max + 1` bytes of it).
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, Answer> {
    // A declared length over `max` was refused before (`over_bounds`).
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(max));
    match request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > max => Err(too_large(max)),
        Ok(_) => Ok(body),
        Err(e) => Err(Answer::text(
            400,
            format!("reading the request body: {e}\n"),
        )),
    }
}
