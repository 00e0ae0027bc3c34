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
/// The journal of changes not yet known to be synced in the lock files.
pub const JOURNAL_FILE: &str = ".lockd.journal";
/// Lock files are small: a first read of this size takes most whole.
const READ_CHUNK: u64 = 4096;
/// Lock files longer than this are read only this far.
const MAX_LOCK_FILE: usize = 64 * 1024;

/// A failed file operation, as text for the `io` error.
pub type IoError = String;

fn err(what: &str, file: &str, code: ErrorCode) -> IoError {
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
            .map_err(|e| err("listing", ".", e))?;
        let mut names = Vec::new();
        while let Some(entry) = stream
            .read_directory_entry()
            .map_err(|e| err("listing", ".", e))?
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
            Err(e) => return Err(err("opening", file, e)),
        };
        let mut content = Vec::new();
        while content.len() < limit {
            let want = READ_CHUNK
                .max(content.len() as u64)
                .min((limit - content.len()) as u64);
            let (chunk, end) = fd
                .read(want, content.len() as u64)
                .map_err(|e| err("reading", file, e))?;
            content.extend_from_slice(&chunk);
            if end || chunk.is_empty() {
                break;
            }
        }
        Ok(Some(content))
    }

    /// The first line of lock file `file`: its holder.
    pub fn read_holder(&self, file: &str) -> Result<Option<String>, IoError> {
        Ok(self.read(file, MAX_LOCK_FILE)?.map(|content| {
            let line = content.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            String::from_utf8_lossy(line).into_owned()
        }))
    }

    /// Replaces `file` with `content` atomically: written under
    /// [`TEMP_FILE`], synced first if `sync`, then renamed into place.
    pub fn write_atomically(&self, file: &str, content: &[u8], sync: bool) -> Result<(), IoError> {
        let fd = self.create(TEMP_FILE, true)?;
        write_all(&fd, TEMP_FILE, content, 0)?;
        if sync {
            fd.sync().map_err(|e| err("syncing", TEMP_FILE, e))?;
        }
        drop(fd);
        self.dir
            .rename_at(TEMP_FILE, &self.dir, file)
            .map_err(|e| err("renaming into", file, e))
    }

    /// Removes `file`; a file that is already gone is not an error.
    pub fn remove(&self, file: &str) -> Result<(), IoError> {
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => Ok(()),
            Err(e) => Err(err("removing", file, e)),
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
            Ok(fd) => fd.sync().map_err(|e| err("syncing", file, e)),
            Err(ErrorCode::NoEntry) => Ok(()),
            Err(e) => Err(err("opening", file, e)),
        }
    }

    /// Syncs the directory itself: which names exist.
    pub fn sync(&self) -> Result<(), IoError> {
        self.dir.sync().map_err(|e| err("syncing", ".", e))
    }

    /// Opens `file` for writing, creating it if missing.
    pub fn create(&self, file: &str, truncate: bool) -> Result<Descriptor, IoError> {
        let mut flags = OpenFlags::CREATE;
        if truncate {
            flags |= OpenFlags::TRUNCATE;
        }
        self.dir
            .open_at(
                PathFlags::empty(),
                file,
                flags,
                DescriptorFlags::READ | DescriptorFlags::WRITE,
            )
            .map_err(|e| err("creating", file, e))
    }
}

/// Writes all of `content` to `fd` at `offset`.
pub fn write_all(fd: &Descriptor, file: &str, content: &[u8], offset: u64) -> Result<(), IoError> {
    let mut written = 0;
    while written < content.len() {
        let n = fd
            .write(&content[written..], offset + written as u64)
            .map_err(|e| err("writing", file, e))?;
        written += n as usize;
    }
    Ok(())
}

/// The message of a failed operation on `file`, for callers holding their
/// own descriptor.
pub fn io_error(what: &str, file: &str, code: ErrorCode) -> IoError {
    err(what, file, code)
}
