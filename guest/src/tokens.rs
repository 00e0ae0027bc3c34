//! Fencing tokens: strictly increasing over the life of the lock directory.
//!
//! Tokens are issued from a range reserved on disk: `.lockd.tokens` holds a
//! number no token at or above which has been issued, written and synced
//! before any token of the range is. A restart, however abrupt, resumes
//! above it, so a token is never issued twice and never goes backwards,
//! whatever the clock does; a crash only skips the rest of the range.
//!
//! The mark is kept twice, `.lockd.tokens` then `.lockd.tokens.copy`, each
//! written whole and renamed into place: whatever a power loss or a broken
//! disk leaves of the one being written, the other holds this mark or the
//! one before, and no token of the new range is issued before both are
//! written. Start-up takes the highest mark it can read.

use crate::dir::{IoError, LockDir, TOKENS_COPY, TOKENS_FILE};

/// How many tokens the first synced write of the high-water mark in a run
/// reserves. Each next range is twice the last, up to [`MAX_RESERVE`]: a
/// range costs a write and two syncs (docs/benchmarks.md says how much),
/// so a busy daemon soon reserves rarely, while a restart, which skips what
/// was left of the last range, never skips more than the run had issued
/// plus this many.
const FIRST_RESERVE: u64 = 1024;
/// The largest range one write reserves.
const MAX_RESERVE: u64 = 65_536;

/// The token counter of an open lock directory.
#[derive(Debug)]
pub struct Tokens {
    /// The next token to issue.
    next: u64,
    /// Tokens below this may be issued without writing first.
    reserved: u64,
    /// How many tokens the next write reserves.
    range: u64,
}

impl Tokens {
    /// Reads the high-water mark; `seen` is the highest token found in the
    /// lock files and the journal (a directory written before the mark
    /// existed, or one whose mark was lost).
    /// A mark cut short (not a number) is told in `notes`, not an error:
    /// the other copy, the lock files and the journal still bound what was
    /// issued. A read error on both copies is an error.
    pub fn open(dir: &LockDir, seen: u64, notes: &mut Vec<String>) -> Result<Self, IoError> {
        let mut mark = 0;
        let mut read = 0;
        let mut cut_short = 0;
        let mut failed = None;
        for file in [TOKENS_FILE, TOKENS_COPY] {
            let content = match dir.read(file, 64) {
                Ok(Some(content)) => content,
                Ok(None) => continue,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            match String::from_utf8_lossy(&content).trim().parse::<u64>() {
                Ok(found) => {
                    mark = mark.max(found);
                    read += 1;
                }
                Err(_) => {
                    cut_short += 1;
                    notes.push(format!(
                        "{file} does not hold a number ({} bytes): left by a write cut \
                         short; the next mark is written anew",
                        content.len()
                    ));
                }
            }
        }
        match failed {
            // Either copy bounds every token issued: the second is written
            // only after the first, and no token of a range is issued
            // before both are.
            Some(e) if read == 0 => return Err(format!("cannot read the token mark: {e}")),
            Some(e) => notes.push(format!("token mark unreadable, the other copy used: {e}")),
            None if read == 0 && cut_short > 0 => notes.push(format!(
                "no token mark could be read: tokens resume above {seen}, the highest \
                 in the lock files and the journal"
            )),
            None => {}
        }
        let next = mark.max(seen.saturating_add(1)).max(1);
        Ok(Self {
            next,
            reserved: next,
            range: FIRST_RESERVE,
        })
    }

    /// A token never issued before.
    pub fn issue(&mut self, dir: &mut LockDir) -> Result<u64, IoError> {
        if self.next >= self.reserved {
            let mark = self.next + self.range;
            // Synced before it is renamed into place: a power loss must not
            // leave the name pointing at a mark that never reached the disk.
            let content = format!("{mark}\n");
            dir.replace_durably(TOKENS_FILE, content.as_bytes())?;
            dir.replace_durably(TOKENS_COPY, content.as_bytes())?;
            self.reserved = mark;
            self.range = (self.range * 2).min(MAX_RESERVE);
        }
        let token = self.next;
        self.next += 1;
        Ok(token)
    }
}
