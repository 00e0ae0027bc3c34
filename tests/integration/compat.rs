//! gocept.lockd compatibility, seen from Python's `xmlrpc.client`.

use crate::support::{TestServer, python, read_http_answer};

#[test]
fn the_gocept_lockd_doctest_through_python_with_sync_always() {
    the_gocept_lockd_doctest_through_python("always");
}

#[test]
fn the_gocept_lockd_doctest_through_python_with_sync_none() {
    the_gocept_lockd_doctest_through_python("none");
}

fn the_gocept_lockd_doctest_through_python(sync: &str) {
    let server = TestServer::start_with(&["--sync", sync]);
    let got = python("scenario.py", &[&server.url()]);
    assert_eq!(got, crate::support::GOCEPT_DOCTEST);
    // The one lock left is a gocept.lockd lock file: the client on line one.
    let content = std::fs::read_to_string(server.dir.join("resource2.resource.lock")).unwrap();
    assert_eq!(content.lines().next(), Some("client2"));
    assert!(!server.dir.join("resource1.resource.lock").exists());
}

#[test]
fn introspection_and_multicall_through_python() {
    let server = TestServer::start();
    let got = python("introspect.py", &[&server.url()]);
    let want = "\
methods ['lock', 'lockd.acquire', 'lockd.break_lock', 'lockd.check', 'lockd.list', 'lockd.release', 'lockd.renew', 'lockd.status', 'system.listMethods', 'system.methodHelp', 'system.methodSignature', 'system.multicall', 'unlock']
signature [['nil', 'string', 'string']]
help unlock(resource, client)
multicall None
multicall Fault(1, \"Resource already locked by 'a'\")
multicall None
";
    assert_eq!(got, want);
}

#[test]
fn rpc2_path_and_keep_alive_serve_many_calls_on_one_connection() {
    use std::io::{BufReader, Write as _};
    let server = TestServer::start();
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for (i, path) in ["/", "/RPC2", "/", "/RPC2"].iter().enumerate() {
        let method = if i % 2 == 0 { "lock" } else { "unlock" };
        let body = crate::support::call_xml(method, &["ka", "c"]);
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let (status, body) = read_http_answer(&mut reader);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body.contains("<nil/>"), "{method} on {path}: {body}");
    }
}
