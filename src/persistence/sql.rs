//! The SQL of the trade core, shared by MariaDB and SQLite through sqlx's `Any` driver.
//!
//! Statements are bound, never formatted with values. The two dialects differ only in how an
//! insert skips a duplicate key, which `Dialect` supplies. Times are stored as milliseconds
//! since the Unix epoch in `BIGINT` columns, the same in both databases.

use super::{
    InventoryBatch, NewSku, OrderInsert, OrderTransition, Payment, PaymentStatus, ReservationStatus, SkuInfo, SkuState,
    Store, StoreError, UnsettledReservation,
};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::order::{Order, OrderItem, OrderStatus};
use crate::domain::{Cents, OrderId, SkuId, UserId};
use async_trait::async_trait;
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyPool, QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap, HashSet};

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

const ORDER_COLUMNS: &str = "id, user_id, status, total_cents, discount_cents, pay_cents, coupon_id, \
     idempotency_key, request_hash, pay_deadline, version, created_at";

fn order_from_row(row: &AnyRow, items: Vec<OrderItem>) -> Result<Order, StoreError> {
    let status: String = row.try_get("status")?;
    let order = Order {
        id: OrderId::new(row.try_get("id")?),
        user_id: UserId::new(row.try_get("user_id")?),
        status: OrderStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("order status {status}")))?,
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
        Ok(self.orders_with_items(vec![row]).await?.pop())
    }

    /// Turns order rows into orders, reading the items of all of them in one query.
    async fn orders_with_items(&self, rows: Vec<AnyRow>) -> Result<Vec<Order>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>()?;
        let mut select = QueryBuilder::<Any>::new(
            "SELECT order_id, sku_id, name, price_cents, quantity, pay_cents FROM trade_order_item WHERE order_id IN (",
        );
        let mut separated = select.separated(", ");
        for id in &ids {
            separated.push_bind(*id);
        }
        select.push(") ORDER BY order_id, line_no");
        let mut items: HashMap<i64, Vec<OrderItem>> = HashMap::new();
        for item in select.build().fetch_all(&self.pool).await? {
            items.entry(item.try_get("order_id")?).or_default().push(OrderItem {
                sku_id: SkuId::new(item.try_get("sku_id")?),
                name: item.try_get("name")?,
                price_cents: Cents::new(item.try_get("price_cents")?),
                quantity: item.try_get("quantity")?,
                pay_cents: Cents::new(item.try_get("pay_cents")?),
            });
        }
        rows.iter().zip(ids).map(|(row, id)| order_from_row(row, items.remove(&id).unwrap_or_default())).collect()
    }
}

fn payment_from_row(row: &AnyRow) -> Result<Payment, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Payment {
        out_trade_no: row.try_get("out_trade_no")?,
        order_id: OrderId::new(row.try_get("order_id")?),
        amount_cents: Cents::new(row.try_get("amount_cents")?),
        channel: row.try_get("channel")?,
        status: PaymentStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("payment status {status}")))?,
    })
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
                    Reservation { quantity: r.try_get("quantity")?, expires_at_ms: r.try_get("expires_at")? },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(SkuState {
            info: SkuInfo { sku_id, name: row.try_get("name")?, price_cents: Cents::new(row.try_get("price_cents")?) },
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
        assert!(batch.counters.is_balanced(), "refusing to write unbalanced counters {:?}", batch.counters);
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

        let new_rows: Vec<_> = batch.writes.iter().filter(|w| w.from.is_none()).collect();
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

        let mut moves: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
        for write in &batch.writes {
            if let Some(from) = write.from.filter(|from| *from != write.status) {
                moves.entry((from.as_str(), write.status.as_str())).or_default().push(write.order_id.get());
            }
        }
        for ((from, to), order_ids) in moves {
            for chunk in order_ids.chunks(ROWS_PER_STATEMENT_MAX) {
                let mut update = QueryBuilder::<Any>::new("UPDATE inventory_reservation SET status = ");
                update.push_bind(to);
                update.push(", updated_at = ").push_bind(batch.now_ms);
                update.push(" WHERE sku_id = ").push_bind(batch.sku_id.get());
                update.push(" AND status = ").push_bind(from);
                update.push(" AND order_id IN (");
                let mut ids = update.separated(", ");
                for order_id in chunk {
                    ids.push_bind(*order_id);
                }
                update.push(")");
                let result = update.build().execute(&mut *tx).await?;
                // The actor and the database must agree on the state of every lease.
                if result.rows_affected() != chunk.len() as u64 {
                    return Err(StoreError::Corrupt(format!(
                        "sku {}: {} of {} reservations to move {from} -> {to} were not {from}",
                        batch.sku_id,
                        chunk.len() as u64 - result.rows_affected(),
                        chunk.len(),
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
            let mut insert =
                QueryBuilder::<Any>::new(format!("INSERT INTO trade_order ({ORDER_COLUMNS}, updated_at) "));
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
        let landed: Vec<&Order> = orders.iter().filter(|o| inserted.contains(&o.id.get())).collect();

        let items: Vec<(&Order, usize, &OrderItem)> =
            landed.iter().flat_map(|o| o.items.iter().enumerate().map(move |(n, i)| (*o, n, i))).collect();
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
            .map(|o| if inserted.contains(&o.id.get()) { OrderInsert::Inserted } else { OrderInsert::DuplicateKey })
            .collect())
    }

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM trade_order WHERE id = ?"))
            .bind(order_id.get())
            .fetch_optional(&self.pool)
            .await?;
        self.order_with_items(row).await
    }

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM trade_order WHERE user_id = ? AND idempotency_key = ?"))
                .bind(user_id.get())
                .bind(idempotency_key.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        self.order_with_items(row).await
    }

    async fn transition_orders(
        &self,
        transitions: &[OrderTransition],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if transitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(transitions.len());
        for transition in transitions {
            assert!(transition.from.can_become(transition.to), "{transition:?}");
            let updated = sqlx::query(
                "UPDATE trade_order SET status = ?, version = ?, updated_at = ? WHERE id = ? AND version = ? AND status = ?",
            )
            .bind(transition.to.as_str())
            .bind(transition.expected_version + 1)
            .bind(transition.at_ms)
            .bind(transition.order_id.get())
            .bind(transition.expected_version)
            .bind(transition.from.as_str())
            .execute(&mut *tx)
            .await?;
            outcomes.push(if updated.rows_affected() == 1 {
                Ok(())
            } else {
                Err(StoreError::Stale(transition.order_id))
            });
        }
        let landed: Vec<&OrderTransition> =
            transitions.iter().zip(&outcomes).filter(|(_, outcome)| outcome.is_ok()).map(|(t, _)| t).collect();
        for chunk in landed.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO order_status_log (order_id, from_status, to_status, version, created_at) ",
            );
            insert.push_values(chunk, |mut row, t| {
                row.push_bind(t.order_id.get())
                    .push_bind(t.from.as_str())
                    .push_bind(t.to.as_str())
                    .push_bind(t.expected_version + 1)
                    .push_bind(t.at_ms);
            });
            insert.build().execute(&mut *tx).await?;
        }
        let payments: Vec<(&Payment, i64)> =
            landed.iter().filter_map(|t| t.insert_payment.as_ref().map(|p| (p, t.at_ms))).collect();
        for chunk in payments.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO payment (out_trade_no, order_id, amount_cents, channel, status, created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, (payment, at_ms)| {
                row.push_bind(payment.out_trade_no.clone())
                    .push_bind(payment.order_id.get())
                    .push_bind(payment.amount_cents.get())
                    .push_bind(payment.channel.clone())
                    .push_bind(payment.status.as_str())
                    .push_bind(*at_ms)
                    .push_bind(*at_ms);
            });
            insert.build().execute(&mut *tx).await?;
        }
        let refunded: Vec<&OrderTransition> = landed.iter().copied().filter(|t| t.refund_payment).collect();
        for chunk in refunded.chunks(ROWS_PER_STATEMENT_MAX) {
            let mut update = QueryBuilder::<Any>::new("UPDATE payment SET status = ");
            update.push_bind(PaymentStatus::Refunded.as_str());
            update.push(", updated_at = ").push_bind(chunk[0].at_ms);
            update.push(" WHERE status = ").push_bind(PaymentStatus::Paid.as_str());
            update.push(" AND order_id IN (");
            let mut ids = update.separated(", ");
            for t in chunk {
                ids.push_bind(t.order_id.get());
            }
            update.push(")");
            update.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn record_payment(&self, payment: &Payment, at_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.find_payment_in(&mut tx, &payment.out_trade_no).await?.is_some() {
            return Ok(false);
        }
        insert_payment(&mut tx, payment, at_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        self.find_payment_in(&mut connection, out_trade_no).await
    }

    async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let mut select = QueryBuilder::<Any>::new(format!("SELECT {ORDER_COLUMNS} FROM trade_order WHERE user_id = "));
        select.push_bind(user_id.get());
        if let Some(status) = status {
            select.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = before {
            select.push(" AND id < ").push_bind(before.get());
        }
        select.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = select.build().fetch_all(&self.pool).await?;
        self.orders_with_items(rows).await
    }

    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, pay_deadline FROM trade_order WHERE status = ?")
            .bind(OrderStatus::PendingPayment.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((OrderId::new(row.try_get("id")?), row.try_get("pay_deadline")?))).collect()
    }

    async fn unsettled_reservations(&self) -> Result<Vec<UnsettledReservation>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.sku_id, r.order_id, r.quantity, r.status, o.status AS order_status, \
               (SELECT COUNT(*) FROM order_status_log l WHERE l.order_id = r.order_id \
                  AND l.from_status = 'paid' AND l.to_status = 'refunded') AS refunded_from_paid \
             FROM inventory_reservation r LEFT JOIN trade_order o ON o.id = r.order_id \
             WHERE (r.status = 'reserved' AND (o.id IS NULL OR o.status <> 'pending_payment')) \
                OR (r.status = 'confirmed' AND o.status = 'refunded')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let order_status: Option<String> = row.try_get("order_status")?;
                let refunded_from_paid: i64 = row.try_get("refunded_from_paid")?;
                Ok(UnsettledReservation {
                    sku_id: SkuId::new(row.try_get("sku_id")?),
                    order_id: OrderId::new(row.try_get("order_id")?),
                    quantity: row.try_get("quantity")?,
                    status: ReservationStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("reservation status {status}")))?,
                    order_status: order_status.as_deref().and_then(OrderStatus::parse),
                    refunded_from_paid: refunded_from_paid > 0,
                })
            })
            .collect()
    }
}

impl SqlStore {
    async fn find_payment_in(
        &self,
        connection: &mut sqlx::AnyConnection,
        out_trade_no: &str,
    ) -> Result<Option<Payment>, StoreError> {
        let row = sqlx::query(
            "SELECT out_trade_no, order_id, amount_cents, channel, status FROM payment WHERE out_trade_no = ?",
        )
        .bind(out_trade_no.to_owned())
        .fetch_optional(&mut *connection)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }
}

async fn insert_payment(connection: &mut sqlx::AnyConnection, payment: &Payment, at_ms: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO payment (out_trade_no, order_id, amount_cents, channel, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(payment.out_trade_no.clone())
    .bind(payment.order_id.get())
    .bind(payment.amount_cents.get())
    .bind(payment.channel.clone())
    .bind(payment.status.as_str())
    .bind(at_ms)
    .bind(at_ms)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
