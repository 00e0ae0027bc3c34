//! The lock table: which resource is held by whom, kept in memory and in the
//! lock directory, changed in batches with one sync per batch.

use crate::dir::{IoError, LockDir};
use crate::journal::{self, Journal, Record};
use crate::lease::LockInfo;
use crate::rules;
mod recover;

pub use crate::request::{Durability, Error, Reply, Report, Request, Settings, Swept};
use crate::tokens::Tokens;
use std::collections::HashMap;

/// The journal is folded into the lock files (which are then synced) and
/// emptied once it grows past this.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A held lock and its file.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub info: LockInfo,
    /// The lock file: lockd's name for the resource, or the unencoded name
    /// gocept.lockd gave it.
    pub file: String,
}

/// A resource whose lock expired or was broken, in the table.
#[derive(Debug, Clone)]
pub(crate) struct Cooling {
    pub delay: rules::Cooling,
    /// Whether a sweep has reported it available.
    pub announced: bool,
}

/// A change made in memory, to be written to the lock files once durable.
pub(crate) enum Change {
    Write { file: String, content: Vec<u8> },
    Remove { file: String },
}

impl Change {
    /// The lock file it changes.
    fn file(&self) -> &str {
        match self {
            Change::Write { file, .. } | Change::Remove { file } => file,
        }
    }
}

/// One change of the table: the resource, what it held before (to take the
/// change back) and the file change.
pub(crate) struct Step {
    pub resource: String,
    pub before: Option<Held>,
    pub change: Change,
}

impl Step {
    /// The journal record of the step: what its lock file now holds.
    fn record(&self) -> Record {
        let resource = self.resource.clone();
        match &self.change {
            Change::Write { content, .. } => Record::Put {
                resource,
                content: String::from_utf8_lossy(content).into_owned(),
            },
            Change::Remove { .. } => Record::Remove { resource },
        }
    }
}

/// How long after a failed checkpoint the next one is tried.
const RETRY_MS: u64 = 1000;

/// The open lock directory.
///
/// With `Durability::Always` the journal is the truth and the lock files
/// are its view: a change is acknowledged once its record is synced in the
/// journal, and its lock file follows. A lock file that cannot be written
/// (a full disk, an unwritable directory) is remembered as stale, and the
/// journal is not emptied until every stale file has been written again
/// from memory and every file written since the last checkpoint, and the
/// directory, synced. A failed sync makes the files it covered stale too:
/// after one, the page cache may hold what the disk does not, so they get
/// new inodes rather than a second sync.
pub struct State {
    pub(crate) dir: LockDir,
    durability: Durability,
    pub(crate) lock_delay_ms: u64,
    pub(crate) held: HashMap<String, Held>,
    pub(crate) cooling: HashMap<String, Cooling>,
    pub(crate) tokens: Tokens,
    /// With `Durability::None`, present only until the journal an earlier
    /// run left has been emptied into the lock files; changes wait for it.
    journal: Option<Journal>,
    /// Lock files written since the last checkpoint, not yet synced: file
    /// name, resource.
    unsynced: HashMap<String, String>,
    /// Lock files that may not show what memory holds: file name, resource.
    stale: HashMap<String, String>,
    /// Why the last checkpoint failed, until one succeeds.
    trouble: Option<String>,
    /// When the next checkpoint may be tried after one failed.
    retry_at_ms: u64,
}

impl State {
    /// Whether a checkpoint is due to repair something.
    pub fn needs_repair(&self) -> bool {
        self.trouble.is_some()
            || !self.stale.is_empty()
            || match &self.journal {
                Some(journal) => journal.is_broken() || self.durability == Durability::None,
                None => false,
            }
    }

    /// Tries a checkpoint if one is due (to repair, or because the journal
    /// is full) and the last failed one is [`RETRY_MS`] past.
    pub fn repair(&mut self, now_ms: u64) {
        let full = self
            .journal
            .as_ref()
            .is_some_and(|j| j.len() > CHECKPOINT_BYTES);
        if (full || self.needs_repair()) && now_ms >= self.retry_at_ms && self.checkpoint().is_err()
        {
            self.retry_at_ms = now_ms + RETRY_MS;
        }
    }

    /// What is wrong with the lock directory, for an operator; see the WIT
    /// `health`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.journal {
            Some(journal) if journal.is_broken() => problems.push(
                "the journal cannot take changes until a checkpoint empties it: \
                 changes are refused"
                    .to_owned(),
            ),
            Some(_) if self.durability == Durability::None => problems.push(
                "the journal of an earlier run is not yet emptied into the lock files: \
                 changes are refused"
                    .to_owned(),
            ),
            _ => {}
        }
        if !self.stale.is_empty() {
            problems.push(format!(
                "{} lock files do not show their lock yet (the journal keeps the changes)",
                self.stale.len()
            ));
        }
        if let Some(trouble) = &self.trouble {
            problems.push(format!("the last checkpoint failed: {trouble}"));
        }
        problems
    }

    /// Bytes in the journal since it was last emptied.
    pub fn journal_bytes(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::len)
    }

    /// Runs a batch at `now_ms` (milliseconds since the Unix epoch, on a
    /// clock that does not run backwards); see the WIT `apply`.
    pub fn apply(&mut self, batch: Vec<Request>, now_ms: u64) -> Vec<Result<Reply, Error>> {
        if self.needs_repair() {
            self.repair(now_ms);
        }
        let mut results = Vec::with_capacity(batch.len());
        // Per request with changes: the index of its result and its steps.
        let mut changed: Vec<(usize, Vec<Step>)> = Vec::new();
        let mut records = Vec::new();
        let cycle = self.journal.as_ref().map_or(0, Journal::cycle);
        for request in batch {
            match self.decide(request, now_ms) {
                Ok((reply, steps)) if steps.is_empty() => results.push(Ok(reply)),
                Ok((reply, steps)) => {
                    if self.durability == Durability::None {
                        // Nothing to sync: the lock files are the record.
                        match self.perform_all(&steps) {
                            Ok(()) => results.push(Ok(reply)),
                            Err(e) => {
                                self.undo(steps);
                                results.push(Err(Error::Io(e)));
                            }
                        }
                    } else {
                        for step in &steps {
                            journal::encode(&step.record(), cycle, &mut records);
                        }
                        changed.push((results.len(), steps));
                        results.push(Ok(reply));
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if changed.is_empty() {
            return results;
        }
        let journal = self
            .journal
            .as_mut()
            .expect("a journal with Durability::Always");
        if let Err(e) = journal.append(&records) {
            for (i, steps) in changed.into_iter().rev() {
                self.undo(steps);
                results[i] = Err(Error::Io(e.clone()));
            }
            return results;
        }
        // Durable in the journal: the lock files follow. One that cannot
        // be written is stale, and the journal keeps the change until it
        // is written (at a later checkpoint, or replayed at the next open).
        for (_, steps) in &changed {
            for step in steps {
                let _ = self.perform(step);
            }
        }
        self.repair(now_ms);
        results
    }

    /// Takes `steps` back in memory, last first.
    fn undo(&mut self, steps: Vec<Step>) {
        for step in steps.into_iter().rev() {
            match step.before {
                Some(held) => {
                    self.cooling.remove(&step.resource);
                    self.held.insert(step.resource, held);
                }
                None => {
                    self.held.remove(&step.resource);
                }
            }
        }
    }

    /// Performs `steps` on the lock files, all or none: on failure the
    /// files of the steps done are put back as they were (and any that
    /// cannot be is stale). With `Durability::None`, whose lock files are
    /// the only record.
    fn perform_all(&mut self, steps: &[Step]) -> Result<(), IoError> {
        if self.journal.is_some() {
            return Err(self.problems().join("; "));
        }
        for (done, step) in steps.iter().enumerate() {
            if let Err(e) = self.perform(step) {
                for step in steps[..done].iter().rev() {
                    let put_back = match &step.before {
                        Some(held) => {
                            let content = held.info.file_content();
                            self.dir.write_atomically(&held.file, &content)
                        }
                        None => self.dir.remove(step.change.file()),
                    };
                    if put_back.is_err() {
                        self.stale
                            .insert(step.change.file().to_owned(), step.resource.clone());
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Performs one step on its lock file; a file that cannot be written
    /// becomes stale.
    fn perform(&mut self, step: &Step) -> Result<(), IoError> {
        let file = step.change.file();
        let done = match &step.change {
            Change::Write { content, .. } => self.dir.write_atomically(file, content),
            Change::Remove { .. } => self.dir.remove(file),
        };
        if let Err(e) = done {
            self.stale.insert(file.to_owned(), step.resource.clone());
            return Err(e);
        }
        if !self.stale.is_empty() {
            self.stale.remove(file);
        }
        // Only a checkpoint reads these, and with `None` none follows the
        // first.
        if self.durability == Durability::Always {
            match &step.change {
                Change::Write { .. } => {
                    self.unsynced.insert(file.to_owned(), step.resource.clone());
                }
                // (Removing from an empty map still hashes the key.)
                Change::Remove { .. } if !self.unsynced.is_empty() => {
                    self.unsynced.remove(file);
                }
                Change::Remove { .. } => {}
            }
        }
        Ok(())
    }
}
