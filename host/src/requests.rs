//! What a request for the component is: whether it may change a lock,
//! which lock it takes, which resource it concerns and who asks. One place
//! for the commit engine, cluster mode and error messages to ask.

use crate::component::Request;

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
