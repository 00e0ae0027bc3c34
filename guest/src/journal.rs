//! The journal's record format: what one change looks like on disk.
//!
//! A record is `len: u32 LE`, `crc32(payload): u32 LE`, then `payload`:
//! a kind byte followed by length-prefixed strings. Reading stops at the
//! first record that is incomplete or fails its checksum: that is the torn
//! tail of a write that never completed, so never acknowledged.

/// One change to the set of held locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The lock file of `resource` now holds `content`.
    Put { resource: String, content: String },
    /// `resource` is no longer locked.
    Remove { resource: String },
}

use crate::dir::{self, IoError, JOURNAL_FILE, LockDir};
use wasip2::filesystem::types::Descriptor;

/// The journal file, open for appending.
pub struct Journal {
    fd: Descriptor,
    len: u64,
    /// Set when a failed append could not be cut back: what the file holds
    /// past `len` is unknown, so nothing more may be appended.
    broken: bool,
}

impl Journal {
    /// Opens (or creates) the journal and returns the records it holds.
    pub fn open(dir: &LockDir) -> Result<(Self, Vec<Record>), IoError> {
        let content = dir.read(JOURNAL_FILE, usize::MAX)?.unwrap_or_default();
        let fd = dir.create(JOURNAL_FILE)?;
        let (records, valid) = decode_all(&content);
        let mut journal = Self {
            fd,
            len: valid as u64,
            broken: false,
        };
        if valid != content.len() {
            // Cut the torn tail so that new records follow the last good one.
            journal.truncate(valid as u64)?;
        }
        Ok((journal, records))
    }

    /// Bytes of records in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `bytes` (encoded records) and syncs them to disk. On failure
    /// the journal is cut back to where it was, so the records never count.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        if self.broken {
            return Err("the journal could not be repaired after a failed write; \
                        restart the daemon"
                .into());
        }
        let written = dir::write_all(&self.fd, JOURNAL_FILE, bytes, self.len).and_then(|()| {
            self.fd
                .sync_data()
                .map_err(|e| dir::io_error("syncing", JOURNAL_FILE, e))
        });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let len = self.len;
                if let Err(cut) = self.truncate(len) {
                    self.broken = true;
                    return Err(format!("{e}; then {cut}"));
                }
                Err(e)
            }
        }
    }

    /// Cuts the journal to `len` bytes, durably.
    pub fn truncate(&mut self, len: u64) -> Result<(), IoError> {
        self.fd
            .set_size(len)
            .and_then(|()| self.fd.sync_data())
            .map_err(|e| dir::io_error("truncating", JOURNAL_FILE, e))?;
        self.len = len;
        Ok(())
    }
}

/// A lock taken by the first version of lockd: resource, then holder.
const LOCK: u8 = 1;
const REMOVE: u8 = 2;
const PUT: u8 = 3;
const HEADER: usize = 8;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::Put { resource, content } => {
            out.push(PUT);
            put_str(out, resource);
            put_str(out, content);
        }
        Record::Remove { resource } => {
            out.push(REMOVE);
            put_str(out, resource);
        }
    }
    let payload = &out[start + HEADER..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER].copy_from_slice(&crc);
}

/// The complete records at the start of `bytes`, and how many bytes they
/// take (the rest is a torn tail, or nothing).
pub fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((record, len)) = decode_one(&bytes[pos..]) {
        records.push(record);
        pos += len;
    }
    (records, pos)
}

fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let len = u32_at(bytes, 0)? as usize;
    let crc = u32_at(bytes, 4)?;
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
    let mut pos = 1;
    let mut string = || -> Option<String> {
        let n = u32_at(payload, pos)? as usize;
        let s = payload.get(pos + 4..(pos + 4).checked_add(n)?)?;
        pos += 4 + n;
        String::from_utf8(s.to_vec()).ok()
    };
    let record = match payload[0] {
        LOCK => Record::Put {
            resource: string()?,
            content: format!("{}\n", string()?),
        },
        PUT => Record::Put {
            resource: string()?,
            content: string()?,
        },
        REMOVE => Record::Remove {
            resource: string()?,
        },
        _ => return None,
    };
    Some((record, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::Put {
                resource: "vm/1".into(),
                content: "host-a\ntoken: 1\n".into(),
            },
            Record::Remove {
                resource: "vm/1".into(),
            },
            Record::Put {
                resource: "ü".into(),
                content: "c\n".into(),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        for r in &sample() {
            encode(r, &mut bytes);
        }
        assert_eq!(decode_all(&bytes), (sample(), bytes.len()));
    }

    #[test]
    fn locks_of_the_first_journal_format_read_as_lock_files_with_their_holder() {
        let mut bytes = vec![0; HEADER];
        bytes.push(LOCK);
        put_str(&mut bytes, "r");
        put_str(&mut bytes, "client1");
        let len = (bytes.len() - HEADER) as u32;
        let crc = crc32fast::hash(&bytes[HEADER..]);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        let put = Record::Put {
            resource: "r".into(),
            content: "client1\n".into(),
        };
        assert_eq!(decode_all(&bytes), (vec![put], bytes.len()));
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_off() {
        let mut bytes = Vec::new();
        for r in &sample() {
            encode(r, &mut bytes);
        }
        let whole = bytes.len();
        let mut first_two = Vec::new();
        for r in &sample()[..2] {
            encode(r, &mut first_two);
        }
        for cut in first_two.len()..whole {
            let (records, len) = decode_all(&bytes[..cut]);
            assert_eq!(records, sample()[..2].to_vec(), "cut at {cut}");
            assert_eq!(len, first_two.len());
        }
        let mut corrupt = bytes.clone();
        corrupt[whole - 1] ^= 1;
        assert_eq!(decode_all(&corrupt).0, sample()[..2].to_vec());
        // Zeroes (a preallocated or truncated-and-extended file) end it too.
        let mut zeroes = first_two.clone();
        zeroes.extend_from_slice(&[0; 64]);
        assert_eq!(
            decode_all(&zeroes),
            (sample()[..2].to_vec(), first_two.len())
        );
    }
}
