//! What one HTTP attempt does in each scenario, and the ledger of every order it placed (for
//! the checks after the run).
//!
//! - `flash-sale` and `catalog`: place one order (one line, 1..=q units) with a new
//!   Idempotency-Key. A share of placed orders is sent again with the same key and must come
//!   back as the same order.
//! - `mixed`: place, then pay half of the orders through the signed payment callback (a tenth of
//!   those twice, which must change nothing), cancel a quarter, leave the rest pending, and read
//!   the order back: its status must be the one those steps lead to.

use super::api::{Answer, Api, OrderReply};
use crate::driver::{Attempt, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shares of placed orders in `mixed` that are paid, and cancelled; the rest stay pending.
pub const PAY_SHARE: f64 = 0.5;
pub const CANCEL_SHARE: f64 = 0.25;
/// Share of paid orders whose callback is delivered twice.
pub const DUPLICATE_CALLBACK_SHARE: f64 = 0.1;

/// The status an order must have after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    PendingPayment,
    Paid,
    Closed,
    /// A later step failed: the order was placed, but what it became is not known.
    Unknown,
}

impl Expected {
    pub fn as_str(self) -> &'static str {
        match self {
            Expected::PendingPayment => "pending_payment",
            Expected::Paid => "paid",
            Expected::Closed => "closed",
            Expected::Unknown => "unknown",
        }
    }
}

/// One order the server acknowledged with 201.
#[derive(Debug, Clone)]
pub struct Placed {
    pub user: usize,
    pub order_id: i64,
    pub sku_index: usize,
    pub quantity: u32,
    pub expected: Expected,
}

/// Every placed order and every idempotency replay of the run.
#[derive(Default)]
pub struct Ledger {
    pub placed: Mutex<Vec<Placed>>,
    pub replays: AtomicU64,
    pub replay_problems: Mutex<Vec<String>>,
}

impl Ledger {
    fn record(&self, placed: Placed) {
        self.placed.lock().unwrap_or_else(|p| p.into_inner()).push(placed);
    }

    pub fn orders(&self) -> Vec<Placed> {
        self.placed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct ScenarioContext {
    pub api: Arc<Api>,
    pub sku_ids: Vec<i64>,
    pub run_id: String,
    pub replay_fraction: f64,
    /// Set for `mixed`: the payment callback's secret.
    pub payment_secret: Option<String>,
    pub ledger: Ledger,
}

impl ScenarioContext {
    /// The Idempotency-Key prefix of this run (every key starts with it).
    pub fn key_prefix(&self) -> String {
        format!("lt-{}-", self.run_id)
    }

    pub async fn attempt(&self, attempt: Attempt) -> Outcome {
        let user = (attempt.seq % self.api.user_tokens.len() as u64) as usize;
        let key = format!("{}{}", self.key_prefix(), attempt.seq);
        let sku_id = self.sku_ids[attempt.sku_index];
        let order = match self.api.place(user, &key, sku_id, attempt.quantity).await {
            Answer::Done(order) => order,
            Answer::SoldOut => return Outcome::Rejected,
            Answer::Failed(message) => return Outcome::Error(format!("place: {message}")),
        };
        let mut placed = Placed {
            user,
            order_id: order.order_id,
            sku_index: attempt.sku_index,
            quantity: attempt.quantity,
            expected: Expected::PendingPayment,
        };
        if let Some(problem) = wrong_items(&order, sku_id, attempt.quantity) {
            placed.expected = Expected::Unknown;
            self.ledger.record(placed);
            return Outcome::Error(problem);
        }
        if rand::random::<f64>() < self.replay_fraction {
            self.replay(user, &key, sku_id, attempt.quantity, order.order_id).await;
        }
        let outcome = match &self.payment_secret {
            Some(secret) => self.pay_or_cancel(secret, user, &order, &key, &mut placed).await,
            None => Ok(()),
        };
        self.ledger.record(placed);
        match outcome {
            Ok(()) => Outcome::Ok { units: attempt.quantity },
            Err(message) => Outcome::Error(message),
        }
    }

    /// Sends the placement again with the same key: it must return the same order.
    async fn replay(&self, user: usize, key: &str, sku_id: i64, quantity: u32, order_id: i64) {
        self.ledger.replays.fetch_add(1, Ordering::Relaxed);
        let problem = match self.api.place(user, key, sku_id, quantity).await {
            Answer::Done(again) if again.order_id == order_id => return,
            Answer::Done(again) => format!("Idempotency-Key {key} made two orders: {order_id} and {}", again.order_id),
            Answer::SoldOut => format!("replay of {key} answered insufficient_stock"),
            Answer::Failed(message) => format!("replay of {key} failed: {message}"),
        };
        self.ledger.replay_problems.lock().unwrap_or_else(|p| p.into_inner()).push(problem);
    }

    /// The `mixed` steps after placement; sets what the order must have become.
    async fn pay_or_cancel(
        &self,
        secret: &str,
        user: usize,
        order: &OrderReply,
        key: &str,
        placed: &mut Placed,
    ) -> Result<(), String> {
        let draw = rand::random::<f64>();
        placed.expected = Expected::Unknown;
        let target = if draw < PAY_SHARE {
            let out_trade_no = format!("pay-{key}");
            done(self.api.pay(secret, order, &out_trade_no).await)?;
            if rand::random::<f64>() < DUPLICATE_CALLBACK_SHARE {
                done(self.api.pay(secret, order, &out_trade_no).await)
                    .map_err(|m| format!("duplicate callback: {m}"))?;
            }
            Expected::Paid
        } else if draw < PAY_SHARE + CANCEL_SHARE {
            done(self.api.cancel(user, order.order_id).await)?;
            Expected::Closed
        } else {
            Expected::PendingPayment
        };
        placed.expected = target;
        let read = match self.api.order(user, order.order_id).await {
            Answer::Done(read) => read,
            Answer::SoldOut => return Err("read: insufficient_stock?".into()),
            Answer::Failed(message) => return Err(format!("read: {message}")),
        };
        if read.status != target.as_str() {
            return Err(format!("read back status {} where {} was expected", read.status, target.as_str()));
        }
        Ok(())
    }
}

fn done(answer: Answer<()>) -> Result<(), String> {
    match answer {
        Answer::Done(()) => Ok(()),
        Answer::SoldOut => Err("insufficient_stock".into()),
        Answer::Failed(message) => Err(message),
    }
}

/// Whether a placed order holds exactly the one line that was asked for.
pub fn wrong_items(order: &OrderReply, sku_id: i64, quantity: u32) -> Option<String> {
    match order.items.as_slice() {
        [item] if item.sku_id == sku_id && item.quantity == i64::from(quantity) => None,
        _ => Some(format!("order {} holds {:?}, asked for {quantity} of sku {sku_id}", order.order_id, order.items)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::OrderItemReply;

    fn order(items: Vec<(i64, i64)>) -> OrderReply {
        OrderReply {
            order_id: 7,
            user_id: 1,
            status: "pending_payment".into(),
            pay_cents: 100,
            items: items.into_iter().map(|(sku_id, quantity)| OrderItemReply { sku_id, quantity }).collect(),
        }
    }

    #[test]
    fn an_order_must_hold_exactly_the_line_asked_for() {
        assert_eq!(wrong_items(&order(vec![(5, 2)]), 5, 2), None);
        assert!(wrong_items(&order(vec![(5, 1)]), 5, 2).is_some());
        assert!(wrong_items(&order(vec![(6, 2)]), 5, 2).is_some());
        assert!(wrong_items(&order(vec![(5, 2), (5, 2)]), 5, 2).is_some());
        assert!(wrong_items(&order(vec![]), 5, 2).is_some());
    }

    #[test]
    fn statuses_use_the_api_names() {
        assert_eq!(Expected::PendingPayment.as_str(), "pending_payment");
        assert_eq!(Expected::Paid.as_str(), "paid");
        assert_eq!(Expected::Closed.as_str(), "closed");
    }
}
