//! What running the lock semantics inside wasmtime costs: a lock+unlock pair
//! through the component's exports (in-process, no HTTP) against the same
//! file operations done natively with `std::fs`; and, for comparison, the
//! same pair through [`Lockd`], whose queue (group commit, waiters) sits
//! in front of the component in the daemon.
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

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!("lock+unlock pairs, one at a time, in-process; mean per pair");
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
        let mut call = |request: Request| {
            let results = instance.apply(&[request]).unwrap();
            assert!(matches!(results.as_slice(), [Ok(_)]), "{results:?}");
        };
        let guest = time_pairs(pairs, |i| {
            let request = LockRequest {
                resource: format!("r{i}"),
                client: "bench-client".to_owned(),
            };
            call(Request::Lock(request.clone()));
            call(Request::Unlock(request));
        });

        let queued_dir = tempfile::tempdir().unwrap();
        let lockd = Lockd::open_with(
            queued_dir.path(),
            &Options {
                durability,
                ..Options::default()
            },
        )
        .unwrap();
        let queued = time_pairs(pairs, |i| {
            let name = format!("r{i}");
            lockd.lock(&name, "bench-client").unwrap();
            lockd.unlock(&name, "bench-client").unwrap();
        });

        let native_dir = tempfile::tempdir().unwrap();
        let mut journal = (durability == Durability::Always)
            .then(|| File::create(native_dir.path().join(".lockd.journal")).unwrap());
        let spare = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(native_dir.path().join(".lockd-spare-0"))
            .unwrap();
        let native = time_pairs(pairs, |i| {
            native_pair(
                native_dir.path(),
                &spare,
                journal.as_mut(),
                &format!("r{i}"),
                i,
            )
        });
        println!(
            "sync={:<6} pairs={pairs:<6} component {:>6.1} us   std::fs {:>6.1} us   ratio {:.2}x   (through Lockd's queue {:>6.1} us)",
            format!("{durability:?}").to_lowercase(),
            guest.as_secs_f64() * 1e6,
            native.as_secs_f64() * 1e6,
            guest.as_secs_f64() / native.as_secs_f64(),
            queued.as_secs_f64() * 1e6,
        );
    }
}
