//! `/healthz`, `/metrics` and the status page at `/`.

use crate::support::{TestServer, post, raw_http, sample, wait_until};
use lockd::xmlrpc::Value;

fn get(server: &TestServer, path: &str) -> (u16, String) {
    raw_http(
        &server.addr,
        format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(),
    )
}

#[test]
fn healthz_is_200_while_the_directory_is_writable_and_503_when_not() {
    let server = TestServer::start();
    assert_eq!(get(&server, "/healthz"), (200, "ok\n".to_owned()));
    let away = server.dir.with_extension("away");
    std::fs::rename(&server.dir, &away).unwrap();
    let (status, body) = get(&server, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot write"), "{body}");
    std::fs::rename(&away, &server.dir).unwrap();
    assert_eq!(get(&server, "/healthz").0, 200);
}

#[test]
fn metrics_count_a_scripted_workload_exactly() {
    let server = TestServer::start_with(&["--lock-delay", "0"]);
    let ok = |method: &str, params: &[&str]| server.call(method, params).unwrap();
    let fault = |method: &str, params: &[&str]| server.call(method, params).unwrap_err().code;
    ok("lock", &["a", "c"]);
    ok("lock", &["b", "c"]);
    ok("lock", &["c", "c"]);
    assert_eq!(fault("lock", &["a", "d"]), 1);
    ok("unlock", &["a", "c"]);
    ok("unlock", &["b", "c"]);
    assert_eq!(fault("unlock", &["b", "c"]), 2);
    let lease = Value::Struct(vec![("ttl".into(), Value::Double(0.2))]);
    server
        .client()
        .call("lockd.acquire", &["lease".into(), "c".into(), lease])
        .unwrap();
    ok("lockd.acquire", &["broken", "c"]);
    ok("lockd.break_lock", &["broken", "test"]);
    assert_eq!(fault("no.such.method", &[]), -32601);
    let (status, _) = post(&server.addr, "<methodCall><unclosed>");
    assert_eq!(status, 200);
    let mut scrapes = 0;
    wait_until("the lease to expire", || {
        scrapes += 1;
        server.metric("lockd_lease_expiries_total") == 1.0
    });
    let (status, scrape) = get(&server, "/metrics");
    assert_eq!(status, 200);

    let expect = [
        ("lockd_requests_total{method=\"lock\"}", 4.0),
        ("lockd_faults_total{method=\"lock\",code=\"1\"}", 1.0),
        ("lockd_requests_total{method=\"unlock\"}", 3.0),
        ("lockd_faults_total{method=\"unlock\",code=\"2\"}", 1.0),
        ("lockd_requests_total{method=\"lockd.acquire\"}", 2.0),
        ("lockd_requests_total{method=\"lockd.break_lock\"}", 1.0),
        ("lockd_requests_total{method=\"unknown\"}", 1.0),
        (
            "lockd_faults_total{method=\"unknown\",code=\"-32601\"}",
            1.0,
        ),
        ("lockd_requests_total{method=\"invalid\"}", 1.0),
        (
            "lockd_faults_total{method=\"invalid\",code=\"-32700\"}",
            1.0,
        ),
        // "c" is still held; the lease ran out; "broken" was broken.
        ("lockd_locks_held", 1.0),
        ("lockd_waiters", 0.0),
        ("lockd_lease_expiries_total", 1.0),
        ("lockd_lock_breaks_total", 1.0),
        // Every HTTP request before this scrape: the calls above and the
        // scrapes that waited for the lease to expire.
        (
            "lockd_request_duration_seconds_count",
            12.0 + f64::from(scrapes),
        ),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&scrape, name), value, "{name}\n{scrape}");
    }
    assert!(!scrape.contains("lockd_faults_total{method=\"lockd.acquire\""));
    // One batch or more committed changes; the histograms are cumulative.
    assert!(sample(&scrape, "lockd_commit_duration_seconds_count") >= 1.0);
    assert!(sample(&scrape, "lockd_batch_size_bucket{le=\"+Inf\"}") >= 10.0);
    let (_, again) = get(&server, "/metrics");
    assert_eq!(
        sample(&again, "lockd_request_duration_seconds_count"),
        13.0 + f64::from(scrapes)
    );
}

#[test]
fn the_status_page_lists_held_locks() {
    let server = TestServer::start();
    server.call("lock", &["vm/<1>", "host-a"]).unwrap();
    let lease = Value::Struct(vec![("ttl".into(), Value::Int(60))]);
    let lock = server
        .client()
        .call("lockd.acquire", &["disk 7".into(), "host-b".into(), lease])
        .unwrap();
    let Some(Value::I8(token)) = lock.member("token") else {
        panic!("{lock:?}")
    };
    let (status, page) = get(&server, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("2 locks held"));
    assert!(page.contains("<td class=resource>vm/&lt;1&gt;</td><td class=holder>host-a</td>"));
    assert!(page.contains(&format!(
        "<td class=resource>disk 7</td><td class=holder>host-b</td><td class=token>{token}</td>"
    )));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    assert_eq!(get(&server, "/nothing-here").0, 404);
}

/// `/metrics` with `accept` as the request's Accept header (none if
/// `None`): its Content-Type and body.
fn scrape(server: &TestServer, accept: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(stream, "GET /metrics HTTP/1.0\r\n{accept}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

#[test]
fn metrics_are_openmetrics_when_asked_for_and_the_prometheus_text_format_otherwise() {
    let server = TestServer::start();
    server.call("lock", &["a", "c"]).unwrap();
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let (content_type, body) = scrape(&server, accept);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.contains("# TYPE lockd_requests_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("lockd_requests_total{method=\"lock\"} 1\n"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = scrape(&server, Some(prometheus));
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.contains("# TYPE lockd_requests counter\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}
