//! What a request for the component is, as the host sees it: whether it
//! may change a lock, which lock it takes, which locks its reply left free,
//! which resource it concerns and who asks. The one place the committer,
//! cluster mode and error messages ask; what a request does to a lock is
//! the component's rules (`guest/src/rules.rs`).

use crate::component::{Reply, Request};
use std::time::Duration;

/// Whether a request may change a lock.
pub fn changes(request: &Request) -> bool {
    !matches!(
        request,
        Request::Holder(_)
            | Request::Status(_)
            | Request::Check(_)
            | Request::List(_)
            | Request::ListPage(_)
            | Request::Count(_)
    )
}

/// The resource a request takes a lock on, if it takes one.
pub fn taken(request: &Request) -> Option<&str> {
    match request {
        Request::Lock(r) => Some(&r.resource),
        Request::Acquire(r) => Some(&r.resource),
        _ => None,
    }
}

/// The resources a request left free for the next taker, once it
/// succeeded with `reply`: the lock it unlocked or released, the lock it
/// broke when there is no lock-delay to wait out, and the locks a sweep
/// found with their lease or lock-delay run out.
pub fn freed<'a>(request: &'a Request, reply: &'a Reply, lock_delay: Duration) -> Vec<&'a str> {
    match (request, reply) {
        (Request::Unlock(r), _) => vec![&r.resource],
        (Request::Release(r), _) => vec![&r.resource],
        (Request::BreakLock(resource), Reply::Lock(_)) if lock_delay.is_zero() => vec![resource],
        (Request::Sweep, Reply::Swept(swept)) => {
            swept.available.iter().map(String::as_str).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether a request takes its lock reentrantly (returning the caller's
/// own lock if it holds it).
pub fn reentrant(request: &Request) -> bool {
    matches!(request, Request::Acquire(r) if r.reentrant)
}

/// The one resource a request concerns (`list` and `sweep` concern many).
pub fn resource(request: &Request) -> Option<&str> {
    match request {
        Request::Lock(r) | Request::Unlock(r) => Some(&r.resource),
        Request::Holder(resource) | Request::Status(resource) | Request::BreakLock(resource) => {
            Some(resource)
        }
        Request::Acquire(r) => Some(&r.resource),
        Request::Release(r) => Some(&r.resource),
        Request::Renew(r) => Some(&r.resource),
        Request::Check(r) => Some(&r.resource),
        Request::List(_) | Request::ListPage(_) | Request::Count(_) | Request::Sweep => None,
    }
}

/// The client asking, for requests made in a client's name ("" for the
/// others).
pub fn client(request: &Request) -> &str {
    match request {
        Request::Lock(r) | Request::Unlock(r) => &r.client,
        Request::Acquire(r) => &r.client,
        Request::Release(r) => &r.client,
        Request::Renew(r) => &r.client,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::{LockInfo, LockRequest, Swept};

    fn info(resource: &str) -> LockInfo {
        LockInfo {
            resource: resource.into(),
            client: "c".into(),
            token: 1,
            acquired_ms: 0,
            ttl_ms: None,
            expires_ms: None,
        }
    }

    fn lock_request(resource: &str) -> LockRequest {
        LockRequest {
            resource: resource.into(),
            client: "c".into(),
        }
    }

    #[test]
    fn frees_what_was_unlocked_released_broken_without_delay_or_swept() {
        let none = Duration::ZERO;
        let delay = Duration::from_secs(5);
        let unlock = Request::Unlock(lock_request("u"));
        assert_eq!(freed(&unlock, &Reply::Done, delay), ["u"]);
        let broken = Request::BreakLock("b".into());
        assert_eq!(freed(&broken, &Reply::Lock(info("b")), none), ["b"]);
        assert!(freed(&broken, &Reply::Lock(info("b")), delay).is_empty());
        let swept = Reply::Swept(Swept {
            expired: vec![info("x"), info("y")],
            available: vec!["x".into()],
            next_deadline_ms: Some(1),
            now_ms: 0,
        });
        assert_eq!(freed(&Request::Sweep, &swept, delay), ["x"]);
        let lock = Request::Lock(lock_request("l"));
        assert!(freed(&lock, &Reply::Done, none).is_empty());
        assert!(freed(&Request::Status("s".into()), &Reply::Status(None), none).is_empty());
    }
}
