//! The lock component outside the daemon, from PyPI's wasmtime packages
//! (tests/setup.sh installs them in target/test-python): in-process in
//! Python through python/lockd_component.py, and under the wasmtime CLI,
//! as the README shows them (its code blocks run as written). Each writes
//! a lock directory the native daemon then reads.

use crate::support::{GOCEPT_DOCTEST, LOCKD, TestServer, run_ok as run, temp_lock_dir};
use lockd::xmlrpc::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/component.py");
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

/// The README's block of `language` that follows `marker`.
fn readme_block(marker: &str, language: &str) -> String {
    let readme = include_str!("../../README.md");
    let after = &readme[readme.find(marker).expect(marker)..];
    let fence = format!("```{language}\n");
    let start = after.find(&fence).expect(&fence) + fence.len();
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_owned()
}

#[test]
fn the_readme_python_recipe_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = component(tmp.path());
    let (_dir_tmp, dir) = temp_lock_dir();
    let recipe = readme_block("**Python**", "python")
        .replace("/path/to/locks", &dir.to_string_lossy())
        .replace("\"lockd.wasm\"", &format!("{:?}", wasm.to_string_lossy()));
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
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
fn the_readme_wasmtime_run_lines_print_what_their_comments_say() {
    let tmp = tempfile::tempdir().unwrap();
    component(tmp.path());
    std::fs::create_dir(tmp.path().join("locks")).unwrap();
    let block = readme_block("**`wasmtime run`**", "sh");
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
