//! `lockd bench --against OTHER`: this lockd and another lockd binary (an
//! older build, say) under the same load, by turns in one sitting, and the
//! ratio of their medians per sync mode and connection count.
//!
//! A machine's speed drifts by tens of percent between minutes (other
//! work, frequency, the page cache), more than most changes win or cost;
//! only runs side by side compare. Each round runs both binaries, each on
//! a fresh daemon and lock directory, the first of the pair alternating
//! between rounds so that a drift within a round falls on each alike.

use super::{BenchConfig, Daemon, Figures, load, print_header, print_line};
use anyhow::Context as _;
use std::path::Path;

/// One binary's figures over the rounds.
struct Side {
    name: String,
    runs: Vec<Figures>,
}

impl Side {
    fn median(&self) -> f64 {
        median(self.runs.iter().map(Figures::ops_per_sec).collect())
    }
}

/// Runs the rounds and prints each run, then the medians and their ratio.
pub fn run(config: &BenchConfig, other: &Path, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let this = std::env::current_exe()?;
    let other = other
        .canonicalize()
        .with_context(|| format!("--against {}", other.display()))?;
    println!(
        "lockd bench --against: lock/unlock over keep-alive connections, distinct resources, \
         {} s per run, {rounds} rounds by turns",
        config.duration.as_secs_f64()
    );
    println!("# this:  {}", this.display());
    println!("# other: {}", other.display());
    print_header();
    let mut summary = Vec::new();
    for sync in config.syncs.iter().map(|s| s.name()) {
        for &conns in &config.connections {
            let mut sides = [
                Side {
                    name: format!("this --sync={sync}"),
                    runs: Vec::new(),
                },
                Side {
                    name: format!("other --sync={sync}"),
                    runs: Vec::new(),
                },
            ];
            let binaries = [this.as_path(), other.as_path()];
            for round in 0..rounds {
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for side in order {
                    let (figures, rss) = measure(binaries[side], sync, conns, config)?;
                    print_line(&sides[side].name, conns, &figures, rss, None);
                    sides[side].runs.push(figures);
                }
            }
            let pairs: Vec<f64> = sides[0]
                .runs
                .iter()
                .zip(&sides[1].runs)
                .map(|(a, b)| a.ops_per_sec() / b.ops_per_sec())
                .collect();
            summary.push((sync, conns, sides[0].median(), sides[1].median(), pairs));
        }
    }
    println!();
    println!(
        "{:<6} {:>5} {:>12} {:>12} {:>7}  per round",
        "sync", "conns", "this ops/s", "other ops/s", "ratio"
    );
    for (sync, conns, this, other, pairs) in summary {
        let pairs: Vec<String> = pairs.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{sync:<6} {conns:>5} {this:>12.0} {other:>12.0} {:>6.2}x  {}",
            this / other,
            pairs.join(" ")
        );
    }
    Ok(())
}

/// One run of `lockd` on a fresh daemon and directory.
fn measure(
    lockd: &Path,
    sync: &str,
    conns: usize,
    config: &BenchConfig,
) -> anyhow::Result<(Figures, Option<u64>)> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("locks");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.to_string_lossy();
    let args = ["--sync", sync, "--dir", &dir];
    let (mut daemon, addr, _) =
        Daemon::start_binary(lockd, &args, config.server_cpus.as_deref(), None)
            .with_context(|| format!("starting {}", lockd.display()))?;
    let figures = load(&addr, None, conns, config.duration, None)?;
    let rss = daemon.peak_rss_kib();
    daemon.stop();
    Ok((figures, rss))
}

/// The median of `values` (the mean of the middle two of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0]), 5.0);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
