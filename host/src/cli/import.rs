//! `lockd import`: a lock directory's locks into an etcd cluster, for a
//! move from one daemon to cluster mode.

use super::etcd_args::EtcdArgs;
use super::exit;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The lock directory (stop the daemon serving it first).
    dir: PathBuf,
    /// Where to: the etcd cluster and prefix the hosts are given.
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// How long an import may take.
const DEADLINE: Duration = Duration::from_secs(120);

pub fn import(args: &ImportArgs) -> ExitCode {
    let deadline = Instant::now() + DEADLINE;
    if !args.etcd.given() {
        eprintln!("lockd import: --etcd is missing: the etcd cluster to import into");
        return ExitCode::from(exit::USAGE);
    }
    let imported = args.etcd.client().and_then(|etcd| {
        crate::cluster::import::from_dir(&args.dir, etcd, &args.etcd.etcd_prefix, deadline)
    });
    let imported = match imported {
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
