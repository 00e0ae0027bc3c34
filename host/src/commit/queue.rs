//! The committer's queue: requests waiting for the next batch,
//! clients waiting in line for a lock, and results waiting for their caller.

use crate::component::{Reply, Request};
use crate::error::LockError;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Instant;

use super::Then;

/// Requests waiting for the next batch or for their lock, and results
/// waiting for their caller.
#[derive(Default)]
pub(super) struct Queue {
    next_ticket: u64,
    pub(super) pending: VecDeque<Pending>,
    /// Whether some thread is running a batch right now.
    pub(super) leader: bool,
    /// Per resource, the clients waiting to take it, oldest first.
    pub(super) lines: HashMap<String, Line>,
    /// How many clients wait, in all lines.
    pub(super) waiting: usize,
    /// Set when the daemon stops: nobody may start waiting.
    pub(super) refuse_waits: bool,
    /// When to sweep expired leases and lock-delays next.
    pub(super) sweep_at: Option<Instant>,
    pub(super) stopping: bool,
}

/// The waiters of one resource.
pub(super) struct Line {
    pub(super) waiters: VecDeque<Pending>,
    /// Why the oldest could not take the lock last time: what a newcomer
    /// that does not wait is told.
    pub(super) refusal: LockError,
}

/// Whether the caller of a request is still there to take its result
/// (a client may hang up while it waits for a lock).
pub type Presence = Arc<dyn Fn() -> bool + Send + Sync>;

/// A queued request and who takes its result.
pub(super) struct Pending {
    pub(super) ticket: u64,
    pub(super) request: Request,
    pub(super) taker: Taker,
    /// Until when the caller waits for the lock (`acquire` with `wait`).
    pub(super) deadline: Option<Instant>,
    /// Whether it has waited in its resource's line (and so is served
    /// before newcomers).
    pub(super) queued: bool,
    /// Asked before a waiter is given its lock.
    pub(super) present: Option<Presence>,
}

impl Pending {
    /// Whether its caller is still there (or cannot be asked).
    pub(super) fn present(&self) -> bool {
        self.present.as_ref().is_none_or(|present| present())
    }
}

/// Where a thread waiting in [`Committer::submit`] finds its result:
/// filled under the queue's lock, the thread woken after it is let go,
/// so that it takes its result without waiting for the lock.
pub(super) struct Slot {
    result: Mutex<Option<Result<Reply, LockError>>>,
    thread: Thread,
}

impl Slot {
    /// A slot for the current thread.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            result: Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    /// The result, once it is there.
    pub(super) fn take(&self) -> Option<Result<Reply, LockError>> {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The thread to wake when it has its turn to lead a batch.
    pub(super) fn thread(&self) -> &Thread {
        &self.thread
    }
}

/// Who takes a result.
pub(super) enum Taker {
    /// A thread waiting in [`Committer::submit`], woken by name.
    Wake(Arc<Slot>),
    /// A function, called by the thread that has the result.
    Call(Then),
}

/// Results to hand out once the queue is unlocked: threads to wake (each
/// finds its result in its slot) and functions to call.
#[derive(Default)]
pub(super) struct Deliveries {
    pub(super) wakes: Vec<Thread>,
    pub(super) calls: Vec<(Then, Result<Reply, LockError>)>,
}

impl Deliveries {
    pub(super) fn is_empty(&self) -> bool {
        self.wakes.is_empty() && self.calls.is_empty()
    }

    /// Wakes the threads first (they run their answers on their own),
    /// then calls the functions.
    pub(super) fn run(self) {
        for thread in self.wakes {
            thread.unpark();
        }
        for (then, result) in self.calls {
            then(result);
        }
    }
}

impl Queue {
    pub(super) fn push(
        &mut self,
        request: Request,
        taker: Taker,
        deadline: Option<Instant>,
        present: Option<Presence>,
    ) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.push_back(Pending {
            ticket,
            request,
            taker,
            deadline,
            queued: false,
            present,
        });
        ticket
    }

    /// Hands `result` to whoever waits for `pending`: into a thread's
    /// slot at once (the thread woken once the queue is unlocked), to a
    /// function once the queue is unlocked.
    pub(super) fn deliver(
        &mut self,
        pending: Pending,
        result: Result<Reply, LockError>,
        out: &mut Deliveries,
    ) {
        match pending.taker {
            Taker::Wake(slot) => {
                *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                if slot.thread.id() != std::thread::current().id() {
                    out.wakes.push(slot.thread.clone());
                }
            }
            Taker::Call(then) => out.calls.push((then, result)),
        }
    }

    /// Ends the waits for which `ends` holds: takes them out of their
    /// lines and hands each `why`.
    pub(super) fn end_waits(
        &mut self,
        ends: impl Fn(&Pending) -> bool,
        why: &LockError,
        out: &mut Deliveries,
    ) {
        let mut ended = Vec::new();
        self.lines.retain(|_, line| {
            let (gone, stay): (VecDeque<Pending>, VecDeque<Pending>) =
                std::mem::take(&mut line.waiters)
                    .into_iter()
                    .partition(&ends);
            line.waiters = stay;
            ended.extend(gone);
            !line.waiters.is_empty()
        });
        self.waiting -= ended.len();
        for pending in ended {
            self.deliver(pending, Err(why.clone()), out);
        }
    }

    /// The oldest thread waiting in [`Committer::submit`](super::Committer::submit)
    /// whose request is still queued: the one to lead the next batch.
    pub(super) fn waiting_leader(&self) -> Option<Thread> {
        self.pending.iter().find_map(|p| match &p.taker {
            Taker::Wake(slot) => Some(slot.thread().clone()),
            Taker::Call(_) => None,
        })
    }

    /// Makes the next sweep happen no later than `at`; returns whether
    /// that is sooner than planned.
    pub(super) fn sweep_by(&mut self, at: Instant) -> bool {
        let sooner = self.sweep_at.is_none_or(|planned| at < planned);
        if sooner {
            self.sweep_at = Some(at);
        }
        sooner
    }
}
