//! What lockd asks of the file system, in what order, as strace sees it.

use crate::support::{TestServer, Traced, temp_lock_dir};
use std::time::{Duration, Instant};

#[test]
fn the_token_mark_reaches_the_disk_before_its_name_points_at_it() {
    let (tmp, dir) = temp_lock_dir();
    let log = tmp.path().join("strace.log");
    let log_arg = log.to_str().unwrap();
    let trace = "trace=openat,openat2,pwrite64,fdatasync,fsync,renameat,renameat2,linkat";
    let wrapper = ["strace", "-f", "-qq", "-e", trace, "-o", log_arg];
    let mut server = TestServer::try_start_under(&wrapper, &dir, &[]).unwrap();
    let daemon = Traced::of(&server);
    // The first token reserves a range: `.lockd.tokens` is written.
    server.call("lockd.acquire", &["r", "c"]).unwrap();
    // SAFETY: kill(2) of the daemon strace runs for this test.
    assert_eq!(unsafe { libc::kill(daemon.0, libc::SIGTERM) }, 0);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log).unwrap();
    // Each name given to the mark (a rename or a link onto it) must come
    // after the data under the name it comes from was synced.
    let lines: Vec<&str> = log.lines().collect();
    let namings: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let line = lines[i];
            (line.contains("rename") || line.contains("linkat("))
                && line.contains("\".lockd.tokens\"")
                && line.ends_with("= 0")
        })
        .collect();
    assert!(!namings.is_empty(), "the mark was never written:\n{log}");
    for &at in &namings {
        let source = lines[at].split('"').nth(1).unwrap();
        let opened = lines[..at]
            .iter()
            .rposition(|l| l.contains("openat") && l.contains(&format!("\"{source}\"")))
            .unwrap_or_else(|| panic!("{source} never opened:\n{log}"));
        let fd = lines[opened].rsplit("= ").next().unwrap().trim();
        let synced = lines[opened..at].iter().any(|l| {
            l.contains(&format!("fdatasync({fd})")) || l.contains(&format!("fsync({fd})"))
        });
        assert!(
            synced,
            "{} before its data was synced:\n{}",
            lines[at],
            lines[opened..=at].join("\n")
        );
    }
}

/// Whether `content` is the whole lock file of a lock of X: its holder's
/// line, `x-holder` or `x-other`.
fn whole_x(content: &[u8]) -> bool {
    content == b"x-holder\n" || content == b"x-other\n"
}

#[derive(Default, Debug)]
struct Reads {
    /// Opened by name and read: a whole file of X.
    whole: u64,
    /// Opened by name: no file.
    absent: u64,
    /// Read again through the descriptor opened the time before, after
    /// more locks and unlocks: the same content.
    again: u64,
    /// Anything else.
    wrong: Vec<String>,
}

#[test]
fn readers_of_a_lock_file_see_its_holder_whole_or_no_file() {
    use std::io::{Read as _, Seek as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = TestServer::start_with(&["--sync", "none"]);
    let file = server.dir.join("X.resource.lock");
    let other = "y".repeat(600);
    let stop = AtomicBool::new(false);
    let read_all = |f: &mut std::fs::File| {
        let mut content = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut content).unwrap();
        content
    };
    let (reads, cycles) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut reads = Reads::default();
                    let mut kept: Option<(std::fs::File, Vec<u8>)> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut f) = std::fs::File::open(&file) else {
                            reads.absent += 1;
                            continue;
                        };
                        let content = read_all(&mut f);
                        if !whole_x(&content) {
                            reads.wrong.push(String::from_utf8_lossy(&content).into());
                            continue;
                        }
                        reads.whole += 1;
                        if let Some((mut old, first)) = kept.take() {
                            let again = read_all(&mut old);
                            if again == first {
                                reads.again += 1;
                            } else {
                                reads.wrong.push(String::from_utf8_lossy(&again).into());
                            }
                        }
                        kept = Some((f, content));
                    }
                    reads
                })
            })
            .collect();
        // Locked and unlocked in turn: X, Y with a 600-byte holder, X by
        // another holder, Y by X's first holder. An inode linked again as a
        // lock file must hold what it held: the same resource, the same
        // holder.
        let client = server.client();
        let call = |method: &str, resource: &str, holder: &str| {
            client
                .call(method, &[resource.into(), holder.into()])
                .unwrap();
        };
        let start = Instant::now();
        let mut cycles = 0;
        while start.elapsed() < Duration::from_secs(20) {
            call("lock", "X", "x-holder");
            call("unlock", "X", "x-holder");
            call("lock", "Y", &other);
            call("unlock", "Y", &other);
            call("lock", "X", "x-other");
            call("unlock", "X", "x-other");
            call("lock", "Y", "x-holder");
            call("unlock", "Y", "x-holder");
            cycles += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let reads: Vec<Reads> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        (reads, cycles)
    });
    let total = |f: fn(&Reads) -> u64| reads.iter().map(f).sum::<u64>();
    let wrong: Vec<&String> = reads.iter().flat_map(|r| &r.wrong).collect();
    eprintln!(
        "readers: {} whole reads of X, {} of no file, {} re-reads through an old descriptor, \
         {} wrong; {cycles} lock/unlock cycles of X and Y",
        total(|r| r.whole),
        total(|r| r.absent),
        total(|r| r.again),
        wrong.len()
    );
    assert!(total(|r| r.whole) > 0 && total(|r| r.again) > 0);
    assert!(
        wrong.is_empty(),
        "{} wrong reads, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}
