//! Requests for the component as the XML-RPC methods and [`Lockd`]'s
//! methods build them, and their replies read back.

use super::Lock;
use crate::component::{LockRequest, ReleaseRequest, RenewRequest, Reply, Request};
use crate::error::LockError;
use std::time::Duration;

/// Logs an operator's break of `lock`: who held it, with which token, and
/// why it was broken.
pub(crate) fn audit_break(lock: &Lock, reason: &str) {
    tracing::warn!(
        target: "lockd::audit",
        resource = %lock.resource,
        holder = %lock.client,
        token = lock.token,
        %reason,
        "lock broken by an operator"
    );
}

pub(crate) fn lock_request(resource: &str, client: &str) -> LockRequest {
    LockRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
    }
}

pub(crate) fn release_request(resource: &str, client: &str, token: Option<u64>) -> Request {
    Request::Release(ReleaseRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
        token,
    })
}

pub(crate) fn renew_request(
    resource: &str,
    client: &str,
    ttl: Duration,
    token: Option<u64>,
) -> Request {
    Request::Renew(RenewRequest {
        resource: resource.to_owned(),
        client: client.to_owned(),
        ttl_ms: millis(ttl),
        token,
    })
}

/// At least one millisecond for any non-zero duration.
pub(super) fn millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

pub(crate) fn lock_reply(reply: Reply) -> Result<Lock, LockError> {
    match reply {
        Reply::Lock(info) => Ok(info),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn unexpected(reply: &Reply) -> LockError {
    LockError::Internal(format!("the lock component answered {reply:?}"))
}
