//! The lock component outside the daemon, from PyPI's wasmtime packages
//! (tests/setup.sh installs them in target/test-python): in-process in
//! Python through python/lockd_component.py, and under the wasmtime CLI,
//! as docs/embedding.md shows them; and the README's Python blocks (code
//! blocks run as written). Each writes a lock directory the native daemon
//! then reads.

use crate::support::{
    GOCEPT_DOCTEST, LOCKD, TestServer, doc_block, python_doctests, run_ok as run, temp_lock_dir,
};
use lockd::xmlrpc::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const README: &str = include_str!("../../README.md");
const EMBEDDING: &str = include_str!("../../docs/embedding.md");

/// `path` in the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `bin` of the tests' Python environment.
fn venv(bin: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-python/bin")
        .join(bin);
    assert!(
        path.exists(),
        "{} is missing: run tests/setup.sh",
        path.display()
    );
    path
}

/// The component exactly as the daemon runs it, in `dir`.
fn component(dir: &Path) -> PathBuf {
    let wasm = dir.join("lockd.wasm");
    run(Command::new(LOCKD).arg("component").arg("--out").arg(&wasm));
    wasm
}

fn holder(server: &TestServer, resource: &str) -> Value {
    server.call("lockd.status", &[resource]).unwrap()
}

#[test]
fn the_component_in_python_plays_the_doctest_and_the_daemon_reads_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = component(tmp.path());
    let (_dir_tmp, dir) = temp_lock_dir();
    let script = repo("tests/python/component.py");
    let printed = run(Command::new(venv("python"))
        .arg(script)
        .arg(&wasm)
        .arg(&dir));
    assert_eq!(printed, GOCEPT_DOCTEST);

    let server = TestServer::start_in(&dir, &[]);
    let resource2 = holder(&server, "resource2");
    assert_eq!(
        resource2.member("client").and_then(Value::as_str),
        Some("client2")
    );
    let job = holder(&server, "job");
    assert_eq!(
        job.member("client").and_then(Value::as_str),
        Some("worker-1")
    );
    assert!(
        matches!(job.member("ttl"), Some(Value::Double(t)) if *t == 30.0),
        "{job:?}"
    );
    assert_eq!(holder(&server, "resource1"), Value::Nil);
    let fault = server.call("lock", &["resource2", "other"]).unwrap_err();
    assert_eq!(fault.code, 1, "{fault:?}");
}

#[test]
fn the_embedding_docs_python_recipe_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = component(tmp.path());
    let (_dir_tmp, dir) = temp_lock_dir();
    let recipe = doc_block(EMBEDDING, "**Python**", "python")
        .replace("/path/to/locks", &dir.to_string_lossy())
        .replace("\"lockd.wasm\"", &format!("{:?}", wasm.to_string_lossy()));
    let python = repo("python");
    let printed = run(Command::new(venv("python"))
        .env("PYTHONPATH", python)
        .args(["-c", &recipe]));
    assert_eq!(printed, "1 Resource already locked by 'host-a'\n");
    let server = TestServer::start_in(&dir, &[]);
    assert_eq!(holder(&server, "job"), Value::Nil);
    let vm = holder(&server, "vm-42");
    assert_eq!(vm.member("client").and_then(Value::as_str), Some("host-a"));
}

#[test]
fn the_embedding_docs_wasmtime_run_lines_print_what_their_comments_say() {
    let tmp = tempfile::tempdir().unwrap();
    component(tmp.path());
    std::fs::create_dir(tmp.path().join("locks")).unwrap();
    let block = doc_block(EMBEDDING, "**`wasmtime run`**", "sh");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| l.starts_with("wasmtime run"))
        .collect();
    assert_eq!(lines.len(), 2, "{block}");
    for line in lines {
        let (command, said) = line.split_once('#').unwrap();
        let printed = run(Command::new("sh")
            .current_dir(tmp.path())
            .env(
                "PATH",
                format!("{}:{}", venv("").display(), std::env::var("PATH").unwrap()),
            )
            .args(["-c", command]));
        assert_eq!(printed.trim(), said.trim(), "{command}");
    }
    let server = TestServer::start_in(&tmp.path().join("locks"), &[]);
    let vm = holder(&server, "vm-42");
    assert_eq!(vm.member("client").and_then(Value::as_str), Some("host-a"));
}

/// Runs the Python doctests (blocks with `>>>`) of `doc` against a fresh
/// daemon, which is returned.
fn doctests(doc: &str) -> TestServer {
    let server = TestServer::start();
    python_doctests(doc, &server.url(), Path::new("."));
    server
}

#[test]
fn the_protocol_docs_python_session_runs_as_written() {
    let server = doctests(include_str!("../../docs/protocol.md"));
    assert_eq!(holder(&server, "vm-42"), Value::Nil);
}

#[test]
fn the_readmes_python_blocks_run_as_written() {
    // The doctest of the quick start, against a daemon.
    let server = doctests(README);
    assert_eq!(holder(&server, "vm-42"), Value::Nil);

    // The component in Python, in a directory with lockd.wasm.
    let tmp = tempfile::tempdir().unwrap();
    component(tmp.path());
    let recipe = doc_block(README, "## The rules in your own program", "python");
    let python = repo("python");
    run(Command::new(venv("python"))
        .current_dir(tmp.path())
        .env("PYTHONPATH", python)
        .args(["-c", &recipe]));
    let server = TestServer::start_in(&tmp.path().join("locks"), &[]);
    let vm = holder(&server, "vm-42");
    assert_eq!(vm.member("client").and_then(Value::as_str), Some("host-a"));
}

#[test]
fn a_python_lock_dir_and_a_daemon_never_share_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = component(tmp.path());
    let (_dir_tmp, dir) = temp_lock_dir();
    let python = repo("python");
    let open = "import sys\n\
                from lockd_component import LockDir, StorageError\n\
                try:\n    \
                    locks = LockDir(sys.argv[1], wasm=sys.argv[2])\n    \
                    print('opened', flush=True)\n    \
                    sys.stdin.read()\n\
                except StorageError as e:\n    \
                    print(e.code, e)\n";
    let python_open = || {
        Command::new(venv("python"))
            .env("PYTHONPATH", &python)
            .args(["-c", open])
            .arg(&dir)
            .arg(&wasm)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A daemon serves it: Python is refused.
    let server = TestServer::start_in(&dir, &[]);
    let refused = python_open().wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(said.starts_with("-32603 another process (pid "), "{said}");
    drop(server);
    // Python has it open: a daemon is refused.
    let mut holder = python_open();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "opened\n");
    let daemon = Command::new(LOCKD)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!daemon.status.success());
    let err = String::from_utf8_lossy(&daemon.stderr);
    assert!(err.contains("already using the lock directory"), "{err}");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}
