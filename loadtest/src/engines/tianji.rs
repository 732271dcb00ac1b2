//! tianji's own engine, in process: every attempt is a placement through the real actors (a
//! user actor, the SKU actor, the node's write pipeline), acknowledged after the commit that
//! holds the order and its reservation. `tianji-actor` commits to MariaDB (tianji's migrations
//! create its tables in the run's database); `tianji-memory` runs the same actors on the
//! in-memory store, the ceiling of the design.
//!
//! An overloaded actor or pipeline (`PlaceError::Overloaded`) is counted as an error and not
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tianji::actors::user::PlaceError;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::inventory::{Quantity, ORDER_LINE_QUANTITY_MAX};
use tianji::domain::{Cents, IdempotencyKey, PlaceOrder, SkuId, UserId};
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{DynStore, NewSku};

/// Actor threads: this machine has 2 cores, one drives the load, one runs the actors.
pub const ARBITER_COUNT: usize = 1;
/// Snowflake worker id of the in-process core.
pub const WORKER_ID: u16 = 1;
/// SKUs created at once during setup (the store's pool holds 16 connections).
pub const SKU_CREATE_CONCURRENCY: usize = 16;
/// Payment deadline of the orders placed: far past the run, so none closes while it runs.
pub const PAY_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Buyers the attempts are spread over (each has its user actor).
pub const USERS: u64 = 2_000;

pub struct TianjiEngine {
    name: &'static str,
    core: Arc<Core>,
    store: DynStore,
    skus: Vec<SkuId>,
    attempts: AtomicU64,
    /// The run's database, for reading back what the durable engine committed.
    database: Option<MySqlPool>,
}

impl TianjiEngine {
    pub async fn durable(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let (store, database) = durable_store(setup).await?;
        Self::start("tianji-actor", store, Some(database), setup.workload).await
    }

    pub async fn in_memory(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let store = memory_store().await?;
        Self::start("tianji-memory", store, None, setup.workload).await
    }

    async fn start(
        name: &'static str,
        store: tianji::persistence::DynStore,
        database: Option<MySqlPool>,
        workload: &Workload,
    ) -> anyhow::Result<Self> {
        let core = start_core(&store);
        let skus: Vec<SkuId> = (0..workload.sku_count).map(|_| SkuId::new(core.next_id())).collect();
        create_skus(&store, &skus, workload.stock_per_sku).await?;
        Ok(TianjiEngine { name, core, store, skus, attempts: AtomicU64::new(0), database })
    }
}

/// tianji's core as every in-process engine runs it: default limits, one actor thread.
pub(super) fn start_core(store: &DynStore) -> Arc<Core> {
    Core::start(
        Arc::clone(store),
        Arc::new(Snapshots::in_process()),
        ActorLimits::default(),
        WORKER_ID,
        PAY_TIMEOUT,
        ARBITER_COUNT,
    )
}

/// The durable store on the run's database (tianji's migrations create its tables there) and
/// a small pool for reading back what it committed.
pub(super) async fn durable_store(setup: &Setup<'_>) -> anyhow::Result<(DynStore, MySqlPool)> {
    let timeout = ActorLimits::default().database_timeout;
    let store = tianji::persistence::connect(&setup.database.url, true, timeout).await?;
    Ok((store, setup.database.pool(2).await?))
}

/// The in-memory store.
pub(super) async fn memory_store() -> anyhow::Result<DynStore> {
    tianji::persistence::connect("memory:", false, Duration::from_secs(1)).await
}

async fn create_skus(store: &DynStore, skus: &[SkuId], stock: i64) -> anyhow::Result<()> {
    futures::stream::iter(skus.iter().enumerate())
        .map(|(index, &sku_id)| {
            let sku = NewSku {
                sku_id,
                name: format!("load sku {index}"),
                price_cents: Cents::new(100),
                total: stock,
                sale: Default::default(),
                created_at_ms: wall_clock_ms() as i64,
            };
            async move { store.create_sku(&sku).await }
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
        let n = self.attempts.fetch_add(1, Ordering::Relaxed);
        let user_id = UserId::new(1 + (n % USERS) as i64);
        let key = IdempotencyKey::parse(&format!("load-{n}")).expect("a short printable key");
        let request = PlaceOrder { lines: vec![(self.skus[attempt.sku_index], quantity)], coupon_id: None };
        match self.core.place_order(user_id, key, request).await {
            Ok(_) => Outcome::Ok { units: attempt.quantity },
            Err(PlaceError::InsufficientStock { .. }) => Outcome::Rejected,
            Err(PlaceError::Overloaded) => Outcome::Error("overloaded (mailbox or pipeline full)".into()),
            Err(other) => Outcome::Error(other.to_string()),
        }
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        match &self.database {
            Some(database) => read_back_sql(database, &self.skus).await,
            None => read_back_store(&self.store, &self.skus).await,
        }
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.core.stop();
        if let Some(database) = &self.database {
            database.close().await;
        }
        Ok(())
    }
}

/// Counters and one open reservation per success, from the store itself.
async fn read_back_store(store: &DynStore, skus: &[SkuId]) -> anyhow::Result<ReadBack> {
    let mut read = ReadBack::default();
    let mut commits = 0;
    let states = store.activate_skus(skus).await?;
    for (index, (&sku_id, state)) in skus.iter().zip(states).enumerate() {
        let state = state.ok_or_else(|| anyhow::anyhow!("sku {sku_id} vanished from the store"))?;
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
    format!("{commits} SKU versions (batches that touched each SKU), {per_commit:.1} reservations per SKU per batch")
}
