//! One request about one resource, against etcd: read (or take the record
//! this host last saw), decide, write guarded by the revisions decided on;
//! on a conflict decide again on the record the write's failure branch
//! returns. A write whose outcome etcd leaves open is settled by reading
//! again: its record carries the request's id.

use super::batch::Write;
use super::seen::Seen;
use super::{Cluster, ClusterError, not_applied, now_ms};
use crate::component::{Decision, Effect, GuestError, LockInfo, Reply, Request, ResourceView};
use crate::etcd::{Compare, EtcdError, Op, Target};
use crate::requests;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How many times a request is decided again after its guarded write lost
/// to another's before it gives up.
const MAX_CONFLICTS: usize = 64;

/// A write whose outcome is to be settled.
struct Unsettled<'a> {
    /// The request id its record carries.
    id: &'a str,
    /// Whether it granted a fresh lock (whose token is its revision).
    fresh: bool,
    /// For a release: the token of the lock it released (`None` inside if
    /// none was recorded).
    released: Option<Option<u64>>,
}

fn range(key: &[u8]) -> Op {
    Op::Range {
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The lock a take with the caller's `request_id` already took, if `seen`
/// records it (as the last change of the resource, by `id`, for the same
/// client): its retry is answered with it.
fn retried(request: &Request, request_id: Option<&str>, seen: &Seen, id: &str) -> Option<LockInfo> {
    request_id?;
    requests::taken(request)?;
    let lock = seen.record.lock.as_ref()?;
    (seen.record.request == id && lock.client == requests::client(request)).then(|| lock.clone())
}

impl Cluster {
    /// Runs `request` (one about a single resource: not `list` or `sweep`)
    /// before `deadline`. `request_id`, the caller's id of the request,
    /// makes a retry safe: a take whose lock is recorded as taken by the
    /// same id (and client) is answered with that lock.
    pub fn call(
        &self,
        request: &Request,
        request_id: Option<&str>,
        deadline: Instant,
    ) -> Result<Reply, ClusterError> {
        let resource = requests::resource(request).ok_or_else(|| {
            ClusterError::Lock(GuestError::InvalidName(
                "list and sweep are not single-resource requests".into(),
            ))
        })?;
        let key = self.key("lock/", resource);
        let base_key = self.key("token-base", "");
        // A host's own ids are `<pid>-<start>-<n>`; a caller's are marked
        // so that no caller can name one of a host's.
        let id = match request_id {
            Some(id) => format!("client:{id}"),
            None => format!(
                "{}-{}",
                self.host,
                self.requests.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let reads = [range(&key), range(&base_key)];
        let read = || -> Result<Seen, ClusterError> {
            let read = self
                .etcd
                .txn(&[], &reads, &[], deadline)
                .map_err(not_applied)?;
            Seen::read(resource, &read.results).map_err(ClusterError::NotApplied)
        };
        // A change is first decided on the record this host last saw (none
        // known: nothing recorded) and written guarded by it, one round
        // trip when it is still current. Only a write that succeeds
        // confirms it: a decision on it that writes nothing, or refuses, is
        // made again on the record read now.
        let mut optimistic = requests::changes(request);
        let mut seen = match optimistic {
            true => self.cache.get(resource),
            false => read()?,
        };
        for _ in 0..MAX_CONFLICTS {
            if !optimistic && let Some(lock) = retried(request, request_id, &seen, &id) {
                return Ok(Reply::Lock(lock));
            }
            // Time for one resource never runs backwards.
            let now = now_ms().max(seen.record.written_ms);
            let decision = match self.decide(request, &seen, now) {
                Err(ClusterError::Lock(_)) if optimistic => {
                    optimistic = false;
                    seen = read()?;
                    continue;
                }
                decided => decided?,
            };
            let mut reply = decision.reply;
            let Some(change) = seen.change(&decision.effect, now, &id) else {
                if optimistic {
                    optimistic = false;
                    seen = read()?;
                    continue;
                }
                return Ok(reply);
            };
            let op = match change.record.is_empty() {
                true => Op::Delete {
                    key: key.clone(),
                    range_end: Vec::new(),
                },
                false => Op::Put {
                    key: key.clone(),
                    value: change.record.encode(change.fresh.then_some(seen.base)),
                    lease: 0,
                },
            };
            let write = Write {
                resource: resource.to_owned(),
                guard: vec![
                    Compare {
                        key: key.clone(),
                        target: Target::Mod(seen.revision),
                    },
                    Compare {
                        key: base_key.clone(),
                        target: Target::Mod(seen.base_revision),
                    },
                ],
                ops: vec![op],
                reads: vec![range(&key)],
                deadline,
            };
            match self.batch.write(&self.etcd, write) {
                Ok(written) if written.succeeded => {
                    if change.fresh
                        && let Reply::Lock(lock) = &mut reply
                    {
                        lock.token = seen.base + written.revision as u64;
                    }
                    self.cache
                        .put(resource, seen.after(change, written.revision));
                    return Ok(reply);
                }
                // Another write came first (or the record was not this
                // host's latest): decide again on what is there.
                Ok(lost) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    optimistic = false;
                    let guarded = seen.revision;
                    seen.take_record(resource, &lost.results)
                        .map_err(ClusterError::NotApplied)?;
                    if seen.revision == guarded {
                        // The record held: the token base moved.
                        seen = read()?;
                    }
                    self.cache.put(resource, seen.clone());
                }
                Err(EtcdError::NotApplied(why)) => return Err(ClusterError::NotApplied(why)),
                Err(EtcdError::Unknown(why)) => {
                    self.unknown.fetch_add(1, Ordering::Relaxed);
                    let unsettled = Unsettled {
                        id: &id,
                        fresh: change.fresh,
                        // A release may leave no record: it happened if
                        // the lock it released is gone.
                        released: matches!(decision.effect, Effect::Release)
                            .then(|| seen.record.lock.as_ref().map(|l| l.token)),
                    };
                    return self.settle(resource, &reads, &unsettled, reply, &why, deadline);
                }
            }
        }
        Err(ClusterError::NotApplied(format!(
            "{MAX_CONFLICTS} conflicting writes in a row on {resource:?}"
        )))
    }

    /// After a write whose outcome etcd left unknown: reads again, and
    /// answers as written if the write is there (the record carries its
    /// id, or the lock it released is gone).
    fn settle(
        &self,
        resource: &str,
        reads: &[Op],
        unsettled: &Unsettled,
        mut reply: Reply,
        why: &str,
        deadline: Instant,
    ) -> Result<Reply, ClusterError> {
        let unknown = || ClusterError::Unknown(format!("outcome unknown: {why}"));
        let read = self
            .etcd
            .txn(&[], reads, &[], deadline)
            .map_err(|_| unknown())?;
        let seen = Seen::read(resource, &read.results).map_err(ClusterError::NotApplied)?;
        let held = seen.record.lock.as_ref();
        let recorded = seen.revision != 0 && seen.record.request == unsettled.id;
        let released = unsettled
            .released
            .is_some_and(|token| held.map(|l| l.token) != token);
        if !recorded && !released {
            return Err(unknown());
        }
        if unsettled.fresh
            && let (Reply::Lock(lock), Some(held)) = (&mut reply, held)
        {
            lock.token = held.token;
        }
        Ok(reply)
    }

    /// The rules' decision on `seen` at `now`, the lease of a lock
    /// lengthened by the clock-skew margin for everyone but its holder's
    /// renewals and releases (which the rules judge by the lease itself).
    fn decide(&self, request: &Request, seen: &Seen, now: u64) -> Result<Decision, ClusterError> {
        let mut held = seen.record.lock.clone();
        if let Some(lock) = &mut held
            && requests::taken(request).is_some()
        {
            lock.expires_ms = lock
                .expires_ms
                .map(|at| at.saturating_add(self.max_clock_skew_ms));
        }
        let view = ResourceView {
            held,
            delay: seen.record.delay.clone(),
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
