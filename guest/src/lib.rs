//! lockd's lock semantics as a WebAssembly component: the `lockd:lockd/locks`
//! interface of `wit/lockd.wit`, kept in the host's preopened lock directory.

mod name;
mod store;

use std::cell::OnceCell;

wit_bindgen::generate!({
    path: "../wit",
    world: "lockd",
});

use exports::lockd::lockd::locks::{Guest, LockError};
use store::{Error, LockDir};

impl From<Error> for LockError {
    fn from(error: Error) -> Self {
        match error {
            Error::AlreadyLocked(holder) => LockError::AlreadyLocked(holder),
            Error::NotLocked => LockError::NotLocked,
            Error::NotOwner(holder) => LockError::NotOwner(holder),
            Error::InvalidName(reason) => LockError::InvalidName(reason),
            Error::Io(message) => LockError::Io(message),
        }
    }
}

thread_local! {
    /// The lock directory, looked up once per instance.
    static DIR: OnceCell<LockDir> = const { OnceCell::new() };
}

/// Runs `op` on the lock directory, opening it on first use.
fn with_dir<T>(op: impl FnOnce(&LockDir) -> Result<T, Error>) -> Result<T, LockError> {
    DIR.with(|cell| {
        let dir = match cell.get() {
            Some(dir) => dir,
            None => {
                let dir = LockDir::open()?;
                cell.get_or_init(|| dir)
            }
        };
        Ok(op(dir)?)
    })
}

struct Component;

impl Guest for Component {
    fn lock(resource: String, client: String) -> Result<(), LockError> {
        with_dir(|dir| dir.lock(&resource, &client))
    }

    fn unlock(resource: String, client: String) -> Result<(), LockError> {
        with_dir(|dir| dir.unlock(&resource, &client))
    }

    fn holder(resource: String) -> Result<Option<String>, LockError> {
        with_dir(|dir| dir.holder(&resource))
    }
}

export!(Component);
