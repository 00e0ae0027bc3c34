//! TLS on lockd's own port: Python's xmlrpc.client and the CLI over https,
//! mutual TLS and roles from client certificates, certificates reloaded on
//! SIGHUP, and clients that start handshakes they never finish.

use crate::pki::{CLIENT, Key, Pki, SERVER};
use crate::support::{
    GOCEPT_DOCTEST, LOCKD, TestServer, http11, read_http_answer, run_ok, sample, wait_until,
};
use lockd::tls::{ClientFiles, Stream};
use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A daemon serving TLS with `pki`'s `cert`, and `args`.
fn serve(pki: &Pki, cert: &str, args: &[&str]) -> TestServer {
    let mut all = vec![
        "--tls-cert".to_owned(),
        pki.arg(cert),
        "--tls-key".to_owned(),
        pki.arg(&format!("{cert}-key")),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let server = TestServer::start_with(&all);
    assert_eq!(server.scheme, "https");
    server
}

/// Runs `tests/python/<script>` trusting `pki`'s CA, showing `cert` if given.
fn python(pki: &Pki, cert: Option<&str>, script: &str, args: &[&str]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/");
    let mut command = Command::new("python3");
    command
        .arg(format!("{path}{script}"))
        .args(args)
        .env("LOCKD_CA", pki.file("ca"));
    if let Some(cert) = cert {
        command
            .env("LOCKD_CERT", pki.file(cert))
            .env("LOCKD_KEY", pki.file(&format!("{cert}-key")));
    }
    run_ok(&mut command)
}

/// Runs the CLI against `server`, trusting `pki`'s CA, showing `cert` if
/// given.
fn cli(server: &TestServer, pki: &Pki, cert: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(LOCKD);
    command
        .args(args)
        .args(["--url", &server.url(), "--ca", &pki.arg("ca")]);
    if let Some(cert) = cert {
        command
            .args(["--cert", &pki.arg(cert)])
            .args(["--key", &pki.arg(&format!("{cert}-key"))]);
    }
    command.output().unwrap()
}

/// A TLS connection to `server` made in this process, trusting `pki`'s
/// CA (and `other-ca`'s, to see certificates of either).
fn connect(server: &TestServer, pki: &Pki, cert: Option<&str>) -> Result<Stream, String> {
    let both = pki.file("both-cas");
    let (cert_file, key_file) = match cert {
        Some(cert) => (Some(pki.file(cert)), Some(pki.file(&format!("{cert}-key")))),
        None => (None, None),
    };
    let files = ClientFiles {
        ca: Some(&both),
        cert: cert_file.as_deref(),
        key: key_file.as_deref(),
    };
    let tcp = TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Stream::new(tcp, Some(&files.config()?), "127.0.0.1")
}

/// The user the server's certificate names, as seen on `stream`.
fn server_name(stream: &Stream) -> String {
    let Stream::Tls(tls) = stream else {
        panic!("not TLS")
    };
    let chain = tls.conn.peer_certificates().unwrap();
    lockd::tls::user_of(&chain[0]).unwrap()
}

/// One XML-RPC call over `stream`, kept open (HTTP/1.1); the answer's body.
fn keep_alive_call(stream: &mut Stream, method: &str, params: &[&str]) -> String {
    let params: Vec<lockd::xmlrpc::Value> = params.iter().map(|&p| p.into()).collect();
    send_call(stream, method, &params);
    let (_, answer) = read_http_answer(&mut BufReader::new(stream));
    answer
}

/// `/metrics` of a daemon serving TLS.
fn metrics(server: &TestServer, pki: &Pki) -> String {
    let mut stream = connect(server, pki, None).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: lockd\r\n\r\n").unwrap();
    stream.flush().unwrap();
    read_http_answer(&mut BufReader::new(&mut stream)).1
}

/// Writes a call to `stream` without waiting for its answer.
fn send_call(stream: &mut Stream, method: &str, params: &[lockd::xmlrpc::Value]) {
    let body = lockd::xmlrpc::encode_call(method, params);
    stream.write_all(http11(&body).as_bytes()).unwrap();
    stream.flush().unwrap();
}

/// CPU seconds `pid` has used, user and system.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// How long a fresh client's call over TLS takes to be answered.
fn fresh_call(server: &TestServer, pki: &Pki) -> Duration {
    let start = Instant::now();
    let mut stream = connect(server, pki, None).unwrap();
    let answer = keep_alive_call(&mut stream, "lockd.status", &["probe"]);
    assert!(answer.contains("<nil/>"), "{answer}");
    start.elapsed()
}

#[test]
fn python_plays_the_gocept_doctest_over_https_and_the_cli_reads_what_it_left() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &[]);
    let played = python(&pki, None, "scenario.py", &[&server.url()]);
    assert_eq!(played, GOCEPT_DOCTEST);
    let status = cli(&server, &pki, None, &["status", "resource2"]);
    assert!(status.status.success(), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stdout).starts_with("resource2\tclient2\t"),
        "{status:?}"
    );
    // Without the CA, the CLI does not trust the daemon.
    let untrusted = Command::new(LOCKD)
        .args(["status", "resource2", "--url", &server.url()])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(69), "{untrusted:?}");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("UnknownIssuer"),
        "{untrusted:?}"
    );
}

#[test]
fn rsa_ecdsa_and_ed25519_keys_all_serve() {
    let pki = Pki::new();
    for (name, kind) in [
        ("rsa", Key::Rsa),
        ("ecdsa", Key::EcdsaP256),
        ("ed25519", Key::Ed25519),
    ] {
        pki.issue(name, &format!("/CN={name}"), "ca", kind, SERVER);
        let server = serve(&pki, name, &[]);
        let lock = cli(&server, &pki, None, &["lock", "vm-42", name]);
        assert!(lock.status.success(), "{name}: {lock:?}");
        let mut stream = connect(&server, &pki, None).unwrap();
        assert_eq!(server_name(&stream), name);
        let answer = keep_alive_call(&mut stream, "lockd.status", &["vm-42"]);
        assert!(
            answer.contains(&format!("<string>{name}</string>")),
            "{answer}"
        );
    }
}

#[test]
fn mutual_tls_admits_clients_of_its_ca_and_refuses_the_others_in_the_handshake() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &["--tls-client-ca", &pki.arg("ca")]);
    let admitted = python(
        &pki,
        Some("client"),
        "tls_call.py",
        &[&server.url(), "lock", "r", "c"],
    );
    assert_eq!(admitted, "ok None\n");
    let played = python(&pki, Some("client"), "scenario.py", &[&server.url()]);
    assert!(
        played.starts_with("lock('resource1', 'client1') -> None"),
        "{played}"
    );

    for cert in [None, Some("other-client")] {
        let refused = python(
            &pki,
            cert,
            "tls_call.py",
            &[&server.url(), "lock", "r", "x"],
        );
        assert!(
            refused.starts_with("refused SSLError"),
            "{cert:?}: {refused}"
        );
        let output = cli(&server, &pki, cert, &["lock", "r", "x"]);
        assert_eq!(output.status.code(), Some(69), "{cert:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("CertificateRequired") || stderr.contains("UnknownCA"),
            "{cert:?}: {stderr}"
        );
    }
    let output = cli(&server, &pki, Some("client"), &["status", "r"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("r\tc\t"),
        "{output:?}"
    );
}

#[test]
fn the_certificates_user_has_its_auth_file_role_whatever_password_comes_along() {
    let pki = Pki::new();
    pki.issue("oncall", "/CN=oncall", "ca", Key::EcdsaP256, CLIENT);
    pki.issue(
        "vm-manager",
        "/O=lockd/CN=vm-manager",
        "ca",
        Key::EcdsaP256,
        CLIENT,
    );
    pki.issue("stranger", "/CN=stranger", "ca", Key::EcdsaP256, CLIENT);
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    std::fs::write(&users, "oncall::operator\nvm-manager:\nadmin:pw:operator\n").unwrap();
    let server = serve(
        &pki,
        "server",
        &[
            "--tls-client-ca",
            &pki.arg("ca"),
            "--auth-file",
            users.to_str().unwrap(),
        ],
    );
    let lock = cli(
        &server,
        &pki,
        Some("vm-manager"),
        &["lock", "vm-7", "host-b"],
    );
    assert!(lock.status.success(), "{lock:?}");
    // A client may not break a lock, even with an operator's password.
    let url = server.url().replace("https://", "https://admin:pw@");
    let broken = python(
        &pki,
        Some("vm-manager"),
        "tls_call.py",
        &[&url, "lockd.break_lock", "vm-7", "by hand"],
    );
    assert_eq!(broken, "fault -32500\n");
    let broken = python(
        &pki,
        Some("oncall"),
        "tls_call.py",
        &[&server.url(), "lockd.break_lock", "vm-7", "by hand"],
    );
    assert!(broken.starts_with("ok {"), "{broken}");
    // A user the file does not list gets nothing.
    let output = cli(&server, &pki, Some("stranger"), &["status", "vm-7"]);
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("HTTP 403"),
        "{output:?}"
    );

    // Taken out of the file, a user is refused from its next request on
    // (SIGHUP), on a connection it already has too.
    let mut open = connect(&server, &pki, Some("vm-manager")).unwrap();
    assert!(keep_alive_call(&mut open, "lockd.status", &["vm-7"]).contains("<nil/>"));
    std::fs::write(&users, "oncall::operator\nadmin:pw:operator\n").unwrap();
    server.signal(libc::SIGHUP);
    wait_until("the credentials file reloaded", || {
        server.log().contains("credentials file reloaded")
    });
    let refused = keep_alive_call(&mut open, "lockd.status", &["vm-7"]);
    assert_eq!(refused, "\"vm-manager\" is not a user of this lockd\n");
}

#[test]
fn a_loopback_connection_that_skips_the_tls_port_is_refused() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &[]);
    let public: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();
    // The daemon's other listening port: its HTTP server's, on loopback.
    let listening = run_ok(Command::new("ss").args(["-Hltnp"]));
    let pid = format!("pid={},", server.pid());
    let inner = listening
        .lines()
        .filter(|line| line.contains(&pid))
        .filter_map(|line| line.split_whitespace().nth(3))
        .find(|addr| !addr.ends_with(&format!(":{public}")))
        .expect("a second listening port")
        .to_owned();
    let mut stream = Stream::Plain(lockd::tls::Timed::new(TcpStream::connect(&inner).unwrap()));
    let answer = keep_alive_call(&mut stream, "lockd.status", &["r"]);
    assert_eq!(answer, "lockd takes connections on its TLS port only\n");
}

#[test]
fn sighup_serves_new_certificates_to_new_connections_and_old_ones_go_on() {
    let pki = Pki::new();
    pki.issue("first", "/CN=first", "ca", Key::EcdsaP256, SERVER);
    pki.issue("second", "/CN=second", "other-ca", Key::Rsa, SERVER);
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::copy(pki.file("first"), &cert).unwrap();
    std::fs::copy(pki.file("first-key"), &key).unwrap();
    let server = TestServer::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut old = connect(&server, &pki, None).unwrap();
    assert_eq!(server_name(&old), "first");
    assert!(keep_alive_call(&mut old, "lock", &["r", "old"]).contains("<nil/>"));

    std::fs::copy(pki.file("second"), &cert).unwrap();
    std::fs::copy(pki.file("second-key"), &key).unwrap();
    server.signal(libc::SIGHUP);
    wait_until("new connections get the second certificate", || {
        server_name(&connect(&server, &pki, None).unwrap()) == "second"
    });
    // (Logged once the new files are in use: an event of its own.)
    wait_until("the reload to be logged", || {
        server.log().contains("TLS certificates reloaded")
    });
    let answer = keep_alive_call(&mut old, "lockd.status", &["r"]);
    assert!(answer.contains("<string>old</string>"), "{answer}");

    // Files that do not load leave the certificate in use as it was.
    std::fs::write(&key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    wait_until("the failed reload to be logged", || {
        server.log().contains("not reloaded")
    });
    assert_eq!(
        server_name(&connect(&server, &pki, None).unwrap()),
        "second"
    );
    assert!(keep_alive_call(&mut old, "unlock", &["r", "old"]).contains("<nil/>"));
}

/// A TLS 1.2 ClientHello, as a client that offers only TLS 1.2 sends it.
fn tls12_client_hello(pki: &Pki) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.file("ca")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "127.0.0.1".try_into().unwrap();
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[test]
fn a_tls12_hello_then_close_notify_and_a_hundred_stalled_handshakes_stop_nobody() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &["--tls-handshake-timeout", "3"]);
    fresh_call(&server, &pki);
    // A TLS 1.2 ClientHello, then a close_notify alert, the connection
    // kept open (what span rustls before 0.23.5 at full CPU for good).
    let mut hello_then_close = TcpStream::connect(&server.addr).unwrap();
    hello_then_close
        .write_all(&tls12_client_hello(&pki))
        .unwrap();
    hello_then_close
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00])
        .unwrap();
    // A hundred connections that never finish their handshake: half say
    // nothing, half send the start of a ClientHello.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut tcp = TcpStream::connect(&server.addr).unwrap();
            if i % 2 == 1 {
                tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                    .unwrap();
            }
            tcp
        })
        .collect();

    let before = cpu_seconds(server.pid());
    let window = Instant::now();
    let took = fresh_call(&server, &pki);
    println!("a fresh client served in {took:?} beside 101 stalled handshakes");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The daemon sleeps meanwhile: no core spinning.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(server.pid()) - before;
    let elapsed = window.elapsed().as_secs_f64();
    println!("CPU used over {elapsed:.1} s: {used:.2} s");
    assert!(used < 0.25 * elapsed, "{used} s of CPU in {elapsed} s");

    // Their handshakes time out and the daemon closes them.
    for mut tcp in stalled.into_iter().chain([hello_then_close]) {
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        if let Err(e) = tcp.read_to_end(&mut rest) {
            let timed_out = matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            assert!(!timed_out, "a stalled handshake was not closed: {e}");
        }
    }
    assert!(fresh_call(&server, &pki) < Duration::from_secs(1));
    // Each failed handshake is counted; none is left open.
    let scrape = || metrics(&server, &pki);
    let metrics = scrape();
    assert!(
        sample(&metrics, "lockd_tls_handshake_failures_total") >= 101.0,
        "{metrics}"
    );
    // Once the earlier clients' connections have wound down, the scraping
    // connection itself is the only one open.
    wait_until("no TLS connection open but the scrape's", || {
        sample(&scrape(), "lockd_tls_connections") == 1.0
    });
}

#[test]
fn a_tls_waiter_that_hangs_up_is_never_given_the_lock() {
    use lockd::xmlrpc::Value;
    let pki = Pki::new();
    let server = serve(&pki, "server", &[]);
    let waiters = |n: f64| {
        wait_until(&format!("{n} waiters"), || {
            sample(&metrics(&server, &pki), "lockd_waiters") == n
        })
    };
    let acquire = |client: &str| {
        let wait = Value::Struct(vec![("wait".into(), Value::Int(100))]);
        vec!["r".into(), client.into(), wait]
    };
    let mut holder = connect(&server, &pki, None).unwrap();
    assert!(keep_alive_call(&mut holder, "lock", &["r", "holder"]).contains("<nil/>"));
    let mut gone = connect(&server, &pki, None).unwrap();
    send_call(&mut gone, "lockd.acquire", &acquire("gone"));
    waiters(1.0);
    let mut behind = connect(&server, &pki, None).unwrap();
    send_call(&mut behind, "lockd.acquire", &acquire("behind"));
    waiters(2.0);
    // The client leaves: its relay shuts its loopback connection, which
    // the daemon sees as a waiter gone.
    drop(gone);
    waiters(1.0);
    assert!(keep_alive_call(&mut holder, "unlock", &["r", "holder"]).contains("<nil/>"));
    let (_, answer) = read_http_answer(&mut BufReader::new(&mut behind));
    assert!(answer.contains("<string>behind</string>"), "{answer}");
    assert!(!server.log().contains("client=gone"), "{}", server.log());
}

#[test]
fn tls_connections_past_max_connections_are_closed_and_served_again_once_others_close() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &["--max-connections", "3"]);
    let mut open: Vec<Stream> = (0..3)
        .map(|_| connect(&server, &pki, None).unwrap())
        .collect();
    for stream in &mut open {
        assert!(keep_alive_call(stream, "lockd.status", &["r"]).contains("<nil/>"));
    }
    // The fourth is closed before its handshake.
    let refused = connect(&server, &pki, None).map(drop);
    assert!(refused.is_err(), "a fourth connection was served");
    // One closes: new connections are served again.
    open.pop();
    wait_until("a new connection to be served", || {
        connect(&server, &pki, None)
            .map(|mut stream| keep_alive_call(&mut stream, "lockd.status", &["r"]))
            .is_ok_and(|answer| answer.contains("<nil/>"))
    });
    for stream in &mut open {
        assert!(keep_alive_call(stream, "lockd.status", &["r"]).contains("<nil/>"));
    }
}

#[test]
fn a_revoked_client_certificate_fails_the_handshake_and_sighup_reads_the_list_again() {
    let pki = Pki::new();
    pki.issue("revoked", "/CN=revoked", "ca", Key::EcdsaP256, CLIENT);
    let crl = pki.revoke("ca", &["revoked"]);
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("crl.pem");
    std::fs::copy(&crl, &list).unwrap();
    let server = serve(
        &pki,
        "server",
        &[
            "--tls-client-ca",
            &pki.arg("ca"),
            "--tls-client-crl",
            list.to_str().unwrap(),
        ],
    );
    let call = |cert: &str| {
        python(
            &pki,
            Some(cert),
            "tls_call.py",
            &[&server.url(), "lockd.status", "r"],
        )
    };
    assert_eq!(call("client"), "ok None\n");
    let refused = call("revoked");
    assert!(refused.starts_with("refused SSLError"), "{refused}");
    assert!(refused.contains("revoked"), "{refused}");

    // `client` revoked too: new connections are refused once the list is
    // read again; a connection already open goes on.
    let mut open = connect(&server, &pki, Some("client")).unwrap();
    std::fs::copy(pki.revoke("ca", &["client"]), &list).unwrap();
    server.signal(libc::SIGHUP);
    wait_until("the revoked client to be refused", || {
        call("client").starts_with("refused SSLError")
    });
    assert!(keep_alive_call(&mut open, "lockd.status", &["r"]).contains("<nil/>"));
    // A client CA without a list here: its certificates are refused.
    let other = serve(
        &pki,
        "server",
        &[
            "--tls-client-ca",
            &pki.arg("other-ca"),
            "--tls-client-crl",
            list.to_str().unwrap(),
        ],
    );
    let refused = python(
        &pki,
        Some("other-client"),
        "tls_call.py",
        &[&other.url(), "lockd.status", "r"],
    );
    assert!(refused.starts_with("refused SSLError"), "{refused}");
}

#[test]
fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &[]);
    let (status, body) = crate::support::raw_http(&server.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        (status, body.as_str()),
        (400, "lockd serves https on this port only\n")
    );
    let http = server.url().replace("https://", "http://");
    let output = Command::new(LOCKD)
        .args(["status", "r", "--url", &http])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("serves https"),
        "{output:?}"
    );
    // TLS clients are served as before.
    fresh_call(&server, &pki);
}

#[test]
fn sigterm_answers_tls_waiters_and_ends_every_tls_connection_with_close_notify() {
    use lockd::xmlrpc::Value;
    let pki = Pki::new();
    let mut server = serve(&pki, "server", &[]);
    let mut idle = connect(&server, &pki, None).unwrap();
    assert!(keep_alive_call(&mut idle, "lock", &["r", "holder"]).contains("<nil/>"));
    let mut waiter = connect(&server, &pki, None).unwrap();
    let wait = Value::Struct(vec![("wait".into(), Value::Int(100))]);
    send_call(
        &mut waiter,
        "lockd.acquire",
        &["r".into(), "w".into(), wait],
    );
    wait_until("the waiter in line", || {
        sample(&metrics(&server, &pki), "lockd_waiters") == 1.0
    });

    server.signal(libc::SIGTERM);
    // The waiter is answered (fault 6: the daemon stops), then both
    // connections end cleanly: close_notify, not a cut connection.
    let (_, answer) = read_http_answer(&mut BufReader::new(&mut waiter));
    assert!(answer.contains("<int>6</int>"), "{answer}");
    for (name, stream) in [("waiter", &mut waiter), ("idle", &mut idle)] {
        let mut rest = Vec::new();
        let end = stream.read_to_end(&mut rest);
        assert!(end.is_ok(), "{name}: {end:?}");
    }
    assert!(server.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_tls_call_may_wait_longer_than_the_idle_timeout_but_a_client_that_never_reads_is_closed() {
    let pki = Pki::new();
    let server = serve(&pki, "server", &["--idle-timeout", "1"]);
    let mut holder = connect(&server, &pki, None).unwrap();
    assert!(keep_alive_call(&mut holder, "lock", &["r", "holder"]).contains("<nil/>"));
    // A wait three times the idle timeout is answered when it ends, as
    // over plain HTTP: a waiting call is not an idle connection.
    let mut waiter = connect(&server, &pki, None).unwrap();
    let wait = lockd::xmlrpc::Value::Struct(vec![("wait".into(), lockd::xmlrpc::Value::Int(3))]);
    let start = Instant::now();
    send_call(
        &mut waiter,
        "lockd.acquire",
        &["r".into(), "w".into(), wait],
    );
    let (status, answer) = read_http_answer(&mut BufReader::new(&mut waiter));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(answer.contains("<int>6</int>"), "{answer}");
    assert!(start.elapsed() >= Duration::from_secs(3));

    // A client that sends calls and never reads the answers is closed,
    // and its thread goes.
    drop((holder, waiter));
    let mut greedy = connect(&server, &pki, None).unwrap();
    let Stream::Tls(tls) = &mut greedy else {
        panic!("not TLS")
    };
    tls.sock
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let params: Vec<lockd::xmlrpc::Value> = vec!["r".into()];
    let body = lockd::xmlrpc::encode_call("lockd.status", &params);
    let request = http11(&body);
    for _ in 0..100_000 {
        if greedy.write_all(request.as_bytes()).is_err() {
            break;
        }
    }
    wait_until("only the scraping connection open", || {
        sample(&metrics(&server, &pki), "lockd_tls_connections") == 1.0
    });
}
