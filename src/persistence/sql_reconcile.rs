//! The SQL of `tianji reconcile`: the reads that feed `domain::reconcile` and the few repairs
//! it allows, shared by MariaDB and SQLite like `sql.rs`.
//!
//! Guarantees:
//! - `reconcile_facts` reads every table the rules compare inside one read-only transaction
//!   (a consistent snapshot on MariaDB at REPEATABLE READ; one read transaction on SQLite), so
//!   a server that keeps committing cannot make a consistent database look inconsistent.
//! - A repair re-reads what it repairs under the same lock the write pipeline takes (the SKU or
//!   template row), checks with the same pure rule that the stored state is still the one the
//!   difference found and still proven, and only then writes, in that transaction. A SKU's
//!   counters are written with its owner epoch and version bumped, so a running actor's next
//!   commit is fenced and the actor reloads from the repaired row.
//! - Nothing is ever deleted, and no order, payment, coupon record or purchase row is written.
//! - `open` never migrates: a database missing any of this binary's migrations is refused.

use super::sql::{Dialect, SqlStore};
use super::StoreError;
use crate::domain::coupon::CouponStatus;
use crate::domain::inventory::Counters;
use crate::domain::lease::ReservationStatus;
use crate::domain::order::OrderStatus;
use crate::domain::reconcile::{
    check_sku, CouponFacts, Facts, ItemFacts, LeaseFacts, LeaseOfSku, LessonFacts, OrderFacts, PurchaseFacts, Repair,
    SkuFacts, TemplateFacts,
};
use crate::domain::{CouponId, OrderId, SkuId, TemplateId, UserId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Executor, Row};
use std::collections::{BTreeSet, HashMap, HashSet};
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

/// The orders whose status log shows a refund from Paid (their units went back on the shelf).
const REFUNDED_FROM_PAID: &str =
    "SELECT DISTINCT order_id FROM order_status_log WHERE from_status = 'paid' AND to_status = 'refunded'";

impl SqlStore {
    /// Every fact the reconciliation rules compare, from one consistent snapshot.
    pub async fn reconcile_facts(&self) -> Result<Facts, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let begin = match self.dialect {
            Dialect::MySql => {
                // Applies to the next transaction of this connection only.
                (&mut *connection).execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
                "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
            }
            Dialect::Sqlite => "BEGIN",
        };
        let mut tx = (*connection).begin_with(begin).await?;
        let facts = read_facts(&mut tx).await?;
        tx.rollback().await?;
        Ok(facts)
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
    let rows = sqlx::query(
        "SELECT r.order_id, r.quantity, r.status, o.status AS order_status, \
           (SELECT COUNT(*) FROM order_status_log l WHERE l.order_id = r.order_id \
              AND l.from_status = 'paid' AND l.to_status = 'refunded') AS refunded_from_paid \
         FROM inventory_reservation r LEFT JOIN trade_order o ON o.id = r.order_id WHERE r.sku_id = ?",
    )
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

/// Reads every table the rules compare, inside the caller's transaction.
async fn read_facts(tx: &mut AnyConnection) -> Result<Facts, StoreError> {
    let mut facts = Facts::default();
    for row in sqlx::query(SKU_SELECT).fetch_all(&mut *tx).await? {
        facts.skus.push(sku_from_row(&row)?);
    }
    for row in
        sqlx::query("SELECT sku_id, order_id, quantity, status FROM inventory_reservation").fetch_all(&mut *tx).await?
    {
        let status: String = row.try_get("status")?;
        facts.leases.push(LeaseFacts {
            sku_id: SkuId::new(row.try_get("sku_id")?),
            order_id: OrderId::new(row.try_get("order_id")?),
            quantity: row.try_get("quantity")?,
            status: parse_status(&status, "reservation", ReservationStatus::parse)?,
        });
    }
    let refunded: BTreeSet<i64> = sqlx::query(REFUNDED_FROM_PAID)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<i64, _>("order_id"))
        .collect::<Result<_, _>>()?;
    for row in sqlx::query("SELECT id, user_id, status, coupon_id FROM trade_order").fetch_all(&mut *tx).await? {
        let id: i64 = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        facts.orders.push(OrderFacts {
            order_id: OrderId::new(id),
            user_id: UserId::new(row.try_get("user_id")?),
            status: parse_status(&status, "order", OrderStatus::parse)?,
            coupon_id: row.try_get::<Option<i64>, _>("coupon_id")?.map(CouponId::new),
            refunded_from_paid: refunded.contains(&id),
        });
    }
    for row in sqlx::query("SELECT order_id, sku_id, quantity, limit_counted FROM trade_order_item")
        .fetch_all(&mut *tx)
        .await?
    {
        facts.items.push(ItemFacts {
            order_id: OrderId::new(row.try_get("order_id")?),
            sku_id: SkuId::new(row.try_get("sku_id")?),
            quantity: row.try_get("quantity")?,
            limit_counted: row.try_get::<i64, _>("limit_counted")? != 0,
        });
    }
    for row in sqlx::query("SELECT id, total, issued, per_user_limit FROM coupon_template").fetch_all(&mut *tx).await? {
        facts.templates.push(TemplateFacts {
            template_id: TemplateId::new(row.try_get("id")?),
            total: row.try_get("total")?,
            issued: row.try_get("issued")?,
            per_user_limit: row.try_get("per_user_limit")?,
        });
    }
    for row in
        sqlx::query("SELECT id, user_id, template_id, status, order_id FROM coupon_record").fetch_all(&mut *tx).await?
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
    for row in sqlx::query("SELECT user_id, sku_id, units FROM user_sku_purchase").fetch_all(&mut *tx).await? {
        facts.purchases.push(PurchaseFacts {
            user_id: UserId::new(row.try_get("user_id")?),
            sku_id: SkuId::new(row.try_get("sku_id")?),
            units: row.try_get("units")?,
        });
    }
    for row in sqlx::query("SELECT user_id, course_id, holders FROM learning_lesson").fetch_all(&mut *tx).await? {
        facts.lessons.push(LessonFacts {
            user_id: UserId::new(row.try_get("user_id")?),
            course_id: SkuId::new(row.try_get("course_id")?),
            holders: row.try_get("holders")?,
        });
    }
    Ok(facts)
}
