//! The lock table: which resource is held by whom, kept in memory and in the
//! lock directory, changed in batches with one sync per batch.

use crate::dir::{IoError, LockDir, TEMP_FILE};
use crate::journal::{self, Journal, Record};
use crate::name;
use std::collections::{HashMap, HashSet};

/// The journal is folded into the lock files (which are then synced) and
/// emptied once it grows past this.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A failure of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    AlreadyLocked(String),
    NotLocked,
    NotOwner(String),
    InvalidName(String),
    Io(String),
}

/// When a change is durable; see the WIT `durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Always,
    None,
}

/// One request of a batch.
pub enum Request {
    Lock { resource: String, client: String },
    Unlock { resource: String, client: String },
    Holder { resource: String },
}

/// The result of one successful request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    Holder(Option<String>),
}

/// What opening found; see the WIT `open-report`.
#[derive(Debug, Default)]
pub struct Report {
    pub held: u64,
    pub replayed: u64,
    pub notes: Vec<String>,
}

/// A held lock.
#[derive(Debug, Clone)]
struct Held {
    holder: String,
    /// The lock file: lockd's name for the resource, or the unencoded name
    /// gocept.lockd gave it.
    file: String,
    /// The lock file's size, if this run wrote it (and so knows it).
    len: Option<u64>,
}

/// A change made in memory, to be written to the lock files once durable.
enum Change {
    Write {
        file: String,
        content: Vec<u8>,
    },
    /// `len` is the lock file's size, where known.
    Remove {
        file: String,
        len: Option<u64>,
    },
}

/// The open lock directory.
pub struct State {
    dir: LockDir,
    durability: Durability,
    held: HashMap<String, Held>,
    /// Present with `Durability::Always`.
    journal: Option<Journal>,
    /// Lock files written since the last checkpoint, not yet synced.
    unsynced: HashSet<String>,
}

fn lock_file_content(holder: &str) -> Vec<u8> {
    format!("{holder}\n").into_bytes()
}

impl State {
    /// Opens the preopened directory; see the WIT `open`.
    pub fn open(durability: Durability) -> Result<(Self, Report), IoError> {
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
            match dir.read_holder(&file) {
                Ok(Some(holder)) => {
                    if holder.is_empty() {
                        report
                            .notes
                            .push(format!("{file:?} names no holder: the lock is held by ''"));
                    }
                    held.insert(
                        resource,
                        Held {
                            holder,
                            file,
                            len: None,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => report
                    .notes
                    .push(format!("unreadable lock file left alone: {e}")),
            }
        }
        let mut state = Self {
            dir,
            durability,
            held,
            journal: None,
            unsynced: HashSet::new(),
        };
        let (journal, records) = Journal::open(&state.dir)?;
        report.replayed = records.len() as u64;
        state.replay(records)?;
        state.journal = Some(journal);
        // Folds the replayed changes into the lock files and empties the
        // journal, so every run starts from files that are the whole truth.
        state.checkpoint()?;
        if durability == Durability::None {
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
                Record::Lock { resource, client } => last.insert(resource, Some(client)),
                Record::Unlock { resource } => last.insert(resource, None),
            };
        }
        for (resource, holder) in last {
            let current = self.held.get(&resource).map(|h| h.holder.as_str());
            if current == holder.as_deref() {
                continue;
            }
            if let Some(old) = self.held.remove(&resource) {
                self.dir.remove_lock_file(&old.file, None)?;
            }
            if let Some(holder) = holder {
                let file = name::lock_file_name(&resource)
                    .map_err(|e| format!("journal names a resource that cannot be stored: {e}"))?;
                let content = lock_file_content(&holder);
                self.dir.write_atomically(&file, &content)?;
                self.unsynced.insert(file.clone());
                let len = Some(content.len() as u64);
                self.held.insert(resource, Held { holder, file, len });
            }
        }
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
        if let Some(journal) = &mut self.journal
            && journal.len() > 0
        {
            journal.truncate(0)?;
        }
        Ok(())
    }

    /// Runs a batch; see the WIT `apply`.
    pub fn apply(&mut self, batch: Vec<Request>) -> Vec<Result<Reply, Error>> {
        let mut results = Vec::with_capacity(batch.len());
        // Per change: the index of its result, the resource and what it
        // held before, and what to do to the lock files.
        let mut changes: Vec<(usize, String, Option<Held>, Change)> = Vec::new();
        let mut records = Vec::new();
        for request in batch {
            let outcome = self.decide(request);
            match outcome {
                Ok((reply, None)) => results.push(Ok(reply)),
                Ok((reply, Some((resource, before, change, record)))) => {
                    if self.durability == Durability::None {
                        // Nothing to sync: the lock files are the record.
                        match self.perform(&change) {
                            Ok(()) => results.push(Ok(reply)),
                            Err(e) => {
                                self.restore(resource, before);
                                results.push(Err(Error::Io(e)));
                            }
                        }
                    } else {
                        journal::encode(&record, &mut records);
                        changes.push((results.len(), resource, before, change));
                        results.push(Ok(reply));
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if changes.is_empty() {
            return results;
        }
        let journal = self
            .journal
            .as_mut()
            .expect("a journal with Durability::Always");
        if let Err(e) = journal.append(&records) {
            for (i, resource, before, _) in changes.into_iter().rev() {
                self.restore(resource, before);
                results[i] = Err(Error::Io(e.clone()));
            }
            return results;
        }
        // Durable in the journal: the lock files follow. A lock file that
        // cannot be written now is rewritten from the journal at the next
        // open; the change itself stands.
        for (_, _, _, change) in &changes {
            let _ = self.perform(change);
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

    /// What `request` does to the table: its reply and, for a change, the
    /// resource, its previous state, the file change and the journal
    /// record. The table is changed already; [`restore`](Self::restore)
    /// takes it back.
    #[allow(clippy::type_complexity)]
    fn decide(
        &mut self,
        request: Request,
    ) -> Result<(Reply, Option<(String, Option<Held>, Change, Record)>), Error> {
        match request {
            Request::Holder { resource } => {
                name::lock_file_name(&resource).map_err(Error::InvalidName)?;
                let holder = self.held.get(&resource).map(|h| h.holder.clone());
                Ok((Reply::Holder(holder), None))
            }
            Request::Lock { resource, client } => {
                let file = name::lock_file_name(&resource).map_err(Error::InvalidName)?;
                name::check_client(&client).map_err(Error::InvalidName)?;
                if let Some(held) = self.held.get(&resource) {
                    return Err(Error::AlreadyLocked(held.holder.clone()));
                }
                let content = lock_file_content(&client);
                self.held.insert(
                    resource.clone(),
                    Held {
                        len: Some(content.len() as u64),
                        holder: client.clone(),
                        file: file.clone(),
                    },
                );
                let change = Change::Write { file, content };
                let record = Record::Lock {
                    resource: resource.clone(),
                    client,
                };
                Ok((Reply::Done, Some((resource, None, change, record))))
            }
            Request::Unlock { resource, client } => {
                name::lock_file_name(&resource).map_err(Error::InvalidName)?;
                name::check_client(&client).map_err(Error::InvalidName)?;
                match self.held.get(&resource) {
                    None => Err(Error::NotLocked),
                    Some(held) if held.holder != client => {
                        Err(Error::NotOwner(held.holder.clone()))
                    }
                    Some(_) => {
                        let before = self.held.remove(&resource).expect("just seen");
                        let change = Change::Remove {
                            file: before.file.clone(),
                            len: before.len,
                        };
                        let record = Record::Unlock {
                            resource: resource.clone(),
                        };
                        Ok((Reply::Done, Some((resource, Some(before), change, record))))
                    }
                }
            }
        }
    }

    fn restore(&mut self, resource: String, before: Option<Held>) {
        match before {
            Some(held) => self.held.insert(resource, held),
            None => self.held.remove(&resource),
        };
    }

    fn perform(&mut self, change: &Change) -> Result<(), IoError> {
        match change {
            Change::Write { file, content } => {
                self.dir.write_atomically(file, content)?;
                self.unsynced.insert(file.clone());
            }
            Change::Remove { file, len } => {
                self.dir.remove_lock_file(file, *len)?;
                self.unsynced.remove(file);
            }
        }
        Ok(())
    }
}
