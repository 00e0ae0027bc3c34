//! Waiting in line across lockd hosts: who leaves the line, and that
//! nobody overtakes it.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{TestServer, wait_until};
use lockd::client::CallError;
use lockd::etcd::Etcd;
use lockd::etcd::wire::prefix_end;
use lockd::xmlrpc::Value;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The keys of everyone waiting, on any host.
fn waiting(cluster: &EtcdCluster) -> usize {
    let etcd = Etcd::new(&cluster.urls()).unwrap();
    let soon = Instant::now() + Duration::from_secs(5);
    let (kvs, _) = etcd
        .range(b"lockd/wait/", &prefix_end(b"lockd/wait/"), soon)
        .unwrap();
    kvs.len()
}

fn wait_for(host: &TestServer, resource: &str, client: &str, seconds: f64) -> TcpStream {
    let body = lockd::xmlrpc::encode_call(
        "lockd.acquire",
        &[
            resource.into(),
            client.into(),
            Value::Struct(vec![("wait".into(), Value::Double(seconds))]),
        ],
    );
    let mut stream = TcpStream::connect(&host.addr).unwrap();
    write!(
        stream,
        "POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

fn holder(host: &TestServer, resource: &str) -> Option<String> {
    match host.call("lockd.status", &[resource]).unwrap() {
        Value::Nil => None,
        lock => lock
            .member("client")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

#[test]
fn waiters_whose_time_ran_out_whose_caller_left_or_whose_host_died_leave_the_line() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    a.call("lockd.acquire", &["r", "holder"]).unwrap();

    // Its time runs out: fault 6, and its key is gone.
    let timed_out = b
        .client()
        .call(
            "lockd.acquire",
            &[
                "r".into(),
                "late".into(),
                Value::Struct(vec![("wait".into(), Value::Double(0.3))]),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(&timed_out, CallError::Fault(f) if f.code == 6),
        "{timed_out:?}"
    );
    assert_eq!(waiting(&cluster), 0);

    // Its caller hangs up.
    let gone = wait_for(&b, "r", "gone", 60.0);
    wait_until("the waiter to join the line", || waiting(&cluster) == 1);
    drop(gone);
    wait_until("the waiter that hung up to leave the line", || {
        waiting(&cluster) == 0
    });

    // Its host dies: its session runs out, and with it its place.
    let dead = wait_for(&b, "r", "on-a-dead-host", 60.0);
    wait_until("the waiter to join the line", || waiting(&cluster) == 1);
    b.kill9();
    drop(dead);
    wait_until("the dead host's waiter to leave the line", || {
        waiting(&cluster) == 0
    });
    // Released, the lock goes to nobody.
    a.call("lockd.release", &["r", "holder"]).unwrap();
    assert_eq!(holder(&a, "r"), None);
}

#[test]
fn nobody_overtakes_a_waiter_when_a_lock_delay_ends() {
    let cluster = EtcdCluster::start(3);
    let args = ["--lock-delay", "1", "--max-clock-skew", "0"];
    let (a, b) = (
        cluster.lockd_host_with(&args),
        cluster.lockd_host_with(&args),
    );
    a.call("lockd.acquire", &["r", "stuck"]).unwrap();
    let first = wait_for(&b, "r", "first", 60.0);
    wait_until("the waiter to join the line", || waiting(&cluster) == 1);
    a.call("lockd.break_lock", &["r", "fenced by hand"])
        .unwrap();
    // The lock-delay runs out a second after the break; a newcomer asking
    // from then on is told the lock is the first waiter's.
    let fault = loop {
        match a
            .client()
            .call("lockd.acquire", &["r".into(), "newcomer".into()])
        {
            Err(CallError::Fault(f)) if f.message.contains("expired or was broken") => {
                continue;
            }
            other => break other,
        }
    };
    match fault {
        Err(CallError::Fault(f)) => {
            assert_eq!(f.code, 1, "{f}");
            assert!(f.message.contains("'first'"), "{f}");
        }
        other => panic!("the newcomer overtook: {other:?}"),
    }
    wait_until("the first waiter to get the lock", || {
        holder(&a, "r").as_deref() == Some("first")
    });
    drop(first);
}
