//! `lockd import`: a lock directory's locks moved into etcd, tokens kept
//! above every token the directory issued.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{LOCKD, temp_lock_dir};
use lockd::xmlrpc::Value;
use lockd::{Acquire, Lockd};
use std::process::Command;
use std::time::Duration;

fn import(dir: &std::path::Path, cluster: &EtcdCluster) -> (i32, String, String) {
    let out = Command::new(LOCKD)
        .arg("import")
        .arg(dir)
        .args(["--etcd", &cluster.urls().join(",")])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token(lock: &Value) -> u64 {
    lock.member("token").and_then(Value::as_i64).unwrap() as u64
}

#[test]
fn a_directory_moves_into_etcd_with_its_holders_tokens_and_leases_and_tokens_stay_above_it() {
    let (_tmp, dir) = temp_lock_dir();
    let (a, b, issued) = {
        let lockd = Lockd::open(&dir).unwrap();
        let a = lockd.acquire("a", "c1", &Acquire::default()).unwrap();
        let leased = Acquire {
            ttl: Some(Duration::from_secs(600)),
            ..Acquire::default()
        };
        let b = lockd.acquire("b", "c2", &leased).unwrap();
        lockd.lock("g", "c3").unwrap();
        // Tokens issued for locks no longer held count too: a fenced
        // resource may have seen them.
        let mut issued = 0;
        for _ in 0..50 {
            issued = lockd
                .acquire("gone", "c9", &Acquire::default())
                .unwrap()
                .token;
            lockd.release("gone", "c9", Some(issued)).unwrap();
        }
        (a, b, issued)
    };
    let cluster = EtcdCluster::start(3);
    // A host already serving, which has seen "new" before the import
    // under no token base.
    let host = cluster.lockd_host();
    let before = host.call("lockd.acquire", &["new", "c5"]).unwrap();
    host.call("lockd.release", &["new", "c5"]).unwrap();
    assert!(token(&before) < issued);
    let (code, out, err) = import(&dir, &cluster);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("3 locks written, 0 already there"), "{out}");
    // Again: nothing new, nothing wrong.
    let (code, out, err) = import(&dir, &cluster);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("0 locks written, 3 already there"), "{out}");

    let status = |r: &str| host.call("lockd.status", &[r]).unwrap();
    assert_eq!(token(&status("a")), a.token);
    assert_eq!(
        status("a").member("client").and_then(Value::as_str),
        Some("c1")
    );
    assert_eq!(token(&status("b")), b.token);
    let Some(Value::Double(expires)) = status("b").member("expires").cloned() else {
        panic!("{:?}", status("b"))
    };
    assert!((expires * 1000.0 - b.expires_ms.unwrap() as f64).abs() < 1.0);
    assert_eq!(
        status("g").member("client").and_then(Value::as_str),
        Some("c3")
    );
    // Its holder releases it with the token it has; whoever takes it next,
    // and any new lock, gets a token above every token the directory
    // issued.
    let a_token = a.token.to_string();
    host.call("lockd.release", &["a", "c1", &a_token]).unwrap();
    let next = host.call("lockd.acquire", &["a", "c4"]).unwrap();
    assert!(token(&next) > issued, "{} after {issued}", token(&next));
    let fresh = host.call("lockd.acquire", &["new", "c5"]).unwrap();
    assert!(token(&fresh) > issued, "{} after {issued}", token(&fresh));
    // Imported once more, "a" is someone else's now: reported, left alone.
    let (code, out, err) = import(&dir, &cluster);
    assert_eq!(code, 70, "{out}{err}");
    assert!(
        err.contains("1 locks not imported") && err.contains(": a"),
        "{err}"
    );
    assert_eq!(
        status("a").member("client").and_then(Value::as_str),
        Some("c4")
    );
}
