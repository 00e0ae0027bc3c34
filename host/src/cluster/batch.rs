//! Group commit for cluster mode: the guarded writes of concurrent
//! requests on different resources go to etcd as one transaction, each as
//! a nested transaction of its own (judged by its own guard, answered by
//! its own failure branch), so sixteen clients cost one round trip and one
//! raft entry where they would cost sixteen. A write with nothing beside
//! it goes as it is.
//!
//! There is no batching thread: the first writer to find no transaction
//! in flight sends everything queued; the others wait for their answer, or
//! for their turn to send what queued up meanwhile.

use super::Store;
use crate::etcd::{Compare, EtcdError, Op, OpResult, TxnResult};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A write with less time than this left to its deadline is not sent: its
/// answer would most likely come too late, and "unknown" costs its caller
/// a read where "not sent" costs nothing.
const TOO_LATE: Duration = Duration::from_millis(50);

/// How much sooner than the latest in its batch a write's deadline may
/// come and still share its transaction: a transaction's deadline is its
/// earliest write's, and one write near its deadline must not turn the
/// answers of all the others into "unknown".
const BATCH_SLACK: Duration = Duration::from_secs(1);

/// Writes per transaction at most. etcd refuses a transaction with more
/// than `--max-txn-ops` (128 by default) operations in one branch, counted
/// level by level: a nested write is one operation of the outer branch.
pub const MAX_BATCH: usize = 64;

/// One request's guarded write on one resource.
pub struct Write {
    /// Writes on the same resource never share a transaction: etcd refuses
    /// one that writes a key twice.
    pub resource: String,
    pub guard: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Read if the guard fails: the records to decide again on.
    pub reads: Vec<Op>,
    pub deadline: Instant,
}

/// A write waiting for its transaction, by its number.
type Queued = (u64, Write);

#[derive(Default)]
pub struct Batcher {
    state: Mutex<State>,
    turn: Condvar,
    /// Transactions sent, and the writes they carried (`/metrics`).
    pub transactions: AtomicU64,
    pub writes: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u64, Write)>,
    answers: HashMap<u64, Result<TxnResult, EtcdError>>,
    sending: bool,
    next: u64,
}

impl Batcher {
    /// Runs `write` on `etcd`, alone or beside others: as if it were one
    /// transaction of its own (its revision is the one its writes got).
    pub fn write(&self, etcd: &dyn Store, write: Write) -> Result<TxnResult, EtcdError> {
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.queue.push_back((id, write));
        loop {
            if let Some(answer) = state.answers.remove(&id) {
                return answer;
            }
            if state.sending {
                state = self.turn.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.sending = true;
            let batch = take_batch(&mut state.queue);
            drop(state);
            let answers = self.send(etcd, batch);
            state = self.lock();
            state.answers.extend(answers);
            state.sending = false;
            self.turn.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `write` in a transaction of its own.
    fn send_alone(&self, etcd: &dyn Store, write: &Write) -> Result<TxnResult, EtcdError> {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        etcd.txn(&write.guard, &write.ops, &write.reads, write.deadline)
    }

    fn send(
        &self,
        etcd: &dyn Store,
        batch: Vec<(u64, Write)>,
    ) -> Vec<(u64, Result<TxnResult, EtcdError>)> {
        let now = Instant::now();
        let (late, batch): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(_, w)| w.deadline <= now + TOO_LATE);
        let mut answers: Vec<_> = late
            .into_iter()
            .map(|(id, _)| {
                let why = "its deadline was (all but) past before it could be sent".to_owned();
                (id, Err(EtcdError::NotApplied(why)))
            })
            .collect();
        // A write near its deadline goes alone, first: sent with the
        // others it would cut their time short (its deadline is the
        // transaction's), and an answer too late for it is "unknown" for
        // all of them.
        let (hurried, batch) = hurried(batch);
        for (id, write) in hurried {
            answers.push((id, self.send_alone(etcd, &write)));
        }
        match &batch[..] {
            [] => return answers,
            [(id, write)] => {
                answers.push((*id, self.send_alone(etcd, write)));
                return answers;
            }
            _ => {}
        }
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let deadline = batch.iter().map(|(_, w)| w.deadline).min().unwrap_or(now);
        let nested: Vec<Op> = batch
            .iter()
            .map(|(_, w)| Op::Txn {
                compares: w.guard.clone(),
                success: w.ops.clone(),
                failure: w.reads.clone(),
            })
            .collect();
        match etcd.txn(&[], &nested, &[], deadline) {
            Ok(outer) => {
                let mut results = outer.results.into_iter();
                answers.extend(batch.into_iter().map(|(id, _)| {
                    let answer = match results.next() {
                        Some(OpResult::Txn(inner)) => Ok(TxnResult {
                            revision: outer.revision,
                            ..inner
                        }),
                        // etcd ran the transaction: an answer lockd cannot
                        // place leaves this write's outcome open.
                        _ => Err(EtcdError::Unknown(
                            "etcd's answer to a batch lacks this write's".into(),
                        )),
                    };
                    (id, answer)
                }));
            }
            Err(e) => answers.extend(batch.into_iter().map(|(id, _)| (id, Err(e.clone())))),
        }
        answers
    }
}

/// Splits off the writes of `batch` whose deadline comes more than
/// [`BATCH_SLACK`] before the latest in it.
fn hurried(batch: Vec<Queued>) -> (Vec<Queued>, Vec<Queued>) {
    let Some(latest) = batch.iter().map(|(_, w)| w.deadline).max() else {
        return (Vec::new(), batch);
    };
    batch
        .into_iter()
        .partition(|(_, w)| w.deadline + BATCH_SLACK < latest)
}

/// The queued writes to send together: the oldest first, at most one per
/// resource, at most [`MAX_BATCH`]; the rest stay queued in order.
fn take_batch(queue: &mut VecDeque<(u64, Write)>) -> Vec<(u64, Write)> {
    let mut batch = Vec::new();
    let mut resources = HashSet::new();
    let mut rest = VecDeque::new();
    while let Some((id, write)) = queue.pop_front() {
        if batch.len() < MAX_BATCH && resources.insert(write.resource.clone()) {
            batch.push((id, write));
        } else {
            rest.push_back((id, write));
        }
    }
    *queue = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(resource: &str) -> Write {
        Write {
            resource: resource.into(),
            guard: Vec::new(),
            ops: Vec::new(),
            reads: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    #[test]
    fn a_batch_takes_one_write_per_resource_and_keeps_the_order_of_the_rest() {
        let mut queue: VecDeque<_> = ["a", "b", "a", "c", "b", "a"]
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64, write(r)))
            .collect();
        let ids = |batch: &[(u64, Write)]| batch.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(&take_batch(&mut queue)), [0, 1, 3]);
        assert_eq!(ids(&take_batch(&mut queue)), [2, 4]);
        assert_eq!(ids(&take_batch(&mut queue)), [5]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_write_near_its_deadline_does_not_share_a_transaction() {
        let now = Instant::now();
        let at = |ms: u64, id: u64| {
            let mut w = write(&format!("r{id}"));
            w.deadline = now + Duration::from_millis(ms);
            (id, w)
        };
        let ids = |batch: &[(u64, Write)]| batch.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        let (alone, together) = hurried(vec![at(100, 0), at(5000, 1), at(4500, 2), at(3900, 3)]);
        assert_eq!(ids(&alone), [0, 3]);
        assert_eq!(ids(&together), [1, 2]);
        let (alone, together) = hurried(vec![at(100, 0), at(900, 1)]);
        assert!(alone.is_empty());
        assert_eq!(ids(&together), [0, 1]);
    }

    #[test]
    fn a_batch_is_at_most_max_batch_writes() {
        let mut queue: VecDeque<_> = (0..MAX_BATCH as u64 + 3)
            .map(|i| (i, write(&format!("r{i}"))))
            .collect();
        assert_eq!(take_batch(&mut queue).len(), MAX_BATCH);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue[0].0, MAX_BATCH as u64);
    }
}
