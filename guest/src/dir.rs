//! File primitives on the preopened lock directory. Nothing here knows what a
//! lock means; errors carry the file they concern.

use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

/// Where every file lockd puts in place is written first, then renamed
/// over its name, so that a reader opening a lock file by name sees a whole
/// file, or none. Each write makes a new inode: an inode once linked as a
/// lock file is never written again, so a reader still holding it open
/// never sees other bytes through it. Calls are serialised (one instance
/// per directory), so one name does.
pub const TEMP_FILE: &str = ".lockd-write.tmp";
/// The journal of changes not yet known to be synced in the lock files.
pub const JOURNAL_FILE: &str = ".lockd.journal";
/// The high-water mark of fencing tokens: none at or above it was issued.
pub const TOKENS_FILE: &str = ".lockd.tokens";
/// The second copy of the high-water mark.
pub const TOKENS_COPY: &str = ".lockd.tokens.copy";
/// Every held lock's record as of the last checkpoint.
pub const SNAPSHOT_FILE: &str = ".lockd.snapshot";
/// Lock files are small: a first read of this size takes most whole.
const READ_CHUNK: u64 = 4096;
/// Lock files longer than this are read only this far.
pub const MAX_LOCK_FILE: usize = 64 * 1024;

/// What tells one content of a file from another without reading it: its
/// size and when its data last changed. Renaming a file changes neither;
/// writing to it, in place or by a new file renamed over it, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    modified: Option<(u64, u32)>,
}

impl Stamp {
    /// A stamp for tests: of a file of `size` bytes.
    #[cfg(test)]
    pub const fn fake(size: u64) -> Self {
        Self {
            size,
            modified: None,
        }
    }

    /// As a record's line spells it: `size seconds nanoseconds`; `None`
    /// without a modification time (too weak to tell contents apart).
    pub fn to_text(self) -> Option<String> {
        let (seconds, nanos) = self.modified?;
        Some(format!("{} {seconds} {nanos}", self.size))
    }

    /// Reads what [`to_text`](Self::to_text) wrote.
    pub fn from_text(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let mut next = || parts.next()?.parse::<u64>().ok();
        let (size, seconds, nanos) = (next()?, next()?, next()?);
        Some(Self {
            size,
            modified: Some((seconds, u32::try_from(nanos).ok()?)),
        })
    }

    fn of(stat: &wasip2::filesystem::types::DescriptorStat) -> Self {
        Self {
            size: stat.size,
            modified: stat
                .data_modification_timestamp
                .map(|t| (t.seconds, t.nanoseconds)),
        }
    }
}

/// A failed file operation, as text for the `io` error.
pub type IoError = String;

/// The message of a failed `what` on `file`.
pub fn io_error(what: &str, file: &str, code: ErrorCode) -> IoError {
    format!("{what} {file:?}: {}", code.message())
}

/// The preopened lock directory.
pub struct LockDir {
    dir: Descriptor,
}

impl LockDir {
    /// The first directory the host preopened.
    pub fn open() -> Result<Self, IoError> {
        let (dir, _) = get_directories().into_iter().next().ok_or_else(|| {
            "no preopened directory: the host must preopen the lock directory".to_owned()
        })?;
        Ok(Self { dir })
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
        Ok(self.read_open(file, limit)?.map(|(content, _)| content))
    }

    /// As [`read`](Self::read), with the stamp of the file read.
    pub fn read_stamped(
        &self,
        file: &str,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, Stamp)>, IoError> {
        let Some((content, fd)) = self.read_open(file, limit)? else {
            return Ok(None);
        };
        let stat = fd
            .stat()
            .map_err(|e| io_error("reading the status of", file, e))?;
        Ok(Some((content, Stamp::of(&stat))))
    }

    fn read_open(
        &self,
        file: &str,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, Descriptor)>, IoError> {
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
        Ok(Some((content, fd)))
    }

    /// Puts `content` in place as `file`, atomically: written under
    /// [`TEMP_FILE`] and renamed over `file`. Nothing is synced: the
    /// journal, or the next checkpoint, makes it durable.
    pub fn write_atomically(&mut self, file: &str, content: &[u8]) -> Result<(), IoError> {
        self.rename_into_place(file, content, false)
    }

    /// As [`write_atomically`](Self::write_atomically), and returns the
    /// stamp of the file written if it could be read and tells contents
    /// apart (it has a modification time).
    pub fn write_stamped(&mut self, file: &str, content: &[u8]) -> Result<Option<Stamp>, IoError> {
        let fd = self.write_temp(content, false)?;
        let stamp = fd.stat().ok().map(|stat| Stamp::of(&stat));
        drop(fd);
        self.rename(TEMP_FILE, file)?;
        Ok(stamp.filter(|stamp| stamp.modified.is_some()))
    }

    /// The stamp of `file`, or `None` if it does not exist.
    pub fn stamp(&self, file: &str) -> Result<Option<Stamp>, IoError> {
        match self.dir.stat_at(PathFlags::empty(), file) {
            Ok(stat) => Ok(Some(Stamp::of(&stat))),
            Err(ErrorCode::NoEntry) => Ok(None),
            Err(e) => Err(io_error("reading the status of", file, e)),
        }
    }

    /// Writes `content` under [`TEMP_FILE`] (its data synced first if
    /// `synced`) and renames it over `file`.
    fn rename_into_place(
        &mut self,
        file: &str,
        content: &[u8],
        synced: bool,
    ) -> Result<(), IoError> {
        drop(self.write_temp(content, synced)?);
        self.rename(TEMP_FILE, file)
    }

    /// Writes `content` as [`TEMP_FILE`], its data synced if `synced`.
    fn write_temp(&mut self, content: &[u8], synced: bool) -> Result<Descriptor, IoError> {
        let fd = self.open_for_writing(TEMP_FILE, OpenFlags::CREATE | OpenFlags::TRUNCATE)?;
        write_all(&fd, TEMP_FILE, content, 0)?;
        if synced {
            fd.sync_data()
                .map_err(|e| io_error("syncing", TEMP_FILE, e))?;
        }
        Ok(fd)
    }

    /// Renames `from` to `to`, replacing any file named `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), IoError> {
        self.dir
            .rename_at(from, &self.dir, to)
            .map_err(|e| io_error(&format!("renaming {from:?} to"), to, e))
    }

    /// Links `to` to the file `from` names; fails if `to` exists.
    pub fn link(&mut self, from: &str, to: &str) -> Result<(), IoError> {
        self.dir
            .link_at(PathFlags::empty(), from, &self.dir, to)
            .map_err(|e| io_error(&format!("linking {from:?} as"), to, e))
    }

    /// Removes `file`; a file that is already gone is not an error.
    pub fn remove(&mut self, file: &str) -> Result<(), IoError> {
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => Ok(()),
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
