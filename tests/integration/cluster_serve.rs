//! `lockd serve --etcd`: several lockd hosts serving the same locks from
//! one etcd cluster, through XML-RPC as any client sees them.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{TestServer, python, raw_http, temp_lock_dir};
use lockd::xmlrpc::Value;
use std::thread;

/// A lockd host on `cluster`.
fn host(cluster: &EtcdCluster) -> TestServer {
    let (tmp, dir) = temp_lock_dir();
    let urls = cluster.urls().join(",");
    let server = TestServer::start_in(&dir, &["--etcd", &urls, "--lock-delay", "0"]);
    // The directory is not used; it only has to outlive the start.
    drop(tmp);
    server
}

#[test]
fn the_gocept_lockd_doctest_through_python_over_two_hosts() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (host(&cluster), host(&cluster));
    let got = python("scenario.py", &[&a.url(), &b.url()]);
    assert_eq!(got, crate::support::GOCEPT_DOCTEST);
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

#[test]
fn a_client_waiting_on_one_host_gets_the_lock_released_on_another() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (host(&cluster), host(&cluster));
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
fn without_a_quorum_calls_get_fault_7_and_healthz_says_503() {
    let mut cluster = EtcdCluster::start(3);
    let a = host(&cluster);
    a.call("lock", &["kept", "c"]).unwrap();
    assert_eq!(raw_http(&a.addr, b"GET /healthz HTTP/1.0\r\n\r\n").0, 200);
    cluster.kill(1);
    cluster.kill(2);
    let fault = a.call("lock", &["new", "c"]).unwrap_err();
    assert_eq!(fault.code, 7, "{fault:?}");
    assert!(
        fault.message.contains("did not happen") || fault.message.contains("unknown"),
        "{fault:?}"
    );
    let fault = a.call("lockd.status", &["kept"]).unwrap_err();
    assert_eq!(fault.code, 7, "{fault:?}");
    let (status, reason) = raw_http(&a.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 503, "{reason}");
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_for_leader();
    let fault = a.call("lock", &["kept", "d"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'c'");
}
