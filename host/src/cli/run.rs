//! `lockd run RESOURCE -- COMMAND`: hold a lock while a command runs.
//!
//! The lock is taken with a lease (waiting for it if asked), the command
//! gets its fencing token as `LOCKD_TOKEN`, the lease is renewed every
//! third of its length while the command runs (each renewal giving up
//! while a quarter of what is left of the lease remains, and tried again
//! until the lease runs out), and the lock is released
//! when it ends; `lockd run` exits with the command's status. If the lock
//! is lost (broken by an operator, or not renewed before the lease ran
//! out), the command is stopped (SIGTERM, then SIGKILL after
//! `--kill-after`) and `lockd run` exits with [`exit::LOCK_LOST`].
//!
//! With several hosts in `--url`, every call moves on to the next host as
//! [`failover`](crate::failover) says, renewals too: each try of a
//! renewal gets at most half of what is left of its time while another host
//! could be tried, so that a host that stopped answering leaves time to
//! renew through another. An acquire that took longer than a renewal period
//! (a wait, or hosts that did not answer) is renewed before the command
//! starts.

use super::calls::{Acquire, DaemonArgs, call_on, wait_of};
use super::exit;
use super::serve::seconds;
use crate::failover::{Hosts, Kind, Limits};
use crate::xmlrpc::Value;
use clap::Args;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The resource to hold while COMMAND runs.
    resource: String,
    /// Who takes the lock [default: HOSTNAME/PID]
    #[arg(long, env = "LOCKD_CLIENT")]
    client: Option<String>,
    /// Seconds to wait in line for the lock (0: try once; exit 6 if the
    /// wait runs out).
    #[arg(long, value_parser = seconds, default_value_t = 0.0)]
    wait: f64,
    /// The lease in seconds: if this process dies, the lock ends this long
    /// after its last renewal.
    #[arg(long, value_parser = seconds, default_value_t = 15.0)]
    ttl: f64,
    /// Seconds between SIGTERM and SIGKILL when COMMAND must be stopped.
    #[arg(long, value_parser = seconds, default_value_t = 10.0)]
    kill_after: f64,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How often the child is looked at.
const POLL: Duration = Duration::from_millis(10);

pub fn run(args: RunArgs) -> ExitCode {
    if args.ttl <= 0.0 {
        eprintln!("lockd run: --ttl must be more than 0 seconds");
        return ExitCode::from(exit::USAGE);
    }
    let client = args.client.clone().unwrap_or_else(default_client);
    let ttl = Duration::from_secs_f64(args.ttl);
    let hosts = match args.daemon.hosts() {
        Ok(hosts) => hosts,
        Err(code) => return ExitCode::from(code),
    };
    let taking = Acquire {
        resource: &args.resource,
        client: &client,
        ttl: Some(args.ttl),
        wait: args.wait,
        reentrant: false,
    };
    let taken_at = Instant::now();
    let lock = match taking.call_on(&hosts, args.daemon.limits(wait_of(args.wait))) {
        Ok(lock) => lock,
        Err(code) => return ExitCode::from(code),
    };
    let Some(token) = lock.member("token").and_then(Value::as_i64) else {
        eprintln!("lockd run: the daemon answered without a token: {lock:?}");
        return ExitCode::from(exit::UNAVAILABLE);
    };
    let holding = Holding {
        hosts: &hosts,
        daemon: &args.daemon,
        resource: &args.resource,
        client: &client,
        token: token.to_string(),
        ttl,
    };
    // A lease counted from before a long acquire (a wait, or hosts that did
    // not answer) may have little left: renewed first, the command starts
    // with a whole lease, or not at all.
    let since = match holding.confirm(taken_at) {
        Ok(since) => since,
        Err(why) => {
            eprintln!(
                "lockd run: lost the lock on {} before starting the command: {why}",
                args.resource
            );
            holding.let_go();
            return ExitCode::from(exit::LOCK_LOST);
        }
    };
    let signals = Arc::new(AtomicUsize::new(0));
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // The flag only records the signal; SIGINT from a terminal reaches
        // the command by itself (same process group), the others are
        // passed on.
        let _ = signal_hook::flag::register_usize(signal, signals.clone(), signal as usize);
    }
    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("LOCKD_TOKEN", &holding.token)
        .env("LOCKD_RESOURCE", &args.resource)
        .env("LOCKD_CLIENT", &client)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("lockd run: starting {:?}: {e}", args.command[0]);
            holding.release();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return ExitCode::from(code);
        }
    };
    let kill_after = Duration::from_secs_f64(args.kill_after);
    match holding.watch(&mut child, since, &signals) {
        Watch::Exited(status) => {
            holding.release();
            ExitCode::from(status_code(status))
        }
        Watch::LockLost(why) => {
            eprintln!(
                "lockd run: lost the lock on {}: {why}; stopping the command",
                args.resource
            );
            stop(&mut child, kill_after);
            holding.let_go();
            ExitCode::from(exit::LOCK_LOST)
        }
    }
}

/// A lock held by this process.
struct Holding<'a> {
    hosts: &'a Hosts,
    daemon: &'a DaemonArgs,
    resource: &'a str,
    client: &'a str,
    token: String,
    ttl: Duration,
}

/// How watching the command ended.
enum Watch {
    Exited(ExitStatus),
    LockLost(String),
}

impl Holding<'_> {
    /// The lock taken by an acquire sent at `taken_at`, renewed at once if
    /// the acquire took longer than a renewal period: when its lease counts
    /// from, or why it is lost. (A renewal with the token that succeeds
    /// shows the lock was this process's all along.)
    fn confirm(&self, taken_at: Instant) -> Result<Instant, String> {
        if taken_at.elapsed() < self.every() {
            return Ok(taken_at);
        }
        let asked = Instant::now();
        match self.renew(self.ttl / 2) {
            Ok(()) => Ok(asked),
            Err(Renewal::Lost(why)) => Err(why),
            Err(Renewal::Unsure) => Err("no host renewed its lease".into()),
        }
    }

    /// How often the lease is renewed.
    fn every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(50))
    }

    /// Renews the lease, which counts from `since`, until `child` exits or
    /// the lock is lost.
    fn watch(&self, child: &mut Child, since: Instant, signals: &AtomicUsize) -> Watch {
        let every = self.every();
        // The command is stopped while a tenth of the lease is left, so
        // that it ends while the lock is still its own.
        let margin = self.ttl / 10;
        let mut lease_end = since + self.ttl - margin;
        let mut next_renewal = since + every;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Watch::Exited(status),
                Ok(None) => {}
                Err(e) => return Watch::LockLost(format!("watching the command failed: {e}")),
            }
            let signal = signals.swap(0, Ordering::Relaxed);
            if signal != 0 && signal != libc::SIGINT as usize {
                send(child, signal as libc::c_int);
            }
            let now = Instant::now();
            if now >= next_renewal {
                // An answer that comes after the lease ran out is no use:
                // give up on it while some of the lease is left to stop
                // the command in.
                let left = lease_end.saturating_duration_since(now);
                let within = (left - left / 4).max(Duration::from_millis(10));
                match self.renew(within) {
                    Ok(()) => {
                        lease_end = now + self.ttl - margin;
                        next_renewal = now + every;
                    }
                    Err(Renewal::Lost(why)) => return Watch::LockLost(why),
                    Err(Renewal::Unsure) if Instant::now() >= lease_end => {
                        return Watch::LockLost(
                            "the lease ran out (but a tenth) before it could be renewed".into(),
                        );
                    }
                    // Try again soon, while the lease lasts.
                    Err(Renewal::Unsure) => {
                        next_renewal = now + every.min(Duration::from_secs(1)) / 2
                    }
                }
            }
            std::thread::sleep(POLL);
        }
    }

    fn renew(&self, within: Duration) -> Result<(), Renewal> {
        let params = [
            self.resource.into(),
            self.client.into(),
            Value::Double(self.ttl.as_secs_f64()),
            self.token.as_str().into(),
        ];
        // Each host gets at most half of what is left (failover.rs), so
        // that one which stopped answering leaves time for the next.
        let limits = Limits {
            deadline: Some(Instant::now() + within),
            ..self.daemon.limits(Duration::ZERO)
        };
        match call_on(
            self.hosts,
            "lockd.renew",
            &|_| params.to_vec(),
            Kind::Repeatable,
            limits,
        ) {
            Ok(_) => Ok(()),
            // Not locked, locked by another, lease expired or stale token:
            // the lock is gone for good.
            Err(code @ 2..=5) => Err(Renewal::Lost(format!(
                "lockd.renew failed with fault {code}"
            ))),
            Err(_) => Err(Renewal::Unsure),
        }
    }

    fn release(&self) {
        self.release_within(self.daemon.limits(Duration::ZERO));
    }

    /// Releases a lock taken for lost: gone already, or (a lease that could
    /// not be renewed in time) maybe still held. Only this one, by its
    /// token; hosts that did not renew it are given no longer than a third
    /// of the lease (at least 1 s) to answer, as its lease ends it anyway.
    fn let_go(&self) {
        let within = (self.ttl / 3).max(Duration::from_secs(1));
        self.release_within(Limits {
            deadline: Some(Instant::now() + within),
            ..self.daemon.limits(Duration::ZERO)
        });
    }

    fn release_within(&self, limits: Limits) {
        let params = [
            self.resource.into(),
            self.client.into(),
            self.token.as_str().into(),
        ];
        let kind = Kind::Give {
            resource: self.resource,
            client: self.client,
            token: Some(&self.token),
        };
        // A failure has been reported on stderr; the command's status is
        // what the caller asked for.
        let _ = call_on(
            self.hosts,
            "lockd.release",
            &|_| params.to_vec(),
            kind,
            limits,
        );
    }
}

enum Renewal {
    Lost(String),
    /// The daemon did not answer: the lock may still be held.
    Unsure,
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited `grace` later.
fn stop(child: &mut Child, grace: Duration) {
    send(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn send(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with the pid of our own child, which has not been
    // reaped yet (so the pid cannot have been reused).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The exit code a shell would report: the code, or 128 + the signal.
fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => exit::SOFTWARE,
    }
}

/// `HOSTNAME/PID`: unique while this process runs.
fn default_client() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}
