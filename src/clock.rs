//! Time behind an interface: the waits between batches ask a [`Clock`] what time it is and sleep
//! through it, so that their decisions are tested with a clock the test moves (as TimescaleDB's
//! scheduler does with its mock timer), without sleeping through real seconds.

use std::time::{Duration, Instant};

pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, how_long: Duration);
}

/// The real clock. Its sleeps are short (the waits recheck every 100 ms at most): a worker notices
/// SIGTERM between them.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, how_long: Duration) {
        std::thread::sleep(how_long);
    }
}

/// A clock that only moves when slept on, for tests.
#[cfg(test)]
pub struct FakeClock {
    now: std::cell::Cell<Instant>,
    pub slept: std::cell::Cell<Duration>,
}

#[cfg(test)]
impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock {
            now: std::cell::Cell::new(Instant::now()),
            slept: std::cell::Cell::new(Duration::ZERO),
        }
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.now.get()
    }

    fn sleep(&self, how_long: Duration) {
        self.now.set(self.now.get() + how_long);
        self.slept.set(self.slept.get() + how_long);
    }
}
