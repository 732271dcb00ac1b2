//! SKU snapshots for readers: what the last commit of each SKU left, kept in process and,
//! when Redis is configured, published to the hash `tianji:sku:{id}`.
//!
//! Redis is never the source of truth. Publishing is write-behind and coalescing: a SKU that
//! changes many times while Redis is slow or down is written once, with its latest committed
//! state, when Redis answers again. A Redis failure is logged, counted and retried with
//! backoff; it never blocks a sale or an acknowledgement: everything that talks to Redis runs
//! in one background task, and a sale only inserts an id into a set. The pending set is
//! bounded by the number of SKUs, not by the number of changes.
//!
//! Redis may lose everything it holds (a restart without persistence, a flush, a failover to
//! an empty replica), after which SKUs that do not change again would never be written again.
//! So the task resyncs: on every new connection (the first one included), and whenever its
//! probe finds that its marker key is gone, it marks every SKU held in process dirty. The
//! marker (`tianji:publisher:{token}`, one per process) is checked and refreshed with `EXPIRE`
//! every `PROBE_INTERVAL`; a key that disappears catches every way the data can be lost, even
//! one that keeps the connection open (a proxy in front, `FLUSHALL`), where comparing the
//! server's `run_id` would not.
//!
//! The guarantee: once Redis answers again, within `PROBE_INTERVAL + REDIS_TIMEOUT +
//! BACKOFF_MAX` (4 s) the task has reconnected or seen its marker gone and marked every live
//! SKU dirty, and the same round writes them all, `BATCH_SIZE_MAX` per round trip, each round
//! trip allowed `REDIS_TIMEOUT` (10,000 SKUs: 10 round trips). Keys lost one by one (eviction
//! under `maxmemory`) are not detected: Redis must not evict `tianji:sku:*` keys.
//!
//! `progress` holds the other thing tianji keeps in Redis: the learning write-behind's copy;
//! `events` the stream order events are published to.

pub mod events;
pub mod progress;
pub mod reconcile;

use crate::domain::inventory::Counters;
use crate::domain::{Cents, SkuId};
use crate::metrics::SnapshotMetrics;
use dashmap::DashMap;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the task checks that Redis is up and still holds what it wrote.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Outlives many probes; lets the marker of a stopped process disappear on its own.
const MARKER_TTL_S: i64 = 60;
/// The most snapshots written in one pipeline (one round trip), and the most ids merged into
/// the dirty set under one lock, so a resync of many SKUs never holds a sale back for long.
const BATCH_SIZE_MAX: usize = 1_000;

/// The committed state of a SKU, as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuSnapshot {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
    #[serde(flatten)]
    pub counters: Counters,
    pub version: i64,
    #[serde(skip)]
    pub sale: crate::domain::sale::Sale,
}

/// The Redis key of a SKU's snapshot.
pub fn sku_key(sku_id: SkuId) -> String {
    format!("tianji:sku:{sku_id}")
}

type Local = Arc<DashMap<SkuId, SkuSnapshot>>;

/// Latest committed snapshot per SKU, in process, optionally mirrored to Redis.
pub struct Snapshots {
    local: Local,
    publisher: Option<Arc<RedisPublisher>>,
}

impl Snapshots {
    pub fn in_process() -> Self {
        Snapshots { local: Local::default(), publisher: None }
    }

    /// Mirrors snapshots to Redis at `url`. Connects lazily: Redis need not be up at start.
    /// Must be called inside a Tokio runtime (it spawns the publishing task).
    pub fn with_redis(url: &str) -> anyhow::Result<Self> {
        Snapshots::with_redis_measured(url, SnapshotMetrics::noop())
    }

    /// `with_redis`, counting the publisher's writes and failures on `metrics`.
    pub fn with_redis_measured(url: &str, metrics: SnapshotMetrics) -> anyhow::Result<Self> {
        let local = Local::default();
        let client = redis::Client::open(url)?;
        let publisher = Arc::new(RedisPublisher::new(client, Arc::clone(&local), metrics));
        tokio::spawn(Arc::clone(&publisher).run());
        Ok(Snapshots { local, publisher: Some(publisher) })
    }

    /// Records a committed snapshot. An older version than the one held is ignored.
    pub fn publish(&self, snapshot: SkuSnapshot) {
        assert!(snapshot.counters.is_balanced(), "unbalanced snapshot {snapshot:?}");
        let sku_id = snapshot.sku_id;
        let mut newer = true;
        self.local
            .entry(sku_id)
            .and_modify(|held| {
                if held.version > snapshot.version {
                    newer = false;
                } else {
                    *held = snapshot.clone();
                }
            })
            .or_insert_with(|| snapshot.clone());
        // Marked only after `local` holds it: the publisher reads the snapshot from there.
        if let (true, Some(publisher)) = (newer, &self.publisher) {
            publisher.mark_dirty(sku_id);
        }
    }

    pub fn get(&self, sku_id: SkuId) -> Option<SkuSnapshot> {
        self.local.get(&sku_id).map(|s| s.clone())
    }

    /// (snapshots written to Redis, failed Redis round trips: writes, connects and probes)
    /// since start.
    pub fn redis_stats(&self) -> (u64, u64) {
        self.publisher
            .as_ref()
            .map(|p| (p.written.load(Ordering::Relaxed), p.failures.load(Ordering::Relaxed)))
            .unwrap_or((0, 0))
    }

    /// How many times every live SKU was marked for rewriting because Redis was (re)connected
    /// or had lost its data, since start.
    pub fn redis_resyncs(&self) -> u64 {
        self.publisher.as_ref().map(|p| p.resyncs.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// Why every live SKU is written again.
#[derive(Debug, Clone, Copy)]
enum ResyncReason {
    Connected,
    MarkerLost,
}

struct RedisPublisher {
    client: redis::Client,
    /// The same map as `Snapshots::local`: always the latest snapshot of each SKU.
    local: Local,
    /// SKUs whose snapshot in `local` may differ from what Redis holds.
    dirty: Mutex<HashSet<SkuId>>,
    wake: Notify,
    marker_key: String,
    written: AtomicU64,
    failures: AtomicU64,
    resyncs: AtomicU64,
    metrics: SnapshotMetrics,
}

impl RedisPublisher {
    fn new(client: redis::Client, local: Local, metrics: SnapshotMetrics) -> Self {
        RedisPublisher {
            client,
            local,
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            marker_key: format!("tianji:publisher:{:016x}", rand::random::<u64>()),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            metrics,
        }
    }

    fn dirty(&self) -> MutexGuard<'_, HashSet<SkuId>> {
        // The set holds plain values; a panic elsewhere cannot leave it half-updated.
        self.dirty.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_dirty(&self, sku_id: SkuId) {
        self.dirty().insert(sku_id);
        self.wake.notify_one();
    }

    /// Adds `ids` to the dirty set, `BATCH_SIZE_MAX` per lock.
    fn extend_dirty(&self, ids: &[SkuId]) {
        for chunk in chunks(ids) {
            self.dirty().extend(chunk.iter().copied());
        }
    }

    /// Takes the whole dirty set in O(1) under the lock; sales go on filling a new one.
    fn take_dirty(&self) -> Vec<SkuId> {
        let taken = std::mem::take(&mut *self.dirty());
        taken.into_iter().collect()
    }

    /// Marks every SKU held in process dirty, so the next writes restore Redis entirely.
    fn resync(&self, reason: ResyncReason) {
        let live: Vec<SkuId> = self.local.iter().map(|entry| *entry.key()).collect();
        self.extend_dirty(&live);
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?reason, live_skus = live.len(), "redis snapshot resync: rewriting every live sku");
    }

    /// The latest snapshots of `ids`, read when they are written so a write is never older
    /// than the one before it.
    fn latest(&self, ids: &[SkuId]) -> Vec<SkuSnapshot> {
        let snapshots: Vec<SkuSnapshot> =
            ids.iter().filter_map(|sku_id| self.local.get(sku_id).map(|s| s.clone())).collect();
        debug_assert_eq!(snapshots.len(), ids.len(), "a dirty sku is always held in process");
        snapshots
    }

    async fn run(self: Arc<Self>) {
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        // After a slow round, probe once right away rather than catching up in a burst.
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let probe_due = tokio::select! {
                _ = self.wake.notified() => false,
                _ = probe.tick() => true,
            };
            match self.round(&mut connection, probe_due).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    if let Some(since) = down_since.take() {
                        tracing::info!(down_ms = since.elapsed().as_millis() as u64, "redis is reachable again");
                    }
                }
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failures.increment(1);
                    connection = None;
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(%error, "redis snapshot publishing failed; will retry and resync");
                    } else {
                        tracing::debug!(%error, "redis still unreachable");
                    }
                    // Pacing the retries of a down Redis, not waiting for a result.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One round: connect if needed (and then resync), probe if due, write what is dirty.
    /// On failure nothing dirty is lost: unwritten ids go back to the dirty set.
    async fn round(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        probe_due: bool,
    ) -> anyhow::Result<()> {
        let redis = match connection {
            Some(redis) => {
                if probe_due && !self.marker_alive(redis).await? {
                    self.set_marker(redis).await?;
                    self.resync(ResyncReason::MarkerLost);
                }
                redis
            }
            None => {
                let mut redis =
                    tokio::time::timeout(REDIS_TIMEOUT, self.client.get_multiplexed_async_connection()).await??;
                self.set_marker(&mut redis).await?;
                self.resync(ResyncReason::Connected);
                connection.insert(redis)
            }
        };
        let ids = self.take_dirty();
        for (index, chunk) in chunks(&ids).enumerate() {
            let snapshots = self.latest(chunk);
            if let Err(error) = write(redis, &snapshots).await {
                self.extend_dirty(&ids[index * BATCH_SIZE_MAX..]);
                return Err(error);
            }
            self.written.fetch_add(snapshots.len() as u64, Ordering::Relaxed);
            self.metrics.written.increment(snapshots.len() as u64);
        }
        Ok(())
    }

    /// Whether Redis still holds the marker (refreshing it): false once Redis lost its data.
    async fn marker_alive(&self, redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<bool> {
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(&self.marker_key).arg(MARKER_TTL_S);
        let refreshed: i64 = tokio::time::timeout(REDIS_TIMEOUT, expire.query_async(redis)).await??;
        Ok(refreshed == 1)
    }

    async fn set_marker(&self, redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
        let mut set = redis::cmd("SET");
        set.arg(&self.marker_key).arg(1).arg("EX").arg(MARKER_TTL_S);
        tokio::time::timeout(REDIS_TIMEOUT, set.query_async::<()>(redis)).await??;
        Ok(())
    }
}

/// The round trips a set of dirty SKUs is written in: `BATCH_SIZE_MAX` each, the last shorter.
fn chunks(ids: &[SkuId]) -> std::slice::Chunks<'_, SkuId> {
    ids.chunks(BATCH_SIZE_MAX)
}

/// Writes `snapshots` in one pipeline, one round trip.
async fn write(redis: &mut redis::aio::MultiplexedConnection, snapshots: &[SkuSnapshot]) -> anyhow::Result<()> {
    assert!(snapshots.len() <= BATCH_SIZE_MAX, "pipeline of {} snapshots", snapshots.len());
    let mut pipeline = redis::pipe();
    for snapshot in snapshots {
        let c = snapshot.counters;
        pipeline
            .hset_multiple(
                sku_key(snapshot.sku_id),
                &[
                    ("total", c.total),
                    ("available", c.available),
                    ("reserved", c.reserved),
                    ("sold", c.sold),
                    ("version", snapshot.version),
                    ("price_cents", snapshot.price_cents.get()),
                ],
            )
            .ignore();
    }
    tokio::time::timeout(REDIS_TIMEOUT, pipeline.query_async::<()>(redis)).await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots with a publisher whose task is not started: what it would write is visible
    /// in its dirty set.
    fn unstarted() -> (Snapshots, Arc<RedisPublisher>) {
        let local = Local::default();
        // Opening a client does not connect.
        let client = redis::Client::open("redis://127.0.0.1:1").expect("valid url");
        let publisher = Arc::new(RedisPublisher::new(client, Arc::clone(&local), SnapshotMetrics::noop()));
        (Snapshots { local, publisher: Some(Arc::clone(&publisher)) }, publisher)
    }

    fn snapshot(sku_id: i64, version: i64) -> SkuSnapshot {
        SkuSnapshot {
            sku_id: SkuId::new(sku_id),
            name: format!("sku {sku_id}"),
            price_cents: Cents::new(100),
            counters: Counters { total: 10, available: 10 - version.min(10), reserved: version.min(10), sold: 0 },
            version,
            sale: Default::default(),
        }
    }

    fn sorted(mut ids: Vec<SkuId>) -> Vec<SkuId> {
        ids.sort();
        ids
    }

    #[test]
    fn a_sku_that_changes_often_is_written_once_with_its_latest_state() {
        let (snapshots, publisher) = unstarted();
        for version in 1..=5 {
            snapshots.publish(snapshot(7, version));
        }
        snapshots.publish(snapshot(7, 3));
        let dirty = publisher.take_dirty();
        assert_eq!(dirty, vec![SkuId::new(7)]);
        assert_eq!(publisher.latest(&dirty), vec![snapshot(7, 5)], "older versions are ignored");
        assert!(publisher.take_dirty().is_empty());
    }

    #[test]
    fn a_resync_marks_every_live_sku_and_writes_them_in_bounded_chunks() {
        let (snapshots, publisher) = unstarted();
        let live = 2_500;
        for sku_id in 1..=live {
            snapshots.publish(snapshot(sku_id, 1));
        }
        assert_eq!(publisher.take_dirty().len(), live as usize);
        snapshots.publish(snapshot(3, 2));

        publisher.resync(ResyncReason::MarkerLost);

        let dirty = sorted(publisher.take_dirty());
        assert_eq!(dirty, (1..=live).map(SkuId::new).collect::<Vec<_>>(), "every live sku, once");
        let sizes: Vec<usize> = chunks(&dirty).map(<[SkuId]>::len).collect();
        assert_eq!(sizes, vec![1_000, 1_000, 500]);
        assert_eq!(publisher.latest(&[SkuId::new(3)]), vec![snapshot(3, 2)]);
        assert_eq!(snapshots.redis_resyncs(), 1);
    }

    #[test]
    fn a_resync_of_nothing_live_marks_nothing() {
        let (snapshots, publisher) = unstarted();
        publisher.resync(ResyncReason::Connected);
        assert!(publisher.take_dirty().is_empty());
        assert_eq!(snapshots.redis_resyncs(), 1);
    }

    #[test]
    fn the_marker_is_per_process_and_outside_the_sku_keys() {
        let (_, first) = unstarted();
        let (_, second) = unstarted();
        assert_ne!(first.marker_key, second.marker_key);
        assert!(!first.marker_key.starts_with("tianji:sku:"));
    }
}
