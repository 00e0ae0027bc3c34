//! Cluster mode's core: one lock request against locks kept in etcd. The
//! host reads the resource's records, the component's rules decide (the
//! WIT `decide`), and the effect is written in one transaction guarded by
//! the revisions read; a conflict decides again on the records the
//! transaction's failure branch returns, with no extra round trip.
//!
//! Keys, under the prefix: `lock/<resource>` (the lock) and
//! `delay/<resource>` (its lock-delay). Tokens are etcd revisions: strictly
//! increasing across every host, with no counter key to contend on.

mod record;
mod served;

use crate::component::{
    Effect, GuestError, HeldLock, Instance, LockInfo, Reply, Request, ResourceView, Runtime,
};
use crate::etcd::{Compare, Etcd, EtcdError, KeyValue, Op, OpResult, Target};
use crate::requests;
use record::{DelayRecord, LockRecord};
pub use served::Served;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many times a request is decided again after its guarded write lost
/// to another's before it gives up.
const MAX_CONFLICTS: usize = 64;

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
}

/// Locks kept in one etcd cluster, under one prefix.
pub struct Cluster {
    etcd: Etcd,
    prefix: Vec<u8>,
    lock_delay_ms: u64,
    /// Added to every lease before a lock whose lease ran out may go to
    /// another client: the most the hosts' clocks may differ.
    max_clock_skew_ms: u64,
    /// The rules (no directory).
    rules: Mutex<Instance>,
    cache: Cache,
    /// Makes request ids unique: this host's, then a counter.
    host: String,
    requests: AtomicU64,
}

/// A write whose outcome is to be settled.
struct Written<'a> {
    /// The request id its records carry.
    id: &'a str,
    /// Whether it granted a fresh lock (whose token is its revision).
    fresh: bool,
    /// For a release: the token of the lock it released (`None` inside if
    /// none was recorded).
    released: Option<Option<u64>>,
}

/// One resource's records as read, and the revisions that guard a write.
#[derive(Default, Clone)]
struct Records {
    lock: Option<LockRecord>,
    lock_revision: i64,
    delay: Option<DelayRecord>,
    delay_revision: i64,
}

impl Records {
    /// The records once `effect` was written at `revision`.
    fn after(&self, effect: &Effect, revision: i64, now: u64, id: &str) -> Self {
        let mut after = self.clone();
        let lock_record = |lock: &LockInfo| LockRecord {
            lock: lock.clone(),
            written_ms: now,
            request: id.to_owned(),
        };
        match effect {
            Effect::None => {}
            Effect::Hold(HeldLock { lock, fresh }) => {
                let mut record = lock_record(lock);
                if *fresh {
                    record.lock.token = revision as u64;
                    after.delay = None;
                    after.delay_revision = 0;
                }
                after.lock = Some(record);
                after.lock_revision = revision;
            }
            Effect::Release => {
                after.lock = None;
                after.lock_revision = 0;
            }
            Effect::BreakLock(delay) => {
                after.lock = None;
                after.lock_revision = 0;
                after.delay = Some(DelayRecord {
                    delay: delay.clone(),
                    written_ms: now,
                    request: id.to_owned(),
                });
                after.delay_revision = revision;
            }
        }
        after
    }
}

/// The records this host last saw, per resource: a guess to write against,
/// never an answer (a guarded write checks it).
#[derive(Default)]
struct Cache {
    seen: Mutex<HashMap<String, Records>>,
}

/// Resources remembered at most; past it the cache starts afresh.
const CACHE_LIMIT: usize = 100_000;

impl Cache {
    fn get(&self, resource: &str) -> Records {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(resource).cloned().unwrap_or_default()
    }

    fn put(&self, resource: &str, records: Records) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= CACHE_LIMIT {
            seen.clear();
        }
        seen.insert(resource.to_owned(), records);
    }
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
        Ok(Self {
            etcd,
            prefix: prefix.as_bytes().to_vec(),
            lock_delay_ms: lock_delay.as_millis() as u64,
            max_clock_skew_ms: max_clock_skew.as_millis() as u64,
            rules: Mutex::new(runtime.instantiate_rules_only()?),
            cache: Cache::default(),
            host: format!("{}-{}", std::process::id(), now_ms()),
            requests: AtomicU64::new(0),
        })
    }

    /// The running locks whose resource starts with `prefix`, by resource,
    /// read linearizably at one revision.
    pub fn list(&self, prefix: &str, deadline: Instant) -> Result<Vec<LockInfo>, ClusterError> {
        let start = self.key("lock/", prefix);
        let end = crate::etcd::wire::prefix_end(&start);
        let (kvs, _) = self
            .etcd
            .range(&start, &end, deadline)
            .map_err(not_applied)?;
        let skip = self.key("lock/", "").len();
        let now = now_ms();
        let mut locks = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let resource = String::from_utf8_lossy(&kv.key[skip..]).into_owned();
            let record = LockRecord::decode(&resource, kv).map_err(|e| {
                ClusterError::NotApplied(format!("a record lockd cannot read: {e}"))
            })?;
            if record.lock.expires_ms.is_none_or(|at| at > now) {
                locks.push(record.lock);
            }
        }
        Ok(locks)
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

    fn key(&self, kind: &str, resource: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(resource.as_bytes());
        key
    }

    /// Runs `request` (one about a single resource: not `list` or `sweep`)
    /// before `deadline`.
    pub fn call(&self, request: &Request, deadline: Instant) -> Result<Reply, ClusterError> {
        let resource = requests::resource(request).ok_or_else(|| {
            ClusterError::Lock(GuestError::InvalidName(
                "list and sweep are not single-resource requests".into(),
            ))
        })?;
        let lock_key = self.key("lock/", resource);
        let delay_key = self.key("delay/", resource);
        let id = format!(
            "{}-{}",
            self.host,
            self.requests.fetch_add(1, Ordering::Relaxed)
        );
        let reads = [
            Op::Range {
                key: lock_key.clone(),
                range_end: Vec::new(),
            },
            Op::Range {
                key: delay_key.clone(),
                range_end: Vec::new(),
            },
        ];
        let read = || -> Result<Records, ClusterError> {
            let read = self
                .etcd
                .txn(&[], &reads, &[], deadline)
                .map_err(not_applied)?;
            self.records(resource, &read.results)
        };
        // A change is first decided on the records this host last saw
        // (none known: nothing recorded) and written guarded by them, one
        // round trip when they are still current. Only a write that
        // succeeds confirms them: a decision on them that writes nothing,
        // or refuses, is made again on records read now.
        let mut optimistic = requests::changes(request);
        let mut records = match optimistic {
            true => self.cache.get(resource),
            false => read()?,
        };
        for _ in 0..MAX_CONFLICTS {
            // Time for one resource never runs backwards.
            let written = [
                records.lock.as_ref().map_or(0, |r| r.written_ms),
                records.delay.as_ref().map_or(0, |r| r.written_ms),
            ];
            let now = written.into_iter().fold(now_ms(), u64::max);
            let decision = match self.decide(request, &records, now) {
                Err(ClusterError::Lock(_)) if optimistic => {
                    optimistic = false;
                    records = read()?;
                    continue;
                }
                decided => decided?,
            };
            let mut reply = decision.reply;
            let (ops, fresh) = match &decision.effect {
                Effect::None if optimistic => {
                    optimistic = false;
                    records = read()?;
                    continue;
                }
                Effect::None => return Ok(reply),
                Effect::Hold(HeldLock { lock, fresh }) => {
                    let mut ops = vec![Op::Put {
                        key: lock_key.clone(),
                        value: LockRecord::encode(lock, *fresh, now, &id),
                        lease: 0,
                    }];
                    if *fresh && records.delay.is_some() {
                        ops.push(Op::Delete {
                            key: delay_key.clone(),
                            range_end: Vec::new(),
                        });
                    }
                    (ops, *fresh)
                }
                Effect::Release => (
                    vec![Op::Delete {
                        key: lock_key.clone(),
                        range_end: Vec::new(),
                    }],
                    false,
                ),
                Effect::BreakLock(delay) => (
                    vec![
                        Op::Delete {
                            key: lock_key.clone(),
                            range_end: Vec::new(),
                        },
                        Op::Put {
                            key: delay_key.clone(),
                            value: DelayRecord::encode(delay, now, &id),
                            lease: 0,
                        },
                    ],
                    false,
                ),
            };
            let guard = [
                Compare {
                    key: lock_key.clone(),
                    target: Target::Mod(records.lock_revision),
                },
                Compare {
                    key: delay_key.clone(),
                    target: Target::Mod(records.delay_revision),
                },
            ];
            match self.etcd.txn(&guard, &ops, &reads, deadline) {
                Ok(written) if written.succeeded => {
                    if fresh && let Reply::Lock(lock) = &mut reply {
                        lock.token = written.revision as u64;
                    }
                    let after = records.after(&decision.effect, written.revision, now, &id);
                    self.cache.put(resource, after);
                    return Ok(reply);
                }
                // Another write came first (or the records were not this
                // host's latest): decide again on what is there.
                Ok(lost) => {
                    optimistic = false;
                    records = self.records(resource, &lost.results)?;
                    self.cache.put(resource, records.clone());
                }
                Err(EtcdError::NotApplied(why)) => return Err(ClusterError::NotApplied(why)),
                Err(EtcdError::Unknown(why)) => {
                    let written = Written {
                        id: &id,
                        fresh,
                        // A release leaves no record: it happened if the
                        // lock it released is gone.
                        released: matches!(decision.effect, Effect::Release)
                            .then(|| records.lock.as_ref().map(|r| r.lock.token)),
                    };
                    return self.settle(resource, &reads, &written, reply, &why, deadline);
                }
            }
        }
        Err(ClusterError::NotApplied(format!(
            "{MAX_CONFLICTS} conflicting writes in a row on {resource:?}"
        )))
    }

    /// After a write whose outcome etcd left unknown: reads again, and
    /// answers as written if the write is there (a record carries its id,
    /// or the lock it released is gone).
    fn settle(
        &self,
        resource: &str,
        reads: &[Op],
        written: &Written,
        mut reply: Reply,
        why: &str,
        deadline: Instant,
    ) -> Result<Reply, ClusterError> {
        let unknown = || ClusterError::Unknown(format!("outcome unknown: {why}"));
        let read = self
            .etcd
            .txn(&[], reads, &[], deadline)
            .map_err(|_| unknown())?;
        let records = self.records(resource, &read.results)?;
        let recorded = records
            .lock
            .as_ref()
            .is_some_and(|r| r.request == written.id)
            || records
                .delay
                .as_ref()
                .is_some_and(|r| r.request == written.id);
        let released = written
            .released
            .is_some_and(|token| records.lock.as_ref().map(|r| r.lock.token) != token);
        if !recorded && !released {
            return Err(unknown());
        }
        if written.fresh
            && let (Reply::Lock(lock), Some(record)) = (&mut reply, &records.lock)
        {
            lock.token = record.lock.token;
        }
        Ok(reply)
    }

    fn records(&self, resource: &str, results: &[OpResult]) -> Result<Records, ClusterError> {
        let bad = |e: String| ClusterError::NotApplied(format!("a record lockd cannot read: {e}"));
        let one = |i: usize| -> Option<&KeyValue> {
            match results.get(i) {
                Some(OpResult::Range(kvs)) => kvs.first(),
                _ => None,
            }
        };
        let mut records = Records::default();
        if let Some(kv) = one(0) {
            records.lock = Some(LockRecord::decode(resource, kv).map_err(bad)?);
            records.lock_revision = kv.mod_revision;
        }
        if let Some(kv) = one(1) {
            records.delay = Some(DelayRecord::decode(kv).map_err(bad)?);
            records.delay_revision = kv.mod_revision;
        }
        Ok(records)
    }

    /// The rules' decision on `records` at `now`, the lease of a lock
    /// lengthened by the clock-skew margin for everyone but its holder's
    /// renewals and releases (which the rules judge by the lease itself).
    fn decide(
        &self,
        request: &Request,
        records: &Records,
        now: u64,
    ) -> Result<crate::component::Decision, ClusterError> {
        let mut held: Option<LockInfo> = records.lock.as_ref().map(|r| r.lock.clone());
        if let Some(lock) = &mut held
            && requests::taken(request).is_some()
        {
            lock.expires_ms = lock
                .expires_ms
                .map(|at| at.saturating_add(self.max_clock_skew_ms));
        }
        let view = ResourceView {
            held,
            delay: records.delay.as_ref().map(|r| r.delay.clone()),
        };
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        match rules.decide(request, &view, now, self.lock_delay_ms) {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(refused)) => Err(ClusterError::Lock(refused)),
            Err(trap) => Err(ClusterError::NotApplied(format!(
                "the lock rules trapped: {trap:#}"
            ))),
        }
    }
}

fn not_applied(e: EtcdError) -> ClusterError {
    match e {
        EtcdError::NotApplied(why) | EtcdError::Unknown(why) => ClusterError::NotApplied(why),
    }
}
