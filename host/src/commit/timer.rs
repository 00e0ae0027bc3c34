//! The [`Committer`]'s timer (waits that run out, leases and lock-delays
//! that end) and its stopping.

use super::queue::{Deliveries, Pending, Presence, Queue};
use super::{ASK_EVERY, Committer, lock};
use crate::component::Request;
use crate::error::LockError;
use std::collections::HashSet;
use std::sync::MutexGuard;
use std::time::Instant;

impl Committer {
    /// The timer: ends waits whose time is up and sweeps when a lease or
    /// lock-delay ends. Returns when [`stop`](Self::stop) is called.
    pub fn run_timer(&self) {
        let mut queue = lock(&self.queue);
        let mut asked = Instant::now();
        loop {
            if queue.stopping {
                return;
            }
            let now = Instant::now();
            if queue.waiting > 0 && now >= asked + ASK_EVERY {
                queue = self.drop_gone_waiters(queue);
                asked = Instant::now();
                continue;
            }
            let mut out = Deliveries::default();
            let timed_out = |p: &Pending| p.deadline.is_some_and(|d| d <= now);
            queue.end_waits(timed_out, &LockError::WaitTimedOut, &mut out);
            let sweep = queue.sweep_at.is_some_and(|at| at <= now);
            if sweep {
                queue.sweep_at = None;
            }
            if sweep || !out.is_empty() {
                drop(queue);
                out.run();
                if sweep {
                    self.submit_then(Request::Sweep, None, None, Box::new(drop));
                }
                queue = lock(&self.queue);
                continue;
            }
            let first_deadline = queue
                .lines
                .values()
                .flat_map(|line| line.waiters.iter().filter_map(|p| p.deadline))
                .min();
            let ask = (queue.waiting > 0).then_some(asked + ASK_EVERY);
            let wake = [queue.sweep_at, first_deadline, ask]
                .into_iter()
                .flatten()
                .min();
            queue = match wake {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.timer
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.timer.wait(queue).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Ends the waits of callers no longer there: asks each waiter's
    /// caller (without holding the queue) and takes those gone out of
    /// their lines.
    fn drop_gone_waiters<'a>(&'a self, queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        let asks: Vec<(u64, Presence)> = queue
            .lines
            .values()
            .flat_map(|line| &line.waiters)
            .filter_map(|p| Some((p.ticket, p.present.clone()?)))
            .collect();
        drop(queue);
        let gone: HashSet<u64> = asks
            .into_iter()
            .filter(|(_, present)| !present())
            .map(|(ticket, _)| ticket)
            .collect();
        let mut queue = lock(&self.queue);
        if gone.is_empty() {
            return queue;
        }
        let mut out = Deliveries::default();
        let left = |p: &Pending| gone.contains(&p.ticket);
        queue.end_waits(left, &LockError::CallerGone, &mut out);
        drop(queue);
        out.run();
        lock(&self.queue)
    }

    /// Clients waiting for a lock now.
    pub fn waiters(&self) -> usize {
        lock(&self.queue).waiting
    }

    /// Ends every wait for a lock with [`LockError::ShuttingDown`], and
    /// refuses waits from now on.
    pub fn stop_waiting(&self) {
        let mut out = Deliveries::default();
        let mut queue = lock(&self.queue);
        queue.refuse_waits = true;
        queue.end_waits(|_| true, &LockError::ShuttingDown, &mut out);
        drop(queue);
        out.run();
    }

    /// Makes [`run_timer`](Self::run_timer) return.
    pub fn stop(&self) {
        lock(&self.queue).stopping = true;
        self.timer.notify_all();
    }
}
