//! Time source for the data plane: a monotonic millisecond clock that tests can
//! replace with a fake one, so aging and timeouts are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Milliseconds since an arbitrary fixed origin; never goes backwards.
pub type Millis = u64;

/// A monotonic clock.
pub trait Clock: Send + Sync {
    /// Current time in milliseconds since this clock's origin.
    fn now(&self) -> Millis;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at time 0.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves time forward by `ms`.
    pub fn advance(&self, ms: Millis) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }

    /// Sets the absolute time.
    pub fn set(&self, ms: Millis) {
        self.now.store(ms, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::Relaxed)
    }
}
