//! Why a lock operation did not happen, and the fault code each reason has
//! on the wire.

use crate::component::{GuestError, Request};
use crate::pyrepr::repr;
use std::fmt;

/// A lock operation that did not happen. `Display` gives the exact
/// gocept.lockd message where gocept.lockd had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// Someone (possibly the caller) already holds the lock.
    AlreadyLocked { holder: String },
    /// Nobody holds the lock.
    NotLocked,
    /// `holder` holds the lock, not `client`.
    NotOwner { holder: String, client: String },
    /// A resource or client name that cannot be used, and why.
    InvalidName(String),
    /// Nobody holds the lock, but its last lock expired or was broken
    /// less than the lock-delay ago: unavailable for `ms_left` more.
    CoolingDown { ms_left: u64 },
    /// `client`'s lease ran out, or its lock was broken: it holds nothing.
    LeaseExpired { client: String },
    /// The token given is not the current holder's.
    StaleToken,
    /// The lock was not free within the time the caller would wait.
    WaitTimedOut,
    /// The caller would wait, but `limit` clients wait already.
    TooManyWaiters { limit: usize },
    /// The caller waited, but the daemon is stopping.
    ShuttingDown,
    /// The caller hung up while it waited; nobody takes this answer.
    CallerGone,
    /// The lock directory could not be read or written; nothing changed.
    Storage(String),
    /// The lock component failed (a trap); it has been restarted and the
    /// operation did not happen.
    Internal(String),
    /// Cluster mode: etcd has no leader or did not answer in time. The text
    /// says whether the change surely did not happen or its outcome is
    /// unknown.
    Unavailable(String),
}

/// Fault codes of SPEC §2, as sent in `faultCode`.
pub mod code {
    pub const ALREADY_LOCKED: i32 = 1;
    pub const NOT_LOCKED: i32 = 2;
    pub const NOT_OWNER: i32 = 3;
    pub const INVALID_NAME: i32 = 4;
    pub const STALE: i32 = 5;
    pub const WAIT_TIMED_OUT: i32 = 6;
    pub const STORE_UNAVAILABLE: i32 = 7;
    pub const NOT_WELL_FORMED: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL: i32 = -32603;
    /// The caller's role may not call the method (`lockd.break_lock` needs
    /// the operator role when authentication is on).
    pub const NOT_PERMITTED: i32 = -32500;
}

impl LockError {
    /// The `faultCode` this error is reported with.
    pub fn fault_code(&self) -> i32 {
        match self {
            LockError::AlreadyLocked { .. } => code::ALREADY_LOCKED,
            LockError::NotLocked => code::NOT_LOCKED,
            LockError::NotOwner { .. } => code::NOT_OWNER,
            LockError::InvalidName(_) => code::INVALID_NAME,
            LockError::CoolingDown { .. } => code::ALREADY_LOCKED,
            LockError::LeaseExpired { .. } | LockError::StaleToken => code::STALE,
            LockError::WaitTimedOut
            | LockError::TooManyWaiters { .. }
            | LockError::ShuttingDown
            | LockError::CallerGone => code::WAIT_TIMED_OUT,
            LockError::Storage(_) | LockError::Internal(_) => code::INTERNAL,
            LockError::Unavailable(_) => code::STORE_UNAVAILABLE,
        }
    }

    /// The component's refusal of `request`.
    pub(crate) fn for_request(request: &Request, error: GuestError) -> Self {
        Self::from_guest(error, crate::requests::client(request))
    }

    /// Converts the component's error; `client` is who asked.
    pub(crate) fn from_guest(error: GuestError, client: &str) -> Self {
        match error {
            GuestError::AlreadyLocked(holder) => LockError::AlreadyLocked { holder },
            GuestError::NotLocked => LockError::NotLocked,
            GuestError::NotOwner(holder) => LockError::NotOwner {
                holder,
                client: client.to_owned(),
            },
            GuestError::InvalidName(reason) => LockError::InvalidName(reason),
            GuestError::Io(message) => LockError::Storage(message),
            GuestError::CoolingDown(ms_left) => LockError::CoolingDown { ms_left },
            GuestError::LeaseExpired => LockError::LeaseExpired {
                client: client.to_owned(),
            },
            GuestError::StaleToken => LockError::StaleToken,
        }
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::AlreadyLocked { holder } => {
                write!(f, "Resource already locked by {}", repr(holder))
            }
            LockError::NotLocked => f.write_str("Resource not locked"),
            LockError::NotOwner { holder, client } => write!(
                f,
                "Resource locked by {} cannot be unlocked by {}",
                repr(holder),
                repr(client)
            ),
            LockError::InvalidName(reason) => write!(f, "Invalid name: {reason}"),
            LockError::CoolingDown { ms_left } => write!(
                f,
                "Resource unavailable for another {:.3} s: its last lock expired or was broken",
                *ms_left as f64 / 1000.0
            ),
            LockError::LeaseExpired { client } => {
                write!(
                    f,
                    "Lease expired: {} no longer holds the lock",
                    repr(client)
                )
            }
            LockError::StaleToken => {
                f.write_str("Stale fencing token: the lock is held with another token")
            }
            LockError::WaitTimedOut => f.write_str("Timed out waiting for the lock"),
            LockError::ShuttingDown => {
                f.write_str("Not waiting for the lock: the daemon is stopping")
            }
            LockError::CallerGone => f.write_str("Not waiting for the lock: the caller has gone"),
            LockError::TooManyWaiters { limit } => write!(
                f,
                "Not waiting for the lock: {limit} clients wait already (--max-waiters)"
            ),
            LockError::Storage(message) => {
                write!(f, "Storage error, the operation did not happen: {message}")
            }
            LockError::Internal(message) => {
                write!(f, "Internal error, the operation did not happen: {message}")
            }
            LockError::Unavailable(message) => write!(f, "Lock store unavailable: {message}"),
        }
    }
}

impl std::error::Error for LockError {}
