//! Opening [`Lockd`]: on a lock directory (the committer, its timer and
//! the component's instance on the directory) or on an etcd cluster.

use super::calls::millis;
use super::{Durability, Lockd, OpenReport, Options};
use crate::backend::Terms;
use crate::commit::Committer;
use crate::component::{
    Durability as GuestDurability, Instance, Options as GuestOptions, Request, Runtime,
};
use crate::guard::DirGuard;
use crate::metrics::Metrics;
use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

impl Lockd {
    /// Opens `dir` (created if missing) for exclusive use by this process,
    /// with every change synced before it returns.
    pub fn open(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        Self::open_with(dir, &Options::default())
    }

    /// Opens `dir` with `options`. Fails if another lockd has it open.
    pub fn open_with(dir: impl AsRef<Path>, options: &Options) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating lock directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving lock directory {}", dir.display()))?;
        let guard = DirGuard::acquire(&dir)?;
        let runtime = Runtime::new()?;
        let guest_options = guest_options(options);
        let (instance, report) = open_instance(&runtime, &dir, guest_options)?;
        let reopen = Box::new(move |runtime: &Runtime, dir: &Path| {
            open_instance(runtime, dir, guest_options).map(|(instance, _)| instance)
        });
        let metrics = Arc::new(Metrics::default());
        let committer = Arc::new(Committer::new(
            dir.clone(),
            options.lock_delay,
            options.max_waiters,
            runtime,
            instance,
            reopen,
            metrics.clone(),
        ));
        let timer = {
            let committer = committer.clone();
            std::thread::Builder::new()
                .name("lockd-timer".into())
                .spawn(move || committer.run_timer())
                .context("starting the timer thread")?
        };
        let lockd = Self {
            location: format!("lock directory {}", dir.display()),
            dir: Some(dir),
            options: options.clone(),
            report,
            backend: committer,
            metrics,
            timer: Some(timer),
            _guard: Some(guard),
        };
        // Leases that ran out while no daemon ran end now.
        lockd.submit(Request::Sweep, Terms::once())?;
        Ok(lockd)
    }

    /// Locks kept in the etcd cluster `etcd` (cluster mode), under
    /// `prefix`, judging leases with a `max_clock_skew` margin; see
    /// [`crate::cluster`].
    pub fn on_etcd(
        etcd: crate::etcd::Etcd,
        prefix: &str,
        max_clock_skew: Duration,
        options: &Options,
    ) -> anyhow::Result<Self> {
        let endpoints = etcd.endpoints();
        let runtime = Runtime::new()?;
        let cluster = crate::cluster::Cluster::new(
            etcd,
            prefix,
            &runtime,
            options.lock_delay,
            max_clock_skew,
        )?;
        let backend = Arc::new(crate::cluster::Served::new(cluster, options.max_waiters));
        Ok(Self {
            dir: None,
            location: format!("cluster mode on etcd {endpoints} (prefix {prefix:?})"),
            options: options.clone(),
            report: OpenReport::default(),
            backend,
            metrics: Arc::new(Metrics::default()),
            timer: None,
            _guard: None,
        })
    }
}

fn guest_options(options: &Options) -> GuestOptions {
    GuestOptions {
        durability: match options.durability {
            Durability::Always => GuestDurability::Always,
            Durability::None => GuestDurability::None,
        },
        lock_delay_ms: millis(options.lock_delay),
    }
}

fn open_instance(
    runtime: &Runtime,
    dir: &Path,
    options: GuestOptions,
) -> anyhow::Result<(Instance, OpenReport)> {
    let mut instance = runtime.instantiate(dir)?;
    let report = instance
        .open(options)?
        .map_err(|e| anyhow::anyhow!("opening lock directory {}: {e:?}", dir.display()))?;
    Ok((
        instance,
        OpenReport {
            held: report.held,
            replayed: report.replayed,
            notes: report.notes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the journal's checkpoint size (1 MiB), the journal starts a new
    /// cycle over its old records; reopening (as after a crash: nothing
    /// was closed) must replay only the new cycle's.
    #[test]
    fn the_journal_cycles_at_checkpoints_and_replays_only_its_current_cycle() {
        let tmp = tempfile::tempdir().unwrap();
        let name = |i: usize| format!("{i:04}-{}", "r".repeat(200));
        let pairs = 3200;
        {
            let locks = Lockd::open(tmp.path()).unwrap();
            for i in 0..pairs {
                locks.lock(&name(i), "c").unwrap();
                if i % 2 == 0 {
                    locks.unlock(&name(i), "c").unwrap();
                }
            }
        }
        let locks = Lockd::open(tmp.path()).unwrap();
        let replayed = locks.open_report().replayed;
        assert!(
            replayed > 0 && replayed < pairs as u64,
            "replayed {replayed}: a checkpoint should have emptied the journal on the way"
        );
        for i in 0..pairs {
            let expected = (i % 2 == 1).then(|| "c".to_owned());
            assert_eq!(locks.holder(&name(i)).unwrap(), expected, "{i}");
        }
    }
}
