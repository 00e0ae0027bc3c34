//! [`Lockd`]: a lock directory opened for use, in-process, with concurrent
//! callers' changes committed together (group commit).

use crate::backend::{Backend, Terms};
pub use crate::commit::Presence;
use crate::commit::{Engine, Then};
use crate::component::{
    AcquireRequest, CheckRequest, Durability as GuestDurability, Instance, ListRequest,
    LockRequest, Options as GuestOptions, ReleaseRequest, RenewRequest, Reply, Request, Runtime,
};
use crate::error::LockError;
use crate::guard::DirGuard;
use crate::metrics::{Gauges, Metrics};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When a change counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// On disk (journal synced) before the call returns; survives power loss
    /// and `kill -9`. Concurrent changes share one sync.
    #[default]
    Always,
    /// In the lock files before the call returns, synced when the operating
    /// system decides, as gocept.lockd did: survives `kill -9` of the
    /// daemon, not power loss or an operating system crash.
    None,
}

impl Durability {
    /// The name `--sync` takes.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::None => "none",
        }
    }
}

/// How to open a lock directory.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// How long a lock whose lease expired, or which was broken, stays
    /// unavailable to everyone.
    pub lock_delay: Duration,
    /// The longest a caller may wait for a lock; longer waits are cut to it.
    pub max_wait: Duration,
    /// The most callers that may wait for locks at once; more are refused
    /// at once ([`LockError::TooManyWaiters`]).
    pub max_waiters: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            lock_delay: Duration::from_secs(5),
            max_wait: Duration::from_secs(300),
            max_waiters: 10_000,
        }
    }
}

/// What opening found in the lock directory.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Locks held.
    pub held: u64,
    /// Changes replayed from the journal of an interrupted run.
    pub replayed: u64,
    /// Unknown files left alone, leftovers removed, files cut short by a
    /// power loss, lock files that could not be brought up to date.
    pub notes: Vec<String>,
}

/// A held lock, as the component describes it (the WIT `lock-info`).
pub use crate::component::LockInfo as Lock;

/// How to take a lock with [`Lockd::acquire`].
#[derive(Debug, Clone, Default)]
pub struct Acquire {
    /// A lease: the lock ends by itself this long after it is taken or
    /// last renewed. None: held until released.
    pub ttl: Option<Duration>,
    /// How long to wait, in line with other waiters, for the lock to be
    /// free; zero tries once.
    pub wait: Duration,
    /// If the client holds the lock already, return it (same token)
    /// instead of failing.
    pub reentrant: bool,
    /// The caller's id of this acquire, the same for every retry of it:
    /// in cluster mode a retry, on any host, of an acquire that took the
    /// lock gets that lock (see [`Terms::request_id`]).
    pub request_id: Option<String>,
}

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
    /// Opens `dir` (created if missing) for exclusive use by this process,
    /// with every change synced before it returns.
    pub fn open(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        Self::open_with(dir, &Options::default())
    }

    /// Opens `dir` with `options`. Fails if another lockd has it open.
    pub fn open_with(dir: impl AsRef<Path>, options: &Options) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating lock directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving lock directory {}", dir.display()))?;
        let guard = DirGuard::acquire(&dir)?;
        let runtime = Runtime::new()?;
        let guest_options = guest_options(options);
        let (instance, report) = open_instance(&runtime, &dir, guest_options)?;
        let reopen = Box::new(move |runtime: &Runtime, dir: &Path| {
            open_instance(runtime, dir, guest_options).map(|(instance, _)| instance)
        });
        let metrics = Arc::new(Metrics::default());
        let engine = Arc::new(Engine::new(
            dir.clone(),
            options.lock_delay,
            options.max_waiters,
            runtime,
            instance,
            reopen,
            metrics.clone(),
        ));
        let timer = {
            let engine = engine.clone();
            std::thread::Builder::new()
                .name("lockd-timer".into())
                .spawn(move || engine.run_timer())
                .context("starting the timer thread")?
        };
        let lockd = Self {
            location: format!("lock directory {}", dir.display()),
            dir: Some(dir),
            options: options.clone(),
            report,
            backend: engine,
            metrics,
            timer: Some(timer),
            _guard: Some(guard),
        };
        // Leases that ran out while no daemon ran end now.
        lockd.submit(Request::Sweep, Terms::once())?;
        Ok(lockd)
    }

    /// Locks kept in the etcd cluster `etcd` (cluster mode), under
    /// `prefix`, judging leases with a `max_clock_skew` margin; see
    /// [`crate::cluster`].
    pub fn on_etcd(
        etcd: crate::etcd::Etcd,
        prefix: &str,
        max_clock_skew: Duration,
        options: &Options,
    ) -> anyhow::Result<Self> {
        let endpoints = etcd.endpoints();
        let runtime = Runtime::new()?;
        let cluster = crate::cluster::Cluster::new(
            etcd,
            prefix,
            &runtime,
            options.lock_delay,
            max_clock_skew,
        )?;
        let backend = Arc::new(crate::cluster::Served::new(cluster, options.max_waiters));
        Ok(Self {
            dir: None,
            location: format!("cluster mode on etcd {endpoints} (prefix {prefix:?})"),
            options: options.clone(),
            report: OpenReport::default(),
            backend,
            metrics: Arc::new(Metrics::default()),
            timer: None,
            _guard: None,
        })
    }

    /// The lock directory, as an absolute path (none in cluster mode).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where the locks are kept, for people.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.options
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
        let gauges = Gauges {
            locks_held: self.list("")?.len(),
            waiters: self.backend.waiters(),
            journal_bytes: self.backend.journal_bytes(),
            store: self.backend.samples(),
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

    /// [`lock`](Self::lock), calling `then` with the outcome once it is as
    /// durable as [`Options::durability`] says, from whichever thread
    /// commits it: this one, or one committing a batch that took it along.
    /// Returns without waiting if a batch is running.
    pub fn lock_then(
        &self,
        resource: &str,
        client: &str,
        then: impl FnOnce(Result<(), LockError>) + Send + 'static,
    ) {
        let request = Request::Lock(lock_request(resource, client));
        self.submit_then(request, Terms::once(), move |r| then(r.map(drop)));
    }

    /// [`unlock`](Self::unlock), calling `then` as [`lock_then`](Self::lock_then) does.
    pub fn unlock_then(
        &self,
        resource: &str,
        client: &str,
        then: impl FnOnce(Result<(), LockError>) + Send + 'static,
    ) {
        let request = Request::Unlock(lock_request(resource, client));
        self.submit_then(request, Terms::once(), move |r| then(r.map(drop)));
    }

    /// [`acquire`](Self::acquire), calling `then` as
    /// [`lock_then`](Self::lock_then) does; a wait holds no thread.
    pub fn acquire_then(
        &self,
        resource: &str,
        client: &str,
        how: &Acquire,
        then: impl FnOnce(Result<Lock, LockError>) + Send + 'static,
    ) {
        let (request, terms) = self.acquire_request(resource, client, how);
        self.submit_then(request, terms, move |r| then(r.and_then(lock_reply)));
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

/// Logs an operator's break of `lock`: who held it, with which token, and
/// why it was broken.
pub(crate) fn audit_break(lock: &Lock, reason: &str) {
    tracing::warn!(
        target: "lockd::audit",
        resource = %lock.resource,
        holder = %lock.client,
        token = lock.token,
        %reason,
        "lock broken by an operator"
    );
}

pub(crate) fn lock_request(resource: &str, client: &str) -> LockRequest {
    LockRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
    }
}

pub(crate) fn release_request(resource: &str, client: &str, token: Option<u64>) -> Request {
    Request::Release(ReleaseRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
        token,
    })
}

pub(crate) fn renew_request(
    resource: &str,
    client: &str,
    ttl: Duration,
    token: Option<u64>,
) -> Request {
    Request::Renew(RenewRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
        ttl_ms: millis(ttl),
        token,
    })
}

/// At least one millisecond for any non-zero duration.
fn millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

pub(crate) fn lock_reply(reply: Reply) -> Result<Lock, LockError> {
    match reply {
        Reply::Lock(info) => Ok(info),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn unexpected(reply: &Reply) -> LockError {
    LockError::Internal(format!("the lock component answered {reply:?}"))
}

fn guest_options(options: &Options) -> GuestOptions {
    GuestOptions {
        durability: match options.durability {
            Durability::Always => GuestDurability::Always,
            Durability::None => GuestDurability::None,
        },
        lock_delay_ms: millis(options.lock_delay),
    }
}

fn open_instance(
    runtime: &Runtime,
    dir: &Path,
    options: GuestOptions,
) -> anyhow::Result<(Instance, OpenReport)> {
    let mut instance = runtime.instantiate(dir)?;
    let report = instance
        .open(options)?
        .map_err(|e| anyhow::anyhow!("opening lock directory {}: {e:?}", dir.display()))?;
    Ok((
        instance,
        OpenReport {
            held: report.held,
            replayed: report.replayed,
            notes: report.notes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the journal's checkpoint size (1 MiB), the journal starts a new
    /// cycle over its old records; reopening (as after a crash: nothing
    /// was closed) must replay only the new cycle's.
    #[test]
    fn the_journal_cycles_at_checkpoints_and_replays_only_its_current_cycle() {
        let tmp = tempfile::tempdir().unwrap();
        let name = |i: usize| format!("{i:04}-{}", "r".repeat(200));
        let pairs = 3200;
        {
            let locks = Lockd::open(tmp.path()).unwrap();
            for i in 0..pairs {
                locks.lock(&name(i), "c").unwrap();
                if i % 2 == 0 {
                    locks.unlock(&name(i), "c").unwrap();
                }
            }
        }
        let locks = Lockd::open(tmp.path()).unwrap();
        let replayed = locks.open_report().replayed;
        assert!(
            replayed > 0 && replayed < pairs as u64,
            "replayed {replayed}: a checkpoint should have emptied the journal on the way"
        );
        for i in 0..pairs {
            let expected = (i % 2 == 1).then(|| "c".to_owned());
            assert_eq!(locks.holder(&name(i)).unwrap(), expected, "{i}");
        }
    }
}
