//! Cluster mode: lock requests against locks kept in etcd. For each
//! request the host reads the resource's record, the component's rules
//! decide (the WIT `decide`), and the effect is written in one transaction
//! guarded by the revisions read (`call.rs`); concurrent writes share one
//! transaction (`batch.rs`).
//!
//! Keys, under the prefix: `lock/<resource>` (the resource's record: its
//! lock and lock-delay, `record.rs`) and `token-base` (a number added to
//! every token, set by `lockd import` so that tokens stay above those of a
//! lock directory; absent: 0). Tokens are the base plus the etcd revision
//! of the write that granted the lock: strictly increasing across every
//! host, with no counter key to contend on. Every write is guarded by the
//! base's revision too, so a host never grants a token from an old base.

mod batch;
mod call;
pub mod import;
mod lines;
mod record;
mod seen;
mod served;
mod store;
mod wait;

use crate::component::{GuestError, Instance, LockInfo, Runtime};
use crate::error::LockError;
use crate::etcd::{Etcd, EtcdError};
use crate::metrics::Sample;
use batch::Batcher;
pub use import::Imported;
use lines::Lines;
use record::Record;
use seen::Cache;
pub use served::Served;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
pub use store::{Store, Watching};

/// Why a request got no reply.
#[derive(Debug)]
pub enum ClusterError {
    /// The rules refused it.
    Lock(GuestError),
    /// etcd could not be asked, or did not act: nothing happened.
    NotApplied(String),
    /// It may have happened: etcd did not say, and reading again did not
    /// find its write.
    Unknown(String),
    /// A wait for the lock ended without it (its time ran out, its caller
    /// left, the host stops).
    Ended(LockError),
}

/// How long one request may take, etcd's retries between members
/// included, before it gets fault 7.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Keys read per request by `list`.
const LIST_PAGE: usize = 1000;

/// Locks kept in one etcd cluster, under one prefix.
pub struct Cluster {
    etcd: Arc<dyn Store>,
    prefix: Vec<u8>,
    lock_delay_ms: u64,
    /// Added to every lease before a lock whose lease ran out may go to
    /// another client: the most the hosts' clocks may differ.
    max_clock_skew_ms: u64,
    /// The rules (no directory).
    rules: Mutex<Instance>,
    cache: Cache,
    batch: Batcher,
    /// This host's waiters' session and watch.
    lines: Arc<Lines>,
    /// Makes request ids unique: this host's, then a counter.
    host: String,
    requests: AtomicU64,
    /// Guarded writes that lost to another's, and writes whose outcome
    /// etcd left open (`/metrics`).
    conflicts: AtomicU64,
    unknown: AtomicU64,
    /// This host's callers in a line now: their waiter key is written
    /// (`lockd_waiters`).
    in_line: AtomicUsize,
}

/// This host's id in request ids: its process id and 64 random bits, so
/// two hosts never share one (containers all run as process 1, and may
/// start in the same millisecond).
fn host_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut random = std::collections::hash_map::RandomState::new().build_hasher();
    random.write_u64(now_ms());
    format!("{}-{:016x}", std::process::id(), random.finish())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    pub fn new(
        etcd: Etcd,
        prefix: &str,
        runtime: &Runtime,
        lock_delay: Duration,
        max_clock_skew: Duration,
    ) -> anyhow::Result<Self> {
        Self::with_store(Arc::new(etcd), prefix, runtime, lock_delay, max_clock_skew)
    }

    /// The same on any [`Store`]: tests put a fault injector in front of
    /// etcd here.
    pub fn with_store(
        etcd: Arc<dyn Store>,
        prefix: &str,
        runtime: &Runtime,
        lock_delay: Duration,
        max_clock_skew: Duration,
    ) -> anyhow::Result<Self> {
        let mut lines = prefix.as_bytes().to_vec();
        lines.extend_from_slice(b"wait/");
        Ok(Self {
            etcd,
            prefix: prefix.as_bytes().to_vec(),
            lines: Arc::new(Lines::new(lines)),
            lock_delay_ms: lock_delay.as_millis() as u64,
            max_clock_skew_ms: max_clock_skew.as_millis() as u64,
            rules: Mutex::new(runtime.instantiate_rules_only()?),
            cache: Cache::default(),
            batch: Batcher::default(),
            host: host_id(),
            requests: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            in_line: AtomicUsize::new(0),
        })
    }

    /// The running locks whose resource starts with `prefix`, by resource:
    /// read in pages of [`LIST_PAGE`] keys, all at the revision of the
    /// first (read linearizably), so the list is one moment's.
    /// Of those, the first `limit` (all, if none) whose resource sorts
    /// after `after` (if given).
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u32>,
        deadline: Instant,
    ) -> Result<Vec<LockInfo>, ClusterError> {
        let mut from = self.key("lock/", prefix);
        let end = crate::etcd::wire::prefix_end(&from);
        if let Some(after) = after {
            let mut next = self.key("lock/", after);
            next.push(0);
            from = from.max(next);
        }
        let skip = self.key("lock/", "").len();
        let now = now_ms();
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let mut locks = Vec::new();
        let mut revision = 0;
        while locks.len() < limit && from < end {
            let want = LIST_PAGE.min(limit - locks.len());
            let (kvs, read, more) = self
                .etcd
                .range_page(&from, &end, revision, want, deadline)
                .map_err(not_applied)?;
            revision = read;
            self.take_locks(&kvs, skip, now, &mut locks)?;
            match kvs.last() {
                Some(last) if more => {
                    // The next page: the keys after the last one.
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(locks)
    }

    /// The running locks of the records `kvs` (keys `skip` bytes longer
    /// than their resource's name).
    fn take_locks(
        &self,
        kvs: &[crate::etcd::KeyValue],
        skip: usize,
        now: u64,
        locks: &mut Vec<LockInfo>,
    ) -> Result<(), ClusterError> {
        for kv in kvs {
            let resource = String::from_utf8_lossy(&kv.key[skip..]).into_owned();
            let record = Record::decode(&resource, kv).map_err(|e| {
                ClusterError::NotApplied(format!("a record lockd cannot read: {e}"))
            })?;
            if let Some(lock) = record.lock
                && lock.expires_ms.is_none_or(|at| at > now)
            {
                locks.push(lock);
            }
        }
        Ok(())
    }

    /// Ends this host's session (its waiters leave every line) and stops
    /// watching the lines.
    pub fn stop(&self) {
        self.lines.stop(&*self.etcd);
    }

    /// Whether the cluster can serve: a member answers and follows a
    /// leader.
    pub fn health(&self, deadline: Instant) -> Result<(), String> {
        match self.etcd.status(deadline) {
            Ok(status) if status.leader != 0 => Ok(()),
            Ok(_) => Err("etcd has no leader".into()),
            Err(e) => Err(format!("etcd does not answer: {e}")),
        }
    }

    /// This host's callers in a line now (their waiter keys written).
    pub fn in_line(&self) -> usize {
        self.in_line.load(Ordering::Relaxed)
    }

    /// What this host counted of its work with etcd.
    pub fn samples(&self) -> Vec<Sample> {
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (tries, failed_tries) = self.etcd.tries();
        let counter = |name, help, value| Sample {
            name,
            help,
            kind: "counter",
            value,
        };
        vec![
            counter(
                "lockd_etcd_requests_total",
                "Requests sent to an etcd member, retries on another member included.",
                tries,
            ),
            counter(
                "lockd_etcd_request_failures_total",
                "Requests to an etcd member that got no answer in time, or an error.",
                failed_tries,
            ),
            counter(
                "lockd_etcd_transactions_total",
                "Write transactions sent (one per batch of concurrent writes).",
                count(&self.batch.transactions),
            ),
            counter(
                "lockd_etcd_batched_writes_total",
                "Guarded writes sent; divided by lockd_etcd_transactions_total, the mean batch size.",
                count(&self.batch.writes),
            ),
            counter(
                "lockd_etcd_conflicts_total",
                "Guarded writes that lost to another's and were decided again.",
                count(&self.conflicts),
            ),
            counter(
                "lockd_etcd_unknown_outcomes_total",
                "Writes whose outcome etcd left open, settled by reading again or answered with fault 7.",
                count(&self.unknown),
            ),
        ]
    }

    fn key(&self, kind: &str, resource: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(resource.as_bytes());
        key
    }
}

fn not_applied(e: EtcdError) -> ClusterError {
    match e {
        EtcdError::NotApplied(why) | EtcdError::Unknown(why) => ClusterError::NotApplied(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_started_in_the_same_millisecond_have_ids_of_their_own() {
        let ids: std::collections::HashSet<String> = (0..100).map(|_| host_id()).collect();
        assert_eq!(ids.len(), 100);
    }
}
