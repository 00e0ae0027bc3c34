//! `lockd import`: a lock directory's locks into an etcd cluster, for a
//! move from one daemon to cluster mode.

use super::exit;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The lock directory (stop the daemon serving it first).
    dir: PathBuf,
    /// The etcd members' client URLs (`http://host:port`), comma-separated.
    #[arg(long, env = "LOCKD_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The prefix of lockd's keys in etcd, as the hosts are given.
    #[arg(long, env = "LOCKD_ETCD_PREFIX", default_value = "lockd/")]
    etcd_prefix: String,
}

/// How long an import may take.
const DEADLINE: Duration = Duration::from_secs(120);

pub fn import(args: &ImportArgs) -> ExitCode {
    let deadline = Instant::now() + DEADLINE;
    let imported = match crate::cluster::import::from_dir(
        &args.dir,
        &args.etcd,
        &args.etcd_prefix,
        deadline,
    ) {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("lockd import: {e:#}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    println!(
        "{} locks written, {} already there; every token from now on is above {}",
        imported.written, imported.already, imported.base
    );
    if imported.conflicts.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "lockd import: {} locks not imported: held in etcd by another client or with another \
         token: {}",
        imported.conflicts.len(),
        imported.conflicts.join(", ")
    );
    ExitCode::from(exit::SOFTWARE)
}
