//! Time as a value passed in: rules and actors ask a `Clock` instead of reading the wall
//! clock, so deadline logic is tested on a manual clock instead of by sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, from wherever the caller's time comes from.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        super::ids::wall_clock_ms() as i64
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn starting_at(now_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock { now_ms: AtomicI64::new(now_ms) })
    }

    pub fn advance_ms(&self, by_ms: i64) {
        assert!(by_ms >= 0, "time does not go back");
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

pub type DynClock = Arc<dyn Clock>;
