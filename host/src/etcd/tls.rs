//! TLS to etcd's client port (`https://` endpoints): every member's
//! certificate is checked against the CA the operator names, and this
//! host shows its own certificate when given one (etcd's
//! `--client-cert-auth`).

use crate::tls::ClientFiles;
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// The PEM files of TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA (one or more certificates) that signed the members'.
    pub ca: Option<PathBuf>,
    /// This host's certificate (chain), and its private key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The client configuration, or `None` if no file is named.
    pub fn load(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err("a client certificate for etcd needs --etcd-ca too".into());
            }
            return Ok(None);
        };
        if self.cert.is_some() != self.key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        let files = ClientFiles {
            ca: Some(ca),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
        };
        files.config().map(Some)
    }
}

/// Whether `e` is a member's refusal of the TLS handshake (this host's
/// certificate, or the lack of one): with TLS 1.3 it comes after the
/// client has finished its part, on the first read. The member handles a
/// request only once the handshake is done on its side, so a request sent
/// meanwhile surely did not happen.
pub fn handshake_refused(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    let Some(rustls::Error::AlertReceived(alert)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        alert,
        A::HandshakeFailure
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}
