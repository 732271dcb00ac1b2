//! Typed ids and the snowflake generator that mints them.
//!
//! A snowflake is 41 bits of milliseconds since 2023-01-01T00:00:00Z, 10 bits of worker id and
//! 12 bits of sequence: ids sort by creation time, fit in an `i64` (and so in a JSON number and
//! a `BIGINT`), and two workers never mint the same id.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Wraps a raw id. Ids are positive; zero and below are never minted.
            pub const fn new(raw: i64) -> Self {
                $name(raw)
            }

            /// Parses an id that came from outside: it must be positive.
            pub fn parse(raw: i64) -> Option<Self> {
                (raw > 0).then_some($name(raw))
            }

            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A stock-keeping unit: one inventory actor, one `inventory` row.
    SkuId
);
id_type!(
    /// An order, minted by the snowflake generator when placement starts.
    OrderId
);
id_type!(
    /// A buyer, taken from the `sub` claim of the token, never from a body.
    UserId
);
id_type!(
    /// A coupon template: one template actor, one `coupon_template` row.
    TemplateId
);
id_type!(
    /// One coupon issued to one user, a `coupon_record` row.
    CouponId
);

/// 2023-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const SNOWFLAKE_EPOCH_MS: u64 = 1_672_531_200_000;
pub const WORKER_ID_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const WORKER_ID_MAX: u16 = (1 << WORKER_ID_BITS) - 1;
const SEQUENCE_MAX: u64 = (1 << SEQUENCE_BITS) - 1;
const TIMESTAMP_MAX: u64 = (1 << 41) - 1;

/// Mints unique, time-ordered ids for one worker.
///
/// The state is one atomic word `(ms << 12) | sequence`, advanced by compare-and-swap, so
/// minting takes no lock. When the clock steps back the generator keeps counting from the last
/// millisecond it used; when a millisecond's 4,096 sequence numbers run out it borrows the next
/// millisecond. Either way ids stay strictly increasing, so a duplicate is impossible within a
/// process. (Across restarts uniqueness rests on the clock not stepping back past the downtime.)
pub struct Snowflake {
    worker_id: u16,
    state: AtomicU64,
    clock: fn() -> u64,
}

impl Snowflake {
    pub fn new(worker_id: u16) -> Self {
        Self::with_clock(worker_id, wall_clock_ms)
    }

    /// A generator on an injected clock (milliseconds since the Unix epoch), for tests.
    pub fn with_clock(worker_id: u16, clock: fn() -> u64) -> Self {
        assert!(worker_id <= WORKER_ID_MAX, "worker id {worker_id} exceeds {WORKER_ID_MAX}");
        Snowflake { worker_id, state: AtomicU64::new(0), clock }
    }

    pub fn next_id(&self) -> i64 {
        let now_ms = (self.clock)().saturating_sub(SNOWFLAKE_EPOCH_MS);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let last_ms = current >> SEQUENCE_BITS;
            let sequence = current & SEQUENCE_MAX;
            let next = if now_ms > last_ms {
                now_ms << SEQUENCE_BITS
            } else if sequence < SEQUENCE_MAX {
                current + 1
            } else {
                (last_ms + 1) << SEQUENCE_BITS
            };
            match self.state.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return self.compose(next),
                Err(actual) => current = actual,
            }
        }
    }

    fn compose(&self, state: u64) -> i64 {
        let ms = state >> SEQUENCE_BITS;
        assert!(ms <= TIMESTAMP_MAX, "snowflake timestamp overflowed 41 bits");
        let id = (ms << (WORKER_ID_BITS + SEQUENCE_BITS))
            | (u64::from(self.worker_id) << SEQUENCE_BITS)
            | (state & SEQUENCE_MAX);
        // 41 + 10 + 12 = 63 bits: the sign bit is never set.
        i64::try_from(id).expect("a 63-bit id fits in i64")
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Splits a snowflake into (ms since its epoch, worker id, sequence).
pub fn decompose(id: i64) -> (u64, u16, u16) {
    let id = id as u64;
    let sequence = (id & SEQUENCE_MAX) as u16;
    let worker = ((id >> SEQUENCE_BITS) & u64::from(WORKER_ID_MAX)) as u16;
    (id >> (WORKER_ID_BITS + SEQUENCE_BITS), worker, sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64 as Clock;
    use std::sync::Arc;

    static STEPPING_CLOCK: Clock = Clock::new(SNOWFLAKE_EPOCH_MS + 10_000);

    fn stepping_clock() -> u64 {
        STEPPING_CLOCK.load(Ordering::SeqCst)
    }

    fn frozen_clock() -> u64 {
        SNOWFLAKE_EPOCH_MS + 5_000
    }

    #[test]
    fn layout_carries_worker_and_time() {
        let generator = Snowflake::with_clock(513, frozen_clock);
        let id = generator.next_id();
        assert_eq!(decompose(id), (5_000, 513, 0));
        assert_eq!(decompose(generator.next_id()), (5_000, 513, 1));
    }

    #[test]
    fn ids_stay_increasing_when_the_clock_steps_back() {
        let generator = Snowflake::with_clock(1, stepping_clock);
        let first = generator.next_id();
        STEPPING_CLOCK.store(SNOWFLAKE_EPOCH_MS + 2_000, Ordering::SeqCst);
        let second = generator.next_id();
        let third = generator.next_id();
        assert!(first < second && second < third, "{first} {second} {third}");
        assert_eq!(decompose(second).0, 10_000, "keeps the last millisecond it used");
    }

    #[test]
    fn sequence_exhaustion_borrows_the_next_millisecond() {
        let generator = Snowflake::with_clock(7, frozen_clock);
        let ids: Vec<i64> = (0..10_000).map(|_| generator.next_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decompose(ids[4_096]), (5_001, 7, 0));
    }

    #[test]
    fn no_duplicates_across_threads() {
        let generator = Arc::new(Snowflake::with_clock(3, frozen_clock));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let generator = Arc::clone(&generator);
                std::thread::spawn(move || (0..20_000).map(|_| generator.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for id in handle.join().unwrap() {
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(seen.len(), 80_000);
    }

    #[test]
    fn ids_parse_only_positive() {
        assert_eq!(SkuId::parse(0), None);
        assert_eq!(SkuId::parse(-4), None);
        assert_eq!(SkuId::parse(9), Some(SkuId::new(9)));
    }
}
