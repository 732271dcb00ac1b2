//! The SQL of the order-event outbox and of the admin's payment list, shared by MariaDB and
//! SQLite like `sql.rs`: the multi-row insert of a batch's events (inside the batch's
//! transaction), the relay's read of unpublished events and its mark, and payments by status.
//!
//! The relay's read is one index range: `order_event_unpublished` is `(published_at, id)` on
//! MariaDB and a partial index on `id WHERE published_at IS NULL` on SQLite, so finding the
//! oldest unpublished rows costs the same however many published rows the table holds.

use super::outbox::{self, EventKind, StoredEvent};
use super::sql::{insert_rows, payment_from_row, push_list, statements, SqlStore, ROWS_PER_STATEMENT_MAX};
use super::{Change, PaymentCursor, PaymentRecord, PaymentStatus, StoreError};
use crate::domain::OrderId;
use sqlx::any::Any;
use sqlx::{AnyConnection, QueryBuilder, Row};

/// Writes the events of the accepted changes of a batch (`outbox::new_events`): one multi-row
/// statement per `ROWS_PER_STATEMENT_MAX` events, whatever the batch holds.
pub(super) async fn write_events(tx: &mut AnyConnection, accepted: &[&Change], now_ms: i64) -> Result<(), StoreError> {
    let events = outbox::new_events(accepted, now_ms);
    insert_rows(tx, "INSERT INTO order_event (order_id, kind, body, created_at)", &events, |row, event| {
        row.push_bind(event.order_id.get())
            .push_bind(event.kind.as_str())
            .push_bind(event.body.clone())
            .push_bind(event.created_at_ms);
    })
    .await
}

impl SqlStore {
    pub(super) async fn select_unpublished(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, order_id, kind, body, created_at FROM order_event WHERE published_at IS NULL \
             ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let events: Vec<StoredEvent> = rows
            .iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(StoredEvent {
                    id: row.try_get("id")?,
                    order_id: OrderId::new(row.try_get("order_id")?),
                    kind: EventKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("event kind {kind}")))?,
                    body: row.try_get("body")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        assert!(events.len() <= limit as usize);
        assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id), "unpublished events come oldest first");
        Ok(events)
    }

    pub(super) async fn update_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
        let mut marked = 0;
        for chunk in statements(ids, ROWS_PER_STATEMENT_MAX) {
            let mut update = QueryBuilder::<Any>::new("UPDATE order_event SET published_at = ");
            update.push_bind(at_ms);
            update.push(" WHERE published_at IS NULL AND id IN ");
            push_list(&mut update, chunk.iter().copied());
            marked += update.build().execute(&self.pool).await?.rows_affected();
        }
        assert!(marked <= ids.len() as u64);
        Ok(marked)
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
