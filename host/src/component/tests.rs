//! The component under the runtime's limits and sandbox.

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
    let command =
        wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker)
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

/// With `Durability::None` a batch's records go to the journal in one
/// write; a change whose lock file cannot be written is still refused as
/// if the batch ran one request at a time: the requests after it see the
/// table without it.
#[test]
fn with_sync_none_the_rest_of_a_batch_sees_the_table_without_a_refused_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (runtime, mut instance) = open_unsynced(tmp.path());
    // q's lock file cannot be written: a directory holds its name.
    std::fs::create_dir(tmp.path().join("q.resource.lock")).unwrap();
    let holder = |resource: &str| Request::Holder(resource.into());
    let batch = [
        lock("p", "c0"),
        lock("q", "c1"),
        holder("q"),
        lock("q", "c2"),
        lock("s", "c3"),
        holder("p"),
    ];
    let results = instance.apply(&batch).unwrap();
    assert!(matches!(results[0], Ok(Reply::Done)), "{results:?}");
    assert!(matches!(results[1], Err(GuestError::Io(_))), "{results:?}");
    assert!(
        matches!(&results[2], Ok(Reply::Holder(None))),
        "{results:?}"
    );
    // c2 finds q free, and its file cannot be written either.
    assert!(matches!(results[3], Err(GuestError::Io(_))), "{results:?}");
    assert!(matches!(results[4], Ok(Reply::Done)), "{results:?}");
    assert!(
        matches!(&results[5], Ok(Reply::Holder(Some(c))) if c == "c0"),
        "{results:?}"
    );
    assert_eq!(results.len(), batch.len());

    // Once q can be written, it is free, and the journal holds p and s
    // alone: a fresh instance on the directory finds exactly those.
    std::fs::remove_dir(tmp.path().join("q.resource.lock")).unwrap();
    drop(instance);
    let mut fresh = runtime.instantiate(tmp.path()).unwrap();
    fresh.open(UNSYNCED).unwrap().unwrap();
    let results = fresh
        .apply(&[holder("p"), holder("q"), holder("s"), lock("q", "c2")])
        .unwrap();
    let holders: Vec<_> = results[..3]
        .iter()
        .map(|r| match r {
            Ok(Reply::Holder(h)) => h.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(holders, [Some("c0".into()), None, Some("c3".into())]);
    assert!(matches!(results[3], Ok(Reply::Done)), "{results:?}");
}

/// A sweep after a refused change in the same `Durability::None` batch
/// still announces the lock-delays it ends: taking a change back restores
/// held locks, not lock-delays, so such a batch runs one request at a time.
#[test]
fn with_sync_none_a_sweep_after_a_refused_change_announces_the_delays_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (_runtime, mut instance) = open_unsynced(tmp.path());
    assert!(matches!(
        instance.apply(&[lock("r", "c0")]).unwrap()[0],
        Ok(Reply::Done)
    ));
    // Broken: unavailable for a lock-delay of 0, over at the next sweep.
    let broken = instance.apply(&[Request::BreakLock("r".into())]).unwrap();
    assert!(matches!(broken[0], Ok(Reply::Lock(_))), "{broken:?}");
    std::fs::create_dir(tmp.path().join("q.resource.lock")).unwrap();
    let results = instance.apply(&[lock("q", "c1"), Request::Sweep]).unwrap();
    assert!(matches!(results[0], Err(GuestError::Io(_))), "{results:?}");
    let Ok(Reply::Swept(swept)) = &results[1] else {
        panic!("{results:?}");
    };
    assert_eq!(swept.available, ["r"], "{results:?}");
}

const UNSYNCED: Options = Options {
    durability: Durability::None,
    lock_delay_ms: 0,
};

/// An instance open with `Durability::None` and no lock-delay on `dir`.
fn open_unsynced(dir: &Path) -> (Runtime, Instance) {
    let runtime = Runtime::new().unwrap();
    let mut instance = runtime.instantiate(dir).unwrap();
    instance.open(UNSYNCED).unwrap().unwrap();
    (runtime, instance)
}

fn lock(resource: &str, client: &str) -> Request {
    Request::Lock(LockRequest {
        resource: resource.into(),
        client: client.into(),
    })
}
