//! File primitives on the preopened lock directory. Nothing here knows what a
//! lock means; errors carry the file they concern.

use std::collections::HashMap;
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

/// Where a lock file is written before it is renamed into place when no
/// spare is at hand or the file already exists, so that a reader sees either
/// no lock file or one with its holder, never a partial one. Calls are
/// serialised (one instance per directory), so one name does.
pub const TEMP_FILE: &str = ".lockd-write.tmp";
/// Spare files, kept open under these names (with a slot number) and reused:
/// a new lock file is written into a spare and linked under its own name, so
/// it appears whole; removing the lock file unlinks that name, and the spare
/// is free for the next lock. Creating and deleting an inode per lock is what
/// costs a file system most; a link and an unlink cost less than renaming a
/// file into place and back.
const SPARE_PREFIX: &str = ".lockd-spare-";
/// How many spares there may be; each is linked as at most one lock file.
const SPARE_SLOTS: usize = 256;
/// The journal of changes not yet known to be synced in the lock files.
pub const JOURNAL_FILE: &str = ".lockd.journal";
/// The high-water mark of fencing tokens: none at or above it was issued.
pub const TOKENS_FILE: &str = ".lockd.tokens";
/// Lock files are small: a first read of this size takes most whole.
const READ_CHUNK: u64 = 4096;
/// Lock files longer than this are read only this far.
pub const MAX_LOCK_FILE: usize = 64 * 1024;

/// A failed file operation, as text for the `io` error.
pub type IoError = String;

/// The message of a failed `what` on `file`.
pub fn io_error(what: &str, file: &str, code: ErrorCode) -> IoError {
    format!("{what} {file:?}: {}", code.message())
}

/// The preopened lock directory.
pub struct LockDir {
    dir: Descriptor,
    /// Spares linked only under their own name, ready for the next lock.
    free: Vec<Spare>,
    /// Spares also linked as a lock file, by the lock file's name.
    bound: HashMap<String, Spare>,
    /// Spare slots without a file.
    empty_slots: Vec<usize>,
    /// Each slot's spare file name.
    spare_names: Vec<String>,
    /// Whether the host lets files be linked; if not, lock files are written
    /// under [`TEMP_FILE`] and renamed into place.
    links: bool,
}

/// A spare file: its slot and, once lockd has opened it, the open file.
struct Spare {
    slot: usize,
    fd: Option<Descriptor>,
}

fn spare_name(slot: usize) -> String {
    format!("{SPARE_PREFIX}{slot}")
}

impl LockDir {
    /// The first directory the host preopened.
    pub fn open() -> Result<Self, IoError> {
        let (dir, _) = get_directories().into_iter().next().ok_or_else(|| {
            "no preopened directory: the host must preopen the lock directory".to_owned()
        })?;
        Ok(Self {
            dir,
            free: Vec::new(),
            bound: HashMap::new(),
            empty_slots: (0..SPARE_SLOTS).rev().collect(),
            spare_names: (0..SPARE_SLOTS).map(spare_name).collect(),
            links: true,
        })
    }

    /// Takes `file`, found in the directory, into the spare pool if it is a
    /// spare; returns whether it is one. Spares without a slot, and spares
    /// still linked as a lock file when the last run ended, lose their spare
    /// name (the lock file keeps its content).
    pub fn adopt_spare(&mut self, file: &str) -> Result<bool, IoError> {
        let Some(slot) = file.strip_prefix(SPARE_PREFIX) else {
            return Ok(false);
        };
        let linked_once = || {
            self.dir
                .stat_at(PathFlags::empty(), file)
                .is_ok_and(|stat| stat.link_count == 1)
        };
        match slot.parse::<usize>() {
            Ok(slot)
                if spare_name(slot) == file
                    && self.empty_slots.contains(&slot)
                    && linked_once() =>
            {
                self.empty_slots.retain(|&s| s != slot);
                self.free.push(Spare { slot, fd: None });
            }
            _ => self.remove(file)?,
        }
        Ok(true)
    }

    /// The names of the regular files in the directory.
    pub fn files(&self) -> Result<Vec<String>, IoError> {
        let stream = self
            .dir
            .read_directory()
            .map_err(|e| io_error("listing", ".", e))?;
        let mut names = Vec::new();
        while let Some(entry) = stream
            .read_directory_entry()
            .map_err(|e| io_error("listing", ".", e))?
        {
            if entry.type_ == DescriptorType::RegularFile {
                names.push(entry.name);
            }
        }
        Ok(names)
    }

    /// The whole of `file` (at most `limit` bytes), or `None` if it does not
    /// exist.
    pub fn read(&self, file: &str, limit: usize) -> Result<Option<Vec<u8>>, IoError> {
        let fd = match self.dir.open_at(
            PathFlags::empty(),
            file,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(fd) => fd,
            Err(ErrorCode::NoEntry) => return Ok(None),
            Err(e) => return Err(io_error("opening", file, e)),
        };
        let mut content = Vec::new();
        while content.len() < limit {
            let want = READ_CHUNK
                .max(content.len() as u64)
                .min((limit - content.len()) as u64);
            let (chunk, end) = fd
                .read(want, content.len() as u64)
                .map_err(|e| io_error("reading", file, e))?;
            content.extend_from_slice(&chunk);
            if end || chunk.is_empty() {
                break;
            }
        }
        Ok(Some(content))
    }

    /// Puts `content` in place as `file`, atomically: a new file is written
    /// into a spare and linked as `file`; an existing one (or any, when no
    /// spare is at hand) is replaced by a file written under [`TEMP_FILE`]
    /// and renamed over it. Either way no reader sees it partly written.
    /// Nothing is synced: the journal, or the next checkpoint, makes it
    /// durable.
    pub fn write_atomically(&mut self, file: &str, content: &[u8]) -> Result<(), IoError> {
        // A file linked from a spare exists: it is replaced, not linked.
        let spare = if self.links && !self.bound.contains_key(file) {
            self.ready_spare(content)?
        } else {
            None
        };
        if let Some(spare) = spare {
            match self.dir.link_at(
                PathFlags::empty(),
                &self.spare_names[spare.slot],
                &self.dir,
                file,
            ) {
                Ok(()) => {
                    self.bound.insert(file.to_owned(), spare);
                    return Ok(());
                }
                // `file` exists: replaced below; the spare stays free.
                Err(ErrorCode::Exist) => self.free.push(spare),
                // The spare was removed by hand.
                Err(ErrorCode::NoEntry) => self.empty_slots.push(spare.slot),
                // A host (or file system) without hard links.
                Err(
                    ErrorCode::Unsupported
                    | ErrorCode::NotPermitted
                    | ErrorCode::Access
                    | ErrorCode::TooManyLinks,
                ) => {
                    self.free.push(spare);
                    self.links = false;
                }
                Err(e) => {
                    self.free.push(spare);
                    return Err(io_error("linking", file, e));
                }
            }
        }
        self.rename_into_place(file, content, false)
    }

    /// Writes `content` under [`TEMP_FILE`] (its data synced first if
    /// `synced`) and renames it over `file`.
    fn rename_into_place(
        &mut self,
        file: &str,
        content: &[u8],
        synced: bool,
    ) -> Result<(), IoError> {
        let fd = self.open_for_writing(TEMP_FILE, OpenFlags::CREATE | OpenFlags::TRUNCATE)?;
        write_all(&fd, TEMP_FILE, content, 0)?;
        if synced {
            fd.sync_data()
                .map_err(|e| io_error("syncing", TEMP_FILE, e))?;
        }
        drop(fd);
        self.dir
            .rename_at(TEMP_FILE, &self.dir, file)
            .map_err(|e| io_error("renaming into", file, e))?;
        // The file replaced is no longer linked as `file`.
        if let Some(spare) = self.bound.remove(file) {
            self.free.push(spare);
        }
        Ok(())
    }

    /// A free spare holding `content` (and nothing after it), or `None` when
    /// every slot's spare is linked as a lock file.
    fn ready_spare(&mut self, content: &[u8]) -> Result<Option<Spare>, IoError> {
        loop {
            let (slot, fd) = match self.free.pop() {
                Some(Spare { slot, fd: Some(fd) }) => (slot, fd),
                popped => {
                    // A spare found at start, or a new one in an empty slot.
                    let (slot, flags) = match popped {
                        Some(Spare { slot, .. }) => (slot, OpenFlags::empty()),
                        None => match self.empty_slots.pop() {
                            Some(slot) => (slot, OpenFlags::CREATE | OpenFlags::TRUNCATE),
                            None => return Ok(None),
                        },
                    };
                    let name = &self.spare_names[slot];
                    match self.open_rw(name, flags) {
                        Ok(fd) => (slot, fd),
                        // Found at start, removed by hand since: the slot is
                        // empty, and gets a new spare when its turn comes.
                        Err(ErrorCode::NoEntry) if !flags.contains(OpenFlags::CREATE) => {
                            self.empty_slots.push(slot);
                            continue;
                        }
                        Err(e) => {
                            let e = io_error("opening for writing", name, e);
                            self.empty_slots.push(slot);
                            return Err(e);
                        }
                    }
                }
            };
            // Its size as it is, not as lockd left it: a lock file edited in
            // place by hand is the spare it was linked from. A spare linked
            // elsewhere too (by hand) is not written to; it loses its name.
            let stat = match fd.stat() {
                Ok(stat) => stat,
                Err(e) => {
                    self.free.push(Spare { slot, fd: Some(fd) });
                    return Err(io_error("looking at", &self.spare_names[slot], e));
                }
            };
            if stat.link_count != 1 {
                let name = self.spare_names[slot].clone();
                self.remove(&name)?;
                self.empty_slots.push(slot);
                continue;
            }
            let len = content.len() as u64;
            let written = if stat.size == len {
                Ok(())
            } else {
                fd.set_size(len)
                    .map_err(|e| io_error("resizing", &self.spare_names[slot], e))
            }
            .and_then(|()| write_all(&fd, &self.spare_names[slot], content, 0));
            // A spare not linked anywhere else stays free even if writing it
            // failed: it is written again before its next use.
            let spare = Spare { slot, fd: Some(fd) };
            return match written {
                Ok(()) => Ok(Some(spare)),
                Err(e) => {
                    self.free.push(spare);
                    Err(e)
                }
            };
        }
    }

    /// Removes `file`; a file that is already gone is not an error. The
    /// spare a lock file was linked from is free again.
    pub fn remove(&mut self, file: &str) -> Result<(), IoError> {
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => {
                if let Some(spare) = self.bound.remove(file) {
                    self.free.push(spare);
                }
                Ok(())
            }
            Err(e) => Err(io_error("removing", file, e)),
        }
    }

    /// Puts `content` in place as `file` for good before returning: written
    /// under [`TEMP_FILE`], its data synced, renamed over `file`, and the
    /// directory synced. Whatever happens meanwhile (power loss included),
    /// `file` holds its old content or the new one, whole: the name never
    /// points at data that did not reach the disk.
    pub fn replace_durably(&mut self, file: &str, content: &[u8]) -> Result<(), IoError> {
        self.rename_into_place(file, content, true)?;
        self.sync()
    }

    /// Syncs `file`'s content to disk, if it exists.
    pub fn sync_file(&self, file: &str) -> Result<(), IoError> {
        if let Some(Spare { fd: Some(fd), .. }) = self.bound.get(file) {
            return fd.sync().map_err(|e| io_error("syncing", file, e));
        }
        match self.dir.open_at(
            PathFlags::empty(),
            file,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(fd) => fd.sync().map_err(|e| io_error("syncing", file, e)),
            Err(ErrorCode::NoEntry) => Ok(()),
            Err(e) => Err(io_error("opening", file, e)),
        }
    }

    /// Syncs the directory itself: which names exist.
    pub fn sync(&self) -> Result<(), IoError> {
        self.dir.sync().map_err(|e| io_error("syncing", ".", e))
    }

    /// Opens `file` for writing, creating it if missing.
    pub fn create(&self, file: &str) -> Result<Descriptor, IoError> {
        self.open_for_writing(file, OpenFlags::CREATE)
    }

    fn open_for_writing(&self, file: &str, flags: OpenFlags) -> Result<Descriptor, IoError> {
        self.open_rw(file, flags)
            .map_err(|e| io_error("opening for writing", file, e))
    }

    fn open_rw(&self, file: &str, flags: OpenFlags) -> Result<Descriptor, ErrorCode> {
        self.dir.open_at(
            PathFlags::empty(),
            file,
            flags,
            DescriptorFlags::READ | DescriptorFlags::WRITE,
        )
    }
}

/// Writes all of `content` to `fd` at `offset`.
pub fn write_all(fd: &Descriptor, file: &str, content: &[u8], offset: u64) -> Result<(), IoError> {
    let mut written = 0;
    while written < content.len() {
        let n = fd
            .write(&content[written..], offset + written as u64)
            .map_err(|e| io_error("writing", file, e))?;
        written += n as usize;
    }
    Ok(())
}
