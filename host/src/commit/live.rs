//! The component instance of a [`Committer`]: one guest call per batch,
//! and an instance that trapped replaced by a fresh one on the directory.

use super::{Committer, Live, lock};
use crate::component::{DirectoryHealth, Reply, Request};
use crate::error::LockError;
use crate::requests::changes;
use std::time::Instant;

impl Committer {
    /// One guest call for `batch`. A trap poisons an instance, so it is
    /// replaced (reopening the directory) before the error is reported.
    pub(super) fn run(&self, batch: &[Request]) -> Vec<Result<Reply, LockError>> {
        let mut live = lock(&self.instance);
        if let Err(lost) = self.revive(&mut live) {
            return vec![Err(LockError::Internal(lost)); batch.len()];
        }
        let start = Instant::now();
        let applied = live.instance.apply(batch);
        if batch.iter().any(changes) {
            self.metrics
                .commit_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        match applied {
            Ok(results) => batch
                .iter()
                .zip(results)
                .map(|(request, result)| result.map_err(|e| LockError::for_request(request, e)))
                .collect(),
            Err(trap) => {
                let error = LockError::Internal(format!("{trap:#}"));
                self.replace_trapped(&mut live, &trap);
                vec![Err(error); batch.len()]
            }
        }
    }

    /// Reopens the directory in place of an instance that trapped; if that
    /// fails, the instance is lost until [`revive`](Self::revive) succeeds.
    fn replace_trapped(&self, live: &mut Live, trap: &wasmtime::Error) {
        tracing::error!("lock component trapped: {trap:?}");
        live.lost = Some(format!("the lock component trapped ({trap:#})"));
        if let Err(e) = self.revive(live) {
            tracing::error!("{e}");
        }
    }

    /// Makes sure the instance is usable: one lost after a trap is opened
    /// again (every call tries, until one succeeds).
    fn revive(&self, live: &mut Live) -> Result<(), String> {
        let Some(lost) = &live.lost else {
            return Ok(());
        };
        match (self.reopen)(&self.runtime, &self.dir) {
            Ok(fresh) => {
                live.instance = fresh;
                live.lost = None;
                tracing::info!("lock component opened again");
                Ok(())
            }
            Err(e) => Err(format!("{lost}, and opening it again failed: {e:#}")),
        }
    }

    /// How the lock directory is kept: the component's problems, or why
    /// there is no usable component. Retries what failed first.
    pub(super) fn component_health(&self) -> Result<DirectoryHealth, String> {
        let mut live = lock(&self.instance);
        self.revive(&mut live)?;
        match live.instance.health() {
            Ok(health) => Ok(health),
            Err(trap) => {
                let error = format!("the lock component trapped: {trap:#}");
                self.replace_trapped(&mut live, &trap);
                Err(error)
            }
        }
    }
}
