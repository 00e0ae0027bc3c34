//! The component's vocabulary: requests, replies, failures and settings,
//! as the lock table takes and gives them (the WIT's, in Rust).

use crate::lease::LockInfo;

/// A failure of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    AlreadyLocked(String),
    /// Free, but its last lock expired or was broken less than the
    /// lock-delay ago: milliseconds left.
    CoolingDown(u64),
    NotLocked,
    NotOwner(String),
    InvalidName(String),
    /// The asker's lease ran out.
    LeaseExpired,
    /// The token given is not the current holder's.
    StaleToken,
    Io(String),
}

/// When a change is durable; see the WIT `durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Always,
    None,
}

/// How the directory is opened; see the WIT `options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub durability: Durability,
    /// How long an expired or broken lock stays unavailable.
    pub lock_delay_ms: u64,
}

/// One request of a batch; see the WIT `request`.
#[derive(Debug, Clone)]
pub enum Request {
    Lock {
        resource: String,
        client: String,
    },
    Unlock {
        resource: String,
        client: String,
    },
    Holder {
        resource: String,
    },
    Acquire {
        resource: String,
        client: String,
        ttl_ms: Option<u64>,
        reentrant: bool,
    },
    Release {
        resource: String,
        client: String,
        token: Option<u64>,
    },
    Renew {
        resource: String,
        client: String,
        ttl_ms: u64,
        token: Option<u64>,
    },
    Status {
        resource: String,
    },
    Check {
        resource: String,
        token: u64,
    },
    Break {
        resource: String,
    },
    List {
        prefix: String,
        after: Option<String>,
        limit: Option<u32>,
    },
    Count {
        prefix: String,
    },
    Sweep,
}

/// The result of one successful request; see the WIT `reply`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    Holder(Option<String>),
    Lock(LockInfo),
    Status(Option<LockInfo>),
    Valid(bool),
    Locks(Vec<LockInfo>),
    Count(u64),
    Swept(Swept),
}

/// What a sweep did; see the WIT `swept`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub expired: Vec<LockInfo>,
    pub available: Vec<String>,
    pub next_deadline_ms: Option<u64>,
    pub now_ms: u64,
}

/// What opening found; see the WIT `open-report`.
#[derive(Debug, Default)]
pub struct Report {
    pub held: u64,
    pub replayed: u64,
    pub notes: Vec<String>,
}
