//! One daemon per lock directory: an exclusive advisory lock on a file of
//! lockd's own in the directory, held for as long as the directory is open.

use anyhow::{Context as _, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// The guard file; its content is the pid of the process holding it.
pub const GUARD_FILE: &str = ".lockd.pid";

/// Held while a process serves a lock directory; released on drop (and by the
/// kernel when the process dies, so a crash never leaves it stuck).
#[derive(Debug)]
pub struct DirGuard {
    _file: File,
}

impl DirGuard {
    /// Takes the directory, or says which process has it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(GUARD_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "another lockd (pid {}) is already using the lock directory {}",
                    pid.trim(),
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}
