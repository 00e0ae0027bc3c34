//! A resource as a host last saw it in etcd: its record, the revisions a
//! write on it is guarded by, and the token base; and the cache of what
//! this host saw last, per resource.

use super::record::{self, Record, Waiting};
use crate::component::{Effect, HeldLock, LockInfo};
use crate::etcd::{KeyValue, OpResult};
use std::collections::HashMap;
use std::sync::Mutex;

/// One resource as read.
#[derive(Default, Clone)]
pub struct Seen {
    /// Empty (no lock, no delay) when the key does not exist.
    pub record: Record,
    /// The record key's mod revision, 0 when it does not exist.
    pub revision: i64,
    /// The token base, and its key's mod revision (0: none).
    pub base: u64,
    pub base_revision: i64,
    /// The first in the resource's line of waiters, if anyone waits.
    pub head: Option<Head>,
}

/// The first waiter in a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub waiting: Waiting,
}

/// What to write, once the rules have decided.
pub struct Change {
    /// The resource's record after it (empty: delete the key).
    pub record: Record,
    /// Whether it grants a fresh lock, whose token is the base plus the
    /// write's revision.
    pub fresh: bool,
    /// Whether it hands the lock to the head of the line (and removes its
    /// waiter key).
    pub handed_over: bool,
}

fn bad(e: String) -> String {
    format!("a record lockd cannot read: {e}")
}

/// The key-value of range result `i`, if any.
fn one(results: &[OpResult], i: usize) -> Option<&KeyValue> {
    match results.get(i) {
        Some(OpResult::Range(kvs)) => kvs.first(),
        _ => None,
    }
}

impl Seen {
    /// The resource as read by ranges of its record key, the base key and
    /// the oldest of its line, in that order.
    pub fn read(resource: &str, results: &[OpResult]) -> Result<Self, String> {
        let mut seen = Self::default();
        seen.take_record(resource, results)?;
        seen.take_base(results, 1)?;
        seen.take_head(results, 2)?;
        Ok(seen)
    }

    /// Takes the token base from range result `i` (of its key).
    pub fn take_base(&mut self, results: &[OpResult], i: usize) -> Result<(), String> {
        (self.base, self.base_revision) = match one(results, i) {
            Some(kv) => (record::decode_base(kv).map_err(bad)?, kv.mod_revision),
            None => (0, 0),
        };
        Ok(())
    }

    /// Takes the head of the line from range result `i`.
    pub fn take_head(&mut self, results: &[OpResult], i: usize) -> Result<(), String> {
        self.head = match one(results, i) {
            None => None,
            Some(kv) => Some(Head {
                key: kv.key.clone(),
                create_revision: kv.create_revision,
                waiting: Waiting::decode(kv).map_err(bad)?,
            }),
        };
        Ok(())
    }

    /// Takes the record of a range of its key (the first of `results`),
    /// keeping the base.
    pub fn take_record(&mut self, resource: &str, results: &[OpResult]) -> Result<(), String> {
        match one(results, 0) {
            Some(kv) => {
                self.record = Record::decode(resource, kv).map_err(bad)?;
                self.revision = kv.mod_revision;
            }
            None => {
                self.record = Record::default();
                self.revision = 0;
            }
        }
        Ok(())
    }

    /// What `effect` makes of the record at `now`, for request `id`, by
    /// the write `write` (an id no other write has, so that a write whose
    /// outcome etcd left open can be told from an earlier try of the same
    /// request); `None` when it changes nothing. A lock-delay past its
    /// time to be forgotten is dropped on the way.
    pub fn change(&self, effect: &Effect, now: u64, id: &str, write: &str) -> Option<Change> {
        let kept_delay = || {
            self.record
                .delay
                .clone()
                .filter(|delay| delay.forget_ms > now)
        };
        let (lock, delay, fresh) = match effect {
            Effect::None => return None,
            Effect::Hold(HeldLock { lock, fresh: true }) => (Some(lock.clone()), None, true),
            Effect::Hold(HeldLock { lock, fresh: false }) => {
                (Some(lock.clone()), kept_delay(), false)
            }
            Effect::Release => (None, kept_delay(), false),
            Effect::BreakLock(delay) => (None, Some(delay.clone()), false),
        };
        let (taken_by, handed_to) = match (&lock, fresh) {
            (None, _) => (String::new(), String::new()),
            (Some(_), true) => (id.to_owned(), String::new()),
            (Some(_), false) => (self.record.taken_by.clone(), self.record.handed_to.clone()),
        };
        Some(Change {
            record: Record {
                lock,
                delay,
                written_ms: now,
                request: write.to_owned(),
                taken_by,
                handed_to,
            },
            fresh,
            handed_over: false,
        })
    }

    /// The lock seen, if the take `id` of `client` got it and its lease
    /// runs at `now`.
    pub fn taken_lock(&self, id: &str, client: &str, now: u64) -> Option<LockInfo> {
        let lock = self.record.lock.as_ref()?;
        let running = lock.expires_ms.is_none_or(|at| at > now);
        (self.record.taken_by == id && lock.client == client && running).then(|| lock.clone())
    }

    /// Whether `change` frees the lock held in what was seen.
    pub fn freed_by(&self, change: &Change) -> bool {
        self.record.lock.is_some() && change.record.lock.is_none()
    }

    /// The resource once `change` was written at `revision` (the line
    /// as it was, unless the change handed the lock to its head).
    pub fn after(&self, mut change: Change, revision: i64) -> Self {
        if change.fresh
            && let Some(lock) = &mut change.record.lock
        {
            lock.token = self.base + revision as u64;
        }
        Self {
            revision: if change.record.is_empty() {
                0
            } else {
                revision
            },
            head: if change.handed_over {
                None
            } else {
                self.head.clone()
            },
            record: change.record,
            ..self.clone()
        }
    }
}

/// The resources this host last saw: a guess to write against, never an
/// answer (a guarded write checks it).
#[derive(Default)]
pub struct Cache {
    seen: Mutex<HashMap<String, Seen>>,
    /// The newest token base seen: a resource not seen yet is guessed
    /// free under it.
    base: Mutex<(u64, i64)>,
}

/// Resources remembered at most; past it the cache starts afresh.
const CACHE_LIMIT: usize = 100_000;

impl Cache {
    pub fn get(&self, resource: &str) -> Seen {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(resource).cloned().unwrap_or_else(|| {
            let (base, base_revision) = *self.base.lock().unwrap_or_else(|p| p.into_inner());
            Seen {
                base,
                base_revision,
                ..Seen::default()
            }
        })
    }

    pub fn put(&self, resource: &str, seen: Seen) {
        {
            let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
            if seen.base_revision > base.1 {
                *base = (seen.base, seen.base_revision);
            }
        }
        let mut all = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= CACHE_LIMIT {
            all.clear();
        }
        all.insert(resource.to_owned(), seen);
    }
}
