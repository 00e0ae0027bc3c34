//! Inodes kept for their holder. An unlocked lock file that lockd wrote is
//! renamed to a spare name instead of removed; when the same holder takes a
//! lock again, of any resource, the spare is hard-linked as its lock file,
//! and unlinking that name at the unlock leaves the spare free again. A
//! lock and its unlock then cost a link and an unlink, where a fresh file
//! costs creating, writing, closing and freeing an inode, and the spares'
//! names stay the same.
//!
//! A lock file holds its holder's line alone, so a spare is only ever
//! linked where it holds exactly the bytes it held, and only if its stamp
//! (size, modification time) is still the one lockd wrote: a reader holding
//! a lock file open keeps reading the bytes it read (as through any lock
//! file since unlinked), and a file edited in place is never linked again
//! (one replaced by another file leaves the spare as it was). At most
//! [`MAX_SPARES`] are kept, free or linked, the least recently freed
//! removed first; those of an earlier run are removed at open.

use crate::dir::Stamp;
use std::collections::{HashMap, VecDeque};

/// Spare files kept at most: enough for the holders a busy daemon serves
/// again and again, few enough not to crowd the directory.
pub const MAX_SPARES: usize = 128;

/// The prefix of spare files' names.
pub const SPARE_PREFIX: &str = ".lockd-spare-";

#[derive(Debug)]
struct Spare {
    /// The spare's file name.
    name: String,
    /// Its stamp when lockd wrote it.
    stamp: Stamp,
    /// Which keeping this is, to tell it in `order`.
    kept: u64,
}

/// The spares of an open lock directory, by the holder's line they hold.
#[derive(Debug, Default)]
pub struct Spares {
    /// Spares linked as no lock file.
    by_holder: HashMap<Vec<u8>, VecDeque<Spare>>,
    /// Spares linked as a lock file, by that file: its holder's line too.
    linked: HashMap<String, (Vec<u8>, Spare)>,
    /// How many spares are kept, free and linked.
    count: usize,
    /// Holders and the keeping of a spare, oldest first; entries whose
    /// spare was taken since are skipped.
    order: VecDeque<(Vec<u8>, u64)>,
    /// The next keeping's number, which also names new spares.
    next: u64,
}

impl Spares {
    /// A free spare holding `content` (the most recently freed), to be
    /// linked as a lock file if its stamp is still the one returned; then
    /// [`linked`](Self::linked), else removed by the caller.
    pub fn take(&mut self, content: &[u8]) -> Option<(String, Stamp)> {
        let spares = self.by_holder.get_mut(content)?;
        let spare = spares.pop_back()?;
        if spares.is_empty() {
            self.by_holder.remove(content);
        }
        self.count -= 1;
        Some((spare.name, spare.stamp))
    }

    /// Records that spare `name`, taken for `content`, is linked as lock
    /// file `file`.
    pub fn linked(&mut self, file: &str, content: Vec<u8>, name: String, stamp: Stamp) {
        self.count += 1;
        let spare = Spare {
            name,
            stamp,
            kept: u64::MAX,
        };
        self.linked.insert(file.to_owned(), (content, spare));
    }

    /// Records that lock file `file` no longer links its spare, if it did
    /// (unlinked, or replaced): the spare is free again. Returns the names
    /// of spares no longer kept, for the caller to remove.
    pub fn unlinked(&mut self, file: &str) -> Vec<String> {
        let Some((content, spare)) = self.linked.remove(file) else {
            return Vec::new();
        };
        self.count -= 1;
        self.kept(spare.name, content, spare.stamp)
    }

    /// Forgets the spare lock file `file` links, if any (its inode is no
    /// longer to be trusted), returning its name for the caller to remove.
    pub fn forget(&mut self, file: &str) -> Option<String> {
        let (_, spare) = self.linked.remove(file)?;
        self.count -= 1;
        Some(spare.name)
    }

    /// Whether lock file `file` links a spare.
    pub fn links(&self, file: &str) -> bool {
        !self.linked.is_empty() && self.linked.contains_key(file)
    }

    /// Whether another spare may be kept without removing a linked one.
    pub fn has_room(&self) -> bool {
        self.count < MAX_SPARES || self.count > self.linked.len()
    }

    /// A name for a new spare.
    pub fn name(&self) -> String {
        format!("{SPARE_PREFIX}{}", self.next)
    }

    /// Records that free spare `name` holds `content` and is stamped
    /// `stamp`. Returns the names of free spares no longer kept, for the
    /// caller to remove.
    pub fn kept(&mut self, name: String, content: Vec<u8>, stamp: Stamp) -> Vec<String> {
        let kept = self.next;
        self.next += 1;
        self.order.push_back((content.clone(), kept));
        self.by_holder
            .entry(content)
            .or_default()
            .push_back(Spare { name, stamp, kept });
        self.count += 1;
        let mut dropped = Vec::new();
        while self.count > MAX_SPARES {
            let Some((holder, kept)) = self.order.pop_front() else {
                break;
            };
            let Some(spares) = self.by_holder.get_mut(&holder) else {
                continue;
            };
            if let Some(at) = spares.iter().position(|s| s.kept == kept) {
                dropped.extend(spares.remove(at).map(|s| s.name));
                self.count -= 1;
                if spares.is_empty() {
                    self.by_holder.remove(&holder);
                }
            }
        }
        if self.order.len() > 2 * MAX_SPARES {
            let by_holder = &self.by_holder;
            self.order.retain(|(holder, kept)| {
                by_holder
                    .get(holder)
                    .is_some_and(|spares| spares.iter().any(|s| s.kept == *kept))
            });
        }
        dropped
    }

    /// How many spares are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp::fake(2);

    fn keep(spares: &mut Spares, content: &[u8]) -> (String, Vec<String>) {
        let name = spares.name();
        let dropped = spares.kept(name.clone(), content.to_vec(), STAMP);
        (name, dropped)
    }

    #[test]
    fn a_spare_goes_back_only_to_its_holder_newest_first() {
        let mut spares = Spares::default();
        let (first, _) = keep(&mut spares, b"a\n");
        let (second, _) = keep(&mut spares, b"a\n");
        assert!(first.starts_with(SPARE_PREFIX) && first != second);
        assert_eq!(spares.take(b"b\n"), None, "another holder");
        assert_eq!(spares.take(b"a"), None, "other bytes");
        assert_eq!(spares.take(b"a\n"), Some((second, STAMP)));
        assert_eq!(spares.take(b"a\n"), Some((first, STAMP)));
        assert_eq!(spares.take(b"a\n"), None, "each taken once");
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn the_least_recently_kept_spares_go_first_and_the_order_stays_bounded() {
        let mut spares = Spares::default();
        let mut dropped = Vec::new();
        for i in 0..MAX_SPARES + 3 {
            dropped.extend(keep(&mut spares, format!("h{}\n", i % 5).as_bytes()).1);
        }
        assert_eq!(spares.len(), MAX_SPARES);
        assert_eq!(
            dropped,
            ["0", "1", "2"].map(|n| format!("{SPARE_PREFIX}{n}")),
        );
        // A linked spare comes back free, and counts meanwhile.
        let (name, stamp) = spares.take(b"h0\n").unwrap();
        spares.linked("f", b"h0\n".to_vec(), name.clone(), stamp);
        assert!(spares.links("f") && !spares.links("g"));
        assert_eq!(spares.len(), MAX_SPARES);
        assert!(spares.unlinked("f").is_empty());
        assert!(!spares.links("f"));
        assert_eq!(spares.take(b"h0\n"), Some((name, stamp)), "newest first");
        // One holder's spare kept and taken over and over leaves no trail.
        for _ in 0..10 * MAX_SPARES {
            assert!(keep(&mut spares, b"hot\n").1.len() <= 1);
            assert!(spares.take(b"hot\n").is_some());
        }
        assert!(spares.order.len() <= 2 * MAX_SPARES + 1);
        assert!(spares.len() <= MAX_SPARES);
    }
}
