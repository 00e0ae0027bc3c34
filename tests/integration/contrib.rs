//! `contrib/lockd.service`: systemd accepts it, and the daemon accepts the
//! command line it runs.

use crate::support::{LOCKD, temp_lock_dir};
use std::io::BufRead as _;
use std::process::{Command, Stdio};

const UNIT: &str = include_str!("../../contrib/lockd.service");

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("lockd.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/lockd", LOCKD)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; tests/setup.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=lockd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
    ] {
        assert!(UNIT.lines().any(|l| l == directive), "{directive}");
    }
}

#[test]
fn the_daemon_runs_the_units_command_line() {
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/lockd "))
        .expect("an ExecStart line");
    let (_tmp, dir) = temp_lock_dir();
    let args: Vec<String> = exec
        .split_whitespace()
        .map(|arg| match arg {
            "/var/lib/lockd" => dir.to_str().unwrap().to_owned(),
            "127.0.0.1:8000" => "127.0.0.1:0".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let mut daemon = Command::new(LOCKD)
        .args(&args)
        .env("LOCKD_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let listening = stderr
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening on http://127.0.0.1:"));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(listening, "lockd {args:?} did not start");
}
