//! Turns for answers whose cost grows with the locks held: lists and the
//! status page. At most half as many are built at once as there are
//! cores; the others wait in line, first come first served, asleep.
//!
//! Without this, a few hundred connections each asking for a list of
//! every lock would have hundreds of threads building answers side by
//! side: each list in the lock engine delays every call batched after it,
//! and every answer being encoded takes its share of the cores from the
//! call of a client that asked for one lock. With turns, a cheap call
//! waits for at most one turn's worth of list work in the engine, and the
//! cores it shares are shared with a few threads, not hundreds. Since a
//! connection has one call answered at a time, first come first served
//! is also one turn per connection in rotation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How often a waiter looks whether whoever asked for its turn is still
/// there.
pub const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Turns for answers that grow with the locks held: half the machine's
/// cores (at least one), the other half left to everything else.
static HEAVY: LazyLock<Gate> =
    LazyLock::new(|| Gate::new(std::thread::available_parallelism().map_or(1, |n| n.get() / 2)));

/// Waits for a turn to build an answer that grows with the locks held.
pub fn heavy() -> Turn<'static> {
    HEAVY.enter()
}

/// A turn for an answer that grows with the locks held, if one is free
/// and nobody waits for one.
pub fn try_heavy() -> Option<Turn<'static>> {
    HEAVY.try_enter()
}

/// [`heavy`], unless `gone` says the caller left while it waited.
pub fn heavy_unless(gone: impl Fn() -> bool) -> Option<Turn<'static>> {
    HEAVY.enter_unless(gone)
}

/// A number of turns handed out in the order they were asked for.
pub struct Gate {
    turns: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Turns taken now.
    taken: usize,
    /// Who waits for a turn, oldest first.
    line: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    thread: Thread,
    /// Set when a turn was handed to this waiter.
    given: AtomicBool,
}

/// A turn, given back when dropped (to the oldest waiter, if any).
#[must_use = "the turn ends when it is dropped"]
pub struct Turn<'a> {
    gate: &'a Gate,
}

impl Gate {
    /// A gate of `turns` turns (at least one).
    pub fn new(turns: usize) -> Self {
        Self {
            turns: turns.max(1),
            state: Mutex::default(),
        }
    }

    /// Takes a turn if one is free and nobody waits for one.
    pub fn try_enter(&self) -> Option<Turn<'_>> {
        self.take_free(&mut self.lock())
            .then(|| Turn { gate: self })
    }

    /// Takes a turn in `state` if one is free and nobody waits for one.
    fn take_free(&self, state: &mut State) -> bool {
        let free = state.taken < self.turns && state.line.is_empty();
        if free {
            state.taken += 1;
        }
        free
    }

    /// Takes a turn, sleeping until one is free and everyone who asked
    /// before has had theirs.
    pub fn enter(&self) -> Turn<'_> {
        self.enter_unless(|| false)
            .expect("a waiter that never gives up gets its turn")
    }

    /// [`enter`](Self::enter), but leaves the line, with no turn, if
    /// `gone` says so at one of its looks (every [`LOOK_EVERY`] while it
    /// waits): whoever asked for the turn is no longer there.
    pub fn enter_unless(&self, gone: impl Fn() -> bool) -> Option<Turn<'_>> {
        let mut state = self.lock();
        if self.take_free(&mut state) {
            return Some(Turn { gate: self });
        }
        let waiter = Arc::new(Waiter {
            thread: std::thread::current(),
            given: AtomicBool::new(false),
        });
        state.line.push_back(waiter.clone());
        drop(state);
        let mut looked = Instant::now();
        while !waiter.given.load(Ordering::Acquire) {
            std::thread::park_timeout(LOOK_EVERY);
            if looked.elapsed() < LOOK_EVERY || waiter.given.load(Ordering::Acquire) {
                continue;
            }
            looked = Instant::now();
            if gone() {
                let mut state = self.lock();
                if let Some(at) = state.line.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
                    state.line.remove(at);
                    return None;
                }
                // Given a turn meanwhile: it goes to the next in line.
                drop(state);
                drop(Turn { gate: self });
                return None;
            }
        }
        Some(Turn { gate: self })
    }

    /// Hands a turn given back to the oldest waiter, woken by name.
    fn leave(&self) {
        let mut state = self.lock();
        match state.line.pop_front() {
            Some(next) => {
                next.given.store(true, Ordering::Release);
                next.thread.unpark();
            }
            None => state.taken -= 1,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn no_more_turns_are_taken_at_once_than_the_gate_has() {
        let gate = Gate::new(2);
        let first = gate.enter();
        let second = gate.enter();
        assert_eq!(gate.lock().taken, 2);
        assert!(gate.try_enter().is_none(), "no turn is free");
        assert_eq!(gate.lock().taken, 2, "asking for none gives none back");
        std::thread::scope(|scope| {
            let (entered, told) = mpsc::channel();
            let gate = &gate;
            scope.spawn(move || {
                let _third = gate.enter();
                entered.send(()).unwrap();
            });
            // The third waits in line until a turn is given back.
            while gate.lock().line.is_empty() {
                std::thread::yield_now();
            }
            assert!(told.try_recv().is_err());
            drop(first);
            told.recv().unwrap();
        });
        drop(second);
        assert_eq!(gate.lock().taken, 0);
        assert!(gate.lock().line.is_empty());
    }

    #[test]
    fn turns_are_given_in_the_order_they_were_asked_for() {
        let gate = Gate::new(1);
        let held = gate.enter();
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for i in 0..5 {
                scope.spawn({
                    let (gate, order) = (&gate, &order);
                    move || {
                        let _turn = gate.enter();
                        order.lock().unwrap().push(i);
                    }
                });
                // Each asks once the one before is in line.
                while gate.lock().line.len() < i + 1 {
                    std::thread::yield_now();
                }
            }
            drop(held);
        });
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_waiter_whose_caller_left_leaves_the_line_and_the_turn_goes_on() {
        let gate = Gate::new(1);
        let held = gate.enter();
        let left = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let leaving =
                scope.spawn(|| gate.enter_unless(|| left.load(Ordering::Relaxed)).is_none());
            while gate.lock().line.is_empty() {
                std::thread::yield_now();
            }
            let staying = scope.spawn(|| gate.enter_unless(|| false).is_some());
            while gate.lock().line.len() < 2 {
                std::thread::yield_now();
            }
            left.store(true, Ordering::Relaxed);
            assert!(
                leaving.join().unwrap(),
                "the one whose caller left got no turn"
            );
            assert_eq!(gate.lock().line.len(), 1);
            drop(held);
            assert!(staying.join().unwrap());
        });
        assert_eq!(gate.lock().taken, 0);
    }
}
