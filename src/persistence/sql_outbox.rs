//! The SQL of the order-event outbox and of the admin's payment list, shared by MariaDB and
//! SQLite like `sql.rs`: the multi-row insert of a batch's events (inside the batch's
//! transaction), the relay's claim of unpublished events and its mark, the pruning of old
//! published events, and payments by status.
//!
//! The relay's read is one index range: `order_event_unpublished` is `(published_at, id)` on
//! MariaDB and a partial index on `id WHERE published_at IS NULL` on SQLite, so finding the
//! oldest unpublished rows costs the same however many published rows the table holds.
//!
//! Guarantees:
//! - On MariaDB a claim is a READ COMMITTED transaction that locks the rows it read
//!   (`FOR UPDATE SKIP LOCKED`) until its mark commits: the relays of several nodes claim
//!   disjoint rows, so in normal operation each event is published once. READ COMMITTED takes
//!   no gap locks, so the write pipeline's inserts of new events never wait on a claim. A
//!   claim dropped (a failed publish, a killed process) rolls back: its rows stay unpublished.
//! - On SQLite (one node, one writer) a claim is a plain read (`outbox::UnlockedClaim`).
//! - Pruning deletes only rows whose `published_at` is set and older than the cutoff.

use super::outbox::{self, EventClaim, EventKind, StoredEvent, UnlockedClaim};
use super::sql::{insert_rows, payment_from_row, push_list, statements, Dialect, SqlStore, ROWS_PER_STATEMENT_MAX};
use super::{Change, PaymentCursor, PaymentRecord, PaymentStatus, StoreError};
use crate::domain::order::StatusLogEntry;
use crate::domain::OrderId;
use async_trait::async_trait;
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyConnection, QueryBuilder, Row, Transaction};

/// Starts a claim's transaction on MariaDB: READ COMMITTED, so its locking read takes record
/// locks only (no gap locks that would hold back the inserts of new events).
const BEGIN_CLAIM_MYSQL: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

/// Writes the events of a batch inside its transaction: one per status-log entry of `log`
/// (`outbox::log_entries`), then one per payment of `accepted` kept for refund. One multi-row
/// statement per `ROWS_PER_STATEMENT_MAX` events; each event allocates only its body.
pub(super) async fn write_events(
    tx: &mut AnyConnection,
    log: &[StatusLogEntry<'_>],
    accepted: &[&Change],
    now_ms: i64,
) -> Result<(), StoreError> {
    insert_rows(tx, "INSERT INTO order_event (order_id, kind, body, created_at)", log, |row, entry| {
        row.push_bind(entry.order_id().get())
            .push_bind(EventKind::of(entry).as_str())
            .push_bind(outbox::entry_body(entry))
            .push_bind(entry.at_ms());
    })
    .await?;
    let kept: Vec<_> = outbox::kept_payments(accepted).collect();
    insert_rows(tx, "INSERT INTO order_event (order_id, kind, body, created_at)", &kept, |row, payment| {
        row.push_bind(payment.order_id.get())
            .push_bind(EventKind::RefundRequired.as_str())
            .push_bind(outbox::refund_required_body(payment, now_ms))
            .push_bind(now_ms);
    })
    .await
}

/// A claim on MariaDB: the transaction holding the claimed rows' locks.
struct LockedClaim {
    tx: Transaction<'static, Any>,
    events: Vec<StoredEvent>,
}

#[async_trait]
impl EventClaim for LockedClaim {
    fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    async fn mark_published(mut self: Box<Self>, at_ms: i64) -> Result<u64, StoreError> {
        let ids: Vec<i64> = self.events.iter().map(|event| event.id).collect();
        let marked = update_published(&mut self.tx, &ids, at_ms).await?;
        self.tx.commit().await?;
        // The rows were locked since they were read unpublished: nobody else marked them.
        assert_eq!(marked, ids.len() as u64, "a claimed event was marked by another relay");
        Ok(marked)
    }
}

fn event_from_row(row: &AnyRow) -> Result<StoredEvent, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        order_id: OrderId::new(row.try_get("order_id")?),
        kind: EventKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("event kind {kind}")))?,
        body: row.try_get("body")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

/// Marks `ids` published at `at_ms` on `connection`; how many were unpublished until now.
async fn update_published(connection: &mut AnyConnection, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
    let mut marked = 0;
    for chunk in statements(ids, ROWS_PER_STATEMENT_MAX) {
        let mut update = QueryBuilder::<Any>::new("UPDATE order_event SET published_at = ");
        update.push_bind(at_ms);
        update.push(" WHERE published_at IS NULL AND id IN ");
        push_list(&mut update, chunk.iter().copied());
        marked += update.build().execute(&mut *connection).await?.rows_affected();
    }
    assert!(marked <= ids.len() as u64);
    Ok(marked)
}

/// The oldest unpublished events, at most the bound limit (MariaDB's claim appends its lock).
const SELECT_UNPUBLISHED: &str =
    "SELECT id, order_id, kind, body, created_at FROM order_event WHERE published_at IS NULL ORDER BY id LIMIT ?";

fn checked_events(rows: &[AnyRow], limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let events: Vec<StoredEvent> = rows.iter().map(event_from_row).collect::<Result<_, StoreError>>()?;
    assert!(events.len() <= limit as usize);
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id), "unpublished events come oldest first");
    Ok(events)
}

impl SqlStore {
    pub(super) async fn select_unpublished(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(SELECT_UNPUBLISHED).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        checked_events(&rows, limit)
    }

    pub(super) async fn update_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
        let mut connection = self.pool.acquire().await?;
        update_published(&mut connection, ids, at_ms).await
    }

    pub(super) async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventClaim + '_>, StoreError> {
        match self.dialect {
            Dialect::Sqlite => {
                Ok(Box::new(UnlockedClaim { store: self, events: self.select_unpublished(limit).await? }))
            }
            Dialect::MySql => {
                let mut tx = self.pool.begin_with(BEGIN_CLAIM_MYSQL).await?;
                let select = format!("{SELECT_UNPUBLISHED} FOR UPDATE SKIP LOCKED");
                let rows = sqlx::query(&select).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
                let events = checked_events(&rows, limit)?;
                Ok(Box::new(LockedClaim { tx, events }))
            }
        }
    }

    pub(super) async fn delete_published(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        // `published_at < ?` is false for NULL: an unpublished row never matches.
        let delete = match self.dialect {
            Dialect::MySql => "DELETE FROM order_event WHERE published_at < ? ORDER BY published_at, id LIMIT ?",
            Dialect::Sqlite => {
                "DELETE FROM order_event WHERE id IN \
                 (SELECT id FROM order_event WHERE published_at < ? ORDER BY id LIMIT ?)"
            }
        };
        let deleted = sqlx::query(delete).bind(before_ms).bind(i64::from(limit)).execute(&self.pool).await?;
        assert!(deleted.rows_affected() <= u64::from(limit));
        Ok(deleted.rows_affected())
    }

    pub(super) async fn select_payments(
        &self,
        status: PaymentStatus,
        after: Option<PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let mut select = QueryBuilder::<Any>::new(
            "SELECT out_trade_no, order_id, amount_cents, channel, status, created_at, updated_at FROM payment \
             WHERE status = ",
        );
        select.push_bind(status.as_str());
        if let Some(after) = after {
            select.push(" AND (created_at < ").push_bind(after.created_at_ms);
            select.push(" OR (created_at = ").push_bind(after.created_at_ms);
            select.push(" AND out_trade_no < ").push_bind(after.out_trade_no).push("))");
        }
        select.push(" ORDER BY created_at DESC, out_trade_no DESC LIMIT ").push_bind(i64::from(limit));
        let rows = select.build().fetch_all(&self.pool).await?;
        let records: Vec<PaymentRecord> = rows
            .iter()
            .map(|row| {
                Ok(PaymentRecord {
                    payment: payment_from_row(row)?,
                    created_at_ms: row.try_get("created_at")?,
                    updated_at_ms: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        assert!(records.iter().all(|r| r.payment.status == status), "the list holds only payments in {status:?}");
        Ok(records)
    }
}
