//! `lockd lock` and `lockd unlock` for shell scripts: exit codes and messages.

use crate::support::{LOCKD, TestServer};
use std::process::Command;

fn lockd(args: &[&str]) -> (i32, String) {
    let output = Command::new(LOCKD).args(args).output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn client_commands_exit_with_the_fault_code() {
    let server = TestServer::start();
    let url = server.url();
    let run =
        |cmd: &str, resource: &str, client: &str| lockd(&[cmd, resource, client, "--url", &url]);

    assert_eq!(run("lock", "job", "alice"), (0, String::new()));
    let (code, stderr) = run("lock", "job", "bob");
    assert_eq!(
        (code, stderr.trim()),
        (1, "lockd: Resource already locked by 'alice'")
    );
    let (code, stderr) = run("unlock", "job", "bob");
    assert_eq!(code, 3);
    assert!(stderr.contains("cannot be unlocked by 'bob'"), "{stderr}");
    assert_eq!(run("unlock", "job", "alice"), (0, String::new()));
    let (code, stderr) = run("unlock", "job", "alice");
    assert_eq!((code, stderr.trim()), (2, "lockd: Resource not locked"));
    assert_eq!(run("lock", "job", "").0, 4);
}

#[test]
fn usage_errors_and_an_unreachable_daemon() {
    assert_eq!(lockd(&["lock", "only-one-arg"]).0, 64);
    assert_eq!(lockd(&["--help"]).0, 0);
    assert_eq!(lockd(&["serve", "--help"]).0, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, stderr) = lockd(&[
        "lock",
        "r",
        "c",
        "--url",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("connecting to lockd"), "{stderr}");
}
