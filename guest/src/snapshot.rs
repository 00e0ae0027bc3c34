//! The snapshot: every held lock's record (token, when it was taken, its
//! lease) as of the last checkpoint, which lock files no longer carry.
//!
//! `lockdsv1`, then one journal `Put` record per held lock (cycle 0, each
//! with its checksum): the lock's record, and a `file: SIZE SECONDS NANOS`
//! line, the stamp of its lock file as lockd wrote it. It is written whole
//! under the temporary name and renamed into place at each checkpoint,
//! after the lock files it speaks of are synced, and before the journal is
//! emptied. At open it completes what a lock file says: a file holding the
//! holder's line alone takes its token and lease from the snapshot's record
//! of that resource if the file is still the one recorded (same stamp): a
//! file put there by anyone else (gocept.lockd after a switch back, a hand)
//! is a lock of its own, without a token or lease. A lock file is the
//! truth of who holds what; the snapshot never makes a resource held whose
//! file is gone.

use crate::dir::{IoError, LockDir, SNAPSHOT_FILE, Stamp};
use crate::journal::{self, Record};
use crate::lease::LockInfo;

/// The first bytes of a snapshot of this format.
const MAGIC: &[u8; 8] = b"lockdsv1";

/// The locks a snapshot records, each with the stamp of its lock file
/// (none if it was not known).
pub type Records = Vec<(LockInfo, Option<Stamp>)>;

/// The key of the line that holds a lock file's stamp.
const STAMP_KEY: &str = "file: ";

/// Reads the snapshot: the locks it records, none if there is none. What
/// cannot be read of it (not this format, a record cut short or failing
/// its checksum) is told in `notes`: the locks it would have completed
/// keep what their files say.
pub fn read(dir: &LockDir, notes: &mut Vec<String>) -> Result<Records, IoError> {
    let Some(content) = dir.read(SNAPSHOT_FILE, usize::MAX)? else {
        return Ok(Vec::new());
    };
    let Some(rest) = content.strip_prefix(MAGIC.as_slice()) else {
        notes.push(format!(
            "{SNAPSHOT_FILE} is not a snapshot lockd can read ({} bytes): locks whose \
             files hold their holder alone have no token or lease until taken again",
            content.len()
        ));
        return Ok(Vec::new());
    };
    let (records, len) = journal::decode_all(rest, Some(0));
    if len < rest.len() {
        notes.push(format!(
            "{SNAPSHOT_FILE} is cut short after {} records: the locks past them whose \
             files hold their holder alone have no token or lease until taken again",
            records.len()
        ));
    }
    Ok(records.into_iter().filter_map(decode).collect())
}

/// A lock and its file's stamp, from a snapshot's record.
fn decode(record: Record) -> Option<(LockInfo, Option<Stamp>)> {
    let Record::Put { resource, content } = record else {
        return None;
    };
    let stamp = content
        .lines()
        .find_map(|line| line.strip_prefix(STAMP_KEY))
        .and_then(Stamp::from_text);
    Some((LockInfo::parse(resource, content.as_bytes()), stamp))
}

/// The snapshot of `locks`, each with its lock file's stamp.
pub fn encode<'a>(locks: impl Iterator<Item = (&'a LockInfo, Option<Stamp>)>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (info, stamp) in locks {
        let mut record = info.record();
        if let Some(stamp) = stamp.and_then(Stamp::to_text) {
            record.push_str(STAMP_KEY);
            record.push_str(&stamp);
            record.push('\n');
        }
        journal::encode_put(&info.resource, &record, 0, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_decodes_to_its_locks() {
        let lock = LockInfo {
            resource: "vm/1".into(),
            client: "host-a".into(),
            token: 7,
            acquired_ms: 1,
            ttl_ms: Some(5),
            expires_ms: Some(6),
        };
        let stamp = Stamp::from_text("7 1700000000 123456789").unwrap();
        assert_eq!(stamp.to_text().as_deref(), Some("7 1700000000 123456789"));
        let bytes = encode([(&lock, Some(stamp)), (&lock, None)].into_iter());
        let rest = bytes.strip_prefix(MAGIC.as_slice()).unwrap();
        let (records, len) = journal::decode_all(rest, Some(0));
        assert_eq!(len, rest.len());
        let decoded: Vec<_> = records.into_iter().filter_map(decode).collect();
        assert_eq!(decoded, [(lock.clone(), Some(stamp)), (lock, None)]);
    }
}
