//! Locks outlive the daemon: a restart, a `kill -9`; and one daemon per
//! directory.

use crate::support::{LOCKD, TestServer};
use lockd::xmlrpc::Value;

#[test]
fn locks_survive_kill_9_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let server = TestServer::start_in(&dir, &[]);
    for i in 0..10 {
        server.call("lock", &[&format!("vm{i}"), "host-a"]).unwrap();
    }
    for i in 0..5 {
        server
            .call("unlock", &[&format!("vm{i}"), "host-a"])
            .unwrap();
    }
    server.kill9();

    let server = TestServer::start_in(&dir, &[]);
    for i in 0..5 {
        assert_eq!(
            server.call("lock", &[&format!("vm{i}"), "host-b"]),
            Ok(Value::Nil)
        );
    }
    for i in 5..10 {
        let fault = server
            .call("lock", &[&format!("vm{i}"), "host-b"])
            .unwrap_err();
        assert_eq!(fault.message, "Resource already locked by 'host-a'");
    }
    drop(server);

    let server = TestServer::start_in(&dir, &[]);
    let fault = server.call("lock", &["vm0", "host-a"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'host-b'");
    assert_eq!(server.call("unlock", &["vm9", "host-a"]), Ok(Value::Nil));
}

#[test]
fn a_second_daemon_on_the_same_directory_refuses_to_start() {
    let server = TestServer::start();
    let output = std::process::Command::new(LOCKD)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&server.dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another lockd") && stderr.contains("is already using the lock directory"),
        "{stderr}"
    );
    // The first one is unaffected.
    assert_eq!(server.call("lock", &["still", "served"]), Ok(Value::Nil));
}
