//! The threads that take requests from tiny_http: as many as needed so
//! that one is always free to take the next request.
//!
//! A worker reads its request's body, has the call answered and writes
//! the answer; a client that stalls sending its body or taking its answer
//! holds that worker until the idle timeout, as it holds tiny_http's own
//! thread for its connection. Whenever the last free worker takes a
//! request, another is started, so a stalled client costs its own
//! connection, never the others' answers. Workers beyond the configured
//! number end once no request has come to them for [`LINGER`]. A call
//! waiting for a lock holds no worker at all (see
//! [`crate::rpc::handle_parking`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiny_http::{Request, Server};

/// The most workers at once: a bound on threads, reached only when that
/// many clients stall at once.
pub const MAX_WORKERS: usize = 10_000;

/// How long a worker beyond the configured number waits for a request
/// before it ends.
const LINGER: Duration = Duration::from_secs(10);

/// What workers do with the requests they take.
pub trait Handler: Send + Sync + 'static {
    /// What admitting a request leaves to handle.
    type Admitted: Send;
    /// Takes a request in, in the order requests leave tiny_http's queue
    /// (one at a time, so quickly: every worker waits on it); returns what
    /// is to be handled now, if anything.
    fn admit(&self, request: Request) -> Option<Self::Admitted>;
    /// Handles what was admitted, side by side with other workers.
    fn handle(&self, admitted: Self::Admitted);
    /// Whether handling `admitted` takes next to nothing (dropping a
    /// request unanswered, say): the worker that took it goes on taking
    /// requests first, [`QUICK_RUN`] at most.
    fn quick(&self, _admitted: &Self::Admitted) -> bool {
        false
    }
}

/// The most quick requests a worker takes in a row before handling them.
pub const QUICK_RUN: usize = 256;

/// The worker pool of one server.
pub struct Workers<H> {
    server: Arc<Server>,
    handler: H,
    /// Held while taking a request and admitting it, so that requests are
    /// admitted in the order tiny_http hands them out.
    taking: Mutex<()>,
    /// Always running.
    min: usize,
    /// Running now.
    running: AtomicUsize,
    /// Waiting for a request now.
    free: AtomicUsize,
    /// Set when taking a request failed for another reason than
    /// [`stop`](Self::stop): tiny_http's accept thread ended.
    failed: AtomicBool,
    stopping: AtomicBool,
}

impl<H: Handler> Workers<H> {
    /// Starts `min` workers passing the requests they take from `server`
    /// to `handler`.
    pub fn start(server: Arc<Server>, min: usize, handler: H) -> Arc<Self> {
        let workers = Arc::new(Self {
            server,
            handler,
            taking: Mutex::new(()),
            min: min.max(1),
            running: AtomicUsize::new(0),
            free: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        for _ in 0..workers.min {
            workers.spawn();
        }
        workers
    }

    fn spawn(self: &Arc<Self>) {
        let n = self.running.fetch_add(1, Ordering::Relaxed);
        let workers = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lockd-worker-{n}"))
            .spawn(move || workers.work());
        if let Err(e) = spawned {
            self.running.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("starting a worker thread: {e}");
        }
    }

    fn work(self: Arc<Self>) {
        loop {
            self.free.fetch_add(1, Ordering::Relaxed);
            let taking = self.taking.lock().unwrap_or_else(|p| p.into_inner());
            let taken = if self.running() > self.min {
                self.server.recv_timeout(LINGER)
            } else {
                self.server.recv().map(Some)
            };
            // Quick requests are taken out in a row while more wait: a
            // flood of them (a connection's backlog after it was hung up
            // on) is emptied by one worker, not handed from worker to
            // worker at every request.
            let mut quick = Vec::new();
            let taken = match taken {
                Ok(Some(request)) => self
                    .quick_run(self.handler.admit(request), &mut quick)
                    .map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            drop(taking);
            let free = self.free.fetch_sub(1, Ordering::Relaxed) - 1;
            if free == 0 && matches!(taken, Ok(Some(_))) && self.running() < MAX_WORKERS {
                self.spawn();
            }
            for admitted in quick {
                self.handler.handle(admitted);
            }
            let admitted = match taken {
                Ok(Some(admitted)) => admitted,
                // Nothing came for a while: one worker fewer, unless only
                // the configured number run.
                Ok(None) if self.leave() => return,
                Ok(None) => continue,
                Err(e) => {
                    if !self.stopping.load(Ordering::Relaxed) {
                        tracing::error!("the HTTP server stopped accepting connections: {e}");
                        self.failed.store(true, Ordering::Relaxed);
                    }
                    break;
                }
            };
            if let Some(request) = admitted {
                self.handler.handle(request);
            }
        }
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes requests while each one admitted is quick to handle, into
    /// `quick` ([`QUICK_RUN`] at most); returns what was admitted last if
    /// it is not, or the error taking the next one met (tiny_http's accept
    /// thread failing says so once, in its queue of requests).
    fn quick_run(
        &self,
        mut admitted: Option<H::Admitted>,
        quick: &mut Vec<H::Admitted>,
    ) -> std::io::Result<Option<H::Admitted>> {
        while let Some(next) = admitted.take_if(|a| self.handler.quick(a)) {
            quick.push(next);
            if quick.len() == QUICK_RUN {
                break;
            }
            match self.server.try_recv()? {
                Some(request) => admitted = self.handler.admit(request),
                None => break,
            }
        }
        Ok(admitted)
    }

    /// Counts this worker out if more than the configured number run.
    fn leave(&self) -> bool {
        self.running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > self.min).then(|| n - 1)
            })
            .is_ok()
    }

    /// Workers running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Whether tiny_http stopped handing out requests by itself (its
    /// accept thread failed).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Notes that the server is being stopped on purpose: taking a request
    /// failing from now on is no error.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Makes every worker end once it has no request, waiting for them
    /// until `deadline`; returns whether all ended. (A worker still
    /// writing to a client that does not read ends at the idle timeout.)
    pub fn stop(&self, deadline: Instant) -> bool {
        self.stopping.store(true, Ordering::Relaxed);
        while self.running() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            for _ in 0..self.free.load(Ordering::Relaxed).max(1) {
                self.server.unblock();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}
