//! `lockd bench --etcd`: a lockd host in cluster mode on an etcd cluster,
//! next to etcd's own lock service on the same cluster (its v3lock API
//! through the JSON gateway: a lease per connection, then
//! `/v3/lock/lock` and `/v3/lock/unlock` on distinct names), and one
//! guarded etcd transaction's round trip alone (the floor of a lock).

use super::{BenchConfig, Daemon, Figures, drive, load, micros, print_header, print_line};
use crate::etcd::{Compare, Etcd, Op, Target};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long one etcd request of the baseline may take.
const DEADLINE: Duration = Duration::from_secs(10);

pub fn run(config: &BenchConfig, urls: &[String]) -> anyhow::Result<()> {
    println!(
        "lockd bench: lock/unlock pairs on {} (etcd), distinct resources, {} s per run",
        urls.join(","),
        config.duration.as_secs_f64()
    );
    print_header();
    let txn = guarded_txns(urls, config.duration.min(Duration::from_secs(3)))?;
    print_line("etcd guarded txn alone", 1, &txn, None, None);
    let prefix = format!("lockd-bench-{}/", std::process::id());
    let args = ["--etcd", &urls.join(","), "--etcd-prefix", &prefix];
    let (mut daemon, addr, _) = Daemon::start(&args, config.server_cpus.as_deref(), None)?;
    for &conns in &config.connections {
        let figures = load(&addr, None, conns, config.duration, config.contended)?;
        let etcd = etcd_locks(urls, conns, config.duration)?;
        print_line("lockd --etcd", conns, &figures, daemon.peak_rss_kib(), None);
        let ratio = figures.ops_per_sec() / etcd.ops_per_sec();
        print_line("etcd v3lock", conns, &etcd, None, Some(ratio));
    }
    daemon.stop();
    Ok(())
}

/// One connection's guarded transactions, back to back: a put guarded by
/// the key's mod revision, as lockd writes a lock.
fn guarded_txns(urls: &[String], duration: Duration) -> anyhow::Result<Figures> {
    let etcd = Etcd::new(urls).map_err(anyhow::Error::msg)?;
    let key = format!("lockd-bench-{}/txn", std::process::id()).into_bytes();
    drive(1, duration, move |_, stop, latencies| {
        let mut revision = 0;
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let guard = [Compare {
                key: key.clone(),
                target: Target::Mod(revision),
            }];
            let put = [Op::Put {
                key: key.clone(),
                value: b"x".to_vec(),
                lease: 0,
            }];
            let written = etcd
                .txn(&guard, &put, &[], Instant::now() + DEADLINE)
                .map_err(anyhow::Error::msg)?;
            latencies.push(micros(start));
            revision = written.revision;
        }
        Ok(0)
    })
}

/// etcd's own lock service: each connection takes a lease, then locks and
/// unlocks names of its own; a lock and an unlock each count as one op.
fn etcd_locks(urls: &[String], conns: usize, duration: Duration) -> anyhow::Result<Figures> {
    let etcd = Arc::new(Etcd::new(urls).map_err(anyhow::Error::msg)?);
    let run = format!("{}-{}", std::process::id(), conns);
    drive(conns, duration, move |t, stop, latencies| {
        let deadline = || Instant::now() + DEADLINE;
        let (lease, _) = etcd
            .lease_grant(60, deadline())
            .map_err(anyhow::Error::msg)?;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("lockd-bench-v3lock/{run}-{t}-{i}").into_bytes();
            i += 1;
            let start = Instant::now();
            let key = etcd
                .lock(&name, lease, deadline())
                .map_err(anyhow::Error::msg)?;
            latencies.push(micros(start));
            let start = Instant::now();
            etcd.unlock(&key, deadline()).map_err(anyhow::Error::msg)?;
            latencies.push(micros(start));
        }
        etcd.lease_revoke(lease, deadline())
            .map_err(anyhow::Error::msg)?;
        Ok(0)
    })
}
