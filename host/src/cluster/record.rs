//! Locks and lock-delays as cluster mode keeps them in etcd: one JSON
//! value per key, with when it was written (by its writer's clock) and the
//! id of the request that wrote it.
//!
//! A lock's fencing token is the etcd revision of the write that granted
//! it: a fresh lock is written with token 0, read back as its key's
//! `mod_revision`; a renewal writes the token it keeps.

use crate::component::{LockDelay, LockInfo};
use crate::etcd::KeyValue;
use serde_json::{Value, json};

/// A recorded lock.
#[derive(Debug, Clone)]
pub struct LockRecord {
    pub lock: LockInfo,
    pub written_ms: u64,
    pub request: String,
}

/// A recorded lock-delay.
#[derive(Debug, Clone)]
pub struct DelayRecord {
    pub delay: LockDelay,
    pub written_ms: u64,
    pub request: String,
}

fn u64_of(value: &Value, field: &str) -> Result<u64, String> {
    value
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("a record without {field}: {value}"))
}

fn str_of(value: &Value, field: &str) -> Result<String, String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("a record without {field}: {value}"))
}

impl LockRecord {
    /// The value to write; `fresh` leaves the token to the write's
    /// revision.
    pub fn encode(lock: &LockInfo, fresh: bool, written_ms: u64, request: &str) -> Vec<u8> {
        json!({
            "client": lock.client,
            "token": if fresh { 0 } else { lock.token },
            "acquired_ms": lock.acquired_ms,
            "ttl_ms": lock.ttl_ms,
            "expires_ms": lock.expires_ms,
            "written_ms": written_ms,
            "request": request,
        })
        .to_string()
        .into_bytes()
    }

    /// The record of `resource` read as `kv`.
    pub fn decode(resource: &str, kv: &KeyValue) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        let token = match u64_of(&value, "token")? {
            0 => u64::try_from(kv.mod_revision).map_err(|e| e.to_string())?,
            token => token,
        };
        Ok(Self {
            lock: LockInfo {
                resource: resource.to_owned(),
                client: str_of(&value, "client")?,
                token,
                acquired_ms: u64_of(&value, "acquired_ms")?,
                ttl_ms: value.get("ttl_ms").and_then(Value::as_u64),
                expires_ms: value.get("expires_ms").and_then(Value::as_u64),
            },
            written_ms: u64_of(&value, "written_ms")?,
            request: str_of(&value, "request")?,
        })
    }
}

impl DelayRecord {
    pub fn encode(delay: &LockDelay, written_ms: u64, request: &str) -> Vec<u8> {
        json!({
            "client": delay.client,
            "until_ms": delay.until_ms,
            "forget_ms": delay.forget_ms,
            "written_ms": written_ms,
            "request": request,
        })
        .to_string()
        .into_bytes()
    }

    pub fn decode(kv: &KeyValue) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        Ok(Self {
            delay: LockDelay {
                client: str_of(&value, "client")?,
                until_ms: u64_of(&value, "until_ms")?,
                forget_ms: u64_of(&value, "forget_ms")?,
            },
            written_ms: u64_of(&value, "written_ms")?,
            request: str_of(&value, "request")?,
        })
    }
}
