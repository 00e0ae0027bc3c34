//! `lockd import`: a lock directory's locks moved into etcd, with tokens
//! kept above every token the directory issued.
//!
//! The token base is raised first (it only ever grows), then the locks are
//! written, each guarded by its key not existing. Running it again is
//! safe: a lock already there with the same client and token counts as
//! imported; one held by someone else is reported and left alone.

use super::batch::MAX_BATCH;
use super::record::{self, Record};
use super::{Cluster, now_ms};
use crate::component::LockInfo;
use crate::etcd::{Compare, Op, OpResult, Target};
use std::time::Instant;

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Locks written now.
    pub written: usize,
    /// Locks found already there, as imported before.
    pub already: usize,
    /// Resources whose key in etcd holds another lock: not imported.
    pub conflicts: Vec<String>,
    /// The token base: every token granted from now on is above it.
    pub base: u64,
}

impl Cluster {
    /// Writes `locks` into etcd, and raises the token base to `above` (a
    /// token larger than every token issued where the locks come from).
    pub fn import(
        &self,
        locks: &[LockInfo],
        above: u64,
        deadline: Instant,
    ) -> Result<Imported, String> {
        let mut imported = Imported {
            base: self.raise_base(above, deadline)?,
            ..Imported::default()
        };
        for chunk in locks.chunks(MAX_BATCH) {
            let writes: Vec<Op> = chunk
                .iter()
                .map(|lock| {
                    let key = self.key("lock/", &lock.resource);
                    let record = Record {
                        lock: Some(lock.clone()),
                        delay: None,
                        written_ms: now_ms(),
                        request: "import".into(),
                        taken_by: "import".into(),
                        handed_to: String::new(),
                    };
                    Op::Txn {
                        compares: vec![Compare {
                            key: key.clone(),
                            target: Target::Create(0),
                        }],
                        success: vec![Op::Put {
                            key: key.clone(),
                            value: record.encode(None),
                            lease: 0,
                        }],
                        failure: vec![Op::Range {
                            key,
                            range_end: Vec::new(),
                        }],
                    }
                })
                .collect();
            let answer = self
                .etcd
                .txn(&[], &writes, &[], deadline)
                .map_err(|e| e.to_string())?;
            for (lock, result) in chunk.iter().zip(&answer.results) {
                let OpResult::Txn(result) = result else {
                    return Err("etcd's answer lacks a write".into());
                };
                if result.succeeded {
                    imported.written += 1;
                    continue;
                }
                let there = match result.results.first() {
                    Some(OpResult::Range(kvs)) => kvs.first(),
                    _ => None,
                };
                let there = there
                    .map(|kv| Record::decode(&lock.resource, kv))
                    .transpose()?
                    .and_then(|record| record.lock);
                match there {
                    Some(held) if held.client == lock.client && held.token == lock.token => {
                        imported.already += 1
                    }
                    _ => imported.conflicts.push(lock.resource.clone()),
                }
            }
        }
        Ok(imported)
    }

    /// Raises the token base to `above` unless it is there already;
    /// returns the base.
    fn raise_base(&self, above: u64, deadline: Instant) -> Result<u64, String> {
        let key = self.key("token-base", "");
        loop {
            let (kvs, _) = self
                .etcd
                .range(&key, &[], deadline)
                .map_err(|e| e.to_string())?;
            let (base, revision) = match kvs.first() {
                Some(kv) => (record::decode_base(kv)?, kv.mod_revision),
                None => (0, 0),
            };
            if base >= above {
                return Ok(base);
            }
            let guard = [Compare {
                key: key.clone(),
                target: Target::Mod(revision),
            }];
            let put = [Op::Put {
                key: key.clone(),
                value: above.to_string().into_bytes(),
                lease: 0,
            }];
            let written = self
                .etcd
                .txn(&guard, &put, &[], deadline)
                .map_err(|e| e.to_string())?;
            if written.succeeded {
                return Ok(above);
            }
        }
    }
}

/// Imports the lock directory `dir` (which no daemon may be serving) into
/// the etcd cluster `etcd`, under `prefix`. The directory is read as
/// `lockd serve` would open it (its journal replayed), and asked for one
/// more token, larger than every token it issued: the token base. The
/// directory is otherwise left as it was.
pub fn from_dir(
    dir: &std::path::Path,
    etcd: crate::etcd::Etcd,
    prefix: &str,
    deadline: Instant,
) -> anyhow::Result<Imported> {
    use anyhow::Context as _;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a lock directory", dir.display());
    }
    let lockd = crate::Lockd::open(dir)?;
    let locks = lockd.list("")?;
    let (probe, client) = (
        format!("lockd-import-{}", std::process::id()),
        "lockd import",
    );
    let above = lockd
        .acquire(&probe, client, &crate::Acquire::default())
        .context("taking a token from the directory")?;
    lockd.release(&probe, client, Some(above.token))?;
    drop(lockd);
    let runtime = crate::component::Runtime::new()?;
    let cluster = Cluster::new(
        etcd,
        prefix,
        &runtime,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    )?;
    cluster
        .import(&locks, above.token, deadline)
        .map_err(anyhow::Error::msg)
}
