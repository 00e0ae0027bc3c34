//! The client subcommands: one XML-RPC call each (to the first host of
//! `--url` that takes it, see [`failover`](crate::failover)), the answer on
//! stdout (tab-separated lines, or JSON with `--json`), a fault's message
//! on stderr and its code as the exit code.

use super::exit;
use super::serve::seconds;
use crate::failover::{Failure, Hosts, Kind, Limits, request_id};
use crate::time::iso8601;
use crate::tls::ClientFiles;
use crate::xmlrpc::Value;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The daemon's URL: http://, or https:// for a daemon serving TLS. In
    /// cluster mode, the URLs of several hosts separated by commas: a call
    /// goes to the host that answered last and moves on to the next when a
    /// host cannot be reached, answers 503, or says the call did not
    /// happen (docs/clients.md).
    #[arg(long, env = "LOCKD_URL", default_value = "http://127.0.0.1:8000/")]
    pub url: String,
    /// Seconds one host may take to answer a call (beyond any wait for a
    /// lock) before the call moves on to the next host, or fails.
    #[arg(long, env = "LOCKD_TIMEOUT", value_parser = seconds, default_value_t = 30.0)]
    pub timeout: f64,
    /// https: the CA certificate(s) (PEM) the daemon's certificate must be
    /// signed by; the system's CAs if not given.
    #[arg(long, env = "LOCKD_CA")]
    pub ca: Option<PathBuf>,
    /// https: this client's certificate (PEM), for a daemon that asks for
    /// one (mutual TLS).
    #[arg(long, env = "LOCKD_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// https: the private key (PEM) of --cert.
    #[arg(long, env = "LOCKD_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl DaemonArgs {
    /// The hosts named, or the reason they cannot be used (on stderr) as
    /// the exit code.
    pub fn hosts(&self) -> Result<Hosts, u8> {
        let files = ClientFiles {
            ca: self.ca.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
        };
        Hosts::parse(&self.url, &files).map_err(|e| {
            eprintln!("lockd: --url: {e:#}");
            exit::USAGE
        })
    }

    /// How long a call may take that waits `wait` for its lock.
    pub fn limits(&self, wait: Duration) -> Limits {
        Limits {
            answer: Duration::from_secs_f64(self.timeout),
            wait,
            deadline: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The resource, any non-empty name.
    resource: String,
    /// Who holds the lock.
    client: String,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The resource, any non-empty name.
    resource: String,
    /// Who takes the lock.
    #[arg(long, env = "LOCKD_CLIENT")]
    client: String,
    /// A lease of this many seconds: the lock ends by itself unless renewed.
    #[arg(long, value_parser = seconds)]
    ttl: Option<f64>,
    /// Seconds to wait in line for the lock (0: try once; exit 6 if the
    /// wait runs out).
    #[arg(long, value_parser = seconds, default_value_t = 0.0)]
    wait: f64,
    /// If CLIENT holds the lock already, succeed with it (same token).
    #[arg(long)]
    reentrant: bool,
    /// Print the lock as JSON instead of its token.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The resource.
    resource: String,
    /// Who holds the lock.
    #[arg(long, env = "LOCKD_CLIENT")]
    client: String,
    /// Release only if this is the lock's fencing token (exit 5 if not).
    #[arg(long, env = "LOCKD_TOKEN")]
    token: Option<u64>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The resource.
    resource: String,
    /// Who holds the lock.
    #[arg(long, env = "LOCKD_CLIENT")]
    client: String,
    /// The lease ends this many seconds from now.
    #[arg(long, value_parser = seconds)]
    ttl: f64,
    /// Renew only if this is the lock's fencing token (exit 5 if not).
    #[arg(long, env = "LOCKD_TOKEN")]
    token: Option<u64>,
    /// Print the lock as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The resource.
    resource: String,
    /// Print the lock as JSON (`null` if free).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only resources starting with this.
    #[arg(default_value = "")]
    prefix: String,
    /// Print the locks as a JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct BreakArgs {
    /// The resource.
    resource: String,
    /// Why: written to the daemon's audit log.
    #[arg(long)]
    reason: String,
    /// Print the removed lock as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// `lockd lock` and `lockd unlock`: silent on success.
pub fn lock(args: &LockArgs, method: &str) -> ExitCode {
    let params = [args.resource.as_str().into(), args.client.as_str().into()];
    let (resource, client) = (args.resource.as_str(), args.client.as_str());
    let kind = if method == "lock" {
        Kind::Take { resource, client }
    } else {
        Kind::Give {
            resource,
            client,
            token: None,
        }
    };
    outcome(call(&args.daemon, method, &params, kind).map(drop))
}

pub fn acquire(args: &AcquireArgs) -> ExitCode {
    let taking = Acquire {
        resource: &args.resource,
        client: &args.client,
        ttl: args.ttl,
        wait: args.wait,
        reentrant: args.reentrant,
    };
    outcome(taking.call(&args.daemon).map(|lock| {
        if args.json {
            print_json(&lock);
        } else if let Some(token) = lock.member("token").and_then(Value::as_i64) {
            println!("{token}");
        }
    }))
}

pub fn release(args: &ReleaseArgs) -> ExitCode {
    let mut params = vec![args.resource.as_str().into(), args.client.as_str().into()];
    let token = args.token.map(|t| t.to_string());
    if let Some(token) = &token {
        params.push(token.as_str().into());
    }
    let kind = Kind::Give {
        resource: &args.resource,
        client: &args.client,
        token: token.as_deref(),
    };
    outcome(call(&args.daemon, "lockd.release", &params, kind).map(drop))
}

pub fn renew(args: &RenewArgs) -> ExitCode {
    let mut params = vec![
        args.resource.as_str().into(),
        args.client.as_str().into(),
        Value::Double(args.ttl),
    ];
    if let Some(token) = args.token {
        params.push(Value::String(token.to_string()));
    }
    outcome(
        call(&args.daemon, "lockd.renew", &params, Kind::Repeatable)
            .map(|lock| print_lock(&lock, args.json)),
    )
}

pub fn status(args: &StatusArgs) -> ExitCode {
    let params = [args.resource.as_str().into()];
    match call(&args.daemon, "lockd.status", &params, Kind::Repeatable) {
        Ok(Value::Nil) => {
            if args.json {
                println!("null");
            } else {
                eprintln!("lockd: {} is not locked", args.resource);
            }
            ExitCode::from(2)
        }
        result => outcome(result.map(|lock| print_lock(&lock, args.json))),
    }
}

/// Locks asked for per call by `lockd list`.
const LIST_PAGE: i32 = 1000;

/// Lists the locks page by page, printing each page as it comes (with
/// `--json`, one array at the end).
pub fn list(args: &ListArgs) -> ExitCode {
    let hosts = match args.daemon.hosts() {
        Ok(hosts) => hosts,
        Err(code) => return ExitCode::from(code),
    };
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut options = vec![("limit".to_owned(), Value::Int(LIST_PAGE))];
        if let Some(after) = &after {
            options.push(("after".to_owned(), after.as_str().into()));
        }
        let params = [args.prefix.as_str().into(), Value::Struct(options)];
        let limits = args.daemon.limits(Duration::ZERO);
        let page = match call_on(
            &hosts,
            "lockd.list",
            &|_| params.to_vec(),
            Kind::Repeatable,
            limits,
        ) {
            Ok(Value::Array(page)) => page,
            Ok(other) => {
                eprintln!("lockd: lockd.list answered {other:?}");
                return ExitCode::from(exit::SOFTWARE);
            }
            Err(code) => return ExitCode::from(code),
        };
        let last = page
            .last()
            .and_then(|l| l.member("resource"))
            .and_then(Value::as_str);
        after = last.map(str::to_owned);
        let full = page.len() == LIST_PAGE as usize;
        if args.json {
            all.extend(page);
        } else {
            for lock in &page {
                println!("{}", lock_line(lock));
            }
        }
        if !full || after.is_none() {
            break;
        }
    }
    if args.json {
        print_json(&Value::Array(all));
    }
    ExitCode::SUCCESS
}

pub fn break_lock(args: &BreakArgs) -> ExitCode {
    let params = [args.resource.as_str().into(), args.reason.as_str().into()];
    let kind = Kind::Break {
        resource: &args.resource,
    };
    match call(&args.daemon, "lockd.break_lock", &params, kind) {
        // Settled after an answer was lost: the lock is gone, but which
        // one the call broke is not known.
        Ok(Value::Nil) => {
            eprintln!("lockd: {} is not locked (any more)", args.resource);
            ExitCode::SUCCESS
        }
        result => outcome(result.map(|lock| print_lock(&lock, args.json))),
    }
}

/// One `lockd.acquire`, under a `request_id` of its own, so that sending
/// it again to another host never takes a second lock.
pub struct Acquire<'a> {
    pub resource: &'a str,
    pub client: &'a str,
    pub ttl: Option<f64>,
    pub wait: f64,
    pub reentrant: bool,
}

impl Acquire<'_> {
    /// Takes the lock; the answer is the lock, or the failure (on stderr)
    /// as the exit code.
    pub fn call(&self, daemon: &DaemonArgs) -> Result<Value, u8> {
        let hosts = daemon.hosts()?;
        self.call_on(&hosts, daemon.limits(wait_of(self.wait)))
    }

    /// [`call`](Self::call) through `hosts`.
    pub fn call_on(&self, hosts: &Hosts, limits: Limits) -> Result<Value, u8> {
        let request_id = request_id().map_err(|e| {
            eprintln!("lockd: reading /dev/urandom for a request id: {e}");
            exit::SOFTWARE
        })?;
        let params = |elapsed: Duration| {
            // Sent again later, it waits only what is left of the wait.
            let wait = (self.wait - elapsed.as_secs_f64()).max(0.0);
            let mut options = vec![
                ("wait".to_owned(), Value::Double(wait)),
                ("reentrant".to_owned(), Value::Bool(self.reentrant)),
                ("request_id".to_owned(), request_id.as_str().into()),
            ];
            if let Some(ttl) = self.ttl {
                options.push(("ttl".to_owned(), Value::Double(ttl)));
            }
            vec![
                self.resource.into(),
                self.client.into(),
                Value::Struct(options),
            ]
        };
        call_on(hosts, "lockd.acquire", &params, Kind::Repeatable, limits)
    }
}

/// One call; a failure is reported on stderr and becomes the exit code.
pub fn call(daemon: &DaemonArgs, method: &str, params: &[Value], kind: Kind) -> Result<Value, u8> {
    let hosts = daemon.hosts()?;
    call_on(
        &hosts,
        method,
        &|_| params.to_vec(),
        kind,
        daemon.limits(Duration::ZERO),
    )
}

/// [`call`] through `hosts`, with the params `params` gives for the time
/// since the call set out.
pub fn call_on(
    hosts: &Hosts,
    method: &str,
    params: &dyn Fn(Duration) -> Vec<Value>,
    kind: Kind,
    limits: Limits,
) -> Result<Value, u8> {
    hosts.call(method, params, kind, limits).map_err(|e| {
        eprintln!("lockd: {e}");
        exit_code(&e)
    })
}

/// A `wait` option in seconds as a duration (an endless wait, as long as
/// one can be).
pub fn wait_of(wait: f64) -> Duration {
    Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX / 4)
}

/// The exit code for a failed call: the fault code for faults 1 to 6;
/// [`exit::UNAVAILABLE`] when no host could be used or the outcome is
/// unknown.
pub fn exit_code(failure: &Failure) -> u8 {
    match failure {
        Failure::Fault(fault) if fault.code == 7 => exit::UNAVAILABLE,
        Failure::Fault(fault) => u8::try_from(fault.code)
            .ok()
            .filter(|code| (1..=6).contains(code))
            .unwrap_or(exit::SOFTWARE),
        Failure::Misanswered(..) | Failure::Unavailable(_) | Failure::Unknown(_) => {
            exit::UNAVAILABLE
        }
    }
}

fn outcome(result: Result<(), u8>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

fn print_lock(lock: &Value, json: bool) {
    if json {
        print_json(lock);
    } else {
        println!("{}", lock_line(lock));
    }
}

/// `RESOURCE CLIENT TOKEN SINCE EXPIRES`, tab-separated; `-` for no lease.
fn lock_line(lock: &Value) -> String {
    let text = |name: &str| lock.member(name).and_then(Value::as_str).unwrap_or("");
    let time = |name: &str| match lock.member(name) {
        Some(Value::Double(secs)) => iso8601(*secs),
        _ => "-".to_owned(),
    };
    let token = lock.member("token").and_then(Value::as_i64).unwrap_or(0);
    format!(
        "{}\t{}\t{token}\t{}\t{}",
        text("resource"),
        text("client"),
        time("acquired"),
        time("expires")
    )
}

fn print_json(value: &Value) {
    println!("{}", json(value));
}

/// An XML-RPC value as JSON.
fn json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Int(i) => J::from(*i),
        Value::I8(i) => J::from(*i),
        Value::Bool(b) => J::from(*b),
        Value::String(s) | Value::DateTime(s) => J::from(s.as_str()),
        Value::Double(d) => J::from(*d),
        Value::Base64(bytes) => J::from(String::from_utf8_lossy(bytes).into_owned()),
        Value::Struct(members) => J::Object(
            members
                .iter()
                .map(|(name, value)| (name.clone(), json(value)))
                .collect(),
        ),
        Value::Array(items) => J::Array(items.iter().map(json).collect()),
        Value::Nil => J::Null,
    }
}
