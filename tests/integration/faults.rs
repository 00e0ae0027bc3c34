//! A full, unwritable or failing file system: what was acknowledged
//! survives, what was refused never appears, and the daemon recovers by
//! itself. Faults come from a small tmpfs, `chattr +i`, or strace injecting
//! errors into the daemon's system calls.

use crate::support::{TestServer, holder_of, lock_files, raw_http, wait_until};
use lockd::xmlrpc::Value;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A tmpfs of a given size on a fresh directory, unmounted when dropped.
pub struct Tmpfs {
    tmp: TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let tmp = TempDir::new().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lockd-test"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs (the tests run as root)");
        std::fs::create_dir(tmp.path().join("locks")).unwrap();
        Self { tmp }
    }

    /// The lock directory on it.
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("locks")
    }

    /// Fills it up with a file beside the lock directory (again, after
    /// space was freed), removed by [`unfill`](Self::unfill).
    pub fn fill(&self) {
        let mut filler = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let zeroes = vec![0; 4096];
        while filler.write_all(&zeroes).is_ok() {}
        // Whatever a page smaller than 4 KiB still holds.
        while filler.write_all(&[0]).is_ok() {}
    }

    pub fn unfill(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    /// Gives it a new size.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn filler(&self) -> PathBuf {
        self.tmp.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = set_immutable(&self.dir(), false);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.tmp.path())
            .status();
    }
}

/// `chattr +i` or `-i` on `dir`: while set, not even root can create,
/// rename or remove entries in it (files already open stay writable).
fn set_immutable(dir: &Path, on: bool) -> bool {
    Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// strace attached to a running daemon, tampering with its system calls
/// until [`detach`](Self::detach).
pub struct Injector {
    child: Child,
    log: PathBuf,
}

/// The system calls lockd's lock directory work makes.
const FILE_CALLS: &str = "openat2,statx,pwrite64,fdatasync,fsync,renameat,unlinkat,ftruncate";

impl Injector {
    /// Attaches to every thread of `pid` with `-e inject=<inject>` (and
    /// any further strace arguments), tracing [`FILE_CALLS`] into `log`;
    /// returns once attached.
    // The child is waited for by `detach`.
    #[allow(clippy::zombie_processes)]
    pub fn attach(pid: u32, inject: &str, log: &Path) -> Self {
        let mut child = Command::new("strace")
            .args(["-f", "-y", "-p", &pid.to_string(), "-e"])
            .arg(format!("trace={FILE_CALLS}"))
            .args(["-e", &format!("inject={inject}"), "-o"])
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace (tests/setup.sh installs it)");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait();
                panic!("strace did not attach ({status:?}):\n{said}");
            }
            said.push_str(&line);
            if line.contains("attached") {
                // strace must not block writing the rest.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Self {
                    child,
                    log: log.to_owned(),
                };
            }
        }
    }

    /// Detaches (the daemon runs on untouched) and returns strace's log.
    pub fn detach(mut self) -> String {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `GET /healthz`: the status and the body.
fn health(server: &TestServer) -> (u16, String) {
    raw_http(&server.addr, b"GET /healthz HTTP/1.0\r\n\r\n")
}

/// What the clients were told: each resource's holder, `None` for free.
#[derive(Default)]
struct Model {
    holders: BTreeMap<String, Option<String>>,
    acknowledged: usize,
    refused: usize,
}

impl Model {
    /// Records the answer to taking `resource` for `client`.
    fn took(&mut self, resource: &str, client: &str, answer: &Result<Value, String>) {
        self.count(answer);
        if answer.is_ok() {
            self.holders.insert(resource.into(), Some(client.into()));
        } else {
            self.holders.entry(resource.into()).or_insert(None);
        }
    }

    /// Records the answer to releasing `resource`.
    fn released(&mut self, resource: &str, answer: &Result<Value, String>) {
        self.count(answer);
        if answer.is_ok() {
            self.holders.insert(resource.into(), None);
        }
    }

    fn count(&mut self, answer: &Result<Value, String>) {
        match answer {
            Ok(_) => self.acknowledged += 1,
            Err(_) => self.refused += 1,
        }
    }

    /// Fails the test unless `server` holds exactly what the clients were
    /// told; if `files`, the lock files show it too.
    fn check(&self, server: &TestServer, files: bool, when: &str) {
        for (resource, expected) in &self.holders {
            let status = server.call("lockd.status", &[resource]).unwrap();
            let holder = status.member("client").and_then(Value::as_str);
            assert_eq!(
                holder,
                expected.as_deref(),
                "{when}: {resource} ({} acknowledged, {} refused)\n{}",
                self.acknowledged,
                self.refused,
                server.log()
            );
            if files {
                let content =
                    std::fs::read_to_string(server.dir.join(format!("{resource}.resource.lock")));
                match expected {
                    Some(client) => assert_eq!(
                        holder_of(&content.unwrap_or_default()),
                        client,
                        "{when}: {resource}'s lock file"
                    ),
                    None => assert!(content.is_err(), "{when}: {resource} has a lock file"),
                }
            }
        }
    }

    /// Waits until `server` says it is healthy again, then checks it and
    /// its lock files.
    fn recovered(&self, server: &TestServer, when: &str) {
        wait_healthy(server);
        self.check(server, true, &format!("{when}, recovered"));
    }

    /// [`recovered`](Self::recovered), then `kill -9` and a restart with
    /// `--sync=sync`, checked again.
    fn recovered_and_restarted(&self, server: TestServer, sync: &str, when: &str) {
        self.recovered(&server, when);
        let dir = server.kill9();
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        self.check(&server, true, &format!("{when}, then kill -9 and restart"));
    }
}

/// A call's outcome with a fault's text as the error; a fault must be
/// -32603 (the change could not be stored) or the expected `ok_fault`.
fn answer(server: &TestServer, method: &str, params: &[&str]) -> Result<Value, String> {
    server.call(method, params).map_err(|fault| {
        assert_eq!(fault.code, -32603, "{method}{params:?}: {fault:?}");
        fault.message
    })
}

/// Waits for `/healthz` to say 200: the daemon repaired what failed.
fn wait_healthy(server: &TestServer) {
    wait_until("/healthz 200", || health(server).0 == 200);
}

#[test]
fn a_full_disk_loses_no_acknowledged_change_and_the_daemon_recovers_by_itself() {
    let fs = Tmpfs::mount("3m");
    let dir = fs.dir();
    let mut model = Model::default();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    let a = answer(&server, "lock", &["Z", "z"]);
    model.took("Z", "z", &a);
    fs.fill();
    let (status, reason) = health(&server);
    assert_eq!(status, 503, "{reason}");

    // The journal's preallocated space takes these; their lock files fail.
    let y = answer(&server, "lockd.acquire", &["Y", "y"]);
    assert!(y.is_ok(), "{y:?}");
    model.took("Y", "y", &y);
    let z = answer(&server, "unlock", &["Z", "z"]);
    assert!(z.is_ok(), "{z:?}");
    model.released("Z", &z);
    fs.fill();
    // Past the preallocation, appends need space: refused from then on.
    let big = "c".repeat(1000);
    for i in 0..3000 {
        if model.refused >= 10 {
            break;
        }
        let resource = format!("p{i}");
        let took = answer(&server, "lock", &[&resource, &big]);
        model.took(&resource, &big, &took);
        if took.is_ok() {
            let released = answer(&server, "unlock", &[&resource, &big]);
            model.released(&resource, &released);
        }
    }
    let counts = (model.acknowledged, model.refused);
    assert!(counts.0 > 2 && counts.1 > 0, "{counts:?}");
    eprintln!(
        "full disk: {} changes acknowledged, {} refused",
        model.acknowledged, model.refused
    );
    let (status, reason) = health(&server);
    assert_eq!(status, 503, "{reason}");
    model.check(&server, false, "while full");

    // Space comes back: the running daemon brings its files up to date.
    fs.unfill();
    model.recovered_and_restarted(server, "always", "after space came back");
}

#[test]
fn a_daemon_restarted_on_a_disk_too_small_for_its_lock_files_starts_and_serves_them() {
    let fs = Tmpfs::mount("4m");
    let dir = fs.dir();
    let mut model = Model::default();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    // Every lock file takes a page: far more than the file system holds.
    for i in 0..1500 {
        let resource = format!("r{i}");
        let took = answer(&server, "lock", &[&resource, "c"]);
        model.took(&resource, "c", &took);
    }
    assert!(model.acknowledged > 900, "{}", model.acknowledged);
    let dir = server.kill9();

    let server = TestServer::try_start_in(&dir, &["--sync", "always"])
        .unwrap_or_else(|log| panic!("lockd did not start on a full disk:\n{log}"));
    model.check(&server, false, "restarted on a full disk");
    let (status, reason) = health(&server);
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("lock files"), "{reason}");

    fs.resize("64m");
    model.recovered_and_restarted(server, "always", "after the disk grew");
}

#[test]
fn an_unwritable_directory_loses_no_acknowledged_change() {
    let fs = Tmpfs::mount("64m");
    let dir = fs.dir();
    let mut model = Model::default();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    let client = server.client();
    let a = answer(&server, "lockd.acquire", &["A", "a"]);
    model.took("A", "a", &a);
    assert!(set_immutable(&dir, true), "chattr +i");

    let holder = "y".repeat(1000);
    let lease = Value::Struct(vec![("ttl".into(), Value::Double(600.0))]);
    let y = client
        .call(
            "lockd.acquire",
            &["Y".into(), holder.as_str().into(), lease],
        )
        .map_err(|e| format!("{e:?}"));
    assert!(y.is_ok(), "{y:?}");
    model.took("Y", &holder, &y);
    let released = answer(&server, "lockd.release", &["A", "a"]);
    assert!(released.is_ok(), "{released:?}");
    model.released("A", &released);
    // Past a checkpoint's worth of journal: the checkpoint cannot happen.
    let mut expires = None;
    for i in 0..1100 {
        let ttl = Value::Double(600.0 + f64::from(i));
        let renewed = client
            .call("lockd.renew", &["Y".into(), holder.as_str().into(), ttl])
            .unwrap();
        expires = renewed.member("expires").cloned();
    }
    let (status, reason) = health(&server);
    assert_eq!(status, 503, "{reason}");
    model.check(&server, false, "while unwritable");

    // Writable again, and killed before it could catch up.
    assert!(set_immutable(&dir, false));
    let dir = server.kill9();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    model.check(&server, true, "after kill -9 and restart");
    let status = server.call("lockd.status", &["Y"]).unwrap();
    assert_eq!(
        status.member("expires").cloned(),
        expires,
        "the last renewal"
    );
    assert_eq!(health(&server).0, 200);
}

#[test]
fn an_empty_token_mark_and_an_empty_lock_file_at_start_are_recovered_from() {
    let (_tmp, dir) = crate::support::temp_lock_dir();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    let mut highest = 0;
    for i in 0..5 {
        let resource = format!("t{i}");
        let lock = server.call("lockd.acquire", &[&resource, "c"]).unwrap();
        highest = highest.max(lock.member("token").and_then(Value::as_i64).unwrap());
        server.call("lockd.release", &[&resource, "c"]).unwrap();
    }
    server.call("lock", &["kept", "k"]).unwrap();
    let dir = server.kill9();
    // What a power loss can leave where the file system renamed before it
    // wrote: an empty mark, an empty lock file, one cut off mid-line.
    std::fs::write(dir.join(".lockd.tokens"), "").unwrap();
    std::fs::write(dir.join("e.resource.lock"), "").unwrap();
    std::fs::write(dir.join("f.resource.lock"), "host-f\ntok").unwrap();

    let server = TestServer::try_start_in(&dir, &["--sync", "always"])
        .unwrap_or_else(|log| panic!("lockd did not start:\n{log}"));
    let log = server.log();
    assert!(
        log.contains(".lockd.tokens does not hold a number"),
        "{log}"
    );
    assert!(
        log.contains("\"e.resource.lock\" is the remains of a write cut short"),
        "{log}"
    );
    assert!(
        log.contains("\"f.resource.lock\" is the remains of a write cut short"),
        "{log}"
    );
    assert_eq!(server.call("lock", &["e", "x"]), Ok(Value::Nil));
    assert_eq!(server.call("lock", &["f", "x"]), Ok(Value::Nil));
    let kept = server.call("lockd.status", &["kept"]).unwrap();
    assert_eq!(kept.member("client").and_then(Value::as_str), Some("k"));
    let lock = server.call("lockd.acquire", &["n", "c"]).unwrap();
    let token = lock.member("token").and_then(Value::as_i64).unwrap();
    assert!(token > highest, "token {token} after {highest}");
    assert_eq!(
        lock_files(&dir),
        ["e", "f", "kept", "n"]
            .iter()
            .map(|r| format!("{r}.resource.lock"))
            .collect()
    );
}

/// The bytes of one journal record of `lock` with a 2-byte resource and
/// client and a one-digit token.
const SHORT_LOCK_RECORD: usize = 63;

#[test]
fn a_failed_journal_append_leaves_nothing_a_later_append_brings_back() {
    for _ in 0..5 {
        if failed_batch_then_append() {
            return;
        }
    }
    panic!("no refused batch of several changes in 5 tries");
}

/// A batch of several locks whose journal sync fails, then a lock whose
/// record is exactly as long as the batch's first, then `kill -9`: nothing
/// of the refused batch may come back. Returns false if the last refused
/// batch held a single change (nothing to show; try again).
fn failed_batch_then_append() -> bool {
    let (tmp, dir) = crate::support::temp_lock_dir();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    let mut model = Model::default();
    // Reserves the tokens: the locks below write the journal alone.
    server.call("lock", &["w0", "c0"]).unwrap();
    server.call("unlock", &["w0", "c0"]).unwrap();
    // Every append's sync (each thread's first, third, ...; the second
    // cuts a failed append back) waits a second, then fails: one batch
    // holds the commit while the other calls queue into the next.
    let log = tmp.path().join("strace.log");
    let injector = Injector::attach(
        server.pid(),
        "fdatasync:error=EIO:delay_enter=1000000:when=1+2",
        &log,
    );
    let answers: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = ["rA", "rB", "rC", "rD"]
            .iter()
            .map(|&r| {
                let server = &server;
                s.spawn(move || (r, answer(server, "lock", &[r, &r.replace('r', "c")])))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let trace = injector.detach();
    for (resource, answer) in &answers {
        model.took(resource, &resource.replace('r', "c"), answer);
    }
    // The last append of records (not a repair's write of a few bytes).
    let last_append = trace
        .lines()
        .filter(|l| l.contains("pwrite64(") && l.contains(".lockd.journal>"))
        .filter_map(|l| l.rsplit(", ").nth(1)?.parse::<usize>().ok())
        .rfind(|&len| len >= SHORT_LOCK_RECORD)
        .unwrap_or(0);
    if model.refused < 2 || last_append < 2 * SHORT_LOCK_RECORD {
        return false;
    }
    // Written where the refused batch began, ending where its second
    // record begins.
    let e = answer(&server, "lock", &["rE", "cE"]);
    assert!(e.is_ok(), "{e:?}");
    model.took("rE", "cE", &e);
    let dir = server.kill9();
    let server = TestServer::start_in(&dir, &["--sync", "always"]);
    model.check(&server, true, "after kill -9 and restart");
    true
}

/// An operation tried with a fault injected at each of its system calls.
struct Case {
    name: &'static str,
    sync: &'static str,
    /// Brings a fresh daemon to where the operation starts.
    prepare: fn(&TestServer, &mut Model),
    /// The operation; records its answer in the model.
    operation: fn(&TestServer, &mut Model),
}

fn nothing(_: &TestServer, _: &mut Model) {}

fn lock_r(server: &TestServer, model: &mut Model) {
    let took = answer(server, "lock", &["r", "c"]);
    model.took("r", "c", &took);
}

fn unlock_r(server: &TestServer, model: &mut Model) {
    let released = answer(server, "unlock", &["r", "c"]);
    model.released("r", &released);
}

/// A token reserved, so that a lock then writes no token mark.
fn warm(server: &TestServer, model: &mut Model) {
    server.call("lock", &["w", "c"]).unwrap();
    model.holders.insert("w".into(), Some("c".into()));
}

fn warm_and_lock_r(server: &TestServer, model: &mut Model) {
    warm(server, model);
    server.call("lock", &["r", "c"]).unwrap();
    model.holders.insert("r".into(), Some("c".into()));
}

/// A spare of `c`'s kept: the next lock by `c` links it.
fn warm_spare(server: &TestServer, model: &mut Model) {
    warm(server, model);
    server.call("lock", &["s", "c"]).unwrap();
    server.call("unlock", &["s", "c"]).unwrap();
}

/// `r` held by `c` through a linked spare.
fn warm_spare_and_lock_r(server: &TestServer, model: &mut Model) {
    warm_spare(server, model);
    server.call("lock", &["r", "c"]).unwrap();
    model.holders.insert("r".into(), Some("c".into()));
}

/// The journal brought to just under the checkpoint size (1 MiB): the
/// next lock with a long client passes it.
fn journal_nearly_full(server: &TestServer, model: &mut Model) {
    warm(server, model);
    let long = "f".repeat(1000);
    loop {
        let left = (1 << 20) as f64 - server.metric("lockd_journal_bytes");
        if left < 1000.0 {
            return;
        }
        let client = if left > 3000.0 { long.as_str() } else { "f" };
        server.call("lock", &["fill", client]).unwrap();
        server.call("unlock", &["fill", client]).unwrap();
    }
}

fn lock_r_long(server: &TestServer, model: &mut Model) {
    let long = "c".repeat(1000);
    let took = answer(server, "lock", &["r", &long]);
    model.took("r", &long, &took);
}

const CASES: &[Case] = &[
    Case {
        name: "a lock reserving tokens",
        sync: "always",
        prepare: nothing,
        operation: lock_r,
    },
    Case {
        name: "a lock",
        sync: "always",
        prepare: warm,
        operation: lock_r,
    },
    Case {
        name: "an unlock",
        sync: "always",
        prepare: warm_and_lock_r,
        operation: unlock_r,
    },
    Case {
        name: "a lock and a checkpoint",
        sync: "always",
        prepare: journal_nearly_full,
        operation: lock_r_long,
    },
    Case {
        name: "a lock linking a spare",
        sync: "always",
        prepare: warm_spare,
        operation: lock_r,
    },
    Case {
        name: "an unlock of a lock linked from a spare",
        sync: "always",
        prepare: warm_spare_and_lock_r,
        operation: unlock_r,
    },
    Case {
        name: "a lock reserving tokens",
        sync: "none",
        prepare: nothing,
        operation: lock_r,
    },
    Case {
        name: "a lock linking a spare",
        sync: "none",
        prepare: warm_spare,
        operation: lock_r,
    },
    Case {
        name: "an unlock of a lock linked from a spare",
        sync: "none",
        prepare: warm_spare_and_lock_r,
        operation: unlock_r,
    },
    Case {
        name: "an unlock",
        sync: "none",
        prepare: warm_and_lock_r,
        operation: unlock_r,
    },
];

/// The faults tried on each system call: every call can fail with EIO;
/// those that take space with ENOSPC too.
const FAULTS: &[(&str, &[&str])] = &[
    ("openat2", &["EIO", "ENOSPC"]),
    ("statx", &["EIO"]),
    ("pwrite64", &["EIO", "ENOSPC"]),
    ("fdatasync", &["EIO", "ENOSPC"]),
    ("fsync", &["EIO", "ENOSPC"]),
    ("renameat", &["EIO", "ENOSPC"]),
    ("linkat", &["EIO", "ENOSPC"]),
    ("unlinkat", &["EIO"]),
    ("ftruncate", &["EIO"]),
];

/// Runs `case` with `inject`; checks the daemon against the answers while
/// it runs, once it says it is healthy again, and after `kill -9` and a
/// restart. Returns whether the fault was injected (the operation made
/// that many of those calls).
fn try_case(case: &Case, inject: &str) -> bool {
    let (tmp, dir) = crate::support::temp_lock_dir();
    let server = TestServer::start_in(&dir, &["--sync", case.sync]);
    let mut model = Model::default();
    (case.prepare)(&server, &mut model);
    let injector = Injector::attach(server.pid(), inject, &tmp.path().join("strace.log"));
    (case.operation)(&server, &mut model);
    let injected = injector.detach().contains("(INJECTED)");
    let when = format!("{} (--sync={}) with {inject}", case.name, case.sync);
    model.check(&server, false, &format!("{when}, running"));
    model.recovered_and_restarted(server, case.sync, &when);
    injected
}

/// Calls `try_point` with each of [`FAULTS`] at the first, second, ...
/// call of its kind, until it says the fault was not injected (there was
/// no such call); returns how many were.
fn each_injection_point(mut try_point: impl FnMut(&str) -> bool) -> usize {
    let mut points = 0;
    for (call, errors) in FAULTS {
        for error in *errors {
            for n in 1.. {
                if !try_point(&format!("{call}:error={error}:when={n}")) {
                    break;
                }
                points += 1;
            }
        }
    }
    points
}

#[test]
fn a_fault_at_any_file_operation_of_a_change_loses_nothing_acknowledged() {
    let points: usize = CASES
        .iter()
        .map(|case| each_injection_point(|inject| try_case(case, inject)))
        .sum();
    eprintln!("{points} injection points tried, each: answers, recovery, kill -9 and restart");
    assert!(points > 50, "{points}");
}

/// Start-up (reading the lock files, replaying the journal, the
/// checkpoint) with `inject`: the daemon starts, or exits saying why; what
/// it serves once started, once healthy, and after a normal restart is
/// what was acknowledged before. Returns whether the fault was injected.
fn try_start_up(sync: &str, inject: &str) -> bool {
    let (tmp, dir) = crate::support::temp_lock_dir();
    let server = TestServer::start_in(&dir, &["--sync", sync]);
    let mut model = Model::default();
    for (resource, client) in [("a", "ca"), ("b", "cb"), ("c", "cc")] {
        let took = answer(&server, "lock", &[resource, client]);
        model.took(resource, client, &took);
    }
    let released = answer(&server, "unlock", &["b", "cb"]);
    model.released("b", &released);
    let lease = Value::Struct(vec![("ttl".into(), Value::Double(600.0))]);
    server
        .client()
        .call("lockd.acquire", &["d".into(), "cd".into(), lease])
        .unwrap();
    model.holders.insert("d".into(), Some("cd".into()));
    // Killed with all of it in the journal (and the lock files).
    let dir = server.kill9();

    let log = tmp.path().join("strace.log");
    let trace = format!("trace={FILE_CALLS}");
    let inject_arg = format!("inject={inject}");
    let wrapper = [
        "strace",
        "-f",
        "-y",
        "-o",
        log.to_str().unwrap(),
        "-e",
        &trace,
        "-e",
        &inject_arg,
    ];
    let when = format!("start-up (--sync={sync}) with {inject}");
    match TestServer::try_start_under(&wrapper, &dir, &["--sync", sync]) {
        Ok(mut server) => {
            let daemon = crate::support::Traced::of(&server);
            model.check(&server, false, &format!("{when}, started"));
            model.recovered(&server, &when);
            drop(daemon);
            // strace ends once it has reaped the daemon.
            server.wait_exit(Duration::from_secs(60));
        }
        Err(output) => assert!(
            output.contains("lockd:") || output.contains("ERROR"),
            "{when}: exited without saying why:\n{output}"
        ),
    }
    let injected = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("(INJECTED)"));
    let server = TestServer::start_in(&dir, &["--sync", sync]);
    model.check(&server, true, &format!("{when}, restarted"));
    injected
}

#[test]
fn a_fault_at_any_file_operation_of_start_up_loses_nothing_acknowledged() {
    let points: usize = ["always", "none"]
        .iter()
        .map(|sync| each_injection_point(|inject| try_start_up(sync, inject)))
        .sum();
    eprintln!("{points} injection points of start-up tried");
    assert!(points > 20, "{points}");
}
