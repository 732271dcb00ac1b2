//! tianji's own engine, in process: one SKU actor per SKU, each reservation acknowledged after
//! its group commit. `tianji-actor` commits to MariaDB (tianji's migrations create its tables
//! in the run's database); `tianji-memory` runs the same actors on the in-memory store, the
//! ceiling of the design.
//!
//! An overloaded actor (`SkuError::Overloaded`, mailbox full) is counted as an error and not
//! retried: that is what an HTTP client would see as a 503.

use super::{Engine, ReadBack, Setup};
use crate::check::SkuObserved;
use crate::driver::{Attempt, Outcome};
use crate::workload::Workload;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use sqlx::mysql::MySqlPool;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tianji::actors::inventory::SkuError;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::inventory::{InventoryError, Quantity, ORDER_LINE_QUANTITY_MAX};
use tianji::domain::{Cents, OrderId, SkuId};
use tianji::persistence::redis::Snapshots;
use tianji::persistence::NewSku;

/// Actor threads: this machine has 2 cores, one drives the load, one runs the actors.
pub const ARBITER_COUNT: usize = 1;
/// Snowflake worker id of the in-process core.
pub const WORKER_ID: u16 = 1;
/// SKUs created at once during setup (the store's pool holds 16 connections).
pub const SKU_CREATE_CONCURRENCY: usize = 16;
/// Leases outlive the run by far, so none expires (and changes the counters) while it runs.
pub const LEASE_MS: i64 = 3_600_000;
/// Payment deadline given to the core; reservations here never reach an order session.
pub const PAY_TIMEOUT: Duration = Duration::from_secs(900);

pub struct TianjiEngine {
    name: &'static str,
    core: Arc<Core>,
    skus: Vec<SkuId>,
    expires_at_ms: i64,
    /// The run's database, for reading back what the durable engine committed.
    database: Option<MySqlPool>,
}

impl TianjiEngine {
    pub async fn durable(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let store = tianji::persistence::connect(&setup.database.url, true).await?;
        let database = setup.database.pool(2).await?;
        Self::start("tianji-actor", store, Some(database), setup.workload).await
    }

    pub async fn in_memory(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let store = tianji::persistence::connect("memory:", false).await?;
        Self::start("tianji-memory", store, None, setup.workload).await
    }

    async fn start(
        name: &'static str,
        store: tianji::persistence::DynStore,
        database: Option<MySqlPool>,
        workload: &Workload,
    ) -> anyhow::Result<Self> {
        let core = Core::start(
            store,
            Arc::new(Snapshots::in_process()),
            ActorLimits::default(),
            WORKER_ID,
            PAY_TIMEOUT,
            ARBITER_COUNT,
        );
        let skus: Vec<SkuId> = (0..workload.sku_count).map(|_| SkuId::new(core.ids.next_id())).collect();
        create_skus(&core, &skus, workload.stock_per_sku).await?;
        Ok(TianjiEngine { name, core, skus, expires_at_ms: wall_clock_ms() as i64 + LEASE_MS, database })
    }
}

async fn create_skus(core: &Core, skus: &[SkuId], stock: i64) -> anyhow::Result<()> {
    futures::stream::iter(skus.iter().enumerate())
        .map(|(index, &sku_id)| {
            let sku = NewSku {
                sku_id,
                name: format!("load sku {index}"),
                price_cents: Cents::new(100),
                total: stock,
                created_at_ms: wall_clock_ms() as i64,
            };
            async move { core.store.create_sku(&sku).await }
        })
        .buffer_unordered(SKU_CREATE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(())
}

#[async_trait]
impl Engine for TianjiEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        let quantity = match Quantity::parse(i64::from(attempt.quantity), ORDER_LINE_QUANTITY_MAX) {
            Ok(quantity) => quantity,
            Err(error) => return Outcome::Error(error.to_string()),
        };
        let order_id = OrderId::new(self.core.ids.next_id());
        let sku_id = self.skus[attempt.sku_index];
        match self.core.reserve(sku_id, order_id, quantity, self.expires_at_ms).await {
            Ok(_) => Outcome::Ok { units: attempt.quantity },
            Err(SkuError::Inventory(InventoryError::InsufficientStock { .. })) => Outcome::Rejected,
            Err(SkuError::Overloaded) => Outcome::Error("overloaded (mailbox full)".into()),
            Err(other) => Outcome::Error(other.to_string()),
        }
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        match &self.database {
            Some(database) => read_back_sql(database, &self.skus).await,
            None => read_back_store(&self.core, &self.skus).await,
        }
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.core.arbiters.stop();
        if let Some(database) = &self.database {
            database.close().await;
        }
        Ok(())
    }
}

/// Counters and one open reservation per success, from the store's own `load_sku`.
async fn read_back_store(core: &Core, skus: &[SkuId]) -> anyhow::Result<ReadBack> {
    let mut read = ReadBack::default();
    let mut commits = 0;
    for (index, &sku_id) in skus.iter().enumerate() {
        let state = core
            .store
            .load_sku(sku_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("sku {sku_id} vanished from the store"))?;
        let c = state.counters;
        balance_problems(&mut read, index, c.total, c.available, c.reserved, c.sold);
        commits += state.version;
        read.observed.push(SkuObserved {
            taken_units: c.total - c.available,
            order_rows: state.reservations.len() as u64,
            order_units: state.reservations.iter().map(|(_, r)| r.quantity).sum(),
        });
    }
    read.notes.push(commits_note(commits, &read.observed));
    Ok(read)
}

/// Reads tianji's tables directly: the `inventory` rows and the `reserved` reservation rows.
async fn read_back_sql(database: &MySqlPool, skus: &[SkuId]) -> anyhow::Result<ReadBack> {
    let index_of: HashMap<i64, usize> = skus.iter().enumerate().map(|(i, s)| (s.get(), i)).collect();
    let mut read = ReadBack { observed: vec![SkuObserved::default(); skus.len()], ..ReadBack::default() };
    let mut seen = vec![false; skus.len()];
    let mut commits = 0;
    let rows = sqlx::query("SELECT sku_id, total, available, reserved, sold, version FROM inventory")
        .fetch_all(database)
        .await?;
    for row in rows {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("sku_id")?) else {
            read.problems.push("an inventory row of an unknown SKU".into());
            continue;
        };
        let (total, available): (i64, i64) = (row.try_get("total")?, row.try_get("available")?);
        let (reserved, sold): (i64, i64) = (row.try_get("reserved")?, row.try_get("sold")?);
        balance_problems(&mut read, index, total, available, reserved, sold);
        commits += row.try_get::<i64, _>("version")?;
        read.observed[index].taken_units = total - available;
        seen[index] = true;
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        read.problems.push(format!("sku #{missing}: no inventory row"));
    }
    let reservations = sqlx::query(
        "SELECT sku_id, COUNT(*) AS n, CAST(COALESCE(SUM(quantity), 0) AS SIGNED) AS units \
         FROM inventory_reservation WHERE status = 'reserved' GROUP BY sku_id",
    )
    .fetch_all(database)
    .await?;
    for row in reservations {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("sku_id")?) else {
            read.problems.push("reservations of an unknown SKU".into());
            continue;
        };
        read.observed[index].order_rows = row.try_get::<i64, _>("n")? as u64;
        read.observed[index].order_units = row.try_get("units")?;
    }
    read.notes.push(commits_note(commits, &read.observed));
    Ok(read)
}

fn balance_problems(read: &mut ReadBack, index: usize, total: i64, available: i64, reserved: i64, sold: i64) {
    if available + reserved + sold != total || available < 0 || reserved < 0 || sold < 0 {
        read.problems.push(format!(
            "sku #{index}: unbalanced ledger available {available} + reserved {reserved} + sold \
             {sold} != total {total}"
        ));
    }
    if sold != 0 {
        read.problems.push(format!("sku #{index}: {sold} units sold, but nothing was paid"));
    }
}

fn commits_note(commits: i64, observed: &[SkuObserved]) -> String {
    let rows: u64 = observed.iter().map(|o| o.order_rows).sum();
    let per_commit = if commits > 0 { rows as f64 / commits as f64 } else { 0.0 };
    format!("{commits} group commits (SKU versions), {per_commit:.1} reservations per commit")
}
