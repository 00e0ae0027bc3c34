//! Calls answered without holding a thread while they wait for a lock.
//!
//! Most calls are answered at once, on the caller's thread (which may
//! park briefly while its change is committed with others). A call that
//! waits for a lock (`lockd.acquire` with `wait`, alone or inside
//! `system.multicall`) is parked in the lock's line instead: the thread
//! returns, and when the wait ends the rest of the call (the remaining
//! entries of a multicall, then the answer) runs on a thread the
//! transport hands out through [`Spawn`].

use super::{
    Listed, counted, dispatch, encode, entry_call, label, methods, multicall_entries,
    multicall_result, ops, parse,
};
use crate::auth::Role;
use crate::backend::Terms;
use crate::component::Reply;
use crate::error::{LockError, code};
use crate::gate::{self, Turn};
use crate::locks::{self, Lockd, Presence};
use crate::xmlrpc::{Fault, MethodCall, Value};
use std::sync::{Arc, Mutex};

/// A job to run on a thread that may block (on writing an answer, say).
pub type Job = Box<dyn FnOnce() + Send>;

/// Runs jobs for calls whose wait has ended; given by the transport.
pub type Spawn = Arc<dyn Fn(Job) + Send + Sync>;

/// Who answers a call that waited for its lock, once the wait has ended.
pub trait Later: Send + Sized + 'static {
    /// Sends `xml`, the answer; runs on a thread from [`Spawn`].
    fn answer(self, xml: String);

    /// Whether it can be answered from whichever thread has the result
    /// (see [`answer_here`](Self::answer_here)): then every call that
    /// changes locks is, the caller's thread not waiting for the batch
    /// its change is committed in.
    fn prompt(&self) -> bool {
        false
    }

    /// Sends `xml` from the thread that has it (the one that committed
    /// the batch, say), which must not block: what cannot be written at
    /// once is left to a thread from `spawn`.
    fn answer_here(self, xml: String, spawn: &Spawn) {
        spawn(Box::new(move || self.answer(xml)));
    }
}

/// Whether a call was answered on the caller's thread.
pub enum Answered<R> {
    /// The answer, and the replier it did not need.
    Now(String, R),
    /// The call waits for a lock; the replier gets the answer later, on a
    /// thread from [`Spawn`].
    Later,
}

/// Answers one HTTP request body as [`super::handle_as`] does, except
/// that a call waiting for a lock does not hold this thread: `reply`
/// answers it when the wait ends. A caller no longer present leaves the
/// line, and is given no lock (see [`Lockd::submit_waiting`]). A call
/// whose answer grows with the locks held waits for its turn (see
/// [`gate`]) and is not run if its caller left meanwhile. `presence` tells
/// how to ask, and is called only for calls that may wait.
pub fn handle_parking<R>(
    lockd: &Arc<Lockd>,
    body: &[u8],
    role: Role,
    spawn: &Spawn,
    presence: impl Fn() -> Option<Presence>,
    reply: R,
) -> Answered<R>
where
    R: Later,
{
    let call = match parse(body) {
        Ok(call) => call,
        Err(fault) => return Answered::Now(counted(lockd, "invalid", Err(fault)), reply),
    };
    let label = label(&call);
    if call.name == "system.multicall" {
        return match Multicall::new(lockd.clone(), role, presence(), &call) {
            Ok(multicall) => multicall.run(spawn.clone(), reply),
            Err(fault) => Answered::Now(counted(lockd, label, Err(fault)), reply),
        };
    }
    // Held until the answer is encoded.
    let _turn = match turn(&call.name, &presence) {
        Ok(turn) => turn,
        Err(_) => {
            let gone = Fault::new(
                code::WAIT_TIMED_OUT,
                "The caller has gone (its connection is closed) while its list waited its turn",
            );
            return Answered::Now(counted(lockd, label, Err(gone)), reply);
        }
    };
    // A call whose answer grows with the locks held is answered on this
    // thread, which holds its turn until its answer is encoded.
    let prompt = reply.prompt() && !methods::grows_with_locks(&call.name);
    let op = match step(lockd, &call, role, prompt) {
        Step::Done(result) => return Answered::Now(counted(lockd, label, result), reply),
        Step::Wait(op) => op,
    };
    let metrics = lockd.metrics_handle();
    let finish = move |result: Result<Value, LockError>| {
        let result = result.map_err(super::fault);
        metrics.call(label, result.as_ref().err().map(|f| f.code));
        encode(result)
    };
    if op.terms.deadline.is_none() {
        // Answered by whichever thread has the result, this one included
        // if it commits the batch: it must not wait for that to end (it
        // may commit batch after batch while others' calls come in).
        let spawn = spawn.clone();
        submit(lockd, op, None)(Box::new(move |result| {
            reply.answer_here(finish(result), &spawn);
        }));
        return Answered::Later;
    }
    let replier = Arc::new(Mutex::new(Some(reply)));
    let parked = replier.clone();
    let spawn = spawn.clone();
    let later_finish = finish.clone();
    let result = now_or_later(submit(lockd, op, presence()), move |result| {
        if let Some(reply) = take(&parked) {
            spawn(Box::new(move || reply.answer(later_finish(result))));
        }
    });
    match result.map(|result| (result, take(&replier))) {
        Some((result, Some(reply))) => Answered::Now(finish(result), reply),
        _ => Answered::Later,
    }
}

/// Takes a call's return value, or why it failed.
type Then = Box<dyn FnOnce(Result<Value, LockError>) + Send>;

/// Submits `op` for a caller that may leave while it waits, handing its
/// return value (or why it failed) to the function given. A lock taken
/// for a caller that has left in the meantime is released at once.
fn submit(lockd: &Arc<Lockd>, op: ops::Op, present: Option<Presence>) -> impl FnOnce(Then) + '_ {
    move |then| {
        let answer = op.answer;
        let asked = present.clone();
        let releaser = lockd.clone();
        let then = move |result: Result<Reply, LockError>| match result {
            Ok(Reply::Lock(lock)) if asked.as_ref().is_some_and(|present| !present()) => {
                let release =
                    locks::release_request(&lock.resource, &lock.client, Some(lock.token));
                releaser.submit_then(release, Terms::once(), drop);
                then(Err(LockError::CallerGone));
            }
            result => then(result.and_then(answer)),
        };
        lockd.submit_waiting(op.request, op.terms, present, then);
    }
}

/// For a call whose work grows with the locks held, its turn (see
/// [`gate`]): at once if one is free, else once it comes, and then
/// [`LockError::CallerGone`] if its caller has left meanwhile (as a
/// waiting call's, see [`Lockd::submit_waiting`]), so that nobody's list
/// is built for nobody. Other calls need none.
fn turn(
    name: &str,
    presence: impl FnOnce() -> Option<Presence>,
) -> Result<Option<Turn<'static>>, LockError> {
    if !methods::grows_with_locks(name) {
        return Ok(None);
    }
    if let Some(turn) = gate::try_heavy() {
        return Ok(Some(turn));
    }
    let present = presence();
    let gone = || present.as_ref().is_some_and(|present| !present());
    match gate::heavy_unless(gone) {
        Some(_) if gone() => Err(LockError::CallerGone),
        Some(turn) => Ok(Some(turn)),
        None => Err(LockError::CallerGone),
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// One call taken as far as it goes without waiting for a lock.
enum Step {
    Done(Result<Value, Fault>),
    /// A call that may wait for its lock, not submitted yet.
    Wait(ops::Op),
}

/// With `prompt`, every change is submitted to be answered later (see
/// [`Later::prompt`]).
fn step(lockd: &Lockd, call: &MethodCall, role: Role, prompt: bool) -> Step {
    match ops::op(lockd, call, role) {
        Ok(Some(op)) if prompt || op.terms.deadline.is_some() => Step::Wait(op),
        Ok(Some(op)) => Step::Done(
            lockd
                .submit(op.request, op.terms)
                .and_then(op.answer)
                .map_err(super::fault),
        ),
        Ok(None) => Step::Done(dispatch(lockd, call, role)),
        Err(fault) => Step::Done(Err(fault)),
    }
}

/// Gives `submit` a function for its result. If the result comes before
/// `submit` returns, it is returned; otherwise `later` gets it, from the
/// thread that has it.
fn now_or_later<T: Send + 'static>(
    submit: impl FnOnce(Box<dyn FnOnce(T) + Send>),
    later: impl FnOnce(T) + Send + 'static,
) -> Option<T> {
    enum Slot<T> {
        Waiting,
        Ready(T),
        Later(Box<dyn FnOnce(T) + Send>),
    }
    let slot = Arc::new(Mutex::new(Slot::Waiting));
    let filled = slot.clone();
    submit(Box::new(move |value| {
        let mut slot = filled.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, Slot::Waiting) {
            Slot::Later(later) => {
                drop(slot);
                later(value);
            }
            Slot::Waiting | Slot::Ready(_) => *slot = Slot::Ready(value),
        }
    }));
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    match std::mem::replace(&mut *slot, Slot::Waiting) {
        Slot::Ready(value) => Some(value),
        Slot::Waiting | Slot::Later(_) => {
            *slot = Slot::Later(Box::new(later));
            None
        }
    }
}

/// A `system.multicall` in progress: its entries run in order, each
/// after the one before has ended, and one that waits for a lock parks
/// the rest with it.
struct Multicall {
    lockd: Arc<Lockd>,
    role: Role,
    present: Option<Presence>,
    entries: std::vec::IntoIter<Value>,
    results: Vec<Value>,
    listed: Listed,
}

impl Multicall {
    fn new(
        lockd: Arc<Lockd>,
        role: Role,
        present: Option<Presence>,
        call: &MethodCall,
    ) -> Result<Self, Fault> {
        let entries = multicall_entries(call)?;
        Ok(Self {
            lockd,
            role,
            present,
            results: Vec::with_capacity(entries.len()),
            entries: entries.clone().into_iter(),
            listed: Listed::default(),
        })
    }

    /// Runs the entries left until one waits for its lock (then the rest
    /// goes on where its wait ends) or all are done.
    fn run<R>(mut self, spawn: Spawn, mut reply: R) -> Answered<R>
    where
        R: Later,
    {
        while let Some(entry) = self.entries.next() {
            let call = match entry_call(&entry) {
                Ok(call) => call,
                Err(fault) => {
                    self.push(Err(fault));
                    continue;
                }
            };
            if let Err(fault) = self.listed.check(&call.name) {
                self.push(Err(fault));
                continue;
            }
            let present = self.present.clone();
            let turn = match turn(&call.name, move || present) {
                Ok(turn) => turn,
                Err(gone) => {
                    self.finish_entry(Err(gone));
                    continue;
                }
            };
            let op = match step(&self.lockd, &call, self.role, false) {
                Step::Done(result) => {
                    self.listed.note(&call.name, &result);
                    self.push(result);
                    continue;
                }
                Step::Wait(op) => op,
            };
            drop(turn);
            let lockd = self.lockd.clone();
            let present = self.present.clone();
            let parked = Arc::new(Mutex::new(Some((self, reply))));
            let waiting = parked.clone();
            let resumed = spawn.clone();
            let result = now_or_later(submit(&lockd, op, present), move |result| {
                let Some((mut multicall, reply)) = take(&waiting) else {
                    return;
                };
                let spawn = resumed.clone();
                resumed(Box::new(move || {
                    multicall.finish_entry(result);
                    if let Answered::Now(xml, reply) = multicall.run(spawn, reply) {
                        reply.answer(xml);
                    }
                }));
            });
            match result.map(|result| (result, take(&parked))) {
                Some((result, Some((multicall, taken)))) => {
                    self = multicall;
                    reply = taken;
                    self.finish_entry(result);
                }
                _ => return Answered::Later,
            }
        }
        let lockd = self.lockd.clone();
        Answered::Now(
            counted(&lockd, "system.multicall", Ok(Value::Array(self.results))),
            reply,
        )
    }

    fn finish_entry(&mut self, result: Result<Value, LockError>) {
        if let Err(LockError::CallerGone) = result {
            // Nobody takes the answer: the rest is not run for nobody.
            self.entries = Vec::new().into_iter();
        }
        self.push(result.map_err(super::fault));
    }

    fn push(&mut self, result: Result<Value, Fault>) {
        self.results.push(multicall_result(result));
    }
}
