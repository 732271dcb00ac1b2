//! The transactional outbox of order events: which `order_event` rows a batch writes, derived
//! once here from the accepted changes so every store writes the same rows.
//!
//! Guarantees:
//! - Every row of `order_status_log` has exactly one event, written in the same transaction:
//!   a new order is `placed`, a transition is named by its target status (`paid`, `closed`,
//!   `finished`, `refunded`). Events follow the log's order (new orders, then transitions,
//!   in batch order), so per order the events and the log rows agree one to one, in order.
//! - A payment kept for refund (a callback for a closed or already paid order) is one more
//!   event, `refund_required`, in the transaction that stores the payment.
//! - Ids are the table's auto-increment, assigned by the database in insert order and never
//!   reused; they are the `event_id` consumers deduplicate on. The relay reads unpublished rows
//!   by their `published_at IS NULL` index, so the order in which concurrent transactions
//!   commit does not matter to it.
//! - A body is a small JSON object (at most `EVENT_BODY_LEN_MAX_BYTES`), built without the
//!   database: it is on the write path.

use super::{Change, Payment, PaymentStatus};
use crate::domain::order::OrderStatus;
use crate::domain::OrderId;
use serde::Serialize;

/// The longest event body, in bytes (the column holds 1,024 characters). The largest body, a
/// `refund_required` with a 64-byte trade number and a 32-byte channel both fully escaped,
/// stays far below it.
pub const EVENT_BODY_LEN_MAX_BYTES: usize = 1_024;

/// What happened to an order. The names are stored and published, and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Placed,
    Paid,
    Closed,
    Finished,
    Refunded,
    /// A payment arrived for an order that could not take it; the money must go back.
    RefundRequired,
}

impl EventKind {
    pub const ALL: [EventKind; 6] =
        [Self::Placed, Self::Paid, Self::Closed, Self::Finished, Self::Refunded, Self::RefundRequired];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Paid => "paid",
            Self::Closed => "closed",
            Self::Finished => "finished",
            Self::Refunded => "refunded",
            Self::RefundRequired => "refund_required",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The event of a status log row that reaches `to`: a first row (no `from`) is `placed`.
    pub fn of_step(from: Option<OrderStatus>, to: OrderStatus) -> EventKind {
        match (from, to) {
            (None, _) => Self::Placed,
            (Some(_), OrderStatus::Paid) => Self::Paid,
            (Some(_), OrderStatus::Closed) => Self::Closed,
            (Some(_), OrderStatus::Finished) => Self::Finished,
            (Some(_), OrderStatus::Refunded) => Self::Refunded,
            (Some(from), OrderStatus::PendingPayment) => {
                unreachable!("no transition leads back to pending_payment (from {from:?})")
            }
        }
    }
}

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

/// The events of `accepted` (the accepted changes of a batch, in batch order), at `now_ms`:
/// see the module doc for which and in what order.
pub fn new_events(accepted: &[&Change], now_ms: i64) -> Vec<NewEvent> {
    let placed = accepted.iter().filter_map(|c| c.order.as_ref()).map(|order| {
        let body = Body {
            user_id: Some(order.user_id.get()),
            to: Some(order.status.as_str()),
            version: Some(order.version),
            pay_cents: Some(order.pay_cents.get()),
            ..Body::bare(order.id, order.created_at_ms)
        };
        NewEvent {
            order_id: order.id,
            kind: EventKind::of_step(None, order.status),
            body: body.encode(),
            created_at_ms: order.created_at_ms,
        }
    });
    let steps = accepted.iter().filter_map(|c| c.transition.as_ref()).map(|t| {
        let body = Body {
            from: Some(t.from.as_str()),
            to: Some(t.to.as_str()),
            version: Some(t.expected_version + 1),
            ..Body::bare(t.order_id, t.at_ms)
        };
        NewEvent {
            order_id: t.order_id,
            kind: EventKind::of_step(Some(t.from), t.to),
            body: body.encode(),
            created_at_ms: t.at_ms,
        }
    });
    let kept = accepted
        .iter()
        .filter_map(|c| c.payment.as_ref())
        .filter(|p| p.status == PaymentStatus::RefundRequired)
        .map(|payment| refund_required(payment, now_ms));
    placed.chain(steps).chain(kept).collect()
}

fn refund_required(payment: &Payment, now_ms: i64) -> NewEvent {
    let body = Body {
        out_trade_no: Some(&payment.out_trade_no),
        amount_cents: Some(payment.amount_cents.get()),
        channel: Some(&payment.channel),
        ..Body::bare(payment.order_id, now_ms)
    };
    NewEvent { order_id: payment.order_id, kind: EventKind::RefundRequired, body: body.encode(), created_at_ms: now_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn kinds_round_trip_and_steps_are_named_by_their_target() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("pending_payment"), None);
        assert_eq!(EventKind::of_step(None, OrderStatus::PendingPayment), EventKind::Placed);
        assert_eq!(EventKind::of_step(Some(OrderStatus::PendingPayment), OrderStatus::Closed), EventKind::Closed);
        assert_eq!(EventKind::of_step(Some(OrderStatus::Finished), OrderStatus::Refunded), EventKind::Refunded);
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
        let events = new_events(&[&paying, &closed, &kept], 9);
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
