//! The lock component in a second, independent WebAssembly host: Node.js,
//! through jco and preview2-shim (tests/jco). It plays the gocept.lockd
//! scenario on a directory, which the native daemon then reads.

use crate::support::{LOCKD, TestServer, run_ok as run, temp_lock_dir};
use lockd::xmlrpc::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn the_component_runs_in_node_and_the_daemon_reads_what_it_wrote() {
    let jco = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/jco");
    assert!(
        jco.join("node_modules/@bytecodealliance/jco").exists(),
        "the Node.js packages are missing: run `npm ci` in tests/jco (tests/setup.sh does)"
    );
    // The component exactly as the daemon runs it, transpiled to JavaScript.
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("lockd.wasm");
    run(Command::new(LOCKD).arg("component").arg("--out").arg(&wasm));
    run(Command::new("node")
        .current_dir(&jco)
        .arg("node_modules/.bin/jco")
        .arg("transpile")
        .arg(&wasm)
        .args([
            "-o",
            "out",
            "--name",
            "lockd",
            "--map",
            "wasi:filesystem/*=../fs-adapter.js#*",
        ]));

    let (_dir_tmp, dir) = temp_lock_dir();
    let printed = run(Command::new("node")
        .current_dir(&jco)
        .args(["scenario.mjs", "out"])
        .arg(&dir));
    let expected = "\
open -> held 0
lock('resource1', 'client1') -> ok
lock('resource1', 'client2') -> error already-locked \"client1\"
lock('resource2', 'client2') -> ok
unlock('resource1', 'client2') -> error not-owner \"client1\"
unlock('resource1', 'client1') -> ok
unlock('resource1', 'client1') -> error not-locked
holder('resource2') -> \"client2\"
apply([acquire('vm/1', 'node')]) -> {\"client\":\"node\",\"token\":3}
";
    assert_eq!(printed, expected);

    // The native daemon on the same directory sees the same locks.
    let server = TestServer::start_in(&dir, &[]);
    let status = |resource: &str| server.call("lockd.status", &[resource]).unwrap();
    let resource2 = status("resource2");
    assert_eq!(resource2.member("client"), Some(&Value::from("client2")));
    assert_eq!(resource2.member("token"), Some(&Value::I8(2)));
    assert_eq!(status("vm/1").member("client"), Some(&Value::from("node")));
    assert_eq!(status("resource1"), Value::Nil);
    let fault = server.call("lock", &["resource2", "native"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'client2'");
    // Tokens go on from where the Node.js host left them.
    let next = server
        .client()
        .call("lockd.acquire", &["fresh".into(), "native".into()])
        .unwrap();
    assert!(
        matches!(next.member("token"), Some(Value::I8(t)) if *t > 3),
        "{next:?}"
    );
}
