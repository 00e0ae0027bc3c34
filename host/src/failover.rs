//! Calls to the lockd hosts serving one set of locks (cluster mode), named
//! by a list of URLs. A call goes to the host that answered last and moves
//! on to the next one as docs/clients.md says:
//!
//! - a host that cannot be reached, answers HTTP 503, or answers fault 7
//!   "did not happen" did nothing: the call goes to the next host;
//! - a call sent but not answered (timed out, connection cut) or answered
//!   fault 7 "outcome is unknown" may have happened: a call that changes
//!   nothing or may be sent twice ([`Kind::Repeatable`]) goes to the next
//!   host; any other change is first settled with `lockd.status`.
//!
//! With one URL nothing is sent twice: a failure is the caller's, as it
//! was before lists of hosts.

use crate::client::{CallError, Client};
use crate::tls::ClientFiles;
use crate::xmlrpc::{Fault, Value};
use anyhow::{Context as _, bail};
use std::fmt;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How fault 7 begins when the change surely did not happen (anything
/// else after "Lock store unavailable: " may have happened).
const DID_NOT_HAPPEN: &str = "Lock store unavailable: the change did not happen";

/// The hosts of a list of URLs, and which of them answered last.
#[derive(Debug)]
pub struct Hosts {
    /// Each host's URL as messages show it (no password), and its client.
    hosts: Vec<(String, Client)>,
    last: AtomicUsize,
}

/// What a call does to the locks: what may follow when its answer did not
/// come.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// Changes nothing (status, check, list, holder), or may be sent again
    /// to another host: `lockd.acquire` with a `request_id` (a retry is
    /// answered with the lock the first try took) and `lockd.renew` (which
    /// only ever lengthens the caller's own lease).
    Repeatable,
    /// Takes `resource` for `client` (`lock`): done if `client` holds it
    /// now, sent again if it is free.
    Take { resource: &'a str, client: &'a str },
    /// Gives up `client`'s lock on `resource` (`unlock`, `lockd.release`,
    /// with `token` if given): done unless it still holds it, else sent
    /// again.
    Give {
        resource: &'a str,
        client: &'a str,
        token: Option<&'a str>,
    },
    /// Breaks whatever lock `resource` has: done if it is free; never sent
    /// again, as a lock taken since would be broken.
    Break { resource: &'a str },
}

/// How long a call may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long one host may take to answer, beyond the wait for a lock.
    pub answer: Duration,
    /// How long the call waits for a lock (its `wait` option), counted
    /// from when the call set out: a try sent later waits what is left.
    pub wait: Duration,
    /// When the whole call, every try included, must be over.
    pub deadline: Option<Instant>,
}

impl Limits {
    /// A call that does not wait for a lock, answered within `answer` by
    /// each host.
    pub fn answer(answer: Duration) -> Self {
        Self {
            answer,
            wait: Duration::ZERO,
            deadline: None,
        }
    }
}

/// Why a call through [`Hosts`] did not return a value.
#[derive(Debug)]
pub enum Failure {
    /// A host answered with a fault: the call's answer.
    Fault(Fault),
    /// The host at the URL answered with something else than an XML-RPC
    /// response (another HTTP status, or not XML-RPC).
    Misanswered(String, CallError),
    /// No host took the call, so it did not happen: what each one said.
    Unavailable(Vec<(String, String)>),
    /// The call may have happened, and what it did could not be settled.
    Unknown(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fault(fault) => f.write_str(&fault.message),
            Failure::Misanswered(url, error) => write!(f, "{url}: {error}"),
            Failure::Unavailable(said) => {
                f.write_str("no lockd host took the call (it did not happen)")?;
                for (url, what) in said {
                    write!(f, "; {url}: {what}")?;
                }
                Ok(())
            }
            Failure::Unknown(what) => write!(f, "the outcome is unknown: {what}"),
        }
    }
}

/// What a settled call turned out to be.
enum Settled {
    Done(Value),
    Again,
}

impl Hosts {
    /// The hosts of `list`: URLs separated by commas (spaces around them
    /// ignored), each as [`Client::with_tls`] takes them.
    pub fn parse(list: &str, files: &ClientFiles) -> anyhow::Result<Self> {
        let mut hosts: Vec<(String, Client)> = Vec::new();
        if list.trim().is_empty() {
            bail!("the URL list {list:?} names no URL");
        }
        let urls: Vec<&str> = list.split(',').map(str::trim).collect();
        for (i, &url) in urls.iter().enumerate() {
            if url.is_empty() {
                bail!("the URL list {:?} has an empty entry", shown(list));
            }
            if urls[..i].contains(&url) {
                bail!(
                    "the URL list {:?} names {:?} twice",
                    shown(list),
                    shown(url)
                );
            }
            let client = Client::with_tls(url, files)
                .map_err(|e| anyhow::anyhow!("{}", format!("{e:#}").replace(url, &shown(url))))
                .with_context(|| format!("in the URL list {:?}", shown(list)))?;
            hosts.push((shown(url), client));
        }
        Ok(Self {
            hosts,
            last: AtomicUsize::new(0),
        })
    }

    /// Calls `method` with the params `params` gives for the time since the
    /// call set out (a waiting acquire sent again waits what is left).
    pub fn call(
        &self,
        method: &str,
        params: &dyn Fn(Duration) -> Vec<Value>,
        kind: Kind,
        limits: Limits,
    ) -> Result<Value, Failure> {
        let start = Instant::now();
        let count = self.hosts.len();
        let first = self.last.load(Ordering::Relaxed);
        let mut said = Vec::new();
        // Whether a try may have happened without its answer reaching us.
        let mut uncertain = false;
        for step in 0..count {
            let at = (first + step) % count;
            let (url, client) = &self.hosts[at];
            let Some(timeout) = try_timeout(start, limits, count - step - 1) else {
                said.push((url.clone(), "not tried: the call's time ran out".to_owned()));
                break;
            };
            let failed = match client
                .clone()
                .with_timeout(timeout)
                .call(method, &params(start.elapsed()))
            {
                Ok(value) => {
                    self.last.store(at, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(error) => error,
            };
            let outcome_unknown = match failed {
                CallError::Fault(fault) if fault.code == 7 => {
                    if fault.message.starts_with(DID_NOT_HAPPEN) {
                        said.push((url.clone(), fault.message));
                        continue;
                    }
                    fault.message
                }
                CallError::Fault(fault) => {
                    self.last.store(at, Ordering::Relaxed);
                    if uncertain && let Some(settled) = self.settle_answer(&fault, kind, limits) {
                        return settled;
                    }
                    return Err(Failure::Fault(fault));
                }
                CallError::Unreached(_) | CallError::Refused(_) => {
                    said.push((url.clone(), failed.to_string()));
                    continue;
                }
                CallError::NoAnswer(e) => format!("{e:#}"),
                // After a try that may have happened, what this host says
                // does not settle it.
                CallError::Transport(_) if uncertain => {
                    said.push((url.clone(), failed.to_string()));
                    break;
                }
                CallError::Transport(_) => return Err(Failure::Misanswered(url.clone(), failed)),
            };
            let what = format!("{url}: {outcome_unknown}");
            if count == 1 {
                return Err(Failure::Unknown(what));
            }
            uncertain = true;
            self.last.store((at + 1) % count, Ordering::Relaxed);
            match self.settle(kind, limits, &what)? {
                Settled::Done(value) => return Ok(value),
                Settled::Again => said.push((url.clone(), format!("no answer: {outcome_unknown}"))),
            }
        }
        if uncertain {
            let said: Vec<String> = said
                .iter()
                .map(|(url, what)| format!("{url}: {what}"))
                .collect();
            return Err(Failure::Unknown(said.join("; ")));
        }
        Err(Failure::Unavailable(said))
    }

    /// What to do after a try of a `kind` call got no answer (`what`).
    fn settle(&self, kind: Kind, limits: Limits, what: &str) -> Result<Settled, Failure> {
        let resource = match kind {
            Kind::Repeatable => return Ok(Settled::Again),
            Kind::Take { resource, .. }
            | Kind::Give { resource, .. }
            | Kind::Break { resource } => resource,
        };
        let lock = self.status(resource, limits).map_err(|e| {
            Failure::Unknown(format!("{what}; lockd.status could not settle it: {e}"))
        })?;
        let holder = holder(&lock);
        match kind {
            Kind::Repeatable => Ok(Settled::Again),
            Kind::Take { client, .. } => match holder {
                None => Ok(Settled::Again),
                // Taken by this call, or held under the same name before
                // it (which `lock` would have refused): not to be told.
                Some((holder, token)) if holder == client => Err(Failure::Unknown(format!(
                    "{what}; {resource} is held under this client's name (token {token}), \
                     by this call or by an earlier one"
                ))),
                Some((holder, _)) => Err(Failure::Fault(Fault::new(
                    1,
                    format!("{resource} is locked by {holder} (seen after {what})"),
                ))),
            },
            Kind::Give { client, token, .. } => match holder {
                Some((holder, held)) if holder == client && token.is_none_or(|t| held == t) => {
                    Ok(Settled::Again)
                }
                _ => Ok(Settled::Done(Value::Nil)),
            },
            Kind::Break { .. } => match holder {
                None => Ok(Settled::Done(Value::Nil)),
                Some((holder, token)) => Err(Failure::Unknown(format!(
                    "{what}; {resource} is held by {holder} (token {token}), which was not \
                     broken again: it may have been taken since"
                ))),
            },
        }
    }

    /// The outcome to give for `fault`, answered to a call sent again after
    /// an earlier try of it may have happened, if the earlier try explains
    /// it.
    fn settle_answer(
        &self,
        fault: &Fault,
        kind: Kind,
        limits: Limits,
    ) -> Option<Result<Value, Failure>> {
        match kind {
            // "Already locked": by the earlier take, or by another.
            Kind::Take { .. } if fault.code == 1 => {
                let what = format!("a try got no answer, the next one: {}", fault.message);
                match self.settle(kind, limits, &what) {
                    Err(failure) => Some(Err(failure)),
                    // Free again, or another's: the fault stands.
                    Ok(_) => None,
                }
            }
            // The earlier give landed: the lock is gone, or another's.
            Kind::Give { .. } if matches!(fault.code, 2 | 3 | 5) => Some(Ok(Value::Nil)),
            _ => None,
        }
    }

    /// `lockd.status` of `resource`, from any host.
    fn status(&self, resource: &str, limits: Limits) -> Result<Value, Failure> {
        let limits = Limits {
            wait: Duration::ZERO,
            ..limits
        };
        self.call(
            "lockd.status",
            &|_| vec![resource.into()],
            Kind::Repeatable,
            limits,
        )
    }
}

/// The holder and token of a `lockd.status` answer, `None` if free.
fn holder(lock: &Value) -> Option<(&str, String)> {
    let client = lock.member("client")?.as_str()?;
    let token = lock
        .member("token")
        .and_then(Value::as_i64)
        .map_or(String::new(), |t| t.to_string());
    Some((client, token))
}

/// How long the next try may take: the wait left plus a host's answer
/// time, within the call's deadline, and at most half of what is left of it
/// while `after` more hosts could be tried; `None` if the deadline has
/// passed.
fn try_timeout(start: Instant, limits: Limits, after: usize) -> Option<Duration> {
    let wait_left = limits.wait.saturating_sub(start.elapsed());
    let timeout = wait_left.saturating_add(limits.answer);
    match limits.deadline {
        None => Some(timeout),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = if after > 0 { left / 2 } else { left };
            (!left.is_zero()).then(|| timeout.min(share))
        }
    }
}

/// `text` with the password of every `user:password@` in it hidden.
fn shown(text: &str) -> String {
    text.split(',')
        .map(|url| {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_owned();
            };
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    format!("{scheme}://{user}:***@{host}{}", &rest[end..])
                }
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A `request_id` for one acquire: 128 random bits, as hex.
pub fn request_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
