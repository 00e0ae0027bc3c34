//! The component's clock: wall-clock time as read once, advanced by the
//! monotonic clock, so that it never runs backwards within an instance
//! however the system clock is stepped. Lease ends are written to lock
//! files in this time and read back as wall-clock time after a restart.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Clock {
    wall_ms_at_start: u64,
    start: Instant,
    /// The last time read.
    last_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            wall_ms_at_start: wall,
            start: Instant::now(),
            last_ms: wall,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&mut self) -> u64 {
        self.last_ms = self.wall_ms_at_start + self.start.elapsed().as_millis() as u64;
        self.last_ms
    }

    /// The time last read, for calls whose outcome does not depend on it:
    /// reading the clock is a call out of the component, which costs about
    /// as much as a lock file's write.
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }
}
