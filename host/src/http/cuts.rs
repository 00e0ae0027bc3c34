//! Connections cut off for what they made lockd hold, counted by reason
//! for `/metrics` (`lockd_connections_cut_total`) and for the router of
//! the port's doors, which sends new connections through the front door
//! while connections are being cut off for pressing reasons (see
//! [`super::doors`]).

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why a connection was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A head over `--max-header`.
    Head,
    /// Too much queued, answers not read, or requests pipelined straight
    /// to the HTTP server while the front door is in use.
    Queue,
    /// The sum of all held over `--max-buffered`.
    Budget,
    /// A body over `--max-body`.
    Body,
    /// A request the front door could not read as HTTP/1.1.
    Malformed,
}

impl Reason {
    /// Whether it sends new connections through the front door (see
    /// [`super::doors`]): requests piling up and heads without end do; a
    /// body past its bound or a malformed request does not (refusing it
    /// where it arrives costs less than passing every connection through
    /// the front door).
    pub fn presses(self) -> bool {
        matches!(self, Self::Head | Self::Queue | Self::Budget)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Queue => "queue",
            Self::Budget => "budget",
            Self::Body => "body",
            Self::Malformed => "malformed",
        }
    }
}

/// Where cut-off connections are counted.
pub struct Cuts {
    metrics: Arc<Metrics>,
    /// Whether new connections pass through the front door now.
    front: AtomicBool,
    /// Pressure noted so far (see [`Cuts::press`]), and what wakes the
    /// router when it is.
    pressing: (Mutex<u64>, Condvar),
}

impl Cuts {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            front: AtomicBool::new(false),
            pressing: (Mutex::new(0), Condvar::new()),
        }
    }

    /// Counts a connection cut off for `reason`.
    pub fn cut(&self, reason: Reason) {
        self.metrics.cut(reason.label());
        if reason.presses() {
            self.press();
        }
    }

    /// Notes pressure without a connection cut off: as much as one.
    pub fn press(&self) {
        let (pressing, woken) = &self.pressing;
        *pressing.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        woken.notify_all();
    }

    /// Waits until pressure is noted, or for `at_most`.
    pub fn wait(&self, at_most: Duration) {
        let (pressing, woken) = &self.pressing;
        let guard = pressing.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *guard;
        let _ = woken.wait_timeout_while(guard, at_most, |now| *now == seen);
    }

    /// Notes whether new connections pass through the front door now.
    pub fn set_front(&self, front: bool) {
        self.front.store(front, Ordering::Relaxed);
    }

    /// Whether new connections pass through the front door now: then
    /// connections straight to the HTTP server that pipeline are cut off
    /// (see [`super::watch`]), to come back through it.
    pub fn front(&self) -> bool {
        self.front.load(Ordering::Relaxed)
    }

    /// Pressure noted so far: connections cut off for pressing reasons,
    /// and presses without a cut.
    pub fn pressing(&self) -> u64 {
        *self.pressing.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
