//! The threads that go on with a connection once its call no longer needs
//! the thread that answered it: a call whose wait for a lock ended, an
//! answer the socket did not take at once, the next request a client sent
//! while its answer was being written.
//!
//! A job may block (on a client that does not read its answer, until the
//! idle timeout), so no job ever waits behind another: one that finds no
//! thread idle gets a thread of its own. Threads idle for [`LINGER`] end.
//! Keeping them costs nothing while they sleep; starting one per job cost
//! a twentieth of a request's time at 16 connections, where a client's
//! next request often arrives before its connection is found free.

use crate::rpc::Job;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread waits for a job before it ends.
pub const LINGER: Duration = Duration::from_secs(10);

/// Runs jobs on threads of its own.
#[derive(Clone, Default)]
pub struct Resume {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    job_came: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl Resume {
    /// Runs `job` on an idle thread, or on a new one if none is idle.
    pub fn run(&self, job: Job) {
        let mut state = self.inner.lock();
        state.jobs.push_back(job);
        if state.jobs.len() <= state.idle {
            self.inner.job_came.notify_one();
            return;
        }
        drop(state);
        let inner = self.inner.clone();
        let started = std::thread::Builder::new()
            .name("lockd-resume".into())
            .spawn(move || inner.work());
        if let Err(e) = started {
            // The job stays queued for the next thread that is free.
            tracing::error!("starting a thread to go on with a connection: {e}");
        }
    }

    /// Threads waiting for a job now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.inner.lock().idle
    }
}

impl Inner {
    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (waited, timeout) = self
                .job_came
                .wait_timeout(state, LINGER)
                .unwrap_or_else(|p| p.into_inner());
            state = waited;
            state.idle -= 1;
            if timeout.timed_out() && state.jobs.is_empty() {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_job_never_waits_behind_one_that_blocks_and_idle_threads_take_later_ones() {
        let resume = Resume::default();
        let (release, blocked) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel();
        // The first job blocks until released; the second must run anyway.
        resume.run(Box::new(move || {
            blocked.recv().unwrap();
        }));
        let second = done.clone();
        resume.run(Box::new(move || second.send("second").unwrap()));
        assert_eq!(finished.recv().unwrap(), "second");
        release.send(()).unwrap();
        // Both threads go idle; two more jobs are taken by them.
        while resume.idle() < 2 {
            std::thread::yield_now();
        }
        for name in ["third", "fourth"] {
            let done = done.clone();
            resume.run(Box::new(move || done.send(name).unwrap()));
        }
        let mut got = [finished.recv().unwrap(), finished.recv().unwrap()];
        got.sort_unstable();
        assert_eq!(got, ["fourth", "third"]);
    }
}
