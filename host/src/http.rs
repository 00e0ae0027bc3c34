//! The HTTP transport: moves request bodies to [`rpc::handle`] and its
//! answers back, over keep-alive connections served by a pool of workers.

use crate::auth::{Credentials, Role};
use crate::locks::Lockd;
use crate::order::{Order, Turn};
use crate::pool_keeper::PoolKeeper;
use crate::rpc;
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

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
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            workers: 16,
            auth: None,
        }
    }
}

/// A server listening on `addr`, whose connections time out reads and
/// writes after `idle` (set on the listening socket, whose accepted
/// sockets inherit it on Linux): a connection silent that long, between
/// requests or within one, is closed, and a client that does not take its
/// answer cannot hold a thread for longer.
pub fn bind(addr: &str, idle: Option<Duration>) -> std::io::Result<Server> {
    let listener = std::net::TcpListener::bind(addr)?;
    if let Some(idle) = idle {
        set_timeouts(&listener, idle)?;
    }
    Server::from_listener(listener, None).map_err(std::io::Error::other)
}

fn set_timeouts(listener: &std::net::TcpListener, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt on a socket we own, with a timeval of the
        // size we pass.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves `server` until it is unblocked ([`Server::unblock`]) or fails.
pub fn serve(server: Arc<Server>, lockd: Arc<Lockd>, config: &ServeConfig) {
    let requests = Arc::new(AtomicU64::new(0));
    let _keeper = match server.server_addr().to_ip() {
        Some(addr) => match PoolKeeper::start(addr, requests.clone()) {
            Ok(keeper) => Some(keeper),
            Err(e) => {
                tracing::warn!("not keeping the connection pool: {e}");
                None
            }
        },
        None => None,
    };
    let order = Arc::new(Order::default());
    std::thread::scope(|scope| {
        for i in 0..config.workers.max(1) {
            let (server, lockd, order, requests) = (&server, &lockd, &order, &requests);
            std::thread::Builder::new()
                .name(format!("lockd-worker-{i}"))
                .spawn_scoped(scope, move || {
                    while let Some((request, ticket)) = order.next(server) {
                        requests.fetch_add(1, Ordering::Relaxed);
                        respond(lockd, config, request, ticket.wait());
                    }
                })
                .expect("spawning a worker thread");
        }
    });
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// Answers `request` during its connection's `turn`: XML-RPC calls
/// through [`rpc::handle_then`], which may answer from another thread.
fn respond(lockd: &Lockd, config: &ServeConfig, mut request: Request, turn: Turn) {
    let path = request.url().split('?').next().unwrap_or_default();
    let rpc_path = matches!(path, "/" | "/RPC2");
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
        let refusal = Response::from_string("")
            .with_status_code(401)
            .with_header(header("WWW-Authenticate", "Basic realm=\"lockd\""));
        return send(request, refusal, turn);
    };
    let response = match (request.method(), rpc_path) {
        (Method::Post, true) => match read_body(&mut request, config.max_body) {
            Ok(body) => {
                return rpc::handle_then(lockd, &body, role, move |xml| {
                    let response =
                        Response::from_string(xml).with_header(header("Content-Type", "text/xml"));
                    send(request, response, turn);
                });
            }
            Err(response) => response,
        },
        (_, true) => Response::from_string("XML-RPC takes POST\n")
            .with_status_code(405)
            .with_header(header("Allow", "POST")),
        (_, false) => Response::from_string("not found\n").with_status_code(404),
    };
    send(request, response, turn);
}

/// Ends the connection's `turn` (its next request may be handled) and
/// writes `response`, after the answers to the connection's earlier
/// requests, as tiny_http orders them.
fn send(request: Request, response: TextResponse, turn: Turn) {
    drop(turn);
    tracing::debug!(
        method = %request.method(),
        path = request.url(),
        status = response.status_code().0,
        "request"
    );
    if let Err(e) = request.respond(response) {
        tracing::debug!("writing a response failed: {e}");
    }
}

type TextResponse = Response<std::io::Cursor<Vec<u8>>>;

/// The request body, or 413 when it is longer than `max` (without reading
/// more than `max + 1` bytes of it).
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, TextResponse> {
    let too_large = || {
        Response::from_string(format!("request body larger than {max} bytes\n"))
            .with_status_code(413)
            .with_header(header("Connection", "close"))
    };
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
        Err(e) => Err(
            Response::from_string(format!("reading the request body: {e}\n"))
                .with_status_code(400)
                .with_header(header("Connection", "close")),
        ),
    }
}
