//! The decision every store makes for a batch of changes, written once: given what the batch
//! depends on (prefetched inside the transaction), which changes are written and which fail
//! with which `Conflict`, and what each touched SKU's counters become.
//!
//! Changes are decided one after the other, each seeing the accepted ones before it, exactly as
//! if they were written one at a time: an idempotency key or `out_trade_no` used twice in one
//! batch loses the second time, a SKU's counters never go below zero or out of balance at any
//! point, and a conflicting change fails alone. The SQL stores and the memory store call this
//! same function, so they cannot disagree on an edge case.

use super::{Change, Conflict, LessonRow, ReservationStatus, SkuEffect};
use crate::domain::coupon::Coupon;
use crate::domain::inventory::Counters;
use crate::domain::learning::Progress;
use crate::domain::order::{deadline_passed, OrderStatus};
use crate::domain::{CouponId, OrderId, SkuId, TemplateId, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A SKU's row as the batch found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuRow {
    pub epoch: i64,
    pub version: i64,
    pub counters: Counters,
}

/// What the batch's changes depend on, read inside its transaction.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub skus: HashMap<SkuId, SkuRow>,
    /// Status and version of every order a transition or a placement names that exists.
    pub orders: HashMap<OrderId, (OrderStatus, i64)>,
    /// `(user, idempotency key)` pairs that have an order already.
    pub keys: HashSet<(UserId, String)>,
    /// `out_trade_no`s stored already.
    pub payments: HashSet<String>,
    /// The status of every reservation row a change names that exists.
    pub leases: HashMap<(SkuId, OrderId), ReservationStatus>,
    /// Units bought of limited SKUs, per `(user, sku)` row that exists.
    pub purchases: HashMap<(UserId, SkuId), i64>,
    /// Templates a claim names that exist.
    pub templates: HashMap<TemplateId, TemplateRow>,
    /// The highest `seq` of each `(user, template)` a claim names that has coupons.
    pub claims: HashMap<(UserId, TemplateId), i64>,
    /// Coupons a move names that exist.
    pub coupons: HashMap<CouponId, Coupon>,
    /// Lesson rows a grant or a progress write names that exist.
    pub lessons: HashMap<(UserId, SkuId), LessonRow>,
}

/// A coupon template's row as the batch found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateRow {
    pub total: i64,
    pub issued: i64,
    pub per_user_limit: i64,
}

/// The keys a batch must read before it can be decided.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub skus: Vec<SkuId>,
    pub orders: Vec<OrderId>,
    pub keys: Vec<(UserId, String)>,
    pub payments: Vec<String>,
    pub leases: Vec<(SkuId, OrderId)>,
    pub purchases: Vec<(UserId, SkuId)>,
    pub templates: Vec<TemplateId>,
    pub claims: Vec<(UserId, TemplateId)>,
    pub coupons: Vec<CouponId>,
    pub lessons: Vec<(UserId, SkuId)>,
}

impl Wanted {
    pub fn of(changes: &[Change]) -> Wanted {
        let skus: BTreeSet<SkuId> = changes
            .iter()
            .flat_map(|c| c.skus.iter().map(|e| e.sku_id).chain(c.sale.as_ref().map(|sale| sale.sku_id)))
            .collect();
        let orders: BTreeSet<OrderId> = changes
            .iter()
            .flat_map(|c| c.transition.as_ref().map(|t| t.order_id).into_iter().chain(c.order.as_ref().map(|o| o.id)))
            .collect();
        let keys: BTreeSet<(UserId, String)> =
            changes.iter().filter_map(|c| c.order.as_ref()).map(|o| (o.user_id, o.idempotency_key.clone())).collect();
        let payments: BTreeSet<String> =
            changes.iter().filter_map(|c| c.payment.as_ref()).map(|p| p.out_trade_no.clone()).collect();
        let leases: BTreeSet<(SkuId, OrderId)> = changes
            .iter()
            .flat_map(|c| c.skus.iter().filter_map(|e| e.lease.as_ref().map(|l| (e.sku_id, l.order_id))))
            .collect();
        let purchases: BTreeSet<(UserId, SkuId)> =
            changes.iter().flat_map(|c| c.purchases.iter().map(|p| (p.user_id, p.sku_id))).collect();
        let issues = changes.iter().filter_map(|c| c.issue.as_ref());
        let templates: BTreeSet<TemplateId> = issues.clone().map(|i| i.coupon.template_id).collect();
        let claims: BTreeSet<(UserId, TemplateId)> = issues.map(|i| (i.coupon.user_id, i.coupon.template_id)).collect();
        let coupons: BTreeSet<CouponId> = changes
            .iter()
            .flat_map(|c| c.coupon.as_ref().map(|m| m.coupon_id).into_iter().chain(c.issue.map(|i| i.coupon.id)))
            .collect();
        let lessons: BTreeSet<(UserId, SkuId)> = changes
            .iter()
            .flat_map(|c| {
                let granted = c.lessons.iter().flat_map(|g| g.course_ids.iter().map(|course| (g.user_id, *course)));
                granted.chain(c.progress.iter().map(|p| (p.user_id, p.course_id)))
            })
            .collect();
        Wanted {
            lessons: lessons.into_iter().collect(),
            purchases: purchases.into_iter().collect(),
            templates: templates.into_iter().collect(),
            claims: claims.into_iter().collect(),
            coupons: coupons.into_iter().collect(),
            leases: leases.into_iter().collect(),
            skus: skus.into_iter().collect(),
            orders: orders.into_iter().collect(),
            keys: keys.into_iter().collect(),
            payments: payments.into_iter().collect(),
        }
    }
}

/// The decision for a batch.
#[derive(Debug, Clone)]
pub struct Plan {
    pub outcomes: Vec<Result<(), Conflict>>,
    /// Every SKU an accepted change touched: its row before the batch and its counters after.
    pub skus: BTreeMap<SkuId, (SkuRow, Counters)>,
    /// Every purchase row an accepted change touched: whether it existed, and its units after.
    pub purchases: BTreeMap<(UserId, SkuId), (bool, i64)>,
    /// Every template an accepted claim drew from: its issued count after the batch.
    pub templates: BTreeMap<TemplateId, i64>,
    /// Every coupon an accepted move changed, as it is after the batch.
    pub coupons: BTreeMap<CouponId, Coupon>,
    /// Every lesson row an accepted change wrote, as it is after the batch.
    pub lessons: BTreeMap<(UserId, SkuId), LessonRow>,
}

impl Plan {
    /// The accepted changes, in batch order.
    pub fn accepted<'a>(&'a self, changes: &'a [Change]) -> impl Iterator<Item = &'a Change> + 'a {
        changes.iter().zip(&self.outcomes).filter(|(_, outcome)| outcome.is_ok()).map(|(change, _)| change)
    }

    /// The version each written SKU has after the batch.
    pub fn versions(&self) -> HashMap<SkuId, i64> {
        self.skus.iter().map(|(sku_id, (row, _))| (*sku_id, row.version + 1)).collect()
    }
}

/// Decides `changes` against `facts` at `now_ms` (see the module doc).
pub fn decide(changes: &[Change], mut facts: Facts, now_ms: i64) -> Plan {
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut counters: BTreeMap<SkuId, (SkuRow, Counters)> = BTreeMap::new();
    let mut transitioned: HashSet<OrderId> = HashSet::new();
    let mut purchases: BTreeMap<(UserId, SkuId), (bool, i64)> = BTreeMap::new();
    let mut templates: BTreeMap<TemplateId, i64> = BTreeMap::new();
    let mut coupons: BTreeMap<CouponId, Coupon> = BTreeMap::new();
    let mut lessons: BTreeMap<(UserId, SkuId), LessonRow> = BTreeMap::new();
    for change in changes {
        let outcome = check(change, &facts, &counters, &transitioned, now_ms)
            .and_then(|after| check_promotion(change, &facts, now_ms).map(|promotion| (after, promotion)));
        let outcome = outcome.map(|(after, promotion)| {
            // From here on the change is accepted: later changes see its effects.
            for (key, units) in promotion.purchases {
                let existed = purchases.get(&key).map_or(facts.purchases.contains_key(&key), |(e, _)| *e);
                facts.purchases.insert(key, units);
                purchases.insert(key, (existed, units));
            }
            if let Some(issue) = &change.issue {
                let template = facts.templates.get_mut(&issue.coupon.template_id).expect("checked");
                template.issued += 1;
                templates.insert(issue.coupon.template_id, template.issued);
                facts.claims.insert((issue.coupon.user_id, issue.coupon.template_id), issue.seq);
                facts.coupons.insert(issue.coupon.id, issue.coupon);
            }
            if let Some(coupon) = promotion.coupon {
                facts.coupons.insert(coupon.id, coupon);
                coupons.insert(coupon.id, coupon);
            }
            for (key, row) in lesson_rows(change, &facts.lessons, now_ms) {
                facts.lessons.insert(key, row);
                lessons.insert(key, row);
            }
            after
        });
        if let Ok(after) = &outcome {
            if let Some(order) = &change.order {
                facts.keys.insert((order.user_id, order.idempotency_key.clone()));
                facts.orders.insert(order.id, (order.status, order.version));
            }
            if let Some(payment) = &change.payment {
                facts.payments.insert(payment.out_trade_no.clone());
            }
            if let Some(transition) = &change.transition {
                facts.orders.insert(transition.order_id, (transition.to, transition.expected_version + 1));
                transitioned.insert(transition.order_id);
            }
            for effect in &change.skus {
                if let Some(lease) = &effect.lease {
                    facts.leases.insert((effect.sku_id, lease.order_id), lease.to);
                }
            }
            for (sku_id, after) in after {
                let row = facts.skus[sku_id];
                counters.insert(*sku_id, (row, *after));
            }
        }
        outcomes.push(outcome.map(drop));
    }
    for (row, after) in counters.values() {
        assert!(after.is_balanced(), "a plan never leaves unbalanced counters: {after:?}");
        assert!(row.counters.is_balanced(), "stored counters were read unbalanced: {:?}", row.counters);
    }
    for (_, units) in purchases.values() {
        assert!(*units >= 0, "a plan never leaves a negative purchase count");
    }
    for (template_id, issued) in &templates {
        assert!(*issued <= facts.templates[template_id].total, "a plan never issues past a template's total");
    }
    for row in lessons.values() {
        assert!(row.holders >= 0, "a plan never leaves a negative lesson holder count");
    }
    Plan { outcomes, skus: counters, purchases, templates, coupons, lessons }
}

/// The lesson rows an accepted change leaves: a grant opens (one more holder; a new row starts
/// at `Progress::opened`) or revokes (one holder less; progress is kept) each of its courses;
/// a progress write joins into a row that exists (`Progress::join`, so a write never moves
/// progress back, whoever wrote last) and is dropped for a course never opened. Lessons never
/// make a change fail.
fn lesson_rows(
    change: &Change,
    rows: &HashMap<(UserId, SkuId), LessonRow>,
    now_ms: i64,
) -> Vec<((UserId, SkuId), LessonRow)> {
    let mut written: Vec<((UserId, SkuId), LessonRow)> = Vec::new();
    let current = |written: &Vec<((UserId, SkuId), LessonRow)>, key: (UserId, SkuId)| {
        written.iter().rev().find(|(k, _)| *k == key).map(|(_, row)| *row).or_else(|| rows.get(&key).copied())
    };
    if let Some(grant) = &change.lessons {
        for course_id in &grant.course_ids {
            let key = (grant.user_id, *course_id);
            let before = current(&written, key);
            let Some(holders) = grant.step.holders_after(before.map(|row| row.holders)) else { continue };
            let progress = before.map_or(Progress::opened(now_ms), |row| row.progress);
            written.push((key, LessonRow { holders, progress }));
        }
    }
    for write in &change.progress {
        let key = (write.user_id, write.course_id);
        if let Some(row) = current(&written, key) {
            written.push((key, LessonRow { progress: row.progress.join(&write.progress), ..row }));
        }
    }
    written
}

/// What a change does to promotion rows, once checked.
struct Promotion {
    /// Each purchase row the change touches with its units after it.
    purchases: Vec<((UserId, SkuId), i64)>,
    /// The coupon after the change's move, when the move changes it.
    coupon: Option<Coupon>,
}

/// The promotion checks of one change (purchase limits, a claim, a coupon move); on success,
/// what it leaves behind. Checked after the order and stock checks, so a retried placement
/// still finds its `DuplicateKey`.
fn check_promotion(change: &Change, facts: &Facts, now_ms: i64) -> Result<Promotion, Conflict> {
    let mut purchases: Vec<((UserId, SkuId), i64)> = Vec::with_capacity(change.purchases.len());
    for write in &change.purchases {
        let key = (write.user_id, write.sku_id);
        let before = match purchases.iter().find(|(k, _)| *k == key) {
            Some((_, units)) => *units,
            None => facts.purchases.get(&key).copied().unwrap_or(0),
        };
        let after = before + write.units;
        let over = write.units > 0 && write.limit.is_some_and(|limit| after > limit);
        if over || after < 0 {
            return Err(Conflict::PurchaseLimit(write.sku_id));
        }
        match purchases.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = after,
            None => purchases.push((key, after)),
        }
    }
    if let Some(issue) = &change.issue {
        let template_id = issue.coupon.template_id;
        let template = facts.templates.get(&template_id).ok_or(Conflict::SoldOut(template_id))?;
        if template.issued >= template.total {
            return Err(Conflict::SoldOut(template_id));
        }
        let held = facts.claims.get(&(issue.coupon.user_id, template_id)).copied().unwrap_or(0);
        if held >= template.per_user_limit || issue.seq > template.per_user_limit {
            return Err(Conflict::ClaimLimit(template_id));
        }
        if issue.seq != held + 1 {
            return Err(Conflict::ClaimBehind(template_id));
        }
        if facts.coupons.contains_key(&issue.coupon.id) {
            return Err(Conflict::CouponMismatch(issue.coupon.id));
        }
    }
    let coupon = match &change.coupon {
        None => None,
        Some(movement) => {
            let stored = facts.coupons.get(&movement.coupon_id).ok_or(Conflict::CouponMismatch(movement.coupon_id))?;
            stored
                .apply(movement.step, movement.user_id, now_ms)
                .map_err(|_| Conflict::CouponMismatch(movement.coupon_id))?
        }
    };
    Ok(Promotion { purchases, coupon })
}

/// The checks of one change in precedence order; on success, the counters of its SKUs after it.
fn check(
    change: &Change,
    facts: &Facts,
    counters: &BTreeMap<SkuId, (SkuRow, Counters)>,
    transitioned: &HashSet<OrderId>,
    now_ms: i64,
) -> Result<Vec<(SkuId, Counters)>, Conflict> {
    for effect in &change.skus {
        let row = facts.skus.get(&effect.sku_id).ok_or(Conflict::Fenced(effect.sku_id))?;
        if effect.epoch.is_some_and(|epoch| epoch != row.epoch) {
            return Err(Conflict::Fenced(effect.sku_id));
        }
    }
    if let Some(sale) = &change.sale {
        let row = facts.skus.get(&sale.sku_id).ok_or(Conflict::Fenced(sale.sku_id))?;
        if sale.epoch != row.epoch {
            return Err(Conflict::Fenced(sale.sku_id));
        }
    }
    if let Some(order) = &change.order {
        if facts.orders.contains_key(&order.id) {
            return Err(Conflict::DuplicateOrder(order.id));
        }
        if facts.keys.contains(&(order.user_id, order.idempotency_key.clone())) {
            return Err(Conflict::DuplicateKey);
        }
        // Never written past its own deadline: its units may be let go by then (in a cluster,
        // the SKU's owner releases a reservation with no order once the deadline and the grace
        // passed), so a late order could be paid without units.
        if deadline_passed(order.pay_deadline_ms, now_ms) {
            return Err(Conflict::DeadlinePassed);
        }
    }
    if let Some(transition) = &change.transition {
        let found = facts.orders.get(&transition.order_id);
        let current = found == Some(&(transition.from, transition.expected_version));
        // One step per order per batch: its session waits for each step's commit.
        if !current || transitioned.contains(&transition.order_id) {
            return Err(Conflict::Stale(transition.order_id));
        }
        if transition.pay_by_ms.is_some_and(|deadline_ms| deadline_passed(deadline_ms, now_ms)) {
            return Err(Conflict::DeadlinePassed);
        }
    }
    if let Some(payment) = &change.payment {
        if facts.payments.contains(&payment.out_trade_no) {
            return Err(Conflict::DuplicatePayment);
        }
    }
    for effect in &change.skus {
        if let Some(lease) = &effect.lease {
            if facts.leases.get(&(effect.sku_id, lease.order_id)).copied() != lease.from {
                return Err(Conflict::LeaseMismatch(effect.sku_id, lease.order_id));
            }
        }
    }
    let mut after: Vec<(SkuId, Counters)> = Vec::with_capacity(change.skus.len());
    for SkuEffect { sku_id, delta, .. } in &change.skus {
        let before = match after.iter().find(|(id, _)| id == sku_id) {
            Some((_, counters)) => *counters,
            None => counters.get(sku_id).map(|(_, c)| *c).unwrap_or(facts.skus[sku_id].counters),
        };
        let moved = before.apply(*delta).ok_or(Conflict::Fenced(*sku_id))?;
        match after.iter_mut().find(|(id, _)| id == sku_id) {
            Some(slot) => slot.1 = moved,
            None => after.push((*sku_id, moved)),
        }
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lease::CounterDelta;
    use crate::domain::order::{NewOrderHeader, Order};
    use crate::domain::{Cents, IdempotencyKey, OrderLine};
    use crate::persistence::{OrderTransition, Payment, PaymentStatus};

    fn sku(n: i64) -> SkuId {
        SkuId::new(n)
    }

    fn facts(available: i64) -> Facts {
        let counters = Counters { total: available, available, reserved: 0, sold: 0 };
        let mut facts = Facts::default();
        facts.skus.insert(sku(1), SkuRow { epoch: 7, version: 3, counters });
        facts
    }

    fn reserve(epoch: i64, units: i64) -> SkuEffect {
        SkuEffect {
            sku_id: sku(1),
            epoch: Some(epoch),
            delta: CounterDelta { total: 0, available: -units, reserved: units, sold: 0 },
            lease: None,
        }
    }

    fn placement(id: i64, key: &str, units: i64) -> Change {
        let header = NewOrderHeader {
            id: OrderId::new(id),
            user_id: UserId::new(5),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            request_hash: "h".into(),
            created_at_ms: 0,
            pay_deadline_ms: 10,
            coupon_id: None,
        };
        let line = OrderLine {
            sku_id: sku(1),
            name: "n".into(),
            price_cents: Cents::new(1),
            quantity: crate::domain::Quantity::parse(units, 10).unwrap(),
            limited: false,
        };
        let order = Order::price(header, vec![line], Cents::ZERO).unwrap();
        Change { order: Some(order), skus: vec![reserve(7, units)], ..Change::default() }
    }

    #[test]
    fn a_claim_at_the_limit_is_refused_and_one_below_it_with_a_stale_seq_is_behind() {
        use crate::domain::coupon::{Coupon, CouponStatus};
        use crate::domain::{CouponId, TemplateId};
        use crate::persistence::CouponIssue;
        let (user, template) = (UserId::new(5), TemplateId::new(9));
        let claim = |id: i64, seq: i64| {
            let coupon = Coupon {
                id: CouponId::new(id),
                template_id: template,
                user_id: user,
                status: CouponStatus::Unused,
                order_id: None,
                valid_until_ms: 100,
            };
            Change { issue: Some(CouponIssue { coupon, seq, user_served_elsewhere: true }), ..Change::default() }
        };
        let mut facts = Facts::default();
        facts.templates.insert(template, TemplateRow { total: 10, issued: 1, per_user_limit: 2 });
        facts.claims.insert((user, template), 1);
        let outcomes = |changes: &[Change]| decide(changes, facts.clone(), 0).outcomes;
        assert_eq!(outcomes(&[claim(1, 1)]), vec![Err(Conflict::ClaimBehind(template))], "seq 1 is held");
        assert_eq!(outcomes(&[claim(1, 3)]), vec![Err(Conflict::ClaimLimit(template))], "past the limit");
        let both = outcomes(&[claim(1, 2), claim(2, 2)]);
        assert_eq!(both, vec![Ok(()), Err(Conflict::ClaimLimit(template))], "the batch's first fills the limit");
    }

    #[test]
    fn a_new_order_is_not_written_past_its_own_deadline() {
        // Deadline 10 (its own millisecond still in time): written at 10, refused after.
        let plan = decide(&[placement(1, "a", 2)], facts(5), 10);
        assert_eq!(plan.outcomes, vec![Ok(())]);
        for now_ms in [11, 12] {
            let plan = decide(&[placement(1, "a", 2)], facts(5), now_ms);
            assert_eq!(plan.outcomes, vec![Err(Conflict::DeadlinePassed)]);
            assert!(plan.skus.values().all(|(row, after)| after.available == row.counters.available));
        }
    }

    #[test]
    fn conflicts_fail_alone_and_later_changes_see_earlier_ones() {
        let changes = vec![
            placement(1, "a", 2),
            placement(2, "a", 1), // the same key again in the batch
            placement(3, "b", 2),
            placement(4, "c", 1), // only 1 unit left after the first and third: fits
            placement(5, "d", 1), // none left
            Change { skus: vec![reserve(6, 0)], ..Change::default() }, // an older owner
        ];
        let plan = decide(&changes, facts(5), 0);
        assert_eq!(
            plan.outcomes,
            vec![
                Ok(()),
                Err(Conflict::DuplicateKey),
                Ok(()),
                Ok(()),
                Err(Conflict::Fenced(sku(1))),
                Err(Conflict::Fenced(sku(1)))
            ]
        );
        let (row, after) = plan.skus[&sku(1)];
        assert_eq!(row.version, 3);
        assert_eq!(after, Counters { total: 5, available: 0, reserved: 5, sold: 0 });
        assert_eq!(plan.versions()[&sku(1)], 4);
        assert_eq!(plan.accepted(&changes).count(), 3);
    }

    #[test]
    fn a_lease_must_be_where_the_change_moves_it_from() {
        let lease = |from, to| SkuEffect {
            lease: Some(crate::persistence::LeaseWrite {
                order_id: OrderId::new(3),
                quantity: 1,
                expires_at_ms: 0,
                from,
                to,
            }),
            delta: CounterDelta::default(),
            ..reserve(7, 0)
        };
        let mut facts = facts(5);
        facts.leases.insert((sku(1), OrderId::new(3)), ReservationStatus::Released);
        let change = |effect| Change { skus: vec![effect], ..Change::default() };
        let changes = vec![
            change(lease(None, ReservationStatus::Reserved)), // the row exists already
            change(lease(Some(ReservationStatus::Reserved), ReservationStatus::Confirmed)), // it is released
            change(lease(Some(ReservationStatus::Released), ReservationStatus::Reserved)),
            change(lease(Some(ReservationStatus::Reserved), ReservationStatus::Confirmed)), // sees the one before
        ];
        let plan = decide(&changes, facts, 0);
        let mismatch = Err(Conflict::LeaseMismatch(sku(1), OrderId::new(3)));
        assert_eq!(plan.outcomes, vec![mismatch, mismatch, Ok(()), Ok(())]);
    }

    #[test]
    fn transitions_need_their_version_and_payments_their_deadline() {
        let mut facts = facts(5);
        facts.orders.insert(OrderId::new(9), (OrderStatus::PendingPayment, 1));
        facts.payments.insert("known".into());
        let pay = |trade_no: &str, version, pay_by_ms| Change {
            transition: Some(OrderTransition {
                order_id: OrderId::new(9),
                from: OrderStatus::PendingPayment,
                to: OrderStatus::Paid,
                expected_version: version,
                at_ms: 0,
                pay_by_ms: Some(pay_by_ms),
                refund_payment: false,
            }),
            payment: Some(Payment {
                out_trade_no: trade_no.into(),
                order_id: OrderId::new(9),
                amount_cents: Cents::new(1),
                channel: "c".into(),
                status: PaymentStatus::Paid,
            }),
            ..Change::default()
        };
        let changes =
            vec![pay("t1", 0, 100), pay("t1", 1, 99), pay("known", 1, 100), pay("t2", 1, 100), pay("t3", 1, 100)];
        let plan = decide(&changes, facts, 100);
        assert_eq!(
            plan.outcomes,
            vec![
                Err(Conflict::Stale(OrderId::new(9))),
                Err(Conflict::DeadlinePassed),
                Err(Conflict::DuplicatePayment),
                Ok(()),
                Err(Conflict::Stale(OrderId::new(9))),
            ]
        );
    }

    fn grant(user: i64, courses: &[i64], step: crate::domain::order::LessonStep) -> Change {
        Change {
            lessons: Some(crate::persistence::LessonGrant {
                user_id: UserId::new(user),
                course_ids: courses.iter().map(|c| sku(*c)).collect(),
                step,
            }),
            ..Change::default()
        }
    }

    fn progress_write(user: i64, course: i64, section: i64, position: i64) -> Change {
        let progress = Progress {
            latest_section_id: section,
            position_sec: position,
            status: crate::domain::learning::LessonStatus::Learning,
            updated_at_ms: 50,
        };
        Change {
            progress: vec![crate::persistence::ProgressWrite {
                user_id: UserId::new(user),
                course_id: sku(course),
                progress,
            }],
            ..Change::default()
        }
    }

    #[test]
    fn lessons_open_count_holders_keep_progress_and_never_refuse() {
        use crate::domain::order::LessonStep::{Open, Revoke};
        let changes = vec![
            // Progress for a course never opened is dropped, not refused.
            progress_write(1, 10, 3, 30),
            grant(1, &[10, 11], Open),
            progress_write(1, 10, 2, 20),
            grant(1, &[10], Open),
            grant(1, &[10], Revoke),
            // A revoke of a course with no row changes nothing.
            grant(1, &[12], Revoke),
            // Progress never moves back, whoever wrote last.
            progress_write(1, 10, 1, 99),
        ];
        let plan = decide(&changes, Facts::default(), 40);
        assert!(plan.outcomes.iter().all(Result::is_ok));
        let row = plan.lessons[&(UserId::new(1), sku(10))];
        assert_eq!(row.holders, 1, "opened twice, revoked once");
        assert_eq!((row.progress.latest_section_id, row.progress.position_sec), (2, 20));
        assert_eq!(plan.lessons[&(UserId::new(1), sku(11))], LessonRow { holders: 1, progress: Progress::opened(40) });
        assert!(!plan.lessons.contains_key(&(UserId::new(1), sku(12))));
    }

    #[test]
    fn a_revoke_keeps_the_row_with_no_holders_and_its_progress() {
        let mut facts = Facts::default();
        let stored = LessonRow { holders: 1, progress: Progress::opened(5) };
        facts.lessons.insert((UserId::new(1), sku(10)), stored);
        let changes = vec![grant(1, &[10], crate::domain::order::LessonStep::Revoke), progress_write(1, 10, 4, 0)];
        let plan = decide(&changes, facts, 40);
        let row = plan.lessons[&(UserId::new(1), sku(10))];
        assert_eq!(row.holders, 0);
        assert_eq!(row.progress.latest_section_id, 4, "a row without holders still keeps progress");
    }
}
