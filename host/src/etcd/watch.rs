//! etcd's watch through the gateway: a stream of the changes to a range of
//! keys, one JSON object per line.

use super::stream::Stream;
use super::wire;
use super::{Etcd, EtcdError};
use serde_json::{Value, json};
use std::time::Instant;

/// A watch on one member.
pub struct Watch {
    stream: Stream,
}

/// What a watch said.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    /// The store's revision as of this answer.
    pub revision: i64,
    /// The keys written or deleted (none: the watch was made, or progress).
    pub keys: Vec<Vec<u8>>,
}

impl Etcd {
    /// Watches the keys from `key` up to `range_end` on the member after
    /// the one tried last (members in turn), from `start_revision` (0:
    /// from now).
    pub fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        deadline: Instant,
    ) -> Result<Watch, EtcdError> {
        let mut create = wire::key_range(key, range_end);
        if start_revision != 0 {
            create["start_revision"] = Value::String(start_revision.to_string());
        }
        let body = json!({ "create_request": create }).to_string();
        let member = self.next_member();
        let stream = Stream::open(
            &member.authority,
            member.tls.clone(),
            "/v3/watch",
            "Grpc-Metadata-hasleader: true\r\n",
            body.as_bytes(),
            deadline,
        )
        .map_err(EtcdError::NotApplied)?;
        Ok(Watch { stream })
    }
}

impl Watch {
    /// The next changes, or `None` if none came before `until`. Fails when
    /// the watch ends (the member went away, or etcd cancelled it: its
    /// start revision was compacted); watch again then.
    pub fn next(&mut self, until: Instant) -> Result<Option<Changes>, String> {
        let Some(line) = self.stream.next_line(until)? else {
            return Ok(None);
        };
        let answer: Value = serde_json::from_slice(&line).map_err(|e| e.to_string())?;
        let result = answer
            .get("result")
            .ok_or_else(|| format!("the watch failed: {answer}"))?;
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            return Err(format!("etcd ended the watch: {result}"));
        }
        let keys = match result.get("events").and_then(Value::as_array) {
            None => Vec::new(),
            Some(events) => events
                .iter()
                .filter_map(|event| event.get("kv"))
                .map(|kv| wire::bytes(kv, "key"))
                .collect::<Result<_, String>>()?,
        };
        Ok(Some(Changes {
            revision: wire::header_revision(result)?,
            keys,
        }))
    }
}
