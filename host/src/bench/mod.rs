//! `lockd bench`: starts daemons on temporary directories, drives lock and
//! unlock over keep-alive connections for a fixed time, and prints
//! throughput, latency and the daemon's peak memory, optionally next to
//! another server speaking the same protocol (the ratio is printed).

mod against;
mod connection;
mod etcd;

use crate::locks::Durability;
use crate::tls::ClientFiles;
use anyhow::Context as _;
use connection::Connection;
use rustls::ClientConfig;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub connections: Vec<usize>,
    pub duration: Duration,
    pub syncs: Vec<Durability>,
    /// Resources shared by all connections in the contended workload.
    pub contended: Option<usize>,
    /// Lock files created before the daemon starts.
    pub preload: usize,
    /// Another server to run the same load against.
    pub baseline: Option<String>,
    /// CPUs to run the daemon on (a `taskset` list), if it is to be pinned.
    pub server_cpus: Option<String>,
    /// Connections to open back to back, once per daemon (0: none).
    pub storm: usize,
    /// Cluster mode: the etcd cluster's client URLs. The daemon runs on
    /// it, next to etcd's own lock service, instead of on directories.
    pub etcd: Vec<String>,
    /// Also measure a daemon serving TLS with these files, next to plain
    /// HTTP.
    pub tls: Option<BenchTls>,
    /// Another lockd binary to measure by turns with this one, and how
    /// many rounds.
    pub against: Option<(PathBuf, usize)>,
}

/// The certificate and key a TLS daemon shows, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct BenchTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// One load run's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub ops: u64,
    pub faults: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl Figures {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Runs every configured measurement and prints one line each.
pub fn run(config: &BenchConfig) -> anyhow::Result<()> {
    if !config.etcd.is_empty() {
        return etcd::run(config, &config.etcd);
    }
    if let Some((other, rounds)) = &config.against {
        return against::run(config, other, *rounds);
    }
    let workload = match config.contended {
        Some(k) => format!("contended on {k} resources"),
        None => "distinct resources".to_owned(),
    };
    println!(
        "lockd bench: lock/unlock over keep-alive connections, {workload}, {} s per run",
        config.duration.as_secs_f64()
    );
    print_header();
    for sync in config.syncs.iter().map(|s| s.name()) {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("locks");
        preload(&dir, config.preload)?;
        let dir_arg = dir.to_string_lossy();
        let args = ["--sync", sync, "--dir", &dir_arg];
        let (mut daemon, addr, started) =
            Daemon::start(&args, config.server_cpus.as_deref(), None)?;
        println!(
            "# lockd --sync={sync}: first request served {:.1} ms after start ({} locks held)",
            started.as_secs_f64() * 1000.0,
            config.preload
        );
        let tls = match &config.tls {
            Some(tls) => Some(TlsDaemon::start(tls, sync, config.server_cpus.as_deref())?),
            None => None,
        };
        for &conns in &config.connections {
            let figures = load(&addr, None, conns, config.duration, config.contended)?;
            let rss = daemon.peak_rss_kib();
            print_line(&format!("lockd --sync={sync}"), conns, &figures, rss, None);
            if let Some(tls) = &tls {
                let over_tls = load(
                    &tls.addr,
                    Some(&tls.client),
                    conns,
                    config.duration,
                    config.contended,
                )?;
                let ratio = over_tls.ops_per_sec() / figures.ops_per_sec();
                let rss = tls.daemon.peak_rss_kib();
                let name = format!("lockd --sync={sync} https");
                print_line(&name, conns, &over_tls, rss, Some(ratio));
            }
            if let Some(url) = &config.baseline {
                let base = load(
                    authority(url)?,
                    None,
                    conns,
                    config.duration,
                    config.contended,
                )?;
                let ratio = figures.ops_per_sec() / base.ops_per_sec();
                print_line("baseline", conns, &base, None, Some(ratio));
            }
        }
        if config.storm > 0 {
            print_storm(&format!("lockd --sync={sync}"), &addr, config.storm)?;
            if let Some(url) = &config.baseline {
                print_storm("baseline", authority(url)?, config.storm)?;
            }
        }
        daemon.stop();
    }
    Ok(())
}

/// The column heads of [`print_line`]'s lines.
fn print_header() {
    println!(
        "{:<28} {:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "server", "conns", "ops/s", "p50 us", "p99 us", "p999 us", "peak RSS", "ratio"
    );
}

fn print_line(name: &str, conns: usize, f: &Figures, rss_kib: Option<u64>, ratio: Option<f64>) {
    let rss = rss_kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let ratio = ratio.map_or(String::new(), |r| format!("{r:.2}x"));
    let faults = if f.faults > 0 {
        format!(" ({} faults)", f.faults)
    } else {
        String::new()
    };
    println!(
        "{name:<28} {conns:>5} {:>10.0} {:>8} {:>8} {:>8} {rss:>9} {ratio:>8}{faults}",
        f.ops_per_sec(),
        f.p50_us,
        f.p99_us,
        f.p999_us
    );
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .context("the baseline must be an http:// URL")?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Lock files of a directory already in use, for measuring start-up.
fn preload(dir: &Path, count: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        std::fs::write(
            dir.join(format!("preload-{i}.resource.lock")),
            "preloader\n",
        )?;
    }
    Ok(())
}

/// A daemon serving TLS on a directory of its own, and a client
/// configuration trusting it.
struct TlsDaemon {
    daemon: Daemon,
    addr: String,
    client: Arc<ClientConfig>,
    _dir: tempfile::TempDir,
}

impl TlsDaemon {
    fn start(tls: &BenchTls, sync: &str, cpus: Option<&str>) -> anyhow::Result<Self> {
        let files = ClientFiles {
            ca: Some(&tls.ca),
            ..ClientFiles::default()
        };
        let client = files.config().map_err(anyhow::Error::msg)?;
        let dir = tempfile::tempdir()?;
        let locks = dir.path().join("locks").to_string_lossy().into_owned();
        let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
        let args = [
            "--sync",
            sync,
            "--dir",
            &locks,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let (daemon, addr, _) = Daemon::start(&args, cpus, Some(&client))?;
        Ok(Self {
            daemon,
            addr,
            client,
            _dir: dir,
        })
    }
}

/// A `lockd serve` child process.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts one with `serve` arguments `args` and returns its address
    /// and how long it took until a first request was answered.
    fn start(
        args: &[&str],
        cpus: Option<&str>,
        tls: Option<&Arc<ClientConfig>>,
    ) -> anyhow::Result<(Self, String, Duration)> {
        Self::start_binary(&std::env::current_exe()?, args, cpus, tls)
    }

    /// [`start`](Self::start), of the lockd binary at `lockd`.
    fn start_binary(
        lockd: &Path,
        args: &[&str],
        cpus: Option<&str>,
        tls: Option<&Arc<ClientConfig>>,
    ) -> anyhow::Result<(Self, String, Duration)> {
        let start = Instant::now();
        let mut command = match cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus]).arg(lockd);
                taskset
            }
            None => Command::new(lockd),
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            // The start-up lines, not a line per lock change.
            .env("LOCKD_LOG", "info,lockd::change=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        for line in stderr.lines() {
            let line = line?;
            if let Some(url) = line.split("listening on ").nth(1)
                && let Some((_, rest)) = url.split_once("://")
            {
                addr = rest.split('/').next().map(str::to_owned);
                break;
            }
        }
        let daemon = Self { child };
        let addr = addr.context("the daemon did not start")?;
        let mut conn = Connection::open(&addr, tls)?;
        conn.call(&crate::xmlrpc::encode_call("system.listMethods", &[]))?;
        Ok((daemon, addr, start.elapsed()))
    }

    /// The most memory the process has had resident, from /proc.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn print_storm(name: &str, addr: &str, n: usize) -> anyhow::Result<()> {
    let (connected, answered) = storm(addr, n)?;
    println!(
        "# {name}: {n} connections opened back to back by one client: all connected \
         after {:.0} ms, each answered a call after {:.0} ms",
        connected.as_secs_f64() * 1000.0,
        answered.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Opens `n` connections to `addr` one after another (as a fleet
/// reconnecting at once would), then has each answer one call; returns how
/// long until all were connected, and until each was answered.
pub fn storm(addr: &str, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut connections = (0..n)
        .map(|_| Connection::open(addr, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let connected = start.elapsed();
    let body = crate::xmlrpc::encode_call("lockd.status", &["storm".into()]);
    for connection in &mut connections {
        connection.call(&body)?;
    }
    Ok((connected, start.elapsed()))
}

/// Drives `conns` connections for `duration`; each alternately locks and
/// unlocks (its own resources, or one of `contended` shared ones).
pub fn load(
    addr: &str,
    tls: Option<&Arc<ClientConfig>>,
    conns: usize,
    duration: Duration,
    contended: Option<usize>,
) -> anyhow::Result<Figures> {
    // Unique names per run, so that runs against a long-lived server never
    // meet each other's locks.
    let since_epoch = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap_or_default();
    let run = format!("{:x}-{:x}", std::process::id(), since_epoch.as_nanos());
    let addr = addr.to_owned();
    let tls = tls.cloned();
    drive(conns, duration, move |t, stop, latencies| {
        let mut conn = Connection::open(&addr, tls.as_ref())?;
        let client = format!("bench-{run}-{t}");
        let mut faults = 0;
        let mut step = 0usize;
        // Stops only after an unlock, so that no lock is left held.
        while !step.is_multiple_of(2) || !stop.load(Ordering::Relaxed) {
            let resource = match contended {
                Some(k) => format!("contended-{}", (step / 2) % k.max(1)),
                None => format!("r-{run}-{t}-{}", step / 2),
            };
            let method = if step.is_multiple_of(2) {
                "lock"
            } else {
                "unlock"
            };
            let body = crate::xmlrpc::encode_call(
                method,
                &[resource.as_str().into(), client.as_str().into()],
            );
            let start = Instant::now();
            faults += u64::from(conn.call(&body)?);
            latencies.push(micros(start));
            step += 1;
        }
        Ok(faults)
    })
}

/// Runs `f` on `conns` threads (each given its number, the stop flag and
/// where to put the microseconds each call took) for `duration`; `f`
/// returns how many calls got a fault.
fn drive(
    conns: usize,
    duration: Duration,
    f: impl Fn(usize, &AtomicBool, &mut Vec<u32>) -> anyhow::Result<u64> + Send + Sync + 'static,
) -> anyhow::Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            let (stop, f) = (stop.clone(), f.clone());
            std::thread::spawn(move || -> anyhow::Result<(Vec<u32>, u64)> {
                let mut latencies = Vec::with_capacity(1 << 16);
                let faults = f(t, &stop, &mut latencies)?;
                Ok((latencies, faults))
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut faults = 0;
    for t in threads {
        let (latencies, f) = t.join().expect("load thread panicked")?;
        all.extend(latencies);
        faults += f;
    }
    Ok(summarize(all, faults, start.elapsed().as_secs_f64()))
}

/// The microseconds since `since`.
fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// The figures of latencies (µs) measured over `secs`.
fn summarize(mut all: Vec<u32>, faults: u64, secs: f64) -> Figures {
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        u64::from(all[i])
    };
    Figures {
        ops: all.len() as u64,
        faults,
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    }
}
