//! The status page in a real browser: headless Chromium (Debian's
//! `chromium`; tests/setup.sh installs it) runs its script, so the filter
//! box and what it hides are tested as a person would see them.

use crate::support::TestServer;
use std::process::Command;

/// Chromium, headless, with nothing that reaches beyond this machine.
fn chromium(profile: &std::path::Path) -> Command {
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The page's DOM once its script has run.
fn rendered(url: &str, profile: &std::path::Path) -> String {
    let output = chromium(profile)
        .args(["--virtual-time-budget=2000", "--dump-dom", url])
        .output()
        .expect("chromium (Debian's chromium package; tests/setup.sh installs it)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_status_page_shows_held_locks_and_filters_them_in_chromium() {
    let server = TestServer::start();
    let profile = tempfile::tempdir().unwrap();
    server.call("lock", &["vm/web-01", "host-a"]).unwrap();
    server.call("lock", &["disk/<db>", "host-b"]).unwrap();
    server.call("lock", &["job:backup", "cron@host-c"]).unwrap();
    server
        .call("unlock", &["job:backup", "cron@host-c"])
        .unwrap();

    let dom = rendered(&server.url(), profile.path());
    assert!(
        dom.contains("<span id=\"count\">2 locks held</span>"),
        "{dom}"
    );
    let rows: Vec<&str> = dom.lines().filter(|l| l.starts_with("<tr")).collect();
    assert_eq!(rows.len(), 2, "two locks, by resource: {rows:#?}");
    assert!(
        rows[0].contains("disk/&lt;db&gt;") && rows[0].contains("host-b"),
        "{rows:#?}"
    );
    assert!(
        rows[1].contains("vm/web-01") && rows[1].contains("host-a"),
        "{rows:#?}"
    );
    assert!(!dom.contains("job:backup"), "released locks are not shown");

    // The filter (kept in the URL fragment across reloads) hides the rest.
    let filtered = rendered(&format!("{}#host-a", server.url()), profile.path());
    assert!(
        filtered.contains("<span id=\"count\">1 of 2 locks held</span>"),
        "{filtered}"
    );
    let hidden: Vec<&str> = filtered
        .lines()
        .filter(|l| l.starts_with("<tr class=\"hidden\""))
        .collect();
    assert_eq!(hidden.len(), 1, "{filtered}");
    assert!(hidden[0].contains("disk/&lt;db&gt;"));

    // And it draws: a screenshot (the one in docs/ is made this way).
    let png = profile.path().join("status-page.png");
    let output = chromium(profile.path())
        .arg("--window-size=1100,380")
        .arg(format!("--screenshot={}", png.display()))
        .arg(server.url())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
        "{} bytes",
        bytes.len()
    );
}
