//! The database-only baseline: one transaction per attempt with a conditional UPDATE on the
//! SKU's row (`available >= ?`, so it can never go negative) and the order row INSERT, then
//! COMMIT. Every attempt on a SKU waits for the row lock of the one before it, so a hot SKU
//! runs at one commit at a time. Same pool size as tianji's store.

use super::{Engine, ReadBack, Setup};
use crate::check::SkuObserved;
use crate::driver::{Attempt, Outcome};
use async_trait::async_trait;
use sqlx::mysql::MySqlPool;
use sqlx::{QueryBuilder, Row};
use std::sync::atomic::{AtomicI64, Ordering};

/// Rows per INSERT while loading the SKUs.
pub const ROWS_PER_INSERT_MAX: usize = 1_000;

pub struct RowLockEngine {
    database: MySqlPool,
    sku_count: usize,
    next_order_id: AtomicI64,
}

impl RowLockEngine {
    pub async fn start(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let database = setup.database.pool(tianji::persistence::mysql::POOL_CONNECTIONS_MAX).await?;
        for statement in [
            "CREATE TABLE row_lock_inventory (sku_id BIGINT NOT NULL PRIMARY KEY, \
             total BIGINT NOT NULL, available BIGINT NOT NULL, \
             CONSTRAINT row_lock_non_negative CHECK (available >= 0)) ENGINE = InnoDB",
            "CREATE TABLE row_lock_order (order_id BIGINT NOT NULL PRIMARY KEY, \
             sku_id BIGINT NOT NULL, quantity BIGINT NOT NULL, KEY row_lock_order_sku (sku_id)) \
             ENGINE = InnoDB",
        ] {
            sqlx::query(statement).execute(&database).await?;
        }
        let (count, stock) = (setup.workload.sku_count, setup.workload.stock_per_sku);
        for start in (0..count).step_by(ROWS_PER_INSERT_MAX) {
            let mut insert = QueryBuilder::new("INSERT INTO row_lock_inventory (sku_id, total, available) ");
            insert.push_values(start..(start + ROWS_PER_INSERT_MAX).min(count), |mut row, i| {
                row.push_bind(i as i64).push_bind(stock).push_bind(stock);
            });
            insert.build().execute(&database).await?;
        }
        Ok(RowLockEngine { database, sku_count: count, next_order_id: AtomicI64::new(1) })
    }

    async fn reserve(&self, attempt: Attempt) -> Result<bool, sqlx::Error> {
        let quantity = i64::from(attempt.quantity);
        let sku_id = attempt.sku_index as i64;
        let mut transaction = self.database.begin().await?;
        let updated = sqlx::query(
            "UPDATE row_lock_inventory SET available = available - ? \
             WHERE sku_id = ? AND available >= ?",
        )
        .bind(quantity)
        .bind(sku_id)
        .bind(quantity)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if updated == 0 {
            transaction.rollback().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO row_lock_order (order_id, sku_id, quantity) VALUES (?, ?, ?)")
            .bind(self.next_order_id.fetch_add(1, Ordering::Relaxed))
            .bind(sku_id)
            .bind(quantity)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl Engine for RowLockEngine {
    fn name(&self) -> &'static str {
        "mysql-row-lock"
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        match self.reserve(attempt).await {
            Ok(true) => Outcome::Ok { units: attempt.quantity },
            Ok(false) => Outcome::Rejected,
            Err(error) => Outcome::Error(format!("mariadb: {error}")),
        }
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        let mut read = ReadBack { observed: vec![SkuObserved::default(); self.sku_count], ..ReadBack::default() };
        let stock =
            sqlx::query("SELECT sku_id, total, available FROM row_lock_inventory").fetch_all(&self.database).await?;
        if stock.len() != self.sku_count {
            read.problems.push(format!("{} inventory rows, expected {}", stock.len(), self.sku_count));
        }
        for row in stock {
            let (total, available): (i64, i64) = (row.try_get("total")?, row.try_get("available")?);
            let Some(seen) = slot(&mut read.observed, row.try_get("sku_id")?) else {
                read.problems.push("an inventory row of an unknown SKU".into());
                continue;
            };
            seen.taken_units = total - available;
        }
        let orders = sqlx::query(
            "SELECT sku_id, COUNT(*) AS n, CAST(SUM(quantity) AS SIGNED) AS units \
             FROM row_lock_order GROUP BY sku_id",
        )
        .fetch_all(&self.database)
        .await?;
        for row in orders {
            let (rows, units): (i64, i64) = (row.try_get("n")?, row.try_get("units")?);
            let Some(seen) = slot(&mut read.observed, row.try_get("sku_id")?) else {
                read.problems.push("order rows of an unknown SKU".into());
                continue;
            };
            seen.order_rows = rows as u64;
            seen.order_units = units;
        }
        Ok(read)
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.database.close().await;
        Ok(())
    }
}

/// The observed row of SKU index `sku_id`, if it is one of the run's.
fn slot(observed: &mut [SkuObserved], sku_id: i64) -> Option<&mut SkuObserved> {
    usize::try_from(sku_id).ok().and_then(|index| observed.get_mut(index))
}
