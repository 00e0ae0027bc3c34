//! Where [`Lockd`](crate::Lockd) keeps its locks: a lock directory (the
//! committer and the component's files) or an etcd cluster. Both take
//! the component's requests and give its replies.

use crate::commit::{Presence, Then};
use crate::component::{Reply, Request};
use crate::error::LockError;
use crate::metrics::Sample;
use std::time::Instant;

/// How to run a request, beside the request itself.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    /// Until when to wait for the lock to be free; `None` tries once.
    pub deadline: Option<Instant>,
    /// The client's id of this request (`lockd.acquire`'s `request_id`):
    /// in cluster mode a retry with the same id, on any host, is answered
    /// from the record of the try that took the lock instead of being
    /// refused. Directory mode answers every call for sure, and ignores
    /// it.
    pub request_id: Option<String>,
}

impl Terms {
    /// Try once.
    pub fn once() -> Self {
        Self::default()
    }
}

pub trait Backend: Send + Sync {
    /// Runs `request` on `terms` (waiting until their deadline for its
    /// lock to be free, if given), and returns its reply.
    fn submit(&self, request: Request, terms: Terms) -> Result<Reply, LockError>;

    /// The same; `then` gets the reply from whichever thread has it. A
    /// waiter whose caller is no longer `present` leaves the line.
    fn submit_then(&self, request: Request, terms: Terms, present: Option<Presence>, then: Then);

    /// Clients waiting for a lock now.
    fn waiters(&self) -> usize;

    /// Ends every wait (fault 6) and refuses new ones.
    fn stop_waiting(&self);

    /// Stops for good: the last call before the backend is dropped.
    fn stop(&self);

    /// Tries again what failed, and says what is wrong, for an operator
    /// (`/healthz`); empty when all is well.
    fn problems(&self) -> Vec<String>;

    /// Bytes of changes in the lock directory's journal (`/metrics`).
    fn journal_bytes(&self) -> u64 {
        0
    }

    /// What the store counts of itself, for `/metrics`.
    fn samples(&self) -> Vec<Sample> {
        Vec::new()
    }

    /// Hands what was written to the disk, where there is one.
    fn flush(&self) -> std::io::Result<()>;
}
