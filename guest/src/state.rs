//! The lock table: which resource is held by whom, kept in memory and in the
//! lock directory, changed in batches with one sync per batch.

use crate::dir::{IoError, LockDir, MAX_LOCK_FILE, TEMP_FILE};
use crate::journal::{self, Journal, Record};
use crate::lease::LockInfo;
use crate::name;
use crate::tokens::Tokens;
use std::collections::{HashMap, HashSet};

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

/// A resource whose lock expired or was broken: unavailable until
/// `until_ms`, and remembered for a while after, so that its old holder
/// learns that it lost the lock rather than that nobody holds it.
#[derive(Debug, Clone)]
pub(crate) struct Cooling {
    /// Who held it.
    pub client: String,
    pub until_ms: u64,
    /// Forgotten from then on.
    pub forget_ms: u64,
    /// Whether a sweep has reported it available.
    pub announced: bool,
}

/// A change made in memory, to be written to the lock files once durable.
pub(crate) enum Change {
    Write { file: String, content: Vec<u8> },
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

/// The open lock directory.
pub struct State {
    pub(crate) dir: LockDir,
    durability: Durability,
    pub(crate) lock_delay_ms: u64,
    pub(crate) held: HashMap<String, Held>,
    pub(crate) cooling: HashMap<String, Cooling>,
    pub(crate) tokens: Tokens,
    /// Present with `Durability::Always`.
    journal: Option<Journal>,
    /// Lock files written since the last checkpoint, not yet synced.
    unsynced: HashSet<String>,
}

impl State {
    /// Opens the preopened directory; see the WIT `open`.
    pub fn open(settings: Settings) -> Result<(Self, Report), IoError> {
        let mut dir = LockDir::open()?;
        let mut report = Report::default();
        let mut held = HashMap::new();
        for file in dir.files()? {
            if dir.adopt_spare(&file)? {
                continue;
            }
            if file == TEMP_FILE {
                dir.remove(&file)?;
                report
                    .notes
                    .push(format!("removed {file}, left by an interrupted write"));
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
                Ok(Some(content)) => {
                    let info = LockInfo::parse(resource.clone(), &content);
                    if info.client.is_empty() {
                        report
                            .notes
                            .push(format!("{file:?} names no holder: the lock is held by ''"));
                    }
                    held.insert(resource, Held { info, file });
                }
                Ok(None) => {}
                Err(e) => report
                    .notes
                    .push(format!("unreadable lock file left alone: {e}")),
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
        let tokens = Tokens::open(&dir, seen)?;
        let mut state = Self {
            dir,
            durability: settings.durability,
            lock_delay_ms: settings.lock_delay_ms,
            held,
            cooling: HashMap::new(),
            tokens,
            journal: Some(journal),
            unsynced: HashSet::new(),
        };
        report.replayed = records.len() as u64;
        state.replay(records)?;
        // Folds the replayed changes into the lock files and empties the
        // journal, so every run starts from files that are the whole truth.
        state.checkpoint()?;
        if settings.durability == Durability::None {
            state.journal = None;
        }
        report.held = state.held.len() as u64;
        Ok((state, report))
    }

    /// Redoes the journal's changes on the lock files: for each resource,
    /// what its last record says.
    fn replay(&mut self, records: Vec<Record>) -> Result<(), IoError> {
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        for record in records {
            match record {
                Record::Put { resource, content } => last.insert(resource, Some(content)),
                Record::Remove { resource } => last.insert(resource, None),
            };
        }
        for (resource, content) in last {
            if let Some(old) = self.held.remove(&resource) {
                self.dir.remove(&old.file)?;
            }
            if let Some(content) = content {
                let file = name::lock_file_name(&resource)
                    .map_err(|e| format!("journal names a resource that cannot be stored: {e}"))?;
                let info = LockInfo::parse(resource.clone(), content.as_bytes());
                self.put(resource, info, file)?;
            }
        }
        Ok(())
    }

    /// Writes `info` as lock file `file` (unsynced) and holds it.
    fn put(&mut self, resource: String, info: LockInfo, file: String) -> Result<(), IoError> {
        let content = info.file_content();
        self.dir.write_atomically(&file, &content)?;
        self.unsynced.insert(file.clone());
        self.held.insert(resource, Held { info, file });
        Ok(())
    }

    /// Syncs every lock file written since the last checkpoint and the
    /// directory, then empties the journal.
    fn checkpoint(&mut self) -> Result<(), IoError> {
        for file in &self.unsynced {
            self.dir.sync_file(file)?;
        }
        self.dir.sync()?;
        self.unsynced.clear();
        if let Some(journal) = &mut self.journal {
            journal.reset()?;
        }
        Ok(())
    }

    /// Runs a batch at `now_ms` (milliseconds since the Unix epoch, on a
    /// clock that does not run backwards); see the WIT `apply`.
    pub fn apply(&mut self, batch: Vec<Request>, now_ms: u64) -> Vec<Result<Reply, Error>> {
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
        // Durable in the journal: the lock files follow. A lock file that
        // cannot be written now is rewritten from the journal at the next
        // open; the change itself stands.
        for (_, steps) in &changed {
            let _ = self.perform_all(steps);
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.len() > CHECKPOINT_BYTES)
        {
            let _ = self.checkpoint();
        }
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

    fn perform_all(&mut self, steps: &[Step]) -> Result<(), IoError> {
        for (done, step) in steps.iter().enumerate() {
            if let Err(e) = self.perform(&step.change) {
                // Put back the files of the steps already done.
                for step in steps[..done].iter().rev() {
                    let _ = match &step.before {
                        Some(held) => {
                            let content = held.info.file_content();
                            self.dir.write_atomically(&held.file, &content)
                        }
                        None => match &step.change {
                            Change::Write { file, .. } => self.dir.remove(file),
                            Change::Remove { .. } => Ok(()),
                        },
                    };
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn perform(&mut self, change: &Change) -> Result<(), IoError> {
        match change {
            Change::Write { file, content } => {
                self.dir.write_atomically(file, content)?;
                // Only a checkpoint reads this, and with `None` no checkpoint
                // follows the one at open.
                if self.durability == Durability::Always {
                    self.unsynced.insert(file.clone());
                }
            }
            Change::Remove { file } => {
                self.dir.remove(file)?;
                // (Removing from an empty set still hashes the key.)
                if !self.unsynced.is_empty() {
                    self.unsynced.remove(file);
                }
            }
        }
        Ok(())
    }
}
