//! lockd's lock semantics as a WebAssembly component: the `lockd:lockd/locks`
//! interface of `wit/lockd.wit`, kept in the host's preopened lock directory.

mod clock;
mod dir;
mod journal;
mod lease;
mod name;
mod request;
mod rules;
mod snapshot;
mod state;
mod table;
mod tokens;

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../wit",
    world: "lockd",
});

use clock::Clock;
use exports::lockd::lockd::locks as wit;
use lease::LockInfo;
use rules::{Cooling, Effect, Outcome, View};
use state::{Durability, Error, Reply, Request, Settings, State};

/// The lock-delay when the host does not call `open`.
const DEFAULT_LOCK_DELAY_MS: u64 = 5000;

impl From<Error> for wit::LockError {
    fn from(error: Error) -> Self {
        match error {
            Error::AlreadyLocked(holder) => wit::LockError::AlreadyLocked(holder),
            Error::CoolingDown(ms) => wit::LockError::CoolingDown(ms),
            Error::NotLocked => wit::LockError::NotLocked,
            Error::NotOwner(holder) => wit::LockError::NotOwner(holder),
            Error::InvalidName(reason) => wit::LockError::InvalidName(reason),
            Error::LeaseExpired => wit::LockError::LeaseExpired,
            Error::StaleToken => wit::LockError::StaleToken,
            Error::Io(message) => wit::LockError::Io(message),
        }
    }
}

impl From<LockInfo> for wit::LockInfo {
    fn from(info: LockInfo) -> Self {
        wit::LockInfo {
            resource: info.resource,
            client: info.client,
            token: info.token,
            acquired_ms: info.acquired_ms,
            ttl_ms: info.ttl_ms,
            expires_ms: info.expires_ms,
        }
    }
}

impl From<wit::LockInfo> for LockInfo {
    fn from(info: wit::LockInfo) -> Self {
        let wit::LockInfo {
            resource,
            client,
            token,
            acquired_ms,
            ttl_ms,
            expires_ms,
        } = info;
        #[rustfmt::skip]
        let info = LockInfo { resource, client, token, acquired_ms, ttl_ms, expires_ms };
        info
    }
}

impl From<wit::LockDelay> for Cooling {
    fn from(delay: wit::LockDelay) -> Self {
        Cooling {
            client: delay.client,
            until_ms: delay.until_ms,
            forget_ms: delay.forget_ms,
        }
    }
}

impl From<Cooling> for wit::LockDelay {
    fn from(delay: Cooling) -> Self {
        wit::LockDelay {
            client: delay.client,
            until_ms: delay.until_ms,
            forget_ms: delay.forget_ms,
        }
    }
}

impl From<Outcome> for wit::Decision {
    fn from(outcome: Outcome) -> Self {
        let effect = match outcome.effect {
            Effect::None => wit::Effect::None,
            Effect::Hold { info, fresh } => wit::Effect::Hold(wit::HeldLock {
                lock: info.into(),
                fresh,
            }),
            Effect::Release => wit::Effect::Release,
            Effect::Break(delay) => wit::Effect::BreakLock(delay.into()),
        };
        wit::Decision {
            reply: outcome.reply.into(),
            effect,
        }
    }
}

impl From<wit::Request> for Request {
    fn from(request: wit::Request) -> Self {
        match request {
            wit::Request::Lock(r) => Request::Lock {
                resource: r.resource,
                client: r.client,
            },
            wit::Request::Unlock(r) => Request::Unlock {
                resource: r.resource,
                client: r.client,
            },
            wit::Request::Holder(resource) => Request::Holder { resource },
            wit::Request::Acquire(r) => Request::Acquire {
                resource: r.resource,
                client: r.client,
                ttl_ms: r.ttl_ms,
                reentrant: r.reentrant,
            },
            wit::Request::Release(r) => Request::Release {
                resource: r.resource,
                client: r.client,
                token: r.token,
            },
            wit::Request::Renew(r) => Request::Renew {
                resource: r.resource,
                client: r.client,
                ttl_ms: r.ttl_ms,
                token: r.token,
            },
            wit::Request::Status(resource) => Request::Status { resource },
            wit::Request::Check(r) => Request::Check {
                resource: r.resource,
                token: r.token,
            },
            wit::Request::BreakLock(resource) => Request::Break { resource },
            wit::Request::List(prefix) => Request::List {
                prefix,
                after: None,
                limit: None,
            },
            wit::Request::ListPage(page) => Request::List {
                prefix: page.prefix,
                after: page.after,
                limit: page.limit,
            },
            wit::Request::Count(prefix) => Request::Count { prefix },
            wit::Request::Sweep => Request::Sweep,
        }
    }
}

impl From<Reply> for wit::Reply {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Done => wit::Reply::Done,
            Reply::Holder(holder) => wit::Reply::Holder(holder),
            Reply::Lock(info) => wit::Reply::Lock(info.into()),
            Reply::Status(info) => wit::Reply::Status(info.map(Into::into)),
            Reply::Valid(valid) => wit::Reply::Valid(valid),
            Reply::Locks(locks) => wit::Reply::Locks(locks.into_iter().map(Into::into).collect()),
            Reply::Count(n) => wit::Reply::Count(n),
            Reply::Swept(swept) => wit::Reply::Swept(wit::Swept {
                expired: swept.expired.into_iter().map(Into::into).collect(),
                available: swept.available,
                next_deadline_ms: swept.next_deadline_ms,
                now_ms: swept.now_ms,
            }),
        }
    }
}

/// An instance's open lock directory and its clock.
struct Instance {
    state: State,
    clock: Clock,
}

thread_local! {
    static INSTANCE: RefCell<Option<Instance>> = const { RefCell::new(None) };
}

/// Runs `f` on the open lock directory, opening it with the defaults on
/// first use.
fn with_instance<R>(f: impl FnOnce(&mut Instance) -> R) -> Result<R, wit::LockError> {
    INSTANCE.with_borrow_mut(|instance| {
        if instance.is_none() {
            let settings = Settings {
                durability: Durability::Always,
                lock_delay_ms: DEFAULT_LOCK_DELAY_MS,
            };
            let (state, _) = State::open(settings).map_err(wit::LockError::Io)?;
            let clock = Clock::new();
            *instance = Some(Instance { state, clock });
        }
        Ok(f(instance.as_mut().expect("opened above")))
    })
}

/// Runs `batch` on the lock directory.
fn apply(batch: Vec<Request>) -> Result<Vec<Result<Reply, Error>>, wit::LockError> {
    with_instance(|Instance { state, clock }| {
        let now_ms = if state.needs_repair() || batch.iter().any(|r| state.needs_time(r)) {
            clock.now_ms()
        } else {
            clock.last_ms()
        };
        state.apply(batch, now_ms)
    })
}

/// Runs one request.
fn apply_one(request: Request) -> Result<Reply, wit::LockError> {
    let mut results = apply(vec![request])?;
    Ok(results.pop().expect("one result per request")?)
}

struct Component;

impl wit::Guest for Component {
    fn open(options: wit::Options) -> Result<wit::OpenReport, wit::LockError> {
        let settings = Settings {
            durability: match options.durability {
                wit::Durability::Always => Durability::Always,
                wit::Durability::None => Durability::None,
            },
            lock_delay_ms: options.lock_delay_ms,
        };
        INSTANCE.with_borrow_mut(|instance| {
            // Release the old journal before it is opened again.
            *instance = None;
            let (state, report) = State::open(settings).map_err(wit::LockError::Io)?;
            let clock = Clock::new();
            *instance = Some(Instance { state, clock });
            Ok(wit::OpenReport {
                held: report.held,
                replayed: report.replayed,
                notes: report.notes,
            })
        })
    }

    fn apply(batch: Vec<wit::Request>) -> Vec<Result<wit::Reply, wit::LockError>> {
        let n = batch.len();
        match apply(batch.into_iter().map(Request::from).collect()) {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map(Into::into).map_err(Into::into))
                .collect(),
            Err(e) => vec![Err(e); n],
        }
    }

    fn decide(
        request: wit::Request,
        view: wit::ResourceView,
        now_ms: u64,
        lock_delay_ms: u64,
    ) -> Result<wit::Decision, wit::LockError> {
        let request = Request::from(request);
        if matches!(
            request,
            Request::List { .. } | Request::Count { .. } | Request::Sweep
        ) {
            return Err(wit::LockError::InvalidName(
                "decide takes requests about one resource, not list or sweep".into(),
            ));
        }
        let held = view.held.map(LockInfo::from);
        let delay = view.delay.map(Cooling::from);
        let view = View {
            held: held.as_ref(),
            cooling: delay.as_ref(),
        };
        match rules::decide(&request, view, now_ms, lock_delay_ms) {
            Ok(outcome) => Ok(outcome.into()),
            Err(e) => Err(e.into()),
        }
    }

    fn health() -> wit::DirectoryHealth {
        let checked = with_instance(|Instance { state, clock }| {
            if state.needs_repair() {
                state.repair(clock.now_ms());
            }
            wit::DirectoryHealth {
                problems: state.problems(),
                journal_bytes: state.journal_bytes(),
            }
        });
        checked.unwrap_or_else(|e| wit::DirectoryHealth {
            problems: vec![format!("the lock directory cannot be opened: {e:?}")],
            journal_bytes: 0,
        })
    }

    fn lock(resource: String, client: String) -> Result<(), wit::LockError> {
        apply_one(Request::Lock { resource, client }).map(drop)
    }

    fn unlock(resource: String, client: String) -> Result<(), wit::LockError> {
        apply_one(Request::Unlock { resource, client }).map(drop)
    }

    fn holder(resource: String) -> Result<Option<String>, wit::LockError> {
        match apply_one(Request::Holder { resource })? {
            Reply::Holder(holder) => Ok(holder),
            _ => unreachable!("holder replies with a holder"),
        }
    }
}

export!(Component);
