//! [`Lockd`]: a lock directory opened for use, in-process, with concurrent
//! callers' changes committed together (group commit).

use crate::component::{
    Durability as GuestDurability, GuestError, Instance, LockRequest, Reply, Request, Runtime,
};
use crate::error::LockError;
use crate::guard::DirGuard;
use anyhow::Context as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::Thread;

/// The most requests one guest call takes; later arrivals wait for the next.
const MAX_BATCH: usize = 256;

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
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub durability: Durability,
}

/// What opening found in the lock directory.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Locks held.
    pub held: u64,
    /// Changes replayed from the journal of an interrupted run.
    pub replayed: u64,
    /// Unknown files left alone, leftovers removed, unreadable lock files.
    pub notes: Vec<String>,
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
    dir: PathBuf,
    options: Options,
    report: OpenReport,
    runtime: Runtime,
    /// Used by one batch leader at a time.
    instance: Mutex<Instance>,
    queue: Mutex<Queue>,
    _guard: DirGuard,
}

/// Requests waiting for the next batch, and results waiting for their caller.
#[derive(Default)]
struct Queue {
    next_ticket: u64,
    pending: Vec<Pending>,
    done: HashMap<u64, Result<Reply, LockError>>,
    /// Whether some caller is running a batch right now.
    leader: bool,
}

/// A queued request and who takes its result.
struct Pending {
    ticket: u64,
    request: Request,
    then: Then,
}

/// Who takes a result.
enum Then {
    /// A thread waiting in [`Lockd::submit`], woken by name.
    Wake(Thread),
    /// A function, called by the thread that ran the batch.
    Call(Box<dyn FnOnce(Result<Reply, LockError>) + Send>),
}

impl Queue {
    fn push(&mut self, request: Request, then: Then) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.push(Pending {
            ticket,
            request,
            then,
        });
        ticket
    }
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
        let (instance, report) = open_instance(&runtime, &dir, options)?;
        Ok(Self {
            dir,
            options: options.clone(),
            report,
            runtime,
            instance: Mutex::new(instance),
            queue: Mutex::new(Queue::default()),
            _guard: guard,
        })
    }

    /// The lock directory, as an absolute path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the directory found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Locks `resource` for `client`. Refused while anyone holds it,
    /// `client` included, as gocept.lockd did.
    pub fn lock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.submit(Request::Lock(lock_request(resource, client)))
            .map(drop)
    }

    /// Releases `client`'s lock on `resource`.
    pub fn unlock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.submit(Request::Unlock(lock_request(resource, client)))
            .map(drop)
    }

    /// Who holds `resource`, if anyone.
    pub fn holder(&self, resource: &str) -> Result<Option<String>, LockError> {
        match self.submit(Request::Holder(resource.to_owned()))? {
            Reply::Holder(holder) => Ok(holder),
            Reply::Done => Err(LockError::Internal(
                "holder answered without a holder".into(),
            )),
        }
    }

    /// Locks `resource` for `client` and calls `then` with the outcome,
    /// once it is as durable as [`Options::durability`] says, from
    /// whichever thread commits it: this one or one committing a batch
    /// that took it along. Returns without waiting if a batch is running.
    pub fn lock_then(
        &self,
        resource: &str,
        client: &str,
        then: impl FnOnce(Result<(), LockError>) + Send + 'static,
    ) {
        let request = Request::Lock(lock_request(resource, client));
        self.submit_then(request, move |result| then(result.map(drop)));
    }

    /// [`unlock`](Self::unlock), calling `then` as [`lock_then`](Self::lock_then) does.
    pub fn unlock_then(
        &self,
        resource: &str,
        client: &str,
        then: impl FnOnce(Result<(), LockError>) + Send + 'static,
    ) {
        let request = Request::Unlock(lock_request(resource, client));
        self.submit_then(request, move |result| then(result.map(drop)));
    }

    /// Queues `request` and waits for its result. Whoever finds no batch
    /// running becomes the leader (see [`lead`](Self::lead)); the others
    /// sleep until the leader hands them their result, or the next batch
    /// to lead. Each waiter is woken by name: no herd.
    fn submit(&self, request: Request) -> Result<Reply, LockError> {
        let mut queue = lock(&self.queue);
        let ticket = queue.push(request, Then::Wake(std::thread::current()));
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result;
            }
            if queue.leader {
                drop(queue);
                std::thread::park();
                queue = lock(&self.queue);
            } else {
                queue = self.lead(queue);
            }
        }
    }

    /// Queues `request`; `then` gets its result from the thread that runs
    /// its batch, which is this one if no batch is running.
    fn submit_then(
        &self,
        request: Request,
        then: impl FnOnce(Result<Reply, LockError>) + Send + 'static,
    ) {
        let mut queue = lock(&self.queue);
        queue.push(request, Then::Call(Box::new(then)));
        if !queue.leader {
            drop(self.lead(queue));
        }
    }

    /// Runs batches while no one else does: takes everything queued so far
    /// into one guest call (one sync), hands waiting threads their results,
    /// wakes the oldest thread still queued to lead the next batch, and
    /// then, no longer leading, calls the functions waiting for results.
    /// If only functions are queued by then, nobody is left to run them
    /// but this thread, so it leads again.
    fn lead<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        let me = std::thread::current().id();
        loop {
            queue.leader = true;
            let take = queue.pending.len().min(MAX_BATCH);
            let (thens, requests): (Vec<(u64, Then)>, Vec<Request>) = queue
                .pending
                .drain(..take)
                .map(|p| ((p.ticket, p.then), p.request))
                .unzip();
            drop(queue);
            let results = self.run(&requests);
            queue = lock(&self.queue);
            let mut calls = Vec::new();
            for ((ticket, then), result) in thens.into_iter().zip(results) {
                match then {
                    Then::Wake(waiter) => {
                        queue.done.insert(ticket, result);
                        if waiter.id() != me {
                            waiter.unpark();
                        }
                    }
                    Then::Call(call) => calls.push((call, result)),
                }
            }
            queue.leader = false;
            let next_leader = queue.pending.iter().find_map(|p| match &p.then {
                Then::Wake(waiter) => Some(waiter),
                Then::Call(_) => None,
            });
            if let Some(waiter) = next_leader {
                waiter.unpark();
            }
            if calls.is_empty() {
                return queue;
            }
            drop(queue);
            for (call, result) in calls {
                call(result);
            }
            queue = lock(&self.queue);
            if queue.leader || queue.pending.is_empty() {
                return queue;
            }
        }
    }

    /// One guest call for `batch`. A trap poisons an instance, so it is
    /// replaced (reopening the directory) before the error is reported.
    fn run(&self, batch: &[Request]) -> Vec<Result<Reply, LockError>> {
        let mut instance = lock(&self.instance);
        match instance.apply(batch) {
            Ok(results) => batch
                .iter()
                .zip(results)
                .map(|(request, result)| result.map_err(|e| lock_error(request, e)))
                .collect(),
            Err(trap) => {
                tracing::error!("lock component trapped: {trap:?}");
                match open_instance(&self.runtime, &self.dir, &self.options) {
                    Ok((fresh, _)) => *instance = fresh,
                    Err(e) => tracing::error!("restarting the lock component failed: {e:#}"),
                }
                let error = LockError::Internal(format!("{trap:#}"));
                vec![Err(error); batch.len()]
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_request(resource: &str, client: &str) -> LockRequest {
    LockRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
    }
}

/// The component's error for `request`, with who asked where it matters.
fn lock_error(request: &Request, error: GuestError) -> LockError {
    let client = match request {
        Request::Lock(r) | Request::Unlock(r) => r.client.as_str(),
        Request::Holder(_) => "",
    };
    LockError::from_guest(error, client)
}

fn open_instance(
    runtime: &Runtime,
    dir: &Path,
    options: &Options,
) -> anyhow::Result<(Instance, OpenReport)> {
    let mut instance = runtime.instantiate(dir)?;
    let durability = match options.durability {
        Durability::Always => GuestDurability::Always,
        Durability::None => GuestDurability::None,
    };
    let report = instance
        .open(durability)?
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
