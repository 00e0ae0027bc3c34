//! The lock table: which resource is held by whom, kept in memory and in the
//! lock directory, changed in batches with one sync per batch.

use crate::dir::{IoError, LockDir, MAX_LOCK_FILE, TEMP_FILE};
use crate::journal::{self, Journal, Record};
use crate::lease::LockInfo;
use crate::name;
use crate::rules;
use crate::tokens::Tokens;
use std::collections::HashMap;

/// The journal is folded into the lock files (which are then synced) and
/// emptied once it grows past this.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A failure of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    AlreadyLocked(String),
    /// Free, but its last lock expired or was broken less than the
    /// lock-delay ago: milliseconds left.
    CoolingDown(u64),
    NotLocked,
    NotOwner(String),
    InvalidName(String),
    /// The asker's lease ran out.
    LeaseExpired,
    /// The token given is not the current holder's.
    StaleToken,
    Io(String),
}

/// When a change is durable; see the WIT `durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Always,
    None,
}

/// How the directory is opened; see the WIT `options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub durability: Durability,
    /// How long an expired or broken lock stays unavailable.
    pub lock_delay_ms: u64,
}

/// One request of a batch; see the WIT `request`.
#[derive(Debug, Clone)]
pub enum Request {
    Lock {
        resource: String,
        client: String,
    },
    Unlock {
        resource: String,
        client: String,
    },
    Holder {
        resource: String,
    },
    Acquire {
        resource: String,
        client: String,
        ttl_ms: Option<u64>,
        reentrant: bool,
    },
    Release {
        resource: String,
        client: String,
        token: Option<u64>,
    },
    Renew {
        resource: String,
        client: String,
        ttl_ms: u64,
        token: Option<u64>,
    },
    Status {
        resource: String,
    },
    Check {
        resource: String,
        token: u64,
    },
    Break {
        resource: String,
    },
    List {
        prefix: String,
        after: Option<String>,
        limit: Option<u32>,
    },
    Count {
        prefix: String,
    },
    Sweep,
}

/// The result of one successful request; see the WIT `reply`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    Holder(Option<String>),
    Lock(LockInfo),
    Status(Option<LockInfo>),
    Valid(bool),
    Locks(Vec<LockInfo>),
    Count(u64),
    Swept(Swept),
}

/// What a sweep did; see the WIT `swept`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub expired: Vec<LockInfo>,
    pub available: Vec<String>,
    pub next_deadline_ms: Option<u64>,
    pub now_ms: u64,
}

/// What opening found; see the WIT `open-report`.
#[derive(Debug, Default)]
pub struct Report {
    pub held: u64,
    pub replayed: u64,
    pub notes: Vec<String>,
}

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
    /// Opens the preopened directory; see the WIT `open`. Fails only when
    /// something that says who holds what cannot be read: the directory, a
    /// lock file, the journal, or both token marks. What a power loss can
    /// leave is reported in the notes, and a checkpoint that fails leaves
    /// the journal to keep the changes until one succeeds.
    pub fn open(settings: Settings) -> Result<(Self, Report), IoError> {
        let mut dir = LockDir::open()?;
        let mut report = Report::default();
        let mut held = HashMap::new();
        let mut stale = HashMap::new();
        for file in dir.files()? {
            if file == TEMP_FILE || LockDir::is_old_spare(&file) {
                match dir.remove(&file) {
                    Ok(()) if file == TEMP_FILE => report
                        .notes
                        .push(format!("removed {file}, left by an interrupted write")),
                    Ok(()) => {}
                    Err(e) => report.notes.push(format!("left {file}: {e}")),
                }
                continue;
            }
            let Some(resource) = name::resource_of_file(&file) else {
                if !file.starts_with(".lockd") {
                    report
                        .notes
                        .push(format!("left alone {file:?}: not a lock file"));
                }
                continue;
            };
            match dir.read(&file, MAX_LOCK_FILE) {
                Ok(Some(content)) if cut_short(&content) => {
                    report.notes.push(format!(
                        "{file:?} is the remains of a write cut short ({} bytes, no whole \
                         last line): not a lock, removed (the journal puts back any \
                         acknowledged lock it was)",
                        content.len()
                    ));
                    stale.insert(file, resource);
                }
                Ok(Some(content)) => {
                    let info = LockInfo::parse(resource.clone(), &content);
                    held.insert(resource, Held { info, file });
                }
                Ok(None) => {}
                // Serving a lock whose file cannot be read as free would
                // hand it to a second holder: no opening until it can be.
                Err(e) => return Err(format!("cannot read a lock file: {e}")),
            }
        }
        let (journal, records) = Journal::open(&dir)?;
        let mut seen = held.values().map(|h| h.info.token).max().unwrap_or(0);
        for record in &records {
            if let Record::Put { resource, content } = record {
                let info = LockInfo::parse(resource.clone(), content.as_bytes());
                seen = seen.max(info.token);
            }
        }
        let tokens = Tokens::open(&dir, seen, &mut report.notes)?;
        let mut state = Self {
            dir,
            durability: settings.durability,
            lock_delay_ms: settings.lock_delay_ms,
            held,
            cooling: HashMap::new(),
            tokens,
            journal: Some(journal),
            unsynced: HashMap::new(),
            stale,
            trouble: None,
            retry_at_ms: 0,
        };
        report.replayed = records.len() as u64;
        state.replay(records, &mut report.notes);
        // Folds the replayed changes into the lock files and empties the
        // journal, so that a run normally starts from files that are the
        // whole truth. If that fails (a full disk), the journal keeps them
        // and the run goes on with the cycle it found.
        if let Err(e) = state.checkpoint() {
            let journal = state.journal.as_mut().expect("kept until a checkpoint");
            let resumed = journal.resume();
            report.notes.push(match resumed {
                Ok(()) => format!(
                    "the lock files could not be brought up to date ({e}): the journal \
                     keeps the changes, and lockd tries again every second"
                ),
                Err(r) => format!(
                    "the lock files could not be brought up to date ({e}), and the \
                     journal cannot take changes ({r}): changes are refused until \
                     a checkpoint succeeds, tried every second"
                ),
            });
        }
        report.held = state.held.len() as u64;
        Ok((state, report))
    }

    /// Redoes the journal's changes: for each resource, what its last
    /// record says, in memory and in its lock file.
    fn replay(&mut self, records: Vec<Record>, notes: &mut Vec<String>) {
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        for record in records {
            match record {
                Record::Put { resource, content } => last.insert(resource, Some(content)),
                Record::Remove { resource } => last.insert(resource, None),
            };
        }
        for (resource, content) in last {
            let old = self.held.remove(&resource);
            let Some(content) = content else {
                if let Some(old) = old {
                    // Stale if it fails: the checkpoint tries again.
                    let _ = self.show(old.file, resource);
                }
                continue;
            };
            let file = match name::lock_file_name(&resource) {
                Ok(file) => file,
                Err(e) => {
                    notes.push(format!(
                        "journal names a resource that cannot be stored, left out: {e}"
                    ));
                    continue;
                }
            };
            if let Some(old) = old.filter(|old| old.file != file) {
                // A lock file of gocept.lockd's naming, now lockd's.
                let _ = self.show(old.file, resource.clone());
            }
            let info = LockInfo::parse(resource.clone(), content.as_bytes());
            self.held.insert(
                resource.clone(),
                Held {
                    info,
                    file: file.clone(),
                },
            );
            let _ = self.show(file, resource);
        }
    }

    /// Makes lock file `file` of `resource` show what memory holds: its
    /// content if `resource` is held under that name, no file otherwise.
    /// On failure it stays stale.
    fn show(&mut self, file: String, resource: String) -> Result<(), IoError> {
        let written = match self.held.get(&resource) {
            Some(held) if held.file == file => {
                let content = held.info.file_content();
                self.dir.write_atomically(&file, &content)
            }
            _ => self.dir.remove(&file),
        };
        match written {
            Ok(()) => {
                self.unsynced.insert(file, resource);
                Ok(())
            }
            Err(e) => {
                self.stale.insert(file, resource);
                Err(e)
            }
        }
    }

    /// Brings every lock file up to date and synced (with the directory),
    /// then empties the journal. Fails, changing nothing that counts, if
    /// any step fails; see [`State`].
    fn checkpoint(&mut self) -> Result<(), IoError> {
        let result = self.try_checkpoint();
        self.trouble = result.as_ref().err().cloned();
        result
    }

    fn try_checkpoint(&mut self) -> Result<(), IoError> {
        let mut failed = None;
        for (file, resource) in std::mem::take(&mut self.stale) {
            if let Err(e) = self.show(file, resource) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let synced = self
            .unsynced
            .keys()
            .try_for_each(|file| self.dir.sync_file(file))
            .and_then(|()| self.dir.sync());
        if let Err(e) = synced {
            self.stale.extend(self.unsynced.drain());
            return Err(e);
        }
        self.unsynced.clear();
        if let Some(journal) = &mut self.journal {
            journal.reset()?;
        }
        if self.durability == Durability::None {
            self.journal = None;
        }
        Ok(())
    }

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

/// Whether a lock file's content is what a write cut short can leave:
/// nothing, or lines of lockd's format whose last is not whole. (Lock files
/// of gocept.lockd hold the holder alone, without a newline; lockd's end
/// with one.)
fn cut_short(content: &[u8]) -> bool {
    content.is_empty() || (content.contains(&b'\n') && !content.ends_with(b"\n"))
}
