//! Inodes kept for their holder. An unlocked lock file is renamed to a
//! spare name instead of removed, and renamed into place when the same
//! holder takes a lock again, of any resource: a lock and its unlock cost a
//! rename each, where a fresh file costs creating, writing, closing and
//! freeing an inode.
//!
//! A lock file holds its holder's line alone, so a spare is only ever
//! linked again where it holds exactly the bytes it held, and only if its
//! stamp (size, modification time) is still the one lockd wrote: a reader
//! holding it open keeps reading the bytes it read (as through any lock
//! file since unlinked), and a file edited by hand is never linked back.
//! At most [`MAX_SPARES`] are kept, the least recently kept removed first;
//! those of an earlier run are removed at open.

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
    by_holder: HashMap<Vec<u8>, VecDeque<Spare>>,
    /// How many spares are kept.
    count: usize,
    /// Holders and the keeping of a spare, oldest first; entries whose
    /// spare was taken since are skipped.
    order: VecDeque<(Vec<u8>, u64)>,
    /// The next keeping's number, which also names new spares.
    next: u64,
}

impl Spares {
    /// A spare holding `content` (the most recently kept), given up to be
    /// linked into place if its stamp is still the one returned.
    pub fn take(&mut self, content: &[u8]) -> Option<(String, Stamp)> {
        let spares = self.by_holder.get_mut(content)?;
        let spare = spares.pop_back()?;
        if spares.is_empty() {
            self.by_holder.remove(content);
        }
        self.count -= 1;
        Some((spare.name, spare.stamp))
    }

    /// A name for the next spare.
    pub fn name(&self) -> String {
        format!("{SPARE_PREFIX}{}", self.next)
    }

    /// Records that spare `name` (named by [`name`](Self::name)) holds
    /// `content` and is stamped `stamp`. Returns the names of spares no
    /// longer kept, for the caller to remove.
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
        // One holder's spare kept and taken over and over leaves no trail.
        for _ in 0..10 * MAX_SPARES {
            assert!(keep(&mut spares, b"hot\n").1.len() <= 1);
            assert!(spares.take(b"hot\n").is_some());
        }
        assert!(spares.order.len() <= 2 * MAX_SPARES + 1);
        assert!(spares.len() <= MAX_SPARES);
    }
}
