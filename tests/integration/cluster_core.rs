//! Cluster mode's core against a real three-member etcd cluster: two
//! hosts' worth of `Cluster` on the same keys, the rules of the component,
//! tokens from etcd revisions.

use crate::etcd_cluster::EtcdCluster;
use crate::support::wait_until;
use lockd::cluster::{Cluster, ClusterError};
use lockd::component::{
    AcquireRequest, CheckRequest, GuestError, LockRequest, ReleaseRequest, RenewRequest, Reply,
    Request, Runtime,
};
use lockd::etcd::Etcd;
use std::time::{Duration, Instant};

fn host(cluster: &EtcdCluster, runtime: &Runtime, lock_delay_ms: u64) -> Cluster {
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    Cluster::new(
        etcd,
        "lockd/",
        runtime,
        Duration::from_millis(lock_delay_ms),
        Duration::from_millis(0),
    )
    .unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn lock(resource: &str, client: &str) -> Request {
    Request::Lock(LockRequest {
        resource: resource.into(),
        client: client.into(),
    })
}

fn unlock(resource: &str, client: &str) -> Request {
    Request::Unlock(LockRequest {
        resource: resource.into(),
        client: client.into(),
    })
}

fn acquire(resource: &str, client: &str, ttl_ms: Option<u64>) -> Request {
    Request::Acquire(AcquireRequest {
        resource: resource.into(),
        client: client.into(),
        ttl_ms,
        reentrant: false,
    })
}

fn token_of(reply: Reply) -> u64 {
    match reply {
        Reply::Lock(lock) => lock.token,
        other => panic!("{other:?}"),
    }
}

fn refused(result: Result<Reply, ClusterError>) -> GuestError {
    match result {
        Err(ClusterError::Lock(e)) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_hosts_share_locks_with_gocept_lockd_rules_and_tokens_from_revisions() {
    let cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let (a, b) = (host(&cluster, &runtime, 0), host(&cluster, &runtime, 0));
    // The doctest's moves, spread over both hosts.
    assert!(matches!(
        a.call(&lock("foo", "c1"), None, soon()),
        Ok(Reply::Done)
    ));
    assert!(matches!(
        refused(b.call(&lock("foo", "c2"), None, soon())),
        GuestError::AlreadyLocked(holder) if holder == "c1"
    ));
    assert!(matches!(
        refused(b.call(&unlock("foo", "c2"), None, soon())),
        GuestError::NotOwner(holder) if holder == "c1"
    ));
    assert!(matches!(
        b.call(&unlock("foo", "c1"), None, soon()),
        Ok(Reply::Done)
    ));
    assert!(matches!(
        refused(a.call(&unlock("foo", "c1"), None, soon())),
        GuestError::NotLocked
    ));
    assert!(matches!(
        b.call(&lock("foo", "c2"), None, soon()),
        Ok(Reply::Done)
    ));

    // Tokens strictly increase whichever host grants them; a renewal keeps
    // its token, and a check on the other host confirms it.
    let mut last = 0;
    for i in 0..6 {
        let (me, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let token = token_of(
            me.call(&acquire("r", "c", Some(60_000)), None, soon())
                .unwrap(),
        );
        assert!(token > last, "{token} after {last}");
        last = token;
        let renew = Request::Renew(RenewRequest {
            resource: "r".into(),
            client: "c".into(),
            ttl_ms: 90_000,
            token: Some(token),
        });
        assert_eq!(token_of(other.call(&renew, None, soon()).unwrap()), token);
        let check = Request::Check(CheckRequest {
            resource: "r".into(),
            token,
        });
        assert!(matches!(
            me.call(&check, None, soon()),
            Ok(Reply::Valid(true))
        ));
        let release = Request::Release(ReleaseRequest {
            resource: "r".into(),
            client: "c".into(),
            token: Some(token),
        });
        assert!(matches!(
            other.call(&release, None, soon()),
            Ok(Reply::Done)
        ));
        assert!(matches!(
            me.call(&check, None, soon()),
            Ok(Reply::Valid(false))
        ));
    }
}

#[test]
fn hosts_racing_for_one_lock_grant_it_once() {
    let cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let hosts = [host(&cluster, &runtime, 0), host(&cluster, &runtime, 0)];
    for round in 0..20 {
        let resource = format!("race{round}");
        let winners: usize = std::thread::scope(|s| {
            let calls: Vec<_> = (0..8)
                .map(|i| {
                    let host = &hosts[i % 2];
                    let resource = &resource;
                    s.spawn(move || host.call(&lock(resource, &format!("c{i}")), None, soon()))
                })
                .collect();
            calls
                .into_iter()
                .map(|c| match c.join().unwrap() {
                    Ok(_) => 1,
                    Err(ClusterError::Lock(GuestError::AlreadyLocked(_))) => 0,
                    Err(other) => panic!("{other:?}"),
                })
                .sum()
        });
        assert_eq!(winners, 1, "round {round}");
    }
}

#[test]
fn a_lease_that_runs_out_frees_the_lock_for_another_host_after_the_lock_delay() {
    let cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let (a, b) = (host(&cluster, &runtime, 300), host(&cluster, &runtime, 300));
    let first = token_of(
        a.call(&acquire("r", "c1", Some(200)), None, soon())
            .unwrap(),
    );
    // Taken until its lease and the lock-delay are over, then free.
    let mut cooled = false;
    let mut second = 0;
    wait_until("the lease and the lock-delay to end", || {
        match b.call(&acquire("r", "c2", None), None, soon()) {
            Ok(reply) => {
                second = token_of(reply);
                true
            }
            Err(ClusterError::Lock(GuestError::CoolingDown(_))) => {
                cooled = true;
                false
            }
            Err(ClusterError::Lock(GuestError::AlreadyLocked(_))) => false,
            Err(other) => panic!("{other:?}"),
        }
    });
    assert!(cooled, "never refused for the lock-delay");
    assert!(second > first);
    // The old holder learns it lost the lock.
    let release = Request::Release(ReleaseRequest {
        resource: "r".into(),
        client: "c1".into(),
        token: Some(first),
    });
    assert!(matches!(
        refused(a.call(&release, None, soon())),
        GuestError::NotOwner(holder) if holder == "c2"
    ));
}

#[test]
fn without_a_quorum_a_change_is_refused_in_time_and_nothing_is_lost() {
    let mut cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let a = host(&cluster, &runtime, 0);
    a.call(&lock("kept", "c"), None, soon()).unwrap();
    cluster.kill(1);
    cluster.kill(2);
    let deadline = Instant::now() + Duration::from_secs(3);
    match a.call(&lock("new", "c"), None, deadline) {
        Err(ClusterError::NotApplied(_) | ClusterError::Unknown(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(Instant::now() < deadline + Duration::from_millis(500));
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_for_leader();
    assert!(matches!(
        refused(a.call(&lock("kept", "d"), None, soon())),
        GuestError::AlreadyLocked(holder) if holder == "c"
    ));
}

#[test]
fn concurrent_changes_on_different_resources_share_transactions() {
    let cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let a = host(&cluster, &runtime, 0);
    std::thread::scope(|s| {
        for t in 0..16 {
            let a = &a;
            s.spawn(move || {
                let resource = format!("batched-{t}");
                let mut last = 0;
                for _ in 0..40 {
                    let token = token_of(
                        a.call(&acquire(&resource, "c", None), None, soon())
                            .unwrap(),
                    );
                    assert!(token > last, "{resource}: {token} after {last}");
                    last = token;
                    assert!(matches!(
                        a.call(&unlock(&resource, "c"), None, soon()),
                        Ok(Reply::Done)
                    ));
                }
            });
        }
    });
    let sample = |name: &str| {
        a.samples()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .value
    };
    let (transactions, writes) = (
        sample("lockd_etcd_transactions_total"),
        sample("lockd_etcd_batched_writes_total"),
    );
    assert_eq!(writes, 16 * 40 * 2);
    assert!(
        transactions < writes / 2,
        "{transactions} transactions for {writes} writes"
    );
    assert_eq!(sample("lockd_etcd_conflicts_total"), 0);
}

#[test]
fn a_list_of_thousands_of_locks_is_read_in_pages_of_one_revision() {
    let cluster = EtcdCluster::start(3);
    let runtime = Runtime::new().unwrap();
    let a = host(&cluster, &runtime, 0);
    let held: Vec<String> = (0..2500).map(|i| format!("held-{i:05}")).collect();
    std::thread::scope(|s| {
        for part in held.chunks(160) {
            let a = &a;
            s.spawn(move || {
                for r in part {
                    a.call(&lock(r, "c"), None, soon()).unwrap();
                }
            });
        }
    });
    let requests = |a: &Cluster| {
        a.samples()
            .into_iter()
            .find(|s| s.name == "lockd_etcd_requests_total")
            .unwrap()
            .value
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Meanwhile, locks come and go among the held ones.
        s.spawn(|| {
            let b = host(&cluster, &runtime, 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = format!("held-{:05}x", i % 50);
                b.call(&lock(&r, "d"), None, soon()).unwrap();
                b.call(&unlock(&r, "d"), None, soon()).unwrap();
                i += 1;
            }
        });
        for _ in 0..5 {
            let before = requests(&a);
            let listed = a.list("held-", None, None, soon()).unwrap();
            assert!(
                requests(&a) - before >= 3,
                "2,500 locks read in one request"
            );
            let names: Vec<&str> = listed
                .iter()
                .map(|l| l.resource.as_str())
                .filter(|r| !r.ends_with('x'))
                .collect();
            // Each held lock exactly once, in order.
            assert_eq!(names, held);
            assert!(listed.len() <= held.len() + 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
