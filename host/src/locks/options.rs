//! How a lock directory is opened and what opening it found, and the
//! options of an acquire.

use std::time::Duration;

/// When a change counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// On disk (journal synced) before the call returns; survives power loss
    /// and `kill -9`. Concurrent changes share one sync.
    #[default]
    Always,
    /// In the journal and the lock files before the call returns, synced
    /// when the operating system decides, as gocept.lockd did: survives
    /// `kill -9` of the daemon, not power loss or an operating system crash.
    None,
}

impl Durability {
    /// The name `--sync` takes.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::None => "none",
        }
    }
}

/// How to open a lock directory.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// How long a lock whose lease expired, or which was broken, stays
    /// unavailable to everyone.
    pub lock_delay: Duration,
    /// The longest a caller may wait for a lock; longer waits are cut to it.
    pub max_wait: Duration,
    /// The most callers that may wait for locks at once; more are refused
    /// at once ([`LockError::TooManyWaiters`]).
    pub max_waiters: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            lock_delay: Duration::from_secs(5),
            max_wait: Duration::from_secs(300),
            max_waiters: 10_000,
        }
    }
}

/// What opening found in the lock directory.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Locks held.
    pub held: u64,
    /// Changes replayed from the journal of an interrupted run.
    pub replayed: u64,
    /// Unknown files left alone, leftovers removed, files cut short by a
    /// power loss, lock files that could not be brought up to date.
    pub notes: Vec<String>,
}

/// How to take a lock with [`Lockd::acquire`].
#[derive(Debug, Clone, Default)]
pub struct Acquire {
    /// A lease: the lock ends by itself this long after it is taken or
    /// last renewed. None: held until released.
    pub ttl: Option<Duration>,
    /// How long to wait, in line with other waiters, for the lock to be
    /// free; zero tries once.
    pub wait: Duration,
    /// If the client holds the lock already, return it (same token)
    /// instead of failing.
    pub reentrant: bool,
    /// The caller's id of this acquire, the same for every retry of it:
    /// in cluster mode a retry, on any host, of an acquire that took the
    /// lock gets that lock (see [`Terms::request_id`]).
    pub request_id: Option<String>,
}
