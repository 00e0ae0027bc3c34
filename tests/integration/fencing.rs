//! Fencing tokens, leases, waiting, inspection and break-lock (`lockd.*`),
//! through the real binary and Python's `xmlrpc.client`.

use crate::support::{TestServer, python, temp_lock_dir};
use lockd::xmlrpc::Value;

#[test]
fn each_method_and_option_through_python() {
    let server = TestServer::start();
    python("fencing.py", &[&server.url(), "methods"]);
}

#[test]
fn leases_expire_and_stay_unavailable_for_the_lock_delay() {
    let server = TestServer::start_with(&["--lock-delay", "0.5"]);
    python("fencing.py", &[&server.url(), "leases"]);
    assert!(server.log().contains("lease expired"), "{}", server.log());
}

#[test]
fn waiters_are_served_in_arrival_order_and_time_out_with_fault_6() {
    let server = TestServer::start_with(&["--lock-delay", "0"]);
    let out = python("fencing.py", &[&server.url(), "waiting"]);
    eprint!("{out}");
}

#[test]
fn break_lock_is_audited_invalidates_the_token_and_starts_the_lock_delay() {
    let server = TestServer::start_with(&["--lock-delay", "0.5"]);
    python("fencing.py", &[&server.url(), "breaking"]);
    let log = server.log();
    let audit = log
        .lines()
        .find(|l| l.contains("lock broken by an operator"))
        .unwrap_or_else(|| panic!("no audit line in {log}"));
    for part in ["vm/7", "stuck-host", "host stuck, fenced by hand", "token="] {
        assert!(audit.contains(part), "{part} missing from {audit}");
    }
}

fn token(server: &TestServer, resource: &str, client: &str) -> i64 {
    let lock = server
        .client()
        .call("lockd.acquire", &[resource.into(), client.into()])
        .unwrap();
    match lock.member("token") {
        Some(Value::I8(token)) => *token,
        other => panic!("token {other:?} in {lock:?}"),
    }
}

#[test]
fn tokens_strictly_increase_across_kill_9_restarts_in_both_sync_modes() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        let mut server = TestServer::start_in(&dir, &["--sync", sync]);
        let mut last = 0;
        for round in 0..4 {
            for i in 0..3 {
                let resource = format!("r{round}-{i}");
                let token = token(&server, &resource, "c");
                assert!(token > last, "{sync}: token {token} after {last}");
                last = token;
                server
                    .client()
                    .call("lockd.release", &[resource.as_str().into(), "c".into()])
                    .unwrap();
            }
            server.kill9();
            server = TestServer::start_in(&dir, &["--sync", sync]);
        }
    }
}

#[test]
fn a_restart_skips_no_more_tokens_than_the_run_issued_plus_1024() {
    for sync in ["always", "none"] {
        let (_tmp, dir) = temp_lock_dir();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        let first = token(&server, "a", "c");
        server.kill9();

        // A run that issued one token skips at most the rest of the first
        // range.
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        let start = token(&server, "b", "c");
        assert!(
            first < start && start - first <= 1024,
            "{sync}: {first} then {start}"
        );
        // A busy run reserves ever larger ranges; what a restart skips stays
        // within what the run issued plus 1024.
        let mut last = start;
        for _ in 0..2000 {
            let token = token(&server, "r", "c");
            assert!(token > last, "{sync}: token {token} after {last}");
            last = token;
            server
                .client()
                .call("lockd.release", &["r".into(), "c".into()])
                .unwrap();
        }
        let issued = last - start + 1;
        server.kill9();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        let next = token(&server, "d", "c");
        assert!(
            last < next && next - last <= issued + 1024,
            "{sync}: {issued} issued up to {last}, then {next}"
        );
    }
}
