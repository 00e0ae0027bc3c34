//! Cluster mode under etcd faults chosen by rule (`etcd_faults.rs`), one
//! test for each way the review and the explorer found it could break a
//! promise: each sets up its hosts, injects the fault that broke it, and
//! checks what its callers were told against what etcd holds.

use crate::etcd_cluster::EtcdCluster;
use crate::etcd_faults::{Call, Fault, Faulty, Kind};
use lockd::cluster::{Cluster, ClusterError};
use lockd::component::{
    AcquireRequest, GuestError, LockInfo, ReleaseRequest, Reply, Request, Runtime,
};
use lockd::etcd::{Etcd, Op, wire};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hosts on one etcd, each behind a fault injector of its own.
struct Hosts {
    etcd: EtcdCluster,
    prefix: String,
    stores: Vec<Arc<Faulty>>,
    hosts: Vec<Cluster>,
}

impl Hosts {
    fn start(n: usize, lock_delay: Duration, skew: Duration) -> Self {
        let etcd = EtcdCluster::start(1);
        let prefix = "faults/".to_owned();
        let runtime = Runtime::new().unwrap();
        let stores: Vec<Arc<Faulty>> = (0..n)
            .map(|i| Arc::new(Faulty::new(Etcd::new(&etcd.urls()).unwrap(), i as u64)))
            .collect();
        let hosts = stores
            .iter()
            .map(|s| Cluster::with_store(s.clone(), &prefix, &runtime, lock_delay, skew).unwrap())
            .collect();
        Self {
            etcd,
            prefix,
            stores,
            hosts,
        }
    }

    /// The waiter keys in etcd now, read past every injector.
    fn waiter_keys(&self) -> Vec<String> {
        let clean = Etcd::new(&self.etcd.urls()).unwrap();
        let lines = format!("{}wait/", self.prefix).into_bytes();
        let (keys, _) = clean
            .range(&lines, &wire::prefix_end(&lines), soon())
            .unwrap();
        keys.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    /// Who holds `resource`, read through host 0 with no fault injected.
    fn holder(&self, resource: &str) -> Option<LockInfo> {
        match self.hosts[0].call(&Request::Status(resource.into()), None, soon()) {
            Ok(Reply::Status(lock)) => lock,
            other => panic!("status of {resource:?}: {other:?}"),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for store in &self.stores {
            store.settle();
        }
        for host in &self.hosts {
            host.stop();
        }
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn acquire(resource: &str, client: &str, ttl_ms: Option<u64>, reentrant: bool) -> Request {
    Request::Acquire(AcquireRequest {
        resource: resource.into(),
        client: client.into(),
        ttl_ms,
        reentrant,
    })
}

fn release(lock: &LockInfo) -> Request {
    Request::Release(ReleaseRequest {
        resource: lock.resource.clone(),
        client: lock.client.clone(),
        token: Some(lock.token),
    })
}

fn granted(answer: Result<Reply, ClusterError>) -> LockInfo {
    match answer {
        Ok(Reply::Lock(lock)) => lock,
        other => panic!("expected a lock, got {other:?}"),
    }
}

/// A lock's holder and token.
fn key(lock: Option<&LockInfo>) -> Option<(&str, u64)> {
    lock.map(|l| (l.client.as_str(), l.token))
}

/// A write (a transaction that writes) naming a key containing `part`.
fn write_naming(part: &'static str) -> impl Fn(&Call) -> bool + Send + 'static {
    move |call| call.kind == Kind::Write && call.names(part)
}

/// Waits up to `bound` for `event`: whether it came.
fn came_within(bound: Duration, mut event: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + bound;
    while Instant::now() < until {
        if event() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    event()
}

/// Finding 1: two workers of one job give the same `request_id`; the
/// second one's guarded write fails (the first holds the lock) and its
/// answer is lost. It must be refused, not handed the first one's lock.
#[test]
fn a_shared_request_id_never_passes_one_client_for_another() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let first =
        granted(h.hosts[0].call(&acquire("m", "worker-b", None, false), Some("job"), soon()));
    h.stores[1].once(write_naming("lock/m"), Fault::LoseAnswer);
    let take = acquire("m", "worker-a", None, false);
    let second = h.hosts[1].call(&take, Some("job"), soon());
    match second {
        Err(ClusterError::Lock(GuestError::AlreadyLocked(holder))) => {
            assert_eq!(holder, "worker-b")
        }
        // Not known: worker-a asks again, as it may.
        Err(ClusterError::Unknown(_)) => match h.hosts[1].call(&take, Some("job"), soon()) {
            Err(ClusterError::Lock(GuestError::AlreadyLocked(holder))) => {
                assert_eq!(holder, "worker-b")
            }
            other => panic!("worker-a, asking again for worker-b's lock: {other:?}"),
        },
        other => panic!("worker-a, asking for worker-b's lock, was answered {other:?}"),
    }
    assert_eq!(
        h.holder("m").map(|l| (l.client, l.token)),
        Some(("worker-b".into(), first.token))
    );
}

/// Finding 2: `a`'s line is not `a/b`'s. A waiter for `a/b` neither
/// blocks a fresh take of a free `a` nor is handed `a` when it is freed.
#[test]
fn names_that_prefix_one_another_have_lines_of_their_own() {
    let h = Hosts::start(1, Duration::ZERO, Duration::ZERO);
    let host = &h.hosts[0];
    let held = granted(host.call(&acquire("a/b", "c0", None, false), None, soon()));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            host.wait(&acquire("a/b", "c2", None, false), None, deadline, &|| None)
        });
        crate::support::wait_until("c2 in the line of a/b", || host.in_line() == 1);
        let a = granted(host.call(&acquire("a", "c3", None, false), None, soon()));
        host.call(&release(&a), None, soon()).unwrap();
        assert!(h.holder("a").is_none(), "a, freed, went to a waiter of a/b");
        assert_eq!(host.in_line(), 1, "c2 still waits for a/b");
        host.call(&release(&held), None, soon()).unwrap();
        let got = granted(waiter.join().unwrap());
        assert_eq!((got.resource.as_str(), got.client.as_str()), ("a/b", "c2"));
    });
    assert_eq!(h.waiter_keys(), Vec::<String>::new());
}

/// Finding 3: a client fails over a waiting acquire to a second host
/// with the same `request_id`, so it stands in line twice; the second
/// host cannot delete its place (etcd refuses it that host's writes to
/// the line). Handed the lock through one place, its release frees the
/// lock for the next client, never hands it back to its other place.
#[test]
fn a_release_never_hands_the_lock_back_to_its_own_second_place_in_line() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let held = granted(h.hosts[0].call(&acquire("m", "holder", None, false), None, soon()));
    let refuse = refuse_line_writes(&h.stores[1]);
    let request = acquire("m", "c", None, false);
    let (one, two) = std::thread::scope(|s| {
        let wait_on = |i: usize| {
            let (host, request) = (&h.hosts[i], &request);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                host.wait(request, Some("r-1"), deadline, &|| None)
            })
        };
        let one = wait_on(0);
        crate::support::wait_until("c in line on host 0", || h.hosts[0].in_line() == 1);
        let two = wait_on(1);
        crate::support::wait_until("c in line on host 1", || h.hosts[1].in_line() == 1);
        refuse.store(true, Ordering::SeqCst);
        h.hosts[0].call(&release(&held), None, soon()).unwrap();
        (granted(one.join().unwrap()), granted(two.join().unwrap()))
    });
    assert_eq!(one.token, two.token, "both places answer the one lock");
    assert_eq!(h.waiter_keys().len(), 1, "c's place on host 1 is left");
    h.hosts[0].call(&release(&one), None, soon()).unwrap();
    let holder = h.holder("m");
    assert!(
        holder.is_none(),
        "c's release handed the lock back: {holder:?}"
    );
    assert_eq!(h.waiter_keys(), Vec::<String>::new());
    granted(h.hosts[0].call(&acquire("m", "newcomer", None, false), None, soon()));
}

/// Finding 3: the same, with another client in line between the two
/// places: a lock handed to the place left behind (its client answered
/// long ago, and not waiting) is released by the host that left it, as
/// soon as etcd lets it.
#[test]
fn a_lock_handed_to_a_place_whose_take_was_answered_is_released() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let z = granted(h.hosts[0].call(&acquire("m", "z", None, false), None, soon()));
    let refuse = refuse_line_writes(&h.stores[1]);
    let deadline = || Instant::now() + Duration::from_secs(30);
    let take = |client: &str| acquire("m", client, None, false);
    let x = std::thread::scope(|s| {
        let a1 = s.spawn(|| h.hosts[0].wait(&take("a"), Some("r"), deadline(), &|| None));
        crate::support::wait_until("a in line on host 0", || h.hosts[0].in_line() == 1);
        let x = s.spawn(|| h.hosts[0].wait(&take("x"), None, deadline(), &|| None));
        crate::support::wait_until("x in line on host 0", || h.hosts[0].in_line() == 2);
        let a2 = s.spawn(|| h.hosts[1].wait(&take("a"), Some("r"), deadline(), &|| None));
        crate::support::wait_until("a in line on host 1", || h.hosts[1].in_line() == 1);
        refuse.store(true, Ordering::SeqCst);
        h.hosts[0].call(&release(&z), None, soon()).unwrap();
        let a1 = granted(a1.join().unwrap());
        assert_eq!(granted(a2.join().unwrap()).token, a1.token);
        h.hosts[0].call(&release(&a1), None, soon()).unwrap();
        granted(x.join().unwrap())
    });
    // x's release hands the lock to a's place left on host 1; then etcd
    // takes host 1's writes again.
    h.hosts[0].call(&release(&x), None, soon()).unwrap();
    refuse.store(false, Ordering::SeqCst);
    assert!(
        came_within(Duration::from_secs(10), || h.holder("m").is_none()),
        "m held by {:?}, for nobody",
        h.holder("m")
    );
    assert_eq!(h.waiter_keys(), Vec::<String>::new());
}

/// From now on (once the flag is set), etcd refuses `store`'s writes to
/// waiter lines, as a member without a leader would.
fn refuse_line_writes(store: &Faulty) -> Arc<AtomicBool> {
    let refuse = Arc::new(AtomicBool::new(false));
    let on = refuse.clone();
    store.rule(move |call| {
        (on.load(Ordering::SeqCst) && call.kind == Kind::Write && call.names("wait/"))
            .then_some(Fault::Refuse("etcdserver: no leader"))
    });
    refuse
}

/// Finding 4: a join whose write etcd carries out after lockd stopped
/// waiting for it ("outcome unknown", the key absent on a read-back)
/// must not leave a key that is later handed the lock behind its
/// caller's back.
#[test]
fn a_join_that_lands_late_never_takes_the_lock_behind_its_callers_back() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let held = granted(h.hosts[0].call(&acquire("m", "holder", None, false), None, soon()));
    h.stores[1].once(
        write_naming("wait/"),
        Fault::Delay(Duration::from_millis(300)),
    );
    let answer = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            h.hosts[1].wait(&acquire("m", "c", None, false), None, deadline, &|| None)
        });
        crate::support::wait_until("the join delayed", || {
            h.stores[1].counts.delayed.load(Ordering::SeqCst) == 1
        });
        h.stores[1].settle();
        crate::support::wait_until("c in line", || {
            h.hosts[1].in_line() == 1 || waiter.is_finished()
        });
        h.hosts[0].call(&release(&held), None, soon()).unwrap();
        waiter.join().unwrap()
    });
    let holder = h.holder("m");
    match &answer {
        Ok(Reply::Lock(lock)) => assert_eq!(key(holder.as_ref()), key(Some(lock))),
        other => assert!(
            holder.as_ref().is_none_or(|l| l.client != "c"),
            "c was answered {other:?} and holds {holder:?}"
        ),
    }
    assert!(
        came_within(Duration::from_secs(5), || h.waiter_keys().is_empty()),
        "waiter keys outlived every wait: {:?}",
        h.waiter_keys()
    );
}

/// Finding 4: a waiter that etcd does not let leave its line (its
/// deletes refused) is answered "outcome unknown", and its key goes as
/// soon as etcd lets it, not when its host's session ends.
#[test]
fn a_waiter_key_etcd_would_not_delete_goes_once_it_can() {
    let h = Hosts::start(1, Duration::ZERO, Duration::ZERO);
    let host = &h.hosts[0];
    granted(host.call(&acquire("m", "holder", None, false), None, soon()));
    let mut writes = 0;
    h.stores[0].rule(move |call| {
        if !(call.kind == Kind::Write && call.names("wait/")) {
            return None;
        }
        writes += 1;
        // The join goes through; the next three tries to leave do not.
        (2..=4)
            .contains(&writes)
            .then_some(Fault::Refuse("etcdserver: no leader"))
    });
    let deadline = Instant::now() + Duration::from_millis(300);
    let answer = host.wait(&acquire("m", "c", None, false), None, deadline, &|| None);
    assert!(
        matches!(&answer, Err(ClusterError::Unknown(_))),
        "a wait whose key could not be deleted was answered {answer:?}"
    );
    assert!(
        came_within(Duration::from_secs(10), || h.waiter_keys().is_empty()),
        "a waiter key outlived its wait: {:?}",
        h.waiter_keys()
    );
}

/// Finding 5: an error etcd may give after a proposal ("server stopped")
/// leaves the outcome open: lockd reads back and answers what happened,
/// never "did not happen" for a write that happened.
#[test]
fn errors_etcd_gives_after_a_proposal_are_not_taken_for_did_not_happen() {
    let h = Hosts::start(1, Duration::ZERO, Duration::ZERO);
    let texts = [
        "etcdserver: server stopped",
        "etcdserver: request cancelled",
        "transport is closing",
        "etcdserver: mvcc: database space exceeded",
    ];
    for (i, text) in texts.into_iter().enumerate() {
        let resource = format!("m{i}");
        let record = format!("lock/{resource}");
        let matches = move |call: &Call| call.kind == Kind::Write && call.names(&record);
        h.stores[0].once(matches, Fault::ErrorAfter(text));
        let answer = h.hosts[0].call(&acquire(&resource, "c", None, false), None, soon());
        let holder = h.holder(&resource);
        match &answer {
            Ok(Reply::Lock(lock)) => assert_eq!(key(holder.as_ref()), key(Some(lock))),
            other => panic!("after {text:?}, c holds {holder:?} and was answered {other:?}"),
        }
    }
}

/// Finding 6: the first in line, refused while the lock-delay after a
/// lease's end runs, looks again when it ends, not in a loop meanwhile.
#[test]
fn the_first_in_line_sleeps_through_a_lock_delay() {
    let delay = Duration::from_millis(1500);
    let h = Hosts::start(1, delay, Duration::ZERO);
    let host = &h.hosts[0];
    let held = granted(host.call(&acquire("m", "holder", Some(300), false), None, soon()));
    let requests = || h.stores[0].counts.requests.load(Ordering::SeqCst);
    let (got, spent) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            host.wait(&acquire("m", "c", None, false), None, deadline, &|| None)
        });
        crate::support::wait_until("c in line", || host.in_line() == 1);
        let before = requests();
        let got = granted(waiter.join().unwrap());
        (got, requests() - before)
    });
    eprintln!("{spent} etcd requests while the lease and the lock-delay ran");
    assert_eq!(got.client, "c");
    assert!(got.acquired_ms >= held.expires_ms.unwrap() + delay.as_millis() as u64);
    // A look when the lease ends, a refusal, a look when the delay ends
    // and the take, and the session's keep-alives: a dozen, where a spin
    // makes hundreds in 1.5 s.
    assert!(
        spent <= 20,
        "{spent} etcd requests while the lock-delay ran"
    );
}

/// Finding 7: a retry of an acquire after its lease ran out is a fresh
/// take, never the old lock with its lease in the past.
#[test]
fn a_retry_after_the_lease_ran_out_is_a_fresh_take() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let request = acquire("m", "c", Some(200), false);
    let first = granted(h.hosts[0].call(&request, Some("r-1"), soon()));
    let expires = first.expires_ms.unwrap();
    crate::support::wait_until("the lease ran out", || now_ms() > expires);
    let asked = now_ms();
    let again = granted(h.hosts[1].call(&request, Some("r-1"), soon()));
    assert!(again.token > first.token, "{again:?} after {first:?}");
    assert!(
        again.expires_ms.unwrap() > asked,
        "{again:?} asked at {asked}"
    );
}

/// Found by the explorer: a retry whose write etcd left open must not
/// take an earlier try's record (the same `request_id`) for its own: the
/// earlier try's lease ran out, and the retry's write never landed.
#[test]
fn a_retry_whose_write_was_lost_is_not_answered_with_an_earlier_tries_lock() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    let request = acquire("m", "c", Some(200), false);
    let first = granted(h.hosts[0].call(&request, Some("r-1"), soon()));
    let expires = first.expires_ms.unwrap();
    crate::support::wait_until("the lease ran out", || now_ms() > expires);
    h.stores[1].once(write_naming("lock/m"), Fault::Drop);
    match h.hosts[1].call(&request, Some("r-1"), soon()) {
        Err(ClusterError::Unknown(_)) => {}
        other => panic!("a retry whose write never landed was answered {other:?}"),
    }
    let again = granted(h.hosts[1].call(&request, Some("r-1"), soon()));
    assert!(again.token > first.token, "{again:?} after {first:?}");
    assert_eq!(key(h.holder("m").as_ref()), key(Some(&again)));
}

/// Finding 7: the holder asking again (reentrantly) after its lease ran
/// out gets a fresh lock: the clock-skew margin protects a lock from
/// others' takes, it does not lengthen its holder's lease.
#[test]
fn a_holder_whose_lease_ran_out_holds_nothing_within_the_skew_margin() {
    let h = Hosts::start(1, Duration::ZERO, Duration::from_secs(2));
    let host = &h.hosts[0];
    let first = granted(host.call(&acquire("m", "c", Some(200), true), None, soon()));
    let expires = first.expires_ms.unwrap();
    crate::support::wait_until("the lease ran out", || now_ms() > expires);
    let asked = now_ms();
    let again = granted(host.call(&acquire("m", "c", Some(200), true), None, soon()));
    assert!(again.token > first.token, "{again:?} after {first:?}");
    assert!(again.expires_ms.unwrap() > asked);
}

/// Finding 8: a guarded write that lost to a raised token base re-reads
/// the base with the record, and grants above it at the next try.
#[test]
fn a_write_that_lost_to_a_new_token_base_reads_it_at_once() {
    let h = Hosts::start(2, Duration::ZERO, Duration::ZERO);
    // Host 0 last saw m free; another host takes and frees it meanwhile,
    // and the base is raised.
    let lock = granted(h.hosts[0].call(&acquire("m", "c", None, false), None, soon()));
    h.hosts[0].call(&release(&lock), None, soon()).unwrap();
    let lock = granted(h.hosts[1].call(&acquire("m", "e", None, false), None, soon()));
    h.hosts[1].call(&release(&lock), None, soon()).unwrap();
    let clean = Etcd::new(&h.etcd.urls()).unwrap();
    let base = format!("{}token-base", h.prefix).into_bytes();
    let put = Op::Put {
        key: base,
        value: b"1000000".to_vec(),
        lease: 0,
    };
    clean.txn(&[], &[put], &[], soon()).unwrap();
    let before = h.stores[0].counts.requests.load(Ordering::SeqCst);
    let again = granted(h.hosts[0].call(&acquire("m", "d", None, false), None, soon()));
    let spent = h.stores[0].counts.requests.load(Ordering::SeqCst) - before;
    eprintln!("{spent} etcd requests for a take after the base was raised");
    assert!(again.token > 1_000_000, "{again:?}");
    assert!(
        spent <= 2,
        "{spent} etcd requests: the lost write, then one more"
    );
}
