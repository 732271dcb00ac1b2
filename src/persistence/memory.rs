//! A store that keeps everything in process memory: the same contract as the SQL stores
//! (version fencing, unique idempotency keys, one "transaction" per call) without a database.
//! It measures the ceiling of the actor design and lets actor tests run without servers;
//! it is not durable.

use super::{
    InventoryBatch, NewSku, OrderInsert, ReservationStatus, SkuInfo, SkuState, Store, StoreError,
};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::order::Order;
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
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock already failed the test or benchmark that caused it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The status of a reservation row, for tests.
    pub fn reservation_status(
        &self,
        sku_id: SkuId,
        order_id: OrderId,
    ) -> Option<ReservationStatus> {
        self.lock()
            .reservations
            .get(&(sku_id, order_id))
            .map(|(_, status)| *status)
    }

    /// The stored counters and version of a SKU, for tests.
    pub fn counters(&self, sku_id: SkuId) -> Option<(Counters, i64)> {
        self.lock()
            .skus
            .get(&sku_id)
            .map(|(_, counters, version)| (*counters, *version))
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
            return Err(StoreError::Database(format!(
                "duplicate sku {}",
                sku.sku_id
            )));
        }
        let info = SkuInfo {
            sku_id: sku.sku_id,
            name: sku.name.clone(),
            price_cents: sku.price_cents,
        };
        let counters = Counters {
            total: sku.total,
            available: sku.total,
            reserved: 0,
            sold: 0,
        };
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
            .filter(|((sku, _), (_, status))| {
                *sku == sku_id && *status == ReservationStatus::Reserved
            })
            .map(|((_, order_id), (reservation, _))| (*order_id, *reservation))
            .collect();
        Ok(Some(SkuState {
            info: info.clone(),
            counters: *counters,
            version: *version,
            reservations,
        }))
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
            let ok = matches!(
                (write.is_new, existing),
                (true, None) | (false, Some((_, ReservationStatus::Reserved)))
            );
            if !ok {
                return Err(StoreError::Corrupt(format!(
                    "reservation of order {} out of step",
                    write.order_id
                )));
            }
        }
        row.1 = batch.counters;
        row.2 += 1;
        for write in &batch.writes {
            let reservation = Reservation {
                quantity: write.quantity,
                expires_at_ms: write.expires_at_ms,
            };
            state
                .reservations
                .insert((batch.sku_id, write.order_id), (reservation, write.status));
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

    async fn find_order_by_key(
        &self,
        user_id: UserId,
        idempotency_key: &str,
    ) -> Result<Option<Order>, StoreError> {
        let state = self.lock();
        let order_id = state.keys.get(&(user_id, idempotency_key.to_owned()));
        Ok(order_id.and_then(|id| state.orders.get(id)).cloned())
    }
}
