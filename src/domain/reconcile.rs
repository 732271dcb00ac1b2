//! Reconciliation rules: what the stored state must say about itself, and which of its
//! differences may be repaired without a person.
//!
//! Pure: facts read in one consistent snapshot of the database (and the Redis snapshots of its
//! SKUs) go in, differences come out, each with a kind, the key it is about, what the rules
//! expect and what was found. The rules are the ones the write pipeline keeps, restated from
//! the rows alone:
//! - a SKU's `reserved` is the units of its leases in status `reserved`, its `sold` the units of
//!   its `confirmed` leases, and its counters balance (`available + reserved + sold == total`);
//! - every lease agrees with its order (`lease::lease_agrees`) and holds its order item's units;
//!   the items of orders that hold sold units add up to the SKU's confirmed leases;
//! - a template's `issued` is its coupon count, never above `total`; no user holds more than the
//!   per-user limit; a locked coupon's order awaits payment, a used one's was paid (or refunded
//!   with the coupon kept), and an order that holds a coupon holds it in the status it needs;
//! - a user's purchase row of a limited SKU is the units of the user's counted items whose
//!   order still holds its units;
//! - a lesson's `holders` is the number of the user's paid or finished orders holding the course;
//! - a SKU's Redis snapshot exists, is not older than the database, and at the database's
//!   version holds the database's counters;
//! - every `order_status_log` row of an order has its `order_event`, in the same order and of
//!   the kind the outbox writes for it, and every payment kept for refund its `refund_required`
//!   event. Events are history: a missing or wrong one is reported, never written.
//!
//! Whether a lease agrees with its order, and so whether an order still holds its units, is
//! `lease::lease_agrees`, the rule recovery repairs by; nothing here restates it.
//!
//! The facts need not be read at once: `check_stock` needs the rows of some SKUs (and the
//! orders of their leases and items), `check_promotions` the templates, coupons and the orders
//! that name coupons, `check_events` the log rows, events and payments of some orders. Each
//! gives the same differences for a part as `check` gives for the whole, so a reader can go
//! through a large database a part at a time.
//!
//! A difference carries a `Repair` only when the rows themselves prove the right value and
//! writing it moves no money and deletes nothing: SKU counters that disagree with leases that
//! all agree with their orders (the total is never changed), a template's `issued` when its
//! records are within its total, and a Redis snapshot (Redis is never the source of truth).
//! A repair that a running node is not fenced against (`Repair::fenced_against_live_nodes`) is
//! carried but must not be applied while nodes run.

use super::coupon::CouponStatus;
use super::inventory::Counters;
use super::lease::{lease_agrees, ReservationStatus};
use super::order::{EventKind, OrderStatus};
use super::{CouponId, OrderId, SkuId, TemplateId, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// A SKU's `inventory` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuFacts {
    pub sku_id: SkuId,
    pub counters: Counters,
    pub version: i64,
    pub price_cents: i64,
}

/// An `inventory_reservation` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseFacts {
    pub sku_id: SkuId,
    pub order_id: OrderId,
    pub quantity: i64,
    pub status: ReservationStatus,
}

/// A `trade_order` row, and whether its status log shows a refund from Paid (units returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderFacts {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub coupon_id: Option<CouponId>,
    pub refunded_from_paid: bool,
}

/// A `trade_order_item` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemFacts {
    pub order_id: OrderId,
    pub sku_id: SkuId,
    pub quantity: i64,
    pub limit_counted: bool,
}

/// A `coupon_template` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateFacts {
    pub template_id: TemplateId,
    pub total: i64,
    pub issued: i64,
    pub per_user_limit: i64,
}

/// A `coupon_record` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponFacts {
    pub coupon_id: CouponId,
    pub user_id: UserId,
    pub template_id: TemplateId,
    pub status: CouponStatus,
    pub order_id: Option<OrderId>,
}

/// A `user_sku_purchase` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseFacts {
    pub user_id: UserId,
    pub sku_id: SkuId,
    pub units: i64,
}

/// A `learning_lesson` row (its holders; progress is not reconciled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LessonFacts {
    pub user_id: UserId,
    pub course_id: SkuId,
    pub holders: i64,
}

/// An `order_status_log` row, with the kind of event the outbox writes for it
/// (`EventKind::of_step`: by its target status, `placed` for an order's first row). Given in
/// log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFacts {
    pub order_id: OrderId,
    pub event_kind: EventKind,
}

/// An `order_event` row of an order transition (not `refund_required`). Given in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFacts {
    pub order_id: OrderId,
    pub event_id: i64,
    pub kind: EventKind,
}

/// Everything the database holds that the rules compare, read in one snapshot (or a part of
/// it: see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub skus: Vec<SkuFacts>,
    pub leases: Vec<LeaseFacts>,
    pub orders: Vec<OrderFacts>,
    pub items: Vec<ItemFacts>,
    pub templates: Vec<TemplateFacts>,
    pub coupons: Vec<CouponFacts>,
    pub purchases: Vec<PurchaseFacts>,
    pub lessons: Vec<LessonFacts>,
    pub steps: Vec<StepFacts>,
    pub step_events: Vec<EventFacts>,
    /// The order of each `refund_required` event, one entry per event.
    pub refund_events: Vec<OrderId>,
    /// The order of each payment in status `refund_required`, one entry per payment.
    pub refund_payments: Vec<OrderId>,
}

/// A SKU's Redis snapshot as read back (`tianji:sku:{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub counters: Counters,
    pub version: i64,
    pub price_cents: i64,
}

/// What a difference is about. The names are printed and grepped for: never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The counters do not balance or one is negative.
    SkuUnbalanced,
    /// `reserved`/`sold` differ from the units of the SKU's leases.
    SkuCounters,
    /// The items of orders holding sold units differ from the SKU's confirmed leases.
    SkuItems,
    /// A lease's status does not agree with its order's.
    LeaseStatus,
    /// A lease holds other units than its order item.
    LeaseQuantity,
    /// An order item has no lease on its SKU.
    LeaseMissing,
    /// A lease's order exists but has no item of the lease's SKU.
    LeaseWithoutItem,
    /// A template's `issued` differs from its coupon records.
    CouponIssued,
    /// A template has more coupon records than its total.
    CouponOverTotal,
    /// A user holds more coupons of a template than its per-user limit.
    CouponPerUser,
    /// A coupon record names a template that does not exist.
    CouponTemplateMissing,
    /// A coupon's status disagrees with its order (or the order's coupon with the coupon).
    CouponOrder,
    /// A purchase row differs from the units of the user's counted items.
    PurchaseUnits,
    /// A lesson's holders differ from the user's paid or finished orders holding the course.
    LessonHolders,
    /// A SKU has no Redis snapshot.
    SnapshotMissing,
    /// A SKU's Redis snapshot is of an older version than the database.
    SnapshotStale,
    /// A SKU's Redis snapshot is of a version the database does not have.
    SnapshotAhead,
    /// A SKU's Redis snapshot is of the database's version but holds other values.
    SnapshotCounters,
    /// An order's status log rows (or its payments kept for refund) lack events.
    EventMissing,
    /// An order's events are not those of its status log rows, in order.
    EventMismatch,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SkuUnbalanced => "sku_unbalanced",
            Self::SkuCounters => "sku_counters",
            Self::SkuItems => "sku_items",
            Self::LeaseStatus => "lease_status",
            Self::LeaseQuantity => "lease_quantity",
            Self::LeaseMissing => "lease_missing",
            Self::LeaseWithoutItem => "lease_without_item",
            Self::CouponIssued => "coupon_issued",
            Self::CouponOverTotal => "coupon_over_total",
            Self::CouponPerUser => "coupon_per_user",
            Self::CouponTemplateMissing => "coupon_template_missing",
            Self::CouponOrder => "coupon_order",
            Self::PurchaseUnits => "purchase_units",
            Self::LessonHolders => "lesson_holders",
            Self::SnapshotMissing => "snapshot_missing",
            Self::SnapshotStale => "snapshot_stale",
            Self::SnapshotAhead => "snapshot_ahead",
            Self::SnapshotCounters => "snapshot_counters",
            Self::EventMissing => "event_missing",
            Self::EventMismatch => "event_mismatch",
        }
    }

    /// Why a difference of this kind is left as it is when it carries no repair.
    pub const fn left_because(self) -> &'static str {
        match self {
            Self::LeaseStatus => "recovery settles leases with their orders when `tianji serve` starts",
            Self::SkuCounters => "the leases do not prove the counters (a lease disagrees with its order or the units do not fit the total)",
            Self::CouponIssued => "the records do not fit the template's total",
            Self::EventMissing | Self::EventMismatch => "events are history: reconcile never writes one",
            _ => "needs a person: reconcile never deletes records or changes orders, payments, coupons or purchases",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The row (or Redis key) a difference is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Sku(SkuId),
    Lease(SkuId, OrderId),
    Order(OrderId),
    Template(TemplateId),
    /// A user's coupons of a template.
    Claims(UserId, TemplateId),
    Coupon(CouponId),
    Purchase(UserId, SkuId),
    Lesson(UserId, SkuId),
    Snapshot(SkuId),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Sku(sku) => write!(f, "sku:{sku}"),
            Key::Lease(sku, order) => write!(f, "lease:{sku}/{order}"),
            Key::Order(order) => write!(f, "order:{order}"),
            Key::Template(template) => write!(f, "template:{template}"),
            Key::Claims(user, template) => write!(f, "claims:{user}/{template}"),
            Key::Coupon(coupon) => write!(f, "coupon:{coupon}"),
            Key::Purchase(user, sku) => write!(f, "purchase:{user}/{sku}"),
            Key::Lesson(user, course) => write!(f, "lesson:{user}/{course}"),
            Key::Snapshot(sku) => write!(f, "tianji:sku:{sku}"),
        }
    }
}

/// A repair the rows prove; the store applies it only if what it finds under lock is still
/// what the difference found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Set the SKU's counters from `from` to `to` (same total), fencing any live owner.
    SkuCounters { sku_id: SkuId, from: Counters, to: Counters },
    /// Set the template's `issued` from `from` to `to` (its record count, within its total).
    TemplateIssued { template_id: TemplateId, from: i64, to: i64 },
    /// Write the database's snapshot of the SKU to Redis, if Redis still holds the version
    /// found (`None`: no snapshot).
    Snapshot { sku_id: SkuId, found_version: Option<i64> },
}

impl Repair {
    /// Whether a running node cannot be misled by the repair. A SKU's counters are written
    /// with its owner epoch bumped (the actor's next commit is fenced and it reloads), and a
    /// snapshot is only what readers see. A template has no epoch: its actor keeps the count it
    /// holds. Raising `issued` to the records is safe, since every claim's commit re-checks
    /// `issued < total` in the database and an actor refused there reloads; lowering it is
    /// not, since an actor that holds the higher count refuses claims with coupons left.
    pub const fn fenced_against_live_nodes(&self) -> bool {
        match *self {
            Repair::SkuCounters { .. } | Repair::Snapshot { .. } => true,
            Repair::TemplateIssued { from, to, .. } => to >= from,
        }
    }
}

/// One difference between what the rules expect and what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub kind: Kind,
    pub key: Key,
    /// What the rules expect, without spaces (`reserved=3,sold=2`).
    pub expected: String,
    /// What is stored, in the same form.
    pub found: String,
    pub repair: Option<Repair>,
}

impl fmt::Display for Difference {
    /// One line: `<kind> <key> expected=<...> found=<...>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} expected={} found={}", self.kind, self.key, self.expected, self.found)
    }
}

fn counters_text(c: Counters) -> String {
    format!("total={},available={},reserved={},sold={}", c.total, c.available, c.reserved, c.sold)
}

fn statuses_text(statuses: &[ReservationStatus]) -> String {
    statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|")
}

/// One lease of a SKU with what its order says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOfSku {
    pub order_id: OrderId,
    pub quantity: i64,
    pub status: ReservationStatus,
    /// `None`: no order was written for the lease.
    pub order: Option<OrderStatus>,
    pub refunded_from_paid: bool,
    /// The units of the order's item of this SKU (`None`: no such item).
    pub item_quantity: Option<i64>,
}

/// The differences of one SKU against its leases: each lease against its order and item, the
/// counters against the leases. The counters carry a repair when every lease agrees with its
/// order and holds its item's units, and the units the leases hold fit the total.
pub fn check_sku(sku: &SkuFacts, leases: &[LeaseOfSku]) -> Vec<Difference> {
    let mut differences = Vec::new();
    let c = sku.counters;
    if !c.is_balanced() {
        differences.push(Difference {
            kind: Kind::SkuUnbalanced,
            key: Key::Sku(sku.sku_id),
            expected: "available+reserved+sold=total,all>=0".into(),
            found: counters_text(c),
            repair: None,
        });
    }
    let mut proven = true;
    for lease in leases {
        let key = Key::Lease(sku.sku_id, lease.order_id);
        if !lease_agrees(lease.status, lease.order, lease.refunded_from_paid) {
            proven = false;
            let agreeing: Vec<ReservationStatus> = ReservationStatus::ALL
                .into_iter()
                .filter(|&status| lease_agrees(status, lease.order, lease.refunded_from_paid))
                .collect();
            let order = match lease.order {
                None => "no_order".to_owned(),
                Some(OrderStatus::Refunded) if lease.refunded_from_paid => "order_refunded_from_paid".into(),
                Some(status) => format!("order_{}", status.as_str()),
            };
            let expected = format!("{}({order})", statuses_text(&agreeing));
            differences.push(Difference {
                kind: Kind::LeaseStatus,
                key,
                expected,
                found: lease.status.as_str().into(),
                repair: None,
            });
        }
        match (lease.order, lease.item_quantity) {
            (Some(_), None) => {
                proven = false;
                differences.push(Difference {
                    kind: Kind::LeaseWithoutItem,
                    key,
                    expected: "an_order_item_of_the_sku".into(),
                    found: "none".into(),
                    repair: None,
                });
            }
            (_, Some(units)) if units != lease.quantity => {
                proven = false;
                differences.push(Difference {
                    kind: Kind::LeaseQuantity,
                    key,
                    expected: format!("quantity={units}"),
                    found: format!("quantity={}", lease.quantity),
                    repair: None,
                });
            }
            _ => {}
        }
    }
    let units_in =
        |status: ReservationStatus| -> i64 { leases.iter().filter(|l| l.status == status).map(|l| l.quantity).sum() };
    let (reserved, sold) = (units_in(ReservationStatus::Reserved), units_in(ReservationStatus::Confirmed));
    if (reserved, sold) != (c.reserved, c.sold) {
        let to = Counters { total: c.total, available: c.total - reserved - sold, reserved, sold };
        let repair = (proven && to.is_balanced()).then_some(Repair::SkuCounters { sku_id: sku.sku_id, from: c, to });
        differences.push(Difference {
            kind: Kind::SkuCounters,
            key: Key::Sku(sku.sku_id),
            expected: format!("reserved={reserved},sold={sold}"),
            found: format!("reserved={},sold={}", c.reserved, c.sold),
            repair,
        });
    }
    differences
}

/// Whether an order in `status` holds the units of its items (they are reserved or sold, not
/// back on the shelf): its lease agrees with it while `reserved` or `confirmed`.
pub fn holds_units(status: OrderStatus, refunded_from_paid: bool) -> bool {
    lease_agrees(ReservationStatus::Reserved, Some(status), refunded_from_paid)
        || holds_sold_units(status, refunded_from_paid)
}

/// Whether an order in `status` holds sold units: its lease agrees with it while `confirmed`.
pub fn holds_sold_units(status: OrderStatus, refunded_from_paid: bool) -> bool {
    lease_agrees(ReservationStatus::Confirmed, Some(status), refunded_from_paid)
}

/// Every difference of the database with itself, ordered by kind and key.
pub fn check(facts: &Facts) -> Vec<Difference> {
    let mut differences = check_stock(facts);
    differences.extend(check_promotions(facts));
    differences.extend(check_events(facts));
    differences.sort_by_key(|d| (d.kind, d.key));
    differences
}

/// The differences of the SKUs in `facts` (their counters, leases, items, purchase rows and
/// lessons), from `skus`, `leases`, `items`, `purchases`, `lessons` and the `orders` those
/// leases and items name. Leases, items, purchases and lessons of SKUs not in `skus` are
/// differences of SKUs that do not exist. Ordered by kind and key.
pub fn check_stock(facts: &Facts) -> Vec<Difference> {
    let orders: HashMap<OrderId, &OrderFacts> = facts.orders.iter().map(|o| (o.order_id, o)).collect();
    let mut differences = Vec::new();
    check_leases(facts, &orders, &mut differences);
    check_purchases(facts, &orders, &mut differences);
    check_lessons(facts, &orders, &mut differences);
    differences.sort_by_key(|d| (d.kind, d.key));
    differences
}

/// The differences of the coupon templates and coupons in `facts`, from `templates`, `coupons`
/// and the `orders` that name a coupon or are named by one. Ordered by kind and key.
pub fn check_promotions(facts: &Facts) -> Vec<Difference> {
    let orders: HashMap<OrderId, &OrderFacts> = facts.orders.iter().map(|o| (o.order_id, o)).collect();
    let mut differences = Vec::new();
    check_coupons(facts, &orders, &mut differences);
    differences.sort_by_key(|d| (d.kind, d.key));
    differences
}

/// The differences of the orders' events, from `steps`, `step_events`, `refund_events` and
/// `refund_payments`, all of the same orders: per order, the kinds of its events in id order
/// must be those of its log rows in log order; it has at least one `refund_required` event per
/// payment kept for refund (a payment refunded since no longer counts). Never repaired.
pub fn check_events(facts: &Facts) -> Vec<Difference> {
    let mut expected: BTreeMap<OrderId, Vec<&'static str>> = BTreeMap::new();
    for step in &facts.steps {
        assert_ne!(step.event_kind, EventKind::RefundRequired, "a log row's event is a step");
        expected.entry(step.order_id).or_default().push(step.event_kind.as_str());
    }
    let mut found: BTreeMap<OrderId, Vec<(i64, &'static str)>> = BTreeMap::new();
    for event in &facts.step_events {
        assert_ne!(event.kind, EventKind::RefundRequired, "refund_required events are counted apart");
        found.entry(event.order_id).or_default().push((event.event_id, event.kind.as_str()));
    }
    let mut differences = Vec::new();
    let orders: BTreeSet<OrderId> = expected.keys().chain(found.keys()).copied().collect();
    for order_id in orders {
        let want = expected.get(&order_id).map_or(&[][..], Vec::as_slice);
        let have = found.get(&order_id).map_or(&[][..], Vec::as_slice);
        assert!(have.windows(2).all(|pair| pair[0].0 < pair[1].0), "events of order {order_id} in id order");
        let kinds: Vec<&str> = have.iter().map(|&(_, kind)| kind).collect();
        if kinds == want {
            continue;
        }
        let kind =
            if kinds.len() < want.len() && want.starts_with(&kinds) { Kind::EventMissing } else { Kind::EventMismatch };
        let list = |kinds: &[&str]| if kinds.is_empty() { "none".to_owned() } else { kinds.join(",") };
        differences.push(Difference {
            kind,
            key: Key::Order(order_id),
            expected: format!("events={}", list(want)),
            found: format!("events={}", list(&kinds)),
            repair: None,
        });
    }
    let count = |orders: &[OrderId]| {
        let mut counts: BTreeMap<OrderId, i64> = BTreeMap::new();
        for &order_id in orders {
            *counts.entry(order_id).or_insert(0) += 1;
        }
        counts
    };
    let events = count(&facts.refund_events);
    for (order_id, payments) in count(&facts.refund_payments) {
        let published = events.get(&order_id).copied().unwrap_or(0);
        if published < payments {
            differences.push(Difference {
                kind: Kind::EventMissing,
                key: Key::Order(order_id),
                expected: format!("refund_required_events>={payments}"),
                found: format!("refund_required_events={published}"),
                repair: None,
            });
        }
    }
    differences.sort_by_key(|d| (d.kind, d.key));
    differences
}

/// SKUs against their leases, leases against orders and items.
fn check_leases(facts: &Facts, orders: &HashMap<OrderId, &OrderFacts>, differences: &mut Vec<Difference>) {
    let mut items: HashMap<(SkuId, OrderId), i64> = HashMap::new();
    for item in &facts.items {
        *items.entry((item.sku_id, item.order_id)).or_insert(0) += item.quantity;
    }
    let mut leases_of: HashMap<SkuId, Vec<LeaseOfSku>> = HashMap::new();
    let mut leased: BTreeSet<(SkuId, OrderId)> = BTreeSet::new();
    for lease in &facts.leases {
        let order = orders.get(&lease.order_id);
        leased.insert((lease.sku_id, lease.order_id));
        leases_of.entry(lease.sku_id).or_default().push(LeaseOfSku {
            order_id: lease.order_id,
            quantity: lease.quantity,
            status: lease.status,
            order: order.map(|o| o.status),
            refunded_from_paid: order.is_some_and(|o| o.refunded_from_paid),
            item_quantity: items.get(&(lease.sku_id, lease.order_id)).copied(),
        });
    }
    let mut sold_items: HashMap<SkuId, i64> = HashMap::new();
    for (&(sku_id, order_id), &units) in &items {
        if !leased.contains(&(sku_id, order_id)) {
            differences.push(Difference {
                kind: Kind::LeaseMissing,
                key: Key::Lease(sku_id, order_id),
                expected: format!("quantity={units}"),
                found: "none".into(),
                repair: None,
            });
        }
        if orders.get(&order_id).is_some_and(|o| holds_sold_units(o.status, o.refunded_from_paid)) {
            *sold_items.entry(sku_id).or_insert(0) += units;
        }
    }
    for sku in &facts.skus {
        let leases = leases_of.remove(&sku.sku_id).unwrap_or_default();
        let confirmed: i64 =
            leases.iter().filter(|l| l.status == ReservationStatus::Confirmed).map(|l| l.quantity).sum();
        let sold_by_items = sold_items.get(&sku.sku_id).copied().unwrap_or(0);
        if confirmed != sold_by_items {
            differences.push(Difference {
                kind: Kind::SkuItems,
                key: Key::Sku(sku.sku_id),
                expected: format!("confirmed_units={sold_by_items}"),
                found: format!("confirmed_units={confirmed}"),
                repair: None,
            });
        }
        differences.extend(check_sku(sku, &leases));
    }
    // Leases of SKUs that do not exist: every one of them is a difference.
    for (sku_id, leases) in leases_of {
        for lease in leases {
            differences.push(Difference {
                kind: Kind::LeaseStatus,
                key: Key::Lease(sku_id, lease.order_id),
                expected: "an_existing_sku".into(),
                found: lease.status.as_str().into(),
                repair: None,
            });
        }
    }
}

/// Templates against their records, coupons against their orders.
fn check_coupons(facts: &Facts, orders: &HashMap<OrderId, &OrderFacts>, differences: &mut Vec<Difference>) {
    let templates: HashMap<TemplateId, &TemplateFacts> = facts.templates.iter().map(|t| (t.template_id, t)).collect();
    let mut records: HashMap<TemplateId, i64> = HashMap::new();
    let mut held: BTreeMap<(UserId, TemplateId), i64> = BTreeMap::new();
    for coupon in &facts.coupons {
        *records.entry(coupon.template_id).or_insert(0) += 1;
        *held.entry((coupon.user_id, coupon.template_id)).or_insert(0) += 1;
        if !templates.contains_key(&coupon.template_id) {
            differences.push(Difference {
                kind: Kind::CouponTemplateMissing,
                key: Key::Coupon(coupon.coupon_id),
                expected: format!("template:{}", coupon.template_id),
                found: "none".into(),
                repair: None,
            });
        }
        check_coupon_order(coupon, orders, differences);
    }
    for template in &facts.templates {
        let count = records.get(&template.template_id).copied().unwrap_or(0);
        if count > template.total {
            differences.push(Difference {
                kind: Kind::CouponOverTotal,
                key: Key::Template(template.template_id),
                expected: format!("records<={}", template.total),
                found: format!("records={count}"),
                repair: None,
            });
        }
        if count != template.issued {
            let repair = (count <= template.total).then_some(Repair::TemplateIssued {
                template_id: template.template_id,
                from: template.issued,
                to: count,
            });
            differences.push(Difference {
                kind: Kind::CouponIssued,
                key: Key::Template(template.template_id),
                expected: format!("issued={count}"),
                found: format!("issued={}", template.issued),
                repair,
            });
        }
    }
    for (&(user_id, template_id), &count) in &held {
        let Some(template) = templates.get(&template_id) else { continue };
        if count > template.per_user_limit {
            differences.push(Difference {
                kind: Kind::CouponPerUser,
                key: Key::Claims(user_id, template_id),
                expected: format!("coupons<={}", template.per_user_limit),
                found: format!("coupons={count}"),
                repair: None,
            });
        }
    }
    // An order that must hold its coupon but does not (the coupon side reports a coupon held
    // by an order in the wrong status).
    let coupons: HashMap<CouponId, &CouponFacts> = facts.coupons.iter().map(|c| (c.coupon_id, c)).collect();
    for order in &facts.orders {
        let Some(coupon_id) = order.coupon_id else { continue };
        let needed = match order.status {
            OrderStatus::PendingPayment => CouponStatus::Locked,
            OrderStatus::Paid | OrderStatus::Finished => CouponStatus::Used,
            OrderStatus::Closed | OrderStatus::Refunded => continue,
        };
        let coupon = coupons.get(&coupon_id);
        let held_by_order = coupon.is_some_and(|c| c.order_id == Some(order.order_id) && c.user_id == order.user_id);
        if !held_by_order {
            differences.push(Difference {
                kind: Kind::CouponOrder,
                key: Key::Order(order.order_id),
                expected: format!("coupon:{coupon_id}={}_by_order", needed.as_str()),
                found: coupon.map_or("no_coupon".into(), |c| coupon_text(c)),
                repair: None,
            });
        }
    }
}

fn coupon_text(coupon: &CouponFacts) -> String {
    match coupon.order_id {
        Some(order_id) => format!("{}(order:{order_id},user:{})", coupon.status.as_str(), coupon.user_id),
        None => format!("{}(user:{})", coupon.status.as_str(), coupon.user_id),
    }
}

/// A coupon against the order that holds it: an unused coupon belongs to no order; a locked
/// one to an order awaiting payment; a used one to a paid or finished order (or a refunded one
/// that kept the coupon because it had expired); that order names the coupon and its user.
fn check_coupon_order(coupon: &CouponFacts, orders: &HashMap<OrderId, &OrderFacts>, differences: &mut Vec<Difference>) {
    let allowed: &[OrderStatus] = match coupon.status {
        CouponStatus::Unused => &[],
        CouponStatus::Locked => &[OrderStatus::PendingPayment],
        CouponStatus::Used => &[OrderStatus::Paid, OrderStatus::Finished, OrderStatus::Refunded],
    };
    let found = match coupon.order_id.map(|id| (id, orders.get(&id))) {
        None if coupon.status == CouponStatus::Unused => return,
        None => "no_order".to_owned(),
        Some((order_id, None)) => format!("order:{order_id}=missing"),
        Some((order_id, Some(order))) => {
            let agrees = coupon.status != CouponStatus::Unused
                && allowed.contains(&order.status)
                && order.coupon_id == Some(coupon.coupon_id)
                && order.user_id == coupon.user_id;
            if agrees {
                return;
            }
            let named = order.coupon_id.map_or("none".to_owned(), |c| c.to_string());
            format!("order:{order_id}={},coupon:{named},user:{}", order.status.as_str(), order.user_id)
        }
    };
    let expected = if coupon.status == CouponStatus::Unused {
        "no_order".to_owned()
    } else {
        let statuses: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        format!("order:{}(naming_coupon,user:{})", statuses.join("|"), coupon.user_id)
    };
    differences.push(Difference {
        kind: Kind::CouponOrder,
        key: Key::Coupon(coupon.coupon_id),
        expected: format!("{}:{expected}", coupon.status.as_str()),
        found,
        repair: None,
    });
}

/// Purchase rows against the counted items of orders that still hold their units.
fn check_purchases(facts: &Facts, orders: &HashMap<OrderId, &OrderFacts>, differences: &mut Vec<Difference>) {
    let mut expected: BTreeMap<(UserId, SkuId), i64> = BTreeMap::new();
    for item in facts.items.iter().filter(|item| item.limit_counted) {
        let Some(order) = orders.get(&item.order_id) else { continue };
        if holds_units(order.status, order.refunded_from_paid) {
            *expected.entry((order.user_id, item.sku_id)).or_insert(0) += item.quantity;
        }
    }
    let stored: BTreeMap<(UserId, SkuId), i64> =
        facts.purchases.iter().map(|p| ((p.user_id, p.sku_id), p.units)).collect();
    compare_counts(&expected, &stored, differences, Kind::PurchaseUnits, "units", |(u, s)| Key::Purchase(u, s));
}

/// Lesson rows against the user's paid or finished orders holding the course.
fn check_lessons(facts: &Facts, orders: &HashMap<OrderId, &OrderFacts>, differences: &mut Vec<Difference>) {
    let mut holders: BTreeMap<(UserId, SkuId), BTreeSet<OrderId>> = BTreeMap::new();
    for item in &facts.items {
        let Some(order) = orders.get(&item.order_id) else { continue };
        if matches!(order.status, OrderStatus::Paid | OrderStatus::Finished) {
            holders.entry((order.user_id, item.sku_id)).or_default().insert(order.order_id);
        }
    }
    let expected: BTreeMap<(UserId, SkuId), i64> =
        holders.into_iter().map(|(key, orders)| (key, orders.len() as i64)).collect();
    let stored: BTreeMap<(UserId, SkuId), i64> =
        facts.lessons.iter().map(|l| ((l.user_id, l.course_id), l.holders)).collect();
    compare_counts(&expected, &stored, differences, Kind::LessonHolders, "holders", |(u, c)| Key::Lesson(u, c));
}

/// Compares counts per key, a missing entry on either side counting as zero.
fn compare_counts(
    expected: &BTreeMap<(UserId, SkuId), i64>,
    stored: &BTreeMap<(UserId, SkuId), i64>,
    differences: &mut Vec<Difference>,
    kind: Kind,
    name: &str,
    key: impl Fn((UserId, SkuId)) -> Key,
) {
    let keys: BTreeSet<&(UserId, SkuId)> = expected.keys().chain(stored.keys()).collect();
    for &pair in keys {
        let want = expected.get(&pair).copied().unwrap_or(0);
        let have = stored.get(&pair).copied();
        if have.unwrap_or(0) != want {
            differences.push(Difference {
                kind,
                key: key(pair),
                expected: format!("{name}={want}"),
                found: have.map_or("no_row".into(), |have| format!("{name}={have}")),
                repair: None,
            });
        }
    }
}

/// The Redis snapshots of the database's SKUs (`found[i]` is the snapshot of `skus[i]`, `None`
/// when missing) against the database. Every difference carries a republish.
pub fn check_snapshots(skus: &[SkuFacts], found: &[Option<SnapshotFacts>]) -> Vec<Difference> {
    assert_eq!(skus.len(), found.len(), "one snapshot read per sku");
    let mut differences = Vec::new();
    for (sku, snapshot) in skus.iter().zip(found) {
        let repair = Some(Repair::Snapshot { sku_id: sku.sku_id, found_version: snapshot.map(|s| s.version) });
        let expected_text = format!("version={},{}", sku.version, counters_text(sku.counters));
        let (kind, found_text) = match snapshot {
            None => (Kind::SnapshotMissing, "none".to_owned()),
            Some(s) if s.version < sku.version => (Kind::SnapshotStale, format!("version={}", s.version)),
            Some(s) if s.version > sku.version => (Kind::SnapshotAhead, format!("version={}", s.version)),
            Some(s) if s.counters != sku.counters || s.price_cents != sku.price_cents => (
                Kind::SnapshotCounters,
                format!("version={},{},price_cents={}", s.version, counters_text(s.counters), s.price_cents),
            ),
            Some(_) => continue,
        };
        let expected = if kind == Kind::SnapshotCounters {
            format!("{expected_text},price_cents={}", sku.price_cents)
        } else {
            expected_text
        };
        differences.push(Difference { kind, key: Key::Snapshot(sku.sku_id), expected, found: found_text, repair });
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKU: SkuId = SkuId::new(1);
    const USER: UserId = UserId::new(7);

    fn counters(available: i64, reserved: i64, sold: i64) -> Counters {
        Counters { total: available + reserved + sold, available, reserved, sold }
    }

    fn order(id: i64, status: OrderStatus) -> OrderFacts {
        OrderFacts { order_id: OrderId::new(id), user_id: USER, status, coupon_id: None, refunded_from_paid: false }
    }

    fn lease(order: i64, quantity: i64, status: ReservationStatus) -> LeaseFacts {
        LeaseFacts { sku_id: SKU, order_id: OrderId::new(order), quantity, status }
    }

    fn item(order: i64, quantity: i64) -> ItemFacts {
        ItemFacts { order_id: OrderId::new(order), sku_id: SKU, quantity, limit_counted: true }
    }

    /// Ten units: order 1 pending (2 reserved), 2 paid (3 sold), 3 closed (1 released),
    /// 4 refunded from paid (1 returned), 5 refunded after delivery (1 sold).
    fn lifecycle() -> Facts {
        use OrderStatus::*;
        use ReservationStatus::*;
        let mut refunded = order(4, Refunded);
        refunded.refunded_from_paid = true;
        Facts {
            skus: vec![SkuFacts { sku_id: SKU, counters: counters(4, 2, 4), version: 9, price_cents: 100 }],
            leases: vec![
                lease(1, 2, Reserved),
                lease(2, 3, Confirmed),
                lease(3, 1, Released),
                lease(4, 1, Returned),
                lease(5, 1, Confirmed),
            ],
            orders: vec![order(1, PendingPayment), order(2, Paid), order(3, Closed), refunded, order(5, Refunded)],
            items: vec![item(1, 2), item(2, 3), item(3, 1), item(4, 1), item(5, 1)],
            purchases: vec![PurchaseFacts { user_id: USER, sku_id: SKU, units: 6 }],
            lessons: vec![LessonFacts { user_id: USER, course_id: SKU, holders: 1 }],
            ..Facts::default()
        }
    }

    fn kinds(differences: &[Difference]) -> Vec<(Kind, String)> {
        differences.iter().map(|d| (d.kind, d.key.to_string())).collect()
    }

    #[test]
    fn a_consistent_lifecycle_has_no_difference() {
        assert_eq!(check(&lifecycle()), vec![]);
    }

    #[test]
    fn counters_that_the_leases_prove_are_repaired_to_the_leases() {
        let mut facts = lifecycle();
        facts.skus[0].counters = counters(5, 1, 4);
        let differences = check(&facts);
        assert_eq!(kinds(&differences), vec![(Kind::SkuCounters, "sku:1".into())]);
        assert_eq!(differences[0].to_string(), "sku_counters sku:1 expected=reserved=2,sold=4 found=reserved=1,sold=4");
        assert_eq!(
            differences[0].repair,
            Some(Repair::SkuCounters { sku_id: SKU, from: counters(5, 1, 4), to: counters(4, 2, 4) })
        );
    }

    #[test]
    fn counters_are_not_repaired_while_a_lease_disagrees_with_its_order() {
        let mut facts = lifecycle();
        facts.leases[1].status = ReservationStatus::Reserved;
        let differences = check(&facts);
        assert_eq!(
            kinds(&differences),
            vec![
                (Kind::SkuCounters, "sku:1".into()),
                (Kind::SkuItems, "sku:1".into()),
                (Kind::LeaseStatus, "lease:1/2".into()),
            ]
        );
        assert!(differences.iter().all(|d| d.repair.is_none()), "{differences:?}");
    }

    #[test]
    fn counters_are_not_repaired_past_the_total() {
        let sku = SkuFacts { sku_id: SKU, counters: counters(0, 1, 0), version: 1, price_cents: 1 };
        let leases = [LeaseOfSku {
            order_id: OrderId::new(1),
            quantity: 2,
            status: ReservationStatus::Reserved,
            order: Some(OrderStatus::PendingPayment),
            refunded_from_paid: false,
            item_quantity: Some(2),
        }];
        let differences = check_sku(&sku, &leases);
        assert_eq!(kinds(&differences), vec![(Kind::SkuCounters, "sku:1".into())]);
        assert_eq!(differences[0].repair, None);
    }

    #[test]
    fn leases_are_checked_against_orders_and_items() {
        use ReservationStatus::*;
        let mut facts = lifecycle();
        facts.leases[0].quantity = 3; // item says 2
        facts.skus[0].counters = counters(3, 3, 4);
        facts.leases.push(lease(9, 1, Released)); // no order at all: agrees (nothing held)
        facts.items.push(item(6, 1)); // no lease
        facts.orders.push(order(6, OrderStatus::Closed));
        facts.leases.push(LeaseFacts { sku_id: SKU, order_id: OrderId::new(7), quantity: 1, status: Released });
        facts.orders.push(order(7, OrderStatus::Closed)); // an order without an item of the sku
        assert_eq!(
            kinds(&check(&facts)),
            vec![
                (Kind::LeaseQuantity, "lease:1/1".into()),
                (Kind::LeaseMissing, "lease:1/6".into()),
                (Kind::LeaseWithoutItem, "lease:1/7".into()),
            ]
        );
    }

    #[test]
    fn an_open_lease_without_an_order_is_left_to_recovery() {
        let mut facts = lifecycle();
        facts.leases.push(lease(9, 1, ReservationStatus::Reserved));
        facts.skus[0].counters = counters(3, 3, 4);
        let differences = check(&facts);
        assert_eq!(kinds(&differences), vec![(Kind::LeaseStatus, "lease:1/9".into())]);
        assert_eq!(differences[0].expected, "confirmed|released|expired|returned(no_order)");
        assert!(Kind::LeaseStatus.left_because().contains("recovery"));
    }

    #[test]
    fn sold_units_are_cross_checked_with_the_items_of_sold_orders() {
        let mut facts = lifecycle();
        facts.items[1].quantity = 4; // the paid order's item says 4, its lease 3
        let differences = check(&facts);
        assert_eq!(
            kinds(&differences),
            vec![
                (Kind::SkuItems, "sku:1".into()),
                (Kind::LeaseQuantity, "lease:1/2".into()),
                (Kind::PurchaseUnits, "purchase:7/1".into()),
            ]
        );
    }

    fn template(total: i64, issued: i64, per_user_limit: i64) -> TemplateFacts {
        TemplateFacts { template_id: TemplateId::new(3), total, issued, per_user_limit }
    }

    fn coupon(id: i64, user: i64, status: CouponStatus, order: Option<i64>) -> CouponFacts {
        CouponFacts {
            coupon_id: CouponId::new(id),
            user_id: UserId::new(user),
            template_id: TemplateId::new(3),
            status,
            order_id: order.map(OrderId::new),
        }
    }

    #[test]
    fn template_issued_follows_its_records_within_the_total() {
        let mut facts = Facts { templates: vec![template(5, 1, 2)], ..Facts::default() };
        facts.coupons = vec![coupon(10, 7, CouponStatus::Unused, None), coupon(11, 8, CouponStatus::Unused, None)];
        let differences = check(&facts);
        assert_eq!(kinds(&differences), vec![(Kind::CouponIssued, "template:3".into())]);
        let repair = Repair::TemplateIssued { template_id: TemplateId::new(3), from: 1, to: 2 };
        assert_eq!(differences[0].repair, Some(repair));

        facts.templates = vec![template(1, 1, 2)];
        let differences = check(&facts);
        assert_eq!(
            kinds(&differences),
            vec![(Kind::CouponIssued, "template:3".into()), (Kind::CouponOverTotal, "template:3".into())]
        );
        assert!(differences.iter().all(|d| d.repair.is_none()), "records past the total are never written");
    }

    #[test]
    fn only_raising_issued_is_fenced_against_a_running_template_actor() {
        let raise = Repair::TemplateIssued { template_id: TemplateId::new(3), from: 1, to: 2 };
        let lower = Repair::TemplateIssued { template_id: TemplateId::new(3), from: 4, to: 2 };
        assert!(raise.fenced_against_live_nodes());
        assert!(!lower.fenced_against_live_nodes(), "a live actor would keep the higher count");
        let counters = Repair::SkuCounters { sku_id: SKU, from: counters(5, 1, 4), to: counters(4, 2, 4) };
        assert!(counters.fenced_against_live_nodes());
    }

    #[test]
    fn orders_hold_units_exactly_when_their_lease_may_hold_them() {
        use OrderStatus::*;
        // (order status, refunded from paid) -> (holds units, holds sold units); one line each.
        let cases: &[(OrderStatus, bool, bool, bool)] = &[
            (PendingPayment, false, true, false),
            (Paid, false, true, true),
            (Finished, false, true, true),
            (Closed, false, false, false),
            (Refunded, false, true, true),
            (Refunded, true, false, false),
        ];
        for &(status, from_paid, units, sold) in cases {
            assert_eq!(
                (holds_units(status, from_paid), holds_sold_units(status, from_paid)),
                (units, sold),
                "{status:?}"
            );
        }
    }

    fn step(order: i64, kind: &str) -> StepFacts {
        StepFacts { order_id: OrderId::new(order), event_kind: EventKind::parse(kind).expect("a kind") }
    }

    fn event(order: i64, id: i64, kind: &str) -> EventFacts {
        EventFacts { order_id: OrderId::new(order), event_id: id, kind: EventKind::parse(kind).expect("a kind") }
    }

    #[test]
    fn every_log_row_and_kept_payment_has_its_event_in_order() {
        let facts = Facts {
            steps: vec![
                step(1, "placed"),
                step(1, "paid"),
                step(2, "placed"),
                step(2, "paid"),
                step(3, "placed"),
                step(3, "closed"),
                step(4, "placed"),
            ],
            step_events: vec![
                event(1, 10, "placed"),
                event(1, 11, "paid"),
                event(2, 12, "placed"),
                event(3, 13, "closed"),
                event(3, 14, "placed"),
                event(4, 15, "placed"),
                event(5, 16, "placed"),
            ],
            refund_events: vec![OrderId::new(3)],
            refund_payments: vec![OrderId::new(3), OrderId::new(4)],
            ..Facts::default()
        };
        let differences = check(&facts);
        assert_eq!(
            kinds(&differences),
            vec![
                (Kind::EventMissing, "order:2".into()),
                (Kind::EventMissing, "order:4".into()),
                (Kind::EventMismatch, "order:3".into()),
                (Kind::EventMismatch, "order:5".into()),
            ]
        );
        assert_eq!(differences[0].to_string(), "event_missing order:2 expected=events=placed,paid found=events=placed");
        assert_eq!(differences[1].expected, "refund_required_events>=1");
        assert_eq!(differences[2].found, "events=closed,placed", "out of order");
        assert_eq!(differences[3].expected, "events=none", "an event without a log row");
        assert!(differences.iter().all(|d| d.repair.is_none()), "events are never written");
    }

    #[test]
    fn a_database_checked_in_parts_gives_the_differences_of_the_whole() {
        let mut facts = lifecycle();
        facts.skus[0].counters = counters(5, 1, 4);
        facts.templates = vec![template(5, 2, 2)];
        facts.coupons = vec![coupon(10, 7, CouponStatus::Unused, None)];
        facts.steps = vec![step(1, "placed")];
        let mut parts = check_stock(&Facts { templates: vec![], coupons: vec![], steps: vec![], ..facts.clone() });
        parts.extend(check_promotions(&Facts { skus: vec![], leases: vec![], items: vec![], ..facts.clone() }));
        parts.extend(check_events(&Facts { steps: facts.steps.clone(), ..Facts::default() }));
        parts.sort_by_key(|d| (d.kind, d.key));
        assert_eq!(parts, check(&facts));
        assert_eq!(parts.len(), 2 + 1, "{parts:?}");
    }

    #[test]
    fn a_user_past_the_per_user_limit_is_reported() {
        let facts = Facts {
            templates: vec![template(5, 2, 1)],
            coupons: vec![coupon(10, 7, CouponStatus::Unused, None), coupon(11, 7, CouponStatus::Unused, None)],
            ..Facts::default()
        };
        assert_eq!(kinds(&check(&facts)), vec![(Kind::CouponPerUser, "claims:7/3".into())]);
    }

    #[test]
    fn coupons_follow_their_orders() {
        use CouponStatus::*;
        use OrderStatus::*;
        // (coupon status, its order's status) -> agrees; one line per case.
        let cases: &[(CouponStatus, OrderStatus, bool)] = &[
            (Locked, PendingPayment, true),
            (Locked, Paid, false),
            (Locked, Closed, false),
            (Used, Paid, true),
            (Used, Finished, true),
            (Used, Refunded, true),
            (Used, PendingPayment, false),
            (Used, Closed, false),
        ];
        for &(coupon_status, order_status, agrees) in cases {
            let mut placed = order(20, order_status);
            placed.coupon_id = Some(CouponId::new(10));
            let facts = Facts {
                templates: vec![template(5, 1, 1)],
                coupons: vec![coupon(10, USER.get(), coupon_status, Some(20))],
                orders: vec![placed],
                ..Facts::default()
            };
            let differences = check(&facts);
            assert_eq!(differences.is_empty(), agrees, "{coupon_status:?} {order_status:?}: {differences:?}");
            assert!(differences.iter().all(|d| d.kind == Kind::CouponOrder && d.key == Key::Coupon(CouponId::new(10))));
        }
    }

    #[test]
    fn an_order_that_lost_its_coupon_is_reported() {
        let mut paid = order(20, OrderStatus::Paid);
        paid.coupon_id = Some(CouponId::new(10));
        let mut closed = order(21, OrderStatus::Closed);
        closed.coupon_id = Some(CouponId::new(10));
        let facts = Facts {
            templates: vec![template(5, 1, 1)],
            coupons: vec![coupon(10, USER.get(), CouponStatus::Unused, None)],
            orders: vec![paid, closed],
            ..Facts::default()
        };
        let differences = check(&facts);
        assert_eq!(kinds(&differences), vec![(Kind::CouponOrder, "order:20".into())]);
        assert_eq!(
            differences[0].to_string(),
            "coupon_order order:20 expected=coupon:10=used_by_order found=unused(user:7)"
        );
    }

    #[test]
    fn purchases_count_the_units_orders_still_hold() {
        let mut facts = lifecycle();
        facts.purchases[0].units = 4;
        facts.purchases.push(PurchaseFacts { user_id: UserId::new(8), sku_id: SKU, units: 1 });
        facts.purchases.push(PurchaseFacts { user_id: UserId::new(9), sku_id: SKU, units: 0 });
        let differences = check(&facts);
        assert_eq!(
            kinds(&differences),
            vec![(Kind::PurchaseUnits, "purchase:7/1".into()), (Kind::PurchaseUnits, "purchase:8/1".into())]
        );
        assert_eq!(differences[0].expected, "units=6");
    }

    #[test]
    fn lessons_count_paid_and_finished_orders() {
        let mut facts = lifecycle();
        facts.orders[0].status = OrderStatus::Finished; // order 1 (its lease then confirmed)
        facts.leases[0].status = ReservationStatus::Confirmed;
        facts.skus[0].counters = counters(4, 0, 6);
        let differences = check(&facts);
        assert_eq!(kinds(&differences), vec![(Kind::LessonHolders, "lesson:7/1".into())]);
        assert_eq!((differences[0].expected.as_str(), differences[0].found.as_str()), ("holders=2", "holders=1"));
        facts.lessons.clear();
        assert_eq!(check(&facts)[0].found, "no_row");
    }

    #[test]
    fn snapshots_must_exist_and_match_the_database_at_its_version() {
        let sku =
            |id: i64| SkuFacts { sku_id: SkuId::new(id), counters: counters(5, 3, 2), version: 4, price_cents: 100 };
        let skus = [sku(1), sku(2), sku(3), sku(4), sku(5)];
        let same = SnapshotFacts { counters: counters(5, 3, 2), version: 4, price_cents: 100 };
        let found = [
            Some(same),
            None,
            Some(SnapshotFacts { version: 3, ..same }),
            Some(SnapshotFacts { version: 5, ..same }),
            Some(SnapshotFacts { counters: counters(6, 2, 2), ..same }),
        ];
        let differences = check_snapshots(&skus, &found);
        assert_eq!(
            kinds(&differences),
            vec![
                (Kind::SnapshotMissing, "tianji:sku:2".into()),
                (Kind::SnapshotStale, "tianji:sku:3".into()),
                (Kind::SnapshotAhead, "tianji:sku:4".into()),
                (Kind::SnapshotCounters, "tianji:sku:5".into()),
            ]
        );
        assert_eq!(differences[0].repair, Some(Repair::Snapshot { sku_id: SkuId::new(2), found_version: None }));
        assert_eq!(differences[1].repair, Some(Repair::Snapshot { sku_id: SkuId::new(3), found_version: Some(3) }));
        assert_eq!(differences[3].to_string().split(' ').count(), 4, "one line of four fields: {}", differences[3]);
    }
}
