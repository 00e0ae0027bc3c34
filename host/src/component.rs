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
    ReleaseRequest, RenewRequest, Reply, Request, ResourceView,
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
mod tests {
    use super::*;
    use std::process::Command;

    /// Builds `tests/escape` (a WASI program trying every way out of its
    /// directory) and runs it in the lock component's sandbox of `dir`.
    fn run_escape_program(dir: &Path) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = root.join("target").join("escape");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("tests/escape/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .unwrap();
        assert!(status.success(), "building tests/escape");
        let wasm = std::fs::read(target.join("wasm32-wasip2/release/lockd-escape.wasm")).unwrap();
        let engine = Engine::new(&Config::new()).unwrap();
        let component = Component::new(&engine, &wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        let ctx = Ctx {
            wasi: sandbox(Some(dir)).unwrap(),
            table: ResourceTable::new(),
            limits: StoreLimits::default(),
        };
        let mut store = Store::new(&engine, ctx);
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(
            &mut store, &component, &linker,
        )
        .unwrap();
        let ran = command.wasi_cli_run().call_run(&mut store).unwrap();
        assert_eq!(ran, Ok(()), "the escape program failed");
    }

    #[test]
    fn a_guest_built_to_escape_its_directory_cannot() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        let dir = outside.join("locks");
        std::fs::create_dir(&dir).unwrap();
        // A hostile directory: a symlink to the outside already in it.
        std::os::unix::fs::symlink(outside, dir.join("outside-link")).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::write(dir.join("port.txt"), port.to_string()).unwrap();

        run_escape_program(&dir);

        let report = std::fs::read_to_string(dir.join("escape-report.txt")).unwrap();
        eprintln!("{report}");
        let attempts: Vec<&str> = report.lines().collect();
        assert!(attempts.len() >= 18, "{report}");
        for attempt in &attempts {
            assert!(attempt.contains(": blocked ("), "{attempt}");
        }
        for left_alone in ["escaped.txt", "stolen.txt"] {
            assert!(!outside.join(left_alone).exists(), "{left_alone}\n{report}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
            "secret"
        );
        assert!(
            listener.accept().is_err(),
            "the program connected to 127.0.0.1"
        );
    }

    #[test]
    fn a_call_past_its_deadline_traps_and_leaves_the_directory_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = Runtime::new().unwrap();
        let mut instance = runtime.instantiate(tmp.path()).unwrap();
        let options = Options {
            durability: Durability::Always,
            lock_delay_ms: 0,
        };
        instance.open(options).unwrap().unwrap();
        // A deadline already reached: the guest's first epoch check traps,
        // as a guest stuck in a loop would at its deadline.
        instance.store.set_epoch_deadline(0);
        let locks = instance.bindings.lockd_lockd_locks();
        let trap = locks
            .call_lock(&mut instance.store, "r", "c")
            .expect_err("the call ran past its deadline");
        assert_eq!(
            trap.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{trap:?}"
        );
        let mut fresh = runtime.instantiate(tmp.path()).unwrap();
        fresh.open(options).unwrap().unwrap();
        assert!(fresh.lock("r", "c").unwrap().is_ok());
    }

    #[test]
    fn the_rules_alone_decide_for_locks_kept_elsewhere_and_touch_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = Runtime::new().unwrap();
        let mut instance = runtime.instantiate(tmp.path()).unwrap();
        let acquire = |client: &str| {
            Request::Acquire(AcquireRequest {
                resource: "r".into(),
                client: client.into(),
                ttl_ms: Some(1000),
                reentrant: false,
            })
        };
        let mut decide = |request: &Request, view: &ResourceView, now_ms| {
            instance.decide(request, view, now_ms, 5000).unwrap()
        };
        let free = ResourceView {
            held: None,
            delay: None,
        };
        let taken = decide(&acquire("a"), &free, 10_000).unwrap();
        let Effect::Hold(HeldLock { lock, fresh: true }) = taken.effect else {
            panic!("{taken:?}");
        };
        assert_eq!((lock.client.as_str(), lock.token), ("a", 0));
        assert_eq!(lock.expires_ms, Some(11_000));

        // Recorded with its token: taken while the lease runs, unavailable
        // for the lock-delay after it ran out, free after that.
        let held = ResourceView {
            held: Some(LockInfo { token: 7, ..lock }),
            delay: None,
        };
        let refused = |d: Result<Decision, GuestError>| d.map(|d| d.effect).unwrap_err();
        assert!(matches!(
            refused(decide(&acquire("b"), &held, 10_500)),
            GuestError::AlreadyLocked(holder) if holder == "a"
        ));
        assert!(matches!(
            refused(decide(&acquire("b"), &held, 12_000)),
            GuestError::CoolingDown(4000)
        ));
        assert!(matches!(
            decide(&acquire("b"), &held, 16_000).unwrap().effect,
            Effect::Hold(HeldLock { fresh: true, .. })
        ));

        // A renewal keeps the token; a break records the lock-delay.
        let renew = Request::Renew(RenewRequest {
            resource: "r".into(),
            client: "a".into(),
            ttl_ms: 3000,
            token: Some(7),
        });
        let renewed = decide(&renew, &held, 10_500).unwrap();
        let Effect::Hold(HeldLock { lock, fresh: false }) = renewed.effect else {
            panic!("{renewed:?}");
        };
        assert_eq!((lock.token, lock.expires_ms), (7, Some(13_500)));
        let broken = decide(&Request::BreakLock("r".into()), &held, 10_500).unwrap();
        let Effect::BreakLock(delay) = broken.effect else {
            panic!("{broken:?}");
        };
        assert_eq!((delay.client.as_str(), delay.until_ms), ("a", 15_500));
        // Its old holder learns it lost the lock.
        let cooling = ResourceView {
            held: None,
            delay: Some(delay),
        };
        let release = Request::Release(ReleaseRequest {
            resource: "r".into(),
            client: "a".into(),
            token: Some(7),
        });
        assert!(matches!(
            refused(decide(&release, &cooling, 11_000)),
            GuestError::LeaseExpired
        ));
        assert!(matches!(
            refused(decide(&Request::List(String::new()), &free, 0)),
            GuestError::InvalidName(_)
        ));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_precompiled_component_loads_on_the_build_machine() {
        let engine = Engine::new(&config()).unwrap();
        // SAFETY: as in `Runtime::new`.
        let component = unsafe { Component::deserialize(&engine, COMPONENT_PRECOMPILED) };
        assert!(component.is_ok(), "{:?}", component.err());
    }
}
