//! What each request does to the lock table: who may take, release, renew
//! or break a lock, when a lease has run out, and which tokens are issued.
//! Changes are made in memory here; `state` makes them durable.

use crate::lease::LockInfo;
use crate::name;
use crate::state::{Change, Cooling, Error, Held, Reply, Request, State, Step, Swept};

/// How long the holder of a lock that expired or was broken is told so
/// (`lease-expired`) when it asks, after the lock-delay.
const REMEMBER_LOST_MS: u64 = 60_000;

/// Where a resource stands at some moment.
enum Standing<'a> {
    /// Held, the lease (if any) running.
    Held(&'a Held),
    /// Not available until the lock-delay after an expiry or break ends.
    Cooling {
        ms_left: u64,
    },
    Free,
}

impl State {
    fn standing(&self, resource: &str, now_ms: u64) -> Standing<'_> {
        let until = match self.held.get(resource) {
            Some(held) if !held.info.expired(now_ms) => return Standing::Held(held),
            Some(held) => held.info.expires_ms.unwrap_or(now_ms) + self.lock_delay_ms,
            None => self.cooling.get(resource).map_or(0, |c| c.until_ms),
        };
        if now_ms < until {
            Standing::Cooling {
                ms_left: until - now_ms,
            }
        } else {
            Standing::Free
        }
    }

    /// What `request` does at `now_ms`: its reply and the changes it makes,
    /// already made in memory (`undo` takes them back).
    pub(crate) fn decide(
        &mut self,
        request: Request,
        now_ms: u64,
    ) -> Result<(Reply, Vec<Step>), Error> {
        match request {
            Request::Holder { resource } => {
                check_resource(&resource)?;
                let holder = match self.standing(&resource, now_ms) {
                    Standing::Held(held) => Some(held.info.client.clone()),
                    _ => None,
                };
                Ok((Reply::Holder(holder), Vec::new()))
            }
            Request::Status { resource } => {
                check_resource(&resource)?;
                let info = match self.standing(&resource, now_ms) {
                    Standing::Held(held) => Some(held.info.clone()),
                    _ => None,
                };
                Ok((Reply::Status(info), Vec::new()))
            }
            Request::Check { resource, token } => {
                check_resource(&resource)?;
                let valid = match self.standing(&resource, now_ms) {
                    Standing::Held(held) => token != 0 && held.info.token == token,
                    _ => false,
                };
                Ok((Reply::Valid(valid), Vec::new()))
            }
            Request::List { prefix } => {
                let mut locks: Vec<LockInfo> = self
                    .held
                    .values()
                    .filter(|h| h.info.resource.starts_with(&prefix) && !h.info.expired(now_ms))
                    .map(|h| h.info.clone())
                    .collect();
                locks.sort_by(|a, b| a.resource.cmp(&b.resource));
                Ok((Reply::Locks(locks), Vec::new()))
            }
            Request::Lock { resource, client } => {
                let (_, steps) = self.take(resource, client, None, false, now_ms)?;
                Ok((Reply::Done, steps))
            }
            Request::Acquire {
                resource,
                client,
                ttl_ms,
                reentrant,
            } => {
                if ttl_ms == Some(0) {
                    return Err(Error::InvalidName("a lease's ttl must be positive".into()));
                }
                let (info, steps) = self.take(resource, client, ttl_ms, reentrant, now_ms)?;
                Ok((Reply::Lock(info), steps))
            }
            Request::Unlock { resource, client } => self.release(resource, client, None, now_ms),
            Request::Release {
                resource,
                client,
                token,
            } => self.release(resource, client, token, now_ms),
            Request::Renew {
                resource,
                client,
                ttl_ms,
                token,
            } => {
                if ttl_ms == 0 {
                    return Err(Error::InvalidName("a lease's ttl must be positive".into()));
                }
                let held = self.own(&resource, &client, token, now_ms)?;
                let (mut info, file) = (held.info.clone(), held.file.clone());
                info.ttl_ms = Some(ttl_ms);
                info.expires_ms = Some(now_ms.saturating_add(ttl_ms));
                let step = self.hold(resource, info.clone(), file);
                Ok((Reply::Lock(info), vec![step]))
            }
            Request::Break { resource } => {
                check_resource(&resource)?;
                if !self.held.contains_key(&resource) {
                    return Err(Error::NotLocked);
                }
                // The next holder's token is above every token the old
                // holder could have handed out.
                self.tokens.issue(&mut self.dir).map_err(Error::Io)?;
                let step = self.drop_lock(&resource);
                let info = step.before.as_ref().expect("held").info.clone();
                self.cool(&resource, info.client.clone(), now_ms + self.lock_delay_ms);
                Ok((Reply::Lock(info), vec![step]))
            }
            Request::Sweep => Ok(self.sweep(now_ms)),
        }
    }

    /// Takes `resource` for `client`: the `lock` and `acquire` rules.
    fn take(
        &mut self,
        resource: String,
        client: String,
        ttl_ms: Option<u64>,
        reentrant: bool,
        now_ms: u64,
    ) -> Result<(LockInfo, Vec<Step>), Error> {
        let file = check_resource(&resource)?;
        name::check_client(&client).map_err(Error::InvalidName)?;
        match self.standing(&resource, now_ms) {
            Standing::Held(held) if reentrant && held.info.client == client => {
                return Ok((held.info.clone(), Vec::new()));
            }
            Standing::Held(held) => return Err(Error::AlreadyLocked(held.info.client.clone())),
            Standing::Cooling { ms_left } => return Err(Error::CoolingDown(ms_left)),
            Standing::Free => {}
        }
        let token = self.tokens.issue(&mut self.dir).map_err(Error::Io)?;
        let info = LockInfo {
            resource: resource.clone(),
            client,
            token,
            acquired_ms: now_ms,
            ttl_ms,
            expires_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
        };
        // (Removing from an empty map still hashes the key.)
        if !self.cooling.is_empty() {
            self.cooling.remove(&resource);
        }
        let mut steps = Vec::new();
        // An expired lock under gocept.lockd's unencoded file name makes
        // way for the new lock file.
        if self.held.get(&resource).is_some_and(|h| h.file != file) {
            steps.push(self.drop_lock(&resource));
        }
        steps.push(self.hold(resource, info.clone(), file));
        Ok((info, steps))
    }

    /// Releases `client`'s lock: the `unlock` and `release` rules.
    fn release(
        &mut self,
        resource: String,
        client: String,
        token: Option<u64>,
        now_ms: u64,
    ) -> Result<(Reply, Vec<Step>), Error> {
        self.own(&resource, &client, token, now_ms)?;
        Ok((Reply::Done, vec![self.drop_lock(&resource)]))
    }

    /// Whether deciding `request` depends on the time. Only releasing a
    /// held lock without a lease does not: such a lock never expires, and
    /// releasing it starts no lock-delay.
    pub(crate) fn needs_time(&self, request: &Request) -> bool {
        match request {
            Request::Unlock { resource, .. } | Request::Release { resource, .. } => self
                .held
                .get(resource)
                .is_none_or(|held| held.info.expires_ms.is_some()),
            _ => true,
        }
    }

    /// `client`'s running lock on `resource` (with `token`, if given).
    fn own(
        &self,
        resource: &str,
        client: &str,
        token: Option<u64>,
        now_ms: u64,
    ) -> Result<&Held, Error> {
        check_resource(resource)?;
        name::check_client(client).map_err(Error::InvalidName)?;
        match self.held.get(resource) {
            Some(held) if held.info.expired(now_ms) => {
                if held.info.client == client {
                    Err(Error::LeaseExpired)
                } else {
                    Err(Error::NotLocked)
                }
            }
            Some(held) if held.info.client != client => {
                Err(Error::NotOwner(held.info.client.clone()))
            }
            Some(held) if token.is_some_and(|t| t != held.info.token) => Err(Error::StaleToken),
            Some(held) => Ok(held),
            None if self
                .cooling
                .get(resource)
                .is_some_and(|c| c.client == client) =>
            {
                Err(Error::LeaseExpired)
            }
            None => Err(Error::NotLocked),
        }
    }

    /// Removes the expired leases and ends the lock-delays that are over.
    fn sweep(&mut self, now_ms: u64) -> (Reply, Vec<Step>) {
        let mut swept = Swept {
            now_ms,
            ..Swept::default()
        };
        let mut expired: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.info.expired(now_ms))
            .map(|(r, _)| r.clone())
            .collect();
        expired.sort();
        let mut steps = Vec::new();
        for resource in expired {
            let step = self.drop_lock(&resource);
            let info = step.before.as_ref().expect("held").info.clone();
            let until = info.expires_ms.unwrap_or(now_ms) + self.lock_delay_ms;
            self.cool(&resource, info.client.clone(), until);
            if until <= now_ms {
                self.cooling
                    .get_mut(&resource)
                    .expect("just cooled")
                    .announced = true;
                swept.available.push(resource);
            }
            swept.expired.push(info);
            steps.push(step);
        }
        let mut over: Vec<String> = self
            .cooling
            .iter()
            .filter(|(_, c)| !c.announced && c.until_ms <= now_ms)
            .map(|(r, _)| r.clone())
            .collect();
        over.sort();
        for resource in over {
            if let Some(cooling) = self.cooling.get_mut(&resource) {
                cooling.announced = true;
            }
            swept.available.push(resource);
        }
        self.cooling
            .retain(|_, c| !c.announced || now_ms < c.forget_ms);
        let lease_ends = self.held.values().filter_map(|h| h.info.expires_ms);
        let delays_end = self
            .cooling
            .values()
            .map(|c| if c.announced { c.forget_ms } else { c.until_ms });
        swept.next_deadline_ms = lease_ends.chain(delays_end).min();
        (Reply::Swept(swept), steps)
    }

    /// Holds `info` in lock file `file`, replacing what was held.
    fn hold(&mut self, resource: String, info: LockInfo, file: String) -> Step {
        let content = info.file_content();
        let before = self.held.insert(
            resource.clone(),
            Held {
                info,
                file: file.clone(),
            },
        );
        Step {
            resource,
            before,
            change: Change::Write { file, content },
        }
    }

    /// Removes the held lock of `resource`, which must be held.
    fn drop_lock(&mut self, resource: &str) -> Step {
        let before = self.held.remove(resource).expect("a held lock");
        Step {
            resource: resource.to_owned(),
            change: Change::Remove {
                file: before.file.clone(),
            },
            before: Some(before),
        }
    }

    fn cool(&mut self, resource: &str, client: String, until_ms: u64) {
        let cooling = Cooling {
            client,
            until_ms,
            forget_ms: until_ms.saturating_add(REMEMBER_LOST_MS),
            announced: false,
        };
        self.cooling.insert(resource.to_owned(), cooling);
    }
}

/// The lock file name of `resource`, or why it cannot have one.
fn check_resource(resource: &str) -> Result<String, Error> {
    name::lock_file_name(resource).map_err(Error::InvalidName)
}
