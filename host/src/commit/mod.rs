//! Directory mode behind [`Lockd`](crate::Lockd), the [`Committer`]: group
//! commit (concurrent requests share one guest call and one sync), the
//! queues of clients waiting for a lock, and the timer that ends their
//! waits and sweeps expired leases. The lock rules themselves are the component's.

mod backend;
mod live;
mod queue;
mod timer;

use crate::component::{Instance, Reply, Request, Runtime};
use crate::error::LockError;
use crate::metrics::Metrics;
use crate::requests::{self, reentrant, taken};
pub use queue::Presence;
use queue::{Deliveries, Line, Pending, Queue, Slot, Taker};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most requests one guest call takes; later arrivals wait for the next.
const MAX_BATCH: usize = 256;

/// How often the callers of waiting requests are asked whether they are
/// still there.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// A function taking a request's result, called by whichever thread has it.
pub type Then = Box<dyn FnOnce(Result<Reply, LockError>) + Send>;

/// Opens a fresh instance on the directory (after a trap, for instance).
pub type Reopen = Box<dyn Fn(&Runtime, &Path) -> anyhow::Result<Instance> + Send + Sync>;

/// The component instance and, if it trapped and could not be opened
/// again, why it cannot be used.
struct Live {
    instance: Instance,
    lost: Option<String>,
}

/// The committer of one open lock directory.
pub struct Committer {
    dir: PathBuf,
    lock_delay: Duration,
    /// The most clients that may wait at once, for all resources.
    max_waiters: usize,
    runtime: Runtime,
    reopen: Reopen,
    metrics: Arc<Metrics>,
    /// Used by one batch leader at a time.
    instance: Mutex<Live>,
    queue: Mutex<Queue>,
    /// Wakes the timer thread when a deadline comes closer.
    timer: Condvar,
}

impl Committer {
    pub fn new(
        dir: PathBuf,
        lock_delay: Duration,
        max_waiters: usize,
        runtime: Runtime,
        instance: Instance,
        reopen: Reopen,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dir,
            lock_delay,
            max_waiters,
            runtime,
            reopen,
            metrics,
            instance: Mutex::new(Live {
                instance,
                lost: None,
            }),
            queue: Mutex::new(Queue::default()),
            timer: Condvar::new(),
        }
    }

    /// Queues `request` and waits for its result (until `deadline` for the
    /// lock to be free, if given). Whoever finds no batch running becomes
    /// the leader (see [`lead`](Self::lead)); the others sleep until they
    /// are handed their result, or the next batch to lead. Each waiter is
    /// woken by name (no herd), once the leader has let go of the queue,
    /// and takes its result from its own slot.
    pub fn submit(&self, request: Request, deadline: Option<Instant>) -> Result<Reply, LockError> {
        let slot = Slot::new();
        let mut queue = lock(&self.queue);
        queue.push(request, Taker::Wake(slot.clone()), deadline, None);
        loop {
            if !queue.leader && !queue.pending.is_empty() {
                queue = self.lead(queue);
            }
            if let Some(result) = slot.take() {
                return result;
            }
            drop(queue);
            std::thread::park();
            // Woken with a result, or to lead the next batch (or for
            // nothing: parking may end by itself).
            if let Some(result) = slot.take() {
                return result;
            }
            queue = lock(&self.queue);
        }
    }

    /// Queues `request`; `then` gets its result from the thread that has
    /// it: this one if no batch is running, another one otherwise. A
    /// waiter whose caller is no longer `present` leaves its line, with
    /// [`LockError::CallerGone`].
    pub fn submit_then(
        &self,
        request: Request,
        deadline: Option<Instant>,
        present: Option<Presence>,
        then: Then,
    ) {
        let mut queue = lock(&self.queue);
        queue.push(request, Taker::Call(then), deadline, present);
        if !queue.leader {
            drop(self.lead(queue));
        }
    }

    /// Runs batches while no one else does: takes what is queued into one
    /// guest call (one sync), hands threads their results, wakes the oldest
    /// thread still queued to lead the next batch, and then, no longer
    /// leading, calls the functions waiting for results. If only functions
    /// are queued, it calls them still leading, and leads again while
    /// anything is queued: what comes while the answers go out makes one
    /// batch. (So a function given a result must not wait for another
    /// result: this thread would have to lead the batch it waits for.) A
    /// lock freed in a batch goes to the oldest client waiting for it in
    /// the very next batch.
    fn lead<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        let mut rounds = 0;
        loop {
            rounds += 1;
            queue.leader = true;
            let mut out = Deliveries::default();
            let batch = self.take_batch(&mut queue, &mut out);
            // Those refused a place are told now, not after the batch.
            let refused = std::mem::take(&mut out);
            drop(queue);
            self.hand_out(refused, true);
            let requests: Vec<Request> = batch.iter().map(|p| p.request.clone()).collect();
            let results = self.run(&requests);
            queue = lock(&self.queue);
            let now = Instant::now();
            let mut freed = Vec::new();
            let mut wake_timer = false;
            for (pending, result) in batch.into_iter().zip(results) {
                if let Some(resource) = taken(&pending.request)
                    && let Err(
                        refusal @ (LockError::AlreadyLocked { .. } | LockError::CoolingDown { .. }),
                    ) = &result
                    && let Some(deadline) = pending.deadline
                {
                    if now >= deadline {
                        queue.deliver(pending, Err(LockError::WaitTimedOut), &mut out);
                        continue;
                    }
                    if queue.refuse_waits {
                        queue.deliver(pending, Err(LockError::ShuttingDown), &mut out);
                        continue;
                    }
                    if !pending.queued && queue.waiting >= self.max_waiters {
                        let full = LockError::TooManyWaiters {
                            limit: self.max_waiters,
                        };
                        queue.deliver(pending, Err(full), &mut out);
                        continue;
                    }
                    if let LockError::CoolingDown { ms_left } = refusal {
                        queue.sweep_by(now + Duration::from_millis(*ms_left));
                    }
                    queue.waiting += 1;
                    let line = queue
                        .lines
                        .entry(resource.to_owned())
                        .or_insert_with(|| Line {
                            waiters: VecDeque::new(),
                            refusal: refusal.clone(),
                        });
                    line.refusal = refusal.clone();
                    let was_queued = pending.queued;
                    let pending = Pending {
                        queued: true,
                        ..pending
                    };
                    if was_queued {
                        line.waiters.push_front(pending);
                    } else {
                        line.waiters.push_back(pending);
                    }
                    wake_timer = true;
                    continue;
                }
                wake_timer |=
                    self.follow_up(&mut queue, &pending.request, &result, now, &mut freed);
                queue.deliver(pending, result, &mut out);
            }
            for resource in freed {
                let Some(line) = queue.lines.get_mut(&resource) else {
                    continue;
                };
                // The lock goes to the oldest waiter still there.
                let mut gone = Vec::new();
                let head = loop {
                    match line.waiters.pop_front() {
                        Some(waiter) if !waiter.present() => gone.push(waiter),
                        head => break head,
                    }
                };
                if line.waiters.is_empty() {
                    queue.lines.remove(&resource);
                }
                queue.waiting -= gone.len();
                for waiter in gone {
                    queue.deliver(waiter, Err(LockError::CallerGone), &mut out);
                }
                if let Some(head) = head {
                    queue.waiting -= 1;
                    queue.pending.push_front(head);
                }
            }
            if wake_timer {
                self.timer.notify_one();
            }
            let next_leader = queue.waiting_leader();
            // Without a thread waiting to lead, this one stays the leader
            // while it hands out results, for its first rounds: what comes
            // meanwhile waits for its next batch instead of starting a
            // batch of its own (each a guest call and a sync) as every
            // answer goes out. After them anyone may take over, so that
            // whoever leads (the timer, a caller waiting for its own
            // result) is let go under a steady load.
            let keeping = next_leader.is_none() && rounds <= KEEP_ROUNDS;
            if !keeping {
                queue.leader = false;
            }
            out.wakes.extend(next_leader);
            if !out.is_empty() {
                // Woken only now: a thread woken while the queue is locked
                // would wait for it at once.
                drop(queue);
                self.hand_out(out, keeping);
                queue = lock(&self.queue);
            }
            if queue.pending.is_empty() {
                if keeping {
                    queue.leader = false;
                }
                return queue;
            }
            if !keeping && queue.leader {
                return queue;
            }
        }
    }

    /// Hands out `out` with the queue unlocked; `leading` if this thread
    /// still leads meanwhile, which it lets go of if a function given a
    /// result panics (see [`Unwinding`]).
    fn hand_out(&self, out: Deliveries, leading: bool) {
        let unwinding = leading.then_some(Unwinding(&self.queue));
        out.run();
        std::mem::forget(unwinding);
    }

    /// The next batch from the queue. A newcomer taking a lock that others
    /// are waiting for joins their line if it waits, and is refused if not:
    /// nobody overtakes a waiter.
    fn take_batch(&self, queue: &mut Queue, out: &mut Deliveries) -> Vec<Pending> {
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(pending) = queue.pending.pop_front() else {
                break;
            };
            let full = queue.waiting >= self.max_waiters || queue.refuse_waits;
            // A holder taking its own lock again (reentrant) gets it back
            // whoever waits; the component refuses anyone else, who then
            // joins the line like any newcomer.
            let line = match taken(&pending.request) {
                Some(resource) if !pending.queued && !reentrant(&pending.request) => {
                    queue.lines.get_mut(resource)
                }
                _ => None,
            };
            match line {
                None => batch.push(pending),
                Some(_) if pending.deadline.is_some() && full => {
                    let full = LockError::TooManyWaiters {
                        limit: self.max_waiters,
                    };
                    queue.deliver(pending, Err(full), out);
                }
                Some(line) if pending.deadline.is_some() => {
                    line.waiters.push_back(Pending {
                        queued: true,
                        ..pending
                    });
                    queue.waiting += 1;
                    self.timer.notify_one();
                }
                Some(line) => {
                    let refusal = line.refusal.clone();
                    queue.deliver(pending, Err(refusal), out);
                }
            }
        }
        batch
    }

    /// What a result means beyond its caller: the change logged, locks
    /// freed for waiters, leases and lock-delays to sweep after. Returns
    /// whether the timer must look again.
    fn follow_up(
        &self,
        queue: &mut Queue,
        request: &Request,
        result: &Result<Reply, LockError>,
        now: Instant,
        freed: &mut Vec<String>,
    ) -> bool {
        let Ok(reply) = result else { return false };
        freed.extend(
            requests::freed(request, reply, self.lock_delay)
                .into_iter()
                .map(str::to_owned),
        );
        match (request, reply) {
            (Request::Lock(r), _) => {
                tracing::info!(target: "lockd::change", resource = %r.resource, client = %r.client, "locked");
            }
            (Request::Unlock(r), _) => {
                tracing::info!(target: "lockd::change", resource = %r.resource, client = %r.client, "unlocked");
            }
            (Request::Release(r), _) => {
                tracing::info!(target: "lockd::change", resource = %r.resource, client = %r.client, "released");
            }
            (Request::Acquire(r), Reply::Lock(info)) => {
                tracing::info!(
                    target: "lockd::change",
                    resource = %r.resource,
                    client = %r.client,
                    token = info.token,
                    ttl_ms = ?r.ttl_ms,
                    "acquired"
                );
                if let Some(ttl) = r.ttl_ms {
                    return queue.sweep_by(now + Duration::from_millis(ttl));
                }
            }
            (Request::Renew(r), _) => {
                tracing::info!(
                    target: "lockd::change",
                    resource = %r.resource,
                    client = %r.client,
                    ttl_ms = r.ttl_ms,
                    "renewed"
                );
                return queue.sweep_by(now + Duration::from_millis(r.ttl_ms));
            }
            (Request::BreakLock(resource), Reply::Lock(info)) => {
                self.metrics.breaks.inc();
                tracing::info!(
                    target: "lockd::change",
                    %resource,
                    holder = %info.client,
                    token = info.token,
                    "broken; unavailable for the lock-delay"
                );
                return queue.sweep_by(now + self.lock_delay);
            }
            (Request::Sweep, Reply::Swept(swept)) => {
                self.metrics
                    .lease_expiries
                    .inc_by(swept.expired.len() as u64);
                for info in &swept.expired {
                    tracing::info!(
                        target: "lockd::change",
                        resource = %info.resource,
                        holder = %info.client,
                        token = info.token,
                        "lease expired"
                    );
                }
                if let Some(next) = swept.next_deadline_ms {
                    let wait = Duration::from_millis(next.saturating_sub(swept.now_ms));
                    return queue.sweep_by(now + wait);
                }
            }
            _ => {}
        }
        false
    }
}

/// The most batches in a row one thread leads keeping the lead while it
/// hands out their results (see [`Committer::lead`]).
const KEEP_ROUNDS: usize = 8;

/// Lets go of the lead if a function given a result panics while its
/// leader, still leading, hands results out, and wakes the oldest thread
/// waiting in [`Committer::submit`] to lead instead: nobody waits for a
/// leader that is gone. (Results not handed out yet are lost with the
/// thread, as a panic loses them.)
struct Unwinding<'a>(&'a Mutex<Queue>);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        let mut queue = lock(self.0);
        queue.leader = false;
        let next = queue.waiting_leader();
        drop(queue);
        if let Some(next) = next {
            next.unpark();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use crate::backend::Terms;
    use crate::component::Request;
    use crate::locks::{self, Lockd};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    fn lock(resource: &str, client: &str) -> Request {
        Request::Lock(locks::lock_request(resource, client))
    }

    /// Submits `request` on this thread, which leads its batch, with a
    /// function for its result that panics; then makes `next` on another
    /// thread and returns whether it was led and answered.
    fn next_call_after_a_panic(
        lockd: &Arc<Lockd>,
        request: Request,
        next: impl FnOnce(&Lockd) -> bool + Send + 'static,
    ) -> bool {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lockd.submit_then(request, Terms::once(), |_| {
                panic!("a function given a result")
            });
        }));
        assert!(panicked.is_err(), "this thread led and called it");
        let (done, finished) = mpsc::channel();
        let lockd = lockd.clone();
        std::thread::spawn(move || done.send(next(&lockd)));
        finished.recv_timeout(Duration::from_secs(30)) == Ok(true)
    }

    /// A function given a result that panics while its leader keeps the
    /// lead does not leave the lead taken: the next call is led.
    #[test]
    fn a_panicking_function_given_a_result_leaves_the_lead_to_the_next_call() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Arc::new(Lockd::open(tmp.path()).unwrap());
        let led =
            next_call_after_a_panic(&lockd, lock("r", "c"), |lockd| lockd.lock("s", "c").is_ok());
        assert!(led, "the next call was not led");
        assert_eq!(lockd.holder("r").unwrap().as_deref(), Some("c"));
    }

    /// The same for a call refused before its batch runs (it would not
    /// wait behind those waiting for its lock).
    #[test]
    fn a_panicking_function_given_a_refusal_leaves_the_lead_to_the_next_call() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Arc::new(Lockd::open(tmp.path()).unwrap());
        lockd.lock("r", "a").unwrap();
        let (waited, wait_ended) = mpsc::channel();
        let waiting = Terms {
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            request_id: None,
        };
        lockd.submit_then(lock("r", "b"), waiting, move |result| {
            let _ = waited.send(result.is_ok());
        });
        let led = next_call_after_a_panic(&lockd, lock("r", "c"), |lockd| {
            lockd.unlock("r", "a").is_ok()
        });
        assert!(led, "the next call was not led");
        assert_eq!(wait_ended.recv_timeout(Duration::from_secs(30)), Ok(true));
    }
}
