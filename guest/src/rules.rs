//! The lock rules, for one resource at a time: who may take, release, renew
//! or break a lock, and when a lease has run out. Pure: given what is known
//! of the resource and the time, a request's reply and its effect. The
//! lock directory (`table`) and a host keeping locks elsewhere (the WIT
//! `decide`) apply the effect each in its own way.

use crate::lease::LockInfo;
use crate::name;
use crate::state::{Error, Reply, Request};

/// How long the holder of a lock that expired or was broken is told so
/// (`lease-expired`) when it asks, after the lock-delay.
pub const REMEMBER_LOST_MS: u64 = 60_000;

/// A resource whose lock expired or was broken: unavailable until
/// `until_ms`, and remembered for a while after, so that its old holder
/// learns that it lost the lock rather than that nobody holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooling {
    /// Who held it.
    pub client: String,
    pub until_ms: u64,
    /// Forgotten from then on.
    pub forget_ms: u64,
}

impl Cooling {
    /// The lock-delay of `client`'s lock, ending at `until_ms`.
    pub fn until(client: String, until_ms: u64) -> Self {
        Self {
            client,
            until_ms,
            forget_ms: until_ms.saturating_add(REMEMBER_LOST_MS),
        }
    }
}

/// What is known of one resource.
#[derive(Debug, Clone, Copy, Default)]
pub struct View<'a> {
    /// Its lock, if one is recorded (its lease may have run out).
    pub held: Option<&'a LockInfo>,
    /// Its lock-delay, if one is recorded.
    pub cooling: Option<&'a Cooling>,
}

/// What a request does to its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The resource is now held as this says. `fresh`: a new lock, whose
    /// token is to be issued (the info's token is 0 until then); otherwise
    /// the same lock, renewed, with its token.
    Hold { info: LockInfo, fresh: bool },
    /// The lock is released; no lock-delay.
    Release,
    /// The lock is removed and the resource unavailable for the
    /// lock-delay. The next holder's token must be above any its old holder
    /// had.
    Break(Cooling),
}

/// A request's reply and effect. A reply naming a fresh lock carries token
/// 0 until the token is issued.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    pub effect: Effect,
}

impl Outcome {
    fn reply(reply: Reply) -> Self {
        Self {
            reply,
            effect: Effect::None,
        }
    }
}

/// Where a resource stands at some moment.
pub enum Standing<'a> {
    /// Held, the lease (if any) running.
    Held(&'a LockInfo),
    /// Not available until the lock-delay after an expiry or break ends.
    Cooling {
        ms_left: u64,
    },
    Free,
}

/// Where the resource of `view` stands at `now_ms`.
pub fn standing<'a>(view: View<'a>, now_ms: u64, lock_delay_ms: u64) -> Standing<'a> {
    let until = match view.held {
        Some(held) if !held.expired(now_ms) => return Standing::Held(held),
        Some(held) => held.expires_ms.unwrap_or(now_ms) + lock_delay_ms,
        None => view.cooling.map_or(0, |c| c.until_ms),
    };
    if now_ms < until {
        Standing::Cooling {
            ms_left: until - now_ms,
        }
    } else {
        Standing::Free
    }
}

/// What `request`, which concerns one resource (not `list` or `sweep`),
/// does at `now_ms` to the resource seen as `view`.
pub fn decide(
    request: &Request,
    view: View,
    now_ms: u64,
    lock_delay_ms: u64,
) -> Result<Outcome, Error> {
    let standing = |view| standing(view, now_ms, lock_delay_ms);
    match request {
        Request::Holder { resource } => {
            check_resource(resource)?;
            let holder = match standing(view) {
                Standing::Held(held) => Some(held.client.clone()),
                _ => None,
            };
            Ok(Outcome::reply(Reply::Holder(holder)))
        }
        Request::Status { resource } => {
            check_resource(resource)?;
            let info = match standing(view) {
                Standing::Held(held) => Some(held.clone()),
                _ => None,
            };
            Ok(Outcome::reply(Reply::Status(info)))
        }
        Request::Check { resource, token } => {
            check_resource(resource)?;
            let valid = match standing(view) {
                Standing::Held(held) => *token != 0 && held.token == *token,
                _ => false,
            };
            Ok(Outcome::reply(Reply::Valid(valid)))
        }
        Request::Lock { resource, client } => {
            let outcome = take(resource, client, None, false, standing(view), now_ms)?;
            Ok(Outcome {
                reply: Reply::Done,
                ..outcome
            })
        }
        Request::Acquire {
            resource,
            client,
            ttl_ms,
            reentrant,
        } => {
            if *ttl_ms == Some(0) {
                return Err(Error::InvalidName("a lease's ttl must be positive".into()));
            }
            take(
                resource,
                client,
                *ttl_ms,
                *reentrant,
                standing(view),
                now_ms,
            )
        }
        Request::Unlock { resource, client } => {
            own(resource, client, None, view, now_ms)?;
            Ok(Outcome {
                reply: Reply::Done,
                effect: Effect::Release,
            })
        }
        Request::Release {
            resource,
            client,
            token,
        } => {
            own(resource, client, *token, view, now_ms)?;
            Ok(Outcome {
                reply: Reply::Done,
                effect: Effect::Release,
            })
        }
        Request::Renew {
            resource,
            client,
            ttl_ms,
            token,
        } => {
            if *ttl_ms == 0 {
                return Err(Error::InvalidName("a lease's ttl must be positive".into()));
            }
            let mut info = own(resource, client, *token, view, now_ms)?.clone();
            info.ttl_ms = Some(*ttl_ms);
            info.expires_ms = Some(now_ms.saturating_add(*ttl_ms));
            Ok(Outcome {
                reply: Reply::Lock(info.clone()),
                effect: Effect::Hold { info, fresh: false },
            })
        }
        Request::Break { resource } => {
            check_resource(resource)?;
            let held = view.held.ok_or(Error::NotLocked)?;
            Ok(Outcome {
                reply: Reply::Lock(held.clone()),
                effect: Effect::Break(Cooling::until(held.client.clone(), now_ms + lock_delay_ms)),
            })
        }
        Request::List { .. } | Request::Count { .. } | Request::Sweep => {
            unreachable!("list and sweep concern more than one resource")
        }
    }
}

/// Takes `resource` for `client`: the `lock` and `acquire` rules.
fn take(
    resource: &str,
    client: &str,
    ttl_ms: Option<u64>,
    reentrant: bool,
    standing: Standing,
    now_ms: u64,
) -> Result<Outcome, Error> {
    check_resource(resource)?;
    name::check_client(client).map_err(Error::InvalidName)?;
    match standing {
        Standing::Held(held) if reentrant && held.client == client => {
            Ok(Outcome::reply(Reply::Lock(held.clone())))
        }
        Standing::Held(held) => Err(Error::AlreadyLocked(held.client.clone())),
        Standing::Cooling { ms_left } => Err(Error::CoolingDown(ms_left)),
        Standing::Free => {
            let info = LockInfo {
                resource: resource.to_owned(),
                client: client.to_owned(),
                token: 0,
                acquired_ms: now_ms,
                ttl_ms,
                expires_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
            };
            Ok(Outcome {
                reply: Reply::Lock(info.clone()),
                effect: Effect::Hold { info, fresh: true },
            })
        }
    }
}

/// `client`'s running lock on `resource` (with `token`, if given).
fn own<'a>(
    resource: &str,
    client: &str,
    token: Option<u64>,
    view: View<'a>,
    now_ms: u64,
) -> Result<&'a LockInfo, Error> {
    check_resource(resource)?;
    name::check_client(client).map_err(Error::InvalidName)?;
    match view.held {
        Some(held) if held.expired(now_ms) => {
            if held.client == client {
                Err(Error::LeaseExpired)
            } else {
                Err(Error::NotLocked)
            }
        }
        Some(held) if held.client != client => Err(Error::NotOwner(held.client.clone())),
        Some(held) if token.is_some_and(|t| t != held.token) => Err(Error::StaleToken),
        Some(held) => Ok(held),
        None if view
            .cooling
            .is_some_and(|c| c.client == client && now_ms < c.forget_ms) =>
        {
            Err(Error::LeaseExpired)
        }
        None => Err(Error::NotLocked),
    }
}

/// The lock file name of `resource`, or why it cannot have one.
pub fn check_resource(resource: &str) -> Result<String, Error> {
    name::lock_file_name(resource).map_err(Error::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(client: &str) -> Request {
        Request::Release {
            resource: "r".into(),
            client: client.into(),
            token: None,
        }
    }

    #[test]
    fn a_broken_locks_holder_is_told_it_lost_the_lock_until_it_is_forgotten() {
        let delay = Cooling::until("a".into(), 5_000);
        let view = View {
            held: None,
            cooling: Some(&delay),
        };
        let at = |now_ms| decide(&release("a"), view, now_ms, 0).map(|o| o.effect);
        assert_eq!(at(1_000), Err(Error::LeaseExpired));
        assert_eq!(at(5_000 + REMEMBER_LOST_MS - 1), Err(Error::LeaseExpired));
        assert_eq!(at(5_000 + REMEMBER_LOST_MS), Err(Error::NotLocked));
        assert_eq!(
            decide(&release("b"), view, 1_000, 0).map(|o| o.effect),
            Err(Error::NotLocked)
        );
    }

    #[test]
    fn a_lease_that_ran_out_keeps_the_resource_for_the_lock_delay() {
        let held = LockInfo {
            resource: "r".into(),
            client: "a".into(),
            token: 3,
            acquired_ms: 0,
            ttl_ms: Some(1_000),
            expires_ms: Some(1_000),
        };
        let view = View {
            held: Some(&held),
            cooling: None,
        };
        assert!(matches!(standing(view, 999, 500), Standing::Held(_)));
        assert!(matches!(
            standing(view, 1_200, 500),
            Standing::Cooling { ms_left: 300 }
        ));
        assert!(matches!(standing(view, 1_500, 500), Standing::Free));
    }
}
