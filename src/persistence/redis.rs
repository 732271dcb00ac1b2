//! SKU snapshots for readers: what the last commit of each SKU left, kept in process and,
//! when Redis is configured, published to the hash `tianji:sku:{id}`.
//!
//! Redis is never the source of truth. Publishing is write-behind and coalescing: a SKU that
//! changes many times while Redis is slow or down is written once, with its latest committed
//! state, when Redis answers again. A Redis failure is logged, counted and retried with
//! backoff; it never blocks a sale or an acknowledgement. The pending set is bounded by the
//! number of SKUs, not by the number of changes.

use crate::domain::inventory::Counters;
use crate::domain::{Cents, SkuId};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The committed state of a SKU, as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuSnapshot {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
    #[serde(flatten)]
    pub counters: Counters,
    pub version: i64,
}

/// The Redis key of a SKU's snapshot.
pub fn sku_key(sku_id: SkuId) -> String {
    format!("tianji:sku:{sku_id}")
}

/// Latest committed snapshot per SKU, in process, optionally mirrored to Redis.
pub struct Snapshots {
    local: DashMap<SkuId, SkuSnapshot>,
    publisher: Option<Arc<RedisPublisher>>,
}

impl Snapshots {
    pub fn in_process() -> Self {
        Snapshots { local: DashMap::new(), publisher: None }
    }

    /// Mirrors snapshots to Redis at `url`. Connects lazily: Redis need not be up at start.
    /// Must be called inside a Tokio runtime (it spawns the publishing task).
    pub fn with_redis(url: &str) -> anyhow::Result<Self> {
        let publisher = Arc::new(RedisPublisher {
            client: redis::Client::open(url)?,
            dirty: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        tokio::spawn(Arc::clone(&publisher).run());
        Ok(Snapshots { local: DashMap::new(), publisher: Some(publisher) })
    }

    /// Records a committed snapshot. An older version than the one held is ignored.
    pub fn publish(&self, snapshot: SkuSnapshot) {
        assert!(snapshot.counters.is_balanced(), "unbalanced snapshot {snapshot:?}");
        let mut newer = true;
        self.local
            .entry(snapshot.sku_id)
            .and_modify(|held| {
                if held.version > snapshot.version {
                    newer = false;
                } else {
                    *held = snapshot.clone();
                }
            })
            .or_insert_with(|| snapshot.clone());
        if let (true, Some(publisher)) = (newer, &self.publisher) {
            publisher.mark_dirty(snapshot);
        }
    }

    pub fn get(&self, sku_id: SkuId) -> Option<SkuSnapshot> {
        self.local.get(&sku_id).map(|s| s.clone())
    }

    /// (snapshots written to Redis, failed Redis writes) since start.
    pub fn redis_stats(&self) -> (u64, u64) {
        self.publisher
            .as_ref()
            .map(|p| (p.written.load(Ordering::Relaxed), p.failures.load(Ordering::Relaxed)))
            .unwrap_or((0, 0))
    }
}

struct RedisPublisher {
    client: redis::Client,
    dirty: Mutex<HashMap<SkuId, SkuSnapshot>>,
    wake: Notify,
    written: AtomicU64,
    failures: AtomicU64,
}

impl RedisPublisher {
    fn dirty(&self) -> std::sync::MutexGuard<'_, HashMap<SkuId, SkuSnapshot>> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.dirty.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_dirty(&self, snapshot: SkuSnapshot) {
        let mut dirty = self.dirty();
        let newer = dirty.get(&snapshot.sku_id).is_none_or(|held| held.version <= snapshot.version);
        if newer {
            dirty.insert(snapshot.sku_id, snapshot);
        }
        drop(dirty);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            self.wake.notified().await;
            loop {
                let batch: Vec<SkuSnapshot> = self.dirty().drain().map(|(_, s)| s).collect();
                if batch.is_empty() {
                    break;
                }
                match self.write(&mut connection, &batch).await {
                    Ok(()) => {
                        self.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        backoff = BACKOFF_MIN;
                    }
                    Err(error) => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, pending = batch.len(), "redis snapshot write failed; will retry");
                        connection = None;
                        for snapshot in batch {
                            self.requeue(snapshot);
                        }
                        // Pacing the retries of a down Redis, not waiting for a result.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    /// Puts back a snapshot that failed to publish unless a newer one arrived meanwhile.
    fn requeue(&self, snapshot: SkuSnapshot) {
        self.dirty().entry(snapshot.sku_id).or_insert(snapshot);
    }

    async fn write(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        batch: &[SkuSnapshot],
    ) -> anyhow::Result<()> {
        if connection.is_none() {
            let connected =
                tokio::time::timeout(REDIS_TIMEOUT, self.client.get_multiplexed_async_connection()).await??;
            *connection = Some(connected);
        }
        let Some(redis) = connection.as_mut() else { unreachable!("connected just above") };
        let mut pipeline = redis::pipe();
        for snapshot in batch {
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
}
