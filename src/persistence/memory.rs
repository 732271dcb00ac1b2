//! A store that keeps everything in process memory: the same contract as the SQL stores
//! (owner epochs, unique idempotency keys and trade numbers, one "transaction" per call, the
//! same `plan::decide` for every batch) without a database. It measures the ceiling of the
//! actor design and lets actor tests run without servers; it is not durable. Order events are
//! kept like the `order_event` table (`outbox::new_events`, ids from 1 in insert order).

use super::outbox::{self, StoredEvent};
use super::plan::TemplateRow;
use super::plan::{decide, Facts, SkuRow, Wanted};
use super::LessonRow;
use super::{
    Change, CommitReport, NewSku, NewTemplate, Payment, PaymentStatus, RecentKey, ReservationStatus, SkuInfo, SkuState,
    Store, StoreError, TemplateState, UnsettledLease, UserState,
};
use super::{PaymentCursor, PaymentRecord};
use crate::domain::coupon::{Coupon, CouponStatus};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::lease::settled_lease_statuses;
use crate::domain::order::{Order, OrderStatus};
use crate::domain::{CouponId, OrderId, SkuId, TemplateId, UserId};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

struct StoredSku {
    info: SkuInfo,
    counters: Counters,
    version: i64,
    epoch: i64,
}

#[derive(Default)]
struct MemoryState {
    skus: HashMap<SkuId, StoredSku>,
    reservations: HashMap<(SkuId, OrderId), (Reservation, ReservationStatus)>,
    orders: HashMap<OrderId, Order>,
    keys: HashMap<(UserId, String), OrderId>,
    payments: HashMap<String, Payment>,
    refunded_from_paid: HashSet<OrderId>,
    /// Units bought per user and limited SKU, ordered so one user's rows are one range.
    purchases: BTreeMap<(UserId, SkuId), i64>,
    templates: HashMap<TemplateId, TemplateState>,
    /// Every coupon with its `seq` among the user's coupons of its template.
    coupons: HashMap<CouponId, (Coupon, i64)>,
    /// The ids of each user's coupons, so a user's reads do not scan every coupon.
    user_coupons: HashMap<UserId, Vec<CouponId>>,
    /// The highest `seq` per user and template: the claims the user holds.
    claim_seqs: HashMap<(UserId, TemplateId), i64>,
    /// Lesson rows, ordered so one user's rows are one range.
    lessons: BTreeMap<(UserId, SkuId), LessonRow>,
    /// `(created_at, updated_at)` of each payment, by `out_trade_no`.
    payment_times: HashMap<String, (i64, i64)>,
    /// Every order event by id, and the time it was published.
    events: BTreeMap<i64, (StoredEvent, Option<i64>)>,
    /// The ids of the events not published yet.
    unpublished: std::collections::BTreeSet<i64>,
    /// Events ever appended: the last id given, so a pruned id is never given again.
    events_appended: i64,
}

impl MemoryState {
    fn user_coupons(&self, user_id: UserId) -> impl Iterator<Item = Coupon> + '_ {
        let ids = self.user_coupons.get(&user_id).map(Vec::as_slice).unwrap_or_default();
        ids.iter().map(|id| self.coupons[id].0)
    }
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
        self.lock().skus.get(&sku_id).map(|sku| (sku.counters, sku.version))
    }
}

impl MemoryState {
    fn facts(&self, wanted: &Wanted) -> Facts {
        let mut facts = Facts::default();
        for sku_id in &wanted.skus {
            if let Some(sku) = self.skus.get(sku_id) {
                let row = SkuRow { epoch: sku.epoch, version: sku.version, counters: sku.counters };
                facts.skus.insert(*sku_id, row);
            }
        }
        for order_id in &wanted.orders {
            if let Some(order) = self.orders.get(order_id) {
                facts.orders.insert(*order_id, (order.status, order.version));
            }
        }
        facts.keys = wanted.keys.iter().filter(|pair| self.keys.contains_key(*pair)).cloned().collect();
        facts.payments = wanted.payments.iter().filter(|t| self.payments.contains_key(*t)).cloned().collect();
        facts.leases = wanted
            .leases
            .iter()
            .filter_map(|key| self.reservations.get(key).map(|(_, status)| (*key, *status)))
            .collect();
        facts.purchases =
            wanted.purchases.iter().filter_map(|key| self.purchases.get(key).map(|units| (*key, *units))).collect();
        for template_id in &wanted.templates {
            if let Some(template) = self.templates.get(template_id) {
                let row = TemplateRow {
                    total: template.draft.total,
                    issued: template.issued,
                    per_user_limit: template.draft.per_user_limit,
                };
                facts.templates.insert(*template_id, row);
            }
        }
        facts.lessons = wanted.lessons.iter().filter_map(|key| self.lessons.get(key).map(|row| (*key, *row))).collect();
        facts.claims =
            wanted.claims.iter().filter_map(|key| self.claim_seqs.get(key).map(|seq| (*key, *seq))).collect();
        facts.coupons =
            wanted.coupons.iter().filter_map(|id| self.coupons.get(id).map(|(coupon, _)| (*id, *coupon))).collect();
        facts
    }

    /// Applies what an accepted plan does to promotion and lesson rows.
    fn apply_promotion(&mut self, accepted: &[&Change], plan: &super::plan::Plan) {
        for change in accepted {
            if let Some(sale) = &change.sale {
                let sku = self.skus.get_mut(&sale.sku_id).expect("the plan checked the sku");
                sku.info.sale = sale.sale;
            }
            if let Some(issue) = &change.issue {
                assert_eq!(issue.coupon.status, CouponStatus::Unused, "a coupon is issued unused");
                let coupon = issue.coupon;
                self.coupons.insert(coupon.id, (coupon, issue.seq));
                self.user_coupons.entry(coupon.user_id).or_default().push(coupon.id);
                let held = self.claim_seqs.entry((coupon.user_id, coupon.template_id)).or_insert(0);
                *held = (*held).max(issue.seq);
            }
        }
        for (key, (_, units)) in &plan.purchases {
            self.purchases.insert(*key, *units);
        }
        for (template_id, issued) in &plan.templates {
            self.templates.get_mut(template_id).expect("the plan checked the template").issued = *issued;
        }
        for coupon in plan.coupons.values() {
            self.coupons.get_mut(&coupon.id).expect("the plan checked the coupon").0 = *coupon;
        }
        self.lessons.extend(plan.lessons.iter().map(|(key, row)| (*key, *row)));
    }

    /// Appends the events of a batch's accepted changes, ids in insert order.
    fn append_events(&mut self, accepted: &[&Change], now_ms: i64) {
        for event in outbox::new_events(accepted, now_ms) {
            self.events_appended += 1;
            let id = self.events_appended;
            let stored = StoredEvent {
                id,
                order_id: event.order_id,
                kind: event.kind,
                body: event.body,
                created_at_ms: event.created_at_ms,
            };
            self.events.insert(id, (stored, None));
            self.unpublished.insert(id);
        }
    }

    /// Applies one accepted change, with the same row checks the SQL store makes.
    fn apply(&mut self, change: &Change, now_ms: i64) -> Result<(), StoreError> {
        if let Some(order) = &change.order {
            order.assert_amounts();
            self.keys.insert((order.user_id, order.idempotency_key.clone()), order.id);
            self.orders.insert(order.id, order.clone());
        }
        if let Some(transition) = &change.transition {
            let order = self.orders.get_mut(&transition.order_id).expect("the plan checked the order exists");
            assert!(transition.from.can_become(transition.to));
            order.status = transition.to;
            order.version += 1;
            if (transition.from, transition.to) == (OrderStatus::Paid, OrderStatus::Refunded) {
                self.refunded_from_paid.insert(transition.order_id);
            }
            if transition.refund_payment {
                for payment in self.payments.values_mut() {
                    if payment.order_id == transition.order_id && payment.status == PaymentStatus::Paid {
                        payment.status = PaymentStatus::Refunded;
                        let times = self.payment_times.get_mut(&payment.out_trade_no).expect("stored with its times");
                        times.1 = now_ms;
                    }
                }
            }
        }
        if let Some(payment) = &change.payment {
            self.payments.insert(payment.out_trade_no.clone(), payment.clone());
            self.payment_times.insert(payment.out_trade_no.clone(), (now_ms, now_ms));
        }
        for effect in &change.skus {
            let Some(lease) = &effect.lease else { continue };
            let key = (effect.sku_id, lease.order_id);
            match (lease.from, self.reservations.get_mut(&key)) {
                (None, None) => {
                    let reservation = Reservation { quantity: lease.quantity, expires_at_ms: lease.expires_at_ms };
                    self.reservations.insert(key, (reservation, lease.to));
                }
                (Some(from), Some((_, status))) if *status == from => *status = lease.to,
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "reservation of order {} on sku {} is not {:?}",
                        lease.order_id, effect.sku_id, lease.from
                    )))
                }
            }
        }
        Ok(())
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
        let info = SkuInfo { sku_id: sku.sku_id, name: sku.name.clone(), price_cents: sku.price_cents, sale: sku.sale };
        let counters = Counters { total: sku.total, available: sku.total, reserved: 0, sold: 0 };
        state.skus.insert(sku.sku_id, StoredSku { info, counters, version: 0, epoch: 0 });
        Ok(())
    }

    async fn activate_skus(&self, sku_ids: &[SkuId]) -> Result<Vec<Option<SkuState>>, StoreError> {
        let mut state = self.lock();
        let mut states = Vec::with_capacity(sku_ids.len());
        for sku_id in sku_ids {
            let Some(sku) = state.skus.get_mut(sku_id) else {
                states.push(None);
                continue;
            };
            sku.epoch += 1;
            let (info, counters, version, epoch) = (sku.info.clone(), sku.counters, sku.version, sku.epoch);
            let reservations = state
                .reservations
                .iter()
                .filter(|((sku, _), (_, status))| sku == sku_id && *status == ReservationStatus::Reserved)
                .map(|((_, order_id), (reservation, _))| (*order_id, *reservation))
                .collect();
            states.push(Some(SkuState { info, counters, version, epoch, reservations }));
        }
        Ok(states)
    }

    async fn load_users(&self, user_ids: &[UserId], per_user_max: usize) -> Result<Vec<UserState>, StoreError> {
        let state = self.lock();
        Ok(user_ids
            .iter()
            .map(|user_id| {
                let mut orders: Vec<&Order> = state.orders.values().filter(|o| o.user_id == *user_id).collect();
                orders.sort_by_key(|o| std::cmp::Reverse(o.id));
                let recent = orders
                    .into_iter()
                    .take(per_user_max)
                    .map(|o| RecentKey {
                        idempotency_key: o.idempotency_key.clone(),
                        order_id: o.id,
                        request_hash: o.request_hash.clone(),
                    })
                    .collect();
                let purchases: Vec<(SkuId, i64)> = state
                    .purchases
                    .range((*user_id, SkuId::new(i64::MIN))..=(*user_id, SkuId::new(i64::MAX)))
                    .map(|((_, sku_id), units)| (*sku_id, *units))
                    .collect();
                let mut coupons: Vec<Coupon> =
                    state.user_coupons(*user_id).filter(|c| c.status != CouponStatus::Used).collect();
                coupons.sort_by_key(|coupon| coupon.id);
                let mut claims: Vec<(TemplateId, i64)> = state
                    .user_coupons(*user_id)
                    .map(|coupon| coupon.template_id)
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .map(|template_id| (template_id, state.claim_seqs[&(*user_id, template_id)]))
                    .collect();
                claims.sort();
                let lessons = state
                    .lessons
                    .range((*user_id, SkuId::new(i64::MIN))..=(*user_id, SkuId::new(i64::MAX)))
                    .map(|((_, course_id), row)| (*course_id, *row))
                    .collect();
                UserState { recent, purchases, coupons, claims, lessons }
            })
            .collect())
    }

    async fn create_template(&self, template: &NewTemplate) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.templates.contains_key(&template.id) {
            return Err(StoreError::Database(format!("duplicate template {}", template.id)));
        }
        let stored = TemplateState { id: template.id, draft: template.draft.clone(), issued: 0 };
        state.templates.insert(template.id, stored);
        Ok(())
    }

    async fn load_templates(&self, template_ids: &[TemplateId]) -> Result<Vec<Option<TemplateState>>, StoreError> {
        let state = self.lock();
        Ok(template_ids.iter().map(|id| state.templates.get(id).cloned()).collect())
    }

    async fn find_coupon(&self, coupon_id: CouponId) -> Result<Option<Coupon>, StoreError> {
        Ok(self.lock().coupons.get(&coupon_id).map(|(coupon, _)| *coupon))
    }

    async fn list_coupons(
        &self,
        user_id: UserId,
        status: Option<CouponStatus>,
        limit: u32,
    ) -> Result<Vec<Coupon>, StoreError> {
        let state = self.lock();
        let mut coupons: Vec<Coupon> =
            state.user_coupons(user_id).filter(|c| status.is_none_or(|s| c.status == s)).collect();
        coupons.sort_by_key(|coupon| std::cmp::Reverse(coupon.id));
        coupons.truncate(limit as usize);
        Ok(coupons)
    }

    async fn commit(&self, changes: &[Change], now_ms: i64) -> Result<CommitReport, StoreError> {
        let mut state = self.lock();
        let plan = decide(changes, state.facts(&Wanted::of(changes)), now_ms);
        let accepted: Vec<&Change> = plan.accepted(changes).collect();
        for change in &accepted {
            state.apply(change, now_ms)?;
        }
        state.append_events(&accepted, now_ms);
        state.apply_promotion(&accepted, &plan);
        for (sku_id, (_, after)) in &plan.skus {
            let sku = state.skus.get_mut(sku_id).expect("the plan only holds stored skus");
            sku.counters = *after;
            sku.version += 1;
        }
        Ok(CommitReport { versions: plan.versions(), outcomes: plan.outcomes })
    }

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().orders.get(&order_id).cloned())
    }

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError> {
        let state = self.lock();
        let order_id = state.keys.get(&(user_id, idempotency_key.to_owned()));
        Ok(order_id.and_then(|id| state.orders.get(id)).cloned())
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
        orders.sort_by_key(|o| std::cmp::Reverse(o.id));
        orders.truncate(limit as usize);
        Ok(orders)
    }

    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, UserId, i64)>, StoreError> {
        let state = self.lock();
        Ok(state
            .orders
            .values()
            .filter(|o| o.status == OrderStatus::PendingPayment)
            .map(|o| (o.id, o.user_id, o.pay_deadline_ms))
            .collect())
    }

    async fn unsettled_leases(&self) -> Result<Vec<UnsettledLease>, StoreError> {
        let state = self.lock();
        Ok(state
            .reservations
            .iter()
            .filter_map(|((sku_id, order_id), (reservation, status))| {
                let order_status = state.orders.get(order_id).map(|o| o.status);
                let unsettled = match order_status {
                    None => *status == ReservationStatus::Reserved,
                    Some(order) => !settled_lease_statuses(order).contains(status),
                };
                unsettled.then(|| UnsettledLease {
                    sku_id: *sku_id,
                    order_id: *order_id,
                    quantity: reservation.quantity,
                    expires_at_ms: reservation.expires_at_ms,
                    status: *status,
                    order_status,
                    refunded_from_paid: state.refunded_from_paid.contains(order_id),
                })
            })
            .collect())
    }

    async fn unpublished_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.lock();
        Ok(state.unpublished.iter().take(limit as usize).map(|id| state.events[id].0.clone()).collect())
    }

    async fn mark_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut marked = 0;
        for id in ids {
            if state.unpublished.remove(id) {
                state.events.get_mut(id).expect("an unpublished event is stored").1 = Some(at_ms);
                marked += 1;
            }
        }
        Ok(marked)
    }

    async fn prune_published(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let old: Vec<i64> = state
            .events
            .iter()
            .filter(|(_, (_, published_at))| published_at.is_some_and(|at| at < before_ms))
            .map(|(id, _)| *id)
            .take(limit as usize)
            .collect();
        for id in &old {
            state.events.remove(id);
        }
        Ok(old.len() as u64)
    }

    async fn list_payments(
        &self,
        status: PaymentStatus,
        after: Option<PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let state = self.lock();
        let mut records: Vec<PaymentRecord> = state
            .payments
            .values()
            .filter(|payment| payment.status == status)
            .map(|payment| {
                let (created_at_ms, updated_at_ms) = state.payment_times[&payment.out_trade_no];
                PaymentRecord { payment: payment.clone(), created_at_ms, updated_at_ms }
            })
            .filter(|record| after.as_ref().is_none_or(|cursor| cursor.precedes(record)))
            .collect();
        records.sort_by(|a, b| {
            (b.created_at_ms, &b.payment.out_trade_no).cmp(&(a.created_at_ms, &a.payment.out_trade_no))
        });
        records.truncate(limit as usize);
        Ok(records)
    }
}
