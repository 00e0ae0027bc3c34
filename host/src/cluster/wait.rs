//! Waiting for a lock across hosts, first come first served. A waiter
//! joins its resource's line with a key `<prefix>wait/<resource>`, NUL,
//! its own id, attached to its host's session lease; the line's order is the keys'
//! creation revisions. A change that frees the lock hands it to the first
//! in line in the same transaction (`call.rs`); the first in line takes
//! it itself when it falls free otherwise (a lease ran out, a lock-delay
//! passed). The host's watch wakes a waiter when its line changes.
//!
//! A waiter key never outlives its wait: however the wait ends, its key
//! is deleted, at once or, when etcd does not let it, by the host's
//! session keeper later (`lines.rs`); and a caller is answered "timed
//! out" (or "gone") only once its key is surely gone, "outcome unknown"
//! otherwise.

use super::call::{Keys, range, record_op};
use super::lines::Orphan;
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
/// How soon the first in line looks again after another write came first,
/// at the least.
const AGAIN: Duration = Duration::from_millis(25);
/// How long a waiter whose place is gone waits before it joins again.
const REJOIN: Duration = Duration::from_millis(50);

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

/// How a join of a line ended.
enum Joined<'a> {
    /// In line.
    Place(Place<'a>),
    /// Handed the lock while its join's outcome was open.
    Handed(LockInfo),
    /// Not in line, and never will be: join again.
    Again,
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
        loop {
            let first = self.call(request, request_id, soon());
            let (Some(resource), Err(ClusterError::Lock(busy))) =
                (requests::taken(request), &first)
            else {
                return first;
            };
            if !matches!(
                busy,
                GuestError::AlreadyLocked(_) | GuestError::CoolingDown(_)
            ) {
                return first;
            }
            let place = match self.join(request, resource, request_id)? {
                Joined::Place(place) => place,
                Joined::Handed(lock) => return Ok(Reply::Lock(lock)),
                Joined::Again => {
                    std::thread::sleep(REJOIN);
                    continue;
                }
            };
            let _in_line = InLine::count(&self.in_line);
            if let Some(answer) = self.wait_in_line(request, &place, deadline, leave) {
                return answer;
            }
            // Its place is gone without a lock for it (its session
            // ended, or it was handed a lock whose lease ran out before
            // it looked): in line again, if it still may wait.
            std::thread::sleep(REJOIN);
            if let Some(why) = leave() {
                return Err(ClusterError::Ended(why));
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Ended(LockError::WaitTimedOut));
            }
        }
    }

    /// Waits at `place` until the lock is this waiter's, the wait ends,
    /// or its place is gone (`None`).
    fn wait_in_line(
        &self,
        request: &Request,
        place: &Place,
        deadline: Instant,
        leave: &dyn Fn() -> Option<LockError>,
    ) -> Option<Result<Reply, ClusterError>> {
        let resource = place.resource;
        let mut next_look = Instant::now();
        loop {
            let mark = self.lines.mark(resource);
            if Instant::now() >= next_look {
                let (seen, mine) = match self.look(place) {
                    Ok(looked) => looked,
                    Err(e) => return Some(self.leave(place, e)),
                };
                if let Some(lock) = handed(&seen, place) {
                    if mine.is_some() {
                        // Handed the lock through another place of the
                        // same take (its caller asked again elsewhere).
                        self.drop_place(place);
                    }
                    return Some(Ok(Reply::Lock(lock)));
                }
                mine.as_ref()?;
                let head = seen.head.as_ref().is_some_and(|h| h.key == place.key);
                next_look = Instant::now() + if head { HEAD_LOOKS } else { ANY_LOOKS };
                if head {
                    match self.take_as_head(request, place, &seen) {
                        Ok(Some(lock)) => return Some(Ok(Reply::Lock(lock))),
                        // Another write came first: look again soon.
                        Ok(None) => next_look = Instant::now() + AGAIN,
                        Err(ClusterError::Lock(refused)) => {
                            next_look = next_look.min(self.free_at(&seen, &refused));
                        }
                        Err(e) => return Some(self.leave(place, e)),
                    }
                }
            }
            // Sleep until the line changes or it is time to look again,
            // asking now and then whether to leave.
            loop {
                if let Some(why) = leave() {
                    return Some(self.leave(place, ClusterError::Ended(why)));
                }
                if Instant::now() >= deadline {
                    let why = ClusterError::Ended(LockError::WaitTimedOut);
                    return Some(self.leave(place, why));
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

    /// Joins `resource`'s line for `request`. The key is written only if
    /// its marker (`<prefix>gone/<its id>`) does not exist: after a join
    /// whose outcome etcd left open, writing the marker makes sure a late
    /// write of the key can never land.
    fn join<'a>(
        &self,
        request: &'a Request,
        resource: &'a str,
        request_id: Option<&str>,
    ) -> Result<Joined<'a>, ClusterError> {
        let keys = self.keys(resource);
        let client = requests::client(request);
        let id = self.request_id(request_id, client);
        let own = self.request_id(None, "");
        let mut key = keys.line.clone();
        key.extend_from_slice(own.as_bytes());
        let marker = self.key("gone/", &own);
        let waiting = Waiting {
            client: client.to_owned(),
            ttl_ms: match request {
                Request::Acquire(acquire) => acquire.ttl_ms,
                _ => None,
            },
            request: id.clone(),
        };
        let mut renewed = false;
        loop {
            let lease = self
                .lines
                .session(&self.etcd, soon())
                .map_err(not_applied)?;
            let unmarked = [Compare {
                key: marker.clone(),
                target: Target::Create(0),
            }];
            let put = [Op::Put {
                key: key.clone(),
                value: waiting.encode(),
                lease,
            }];
            match self.etcd.txn(&unmarked, &put, &[], soon()) {
                Ok(written) if written.succeeded => {
                    return Ok(Joined::Place(Place {
                        resource,
                        client,
                        keys,
                        key,
                        created: written.revision,
                        id,
                    }));
                }
                Ok(_) => return Err(ClusterError::NotApplied("a marked waiter key".into())),
                // etcd ended the session before this host noticed: once
                // more with a new one.
                Err(EtcdError::NotApplied(why)) if why.contains("lease not found") && !renewed => {
                    self.lines.forget(lease);
                    renewed = true;
                }
                Err(EtcdError::NotApplied(why)) => return Err(ClusterError::NotApplied(why)),
                Err(EtcdError::Unknown(why)) => {
                    let join = Orphan::Join { key, marker, lease };
                    return self.cancel_join(resource, join, &id, client, &why);
                }
            }
        }
    }

    /// After a join whose outcome etcd left open: the marker written and
    /// the key deleted in one step, so the key is not in line and never
    /// will be; and, read in the same step, the lock if it was handed to
    /// the key meanwhile.
    fn cancel_join(
        &self,
        resource: &str,
        join: Orphan,
        id: &str,
        client: &str,
        why: &str,
    ) -> Result<Joined<'static>, ClusterError> {
        let mut ops = join.removal().expect("a join's removal");
        ops.push(range(&self.keys(resource).record));
        let cancelled = self.etcd.txn(&[], &ops, &[], soon());
        let Ok(cancelled) = cancelled else {
            self.lines.orphan(join);
            return Err(ClusterError::Unknown(format!(
                "outcome unknown: joining the line of {resource:?}: {why}"
            )));
        };
        if let Orphan::Join { marker, .. } = join {
            self.lines.orphan(Orphan::marker(marker));
        }
        let mut seen = Seen::default();
        seen.take_record(resource, &cancelled.results[2..])
            .map_err(ClusterError::NotApplied)?;
        let now = now_ms().max(seen.record.written_ms);
        Ok(match seen.taken_lock(id, client, now) {
            Some(lock) => Joined::Handed(lock),
            None => Joined::Again,
        })
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
    /// write came first. If its client holds the lock already and asked
    /// reentrantly, that lock, its place given up.
    fn take_as_head(
        &self,
        request: &Request,
        place: &Place,
        seen: &Seen,
    ) -> Result<Option<LockInfo>, ClusterError> {
        let now = now_ms().max(seen.record.written_ms);
        let decision = self.decide(request, seen, now)?;
        match (&decision.effect, decision.reply) {
            (Effect::Hold(HeldLock { fresh: true, .. }), _) => {}
            (Effect::None, Reply::Lock(lock)) => {
                self.drop_place(place);
                return Ok(Some(lock));
            }
            _ => return Ok(None),
        }
        let write = self.request_id(None, "");
        let Some(change) = seen.change(&decision.effect, now, &place.id, &write) else {
            return Ok(None);
        };
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

    /// When the first in line, refused the lock as `refused` on `seen`,
    /// looks again: when the lease of the lock held runs out (with the
    /// clock-skew margin), or its lock-delay ends; at once if it says
    /// neither (the watch wakes it when the line changes).
    fn free_at(&self, seen: &Seen, refused: &GuestError) -> Instant {
        let wait = match (refused, &seen.record.lock) {
            (GuestError::CoolingDown(ms_left), _) => *ms_left,
            (_, Some(lock)) => match lock.expires_ms {
                Some(at) => (at + self.max_clock_skew_ms).saturating_sub(now_ms()),
                None => HEAD_LOOKS.as_millis() as u64,
            },
            _ => HEAD_LOOKS.as_millis() as u64,
        };
        Instant::now() + Duration::from_millis(wait).max(AGAIN)
    }

    /// Deletes the key of `place`: whether it was there (`false`: gone
    /// already, handed the lock or its session ended).
    fn remove_place(&self, place: &Place) -> Result<bool, EtcdError> {
        let guard = [Compare {
            key: place.key.clone(),
            target: Target::Create(place.created),
        }];
        let delete = [Op::Delete {
            key: place.key.clone(),
            range_end: Vec::new(),
        }];
        let mut tries = 0;
        loop {
            match self.etcd.txn(&guard, &delete, &[], soon()) {
                Ok(removed) => return Ok(removed.succeeded),
                // Deleting again is harmless: the guard sees it gone.
                Err(_) if tries < 2 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives up `place` of a take answered with a lock (through another
    /// place, or held already): its key deleted now, or by this host's
    /// session keeper as soon as etcd lets it, which also releases a lock
    /// handed to the key meanwhile.
    fn drop_place(&self, place: &Place) {
        if let Err(e) = self.remove_place(place) {
            tracing::debug!("leaving the line of {:?}: {e}", place.resource);
            self.lines.orphan(Orphan::Answered(place.key.clone()));
        }
    }

    /// Leaves the line, with `why` for an answer, unless the lock was
    /// handed to this waiter meanwhile: then the lock is the answer. If
    /// etcd does not let it leave, the outcome is unknown: the lock may
    /// yet be handed to its key (this host's session keeper deletes it as
    /// soon as etcd lets it).
    fn leave(&self, place: &Place, why: ClusterError) -> Result<Reply, ClusterError> {
        let unknown = |e: &dyn std::fmt::Display| {
            ClusterError::Unknown(format!(
                "outcome unknown: leaving the line of {:?}: {e}",
                place.resource
            ))
        };
        match self.remove_place(place) {
            // It was in line until now: nobody handed it the lock (a
            // hand-over deletes the key in the same step).
            Ok(true) => Err(why),
            Ok(false) => match self.look(place) {
                Ok((seen, _)) => handed(&seen, place).map(Reply::Lock).ok_or(why),
                Err(e) => Err(unknown(&format!("{e:?}"))),
            },
            Err(e) => {
                self.lines.orphan(Orphan::Key(place.key.clone()));
                Err(unknown(&e))
            }
        }
    }
}

/// The lock in `seen`, if it was handed to (or taken by) the waiter at
/// `place` and its lease still runs.
fn handed(seen: &Seen, place: &Place) -> Option<LockInfo> {
    let now = now_ms().max(seen.record.written_ms);
    seen.taken_lock(&place.id, place.client, now)
}
