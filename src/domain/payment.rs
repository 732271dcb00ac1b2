//! What a payment callback does to its order: the decision table, pure.
//!
//! A payment is identified by the provider's `out_trade_no`. A repeat of one already handled
//! gets the same answer as the first time; a new one pays a pending order before its deadline,
//! and is otherwise kept for refund (the order is closed, or paid by another payment). The
//! deadline is checked here against the caller's clock and again by the write pipeline at
//! commit time (`OrderTransition::pay_by_ms`): the later check is the one that decides.

use super::money::Cents;
use super::order::{deadline_passed, Order, OrderStatus};

/// A payment already stored under the same `out_trade_no`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownPayment {
    pub same_order: bool,
    pub amount_cents: Cents,
    /// It was kept for refund instead of paying its order.
    pub refund_required: bool,
}

/// What to do with a payment callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentDecision {
    /// A repeat of the callback that paid the order: answer with the order.
    Repeat,
    /// Pay the pending order.
    Pay,
    /// The deadline passed while the order still awaits payment: close it (its units go
    /// back) and keep the payment for refund, in one change.
    CloseAndKeepForRefund,
    /// The order cannot take a payment any more: keep it for refund.
    KeepForRefund(Refusal),
    /// Refused without writing anything.
    Refuse(Refusal),
}

/// Why a payment did not pay its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `out_trade_no` paid another order.
    TradeNoReused,
    AmountMismatch {
        expected: Cents,
        received: Cents,
    },
    OrderClosed,
    AlreadyPaid,
}

/// Decides a payment of `amount_cents` for `order`, given the payment stored under the same
/// `out_trade_no` (if any), at `now_ms`. Checks in precedence order: a known payment first
/// (its first answer holds), then the amount, then the order's status and deadline.
pub fn decide(order: &Order, known: Option<KnownPayment>, amount_cents: Cents, now_ms: i64) -> PaymentDecision {
    if let Some(known) = known {
        return if !known.same_order {
            PaymentDecision::Refuse(Refusal::TradeNoReused)
        } else if known.amount_cents != amount_cents {
            PaymentDecision::Refuse(Refusal::AmountMismatch { expected: known.amount_cents, received: amount_cents })
        } else if known.refund_required {
            PaymentDecision::Refuse(closed_or_paid(order.status))
        } else {
            PaymentDecision::Repeat
        };
    }
    if amount_cents != order.pay_cents {
        return PaymentDecision::Refuse(Refusal::AmountMismatch { expected: order.pay_cents, received: amount_cents });
    }
    match order.status {
        OrderStatus::PendingPayment if deadline_passed(order.pay_deadline_ms, now_ms) => {
            PaymentDecision::CloseAndKeepForRefund
        }
        OrderStatus::PendingPayment => PaymentDecision::Pay,
        status => PaymentDecision::KeepForRefund(closed_or_paid(status)),
    }
}

fn closed_or_paid(status: OrderStatus) -> Refusal {
    if status == OrderStatus::Closed {
        Refusal::OrderClosed
    } else {
        Refusal::AlreadyPaid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::NewOrderHeader;
    use crate::domain::{IdempotencyKey, OrderId, OrderLine, SkuId, UserId};

    fn order(status: OrderStatus) -> Order {
        let header = NewOrderHeader {
            id: OrderId::new(1),
            user_id: UserId::new(2),
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            request_hash: "h".into(),
            created_at_ms: 0,
            pay_deadline_ms: 1_000,
            coupon_id: None,
        };
        let line = OrderLine {
            sku_id: SkuId::new(3),
            name: "n".into(),
            price_cents: Cents::new(500),
            quantity: crate::domain::Quantity::parse(2, 10).unwrap(),
            limited: false,
        };
        Order { status, ..Order::price(header, vec![line], Cents::ZERO).unwrap() }
    }

    #[test]
    fn the_decision_table() {
        use OrderStatus::*;
        let paid_before = |same_order, amount, refund_required| {
            Some(KnownPayment { same_order, amount_cents: Cents::new(amount), refund_required })
        };
        let mismatch = |expected, received| Refusal::AmountMismatch {
            expected: Cents::new(expected),
            received: Cents::new(received),
        };
        // (order status, known payment, amount, now) -> decision; one line per case, in precedence order.
        let cases = [
            (
                PendingPayment,
                paid_before(false, 1_000, false),
                1_000,
                0,
                PaymentDecision::Refuse(Refusal::TradeNoReused),
            ),
            (Paid, paid_before(true, 1_000, false), 999, 0, PaymentDecision::Refuse(mismatch(1_000, 999))),
            (Closed, paid_before(true, 1_000, true), 1_000, 0, PaymentDecision::Refuse(Refusal::OrderClosed)),
            (Paid, paid_before(true, 1_000, true), 1_000, 0, PaymentDecision::Refuse(Refusal::AlreadyPaid)),
            (Paid, paid_before(true, 1_000, false), 1_000, 5_000, PaymentDecision::Repeat),
            (PendingPayment, None, 999, 0, PaymentDecision::Refuse(mismatch(1_000, 999))),
            (PendingPayment, None, 1_000, 1_000, PaymentDecision::Pay),
            (PendingPayment, None, 1_000, 1_001, PaymentDecision::CloseAndKeepForRefund),
            (Closed, None, 1_000, 0, PaymentDecision::KeepForRefund(Refusal::OrderClosed)),
            (Paid, None, 1_000, 0, PaymentDecision::KeepForRefund(Refusal::AlreadyPaid)),
            (Finished, None, 1_000, 0, PaymentDecision::KeepForRefund(Refusal::AlreadyPaid)),
            (Refunded, None, 1_000, 0, PaymentDecision::KeepForRefund(Refusal::AlreadyPaid)),
        ];
        for (status, known, amount, now_ms, expected) in cases {
            assert_eq!(decide(&order(status), known, Cents::new(amount), now_ms), expected, "{status:?} {known:?}");
        }
    }
}
