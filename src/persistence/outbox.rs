//! The transactional outbox of order events: which `order_event` rows a batch writes, derived
//! once here from the accepted changes so every store writes the same rows.
//!
//! Guarantees:
//! - Every row of `order_status_log` has exactly one event, written in the same transaction:
//!   both are built from `domain::order::log_entries` of the batch's accepted changes (new
//!   orders, then transitions, in batch order), and the event's kind is `EventKind::of` its
//!   entry. So per order the events and the log rows agree one to one, in order.
//! - A payment kept for refund (a callback for a closed or already paid order) is one more
//!   event, `refund_required`, in the transaction that stores the payment, after the batch's
//!   log events.
//! - Ids are the table's auto-increment, assigned by the database in insert order and never
//!   reused; they are the `event_id` consumers deduplicate on. The relay claims unpublished
//!   rows by their `published_at IS NULL` index, so the order in which concurrent
//!   transactions commit does not matter to it.
//! - A body is a small JSON object (at most `EVENT_BODY_LEN_MAX_BYTES`), built without the
//!   database: it is on the write path, and it is the only allocation an event costs there.
//! - A claim (`EventClaim`) holds the events it read until it marks them or is dropped;
//!   dropped, it marks nothing and the events stay unpublished.

use super::{Change, OrderTransition, Payment, PaymentStatus, Store, StoreError};
use crate::domain::order::{self, StatusLogEntry, StatusStep};
use crate::domain::OrderId;
use async_trait::async_trait;
use serde::Serialize;

pub use crate::domain::order::EventKind;

/// The longest event body, in bytes (the column holds 1,024 characters). The largest body, a
/// `refund_required` with a 64-byte trade number and a 32-byte channel both fully escaped,
/// stays far below it.
pub const EVENT_BODY_LEN_MAX_BYTES: usize = 1_024;

/// An event row to insert; the database assigns its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub order_id: OrderId,
    pub kind: EventKind,
    pub body: String,
    pub created_at_ms: i64,
}

/// An event row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub order_id: OrderId,
    pub kind: EventKind,
    pub body: String,
    pub created_at_ms: i64,
}

/// Unpublished events read by one relay round, held until they are marked published.
#[async_trait]
pub trait EventClaim: Send {
    /// The claimed events, oldest (lowest id) first.
    fn events(&self) -> &[StoredEvent];

    /// Marks every claimed event published at `at_ms` and releases the claim; how many rows
    /// it marked (all of them: nobody else marks a claimed event).
    async fn mark_published(self: Box<Self>, at_ms: i64) -> Result<u64, StoreError>;
}

/// The claim of a store with one writer and one relay (SQLite, memory): the events read, no
/// lock, marked through `Store::mark_published`.
pub struct UnlockedClaim<'a, S: Store + ?Sized> {
    pub store: &'a S,
    pub events: Vec<StoredEvent>,
}

#[async_trait]
impl<S: Store + ?Sized> EventClaim for UnlockedClaim<'_, S> {
    fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    async fn mark_published(self: Box<Self>, at_ms: i64) -> Result<u64, StoreError> {
        let ids: Vec<i64> = self.events.iter().map(|event| event.id).collect();
        self.store.mark_published(&ids, at_ms).await
    }
}

/// The status-log entries of `accepted` (the accepted changes of a batch, in batch order):
/// `domain::order::log_entries` of their new orders and transitions.
pub fn log_entries<'a>(accepted: &'a [&'a Change]) -> impl Iterator<Item = StatusLogEntry<'a>> + 'a {
    let new_orders = accepted.iter().filter_map(|change| change.order.as_ref());
    let steps = accepted.iter().filter_map(|change| change.transition.as_ref()).map(step_of);
    order::log_entries(new_orders, steps)
}

fn step_of(transition: &OrderTransition) -> StatusStep {
    StatusStep {
        order_id: transition.order_id,
        from: transition.from,
        to: transition.to,
        version_before: transition.expected_version,
        at_ms: transition.at_ms,
    }
}

/// The payments of `accepted` kept for refund: each is one `refund_required` event.
pub fn kept_payments<'a>(accepted: &'a [&'a Change]) -> impl Iterator<Item = &'a Payment> + 'a {
    accepted.iter().filter_map(|change| change.payment.as_ref()).filter(|p| p.status == PaymentStatus::RefundRequired)
}

/// The body of every event: the fields that apply to its kind, the rest left out.
#[derive(Serialize)]
struct Body<'a> {
    order_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'static str>,
    /// The order's version after the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pay_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_trade_no: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    at_ms: i64,
}

impl Body<'_> {
    fn bare(order_id: OrderId, at_ms: i64) -> Self {
        Body {
            order_id: order_id.get(),
            user_id: None,
            from: None,
            to: None,
            version: None,
            pay_cents: None,
            out_trade_no: None,
            amount_cents: None,
            channel: None,
            at_ms,
        }
    }

    fn encode(&self) -> String {
        // Serializing a struct of numbers and strings into a String cannot fail.
        let body = serde_json::to_string(self).expect("an event body serializes");
        assert!(body.len() <= EVENT_BODY_LEN_MAX_BYTES, "event body of {} bytes", body.len());
        body
    }
}

/// The body of the event of a status-log entry: a placed order names its buyer and what it
/// costs, a step its two statuses.
pub fn entry_body(entry: &StatusLogEntry<'_>) -> String {
    let bare = Body {
        to: Some(entry.to().as_str()),
        version: Some(entry.version()),
        ..Body::bare(entry.order_id(), entry.at_ms())
    };
    let body = match entry {
        StatusLogEntry::Placed(order) => {
            Body { user_id: Some(order.user_id.get()), pay_cents: Some(order.pay_cents.get()), ..bare }
        }
        StatusLogEntry::Step(step) => Body { from: Some(step.from.as_str()), ..bare },
    };
    body.encode()
}

/// The body of the `refund_required` event of a payment kept at `now_ms`.
pub fn refund_required_body(payment: &Payment, now_ms: i64) -> String {
    let body = Body {
        out_trade_no: Some(&payment.out_trade_no),
        amount_cents: Some(payment.amount_cents.get()),
        channel: Some(&payment.channel),
        ..Body::bare(payment.order_id, now_ms)
    };
    body.encode()
}

/// The events of `accepted` at `now_ms`, in insert order (see the module doc), for a store
/// that keeps them itself (the memory store; the SQL stores bind the rows directly).
pub fn new_events<'a>(accepted: &'a [&'a Change], now_ms: i64) -> impl Iterator<Item = NewEvent> + 'a {
    let logged = log_entries(accepted).map(|entry| NewEvent {
        order_id: entry.order_id(),
        kind: EventKind::of(&entry),
        body: entry_body(&entry),
        created_at_ms: entry.at_ms(),
    });
    let kept = kept_payments(accepted).map(move |payment| NewEvent {
        order_id: payment.order_id,
        kind: EventKind::RefundRequired,
        body: refund_required_body(payment, now_ms),
        created_at_ms: now_ms,
    });
    logged.chain(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::OrderStatus;
    use crate::domain::Cents;
    use crate::persistence::OrderTransition;

    fn transition(order_id: i64, from: OrderStatus, to: OrderStatus) -> Change {
        let transition = OrderTransition {
            order_id: OrderId::new(order_id),
            from,
            to,
            expected_version: 1,
            at_ms: 7,
            pay_by_ms: None,
            refund_payment: false,
        };
        Change { transition: Some(transition), ..Change::default() }
    }

    #[test]
    fn each_transition_and_each_kept_payment_is_one_event_in_batch_order() {
        let paid = transition(1, OrderStatus::PendingPayment, OrderStatus::Paid);
        let closed = transition(2, OrderStatus::PendingPayment, OrderStatus::Closed);
        let payment = |status| Payment {
            out_trade_no: "t\"1".into(),
            order_id: OrderId::new(2),
            amount_cents: Cents::new(990),
            channel: "wechat".into(),
            status,
        };
        let kept = Change { payment: Some(payment(PaymentStatus::RefundRequired)), ..Change::default() };
        let paying = Change { payment: Some(payment(PaymentStatus::Paid)), ..paid.clone() };
        let events: Vec<NewEvent> = new_events(&[&paying, &closed, &kept], 9).collect();
        let kinds: Vec<(i64, EventKind)> = events.iter().map(|e| (e.order_id.get(), e.kind)).collect();
        assert_eq!(kinds, vec![(1, EventKind::Paid), (2, EventKind::Closed), (2, EventKind::RefundRequired)]);
        let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"order_id": 1, "from": "pending_payment", "to": "paid", "version": 2, "at_ms": 7})
        );
        let body: serde_json::Value = serde_json::from_str(&events[2].body).unwrap();
        assert_eq!(body["out_trade_no"], "t\"1");
        assert_eq!((body["amount_cents"].as_i64(), events[2].created_at_ms), (Some(990), 9));
    }
}
