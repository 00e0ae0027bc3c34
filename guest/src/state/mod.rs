//! The lock table: which resource is held by whom, kept in memory and in the
//! lock directory, changed in batches with one sync per batch.

use crate::dir::{IoError, LockDir, Stamp};
use crate::journal::{self, Journal};
use crate::lease::LockInfo;
use crate::rules;
mod recover;
mod spares;

pub use crate::request::{Durability, Error, Reply, Report, Request, Settings, Swept};
use crate::tokens::Tokens;
use spares::Spares;
use std::collections::HashMap;

/// The journal is folded into the lock files (which are then synced) and
/// the snapshot, and emptied, once it grows past this or the last
/// snapshot's size, whichever is larger (so that checkpoints cost a
/// bounded share of each change however many locks are held).
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A held lock and its file.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub info: LockInfo,
    /// The lock file: lockd's name for the resource, or the unencoded name
    /// gocept.lockd gave it.
    pub file: String,
    /// The file's stamp if lockd wrote it as it writes lock files now (the
    /// holder's line alone) and it was not written since; `None` if that is
    /// not known. Only such a file is left as it is when renewed, and kept
    /// as a spare when unlocked.
    pub stamp: Option<Stamp>,
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
    /// A new lock: its file is written (or a spare linked back) with the
    /// holder's line, the first of `record`.
    Write { file: String, record: String },
    /// The same lock, changed (a renewal): the file, which holds only the
    /// holder, stays as it is.
    Keep { record: String },
    /// The lock is gone, and its file.
    Remove { file: String },
}

/// One change of the table: the resource, what it held before (to take the
/// change back) and the file change.
pub(crate) struct Step {
    pub resource: String,
    pub before: Option<Held>,
    pub change: Change,
}

impl Step {
    /// Appends the journal records of `steps`, of `cycle`, to `out`.
    fn encode_all(steps: &[Step], cycle: u64, out: &mut Vec<u8>) {
        for step in steps {
            match &step.change {
                Change::Write { record, .. } | Change::Keep { record } => {
                    journal::encode_put(&step.resource, record, cycle, out)
                }
                Change::Remove { .. } => journal::encode_remove(&step.resource, cycle, out),
            }
        }
    }
}

/// A batch decided: a result per request, the changes made in memory,
/// and their journal records.
struct Decided {
    results: Vec<Result<Reply, Error>>,
    changed: Vec<Changed>,
    records: Vec<u8>,
}

/// One request's change, in a [`Decided`] batch.
struct Changed {
    /// The index of the request (and of its result).
    index: usize,
    steps: Vec<Step>,
    /// Where its records begin in the batch's.
    records_at: usize,
}

/// The holder's line of a record: what its lock file holds.
fn holder_line(record: &str) -> &[u8] {
    let line = record.split_inclusive('\n').next().unwrap_or_default();
    line.as_bytes()
}

/// How long after a failed checkpoint the next one is tried.
const RETRY_MS: u64 = 1000;

/// The open lock directory.
///
/// The journal, over the snapshot, is the truth and the lock files are its
/// view: a change is acknowledged once its record is in the journal
/// (synced, with `Durability::Always`), and its lock file follows. A lock
/// file that cannot be written (a full disk, an unwritable directory) is
/// remembered as stale, and the
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
    journal: Journal,
    /// The last snapshot's size.
    snapshot_bytes: u64,
    /// Inodes of unlocked files, kept to be linked back.
    spares: Spares,
    /// Lock files written since the last checkpoint, not yet synced: file
    /// name, resource. (Only with `Durability::Always`.)
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
        self.trouble.is_some() || !self.stale.is_empty() || self.journal.is_broken()
    }

    /// The journal's size past which a checkpoint is due.
    fn checkpoint_bytes(&self) -> u64 {
        CHECKPOINT_BYTES.max(self.snapshot_bytes)
    }

    /// Tries a checkpoint if one is due (to repair, or because the journal
    /// is full) and the last failed one is [`RETRY_MS`] past.
    pub fn repair(&mut self, now_ms: u64) {
        let full = self.journal.len() > self.checkpoint_bytes();
        if (full || self.needs_repair()) && now_ms >= self.retry_at_ms && self.checkpoint().is_err()
        {
            self.retry_at_ms = now_ms + RETRY_MS;
        }
    }

    /// What is wrong with the lock directory, for an operator; see the WIT
    /// `health`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.journal.is_broken() {
            problems.push(
                "the journal cannot take changes until a checkpoint empties it: \
                 changes are refused"
                    .to_owned(),
            );
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
        self.journal.len()
    }

    /// Runs a batch at `now_ms` (milliseconds since the Unix epoch, on a
    /// clock that does not run backwards); see the WIT `apply`.
    pub fn apply(&mut self, batch: Vec<Request>, now_ms: u64) -> Vec<Result<Reply, Error>> {
        if self.needs_repair() {
            self.repair(now_ms);
        }
        match self.durability {
            Durability::Always => self.apply_synced(&batch, now_ms),
            Durability::None => {
                let results = self.apply_unsynced(&batch, now_ms);
                // (A checkpoint may be due.)
                self.repair(now_ms);
                results
            }
        }
    }

    /// With `Durability::Always`: the batch's records are appended and
    /// synced at once, then its lock files follow. One that cannot be
    /// written is stale, and the journal keeps the change until it is
    /// written (at a later checkpoint, or replayed at the next open).
    fn apply_synced(&mut self, batch: &[Request], now_ms: u64) -> Vec<Result<Reply, Error>> {
        let Decided {
            mut results,
            changed,
            records,
        } = self.decide_all(batch, now_ms);
        if changed.is_empty() {
            self.repair(now_ms);
            return results;
        }
        if let Err(e) = self.journal.append(&records) {
            for change in changed.into_iter().rev() {
                self.undo(change.steps);
                results[change.index] = Err(Error::Io(e.clone()));
            }
            return results;
        }
        for change in &changed {
            for step in &change.steps {
                let _ = self.perform(step);
            }
        }
        self.repair(now_ms);
        results
    }

    /// With `Durability::None`: runs the batch as if one request at a
    /// time, each change recorded in the journal and then written to its
    /// lock files, a change whose files cannot be written refused (as
    /// gocept.lockd did; its readers see the files) and its records cut
    /// off. The batch's records go to the journal in one write: the
    /// changes are decided first, then their files written in order. If
    /// one cannot be, it and everything decided after it are taken back,
    /// its records and theirs cut off, and the requests after it run
    /// again one at a time, seeing the table without it. (If the write
    /// itself fails, every change is taken back and run again alone.)
    ///
    /// Taking back restores the held locks exactly, not lock-delays:
    /// a batch that may touch one (a lock-delay running or remembered, a
    /// break, a sweep) runs one request at a time from the start.
    fn apply_unsynced(&mut self, batch: &[Request], now_ms: u64) -> Vec<Result<Reply, Error>> {
        let touches_delays = !self.cooling.is_empty()
            || batch
                .iter()
                .any(|r| matches!(r, Request::Sweep | Request::Break { .. }));
        if touches_delays {
            return self.apply_one_by_one(batch, now_ms);
        }
        let Decided {
            mut results,
            mut changed,
            records,
        } = self.decide_all(batch, now_ms);
        if changed.is_empty() {
            return results;
        }
        let mark = self.journal.len();
        let failed = match self.journal.append(&records) {
            // Nothing recorded: each change is tried again alone.
            Err(_) => None,
            Ok(()) => match changed
                .iter()
                .enumerate()
                .find_map(|(n, change)| Some((n, self.perform_all(&change.steps).err()?)))
            {
                None => return results,
                failed => failed,
            },
        };
        // Taken back, last first: the failed change (or all) and those
        // after it.
        let n = failed.as_ref().map_or(0, |(n, _)| *n);
        let (first, at) = (changed[n].index, changed[n].records_at);
        for change in changed.drain(n..).rev() {
            self.undo(change.steps);
        }
        results.truncate(first);
        let rerun_from = match failed {
            Some((_, e)) => {
                // If they cannot be cut off, the journal refuses changes
                // until a checkpoint writes what memory holds.
                let _ = self.journal.cut_to(mark + at as u64);
                results.push(Err(Error::Io(e)));
                first + 1
            }
            None => first,
        };
        results.extend(self.apply_one_by_one(&batch[rerun_from..], now_ms));
        results
    }

    /// With `Durability::None`, `batch` one request at a time: each
    /// change recorded, then its files written, or refused.
    fn apply_one_by_one(&mut self, batch: &[Request], now_ms: u64) -> Vec<Result<Reply, Error>> {
        let cycle = self.journal.cycle();
        batch
            .iter()
            .map(|request| self.apply_one_unsynced(request, now_ms, cycle))
            .collect()
    }

    /// Decides each request of `batch` in turn, each seeing the changes
    /// before it, made in memory; encodes the changes' journal records.
    fn decide_all(&mut self, batch: &[Request], now_ms: u64) -> Decided {
        let mut decided = Decided {
            results: Vec::with_capacity(batch.len()),
            changed: Vec::new(),
            records: Vec::new(),
        };
        let cycle = self.journal.cycle();
        for request in batch {
            match self.decide(request, now_ms) {
                Ok((reply, steps)) if steps.is_empty() => decided.results.push(Ok(reply)),
                Ok((reply, steps)) => {
                    let records_at = decided.records.len();
                    Step::encode_all(&steps, cycle, &mut decided.records);
                    decided.changed.push(Changed {
                        index: decided.results.len(),
                        steps,
                        records_at,
                    });
                    decided.results.push(Ok(reply));
                }
                Err(e) => decided.results.push(Err(e)),
            }
        }
        decided
    }

    /// With `Durability::None`, one request alone: its change recorded,
    /// then its files written, or refused.
    fn apply_one_unsynced(
        &mut self,
        request: &Request,
        now_ms: u64,
        cycle: u64,
    ) -> Result<Reply, Error> {
        let (reply, steps) = self.decide(request, now_ms)?;
        if steps.is_empty() {
            return Ok(reply);
        }
        match self.record_then_perform(&steps, cycle) {
            Ok(()) => Ok(reply),
            Err(e) => {
                self.undo(steps);
                Err(Error::Io(e))
            }
        }
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

    /// With `Durability::None`: appends the records of `steps`, then
    /// performs them, all or none. On failure the files of the steps done
    /// are put back and the records cut off.
    fn record_then_perform(&mut self, steps: &[Step], cycle: u64) -> Result<(), IoError> {
        let mut records = Vec::new();
        Step::encode_all(steps, cycle, &mut records);
        let mark = self.journal.len();
        self.journal.append(&records)?;
        if let Err(e) = self.perform_all(steps) {
            // If it cannot be cut off, the journal refuses changes until a
            // checkpoint writes what memory holds.
            let _ = self.journal.cut_to(mark);
            return Err(e);
        }
        Ok(())
    }

    /// Performs `steps` on the lock files, all or none: on failure the
    /// files of the steps done are put back.
    fn perform_all(&mut self, steps: &[Step]) -> Result<(), IoError> {
        for (done, step) in steps.iter().enumerate() {
            if let Err(e) = self.perform(step) {
                self.put_back(&steps[..done]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Puts the lock files of `steps`, performed, back as they were before
    /// (last first), and counts them stale: the next checkpoint writes
    /// them again from memory, with the stamp the snapshot needs.
    fn put_back(&mut self, steps: &[Step]) {
        for step in steps.iter().rev() {
            let file = match &step.change {
                Change::Keep { .. } => continue,
                Change::Write { file, .. } | Change::Remove { file } => file,
            };
            self.drop_spare_of(file);
            // At once for readers, as far as it goes; the repair then
            // writes it again from memory, stamped.
            let _ = match &step.before {
                Some(held) if held.file == *file => {
                    self.dir.write_atomically(file, &held.info.file_content())
                }
                _ => self.dir.remove(file),
            };
            self.stale.insert(file.clone(), step.resource.clone());
        }
    }

    /// Performs one step on its lock file; a file that cannot be written
    /// becomes stale.
    fn perform(&mut self, step: &Step) -> Result<(), IoError> {
        let (file, done) = match &step.change {
            Change::Keep { .. } => return Ok(()),
            Change::Write { file, record } => (
                file,
                self.put_held(&step.resource, file, holder_line(record)),
            ),
            Change::Remove { file } => (file, self.unlink(file, step.before.as_ref())),
        };
        if let Err(e) = done {
            self.stale.insert(file.to_owned(), step.resource.clone());
            return Err(e);
        }
        if !self.stale.is_empty() {
            self.stale.remove(file);
        }
        // Only a checkpoint with `Always` syncs these.
        if self.durability == Durability::Always {
            match &step.change {
                Change::Write { .. } => {
                    self.unsynced.insert(file.to_owned(), step.resource.clone());
                }
                // (Removing from an empty map still hashes the key.)
                Change::Remove { .. } if !self.unsynced.is_empty() => {
                    self.unsynced.remove(file);
                }
                Change::Remove { .. } | Change::Keep { .. } => {}
            }
        }
        Ok(())
    }

    /// Puts `resource`'s lock file `file` in place holding `content` (with
    /// [`put`](Self::put)), and records its stamp in the table.
    pub(super) fn put_held(
        &mut self,
        resource: &str,
        file: &str,
        content: &[u8],
    ) -> Result<(), IoError> {
        let stamp = self.put(file, content)?;
        if let Some(held) = self.held.get_mut(resource) {
            held.stamp = stamp;
        }
        Ok(())
    }

    /// Puts lock file `file` in place holding `content`, and returns its
    /// stamp: a spare linked as it if one holds `content` as lockd wrote
    /// it, else a new file.
    fn put(&mut self, file: &str, content: &[u8]) -> Result<Option<Stamp>, IoError> {
        // Whatever was linked there is about to be replaced.
        self.free_spare_of(file);
        if let Some((spare, stamp)) = self.spares.take(content) {
            if self.dir.stamp(&spare).is_ok_and(|now| now == Some(stamp)) {
                match self.dir.link(&spare, file) {
                    Ok(()) => {
                        self.spares.linked(file, content.to_vec(), spare, stamp);
                        return Ok(Some(stamp));
                    }
                    // The name is taken (a lock file replaced): the spare
                    // stays free.
                    Err(_) => self.keep_spare(spare, content.to_vec(), stamp),
                }
            } else {
                // Edited, or gone: not kept.
                let _ = self.dir.remove(&spare);
            }
        }
        self.dir.write_stamped(file, content)
    }

    /// Takes lock file `file`, of lock `before`, away: a spare linked as it
    /// is free again; a file lockd wrote is kept as a spare; any other is
    /// removed.
    fn unlink(&mut self, file: &str, before: Option<&Held>) -> Result<(), IoError> {
        if self.spares.links(file) {
            self.dir.remove(file)?;
            if self.stale.contains_key(file) {
                // Its inode's sync failed: not to be linked again.
                self.drop_spare_of(file);
            } else {
                self.free_spare_of(file);
            }
            return Ok(());
        }
        let known = before.filter(|held| held.file == file && !self.stale.contains_key(file));
        let Some((held, stamp)) = known.and_then(|held| Some((held, held.stamp?))) else {
            return self.dir.remove(file);
        };
        let spare = self.spares.name();
        if !self.spares.has_room() || self.dir.rename(file, &spare).is_err() {
            return self.dir.remove(file);
        }
        self.keep_spare(spare, held.info.file_content(), stamp);
        Ok(())
    }

    /// Keeps free spare `name`, holding `content`, stamped `stamp`.
    fn keep_spare(&mut self, name: String, content: Vec<u8>, stamp: Stamp) {
        for dropped in self.spares.kept(name, content, stamp) {
            // One left behind is removed at the next open.
            let _ = self.dir.remove(&dropped);
        }
    }

    /// Lock file `file` no longer links its spare, if it did, and the
    /// spare is removed: its inode is not to be trusted (a failed sync, a
    /// repair).
    pub(super) fn drop_spare_of(&mut self, file: &str) {
        if let Some(spare) = self.spares.forget(file) {
            let _ = self.dir.remove(&spare);
        }
    }

    /// Lock file `file` no longer links its spare, if it did.
    fn free_spare_of(&mut self, file: &str) {
        if self.spares.links(file) {
            for dropped in self.spares.unlinked(file) {
                let _ = self.dir.remove(&dropped);
            }
        }
    }
}
