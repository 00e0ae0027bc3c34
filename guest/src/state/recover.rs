//! Opening the lock directory: reading the lock files, the snapshot and
//! the token marks, replaying the journal, and checkpoints (the journal
//! folded into the lock files, which are synced, and the snapshot, and
//! emptied).

use super::spares::{SPARE_PREFIX, Spares};
use super::{Durability, Held, Report, Settings, State};
use crate::dir::{IoError, LockDir, MAX_LOCK_FILE, SNAPSHOT_FILE, Stamp, TEMP_FILE};
use crate::journal::{Journal, Record};
use crate::lease::LockInfo;
use crate::name;
use crate::snapshot;
use crate::tokens::Tokens;
use std::collections::HashMap;

impl State {
    /// Opens the preopened directory; see the WIT `open`. Fails only when
    /// something that says who holds what cannot be read: the directory, a
    /// lock file, the journal, the snapshot, or both token marks. What a
    /// power loss can leave is reported in the notes, and a checkpoint that
    /// fails leaves the journal to keep the changes until one succeeds.
    pub fn open(settings: Settings) -> Result<(Self, Report), IoError> {
        let mut dir = LockDir::open()?;
        let mut report = Report::default();
        let mut held = HashMap::new();
        let mut stale = HashMap::new();
        for file in dir.files()? {
            if file == TEMP_FILE || file.starts_with(SPARE_PREFIX) {
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
            match dir.read_stamped(&file, MAX_LOCK_FILE) {
                Ok(Some((content, _))) if cut_short(&content) => {
                    report.notes.push(format!(
                        "{file:?} is the remains of a write cut short ({} bytes, no whole \
                         last line): not a lock, removed (the journal puts back any \
                         acknowledged lock it was)",
                        content.len()
                    ));
                    stale.insert(file, resource);
                }
                Ok(Some((content, stamp))) => {
                    let info = LockInfo::parse(resource.clone(), &content);
                    // A file as lockd writes them now: its record may be
                    // in the snapshot.
                    let stamp = Some(stamp).filter(|_| content == info.file_content());
                    held.insert(resource, Held { info, file, stamp });
                }
                Ok(None) => {}
                // Serving a lock whose file cannot be read as free would
                // hand it to a second holder: no opening until it can be.
                Err(e) => return Err(format!("cannot read a lock file: {e}")),
            }
        }
        let recorded = snapshot::read(&dir, &mut report.notes)?;
        let mut seen = recorded
            .iter()
            .map(|(info, _)| info.token)
            .max()
            .unwrap_or(0);
        for (info, stamp) in recorded {
            complete(&mut held, info, stamp);
        }
        let synced = settings.durability == Durability::Always;
        let (journal, records) = Journal::open(&dir, synced)?;
        seen = seen.max(held.values().map(|h| h.info.token).max().unwrap_or(0));
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
            journal,
            snapshot_bytes: 0,
            spares: Spares::default(),
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
            let resumed = state.journal.resume();
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
                    stamp: None,
                },
            );
            let _ = self.show(file, resource);
        }
    }

    /// Makes lock file `file` of `resource` show what memory holds: its
    /// content if `resource` is held under that name, no file otherwise.
    /// On failure it stays stale.
    fn show(&mut self, file: String, resource: String) -> Result<(), IoError> {
        // Whatever inode the name links, it is replaced or removed.
        self.drop_spare_of(&file);
        let written = match self.held.get_mut(&resource) {
            Some(held) if held.file == file => {
                let content = held.info.file_content();
                held.stamp = None;
                self.put_held(&resource, &file, &content)
            }
            _ => self.dir.remove(&file),
        };
        match written {
            Ok(()) => {
                if self.durability == Durability::Always {
                    self.unsynced.insert(file, resource);
                }
                Ok(())
            }
            Err(e) => {
                self.stale.insert(file, resource);
                Err(e)
            }
        }
    }

    /// Brings every lock file up to date and synced (with the directory),
    /// writes the snapshot, then empties the journal. Fails, changing
    /// nothing that counts, if any step fails; see [`State`]. With
    /// `Durability::None` nothing is synced.
    pub(super) fn checkpoint(&mut self) -> Result<(), IoError> {
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
        let always = self.durability == Durability::Always;
        if always {
            let synced = self
                .unsynced
                .keys()
                .try_for_each(|file| self.dir.sync_file(file))
                .and_then(|()| self.dir.sync());
            if let Err(e) = synced {
                let failed: Vec<_> = self.unsynced.drain().collect();
                for (file, _) in &failed {
                    // The inode may not be on disk: never linked again.
                    self.drop_spare_of(file);
                }
                self.stale.extend(failed);
                return Err(e);
            }
            self.unsynced.clear();
        }
        let snapshot = snapshot::encode(self.held.values().map(|held| (&held.info, held.stamp)));
        if always {
            self.dir.replace_durably(SNAPSHOT_FILE, &snapshot)?;
        } else {
            self.dir.write_atomically(SNAPSHOT_FILE, &snapshot)?;
        }
        self.snapshot_bytes = snapshot.len() as u64;
        self.journal.reset(self.checkpoint_bytes())
    }
}

/// Completes the lock of `info.resource` in `held` with `info`, a
/// snapshot's record of it, if its file is still the one the record was
/// written with (`stamp`, which lockd wrote holding the holder alone).
fn complete(held: &mut HashMap<String, Held>, info: LockInfo, stamp: Option<Stamp>) {
    let Some(lock) = held.get_mut(&info.resource) else {
        return;
    };
    if stamp.is_some() && lock.stamp == stamp && lock.info.client == info.client {
        lock.info = info;
    }
}

/// Whether a lock file's content is what a write cut short can leave:
/// nothing, or lines of lockd's format whose last is not whole. (Lock files
/// of gocept.lockd hold the holder alone, without a newline; lockd's end
/// with one.)
fn cut_short(content: &[u8]) -> bool {
    content.is_empty() || (content.contains(&b'\n') && !content.ends_with(b"\n"))
}
