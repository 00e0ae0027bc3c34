//! The command line of cluster mode's etcd: endpoints, prefix and TLS, for
//! `serve` and `import`.

use crate::etcd::{Etcd, TlsFiles};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// Cluster mode: keep the locks in the etcd cluster whose members'
    /// client URLs (`http://host:port`, or `https://host:port` with
    /// --etcd-ca) are given, comma-separated, instead of in --dir. Any
    /// number of lockd hosts may serve the same cluster.
    #[arg(long, env = "LOCKD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Cluster mode: the prefix of lockd's keys in etcd.
    #[arg(long, env = "LOCKD_ETCD_PREFIX", default_value = "lockd/")]
    pub etcd_prefix: String,
    /// TLS to etcd: the CA certificate(s) (PEM) the members' certificates
    /// must be signed by.
    #[arg(long, env = "LOCKD_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// TLS to etcd: this host's client certificate (PEM), for members run
    /// with --client-cert-auth.
    #[arg(long, env = "LOCKD_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// TLS to etcd: the private key (PEM) of --etcd-cert.
    #[arg(long, env = "LOCKD_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// Whether cluster mode is asked for.
    pub fn given(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// A client for the etcd cluster named.
    pub fn client(&self) -> anyhow::Result<Etcd> {
        let files = TlsFiles {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        };
        let tls = files.load().map_err(anyhow::Error::msg)?;
        Etcd::with_tls(&self.etcd, tls).map_err(anyhow::Error::msg)
    }
}
