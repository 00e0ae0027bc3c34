//! What running the lock semantics inside wasmtime costs: a lock+unlock pair
//! through the component's `lock` and `unlock` exports (in-process, no HTTP)
//! against the same file operations done natively with `std::fs`; and, for
//! comparison, the same pair as the daemon sends it (one-request batches
//! through `apply`) and through [`Lockd`], whose queue (group commit,
//! waiters) sits in front of the component in the daemon.
//!
//! `cargo bench --bench guest_vs_native [-- PAIRS]`

use lockd::component::{self, LockRequest, Request, Runtime};
use lockd::{Durability, Lockd, Options};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the component does for one pair, written with `std::fs`: a lock
/// file of the same content (holder, token, time taken) written into a
/// spare file kept open (after a look at its size and links), linked as the
/// lock file, later unlinked; with a journal, each change appended (records
/// of the component's sizes) and synced first.
fn native_pair(dir: &Path, spare: &File, journal: Option<&mut File>, name: &str, token: usize) {
    let content = format!("bench-client\ntoken: {token}\nacquired: 1795689457491\n");
    let content = content.as_bytes();
    let mut journal = journal;
    if let Some(j) = journal.as_deref_mut() {
        // Length, checksum, kind, then the resource and the lock file.
        let record = 8 + 1 + 4 + name.len() + 4 + content.len();
        j.write_all(&vec![0; record]).unwrap();
        j.sync_data().unwrap();
    }
    let meta = spare.metadata().unwrap();
    assert_eq!(meta.nlink(), 1);
    if meta.len() != content.len() as u64 {
        spare.set_len(content.len() as u64).unwrap();
    }
    spare.write_all_at(content, 0).unwrap();
    let file = dir.join(format!("{name}.resource.lock"));
    fs::hard_link(dir.join(".lockd-spare-0"), &file).unwrap();
    if let Some(j) = journal {
        j.write_all(&vec![0; 8 + 1 + 4 + name.len()]).unwrap();
        j.sync_data().unwrap();
    }
    fs::remove_file(&file).unwrap();
}

fn time_pairs(pairs: usize, mut pair: impl FnMut(usize)) -> Duration {
    for i in 0..pairs / 10 {
        pair(usize::MAX - i); // warm-up
    }
    let start = Instant::now();
    for i in 0..pairs {
        pair(i);
    }
    start.elapsed() / pairs as u32
}

/// Rounds of each measurement, taken in turn so that a slow spell of the
/// machine falls on all of them alike; medians are printed.
const ROUNDS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!(
        "lock+unlock pairs, one at a time, in-process; mean per pair, median of {ROUNDS} rounds"
    );
    for (durability, pairs) in [(Durability::None, pairs), (Durability::Always, pairs / 10)] {
        let guest_dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new().unwrap();
        let mut instance = runtime.instantiate(guest_dir.path()).unwrap();
        let options = component::Options {
            durability: match durability {
                Durability::Always => component::Durability::Always,
                Durability::None => component::Durability::None,
            },
            lock_delay_ms: 0,
        };
        instance.open(options).unwrap().unwrap();

        let queued_dir = tempfile::tempdir().unwrap();
        let lockd = Lockd::open_with(
            queued_dir.path(),
            &Options {
                durability,
                ..Options::default()
            },
        )
        .unwrap();

        let native_dir = tempfile::tempdir().unwrap();
        let mut journal = (durability == Durability::Always)
            .then(|| File::create(native_dir.path().join(".lockd.journal")).unwrap());
        let spare = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(native_dir.path().join(".lockd-spare-0"))
            .unwrap();

        let (mut guest, mut batched, mut queued, mut native) = (vec![], vec![], vec![], vec![]);
        let mut ratios = vec![];
        for _ in 0..ROUNDS {
            // The component's own `lock` and `unlock` exports: what the
            // target is about.
            guest.push(time_pairs(pairs, |i| {
                let resource = format!("r{i}");
                instance.lock(&resource, "bench-client").unwrap().unwrap();
                instance.unlock(&resource, "bench-client").unwrap().unwrap();
            }));
            // The same pair as the daemon sends it: one-request batches.
            batched.push(time_pairs(pairs, |i| {
                let request = LockRequest {
                    resource: format!("b{i}"),
                    client: "bench-client".to_owned(),
                };
                for request in [Request::Lock(request.clone()), Request::Unlock(request)] {
                    let results = instance.apply(&[request]).unwrap();
                    assert!(matches!(results.as_slice(), [Ok(_)]), "{results:?}");
                }
            }));
            queued.push(time_pairs(pairs, |i| {
                let name = format!("r{i}");
                lockd.lock(&name, "bench-client").unwrap();
                lockd.unlock(&name, "bench-client").unwrap();
            }));
            native.push(time_pairs(pairs, |i| {
                native_pair(
                    native_dir.path(),
                    &spare,
                    journal.as_mut(),
                    &format!("r{i}"),
                    i,
                )
            }));
            let last = |v: &Vec<Duration>| *v.last().unwrap();
            ratios.push(last(&guest).as_secs_f64() / last(&native).as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        let (guest, native) = (median(guest), median(native));
        println!(
            "sync={:<6} pairs={pairs:<6} component {:>6.1} us   std::fs {:>6.1} us   ratio {:.2}x (rounds {:.2}-{:.2}x)   as batches {:>6.1} us   through Lockd's queue {:>6.1} us",
            format!("{durability:?}").to_lowercase(),
            us(guest),
            us(native),
            guest.as_secs_f64() / native.as_secs_f64(),
            ratios[0],
            ratios[ROUNDS - 1],
            us(median(batched)),
            us(median(queued)),
        );
    }
}
