//! `lockd serve`: the daemon.

use crate::http::{self, ServeConfig};
use crate::locks::{Durability, Lockd, Options};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
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
pub fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..1e12).contains(&secs) => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds (0 or more)")),
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let options = Options {
        durability: args.sync,
        lock_delay: Duration::from_secs_f64(args.lock_delay),
        max_wait: Duration::from_secs_f64(args.max_wait),
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
