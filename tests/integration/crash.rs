//! Crash injection: clients lock, unlock, acquire and release while the
//! daemon is killed with SIGKILL at random moments, again and again, on the
//! same directory. After every restart, each client's record of the
//! answers it got must hold: every acknowledged lock is still held by its
//! client (with its token), no acknowledged release comes back, no lock
//! file is empty or unreadable, and fencing tokens never go backwards.

use crate::support::{TestServer, holder_of, temp_lock_dir};
use lockd::client::{CallError, Client};
use lockd::xmlrpc::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 6;
const RESOURCES_PER_CLIENT: usize = 4;

/// What a client knows of one of its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Free,
    /// Held, with the token if the answer said it.
    Held(Option<i64>),
    /// A request got no answer: either outcome is allowed.
    InDoubt,
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    acknowledged: usize,
    locks_checked: usize,
    frees_checked: usize,
    in_doubt: usize,
    losses: Vec<String>,
}

fn token(v: &Value) -> Option<i64> {
    match v.member("token") {
        Some(Value::I8(t)) => Some(*t),
        _ => None,
    }
}

/// One client's work until the daemon dies: operations on its own
/// resources, each answer recorded.
fn client_run(url: &str, me: usize, known: &mut [Known], seed: u64, stop: &AtomicBool) -> usize {
    let client = Client::new(url)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let name = format!("client-{me}");
    let mut rng = seed;
    let mut acknowledged = 0;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let r = (rng % RESOURCES_PER_CLIENT as u64) as usize;
        let resource = format!("crash/{me}/{r}");
        let taking = !matches!(known[r], Known::Held(_));
        let (method, params): (&str, Vec<Value>) = match (taking, rng.is_multiple_of(2)) {
            (true, true) => ("lock", vec![resource.as_str().into(), name.as_str().into()]),
            (true, false) => (
                "lockd.acquire",
                vec![resource.as_str().into(), name.as_str().into()],
            ),
            (false, true) => (
                "unlock",
                vec![resource.as_str().into(), name.as_str().into()],
            ),
            (false, false) => (
                "lockd.release",
                vec![resource.as_str().into(), name.as_str().into()],
            ),
        };
        match client.call(method, &params) {
            Ok(value) => {
                acknowledged += 1;
                known[r] = if taking {
                    Known::Held(token(&value))
                } else {
                    Known::Free
                };
            }
            // After an unanswered request the state was unknown; a fault
            // says what it is.
            Err(CallError::Fault(fault)) => {
                known[r] = match fault.code {
                    1 => Known::Held(None),
                    2 => Known::Free,
                    code => panic!("{method} {resource}: unexpected fault {code}: {fault}"),
                };
            }
            Err(_) => {
                known[r] = Known::InDoubt;
                return acknowledged;
            }
        }
    }
    acknowledged
}

/// Checks the restarted daemon against what the clients know; resolves what
/// was in doubt.
fn check(server: &TestServer, known: &mut [Vec<Known>], max_token: &mut i64, tally: &mut Tally) {
    for (me, resources) in known.iter_mut().enumerate() {
        for (r, state) in resources.iter_mut().enumerate() {
            let resource = format!("crash/{me}/{r}");
            let status = server.call("lockd.status", &[&resource]).unwrap();
            let holder = status.member("client").and_then(Value::as_str);
            match *state {
                Known::Held(expected_token) => {
                    tally.locks_checked += 1;
                    let me_name = format!("client-{me}");
                    if holder != Some(me_name.as_str())
                        || expected_token.is_some_and(|t| token(&status) != Some(t))
                    {
                        tally.losses.push(format!(
                            "{resource}: acknowledged held by {me_name} ({expected_token:?}), found {status:?}"
                        ));
                    }
                }
                Known::Free => {
                    tally.frees_checked += 1;
                    if status != Value::Nil {
                        tally
                            .losses
                            .push(format!("{resource}: acknowledged free, found {status:?}"));
                    }
                }
                Known::InDoubt => tally.in_doubt += 1,
            }
            *state = match token(&status) {
                Some(t) => Known::Held(Some(t)),
                None => Known::Free,
            };
        }
    }
    // A new lock's token is above every token seen before the kill.
    let fresh = server
        .client()
        .call("lockd.acquire", &["crash/probe".into(), "probe".into()])
        .unwrap();
    let fresh = token(&fresh).unwrap();
    assert!(fresh > *max_token, "token {fresh} after {max_token}");
    *max_token = fresh;
    server
        .call("lockd.release", &["crash/probe", "probe"])
        .unwrap();
}

/// Every lock file has a holder and lockd's lines, and is readable.
fn check_files(dir: &Path, tally: &mut Tally) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".resource.lock") {
            continue;
        }
        match std::fs::read_to_string(dir.join(&name)) {
            Ok(content) if !content.is_empty() => {
                let holder = holder_of(&content);
                assert!(!holder.is_empty(), "{name}: {content:?}");
            }
            other => tally.losses.push(format!("{name}: {other:?}")),
        }
    }
}

fn crash_injection(sync: &str, kills: usize) -> Tally {
    let (_tmp, dir) = temp_lock_dir();
    let mut known = vec![vec![Known::Free; RESOURCES_PER_CLIENT]; CLIENTS];
    let mut tally = Tally::default();
    let mut max_token = 0;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..kills {
        let server = TestServer::start_in(&dir, &["--sync", sync]);
        if round > 0 {
            check(&server, &mut known, &mut max_token, &mut tally);
            check_files(&dir, &mut tally);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url();
        let threads: Vec<_> = known
            .iter()
            .cloned()
            .enumerate()
            .map(|(me, mut mine)| {
                let (url, stop) = (url.clone(), stop.clone());
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let seed = seed | 1;
                std::thread::spawn(move || {
                    let n = client_run(&url, me, &mut mine, seed, &stop);
                    (mine, n)
                })
            })
            .collect();
        // Kill at a random moment of a busy stretch.
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 130));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        tally.kills += 1;
        for (me, thread) in threads.into_iter().enumerate() {
            let (mine, n) = thread.join().unwrap();
            known[me] = mine;
            tally.acknowledged += n;
        }
    }
    let server = TestServer::start_in(&dir, &["--sync", sync]);
    check(&server, &mut known, &mut max_token, &mut tally);
    check_files(&dir, &mut tally);
    tally
}

fn run(sync: &str) {
    let start = Instant::now();
    let tally = crash_injection(sync, 30);
    eprintln!(
        "crash injection, --sync={sync}: {} kills, {} acknowledged operations, {} acknowledged \
         locks and {} acknowledged releases checked, {} in doubt, {} losses, {:.1} s",
        tally.kills,
        tally.acknowledged,
        tally.locks_checked,
        tally.frees_checked,
        tally.in_doubt,
        tally.losses.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(tally.losses.is_empty(), "{:#?}", tally.losses);
    assert!(
        tally.acknowledged > tally.kills,
        "the clients did work: {tally:?}"
    );
}

/// `--sync=always` promises this for power loss too; a kill is what a test
/// can do.
#[test]
fn no_acknowledged_change_is_lost_across_30_kills_with_sync_always() {
    run("always");
}

/// `--sync=none` promises it for crashes of the daemon (the written lock
/// files are in the operating system's cache), not for power loss.
#[test]
fn no_acknowledged_change_is_lost_across_30_kills_with_sync_none() {
    run("none");
}
