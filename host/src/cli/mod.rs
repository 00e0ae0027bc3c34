//! The `lockd` command line: the daemon, the client subcommands for shell
//! scripts, and `lockd run`.

mod calls;
mod etcd_args;
mod import;
mod run;
mod serve;
mod tls_args;
mod tools;

use crate::locks::Durability;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

/// Exit codes of the client subcommands, besides 0 for success and the
/// fault codes 1 to 6 themselves (1 already locked, 2 not locked, 3 locked
/// by another client, 4 invalid name, 5 lease expired or stale token, 6
/// wait timed out).
pub mod exit {
    /// The command line is wrong.
    pub const USAGE: u8 = 64;
    /// The daemon could not be reached or answered nonsense.
    pub const UNAVAILABLE: u8 = 69;
    /// The daemon failed (an internal or protocol fault), or the daemon
    /// itself could not start.
    pub const SOFTWARE: u8 = 70;
    /// `lockd run`: the lock was lost (broken, or its lease could not be
    /// renewed) while the command ran; the command was stopped.
    pub const LOCK_LOST: u8 = 75;
}

#[derive(Debug, Parser)]
#[command(
    name = "lockd",
    version,
    about = "A lock daemon for fencing, compatible with gocept.lockd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: XML-RPC over HTTP on --listen, locks in --dir.
    Serve(serve::ServeArgs),
    /// Lock RESOURCE for CLIENT (exit 1 if anyone holds it).
    Lock(calls::LockArgs),
    /// Release CLIENT's lock on RESOURCE (exit 2 if not locked, 3 if held by another).
    Unlock(calls::LockArgs),
    /// Take a lock with a fencing token, a lease or a wait (lockd.acquire).
    Acquire(calls::AcquireArgs),
    /// Release a lock taken with acquire (lockd.release).
    Release(calls::ReleaseArgs),
    /// Extend the lease of a lock (lockd.renew).
    Renew(calls::RenewArgs),
    /// Show who holds a lock (exit 2 if nobody does) (lockd.status).
    Status(calls::StatusArgs),
    /// List the held locks (lockd.list).
    List(calls::ListArgs),
    /// Remove a lock whoever holds it, as an operator (lockd.break_lock).
    BreakLock(calls::BreakArgs),
    /// Move a lock directory's locks into an etcd cluster (cluster mode),
    /// with every token from then on above the directory's.
    Import(import::ImportArgs),
    /// Run a command while holding a lock, like flock(1): the lease is
    /// renewed while it runs, and the command is stopped if the lock is lost.
    Run(run::RunArgs),
    /// Measure throughput, latency, start-up and memory of lockd (and of a
    /// baseline server) under lock/unlock load on 127.0.0.1.
    Bench(BenchArgs),
    /// Write the lock component (.wasm) this binary runs, and its WIT, for
    /// other WebAssembly hosts.
    Component(tools::ComponentArgs),
    /// Print a shell completion script.
    Completions(tools::CompletionsArgs),
    /// Print the manual page, or write one per subcommand into a directory.
    Man(tools::ManArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Connection counts to measure, each a run of its own.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    connections: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Sync modes to measure, each with a daemon of its own.
    #[arg(long, value_delimiter = ',', default_value = "always,none")]
    sync: Vec<Durability>,
    /// Contend: all connections lock and unlock these few shared resources
    /// (faults are expected and counted) instead of each its own.
    #[arg(long)]
    contended: Option<usize>,
    /// Lock files to create before the daemon starts (start-up with many
    /// held locks).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Another XML-RPC lock server (e.g. gocept.lockd) to run the same load
    /// against, right after each lockd run; the ratio is printed.
    #[arg(long)]
    baseline: Option<String>,
    /// Run the daemon on these CPUs only (a taskset(1) list such as `0`);
    /// pin `lockd bench` itself elsewhere, e.g. `taskset -c 1 lockd bench`.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Also open this many connections back to back, once per daemon, and
    /// print how long until all were connected and each answered a call.
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// Cluster mode: run the daemon on the etcd cluster at these client
    /// URLs, next to etcd's own lock service on it and one guarded etcd
    /// transaction alone, instead of on directories.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Also measure a daemon serving TLS with this certificate (PEM),
    /// next to plain HTTP; with --tls-key and --tls-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA that signed --tls-cert, for the load's connections to trust.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// Another lockd binary (an older build) to measure by turns with this
    /// one, in the same sitting: prints the ratio of the medians per sync
    /// mode and connection count.
    #[arg(long, conflicts_with_all = ["baseline", "etcd", "tls_cert", "contended", "preload", "storm"])]
    against: Option<std::path::PathBuf>,
    /// Rounds with --against: each runs both binaries, the first of the
    /// pair alternating.
    #[arg(long, default_value_t = 3, requires = "against")]
    rounds: usize,
}

/// Runs the command line.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(args) => match serve::serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockd: {e:#}");
                ExitCode::from(exit::SOFTWARE)
            }
        },
        Command::Lock(args) => calls::lock(&args, "lock"),
        Command::Unlock(args) => calls::lock(&args, "unlock"),
        Command::Acquire(args) => calls::acquire(&args),
        Command::Release(args) => calls::release(&args),
        Command::Renew(args) => calls::renew(&args),
        Command::Status(args) => calls::status(&args),
        Command::List(args) => calls::list(&args),
        Command::BreakLock(args) => calls::break_lock(&args),
        Command::Run(args) => run::run(args),
        Command::Import(args) => import::import(&args),
        Command::Component(args) => tools::component(&args),
        Command::Completions(args) => tools::completions(&args),
        Command::Man(args) => tools::man(&args),
        Command::Bench(args) => {
            // A storm holds a descriptor per connection.
            serve::raise_open_files_limit();
            let config = crate::bench::BenchConfig {
                connections: args.connections,
                duration: std::time::Duration::from_secs_f64(args.duration),
                syncs: args.sync,
                contended: args.contended,
                preload: args.preload,
                baseline: args.baseline,
                server_cpus: args.server_cpus,
                storm: args.storm,
                etcd: args.etcd,
                tls: match (args.tls_cert, args.tls_key, args.tls_ca) {
                    (Some(cert), Some(key), Some(ca)) => {
                        Some(crate::bench::BenchTls { cert, key, ca })
                    }
                    _ => None,
                },
                against: args.against.map(|other| (other, args.rounds)),
            };
            match crate::bench::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockd bench: {e:#}");
                    ExitCode::from(exit::SOFTWARE)
                }
            }
        }
    }
}
