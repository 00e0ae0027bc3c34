//! Embedding lockd's lock component in another Rust program with wasmtime:
//! the recipe docs/embedding.md gives, whole.
//!
//! ```sh
//! lockd component --out lockd.wasm --wit lockd.wit
//! cargo run --example embed -- lockd.wasm ./locks
//! ```
//!
//! Needs `wasmtime` (features `runtime`, `component-model`, `cranelift`)
//! and `wasmtime-wasi` (feature `p2`), and the WIT next to the program.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    // The WIT `lockd` world: the component exports `lockd:lockd/locks`.
    wasmtime::component::bindgen!({ path: "../wit", world: "lockd" });
}
use bindings::exports::lockd::lockd::locks::{Durability, LockError, Options};

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Locks and unlocks in `dir` through the component at `component`;
/// returns what each call answered.
pub fn run(component: &std::path::Path, dir: &std::path::Path) -> wasmtime::Result<Vec<String>> {
    let engine = Engine::new(&Config::new())?;
    let component = Component::from_file(&engine, component)?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // The lock directory is the component's one preopen; nothing else.
    let mut wasi = WasiCtxBuilder::new();
    wasi.preopened_dir(dir, "/", FsPerms::ReadWrite)?;
    let host = Host {
        wasi: wasi.build(),
        table: ResourceTable::new(),
    };
    let mut store = Store::new(&engine, host);
    let lockd = bindings::Lockd::instantiate(&mut store, &component, &linker)?;
    let locks = lockd.lockd_lockd_locks();

    let options = Options {
        durability: Durability::Always,
        lock_delay_ms: 5000,
    };
    let report = locks.call_open(&mut store, options)?;
    let mut answers = vec![format!("open: {:?}", report.map(|r| r.held))];
    for (what, resource, client) in [
        ("lock", "vm-42", "host-a"),
        ("lock", "vm-42", "host-b"),
        ("unlock", "vm-42", "host-b"),
    ] {
        let result: Result<(), LockError> = match what {
            "lock" => locks.call_lock(&mut store, resource, client)?,
            _ => locks.call_unlock(&mut store, resource, client)?,
        };
        answers.push(format!("{what}({resource}, {client}): {result:?}"));
    }
    let holder = locks.call_holder(&mut store, "vm-42")?;
    answers.push(format!("holder(vm-42): {holder:?}"));
    Ok(answers)
}

#[allow(dead_code)]
fn main() -> wasmtime::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, component, dir] = args.as_slice() else {
        eprintln!("usage: embed COMPONENT.wasm LOCK_DIR");
        std::process::exit(64);
    };
    std::fs::create_dir_all(dir)?;
    for answer in run(component.as_ref(), dir.as_ref())? {
        println!("{answer}");
    }
    Ok(())
}
