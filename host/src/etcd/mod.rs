//! A client for etcd v3 through its JSON gateway (`/v3/...` on every
//! member's client port), blocking, with deadlines and failover between
//! members. It tells a request that surely did not happen from one whose
//! outcome is unknown, which is what a lock service must know before it
//! answers.
//!
//! Every request carries `hasleader`, so a member cut off from the quorum
//! refuses at once instead of waiting for a leader.

mod http;
mod stream;
mod tls;
mod watch;
pub mod wire;

use http::{Connection, Failure};
use rustls::ClientConfig;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
pub use tls::TlsFiles;
pub use watch::{Changes, Watch};
pub use wire::{Compare, KeyValue, Op, OpResult, Target, TxnResult};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// The request surely did not happen: no member could be reached, or
    /// one refused it before acting on it (no leader, a malformed
    /// request).
    NotApplied(String),
    /// It may have happened (or may yet): sent, and then no answer within
    /// the deadline, or etcd said it timed out. Read before assuming
    /// either way.
    Unknown(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::NotApplied(why) => write!(f, "etcd did not act on it: {why}"),
            EtcdError::Unknown(why) => write!(f, "etcd may or may not have acted on it: {why}"),
        }
    }
}

/// What a member says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Its id.
    pub member: u64,
    /// The id of the leader it follows (its own if it leads).
    pub leader: u64,
}

/// The members of one etcd cluster.
pub struct Etcd {
    members: Vec<Member>,
    /// The member tried first: the last that answered.
    current: AtomicUsize,
    /// How long one try on one member may take.
    try_limit: Duration,
    /// Requests sent to a member (tries), and those that got no answer
    /// or an error.
    pub tries: AtomicU64,
    pub failed_tries: AtomicU64,
    /// Watches made, to choose the member of the next.
    watched: AtomicUsize,
}

struct Member {
    authority: String,
    tls: Option<Arc<ClientConfig>>,
    /// Idle kept-alive connections.
    idle: Mutex<Vec<Connection>>,
}

/// How long one try on one member may take unless told otherwise.
const TRY_LIMIT: Duration = Duration::from_secs(1);

/// How long members may all refuse (no leader) before a request gives up
/// ahead of its deadline: longer than a leader election takes (etcd's
/// default election timeout is 1 s).
const ELECTION: Duration = Duration::from_secs(2);

impl Etcd {
    /// A client for the members at `urls` (`http://host:port`).
    pub fn new(urls: &[String]) -> Result<Self, String> {
        Self::with_tls(urls, None)
    }

    /// A client for the members at `urls`: `https://host:port` with `tls`,
    /// `http://host:port` without.
    pub fn with_tls(urls: &[String], tls: Option<Arc<ClientConfig>>) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        let members = urls
            .iter()
            .map(|url| {
                let authority = url
                    .strip_prefix(scheme)
                    .ok_or_else(|| match &tls {
                        Some(_) => format!("{url:?}: with TLS to etcd, endpoints are https://"),
                        None if url.starts_with("https://") => {
                            format!("{url:?}: https:// endpoints need --etcd-ca")
                        }
                        None => format!("{url:?} is not http://host:port"),
                    })?
                    .trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(format!("{url:?} is not {scheme}host:port"));
                }
                Ok(Member {
                    authority: authority.to_owned(),
                    tls: tls.clone(),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            members,
            current: AtomicUsize::new(0),
            try_limit: TRY_LIMIT,
            tries: AtomicU64::new(0),
            failed_tries: AtomicU64::new(0),
            watched: AtomicUsize::new(0),
        })
    }

    /// The members' URLs, comma-separated, for people.
    pub fn endpoints(&self) -> String {
        let scheme = match self.members.first().is_some_and(|m| m.tls.is_some()) {
            true => "https",
            false => "http",
        };
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{scheme}://{}", m.authority))
            .collect();
        urls.join(", ")
    }

    /// The same client, giving each member `limit` per try.
    pub fn with_try_limit(self, limit: Duration) -> Self {
        Self {
            try_limit: limit,
            ..self
        }
    }

    /// The keys from `key` up to `range_end` (empty: `key` alone), read
    /// linearizably, and the store's revision.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let body = wire::key_range(key, range_end);
        let answer = self.call("/v3/kv/range", &body, true, deadline)?;
        let kvs = wire::kvs(&answer).map_err(EtcdError::Unknown)?;
        let revision = wire::header_revision(&answer).map_err(EtcdError::Unknown)?;
        Ok((kvs, revision))
    }

    /// At most `limit` keys from `key` up to `range_end`, as they were at
    /// `revision` (0: now, read linearizably); returns them, the revision
    /// read, and whether more keys follow.
    pub fn range_page(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64, bool), EtcdError> {
        let mut body = wire::key_range(key, range_end);
        body["limit"] = Value::String(limit.to_string());
        if revision != 0 {
            body["revision"] = Value::String(revision.to_string());
        }
        let answer = self.call("/v3/kv/range", &body, true, deadline)?;
        let kvs = wire::kvs(&answer).map_err(EtcdError::Unknown)?;
        let read = match revision {
            0 => wire::header_revision(&answer).map_err(EtcdError::Unknown)?,
            revision => revision,
        };
        let more = answer.get("more").and_then(Value::as_bool) == Some(true);
        Ok((kvs, read, more))
    }

    /// Runs `success` if every comparison holds, `failure` otherwise, as
    /// one atomic step.
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
        deadline: Instant,
    ) -> Result<TxnResult, EtcdError> {
        let body = wire::txn_json(compares, success, failure);
        let read_only = !success.iter().chain(failure).any(Op::writes);
        let answer = self.call("/v3/kv/txn", &body, read_only, deadline)?;
        wire::txn_result(&answer).map_err(EtcdError::Unknown)
    }

    /// A new lease of `ttl_s` seconds; returns its id and granted ttl.
    pub fn lease_grant(&self, ttl_s: i64, deadline: Instant) -> Result<(i64, i64), EtcdError> {
        let body = json!({ "TTL": ttl_s.to_string() });
        let answer = self.call("/v3/lease/grant", &body, false, deadline)?;
        let id = wire::int(&answer, "ID").map_err(EtcdError::Unknown)?;
        let ttl = wire::int(&answer, "TTL").map_err(EtcdError::Unknown)?;
        Ok((id, ttl))
    }

    /// Renews lease `id`; returns its ttl, 0 if it no longer exists.
    pub fn lease_keep_alive(&self, id: i64, deadline: Instant) -> Result<i64, EtcdError> {
        let body = json!({ "ID": id.to_string() });
        // Renewing again is harmless: a retry is as good as a first try.
        let answer = self.call("/v3/lease/keepalive", &body, true, deadline)?;
        let result = answer.get("result").unwrap_or(&answer);
        wire::int(result, "TTL").map_err(EtcdError::Unknown)
    }

    /// Ends lease `id`, deleting the keys attached to it.
    pub fn lease_revoke(&self, id: i64, deadline: Instant) -> Result<(), EtcdError> {
        let body = json!({ "ID": id.to_string() });
        match self.call("/v3/lease/revoke", &body, true, deadline) {
            Ok(_) => Ok(()),
            Err(EtcdError::NotApplied(why)) if why.contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// etcd's own lock service: waits until `name` is locked for `lease`;
    /// returns the key that holds the lock.
    pub fn lock(&self, name: &[u8], lease: i64, deadline: Instant) -> Result<Vec<u8>, EtcdError> {
        let body = json!({ "name": wire::b64(name), "lease": lease.to_string() });
        let answer = self.call("/v3/lock/lock", &body, false, deadline)?;
        wire::bytes(&answer, "key").map_err(EtcdError::Unknown)
    }

    /// Releases the lock held by `key`.
    pub fn unlock(&self, key: &[u8], deadline: Instant) -> Result<(), EtcdError> {
        let body = json!({ "key": wire::b64(key) });
        self.call("/v3/lock/unlock", &body, true, deadline)
            .map(drop)
    }

    /// The status of the member that answers first: its id and its
    /// leader's.
    pub fn status(&self, deadline: Instant) -> Result<Status, EtcdError> {
        let answer = self.call("/v3/maintenance/status", &json!({}), true, deadline)?;
        let id = |value: Option<&Value>| -> Result<u64, EtcdError> {
            value
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| EtcdError::Unknown(format!("a status without ids: {answer}")))
        };
        Ok(Status {
            member: id(answer.get("header").and_then(|h| h.get("member_id")))?,
            leader: id(answer.get("leader"))?,
        })
    }

    /// The next member for a long-lived request (a watch): each in turn.
    fn next_member(&self) -> &Member {
        let next = self.watched.fetch_add(1, Ordering::Relaxed);
        &self.members[next % self.members.len()]
    }

    /// Posts `body` to `path`, trying members in turn from the current
    /// one until `deadline`. A request that was sent and not answered is
    /// tried again on another member only if `retry_safe` (a read, or a
    /// write that may happen twice); otherwise its outcome is unknown.
    fn call(
        &self,
        path: &str,
        body: &Value,
        retry_safe: bool,
        deadline: Instant,
    ) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let first = self.current.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut last = None;
        let mut tries = 0;
        // Whether every member tried in this round refused at once (no
        // leader, or not reachable): a cluster without a quorum, unless an
        // election is under way.
        let mut all_refused = true;
        while Instant::now() < deadline {
            let index = (first + tries) % self.members.len();
            tries += 1;
            let member = &self.members[index];
            let try_deadline = deadline.min(Instant::now() + self.try_limit);
            self.tries.fetch_add(1, Ordering::Relaxed);
            let answer = member.post(path, body.as_bytes(), try_deadline);
            if answer.is_err() {
                self.failed_tries.fetch_add(1, Ordering::Relaxed);
            }
            match answer {
                Ok(answer) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(EtcdError::Unknown(why)) if !retry_safe => {
                    return Err(EtcdError::Unknown(why));
                }
                Err(e) => {
                    all_refused &= matches!(e, EtcdError::NotApplied(_));
                    last = Some(e);
                }
            }
            if tries % self.members.len() == 0 {
                // Every member tried. Refused by all for longer than an
                // election takes: no quorum, fail now rather than at the
                // deadline.
                if all_refused && started.elapsed() >= ELECTION {
                    break;
                }
                all_refused = true;
                // Give the cluster a moment before the next round.
                std::thread::sleep(
                    Duration::from_millis(50)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
        // (An unknown outcome of a request not safe to retry returned at
        // once, above.)
        Err(match last {
            Some(EtcdError::NotApplied(why) | EtcdError::Unknown(why)) => {
                EtcdError::NotApplied(format!("no member could act on it; the last: {why}"))
            }
            None => EtcdError::NotApplied("the deadline had passed".into()),
        })
    }
}

impl Member {
    /// One try: the answer's JSON, or why there is none.
    fn post(&self, path: &str, body: &[u8], deadline: Instant) -> Result<Value, EtcdError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut connection =
            idle.unwrap_or_else(|| Connection::new(&self.authority, self.tls.clone()));
        let answer = connection
            .post(path, "Grpc-Metadata-hasleader: true\r\n", body, deadline)
            .map_err(|failure| match failure {
                Failure::NotSent(why) => EtcdError::NotApplied(why),
                Failure::NoAnswer(why) => EtcdError::Unknown(why),
            })?;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
        let json: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            EtcdError::Unknown(format!(
                "{}: an answer that is not JSON (HTTP {}): {e}",
                self.authority, answer.status
            ))
        })?;
        if answer.status == 200 && json.get("error").is_none() {
            return Ok(json);
        }
        let message = json
            .get("message")
            .or_else(|| json.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("an error without a message")
            .to_owned();
        Err(error_for(&self.authority, &message))
    }
}

/// What error `message`, answered by the member at `authority`, says of
/// the request it answers.
pub fn error_for(authority: &str, message: &str) -> EtcdError {
    let why = format!("{authority}: {message}");
    if surely_not_applied(message) {
        EtcdError::NotApplied(why)
    } else {
        EtcdError::Unknown(why)
    }
}

/// etcd's errors that say a request changed nothing: refused before it
/// was proposed (no leader, too many requests, a malformed request), or
/// rejected whole when applied (a lease or permission missing). Not
/// "database space exceeded": etcd also answers it after applying a write
/// that filled the quota. An allow-list: any other error, known or not (a timeout, a
/// leader change, a stopping server, a cancelled request, the gateway's
/// transport errors), may follow a proposal that commits, so its outcome
/// is unknown and the request is not sent again.
const NOT_APPLIED: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: not leader",
    "etcdserver: too many requests",
    "etcdserver: request is too large",
    "etcdserver: too many operations in txn request",
    "etcdserver: duplicate key given in txn request",
    "etcdserver: key is not provided",
    "etcdserver: requested lease not found",
    "etcdserver: lease not found",
    "etcdserver: mvcc: required revision has been compacted",
    "etcdserver: mvcc: required revision is a future revision",
    "etcdserver: permission denied",
    "etcdserver: invalid auth token",
    "etcdserver: user name is empty",
    "etcdserver: authentication failed, invalid user ID or password",
    "etcdserver: not capable",
    "etcdserver: unhealthy cluster",
    "etcdserver: corrupt cluster",
];

/// Whether etcd's error `message` is one of [`NOT_APPLIED`], matched
/// whole: a text that merely contains one is not trusted.
fn surely_not_applied(message: &str) -> bool {
    NOT_APPLIED.contains(&message.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_known_to_change_nothing_are_not_applied() {
        for text in NOT_APPLIED {
            assert!(surely_not_applied(text), "{text}");
        }
        for text in [
            "etcdserver: request timed out",
            "etcdserver: request timed out, possibly due to previous leader failure",
            "etcdserver: request timed out, possibly due to connection lost",
            "etcdserver: leader changed",
            "etcdserver: server stopped",
            "etcdserver: request cancelled",
            "context deadline exceeded",
            "context canceled",
            "transport is closing",
            "etcdserver: mvcc: database space exceeded",
            "grpc: the client connection is closing",
            "an error without a message",
            "etcdserver: no leader, and then something",
            "",
        ] {
            assert!(!surely_not_applied(text), "{text}");
        }
    }

    #[test]
    fn endpoints_must_be_http_host_and_port() {
        assert!(Etcd::new(&["http://127.0.0.1:2379".into()]).is_ok());
        assert!(Etcd::new(&["http://127.0.0.1:2379/".into()]).is_ok());
        assert!(Etcd::new(&["https://127.0.0.1:2379".into()]).is_err());
        assert!(Etcd::new(&["http://h:1/x".into()]).is_err());
        assert!(Etcd::new(&[]).is_err());
    }
}
