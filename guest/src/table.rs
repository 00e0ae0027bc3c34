//! The lock rules applied to the lock directory's table: each request's
//! effect (from `rules`) made in memory, with the tokens it issues and the
//! lock file changes it needs; `list`, and the sweep of expired leases.
//! `state` makes the changes durable.

use crate::lease::LockInfo;
use crate::rules::{self, Effect, Outcome, View};
use crate::state::{Change, Cooling, Error, Held, Reply, Request, State, Step, Swept};

impl State {
    /// What `request` does at `now_ms`: its reply and the changes it makes,
    /// already made in memory (`undo` takes them back).
    pub(crate) fn decide(
        &mut self,
        request: &Request,
        now_ms: u64,
    ) -> Result<(Reply, Vec<Step>), Error> {
        let resource = match request {
            Request::List {
                prefix,
                after,
                limit,
            } => {
                let page = self.list(prefix, after.as_deref(), *limit, now_ms);
                return Ok((page, Vec::new()));
            }
            Request::Count { prefix } => {
                let count = self.running(prefix, None, now_ms).count();
                return Ok((Reply::Count(count as u64), Vec::new()));
            }
            Request::Sweep => return Ok(self.sweep(now_ms)),
            Request::Lock { resource, .. }
            | Request::Unlock { resource, .. }
            | Request::Holder { resource }
            | Request::Acquire { resource, .. }
            | Request::Release { resource, .. }
            | Request::Renew { resource, .. }
            | Request::Status { resource }
            | Request::Check { resource, .. }
            | Request::Break { resource } => resource.clone(),
        };
        let view = View {
            held: self.held.get(&resource).map(|h| &h.info),
            cooling: self.cooling.get(&resource).map(|c| &c.delay),
        };
        let Outcome { mut reply, effect } =
            rules::decide(request, view, now_ms, self.lock_delay_ms)?;
        let steps = match effect {
            Effect::None => Vec::new(),
            Effect::Hold { mut info, fresh } => {
                // A renewed lock keeps its file, whatever its name.
                let file = match self.held.get(&resource) {
                    Some(held) if !fresh => held.file.clone(),
                    _ => rules::check_resource(&resource)?,
                };
                if fresh {
                    info.token = self.tokens.issue(&mut self.dir).map_err(Error::Io)?;
                    if let Reply::Lock(replied) = &mut reply {
                        replied.token = info.token;
                    }
                    // (Removing from an empty map still hashes the key.)
                    if !self.cooling.is_empty() {
                        self.cooling.remove(&resource);
                    }
                }
                let mut steps = Vec::new();
                // An expired lock under gocept.lockd's unencoded file name
                // makes way for the new lock file.
                if self.held.get(&resource).is_some_and(|h| h.file != file) {
                    steps.push(self.drop_lock(&resource));
                }
                steps.push(self.hold(resource, info, file));
                steps
            }
            Effect::Release => vec![self.drop_lock(&resource)],
            Effect::Break(delay) => {
                // The next holder's token is above every token the old
                // holder could have handed out.
                self.tokens.issue(&mut self.dir).map_err(Error::Io)?;
                let step = self.drop_lock(&resource);
                self.cooling.insert(
                    resource,
                    Cooling {
                        delay,
                        announced: false,
                    },
                );
                vec![step]
            }
        };
        Ok((reply, steps))
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

    /// The running locks whose resource starts with `prefix` and sorts
    /// after `after`.
    fn running<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        now_ms: u64,
    ) -> impl Iterator<Item = &'a LockInfo> {
        self.held.values().map(|h| &h.info).filter(move |info| {
            info.resource.starts_with(prefix)
                && after.is_none_or(|after| info.resource.as_str() > after)
                && !info.expired(now_ms)
        })
    }

    /// The first `limit` (all, if none) of those, by resource: one pass
    /// over the table, sorting only the page.
    fn list(&self, prefix: &str, after: Option<&str>, limit: Option<u32>, now_ms: u64) -> Reply {
        let mut locks: Vec<&LockInfo> = self.running(prefix, after, now_ms).collect();
        let by_resource = |a: &&LockInfo, b: &&LockInfo| a.resource.cmp(&b.resource);
        if let Some(limit) = limit.map(|l| l as usize)
            && locks.len() > limit
        {
            if limit == 0 {
                return Reply::Locks(Vec::new());
            }
            locks.select_nth_unstable_by(limit - 1, by_resource);
            locks.truncate(limit);
        }
        locks.sort_unstable_by(by_resource);
        Reply::Locks(locks.into_iter().cloned().collect())
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
            let announced = until <= now_ms;
            if announced {
                swept.available.push(resource.clone());
            }
            let delay = rules::Cooling::until(info.client.clone(), until);
            self.cooling.insert(resource, Cooling { delay, announced });
            swept.expired.push(info);
            steps.push(step);
        }
        let mut over: Vec<String> = self
            .cooling
            .iter()
            .filter(|(_, c)| !c.announced && c.delay.until_ms <= now_ms)
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
            .retain(|_, c| !c.announced || now_ms < c.delay.forget_ms);
        let lease_ends = self.held.values().filter_map(|h| h.info.expires_ms);
        let delays_end = self.cooling.values().map(|c| {
            if c.announced {
                c.delay.forget_ms
            } else {
                c.delay.until_ms
            }
        });
        swept.next_deadline_ms = lease_ends.chain(delays_end).min();
        (Reply::Swept(swept), steps)
    }

    /// Holds `info` in lock file `file`, replacing what was held. A file
    /// that already holds the same holder's line alone stays as it is.
    fn hold(&mut self, resource: String, info: LockInfo, file: String) -> Step {
        let record = info.record();
        let kept = self.held.get(&resource).and_then(|held| {
            let same = held.file == file && held.info.client == info.client;
            held.stamp.filter(|_| same)
        });
        let change = match kept {
            Some(_) => Change::Keep { record },
            None => Change::Write {
                file: file.clone(),
                record,
            },
        };
        let before = self.held.insert(
            resource.clone(),
            Held {
                info,
                file,
                stamp: kept,
            },
        );
        Step {
            resource,
            before,
            change,
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
}
