//! etcd v3's requests and answers as its JSON gateway spells them: keys and
//! values in base64, 64-bit numbers as strings, fields with their default
//! value left out of answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// A key and its value as etcd keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the write that created the key (since it last did
    /// not exist).
    pub create_revision: i64,
    /// The revision of its last write.
    pub mod_revision: i64,
    /// Writes since it was created, 1 for the first.
    pub version: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
}

/// What a comparison of a transaction looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The key's `create_revision`: 0 when it does not exist.
    Create(i64),
    /// The key's `mod_revision`: 0 when it does not exist.
    Mod(i64),
    /// The key's value.
    Value(Vec<u8>),
    /// No key from `key` up to this end exists.
    NoneUpTo(Vec<u8>),
    /// Every key from `key` up to `end` was created after `revision`
    /// (holds too when there is none).
    AllCreatedAfter { end: Vec<u8>, revision: i64 },
}

/// One comparison of a transaction's guard: the key's target equals the
/// value given (or, for a range of keys, as the target says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: Target,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The keys from `key` up to `range_end` (exclusive; empty: `key`
    /// alone).
    Range { key: Vec<u8>, range_end: Vec<u8> },
    /// The oldest key (lowest create revision) from `key` up to
    /// `range_end`, if any: a range of at most one.
    Oldest { key: Vec<u8>, range_end: Vec<u8> },
    /// Writes `value` under `key`, attached to `lease` (0: none).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Deletes the keys from `key` up to `range_end` (empty: `key` alone).
    Delete { key: Vec<u8>, range_end: Vec<u8> },
    /// A transaction of its own: its guard is judged by itself, and its
    /// writes take the revision of the transaction it is part of.
    Txn {
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    },
}

impl Op {
    /// Whether it may change the store.
    pub fn writes(&self) -> bool {
        match self {
            Op::Range { .. } | Op::Oldest { .. } => false,
            Op::Put { .. } | Op::Delete { .. } => true,
            Op::Txn {
                success, failure, ..
            } => success.iter().chain(failure).any(Op::writes),
        }
    }
}

/// The answer to one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Range(Vec<KeyValue>),
    Put,
    /// How many keys were deleted.
    Delete(i64),
    /// A nested transaction's answer (its revision is the enclosing one's).
    Txn(TxnResult),
}

/// A transaction's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// The store's revision after it: the revision of its writes, if any.
    pub revision: i64,
    /// Whether every comparison held (the success branch ran).
    pub succeeded: bool,
    pub results: Vec<OpResult>,
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: all keys from the prefix on.
    vec![0]
}

pub fn b64(bytes: &[u8]) -> Value {
    Value::String(B64.encode(bytes))
}

/// `key` and, unless empty, `range_end`: the keys a range or a delete
/// covers.
pub fn key_range(key: &[u8], range_end: &[u8]) -> Value {
    let mut range = Map::new();
    range.insert("key".into(), b64(key));
    if !range_end.is_empty() {
        range.insert("range_end".into(), b64(range_end));
    }
    Value::Object(range)
}

pub fn op_json(op: &Op) -> Value {
    match op {
        Op::Range { key, range_end } => json!({ "request_range": key_range(key, range_end) }),
        Op::Oldest { key, range_end } => {
            let mut range = key_range(key, range_end);
            range["sort_order"] = "ASCEND".into();
            range["sort_target"] = "CREATE".into();
            range["limit"] = "1".into();
            json!({ "request_range": range })
        }
        Op::Put { key, value, lease } => {
            let mut put = Map::new();
            put.insert("key".into(), b64(key));
            put.insert("value".into(), b64(value));
            if *lease != 0 {
                put.insert("lease".into(), Value::String(lease.to_string()));
            }
            json!({ "request_put": put })
        }
        Op::Delete { key, range_end } => {
            json!({ "request_delete_range": key_range(key, range_end) })
        }
        Op::Txn {
            compares,
            success,
            failure,
        } => json!({ "request_txn": txn_json(compares, success, failure) }),
    }
}

pub fn compare_json(compare: &Compare) -> Value {
    let mut c = Map::new();
    c.insert("key".into(), b64(&compare.key));
    c.insert("result".into(), "EQUAL".into());
    let revision = |r: &i64| Value::String(r.to_string());
    let (target, field, value) = match &compare.target {
        Target::Create(r) => ("CREATE", "create_revision", revision(r)),
        Target::Mod(r) => ("MOD", "mod_revision", revision(r)),
        Target::Value(v) => ("VALUE", "value", b64(v)),
        // An empty range compares as one key that does not exist (every
        // revision 0).
        Target::NoneUpTo(end) => {
            c.insert("range_end".into(), b64(end));
            ("CREATE", "create_revision", revision(&0))
        }
        Target::AllCreatedAfter { end, revision: r } => {
            c.insert("range_end".into(), b64(end));
            c.insert("result".into(), "GREATER".into());
            ("CREATE", "create_revision", revision(r))
        }
    };
    c.insert("target".into(), target.into());
    c.insert(field.into(), value);
    Value::Object(c)
}

/// The body of `/v3/kv/txn`.
pub fn txn_json(compares: &[Compare], success: &[Op], failure: &[Op]) -> Value {
    json!({
        "compare": compares.iter().map(compare_json).collect::<Vec<_>>(),
        "success": success.iter().map(op_json).collect::<Vec<_>>(),
        "failure": failure.iter().map(op_json).collect::<Vec<_>>(),
    })
}

/// A 64-bit number of an answer: a string, or absent for 0.
pub fn int(value: &Value, field: &str) -> Result<i64, String> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{field} is not a number: {s:?}")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{field} is not an integer")),
        Some(other) => Err(format!("{field} is not a number: {other}")),
    }
}

pub fn bytes(value: &Value, field: &str) -> Result<Vec<u8>, String> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| format!("{field}: {e}")),
        Some(other) => Err(format!("{field} is not base64: {other}")),
    }
}

/// The store revision of an answer's header.
pub fn header_revision(answer: &Value) -> Result<i64, String> {
    int(answer.get("header").unwrap_or(&Value::Null), "revision")
}

/// The key-values of a range answer.
pub fn kvs(answer: &Value) -> Result<Vec<KeyValue>, String> {
    let Some(list) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("kvs is not a list")?;
    list.iter()
        .map(|kv| {
            Ok(KeyValue {
                key: bytes(kv, "key")?,
                value: bytes(kv, "value")?,
                create_revision: int(kv, "create_revision")?,
                mod_revision: int(kv, "mod_revision")?,
                version: int(kv, "version")?,
                lease: int(kv, "lease")?,
            })
        })
        .collect()
}

/// A transaction's answer.
pub fn txn_result(answer: &Value) -> Result<TxnResult, String> {
    let results = match answer.get("responses") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .ok_or("responses is not a list")?
            .iter()
            .map(|r| {
                if let Some(range) = r.get("response_range") {
                    Ok(OpResult::Range(kvs(range)?))
                } else if r.get("response_put").is_some() {
                    Ok(OpResult::Put)
                } else if let Some(delete) = r.get("response_delete_range") {
                    Ok(OpResult::Delete(int(delete, "deleted")?))
                } else if let Some(txn) = r.get("response_txn") {
                    Ok(OpResult::Txn(txn_result(txn)?))
                } else {
                    Err(format!("an answer of no known kind: {r}"))
                }
            })
            .collect::<Result<_, String>>()?,
    };
    Ok(TxnResult {
        // (A nested transaction's answer has a header of its own only in
        // some etcd versions: 0 when absent.)
        revision: header_revision(answer)?,
        succeeded: answer.get("succeeded").and_then(Value::as_bool) == Some(true),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"lockd/"), b"lockd0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn a_transaction_is_spelled_as_the_gateway_takes_it() {
        let compares = [Compare {
            key: b"k".to_vec(),
            target: Target::Mod(0),
        }];
        let success = [Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
        }];
        let failure = [Op::Range {
            key: b"k".to_vec(),
            range_end: Vec::new(),
        }];
        assert_eq!(
            txn_json(&compares, &success, &failure),
            json!({
                "compare": [{"key": "aw==", "result": "EQUAL", "target": "MOD", "mod_revision": "0"}],
                "success": [{"request_put": {"key": "aw==", "value": "dg==", "lease": "7"}}],
                "failure": [{"request_range": {"key": "aw=="}}],
            })
        );
    }

    #[test]
    fn answers_with_default_fields_left_out_read_as_zero_and_empty() {
        let answer = json!({
            "header": {"revision": "12"},
            "succeeded": true,
            "responses": [
                {"response_range": {"header": {}, "kvs": [{"key": "aw==", "create_revision": "5", "mod_revision": "9", "version": "2"}]}},
                {"response_put": {"header": {}}},
                {"response_delete_range": {"header": {}}},
            ]
        });
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: Vec::new(),
            create_revision: 5,
            mod_revision: 9,
            version: 2,
            lease: 0,
        };
        assert_eq!(
            txn_result(&answer),
            Ok(TxnResult {
                revision: 12,
                succeeded: true,
                results: vec![
                    OpResult::Range(vec![kv]),
                    OpResult::Put,
                    OpResult::Delete(0)
                ],
            })
        );
    }
}
