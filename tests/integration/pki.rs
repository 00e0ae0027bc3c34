//! Certificates for the TLS tests, made with openssl: a CA, a server
//! certificate for 127.0.0.1 (usable as a client certificate too, as
//! etcd's gateway uses its own to reach itself), a client certificate, a
//! second CA with a client certificate of its own, and any other a test
//! issues.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

pub struct Pki {
    tmp: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kind of a key.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    EcdsaP256,
    Rsa,
    Ed25519,
}

impl Key {
    fn args(self) -> &'static [&'static str] {
        match self {
            Key::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Key::Rsa => &["-newkey", "rsa:2048"],
            Key::Ed25519 => &["-newkey", "ed25519"],
        }
    }
}

/// What a certificate is for.
pub const SERVER: &str = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
                          basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";
pub const CLIENT: &str =
    "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";

impl Pki {
    /// Two CAs (`ca`, `other-ca`, and `both-cas` to trust either);
    /// `server` (for 127.0.0.1) and `client` of `ca`, `other-client` of
    /// `other-ca`.
    pub fn new() -> Self {
        let pki = Self {
            tmp: TempDir::new().unwrap(),
        };
        for ca in ["ca", "other-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=lockd test {ca}"),
                "-keyout",
                &format!("{ca}-key.pem"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        let cas = [pki.file("ca"), pki.file("other-ca")].map(|f| std::fs::read(f).unwrap());
        std::fs::write(pki.file("both-cas"), cas.concat()).unwrap();
        pki.issue("server", "/CN=server", "ca", Key::EcdsaP256, SERVER);
        pki.issue("client", "/CN=client", "ca", Key::EcdsaP256, CLIENT);
        pki.issue(
            "other-client",
            "/CN=other-client",
            "other-ca",
            Key::EcdsaP256,
            CLIENT,
        );
        pki
    }

    /// Makes `name.pem` and `name-key.pem`: a certificate for `subject`
    /// with a key of `kind`, signed by `ca`, with the extensions `ext`.
    pub fn issue(&self, name: &str, subject: &str, ca: &str, kind: Key, ext: &str) {
        let ext_file = format!("{name}.ext");
        std::fs::write(self.tmp.path().join(&ext_file), ext).unwrap();
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        let mut args = vec!["req"];
        args.extend(kind.args());
        args.extend(["-nodes", "-subj", subject, "-keyout", &key, "-out", &csr]);
        self.openssl(&args);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
        let cert = format!("{name}.pem");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &cert,
        ]);
    }

    /// Revokes the certificates `names` of `ca` (with any it revoked
    /// before) and writes the CA's revocation list, `{ca}-crl.pem`.
    pub fn revoke(&self, ca: &str, names: &[&str]) -> PathBuf {
        let dir = self.tmp.path();
        let config = format!("{ca}.cnf");
        if !dir.join(&config).exists() {
            std::fs::write(dir.join(format!("{ca}-index.txt")), "").unwrap();
            std::fs::write(dir.join(format!("{ca}-crlnumber")), "01\n").unwrap();
            std::fs::write(
                dir.join(&config),
                format!(
                    "[ca]\ndefault_ca = test\n[test]\ndatabase = {ca}-index.txt\n\
                     crlnumber = {ca}-crlnumber\ncertificate = {ca}.pem\n\
                     private_key = {ca}-key.pem\ndefault_md = sha256\ndefault_crl_days = 2\n"
                ),
            )
            .unwrap();
        }
        for name in names {
            self.openssl(&["ca", "-config", &config, "-revoke", &format!("{name}.pem")]);
        }
        let crl = format!("{ca}-crl.pem");
        self.openssl(&["ca", "-config", &config, "-gencrl", "-out", &crl]);
        dir.join(crl)
    }

    fn openssl(&self, args: &[&str]) {
        openssl(self.tmp.path(), args);
    }

    /// `name.pem` (a certificate) or `name-key.pem` (its key).
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.pem"))
    }

    /// The path of `name` as a string, for a command line.
    pub fn arg(&self, name: &str) -> String {
        self.file(name).to_string_lossy().into_owned()
    }
}
