//! Counters and histograms of what the daemon does, and their exposition
//! (`GET /metrics`, OpenMetrics text) through the Prometheus project's
//! client, `prometheus-client`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];
/// Requests per guest call.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A metric's labels: name and value.
type Labels = Vec<(&'static str, String)>;

/// Everything counted. The metrics share their counts with their clones,
/// which each scrape registers anew beside what is read at that time.
pub struct Metrics {
    /// Calls answered, by method.
    requests: Family<Labels, Counter>,
    /// Calls answered with a fault, by method and code.
    faults: Family<Labels, Counter>,
    pub request_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    pub lease_expiries: Counter,
    pub breaks: Counter,
    /// Connections cut off for what they made lockd hold, by reason.
    cuts: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            faults: Family::default(),
            request_seconds: Histogram::new(LATENCY_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
            lease_expiries: Counter::default(),
            breaks: Counter::default(),
            cuts: Family::default(),
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
    /// Its name as scraped (a counter's ends in `_total`).
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
        self.requests
            .get_or_create(&vec![("method", method.to_owned())])
            .inc();
        if let Some(code) = fault {
            let labels = vec![("method", method.to_owned()), ("code", code.to_string())];
            self.faults.get_or_create(&labels).inc();
        }
    }

    /// Counts a connection cut off for `reason`.
    pub fn cut(&self, reason: &'static str) {
        self.cuts
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    pub fn observe_request(&self, took: Duration) {
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// The exposition, with what was read now.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut registry = Registry::default();
        // (Counters are registered without their `_total`, which the
        // exposition adds.)
        registry.register(
            "lockd_requests",
            "XML-RPC calls answered, by method",
            self.requests.clone(),
        );
        registry.register(
            "lockd_faults",
            "XML-RPC calls answered with a fault, by method and code",
            self.faults.clone(),
        );
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        registry.register(
            "lockd_locks_held",
            "Locks held now",
            gauge(gauges.locks_held as u64),
        );
        registry.register(
            "lockd_waiters",
            "Clients waiting for a lock now",
            gauge(gauges.waiters as u64),
        );
        registry.register(
            "lockd_journal_bytes",
            "Bytes of changes in the journal not yet emptied into the lock files",
            gauge(gauges.journal_bytes),
        );
        registry.register(
            "lockd_connections_cut",
            "Connections lockd cut off for what they made it hold, by reason: head (over --max-header), body (over --max-body), queue (requests piled up, answers unread), budget (over --max-buffered), malformed (a request the front door could not read as HTTP/1.1)",
            self.cuts.clone(),
        );
        registry.register(
            "lockd_lease_expiries",
            "Leases that ran out",
            self.lease_expiries.clone(),
        );
        registry.register(
            "lockd_lock_breaks",
            "Locks broken by an operator",
            self.breaks.clone(),
        );
        for sample in &gauges.store {
            match sample.name.strip_suffix("_total") {
                Some(name) if sample.kind == "counter" => {
                    registry.register(name, sample.help, ConstCounter::new(sample.value))
                }
                _ => registry.register(sample.name, sample.help, gauge(sample.value)),
            }
        }
        registry.register(
            "lockd_request_duration_seconds",
            "From taking an HTTP request to having its answer ready to write",
            self.request_seconds.clone(),
        );
        registry.register(
            "lockd_commit_duration_seconds",
            "One guest call that changed locks: written, and synced with --sync=always",
            self.commit_seconds.clone(),
        );
        registry.register(
            "lockd_batch_size",
            "Requests committed together in one guest call",
            self.batch_size.clone(),
        );
        let mut out = String::new();
        // (Writing into a String cannot fail.)
        let _ = encode(&mut out, &registry);
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
            "lockd_batch_size_bucket{le=\"1.0\"} 1\n",
            "lockd_batch_size_bucket{le=\"4.0\"} 2\n",
            "lockd_batch_size_bucket{le=\"+Inf\"} 3\n",
            "lockd_batch_size_count 3\n",
            "lockd_requests_total{method=\"lock\"} 2\n",
            "lockd_faults_total{method=\"lock\",code=\"1\"} 1\n",
            "lockd_locks_held 7\n",
            "lockd_waiters 2\n",
            "lockd_journal_bytes 512\n",
            "# TYPE lockd_etcd_conflicts counter\n",
            "lockd_etcd_conflicts_total 3\n",
            "# EOF\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
