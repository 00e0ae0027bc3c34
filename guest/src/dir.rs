//! File primitives on the preopened lock directory. Nothing here knows what a
//! lock means; errors carry the file they concern.

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
    /// Spare slots holding a file, with its size where known.
    spares: Vec<(usize, Option<u64>)>,
    /// Spare slots without a file.
    empty_slots: Vec<usize>,
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
                self.spares.push((slot, None));
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
        let spare = self.spares.pop();
        let (staging, fd) = match spare {
            Some((slot, size)) => {
                let name = spare_name(slot);
                let fd = self.open_for_writing(&name, OpenFlags::empty())?;
                if size != Some(len) {
                    fd.set_size(len)
                        .map_err(|e| io_error("resizing", &name, e))?;
                }
                (name, fd)
            }
            None => {
                let fd =
                    self.open_for_writing(TEMP_FILE, OpenFlags::CREATE | OpenFlags::TRUNCATE)?;
                (TEMP_FILE.to_owned(), fd)
            }
        };
        if let Some((slot, _)) = spare {
            // From here on the slot's file is being rewritten, then moved.
            self.empty_slots.push(slot);
        }
        write_all(&fd, &staging, content, 0)?;
        drop(fd);
        self.dir
            .rename_at(&staging, &self.dir, file)
            .map_err(|e| io_error("renaming into", file, e))
    }

    /// Removes lock file `file`, whose size is `len`, keeping it as a spare
    /// when there is room; a file that is already gone is not an error.
    pub fn remove_lock_file(&mut self, file: &str, len: Option<u64>) -> Result<(), IoError> {
        if let Some(slot) = self.empty_slots.pop() {
            match self.dir.rename_at(file, &self.dir, &spare_name(slot)) {
                Ok(()) => {
                    self.spares.push((slot, len));
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
    pub fn remove(&self, file: &str) -> Result<(), IoError> {
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => Ok(()),
            Err(e) => Err(io_error("removing", file, e)),
        }
    }

    /// Syncs `file`'s content to disk, if it exists.
    pub fn sync_file(&self, file: &str) -> Result<(), IoError> {
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
