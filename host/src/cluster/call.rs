//! One request about one resource, against etcd: read (or take what this
//! host last saw), decide, write guarded by the revisions decided on; on a
//! conflict decide again on what the write's failure branch returns. A
//! write whose outcome etcd leaves open is settled by reading again: its
//! record carries the request's id.
//!
//! Waiters (`wait.rs`) come first: a fresh lock for anyone else is refused
//! while someone waits, and a change that frees the lock hands it to the
//! first in line in the same transaction.

use super::batch::Write;
use super::seen::{Change, Head, Seen};
use super::{Cluster, ClusterError, not_applied, now_ms};
use crate::component::{
    AcquireRequest, Decision, Effect, GuestError, HeldLock, LockInfo, Reply, Request, ResourceView,
};
use crate::etcd::{Compare, EtcdError, Op, Target, wire};
use crate::requests;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Ends a line's key prefix (`<prefix>wait/<resource>`): a byte no
/// resource name holds.
pub const LINE_END: u8 = 0;

/// How many times a request is decided again after its guarded write lost
/// to another's before it gives up.
const MAX_CONFLICTS: usize = 64;

/// One resource's keys.
pub struct Keys {
    /// The record.
    pub record: Vec<u8>,
    pub base: Vec<u8>,
    /// The line of waiters: keys from `line` up to `line_end`, which
    /// are `<prefix>wait/<resource>` and a NUL, then the waiter's id. No
    /// resource name holds a NUL, so one line never holds another's
    /// waiters (`a`'s and `a/b`'s, say).
    pub line: Vec<u8>,
    pub line_end: Vec<u8>,
}

impl Keys {
    /// What a read of the resource reads: the record, the token base, the
    /// first in line.
    pub fn reads(&self) -> Vec<Op> {
        vec![range(&self.record), range(&self.base), self.head()]
    }

    /// The guard of a write decided on `seen`: the record and the token
    /// base as seen.
    pub fn guard(&self, seen: &Seen) -> Vec<Compare> {
        vec![
            Compare {
                key: self.record.clone(),
                target: Target::Mod(seen.revision),
            },
            Compare {
                key: self.base.clone(),
                target: Target::Mod(seen.base_revision),
            },
        ]
    }

    /// The first in line.
    pub fn head(&self) -> Op {
        Op::Oldest {
            key: self.line.clone(),
            range_end: self.line_end.clone(),
        }
    }
}

/// A write planned on what was seen.
pub struct Planned {
    pub change: Change,
    pub write: Write,
}

/// A write whose outcome is to be settled.
struct Unsettled<'a> {
    /// The id of the write its record carries.
    write: &'a str,
    /// Who asked.
    client: &'a str,
    /// Whether it granted its caller a fresh lock.
    granted: bool,
    /// Whether it freed the lock.
    freed: bool,
}

pub fn range(key: &[u8]) -> Op {
    Op::Range {
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The lock a take with the caller's `request_id` already took, if `seen`
/// records it (as the last change of the resource, by `id`, for the same
/// client) and its lease still runs at `now`: its retry is answered with
/// it.
fn retried(
    request: &Request,
    request_id: Option<&str>,
    seen: &Seen,
    id: &str,
    now: u64,
) -> Option<LockInfo> {
    request_id?;
    requests::taken(request)?;
    seen.taken_lock(id, requests::client(request), now)
}

impl Cluster {
    pub fn keys(&self, resource: &str) -> Keys {
        let mut line = self.key("wait/", resource);
        line.push(LINE_END);
        Keys {
            record: self.key("lock/", resource),
            base: self.key("token-base", ""),
            line_end: wire::prefix_end(&line),
            line,
        }
    }

    /// The resource as it is now.
    pub fn read(&self, resource: &str, deadline: Instant) -> Result<Seen, ClusterError> {
        let read = self
            .etcd
            .txn(&[], &self.keys(resource).reads(), &[], deadline)
            .map_err(not_applied)?;
        Seen::read(resource, &read.results).map_err(ClusterError::NotApplied)
    }

    /// A new id for a request: a host's own are `<host>-<n>`; a caller's
    /// are marked so that no caller can name one of a host's, and hold the
    /// client's name, so that two clients giving the same `request_id`
    /// (two workers of one job) never pass for each other.
    pub fn request_id(&self, request_id: Option<&str>, client: &str) -> String {
        match request_id {
            Some(id) => format!("client:{}:{client}:{id}", client.len()),
            None => format!(
                "{}-{}",
                self.host,
                self.requests.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

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
        let keys = self.keys(resource);
        let id = self.request_id(request_id, requests::client(request));
        // A change is first decided on what this host last saw (nothing
        // known: nothing recorded, nobody waiting) and written guarded by
        // it, one round trip when it is still current. Only a write that
        // succeeds confirms it: a decision on it that writes nothing, or
        // refuses, is made again on what is read now.
        let mut optimistic = requests::changes(request);
        let mut seen = match optimistic {
            true => self.cache.get(resource),
            false => self.read(resource, deadline)?,
        };
        for _ in 0..MAX_CONFLICTS {
            // Time for one resource never runs backwards.
            let now = now_ms().max(seen.record.written_ms);
            if !optimistic && let Some(lock) = retried(request, request_id, &seen, &id, now) {
                return Ok(Reply::Lock(lock));
            }
            // This try's write: the call's own id is unique to it unless
            // the caller gave one (the same for every retry).
            let write = match request_id {
                None => id.clone(),
                Some(_) => self.request_id(None, ""),
            };
            let decided = self.decide(request, &seen, now).and_then(|decision| {
                let change = seen.change(&decision.effect, now, &id, &write);
                // Nobody overtakes a waiter: the lock is the first in
                // line's.
                match (&change, &seen.head) {
                    (Some(change), Some(head)) if change.fresh => Err(ClusterError::Lock(
                        GuestError::AlreadyLocked(head.waiting.client.clone()),
                    )),
                    _ => Ok((decision, change)),
                }
            });
            let (decision, change) = match decided {
                Err(ClusterError::Lock(_)) | Ok((_, None)) if optimistic => {
                    optimistic = false;
                    seen = self.read(resource, deadline)?;
                    continue;
                }
                Ok((decision, None)) => return Ok(decision.reply),
                Ok((decision, Some(change))) => (decision, change),
                Err(e) => return Err(e),
            };
            let mut reply = decision.reply;
            let freed = seen.freed_by(&change);
            let planned = self.plan(&keys, &seen, change, now, deadline)?;
            let granted = planned.change.fresh && !planned.change.handed_over;
            match self.batch.write(&*self.etcd, planned.write) {
                Ok(written) if written.succeeded => {
                    if granted && let Reply::Lock(lock) = &mut reply {
                        lock.token = seen.base + written.revision as u64;
                    }
                    let after = seen.after(planned.change, written.revision);
                    self.cache.put(resource, after);
                    return Ok(reply);
                }
                // Another write came first (or what was seen was not
                // current): decide again on what is there.
                Ok(lost) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    optimistic = false;
                    seen.take_record(resource, &lost.results)
                        .and_then(|()| seen.take_base(&lost.results, 1))
                        .and_then(|()| seen.take_head(&lost.results, 2))
                        .map_err(ClusterError::NotApplied)?;
                    self.cache.put(resource, seen.clone());
                }
                Err(EtcdError::NotApplied(why)) => return Err(ClusterError::NotApplied(why)),
                Err(EtcdError::Unknown(why)) => {
                    self.unknown.fetch_add(1, Ordering::Relaxed);
                    let unsettled = Unsettled {
                        write: &write,
                        client: requests::client(request),
                        granted,
                        freed,
                    };
                    return self.settle(resource, &unsettled, reply, &why, deadline);
                }
            }
        }
        Err(ClusterError::NotApplied(format!(
            "{MAX_CONFLICTS} conflicting writes in a row on {resource:?}"
        )))
    }

    /// The guarded write of `change`, decided on `seen`. A fresh lock is
    /// guarded by nobody waiting; a change that frees the lock hands it to
    /// the first in line if the rules give it to them, and is guarded by
    /// the line as seen.
    fn plan(
        &self,
        keys: &Keys,
        seen: &Seen,
        mut change: Change,
        now: u64,
        deadline: Instant,
    ) -> Result<Planned, ClusterError> {
        let mut guard = keys.guard(seen);
        let mut also = Vec::new();
        let freed = seen.freed_by(&change);
        match &seen.head {
            None if change.fresh || freed => guard.push(Compare {
                key: keys.line.clone(),
                target: Target::NoneUpTo(keys.line_end.clone()),
            }),
            Some(head) if freed => {
                guard.push(Compare {
                    key: head.key.clone(),
                    target: Target::Create(head.create_revision),
                });
                if seen.record.taken_by == head.waiting.request {
                    // A second place in line of the take that got the lock
                    // being freed (its caller asked again on another host
                    // while it waited): never its, the lock goes free and
                    // the next in line takes it.
                    also.push(Op::Delete {
                        key: head.key.clone(),
                        range_end: Vec::new(),
                    });
                } else if let Some(mut handed) = self.hand_over(seen, &change, head, now)? {
                    handed.record.handed_to = String::from_utf8_lossy(&head.key).into_owned();
                    change = handed;
                    also.push(Op::Delete {
                        key: head.key.clone(),
                        range_end: Vec::new(),
                    });
                }
            }
            _ => {}
        }
        let mut ops = vec![record_op(keys, seen, &change)];
        ops.extend(also);
        let write = Write {
            resource: String::from_utf8_lossy(&keys.record).into_owned(),
            guard,
            ops,
            reads: vec![range(&keys.record), range(&keys.base), keys.head()],
            deadline,
        };
        Ok(Planned { change, write })
    }

    /// What becomes of `change` (one that frees the lock) if the lock goes
    /// on to `head`, the first in line: the rules decide its take on the
    /// resource as `change` leaves it. `None` if they refuse it (the
    /// lock-delay): `head` then takes it itself when it can.
    fn hand_over(
        &self,
        seen: &Seen,
        change: &Change,
        head: &Head,
        now: u64,
    ) -> Result<Option<Change>, ClusterError> {
        let Some(resource) = seen.record.lock.as_ref().map(|l| l.resource.clone()) else {
            return Ok(None);
        };
        let take = Request::Acquire(AcquireRequest {
            resource,
            client: head.waiting.client.clone(),
            ttl_ms: head.waiting.ttl_ms,
            reentrant: false,
        });
        let left = Seen {
            record: change.record.clone(),
            head: None,
            ..seen.clone()
        };
        let decision = match self.decide(&take, &left, now) {
            Ok(decision) => decision,
            Err(ClusterError::Lock(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !matches!(decision.effect, Effect::Hold(HeldLock { fresh: true, .. })) {
            return Ok(None);
        }
        Ok(left
            .change(
                &decision.effect,
                now,
                &head.waiting.request,
                &change.record.request,
            )
            .map(|change| Change {
                handed_over: true,
                ..change
            }))
    }

    /// After a write whose outcome etcd left unknown: reads again, and
    /// answers as written if the write is there (the record carries its
    /// id, or the lock it freed is gone).
    fn settle(
        &self,
        resource: &str,
        unsettled: &Unsettled,
        mut reply: Reply,
        why: &str,
        deadline: Instant,
    ) -> Result<Reply, ClusterError> {
        let unknown = || ClusterError::Unknown(format!("outcome unknown: {why}"));
        let seen = self.read(resource, deadline).map_err(|_| unknown())?;
        let held = seen.record.lock.as_ref();
        // The record carries this request's id; a take's lock is its
        // client's.
        let recorded = seen.revision != 0
            && seen.record.request == unsettled.write
            && (!unsettled.granted || held.is_some_and(|l| l.client == unsettled.client));
        // A change that freed the lock happened if nobody holds it now
        // (one handing it on is recorded: the record carries its write).
        let freed = unsettled.freed && held.is_none();
        if !recorded && !freed {
            return Err(unknown());
        }
        if unsettled.granted
            && let (Reply::Lock(lock), Some(held)) = (&mut reply, held)
        {
            lock.token = held.token;
        }
        Ok(reply)
    }

    /// The rules' decision on `seen` at `now`, the lease of a lock
    /// lengthened by the clock-skew margin for other clients' takes: its
    /// holder's own requests are judged by the lease itself (a holder
    /// whose lease ran out by its host's clock holds nothing, whatever it
    /// asks).
    pub fn decide(
        &self,
        request: &Request,
        seen: &Seen,
        now: u64,
    ) -> Result<Decision, ClusterError> {
        let mut held = seen.record.lock.clone();
        if let Some(lock) = &mut held
            && requests::taken(request).is_some()
            && lock.client != requests::client(request)
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

/// Writing the record as `change` leaves it (deleting it if empty).
pub fn record_op(keys: &Keys, seen: &Seen, change: &Change) -> Op {
    let fresh_base = change.fresh.then_some(seen.base);
    change.record.write(keys.record.clone(), fresh_base)
}
