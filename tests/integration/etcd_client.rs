//! lockd's etcd client against a real three-member cluster: guarded
//! transactions, leases, failover between members, and failing fast and
//! closed without a quorum.

use crate::etcd_cluster::EtcdCluster;
use lockd::etcd::{Compare, Etcd, EtcdError, Op, OpResult, Target};
use std::time::{Duration, Instant};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
    }
}

#[test]
fn a_guarded_transaction_writes_once_and_its_failure_branch_reads_what_won() {
    let cluster = EtcdCluster::start(3);
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    // Created only if absent: the first write wins.
    let absent = [Compare {
        key: b"lock/r".to_vec(),
        target: Target::Create(0),
    }];
    let read = [Op::Range {
        key: b"lock/r".to_vec(),
        range_end: Vec::new(),
    }];
    let first = etcd
        .txn(&absent, &[put("lock/r", "a")], &read, soon())
        .unwrap();
    assert!(first.succeeded);
    let second = etcd
        .txn(&absent, &[put("lock/r", "b")], &read, soon())
        .unwrap();
    assert!(!second.succeeded);
    let [OpResult::Range(kvs)] = second.results.as_slice() else {
        panic!("{second:?}");
    };
    assert_eq!(kvs[0].value, b"a");
    // The revision of the winning write is the key's create revision: a
    // fencing token no later write can go below.
    assert_eq!(kvs[0].create_revision, first.revision);
    assert!(second.revision >= first.revision);

    // Guarded by the mod revision read: a stale guard fails.
    let guard = |revision| {
        [Compare {
            key: b"lock/r".to_vec(),
            target: Target::Mod(revision),
        }]
    };
    let updated = etcd
        .txn(&guard(first.revision), &[put("lock/r", "a2")], &[], soon())
        .unwrap();
    assert!(updated.succeeded && updated.revision > first.revision);
    let stale = etcd
        .txn(&guard(first.revision), &[put("lock/r", "c")], &[], soon())
        .unwrap();
    assert!(!stale.succeeded);
    let (kvs, _) = etcd.range(b"lock/r", b"", soon()).unwrap();
    assert_eq!(kvs[0].value, b"a2");

    // Prefix reads.
    etcd.txn(&[], &[put("lock/s", "x"), put("other", "y")], &[], soon())
        .unwrap();
    let (kvs, _) = etcd
        .range(b"lock/", &lockd::etcd::wire::prefix_end(b"lock/"), soon())
        .unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"lock/r".to_vec(), b"lock/s".to_vec()]);
}

#[test]
fn keys_on_a_lease_go_with_it() {
    let cluster = EtcdCluster::start(3);
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    let (lease, ttl) = etcd.lease_grant(5, soon()).unwrap();
    assert_eq!(ttl, 5);
    let on_lease = Op::Put {
        key: b"waiter/1".to_vec(),
        value: b"w".to_vec(),
        lease,
    };
    etcd.txn(&[], &[on_lease], &[], soon()).unwrap();
    let (kvs, _) = etcd.range(b"waiter/1", b"", soon()).unwrap();
    assert_eq!(kvs[0].lease, lease);
    assert!(etcd.lease_keep_alive(lease, soon()).unwrap() > 0);
    etcd.lease_revoke(lease, soon()).unwrap();
    assert_eq!(etcd.range(b"waiter/1", b"", soon()).unwrap().0, vec![]);
    // Gone: renewing never says it lives (a follower may not answer at
    // all for a lease it does not know), and revoking again is no error.
    let deadline = Instant::now() + Duration::from_secs(2);
    match etcd.lease_keep_alive(lease, deadline) {
        Ok(0) | Err(_) => {}
        Ok(ttl) => panic!("a revoked lease renewed for {ttl} s"),
    }
    etcd.lease_revoke(lease, soon()).unwrap();
}

#[test]
fn a_killed_member_is_passed_over_and_a_cluster_without_quorum_is_refused_at_once() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    etcd.txn(&[], &[put("k", "1")], &[], soon()).unwrap();
    // The member the client talks to dies; the next call goes elsewhere.
    cluster.kill(0);
    cluster.wait_for_leader();
    let started = Instant::now();
    etcd.txn(&[], &[put("k", "2")], &[], soon()).unwrap();
    let (kvs, _) = etcd.range(b"k", b"", soon()).unwrap();
    assert_eq!(kvs[0].value, b"2");
    eprintln!("failover to another member: {:?}", started.elapsed());

    // One of three left: no leader. Every request is refused, as not
    // applied, well within its deadline.
    cluster.kill(1);
    let etcd_alone = Etcd::new(&[cluster.url(2)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let refused = etcd_alone.txn(&[], &[put("k", "3")], &[], deadline);
    assert!(Instant::now() <= deadline + Duration::from_millis(200));
    match refused {
        Err(EtcdError::NotApplied(why)) => assert!(
            why.contains("no leader") || why.contains("no member could act"),
            "{why}"
        ),
        // Sent before the member noticed it had lost its leader.
        Err(EtcdError::Unknown(_)) => {}
        other => panic!("{other:?}"),
    }
    let read = etcd_alone.range(b"k", b"", Instant::now() + Duration::from_secs(3));
    assert!(read.is_err(), "{read:?}");

    // Quorum back: nothing acknowledged was lost.
    cluster.restart(0);
    cluster.restart(1);
    cluster.wait_for_leader();
    let (kvs, _) = etcd.range(b"k", b"", soon()).unwrap();
    assert!(kvs[0].value == b"2" || kvs[0].value == b"3", "{kvs:?}");
}

#[test]
fn a_paused_member_costs_a_read_one_try_and_the_next_member_answers() {
    let cluster = EtcdCluster::start(3);
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    etcd.txn(&[], &[put("k", "1")], &[], soon()).unwrap();
    // The member the client talks to stops answering (its sockets still
    // accept): the read times out there after one try, then another
    // member answers, all within the call's deadline.
    cluster.pause(0, true);
    let deadline = Instant::now() + Duration::from_secs(3);
    let read = etcd.range(b"k", b"", deadline);
    cluster.pause(0, false);
    let (kvs, _) = read.unwrap();
    assert_eq!(kvs[0].value, b"1");
}
