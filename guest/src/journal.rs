//! The journal: the changes since the last checkpoint, which folded them
//! into the lock files and the snapshot (`snapshot.rs`).
//!
//! With `Durability::None` it is written the same way, never synced: it
//! keeps what the lock files no longer carry (tokens, leases) across a
//! `kill -9`, as the lock files themselves do.
//!
//! The file starts with a header, `lockdjv2` and the cycle (`u64 LE`), and
//! is preallocated (written with zeroes) past the checkpoint size, so that
//! appending a record overwrites blocks the file already has: syncing it
//! then writes the record alone, not the file's size too. A checkpoint
//! starts a new cycle instead of truncating: records of the old cycle that
//! follow the new ones are not read again.
//!
//! A record is `len: u32 LE`, `crc32(payload): u32 LE`, then `payload`:
//! the cycle (`u64 LE`), a kind byte and length-prefixed strings. Reading
//! stops at the first record that is incomplete, fails its checksum or
//! belongs to another cycle: that is the torn tail of a write that never
//! completed (so never acknowledged), or what the last checkpoint left.
//! Journals of the first format (no header, no cycle) are still read.
//!
//! Nothing after the last complete record may ever count: a failed append
//! cuts the file back to where it began (a record ending later exactly
//! where a stale one starts would otherwise bring that one back), and a
//! cycle resumed at open is cut back past its last complete record.

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

/// The first bytes of a journal of this format.
const MAGIC: &[u8; 8] = b"lockdjv2";
/// Records start after the magic and the cycle.
const FILE_HEADER: u64 = 16;
/// Zeroes written past the checkpoint size, for the batch that passes it.
const HEADROOM: u64 = 256 << 10;

/// The journal file, open for appending.
pub struct Journal {
    fd: Descriptor,
    /// The cycle new records belong to.
    cycle: u64,
    /// Bytes of records of this cycle.
    len: u64,
    /// The file's size.
    size: u64,
    /// Set when what the file holds past `len`, or which cycle its header
    /// names, is unknown (a failed append could not be cut back, a reset
    /// failed): nothing may be appended until a reset succeeds.
    broken: bool,
    /// Whether writes are synced before they count (`Durability::Always`).
    synced: bool,
}

impl Journal {
    /// Opens (or creates) the journal and returns the records of its
    /// current cycle; `synced`: whether writes are synced. Call
    /// [`reset`](Self::reset), or [`resume`](Self::resume) if that fails,
    /// before appending.
    pub fn open(dir: &LockDir, synced: bool) -> Result<(Self, Vec<Record>), IoError> {
        let content = dir.read(JOURNAL_FILE, usize::MAX)?.unwrap_or_default();
        let fd = dir.create(JOURNAL_FILE)?;
        let (records, cycle, size, len) = match content.strip_prefix(MAGIC.as_slice()) {
            Some(rest) if rest.len() >= 8 => {
                let cycle = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                let (records, len) = decode_all(&rest[8..], Some(cycle));
                (records, cycle, content.len() as u64, len as u64)
            }
            // The first format (or nothing): emptied at the first reset,
            // then written anew.
            _ => (decode_all(&content, None).0, 0, 0, 0),
        };
        let journal = Self {
            fd,
            cycle,
            len,
            size,
            // Appending needs a header of this format first.
            broken: size == 0,
            synced,
        };
        Ok((journal, records))
    }

    /// Bytes of records in the journal's current cycle.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The cycle records are encoded for.
    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    /// Whether appends are refused until a [`reset`](Self::reset) succeeds.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Starts a new cycle, durably: the records so far no longer count.
    /// For a checkpoint, once what they say is synced in the lock files and
    /// the snapshot. `room`: the bytes of records the cycle is expected to
    /// take before the next checkpoint, written as zeroes beforehand.
    ///
    /// If writing the new header fails, the disk may hold either cycle:
    /// appends are refused until a later reset, which starts a cycle above
    /// both, succeeds.
    pub fn reset(&mut self, room: u64) -> Result<(), IoError> {
        let preallocate = FILE_HEADER + room + HEADROOM;
        if self.size == 0 {
            // A journal of the first format, or none: start from nothing.
            self.fd
                .set_size(0)
                .map_err(|e| dir::io_error("emptying", JOURNAL_FILE, e))?;
        }
        let zeroes = vec![0; 64 << 10];
        while self.size < preallocate {
            let n = zeroes.len().min((preallocate - self.size) as usize);
            dir::write_all(&self.fd, JOURNAL_FILE, &zeroes[..n], self.size)?;
            self.size += n as u64;
        }
        self.cycle += 1;
        self.broken = true;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&self.cycle.to_le_bytes());
        dir::write_all(&self.fd, JOURNAL_FILE, &header, 0)?;
        self.sync()?;
        self.len = 0;
        self.broken = false;
        if self.size > preallocate {
            // Grown while checkpoints failed; what lies past the
            // preallocation is of old cycles. Shrinking is only tidying.
            if self.fd.set_size(preallocate).is_ok() {
                self.size = preallocate;
            }
        }
        Ok(())
    }

    /// Goes on appending to the cycle found at open, when it could not be
    /// reset: whatever follows its last complete record (a torn write, or
    /// the remains of a failed one) is cut off first, so that no later
    /// append can make it count.
    pub fn resume(&mut self) -> Result<(), IoError> {
        if self.size == 0 {
            return Err("the journal is of the first format: it must be emptied first".into());
        }
        self.cut_back(FILE_HEADER + self.len)?;
        self.broken = false;
        Ok(())
    }

    /// Appends `bytes` (records encoded for this cycle) and syncs them to
    /// disk (if synced). On failure the file is cut back to where they
    /// began and synced, so that no part of them counts, now or after a
    /// later append; if even that fails, appends are refused until a reset.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        if self.broken {
            return Err("the journal could not be repaired after a failed write: \
                        changes are refused until it is emptied"
                .into());
        }
        let at = FILE_HEADER + self.len;
        let written = dir::write_all(&self.fd, JOURNAL_FILE, bytes, at).and_then(|()| self.sync());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.size = self.size.max(at + bytes.len() as u64);
                Ok(())
            }
            Err(e) => match self.cut_to(self.len) {
                Ok(()) => Err(e),
                Err(cut) => Err(format!("{e}; then {cut}")),
            },
        }
    }

    /// Cuts off whatever follows the first `len` bytes of this cycle's
    /// records (an append that failed, or a change refused after its
    /// records were written). If that fails, appends are refused until a
    /// reset.
    pub fn cut_to(&mut self, len: u64) -> Result<(), IoError> {
        match self.cut_back(FILE_HEADER + len) {
            Ok(()) => {
                self.len = len;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Truncates the file to `at` bytes, durably. Shrinking needs no space,
    /// so this works on a full disk too; the preallocation is made again at
    /// the next reset.
    fn cut_back(&mut self, at: u64) -> Result<(), IoError> {
        self.fd
            .set_size(at)
            .map_err(|e| dir::io_error("cutting back", JOURNAL_FILE, e))?;
        self.size = at;
        self.sync()
    }

    fn sync(&self) -> Result<(), IoError> {
        if !self.synced {
            return Ok(());
        }
        self.fd
            .sync_data()
            .map_err(|e| dir::io_error("syncing", JOURNAL_FILE, e))
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

/// Appends `record`, of `cycle`, to `out`.
#[cfg(test)]
pub fn encode(record: &Record, cycle: u64, out: &mut Vec<u8>) {
    match record {
        Record::Put { resource, content } => encode_put(resource, content, cycle, out),
        Record::Remove { resource } => encode_remove(resource, cycle, out),
    }
}

/// Appends a [`Record::Put`] of `cycle` to `out`.
pub fn encode_put(resource: &str, content: &str, cycle: u64, out: &mut Vec<u8>) {
    let start = begin(cycle, PUT, out);
    put_str(out, resource);
    put_str(out, content);
    finish(start, out);
}

/// Appends a [`Record::Remove`] of `cycle` to `out`.
pub fn encode_remove(resource: &str, cycle: u64, out: &mut Vec<u8>) {
    let start = begin(cycle, REMOVE, out);
    put_str(out, resource);
    finish(start, out);
}

/// Starts a record: room for its length and checksum, its cycle and kind.
fn begin(cycle: u64, kind: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&cycle.to_le_bytes());
    out.push(kind);
    start
}

/// Fills in the length and checksum of the record begun at `start`.
fn finish(start: usize, out: &mut [u8]) {
    let payload = &out[start + HEADER..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER].copy_from_slice(&crc);
}

/// The complete records of `cycle` at the start of `bytes` (of the first
/// format, without cycles, for `None`), and how many bytes they take (the
/// rest is a torn tail, another cycle's records, or nothing).
pub fn decode_all(bytes: &[u8], cycle: Option<u64>) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((record, len)) = decode_one(&bytes[pos..], cycle) {
        records.push(record);
        pos += len;
    }
    (records, pos)
}

fn decode_one(bytes: &[u8], cycle: Option<u64>) -> Option<(Record, usize)> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let len = u32_at(bytes, 0)? as usize;
    let crc = u32_at(bytes, 4)?;
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
    let payload = match cycle {
        Some(cycle) => {
            let (record_cycle, rest) = payload.split_at_checked(8)?;
            if record_cycle != cycle.to_le_bytes() {
                return None;
            }
            rest
        }
        None => payload,
    };
    let kind = *payload.first()?;
    let mut pos = 1;
    let mut string = || -> Option<String> {
        let n = u32_at(payload, pos)? as usize;
        let s = payload.get(pos + 4..(pos + 4).checked_add(n)?)?;
        pos += 4 + n;
        String::from_utf8(s.to_vec()).ok()
    };
    let record = match kind {
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

    fn encoded(records: &[Record], cycle: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in records {
            encode(r, cycle, &mut bytes);
        }
        bytes
    }

    #[test]
    fn records_round_trip() {
        let bytes = encoded(&sample(), 7);
        assert_eq!(decode_all(&bytes, Some(7)), (sample(), bytes.len()));
    }

    #[test]
    fn records_of_another_cycle_end_the_journal() {
        // A new cycle's records written over the start of an old one's: the
        // old records that follow are not read again.
        let mut file = encoded(&sample(), 1);
        let new = encoded(&sample()[1..2], 2);
        file[..new.len()].copy_from_slice(&new);
        assert_eq!(
            decode_all(&file, Some(2)),
            (sample()[1..2].to_vec(), new.len())
        );
        assert_eq!(decode_all(&encoded(&sample(), 1), Some(2)).0, vec![]);
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
        assert_eq!(decode_all(&bytes, None), (vec![put], bytes.len()));
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_off() {
        let bytes = encoded(&sample(), 3);
        let whole = bytes.len();
        let first_two = encoded(&sample()[..2], 3);
        for cut in first_two.len()..whole {
            let (records, len) = decode_all(&bytes[..cut], Some(3));
            assert_eq!(records, sample()[..2].to_vec(), "cut at {cut}");
            assert_eq!(len, first_two.len());
        }
        let mut corrupt = bytes.clone();
        corrupt[whole - 1] ^= 1;
        assert_eq!(decode_all(&corrupt, Some(3)).0, sample()[..2].to_vec());
        // Zeroes (the preallocated rest of the file) end it too.
        let mut zeroes = first_two.clone();
        zeroes.extend_from_slice(&[0; 64]);
        assert_eq!(
            decode_all(&zeroes, Some(3)),
            (sample()[..2].to_vec(), first_two.len())
        );
    }
}
