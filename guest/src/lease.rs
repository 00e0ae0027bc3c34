//! What a held lock is, and how lockd spells it.
//!
//! A lock file holds the holder's line alone, as gocept.lockd's did: its
//! bytes depend on nothing but the holder, so that an inode can be linked
//! again as the same resource's file for the same holder without a reader
//! ever seeing other bytes through it. The lock's record (the journal's and
//! the snapshot's) adds `key: value` lines after that line: the fencing
//! token, when it was taken, its lease. Lock files written by earlier
//! versions of lockd carry those lines too, and are read with them; a file
//! with only the first line is a lock without a token or lease of its own.

/// A held lock, as the `lock-info` record of the WIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub resource: String,
    pub client: String,
    /// The fencing token; 0 for a lock taken by gocept.lockd (its file has
    /// no token line), which has none.
    pub token: u64,
    /// When it was taken, in milliseconds since the Unix epoch; 0 if unknown.
    pub acquired_ms: u64,
    /// The lease's length, if it has one.
    pub ttl_ms: Option<u64>,
    /// When the lease ends, in milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
}

impl LockInfo {
    /// Whether the lease has run out at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }

    /// The lock file's content: the holder's line.
    pub fn file_content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.client.len() + 1);
        out.extend_from_slice(self.client.as_bytes());
        out.push(b'\n');
        out
    }

    /// The lock's record: the holder's line, then lockd's lines.
    pub fn record(&self) -> String {
        // Written on every change: without `format!`, whose machinery
        // costs more than the rest of this.
        let mut out = String::with_capacity(self.client.len() + 112);
        out.push_str(&self.client);
        out.push('\n');
        push_line(&mut out, "token", self.token);
        if self.acquired_ms > 0 {
            push_line(&mut out, "acquired", self.acquired_ms);
        }
        if let (Some(ttl), Some(expires)) = (self.ttl_ms, self.expires_ms) {
            push_line(&mut out, "ttl", ttl);
            push_line(&mut out, "expires", expires);
        }
        out
    }

    /// Reads a record, or a lock file's content: the holder from the
    /// first line, the rest from the lines lockd adds (unknown or malformed
    /// ones ignored).
    pub fn parse(resource: String, content: &[u8]) -> Self {
        let text = String::from_utf8_lossy(content);
        let mut lines = text.split('\n');
        let first = lines.next().unwrap_or_default();
        let mut info = LockInfo {
            resource,
            client: first.strip_suffix('\r').unwrap_or(first).to_owned(),
            token: 0,
            acquired_ms: 0,
            ttl_ms: None,
            expires_ms: None,
        };
        for line in lines {
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            let Ok(value) = value.trim_end_matches('\r').parse::<u64>() else {
                continue;
            };
            match key {
                "token" => info.token = value,
                "acquired" => info.acquired_ms = value,
                "ttl" => info.ttl_ms = Some(value),
                "expires" => info.expires_ms = Some(value),
                _ => {}
            }
        }
        if info.ttl_ms.is_none() || info.expires_ms.is_none() {
            info.ttl_ms = None;
            info.expires_ms = None;
        }
        info
    }
}

/// Appends `key: value` and a newline, `value` in decimal.
fn push_line(out: &mut String, key: &str, value: u64) {
    out.push_str(key);
    out.push_str(": ");
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_gocept_files_read_as_plain_locks() {
        let info = LockInfo {
            resource: "vm 1".into(),
            client: "host-a".into(),
            token: 42,
            acquired_ms: 1_700_000_000_000,
            ttl_ms: Some(30_000),
            expires_ms: Some(1_700_000_030_000),
        };
        let record = info.record();
        assert!(
            record.starts_with("host-a\n"),
            "holder first, as gocept.lockd"
        );
        assert_eq!(LockInfo::parse("vm 1".into(), record.as_bytes()), info);
        assert_eq!(info.file_content(), b"host-a\n", "the holder's line alone");
        let file = LockInfo::parse("vm 1".into(), &info.file_content());
        assert_eq!(
            (file.token, file.acquired_ms, file.expires_ms),
            (0, 0, None)
        );
        let gocept = LockInfo::parse("r".into(), b"client1\n");
        assert_eq!(gocept.client, "client1");
        assert_eq!(
            (gocept.token, gocept.ttl_ms, gocept.expires_ms),
            (0, None, None)
        );
        let odd = LockInfo::parse("r".into(), b"c\r\ntoken: x\nexpires: 5\nnote: hi\n");
        assert_eq!(
            (odd.client.as_str(), odd.token, odd.expires_ms),
            ("c", 0, None)
        );
    }

    #[test]
    fn records_spell_numbers_in_decimal() {
        let mut info = LockInfo::parse("r".into(), b"c\n");
        info.token = 0;
        assert_eq!(info.record(), "c\ntoken: 0\n");
        info.token = u64::MAX;
        info.acquired_ms = 1;
        info.ttl_ms = Some(10);
        info.expires_ms = Some(1_700_000_000_009);
        assert_eq!(
            info.record(),
            "c\ntoken: 18446744073709551615\nacquired: 1\nttl: 10\nexpires: 1700000000009\n"
        );
    }

    #[test]
    fn a_lease_expires_at_its_end() {
        let mut info = LockInfo::parse("r".into(), b"c\n");
        assert!(!info.expired(u64::MAX), "no lease, no expiry");
        info.expires_ms = Some(100);
        assert!(!info.expired(99));
        assert!(info.expired(100));
    }
}
