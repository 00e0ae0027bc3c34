//! The methods that reach the lock directory: each call becomes one
//! request for the component and a way to turn its reply into the value
//! the method returns.

use super::params::{Params, seconds};
use crate::auth::Role;
use crate::backend::Terms;
use crate::component::{CheckRequest, ListRequest, Reply, Request};
use crate::error::{LockError, code};
use crate::locks::{self, Acquire, Lock, Lockd};
use crate::xmlrpc::{Fault, MethodCall, Value};

/// Turns the component's reply into the method's return value.
pub type Answer = Box<dyn FnOnce(Reply) -> Result<Value, LockError> + Send>;

/// One call, ready for the lock directory.
pub struct Op {
    pub request: Request,
    /// How to run it: until when to wait for the lock to be free, and
    /// the caller's request id.
    pub terms: Terms,
    pub answer: Answer,
}

/// `call` as an [`Op`], or `None` if the method does not touch the lock
/// directory (or does not exist).
pub fn op(lockd: &Lockd, call: &MethodCall, role: Role) -> Result<Option<Op>, Fault> {
    let op = |request, answer: Answer| {
        Ok(Some(Op {
            request,
            terms: Terms::once(),
            answer,
        }))
    };
    match call.name.as_str() {
        "lock" | "unlock" => {
            let p = Params::new(call, "(resource, client)", 2, 2)?;
            let request = locks::lock_request(p.string(0, "resource")?, p.string(1, "client")?);
            let request = if call.name == "lock" {
                Request::Lock(request)
            } else {
                Request::Unlock(request)
            };
            op(request, Box::new(nil))
        }
        "lockd.acquire" => {
            let p = Params::new(call, "(resource, client[, options])", 2, 3)?;
            let (resource, client) = (p.string(0, "resource")?, p.string(1, "client")?);
            let how = acquire_options(&p)?;
            let (request, terms) = lockd.acquire_request(resource, client, &how);
            Ok(Some(Op {
                request,
                terms,
                answer: Box::new(lock_struct),
            }))
        }
        "lockd.release" => {
            let p = Params::new(call, "(resource, client[, token])", 2, 3)?;
            let request = locks::release_request(
                p.string(0, "resource")?,
                p.string(1, "client")?,
                p.token(2)?,
            );
            op(request, Box::new(nil))
        }
        "lockd.renew" => {
            let p = Params::new(call, "(resource, client, ttl[, token])", 3, 4)?;
            let request = locks::renew_request(
                p.string(0, "resource")?,
                p.string(1, "client")?,
                p.ttl(2, "ttl")?,
                p.token(3)?,
            );
            op(request, Box::new(lock_struct))
        }
        "lockd.status" => {
            let p = Params::new(call, "(resource)", 1, 1)?;
            let request = Request::Status(p.string(0, "resource")?.to_owned());
            op(
                request,
                Box::new(|reply| match reply {
                    Reply::Status(Some(lock)) => Ok(lock_value(&lock)),
                    Reply::Status(None) => Ok(Value::Nil),
                    other => Err(locks::unexpected(&other)),
                }),
            )
        }
        "lockd.list" => {
            let p = Params::new(call, "([prefix[, options]])", 0, 2)?;
            let prefix = p.string_or(0, "prefix", "")?.to_owned();
            let (page, count) = list_options(&p)?;
            let request = match (page, count) {
                (_, true) => Request::Count(prefix),
                (Some((after, limit)), false) => Request::ListPage(ListRequest {
                    prefix,
                    after,
                    limit,
                }),
                (None, false) => Request::List(prefix),
            };
            op(
                request,
                Box::new(|reply| match reply {
                    Reply::Locks(locks) => Ok(Value::Array(locks.iter().map(lock_value).collect())),
                    Reply::Count(n) => Ok(match i32::try_from(n) {
                        Ok(n) => Value::Int(n),
                        Err(_) => Value::I8(n as i64),
                    }),
                    other => Err(locks::unexpected(&other)),
                }),
            )
        }
        "lockd.check" => {
            let p = Params::new(call, "(resource, token)", 2, 2)?;
            let resource = p.string(0, "resource")?.to_owned();
            let Some(token) = p.token(1)? else {
                return Err(p.wrong("token must be given"));
            };
            op(
                Request::Check(CheckRequest { resource, token }),
                Box::new(|reply| match reply {
                    Reply::Valid(valid) => Ok(Value::Bool(valid)),
                    other => Err(locks::unexpected(&other)),
                }),
            )
        }
        "lockd.break_lock" => {
            if role != Role::Operator {
                return Err(Fault::new(
                    code::NOT_PERMITTED,
                    "lockd.break_lock needs the operator role",
                ));
            }
            let p = Params::new(call, "(resource, reason)", 2, 2)?;
            let resource = p.string(0, "resource")?.to_owned();
            let reason = p.string(1, "reason")?.to_owned();
            op(
                Request::BreakLock(resource),
                Box::new(move |reply| {
                    let lock = locks::lock_reply(reply)?;
                    locks::audit_break(&lock, &reason);
                    Ok(lock_value(&lock))
                }),
            )
        }
        _ => Ok(None),
    }
}

/// `lockd.list`'s options: a page (`after`, `limit`) if either is given,
/// and whether to count instead.
type ListOptions = (Option<(Option<String>, Option<u32>)>, bool);

fn list_options(p: &Params) -> Result<ListOptions, Fault> {
    let (mut after, mut limit, mut count) = (None, None, false);
    for (name, value) in p
        .options(1, &["after", "limit", "count"])?
        .unwrap_or_default()
    {
        match (name.as_str(), value) {
            (_, Value::Nil) => {}
            ("after", Value::String(s)) => after = Some(s.clone()),
            ("limit", value) => {
                let n = value.as_i64().and_then(|n| u32::try_from(n).ok());
                limit = Some(n.ok_or_else(|| {
                    p.wrong(format!(
                        "limit must be a whole number from 0, got {value:?}"
                    ))
                })?);
            }
            ("count", Value::Bool(b)) => count = *b,
            (name, other) => {
                return Err(p.wrong(format!(
                    "{name} must be a {}, got {}",
                    if name == "after" { "string" } else { "boolean" },
                    other.type_name()
                )));
            }
        }
    }
    let page = (after.is_some() || limit.is_some()).then_some((after, limit));
    Ok((page, count))
}

fn acquire_options(p: &Params) -> Result<Acquire, Fault> {
    let mut how = Acquire::default();
    for (name, value) in p
        .options(2, &["ttl", "wait", "reentrant", "request_id"])?
        .unwrap_or_default()
    {
        match (name.as_str(), value) {
            (_, Value::Nil) => {}
            ("ttl", value) => {
                how.ttl =
                    Some(super::params::positive_seconds(value, "ttl").map_err(|e| p.wrong(e))?)
            }
            ("wait", value) => how.wait = seconds(value, "wait").map_err(|e| p.wrong(e))?,
            ("reentrant", Value::Bool(b)) => how.reentrant = *b,
            ("request_id", Value::String(id)) => {
                how.request_id = Some(request_id(id).map_err(|e| p.wrong(e))?)
            }
            (name, other) => {
                return Err(p.wrong(format!(
                    "{name} must be a boolean, got {}",
                    other.type_name()
                )));
            }
        }
    }
    Ok(how)
}

/// The longest request id taken, in bytes.
const MAX_REQUEST_ID: usize = 128;

/// `id` if it is a request id lockd keeps: 1 to 128 bytes, no control
/// characters.
fn request_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || id.chars().any(char::is_control) {
        return Err(format!(
            "request_id must be 1 to {MAX_REQUEST_ID} bytes without control characters"
        ));
    }
    Ok(id.to_owned())
}

fn nil(_: Reply) -> Result<Value, LockError> {
    Ok(Value::Nil)
}

fn lock_struct(reply: Reply) -> Result<Value, LockError> {
    locks::lock_reply(reply).map(|lock| lock_value(&lock))
}

/// A lock on the wire: times in seconds since the Unix epoch, the token as
/// `<i8>`.
pub fn lock_value(lock: &Lock) -> Value {
    let secs = |ms: u64| Value::Double(ms as f64 / 1000.0);
    Value::Struct(vec![
        ("resource".into(), Value::from(lock.resource.as_str())),
        ("client".into(), Value::from(lock.client.as_str())),
        ("token".into(), Value::I8(lock.token as i64)),
        ("acquired".into(), secs(lock.acquired_ms)),
        ("expires".into(), lock.expires_ms.map_or(Value::Nil, secs)),
        ("ttl".into(), lock.ttl_ms.map_or(Value::Nil, secs)),
    ])
}
