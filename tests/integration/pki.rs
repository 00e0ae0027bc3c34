//! Certificates for the TLS tests, made with openssl: a CA, a server
//! certificate for 127.0.0.1 (usable as a client certificate too, as
//! etcd's gateway uses its own to reach itself), a client certificate, and
//! a second CA with a client certificate of its own.

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

impl Pki {
    pub fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
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
                ],
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
             basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("other-client", "other-ca", "client.ext"),
        ] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}-key.pem"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Self { tmp }
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
