//! Waiting for a lock across hosts, first come first served. A waiter
//! joins its resource's line with a key under `<prefix>wait/<resource>/`,
//! attached to its host's session lease; the line's order is the keys'
//! creation revisions. A change that frees the lock hands it to the first
//! in line in the same transaction (`call.rs`); the first in line takes
//! it itself when it falls free otherwise (a lease ran out, a lock-delay
//! passed). The host's watch wakes a waiter when its line changes.

use super::call::{Keys, range, record_op};
use super::record::Waiting;
use super::seen::Seen;
use super::{CALL_DEADLINE, Cluster, ClusterError, not_applied, now_ms};
use crate::component::{Effect, GuestError, HeldLock, LockInfo, Reply, Request};
use crate::error::LockError;
use crate::etcd::{Compare, EtcdError, KeyValue, Op, OpResult, Target};
use crate::requests;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the first in line sleeps at most before it looks again: a
/// lock-delay after a break ends without a change to the line.
const HEAD_LOOKS: Duration = Duration::from_secs(1);
/// How long any waiter sleeps at most before it looks again, should the
/// watch have missed something.
const ANY_LOOKS: Duration = Duration::from_secs(5);
/// How often a waiter asks whether it should leave (its caller gone, the
/// daemon stopping).
const ASKS: Duration = Duration::from_millis(250);

/// One waiter's place in its line.
struct Place<'a> {
    resource: &'a str,
    client: &'a str,
    keys: Keys,
    key: Vec<u8>,
    created: i64,
    /// The request id the record of its lock carries.
    id: String,
}

/// A caller counted in line (its waiter key written) until this is
/// dropped, however its wait ends.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn count(in_line: &'a AtomicUsize) -> Self {
        in_line.fetch_add(1, Ordering::Relaxed);
        Self(in_line)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn soon() -> Instant {
    Instant::now() + CALL_DEADLINE
}

impl Cluster {
    /// Runs `request` (a take), waiting in line until `deadline` if the
    /// lock is held. `leave` says why to stop waiting early (its caller
    /// gone, the daemon stopping), if it should.
    pub fn wait(
        &self,
        request: &Request,
        request_id: Option<&str>,
        deadline: Instant,
        leave: &dyn Fn() -> Option<LockError>,
    ) -> Result<Reply, ClusterError> {
        let first = self.call(request, request_id, soon());
        let (Some(resource), Err(ClusterError::Lock(busy))) = (requests::taken(request), &first)
        else {
            return first;
        };
        if !matches!(
            busy,
            GuestError::AlreadyLocked(_) | GuestError::CoolingDown(_)
        ) {
            return first;
        }
        let place = self.join(request, resource, request_id)?;
        let _in_line = InLine::count(&self.in_line);
        let mut next_look = Instant::now();
        loop {
            let mark = self.lines.mark(resource);
            if Instant::now() >= next_look {
                let (seen, mine) = match self.look(&place) {
                    Ok(looked) => looked,
                    Err(e) => return self.leave(&place, e),
                };
                if let Some(lock) = handed(&seen, &place) {
                    return Ok(Reply::Lock(lock));
                }
                if mine.is_none() {
                    return Err(ClusterError::NotApplied(
                        "the wait was lost: etcd ended this host's session".into(),
                    ));
                }
                let head = seen.head.as_ref().is_some_and(|h| h.key == place.key);
                next_look = Instant::now() + if head { HEAD_LOOKS } else { ANY_LOOKS };
                if head {
                    match self.take_as_head(request, &place, &seen) {
                        Ok(Some(lock)) => return Ok(Reply::Lock(lock)),
                        Ok(None) => {
                            next_look = Instant::now();
                            continue;
                        }
                        Err(ClusterError::Lock(_)) => {
                            if let Some(free) = self.free_at(&seen) {
                                next_look = next_look.min(free);
                            }
                        }
                        Err(e) => return self.leave(&place, e),
                    }
                }
            }
            // Sleep until the line changes or it is time to look again,
            // asking now and then whether to leave.
            loop {
                if let Some(why) = leave() {
                    return self.leave(&place, ClusterError::Ended(why));
                }
                if Instant::now() >= deadline {
                    return self.leave(&place, ClusterError::Ended(LockError::WaitTimedOut));
                }
                let until = next_look.min(deadline).min(Instant::now() + ASKS);
                if self.lines.wait_change(resource, mark, until) {
                    next_look = Instant::now();
                    break;
                }
                if Instant::now() >= next_look {
                    break;
                }
            }
        }
    }

    /// Joins `resource`'s line for `request`.
    fn join<'a>(
        &self,
        request: &'a Request,
        resource: &'a str,
        request_id: Option<&str>,
    ) -> Result<Place<'a>, ClusterError> {
        let keys = self.keys(resource);
        let id = self.request_id(request_id);
        let mut key = keys.line.clone();
        key.extend_from_slice(self.request_id(None).as_bytes());
        let waiting = Waiting {
            client: requests::client(request).to_owned(),
            ttl_ms: match request {
                Request::Acquire(acquire) => acquire.ttl_ms,
                _ => None,
            },
            request: id.clone(),
        };
        let mut renewed = false;
        let created = loop {
            let lease = self
                .lines
                .session(&self.etcd, soon())
                .map_err(not_applied)?;
            let put = [Op::Put {
                key: key.clone(),
                value: waiting.encode(),
                lease,
            }];
            match self.etcd.txn(&[], &put, &[], soon()) {
                Ok(written) => break written.revision,
                // etcd ended the session before this host noticed: once
                // more with a new one.
                Err(EtcdError::NotApplied(why)) if why.contains("lease not found") && !renewed => {
                    self.lines.forget(lease);
                    renewed = true;
                }
                Err(e) => break self.joined(&key, e)?,
            }
        };
        Ok(Place {
            resource,
            client: requests::client(request),
            keys,
            key,
            created,
            id,
        })
    }

    /// After a failed write of waiter key `key`: its create revision if it
    /// was written all the same.
    fn joined(&self, key: &[u8], failed: EtcdError) -> Result<i64, ClusterError> {
        match failed {
            EtcdError::NotApplied(why) => Err(ClusterError::NotApplied(why)),
            // Joined or not: look.
            EtcdError::Unknown(why) => {
                let (kvs, _) = self
                    .etcd
                    .range(key, &[], soon())
                    .map_err(|_| ClusterError::NotApplied(why.clone()))?;
                kvs.first()
                    .map(|kv| kv.create_revision)
                    .ok_or(ClusterError::NotApplied(why))
            }
        }
    }

    /// The resource and the waiter's key as they are now.
    fn look(&self, place: &Place) -> Result<(Seen, Option<KeyValue>), ClusterError> {
        let mut reads = place.keys.reads();
        reads.push(range(&place.key));
        let read = self
            .etcd
            .txn(&[], &reads, &[], soon())
            .map_err(not_applied)?;
        let seen = Seen::read(place.resource, &read.results).map_err(ClusterError::NotApplied)?;
        let mine = match read.results.get(3) {
            Some(OpResult::Range(kvs)) => kvs.first().cloned(),
            _ => None,
        };
        Ok((seen, mine))
    }

    /// The first in line takes the lock if the rules give it: the lock
    /// written and its waiter key deleted in one transaction, guarded by
    /// its key still being the oldest of the line. `None` if another
    /// write came first.
    fn take_as_head(
        &self,
        request: &Request,
        place: &Place,
        seen: &Seen,
    ) -> Result<Option<LockInfo>, ClusterError> {
        let now = now_ms().max(seen.record.written_ms);
        let decision = self.decide(request, seen, now)?;
        let Some(change) = seen.change(&decision.effect, now, &place.id) else {
            return Ok(None);
        };
        if !matches!(decision.effect, Effect::Hold(HeldLock { fresh: true, .. })) {
            return Ok(None);
        }
        let keys = &place.keys;
        let mut guard = keys.guard(seen);
        guard.extend([
            Compare {
                key: place.key.clone(),
                target: Target::Create(place.created),
            },
            Compare {
                key: keys.line.clone(),
                target: Target::AllCreatedAfter {
                    end: keys.line_end.clone(),
                    revision: place.created - 1,
                },
            },
        ]);
        let ops = vec![
            record_op(keys, seen, &change),
            Op::Delete {
                key: place.key.clone(),
                range_end: Vec::new(),
            },
        ];
        let written = self.etcd.txn(&guard, &ops, &[], soon());
        match written {
            Ok(written) if written.succeeded => {
                let after = seen.after(change, written.revision);
                let lock = after.record.lock.clone();
                self.cache.put(place.resource, after);
                Ok(lock)
            }
            Ok(_) => Ok(None),
            Err(EtcdError::NotApplied(why)) => Err(ClusterError::NotApplied(why)),
            // Taken or not: the next look tells (the record carries this
            // waiter's id).
            Err(EtcdError::Unknown(_)) => Ok(None),
        }
    }

    /// When the lock held in `seen` may fall free: its lease's end (with
    /// the clock-skew margin), or the lock-delay's end.
    fn free_at(&self, seen: &Seen) -> Option<Instant> {
        let at = match (&seen.record.lock, &seen.record.delay) {
            (Some(lock), _) => lock.expires_ms? + self.max_clock_skew_ms,
            (None, Some(delay)) => delay.until_ms,
            (None, None) => return None,
        };
        let wait = at.saturating_sub(now_ms());
        Some(Instant::now() + Duration::from_millis(wait))
    }

    /// Leaves the line, with `why` for an answer, unless the lock was
    /// handed to this waiter meanwhile: then the lock is the answer.
    fn leave(&self, place: &Place, why: ClusterError) -> Result<Reply, ClusterError> {
        let guard = [Compare {
            key: place.key.clone(),
            target: Target::Create(place.created),
        }];
        let delete = [Op::Delete {
            key: place.key.clone(),
            range_end: Vec::new(),
        }];
        match self.etcd.txn(&guard, &delete, &[], soon()) {
            Ok(left) if left.succeeded => return Err(why),
            // Its key is gone: handed the lock, or its session ended.
            Ok(_) => {}
            // The key stays until the session ends; nobody is handed a
            // lock through it meanwhile only if etcd failed for good.
            Err(e) => tracing::warn!("leaving the line of {:?}: {e}", place.resource),
        }
        match self.look(place) {
            Ok((seen, _)) => match handed(&seen, place) {
                Some(lock) => Ok(Reply::Lock(lock)),
                None => Err(why),
            },
            Err(_) => Err(why),
        }
    }
}

/// The lock in `seen`, if it was handed to (or taken by) the waiter at
/// `place`.
fn handed(seen: &Seen, place: &Place) -> Option<LockInfo> {
    let lock = seen.record.lock.as_ref()?;
    (seen.record.request == place.id && lock.client == place.client).then(|| lock.clone())
}
