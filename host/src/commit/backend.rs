//! Directory mode as a [`Backend`](crate::backend::Backend).

use super::{Committer, Presence, Then};
use crate::backend::Terms;
use crate::component::{Reply, Request};
use crate::error::LockError;

// (A request id is for a client that cannot tell whether its call
// happened; here every call's answer is sure.)
impl crate::backend::Backend for Committer {
    fn submit(&self, request: Request, terms: Terms) -> Result<Reply, LockError> {
        Committer::submit(self, request, terms.deadline)
    }

    fn submit_then(&self, request: Request, terms: Terms, present: Option<Presence>, then: Then) {
        Committer::submit_then(self, request, terms.deadline, present, then);
    }

    fn waiters(&self) -> usize {
        Committer::waiters(self)
    }

    fn stop_waiting(&self) {
        Committer::stop_waiting(self);
    }

    fn stop(&self) {
        Committer::stop(self);
    }

    /// Whether changes can be stored and the lock files are up to date: a
    /// probe file, `.lockd.health`, is written in the lock directory, and
    /// the component reports its journal and lock files.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = std::fs::write(self.dir.join(".lockd.health"), b"ok\n") {
            let dir = self.dir.display();
            problems.push(format!("cannot write in {dir}: {e}"));
        }
        match self.component_health() {
            Ok(component) => problems.extend(component.problems),
            Err(e) => problems.push(e),
        }
        problems
    }

    fn journal_bytes(&self) -> u64 {
        self.component_health().map_or(0, |h| h.journal_bytes)
    }

    /// Syncs the file system holding the lock directory: with
    /// `--sync=none`, what was written is then on disk too.
    fn flush(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let dir = std::fs::File::open(&self.dir)?;
        // SAFETY: syncfs(2) on a descriptor we hold open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
