//! A resource as cluster mode keeps it in etcd: one JSON value under
//! `<prefix>lock/<resource>` holding its lock and its lock-delay (either
//! may be absent; with neither the key is deleted), when it was last
//! written (by its writer's clock) and the id of the request that wrote it.
//! One key per resource keeps every change one guarded write of one key.
//!
//! A lock's fencing token is the token base plus the etcd revision of the
//! write that granted it: a fresh lock is written with no token but the
//! base its write was guarded by, read back as that base plus the key's
//! `mod_revision`; a later write of the same lock keeps its token.

use crate::component::{LockDelay, LockInfo};
use crate::etcd::{KeyValue, Op};
use serde_json::{Map, Value, json};

/// What is recorded of one resource.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub lock: Option<LockInfo>,
    pub delay: Option<LockDelay>,
    pub written_ms: u64,
    /// The id of the write that wrote it last (no two writes share one).
    pub request: String,
    /// The id of the take that got its lock (kept while the lock is
    /// renewed); empty without a lock.
    pub taken_by: String,
    /// The waiter key its lock was handed to, if it was handed over
    /// (kept while the lock is renewed).
    pub handed_to: String,
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

impl Record {
    /// Whether there is nothing to keep: the key is deleted.
    pub fn is_empty(&self) -> bool {
        self.lock.is_none() && self.delay.is_none()
    }

    /// The write that records it under `key`: a put of its value (see
    /// [`Record::encode`] for `fresh_base`), or the key's deletion when
    /// there is nothing to keep.
    pub fn write(&self, key: Vec<u8>, fresh_base: Option<u64>) -> Op {
        match self.is_empty() {
            true => Op::Delete {
                key,
                range_end: Vec::new(),
            },
            false => Op::Put {
                key,
                value: self.encode(fresh_base),
                lease: 0,
            },
        }
    }

    /// The value to write; with `fresh_base` (the token base) the lock is
    /// a fresh one whose token is left to the write's revision.
    pub fn encode(&self, fresh_base: Option<u64>) -> Vec<u8> {
        let mut value = Map::new();
        if let Some(lock) = &self.lock {
            value.insert(
                "lock".into(),
                json!({
                    "client": lock.client,
                    "acquired_ms": lock.acquired_ms,
                    "ttl_ms": lock.ttl_ms,
                    "expires_ms": lock.expires_ms,
                }),
            );
            // Each only when it says something: the taker's id when it is
            // not the writer's (read back as the writer's), the key the
            // lock was handed to when it was.
            let lock = value.get_mut("lock").and_then(Value::as_object_mut);
            if let Some(lock) = lock {
                if self.taken_by != self.request {
                    lock.insert("taken_by".into(), self.taken_by.clone().into());
                }
                if !self.handed_to.is_empty() {
                    lock.insert("handed_to".into(), self.handed_to.clone().into());
                }
            }
            let lock = value.get_mut("lock").and_then(Value::as_object_mut);
            if let Some(lock) = lock {
                match fresh_base {
                    Some(base) => lock.insert("base".into(), base.into()),
                    None => lock.insert("token".into(), lock_token(&self.lock).into()),
                };
            }
        }
        if let Some(delay) = &self.delay {
            value.insert(
                "delay".into(),
                json!({
                    "client": delay.client,
                    "until_ms": delay.until_ms,
                    "forget_ms": delay.forget_ms,
                }),
            );
        }
        value.insert("written_ms".into(), self.written_ms.into());
        value.insert("request".into(), self.request.clone().into());
        Value::Object(value).to_string().into_bytes()
    }

    /// The record of `resource` read as `kv`.
    pub fn decode(resource: &str, kv: &KeyValue) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        let lock = match value.get("lock") {
            None => None,
            Some(lock) => Some(LockInfo {
                resource: resource.to_owned(),
                client: str_of(lock, "client")?,
                // A token of its own (0 for a lock gocept.lockd took,
                // imported), or a fresh lock's base plus its revision.
                token: match lock.get("token") {
                    Some(_) => u64_of(lock, "token")?,
                    None => {
                        let base = u64_of(lock, "base")?;
                        let revision = u64::try_from(kv.mod_revision).map_err(|e| e.to_string())?;
                        base.checked_add(revision)
                            .ok_or_else(|| format!("a token past 2^64: {value}"))?
                    }
                },
                acquired_ms: u64_of(lock, "acquired_ms")?,
                ttl_ms: lock.get("ttl_ms").and_then(Value::as_u64),
                expires_ms: lock.get("expires_ms").and_then(Value::as_u64),
            }),
        };
        let delay = match value.get("delay") {
            None => None,
            Some(delay) => Some(LockDelay {
                client: str_of(delay, "client")?,
                until_ms: u64_of(delay, "until_ms")?,
                forget_ms: u64_of(delay, "forget_ms")?,
            }),
        };
        let request = str_of(&value, "request")?;
        // Records written before locks kept their taker's id: the last
        // writer's.
        let (taken_by, handed_to) = match value.get("lock") {
            Some(lock) => (
                str_of(lock, "taken_by").unwrap_or_else(|_| request.clone()),
                str_of(lock, "handed_to").unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        };
        Ok(Self {
            lock,
            delay,
            written_ms: u64_of(&value, "written_ms")?,
            request,
            taken_by,
            handed_to,
        })
    }
}

fn lock_token(lock: &Option<LockInfo>) -> u64 {
    lock.as_ref().map_or(0, |lock| lock.token)
}

/// The token base recorded in `kv`: a decimal number.
pub fn decode_base(kv: &KeyValue) -> Result<u64, String> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "a token base that is not a number: {:?}",
                String::from_utf8_lossy(&kv.value)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: Vec<u8>, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: b"lockd/lock/r".to_vec(),
            value,
            create_revision: mod_revision,
            mod_revision,
            version: 1,
            lease: 0,
        }
    }

    /// A record of `r` held by `c` since 5 ms, written by `request`.
    fn held(ttl_ms: Option<u64>, request: &str) -> Record {
        Record {
            lock: Some(LockInfo {
                resource: "r".into(),
                client: "c".into(),
                token: 0,
                acquired_ms: 5,
                ttl_ms,
                expires_ms: ttl_ms.map(|ttl| 5 + ttl),
            }),
            delay: None,
            written_ms: 5,
            request: request.into(),
            taken_by: request.into(),
            handed_to: String::new(),
        }
    }

    #[test]
    fn a_fresh_lock_reads_back_with_the_base_plus_its_revision_and_keeps_it() {
        let record = held(Some(1000), "h-1");
        let read = Record::decode("r", &kv(record.encode(Some(1000)), 42)).unwrap();
        assert_eq!(read.lock.as_ref().unwrap().token, 1042);
        // Written again (a renewal) at a later revision: the same token.
        let again = Record::decode("r", &kv(read.encode(None), 50)).unwrap();
        assert_eq!(format!("{:?}", again.lock), format!("{:?}", read.lock));
        assert_eq!(again.request, "h-1");
        assert!(again.delay.is_none());
    }

    #[test]
    fn a_record_of_a_delay_alone_has_no_lock() {
        let record = Record {
            lock: None,
            delay: Some(LockDelay {
                client: "c".into(),
                until_ms: 10,
                forget_ms: 20,
            }),
            written_ms: 1,
            request: "h-2".into(),
            taken_by: String::new(),
            handed_to: String::new(),
        };
        let read = Record::decode("r", &kv(record.encode(None), 3)).unwrap();
        assert!(read.lock.is_none());
        assert_eq!(format!("{:?}", read.delay), format!("{:?}", record.delay));
        assert!(Record::decode("r", &kv(b"{}".to_vec(), 3)).is_err());
    }

    #[test]
    fn an_imported_lock_of_gocept_lockd_keeps_token_0() {
        let record = held(None, "import");
        let read = Record::decode("r", &kv(record.encode(None), 42)).unwrap();
        assert_eq!(read.lock.unwrap().token, 0);
    }
}

/// A client waiting in a resource's line, as its waiter key holds it: what
/// a host handing it the lock needs to take it in its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub client: String,
    pub ttl_ms: Option<u64>,
    /// The request id its lock's record is to carry.
    pub request: String,
}

impl Waiting {
    pub fn encode(&self) -> Vec<u8> {
        json!({
            "client": self.client,
            "ttl_ms": self.ttl_ms,
            "request": self.request,
        })
        .to_string()
        .into_bytes()
    }

    pub fn decode(kv: &KeyValue) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        Ok(Self {
            client: str_of(&value, "client")?,
            ttl_ms: value.get("ttl_ms").and_then(Value::as_u64),
            request: str_of(&value, "request")?,
        })
    }
}
