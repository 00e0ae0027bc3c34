//! The explorer: cluster mode's real host code (`Cluster`, several hosts
//! on one etcd) under seeded random workloads and random injected etcd
//! faults (`etcd_faults.rs`), every history checked (`explore_check.rs`).
//! A seed picks the hosts, the lock-delay and clock-skew margin, the
//! fault rates, session and member outages, and each client's moves
//! (`explore_client.rs`); a seed that fails prints itself, and
//! `LOCKD_EXPLORE_SEED=<n>` runs it again (the same workload and faults;
//! threads may interleave differently, so it is run until it fails or
//! `LOCKD_EXPLORE_REPEAT` times).
//!
//! `LOCKD_EXPLORE_SECS` (60 by default) bounds the run;
//! `LOCKD_EXPLORE_FIRST` is the first seed (1 by default);
//! `LOCKD_EXPLORE_STOP=1` ends it at the first seed that fails (to time
//! how long the explorer takes to find a fault, `tests/mutants/`).

use crate::etcd_cluster::EtcdCluster;
use crate::etcd_faults::{Faulty, Rates, Rng};
use crate::explore_check::{History, Outcome, What, now_us};
use crate::explore_client::{Client, NAMES, World};
use lockd::cluster::Cluster;
use lockd::component::{LockInfo, Runtime};
use lockd::etcd::{Etcd, wire};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The seed counter's value once a run is told to stop.
const STOPPED: u64 = u64::MAX / 2;

/// What one seed did and found.
struct Report {
    seed: u64,
    calls: usize,
    faults: u64,
    requests: u64,
    violations: Vec<String>,
    took: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().expect(name))
}

fn rate(rng: &mut Rng) -> f64 {
    *rng.pick(&[0.0, 0.0, 0.02, 0.05, 0.1])
}

/// Runs seed `seed` against the etcd at `urls`.
fn explore(seed: u64, urls: &[String], runtime: &Runtime) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let prefix = format!("explore/{seed}-{}/", now_us());
    let lock_delay = match rng.chance(0.5) {
        true => Duration::ZERO,
        false => Duration::from_millis(100 + rng.below(300)),
    };
    let skew = match rng.chance(0.5) {
        true => Duration::ZERO,
        false => Duration::from_millis(50 + rng.below(300)),
    };
    let rates = Rates {
        refuse: rate(&mut rng),
        drop: rate(&mut rng),
        lose_answer: rate(&mut rng),
        error_after: rate(&mut rng),
        delay: rate(&mut rng),
        cut_watch: rate(&mut rng) / 5.0,
    };
    let n_hosts = 2 + rng.below(2) as usize;
    let stores: Vec<Arc<Faulty>> = (0..n_hosts)
        .map(|i| {
            let faulty = Faulty::new(Etcd::new(urls).unwrap(), seed * 31 + i as u64);
            faulty.set_rates(rates.clone());
            Arc::new(faulty)
        })
        .collect();
    let hosts: Vec<Cluster> = stores
        .iter()
        .map(|store| {
            Cluster::with_store(store.clone(), &prefix, runtime, lock_delay, skew).unwrap()
        })
        .collect();
    // An outage of one host's etcd, some time into the run: its session
    // runs out, its member pauses, or its member is cut off from the
    // quorum (refusing everything) while the others go on.
    let outage = rng.below(100);
    let victim = rng.below(n_hosts as u64) as usize;
    let outage_at = Duration::from_millis(rng.below(2000));
    let outage_for = Duration::from_millis(300 + rng.below(1700));
    let start_outage = |store: &Faulty| match outage {
        0..15 => store.hold_keep_alives(Duration::from_secs(7)),
        15..35 => store.pause(outage_for),
        35..60 => store.refuse_all(outage_for),
        _ => {}
    };
    let history = History::default();
    let world = World {
        hosts: &hosts,
        history: &history,
        shared_ids: *rng.pick(&[0, 200, 500, 800]),
        names: {
            let mut names = NAMES.to_vec();
            rng.shuffle(&mut names);
            names.truncate(2 + rng.below(NAMES.len() as u64 - 1) as usize);
            names
        },
        breaks: rng.chance(0.3),
        ops: 20 + rng.below(20) as usize,
    };
    let clients = 3 + rng.below(3);
    std::thread::scope(|scope| {
        let victim = &stores[victim];
        scope.spawn(move || {
            std::thread::sleep(outage_at);
            start_outage(victim);
        });
        for me in 0..clients {
            let client_rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(me));
            let world = &world;
            scope.spawn(move || Client::new(me as usize, world, scope, client_rng).run());
        }
    });
    for store in &stores {
        store.settle();
    }
    let mut violations = Vec::new();
    let clean = Etcd::new(urls).unwrap();
    let lines = format!("{prefix}wait/").into_bytes();
    let lines_end = wire::prefix_end(&lines);
    // Every wait is over: every waiter key must go (at once, or as soon
    // as a host can clean up after etcd's trouble).
    let bound = Instant::now() + Duration::from_secs(8);
    let left = loop {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (keys, _) = clean.range(&lines, &lines_end, deadline).unwrap();
        if keys.is_empty() || Instant::now() > bound {
            break keys;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for kv in left {
        violations.push(format!(
            "waiter key {:?} outlived every call",
            String::from_utf8_lossy(&kv.key)
        ));
    }
    let end_at = now_us();
    let reader = Cluster::new(clean, &prefix, runtime, lock_delay, skew).unwrap();
    let end: Vec<LockInfo> = reader
        .list("", None, None, Instant::now() + Duration::from_secs(5))
        .unwrap_or_default();
    violations.extend(history.violations(&end, end_at));
    let calls = history.calls.lock().unwrap();
    // etcd requests: a bounded number per call, per second of waiting,
    // and per second of a host's session and watch.
    let requests: u64 = stores
        .iter()
        .map(|s| s.counts.requests.load(Ordering::Relaxed))
        .sum();
    let waited_s: f64 = calls
        .iter()
        .filter(|c| matches!(c.what, What::Acquire { wait: true }))
        .map(|c| (c.finished - c.asked) as f64 / 1e6)
        .sum();
    let took = started.elapsed();
    let allowed =
        40.0 * calls.len() as f64 + 20.0 * waited_s + 10.0 * n_hosts as f64 * took.as_secs_f64();
    if requests as f64 > allowed {
        violations.push(format!(
            "{requests} etcd requests for {} calls and {waited_s:.1} s of waiting (bound \
             {allowed:.0})",
            calls.len()
        ));
    }
    let faults = stores.iter().map(|s| s.counts.faults()).sum();
    for host in &hosts {
        host.stop();
    }
    if !violations.is_empty() {
        let unknown = calls.iter().filter(|c| c.outcome.open()).count();
        eprintln!(
            "seed {seed}: {} calls ({unknown} unknown), lock-delay {lock_delay:?}, skew \
             {skew:?}, {n_hosts} hosts, rates {rates:?}",
            calls.len()
        );
        for c in calls
            .iter()
            .filter(|c| !matches!(c.outcome, Outcome::Status(None)))
        {
            eprintln!("  {c}");
        }
    }
    Report {
        seed,
        calls: calls.len(),
        faults,
        requests,
        violations,
        took,
    }
}

#[test]
fn cluster_mode_keeps_its_promises_under_injected_etcd_faults() {
    let budget = Duration::from_secs(env_u64("LOCKD_EXPLORE_SECS").unwrap_or(60));
    let only = env_u64("LOCKD_EXPLORE_SEED");
    let repeat = env_u64("LOCKD_EXPLORE_REPEAT").unwrap_or(20);
    let first = env_u64("LOCKD_EXPLORE_FIRST").unwrap_or(1);
    let stop = env_u64("LOCKD_EXPLORE_STOP").is_some_and(|stop| stop != 0);
    let etcd = EtcdCluster::start(1);
    let urls = etcd.urls();
    let runtime = Runtime::new().unwrap();
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let reports = std::sync::Mutex::new(Vec::new());
    // Seeds run two at a time: most of a seed's time is waiting.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= STOPPED {
                        return;
                    }
                    let seed = match only {
                        Some(seed) if n < repeat => seed,
                        Some(_) => return,
                        None if started.elapsed() < budget => first + n,
                        None => return,
                    };
                    let report = explore(seed, &urls, &runtime);
                    let failed = !report.violations.is_empty();
                    if failed {
                        eprintln!(
                            "explorer: seed {seed} FAILED after {:.1} s of exploring:",
                            started.elapsed().as_secs_f64()
                        );
                        for v in &report.violations {
                            eprintln!("  {v}");
                        }
                        eprintln!(
                            "  replay: LOCKD_EXPLORE_SEED={seed} cargo test --test integration \
                             cluster_explore -- --nocapture"
                        );
                    }
                    reports.lock().unwrap().push(report);
                    if failed && (only.is_some() || stop) {
                        next.store(STOPPED, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap();
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    eprintln!(
        "explorer: {} seeds in {:.0} s ({:.1} s a seed), {} calls checked, {} etcd requests, \
         {} faults injected; failed seeds: {:?}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        reports.iter().map(|r| r.took.as_secs_f64()).sum::<f64>() / reports.len().max(1) as f64,
        sum(|r| r.calls as u64),
        sum(|r| r.requests),
        sum(|r| r.faults),
        failed.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
    assert!(failed.is_empty(), "seeds that broke a promise: see above");
}
