//! What lockd asks of the file system, in what order, as strace sees it.

use crate::support::{TestServer, temp_lock_dir};
use std::time::Duration;

/// The process strace runs (its only child).
fn traced(strace_pid: u32) -> i32 {
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn the_token_mark_reaches_the_disk_before_its_name_points_at_it() {
    let (tmp, dir) = temp_lock_dir();
    let log = tmp.path().join("strace.log");
    let log_arg = log.to_str().unwrap();
    let trace = "trace=openat,openat2,pwrite64,fdatasync,fsync,renameat,renameat2,linkat";
    let wrapper = ["strace", "-f", "-qq", "-e", trace, "-o", log_arg];
    let mut server = TestServer::try_start_under(&wrapper, &dir, &[]).unwrap();
    // The first token reserves a range: `.lockd.tokens` is written.
    server.call("lockd.acquire", &["r", "c"]).unwrap();
    // SAFETY: kill(2) of the daemon strace runs for this test.
    assert_eq!(
        unsafe { libc::kill(traced(server.pid()), libc::SIGTERM) },
        0
    );
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
