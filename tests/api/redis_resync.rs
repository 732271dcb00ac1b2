//! Redis restarted without persistence (or flushed) comes back empty: every live SKU's
//! snapshot is written to it again, though no SKU changes after it returns.
//!
//! Each test runs its own `redis-server` on a free port, so it can kill and flush it without
//! touching the shared one.

use crate::helpers::eventually;
use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tianji::domain::{Cents, Counters, SkuId};
use tianji::persistence::redis::{sku_key, SkuSnapshot, Snapshots};

const SKUS: i64 = 5;
/// Generous against the module's bound (4 s to start the resync, then one round trip).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A private `redis-server` child process without persistence, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start_on_free_port() -> RedisServer {
        // The port is free once the listener is dropped; the server binds it right after.
        let port = TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port();
        RedisServer::start(port)
    }

    fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed for these tests (see .ci/run)");
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new empty server on the same port: Redis restarted without its data.
    fn restart_empty(mut self) -> RedisServer {
        self.child.kill().expect("kill redis-server");
        self.child.wait().expect("reap redis-server");
        RedisServer::start(self.port)
    }

    /// The snapshot hash of each SKU that has one.
    async fn snapshots(&self, sku_ids: &[SkuId]) -> HashMap<SkuId, HashMap<String, i64>> {
        let Ok(mut connection) = redis_connection(&self.url()).await else {
            return HashMap::new();
        };
        let mut held = HashMap::new();
        for &sku_id in sku_ids {
            let hash: HashMap<String, i64> =
                redis::cmd("HGETALL").arg(sku_key(sku_id)).query_async(&mut connection).await.unwrap_or_default();
            if !hash.is_empty() {
                held.insert(sku_id, hash);
            }
        }
        held
    }

    /// Whether Redis holds exactly `expected` for every SKU.
    async fn holds(&self, expected: &[SkuSnapshot]) -> bool {
        let sku_ids: Vec<SkuId> = expected.iter().map(|s| s.sku_id).collect();
        let held = self.snapshots(&sku_ids).await;
        expected.iter().all(|snapshot| held.get(&snapshot.sku_id) == Some(&as_hash(snapshot)))
    }

    async fn is_up(&self) -> bool {
        match redis_connection(&self.url()).await {
            Ok(mut connection) => redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn flush_all(&self) {
        let mut connection = redis_connection(&self.url()).await.expect("the private redis is up");
        redis::cmd("FLUSHALL").query_async::<()>(&mut connection).await.expect("FLUSHALL");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

fn snapshot(sku_id: i64) -> SkuSnapshot {
    SkuSnapshot {
        sku_id: SkuId::new(sku_id),
        name: format!("resync {sku_id}"),
        price_cents: Cents::new(100 * sku_id),
        counters: Counters { total: 10, available: 10 - sku_id, reserved: sku_id, sold: 0 },
        version: sku_id + 1,
        sale: Default::default(),
    }
}

/// What the publisher writes for `snapshot`.
fn as_hash(snapshot: &SkuSnapshot) -> HashMap<String, i64> {
    let c = snapshot.counters;
    [
        ("total", c.total),
        ("available", c.available),
        ("reserved", c.reserved),
        ("sold", c.sold),
        ("version", snapshot.version),
        ("price_cents", snapshot.price_cents.get()),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value))
    .collect()
}

/// A private Redis with `SKUS` snapshots published to it and written.
async fn published() -> (RedisServer, Snapshots, Vec<SkuSnapshot>) {
    // The publisher's reconnections and resyncs, shown when a test fails; RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let redis = RedisServer::start_on_free_port();
    assert!(eventually(RESYNC_TIMEOUT, || redis.is_up()).await, "the private redis-server starts");
    let snapshots = Snapshots::with_redis(&redis.url()).expect("valid redis url");
    let published: Vec<SkuSnapshot> = (1..=SKUS).map(snapshot).collect();
    for snapshot in &published {
        snapshots.publish(snapshot.clone());
    }
    assert!(eventually(RESYNC_TIMEOUT, || redis.holds(&published)).await, "the snapshots reach redis");
    assert_eq!(snapshots.redis_resyncs(), 1, "the first connection resyncs");
    (redis, snapshots, published)
}

#[tokio::test]
async fn a_redis_restarted_empty_gets_every_live_snapshot_back() {
    let (redis, snapshots, published) = published().await;
    let (written_before, _) = snapshots.redis_stats();

    let redis = redis.restart_empty();
    assert!(eventually(RESYNC_TIMEOUT, || redis.is_up()).await, "the new redis-server starts");

    assert!(eventually(RESYNC_TIMEOUT, || redis.holds(&published)).await, "every snapshot is written again");
    assert_eq!(snapshots.redis_resyncs(), 2, "one resync for the reconnection");
    // The counter moves when the publisher reads Redis's reply, which may be after we see the data.
    let written_again = SKUS as u64;
    let counted = eventually(RESYNC_TIMEOUT, || async { snapshots.redis_stats().0 == written_before + written_again });
    assert!(counted.await, "each live sku written exactly once more: {:?}", snapshots.redis_stats());
    // How many reconnection attempts fail depends on timing; that the outage shows does not.
    assert!(snapshots.redis_stats().1 > 0, "the lost connection is counted as a failure");
}

#[tokio::test]
async fn a_redis_flushed_under_an_open_connection_gets_every_live_snapshot_back() {
    let (redis, snapshots, published) = published().await;

    // The connection survives a flush: only the missing marker tells the publisher.
    redis.flush_all().await;

    assert!(eventually(RESYNC_TIMEOUT, || redis.holds(&published)).await, "every snapshot is written again");
    assert_eq!(snapshots.redis_resyncs(), 2, "one resync for the lost marker");
    let counted = eventually(RESYNC_TIMEOUT, || async { snapshots.redis_stats() == (2 * SKUS as u64, 0) });
    assert!(counted.await, "each sku written twice, no failure: {:?}", snapshots.redis_stats());
}
