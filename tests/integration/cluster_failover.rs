//! The command line's clients across lockd hosts (`--url A,B,C`): `lockd
//! run` keeps its command and its lock while the host it uses is killed or
//! paused, and every subcommand goes through a dead first URL. Each call
//! that moves on is seen from outside: another host's counters and
//! `lockd.status`.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{LOCKD, TestServer, answering, bin_dir, doc_block, raw_http, wait_until};
use lockd::xmlrpc::Value;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many calls of `method` `host` has answered (0 before the first).
fn calls(host: &TestServer, method: &str) -> f64 {
    let (status, scrape) = raw_http(&host.addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{scrape}");
    let name = format!("lockd_requests_total{{method=\"{method}\"}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&name))
        .map_or(0.0, |count| count.parse().unwrap())
}

fn renewals(host: &TestServer) -> f64 {
    calls(host, "lockd.renew")
}

/// The holder and token of `resource`, as `host` answers `lockd.status`.
fn holder(host: &TestServer, resource: &str) -> Option<(String, i64)> {
    match host.call("lockd.status", &[resource]).unwrap() {
        Value::Nil => None,
        lock => Some((
            lock.member("client")
                .and_then(Value::as_str)
                .unwrap()
                .to_owned(),
            lock.member("token").and_then(Value::as_i64).unwrap(),
        )),
    }
}

fn lockd(args: &[&str]) -> Output {
    Command::new(LOCKD).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `lockd run` over `urls`, its command writing the token to `dir/token`
/// and running until `dir/stop` exists.
fn run_job(urls: &str, dir: &Path) -> Child {
    Command::new(LOCKD)
        .args([
            "run", "vm-42", "--client", "job", "--ttl", "6", "--url", urls,
        ])
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo $LOCKD_TOKEN > {dir}/token.tmp && mv {dir}/token.tmp {dir}/token; \
             while [ ! -e {dir}/stop ]; do sleep 0.05; done",
            dir = dir.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Watches `resource` on `host` until dropped, asserting on each look that
/// `client` holds it with `token`: the lock never passed to another.
struct Watch<'a> {
    stop: &'a AtomicBool,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn lockd_run_keeps_its_command_and_lock_while_its_host_is_killed_and_another_paused() {
    let cluster = EtcdCluster::start(3);
    let (a, b, c) = (
        cluster.lockd_host(),
        cluster.lockd_host(),
        cluster.lockd_host(),
    );
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{},{},{}", a.url(), b.url(), c.url());
    let mut job = run_job(&urls, dir.path());
    let token_file = dir.path().join("token");
    wait_until("the command started", || token_file.exists());
    let token: i64 = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(holder(&c, "vm-42"), Some(("job".to_owned(), token)));

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let looks = scope.spawn(|| {
            let mut looks = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(holder(&c, "vm-42"), Some(("job".to_owned(), token)));
                looks += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            looks
        });
        let _watch = Watch { stop: &stop };

        // The first host dies: renewals move on, the command runs on.
        wait_until("a renewal through the first host", || renewals(&a) >= 1.0);
        let killed = Instant::now();
        a.kill9();
        let (b0, c0) = (renewals(&b), renewals(&c));
        wait_until("a renewal through another host", || {
            renewals(&b) + renewals(&c) > b0 + c0
        });
        eprintln!(
            "first renewal through another host {:?} after kill -9",
            killed.elapsed()
        );
        // Over a whole lease and more with the first host gone.
        wait_until("four renewals without the first host", || {
            renewals(&b) + renewals(&c) >= b0 + c0 + 4.0
        });

        // The host in use stops answering for 10 s.
        let (in_use, other) = if renewals(&b) > b0 {
            (&b, &c)
        } else {
            (&c, &b)
        };
        let paused = Instant::now();
        in_use.signal(libc::SIGSTOP);
        let other0 = renewals(other);
        wait_until("a renewal through the host not paused", || {
            renewals(other) > other0
        });
        eprintln!(
            "first renewal through another host {:?} after SIGSTOP",
            paused.elapsed()
        );
        wait_until("10 s paused, and renewals through the other host", || {
            paused.elapsed() >= Duration::from_secs(10) && renewals(other) >= other0 + 3.0
        });
        in_use.signal(libc::SIGCONT);
        assert!(job.try_wait().unwrap().is_none(), "the command was stopped");
        drop(_watch);
        let looks = looks.join().unwrap();
        assert!(looks > 50, "{looks} looks at the lock");
    });

    std::fs::write(dir.path().join("stop"), "").unwrap();
    let status = job.wait().unwrap();
    let mut stderr = String::new();
    job.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(holder(&c, "vm-42"), None, "released at the end: {stderr}");
}

#[test]
fn every_subcommand_goes_through_a_dead_first_url() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let dead = a.url();
    drop(a);
    let urls = format!("{dead},{}", b.url());
    let token = stdout(&lockd(&[
        "acquire", "vm-7", "--client", "ops", "--ttl", "30", "--url", &urls,
    ]));
    let token: i64 = token.parse().unwrap();
    assert_eq!(holder(&b, "vm-7"), Some(("ops".to_owned(), token)));
    let status = stdout(&lockd(&["status", "vm-7", "--url", &urls]));
    assert!(
        status.starts_with(&format!("vm-7\tops\t{token}\t")),
        "{status}"
    );
    let list = stdout(&lockd(&["list", "vm", "--url", &urls]));
    assert!(list.starts_with(&format!("vm-7\tops\t{token}\t")), "{list}");
    stdout(&lockd(&[
        "release", "vm-7", "--client", "ops", "--url", &urls,
    ]));
    assert_eq!(holder(&b, "vm-7"), None);
    stdout(&lockd(&["lock", "vm-8", "ops", "--url", &urls]));
    stdout(&lockd(&["unlock", "vm-8", "ops", "--url", &urls]));
    assert_eq!(holder(&b, "vm-8"), None);
}

/// A proxy in front of `to` that passes each call on and cuts the
/// connection instead of passing its answer back, once the answer came.
fn answer_eater(to: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let mut client = client.unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            // The CLI's calls are HTTP/1.0 with a body after the head.
            while !complete(&request) {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "the call was cut short");
                request.extend_from_slice(&buf[..n]);
            }
            let mut daemon = TcpStream::connect(&to).unwrap();
            daemon.write_all(&request).unwrap();
            let mut answer = Vec::new();
            daemon.read_to_end(&mut answer).unwrap();
            assert_eq!(
                answer.get(8..13),
                Some(&b" 200 "[..]),
                "{}",
                String::from_utf8_lossy(&answer)
            );
            // The answer is lost on its way back.
            drop(client);
        }
    });
    format!("http://{addr}/")
}

/// Whether `request` holds a whole head and the body it announces.
fn complete(request: &[u8]) -> bool {
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    request.len() >= end + 4 + length
}

#[test]
fn an_acquire_whose_answer_is_lost_gets_the_same_lock_from_the_next_host() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let urls = format!("{},{}", answer_eater(a.addr.clone()), b.url());
    let output = lockd(&[
        "acquire", "vm-9", "--client", "ops", "--ttl", "30", "--json", "--url", &urls,
    ]);
    let lock = stdout(&output);
    let (client, token) = holder(&b, "vm-9").expect("the lock is held");
    assert_eq!(client, "ops");
    assert!(lock.contains(&format!("\"token\":{token}")), "{lock}");
    // One lock was taken, by the first try, and answered to the second.
    assert_eq!(calls(&a, "lockd.acquire"), 1.0);
    assert_eq!(calls(&b, "lockd.acquire"), 1.0);
}

#[test]
fn the_clients_pages_example_runs_through_a_dead_host() {
    let cluster = EtcdCluster::start(3);
    let (a, b, c) = (
        cluster.lockd_host(),
        cluster.lockd_host(),
        cluster.lockd_host(),
    );
    let dead = a.url();
    drop(a);
    let block = doc_block(
        include_str!("../../docs/clients.md"),
        "## Giving the hosts",
        "sh",
    )
    .replace("http://lockd-a:8000/", &dead)
    .replace("http://lockd-b:8000/", &b.url())
    .replace("http://lockd-c:8000/", &c.url());
    // `backup` says what it was given and who held the lock meanwhile.
    let tmp = tempfile::tempdir().unwrap();
    let seen = tmp.path().join("seen");
    let backup = format!(
        "#!/bin/sh\necho \"$1 $LOCKD_TOKEN $(lockd status nightly-backup)\" > {}\n",
        seen.display()
    );
    let bin = bin_dir(tmp.path(), &[("backup", &backup)]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output = Command::new("bash")
        .args(["-euc", &block])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let seen = std::fs::read_to_string(&seen).unwrap();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    // Its argument, its token, and the lock as a host showed it meanwhile.
    assert_eq!(fields[0], "--full", "{seen}");
    assert_eq!(fields[2], "nightly-backup", "{seen}");
    assert_eq!(fields[1], fields[4], "{seen}");
    assert_eq!(holder(&b, "nightly-backup"), None);
}

#[test]
fn a_lost_answer_is_never_told_as_done_when_it_cannot_be() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let eater = answer_eater(a.addr.clone());
    // `lock` refuses a lock held under the caller's name, so one held so
    // after a lost answer may be an earlier run's: not told as taken.
    let list = format!("{eater},{}", b.url());
    let output = lockd(&["lock", "vm-10", "ops", "--url", &list]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("held under this client's name"), "{stderr}");
    assert_eq!(holder(&b, "vm-10").map(|(c, _)| c), Some("ops".to_owned()));
    // No host left to settle it: unknown, not "did not happen".
    let dead = {
        let host = cluster.lockd_host();
        let url = host.url();
        drop(host);
        url
    };
    let list = format!("{eater},{dead}");
    let output = lockd(&["acquire", "vm-11", "--client", "ops", "--url", &list]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("the outcome is unknown"), "{stderr}");
    assert!(!stderr.contains("did not happen"), "{stderr}");
    assert_eq!(holder(&b, "vm-11").map(|(c, _)| c), Some("ops".to_owned()));
    // Nor when the next host answers something else than XML-RPC: that
    // does not settle what the first try did.
    let web = answering(
        "HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\n\r\nNot Found".to_owned(),
        Duration::ZERO,
    );
    let list = format!("{eater},{web}");
    let output = lockd(&["acquire", "vm-13", "--client", "ops", "--url", &list]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("the outcome is unknown"), "{stderr}");
    assert_eq!(holder(&b, "vm-13").map(|(c, _)| c), Some("ops".to_owned()));
}

#[test]
fn lockd_run_whose_acquire_outlasted_the_lease_renews_before_starting() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    a.signal(libc::SIGSTOP);
    // The paused host takes the acquire's first try and its 4 s, longer
    // than the 3 s lease counted from when the acquire set out.
    let output = Command::new(LOCKD)
        .args([
            "run",
            "vm-12",
            "--client",
            "job",
            "--ttl",
            "3",
            "--timeout",
            "4",
        ])
        .args(["--url", &format!("{},{}", a.url(), b.url())])
        .args(["--", "sh", "-c", "echo $LOCKD_TOKEN"])
        .output()
        .unwrap();
    a.signal(libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    let token: i64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(token > 0, "{stderr}");
    assert!(
        calls(&b, "lockd.renew") >= 1.0,
        "renewed before starting: {stderr}"
    );
}
