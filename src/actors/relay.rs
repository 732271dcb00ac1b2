//! The event relay: publishes the order events of the outbox (`order_event`) to the Redis
//! Stream, at least once. One per node, running only when Redis is configured.
//!
//! A round claims the oldest unpublished events (at most `batch_size_max`), appends them to
//! the stream in one pipeline, then marks them published, releasing the claim. Rounds run
//! when the write pipeline signals a commit (one permit however many commits came, so a burst
//! costs one round per `ROUND_SPACING_MIN` at most), every `idle_poll_interval` otherwise,
//! and back to back while rounds come back full. Nothing is ever queued in memory: the table
//! is the queue. When idle, the relay deletes published events older than `retention`, at
//! most `EVENTS_PRUNED_PER_ROUND_MAX` per idle round and a pass every `PRUNE_SPACING`.
//!
//! Guarantees:
//! - At least once: an event is marked published only after Redis acknowledged its `XADD`. A
//!   crash, a timeout or a failed mark between the two drops the claim and publishes the
//!   events again later, with the same fields; consumers deduplicate on `event_id`.
//! - Once per event in normal operation, however many nodes run a relay on one database: a
//!   claim locks its rows on MariaDB (`sql_outbox`), so relays publish disjoint events. Two
//!   relays' rounds then run side by side, so the stream holds one order's events in id order
//!   only per relay; a consumer orders an order's events by the `version` in their body.
//! - Redis or the database down: the round fails whole, nothing is marked, and the relay retries
//!   with backoff from `BACKOFF_MIN` doubling to `BACKOFF_MAX`; every event stays in the table.
//! - An unpublished event is never deleted, however old.
//! - Every database call is bounded by the database timeout and every Redis round trip by
//!   `REDIS_TIMEOUT`, so a claim holds its rows for at most two database timeouts and one
//!   Redis timeout; at shutdown `drain` publishes what is left within a deadline.

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
pub const STREAM_ENTRIES_MAX_DEFAULT: usize = 1_000_000;
/// Events published per round (one claim, one pipeline, one mark).
pub const BATCH_SIZE_MAX_DEFAULT: usize = 500;
/// How often the relay looks for events when no commit wakes it.
pub const IDLE_POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// How long a published event stays in `order_event` before the relay deletes it.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 86_400);
/// The shortest time between the starts of two rounds woken by commits: under load one round
/// carries the events of many commits instead of one round per commit.
pub const ROUND_SPACING_MIN: Duration = Duration::from_millis(5);
/// The first wait after a failed round; it doubles up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between two failed rounds: how late the relay notices that Redis or the
/// database is back.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The most published events one prune deletes (one statement), so a prune never holds the
/// table long however much expired at once.
pub const EVENTS_PRUNED_PER_ROUND_MAX: u32 = 1_000;
/// The time between two prune passes once a pass found less than a full chunk to delete.
pub const PRUNE_SPACING: Duration = Duration::from_secs(60);

/// The relay's settings (`TIANJI_EVENTS_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// The Redis Stream key (`TIANJI_EVENTS_STREAM`).
    pub stream_key: String,
    /// About how many entries the stream keeps (`TIANJI_EVENTS_STREAM_LEN_MAX`).
    pub stream_entries_max: usize,
    /// Events per round, at most `EVENTS_PER_ROUND_TRIP_MAX` (`TIANJI_EVENTS_BATCH_SIZE_MAX`).
    pub batch_size_max: usize,
    /// How often the relay looks for events when no commit wakes it (`TIANJI_EVENTS_INTERVAL`).
    pub idle_poll_interval: Duration,
    /// How long published events are kept before they are deleted (`TIANJI_EVENTS_RETENTION`).
    pub retention: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            stream_key: STREAM_KEY_DEFAULT.to_owned(),
            stream_entries_max: STREAM_ENTRIES_MAX_DEFAULT,
            batch_size_max: BATCH_SIZE_MAX_DEFAULT,
            idle_poll_interval: IDLE_POLL_INTERVAL_DEFAULT,
            retention: RETENTION_DEFAULT,
        }
    }
}

/// Why a round or a drain did not publish everything; a round is retried whole.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("claiming, marking or pruning events: {0}")]
    Store(#[from] StoreError),
    #[error("publishing events: {0}")]
    Stream(#[from] StreamError),
    #[error("events were left unpublished when the deadline of {0:?} passed")]
    Deadline(Duration),
}

/// What the relay did since start, for metrics: counters only grow; the age is the last
/// round's.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events appended to the stream (an event published again counts again).
    pub published: AtomicU64,
    /// Rounds (or prunes) that failed and were retried.
    pub failed_rounds: AtomicU64,
    /// Published events deleted after the retention.
    pub pruned: AtomicU64,
    /// How old the oldest event of the last round was when it was claimed, in ms (0 when the
    /// round found none): how far the stream lags behind the commits.
    pub oldest_event_age_ms: AtomicU64,
}

/// Claims, publishes and marks; one round at a time (the relay's task and `drain` share it).
struct Publisher {
    store: DynStore,
    stream: EventStream,
    clock: DynClock,
    batch_size_max: usize,
    retention: Duration,
    database_timeout: Duration,
}

impl Publisher {
    /// One round; how many events it published (fewer than `batch_size_max`: none are left
    /// that were committed before it started, or other relays hold them).
    async fn round(&mut self, stats: &RelayStats) -> Result<usize, RelayError> {
        let limit = u32::try_from(self.batch_size_max).expect("bounded by EVENTS_PER_ROUND_TRIP_MAX");
        let claim = within(self.database_timeout, self.store.claim_unpublished(limit)).await?;
        let events = claim.events();
        assert!(events.len() <= self.batch_size_max);
        let now_ms = self.clock.now_ms();
        let oldest_ms = events.iter().map(|event| event.created_at_ms).min().unwrap_or(now_ms);
        stats.oldest_event_age_ms.store(u64::try_from(now_ms - oldest_ms).unwrap_or(0), Ordering::Relaxed);
        if events.is_empty() {
            return Ok(0);
        }
        let count = events.len();
        // A failed append drops the claim: nothing is marked, the events are claimed again.
        self.stream.append(events).await?;
        stats.published.fetch_add(count as u64, Ordering::Relaxed);
        // Past the timeout the mark's outcome is unknown: the events are published again.
        let marked = within(self.database_timeout, claim.mark_published(self.clock.now_ms())).await?;
        assert_eq!(marked, count as u64, "a claim marks exactly its events");
        tracing::debug!(events = count, stream = self.stream.key(), "order events published");
        Ok(count)
    }

    /// Deletes at most `EVENTS_PRUNED_PER_ROUND_MAX` events published more than `retention`
    /// ago (by the relay's clock); how many.
    async fn prune(&mut self, stats: &RelayStats) -> Result<u64, RelayError> {
        let retention_ms = i64::try_from(self.retention.as_millis()).expect("retention is bounded by its setting");
        let before_ms = self.clock.now_ms() - retention_ms;
        let pruned =
            within(self.database_timeout, self.store.prune_published(before_ms, EVENTS_PRUNED_PER_ROUND_MAX)).await?;
        assert!(pruned <= u64::from(EVENTS_PRUNED_PER_ROUND_MAX));
        stats.pruned.fetch_add(pruned, Ordering::Relaxed);
        Ok(pruned)
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
        assert!(!settings.idle_poll_interval.is_zero() && !settings.retention.is_zero());
        let batch_size_max = settings.batch_size_max;
        let retention = settings.retention;
        let publisher =
            Arc::new(Mutex::new(Publisher { store, stream, clock, batch_size_max, retention, database_timeout }));
        let stats = Arc::new(RelayStats::default());
        let task =
            tokio::spawn(run(Arc::clone(&publisher), Arc::clone(&stats), committed, settings.idle_poll_interval));
        Relay { publisher, stats, batch_size_max, task }
    }

    /// What the relay did so far; the handle stays valid (and counting) while the relay runs.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
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

    /// Runs one prune now (see `Publisher::prune`); how many events it deleted.
    pub async fn prune(&self) -> Result<u64, RelayError> {
        self.publisher.lock().await.prune(&self.stats).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(publisher: Arc<Mutex<Publisher>>, stats: Arc<RelayStats>, committed: Arc<Notify>, idle_poll: Duration) {
    let mut backoff = BACKOFF_MIN;
    let mut next_prune = Instant::now();
    loop {
        let started = Instant::now();
        let result = {
            let mut publisher = publisher.lock().await;
            let batch_size_max = publisher.batch_size_max;
            match publisher.round(&stats).await {
                Ok(count) if count < batch_size_max && started >= next_prune => {
                    // Idle: a chunk of expired events; the next chunk at once if this one was full.
                    next_prune = started + PRUNE_SPACING;
                    publisher.prune(&stats).await.map(|pruned| {
                        if pruned == u64::from(EVENTS_PRUNED_PER_ROUND_MAX) {
                            next_prune = Instant::now();
                        }
                        false
                    })
                }
                other => other.map(|count| count == batch_size_max),
            }
        };
        match result {
            // A full round: there may be more right now.
            Ok(true) => backoff = BACKOFF_MIN,
            Ok(false) => {
                backoff = BACKOFF_MIN;
                tokio::select! {
                    _ = committed.notified() => tokio::time::sleep_until(started + ROUND_SPACING_MIN).await,
                    _ = tokio::time::sleep(idle_poll) => {}
                }
            }
            Err(error) => {
                stats.failed_rounds.fetch_add(1, Ordering::Relaxed);
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

    /// Published events older than the retention go, a bounded chunk per prune; unpublished
    /// ones stay however old. The clock is the relay's own (manual) one.
    #[tokio::test]
    async fn prune_deletes_only_expired_published_events_in_bounded_chunks() {
        let store: DynStore = Arc::new(MemoryStore::default());
        let chunk = EVENTS_PRUNED_PER_ROUND_MAX as usize;
        let kept = |n: usize| Change {
            payment: Some(Payment {
                out_trade_no: format!("t-{n}"),
                order_id: OrderId::new(5),
                amount_cents: Cents::new(100),
                channel: "test".into(),
                status: PaymentStatus::RefundRequired,
            }),
            ..Change::default()
        };
        // Events 1..=chunk+1 published at 1 s, event chunk+2 at 5 s, the last never.
        let changes: Vec<Change> = (0..chunk + 3).map(kept).collect();
        store.commit(&changes, 1_000).await.unwrap();
        let old: Vec<i64> = (1..=chunk as i64 + 1).collect();
        assert_eq!(store.mark_published(&old, 1_000).await.unwrap(), chunk as u64 + 1);
        assert_eq!(store.mark_published(&[chunk as i64 + 2], 5_000).await.unwrap(), 1);
        let retention = Duration::from_secs(3_600);
        let clock = ManualClock::starting_at(1_001 + 3_600_000);
        // The unpublished event keeps every round of the relay's own task failing on Redis, so
        // only the explicit prunes below delete.
        let stream = EventStream::open("redis://127.0.0.1:1", "tianji:test:events", 1_000).unwrap();
        let settings = RelaySettings { retention, ..RelaySettings::default() };
        let relay =
            Relay::start(Arc::clone(&store), stream, clock.clone(), &settings, Duration::from_secs(1), Arc::default());
        assert_eq!(relay.prune().await.unwrap(), chunk as u64, "one full chunk");
        assert_eq!(relay.prune().await.unwrap(), 1, "the rest of what expired");
        assert_eq!(relay.prune().await.unwrap(), 0, "published at 5 s: not expired yet");
        clock.advance_ms(10 * 3_600_000);
        assert_eq!(relay.prune().await.unwrap(), 1);
        assert_eq!(relay.prune().await.unwrap(), 0);
        assert_eq!(relay.stats().pruned.load(Ordering::Relaxed), chunk as u64 + 2);
        let left = store.unpublished_events(10).await.unwrap();
        assert_eq!(left.iter().map(|e| e.id).collect::<Vec<_>>(), vec![chunk as i64 + 3], "the unpublished one stays");
    }

    #[test]
    fn defaults_are_within_the_bounds_the_relay_asserts() {
        let settings = RelaySettings::default();
        assert_eq!(settings.stream_key, "tianji:events");
        assert!((1..=EVENTS_PER_ROUND_TRIP_MAX).contains(&settings.batch_size_max));
        assert!(settings.idle_poll_interval > ROUND_SPACING_MIN && BACKOFF_MIN < BACKOFF_MAX);
        assert_eq!(settings.retention, Duration::from_secs(7 * 24 * 3_600));
    }
}
