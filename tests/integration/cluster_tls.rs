//! Cluster mode over TLS to etcd: members that show certificates of a CA
//! lockd is told of, and ask for lockd's.

use crate::etcd_cluster::EtcdCluster;
use crate::support::{TestServer, python, raw_http, temp_lock_dir};
use lockd::client::CallError;

#[test]
fn hosts_with_the_ca_and_a_client_certificate_serve_over_tls_to_etcd() {
    let cluster = EtcdCluster::start_tls(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let got = python("scenario.py", &[&a.url(), &b.url()]);
    assert_eq!(got, crate::support::GOCEPT_DOCTEST);
    // Waiters on both hosts, woken through watches over TLS.
    let urls = format!("{},{}", a.url(), b.url());
    python("fencing.py", &[&urls, "waiting"]);
    let (status, page) = raw_http(&a.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        page.contains("cluster mode on etcd https://127.0.0.1:"),
        "{page}"
    );
}

#[test]
fn without_a_valid_client_certificate_or_with_another_ca_nothing_is_served() {
    let cluster = EtcdCluster::start_tls(3);
    let pki = cluster.pki();
    let urls = cluster.urls().join(",");
    // --etcd-ca, then --etcd-cert and --etcd-key if a client is named.
    let tls = |ca: &str, client: Option<&str>| {
        let mut args = vec!["--etcd-ca".to_owned(), pki.arg(ca)];
        if let Some(client) = client {
            args.extend(["--etcd-cert".to_owned(), pki.arg(client)]);
            args.extend(["--etcd-key".to_owned(), pki.arg(&format!("{client}-key"))]);
        }
        args
    };
    for (what, tls) in [
        ("no client certificate", tls("ca", None)),
        (
            "a client certificate of another CA",
            tls("ca", Some("other-client")),
        ),
        (
            "members' certificates checked against another CA",
            tls("other-ca", Some("client")),
        ),
    ] {
        let (_tmp, dir) = temp_lock_dir();
        let mut args = vec!["--etcd", &urls];
        args.extend(tls.iter().map(String::as_str));
        let host = TestServer::start_in(&dir, &args);
        match host.client().call("lock", &["r".into(), "c".into()]) {
            Err(CallError::Fault(f)) => {
                assert_eq!(f.code, 7, "{what}: {f}");
                assert!(f.message.contains("did not happen"), "{what}: {f}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            raw_http(&host.addr, b"GET /healthz HTTP/1.0\r\n\r\n").0,
            503,
            "{what}"
        );
    }
    // Plain HTTP to TLS endpoints, or TLS without a CA, is refused at
    // start.
    for args in [
        vec!["--etcd", urls.as_str()].as_slice(),
        &[
            "--etcd",
            &urls.replace("https", "http"),
            "--etcd-ca",
            &pki.arg("ca"),
        ],
    ] {
        let (_tmp, dir) = temp_lock_dir();
        let out = std::process::Command::new(crate::support::LOCKD)
            .arg("serve")
            .args(["--dir", &dir.to_string_lossy(), "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("https"), "{args:?}: {err}");
    }
}
