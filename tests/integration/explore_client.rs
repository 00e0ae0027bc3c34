//! One client of the explorer: takes, renews, releases, breaks and looks
//! at locks on resources whose names prefix one another, through any of
//! the hosts, as a careful client would (docs/cluster.md): it retries an
//! acquire whose outcome it did not learn with the same `request_id` on
//! another host, asks who holds a lock when it cannot tell, and gives up
//! on a call that takes too long (the host may or may not notice). Every
//! call and every stretch of believed holding goes into the history.

use crate::etcd_faults::Rng;
use crate::explore_check::{CallRecord, History, Hold, Lost, Outcome, What, now_us};
use lockd::LockError;
use lockd::cluster::{Cluster, ClusterError};
use lockd::component::{
    AcquireRequest, GuestError, LockInfo, LockRequest, ReleaseRequest, RenewRequest, Reply, Request,
};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;
use std::time::{Duration, Instant};

/// Resources whose names prefix one another, with and without `/`.
pub const NAMES: &[&str] = &["a", "a/b", "a/b/c", "a0", "ab", "p", "p/q"];

/// What one seed's clients share.
pub struct World<'a> {
    pub hosts: &'a [Cluster],
    pub history: &'a History,
    /// How many clients' request ids are drawn from a shared pool (the
    /// same job id in two workers), per mille.
    pub shared_ids: u64,
    /// The names its clients use (a few for much contention, or all).
    pub names: Vec<&'static str>,
    pub breaks: bool,
    pub ops: usize,
}

/// A lock a client believes it holds.
struct Belief {
    token: Option<u64>,
    expires_us: Option<u64>,
    from: u64,
    ttl_ms: Option<u64>,
}

enum Answer {
    Waiting,
    Gone,
    Heard(Outcome),
}

fn outcome(result: Result<Reply, ClusterError>) -> Outcome {
    match result {
        Ok(Reply::Lock(lock)) => Outcome::Lock(lock),
        Ok(Reply::Status(lock)) => Outcome::Status(lock),
        Ok(_) => Outcome::Done,
        Err(ClusterError::Lock(refused)) => {
            let named = match &refused {
                GuestError::AlreadyLocked(holder) | GuestError::NotOwner(holder) => {
                    Some(holder.clone())
                }
                _ => None,
            };
            Outcome::Refused(format!("{refused:?}"), named)
        }
        Err(ClusterError::NotApplied(why)) => Outcome::NotApplied(why),
        Err(ClusterError::Unknown(why)) => Outcome::Unknown(why),
        Err(ClusterError::Ended(why)) => Outcome::Ended(format!("{why:?}")),
    }
}

pub struct Client<'w, 's, 'e> {
    me: String,
    world: &'w World<'w>,
    scope: &'s Scope<'s, 'e>,
    rng: Rng,
    held: HashMap<String, Belief>,
    acquires: u64,
    /// When it last set out to give up its lock of each resource, if
    /// whether it did is unknown: a lock of its taken before then may be
    /// going as it looks (its release may land late).
    released: HashMap<String, u64>,
}

/// One call as the client makes it.
struct Ask {
    host: usize,
    resource: String,
    what: What,
    request: Request,
    request_id: Option<String>,
    /// How long a waiting acquire waits in line.
    wait: Option<Duration>,
    /// How long the client waits for the answer before it gives up.
    patience: Duration,
    /// Whether the host notices when the client gives up on a wait.
    noticed: bool,
}

impl<'w, 's, 'e> Client<'w, 's, 'e>
where
    'w: 's,
{
    pub fn new(me: usize, world: &'w World<'w>, scope: &'s Scope<'s, 'e>, rng: Rng) -> Self {
        Self {
            me: format!("c{me}"),
            world,
            scope,
            rng,
            held: HashMap::new(),
            acquires: 0,
            released: HashMap::new(),
        }
    }

    pub fn run(mut self) {
        for _ in 0..self.world.ops {
            self.lapse();
            let held: Vec<String> = self.held.keys().cloned().collect();
            let resource = match held.is_empty() || self.rng.chance(0.4) {
                true => (*self.rng.pick(&self.world.names)).to_owned(),
                false => self.rng.pick(&held).clone(),
            };
            match self.held.contains_key(&resource) {
                true => self.as_holder(&resource),
                false => self.as_taker(&resource),
            }
        }
        let held: Vec<String> = self.held.keys().cloned().collect();
        for resource in held {
            self.release(&resource);
        }
    }

    fn host(&mut self) -> usize {
        self.rng.below(self.world.hosts.len() as u64) as usize
    }

    /// Ends the beliefs whose lease ran out.
    fn lapse(&mut self) {
        let now = now_us();
        let ended: Vec<String> = self
            .held
            .iter()
            .filter(|(_, b)| b.expires_us.is_some_and(|at| at <= now))
            .map(|(r, _)| r.clone())
            .collect();
        for resource in ended {
            let belief = self.held.remove(&resource).unwrap();
            let to = belief.expires_us.unwrap();
            self.end_hold(&resource, belief, to);
            // A careless holder: it asks for the lock again when its
            // lease has run out, as if it were still its.
            if self.rng.chance(0.3) {
                self.acquire_as(&resource, true);
            }
        }
    }

    fn end_hold(&self, resource: &str, belief: Belief, to: u64) {
        self.world.history.hold(Hold {
            client: self.me.clone(),
            resource: resource.to_owned(),
            token: belief.token,
            from: belief.from,
            to,
        });
    }

    fn believe(&mut self, resource: &str, lock: Option<&LockInfo>, ttl_ms: Option<u64>) {
        let from = now_us();
        let token = lock.map(|l| l.token);
        if let Some(token) = token {
            self.world.history.write_register(&self.me, resource, token);
        }
        let belief = Belief {
            token,
            expires_us: lock.and_then(|l| l.expires_ms).map(|ms| ms * 1000),
            from,
            ttl_ms,
        };
        if let Some(old) = self.held.insert(resource.to_owned(), belief) {
            // It held the old one until now, or until its lease ran out.
            let to = old.expires_us.map_or(from, |at| at.min(from));
            self.end_hold(resource, old, to);
        }
    }

    fn as_taker(&mut self, resource: &str) {
        let roll = self.rng.below(100);
        if roll < 60 {
            self.acquire(resource);
        } else if roll < 72 {
            self.lock(resource);
        } else if roll < 90 || !self.world.breaks {
            self.status(resource);
        } else if roll < 93 {
            let host = self.host();
            self.call(Ask {
                host,
                resource: resource.to_owned(),
                what: What::Break,
                request: Request::BreakLock(resource.to_owned()),
                request_id: None,
                wait: None,
                patience: Duration::from_secs(6),
                noticed: true,
            });
        } else {
            self.status(resource);
        }
    }

    fn as_holder(&mut self, resource: &str) {
        let roll = self.rng.below(100);
        let renewable = self.held[resource].ttl_ms.is_some();
        if roll < 25 && renewable {
            self.renew(resource);
        } else if roll < 35 {
            self.status(resource);
        } else if roll < 45 {
            // Asks again for what it holds: reentrant, or refused.
            self.acquire(resource);
        } else {
            self.release(resource);
        }
    }

    fn request_id(&mut self) -> Option<String> {
        self.acquires += 1;
        let roll = self.rng.below(1000);
        if roll < self.world.shared_ids {
            Some(format!("job-{}", self.rng.below(2)))
        } else if roll < 700 {
            Some(format!("{}-{}", self.me, self.acquires))
        } else {
            None
        }
    }

    fn acquire(&mut self, resource: &str) {
        let reentrant = self.rng.chance(0.4);
        self.acquire_as(resource, reentrant);
    }

    fn acquire_as(&mut self, resource: &str, reentrant: bool) {
        let ttl_ms = match self.rng.chance(0.2) {
            true => None,
            false => Some(150 + self.rng.below(900)),
        };
        let wait = self
            .rng
            .chance(0.5)
            .then(|| Duration::from_millis(100 + self.rng.below(1400)));
        let request = Request::Acquire(AcquireRequest {
            resource: resource.to_owned(),
            client: self.me.clone(),
            ttl_ms,
            reentrant,
        });
        let request_id = self.request_id();
        let patience = match (wait, self.rng.chance(0.25)) {
            (Some(wait), true) => wait / 3,
            (None, true) => Duration::from_millis(30 + self.rng.below(300)),
            (Some(wait), false) => wait + Duration::from_secs(6),
            (None, false) => Duration::from_secs(6),
        };
        let mut ask = Ask {
            host: self.host(),
            resource: resource.to_owned(),
            what: What::Acquire {
                wait: wait.is_some(),
            },
            request,
            request_id,
            wait,
            patience,
            noticed: self.rng.chance(0.6),
        };
        for attempt in 0..3 {
            let heard = self.call(ask.clone());
            match heard {
                // A reentrant acquire, or one reusing a request id
                // (docs/cluster.md), may be answered with a lock this
                // client has since given up: not believed held while its
                // release may still land.
                Some(Outcome::Lock(lock)) if self.given_up(resource, &lock) => return,
                Some(Outcome::Lock(lock)) => return self.believe(resource, Some(&lock), ttl_ms),
                Some(Outcome::Refused(..) | Outcome::NotApplied(_) | Outcome::Ended(_)) => return,
                // Not learnt: the same request again elsewhere, if it
                // has an id; else ask who holds it.
                _ if ask.request_id.is_some() && attempt < 2 => {
                    // Now and then the retry comes late (the client's own
                    // network trouble): after the lease may have run out.
                    if self.rng.chance(0.3) {
                        std::thread::sleep(Duration::from_millis(self.rng.below(1500)));
                    }
                    ask.host = (ask.host + 1) % self.world.hosts.len();
                    ask.patience = ask.wait.unwrap_or_default() + Duration::from_secs(6);
                }
                _ => return self.learn(resource, ttl_ms),
            }
        }
    }

    /// After a take whose outcome it did not learn: whether it holds the
    /// lock, from a host's status.
    fn learn(&mut self, resource: &str, ttl_ms: Option<u64>) {
        for _ in 0..3 {
            match self.status(resource) {
                Some(Outcome::Status(Some(lock))) if lock.client == self.me => {
                    if !self.given_up(resource, &lock) {
                        self.believe(resource, Some(&lock), ttl_ms);
                    }
                    return;
                }
                Some(Outcome::Status(_)) => return,
                _ => {}
            }
        }
    }

    /// Whether `lock` was taken before this client last set out to give
    /// up its lock of `resource` and did not learn whether it did: one it
    /// is giving up, whose release may be on its way to etcd still. (A
    /// release known not to have happened leaves the lock the client's:
    /// answered again, by a reentrant acquire or a reused request id, it
    /// is believed.)
    fn given_up(&self, resource: &str, lock: &LockInfo) -> bool {
        self.released
            .get(resource)
            .is_some_and(|&at| lock.acquired_ms * 1000 < at)
    }

    fn lock(&mut self, resource: &str) {
        let host = self.host();
        let request = Request::Lock(LockRequest {
            resource: resource.to_owned(),
            client: self.me.clone(),
        });
        let heard = self.call(Ask {
            host,
            resource: resource.to_owned(),
            what: What::Lock,
            request,
            request_id: None,
            wait: None,
            patience: Duration::from_secs(6),
            noticed: true,
        });
        match heard {
            Some(Outcome::Done) => self.believe(resource, None, None),
            Some(Outcome::Unknown(_)) | None => self.learn(resource, None),
            _ => {}
        }
    }

    fn status(&mut self, resource: &str) -> Option<Outcome> {
        let host = self.host();
        self.call(Ask {
            host,
            resource: resource.to_owned(),
            what: What::Status,
            request: Request::Status(resource.to_owned()),
            request_id: None,
            wait: None,
            patience: Duration::from_secs(6),
            noticed: true,
        })
    }

    fn renew(&mut self, resource: &str) {
        let belief = &self.held[resource];
        let Some(token) = belief.token else { return };
        let ttl_ms = 150 + self.rng.below(900);
        let host = self.host();
        let request = Request::Renew(RenewRequest {
            resource: resource.to_owned(),
            client: self.me.clone(),
            ttl_ms,
            token: Some(token),
        });
        let asked = now_us();
        let heard = self.call(Ask {
            host,
            resource: resource.to_owned(),
            what: What::Renew(token),
            request,
            request_id: None,
            wait: None,
            patience: Duration::from_secs(6),
            noticed: true,
        });
        let running = self.held[resource]
            .expires_us
            .is_none_or(|at| at > now_us());
        match heard {
            Some(Outcome::Lock(lock)) => {
                let belief = self.held.get_mut(resource).unwrap();
                belief.expires_us = lock.expires_ms.map(|ms| ms * 1000);
                belief.ttl_ms = Some(ttl_ms);
            }
            Some(Outcome::Refused(why, _)) => {
                let belief = self.held.remove(resource).unwrap();
                if running {
                    self.lost(resource, belief.from, asked, why);
                }
                self.end_hold(resource, belief, asked);
            }
            // It may have happened, and a renewal may shorten the lease:
            // the client counts on the shorter of the two.
            Some(Outcome::Unknown(_)) | None => {
                let belief = self.held.get_mut(resource).unwrap();
                let renewed = asked + ttl_ms * 1000;
                belief.expires_us = Some(belief.expires_us.map_or(renewed, |at| at.min(renewed)));
            }
            _ => {}
        }
    }

    /// Releases (or unlocks) what it holds, until it knows the lock is
    /// no longer its.
    fn release(&mut self, resource: &str) {
        let Some(belief) = self.held.remove(resource) else {
            return;
        };
        let setting_out = now_us();
        self.released.remove(resource);
        let (what, request) = match belief.token {
            Some(token) => (
                What::Release(token),
                Request::Release(ReleaseRequest {
                    resource: resource.to_owned(),
                    client: self.me.clone(),
                    token: Some(token),
                }),
            ),
            None => (
                What::Unlock,
                Request::Unlock(LockRequest {
                    resource: resource.to_owned(),
                    client: self.me.clone(),
                }),
            ),
        };
        let mut maybe_done = false;
        let mut stopped = None;
        for _ in 0..4 {
            let asked = now_us();
            let host = self.host();
            let patience = match self.rng.chance(0.1) {
                true => Duration::from_millis(30 + self.rng.below(200)),
                false => Duration::from_secs(6),
            };
            let heard = self.call(Ask {
                host,
                resource: resource.to_owned(),
                what: what.clone(),
                request: request.clone(),
                request_id: None,
                wait: None,
                patience,
                noticed: true,
            });
            let running = belief.expires_us.is_none_or(|at| at > now_us());
            match heard {
                Some(Outcome::Done) => {
                    stopped.get_or_insert(asked);
                    break;
                }
                // Nothing happened: it still holds the lock.
                Some(Outcome::NotApplied(_)) => {}
                Some(Outcome::Refused(why, _)) => {
                    stopped.get_or_insert(asked);
                    if !maybe_done && running {
                        self.lost(resource, belief.from, asked, why);
                    }
                    break;
                }
                // It may be free already: it stops using it now.
                _ => {
                    stopped.get_or_insert(asked);
                    maybe_done = true;
                }
            }
        }
        if maybe_done {
            self.released.insert(resource.to_owned(), setting_out);
        }
        let to = stopped.unwrap_or_else(now_us);
        let to = belief.expires_us.map_or(to, |at| at.min(to));
        self.end_hold(resource, belief, to);
    }

    fn lost(&self, resource: &str, since: u64, asked: u64, why: String) {
        self.world.history.lost.lock().unwrap().push(Lost {
            client: self.me.clone(),
            resource: resource.to_owned(),
            since,
            asked,
            answered: now_us(),
            why,
        });
    }

    /// Makes `ask` on its own thread; the answer if the client heard it
    /// within its patience. The call is recorded when the host answers,
    /// heard or not.
    fn call(&mut self, ask: Ask) -> Option<Outcome> {
        let answer = Arc::new((Mutex::new(Answer::Waiting), Condvar::new()));
        let world = self.world;
        let me = self.me.clone();
        let shared = answer.clone();
        let patience = ask.patience;
        self.scope.spawn(move || {
            let asked = now_us();
            let host = &world.hosts[ask.host];
            let id = ask.request_id.as_deref();
            let result = match ask.wait {
                None => host.call(&ask.request, id, Instant::now() + Duration::from_secs(5)),
                Some(wait) => {
                    let gone = || matches!(*shared.0.lock().unwrap(), Answer::Gone);
                    let leave = || (ask.noticed && gone()).then_some(LockError::CallerGone);
                    host.wait(&ask.request, id, Instant::now() + wait, &leave)
                }
            };
            let outcome = outcome(result);
            let heard = {
                let mut state = shared.0.lock().unwrap();
                let heard = matches!(*state, Answer::Waiting);
                if heard {
                    *state = Answer::Heard(outcome.clone());
                    shared.1.notify_all();
                }
                heard
            };
            world.history.call(CallRecord {
                client: me,
                host: ask.host,
                resource: ask.resource,
                what: ask.what,
                request_id: ask.request_id,
                asked,
                finished: now_us(),
                heard,
                outcome,
            });
        });
        let (state, wake) = &*answer;
        let state = state.lock().unwrap();
        let (mut state, _) = wake
            .wait_timeout_while(state, patience, |s| matches!(s, Answer::Waiting))
            .unwrap();
        match std::mem::replace(&mut *state, Answer::Gone) {
            Answer::Heard(outcome) => Some(outcome),
            _ => None,
        }
    }
}

impl Clone for Ask {
    fn clone(&self) -> Self {
        Self {
            host: self.host,
            resource: self.resource.clone(),
            what: self.what.clone(),
            request: self.request.clone(),
            request_id: self.request_id.clone(),
            wait: self.wait,
            patience: self.patience,
            noticed: self.noticed,
        }
    }
}
