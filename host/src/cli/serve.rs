//! `lockd serve`: the daemon.

use super::etcd_args::EtcdArgs;
use super::tls_args::{TlsArgs, reload_on_sighup};
use crate::auth::AuthFile;
use crate::http::{self, ServeConfig};
use crate::locks::{Durability, Lockd, Options};
use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
    /// The longest request head accepted (request line, headers and the
    /// empty line ending them), in bytes; longer ones get 431 and their
    /// connection is closed, from the first byte past it.
    #[arg(long, env = "LOCKD_MAX_HEADER", default_value_t = ServeConfig::default().max_header)]
    max_header: usize,
    /// The most bytes of requests one connection may have waiting behind
    /// its request in progress (each counts its head, its body and 2 KiB);
    /// past it the connection is closed.
    #[arg(long, env = "LOCKD_MAX_QUEUED", default_value_t = ServeConfig::default().max_queued)]
    max_queued: usize,
    /// The most bytes all connections together may make lockd hold (heads
    /// being read, requests waiting, answers being written); past it the
    /// connections holding most (64 KiB or more) are closed until the rest
    /// is within it.
    #[arg(long, env = "LOCKD_MAX_BUFFERED", default_value_t = ServeConfig::default().max_buffered)]
    max_buffered: usize,
    /// When new connections pass through lockd's front door, which reads
    /// their requests one at a time (a hop more per request): `auto`, for
    /// 10 s after a connection was cut off for what it made lockd hold
    /// (pipelining without reading, heads or bodies past the bounds);
    /// `always`; or `never`. Over IPv4 only.
    #[arg(long, env = "LOCKD_FRONT", value_enum, default_value_t = http::FrontMode::Auto)]
    front: http::FrontMode,
    /// When a change counts as done: `always` (synced to disk before the
    /// reply; survives power loss) or `none` (written, synced when the OS
    /// decides, as gocept.lockd did; survives a daemon crash, not power loss).
    #[arg(long, env = "LOCKD_SYNC", value_enum, default_value_t = Durability::Always)]
    sync: Durability,
    /// Threads always ready to take requests; more start while clients
    /// stall (one whenever the last free one takes a request), and end
    /// when idle.
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
    /// The most clients that may wait for locks at once; more get fault 6
    /// at once.
    #[arg(long, env = "LOCKD_MAX_WAITERS", default_value_t = Options::default().max_waiters)]
    max_waiters: usize,
    /// Seconds a connection may stay silent (between requests, or within
    /// one) before it is closed, and a client may take to accept an
    /// answer; 0 waits for ever.
    #[arg(long, env = "LOCKD_IDLE_TIMEOUT", default_value_t = 60.0, value_parser = seconds)]
    idle_timeout: f64,
    /// The most connections open at once; past it new ones are answered
    /// 503 and closed (counted every 50 ms, so a burst can pass it
    /// briefly; with TLS, closed before their handshake). Unbounded if
    /// not given.
    #[arg(long, env = "LOCKD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Who may call: a file of `name:password[:role]` lines, role `client`
    /// (the default) or `operator` (may also break locks). Users log in
    /// with HTTP Basic authentication, or are named by a TLS client
    /// certificate (an empty password: certificate only). Reloaded on
    /// SIGHUP. Without it, anyone who can connect may do anything.
    #[arg(long, env = "LOCKD_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Cluster mode: the most, in seconds, the hosts' clocks may differ; a
    /// lock whose lease ran out goes to another client only this much
    /// later.
    #[arg(long, env = "LOCKD_MAX_CLOCK_SKEW", default_value_t = 1.0, value_parser = seconds)]
    max_clock_skew: f64,
    /// Seconds new connections may go unanswered before the HTTP server is
    /// taken to be broken and the daemon exits (status 70), to be restarted.
    #[arg(long, default_value_t = 30.0, value_parser = seconds, hide = true)]
    wedged_after: f64,
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
    raise_open_files_limit();
    let options = Options {
        durability: args.sync,
        lock_delay: Duration::from_secs_f64(args.lock_delay),
        max_wait: Duration::from_secs_f64(args.max_wait),
        max_waiters: args.max_waiters,
    };
    let lockd = if !args.etcd.given() {
        let lockd = Lockd::open_with(&args.dir, &options)?;
        let report = lockd.open_report();
        tracing::info!(
            "{}: {} locks held, {} changes replayed from the journal",
            lockd.location(),
            report.held,
            report.replayed
        );
        for note in &report.notes {
            tracing::warn!("{note}");
        }
        lockd
    } else {
        let skew = Duration::from_secs_f64(args.max_clock_skew);
        let etcd = args.etcd.client()?;
        Lockd::on_etcd(etcd, &args.etcd.etcd_prefix, skew, &options)?
    };
    let lockd = Arc::new(lockd);
    let auth = match &args.auth_file {
        Some(path) => Some(Arc::new(AuthFile::load(path)?)),
        None => None,
    };
    let idle = (args.idle_timeout > 0.0).then(|| Duration::from_secs_f64(args.idle_timeout));
    let max_connections = args.max_connections.map(|n| n as usize);
    let tls = args.tls.load()?;
    let doors = http::DoorConfig {
        max_connections,
        front: args.front,
        bounds: http::FrontBounds {
            max_header: args.max_header,
            max_body: args.max_body,
            idle,
        },
    };
    let listener = match &tls {
        None => http::Listener::bind(&args.listen, idle, doors, lockd.metrics_handle()),
        Some(tls) => http::Listener::bind_tls(
            &args.listen,
            idle,
            max_connections,
            tls.clone(),
            args.tls.handshake_timeout(),
            lockd.metrics_handle(),
        ),
    }
    .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .public_addr()
        .context("listening on a non-IP address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    reload_on_sighup(tls, auth.clone())?;
    if auth.is_none() && !addr.ip().is_loopback() && args.tls.tls_client_ca.is_none() {
        tracing::warn!(
            "listening on {addr}, beyond this machine, without authentication: anyone who \
             can connect can take, release and break locks (see --auth-file)"
        );
    }
    tracing::info!(
        "lockd {} listening on {}://{addr}/ with {} (sync={})",
        env!("CARGO_PKG_VERSION"),
        scheme,
        lockd.location(),
        args.sync.name()
    );
    let config = ServeConfig {
        max_body: args.max_body,
        max_header: args.max_header,
        max_queued: args.max_queued,
        max_buffered: args.max_buffered,
        workers: args.workers,
        auth,
        wedged_after: Duration::from_secs_f64(args.wedged_after),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("handling SIGTERM and SIGINT")?;
    }
    let served = http::serve(listener, lockd.clone(), &config, &stop);
    // Everything answered has been made as durable as --sync says; with
    // --sync=none, hand the written files to the disk before going.
    if let Err(e) = lockd.flush() {
        tracing::warn!("syncing the lock directory: {e}");
    }
    drop(lockd);
    tracing::info!("stopped");
    served.map_err(|e| anyhow::anyhow!(e))
}

/// Raises the soft limit on open files to the hard limit: every connection
/// is a descriptor, and running out stops the HTTP server accepting.
pub(super) fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit of our own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open files limit");
            }
        }
    }
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
