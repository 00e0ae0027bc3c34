//! Tries every way out of the directory it was given, and writes what
//! happened to `escape-report.txt` inside it: one `name: blocked` or
//! `name: ESCAPED` line per attempt. Run by lockd's sandbox test with the
//! exact WASI context the lock component gets.

use std::fmt::Write as _;
use std::io::Read as _;

fn main() {
    let mut report = String::new();
    let mut attempt = |name: &str, escaped: bool, detail: String| {
        let verdict = if escaped { "ESCAPED" } else { "blocked" };
        let _ = writeln!(report, "{name}: {verdict} ({detail})");
    };

    for path in [
        "../secret.txt",
        "/../secret.txt",
        "/../../secret.txt",
        "outside-link/secret.txt",
    ] {
        let result = std::fs::read_to_string(path);
        attempt(
            &format!("read {path}"),
            result.is_ok(),
            format!("{result:?}"),
        );
    }
    for path in [
        "../escaped.txt",
        "/../escaped.txt",
        "outside-link/escaped.txt",
    ] {
        let result = std::fs::write(path, "out");
        attempt(
            &format!("write {path}"),
            result.is_ok(),
            format!("{result:?}"),
        );
    }
    // The preopen itself, through the raw WASI calls.
    let (dir, _) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .next()
        .expect("a preopened directory");
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    for path in ["..", "../secret.txt", "/etc/passwd", "outside-link"] {
        let opened = dir.open_at(
            PathFlags::SYMLINK_FOLLOW,
            path,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        );
        attempt(
            &format!("open_at {path}"),
            opened.is_ok(),
            format!("{:?}", opened.err()),
        );
    }
    let link = dir.symlink_at("..", "made-link");
    let through = std::fs::read_to_string("made-link/secret.txt");
    attempt(
        "symlink to .. and read through it",
        through.is_ok(),
        format!("{link:?} {through:?}"),
    );
    let renamed = dir.rename_at("port.txt", &dir, "../stolen.txt");
    attempt("rename a file out", renamed.is_ok(), format!("{renamed:?}"));
    let listing: Vec<String> = std::fs::read_dir("/")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    attempt(
        "list / and find the parent's files",
        listing.iter().any(|name| name == "secret.txt"),
        format!("{listing:?}"),
    );
    let vars: Vec<(String, String)> = std::env::vars().collect();
    attempt(
        "read the environment",
        !vars.is_empty(),
        format!("{vars:?}"),
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    attempt("read arguments", !args.is_empty(), format!("{args:?}"));
    let port = std::fs::read_to_string("port.txt").unwrap_or_default();
    let connect = std::net::TcpStream::connect(format!("127.0.0.1:{}", port.trim()));
    attempt(
        "connect to 127.0.0.1",
        connect.is_ok(),
        format!("{connect:?}"),
    );
    let mut stdin = String::new();
    let read = std::io::stdin().read_to_string(&mut stdin);
    attempt("read stdin", !stdin.is_empty(), format!("{read:?}"));

    std::fs::write("escape-report.txt", report).expect("writing the report in its own directory");
}
