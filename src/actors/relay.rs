//! The event relay: publishes the order events of the outbox (`order_event`) to the Redis
//! Stream, at least once. One per node, running only when Redis is configured.
//!
//! A round reads the oldest unpublished events (at most `batch_size_max`), appends them to
//! the stream in one pipeline, then marks them published. Rounds run when the write pipeline
//! signals a commit (one permit however many commits came, so a burst costs one round per
//! `ROUND_SPACING_MIN` at most), on `interval` otherwise, and back to back while rounds come
//! back full. Nothing is ever queued in memory: the table is the queue.
//!
//! Guarantees:
//! - At least once: an event is marked published only after Redis acknowledged its `XADD`. A
//!   crash, a timeout or a failed mark between the two publishes it again later, with the same
//!   fields; consumers deduplicate on `event_id`.
//! - Redis or the database down: the round fails whole, nothing is marked, and the relay retries
//!   with backoff from `BACKOFF_MIN` doubling to `BACKOFF_MAX`; every event stays in the table.
//! - Every database call is bounded by the database timeout and every Redis round trip by
//!   `REDIS_TIMEOUT`; at shutdown `drain` publishes what is left within a deadline.

use crate::domain::clock::DynClock;
use crate::persistence::redis::events::{EventStream, StreamError, EVENTS_PER_ROUND_TRIP_MAX};
use crate::persistence::{within, DynStore, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

/// The stream events go to unless `TIANJI_EVENTS_STREAM` names another.
pub const STREAM_KEY_DEFAULT: &str = "tianji:events";
/// About how many entries the stream keeps (`MAXLEN ~`): a day of a busy node's events.
pub const STREAM_LEN_MAX_DEFAULT: usize = 1_000_000;
/// Events published per round (one read, one pipeline, one mark).
pub const BATCH_SIZE_MAX_DEFAULT: usize = 500;
/// How often the relay looks for events when no commit wakes it.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// The shortest time between the starts of two rounds woken by commits: under load one round
/// carries the events of many commits instead of one round per commit.
pub const ROUND_SPACING_MIN: Duration = Duration::from_millis(5);
/// The first wait after a failed round; it doubles up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The relay's settings (`TIANJI_EVENTS_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// The Redis Stream key.
    pub stream_key: String,
    /// About how many entries the stream keeps.
    pub stream_len_max: usize,
    /// Events per round, at most `EVENTS_PER_ROUND_TRIP_MAX`.
    pub batch_size_max: usize,
    /// How often the relay looks for events when no commit wakes it.
    pub interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            stream_key: STREAM_KEY_DEFAULT.to_owned(),
            stream_len_max: STREAM_LEN_MAX_DEFAULT,
            batch_size_max: BATCH_SIZE_MAX_DEFAULT,
            interval: INTERVAL_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or marking events: {0}")]
    Store(#[from] StoreError),
    #[error("publishing events: {0}")]
    Stream(#[from] StreamError),
    #[error("events were left unpublished when the deadline of {0:?} passed")]
    Deadline(Duration),
}

/// What the relay did since start.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events appended to the stream (an event published again counts again).
    pub published: AtomicU64,
    /// Rounds that failed and were retried.
    pub failures: AtomicU64,
}

/// Reads, publishes and marks; one round at a time (the relay's task and `drain` share it).
struct Publisher {
    store: DynStore,
    stream: EventStream,
    clock: DynClock,
    batch_size_max: usize,
    database_timeout: Duration,
}

impl Publisher {
    /// One round; how many events it published (fewer than `batch_size_max`: none are left
    /// that were committed before it started).
    async fn round(&mut self, stats: &RelayStats) -> Result<usize, RelayError> {
        let limit = u32::try_from(self.batch_size_max).expect("bounded by EVENTS_PER_ROUND_TRIP_MAX");
        let events = within(self.database_timeout, self.store.unpublished_events(limit)).await?;
        assert!(events.len() <= self.batch_size_max);
        if events.is_empty() {
            return Ok(0);
        }
        self.stream.append(&events).await?;
        stats.published.fetch_add(events.len() as u64, Ordering::Relaxed);
        let ids: Vec<i64> = events.iter().map(|event| event.id).collect();
        // Past the timeout the mark's outcome is unknown: the events are published again.
        let marked = within(self.database_timeout, self.store.mark_published(&ids, self.clock.now_ms())).await?;
        // Fewer when another node's relay published some of them first.
        assert!(marked <= ids.len() as u64);
        tracing::debug!(events = ids.len(), marked, stream = self.stream.key(), "order events published");
        Ok(events.len())
    }
}

/// The running relay; its task stops when it is dropped.
pub struct Relay {
    publisher: Arc<Mutex<Publisher>>,
    stats: Arc<RelayStats>,
    batch_size_max: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts the relay's task on the current runtime (the one the store's pool belongs to).
    /// `committed` is signalled after each commit of the write pipeline.
    pub fn start(
        store: DynStore,
        stream: EventStream,
        clock: DynClock,
        settings: &RelaySettings,
        database_timeout: Duration,
        committed: Arc<Notify>,
    ) -> Relay {
        assert!((1..=EVENTS_PER_ROUND_TRIP_MAX).contains(&settings.batch_size_max));
        assert!(!settings.interval.is_zero());
        let batch_size_max = settings.batch_size_max;
        let publisher = Arc::new(Mutex::new(Publisher { store, stream, clock, batch_size_max, database_timeout }));
        let stats = Arc::new(RelayStats::default());
        let task = tokio::spawn(run(Arc::clone(&publisher), Arc::clone(&stats), committed, settings.interval));
        Relay { publisher, stats, batch_size_max, task }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Publishes every event left, round after round, within `deadline`; how many it
    /// published. For the shutdown sequence, after the last commit.
    pub async fn drain(&self, deadline: Duration) -> Result<u64, RelayError> {
        let drained = tokio::time::timeout(deadline, async {
            let mut publisher = self.publisher.lock().await;
            let mut published = 0;
            loop {
                let count = publisher.round(&self.stats).await?;
                published += count as u64;
                if count < self.batch_size_max {
                    return Ok::<u64, RelayError>(published);
                }
            }
        })
        .await;
        drained.unwrap_or(Err(RelayError::Deadline(deadline)))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(publisher: Arc<Mutex<Publisher>>, stats: Arc<RelayStats>, committed: Arc<Notify>, interval: Duration) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let result = {
            let mut publisher = publisher.lock().await;
            let batch_size_max = publisher.batch_size_max;
            publisher.round(&stats).await.map(|count| count == batch_size_max)
        };
        match result {
            // A full round: there may be more right now.
            Ok(true) => backoff = BACKOFF_MIN,
            Ok(false) => {
                backoff = BACKOFF_MIN;
                tokio::select! {
                    _ = committed.notified() => tokio::time::sleep_until(started + ROUND_SPACING_MIN).await,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, retry_in = ?backoff, "order events not published; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;
    use crate::domain::{Cents, OrderId};
    use crate::persistence::memory::MemoryStore;
    use crate::persistence::outbox::EventKind;
    use crate::persistence::{Change, Payment, PaymentStatus};

    #[tokio::test]
    async fn events_stay_in_the_outbox_while_redis_is_unreachable() {
        let store: DynStore = Arc::new(MemoryStore::default());
        let kept = Payment {
            out_trade_no: "t-1".into(),
            order_id: OrderId::new(5),
            amount_cents: Cents::new(100),
            channel: "test".into(),
            status: PaymentStatus::RefundRequired,
        };
        let report = store.commit(&[Change { payment: Some(kept), ..Change::default() }], 1_000).await.unwrap();
        assert_eq!(report.outcomes, vec![Ok(())]);
        // Nothing listens on port 1: every connection is refused at once.
        let stream = EventStream::open("redis://127.0.0.1:1", "tianji:test:events", 1_000).unwrap();
        let clock = ManualClock::starting_at(2_000);
        let settings = RelaySettings::default();
        let relay = Relay::start(Arc::clone(&store), stream, clock, &settings, Duration::from_secs(1), Arc::default());
        let drained = relay.drain(Duration::from_secs(5)).await;
        assert!(matches!(drained, Err(RelayError::Stream(_))), "{drained:?}");
        let left = store.unpublished_events(10).await.unwrap();
        assert_eq!(left.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(), vec![(1, EventKind::RefundRequired)]);
        let listed = store.list_payments(PaymentStatus::RefundRequired, None, 10).await.unwrap();
        assert_eq!((listed.len(), listed[0].created_at_ms), (1, 1_000));
        assert_eq!(store.mark_published(&[1, 1, 2], 3_000).await.unwrap(), 1, "only the stored, unpublished one");
        assert!(store.unpublished_events(10).await.unwrap().is_empty());
    }

    #[test]
    fn defaults_are_within_the_bounds_the_relay_asserts() {
        let settings = RelaySettings::default();
        assert_eq!(settings.stream_key, "tianji:events");
        assert!((1..=EVENTS_PER_ROUND_TRIP_MAX).contains(&settings.batch_size_max));
        assert!(settings.interval > ROUND_SPACING_MIN && BACKOFF_MIN < BACKOFF_MAX);
    }
}
