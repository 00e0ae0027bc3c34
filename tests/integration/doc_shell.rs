//! The shell blocks of the README and docs/operations.md, run as written
//! against a daemon: the transcripts print what they show (numbers and
//! times aside), the scripts do what the text says, and the command-line
//! synopsis names only flags lockd has.

use crate::support::{LOCKD, TestServer, bin_dir, doc_block, python_doctests, run_ok};
use lockd::xmlrpc::Value;
use std::path::Path;
use std::process::{Command, Output};

const README: &str = include_str!("../../README.md");
const OPERATIONS: &str = include_str!("../../docs/operations.md");

/// Runs `script` in bash with `bin` first on PATH and LOCKD_URL set to
/// `server`, its standard error into its standard output, as a terminal
/// shows them.
fn bash(script: &str, bin: &Path, server: &TestServer) -> Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    Command::new("bash")
        .args(["-c", &format!("exec 2>&1\n{script}")])
        .env("PATH", path)
        .env("LOCKD_URL", server.url())
        .output()
        .unwrap()
}

/// `text` with every run of digits as one `0`: what a transcript shows
/// of tokens and times is an example, their place and form are not.
fn shape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_operations_examples_print_what_they_show() {
    let transcript = doc_block(OPERATIONS, "Examples", "sh");
    // Each `$ command` and the lines it printed.
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in transcript.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_owned(), String::new())),
            None => {
                let (_, printed) = steps.last_mut().expect("output before a command");
                printed.push_str(line);
                printed.push('\n');
            }
        }
    }
    assert!(steps.len() >= 8, "{steps:?}");
    let script: String = steps
        .iter()
        .map(|(command, _)| format!("echo @@@\n{command}\n"))
        .collect();

    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let output = bash(&script, &bin_dir(tmp.path(), &[]), &server);
    let printed = String::from_utf8(output.stdout).unwrap();
    let printed: Vec<&str> = printed.split("@@@\n").skip(1).collect();
    assert_eq!(printed.len(), steps.len(), "{printed:?}");
    for ((command, shown), printed) in steps.iter().zip(printed) {
        assert_eq!(
            shape(printed),
            shape(shown),
            "`{command}` printed\n{printed}instead of\n{shown}"
        );
    }
    // What the session left: vm-42 released, vm-7 broken.
    assert_eq!(server.call("lockd.status", &["vm-42"]).unwrap(), Value::Nil);
    assert_eq!(server.call("lockd.status", &["vm-7"]).unwrap(), Value::Nil);
}

#[test]
fn the_readmes_shell_script_holds_the_lock_while_it_works_and_stops_if_taken() {
    let hostname = run_ok(&mut Command::new("hostname")).trim().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path(), &[]);
    let server = TestServer::start();
    // The block's `...` is the work: here, noting who holds vm-42 meanwhile.
    let work = tmp.path().join("work");
    let block = doc_block(README, "From a shell script", "sh");
    assert!(block.contains("\n...\n"), "{block}");
    let script = block.replace(
        "\n...\n",
        &format!("\nlockd status vm-42 > {}\n", work.display()),
    );

    let output = bash(&script, &bin, &server);
    assert!(output.status.success(), "{output:?}");
    let during = std::fs::read_to_string(&work).unwrap();
    assert!(
        during.starts_with(&format!("vm-42\t{hostname}\t")),
        "{during}"
    );
    assert_eq!(server.call("lockd.status", &["vm-42"]).unwrap(), Value::Nil);

    // Someone else has it: the script stops with exit 1 before the work.
    std::fs::remove_file(&work).unwrap();
    server.call("lock", &["vm-42", "someone-else"]).unwrap();
    let output = bash(&script, &bin, &server);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(!work.exists());
    let held = server.call("lockd.status", &["vm-42"]).unwrap();
    assert_eq!(
        held.member("client").and_then(Value::as_str),
        Some("someone-else")
    );
}

#[test]
fn the_readmes_lockd_run_line_gives_the_command_its_token_while_it_holds_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = tmp.path().join("seen");
    let start_vm = format!(
        "#!/bin/sh\necho \"$1 $LOCKD_TOKEN $(lockd status vm-42)\" > {}\n",
        seen.display()
    );
    let bin = bin_dir(tmp.path(), &[("start-vm", &start_vm)]);
    let server = TestServer::start();
    let block = doc_block(README, "Or, with a fencing token", "sh");

    let output = bash(&block, &bin, &server);
    assert!(output.status.success(), "{output:?}");
    let seen = std::fs::read_to_string(&seen).unwrap();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    // start-vm's argument, its token, and the lock as held meanwhile:
    // vm-42, the same token.
    assert_eq!(fields[0], "vm-42", "{seen}");
    assert_eq!(fields[2], "vm-42", "{seen}");
    assert_eq!(fields[1], fields[4], "{seen}");
    assert!(fields[1].parse::<u64>().unwrap() >= 1, "{seen}");
    assert_eq!(server.call("lockd.status", &["vm-42"]).unwrap(), Value::Nil);
}

#[test]
fn the_operations_synopsis_names_only_flags_lockd_has() {
    let synopsis = doc_block(OPERATIONS, "## Command line", "");
    // Each `lockd SUBCOMMAND ...` and the flags it names, continuation
    // lines included.
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    for line in synopsis.lines() {
        let continued = line.starts_with(' ');
        for (i, part) in line.split("lockd ").enumerate() {
            let mut words = part.split_whitespace();
            if i > 0 {
                commands.push((words.next().unwrap().to_owned(), Vec::new()));
            } else if !continued {
                continue;
            }
            let (_, flags) = commands.last_mut().unwrap();
            flags.extend(words.filter_map(|word| {
                let word = word.trim_start_matches('[').trim_end_matches(']');
                word.starts_with("--").then(|| word.to_owned())
            }));
        }
    }
    assert!(commands.len() >= 15, "{commands:?}");
    let serve = commands.iter().find(|(c, _)| c == "serve").unwrap();
    assert!(serve.1.contains(&"--etcd-ca".to_owned()), "{serve:?}");
    for (command, flags) in &commands {
        let help = run_ok(Command::new(LOCKD).args([command.as_str(), "--help"]));
        for flag in flags {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "`lockd {command} --help` has no {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn the_readmes_tls_recipe_makes_files_a_daemon_serves_mutual_tls_with() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path(), &[]);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let section = &README[README.find("## TLS and client certificates").unwrap()..];
    let make_ca = doc_block(section, "openssl", "sh");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    run_ok(
        Command::new("bash")
            .args(["-e", "-c", &make_ca])
            .current_dir(&work)
            .env("PATH", &path),
    );

    // The daemon as the recipe starts it, its files found in `work`.
    let (serve, status) = {
        let block = doc_block(section, "```sh\nlockd serve", "sh");
        let mut lines = block.lines().map(str::to_owned);
        (lines.next().unwrap(), lines.next().unwrap())
    };
    let args: Vec<String> = serve
        .strip_prefix("lockd serve ")
        .unwrap()
        .split_whitespace()
        .map(|arg| match arg.ends_with(".pem") {
            true => work.join(arg).to_string_lossy().into_owned(),
            false => arg.to_owned(),
        })
        .collect();
    assert!(args.contains(&"--tls-client-ca".to_owned()), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_with(&args);
    let url = server.url();
    assert!(url.starts_with("https://"), "{url}");

    // docs/operations.md's Python session, with the recipe's files.
    let tls = &OPERATIONS[OPERATIONS.find("## TLS").unwrap()..];
    let tls = &tls[..tls[3..].find("\n## ").unwrap()];
    python_doctests(tls, &url, &work);

    // The recipe's CLI call, as `oncall`: it sees what Python took.
    let status = status.replace("https://127.0.0.1:8000/", &url);
    let output = Command::new("bash")
        .args(["-c", &status])
        .current_dir(&work)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.starts_with("vm-42\thost-a\t"), "{printed}");
    // Without the client certificate, the handshake fails.
    let without: String = status.split(" --cert").next().unwrap().to_owned();
    let output = Command::new("bash")
        .args(["-c", &without])
        .current_dir(&work)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69), "{output:?}");
}
