//! The SQL of the trade core, shared by MariaDB and SQLite through sqlx's `Any` driver.
//!
//! Statements are bound, never formatted with values. The two dialects differ only in how a
//! write transaction starts and how rows are locked for it, which `Dialect` supplies. Times are
//! stored as milliseconds since the Unix epoch in `BIGINT` columns, the same in both databases.
//!
//! `commit` is the write pipeline's transaction: lock and read what the batch depends on, let
//! `plan::decide` accept or refuse each change, write the accepted ones with a fixed number of
//! multi-row statements per table (whatever the batch size), commit.

use super::outbox::{self, EventClaim, StoredEvent};
use super::plan::{decide, Facts, Plan, SkuRow, Wanted};
use super::sql_cluster;
use super::sql_learning::write_lessons;
use super::sql_outbox::write_events;
use super::sql_promotion::{sale_from_row, write_promotion};
use super::{
    Change, CommitReport, Conflict, LeaseWrite, NewSku, NewTemplate, Payment, PaymentCursor, PaymentRecord,
    PaymentStatus, RecentKey, ReservationStatus, SkuInfo, SkuState, Store, StoreError, TemplateState, UnsettledLease,
    UserState,
};
use crate::cluster::Ownership;
use crate::domain::coupon::{Coupon, CouponStatus};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::lease::settled_lease_statuses;
use crate::domain::order::{Order, OrderItem, OrderStatus, StatusLogEntry};
use crate::domain::slots::{Key, RangeId};
use crate::domain::{Cents, CouponId, OrderId, SkuId, TemplateId, UserId};
use async_trait::async_trait;
use sqlx::any::{Any, AnyRow};
use sqlx::query_builder::Separated;
use sqlx::AnyConnection;
use sqlx::{AnyPool, QueryBuilder, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Rows per multi-row statement; keeps every statement under SQLite's 32,766 bound parameters.
pub(super) const ROWS_PER_STATEMENT_MAX: usize = 512;

/// Splits `rows` into statements of power-of-two sizes (largest first, at most `size_max`),
/// so a statement's text repeats across batches and the server's prepared statement is
/// reused: 177 rows are 128 + 32 + 16 + 1, never a 177-row statement prepared once.
/// Preparing a statement of a few thousand placeholders per batch cost MariaDB more CPU than
/// the few extra round trips.
pub(super) fn statements<T>(rows: &[T], size_max: usize) -> impl Iterator<Item = &[T]> {
    assert!(size_max.is_power_of_two());
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = if rest.len() >= size_max { size_max } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    /// How a write transaction starts. SQLite takes the write lock at once, so what the
    /// transaction reads cannot change before it writes.
    fn begin_write(self) -> &'static str {
        match self {
            Dialect::MySql => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// The tail of a multi-row INSERT that overwrites the `columns` of rows whose primary key
    /// `key` exists.
    pub(super) fn upsert_tail(self, key: &[&str], columns: &[&str]) -> String {
        match self {
            Dialect::MySql => {
                let sets: Vec<String> = columns.iter().map(|c| format!("{c} = VALUES({c})")).collect();
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            Dialect::Sqlite => {
                let sets: Vec<String> = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect();
                format!(" ON CONFLICT ({}) DO UPDATE SET {}", key.join(", "), sets.join(", "))
            }
        }
    }

    /// The tail of a SELECT whose rows the transaction goes on to write. (SQLite's
    /// transaction holds the whole database already.)
    pub(super) fn lock_rows(self) -> &'static str {
        match self {
            Dialect::MySql => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

/// Appends `(?, ?, ...)` with `values` bound.
pub(super) fn push_list<T>(builder: &mut QueryBuilder<'static, Any>, values: impl IntoIterator<Item = T>)
where
    T: 'static + Send + sqlx::Encode<'static, Any> + sqlx::Type<Any>,
{
    builder.push("(");
    let mut list = builder.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    list.push_unseparated(")");
}

/// Appends `((a = ? AND b = ?) OR ...)` matching exactly the given pairs of two columns, so an
/// index on both answers each pair with a point look-up.
pub(super) fn push_pairs(builder: &mut QueryBuilder<'static, Any>, columns: (&str, &str), pairs: &[(i64, i64)]) {
    builder.push("(");
    for (n, (a, b)) in pairs.iter().enumerate() {
        if n > 0 {
            builder.push(" OR ");
        }
        builder.push("(").push(columns.0).push(" = ").push_bind(*a);
        builder.push(" AND ").push(columns.1).push(" = ").push_bind(*b).push(")");
    }
    builder.push(")");
}

/// Inserts `rows` with one multi-row statement per `ROWS_PER_STATEMENT_MAX`: `head` names the
/// table and columns, `bind` pushes one row's values in that order. The one chunked insert of
/// the crate (`upsert_rows` adds a conflict clause to it).
pub(super) async fn insert_rows<T>(
    connection: &mut AnyConnection,
    head: &str,
    rows: &[T],
    bind: impl FnMut(&mut Separated<'_, 'static, Any, &'static str>, &T),
) -> Result<(), StoreError> {
    upsert_rows(connection, head, "", rows, bind).await
}

/// `insert_rows` with `tail` after each statement's values (an `ON DUPLICATE KEY UPDATE` or
/// `ON CONFLICT` clause).
pub(super) async fn upsert_rows<T>(
    connection: &mut AnyConnection,
    head: &str,
    tail: &str,
    rows: &[T],
    mut bind: impl FnMut(&mut Separated<'_, 'static, Any, &'static str>, &T),
) -> Result<(), StoreError> {
    for chunk in statements(rows, ROWS_PER_STATEMENT_MAX) {
        let mut insert = QueryBuilder::<Any>::new(head);
        insert.push(" ");
        insert.push_values(chunk, |mut row, value| bind(&mut row, value));
        insert.push(tail);
        insert.build().execute(&mut *connection).await?;
    }
    Ok(())
}

pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    /// A cluster node's leases: every commit is fenced by them (`sql_cluster::fence`). `None`
    /// on a single node, whose commits run no extra statement.
    fence: Option<Arc<Ownership>>,
}

impl SqlStore {
    pub fn new(pool: AnyPool, dialect: Dialect) -> Self {
        SqlStore { pool, dialect, fence: None }
    }

    /// This store with every commit fenced by `ownership`'s leases (MariaDB only).
    pub fn fenced_by(self, ownership: Arc<Ownership>) -> Self {
        assert_eq!(self.dialect, Dialect::MySql, "a cluster runs on MariaDB only");
        SqlStore { fence: Some(ownership), ..self }
    }

    /// The pool, for the cluster's own statements (`sql_cluster::ClusterStore`).
    pub fn pool(&self) -> AnyPool {
        self.pool.clone()
    }

    /// Refuses with `Conflict::NotOwner` every change touching a range this node no longer
    /// holds at the epoch the change needs (`sql_cluster::needed`), checked in the database
    /// under a share lock held to the commit. `None` when every change may go on.
    async fn refuse_lost_ranges(
        &self,
        tx: &mut AnyConnection,
        changes: &[Change],
    ) -> Result<Option<Vec<Option<Conflict>>>, StoreError> {
        let Some(ownership) = &self.fence else { return Ok(None) };
        let needs: Vec<_> = changes.iter().map(|change| sql_cluster::needed(change, |r| ownership.epoch(r))).collect();
        let ranges: BTreeSet<RangeId> = needs.iter().flatten().map(|(range, _)| *range).collect();
        let held = sql_cluster::fence(tx, ownership.node_id(), &ranges).await?;
        let refusals: Vec<Option<Conflict>> = needs
            .iter()
            .map(|need| {
                let lost = need.iter().find(|(range, epoch)| epoch.is_none() || held.get(range) != epoch.as_ref());
                lost.map(|(range, _)| Conflict::NotOwner(*range))
            })
            .collect();
        Ok(refusals.iter().any(Option::is_some).then_some(refusals))
    }

    /// On a cluster node, fails unless every SKU of `sku_ids` is in a range this node holds now
    /// (in the database, under a share lock held to the end of `tx`): an activation bumps the
    /// SKU's epoch, which must never happen on a node that lost the range (it would fence out
    /// the owner's live actor).
    async fn fence_activation(&self, tx: &mut AnyConnection, sku_ids: &[SkuId]) -> Result<(), StoreError> {
        let Some(ownership) = &self.fence else { return Ok(()) };
        let ranges: BTreeSet<RangeId> = sku_ids.iter().map(|id| Key::sku(*id).range()).collect();
        let held = sql_cluster::fence(tx, ownership.node_id(), &ranges).await?;
        match ranges.iter().find(|range| ownership.epoch(**range).is_none_or(|epoch| held.get(range) != Some(&epoch))) {
            None => Ok(()),
            Some(range) => Err(StoreError::NotOwner(ownership.not_owner(*range))),
        }
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
        coupon_id: row.try_get::<Option<i64>, _>("coupon_id")?.map(CouponId::new),
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
            "SELECT order_id, sku_id, name, price_cents, quantity, pay_cents, limit_counted FROM trade_order_item \
             WHERE order_id IN (",
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
                limit_counted: item.try_get::<i64, _>("limit_counted")? != 0,
            });
        }
        rows.iter().zip(ids).map(|(row, id)| order_from_row(row, items.remove(&id).unwrap_or_default())).collect()
    }
}

pub(super) fn payment_from_row(row: &AnyRow) -> Result<Payment, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Payment {
        out_trade_no: row.try_get("out_trade_no")?,
        order_id: OrderId::new(row.try_get("order_id")?),
        amount_cents: Cents::new(row.try_get("amount_cents")?),
        channel: row.try_get("channel")?,
        status: PaymentStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("payment status {status}")))?,
    })
}

/// Tries of one batch's transaction when the database rolls it back as a deadlock's victim.
const COMMIT_ATTEMPTS_MAX: u32 = 3;

/// Whether `error` is a serialization failure (SQLSTATE 40001: a deadlock's victim), after
/// which the database has rolled the whole transaction back.
fn rolled_back_whole(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(message) if message.contains("(40001)"))
}

impl SqlStore {
    /// One attempt at `Store::commit`, in one transaction.
    async fn commit_once(&self, changes: &[Change], now_ms: i64) -> Result<CommitReport, StoreError> {
        let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        let refused = self.refuse_lost_ranges(&mut tx, changes).await?;
        let kept: Vec<Change>;
        let changes = match &refused {
            None => changes,
            Some(refused) => {
                kept = changes.iter().zip(refused).filter(|(_, r)| r.is_none()).map(|(c, _)| c.clone()).collect();
                &kept
            }
        };
        let facts = self.read_facts(&mut tx, &Wanted::of(changes)).await?;
        let plan = decide(changes, facts, now_ms);
        write_plan(&mut tx, self.dialect, changes, &plan, now_ms).await?;
        tx.commit().await?;
        if let (Some(refused), Some(ownership)) = (&refused, &self.fence) {
            ownership.counts().fence_refused(refused.iter().filter(|r| r.is_some()).count());
        }
        let versions = plan.versions();
        let outcomes = match refused {
            None => plan.outcomes,
            Some(refused) => {
                let mut decided = plan.outcomes.into_iter();
                let outcomes: Vec<_> = refused
                    .into_iter()
                    .map(|r| match r {
                        Some(conflict) => Err(conflict),
                        None => decided.next().expect("one decided outcome per kept change"),
                    })
                    .collect();
                assert!(decided.next().is_none());
                outcomes
            }
        };
        Ok(CommitReport { versions, outcomes })
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
            "INSERT INTO inventory (sku_id, name, price_cents, total, available, reserved, sold, version, epoch, \
             sale_price_cents, sale_starts_at, sale_ends_at, per_user_limit, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, ?, ?, ?, ?, ?, ?)",
        )
        .bind(sku.sku_id.get())
        .bind(sku.name.clone())
        .bind(sku.price_cents.get())
        .bind(sku.total)
        .bind(sku.total)
        .bind(sku.sale.price_cents.map(Cents::get))
        .bind(sku.sale.starts_at_ms)
        .bind(sku.sale.ends_at_ms)
        .bind(sku.sale.per_user_limit)
        .bind(sku.created_at_ms)
        .bind(sku.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn activate_skus(&self, sku_ids: &[SkuId]) -> Result<Vec<Option<SkuState>>, StoreError> {
        if sku_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = sku_ids.iter().map(|id| id.get()).collect();
        let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        self.fence_activation(&mut tx, sku_ids).await?;
        let mut states: HashMap<i64, SkuState> = HashMap::with_capacity(ids.len());
        for chunk in statements(&ids, ROWS_PER_STATEMENT_MAX) {
            let mut bump = QueryBuilder::<Any>::new("UPDATE inventory SET epoch = epoch + 1 WHERE sku_id IN ");
            push_list(&mut bump, chunk.iter().copied());
            bump.build().execute(&mut *tx).await?;
            let mut select = QueryBuilder::<Any>::new(
                "SELECT sku_id, name, price_cents, total, available, reserved, sold, version, epoch, \
                 sale_price_cents, sale_starts_at, sale_ends_at, per_user_limit FROM inventory WHERE sku_id IN ",
            );
            push_list(&mut select, chunk.iter().copied());
            for row in select.build().fetch_all(&mut *tx).await? {
                let sku_id = SkuId::new(row.try_get("sku_id")?);
                let state = SkuState {
                    info: SkuInfo {
                        sku_id,
                        name: row.try_get("name")?,
                        price_cents: Cents::new(row.try_get("price_cents")?),
                        sale: sale_from_row(&row)?,
                    },
                    counters: counters_from_row(&row)?,
                    version: row.try_get("version")?,
                    epoch: row.try_get("epoch")?,
                    reservations: Vec::new(),
                };
                states.insert(sku_id.get(), state);
            }
            let mut leases = QueryBuilder::<Any>::new(
                "SELECT sku_id, order_id, quantity, expires_at FROM inventory_reservation WHERE status = ",
            );
            leases.push_bind(ReservationStatus::Reserved.as_str()).push(" AND sku_id IN ");
            push_list(&mut leases, chunk.iter().copied());
            for row in leases.build().fetch_all(&mut *tx).await? {
                let sku_id: i64 = row.try_get("sku_id")?;
                let reservation =
                    Reservation { quantity: row.try_get("quantity")?, expires_at_ms: row.try_get("expires_at")? };
                if let Some(state) = states.get_mut(&sku_id) {
                    state.reservations.push((OrderId::new(row.try_get("order_id")?), reservation));
                }
            }
        }
        tx.commit().await?;
        Ok(ids.iter().map(|id| states.remove(id)).collect())
    }

    async fn load_users(&self, user_ids: &[UserId], per_user_max: usize) -> Result<Vec<UserState>, StoreError> {
        let mut states: HashMap<i64, UserState> = HashMap::new();
        for chunk in statements(user_ids, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new(
                "SELECT user_id, idempotency_key, id, request_hash FROM (SELECT user_id, idempotency_key, id, \
                 request_hash, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id DESC) AS newest \
                 FROM trade_order WHERE user_id IN ",
            );
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(") recent WHERE newest <= ").push_bind(per_user_max as i64);
            select.push(" ORDER BY user_id, id DESC");
            for row in select.build().fetch_all(&self.pool).await? {
                states.entry(row.try_get("user_id")?).or_default().recent.push(RecentKey {
                    idempotency_key: row.try_get("idempotency_key")?,
                    order_id: OrderId::new(row.try_get("id")?),
                    request_hash: row.try_get("request_hash")?,
                });
            }
        }
        self.load_user_promotions(user_ids, &mut states).await?;
        self.load_user_lessons(user_ids, &mut states).await?;
        Ok(user_ids.iter().map(|id| states.remove(&id.get()).unwrap_or_default()).collect())
    }

    async fn create_template(&self, template: &NewTemplate) -> Result<(), StoreError> {
        self.insert_template(template).await
    }

    async fn load_templates(&self, template_ids: &[TemplateId]) -> Result<Vec<Option<TemplateState>>, StoreError> {
        self.select_templates(template_ids).await
    }

    async fn find_coupon(&self, coupon_id: CouponId) -> Result<Option<Coupon>, StoreError> {
        self.select_coupon(coupon_id).await
    }

    async fn list_coupons(
        &self,
        user_id: UserId,
        status: Option<CouponStatus>,
        limit: u32,
    ) -> Result<Vec<Coupon>, StoreError> {
        self.select_coupons(user_id, status, limit).await
    }

    async fn commit(&self, changes: &[Change], now_ms: i64) -> Result<CommitReport, StoreError> {
        if changes.is_empty() {
            return Ok(CommitReport::default());
        }
        let mut attempt = 1;
        loop {
            match self.commit_once(changes, now_ms).await {
                // The database chose this batch as a deadlock's victim and rolled it back whole
                // (another node's batch on the same rows): nothing of it is written, so it is
                // run again, a bounded number of times.
                Err(error) if attempt < COMMIT_ATTEMPTS_MAX && rolled_back_whole(&error) => {
                    tracing::debug!(attempt, %error, "batch rolled back by a deadlock; running it again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
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

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError> {
        let row = sqlx::query(
            "SELECT out_trade_no, order_id, amount_cents, channel, status FROM payment WHERE out_trade_no = ?",
        )
        .bind(out_trade_no.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
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

    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, UserId, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, user_id, pay_deadline FROM trade_order WHERE status = ?")
            .bind(OrderStatus::PendingPayment.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    OrderId::new(row.try_get("id")?),
                    UserId::new(row.try_get("user_id")?),
                    row.try_get("pay_deadline")?,
                ))
            })
            .collect()
    }

    async fn unsettled_leases(&self) -> Result<Vec<UnsettledLease>, StoreError> {
        // The WHERE clause is `domain::lease::settled_lease_statuses` negated: a lease with no
        // order that is still open, or a lease whose status is not one its order's allows.
        let mut select = QueryBuilder::<Any>::new(format!("{UNSETTLED_SELECT} WHERE (o.id IS NULL AND r.status = "));
        select.push_bind(ReservationStatus::Reserved.as_str()).push(")");
        for status in OrderStatus::ALL {
            select.push(" OR (o.status = ").push_bind(status.as_str()).push(" AND r.status NOT IN ");
            push_list(&mut select, settled_lease_statuses(status).iter().map(|s| s.as_str()));
            select.push(")");
        }
        let rows = select.build().fetch_all(&self.pool).await?;
        rows.iter().map(unsettled_from_row).collect()
    }

    async fn leases_due(
        &self,
        now_ms: i64,
        after: Option<(SkuId, OrderId)>,
        limit: u32,
    ) -> Result<Vec<UnsettledLease>, StoreError> {
        // `domain::lease::lease_due` and the repairs a pass can make through the SKU actors:
        // open leases under a settled order or under none once expired, sold ones under a
        // refunded order.
        let mut select = QueryBuilder::<Any>::new(format!("{UNSETTLED_SELECT} WHERE ((r.status = "));
        select.push_bind(ReservationStatus::Reserved.as_str());
        select.push(" AND ((o.id IS NULL AND r.expires_at <= ").push_bind(now_ms);
        select.push(") OR o.status <> ").push_bind(OrderStatus::PendingPayment.as_str());
        select.push(")) OR (r.status = ").push_bind(ReservationStatus::Confirmed.as_str());
        select.push(" AND o.status = ").push_bind(OrderStatus::Refunded.as_str()).push("))");
        if let Some((sku_id, order_id)) = after {
            select.push(" AND (r.sku_id > ").push_bind(sku_id.get());
            select.push(" OR (r.sku_id = ").push_bind(sku_id.get());
            select.push(" AND r.order_id > ").push_bind(order_id.get()).push("))");
        }
        select.push(" ORDER BY r.sku_id, r.order_id LIMIT ").push_bind(i64::from(limit));
        let rows = select.build().fetch_all(&self.pool).await?;
        rows.iter().map(unsettled_from_row).collect()
    }

    async fn unpublished_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.select_unpublished(limit).await
    }

    async fn mark_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
        self.update_published(ids, at_ms).await
    }

    async fn claim_unpublished(&self, limit: u32) -> Result<Box<dyn EventClaim + '_>, StoreError> {
        self.claim_events(limit).await
    }

    async fn prune_published(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.delete_published(before_ms, limit).await
    }

    async fn list_payments(
        &self,
        status: PaymentStatus,
        after: Option<PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.select_payments(status, after, limit).await
    }
}

/// A lease with its order's status, as the repairs read it.
const UNSETTLED_SELECT: &str = "SELECT r.sku_id, r.order_id, r.quantity, r.expires_at, r.status, \
       o.status AS order_status, \
       (SELECT COUNT(*) FROM order_status_log l WHERE l.order_id = r.order_id \
          AND l.from_status = 'paid' AND l.to_status = 'refunded') AS refunded_from_paid \
     FROM inventory_reservation r LEFT JOIN trade_order o ON o.id = r.order_id";

fn unsettled_from_row(row: &AnyRow) -> Result<UnsettledLease, StoreError> {
    let status: String = row.try_get("status")?;
    let order_status: Option<String> = row.try_get("order_status")?;
    let refunded_from_paid: i64 = row.try_get("refunded_from_paid")?;
    Ok(UnsettledLease {
        sku_id: SkuId::new(row.try_get("sku_id")?),
        order_id: OrderId::new(row.try_get("order_id")?),
        quantity: row.try_get("quantity")?,
        expires_at_ms: row.try_get("expires_at")?,
        status: ReservationStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("reservation status {status}")))?,
        order_status: order_status.as_deref().and_then(OrderStatus::parse),
        refunded_from_paid: refunded_from_paid > 0,
    })
}

fn counters_from_row(row: &AnyRow) -> Result<Counters, sqlx::Error> {
    Ok(Counters {
        total: row.try_get("total")?,
        available: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        sold: row.try_get("sold")?,
    })
}

impl SqlStore {
    /// Locks and reads everything `wanted` names, inside the batch's transaction.
    async fn read_facts(&self, tx: &mut AnyConnection, wanted: &Wanted) -> Result<Facts, StoreError> {
        let mut facts = Facts::default();
        let lock = self.dialect.lock_rows();
        for chunk in statements(&wanted.skus, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new(
                "SELECT sku_id, epoch, version, total, available, reserved, sold FROM inventory WHERE sku_id IN ",
            );
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let row_facts = SkuRow {
                    epoch: row.try_get("epoch")?,
                    version: row.try_get("version")?,
                    counters: counters_from_row(&row)?,
                };
                facts.skus.insert(SkuId::new(row.try_get("sku_id")?), row_facts);
            }
        }
        for chunk in statements(&wanted.orders, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new("SELECT id, status, version FROM trade_order WHERE id IN ");
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let status: String = row.try_get("status")?;
                let status =
                    OrderStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("order status {status}")))?;
                facts.orders.insert(OrderId::new(row.try_get("id")?), (status, row.try_get("version")?));
            }
        }
        for chunk in statements(&wanted.keys, ROWS_PER_STATEMENT_MAX) {
            // Exact pairs, so the unique index answers each with a point look-up. Not locked:
            // only this node's pipeline inserts orders, and the unique key settles the rest.
            let mut select = QueryBuilder::<Any>::new("SELECT user_id, idempotency_key FROM trade_order WHERE ");
            for (n, (user_id, key)) in chunk.iter().enumerate() {
                if n > 0 {
                    select.push(" OR ");
                }
                select.push("(user_id = ").push_bind(user_id.get());
                select.push(" AND idempotency_key = ").push_bind(key.clone()).push(")");
            }
            for row in select.build().fetch_all(&mut *tx).await? {
                facts.keys.insert((UserId::new(row.try_get("user_id")?), row.try_get::<String, _>("idempotency_key")?));
            }
        }
        for chunk in statements(&wanted.payments, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new("SELECT out_trade_no FROM payment WHERE out_trade_no IN ");
            push_list(&mut select, chunk.iter().cloned());
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                facts.payments.insert(row.try_get("out_trade_no")?);
            }
        }
        let lease_orders: Vec<i64> =
            wanted.leases.iter().map(|(_, order_id)| order_id.get()).collect::<BTreeSet<_>>().into_iter().collect();
        for chunk in statements(&lease_orders, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new(
                "SELECT sku_id, order_id, status FROM inventory_reservation WHERE order_id IN ",
            );
            push_list(&mut select, chunk.iter().copied());
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let status: String = row.try_get("status")?;
                let status = ReservationStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("reservation status {status}")))?;
                let key = (SkuId::new(row.try_get("sku_id")?), OrderId::new(row.try_get("order_id")?));
                facts.leases.insert(key, status);
            }
        }
        self.read_promotion_facts(tx, wanted, &mut facts).await?;
        self.read_lesson_facts(tx, wanted, &mut facts).await?;
        Ok(facts)
    }
}

/// Writes the accepted changes of `plan`: a fixed number of statements per table.
async fn write_plan(
    tx: &mut AnyConnection,
    dialect: Dialect,
    changes: &[Change],
    plan: &Plan,
    now_ms: i64,
) -> Result<(), StoreError> {
    let accepted: Vec<&Change> = plan.accepted(changes).collect();
    let orders: Vec<&Order> = accepted.iter().filter_map(|c| c.order.as_ref()).collect();
    insert_rows(tx, &format!("INSERT INTO trade_order ({ORDER_COLUMNS}, updated_at)"), &orders, |row, order| {
        order.assert_amounts();
        row.push_bind(order.id.get())
            .push_bind(order.user_id.get())
            .push_bind(order.status.as_str())
            .push_bind(order.total_cents.get())
            .push_bind(order.discount_cents.get())
            .push_bind(order.pay_cents.get())
            .push_bind(order.coupon_id.map(CouponId::get))
            .push_bind(order.idempotency_key.clone())
            .push_bind(order.request_hash.clone())
            .push_bind(order.pay_deadline_ms)
            .push_bind(order.version)
            .push_bind(order.created_at_ms)
            .push_bind(order.created_at_ms);
    })
    .await?;
    let items: Vec<(OrderId, usize, &OrderItem)> =
        orders.iter().flat_map(|o| o.items.iter().enumerate().map(move |(n, item)| (o.id, n, item))).collect();
    insert_rows(
        tx,
        "INSERT INTO trade_order_item (order_id, line_no, sku_id, name, price_cents, quantity, pay_cents, limit_counted)",
        &items,
        |row, (order_id, line_no, item)| {
            row.push_bind(order_id.get())
                .push_bind(*line_no as i64)
                .push_bind(item.sku_id.get())
                .push_bind(item.name.clone())
                .push_bind(item.price_cents.get())
                .push_bind(item.quantity)
                .push_bind(item.pay_cents.get())
                .push_bind(i64::from(item.limit_counted));
        },
    )
    .await?;

    let transitions: Vec<_> = accepted.iter().filter_map(|c| c.transition.as_ref()).collect();
    for chunk in statements(&transitions, ROWS_PER_STATEMENT_MAX) {
        let mut update = QueryBuilder::<Any>::new("UPDATE trade_order SET status = CASE id");
        for t in chunk {
            assert!(t.from.can_become(t.to), "{t:?}");
            update.push(" WHEN ").push_bind(t.order_id.get()).push(" THEN ").push_bind(t.to.as_str());
        }
        update.push(" END, version = version + 1, updated_at = ").push_bind(now_ms);
        update.push(" WHERE id IN ");
        push_list(&mut update, chunk.iter().map(|t| t.order_id.get()));
        let result = update.build().execute(&mut *tx).await?;
        expect_rows(result.rows_affected(), chunk.len(), "order transitions")?;
    }
    // The status log (`domain::order::log_entries`), then the event of each entry (the
    // transactional outbox), in the same order, and those of kept payments.
    let log: Vec<StatusLogEntry> = outbox::log_entries(&accepted).collect();
    insert_rows(
        tx,
        "INSERT INTO order_status_log (order_id, from_status, to_status, version, created_at)",
        &log,
        |row, entry| {
            row.push_bind(entry.order_id().get())
                .push_bind(entry.from().map(OrderStatus::as_str))
                .push_bind(entry.to().as_str())
                .push_bind(entry.version())
                .push_bind(entry.at_ms());
        },
    )
    .await?;
    write_events(tx, &log, &accepted, now_ms).await?;

    let payments: Vec<&Payment> = accepted.iter().filter_map(|c| c.payment.as_ref()).collect();
    insert_rows(
        tx,
        "INSERT INTO payment (out_trade_no, order_id, amount_cents, channel, status, created_at, updated_at)",
        &payments,
        |row, payment| {
            row.push_bind(payment.out_trade_no.clone())
                .push_bind(payment.order_id.get())
                .push_bind(payment.amount_cents.get())
                .push_bind(payment.channel.clone())
                .push_bind(payment.status.as_str())
                .push_bind(now_ms)
                .push_bind(now_ms);
        },
    )
    .await?;
    let refunded: Vec<i64> = transitions.iter().filter(|t| t.refund_payment).map(|t| t.order_id.get()).collect();
    for chunk in statements(&refunded, ROWS_PER_STATEMENT_MAX) {
        let mut update = QueryBuilder::<Any>::new("UPDATE payment SET status = ");
        update.push_bind(PaymentStatus::Refunded.as_str());
        update.push(", updated_at = ").push_bind(now_ms);
        update.push(" WHERE status = ").push_bind(PaymentStatus::Paid.as_str());
        update.push(" AND order_id IN ");
        push_list(&mut update, chunk.iter().copied());
        update.build().execute(&mut *tx).await?;
    }

    write_leases(tx, &accepted, now_ms).await?;
    write_promotion(tx, &accepted, plan, now_ms).await?;
    write_lessons(tx, dialect, plan).await?;
    write_counters(tx, plan, now_ms).await
}

/// One counter of a SKU, picked by column.
type CounterOf = fn(&Counters) -> i64;

/// New reservation rows in one insert; moves grouped by (from, to), each checked to find
/// every row it names in the status it expects (the actors and the database must agree).
async fn write_leases(tx: &mut AnyConnection, accepted: &[&Change], now_ms: i64) -> Result<(), StoreError> {
    let leases: Vec<(SkuId, &LeaseWrite)> =
        accepted.iter().flat_map(|c| c.skus.iter().filter_map(|e| e.lease.as_ref().map(|l| (e.sku_id, l)))).collect();
    let new_rows: Vec<&(SkuId, &LeaseWrite)> = leases.iter().filter(|(_, lease)| lease.from.is_none()).collect();
    insert_rows(
        tx,
        "INSERT INTO inventory_reservation (sku_id, order_id, quantity, status, expires_at, created_at, updated_at)",
        &new_rows,
        |row, (sku_id, lease)| {
            row.push_bind(sku_id.get())
                .push_bind(lease.order_id.get())
                .push_bind(lease.quantity)
                .push_bind(lease.to.as_str())
                .push_bind(lease.expires_at_ms)
                .push_bind(now_ms)
                .push_bind(now_ms);
        },
    )
    .await?;
    let mut moves: BTreeMap<(ReservationStatus, ReservationStatus), Vec<(i64, i64)>> = BTreeMap::new();
    for (sku_id, lease) in &leases {
        if let Some(from) = lease.from {
            assert_ne!(from, lease.to, "a lease move changes the status");
            moves.entry((from, lease.to)).or_default().push((sku_id.get(), lease.order_id.get()));
        }
    }
    for ((from, to), rows) in moves {
        for chunk in statements(&rows, ROWS_PER_STATEMENT_MAX) {
            let mut update = QueryBuilder::<Any>::new("UPDATE inventory_reservation SET status = ");
            update.push_bind(to.as_str());
            update.push(", updated_at = ").push_bind(now_ms);
            update.push(" WHERE status = ").push_bind(from.as_str());
            // The order id narrows by index; the pairs name the exact rows.
            update.push(" AND order_id IN ");
            push_list(&mut update, chunk.iter().map(|(_, order_id)| *order_id));
            update.push(" AND ");
            push_pairs(&mut update, ("sku_id", "order_id"), chunk);
            let result = update.build().execute(&mut *tx).await?;
            let what = format!("reservations to move {} -> {}", from.as_str(), to.as_str());
            expect_rows(result.rows_affected(), chunk.len(), &what)?;
        }
    }
    Ok(())
}

/// Every touched SKU's counters as the plan left them, its version bumped; one statement per
/// `ROWS_PER_STATEMENT_MAX` SKUs. The rows were read under lock, so the values are exact.
async fn write_counters(tx: &mut AnyConnection, plan: &Plan, now_ms: i64) -> Result<(), StoreError> {
    let skus: Vec<(SkuId, Counters)> = plan.skus.iter().map(|(sku_id, (_, after))| (*sku_id, *after)).collect();
    for chunk in statements(&skus, ROWS_PER_STATEMENT_MAX / 4) {
        let mut update = QueryBuilder::<Any>::new("UPDATE inventory SET ");
        let columns: [(&str, CounterOf); 4] = [
            ("total", |c| c.total),
            ("available", |c| c.available),
            ("reserved", |c| c.reserved),
            ("sold", |c| c.sold),
        ];
        for (column, value) in columns {
            update.push(column).push(" = CASE sku_id");
            for (sku_id, after) in chunk {
                assert!(after.is_balanced());
                update.push(" WHEN ").push_bind(sku_id.get()).push(" THEN ").push_bind(value(after));
            }
            update.push(" END, ");
        }
        update.push("version = version + 1, updated_at = ").push_bind(now_ms);
        update.push(" WHERE sku_id IN ");
        push_list(&mut update, chunk.iter().map(|(sku_id, _)| sku_id.get()));
        let result = update.build().execute(&mut *tx).await?;
        expect_rows(result.rows_affected(), chunk.len(), "sku counters")?;
    }
    Ok(())
}

/// The database and the plan must agree on how many rows a statement touched.
pub(super) fn expect_rows(affected: u64, expected: usize, what: &str) -> Result<(), StoreError> {
    if affected == expected as u64 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("{what}: {affected} of {expected} rows were as expected")))
    }
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn statements_have_power_of_two_sizes_and_cover_every_row() {
        let rows: Vec<u32> = (0..1_300).collect();
        let sizes: Vec<usize> = statements(&rows, 512).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![512, 512, 256, 16, 4]);
        assert_eq!(statements(&rows, 512).flatten().copied().collect::<Vec<_>>(), rows);
        assert_eq!(statements(&rows[..177], 512).map(<[u32]>::len).collect::<Vec<_>>(), vec![128, 32, 16, 1]);
        assert_eq!(statements(&rows[..0], 512).count(), 0);
    }
}
