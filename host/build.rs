//! Builds the lock component (`guest/`, for `wasm32-wasip2`) and hands it to
//! the host crate, which carries it inside the `lockd` binary.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let guest = root.join("guest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for input in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guest.join(input).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=LOCKD_GUEST_WASM");

    // A component built beforehand, for toolchains without the wasm32-wasip2
    // standard library (the nightly that `cargo fuzz` uses, say).
    let bytes = match env::var_os("LOCKD_GUEST_WASM") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", Path::new(&path).display());
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("reading LOCKD_GUEST_WASM {}: {e}", path.display()))
        }
        None => build_guest(root, &guest),
    };
    std::fs::write(out_dir.join("lockd_guest.wasm"), &bytes).expect("writing the component");

    // Compiled ahead of time so that the daemon starts without running
    // Cranelift. The engine is configured exactly as the host's
    // (`component::config`: epoch interruption on); where the running
    // machine differs (CPU features), the host finds out when loading it and
    // compiles the component itself.
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).expect("creating an engine");
    let compiled = engine
        .precompile_component(&bytes)
        .expect("compiling the component ahead of time");
    std::fs::write(out_dir.join("lockd_guest.cwasm"), compiled)
        .expect("writing the compiled component");
}

/// Builds `guest/` for wasm32-wasip2 and returns the component.
fn build_guest(root: &Path, guest: &Path) -> Vec<u8> {
    require_target();

    // One guest build for every host profile, beside the workspace's own.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The host's flags and wrappers (clippy, coverage) are not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the lock component");
    assert!(
        status.success(),
        "building the lock component (guest/) failed"
    );

    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join("lockd_guest.wasm");
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("reading {}: {e}", wasm.display()))
}

/// Stops the build with the one command that fixes it when the standard
/// library for the component's target is missing.
fn require_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let std_dir = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if !std_dir.exists() {
        eprintln!(
            "\nlockd's lock component is built for {TARGET}, whose standard library is not \
             installed.\nInstall it with:\n\n    rustup target add {TARGET}\n"
        );
        panic!("the {TARGET} target is missing: run `rustup target add {TARGET}`");
    }
}
