//! The lock directory: reading holders, writing and removing lock files, each
//! change synced to disk before it is reported done.

use crate::name;
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

/// Where a new lock file is written before it is renamed into place, so that
/// a reader sees either no lock file or one with its holder, never an empty
/// one. Calls are serialised (one instance per directory), so one name does.
const TEMP_FILE: &str = ".lockd-write.tmp";
/// Lock files are small; reading stops here in case one is not.
const MAX_READ: u64 = 64 * 1024;

/// A failure of a lock operation, before it is turned into the WIT variant.
#[derive(Debug)]
pub enum Error {
    AlreadyLocked(String),
    NotLocked,
    NotOwner(String),
    InvalidName(String),
    Io(String),
}

fn io(what: &str, file: &str, code: ErrorCode) -> Error {
    Error::Io(format!("{what} {file:?}: {}", code.message()))
}

/// The preopened lock directory.
pub struct LockDir {
    dir: Descriptor,
}

/// A lock file found for a resource: its name and its holder.
struct Held {
    file: String,
    holder: String,
}

impl LockDir {
    /// The first directory the host preopened.
    pub fn open() -> Result<Self, Error> {
        let (dir, _) = get_directories().into_iter().next().ok_or_else(|| {
            Error::Io("no preopened directory: the host must preopen the lock directory".into())
        })?;
        Ok(Self { dir })
    }

    /// The holder of `resource`, if it is locked.
    pub fn holder(&self, resource: &str) -> Result<Option<String>, Error> {
        let file = name::lock_file_name(resource).map_err(Error::InvalidName)?;
        Ok(self.find(resource, file)?.map(|held| held.holder))
    }

    /// Locks `resource` for `client`; see the WIT `lock`.
    pub fn lock(&self, resource: &str, client: &str) -> Result<(), Error> {
        let file = name::lock_file_name(resource).map_err(Error::InvalidName)?;
        name::check_client(client).map_err(Error::InvalidName)?;
        if let Some(held) = self.find(resource, file.clone())? {
            return Err(Error::AlreadyLocked(held.holder));
        }
        self.write_durably(&file, format!("{client}\n").as_bytes())
    }

    /// Unlocks `client`'s lock on `resource`; see the WIT `unlock`.
    pub fn unlock(&self, resource: &str, client: &str) -> Result<(), Error> {
        let file = name::lock_file_name(resource).map_err(Error::InvalidName)?;
        name::check_client(client).map_err(Error::InvalidName)?;
        let held = self.find(resource, file)?.ok_or(Error::NotLocked)?;
        if held.holder != client {
            return Err(Error::NotOwner(held.holder));
        }
        self.dir
            .unlink_file_at(&held.file)
            .map_err(|e| io("removing", &held.file, e))?;
        self.sync_dir()
    }

    /// The lock file of `resource`, under lockd's name or else under the
    /// name gocept.lockd would have given it.
    fn find(&self, resource: &str, file: String) -> Result<Option<Held>, Error> {
        if let Some(holder) = self.read_holder(&file)? {
            return Ok(Some(Held { file, holder }));
        }
        match name::legacy_file_name(resource) {
            Some(file) => Ok(self.read_holder(&file)?.map(|holder| Held { file, holder })),
            None => Ok(None),
        }
    }

    /// The first line of `file`, or `None` when there is no such file.
    fn read_holder(&self, file: &str) -> Result<Option<String>, Error> {
        let fd = match self.dir.open_at(
            PathFlags::empty(),
            file,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(fd) => fd,
            Err(ErrorCode::NoEntry) => return Ok(None),
            Err(e) => return Err(io("opening", file, e)),
        };
        let mut content = Vec::new();
        loop {
            let (chunk, end) = fd
                .read(MAX_READ - content.len() as u64, content.len() as u64)
                .map_err(|e| io("reading", file, e))?;
            content.extend_from_slice(&chunk);
            if end || chunk.is_empty() || content.len() as u64 >= MAX_READ {
                break;
            }
        }
        let first_line = content.split(|&b| b == b'\n').next().unwrap_or_default();
        let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        Ok(Some(String::from_utf8_lossy(first_line).into_owned()))
    }

    /// Writes `content` to `file` so that it is on disk, entry included,
    /// when this returns, and so that no reader ever sees it partly written.
    fn write_durably(&self, file: &str, content: &[u8]) -> Result<(), Error> {
        let fd = self
            .dir
            .open_at(
                PathFlags::empty(),
                TEMP_FILE,
                OpenFlags::CREATE | OpenFlags::TRUNCATE,
                DescriptorFlags::WRITE,
            )
            .map_err(|e| io("creating", TEMP_FILE, e))?;
        let mut written = 0;
        while written < content.len() {
            let n = fd
                .write(&content[written..], written as u64)
                .map_err(|e| io("writing", TEMP_FILE, e))?;
            written += n as usize;
        }
        fd.sync().map_err(|e| io("syncing", TEMP_FILE, e))?;
        drop(fd);
        self.dir
            .rename_at(TEMP_FILE, &self.dir, file)
            .map_err(|e| io("renaming into", file, e))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), Error> {
        self.dir.sync().map_err(|e| io("syncing", ".", e))
    }
}
