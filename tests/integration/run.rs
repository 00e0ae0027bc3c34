//! `lockd run RESOURCE -- COMMAND`, end to end.

use crate::support::{LOCKD, TestServer, wait_until};
use lockd::xmlrpc::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(server: &TestServer, args: &[&str], command: &[&str]) -> Command {
    let mut cmd = Command::new(LOCKD);
    cmd.arg("run")
        .args(args)
        .args(["--url", &server.url(), "--"])
        .args(command);
    cmd
}

fn status(server: &TestServer, resource: &str) -> Value {
    server.call("lockd.status", &[resource]).unwrap()
}

#[test]
fn the_command_gets_the_token_and_its_exit_code_and_the_lock_is_released() {
    let server = TestServer::start();
    let output = run(
        &server,
        &["job", "--client", "cron"],
        &[
            "sh",
            "-c",
            "echo \"$LOCKD_TOKEN $LOCKD_RESOURCE $LOCKD_CLIENT\"; exit 7",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    let fields: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(fields[1..], ["job", "cron"]);
    let token: u64 = fields[0].parse().unwrap();
    assert!(token > 0);
    assert_eq!(status(&server, "job"), Value::Nil, "released on exit");
    // Taken again, the next token is higher.
    let output = run(&server, &["job"], &["sh", "-c", "echo $LOCKD_TOKEN"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let next: u64 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(next > token);
}

#[test]
fn the_lock_is_held_and_renewed_while_the_command_runs() {
    let server = TestServer::start_with(&["--lock-delay", "0"]);
    // The command runs until the test closes its standard input.
    let mut child = run(
        &server,
        &["long", "--client", "me", "--ttl", "0.6"],
        &["cat"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_until("the lock to be taken", || {
        status(&server, "long") != Value::Nil
    });
    let first = status(&server, "long");
    assert_eq!(
        first.member("client"),
        Some(&Value::from("me")),
        "{first:?}"
    );
    let expires = |v: &Value| match v.member("expires") {
        Some(Value::Double(d)) => *d,
        other => panic!("{other:?}"),
    };
    // Renewed, past its first lease, with the same token.
    let past_first_lease = expires(&first) + 0.3;
    wait_until("renewals past the first lease", || {
        expires(&status(&server, "long")) > past_first_lease
    });
    let later = status(&server, "long");
    assert_eq!(later.member("token"), first.member("token"));
    // Another client is refused meanwhile; `lockd run --wait` waits.
    let mut waiting = run(&server, &["long", "--wait", "60"], &["true"])
        .spawn()
        .unwrap();
    server.wait_for_waiters(1);
    drop(child.stdin.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(waiting.wait().unwrap().code(), Some(0));
    assert_eq!(status(&server, "long"), Value::Nil);
}

#[test]
fn the_command_is_stopped_when_its_lock_is_broken() {
    let server = TestServer::start();
    let start = Instant::now();
    let child = run(
        &server,
        &[
            "fenced",
            "--client",
            "me",
            "--ttl",
            "0.6",
            "--kill-after",
            "2",
        ],
        &["sleep", "30"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until("the lock to be taken", || {
        status(&server, "fenced") != Value::Nil
    });
    server
        .call("lockd.break_lock", &["fenced", "test: the job must stop"])
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    // Stopped, not run to its end 30 s later.
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "stopped only after {:?}",
        start.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lost the lock on fenced"), "{stderr}");
}

#[test]
fn a_held_lock_or_a_missing_command_is_reported() {
    let server = TestServer::start();
    server.call("lock", &["busy", "someone"]).unwrap();
    let output = run(&server, &["busy"], &["true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let output = run(&server, &["free"], &["/nonexistent/command"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(status(&server, "free"), Value::Nil, "released after all");
    let output = Command::new(LOCKD).args(["run", "x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64), "no command");
}

/// A lockd stand-in that grants `lockd.acquire` (token 7) and leaves every
/// later call unanswered; its URL and when it granted the lock.
fn granting_once() -> (String, std::sync::mpsc::Receiver<Instant>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (granted, when) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = vec![0; 65536];
            let n = std::io::Read::read(&mut stream, &mut request).unwrap();
            if String::from_utf8_lossy(&request[..n]).contains("lockd.acquire") {
                let _ = granted.send(Instant::now());
                let body = "<?xml version=\"1.0\"?><methodResponse><params><param><value>\
                    <struct><member><name>token</name><value><i8>7</i8></value></member>\
                    </struct></value></param></params></methodResponse>";
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                std::io::Write::write_all(&mut stream, answer.as_bytes()).unwrap();
            } else {
                // Never answered: the renewal's outcome stays open.
                held.push(stream);
            }
        }
    });
    (url, when)
}

#[test]
fn a_lock_not_renewed_stops_the_command_while_its_lease_still_runs() {
    let (url, granted) = granting_once();
    let dir = tempfile::tempdir().unwrap();
    let stopped = dir.path().join("stopped");
    let mut child = Command::new(LOCKD)
        .args([
            "run", "r", "--client", "me", "--ttl", "3", "--url", &url, "--",
        ])
        .args(["sh", "-c"])
        .arg(format!(
            "trap 'touch {}; exit 0' TERM; while :; do sleep 0.05; done",
            stopped.display()
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let granted = granted.recv().unwrap();
    wait_until("SIGTERM", || stopped.exists());
    // The lease the stand-in granted ends 3 s after it did: the command
    // was told to stop while it was still the holder's.
    assert!(
        granted.elapsed() < Duration::from_secs(3),
        "stopped {:?} after the grant",
        granted.elapsed()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75));
}
