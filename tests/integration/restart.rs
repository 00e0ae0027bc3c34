//! Locks outlive the daemon: a restart, a `kill -9`; and one daemon per
//! directory.

use crate::support::{LOCKD, TestServer, holder_of, lock_files, spare_files, temp_lock_dir};
use lockd::xmlrpc::Value;
use std::path::PathBuf;

#[test]
fn locks_survive_kill_9_and_restart_with_sync_always() {
    locks_survive_kill_9_and_restart("always");
}

#[test]
fn locks_survive_kill_9_and_restart_with_sync_none() {
    locks_survive_kill_9_and_restart("none");
}

fn locks_survive_kill_9_and_restart(sync: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let args = ["--sync", sync];
    let server = TestServer::start_in(&dir, &args);
    for i in 0..10 {
        server.call("lock", &[&format!("vm{i}"), "host-a"]).unwrap();
    }
    for i in 0..5 {
        server
            .call("unlock", &[&format!("vm{i}"), "host-a"])
            .unwrap();
    }
    server.kill9();

    let server = TestServer::start_in(&dir, &args);
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

    let server = TestServer::start_in(&dir, &args);
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

/// Appends one journal record as the component writes it: length, CRC-32
/// of the payload, payload (kind byte, then length-prefixed strings).
fn record(out: &mut Vec<u8>, kind: u8, strings: &[&str]) {
    let mut payload = vec![kind];
    for s in strings {
        payload.extend_from_slice(&(s.len() as u32).to_le_bytes());
        payload.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

#[test]
fn the_journal_of_an_interrupted_run_is_replayed_into_the_lock_files() {
    let (_tmp, dir) = temp_lock_dir();
    // The lock files as a crash may leave them: one lock never written, one
    // unlock never applied, one lock whose holder changed twice.
    std::fs::write(dir.join("stale.resource.lock"), "gone\n").unwrap();
    std::fs::write(dir.join("moved.resource.lock"), "first\n").unwrap();
    let mut journal = Vec::new();
    record(&mut journal, 1, &["new/one", "writer"]);
    record(&mut journal, 2, &["stale"]);
    record(&mut journal, 2, &["moved"]);
    record(&mut journal, 1, &["moved", "second"]);
    // A torn tail: a record cut short by the crash, never acknowledged.
    let mut torn = Vec::new();
    record(&mut torn, 1, &["torn", "nobody"]);
    journal.extend_from_slice(&torn[..torn.len() - 3]);
    std::fs::write(dir.join(".lockd.journal"), &journal).unwrap();

    let server = TestServer::start_in(&dir, &[]);
    assert!(
        server.log().contains("4 changes replayed from the journal"),
        "{}",
        server.log()
    );
    assert_eq!(
        holder_of(&std::fs::read_to_string(dir.join("new%2Fone.resource.lock")).unwrap()),
        "writer"
    );
    assert!(!dir.join("stale.resource.lock").exists());
    assert_eq!(
        holder_of(&std::fs::read_to_string(dir.join("moved.resource.lock")).unwrap()),
        "second"
    );
    assert!(!dir.join("torn.resource.lock").exists());
    // Folded into the lock files: the journal starts a new cycle, with no
    // record in it yet (the file is kept, preallocated).
    let journal = std::fs::read(dir.join(".lockd.journal")).unwrap();
    assert_eq!(&journal[..8], b"lockdjv2");
    assert_eq!(journal[16..24], [0; 8], "no record in the new cycle");
    let fault = server.call("lock", &["new/one", "x"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'writer'");
    assert_eq!(server.call("lock", &["torn", "x"]), Ok(Value::Nil));
}

#[test]
fn the_startup_report_names_what_is_not_a_lock_file() {
    let (_tmp, dir) = temp_lock_dir();
    std::fs::write(dir.join("README"), "mine").unwrap();
    std::fs::write(dir.join(".lockd-write.tmp"), "half").unwrap();
    let server = TestServer::start_in(&dir, &[]);
    let log = server.log();
    assert!(
        log.contains("left alone \"README\": not a lock file"),
        "{log}"
    );
    assert!(log.contains("removed .lockd-write.tmp"), "{log}");
    assert_eq!(std::fs::read_to_string(dir.join("README")).unwrap(), "mine");
    assert!(!dir.join(".lockd-write.tmp").exists());
}

#[test]
fn lock_files_edited_by_hand_never_leak_into_later_lock_files() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        let file = |name: &str| server.dir.join(format!("{name}.resource.lock"));
        let read = |name: &str| std::fs::read_to_string(file(name)).unwrap();

        // Replaced, as an editor saves: a new file renamed over the lock file.
        server.call("lock", &["a", "host-a"]).unwrap();
        let scratch = server.dir.join("edited");
        std::fs::write(&scratch, "intruder\n").unwrap();
        std::fs::rename(&scratch, file("a")).unwrap();
        server.call("unlock", &["a", "host-a"]).unwrap();
        server.call("lock", &["b", "host-b"]).unwrap();
        assert_eq!(holder_of(&read("b")), "host-b", "{sync}");

        // Rewritten in place, longer than lockd's content.
        server.call("lock", &["c", "host-c"]).unwrap();
        std::fs::write(file("c"), format!("intruder\n{}\n", "x".repeat(300))).unwrap();
        server.call("unlock", &["c", "host-c"]).unwrap();
        server.call("lock", &["d", "host-d"]).unwrap();
        assert_eq!(holder_of(&read("d")), "host-d", "{sync}");

        // The same holders again: their old files, now spares, were edited
        // and are never linked back.
        server.call("lock", &["e", "host-a"]).unwrap();
        assert_eq!(holder_of(&read("e")), "host-a", "{sync}");
        server.call("lock", &["f", "host-c"]).unwrap();
        assert_eq!(holder_of(&read("f")), "host-c", "{sync}");

        // Rewritten in place with as many bytes: told by the time of the
        // write.
        server.call("lock", &["g", "host-g"]).unwrap();
        std::fs::write(file("g"), "host-z\n").unwrap();
        server.call("unlock", &["g", "host-g"]).unwrap();
        server.call("lock", &["h", "host-g"]).unwrap();
        assert_eq!(holder_of(&read("h")), "host-g", "{sync}");

        // A spare linked as a lock file, edited through it.
        server.call("unlock", &["e", "host-a"]).unwrap();
        server.call("lock", &["i", "host-a"]).unwrap();
        std::fs::write(file("i"), "host-y\n").unwrap();
        server.call("unlock", &["i", "host-a"]).unwrap();
        server.call("lock", &["j", "host-a"]).unwrap();
        assert_eq!(holder_of(&read("j")), "host-a", "{sync}");

        // What is on disk is what a restart finds.
        server.kill9();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        for (name, holder) in [("b", "host-b"), ("d", "host-d")] {
            let fault = server.call("lock", &[name, "other"]).unwrap_err();
            assert_eq!(
                fault.message,
                format!("Resource already locked by '{holder}'"),
                "{sync}"
            );
        }
    }
}

#[test]
fn tokens_and_leases_outlive_restarts_though_lock_files_hold_their_holder_alone() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        let client = server.client();
        let lease = |ttl: f64| Value::Struct(vec![("ttl".into(), Value::Double(ttl))]);
        let lock = client
            .call(
                "lockd.acquire",
                &["vm".into(), "host-a".into(), lease(600.0)],
            )
            .unwrap();
        let token = lock.member("token").and_then(Value::as_i64).unwrap();
        let mut renewed = lock;
        for ttl in [700.0, 800.0, 900.0] {
            renewed = client
                .call(
                    "lockd.renew",
                    &["vm".into(), "host-a".into(), Value::Double(ttl)],
                )
                .unwrap();
        }
        let expires = renewed.member("expires").cloned().unwrap();
        let file = dir.join("vm.resource.lock");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "host-a\n",
            "{sync}"
        );

        // Churn: lock files go with their locks; the spares kept are few
        // and hold their holder's line.
        for i in 0..300 {
            server.call("lock", &[&format!("r{i}"), "churn"]).unwrap();
        }
        for i in 0..300 {
            server.call("unlock", &[&format!("r{i}"), "churn"]).unwrap();
        }
        assert_eq!(
            lock_files(&dir).into_iter().collect::<Vec<_>>(),
            ["vm.resource.lock"],
            "{sync}"
        );
        let spares = spare_files(&dir);
        assert!(
            !spares.is_empty() && spares.len() <= 128,
            "{sync}: {spares:?}"
        );
        for spare in &spares {
            assert_eq!(std::fs::read_to_string(spare).unwrap(), "churn\n");
        }

        // The first restart replays the journal; the second starts from
        // the snapshot the first one's checkpoint wrote.
        let mut server = server;
        for restart in 0..2 {
            server.kill9();
            server = TestServer::start_in(&dir, &["--sync", sync]);
            let status = status_of(&server, "vm");
            assert_eq!(
                status.member("token").and_then(Value::as_i64),
                Some(token),
                "{sync}, restart {restart}"
            );
            assert_eq!(
                status.member("expires"),
                Some(&expires),
                "{sync}, restart {restart}"
            );
            assert_eq!(spare_files(&dir), Vec::<PathBuf>::new(), "{sync}");
        }
        let fault = server.call("lock", &["vm", "host-b"]).unwrap_err();
        assert_eq!(
            fault.message, "Resource already locked by 'host-a'",
            "{sync}"
        );
        assert_eq!(server.call("lock", &["r0", "host-b"]), Ok(Value::Nil));
        let next = server
            .client()
            .call("lockd.acquire", &["y".into(), "host-b".into()])
            .unwrap();
        assert!(next.member("token").and_then(Value::as_i64).unwrap() > token);
    }
}

#[test]
fn a_lock_file_removed_while_lockd_was_down_frees_its_lock_whatever_the_snapshot_says() {
    let (_tmp, dir) = temp_lock_dir();
    vm_in_the_snapshot(&dir, Value::Struct(Vec::new()));
    assert!(std::fs::read(dir.join(".lockd.snapshot")).unwrap().len() > 8);
    // As gocept.lockd's operators free a lock: its file removed.
    std::fs::remove_file(dir.join("vm.resource.lock")).unwrap();
    let server = TestServer::start_in(&dir, &[]);
    assert_eq!(status_of(&server, "vm"), Value::Nil);
    assert_eq!(server.call("lock", &["vm", "host-b"]), Ok(Value::Nil));
}

/// `vm` acquired by `host-a` with `options`, and lockd started again, so
/// that the start's checkpoint records the lock in the snapshot (each
/// daemon ended by `kill -9`).
fn vm_in_the_snapshot(dir: &std::path::Path, options: Value) {
    let server = TestServer::start_in(dir, &[]);
    server
        .client()
        .call("lockd.acquire", &["vm".into(), "host-a".into(), options])
        .unwrap();
    drop(server);
    drop(TestServer::start_in(dir, &[]));
}

/// `lockd.status` of `resource`.
fn status_of(server: &TestServer, resource: &str) -> Value {
    server
        .client()
        .call("lockd.status", &[resource.into()])
        .unwrap()
}

#[test]
fn spare_files_of_an_earlier_version_are_removed_and_their_locks_kept() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        // As lockd 0.2 left them: a spare linked as a lock file, a free one.
        std::fs::write(dir.join(".lockd-spare-0"), "host-old\ntoken: 5\n").unwrap();
        std::fs::hard_link(dir.join(".lockd-spare-0"), dir.join("x.resource.lock")).unwrap();
        std::fs::write(dir.join(".lockd-spare-1"), "").unwrap();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        assert_eq!(spare_files(&dir), Vec::<PathBuf>::new(), "{sync}");
        let fault = server.call("lock", &["x", "other"]).unwrap_err();
        assert_eq!(
            fault.message, "Resource already locked by 'host-old'",
            "{sync}"
        );
        let content = std::fs::read_to_string(dir.join("x.resource.lock")).unwrap();
        assert_eq!(content, "host-old\ntoken: 5\n", "{sync}");
        let lock = server
            .client()
            .call("lockd.acquire", &["y".into(), "host-b".into()])
            .unwrap();
        let token = lock.member("token").and_then(Value::as_i64).unwrap();
        assert!(token > 5, "{sync}: token {token}");
    }
}

#[test]
fn a_lock_file_put_back_by_another_hand_gets_no_token_or_lease_from_the_snapshot() {
    for content in ["host-a", "host-a\n"] {
        let (_tmp, dir) = temp_lock_dir();
        let lease = Value::Struct(vec![("ttl".into(), Value::Double(600.0))]);
        vm_in_the_snapshot(&dir, lease);
        // As gocept.lockd after a switch back: released, taken again.
        let file = dir.join("vm.resource.lock");
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, content).unwrap();
        let server = TestServer::start_in(&dir, &[]);
        let status = status_of(&server, "vm");
        assert_eq!(
            status.member("client").and_then(Value::as_str),
            Some("host-a")
        );
        assert_eq!(
            status.member("token").and_then(Value::as_i64),
            Some(0),
            "{content:?}: {status:?}"
        );
        assert_eq!(
            status.member("expires"),
            Some(&Value::Nil),
            "{content:?}: {status:?}"
        );
    }
}

#[test]
fn with_sync_none_a_lock_whose_file_cannot_be_written_is_refused() {
    let (_tmp, dir) = temp_lock_dir();
    let server = TestServer::start_in(&dir, &["--sync", "none"]);
    std::fs::create_dir(dir.join("q.resource.lock")).unwrap();
    let fault = server.call("lock", &["q", "c1"]).unwrap_err();
    assert_eq!(fault.code, -32603, "{fault:?}");
    std::fs::remove_dir(dir.join("q.resource.lock")).unwrap();
    assert_eq!(server.call("lock", &["q", "c1"]), Ok(Value::Nil));
    assert_eq!(
        holder_of(&std::fs::read_to_string(dir.join("q.resource.lock")).unwrap()),
        "c1"
    );
}
