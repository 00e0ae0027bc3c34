//! What cluster mode asks of etcd, as one seam: the lock protocol above it
//! (records, lines, sessions) speaks only these calls, and the client that
//! reaches etcd ([`Etcd`]) is one implementation. Tests put a fault
//! injector here, between the protocol and a real etcd.
//!
//! Every call says whether it surely did not happen
//! ([`EtcdError::NotApplied`]) or may have ([`EtcdError::Unknown`]); the
//! protocol's answers to its callers rest on that distinction.

use crate::etcd::{Changes, Compare, Etcd, EtcdError, KeyValue, Op, Status, TxnResult, Watch};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// etcd as cluster mode uses it.
pub trait Store: Send + Sync {
    /// Runs `success` if every comparison holds, `failure` otherwise, as
    /// one atomic step.
    fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
        deadline: Instant,
    ) -> Result<TxnResult, EtcdError>;

    /// The keys from `key` up to `range_end` (empty: `key` alone), read
    /// linearizably, and the store's revision.
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError>;

    /// At most `limit` keys from `key` up to `range_end` as they were at
    /// `revision` (0: now); the keys, the revision read, whether more
    /// follow.
    fn range_page(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64, bool), EtcdError>;

    /// A new lease of `ttl_s` seconds: its id and granted ttl.
    fn lease_grant(&self, ttl_s: i64, deadline: Instant) -> Result<(i64, i64), EtcdError>;

    /// Renews lease `id`: its ttl, 0 if it no longer exists.
    fn lease_keep_alive(&self, id: i64, deadline: Instant) -> Result<i64, EtcdError>;

    /// Ends lease `id`, deleting the keys attached to it.
    fn lease_revoke(&self, id: i64, deadline: Instant) -> Result<(), EtcdError>;

    /// Watches the keys from `key` up to `range_end`, from
    /// `start_revision` (0: from now).
    fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Watching>, EtcdError>;

    /// A member's status.
    fn status(&self, deadline: Instant) -> Result<Status, EtcdError>;

    /// Requests sent to a member so far, and those of them that failed
    /// (`/metrics`).
    fn tries(&self) -> (u64, u64);
}

/// A watch: the changes to its range, as they come.
pub trait Watching: Send {
    /// The next changes, or `None` if none came before `until`. Fails when
    /// the watch ends; watch again then.
    fn next(&mut self, until: Instant) -> Result<Option<Changes>, String>;
}

impl Watching for Watch {
    fn next(&mut self, until: Instant) -> Result<Option<Changes>, String> {
        Watch::next(self, until)
    }
}

impl Store for Etcd {
    fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
        deadline: Instant,
    ) -> Result<TxnResult, EtcdError> {
        Etcd::txn(self, compares, success, failure, deadline)
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        Etcd::range(self, key, range_end, deadline)
    }

    fn range_page(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64, bool), EtcdError> {
        Etcd::range_page(self, key, range_end, revision, limit, deadline)
    }

    fn lease_grant(&self, ttl_s: i64, deadline: Instant) -> Result<(i64, i64), EtcdError> {
        Etcd::lease_grant(self, ttl_s, deadline)
    }

    fn lease_keep_alive(&self, id: i64, deadline: Instant) -> Result<i64, EtcdError> {
        Etcd::lease_keep_alive(self, id, deadline)
    }

    fn lease_revoke(&self, id: i64, deadline: Instant) -> Result<(), EtcdError> {
        Etcd::lease_revoke(self, id, deadline)
    }

    fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Watching>, EtcdError> {
        let watch = Etcd::watch(self, key, range_end, start_revision, deadline)?;
        Ok(Box::new(watch))
    }

    fn status(&self, deadline: Instant) -> Result<Status, EtcdError> {
        Etcd::status(self, deadline)
    }

    fn tries(&self) -> (u64, u64) {
        (
            self.tries.load(Ordering::Relaxed),
            self.failed_tries.load(Ordering::Relaxed),
        )
    }
}
