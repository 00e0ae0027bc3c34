//! docs/embedding.md's recipe for embedding the component in another Rust
//! wasmtime host (`host/examples/embed.rs`), run on the component that
//! `lockd component` writes.

use crate::support::{LOCKD, TestServer, temp_lock_dir};
use std::process::Command;

#[path = "../../host/examples/embed.rs"]
mod example;

#[test]
fn the_embedding_recipe_runs_and_the_daemon_reads_its_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("lockd.wasm");
    let status = Command::new(LOCKD)
        .arg("component")
        .arg("--out")
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(status.success());
    let (_dir_tmp, dir) = temp_lock_dir();
    let answers = example::run(&wasm, &dir).unwrap();
    assert_eq!(
        answers,
        [
            "open: Ok(0)",
            "lock(vm-42, host-a): Ok(())",
            "lock(vm-42, host-b): Err(LockError::AlreadyLocked(\"host-a\"))",
            "unlock(vm-42, host-b): Err(LockError::NotOwner(\"host-a\"))",
            "holder(vm-42): Ok(Some(\"host-a\"))",
        ]
    );
    let server = TestServer::start_in(&dir, &[]);
    let holder = server.call("lockd.status", &["vm-42"]).unwrap();
    assert_eq!(
        holder.member("client").and_then(|c| c.as_str()),
        Some("host-a")
    );
}
