//! SKU snapshots as `tianji reconcile` sees them: read back the `tianji:sku:{id}` hashes of
//! the database's SKUs, and republish one from the database when it differs.
//!
//! Guarantees:
//! - Reads are pipelined, `SKUS_PER_ROUND_TRIP_MAX` hashes per round trip, each round trip
//!   bounded by `REDIS_TIMEOUT`; only the keys of the SKUs asked for are touched (several
//!   databases may share one Redis).
//! - A republish is a compare-and-set in one script: it writes only while Redis still holds
//!   the version reconcile found (or still no version), so it never overwrites a snapshot a
//!   running server published in between.

use super::{sku_key, REDIS_TIMEOUT};
use crate::domain::inventory::Counters;
use crate::domain::reconcile::{SkuFacts, SnapshotFacts};
use crate::domain::SkuId;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;

/// The most hashes read in one pipeline (one round trip).
pub const SKUS_PER_ROUND_TRIP_MAX: usize = 1_000;

/// Writes the snapshot (ARGV[2..=7]) only if the hash's `version` is still ARGV[1] (`""`: the
/// hash has no integer version). Returns 1 when written, 0 when Redis moved on.
const REPUBLISH_SCRIPT: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'version'))
local expected = tonumber(ARGV[1])
if seen ~= expected then return 0 end
redis.call('HSET', KEYS[1], 'total', ARGV[2], 'available', ARGV[3], 'reserved', ARGV[4], 'sold', ARGV[5],
  'version', ARGV[6], 'price_cents', ARGV[7])
return 1
";

pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection()).await??)
}

/// A hash as read back: `None` when it has no integer `version` (missing or unreadable); a
/// counter that is missing or not an integer reads as -1, which no database counter equals.
fn parse(hash: &HashMap<String, String>) -> Option<SnapshotFacts> {
    let field = |name: &str| hash.get(name).and_then(|value| value.parse::<i64>().ok());
    let or_invalid = |name: &str| field(name).unwrap_or(-1);
    Some(SnapshotFacts {
        version: field("version")?,
        counters: Counters {
            total: or_invalid("total"),
            available: or_invalid("available"),
            reserved: or_invalid("reserved"),
            sold: or_invalid("sold"),
        },
        price_cents: or_invalid("price_cents"),
    })
}

/// The snapshots of `sku_ids`, in their order.
pub async fn read_snapshots(
    redis: &mut MultiplexedConnection,
    sku_ids: &[SkuId],
) -> anyhow::Result<Vec<Option<SnapshotFacts>>> {
    let mut snapshots = Vec::with_capacity(sku_ids.len());
    for chunk in sku_ids.chunks(SKUS_PER_ROUND_TRIP_MAX) {
        let mut pipeline = redis::pipe();
        for &sku_id in chunk {
            pipeline.hgetall(sku_key(sku_id));
        }
        let hashes: Vec<HashMap<String, String>> =
            tokio::time::timeout(REDIS_TIMEOUT, pipeline.query_async(redis)).await??;
        anyhow::ensure!(hashes.len() == chunk.len(), "redis answered {} of {} reads", hashes.len(), chunk.len());
        snapshots.extend(hashes.iter().map(parse));
    }
    Ok(snapshots)
}

/// Writes `sku` as its snapshot if Redis still holds `found_version` (`None`: no version).
/// Whether it was written.
pub async fn republish(
    redis: &mut MultiplexedConnection,
    sku: &SkuFacts,
    found_version: Option<i64>,
) -> anyhow::Result<bool> {
    assert!(sku.counters.is_balanced(), "only balanced counters are published: {sku:?}");
    let c = sku.counters;
    let mut eval = redis::cmd("EVAL");
    eval.arg(REPUBLISH_SCRIPT).arg(1).arg(sku_key(sku.sku_id));
    eval.arg(found_version.map(|v| v.to_string()).unwrap_or_default());
    eval.arg(c.total).arg(c.available).arg(c.reserved).arg(c.sold).arg(sku.version).arg(sku.price_cents);
    let written: i64 = tokio::time::timeout(REDIS_TIMEOUT, eval.query_async(redis)).await??;
    Ok(written == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_hash_without_an_integer_version_reads_as_missing() {
        assert_eq!(parse(&HashMap::new()), None);
        assert_eq!(parse(&hash(&[("version", "x"), ("total", "1")])), None);
    }

    #[test]
    fn unreadable_counters_never_equal_the_database() {
        let snapshot = parse(&hash(&[("version", "3"), ("total", "5"), ("available", "five")])).expect("a version");
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.counters, Counters { total: 5, available: -1, reserved: -1, sold: -1 });
        assert_eq!(snapshot.price_cents, -1);
    }
}
