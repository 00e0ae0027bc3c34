//! The `lockd` command line: the daemon and the client subcommands.

use crate::client::{CallError, Client};
use crate::http::{self, ServeConfig};
use crate::locks::{Durability, Lockd, Options};
use crate::xmlrpc::Value;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes of the client subcommands, besides 0 for success and the
/// fault codes 1 to 6 themselves (1 already locked, 2 not locked, 3 locked
/// by another client, 4 invalid name, 5 stale token, 6 wait timed out).
pub mod exit {
    /// The command line is wrong.
    pub const USAGE: u8 = 64;
    /// The daemon could not be reached or answered nonsense.
    pub const UNAVAILABLE: u8 = 69;
    /// The daemon failed (an internal or protocol fault), or the daemon
    /// itself could not start.
    pub const SOFTWARE: u8 = 70;
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
    Serve(ServeArgs),
    /// Lock RESOURCE for CLIENT (exit 1 if anyone holds it).
    Lock(LockArgs),
    /// Release CLIENT's lock on RESOURCE (exit 2 if not locked, 3 if held by another).
    Unlock(LockArgs),
    /// Measure throughput, latency, start-up and memory of lockd (and of a
    /// baseline server) under lock/unlock load on 127.0.0.1.
    Bench(BenchArgs),
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
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The lock directory; created if missing.
    #[arg(long, env = "LOCKD_DIR", default_value = "lockd-data")]
    dir: PathBuf,
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, env = "LOCKD_LISTEN", default_value = "127.0.0.1:8000")]
    listen: String,
    /// The largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "LOCKD_MAX_BODY", default_value_t = ServeConfig::default().max_body)]
    max_body: usize,
    /// When a change counts as done: `always` (synced to disk before the
    /// reply; survives power loss) or `none` (written, synced when the OS
    /// decides, as gocept.lockd did; survives a daemon crash, not power loss).
    #[arg(long, env = "LOCKD_SYNC", value_enum, default_value_t = Durability::Always)]
    sync: Durability,
    /// Threads answering requests.
    #[arg(long, env = "LOCKD_WORKERS", default_value_t = ServeConfig::default().workers)]
    workers: usize,
    /// Seconds a lock whose lease expired, or which was broken, stays
    /// unavailable to everyone (so its old holder notices first); 0 allowed.
    #[arg(long, env = "LOCKD_LOCK_DELAY", default_value_t = Options::default().lock_delay.as_secs_f64(), value_parser = seconds)]
    lock_delay: f64,
    /// The longest, in seconds, a client may wait for a lock; longer
    /// waits asked for are cut to it.
    #[arg(long, env = "LOCKD_MAX_WAIT", default_value_t = Options::default().max_wait.as_secs_f64(), value_parser = seconds)]
    max_wait: f64,
}

/// A non-negative, finite number of seconds.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..1e12).contains(&secs) => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds (0 or more)")),
    }
}

#[derive(Debug, Args)]
struct LockArgs {
    /// The resource to lock, any non-empty name.
    resource: String,
    /// Who holds the lock.
    client: String,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// The daemon's URL.
    #[arg(long, env = "LOCKD_URL", default_value = "http://127.0.0.1:8000/")]
    url: String,
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
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockd: {e:#}");
                ExitCode::from(exit::SOFTWARE)
            }
        },
        Command::Lock(args) => call(&args.daemon, "lock", &[&args.resource, &args.client]),
        Command::Unlock(args) => call(&args.daemon, "unlock", &[&args.resource, &args.client]),
        Command::Bench(args) => {
            let config = crate::bench::BenchConfig {
                connections: args.connections,
                duration: std::time::Duration::from_secs_f64(args.duration),
                syncs: args.sync,
                contended: args.contended,
                preload: args.preload,
                baseline: args.baseline,
                server_cpus: args.server_cpus,
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let options = Options {
        durability: args.sync,
        lock_delay: std::time::Duration::from_secs_f64(args.lock_delay),
        max_wait: std::time::Duration::from_secs_f64(args.max_wait),
    };
    let lockd = Arc::new(Lockd::open_with(&args.dir, &options)?);
    let report = lockd.open_report();
    tracing::info!(
        "lock directory {}: {} locks held, {} changes replayed from the journal",
        lockd.dir().display(),
        report.held,
        report.replayed
    );
    for note in &report.notes {
        tracing::warn!("{note}");
    }
    let server = tiny_http::Server::http(&args.listen)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("listening on a non-IP address")?;
    tracing::info!(
        "lockd {} listening on http://{addr}/ with lock directory {} (sync={})",
        env!("CARGO_PKG_VERSION"),
        lockd.dir().display(),
        args.sync.name()
    );
    let config = ServeConfig {
        max_body: args.max_body,
        workers: args.workers,
    };
    http::serve(Arc::new(server), lockd, &config);
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// One client call; the fault's message goes to stderr and its code
/// becomes the exit code.
fn call(daemon: &DaemonArgs, method: &str, params: &[&str]) -> ExitCode {
    let client = match Client::new(&daemon.url) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("lockd: {e:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let params: Vec<Value> = params.iter().map(|&p| Value::from(p)).collect();
    match client.call(method, &params) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd: {e}");
            ExitCode::from(match e {
                CallError::Fault(fault) => u8::try_from(fault.code)
                    .ok()
                    .filter(|code| (1..=6).contains(code))
                    .unwrap_or(exit::SOFTWARE),
                CallError::Transport(_) => exit::UNAVAILABLE,
            })
        }
    }
}
