//! The lock component inside wasmtime: compiled once per process, one
//! instance per lock directory, the directory its only preopen. [`Lockd`]
//! drives an instance through its queue; calling one directly, as the
//! component-against-`std::fs` micro-benchmark does, bypasses that queue.
//!
//! [`Lockd`]: crate::Lockd

use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "lockd",
    });
}

pub use bindings::exports::lockd::lockd::locks::{
    AcquireRequest, CheckRequest, Decision, DirectoryHealth, Durability, Effect, HeldLock,
    ListRequest, LockDelay, LockError as GuestError, LockInfo, LockRequest, OpenReport, Options,
    ReleaseRequest, RenewRequest, Reply, Request, ResourceView, Swept,
};

/// The component exactly as `lockd` runs it (`wasm32-wasip2`, built from
/// `guest/` at build time).
pub const COMPONENT_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lockd_guest.wasm"));

/// [`COMPONENT_WASM`] compiled ahead of time for this machine's kind, by the
/// same wasmtime with the same configuration as [`Runtime::new`] uses.
const COMPONENT_PRECOMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lockd_guest.cwasm"));

/// How often the engine's epoch advances: the unit of [`CALL_LIMIT`].
const TICK: Duration = Duration::from_millis(100);

/// The longest one call into the component may run before it traps (and
/// the instance is replaced): a guest bug cannot hang the thread that
/// commits for everyone. Opening a directory (reading every lock file)
/// may take [`OPEN_LIMIT`].
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The longest opening a lock directory may take.
pub const OPEN_LIMIT: Duration = Duration::from_secs(600);

/// The most linear memory an instance may have: a guest that would grow
/// past it traps instead of taking the machine's memory. A held lock costs
/// the guest a few hundred bytes, so this holds millions of locks.
pub const MEMORY_LIMIT: usize = 2 << 30;

/// The configuration the component is compiled and run with (the build
/// script precompiles it with the same).
pub fn config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config
}

/// Per-instance host state: the guest's WASI context and its resources.
struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The compiled component, linked against WASI and ready to instantiate.
pub struct Runtime {
    engine: Engine,
    pre: bindings::LockdPre<Ctx>,
    ticker: Ticker,
}

/// Advances an engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("lockd-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::park_timeout(TICK);
                    engine.increment_epoch();
                }
            })
            .context("starting the epoch thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The epoch ticks in `limit`, and one more: a deadline is never earlier
/// than asked.
fn ticks(limit: Duration) -> u64 {
    (limit.as_millis() / TICK.as_millis()) as u64 + 1
}

impl Runtime {
    /// Compiles the embedded component.
    pub fn new() -> anyhow::Result<Self> {
        let engine = Engine::new(&config())?;
        // SAFETY: the bytes were produced by `Engine::precompile_component`
        // of this very wasmtime at build time and are embedded read-only;
        // wasmtime checks that they suit this engine and this CPU.
        let precompiled = unsafe { Component::deserialize(&engine, COMPONENT_PRECOMPILED) };
        let component = match precompiled {
            Ok(component) => component,
            Err(e) => {
                tracing::debug!(
                    "compiling the lock component: the precompiled one does not fit ({e})"
                );
                Component::new(&engine, COMPONENT_WASM)
                    .map_err(anyhow::Error::from)
                    .context("compiling the lock component")?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let pre = bindings::LockdPre::new(linker.instantiate_pre(&component)?)?;
        let ticker = Ticker::start(&engine)?;
        Ok(Self {
            engine,
            pre,
            ticker,
        })
    }

    /// A fresh instance in the [`sandbox`] of `dir`.
    pub fn instantiate(&self, dir: &Path) -> anyhow::Result<Instance> {
        self.instantiate_in(sandbox(Some(dir))?)
    }

    /// A fresh instance with no directory at all, for the rules alone
    /// (the WIT `decide`).
    pub fn instantiate_rules_only(&self) -> anyhow::Result<Instance> {
        self.instantiate_in(sandbox(None)?)
    }

    fn instantiate_in(&self, wasi: WasiCtx) -> anyhow::Result<Instance> {
        let ctx = Ctx {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(MEMORY_LIMIT)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|ctx| &mut ctx.limits);
        store.set_epoch_deadline(ticks(CALL_LIMIT));
        let bindings = self.pre.instantiate(&mut store)?;
        let _ = &self.ticker;
        Ok(Instance { store, bindings })
    }
}

/// What the component may touch: `dir`, read-write, as its only preopen
/// (seen as `/`), if any. No environment, arguments, network, name lookups
/// or standard streams (stdin is empty; what it writes to stdout or stderr
/// goes nowhere).
fn sandbox(dir: Option<&Path>) -> anyhow::Result<WasiCtx> {
    let mut wasi = WasiCtxBuilder::new();
    // File work happens on the calling thread instead of a thread pool:
    // every call is synchronous and already on a thread of its own.
    wasi.allow_blocking_current_thread(true);
    if let Some(dir) = dir {
        wasi.preopened_dir(dir, "/", FsPerms::ReadWrite)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("opening lock directory {}", dir.display()))?;
    }
    Ok(wasi.build())
}

/// One live instance of the component. A call that traps leaves it unusable;
/// its owner replaces it.
pub struct Instance {
    store: Store<Ctx>,
    bindings: bindings::Lockd,
}

impl Instance {
    /// Opens the lock directory; see the WIT `open`.
    pub fn open(&mut self, options: Options) -> wasmtime::Result<Result<OpenReport, GuestError>> {
        self.call_within(OPEN_LIMIT, |locks, store| locks.call_open(store, options))
    }

    /// Runs a batch of requests with one sync; see the WIT `apply`.
    pub fn apply(&mut self, batch: &[Request]) -> wasmtime::Result<Vec<Result<Reply, GuestError>>> {
        self.call(|locks, store| locks.call_apply(store, batch))
    }

    /// The lock rules alone, for locks kept elsewhere; see the WIT
    /// `decide`.
    pub fn decide(
        &mut self,
        request: &Request,
        view: &ResourceView,
        now_ms: u64,
        lock_delay_ms: u64,
    ) -> wasmtime::Result<Result<Decision, GuestError>> {
        self.call(|locks, store| locks.call_decide(store, request, view, now_ms, lock_delay_ms))
    }

    /// Retries what failed and reports how the directory is kept; see the
    /// WIT `health`.
    pub fn health(&mut self) -> wasmtime::Result<DirectoryHealth> {
        self.call(|locks, store| locks.call_health(store))
    }

    /// Takes `client`'s lock on `resource`; see the WIT `lock`.
    pub fn lock(
        &mut self,
        resource: &str,
        client: &str,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        self.call(|locks, store| locks.call_lock(store, resource, client))
    }

    /// Releases `client`'s lock on `resource`; see the WIT `unlock`.
    pub fn unlock(
        &mut self,
        resource: &str,
        client: &str,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        self.call(|locks, store| locks.call_unlock(store, resource, client))
    }

    /// Calls into the component within wasmtime-wasi's runtime context, so
    /// that the guest's file calls (each a finished future run on this
    /// thread) find it entered instead of entering it, and parking this
    /// thread once, every time.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&bindings::exports::lockd::lockd::locks::Guest, &mut Store<Ctx>) -> R,
    ) -> R {
        self.call_within(CALL_LIMIT, f)
    }

    /// [`call`](Self::call), trapping if it runs longer than `limit`.
    fn call_within<R>(
        &mut self,
        limit: Duration,
        f: impl FnOnce(&bindings::exports::lockd::lockd::locks::Guest, &mut Store<Ctx>) -> R,
    ) -> R {
        self.store.set_epoch_deadline(ticks(limit));
        wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
            f(self.bindings.lockd_lockd_locks(), &mut self.store)
        })
    }
}

#[cfg(test)]
mod tests;
