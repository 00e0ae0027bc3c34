//! Who may call, from a credentials file: users who log in with HTTP
//! Basic authentication, or whose TLS client certificate names them.
//!
//! The file has one `name:password:role` line per user (role `client` or
//! `operator`; `client` if left out; neither name nor password can hold
//! `:`); empty lines and lines starting with `#` are ignored. An empty
//! password (`name::operator`) makes a user who can only be named by a
//! client certificate. Clients may take and release locks; operators may
//! also break them. Passwords are compared in constant time, and an
//! unknown user costs as much as a wrong password.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What an authenticated caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Take, renew, release and inspect locks.
    Client,
    /// Also break other clients' locks.
    Operator,
}

/// The users of a credentials file.
#[derive(Debug)]
pub struct Credentials {
    /// Each user's password (`None`: certificate only) and role.
    users: HashMap<String, (Option<Vec<u8>>, Role)>,
}

impl Credentials {
    /// Reads the credentials file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading credentials file {}", path.display()))?;
        let credentials = Self::parse(&text)
            .with_context(|| format!("in credentials file {}", path.display()))?;
        warn_if_readable_by_others(path);
        Ok(credentials)
    }

    /// Parses a credentials file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(password)) = (fields.next(), fields.next()) else {
                bail!("line {}: expected name:password[:role]", i + 1);
            };
            let role = match fields.next() {
                None | Some("client") => Role::Client,
                Some("operator") => Role::Operator,
                Some(other) => {
                    bail!(
                        "line {}: role {other:?} is neither client nor operator",
                        i + 1
                    )
                }
            };
            if name.is_empty() {
                bail!("line {}: empty name", i + 1);
            }
            let password = (!password.is_empty()).then(|| password.as_bytes().to_vec());
            if users.insert(name.to_owned(), (password, role)).is_some() {
                bail!("line {}: user {name:?} appears twice", i + 1);
            }
        }
        if users.is_empty() {
            bail!("no users");
        }
        Ok(Self { users })
    }

    /// The role of the caller whose `Authorization` header is `header`, or
    /// `None` if it is missing or wrong.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Role> {
        let encoded = header?.trim().strip_prefix("Basic ")?.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let (name, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.users.get(name));
        // An unknown user is compared against a stand-in, so that the time
        // taken does not tell which names exist.
        let (expected, role) = match user {
            Some((Some(expected), role)) => (expected.as_slice(), Some(*role)),
            _ => (&b"\0unknown user stand-in\0"[..], None),
        };
        (constant_time_eq(password, expected) && role.is_some()).then_some(role?)
    }

    /// The role of `user`, named by a client certificate the TLS handshake
    /// verified, or `None` if the file does not list it.
    pub fn role_of(&self, user: &str) -> Option<Role> {
        self.users.get(user).map(|(_, role)| *role)
    }
}

/// The credentials file as last read: at start, and again by
/// [`AuthFile::reload`] (SIGHUP). Each request is judged by the file as it
/// is then, so a user taken out of the file is refused from its next
/// request on, on connections already open too.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    current: RwLock<Arc<Credentials>>,
}

impl AuthFile {
    /// Reads the credentials file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Credentials::load(path)?)),
        })
    }

    /// The credentials as last read.
    pub fn current(&self) -> Arc<Credentials> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again. If it is well-formed it is used from now on;
    /// if not, the credentials stay as they were and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let credentials = Credentials::load(&self.path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(credentials);
        Ok(())
    }
}

/// Whether `a == b`, in a time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "credentials file {} can be read by others than its owner (chmod 600 it)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn users_roles_and_refusals() {
        let creds =
            Credentials::parse("# lockd users\nalice:s3cret\nops:p:w:d:operator\nbob:pw:client\n");
        // A password cannot hold ':'.
        assert!(creds.is_err(), "{creds:?}");
        let creds =
            Credentials::parse("# lockd users\n\nalice:s3cret\nops:pw:operator\nbob:pw:client\n")
                .unwrap();
        assert_eq!(
            creds.authenticate(Some(&basic("alice:s3cret"))),
            Some(Role::Client)
        );
        assert_eq!(
            creds.authenticate(Some(&basic("ops:pw"))),
            Some(Role::Operator)
        );
        assert_eq!(
            creds.authenticate(Some(&basic("bob:pw"))),
            Some(Role::Client)
        );
        for wrong in [
            "alice:s3cre",
            "alice:s3cret2",
            "alice:",
            "nobody:pw",
            "alice",
            "",
        ] {
            assert_eq!(creds.authenticate(Some(&basic(wrong))), None, "{wrong}");
        }
        assert_eq!(creds.authenticate(None), None);
        assert_eq!(creds.authenticate(Some("Bearer x")), None);
        assert_eq!(creds.authenticate(Some("Basic !!!")), None);
    }

    #[test]
    fn users_without_a_password_are_named_only_by_certificates() {
        let creds = Credentials::parse("oncall::operator\nvm-manager:\nalice:pw\n").unwrap();
        for attempt in ["oncall:", "vm-manager:", "oncall:\0unknown user stand-in\0"] {
            assert_eq!(creds.authenticate(Some(&basic(attempt))), None, "{attempt}");
        }
        assert_eq!(creds.role_of("oncall"), Some(Role::Operator));
        assert_eq!(creds.role_of("vm-manager"), Some(Role::Client));
        assert_eq!(creds.role_of("alice"), Some(Role::Client));
        assert_eq!(creds.role_of("nobody"), None);
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        for bad in [
            "",
            "# only a comment\n",
            "nocolon\n",
            "a:b:admin\n",
            ":pw\n",
            "a:b\na:c\n",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
        let e = Credentials::parse("ok:pw\nbad\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn equality_in_constant_time_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"\xff"));
        assert!(constant_time_eq(b"", b""));
    }
}
