//! lockd_client, the Python client (python/), installed with `pip install`
//! as its README says into a virtual environment of its own, against real
//! daemons, through the scripts tests/python/client_*.py: gocept.lockd's
//! doctest, leases kept alive by `hold()` and locks reported lost, failover
//! between the hosts of a cluster, bad input, and hosts that misbehave
//! (tests/python/client_hostile.py's fake hosts). The scripts print their
//! figures (see them with `--nocapture`).

use crate::etcd_cluster::EtcdCluster;
use crate::support::{GOCEPT_DOCTEST, TestServer, doc_block, run_ok};
use lockd::xmlrpc::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const README: &str = include_str!("../../README.md");
const CLIENT_README: &str = include_str!("../../python/README.md");

/// The Python of a virtual environment (target/test-python-client) in
/// which `pip install` installed a copy of python/ (a copy: the build
/// writes beside its sources). Made once per run.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target/test-python-client");
        let _ = std::fs::remove_dir_all(&dir);
        let source = dir.join("python");
        copy_sources(&root.join("python"), &source);
        let venv = dir.join("venv");
        run_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run_ok(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet"])
                .arg(&source),
        );
        venv.join("bin/python")
    })
}

/// Copies the files of `from` to `to`, the package `lockd_client/`
/// included, leaving out `__pycache__` and what a build left beside them.
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_file() {
            std::fs::copy(&path, to.join(name)).unwrap();
        } else if path.is_dir() && path.join("__init__.py").is_file() {
            copy_sources(&path, &to.join(name));
        }
    }
}

/// Runs `tests/python/<name>` with `args` in that environment; fails the
/// test if it fails. Returns what it printed.
fn script(name: &str, args: &[&str]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/");
    run_ok(
        Command::new(python())
            .arg(format!("{path}{name}"))
            .args(args),
    )
}

fn held(server: &TestServer, resource: &str) -> bool {
    server.call("lockd.status", &[resource]).unwrap() != Value::Nil
}

#[test]
fn the_gocept_doctest_through_the_client() {
    let server = TestServer::start();
    assert_eq!(
        script("client_doctest.py", &[&server.url()]),
        GOCEPT_DOCTEST
    );
}

/// Runs `program` in that environment against `server`, for the docs'
/// `http://127.0.0.1:8000/`; returns what it printed.
fn run_against(server: &TestServer, program: &str) -> String {
    let program = program.replace("http://127.0.0.1:8000/", &server.url());
    run_ok(Command::new(python()).args(["-c", &program]))
}

#[test]
fn the_readmes_client_examples_run_after_pip_install() {
    let server = TestServer::start();
    let example = doc_block(CLIENT_README, "## Holding a lock", "python");
    let printed = run_against(&server, &example);
    assert!(printed.starts_with("vm-42 is mine, token "), "{printed}");
    assert!(printed.ends_with("\nreleased\n"), "{printed}");
    assert!(!held(&server, "vm-42"));

    let example = doc_block(README, "lockd's Python client", "python");
    let start_vm = "def start_vm(vm, token):\n    print(vm, type(token).__name__)\n";
    let printed = run_against(&server, &format!("{start_vm}{example}"));
    assert_eq!(printed, "vm-42 int\n");
    assert!(!held(&server, "vm-42"));
}

#[test]
fn hold_renews_its_lease_for_longer_than_three_leases() {
    let server = TestServer::start();
    eprint!("{}", script("client_hold.py", &[&server.url(), "renews"]));
}

#[test]
fn hold_reports_a_lock_broken_by_an_operator_within_a_renewal_period() {
    let server = TestServer::start();
    eprint!("{}", script("client_hold.py", &[&server.url(), "broken"]));
}

#[test]
fn hold_reports_its_lock_lost_before_the_lease_ends_while_the_daemon_is_paused() {
    let server = TestServer::start();
    let pid = server.pid().to_string();
    eprint!(
        "{}",
        script("client_hold.py", &[&server.url(), "paused", &pid])
    );
    assert!(!held(&server, "vm-42"));
}

#[test]
fn bad_urls_and_hosts_that_are_not_lockd_are_refused_naming_the_url() {
    let server = TestServer::start();
    script("client_bad_input.py", &[&server.url()]);
}

#[test]
fn over_two_hosts_hold_keeps_its_lock_while_the_host_in_use_is_killed() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let pid = a.pid().to_string();
    eprint!(
        "{}",
        script("client_failover.py", &[&a.url(), &b.url(), "killed", &pid])
    );
    assert!(!held(&b, "vm-42"));
}

#[test]
fn over_two_hosts_hold_rides_out_one_paused_host_and_reports_both_paused() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let pid = a.pid().to_string();
    eprint!(
        "{}",
        script("client_failover.py", &[&a.url(), &b.url(), "paused", &pid])
    );
    let urls = format!("{},{}", a.url(), b.url());
    let pids = format!("{},{}", a.pid(), b.pid());
    eprint!("{}", script("client_hold.py", &[&urls, "paused", &pids]));
}

#[test]
fn over_two_hosts_the_doctest_runs_and_calls_whose_answer_was_lost_are_settled() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.lockd_host(), cluster.lockd_host());
    let urls = format!("{},{}", a.url(), b.url());
    assert_eq!(script("client_doctest.py", &[&urls]), GOCEPT_DOCTEST);
    eprint!(
        "{}",
        script("client_failover.py", &[&a.url(), &b.url(), "lost_answers"])
    );
}

/// Runs a scenario of client_hostile.py: fake hosts in the script's
/// process, alone or before a lockd host in directory mode.
fn hostile(scenario: &str) {
    let server = TestServer::start();
    eprint!(
        "{}",
        script("client_hostile.py", &[&server.url(), scenario])
    );
}

#[test]
fn hold_releases_a_lock_taken_then_lost_before_it_returned() {
    hostile("taken_then_lost");
}

#[test]
fn hold_reports_lost_in_time_when_renewals_are_answered_with_the_wrong_type() {
    hostile("wrong_type_renew");
}

#[test]
fn the_client_reuses_connections_and_renews_with_more_than_1024_files_open() {
    hostile("many_fds");
}

#[test]
fn a_host_dribbling_its_answer_gets_one_deadline_per_try_and_renewals_fail_in_time() {
    hostile("dribbled");
}

#[test]
fn a_lost_lock_answer_with_the_lock_held_under_the_callers_name_is_outcome_unknown() {
    hostile("lost_lock_answer");
}

#[test]
fn http_502_504_and_a_proxys_503_fail_over_while_lockds_own_503_did_not_happen() {
    hostile("gateways");
}

#[test]
fn fault_7_is_told_by_its_prefix_and_a_lost_multicall_is_outcome_unknown() {
    hostile("unknown_outcomes");
}

#[test]
fn over_three_hosts_hold_keeps_its_lock_while_the_first_or_the_first_two_are_paused() {
    let cluster = EtcdCluster::start(3);
    let (a, b, c) = (
        cluster.lockd_host(),
        cluster.lockd_host(),
        cluster.lockd_host(),
    );
    let (pid_a, pid_b) = (a.pid().to_string(), b.pid().to_string());
    for scenario in ["first_paused", "two_paused"] {
        eprint!(
            "{}",
            script(
                "client_three.py",
                &[&a.url(), &b.url(), &c.url(), &pid_a, &pid_b, scenario]
            )
        );
    }
    assert!(!held(&c, "paused-first") && !held(&c, "two-paused"));
}
