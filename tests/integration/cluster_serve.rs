//! `lockd serve --etcd`: several lockd hosts serving the same locks from
//! one etcd cluster, through XML-RPC as any client sees them.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{python, raw_http};
use lockd::client::CallError;
use lockd::xmlrpc::{Fault, Value};
use std::thread;

#[test]
fn the_gocept_lockd_doctest_through_python_over_two_hosts() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let got = python("scenario.py", &[&a.url(), &b.url()]);
    assert_eq!(got, crate::support::GOCEPT_DOCTEST);
    // The status page says where the locks are.
    let (status, page) = raw_http(&a.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    let endpoints = cluster.urls().join(", ");
    assert!(
        page.contains(&format!("cluster mode on etcd {endpoints}")),
        "{page}"
    );
    // Both hosts list the one lock left.
    for host in [&a, &b] {
        let locks = host.call("lockd.list", &[]).unwrap();
        let Value::Array(locks) = locks else {
            panic!("{locks:?}")
        };
        assert_eq!(locks.len(), 1);
        assert_eq!(
            locks[0].member("client").and_then(Value::as_str),
            Some("client2")
        );
    }
}

/// `fencing.py`'s `scenario` against two hosts with `lock_delay`, each
/// new client on the next host. (No clock-skew margin: the scenarios time
/// leases as one daemon does.)
fn fencing_over_two_hosts(scenario: &str, lock_delay: &str) -> String {
    let cluster = EtcdCluster::start(3);
    let args = ["--lock-delay", lock_delay, "--max-clock-skew", "0"];
    let (a, b) = (
        cluster.lockd_host_with(&args),
        cluster.lockd_host_with(&args),
    );
    let urls = format!("{},{}", a.url(), b.url());
    python("fencing.py", &[&urls, scenario])
}

#[test]
fn each_method_and_option_over_two_hosts() {
    fencing_over_two_hosts("methods", "0");
}

#[test]
fn leases_and_the_lock_delay_over_two_hosts() {
    fencing_over_two_hosts("leases", "0.5");
}

#[test]
fn waiters_over_two_hosts_are_served_in_arrival_order() {
    eprint!("{}", fencing_over_two_hosts("waiting", "0"));
}

#[test]
fn break_lock_over_two_hosts() {
    fencing_over_two_hosts("breaking", "0.5");
}

#[test]
fn a_client_waiting_on_one_host_gets_the_lock_released_on_another() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let held = a.call("lockd.acquire", &["r", "first"]).unwrap();
    let first = held.member("token").and_then(Value::as_i64).unwrap();
    let waiting = thread::scope(|s| {
        let waiter = s.spawn(|| {
            let wait = Value::Struct(vec![("wait".into(), Value::Double(30.0))]);
            b.client()
                .call("lockd.acquire", &["r".into(), "second".into(), wait])
                .unwrap()
        });
        b.wait_for_waiters(1);
        a.call("lockd.release", &["r", "first"]).unwrap();
        waiter.join().unwrap()
    });
    assert_eq!(
        waiting.member("client").and_then(Value::as_str),
        Some("second")
    );
    let second = waiting.member("token").and_then(Value::as_i64).unwrap();
    assert!(second > first, "{second} after {first}");
}

#[test]
fn an_acquire_retried_on_another_host_with_its_request_id_gets_the_lock_it_took() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let acquire = |host: &crate::support::TestServer, client: &str, id: Option<&str>| {
        let options = id
            .map(|id| vec![("request_id".into(), Value::from(id))])
            .unwrap_or_default();
        host.client().call(
            "lockd.acquire",
            &["job".into(), client.into(), Value::Struct(options)],
        )
    };
    // The first try took the lock (its answer, say, never arrived); the
    // retry on the other host is answered with that lock, same token.
    let took = acquire(&a, "w1", Some("w1-job-1")).unwrap();
    let retried = acquire(&b, "w1", Some("w1-job-1")).unwrap();
    assert_eq!(retried, took);
    // Without the id, or for another client, it is held.
    for (client, id) in [
        ("w1", None),
        ("w2", Some("w1-job-1")),
        ("w1", Some("w1-job-2")),
    ] {
        let fault = fault_of(acquire(&b, client, id));
        assert_eq!(fault.code, 1, "{client} {id:?}: {fault}");
    }
    // Ids a record cannot keep are refused before anything happens.
    for bad in ["", "a\nb", &"x".repeat(129)] {
        let fault = fault_of(acquire(&a, "w3", Some(bad)));
        assert!(fault.message.contains("request_id"), "{bad:?}: {fault}");
    }
}

#[test]
fn without_a_quorum_every_method_gets_fault_7_in_time_and_healthz_says_503() {
    let mut cluster = EtcdCluster::start(3);
    let a = cluster.lockd_host();
    a.call("lock", &["kept", "c"]).unwrap();
    assert_eq!(raw_http(&a.addr, b"GET /healthz HTTP/1.0\r\n\r\n").0, 200);
    cluster.kill(1);
    cluster.kill(2);
    // Every method, changes and reads alike, waiting or not: fault 7,
    // within the 5 s a request may take (and some slack for the HTTP
    // round trip), never an answer from what the host saw before.
    let wait = Value::Struct(vec![("wait".into(), Value::Double(30.0))]);
    let calls: [(&str, Vec<Value>); 10] = [
        ("lock", vec!["new".into(), "c".into()]),
        ("unlock", vec!["kept".into(), "c".into()]),
        ("lockd.acquire", vec!["new".into(), "c".into()]),
        ("lockd.acquire", vec!["kept".into(), "d".into(), wait]),
        ("lockd.release", vec!["kept".into(), "c".into()]),
        (
            "lockd.renew",
            vec!["kept".into(), "c".into(), Value::Double(60.0)],
        ),
        ("lockd.status", vec!["kept".into()]),
        ("lockd.check", vec!["kept".into(), Value::I8(1)]),
        ("lockd.list", vec![]),
        ("lockd.break_lock", vec!["kept".into(), "test".into()]),
    ];
    for (method, params) in calls {
        let started = std::time::Instant::now();
        let fault = match a.client().call(method, &params) {
            Err(lockd::client::CallError::Fault(fault)) => fault,
            other => panic!("{method}: {other:?}"),
        };
        let took = started.elapsed();
        assert_eq!(fault.code, 7, "{method}: {fault:?}");
        assert!(
            fault.message.contains("did not happen") || fault.message.contains("unknown"),
            "{method}: {fault:?}"
        );
        assert!(
            took < std::time::Duration::from_secs(7),
            "{method} took {took:?}"
        );
    }
    let (status, reason) = raw_http(&a.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 503, "{reason}");
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_for_leader();
    let fault = a.call("lock", &["kept", "d"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'c'");
}

fn fault_of(result: Result<Value, CallError>) -> Fault {
    match result {
        Err(CallError::Fault(fault)) => fault,
        other => panic!("not a fault: {other:?}"),
    }
}
