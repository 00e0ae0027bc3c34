//! This host's part in the lines of waiters, which live in etcd: its
//! session (a lease every waiter key of this host is attached to, kept
//! alive while the host runs and revoked when it stops, so a dead host's
//! waiters leave every line when the lease runs out) and one watch on all
//! lines, which wakes this host's waiters when theirs changes; and the
//! waiter keys this host could not delete when their wait ended, deleted
//! by the session keeper as soon as etcd lets it.

use super::Store;
use super::call::{LINE_END, range};
use super::now_ms;
use super::record::Record;
use crate::etcd::{Compare, EtcdError, Op, OpResult, Target, wire};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The session lease's time to live, in seconds: how long a dead host's
/// waiters stay in line.
pub const SESSION_TTL_S: i64 = 5;

/// How often the session is kept alive (and orphans deleted).
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How long the marker of a join whose outcome was open is kept: far
/// longer than etcd takes to apply or drop a proposal.
const MARKER_KEPT: Duration = Duration::from_secs(600);

/// A key this host has to delete.
#[derive(Debug)]
pub enum Orphan {
    /// The key of a wait that ended.
    Key(Vec<u8>),
    /// The key of a join whose outcome etcd left open, put with session
    /// `lease`: its `marker` is written and the key deleted in one step,
    /// after which a late write of the key fails its guard.
    Join {
        key: Vec<u8>,
        marker: Vec<u8>,
        lease: i64,
    },
    /// A join's marker, deleted once it is old enough.
    Marker { key: Vec<u8>, since: Instant },
    /// The key of a second place in line of a take that got its lock
    /// through another (its caller asked again on another host): a lock
    /// handed to it before it is deleted is nobody's, and is released.
    Answered(Vec<u8>),
}

impl Orphan {
    pub fn marker(key: Vec<u8>) -> Self {
        Self::Marker {
            key,
            since: Instant::now(),
        }
    }

    /// The writes that delete it, if it is time.
    pub fn removal(&self) -> Option<Vec<Op>> {
        let delete = |key: &[u8]| Op::Delete {
            key: key.to_vec(),
            range_end: Vec::new(),
        };
        match self {
            Orphan::Key(key) | Orphan::Answered(key) => Some(vec![delete(key)]),
            Orphan::Join { key, marker, lease } => Some(vec![
                Op::Put {
                    key: marker.clone(),
                    value: Vec::new(),
                    lease: *lease,
                },
                delete(key),
            ]),
            Orphan::Marker { key, since } => {
                (since.elapsed() >= MARKER_KEPT).then(|| vec![delete(key)])
            }
        }
    }
}

pub struct Lines {
    /// `<prefix>wait/`: every line.
    prefix: Vec<u8>,
    session: Mutex<Option<i64>>,
    orphans: Mutex<Vec<Orphan>>,
    changed: Mutex<Changed>,
    wake: Condvar,
    started: AtomicBool,
    stopping: AtomicBool,
}

/// How often each line changed, as the watch saw it.
#[derive(Default)]
struct Changed {
    lines: HashMap<String, u64>,
    /// Counted up when changes may have been missed (a new watch).
    all: u64,
}

/// Where a line stood when its waiter looked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mark {
    line: u64,
    all: u64,
}

impl Lines {
    pub fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            session: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            changed: Mutex::new(Changed::default()),
            wake: Condvar::new(),
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// This host's session lease, granted on first use (which starts the
    /// threads that keep it alive and watch the lines).
    pub fn session(
        self: &Arc<Self>,
        etcd: &Arc<dyn Store>,
        deadline: Instant,
    ) -> Result<i64, EtcdError> {
        if !self.started.swap(true, Ordering::SeqCst) {
            self.start(etcd);
        }
        let mut session = lock(&self.session);
        if let Some(lease) = *session {
            return Ok(lease);
        }
        let (lease, _) = etcd.lease_grant(SESSION_TTL_S, deadline)?;
        *session = Some(lease);
        Ok(lease)
    }

    /// Hands `orphan` to the session keeper, which deletes it as soon as
    /// etcd lets it.
    pub fn orphan(&self, orphan: Orphan) {
        tracing::debug!("to delete later: {orphan:?}");
        lock(&self.orphans).push(orphan);
    }

    /// Deletes the orphans it is time to delete, keeping those etcd does
    /// not let it delete yet. A join whose session ended needs nothing:
    /// its key went with the session, and a late write of it fails.
    fn sweep(&self, etcd: &dyn Store) {
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        if orphans.is_empty() {
            return;
        }
        let session = *lock(&self.session);
        let mut kept = Vec::new();
        for orphan in orphans {
            if let Orphan::Join { lease, .. } = &orphan
                && session != Some(*lease)
            {
                continue;
            }
            if let Orphan::Answered(key) = &orphan {
                match self.reclaim(etcd, key) {
                    Ok(true) => {}
                    Ok(false) => kept.push(orphan),
                    Err(e) => {
                        tracing::debug!("deleting {orphan:?}: {e}");
                        kept.push(orphan);
                    }
                }
                continue;
            }
            let Some(ops) = orphan.removal() else {
                kept.push(orphan);
                continue;
            };
            match etcd.txn(&[], &ops, &[], Instant::now() + KEEP_ALIVE) {
                Ok(_) => {
                    if let Orphan::Join { marker, .. } = orphan {
                        kept.push(Orphan::marker(marker));
                    }
                }
                Err(e) => {
                    tracing::debug!("deleting {orphan:?}: {e}");
                    kept.push(orphan);
                }
            }
        }
        lock(&self.orphans).extend(kept);
    }

    /// Deletes the key of an answered second place; if it is gone
    /// already and the lock was handed to it (nobody waits there, nobody
    /// was told), releases that lock, guarded by the record as read.
    /// Whether that is done.
    fn reclaim(&self, etcd: &dyn Store, key: &[u8]) -> Result<bool, EtcdError> {
        let Some((resource, record_key)) = self.record_of(key) else {
            return Ok(true);
        };
        let deadline = Instant::now() + KEEP_ALIVE;
        let absent = [Compare {
            key: key.to_vec(),
            target: Target::Create(0),
        }];
        let delete = [Op::Delete {
            key: key.to_vec(),
            range_end: Vec::new(),
        }];
        let looked = etcd.txn(&absent, &[range(&record_key)], &delete, deadline)?;
        let kv = match (looked.succeeded, looked.results.first()) {
            (true, Some(OpResult::Range(kvs))) => kvs.first(),
            // It was there: deleted now, before anyone handed it a lock.
            _ => None,
        };
        let Some(kv) = kv else { return Ok(true) };
        let record = Record::decode(&resource, kv).map_err(EtcdError::NotApplied)?;
        if record.lock.is_none() || record.handed_to.as_bytes() != key {
            return Ok(true);
        }
        tracing::info!("releasing {resource:?}, handed to a waiter that had its answer");
        let now = now_ms().max(record.written_ms);
        let freed = Record {
            lock: None,
            delay: record.delay.filter(|delay| delay.forget_ms > now),
            written_ms: now,
            request: format!("sweep:{}", kv.mod_revision),
            ..Record::default()
        };
        let write = freed.write(record_key.clone(), None);
        let guard = [Compare {
            key: record_key,
            target: Target::Mod(kv.mod_revision),
        }];
        // Lost to another write: looked at again at the next sweep.
        Ok(etcd.txn(&guard, &[write], &[], deadline)?.succeeded)
    }

    /// The resource of waiter key `key`, and the key of its record.
    fn record_of(&self, key: &[u8]) -> Option<(String, Vec<u8>)> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        let resource = &rest[..rest.iter().position(|&b| b == LINE_END)?];
        let prefix = self.prefix.strip_suffix(b"wait/")?;
        let record = [prefix, b"lock/", resource].concat();
        Some((String::from_utf8_lossy(resource).into_owned(), record))
    }

    /// Drops session `lease`, which etcd no longer has: the next wait
    /// gets a new one.
    pub fn forget(&self, lease: i64) {
        let mut session = lock(&self.session);
        if *session == Some(lease) {
            *session = None;
        }
    }

    fn start(self: &Arc<Self>, etcd: &Arc<dyn Store>) {
        let (lines, etcd_) = (self.clone(), etcd.clone());
        let kept = std::thread::Builder::new()
            .name("lockd-session".into())
            .spawn(move || lines.keep_alive(&*etcd_));
        let (lines, etcd) = (self.clone(), etcd.clone());
        let watched = std::thread::Builder::new()
            .name("lockd-watch".into())
            .spawn(move || lines.watch(&*etcd));
        if let Err(e) = kept.and(watched) {
            tracing::error!("starting the threads of waiting in line: {e}");
        }
    }

    /// Keeps the session alive until the host stops; a lease etcd no
    /// longer has (this host was cut off longer than its time to live) is
    /// replaced at the next wait.
    fn keep_alive(&self, etcd: &dyn Store) {
        while !self.pause(KEEP_ALIVE) {
            self.sweep(etcd);
            let Some(lease) = *lock(&self.session) else {
                continue;
            };
            match etcd.lease_keep_alive(lease, Instant::now() + KEEP_ALIVE) {
                Ok(0) => {
                    tracing::warn!("etcd ended this host's session: its waiters left their lines");
                    self.forget(lease);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("keeping the session alive: {e}"),
            }
        }
    }

    /// Watches every line until the host stops, waking the waiters of a
    /// line that changed; a new watch (after one broke) wakes them all.
    fn watch(&self, etcd: &dyn Store) {
        let end = wire::prefix_end(&self.prefix);
        let mut from = 0;
        while !self.stopping.load(Ordering::Relaxed) {
            let made = etcd.watch(&self.prefix, &end, from, Instant::now() + KEEP_ALIVE);
            let mut watch = match made {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::debug!("watching the lines: {e}");
                    self.pause(Duration::from_millis(200));
                    continue;
                }
            };
            self.changed_all();
            loop {
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                match watch.next(Instant::now() + Duration::from_millis(250)) {
                    Ok(None) => {}
                    Ok(Some(changes)) => {
                        from = changes.revision + 1;
                        for key in &changes.keys {
                            self.changed(key);
                        }
                    }
                    Err(e) => {
                        tracing::debug!("the watch of the lines ended: {e}");
                        // A start revision etcd no longer has: from now
                        // on (every waiter looks again).
                        if e.contains("compact") {
                            from = 0;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// The line of waiter key `key` changed.
    fn changed(&self, key: &[u8]) {
        let Some(line) = key.strip_prefix(self.prefix.as_slice()).and_then(|rest| {
            rest.iter()
                .position(|&b| b == LINE_END)
                .map(|at| &rest[..at])
        }) else {
            return;
        };
        let line = String::from_utf8_lossy(line).into_owned();
        let mut changed = lock(&self.changed);
        *changed.lines.entry(line).or_default() += 1;
        self.wake.notify_all();
    }

    fn changed_all(&self) {
        lock(&self.changed).all += 1;
        self.wake.notify_all();
    }

    /// Where `resource`'s line stands now.
    pub fn mark(&self, resource: &str) -> Mark {
        self.mark_of(&lock(&self.changed), resource)
    }

    /// Waits until `resource`'s line changed since `mark`, or `until`;
    /// whether it changed.
    pub fn wait_change(&self, resource: &str, mark: Mark, until: Instant) -> bool {
        let mut changed = lock(&self.changed);
        loop {
            if self.mark_of(&changed, resource) != mark {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopping.load(Ordering::Relaxed) {
                return false;
            }
            changed = self
                .wake
                .wait_timeout(changed, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn mark_of(&self, changed: &Changed, resource: &str) -> Mark {
        Mark {
            line: changed.lines.get(resource).copied().unwrap_or(0),
            all: changed.all,
        }
    }

    /// Sleeps `how_long` unless the host stops; whether it stops.
    fn pause(&self, how_long: Duration) -> bool {
        let changed = lock(&self.changed);
        let _ = self.wake.wait_timeout_while(changed, how_long, |_| {
            !self.stopping.load(Ordering::Relaxed)
        });
        self.stopping.load(Ordering::Relaxed)
    }

    /// Stops the threads, and ends the session: this host's waiters leave
    /// every line at once.
    pub fn stop(&self, etcd: &dyn Store) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_all();
        if let Some(lease) = lock(&self.session).take()
            && let Err(e) = etcd.lease_revoke(lease, Instant::now() + KEEP_ALIVE)
        {
            tracing::warn!("ending this host's etcd session: {e}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
