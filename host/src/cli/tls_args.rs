//! The command line of TLS on lockd's own port, for `serve`; and SIGHUP,
//! which reloads its certificates and the credentials file.

use super::serve::seconds;
use crate::auth::AuthFile;
use crate::tls::{ServerFiles, ServerTls};
use anyhow::Context as _;
use clap::Args;
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct TlsArgs {
    /// TLS: the certificate (PEM, followed by its chain) lockd shows
    /// clients; it then serves https:// only. Reloaded on SIGHUP.
    #[arg(long, env = "LOCKD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM: RSA, ECDSA or Ed25519) of --tls-cert.
    #[arg(long, env = "LOCKD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must show a certificate signed by this CA
    /// (PEM); its common name (or first DNS/e-mail name) is the user that
    /// --auth-file gives a role.
    #[arg(long, env = "LOCKD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS: certificate revocation lists (PEM) of the client CA;
    /// a revoked client certificate fails the handshake, and so does one
    /// whose CA has no list here. Reloaded on SIGHUP.
    #[arg(long, env = "LOCKD_TLS_CLIENT_CRL", requires = "tls_client_ca")]
    pub tls_client_crl: Option<PathBuf>,
    /// TLS: seconds a client may take to complete its handshake.
    #[arg(long, env = "LOCKD_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10.0, value_parser = seconds)]
    pub tls_handshake_timeout: f64,
}

impl TlsArgs {
    /// The TLS configuration asked for, loaded, if any.
    pub fn load(&self) -> anyhow::Result<Option<Arc<ServerTls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
            client_crl: self.tls_client_crl.clone(),
        };
        let tls = ServerTls::load(files).map_err(anyhow::Error::msg)?;
        Ok(Some(Arc::new(tls)))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.tls_handshake_timeout)
    }
}

/// Reads the TLS files and the credentials file again whenever the process
/// gets SIGHUP (`systemctl reload`), on a thread of its own. New TLS
/// connections get the new certificate, open ones keep theirs; every
/// request from then on is judged by the new credentials. Files that do
/// not load leave the old ones in use, and are logged.
pub fn reload_on_sighup(
    tls: Option<Arc<ServerTls>>,
    auth: Option<Arc<AuthFile>>,
) -> anyhow::Result<()> {
    let (mut wake, signal_end) = UnixStream::pair().context("handling SIGHUP")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, signal_end)
        .context("handling SIGHUP")?;
    std::thread::Builder::new()
        .name("lockd-reload".into())
        .spawn(move || {
            let mut byte = [0; 1];
            while wake.read(&mut byte).is_ok_and(|n| n > 0) {
                if tls.is_none() && auth.is_none() {
                    tracing::info!("SIGHUP: nothing to reload");
                }
                match tls.as_deref().map(ServerTls::reload) {
                    None => {}
                    Some(Ok(())) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Some(Err(e)) => tracing::error!(
                        "SIGHUP: TLS certificates not reloaded, keeping the old ones: {e}"
                    ),
                }
                match auth.as_deref().map(AuthFile::reload) {
                    None => {}
                    Some(Ok(())) => tracing::info!("SIGHUP: credentials file reloaded"),
                    Some(Err(e)) => tracing::error!(
                        "SIGHUP: credentials file not reloaded, keeping the old one: {e:#}"
                    ),
                }
            }
        })
        .context("handling SIGHUP")?;
    Ok(())
}
