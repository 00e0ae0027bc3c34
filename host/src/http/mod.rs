//! The HTTP transport: moves request bodies to [`rpc::handle`] and its
//! answers back, over keep-alive connections served by a pool of workers.

use crate::auth::{Credentials, Role};
use crate::locks::Lockd;
use crate::metrics::Metrics;
use crate::order::{Order, Turn};
use crate::pool_keeper::{self, PoolKeeper};
use crate::rpc;
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

mod answer;
mod listener;
mod status_page;

use answer::Answer;
pub use listener::Listener;

/// How the transport treats requests.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Request bodies longer than this get 413.
    pub max_body: usize,
    /// Threads answering requests; connections are read and written by
    /// tiny_http's own threads, so this bounds requests in progress.
    pub workers: usize,
    /// Who may call; `None` lets everyone do everything.
    pub auth: Option<Arc<Credentials>>,
    /// How long new connections may go unanswered before the server is
    /// taken to be broken (and the daemon stops, to be restarted).
    pub wedged_after: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            workers: 16,
            auth: None,
            wedged_after: Duration::from_secs(30),
        }
    }
}

/// What the workers share.
struct Shared {
    /// Requests taken from tiny_http so far.
    taken: Arc<AtomicU64>,
    /// Requests taken and not answered yet.
    in_progress: AtomicUsize,
    /// Set when the daemon is stopping: answers close their connection.
    draining: AtomicBool,
    metrics: Arc<Metrics>,
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
        taken: Arc::default(),
        in_progress: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        metrics: lockd.metrics_handle(),
    });
    let server = &listener.server;
    let keeper = match server.server_addr().to_ip() {
        Some(addr) => match PoolKeeper::start(addr, shared.taken.clone(), config.wedged_after) {
            Ok(keeper) => Some(keeper),
            Err(e) => {
                tracing::warn!("not keeping the connection pool: {e}");
                None
            }
        },
        None => None,
    };
    let order = Arc::new(Order::default());
    let workers = config.workers.max(1);
    let running = AtomicUsize::new(workers);
    std::thread::scope(|scope| {
        for i in 0..workers {
            let (lockd, order, shared, running) = (&lockd, &order, &shared, &running);
            std::thread::Builder::new()
                .name(format!("lockd-worker-{i}"))
                .spawn_scoped(scope, move || {
                    while let Some((request, ticket)) = order.next(server) {
                        if request.url() == pool_keeper::PROBE_PATH {
                            drop(ticket.wait());
                            let _ = Answer::text(204, "").send(request, true);
                            continue;
                        }
                        shared.taken.fetch_add(1, Ordering::Relaxed);
                        shared.in_progress.fetch_add(1, Ordering::Relaxed);
                        respond(lockd, config, shared, request, ticket.wait());
                    }
                    running.fetch_sub(1, Ordering::Relaxed);
                })
                .expect("spawning a worker thread");
        }
        let wedged = || keeper.as_ref().is_some_and(PoolKeeper::wedged);
        while !stop.load(Ordering::Relaxed)
            && running.load(Ordering::Relaxed) == workers
            && !wedged()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(keeper);
        drain(&listener, &lockd, &shared, workers);
    });
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
fn drain(listener: &Listener, lockd: &Lockd, shared: &Shared, workers: usize) {
    tracing::info!("stopping: refusing new connections, answering the requests received");
    listener.stop_accepting();
    shared.draining.store(true, Ordering::Relaxed);
    lockd.stop_waiting();
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
    for _ in 0..workers {
        listener.server.unblock();
    }
}

/// The longest a stopping daemon keeps answering.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Answers `request` during its connection's `turn`: XML-RPC calls
/// through [`rpc::handle_then`], which may answer from another thread; the
/// health check, metrics and status page at once.
fn respond(
    lockd: &Lockd,
    config: &ServeConfig,
    shared: &Arc<Shared>,
    mut request: Request,
    turn: Turn,
) {
    let taken = Instant::now();
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
        return send(shared, request, answer, turn, taken);
    }
    let role = match &config.auth {
        None => Some(Role::Operator),
        Some(credentials) => {
            let authorization = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str());
            credentials.authenticate(authorization)
        }
    };
    let Some(role) = role else {
        let refusal = Answer::text(401, "").with("WWW-Authenticate", "Basic realm=\"lockd\"");
        return send(shared, request, refusal, turn, taken);
    };
    let answer = match (request.method(), path.as_str()) {
        (Method::Post, "/" | "/RPC2") => match read_body(&mut request, config.max_body) {
            Ok(body) => {
                let shared = shared.clone();
                return rpc::handle_then(lockd, &body, role, move |xml| {
                    send(
                        &shared,
                        request,
                        Answer::new(200, "text/xml", xml),
                        turn,
                        taken,
                    );
                });
            }
            Err(answer) => answer,
        },
        (Method::Get | Method::Head, "/") => status_page(lockd),
        (Method::Get | Method::Head, "/metrics") => match lockd.metrics_text() {
            Ok(text) => Answer::new(200, "text/plain; version=0.0.4; charset=utf-8", text),
            Err(e) => Answer::text(503, format!("{e}\n")),
        },
        (_, "/") => Answer::text(405, "XML-RPC takes POST; the status page GET\n")
            .with("Allow", "GET, HEAD, POST"),
        (_, "/RPC2") => Answer::text(405, "XML-RPC takes POST\n").with("Allow", "POST"),
        _ => Answer::text(404, "not found\n"),
    };
    send(shared, request, answer, turn, taken);
}

fn status_page(lockd: &Lockd) -> Answer {
    match lockd.list("") {
        Ok(locks) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let dir = lockd.dir().display().to_string();
            Answer::new(
                200,
                "text/html; charset=utf-8",
                status_page::render(&locks, &dir, now_ms),
            )
        }
        Err(e) => Answer::text(503, format!("{e}\n")),
    }
}

/// Ends the connection's `turn` (its next request may be handled) and
/// writes `response`, after the answers to the connection's earlier
/// requests, as tiny_http orders them.
fn send(shared: &Shared, request: Request, answer: Answer, turn: Turn, taken: Instant) {
    drop(turn);
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
    if let Err(e) = answer.send(request, close) {
        tracing::debug!("writing a response failed: {e}");
    }
    shared.metrics.observe_request(taken.elapsed());
    shared.in_progress.fetch_sub(1, Ordering::Relaxed);
}

/// The request body, or 413 when it is longer than `max` (without reading
/// more than `max + 1` bytes of it).
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, Answer> {
    let too_large = || Answer::text(413, format!("request body larger than {max} bytes\n"));
    if request.body_length().is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0));
    match request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > max => Err(too_large()),
        Ok(_) => Ok(body),
        Err(e) => Err(Answer::text(
            400,
            format!("reading the request body: {e}\n"),
        )),
    }
}
