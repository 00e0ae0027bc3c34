//! The explorer's history and its checks. Every call a client made is
//! recorded with when it was asked, when (and whether) its client heard
//! the answer, and what the host finally answered; every stretch of time
//! a client believed it held a lock is recorded as a hold. The checks
//! then say what a lock service must never do:
//!
//! - two clients hold one lock at once (by their holds, and by a fenced
//!   register every holder writes its token to);
//! - tokens of one resource go back in real-time order;
//! - a lock is seen held by a client whose calls cannot explain it
//!   (handed to a caller that was told no, or never asked; a call
//!   answered "did not happen" that happened);
//! - an acknowledged release is undone;
//! - a client is told it holds a lock whose lease had run out before it
//!   asked;
//! - a holder loses its lock while its lease runs and nobody broke it.

use lockd::component::LockInfo;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds of the wall clock: lock leases are wall-clock times, so
/// the history is kept in the same clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Acquire { wait: bool },
    Lock,
    Release(u64),
    Unlock,
    Renew(u64),
    Status,
    Break,
}

/// What a host finally answered.
#[derive(Debug, Clone)]
pub enum Outcome {
    Lock(LockInfo),
    Done,
    Status(Option<LockInfo>),
    /// Refused by the rules; a holder or waiter it names, if any.
    Refused(String, Option<String>),
    /// Fault 7: the change did not happen.
    NotApplied(String),
    /// Fault 7: the outcome is unknown.
    Unknown(String),
    /// A wait that ended without the lock (timed out, caller gone).
    Ended(String),
}

impl Outcome {
    /// Whether the call may have taken or changed something without
    /// saying so.
    pub fn open(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Lock(l) => write!(
                f,
                "lock {} token {} acquired {} expires {:?}",
                l.client, l.token, l.acquired_ms, l.expires_ms
            ),
            Outcome::Done => write!(f, "done"),
            Outcome::Status(None) => write!(f, "free"),
            Outcome::Status(Some(l)) => write!(
                f,
                "held by {} token {} acquired {} expires {:?}",
                l.client, l.token, l.acquired_ms, l.expires_ms
            ),
            Outcome::Refused(why, _) => write!(f, "refused: {why}"),
            Outcome::NotApplied(why) => write!(f, "did not happen: {why}"),
            Outcome::Unknown(why) => write!(f, "unknown: {why}"),
            Outcome::Ended(why) => write!(f, "ended: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallRecord {
    pub client: String,
    pub host: usize,
    pub resource: String,
    pub what: What,
    pub request_id: Option<String>,
    pub asked: u64,
    /// When the host answered.
    pub finished: u64,
    /// Whether the client was still there to hear it.
    pub heard: bool,
    pub outcome: Outcome,
}

impl std::fmt::Display for CallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}..{} {} {:?} {:?} on host {} (id {:?}){}: {}",
            self.asked,
            self.finished,
            self.client,
            self.what,
            self.resource,
            self.host,
            self.request_id,
            if self.heard { "" } else { ", not heard" },
            self.outcome
        )
    }
}

/// A stretch of time a client believed it held a lock.
#[derive(Debug, Clone)]
pub struct Hold {
    pub client: String,
    pub resource: String,
    pub token: Option<u64>,
    pub from: u64,
    pub to: u64,
}

/// A refusal a holder got while it believed it held the lock with a
/// lease still running.
#[derive(Debug, Clone)]
pub struct Lost {
    pub client: String,
    pub resource: String,
    pub since: u64,
    pub asked: u64,
    /// When it heard the refusal.
    pub answered: u64,
    pub why: String,
}

#[derive(Default)]
pub struct History {
    pub calls: Mutex<Vec<CallRecord>>,
    pub holds: Mutex<Vec<Hold>>,
    pub lost: Mutex<Vec<Lost>>,
    /// The highest token written per resource, and writes refused.
    register: Mutex<HashMap<String, u64>>,
    pub fenced_out: Mutex<Vec<String>>,
}

impl History {
    pub fn call(&self, record: CallRecord) {
        self.calls.lock().unwrap().push(record);
    }

    pub fn hold(&self, hold: Hold) {
        self.holds.lock().unwrap().push(hold);
    }

    /// A holder's write to the fenced register with its token.
    pub fn write_register(&self, client: &str, resource: &str, token: u64) {
        let mut highest = self.register.lock().unwrap();
        let seen = highest.entry(resource.to_owned()).or_default();
        if token < *seen {
            self.fenced_out.lock().unwrap().push(format!(
                "{client} wrote {resource:?} with token {token} after token {seen}"
            ));
        } else {
            *seen = token;
        }
    }

    /// Everything wrong with the history; `end` is the locks held at the
    /// end, read when every call was over.
    pub fn violations(&self, end: &[LockInfo], end_at: u64) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        let holds = self.holds.lock().unwrap();
        let mut found = Vec::new();
        found.extend(self.fenced_out.lock().unwrap().iter().cloned());
        let breaks: Vec<&CallRecord> = calls
            .iter()
            .filter(|c| {
                c.what == What::Break
                    && !matches!(c.outcome, Outcome::Refused(..) | Outcome::NotApplied(_))
            })
            .collect();
        two_holders(&holds, &breaks, &mut found);
        tokens_in_order(&calls, &mut found);
        unexplained(&calls, end, end_at, &mut found);
        releases_undone(&calls, end, end_at, &mut found);
        expired_grants(&calls, &mut found);
        stale_tokens_regranted(&calls, &mut found);
        for lost in self.lost.lock().unwrap().iter() {
            let broken = breaks
                .iter()
                .any(|b| b.resource == lost.resource && b.asked <= lost.answered);
            if !broken {
                found.push(format!(
                    "{} lost {:?} (held since {}) while its lease ran: {} (asked at {})",
                    lost.client, lost.resource, lost.since, lost.why, lost.asked
                ));
            }
        }
        found
    }
}

/// Two clients' holds of one resource overlap (a hold ends where a break
/// of that resource began, or where it began itself if a break was under
/// way then: breaking takes the lock away by design).
fn two_holders(holds: &[Hold], breaks: &[&CallRecord], found: &mut Vec<String>) {
    let end = |h: &Hold| {
        breaks
            .iter()
            .filter(|b| b.resource == h.resource && b.finished > h.from && b.asked < h.to)
            .map(|b| b.asked.max(h.from))
            .min()
            .unwrap_or(h.to)
    };
    for (i, x) in holds.iter().enumerate() {
        for y in &holds[i + 1..] {
            if x.resource == y.resource
                && x.client != y.client
                && x.from < end(y)
                && y.from < end(x)
            {
                found.push(format!(
                    "two holders of {:?} at once: {} (token {:?}) and {} (token {:?})",
                    x.resource, x.client, x.token, y.client, y.token
                ));
            }
        }
    }
}

/// The locks granted, as their clients heard them.
fn grants(calls: &[CallRecord]) -> impl Iterator<Item = (&CallRecord, &LockInfo)> {
    calls.iter().filter_map(|c| match (&c.what, &c.outcome) {
        (What::Acquire { .. }, Outcome::Lock(lock)) if c.heard => Some((c, lock)),
        _ => None,
    })
}

/// A grant answered before another was asked has a lower token (the same
/// one only for the same client's own lock).
fn tokens_in_order(calls: &[CallRecord], found: &mut Vec<String>) {
    let all: Vec<_> = grants(calls).collect();
    for (x, xl) in &all {
        for (y, yl) in &all {
            if x.resource != y.resource || x.finished >= y.asked {
                continue;
            }
            let same = x.client == y.client && xl.token == yl.token;
            if yl.token < xl.token || (yl.token == xl.token && !same) {
                found.push(format!(
                    "token {} of {} on {:?} after token {} of {}",
                    yl.token, y.client, y.resource, xl.token, x.client
                ));
            }
        }
    }
}

/// Whether `client` holding `resource` (with `token` taken at
/// `acquired_ms`, if known), seen by a look asked at `asked` and answered
/// at `seen`, has a call to explain it: one answered with that lock, one
/// answered "done" (`lock`) that took it, or one whose outcome is open or
/// that was still running, asked before the lock was taken. Only a
/// waiting acquire whose outcome is open may be handed a lock after it
/// ended (its place in line may be left behind).
fn explained(
    calls: &[CallRecord],
    client: &str,
    resource: &str,
    token: Option<u64>,
    acquired_ms: Option<u64>,
    (asked, seen): (u64, u64),
) -> bool {
    // Milliseconds of the lock against microseconds of the calls.
    let taken_after = |at: u64| acquired_ms.is_none_or(|ms| ms * 1000 + 1000 >= at);
    let taken_before = |at: u64| acquired_ms.is_none_or(|ms| ms * 1000 <= at + 1000);
    calls.iter().any(|c| {
        c.client == client
            && c.resource == resource
            && matches!(c.what, What::Acquire { .. } | What::Lock)
            && c.asked < seen
            && match &c.outcome {
                Outcome::Lock(lock) => token.is_none_or(|t| t == lock.token),
                Outcome::Unknown(_) if c.what == (What::Acquire { wait: true }) => {
                    taken_after(c.asked)
                }
                Outcome::Done | Outcome::Unknown(_) => {
                    taken_after(c.asked) && taken_before(c.finished)
                }
                _ => c.finished > asked && taken_after(c.asked),
            }
    })
}

/// Every holder seen (by a status, a refusal naming it, the end's read)
/// has a call to explain it.
fn unexplained(calls: &[CallRecord], end: &[LockInfo], end_at: u64, found: &mut Vec<String>) {
    struct Look<'a> {
        client: &'a str,
        resource: &'a str,
        lock: Option<&'a LockInfo>,
        asked: u64,
        seen: u64,
        how: String,
    }
    let mut looks = Vec::new();
    for c in calls {
        let (client, lock) = match &c.outcome {
            Outcome::Status(Some(lock)) => (lock.client.as_str(), Some(lock)),
            Outcome::Refused(_, Some(named)) => (named.as_str(), None),
            _ => continue,
        };
        let how = format!("{:?} by {} on host {}", c.what, c.client, c.host);
        let (resource, asked, seen) = (c.resource.as_str(), c.asked, c.finished);
        looks.push(Look {
            client,
            resource,
            lock,
            asked,
            seen,
            how,
        });
    }
    for lock in end {
        looks.push(Look {
            client: &lock.client,
            resource: &lock.resource,
            lock: Some(lock),
            asked: end_at,
            seen: end_at,
            how: "the read at the end".to_owned(),
        });
    }
    for look in looks {
        let token = look.lock.map(|l| l.token);
        let acquired = look.lock.map(|l| l.acquired_ms);
        let when = (look.asked, look.seen);
        if !explained(calls, look.client, look.resource, token, acquired, when) {
            found.push(format!(
                "{} seen holding (or waiting for) {:?} (token {token:?}, acquired {acquired:?}, \
                 {}) with no call of its to explain it",
                look.client, look.resource, look.how
            ));
        }
    }
}

/// After a release or unlock was acknowledged, its lock is never seen or
/// granted again.
fn releases_undone(calls: &[CallRecord], end: &[LockInfo], end_at: u64, found: &mut Vec<String>) {
    for r in calls {
        let token = match (&r.what, &r.outcome) {
            (What::Release(token), Outcome::Done) if r.heard => Some(*token),
            (What::Unlock, Outcome::Done) if r.heard => None,
            _ => continue,
        };
        // A take of its whose outcome is open may land later, even after
        // this (at its host's time of deciding): a lock it could have
        // taken is not the one given up.
        let open_take = |l: &LockInfo| {
            calls.iter().any(|c| {
                c.client == r.client
                    && c.resource == r.resource
                    && c.outcome.open()
                    && matches!(c.what, What::Acquire { .. } | What::Lock)
                    && l.acquired_ms * 1000 + 1000 >= c.asked
                    && l.acquired_ms * 1000 <= c.finished + 1000
            })
        };
        // The lock it gave up: that token, or (an unlock) any lock of its
        // taken before it asked.
        let given_up = |l: &LockInfo| {
            l.resource == r.resource
                && l.client == r.client
                && match token {
                    Some(token) => l.token == token,
                    None => l.acquired_ms * 1000 + 1000 < r.asked && !open_take(l),
                }
        };
        // (A break's answer names the lock it meant to break, which may
        // be what its host last saw.)
        let again = calls
            .iter()
            .filter(|c| c.asked > r.finished && c.what != What::Break)
            .find_map(|c| match &c.outcome {
                Outcome::Status(Some(l)) | Outcome::Lock(l) if given_up(l) => Some(l),
                _ => None,
            });
        let at_end = end.iter().find(|l| given_up(l) && end_at > r.finished);
        if let Some(held) = again.or(at_end) {
            found.push(format!(
                "{} gave up {:?} ({:?} asked at {}, token {token:?}) and it was held again: \
                 token {} acquired {}",
                r.client, r.resource, r.what, r.asked, held.token, held.acquired_ms
            ));
        }
    }
}

/// A lock whose lease ran out is nobody's: asked for again by its old
/// holder, it is a fresh lock (a new token), never the old one with its
/// lease made up. The lease a token last had is the latest its client
/// was answered; a call on it whose outcome is open might have
/// lengthened it, so it is then not judged.
fn stale_tokens_regranted(calls: &[CallRecord], found: &mut Vec<String>) {
    for (g, lock) in grants(calls) {
        let before = calls
            .iter()
            .filter(|c| c.client == g.client && c.resource == g.resource && c.asked < g.asked);
        let mut lease_ended = Some(0);
        for c in before {
            match &c.outcome {
                Outcome::Lock(l) if l.token == lock.token && c.finished < g.asked => {
                    lease_ended = match (lease_ended, l.expires_ms) {
                        (Some(a), Some(b)) => Some(a.max(b * 1000)),
                        _ => None,
                    };
                }
                outcome if outcome.open() || c.finished >= g.asked => lease_ended = None,
                _ => {}
            }
        }
        if let Some(ended) = lease_ended
            && ended > 0
            && ended < g.asked
        {
            found.push(format!(
                "{} given token {} of {:?} again ({:?}), {} ms after its lease ran out",
                g.client,
                lock.token,
                g.resource,
                g.request_id,
                (g.asked - ended) / 1000
            ));
        }
    }
}

/// Nobody is told it holds a lock whose lease ran out before it asked.
fn expired_grants(calls: &[CallRecord], found: &mut Vec<String>) {
    for c in calls {
        if let Outcome::Lock(lock) = &c.outcome
            && matches!(c.what, What::Acquire { .. } | What::Renew(_))
            && lock.expires_ms.is_some_and(|at| at * 1000 < c.asked)
        {
            found.push(format!(
                "{} told it holds {:?} (token {}) whose lease ended {} ms before it asked",
                c.client,
                lock.resource,
                lock.token,
                (c.asked / 1000).saturating_sub(lock.expires_ms.unwrap_or(0))
            ));
        }
    }
}
