//! File primitives on the preopened lock directory. Nothing here knows what a
//! lock means; errors carry the file they concern.

use std::collections::HashMap;
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

/// Where a lock file is written before it is renamed into place, so that a
/// reader sees either no lock file or one with its holder, never a partial
/// one. Calls are serialised (one instance per directory), so one name does.
pub const TEMP_FILE: &str = ".lockd-write.tmp";
/// Removed lock files are kept under these names (with a slot number) and
/// reused for the next lock, rewritten in place: renaming an existing file
/// costs the file system far less than creating and deleting an inode per
/// lock, as long as the file is not truncated (which frees its block).
const SPARE_PREFIX: &str = ".lockd-spare-";
/// How many removed lock files are kept for reuse.
const SPARE_SLOTS: usize = 64;
/// How many files put in place stay open (see [`LockDir::kept`]).
const KEPT_OPEN: usize = 64;
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
    /// Spare slots holding a file.
    spares: Vec<Spare>,
    /// Spare slots without a file.
    empty_slots: Vec<usize>,
    /// Files put in place that lockd keeps open (at most [`KEPT_OPEN`]), so
    /// that a lock file removed becomes a spare, and is rewritten as the
    /// next lock file, without being opened again: a lock then costs a
    /// write and a rename, an unlock a rename and a look at the open file.
    kept: HashMap<String, Descriptor>,
}

/// A removed lock file kept for reuse.
struct Spare {
    slot: usize,
    /// Its size, where known.
    size: Option<u64>,
    /// The file, where lockd has it open and it is still the one under the
    /// spare's name.
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
            spares: Vec::new(),
            empty_slots: (0..SPARE_SLOTS).rev().collect(),
            kept: HashMap::new(),
        })
    }

    /// Takes `file`, found in the directory, into the spare pool if it is a
    /// spare; returns whether it is one. Spares without a slot are removed.
    pub fn adopt_spare(&mut self, file: &str) -> Result<bool, IoError> {
        let Some(slot) = file.strip_prefix(SPARE_PREFIX) else {
            return Ok(false);
        };
        match slot.parse::<usize>() {
            Ok(slot) if spare_name(slot) == file && self.empty_slots.contains(&slot) => {
                self.empty_slots.retain(|&s| s != slot);
                self.spares.push(Spare {
                    slot,
                    size: None,
                    fd: None,
                });
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

    /// Puts `content` in place as `file`, atomically: it is written under
    /// another name (a spare, or [`TEMP_FILE`]), then renamed into place, so
    /// no reader sees it partly written. Nothing is synced: the journal, or
    /// the next checkpoint, makes it durable.
    pub fn write_atomically(&mut self, file: &str, content: &[u8]) -> Result<(), IoError> {
        let len = content.len() as u64;
        if let Some(spare) = self.spares.pop() {
            let name = spare_name(spare.slot);
            // From here on the slot's file is being rewritten, then moved.
            self.empty_slots.push(spare.slot);
            let fd = match spare.fd {
                Some(fd) => fd,
                None => self.open_for_writing(&name, OpenFlags::empty())?,
            };
            if spare.size != Some(len) {
                fd.set_size(len)
                    .map_err(|e| io_error("resizing", &name, e))?;
            }
            write_all(&fd, &name, content, 0)?;
            match self.dir.rename_at(&name, &self.dir, file) {
                Ok(()) => {
                    self.keep(file, fd);
                    return Ok(());
                }
                // The spare was removed by hand: write a new file instead.
                Err(ErrorCode::NoEntry) => {}
                Err(e) => return Err(io_error("renaming into", file, e)),
            }
        }
        let fd = self.open_for_writing(TEMP_FILE, OpenFlags::CREATE | OpenFlags::TRUNCATE)?;
        write_all(&fd, TEMP_FILE, content, 0)?;
        self.dir
            .rename_at(TEMP_FILE, &self.dir, file)
            .map_err(|e| io_error("renaming into", file, e))?;
        self.keep(file, fd);
        Ok(())
    }

    /// Keeps `fd`, just put in place as `file`, open if there is room. The
    /// file it replaced, if any, is gone, and so is its descriptor.
    fn keep(&mut self, file: &str, fd: Descriptor) {
        if self.kept.len() < KEPT_OPEN || self.kept.contains_key(file) {
            self.kept.insert(file.to_owned(), fd);
        }
    }

    /// Removes lock file `file`, whose size is `len`, keeping it as a spare
    /// when there is room; a file that is already gone is not an error.
    pub fn remove_lock_file(&mut self, file: &str, len: Option<u64>) -> Result<(), IoError> {
        let kept = self.kept.remove(file);
        if let Some(slot) = self.empty_slots.pop() {
            match self.dir.rename_at(file, &self.dir, &spare_name(slot)) {
                Ok(()) => {
                    let spare = match kept {
                        None => Spare {
                            slot,
                            size: len,
                            fd: None,
                        },
                        Some(fd) => still_in_place(slot, fd),
                    };
                    self.spares.push(spare);
                    return Ok(());
                }
                Err(ErrorCode::NoEntry) => {
                    self.empty_slots.push(slot);
                    return Ok(());
                }
                Err(_) => self.empty_slots.push(slot),
            }
        }
        self.remove(file)
    }

    /// Removes `file`; a file that is already gone is not an error.
    pub fn remove(&mut self, file: &str) -> Result<(), IoError> {
        self.kept.remove(file);
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => Ok(()),
            Err(e) => Err(io_error("removing", file, e)),
        }
    }

    /// Syncs `file`'s content to disk, if it exists.
    pub fn sync_file(&self, file: &str) -> Result<(), IoError> {
        if let Some(fd) = self.kept.get(file) {
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
        self.dir
            .open_at(
                PathFlags::empty(),
                file,
                flags,
                DescriptorFlags::READ | DescriptorFlags::WRITE,
            )
            .map_err(|e| io_error("opening for writing", file, e))
    }
}

/// The spare in `slot`, just renamed there from a file lockd kept open as
/// `fd`. The open file is still the spare only if nobody replaced the lock
/// file by hand meanwhile (an editor writing a new file, say): then it has
/// no name left, and the spare is reopened by name when next used.
fn still_in_place(slot: usize, fd: Descriptor) -> Spare {
    match fd.stat() {
        Ok(stat) if stat.link_count == 1 => Spare {
            slot,
            size: Some(stat.size),
            fd: Some(fd),
        },
        _ => Spare {
            slot,
            size: None,
            fd: None,
        },
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
