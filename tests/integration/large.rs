//! A large lock table: 100,000 held locks listed in pages while others
//! come and go, counted, shown on a small status page, and printed whole
//! by `lockd list`.

use crate::support::{LOCKD, TestServer, raw_http, run_ok, temp_lock_dir};
use lockd::xmlrpc::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

const HELD: usize = 100_000;

fn page(server: &TestServer, prefix: &str, after: Option<&str>, limit: i32) -> Vec<Value> {
    let mut options = vec![("limit".to_owned(), Value::Int(limit))];
    if let Some(after) = after {
        options.push(("after".to_owned(), after.into()));
    }
    match server
        .client()
        .call("lockd.list", &[prefix.into(), Value::Struct(options)])
        .unwrap()
    {
        Value::Array(locks) => locks,
        other => panic!("{other:?}"),
    }
}

fn resource(lock: &Value) -> String {
    lock.member("resource")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

#[test]
fn a_hundred_thousand_locks_are_paged_counted_and_shown_in_a_small_page() {
    let (_tmp, dir) = temp_lock_dir();
    // Lock files as gocept.lockd wrote them: a holder per file.
    let mut held: Vec<String> = (0..HELD).map(|i| format!("held-{i:06}")).collect();
    for name in &held {
        std::fs::write(dir.join(format!("{name}.resource.lock")), "holder\n").unwrap();
    }
    held.sort();
    let server = TestServer::start_in(&dir, &[]);

    // Others take and release locks among them while a client pages.
    let churning = AtomicBool::new(true);
    let listed = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while churning.load(Ordering::Relaxed) {
                let name = format!("held-{:06}x", (i * 7919) % HELD);
                server.call("lock", &[&name, "churner"]).unwrap();
                server.call("unlock", &[&name, "churner"]).unwrap();
                i += 1;
            }
        });
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let locks = page(&server, "held-", after.as_deref(), 1000);
            assert!(locks.len() <= 1000);
            let Some(last) = locks.last() else { break };
            after = Some(resource(last));
            listed.extend(locks.iter().map(resource));
        }
        churning.store(false, Ordering::Relaxed);
        listed
    });
    // In order, each held lock exactly once (and the churner's, if held
    // when its page was read, in their places).
    assert!(listed.is_sorted());
    let kept: Vec<&String> = listed.iter().filter(|r| !r.ends_with('x')).collect();
    assert_eq!(kept.len(), HELD);
    assert!(kept.iter().zip(&held).all(|(a, b)| *a == b));

    let count = server
        .client()
        .call(
            "lockd.list",
            &[
                "held-".into(),
                Value::Struct(vec![("count".into(), Value::Bool(true))]),
            ],
        )
        .unwrap();
    assert_eq!(count.as_i64(), Some(HELD as i64));
    assert!(page(&server, "held-", Some("held-099998"), 1000).len() == 1);

    // The status page: the total, a few hundred rows, under 1 MB.
    let (status, body) = raw_http(&server.addr, b"GET /?prefix=held-0999 HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        body.contains("100 locks held starting with “held-0999”"),
        "{body}"
    );
    let (status, body) = raw_http(&server.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.len() < 1_000_000, "{} bytes", body.len());
    assert!(body.contains("100000 locks held"));
    assert_eq!(body.matches("<tr><td class=resource>").count(), 300);
    assert!(
        body.contains("after=held-000299\">next 300</a>"),
        "a link to the next page"
    );

    // `lockd list` prints every one.
    let printed = run_ok(Command::new(LOCKD).args(["list", "held-", "--url", &server.url()]));
    assert_eq!(printed.lines().count(), HELD);
}
