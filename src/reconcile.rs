//! `tianji reconcile [--fix]`: checks the stored state against itself and Redis, and with
//! `--fix` repairs what the rows prove.
//!
//! The rules are `domain::reconcile`; the reads and repairs `persistence::sql_reconcile` and
//! `persistence::redis::reconcile`. This module runs them in order: read everything in one
//! consistent snapshot, a part at a time (the Redis snapshots of each part's SKUs with it), and
//! report; with `--fix`, apply the database repairs a running node is fenced against (each
//! re-checked under lock), republish the snapshots that differ (and those of repaired SKUs),
//! then read everything again and report what is left. Memory follows one part (see
//! `sql_reconcile::SKUS_PER_PART_MAX`), the differences and the snapshot versions of the SKUs
//! that differ. The exit code follows what is left: 0 clean, 1 differences, 2 could not check
//! (see `EXIT_*`).

use crate::domain::ids::wall_clock_ms;
use crate::domain::reconcile::{
    check_events, check_promotions, check_snapshots, check_stock, Difference, Key, Repair, SnapshotFacts,
};
use crate::domain::SkuId;
use crate::persistence::redis::reconcile as redis_reconcile;
use crate::persistence::sql::SqlStore;
use crate::persistence::sql_reconcile::{self, Repaired};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Nothing differs (after `--fix`: nothing is left).
pub const EXIT_CLEAN: u8 = 0;
/// Differences were found (after `--fix`: some are left).
pub const EXIT_DIFFERENCES: u8 = 1;
/// The check could not run (no database, not migrated, Redis unreachable, ...).
pub const EXIT_ERROR: u8 = 2;

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Options {
    pub database_url: String,
    /// Snapshots are checked only when set.
    pub redis_url: Option<String>,
    pub fix: bool,
    /// Bounds acquiring a database connection and each row lock wait.
    pub database_timeout: Duration,
}

/// How many rows of each kind were compared (in the last read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned {
    pub skus: usize,
    pub leases: usize,
    pub orders: usize,
    pub templates: usize,
    pub coupons: usize,
    pub purchases: usize,
    pub lessons: usize,
    /// `order_status_log` rows.
    pub log_rows: usize,
    /// `order_event` rows of those orders.
    pub events: usize,
    /// Redis snapshots read (0 without Redis).
    pub snapshots: usize,
}

/// What a run found, did and left.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every difference of the first read.
    pub found: Vec<Difference>,
    /// One line per repair attempted: `fixed <kind> <key> <what>` or `unfixed <kind> <key> <why>`.
    pub repairs: Vec<String>,
    /// The differences after the repairs (the same as `found` without `--fix`).
    pub left: Vec<Difference>,
    pub scanned: Scanned,
    pub redis_checked: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        if self.left.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_DIFFERENCES
        }
    }

    /// The report, one line each: `difference ...` per difference found, the repairs, `left
    /// ...` per difference left after `--fix`, and a summary line starting `reconcile:`.
    pub fn lines(&self, fixed_asked: bool) -> Vec<String> {
        let mut lines: Vec<String> = self.found.iter().map(|d| format!("difference {d}")).collect();
        lines.extend(self.repairs.iter().cloned());
        if fixed_asked {
            lines.extend(self.left.iter().map(|d| format!("left {d} ({})", left_because(d))));
        }
        let s = self.scanned;
        let redis =
            if self.redis_checked { "redis snapshots checked" } else { "redis not configured: snapshots not checked" };
        let verdict =
            if self.left.is_empty() { "clean".to_owned() } else { format!("{} differences", self.left.len()) };
        lines.push(format!(
            "reconcile: {verdict}; {} skus, {} leases, {} orders, {} templates, {} coupons, {} purchase rows, {} lessons, \
             {} log rows, {} events, {} snapshots; {redis}",
            s.skus,
            s.leases,
            s.orders,
            s.templates,
            s.coupons,
            s.purchases,
            s.lessons,
            s.log_rows,
            s.events,
            s.snapshots
        ));
        lines
    }
}

fn left_because(difference: &Difference) -> &'static str {
    match difference.repair {
        Some(repair) if !repair.fenced_against_live_nodes() => {
            "a running node is not fenced against this repair (a template actor would keep its higher count \
             and refuse claims with coupons left): stop the nodes first"
        }
        Some(_) => "its repair did not hold: the state changed while reconciling; run again",
        None => difference.kind.left_because(),
    }
}

/// One read of the database and (when configured) Redis.
struct Read {
    /// The snapshots found of the SKUs a repair may touch (their snapshot differs or their
    /// counters are repaired), `None` when missing.
    snapshots: HashMap<SkuId, Option<SnapshotFacts>>,
    differences: Vec<Difference>,
    scanned: Scanned,
}

async fn read(store: &SqlStore, mut redis: Option<&mut redis::aio::MultiplexedConnection>) -> anyhow::Result<Read> {
    let mut reader = store.reconcile_reader().await?;
    let mut differences = Vec::new();
    let mut snapshots = HashMap::new();
    let mut scanned = Scanned::default();
    while let Some(part) = reader.next_stock_part().await? {
        let mut found = check_stock(&part);
        if let Some(redis) = redis.as_mut() {
            let sku_ids: Vec<SkuId> = part.skus.iter().map(|s| s.sku_id).collect();
            let read = redis_reconcile::read_snapshots(redis, &sku_ids).await?;
            scanned.snapshots += read.len();
            found.extend(check_snapshots(&part.skus, &read));
            let touched: BTreeSet<SkuId> = found
                .iter()
                .filter_map(|d| match d.repair {
                    Some(Repair::SkuCounters { sku_id, .. } | Repair::Snapshot { sku_id, .. }) => Some(sku_id),
                    _ => None,
                })
                .collect();
            snapshots.extend(sku_ids.into_iter().zip(read).filter(|(sku_id, _)| touched.contains(sku_id)));
        }
        scanned.skus += part.skus.len();
        scanned.leases += part.leases.len();
        scanned.purchases += part.purchases.len();
        scanned.lessons += part.lessons.len();
        differences.extend(found);
    }
    let promotions = reader.promotions().await?;
    scanned.templates = promotions.templates.len();
    scanned.coupons = promotions.coupons.len();
    differences.extend(check_promotions(&promotions));
    while let Some((orders, part)) = reader.next_events_part().await? {
        scanned.orders += orders;
        scanned.log_rows += part.steps.len();
        scanned.events += part.step_events.len() + part.refund_events.len();
        differences.extend(check_events(&part));
    }
    reader.finish().await?;
    differences.sort_by_key(|d| (d.kind, d.key));
    Ok(Read { snapshots, differences, scanned })
}

/// Runs the reconciliation `options` describe. `Err` means it could not check (exit 2).
pub async fn run(options: &Options) -> anyhow::Result<Outcome> {
    let store = sql_reconcile::open(&options.database_url, options.database_timeout).await?;
    let mut redis = match &options.redis_url {
        Some(url) => Some(
            redis_reconcile::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("redis at TIANJI_REDIS_URL is unreachable: {e}"))?,
        ),
        None => None,
    };
    let first = read(&store, redis.as_mut()).await?;
    let mut outcome = Outcome {
        found: first.differences.clone(),
        left: first.differences.clone(),
        scanned: first.scanned,
        redis_checked: redis.is_some(),
        repairs: Vec::new(),
    };
    if !options.fix || first.differences.is_empty() {
        return Ok(outcome);
    }
    let repaired_skus = repair_database(&store, &first.differences, &mut outcome.repairs).await?;
    if let Some(redis) = redis.as_mut() {
        republish(&store, redis, &first, &repaired_skus, &mut outcome.repairs).await?;
    }
    let last = read(&store, redis.as_mut()).await?;
    outcome.left = last.differences;
    outcome.scanned = last.scanned;
    Ok(outcome)
}

/// Applies every database repair the differences carry; the SKUs whose counters it wrote.
async fn repair_database(
    store: &SqlStore,
    differences: &[Difference],
    lines: &mut Vec<String>,
) -> anyhow::Result<BTreeSet<SkuId>> {
    let mut repaired = BTreeSet::new();
    for difference in differences {
        let Some(repair) = difference.repair else { continue };
        // A repair a running node is not fenced against is left, and said so.
        if matches!(repair, Repair::Snapshot { .. }) || !repair.fenced_against_live_nodes() {
            continue;
        }
        let (kind, key) = (difference.kind, difference.key);
        match store.reconcile_repair(repair, wall_clock_ms() as i64).await? {
            Repaired::Applied(what) => {
                if let Repair::SkuCounters { sku_id, .. } = repair {
                    repaired.insert(sku_id);
                }
                lines.push(format!("fixed {kind} {key} {what}"));
            }
            Repaired::Changed(why) => lines.push(format!("unfixed {kind} {key} {why}")),
        }
    }
    Ok(repaired)
}

/// Republishes the snapshots that differed and those of the SKUs whose counters were repaired,
/// from the database as it is now.
async fn republish(
    store: &SqlStore,
    redis: &mut redis::aio::MultiplexedConnection,
    first: &Read,
    repaired_skus: &BTreeSet<SkuId>,
    lines: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut targets: Vec<(SkuId, String)> = first
        .differences
        .iter()
        .filter_map(|d| match d.repair {
            Some(Repair::Snapshot { sku_id, .. }) => Some((sku_id, format!("{} {}", d.kind, d.key))),
            _ => None,
        })
        .collect();
    let named: BTreeSet<SkuId> = targets.iter().map(|(sku_id, _)| *sku_id).collect();
    for sku_id in repaired_skus.difference(&named) {
        targets.push((*sku_id, format!("snapshot_stale {}", Key::Snapshot(*sku_id))));
    }
    for (sku_id, what) in targets {
        let found_version = first.snapshots.get(&sku_id).copied().flatten().map(|s| s.version);
        let Some(sku) = store.reconcile_sku(sku_id).await? else {
            lines.push(format!("unfixed {what} the sku is gone"));
            continue;
        };
        if !sku.counters.is_balanced() {
            lines.push(format!("unfixed {what} the stored counters do not balance: nothing is published"));
            continue;
        }
        if redis_reconcile::republish(redis, &sku, found_version).await? {
            lines.push(format!("fixed {what} republished version={} from the database", sku.version));
        } else {
            lines.push(format!("unfixed {what} redis changed since the read (a server is publishing)"));
        }
    }
    Ok(())
}
