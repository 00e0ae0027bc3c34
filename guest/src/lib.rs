//! lockd's lock semantics as a WebAssembly component: the `lockd:lockd/locks`
//! interface of `wit/lockd.wit`, kept in the host's preopened lock directory.

mod dir;
mod journal;
mod name;
mod state;

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../wit",
    world: "lockd",
});

use exports::lockd::lockd::locks as wit;
use state::{Durability, Error, Reply, Request, State};

impl From<Error> for wit::LockError {
    fn from(error: Error) -> Self {
        match error {
            Error::AlreadyLocked(holder) => wit::LockError::AlreadyLocked(holder),
            Error::NotLocked => wit::LockError::NotLocked,
            Error::NotOwner(holder) => wit::LockError::NotOwner(holder),
            Error::InvalidName(reason) => wit::LockError::InvalidName(reason),
            Error::Io(message) => wit::LockError::Io(message),
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
        }
    }
}

thread_local! {
    /// The open lock directory of this instance.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Runs `batch` on the lock directory, opening it with the default
/// durability on first use.
fn apply(batch: Vec<Request>) -> Result<Vec<Result<Reply, Error>>, wit::LockError> {
    STATE.with_borrow_mut(|state| {
        if state.is_none() {
            let (opened, _) = State::open(Durability::Always).map_err(wit::LockError::Io)?;
            *state = Some(opened);
        }
        Ok(state.as_mut().expect("opened above").apply(batch))
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
        let durability = match options.durability {
            wit::Durability::Always => Durability::Always,
            wit::Durability::None => Durability::None,
        };
        STATE.with_borrow_mut(|state| {
            // Release the old journal before it is opened again.
            *state = None;
            let (opened, report) = State::open(durability).map_err(wit::LockError::Io)?;
            *state = Some(opened);
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
                .map(|r| match r {
                    Ok(Reply::Done) => Ok(wit::Reply::Done),
                    Ok(Reply::Holder(h)) => Ok(wit::Reply::Holder(h)),
                    Err(e) => Err(e.into()),
                })
                .collect(),
            Err(e) => vec![Err(e); n],
        }
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
            Reply::Done => unreachable!("holder replies with a holder"),
        }
    }
}

export!(Component);
