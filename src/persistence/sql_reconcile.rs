//! The SQL of `tianji reconcile`: the reads that feed `domain::reconcile` and the few repairs
//! it allows, shared by MariaDB and SQLite like `sql.rs`.
//!
//! Guarantees:
//! - `FactsReader` reads every table the rules compare inside one read-only transaction (a
//!   consistent snapshot on MariaDB at REPEATABLE READ; one read transaction on SQLite), so a
//!   server that keeps committing cannot make a consistent database look inconsistent.
//! - It reads in parts, so memory follows the part, not the database: the stock facts
//!   `SKUS_PER_PART_MAX` SKUs at a time (their leases, items, the orders those name, purchase
//!   rows and lessons), then one part of the rows of SKUs that do not exist; the events
//!   `ORDERS_PER_PART_MAX` orders at a time. Templates, coupons and the orders that name a
//!   coupon are read as one part (bounded by the coupons issued, not by the orders).
//! - Each part holds everything its `domain::reconcile` check needs, so checking the parts
//!   finds what checking the whole would.
//! - A repair re-reads what it repairs under the same lock the write pipeline takes (the SKU or
//!   template row), checks with the same pure rule that the stored state is still the one the
//!   difference found and still proven, and only then writes, in that transaction. A SKU's
//!   counters are written with its owner epoch and version bumped, so a running actor's next
//!   commit is fenced and the actor reloads from the repaired row.
//! - Nothing is ever deleted, and no order, payment, coupon record, purchase row or event is
//!   written.
//! - `open` never migrates: a database missing any of this binary's migrations is refused.

use super::sql::{push_list, Dialect, SqlStore};
use super::{PaymentStatus, StoreError};
use crate::domain::coupon::CouponStatus;
use crate::domain::inventory::Counters;
use crate::domain::lease::ReservationStatus;
use crate::domain::order::{EventKind, OrderStatus};
use crate::domain::reconcile::{
    check_sku, CouponFacts, EventFacts, Facts, ItemFacts, LeaseFacts, LeaseOfSku, LessonFacts, OrderFacts,
    PurchaseFacts, Repair, SkuFacts, StepFacts, TemplateFacts,
};
use crate::domain::{CouponId, OrderId, SkuId, TemplateId, UserId};
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyConnection, Executor, QueryBuilder, Row, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repaired {
    /// Written; what was written, in one line.
    Applied(String),
    /// Not written: under lock the row was no longer as the difference found it (a server
    /// committed in between) or no longer proven; why, in one line.
    Changed(String),
}

/// Opens the database `url` names for reconciliation without migrating it. Refused (with a
/// message that says to run `tianji migrate`) when any migration of this binary is not applied.
pub async fn open(url: &str, timeout: Duration) -> anyhow::Result<SqlStore> {
    let (store, migrator) = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        (super::mysql::connect(url, false, timeout).await?, &super::mysql::MIGRATOR)
    } else if url.starts_with("sqlite:") {
        (super::sqlite::connect(url, false, timeout).await?, &super::sqlite::MIGRATOR)
    } else {
        anyhow::bail!("reconcile needs a database: TIANJI_DATABASE_URL must be mysql://... or sqlite:...");
    };
    let applied: HashSet<i64> =
        match sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 1").fetch_all(&store.pool).await {
            Ok(rows) => rows.iter().map(|row| row.try_get::<i64, _>("version")).collect::<Result<_, _>>()?,
            Err(error) => anyhow::bail!(
                "the database is not migrated (no migration table: {error}); run `tianji migrate` first, \
             reconcile never migrates"
            ),
        };
    let missing: Vec<String> = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the database lacks migrations [{}]; run `tianji migrate` first, reconcile never migrates",
        missing.join(", ")
    );
    Ok(store)
}

fn parse_status<T>(name: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(name).ok_or_else(|| StoreError::Corrupt(format!("{what} status {name:?}")))
}

fn sku_from_row(row: &AnyRow) -> Result<SkuFacts, StoreError> {
    Ok(SkuFacts {
        sku_id: SkuId::new(row.try_get("sku_id")?),
        counters: Counters {
            total: row.try_get("total")?,
            available: row.try_get("available")?,
            reserved: row.try_get("reserved")?,
            sold: row.try_get("sold")?,
        },
        version: row.try_get("version")?,
        price_cents: row.try_get("price_cents")?,
    })
}

const SKU_SELECT: &str = "SELECT sku_id, total, available, reserved, sold, version, price_cents FROM inventory";

/// The SKUs read in one part of the stock facts. Their leases, items, the orders those name,
/// purchase rows and lessons are in memory together (a hot SKU brings all its leases).
pub const SKUS_PER_PART_MAX: usize = 256;

/// The orders whose status log rows, events and kept payments are read in one part.
pub const ORDERS_PER_PART_MAX: usize = 512;

/// The number of log rows that show the order in `order_column` refunded from Paid (its units
/// went back on the shelf), as a column: the one fact `lease::lease_agrees` takes from the log.
fn refunded_from_paid(order_column: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM order_status_log l WHERE l.order_id = {order_column} \
           AND l.from_status = '{}' AND l.to_status = '{}') AS refunded_from_paid",
        OrderStatus::Paid.as_str(),
        OrderStatus::Refunded.as_str()
    )
}

impl SqlStore {
    /// Opens the consistent snapshot every part of the facts is read from.
    pub async fn reconcile_reader(&self) -> Result<FactsReader, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let begin = match self.dialect {
            Dialect::MySql => {
                // Applies to the next transaction of this connection only.
                (&mut *connection).execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
                "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
            }
            Dialect::Sqlite => "BEGIN",
        };
        // Rolled back when the reader is finished or dropped.
        let tx = Transaction::begin(connection, Some(begin.into())).await?;
        Ok(FactsReader {
            tx,
            after_sku: None,
            skus_done: false,
            strays_done: false,
            after_order: None,
            orders_done: false,
        })
    }

    /// One SKU as stored now (for a snapshot republish).
    pub async fn reconcile_sku(&self, sku_id: SkuId) -> Result<Option<SkuFacts>, StoreError> {
        let row = sqlx::query(&format!("{SKU_SELECT} WHERE sku_id = ?"))
            .bind(sku_id.get())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sku_from_row).transpose()
    }

    /// Applies a database repair (`Repair::SkuCounters` or `Repair::TemplateIssued`).
    pub async fn reconcile_repair(&self, repair: Repair, now_ms: i64) -> Result<Repaired, StoreError> {
        match repair {
            Repair::SkuCounters { sku_id, from, to } => self.repair_counters(sku_id, from, to, now_ms).await,
            Repair::TemplateIssued { template_id, from, to } => self.repair_issued(template_id, from, to, now_ms).await,
            Repair::Snapshot { .. } => Err(StoreError::Database("a snapshot is repaired in Redis".into())),
        }
    }

    fn begin_write(&self) -> &'static str {
        match self.dialect {
            Dialect::MySql => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    async fn repair_counters(
        &self,
        sku_id: SkuId,
        from: Counters,
        to: Counters,
        now_ms: i64,
    ) -> Result<Repaired, StoreError> {
        assert_eq!(from.total, to.total, "a repair never changes the total");
        assert!(to.is_balanced(), "a repair writes balanced counters");
        let mut tx = self.pool.begin_with(self.begin_write()).await?;
        // The write pipeline locks the SKU row before it reads or writes any of its leases.
        let lock = self.dialect.lock_rows();
        let row = sqlx::query(&format!("{SKU_SELECT} WHERE sku_id = ?{lock}"))
            .bind(sku_id.get())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(sku) = row.as_ref().map(sku_from_row).transpose()? else {
            return Ok(Repaired::Changed("the sku is gone".into()));
        };
        let leases = leases_of_sku(&mut tx, sku_id).await?;
        let proven = check_sku(&sku, &leases).into_iter().find_map(|d| match d.repair {
            Some(Repair::SkuCounters { from: now_from, to: now_to, .. }) => Some((now_from, now_to)),
            _ => None,
        });
        if proven != Some((from, to)) {
            tx.rollback().await?;
            return Ok(Repaired::Changed(format!(
                "stored counters or leases changed since the read (now {:?})",
                sku.counters
            )));
        }
        // From here on the repair is proven against the locked row: write it and fence the owner.
        let result = sqlx::query(
            "UPDATE inventory SET available = ?, reserved = ?, sold = ?, epoch = epoch + 1, version = version + 1, \
             updated_at = ? WHERE sku_id = ? AND version = ? AND total = ?",
        )
        .bind(to.available)
        .bind(to.reserved)
        .bind(to.sold)
        .bind(now_ms)
        .bind(sku_id.get())
        .bind(sku.version)
        .bind(to.total)
        .execute(&mut *tx)
        .await?;
        super::sql::expect_rows(result.rows_affected(), 1, "sku counters repair")?;
        tx.commit().await?;
        Ok(Repaired::Applied(format!(
            "available={},reserved={},sold={} -> available={},reserved={},sold={} (version {} -> {}, owner fenced)",
            from.available,
            from.reserved,
            from.sold,
            to.available,
            to.reserved,
            to.sold,
            sku.version,
            sku.version + 1
        )))
    }

    async fn repair_issued(
        &self,
        template_id: TemplateId,
        from: i64,
        to: i64,
        now_ms: i64,
    ) -> Result<Repaired, StoreError> {
        // A template has no epoch: lowering `issued` would leave a running actor with the
        // higher count (see `Repair::fenced_against_live_nodes`), so only raising is applied.
        assert!(to >= from, "issued is only raised while nodes may run ({from} -> {to})");
        let mut tx = self.pool.begin_with(self.begin_write()).await?;
        // Claims lock the template row before they count or insert records.
        let lock = self.dialect.lock_rows();
        let row = sqlx::query(&format!("SELECT total, issued FROM coupon_template WHERE id = ?{lock}"))
            .bind(template_id.get())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(Repaired::Changed("the template is gone".into())) };
        let (total, issued): (i64, i64) = (row.try_get("total")?, row.try_get("issued")?);
        let records: i64 = sqlx::query("SELECT COUNT(*) AS n FROM coupon_record WHERE template_id = ?")
            .bind(template_id.get())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if (issued, records) != (from, to) || records > total {
            tx.rollback().await?;
            return Ok(Repaired::Changed(format!("now issued={issued},records={records},total={total}")));
        }
        sqlx::query("UPDATE coupon_template SET issued = ?, updated_at = ? WHERE id = ? AND issued = ?")
            .bind(to)
            .bind(now_ms)
            .bind(template_id.get())
            .bind(from)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Repaired::Applied(format!("issued={from} -> issued={to}")))
    }
}

/// The leases of one SKU with their orders and items, inside the repair's transaction.
async fn leases_of_sku(tx: &mut AnyConnection, sku_id: SkuId) -> Result<Vec<LeaseOfSku>, StoreError> {
    let mut items: HashMap<i64, i64> = HashMap::new();
    for row in sqlx::query("SELECT order_id, quantity FROM trade_order_item WHERE sku_id = ?")
        .bind(sku_id.get())
        .fetch_all(&mut *tx)
        .await?
    {
        *items.entry(row.try_get("order_id")?).or_insert(0) += row.try_get::<i64, _>("quantity")?;
    }
    let rows = sqlx::query(&format!(
        "SELECT r.order_id, r.quantity, r.status, o.status AS order_status, {} \
         FROM inventory_reservation r LEFT JOIN trade_order o ON o.id = r.order_id WHERE r.sku_id = ?",
        refunded_from_paid("r.order_id")
    ))
    .bind(sku_id.get())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let order_id: i64 = row.try_get("order_id")?;
            let status: String = row.try_get("status")?;
            let order: Option<String> = row.try_get("order_status")?;
            Ok(LeaseOfSku {
                order_id: OrderId::new(order_id),
                quantity: row.try_get("quantity")?,
                status: parse_status(&status, "reservation", ReservationStatus::parse)?,
                order: order.as_deref().map(|s| parse_status(s, "order", OrderStatus::parse)).transpose()?,
                refunded_from_paid: row.try_get::<i64, _>("refunded_from_paid")? > 0,
                item_quantity: items.get(&order_id).copied(),
            })
        })
        .collect()
}

/// The facts of one consistent snapshot, a part at a time: every stock part, the promotions,
/// every events part (each is read once; the order of the calls does not matter).
pub struct FactsReader {
    tx: Transaction<'static, Any>,
    /// The last SKU id of the stock part read before.
    after_sku: Option<i64>,
    skus_done: bool,
    strays_done: bool,
    /// The last order id of the events part read before.
    after_order: Option<i64>,
    orders_done: bool,
}

/// The SKUs a stock part is about: some that exist, or every one that does not.
#[derive(Clone, Copy)]
enum SkuPart<'a> {
    Skus(&'a [i64]),
    Missing,
}

impl SkuPart<'_> {
    /// Appends the condition that `column` names a SKU of this part.
    fn push(self, select: &mut QueryBuilder<'static, Any>, column: &str) {
        match self {
            SkuPart::Skus(ids) => {
                select.push(format!("{column} IN "));
                push_list(select, ids.to_vec());
            }
            SkuPart::Missing => {
                select.push(format!("NOT EXISTS (SELECT 1 FROM inventory i WHERE i.sku_id = {column})"));
            }
        }
    }
}

impl FactsReader {
    /// The next part of the stock facts (`skus`, `leases`, `items`, `orders`, `purchases`,
    /// `lessons`) for `domain::reconcile::check_stock`: up to `SKUS_PER_PART_MAX` SKUs in id
    /// order, then the rows of SKUs that do not exist (with no `skus`); `None` after that.
    pub async fn next_stock_part(&mut self) -> Result<Option<Facts>, StoreError> {
        if self.strays_done {
            return Ok(None);
        }
        if !self.skus_done {
            let mut select = QueryBuilder::<Any>::new(format!("{SKU_SELECT} WHERE sku_id > "));
            select.push_bind(self.after_sku.unwrap_or(i64::MIN));
            select.push(" ORDER BY sku_id LIMIT ").push_bind(SKUS_PER_PART_MAX as i64);
            let skus: Vec<SkuFacts> =
                select.build().fetch_all(&mut *self.tx).await?.iter().map(sku_from_row).collect::<Result<_, _>>()?;
            assert!(skus.len() <= SKUS_PER_PART_MAX);
            self.skus_done = skus.len() < SKUS_PER_PART_MAX;
            if let Some(last) = skus.last() {
                let last = last.sku_id.get();
                assert!(self.after_sku.is_none_or(|after| after < last), "stock parts move forward");
                self.after_sku = Some(last);
                let ids: Vec<i64> = skus.iter().map(|sku| sku.sku_id.get()).collect();
                let mut facts = read_stock(&mut self.tx, SkuPart::Skus(&ids)).await?;
                facts.skus = skus;
                return Ok(Some(facts));
            }
        }
        self.strays_done = true;
        read_stock(&mut self.tx, SkuPart::Missing).await.map(Some)
    }

    /// The promotion facts (`templates`, `coupons`, and the `orders` that name a coupon or are
    /// named by one) for `domain::reconcile::check_promotions`.
    pub async fn promotions(&mut self) -> Result<Facts, StoreError> {
        let tx = &mut *self.tx;
        let mut facts = Facts::default();
        for row in
            sqlx::query("SELECT id, total, issued, per_user_limit FROM coupon_template").fetch_all(&mut *tx).await?
        {
            facts.templates.push(TemplateFacts {
                template_id: TemplateId::new(row.try_get("id")?),
                total: row.try_get("total")?,
                issued: row.try_get("issued")?,
                per_user_limit: row.try_get("per_user_limit")?,
            });
        }
        for row in sqlx::query("SELECT id, user_id, template_id, status, order_id FROM coupon_record")
            .fetch_all(&mut *tx)
            .await?
        {
            let status: String = row.try_get("status")?;
            facts.coupons.push(CouponFacts {
                coupon_id: CouponId::new(row.try_get("id")?),
                user_id: UserId::new(row.try_get("user_id")?),
                template_id: TemplateId::new(row.try_get("template_id")?),
                status: parse_status(&status, "coupon", CouponStatus::parse)?,
                order_id: row.try_get::<Option<i64>, _>("order_id")?.map(OrderId::new),
            });
        }
        let select = format!(
            "SELECT o.id, o.user_id, o.status, o.coupon_id, {} FROM trade_order o WHERE o.coupon_id IS NOT NULL \
             OR o.id IN (SELECT c.order_id FROM coupon_record c WHERE c.order_id IS NOT NULL)",
            refunded_from_paid("o.id")
        );
        facts.orders = orders_from(&sqlx::query(&select).fetch_all(&mut *tx).await?)?;
        Ok(facts)
    }

    /// The next part of the event facts (`steps`, `step_events`, `refund_events`,
    /// `refund_payments`) of up to `ORDERS_PER_PART_MAX` orders in id order, with the number
    /// of orders it covers, for `domain::reconcile::check_events`; `None` after the last.
    pub async fn next_events_part(&mut self) -> Result<Option<(usize, Facts)>, StoreError> {
        if self.orders_done {
            return Ok(None);
        }
        let tx = &mut *self.tx;
        let mut select = QueryBuilder::<Any>::new("SELECT id FROM trade_order WHERE id > ");
        select.push_bind(self.after_order.unwrap_or(i64::MIN));
        select.push(" ORDER BY id LIMIT ").push_bind(ORDERS_PER_PART_MAX as i64);
        let ids: Vec<i64> =
            select.build().fetch_all(&mut *tx).await?.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>()?;
        assert!(ids.len() <= ORDERS_PER_PART_MAX);
        self.orders_done = ids.len() < ORDERS_PER_PART_MAX;
        let Some(&last) = ids.last() else { return Ok(None) };
        self.after_order = Some(last);
        let mut facts = Facts::default();

        let mut select = QueryBuilder::<Any>::new(
            "SELECT order_id, from_status, to_status FROM order_status_log WHERE order_id IN ",
        );
        push_list(&mut select, ids.clone());
        select.push(" ORDER BY order_id, id");
        for row in select.build().fetch_all(&mut *tx).await? {
            let from: Option<String> = row.try_get("from_status")?;
            let to: String = row.try_get("to_status")?;
            let from = from.as_deref().map(|name| parse_status(name, "order", OrderStatus::parse)).transpose()?;
            let to = parse_status(&to, "order", OrderStatus::parse)?;
            if from.is_some() && to == OrderStatus::PendingPayment {
                return Err(StoreError::Corrupt(format!("a status log row from {from:?} back to pending_payment")));
            }
            facts.steps.push(StepFacts {
                order_id: OrderId::new(row.try_get("order_id")?),
                event_kind: EventKind::of_step(from, to),
            });
        }

        let mut select = QueryBuilder::<Any>::new("SELECT id, order_id, kind FROM order_event WHERE order_id IN ");
        push_list(&mut select, ids.clone());
        select.push(" ORDER BY id");
        for row in select.build().fetch_all(&mut *tx).await? {
            let name: String = row.try_get("kind")?;
            let kind = EventKind::parse(&name).ok_or_else(|| StoreError::Corrupt(format!("event kind {name:?}")))?;
            let order_id = OrderId::new(row.try_get("order_id")?);
            if kind == EventKind::RefundRequired {
                facts.refund_events.push(order_id);
            } else {
                facts.step_events.push(EventFacts { order_id, event_id: row.try_get("id")?, kind });
            }
        }

        let mut select = QueryBuilder::<Any>::new("SELECT order_id FROM payment WHERE status = ");
        select.push_bind(PaymentStatus::RefundRequired.as_str()).push(" AND order_id IN ");
        push_list(&mut select, ids.clone());
        for row in select.build().fetch_all(&mut *tx).await? {
            facts.refund_payments.push(OrderId::new(row.try_get("order_id")?));
        }
        Ok(Some((ids.len(), facts)))
    }

    /// Ends the snapshot.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Orders as `OrderFacts`, from rows of `id, user_id, status, coupon_id, refunded_from_paid`.
fn orders_from(rows: &[AnyRow]) -> Result<Vec<OrderFacts>, StoreError> {
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(OrderFacts {
                order_id: OrderId::new(row.try_get("id")?),
                user_id: UserId::new(row.try_get("user_id")?),
                status: parse_status(&status, "order", OrderStatus::parse)?,
                coupon_id: row.try_get::<Option<i64>, _>("coupon_id")?.map(CouponId::new),
                refunded_from_paid: row.try_get::<i64, _>("refunded_from_paid")? > 0,
            })
        })
        .collect()
}

/// The leases, items, orders (those the leases and items name), purchase rows and lessons of
/// the SKUs of `part`, inside the reader's transaction.
async fn read_stock(tx: &mut AnyConnection, part: SkuPart<'_>) -> Result<Facts, StoreError> {
    let mut facts = Facts::default();
    let mut select = QueryBuilder::<Any>::new(
        "SELECT r.sku_id, r.order_id, r.quantity, r.status FROM inventory_reservation r WHERE ",
    );
    part.push(&mut select, "r.sku_id");
    for row in select.build().fetch_all(&mut *tx).await? {
        let status: String = row.try_get("status")?;
        facts.leases.push(LeaseFacts {
            sku_id: SkuId::new(row.try_get("sku_id")?),
            order_id: OrderId::new(row.try_get("order_id")?),
            quantity: row.try_get("quantity")?,
            status: parse_status(&status, "reservation", ReservationStatus::parse)?,
        });
    }
    let mut select = QueryBuilder::<Any>::new(
        "SELECT t.order_id, t.sku_id, t.quantity, t.limit_counted FROM trade_order_item t WHERE ",
    );
    part.push(&mut select, "t.sku_id");
    for row in select.build().fetch_all(&mut *tx).await? {
        facts.items.push(ItemFacts {
            order_id: OrderId::new(row.try_get("order_id")?),
            sku_id: SkuId::new(row.try_get("sku_id")?),
            quantity: row.try_get("quantity")?,
            limit_counted: row.try_get::<i64, _>("limit_counted")? != 0,
        });
    }
    let mut select = QueryBuilder::<Any>::new(format!(
        "SELECT o.id, o.user_id, o.status, o.coupon_id, {} FROM trade_order o \
         WHERE o.id IN (SELECT r.order_id FROM inventory_reservation r WHERE ",
        refunded_from_paid("o.id")
    ));
    part.push(&mut select, "r.sku_id");
    select.push(") OR o.id IN (SELECT t.order_id FROM trade_order_item t WHERE ");
    part.push(&mut select, "t.sku_id");
    select.push(")");
    facts.orders = orders_from(&select.build().fetch_all(&mut *tx).await?)?;
    let mut select = QueryBuilder::<Any>::new("SELECT p.user_id, p.sku_id, p.units FROM user_sku_purchase p WHERE ");
    part.push(&mut select, "p.sku_id");
    for row in select.build().fetch_all(&mut *tx).await? {
        facts.purchases.push(PurchaseFacts {
            user_id: UserId::new(row.try_get("user_id")?),
            sku_id: SkuId::new(row.try_get("sku_id")?),
            units: row.try_get("units")?,
        });
    }
    let mut select = QueryBuilder::<Any>::new("SELECT n.user_id, n.course_id, n.holders FROM learning_lesson n WHERE ");
    part.push(&mut select, "n.course_id");
    for row in select.build().fetch_all(&mut *tx).await? {
        facts.lessons.push(LessonFacts {
            user_id: UserId::new(row.try_get("user_id")?),
            course_id: SkuId::new(row.try_get("course_id")?),
            holders: row.try_get("holders")?,
        });
    }
    Ok(facts)
}
