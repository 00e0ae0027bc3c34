//! Optional HTTP Basic authentication, with an operator role for
//! `lockd.break_lock`.

use crate::support::{LOCKD, TestServer, call_xml, python, raw_http, temp_lock_dir};
use lockd::client::{CallError, Client};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

const USERS: &str = "# lockd's users\nalice:wonder land:client\nops:s3cret:operator\n";

fn server_with_auth() -> (tempfile::TempDir, TestServer) {
    let (tmp, dir) = temp_lock_dir();
    let file = tmp.path().join("users");
    std::fs::write(&file, USERS).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = TestServer::start_in(&dir, &["--auth-file", file.to_str().unwrap()]);
    (tmp, server)
}

fn url(server: &TestServer, userinfo: &str) -> String {
    format!("http://{userinfo}@{}/", server.addr)
}

#[test]
fn the_gocept_scenario_passes_with_credentials_in_the_url() {
    let (_tmp, server) = server_with_auth();
    let out = python("scenario.py", &[&url(&server, "alice:wonder%20land")]);
    assert!(out.contains("Fault(2, 'Resource not locked')"), "{out}");
}

#[test]
fn requests_without_valid_credentials_get_401_and_no_detail() {
    let (_tmp, server) = server_with_auth();
    let body = call_xml("lock", &["r", "c"]);
    let post = |authorization: &str| {
        let request = format!(
            "POST / HTTP/1.0\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        raw_http(&server.addr, request.as_bytes())
    };
    assert_eq!(post(""), (401, String::new()));
    // alice:wrong, nobody:s3cret, and something that is not Basic.
    for header in [
        "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n",
        "Authorization: Basic bm9ib2R5OnMzY3JldA==\r\n",
        "Authorization: Bearer abc\r\n",
    ] {
        assert_eq!(post(header), (401, String::new()), "{header}");
    }
    // Nothing was locked by the refused calls.
    let ops = Client::new(&url(&server, "ops:s3cret")).unwrap();
    assert_eq!(
        ops.call("lockd.status", &["r".into()]).unwrap(),
        lockd::xmlrpc::Value::Nil
    );
    // Python's client sees the refusal as a protocol error.
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys, xmlrpc.client as x; x.ServerProxy(sys.argv[1]).lock('r', 'c')",
        ])
        .arg(server.url())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

#[test]
fn only_operators_break_locks() {
    let (_tmp, server) = server_with_auth();
    let alice = Client::new(&url(&server, "alice:wonder%20land")).unwrap();
    let ops = Client::new(&url(&server, "ops:s3cret")).unwrap();
    alice.call("lock", &["vm".into(), "alice".into()]).unwrap();
    match alice.call("lockd.break_lock", &["vm".into(), "mine".into()]) {
        Err(CallError::Fault(fault)) => assert_eq!(fault.code, -32500, "{fault}"),
        other => panic!("{other:?}"),
    }
    ops.call("lockd.break_lock", &["vm".into(), "fenced".into()])
        .unwrap();
    // The CLI takes credentials in --url too.
    let output = Command::new(LOCKD)
        .args([
            "lock",
            "cli",
            "alice",
            "--url",
            &url(&server, "alice:wonder%20land"),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let output = Command::new(LOCKD)
        .args(["lock", "cli2", "alice", "--url", &server.url()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69), "{output:?}");
}

#[test]
fn a_bad_credentials_file_stops_the_daemon_and_a_public_address_without_auth_is_warned_of() {
    let (tmp, dir) = temp_lock_dir();
    let file = tmp.path().join("users");
    std::fs::write(&file, "alice\n").unwrap();
    let log = TestServer::try_start_in(&dir, &["--auth-file", file.to_str().unwrap()])
        .err()
        .expect("refused to start");
    assert!(log.contains("line 1"), "{log}");
    // Bound to every address (nothing connects to it), killed once it says
    // it listens.
    let mut daemon = Command::new(LOCKD)
        .args(["serve", "--listen", "0.0.0.0:0", "--dir"])
        .arg(&dir)
        .env("LOCKD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let mut log = String::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        log.push_str(&line);
        if line.contains("listening on") {
            break;
        }
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(log.contains("without authentication"), "{log}");
}

#[test]
fn sighup_reads_the_credentials_file_again_and_a_bad_one_changes_nothing() {
    let (tmp, server) = server_with_auth();
    let file = tmp.path().join("users");
    let alice = Client::new(&url(&server, "alice:wonder%20land")).unwrap();
    let bob = Client::new(&url(&server, "bob:builder")).unwrap();
    let status = |client: &Client| client.call("lockd.status", &["r".into()]);
    assert!(status(&alice).is_ok());
    assert!(status(&bob).is_err());

    // Alice leaves, Bob comes: from the reload on, requests are judged by
    // the new file.
    std::fs::write(&file, "bob:builder:client\nops:s3cret:operator\n").unwrap();
    server.signal(libc::SIGHUP);
    crate::support::wait_until("the reload", || {
        server.log().contains("credentials file reloaded")
    });
    assert!(status(&bob).is_ok());
    match status(&alice) {
        Err(CallError::Transport(e)) => assert!(format!("{e:#}").contains("401"), "{e:#}"),
        other => panic!("{other:?}"),
    }

    // A file that does not parse leaves the credentials as they were.
    std::fs::write(&file, "bob\n").unwrap();
    server.signal(libc::SIGHUP);
    crate::support::wait_until("the failed reload", || {
        server.log().contains("credentials file not reloaded")
    });
    assert!(status(&bob).is_ok());
}
