//! `lockd lock` and `lockd unlock` for shell scripts: exit codes and messages.

use crate::support::{LOCKD, TestServer, answering};
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

#[test]
fn a_bad_url_list_is_refused_naming_the_url_and_nothing_is_taken() {
    let server = TestServer::start();
    let good = server.url();
    for (list, code, says) in [
        ("", 64, "names no URL"),
        (" , ", 64, "has an empty entry"),
        (&format!("{good},"), 64, "has an empty entry"),
        (&format!("{good},{good}"), 64, "twice"),
        (
            &format!("{good},ftp://lockd.example/"),
            64,
            "\"ftp://lockd.example/\" is not an http:// or https:// URL",
        ),
        (&format!("{good},http:///"), 64, "names no host"),
    ] {
        for args in [
            vec!["lock", "r", "c", "--url", list],
            vec!["acquire", "r", "--client", "c", "--url", list],
            vec!["run", "r", "--url", list, "--", "true"],
        ] {
            let (got, stderr) = lockd(&args);
            assert_eq!(got, code, "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
        }
    }
    // A host answering something else than XML-RPC: named, not passed over.
    // A web server at a wrong URL.
    let page = "<html><body>It works!</body></html>";
    let html = answering(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
            page.len()
        ),
        std::time::Duration::ZERO,
    );
    let list = format!("{html},{good}");
    for args in [
        vec!["lock", "r", "c", "--url", &list],
        vec!["acquire", "r", "--client", "c", "--url", &list],
        vec!["run", "r", "--url", &list, "--", "true"],
    ] {
        let (got, stderr) = lockd(&args);
        assert_eq!(got, 69, "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{html}: the daemon's answer is not an XML-RPC response"
            )),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        server.call("lockd.status", &["r"]).unwrap(),
        lockd::xmlrpc::Value::Nil
    );
}

#[test]
fn a_host_answering_byte_by_byte_or_a_failing_proxy_is_passed_over() {
    let server = TestServer::start();
    server.call("lock", &["r", "alice"]).unwrap();
    // A whole answer, padded to take 50 s at a byte every 0.1 s.
    let body = format!(
        "<?xml version=\"1.0\"?><methodResponse><params><param><value><nil/></value>\
         </param></params></methodResponse>{}",
        " ".repeat(400)
    );
    let slow = answering(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        std::time::Duration::from_millis(100),
    );
    let bad_gateway = answering(
        "HTTP/1.0 502 Bad Gateway\r\nContent-Length: 11\r\n\r\nBad Gateway".to_owned(),
        std::time::Duration::ZERO,
    );
    for first in [&slow, &bad_gateway] {
        let list = format!("{first},{}", server.url());
        let (code, stdout, stderr) = lockd_out(&["status", "r", "--timeout", "1", "--url", &list]);
        assert_eq!(code, 0, "{first}: {stderr}");
        assert!(stdout.starts_with("r\talice\t"), "{first}: {stdout}");
    }
    // Alone, the slow host is given up on at --timeout: no answer, exit 69.
    let (code, stderr) = lockd(&["status", "r", "--timeout", "1", "--url", &slow]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("the outcome is unknown"), "{stderr}");
    assert!(stderr.contains("no whole answer came"), "{stderr}");
}

#[test]
fn a_tls_host_dribbling_its_records_is_given_up_at_the_calls_time() {
    // A TLS record header announcing 16 KiB, then its bytes one every
    // 0.1 s: 27 minutes for the record, which TLS must have whole.
    let mut record = vec![0x16, 0x03, 0x03, 0x40, 0x00];
    record.extend(std::iter::repeat_n(0u8, 0x4000));
    let url = answering(
        String::from_utf8_lossy(&record).into_owned(),
        std::time::Duration::from_millis(100),
    )
    .replace("http://", "https://");
    let pki = crate::pki::Pki::new();
    let mut child = Command::new(LOCKD)
        .args(["status", "r", "--timeout", "1", "--url", &url, "--ca"])
        .arg(pki.file("ca"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    crate::support::wait_until("the call to end", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.unwrap().code(), Some(69), "{stderr}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
}

/// Runs `lockd` with `args`; returns the exit code, stdout and stderr.
fn lockd_out(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(LOCKD).args(args).output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn acquire_release_renew_status_list_and_break_lock_for_scripts() {
    let server = TestServer::start_with(&["--lock-delay", "0"]);
    let url = server.url();
    let with_url = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", &url]);
        lockd_out(&all)
    };
    // acquire prints the token; --json the whole lock.
    let (code, token, _) = with_url(&["acquire", "vm/1", "--client", "alice", "--ttl", "60"]);
    assert_eq!(code, 0);
    let token: u64 = token.trim().parse().unwrap();
    let (code, out, _) = with_url(&["status", "vm/1", "--json"]);
    assert_eq!(code, 0);
    let lock = json(&out);
    assert_eq!(lock["client"], "alice");
    assert_eq!(lock["token"], token);
    assert_eq!(lock["ttl"], 60.0);
    // Human output: resource, holder, token, since, expiry.
    let (_, line, _) = with_url(&["status", "vm/1"]);
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(fields[..3], ["vm/1", "alice", token.to_string().as_str()]);
    assert!(
        fields[3].ends_with('Z') && fields[4].ends_with('Z'),
        "{line}"
    );
    // Held: exit 1; with --reentrant the holder gets the same token.
    assert_eq!(with_url(&["acquire", "vm/1", "--client", "bob"]).0, 1);
    let (code, again, _) = with_url(&["acquire", "vm/1", "--client", "alice", "--reentrant"]);
    assert_eq!((code, again.trim()), (0, token.to_string().as_str()));
    // A wait that runs out: exit 6.
    let (code, _, stderr) = with_url(&["acquire", "vm/1", "--client", "bob", "--wait", "0.2"]);
    assert_eq!(code, 6, "{stderr}");
    // renew, then list.
    let (code, out, _) = with_url(&["renew", "vm/1", "--client", "alice", "--ttl", "5", "--json"]);
    assert_eq!((code, json(&out)["ttl"].as_f64()), (0, Some(5.0)));
    with_url(&["acquire", "vm/2", "--client", "carol"]);
    with_url(&["acquire", "disk", "--client", "dave"]);
    let (_, out, _) = with_url(&["list", "vm/", "--json"]);
    let names: Vec<_> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["resource"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["vm/1", "vm/2"]);
    let (_, out, _) = with_url(&["list"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    // release with a stale token: exit 5; with the right one: 0.
    let stale = (token + 1000).to_string();
    let release =
        |token: &str| with_url(&["release", "vm/1", "--client", "alice", "--token", token]).0;
    assert_eq!(release(&stale), 5);
    assert_eq!(release(&token.to_string()), 0);
    let (code, out, _) = with_url(&["status", "vm/1", "--json"]);
    assert_eq!((code, out.trim()), (2, "null"));
    // break-lock: prints the removed lock; the holder's release then fails.
    let (code, out, _) = with_url(&["break-lock", "vm/2", "--reason", "maintenance", "--json"]);
    assert_eq!((code, json(&out)["client"].as_str()), (0, Some("carol")));
    assert_eq!(with_url(&["release", "vm/2", "--client", "carol"]).0, 5);
    assert_eq!(with_url(&["break-lock", "vm/2", "--reason", "again"]).0, 2);
    assert!(server.log().contains("maintenance"));
}

#[test]
fn the_component_completions_and_man_pages_come_from_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, wit) = (tmp.path().join("lockd.wasm"), tmp.path().join("lockd.wit"));
    let (code, _, stderr) = lockd_out(&[
        "component",
        "--out",
        wasm.to_str().unwrap(),
        "--wit",
        wit.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(&wasm).unwrap();
    assert_eq!(
        bytes,
        lockd::COMPONENT_WASM,
        "the component the daemon runs"
    );
    // A component (layer 1), not a core module.
    assert_eq!(bytes[..8], *b"\0asm\x0d\x00\x01\x00");
    let wit_text = std::fs::read_to_string(&wit).unwrap();
    let source = include_str!("../../wit/lockd.wit");
    assert_eq!(wit_text, source);
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, _) = lockd_out(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(
            script.contains("break-lock") && script.contains("acquire"),
            "{shell}"
        );
    }
    let (code, page, _) = lockd_out(&["man"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH lockd 1"), "{page}");
    let pages = tmp.path().join("man");
    assert_eq!(lockd_out(&["man", "--out", pages.to_str().unwrap()]).0, 0);
    let run_page = std::fs::read_to_string(pages.join("lockd-run.1")).unwrap();
    assert!(run_page.contains("kill\\-after"), "{run_page}");
}

#[test]
fn serve_takes_its_configuration_from_lockd_environment_variables() {
    let (_tmp, dir) = crate::support::temp_lock_dir();
    let mut daemon = Command::new(LOCKD)
        .arg("serve")
        .env("LOCKD_DIR", &dir)
        .env("LOCKD_LISTEN", "127.0.0.1:0")
        .env("LOCKD_SYNC", "none")
        .env("LOCKD_LOCK_DELAY", "0")
        .env("LOCKD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let line = std::io::BufRead::lines(stderr)
        .map_while(Result::ok)
        .find(|l| l.contains("listening on"))
        .expect("a listening line");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let dir = dir.canonicalize().unwrap();
    assert!(line.contains("(sync=none)"), "{line}");
    assert!(
        line.contains(&format!("lock directory {}", dir.display())),
        "{line}"
    );
    assert!(line.contains("http://127.0.0.1:"), "{line}");
}

#[test]
fn an_acquire_waiting_longer_than_a_plain_call_takes_gets_its_lock() {
    // A call that does not wait is given up on after 30 s; one that waits
    // 45 s must be waited for as long, or the daemon would grant the lock
    // to a client that has gone.
    let server = TestServer::start_with(&["--lock-delay", "0"]);
    server.call("lock", &["slow", "holder"]).unwrap();
    let url = server.url();
    let waiting = std::thread::spawn(move || {
        let args = [
            "acquire", "slow", "--client", "patient", "--wait", "45", "--url", &url,
        ];
        Command::new(LOCKD).args(args).output().unwrap()
    });
    server.wait_for_waiters(1);
    std::thread::sleep(std::time::Duration::from_secs(35));
    server.call("unlock", &["slow", "holder"]).unwrap();
    let output = waiting.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let token = String::from_utf8_lossy(&output.stdout);
    let status = server.call("lockd.status", &["slow"]).unwrap();
    assert_eq!(status.member("client"), Some(&"patient".into()));
    assert_eq!(
        status.member("token").and_then(|t| t.as_i64()),
        token.trim().parse().ok()
    );
}

#[test]
fn bench_against_another_binary_runs_both_by_turns_and_prints_the_ratio() {
    let (code, out, err) = lockd_out(&[
        "bench",
        "--against",
        LOCKD,
        "--rounds",
        "2",
        "--duration",
        "0.2",
        "--connections",
        "1",
        "--sync",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    let runs = |side: &str| {
        out.lines()
            .filter(|l| l.starts_with(&format!("{side} --sync=none")))
            .count()
    };
    assert_eq!((runs("this"), runs("other")), (2, 2), "{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("none ") && l.contains('x'))
        .unwrap_or_else(|| panic!("no summary line: {out}"));
    let fields: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(fields[1], "1", "{summary}");
    assert_eq!(
        fields.len(),
        7,
        "sync, conns, two medians, ratio, two rounds: {summary}"
    );

    let (code, _, err) = lockd_out(&["bench", "--against", LOCKD, "--rounds", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rounds"), "{err}");
    let (code, _, err) = lockd_out(&["bench", "--against", "/nonexistent/lockd"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/lockd"), "{err}");
}
