//! The SQL of the trade core, shared by MariaDB and SQLite through sqlx's `Any` driver.
//!
//! Statements are bound, never formatted with values. The two dialects differ only in how an
//! insert skips a duplicate key, which `Dialect` supplies. Times are stored as milliseconds
//! since the Unix epoch in `BIGINT` columns, the same in both databases.

use super::{
    InventoryBatch, NewSku, OrderInsert, ReservationStatus, SkuInfo, SkuState, Store, StoreError,
};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::order::{Order, OrderItem, OrderStatus};
use crate::domain::{Cents, OrderId, SkuId, UserId};
use async_trait::async_trait;
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyPool, QueryBuilder, Row};
use std::collections::HashSet;

/// Rows per multi-row statement; keeps every statement under SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    /// The tail of an INSERT that skips rows whose unique key exists already.
    fn skip_duplicates(self) -> &'static str {
        match self {
            Dialect::MySql => " ON DUPLICATE KEY UPDATE id = id",
            Dialect::Sqlite => " ON CONFLICT DO NOTHING",
        }
    }
}

pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
}

impl SqlStore {
    pub fn new(pool: AnyPool, dialect: Dialect) -> Self {
        SqlStore { pool, dialect }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

const ORDER_COLUMNS: &str =
    "id, user_id, status, total_cents, discount_cents, pay_cents, coupon_id, \
     idempotency_key, request_hash, pay_deadline, version, created_at";

fn order_from_row(row: &AnyRow, items: Vec<OrderItem>) -> Result<Order, StoreError> {
    let status: String = row.try_get("status")?;
    let order = Order {
        id: OrderId::new(row.try_get("id")?),
        user_id: UserId::new(row.try_get("user_id")?),
        status: OrderStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("order status {status}")))?,
        items,
        total_cents: Cents::new(row.try_get("total_cents")?),
        discount_cents: Cents::new(row.try_get("discount_cents")?),
        pay_cents: Cents::new(row.try_get("pay_cents")?),
        coupon_id: row.try_get("coupon_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_hash: row.try_get("request_hash")?,
        pay_deadline_ms: row.try_get("pay_deadline")?,
        created_at_ms: row.try_get("created_at")?,
        version: row.try_get("version")?,
    };
    order.assert_amounts();
    Ok(order)
}

impl SqlStore {
    async fn order_with_items(&self, row: Option<AnyRow>) -> Result<Option<Order>, StoreError> {
        let Some(row) = row else { return Ok(None) };
        let order_id: i64 = row.try_get("id")?;
        let item_rows = sqlx::query(
            "SELECT sku_id, name, price_cents, quantity, pay_cents FROM trade_order_item \
             WHERE order_id = ? ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        let items = item_rows
            .iter()
            .map(|item| {
                Ok(OrderItem {
                    sku_id: SkuId::new(item.try_get("sku_id")?),
                    name: item.try_get("name")?,
                    price_cents: Cents::new(item.try_get("price_cents")?),
                    quantity: item.try_get("quantity")?,
                    pay_cents: Cents::new(item.try_get("pay_cents")?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        order_from_row(&row, items).map(Some)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_sku(&self, sku: &NewSku) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inventory (sku_id, name, price_cents, total, available, reserved, sold, version, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?)",
        )
        .bind(sku.sku_id.get())
        .bind(sku.name.clone())
        .bind(sku.price_cents.get())
        .bind(sku.total)
        .bind(sku.total)
        .bind(sku.created_at_ms)
        .bind(sku.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_sku(&self, sku_id: SkuId) -> Result<Option<SkuState>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT name, price_cents, total, available, reserved, sold, version FROM inventory WHERE sku_id = ?",
        )
        .bind(sku_id.get())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let reservation_rows = sqlx::query(
            "SELECT order_id, quantity, expires_at FROM inventory_reservation WHERE sku_id = ? AND status = ?",
        )
        .bind(sku_id.get())
        .bind(ReservationStatus::Reserved.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let reservations = reservation_rows
            .iter()
            .map(|r| {
                Ok((
                    OrderId::new(r.try_get("order_id")?),
                    Reservation {
                        quantity: r.try_get("quantity")?,
                        expires_at_ms: r.try_get("expires_at")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(SkuState {
            info: SkuInfo {
                sku_id,
                name: row.try_get("name")?,
                price_cents: Cents::new(row.try_get("price_cents")?),
            },
            counters: Counters {
                total: row.try_get("total")?,
                available: row.try_get("available")?,
                reserved: row.try_get("reserved")?,
                sold: row.try_get("sold")?,
            },
            version: row.try_get("version")?,
            reservations,
        }))
    }

    async fn commit_inventory(&self, batch: &InventoryBatch) -> Result<(), StoreError> {
        assert!(
            batch.counters.is_balanced(),
            "refusing to write unbalanced counters {:?}",
            batch.counters
        );
        let mut tx = self.pool.begin().await?;
        let counters = batch.counters;
        let updated = sqlx::query(
            "UPDATE inventory SET total = ?, available = ?, reserved = ?, sold = ?, version = ?, updated_at = ? \
             WHERE sku_id = ? AND version = ?",
        )
        .bind(counters.total)
        .bind(counters.available)
        .bind(counters.reserved)
        .bind(counters.sold)
        .bind(batch.expected_version + 1)
        .bind(batch.now_ms)
        .bind(batch.sku_id.get())
        .bind(batch.expected_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Fenced(batch.sku_id));
        }

        let new_rows: Vec<_> = batch.writes.iter().filter(|w| w.is_new).collect();
        for chunk in new_rows.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO inventory_reservation (sku_id, order_id, quantity, status, expires_at, created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, write| {
                row.push_bind(batch.sku_id.get())
                    .push_bind(write.order_id.get())
                    .push_bind(write.quantity)
                    .push_bind(write.status.as_str())
                    .push_bind(write.expires_at_ms)
                    .push_bind(batch.now_ms)
                    .push_bind(batch.now_ms);
            });
            insert.build().execute(&mut *tx).await?;
        }

        for status in [
            ReservationStatus::Confirmed,
            ReservationStatus::Released,
            ReservationStatus::Expired,
        ] {
            let moved: Vec<i64> = batch
                .writes
                .iter()
                .filter(|w| !w.is_new && w.status == status)
                .map(|w| w.order_id.get())
                .collect();
            for chunk in moved.chunks(ROWS_PER_STATEMENT_MAX) {
                let mut update =
                    QueryBuilder::<Any>::new("UPDATE inventory_reservation SET status = ");
                update.push_bind(status.as_str());
                update.push(", updated_at = ").push_bind(batch.now_ms);
                update
                    .push(" WHERE sku_id = ")
                    .push_bind(batch.sku_id.get());
                update
                    .push(" AND status = ")
                    .push_bind(ReservationStatus::Reserved.as_str());
                update.push(" AND order_id IN (");
                let mut ids = update.separated(", ");
                for order_id in chunk {
                    ids.push_bind(*order_id);
                }
                update.push(")");
                let result = update.build().execute(&mut *tx).await?;
                // The actor and the database must agree on which leases were open.
                if result.rows_affected() != chunk.len() as u64 {
                    return Err(StoreError::Corrupt(format!(
                        "sku {}: {} of {} reservations to mark {} were not open",
                        batch.sku_id,
                        chunk.len() as u64 - result.rows_affected(),
                        chunk.len(),
                        status.as_str()
                    )));
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<OrderInsert>, StoreError> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in orders.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(format!(
                "INSERT INTO trade_order ({ORDER_COLUMNS}, updated_at) "
            ));
            insert.push_values(chunk, |mut row, order| {
                order.assert_amounts();
                row.push_bind(order.id.get())
                    .push_bind(order.user_id.get())
                    .push_bind(order.status.as_str())
                    .push_bind(order.total_cents.get())
                    .push_bind(order.discount_cents.get())
                    .push_bind(order.pay_cents.get())
                    .push_bind(order.coupon_id)
                    .push_bind(order.idempotency_key.clone())
                    .push_bind(order.request_hash.clone())
                    .push_bind(order.pay_deadline_ms)
                    .push_bind(order.version)
                    .push_bind(order.created_at_ms)
                    .push_bind(order.created_at_ms);
            });
            insert.push(self.dialect.skip_duplicates());
            insert.build().execute(&mut *tx).await?;
        }

        // Which rows landed: an order skipped for its idempotency key is not under its own id.
        let mut inserted = HashSet::with_capacity(orders.len());
        for chunk in orders.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new("SELECT id FROM trade_order WHERE id IN (");
            let mut ids = select.separated(", ");
            for order in chunk {
                ids.push_bind(order.id.get());
            }
            select.push(")");
            for row in select.build().fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get::<i64, _>("id")?);
            }
        }
        let landed: Vec<&Order> = orders
            .iter()
            .filter(|o| inserted.contains(&o.id.get()))
            .collect();

        let items: Vec<(&Order, usize, &OrderItem)> = landed
            .iter()
            .flat_map(|o| o.items.iter().enumerate().map(move |(n, i)| (*o, n, i)))
            .collect();
        for chunk in items.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO trade_order_item (order_id, line_no, sku_id, name, price_cents, quantity, pay_cents) ",
            );
            insert.push_values(chunk, |mut row, (order, line_no, item)| {
                row.push_bind(order.id.get())
                    .push_bind(*line_no as i64)
                    .push_bind(item.sku_id.get())
                    .push_bind(item.name.clone())
                    .push_bind(item.price_cents.get())
                    .push_bind(item.quantity)
                    .push_bind(item.pay_cents.get());
            });
            insert.build().execute(&mut *tx).await?;
        }
        for chunk in landed.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO order_status_log (order_id, from_status, to_status, version, created_at) ",
            );
            insert.push_values(chunk, |mut row, order| {
                row.push_bind(order.id.get())
                    .push_bind(None::<String>)
                    .push_bind(order.status.as_str())
                    .push_bind(order.version)
                    .push_bind(order.created_at_ms);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(orders
            .iter()
            .map(|o| {
                if inserted.contains(&o.id.get()) {
                    OrderInsert::Inserted
                } else {
                    OrderInsert::DuplicateKey
                }
            })
            .collect())
    }

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM trade_order WHERE id = ?"
        ))
        .bind(order_id.get())
        .fetch_optional(&self.pool)
        .await?;
        self.order_with_items(row).await
    }

    async fn find_order_by_key(
        &self,
        user_id: UserId,
        idempotency_key: &str,
    ) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM trade_order WHERE user_id = ? AND idempotency_key = ?"
        ))
        .bind(user_id.get())
        .bind(idempotency_key.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        self.order_with_items(row).await
    }
}
