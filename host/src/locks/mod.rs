//! [`Lockd`]: a lock directory opened for use, in-process, with concurrent
//! callers' changes committed together (group commit).

mod calls;
mod open;
mod options;

use calls::millis;

pub(crate) use calls::{
    audit_break, lock_reply, lock_request, release_request, renew_request, unexpected,
};
pub use options::{Acquire, Durability, OpenReport, Options};

/// A lock as the component reports it: resource, holder, token, times.
pub use crate::component::LockInfo as Lock;

use crate::backend::{Backend, Terms};
pub use crate::commit::Presence;
use crate::commit::Then;
use crate::component::{AcquireRequest, CheckRequest, ListRequest, Reply, Request};
use crate::error::LockError;
use crate::guard::DirGuard;
use crate::metrics::{Gauges, Metrics, Sample};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A lock directory served by the lock component, as gocept.lockd's `Lockd`
/// class was used in-process.
///
/// Operations are linearizable: of any number of concurrent `lock` calls on
/// one resource exactly one succeeds. Every successful change is durable as
/// [`Options::durability`] says when it returns; callers arriving while a
/// batch is being synced are served together by the next one.
///
/// ```
/// use lockd::{LockError, Lockd};
///
/// # fn main() -> anyhow::Result<()> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let locks = Lockd::open(dir)?;
/// assert_eq!(locks.lock("resource1", "client1"), Ok(()));
/// assert_eq!(
///     locks.lock("resource1", "client2").unwrap_err().to_string(),
///     "Resource already locked by 'client1'"
/// );
/// assert_eq!(locks.lock("resource2", "client2"), Ok(()));
/// assert_eq!(
///     locks.unlock("resource1", "client2").unwrap_err().to_string(),
///     "Resource locked by 'client1' cannot be unlocked by 'client2'"
/// );
/// assert_eq!(locks.unlock("resource1", "client1"), Ok(()));
/// assert_eq!(locks.unlock("resource1", "client1"), Err(LockError::NotLocked));
/// assert_eq!(LockError::NotLocked.to_string(), "Resource not locked");
/// # Ok(())
/// # }
/// ```
///
/// With a fencing token and a lease (docs/embedding.md's in-process
/// recipe, line for line: `tests/integration/docs.rs` compares them):
///
/// ```standalone_crate
/// # fn main() -> anyhow::Result<()> {
/// # let tmp = tempfile::tempdir()?;
/// # std::env::set_current_dir(tmp.path())?;
/// let locks = lockd::Lockd::open("lockd-data")?;
/// locks.lock("resource1", "client1")?;
/// locks.unlock("resource1", "client1")?;
///
/// use std::time::Duration;
/// let how = lockd::Acquire { ttl: Some(Duration::from_secs(30)), wait: Duration::from_secs(10), ..Default::default() };
/// let lock = locks.acquire("vm-42", "host-a", &how)?;      // lock.token, lock.expires_ms
/// assert!(locks.check("vm-42", lock.token)?);
/// locks.release("vm-42", "host-a", Some(lock.token))?;
/// # assert!(locks.status("vm-42")?.is_none());
/// # Ok(())
/// # }
/// ```
pub struct Lockd {
    /// The lock directory, in directory mode.
    dir: Option<PathBuf>,
    /// Where the locks are kept, for people: `lock directory <path>` or
    /// `cluster mode on etcd <urls> (prefix "<prefix>")`.
    location: String,
    options: Options,
    report: OpenReport,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    timer: Option<JoinHandle<()>>,
    _guard: Option<DirGuard>,
}

impl Lockd {
    /// The lock directory, as an absolute path (none in cluster mode).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where the locks are kept, for people.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What opening the directory found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Locks `resource` for `client`. Refused while anyone holds it,
    /// `client` included, as gocept.lockd did.
    pub fn lock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.submit(Request::Lock(lock_request(resource, client)), Terms::once())
            .map(drop)
    }

    /// Releases `client`'s lock on `resource`.
    pub fn unlock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.submit(
            Request::Unlock(lock_request(resource, client)),
            Terms::once(),
        )
        .map(drop)
    }

    /// Who holds `resource`, if anyone.
    pub fn holder(&self, resource: &str) -> Result<Option<String>, LockError> {
        match self.submit(Request::Holder(resource.to_owned()), Terms::once())? {
            Reply::Holder(holder) => Ok(holder),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes `resource` for `client` as `how` says, waiting in line if
    /// asked. Fails with [`LockError::WaitTimedOut`] if the wait ends first.
    pub fn acquire(&self, resource: &str, client: &str, how: &Acquire) -> Result<Lock, LockError> {
        let (request, terms) = self.acquire_request(resource, client, how);
        lock_reply(self.submit(request, terms)?)
    }

    /// Releases `client`'s lock on `resource`; with `token`, only if it is
    /// the lock's.
    pub fn release(
        &self,
        resource: &str,
        client: &str,
        token: Option<u64>,
    ) -> Result<(), LockError> {
        self.submit(release_request(resource, client, token), Terms::once())
            .map(drop)
    }

    /// Makes `client`'s lease on `resource` run out `ttl` from now.
    pub fn renew(
        &self,
        resource: &str,
        client: &str,
        ttl: Duration,
        token: Option<u64>,
    ) -> Result<Lock, LockError> {
        lock_reply(self.submit(renew_request(resource, client, ttl, token), Terms::once())?)
    }

    /// The lock on `resource`, if it is held.
    pub fn status(&self, resource: &str) -> Result<Option<Lock>, LockError> {
        match self.submit(Request::Status(resource.to_owned()), Terms::once())? {
            Reply::Status(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// The held locks whose resource starts with `prefix`, by resource.
    pub fn list(&self, prefix: &str) -> Result<Vec<Lock>, LockError> {
        match self.submit(Request::List(prefix.to_owned()), Terms::once())? {
            Reply::Locks(locks) => Ok(locks),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of those: the first `limit` whose resource sorts after
    /// `after` (if given). Pass a page's last resource as `after` for the
    /// next.
    pub fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Lock>, LockError> {
        let page = ListRequest {
            prefix: prefix.to_owned(),
            after: after.map(str::to_owned),
            limit: Some(limit),
        };
        match self.submit(Request::ListPage(page), Terms::once())? {
            Reply::Locks(locks) => Ok(locks),
            other => Err(unexpected(&other)),
        }
    }

    /// How many locks are held whose resource starts with `prefix`.
    pub fn count(&self, prefix: &str) -> Result<u64, LockError> {
        match self.submit(Request::Count(prefix.to_owned()), Terms::once())? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether `token` is the fencing token of the current holder of
    /// `resource`.
    pub fn check(&self, resource: &str, token: u64) -> Result<bool, LockError> {
        let request = Request::Check(CheckRequest {
            resource: resource.to_owned(),
            token,
        });
        match self.submit(request, Terms::once())? {
            Reply::Valid(valid) => Ok(valid),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes the lock on `resource` whoever holds it (an operator's
    /// action, logged with `reason`); the old holder's token stops being
    /// valid and the resource stays unavailable for the lock-delay.
    pub fn break_lock(&self, resource: &str, reason: &str) -> Result<Lock, LockError> {
        let lock =
            lock_reply(self.submit(Request::BreakLock(resource.to_owned()), Terms::once())?)?;
        audit_break(&lock, reason);
        Ok(lock)
    }

    /// What has been counted so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The same, to keep past this `Lockd`'s borrow.
    pub(crate) fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The metrics in Prometheus' text format, with the locks held and the
    /// clients waiting now.
    pub fn metrics_text(&self) -> Result<String, LockError> {
        self.metrics_text_with(Vec::new())
    }

    /// [`metrics_text`](Self::metrics_text), with `transport`'s samples
    /// (TLS connections, say) among the store's.
    pub fn metrics_text_with(&self, transport: Vec<Sample>) -> Result<String, LockError> {
        let mut store = self.backend.samples();
        store.extend(transport);
        let gauges = Gauges {
            locks_held: self.list("")?.len(),
            waiters: self.backend.waiters(),
            journal_bytes: self.backend.journal_bytes(),
            store,
        };
        Ok(self.metrics.render(&gauges))
    }

    /// Ends every wait for a lock (fault 6) and refuses new ones: for a
    /// daemon that stops.
    pub fn stop_waiting(&self) {
        self.backend.stop_waiting();
    }

    /// Whether changes can be stored (and, in directory mode, the lock
    /// files are up to date); the error says every problem found.
    pub fn health(&self) -> Result<(), String> {
        let problems = self.backend.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Syncs the file system holding the lock directory: with
    /// [`Durability::None`], what was written is then on disk too.
    pub fn flush(&self) -> std::io::Result<()> {
        self.backend.flush()
    }

    /// The request, and how to run it, of an acquire.
    pub(crate) fn acquire_request(
        &self,
        resource: &str,
        client: &str,
        how: &Acquire,
    ) -> (Request, Terms) {
        let request = Request::Acquire(AcquireRequest {
            resource: resource.to_owned(),
            client: client.to_owned(),
            ttl_ms: how.ttl.map(millis),
            reentrant: how.reentrant,
        });
        let wait = how.wait.min(self.options.max_wait);
        let deadline = (!wait.is_zero()).then(|| Instant::now() + wait);
        let terms = Terms {
            deadline,
            request_id: how.request_id.clone(),
        };
        (request, terms)
    }

    /// Runs `request` on `terms` and returns its reply.
    pub(crate) fn submit(&self, request: Request, terms: Terms) -> Result<Reply, LockError> {
        self.backend.submit(request, terms)
    }

    /// Runs `request` and calls `then` with its reply, from whichever thread
    /// has it.
    pub(crate) fn submit_then(
        &self,
        request: Request,
        terms: Terms,
        then: impl FnOnce(Result<Reply, LockError>) + Send + 'static,
    ) {
        self.submit_waiting(request, terms, None, then);
    }

    /// [`submit_then`](Self::submit_then) for a caller that may hang up
    /// while it waits: it leaves the line once `present` says it has gone.
    pub(crate) fn submit_waiting(
        &self,
        request: Request,
        terms: Terms,
        present: Option<Presence>,
        then: impl FnOnce(Result<Reply, LockError>) + Send + 'static,
    ) {
        let then: Then = Box::new(then);
        self.backend.submit_then(request, terms, present, then);
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        self.backend.stop();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }
}
