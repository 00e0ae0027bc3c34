//! An etcd fault injector for cluster mode: a [`Store`] in front of a real
//! etcd client, between lockd's lock protocol and etcd. Per request, by a
//! rule a test gives or at random from a seed, it passes the request on,
//! or: refuses it with one of the texts etcd gives before it acts; lets
//! it reach etcd and loses the answer; lets it reach etcd and answers with
//! one of the texts etcd gives after a proposal (typed by lockd's own
//! reading of etcd's texts, `lockd::etcd::error_for`); drops it unsent
//! (the caller hears nothing); or holds it past the caller's deadline and
//! then lets it through. It also cuts watch streams, and holds keep-alives
//! or every request for a while (a session that runs out, a member
//! paused).
//!
//! Faults are honest: a request said not to have happened never reaches
//! etcd. What lockd then tells its callers is the protocol's doing.

use lockd::cluster::{Store, Watching};
use lockd::etcd::{Changes, Compare, Etcd, EtcdError, KeyValue, Op, Status, TxnResult, error_for};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Texts etcd answers before it proposes a request: it did not happen.
pub const BEFORE: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: unhealthy cluster",
    "etcdserver: not capable",
];

/// Texts etcd (or its gateway) may answer after it proposed a request:
/// it may have happened.
pub const AFTER: &[&str] = &[
    "etcdserver: request timed out",
    "etcdserver: request timed out, possibly due to previous leader failure",
    "etcdserver: request timed out, possibly due to connection lost",
    "etcdserver: leader changed",
    "etcdserver: server stopped",
    "etcdserver: request cancelled",
    "context deadline exceeded",
    "context canceled",
    "transport is closing",
    "etcdserver: mvcc: database space exceeded",
];

/// A small, seeded, reproducible random source (splitmix64).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// Puts `items` in a random order.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

/// What a request is, as a rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A transaction that only reads (or a range).
    Read,
    /// A transaction that may write.
    Write,
    LeaseGrant,
    KeepAlive,
    Watch,
    Status,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub kind: Kind,
    /// The keys it writes (in either branch of a transaction and of its
    /// nested transactions); a read's, the keys it reads.
    pub keys: Vec<Vec<u8>>,
}

impl Call {
    /// Whether one of its keys contains `part`.
    pub fn names(&self, part: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.windows(part.len()).any(|w| w == part.as_bytes()))
    }
}

/// What becomes of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refused before etcd acted, with this text of etcd's.
    Refuse(&'static str),
    /// Never reached etcd, and nothing came back.
    Drop,
    /// etcd acted; its answer was lost.
    LoseAnswer,
    /// etcd acted, then answered with this text of etcd's.
    ErrorAfter(&'static str),
    /// Held past the caller's deadline (who hears nothing), then let
    /// through to etcd.
    Delay(Duration),
}

/// How often each fault strikes a request, at random.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub refuse: f64,
    pub drop: f64,
    pub lose_answer: f64,
    pub error_after: f64,
    pub delay: f64,
    /// Per look at a watch: the stream is cut.
    pub cut_watch: f64,
}

type Rule = Box<dyn FnMut(&Call) -> Option<Fault> + Send>;

/// Faults injected so far, by kind.
#[derive(Default, Debug)]
pub struct Counts {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub dropped: AtomicU64,
    pub answers_lost: AtomicU64,
    pub errors_after: AtomicU64,
    pub delayed: AtomicU64,
    pub watches_cut: AtomicU64,
    pub held: AtomicU64,
}

impl Counts {
    pub fn faults(&self) -> u64 {
        [
            &self.refused,
            &self.dropped,
            &self.answers_lost,
            &self.errors_after,
            &self.delayed,
            &self.watches_cut,
            &self.held,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

struct Plan {
    rng: Rng,
    rates: Rates,
    rules: Vec<Rule>,
    /// Until then, keep-alives get no answer.
    keep_alives_held: Option<Instant>,
    /// Until then, no request gets an answer (a paused member).
    paused: Option<Instant>,
    /// Until then, every request is refused (a member cut off from the
    /// quorum: "no leader").
    refusing: Option<Instant>,
}

/// A fault-injecting [`Store`] over a real etcd client.
pub struct Faulty {
    inner: Arc<Etcd>,
    plan: Arc<Mutex<Plan>>,
    pub counts: Arc<Counts>,
    /// Held requests not yet let through.
    pending: Arc<AtomicUsize>,
}

impl Faulty {
    /// Every request passed on, until rules or rates say otherwise.
    pub fn new(inner: Etcd, seed: u64) -> Self {
        Self {
            inner: Arc::new(inner),
            plan: Arc::new(Mutex::new(Plan {
                rng: Rng::new(seed),
                rates: Rates::default(),
                rules: Vec::new(),
                keep_alives_held: None,
                paused: None,
                refusing: None,
            })),
            counts: Arc::default(),
            pending: Arc::default(),
        }
    }

    pub fn set_rates(&self, rates: Rates) {
        self.plan.lock().unwrap().rates = rates;
    }

    /// Asks `rule` first about every request from now on: the first rule
    /// that names a fault decides.
    pub fn rule(&self, rule: impl FnMut(&Call) -> Option<Fault> + Send + 'static) {
        self.plan.lock().unwrap().rules.push(Box::new(rule));
    }

    /// A rule striking once: `fault` for the first request `matches`.
    pub fn once(&self, matches: impl Fn(&Call) -> bool + Send + 'static, fault: Fault) {
        let mut fault = Some(fault);
        self.rule(move |call| match matches(call) {
            true => fault.take(),
            false => None,
        });
    }

    /// Keep-alives get no answer for `how_long`.
    pub fn hold_keep_alives(&self, how_long: Duration) {
        self.plan.lock().unwrap().keep_alives_held = Some(Instant::now() + how_long);
    }

    /// No request gets an answer for `how_long`.
    pub fn pause(&self, how_long: Duration) {
        self.plan.lock().unwrap().paused = Some(Instant::now() + how_long);
    }

    /// Every request is refused for `how_long`, as by a member cut off
    /// from the quorum.
    pub fn refuse_all(&self, how_long: Duration) {
        self.plan.lock().unwrap().refusing = Some(Instant::now() + how_long);
    }

    /// Waits until every held request was let through (and answered).
    pub fn settle(&self) {
        crate::support::wait_until("held etcd requests let through", || {
            self.pending.load(Ordering::SeqCst) == 0
        });
    }

    fn choose(&self, call: &Call) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let now = Instant::now();
        let held = match call.kind {
            Kind::KeepAlive => plan.keep_alives_held.is_some_and(|until| now < until),
            _ => false,
        };
        if held || plan.paused.is_some_and(|until| now < until) {
            self.counts.held.fetch_add(1, Ordering::Relaxed);
            return Some(Fault::Drop);
        }
        if plan.refusing.is_some_and(|until| now < until) && call.kind != Kind::Watch {
            return Some(Fault::Refuse("etcdserver: no leader"));
        }
        for rule in &mut plan.rules {
            if let Some(fault) = rule(call) {
                return Some(fault);
            }
        }
        if call.kind == Kind::Watch {
            return None;
        }
        let Plan { rng, rates, .. } = &mut *plan;
        let writes = call.kind != Kind::Read && call.kind != Kind::Status;
        if rng.chance(rates.refuse) {
            Some(Fault::Refuse(
                BEFORE[rng.below(BEFORE.len() as u64) as usize],
            ))
        } else if rng.chance(rates.drop) {
            Some(Fault::Drop)
        } else if writes && rng.chance(rates.lose_answer) {
            Some(Fault::LoseAnswer)
        } else if writes && rng.chance(rates.error_after) {
            Some(Fault::ErrorAfter(
                AFTER[rng.below(AFTER.len() as u64) as usize],
            ))
        } else if writes && rng.chance(rates.delay) {
            Some(Fault::Delay(Duration::from_millis(20 + rng.below(400))))
        } else {
            None
        }
    }

    /// Runs `go` on etcd as the fault chosen for `call` says.
    fn run<T: Send + 'static>(
        &self,
        call: Call,
        deadline: Instant,
        go: impl FnOnce(&Etcd, Instant) -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<T, EtcdError> {
        let counts = &self.counts;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let fault = self.choose(&call);
        let injected = |what: &str| format!("injected: {what}");
        match fault {
            None => go(&self.inner, deadline),
            Some(Fault::Refuse(text)) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                Err(error_for("injected", text))
            }
            Some(Fault::Drop) => {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                Err(EtcdError::Unknown(injected("no answer")))
            }
            Some(Fault::LoseAnswer) => {
                counts.answers_lost.fetch_add(1, Ordering::Relaxed);
                let _ = go(&self.inner, deadline);
                Err(EtcdError::Unknown(injected("the answer was lost")))
            }
            Some(Fault::ErrorAfter(text)) => {
                counts.errors_after.fetch_add(1, Ordering::Relaxed);
                let _ = go(&self.inner, deadline);
                Err(error_for("injected", text))
            }
            Some(Fault::Delay(by)) => {
                counts.delayed.fetch_add(1, Ordering::Relaxed);
                let (inner, pending) = (self.inner.clone(), self.pending.clone());
                pending.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    std::thread::sleep(by);
                    let _ = go(&inner, Instant::now() + Duration::from_secs(5));
                    pending.fetch_sub(1, Ordering::SeqCst);
                });
                Err(EtcdError::Unknown(injected(
                    "no answer before the deadline",
                )))
            }
        }
    }
}

/// The keys `ops` write, or with `reads` the keys they name at all.
fn op_keys(ops: &[Op], reads: bool, keys: &mut Vec<Vec<u8>>) {
    for op in ops {
        match op {
            Op::Range { key, .. } | Op::Oldest { key, .. } if reads => keys.push(key.clone()),
            Op::Range { .. } | Op::Oldest { .. } => {}
            Op::Put { key, .. } | Op::Delete { key, .. } => keys.push(key.clone()),
            Op::Txn {
                success, failure, ..
            } => {
                op_keys(success, reads, keys);
                op_keys(failure, reads, keys);
            }
        }
    }
}

impl Store for Faulty {
    fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
        deadline: Instant,
    ) -> Result<TxnResult, EtcdError> {
        let writes = success.iter().chain(failure).any(Op::writes);
        let mut keys = Vec::new();
        op_keys(success, !writes, &mut keys);
        op_keys(failure, !writes, &mut keys);
        let kind = if writes { Kind::Write } else { Kind::Read };
        let (compares, success, failure) = (compares.to_vec(), success.to_vec(), failure.to_vec());
        self.run(Call { kind, keys }, deadline, move |etcd, deadline| {
            etcd.txn(&compares, &success, &failure, deadline)
        })
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let (key, end) = (key.to_vec(), range_end.to_vec());
        let call = Call {
            kind: Kind::Read,
            keys: vec![key.clone()],
        };
        self.run(call, deadline, move |etcd, deadline| {
            etcd.range(&key, &end, deadline)
        })
    }

    fn range_page(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        limit: usize,
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64, bool), EtcdError> {
        let (key, end) = (key.to_vec(), range_end.to_vec());
        let call = Call {
            kind: Kind::Read,
            keys: vec![key.clone()],
        };
        self.run(call, deadline, move |etcd, deadline| {
            etcd.range_page(&key, &end, revision, limit, deadline)
        })
    }

    fn lease_grant(&self, ttl_s: i64, deadline: Instant) -> Result<(i64, i64), EtcdError> {
        let call = Call {
            kind: Kind::LeaseGrant,
            keys: Vec::new(),
        };
        self.run(call, deadline, move |etcd, deadline| {
            etcd.lease_grant(ttl_s, deadline)
        })
    }

    fn lease_keep_alive(&self, id: i64, deadline: Instant) -> Result<i64, EtcdError> {
        let call = Call {
            kind: Kind::KeepAlive,
            keys: Vec::new(),
        };
        self.run(call, deadline, move |etcd, deadline| {
            etcd.lease_keep_alive(id, deadline)
        })
    }

    fn lease_revoke(&self, id: i64, deadline: Instant) -> Result<(), EtcdError> {
        // Revoking is how a stopping host ends its session: never
        // injected, so that a test ends with its keys gone.
        self.inner.lease_revoke(id, deadline)
    }

    fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        deadline: Instant,
    ) -> Result<Box<dyn Watching>, EtcdError> {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            kind: Kind::Watch,
            keys: vec![key.to_vec()],
        };
        if let Some(fault) = self.choose(&call) {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            return Err(EtcdError::NotApplied(format!("injected: {fault:?}")));
        }
        let inner = Store::watch(&*self.inner, key, range_end, start_revision, deadline)?;
        Ok(Box::new(CutWatch {
            inner,
            plan: self.plan.clone(),
            counts: self.counts.clone(),
        }))
    }

    fn status(&self, deadline: Instant) -> Result<Status, EtcdError> {
        let call = Call {
            kind: Kind::Status,
            keys: Vec::new(),
        };
        self.run(call, deadline, move |etcd, deadline| etcd.status(deadline))
    }

    fn tries(&self) -> (u64, u64) {
        (self.counts.requests.load(Ordering::Relaxed), 0)
    }
}

/// A watch the injector may cut.
struct CutWatch {
    inner: Box<dyn Watching>,
    plan: Arc<Mutex<Plan>>,
    counts: Arc<Counts>,
}

impl Watching for CutWatch {
    fn next(&mut self, until: Instant) -> Result<Option<Changes>, String> {
        let cut = {
            let mut plan = self.plan.lock().unwrap();
            let Plan { rng, rates, .. } = &mut *plan;
            rng.chance(rates.cut_watch)
        };
        if cut {
            self.counts.watches_cut.fetch_add(1, Ordering::Relaxed);
            return Err("injected: the watch stream was cut".into());
        }
        self.inner.next(until)
    }
}
