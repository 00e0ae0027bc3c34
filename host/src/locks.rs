//! [`Lockd`]: a lock directory opened for use, in-process.

use crate::component::{GuestError, Instance, Runtime};
use crate::error::LockError;
use crate::guard::DirGuard;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A lock directory served by the lock component, as gocept.lockd's `Lockd`
/// class was used in-process.
///
/// Operations are serialised, so they are linearizable: of any number of
/// concurrent `lock` calls on one resource exactly one succeeds. Every
/// successful change is on disk (file and directory synced) when it returns.
///
/// ```
/// use lockd::{LockError, Lockd};
///
/// # fn main() -> anyhow::Result<()> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let locks = Lockd::open(dir)?;
/// assert_eq!(locks.lock("resource1", "client1"), Ok(()));
/// assert_eq!(
///     locks.lock("resource1", "client2").unwrap_err().to_string(),
///     "Resource already locked by 'client1'"
/// );
/// assert_eq!(locks.lock("resource2", "client2"), Ok(()));
/// assert_eq!(
///     locks.unlock("resource1", "client2").unwrap_err().to_string(),
///     "Resource locked by 'client1' cannot be unlocked by 'client2'"
/// );
/// assert_eq!(locks.unlock("resource1", "client1"), Ok(()));
/// assert_eq!(locks.unlock("resource1", "client1"), Err(LockError::NotLocked));
/// assert_eq!(LockError::NotLocked.to_string(), "Resource not locked");
/// # Ok(())
/// # }
/// ```
pub struct Lockd {
    dir: PathBuf,
    runtime: Runtime,
    instance: Mutex<Instance>,
    _guard: DirGuard,
}

impl Lockd {
    /// Opens `dir` (created if missing) for exclusive use by this process.
    /// Fails if another lockd has it open.
    pub fn open(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating lock directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving lock directory {}", dir.display()))?;
        let guard = DirGuard::acquire(&dir)?;
        let runtime = Runtime::new()?;
        let instance = runtime.instantiate(&dir)?;
        Ok(Self {
            dir,
            runtime,
            instance: Mutex::new(instance),
            _guard: guard,
        })
    }

    /// The lock directory, as an absolute path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Locks `resource` for `client`. Refused while anyone holds it,
    /// `client` included, as gocept.lockd did.
    pub fn lock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.call(client, |instance| instance.lock(resource, client))
    }

    /// Releases `client`'s lock on `resource`.
    pub fn unlock(&self, resource: &str, client: &str) -> Result<(), LockError> {
        self.call(client, |instance| instance.unlock(resource, client))
    }

    /// Who holds `resource`, if anyone.
    pub fn holder(&self, resource: &str) -> Result<Option<String>, LockError> {
        self.call("", |instance| instance.holder(resource))
    }

    /// Runs one component call with the instance to itself. A trap poisons an
    /// instance, so it is replaced before the error is reported.
    fn call<T>(
        &self,
        client: &str,
        op: impl FnOnce(&mut Instance) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, LockError> {
        let mut instance = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        match op(&mut instance) {
            Ok(result) => result.map_err(|e| LockError::from_guest(e, client)),
            Err(trap) => {
                tracing::error!("lock component trapped: {trap:?}");
                match self.runtime.instantiate(&self.dir) {
                    Ok(fresh) => *instance = fresh,
                    Err(e) => tracing::error!("restarting the lock component failed: {e:#}"),
                }
                Err(LockError::Internal(format!("{trap:#}")))
            }
        }
    }
}
