//! TLS as lockd's server: its certificate and key, the CA whose client
//! certificates it admits (mutual TLS) and the lists that revoke some,
//! reloaded on demand (SIGHUP), and the user a client certificate names.

use super::files;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use x509_parser::extensions::GeneralName;

/// The PEM files of lockd's own TLS.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The certificate (chain) lockd shows, and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, a client must show a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// With it, a client certificate must not be revoked by these CRLs,
    /// which must include one of the CA that issued it.
    pub client_crl: Option<PathBuf>,
}

impl ServerFiles {
    /// The server configuration these files make, as they are now.
    pub fn config(&self) -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(files::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None if self.client_crl.is_some() => {
                return Err("a client certificate revocation list needs a client CA".into());
            }
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(files::roots(ca)?),
                    files::provider(),
                );
                if let Some(crl) = &self.client_crl {
                    // The client's own certificate is checked; one whose
                    // issuer has no list in the file is refused.
                    verifier = verifier
                        .with_crls(files::revocation_lists(crl)?)
                        .only_check_end_entity_revocation();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = files::certificates(&self.cert)?;
        let key = files::private_key(&self.key)?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The server configuration new connections get: loaded at start, and
/// again by [`ServerTls::reload`]. A connection keeps the configuration it
/// began with.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `files`; an error names the file at fault.
    pub fn load(files: ServerFiles) -> Result<Self, String> {
        let config = files.config()?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again. If they make a configuration, new
    /// connections get it; if not, they keep the one they had, and the
    /// error says why.
    pub fn reload(&self) -> Result<(), String> {
        let config = self.files.config()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// Whether clients must show a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

/// The user a client certificate names: its subject's common name (CN),
/// or if it has none its first DNS name or e-mail address among its
/// subject alternative names.
pub fn user_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if let Some(name) = common_name {
        return Some(name.to_owned());
    }
    let alternatives = parsed.subject_alternative_name().ok()??;
    alternatives
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::RFC822Name(name) => Some(name.to_string()),
            _ => None,
        })
}
