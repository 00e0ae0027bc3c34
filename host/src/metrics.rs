//! Counters and histograms of what the daemon does, and their Prometheus
//! text exposition (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];
/// Requests per guest call.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the count above the last.
    counts: Vec<AtomicU64>,
    /// The sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Everything counted.
pub struct Metrics {
    /// Calls answered, by method and fault code (`None`: no fault).
    calls: Mutex<BTreeMap<(&'static str, Option<i32>), u64>>,
    pub request_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    pub lease_expiries: AtomicU64,
    pub breaks: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: Mutex::new(BTreeMap::new()),
            request_seconds: Histogram::new(&LATENCY_BUCKETS),
            commit_seconds: Histogram::new(&LATENCY_BUCKETS),
            batch_size: Histogram::new(&BATCH_BUCKETS),
            lease_expiries: AtomicU64::new(0),
            breaks: AtomicU64::new(0),
        }
    }
}

/// What is read at the time of a scrape.
pub struct Gauges {
    pub locks_held: usize,
    pub waiters: usize,
    pub journal_bytes: u64,
    /// What the lock store counts of itself (cluster mode: etcd).
    pub store: Vec<Sample>,
}

/// One counter or gauge kept outside [`Metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    pub value: u64,
}

impl Metrics {
    /// Counts a call of `method` that succeeded (`fault` `None`) or got
    /// fault `fault`.
    pub fn call(&self, method: &'static str, fault: Option<i32>) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls.entry((method, fault)).or_default() += 1;
    }

    pub fn observe_request(&self, took: Duration) {
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.push_str(
            "# HELP lockd_requests_total XML-RPC calls answered, by method.\n\
             # TYPE lockd_requests_total counter\n",
        );
        let mut by_method: BTreeMap<&str, u64> = BTreeMap::new();
        for ((method, _), n) in &calls {
            *by_method.entry(method).or_default() += n;
        }
        for (method, n) in by_method {
            let _ = writeln!(out, "lockd_requests_total{{method=\"{method}\"}} {n}");
        }
        out.push_str(
            "# HELP lockd_faults_total XML-RPC calls answered with a fault, by method and code.\n\
             # TYPE lockd_faults_total counter\n",
        );
        for ((method, fault), n) in &calls {
            if let Some(code) = fault {
                let _ = writeln!(
                    out,
                    "lockd_faults_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "lockd_locks_held",
            "Locks held now.",
            gauges.locks_held as u64,
        );
        gauge(
            &mut out,
            "lockd_waiters",
            "Clients waiting for a lock now.",
            gauges.waiters as u64,
        );
        gauge(
            &mut out,
            "lockd_journal_bytes",
            "Bytes of changes in the journal not yet emptied into the lock files.",
            gauges.journal_bytes,
        );
        counter(
            &mut out,
            "lockd_lease_expiries_total",
            "Leases that ran out.",
            self.lease_expiries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "lockd_lock_breaks_total",
            "Locks broken by an operator.",
            self.breaks.load(Ordering::Relaxed),
        );
        for sample in &gauges.store {
            let Sample {
                name,
                help,
                kind,
                value,
            } = sample;
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.request_seconds.write(
            &mut out,
            "lockd_request_duration_seconds",
            "From taking an HTTP request to answering it.",
        );
        self.commit_seconds.write(
            &mut out,
            "lockd_commit_duration_seconds",
            "One guest call that changed locks: written, and synced with --sync=always.",
        );
        self.batch_size.write(
            &mut out,
            "lockd_batch_size",
            "Requests committed together in one guest call.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_exposition_has_every_family() {
        let m = Metrics::default();
        m.batch_size.observe(1.0);
        m.batch_size.observe(3.0);
        m.batch_size.observe(1000.0);
        m.call("lock", None);
        m.call("lock", Some(1));
        let text = m.render(&Gauges {
            locks_held: 7,
            waiters: 2,
            journal_bytes: 512,
            store: vec![Sample {
                name: "lockd_etcd_conflicts_total",
                help: "Guarded writes that lost to another.",
                kind: "counter",
                value: 3,
            }],
        });
        for line in [
            "lockd_batch_size_bucket{le=\"1\"} 1\n",
            "lockd_batch_size_bucket{le=\"4\"} 2\n",
            "lockd_batch_size_bucket{le=\"+Inf\"} 3\n",
            "lockd_batch_size_count 3\n",
            "lockd_requests_total{method=\"lock\"} 2\n",
            "lockd_faults_total{method=\"lock\",code=\"1\"} 1\n",
            "lockd_locks_held 7\n",
            "lockd_waiters 2\n",
            "lockd_journal_bytes 512\n",
            "# TYPE lockd_etcd_conflicts_total counter\nlockd_etcd_conflicts_total 3\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
