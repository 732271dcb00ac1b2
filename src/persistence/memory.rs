//! A store that keeps everything in process memory: the same contract as the SQL stores
//! (version fencing, unique idempotency keys, one "transaction" per call) without a database.
//! It measures the ceiling of the actor design and lets actor tests run without servers;
//! it is not durable.

use super::{
    InventoryBatch, NewSku, OrderInsert, OrderTransition, Payment, PaymentStatus, ReservationStatus, SkuInfo, SkuState,
    Store, StoreError, UnsettledReservation,
};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::order::{Order, OrderStatus};
use crate::domain::{OrderId, SkuId, UserId};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    skus: HashMap<SkuId, (SkuInfo, Counters, i64)>,
    reservations: HashMap<(SkuId, OrderId), (Reservation, ReservationStatus)>,
    orders: HashMap<OrderId, Order>,
    keys: HashMap<(UserId, String), OrderId>,
    payments: HashMap<String, Payment>,
    refunded_from_paid: std::collections::HashSet<OrderId>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock already failed the test or benchmark that caused it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The status of a reservation row, for tests.
    pub fn reservation_status(&self, sku_id: SkuId, order_id: OrderId) -> Option<ReservationStatus> {
        self.lock().reservations.get(&(sku_id, order_id)).map(|(_, status)| *status)
    }

    /// The stored counters and version of a SKU, for tests.
    pub fn counters(&self, sku_id: SkuId) -> Option<(Counters, i64)> {
        self.lock().skus.get(&sku_id).map(|(_, counters, version)| (*counters, *version))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_sku(&self, sku: &NewSku) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.skus.contains_key(&sku.sku_id) {
            return Err(StoreError::Database(format!("duplicate sku {}", sku.sku_id)));
        }
        let info = SkuInfo { sku_id: sku.sku_id, name: sku.name.clone(), price_cents: sku.price_cents };
        let counters = Counters { total: sku.total, available: sku.total, reserved: 0, sold: 0 };
        state.skus.insert(sku.sku_id, (info, counters, 0));
        Ok(())
    }

    async fn load_sku(&self, sku_id: SkuId) -> Result<Option<SkuState>, StoreError> {
        let state = self.lock();
        let Some((info, counters, version)) = state.skus.get(&sku_id) else {
            return Ok(None);
        };
        let reservations = state
            .reservations
            .iter()
            .filter(|((sku, _), (_, status))| *sku == sku_id && *status == ReservationStatus::Reserved)
            .map(|((_, order_id), (reservation, _))| (*order_id, *reservation))
            .collect();
        Ok(Some(SkuState { info: info.clone(), counters: *counters, version: *version, reservations }))
    }

    async fn commit_inventory(&self, batch: &InventoryBatch) -> Result<(), StoreError> {
        assert!(batch.counters.is_balanced());
        let mut state = self.lock();
        let state = &mut *state;
        let Some(row) = state.skus.get_mut(&batch.sku_id) else {
            return Err(StoreError::Fenced(batch.sku_id));
        };
        if row.2 != batch.expected_version {
            return Err(StoreError::Fenced(batch.sku_id));
        }
        // Check every row first so that the batch applies wholly or not at all.
        for write in &batch.writes {
            let existing = state.reservations.get(&(batch.sku_id, write.order_id));
            let ok = match (write.from, existing) {
                (None, None) => true,
                (Some(from), Some((_, held))) => from == *held,
                _ => false,
            };
            if !ok {
                return Err(StoreError::Corrupt(format!("reservation of order {} out of step", write.order_id)));
            }
        }
        row.1 = batch.counters;
        row.2 += 1;
        for write in &batch.writes {
            let reservation = Reservation { quantity: write.quantity, expires_at_ms: write.expires_at_ms };
            state.reservations.insert((batch.sku_id, write.order_id), (reservation, write.status));
        }
        Ok(())
    }

    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<OrderInsert>, StoreError> {
        let mut state = self.lock();
        Ok(orders
            .iter()
            .map(|order| {
                let key = (order.user_id, order.idempotency_key.clone());
                if state.keys.contains_key(&key) || state.orders.contains_key(&order.id) {
                    return OrderInsert::DuplicateKey;
                }
                order.assert_amounts();
                state.keys.insert(key, order.id);
                state.orders.insert(order.id, order.clone());
                OrderInsert::Inserted
            })
            .collect())
    }

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().orders.get(&order_id).cloned())
    }

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError> {
        let state = self.lock();
        let order_id = state.keys.get(&(user_id, idempotency_key.to_owned()));
        Ok(order_id.and_then(|id| state.orders.get(id)).cloned())
    }

    async fn transition_orders(
        &self,
        transitions: &[OrderTransition],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut state = self.lock();
        Ok(transitions.iter().map(|transition| apply_transition(&mut state, transition)).collect())
    }

    async fn record_payment(&self, payment: &Payment, _at_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if state.payments.contains_key(&payment.out_trade_no) {
            return Ok(false);
        }
        state.payments.insert(payment.out_trade_no.clone(), payment.clone());
        Ok(true)
    }

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError> {
        Ok(self.lock().payments.get(out_trade_no).cloned())
    }

    async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let state = self.lock();
        let mut orders: Vec<Order> = state
            .orders
            .values()
            .filter(|o| o.user_id == user_id)
            .filter(|o| status.is_none_or(|s| o.status == s))
            .filter(|o| before.is_none_or(|b| o.id < b))
            .cloned()
            .collect();
        orders.sort_by_key(|order| std::cmp::Reverse(order.id));
        orders.truncate(limit as usize);
        Ok(orders)
    }

    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, i64)>, StoreError> {
        let state = self.lock();
        Ok(state
            .orders
            .values()
            .filter(|o| o.status == OrderStatus::PendingPayment)
            .map(|o| (o.id, o.pay_deadline_ms))
            .collect())
    }

    async fn unsettled_reservations(&self) -> Result<Vec<UnsettledReservation>, StoreError> {
        let state = self.lock();
        Ok(state
            .reservations
            .iter()
            .filter_map(|((sku_id, order_id), (reservation, status))| {
                let order_status = state.orders.get(order_id).map(|o| o.status);
                let lagging = match (status, order_status) {
                    (ReservationStatus::Reserved, None) => true,
                    (ReservationStatus::Reserved, Some(order)) => order != OrderStatus::PendingPayment,
                    (ReservationStatus::Confirmed, Some(OrderStatus::Refunded)) => true,
                    _ => false,
                };
                lagging.then(|| UnsettledReservation {
                    sku_id: *sku_id,
                    order_id: *order_id,
                    quantity: reservation.quantity,
                    status: *status,
                    order_status,
                    refunded_from_paid: state.refunded_from_paid.contains(order_id),
                })
            })
            .collect())
    }
}

/// One step of one order, with the same checks the SQL store makes.
fn apply_transition(state: &mut MemoryState, transition: &OrderTransition) -> Result<(), StoreError> {
    let stale = StoreError::Stale(transition.order_id);
    let order = state.orders.get_mut(&transition.order_id).ok_or_else(|| stale.clone())?;
    if order.version != transition.expected_version || order.status != transition.from {
        return Err(stale);
    }
    if let Some(payment) = &transition.insert_payment {
        if state.payments.contains_key(&payment.out_trade_no) {
            return Err(StoreError::Database(format!("duplicate out_trade_no {}", payment.out_trade_no)));
        }
        state.payments.insert(payment.out_trade_no.clone(), payment.clone());
    }
    order.status = transition.to;
    order.version += 1;
    if transition.refund_payment {
        for payment in state.payments.values_mut() {
            if payment.order_id == transition.order_id && payment.status == PaymentStatus::Paid {
                payment.status = PaymentStatus::Refunded;
            }
        }
    }
    if (transition.from, transition.to) == (OrderStatus::Paid, OrderStatus::Refunded) {
        state.refunded_from_paid.insert(transition.order_id);
    }
    Ok(())
}
