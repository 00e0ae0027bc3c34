//! Cluster mode behind [`Lockd`](crate::Lockd): each request runs on the
//! calling thread against etcd, with a deadline; a failure etcd leaves
//! open is fault 7 saying so.
//!
//! A waiting call waits in its lock's line (see `wait.rs`) on a thread of
//! its own, not a worker's.

use super::{CALL_DEADLINE, Cluster, ClusterError};
use crate::backend::{Backend, Terms};
use crate::commit::{Presence, Then};
use crate::component::{Reply, Request};
use crate::error::LockError;
use crate::metrics::Sample;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cluster mode as a backend.
pub struct Served {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    max_waiters: usize,
    /// Calls that may wait, for `--max-waiters`: counted from the start,
    /// before they know whether they will join a line.
    waiting: AtomicUsize,
    stopping: AtomicBool,
}

impl Served {
    pub fn new(cluster: Cluster, max_waiters: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                max_waiters,
                waiting: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }
}

impl Inner {
    /// One try of `request`.
    fn run(&self, request: &Request, request_id: Option<&str>) -> Result<Reply, LockError> {
        let deadline = Instant::now() + CALL_DEADLINE;
        // (No sweep is ever asked for: expired leases are judged when
        // read. One would be refused as not about one resource.)
        let result = match request {
            Request::List(prefix) => self
                .cluster
                .list(prefix, None, None, deadline)
                .map(Reply::Locks),
            Request::ListPage(page) => self
                .cluster
                .list(&page.prefix, page.after.as_deref(), page.limit, deadline)
                .map(Reply::Locks),
            Request::Count(prefix) => self
                .cluster
                .list(prefix, None, None, deadline)
                .map(|locks| Reply::Count(locks.len() as u64)),
            _ => self.cluster.call(request, request_id, deadline),
        };
        result.map_err(|e| lock_error(request, e))
    }

    /// `request` waiting in its lock's line until it gets the lock or a
    /// final answer, `deadline` passes, its caller is gone or the daemon
    /// stops.
    fn wait(
        &self,
        request: &Request,
        request_id: Option<&str>,
        deadline: Instant,
        present: Option<&Presence>,
    ) -> Result<Reply, LockError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(LockError::ShuttingDown);
        }
        let leave = || {
            if self.stopping.load(Ordering::Relaxed) {
                Some(LockError::ShuttingDown)
            } else if present.is_some_and(|present| !present()) {
                Some(LockError::CallerGone)
            } else {
                None
            }
        };
        self.cluster
            .wait(request, request_id, deadline, &leave)
            .map_err(|e| lock_error(request, e))
    }
}

/// What a client is told of `e`.
fn lock_error(request: &Request, e: ClusterError) -> LockError {
    match e {
        ClusterError::Lock(refused) => LockError::for_request(request, refused),
        ClusterError::NotApplied(why) => {
            LockError::Unavailable(format!("the change did not happen: {why}"))
        }
        ClusterError::Unknown(why) => {
            LockError::Unavailable(format!("the outcome is unknown: {why}"))
        }
        ClusterError::Ended(why) => why,
    }
}

/// Runs `work` on a thread started by `builder` and hands its result to
/// `then`. When no thread can be started, `then` is told the change did
/// not happen, and this returns false.
fn answer_on_thread(
    builder: std::thread::Builder,
    work: impl FnOnce() -> Result<Reply, LockError> + Send + 'static,
    then: Then,
) -> bool {
    // Kept here too: a thread that cannot be started drops what it was
    // given, and the caller must still be answered.
    let then = Arc::new(Mutex::new(Some(then)));
    let answer = then.clone();
    let spawned = builder.spawn(move || {
        let result = work();
        if let Some(then) = answer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            then(result);
        }
    });
    let Err(e) = spawned else { return true };
    tracing::error!("starting a waiter thread: {e}");
    if let Some(then) = then.lock().unwrap_or_else(|p| p.into_inner()).take() {
        then(Err(LockError::Unavailable(format!(
            "the change did not happen: no thread could be started to wait ({e})"
        ))));
    }
    false
}

impl Backend for Served {
    fn submit(&self, request: Request, terms: Terms) -> Result<Reply, LockError> {
        let id = terms.request_id.as_deref();
        match terms.deadline {
            None => self.inner.run(&request, id),
            Some(deadline) => self.inner.wait(&request, id, deadline, None),
        }
    }

    fn submit_then(&self, request: Request, terms: Terms, present: Option<Presence>, then: Then) {
        let Some(deadline) = terms.deadline else {
            return then(self.inner.run(&request, terms.request_id.as_deref()));
        };
        let inner = &self.inner;
        if inner.stopping.load(Ordering::Relaxed) {
            return then(Err(LockError::ShuttingDown));
        }
        if inner.waiting.fetch_add(1, Ordering::Relaxed) >= inner.max_waiters {
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            return then(Err(LockError::TooManyWaiters {
                limit: inner.max_waiters,
            }));
        }
        let inner = inner.clone();
        let work = move || {
            let id = terms.request_id.as_deref();
            let result = inner.wait(&request, id, deadline, present.as_ref());
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            result
        };
        let waiter = std::thread::Builder::new().name("lockd-waiter".into());
        if !answer_on_thread(waiter, work, then) {
            self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Callers in a line: a call that may wait counts once it has joined
    /// its line in etcd, not while it first tries to take the lock.
    fn waiters(&self) -> usize {
        self.inner.cluster.in_line()
    }

    fn stop_waiting(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.stop_waiting();
        self.inner.cluster.stop();
    }

    fn problems(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        self.inner
            .cluster
            .health(deadline)
            .err()
            .into_iter()
            .collect()
    }

    fn samples(&self) -> Vec<Sample> {
        self.inner.cluster.samples()
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_waiter_whose_thread_cannot_start_is_answered() {
        let (tx, rx) = mpsc::channel();
        let then: Then = Box::new(move |result| tx.send(result).unwrap());
        // No thread gets a stack this large.
        let builder = std::thread::Builder::new().stack_size(usize::MAX / 2);
        let started = answer_on_thread(builder, || Err(LockError::WaitTimedOut), then);
        assert!(!started);
        match rx.try_recv() {
            Ok(Err(LockError::Unavailable(why))) => {
                assert!(why.starts_with("the change did not happen"), "{why}")
            }
            other => panic!("answered {other:?}"),
        }
    }

    #[test]
    fn a_waiter_on_its_thread_is_answered_what_it_found() {
        let (tx, rx) = mpsc::channel();
        let then: Then = Box::new(move |result| tx.send(result).unwrap());
        let started = answer_on_thread(
            std::thread::Builder::new(),
            || Err(LockError::WaitTimedOut),
            then,
        );
        assert!(started);
        assert!(matches!(rx.recv(), Ok(Err(LockError::WaitTimedOut))));
    }
}
