//! Orders: the validated placement request, the priced order, and its status names.
//!
//! An order's amounts are derived here and nowhere else: item `pay_cents` sum to the order's
//! `pay_cents`, which is `total_cents - discount_cents`; `Order::assert_amounts` holds it.

use super::coupon::CouponStep;
use super::ids::{CouponId, OrderId, SkuId, UserId};
use super::inventory::{InventoryError, Quantity, ORDER_LINE_QUANTITY_MAX};
use super::money::{apportion, Cents, MoneyError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;

/// The most lines one order may have.
pub const ORDER_LINES_MAX: usize = 50;
/// The longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 64;

/// Where an order is in its life. The names are stored in `trade_order.status` and never
/// reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Closed,
    Finished,
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [Self::PendingPayment, Self::Paid, Self::Closed, Self::Finished, Self::Refunded];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Closed => "closed",
            Self::Finished => "finished",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

/// What can happen to an order. Each event has one target status; `OrderStatus::apply` says
/// whether the order's current status allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    Pay,
    Cancel,
    Timeout,
    Finish,
    Refund,
}

impl OrderEvent {
    pub const ALL: [OrderEvent; 5] = [Self::Pay, Self::Cancel, Self::Timeout, Self::Finish, Self::Refund];

    /// The status this event leads to.
    pub const fn target(self) -> OrderStatus {
        match self {
            Self::Pay => OrderStatus::Paid,
            Self::Cancel | Self::Timeout => OrderStatus::Closed,
            Self::Finish => OrderStatus::Finished,
            Self::Refund => OrderStatus::Refunded,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order in status {from} cannot become {to}")]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderStatus {
    /// The state machine, as a table: the only transitions an order can make.
    /// PendingPayment -> Paid | Closed; Paid -> Finished | Refunded; Finished -> Refunded.
    /// Nothing leaves Closed or Refunded.
    pub const fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (PendingPayment, Paid)
                | (PendingPayment, Closed)
                | (Paid, Finished)
                | (Paid, Refunded)
                | (Finished, Refunded)
        )
    }

    /// The status after `event`, or why the event is refused.
    pub fn apply(self, event: OrderEvent) -> Result<OrderStatus, InvalidTransition> {
        let to = event.target();
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// Whether the order's units are still held by reservations (not yet sold or released).
    pub const fn holds_reservations(self) -> bool {
        matches!(self, OrderStatus::PendingPayment)
    }

    /// Whether the order's units count as sold.
    pub const fn counts_as_sold(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::Finished)
    }
}

/// What an order step does to the units of each of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockStep {
    /// Paid: the held units are sold.
    Confirm,
    /// Closed: the held units go back on the shelf.
    Release,
    /// Refunded before delivery: the sold units go back on the shelf.
    Return,
}

impl OrderEvent {
    /// The stock side of this event for an order in status `from`; `None` when the units
    /// stay as they are (finished, or refunded after delivery).
    pub const fn stock_step(self, from: OrderStatus) -> Option<StockStep> {
        match (self, from) {
            (OrderEvent::Pay, _) => Some(StockStep::Confirm),
            (OrderEvent::Cancel | OrderEvent::Timeout, _) => Some(StockStep::Release),
            (OrderEvent::Refund, OrderStatus::Paid) => Some(StockStep::Return),
            (OrderEvent::Refund | OrderEvent::Finish, _) => None,
        }
    }
}

impl OrderEvent {
    /// What this event does to the coupon of order `order_id`: payment uses it, a close
    /// releases it, a refund returns it (if it has not expired, `Coupon::apply` decides).
    pub const fn coupon_step(self, order_id: OrderId) -> Option<CouponStep> {
        match self {
            OrderEvent::Pay => Some(CouponStep::Consume(order_id)),
            OrderEvent::Cancel | OrderEvent::Timeout => Some(CouponStep::Release(order_id)),
            OrderEvent::Refund => Some(CouponStep::Return(order_id)),
            OrderEvent::Finish => None,
        }
    }

    /// Whether this event gives the order's units back to the buyer's per-user allowance:
    /// exactly when they go back on the shelf (closed, or refunded before delivery).
    pub const fn returns_allowance(self, from: OrderStatus) -> bool {
        matches!(self.stock_step(from), Some(StockStep::Release | StockStep::Return))
    }

    /// What this event does to the courses of the order (every SKU is a course): payment opens
    /// them to the buyer, a refund (before or after delivery) revokes them.
    pub const fn lesson_step(self) -> Option<LessonStep> {
        match self {
            OrderEvent::Pay => Some(LessonStep::Open),
            OrderEvent::Refund => Some(LessonStep::Revoke),
            OrderEvent::Cancel | OrderEvent::Timeout | OrderEvent::Finish => None,
        }
    }
}

/// A step on the buyer's courses, taken with an order's transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LessonStep {
    /// One more paid order holds the course.
    Open,
    /// One paid order less holds it (refunded).
    Revoke,
}

impl LessonStep {
    /// How many paid orders hold a course after the step, from `before` (`None`: no lesson
    /// row). A course is owned while the count is above zero; `None` when a revoke finds no
    /// row (an order paid before courses were opened), which changes nothing. Never negative.
    pub fn holders_after(self, before: Option<i64>) -> Option<i64> {
        match (self, before) {
            (LessonStep::Open, before) => Some(before.unwrap_or(0) + 1),
            (LessonStep::Revoke, Some(before)) => Some((before - 1).max(0)),
            (LessonStep::Revoke, None) => None,
        }
    }
}

/// Whether a payment deadline has passed at `now_ms`; its own millisecond is still in time.
pub const fn deadline_passed(deadline_ms: i64, now_ms: i64) -> bool {
    now_ms > deadline_ms
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("an order needs at least one item")]
    EmptyItems,
    #[error("an order may have at most {ORDER_LINES_MAX} items")]
    TooManyItems,
    #[error("sku_id must be a positive id, got {0}")]
    InvalidSkuId(i64),
    #[error("sku {0} appears twice; put the whole quantity on one line")]
    DuplicateSku(SkuId),
    #[error(transparent)]
    Quantity(#[from] InventoryError),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// A client's key that makes a placement safe to retry: printable ASCII, 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Option<Self> {
        let valid =
            !raw.is_empty() && raw.len() <= IDEMPOTENCY_KEY_LEN_MAX && raw.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| IdempotencyKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A placement request after validation: known-good lines, each SKU once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub lines: Vec<(SkuId, Quantity)>,
    /// The buyer's coupon to apply.
    pub coupon_id: Option<CouponId>,
}

impl PlaceOrder {
    /// Validates raw `(sku_id, quantity)` pairs, in this order: empty, too many, bad id, bad
    /// quantity, duplicate SKU.
    pub fn parse(items: &[(i64, i64)]) -> Result<Self, OrderError> {
        if items.is_empty() {
            return Err(OrderError::EmptyItems);
        }
        if items.len() > ORDER_LINES_MAX {
            return Err(OrderError::TooManyItems);
        }
        let mut seen = HashSet::with_capacity(items.len());
        let mut lines = Vec::with_capacity(items.len());
        for &(raw_sku, raw_quantity) in items {
            let sku_id = SkuId::parse(raw_sku).ok_or(OrderError::InvalidSkuId(raw_sku))?;
            let quantity = Quantity::parse(raw_quantity, ORDER_LINE_QUANTITY_MAX)?;
            if !seen.insert(sku_id) {
                return Err(OrderError::DuplicateSku(sku_id));
            }
            lines.push((sku_id, quantity));
        }
        Ok(PlaceOrder { lines, coupon_id: None })
    }

    /// A digest of what was asked for, stored with the order so that a retry with the same
    /// `Idempotency-Key` but another body is told apart from a true retry.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for (sku_id, quantity) in &self.lines {
            hasher.update(format!("{}x{};", sku_id.get(), quantity.get()));
        }
        if let Some(coupon_id) = self.coupon_id {
            hasher.update(format!("c{coupon_id};"));
        }
        hex::encode(hasher.finalize())
    }
}

/// One line priced from the SKU at the moment it was reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
    pub quantity: Quantity,
    /// The line counts against its SKU's per-user purchase limit.
    pub limited: bool,
}

/// One item of a stored order, with its name and price as they were when ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderItem {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
    pub quantity: i64,
    /// What the buyer pays for this line after its share of the discount.
    pub pay_cents: Cents,
    /// The units counted against the SKU's per-user limit: they go back to the buyer's
    /// allowance when the order closes or is refunded before delivery.
    #[serde(skip)]
    pub limit_counted: bool,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: Cents,
    pub discount_cents: Cents,
    pub pay_cents: Cents,
    pub coupon_id: Option<CouponId>,
    pub idempotency_key: String,
    pub request_hash: String,
    pub pay_deadline_ms: i64,
    pub created_at_ms: i64,
    pub version: i64,
}

/// What identifies a new order before it is priced.
#[derive(Debug, Clone)]
pub struct NewOrderHeader {
    pub id: OrderId,
    pub user_id: UserId,
    pub idempotency_key: IdempotencyKey,
    pub request_hash: String,
    pub created_at_ms: i64,
    pub pay_deadline_ms: i64,
    /// The coupon the discount comes from.
    pub coupon_id: Option<CouponId>,
}

impl Order {
    /// Prices a new order awaiting payment from its reserved lines. `discount` is apportioned
    /// over the lines by largest remainder.
    pub fn price(header: NewOrderHeader, lines: Vec<OrderLine>, discount: Cents) -> Result<Order, OrderError> {
        if lines.is_empty() {
            return Err(OrderError::EmptyItems);
        }
        let amounts: Vec<Cents> =
            lines.iter().map(|line| line.price_cents.checked_mul(line.quantity.units())).collect::<Result<_, _>>()?;
        let total_cents = amounts.iter().try_fold(Cents::ZERO, |sum, amount| sum.checked_add(*amount))?;
        let discount_cents = discount.min(total_cents);
        let shares = apportion(discount_cents, &amounts)?;
        let items = lines
            .into_iter()
            .zip(amounts.iter().zip(&shares))
            .map(|(line, (amount, share))| {
                Ok(OrderItem {
                    sku_id: line.sku_id,
                    name: line.name,
                    price_cents: line.price_cents,
                    quantity: line.quantity.units(),
                    pay_cents: amount.checked_sub(*share)?,
                    limit_counted: line.limited,
                })
            })
            .collect::<Result<Vec<_>, MoneyError>>()?;
        let order = Order {
            id: header.id,
            user_id: header.user_id,
            status: OrderStatus::PendingPayment,
            items,
            total_cents,
            discount_cents,
            pay_cents: total_cents.checked_sub(discount_cents)?,
            coupon_id: header.coupon_id,
            idempotency_key: header.idempotency_key.0,
            request_hash: header.request_hash,
            pay_deadline_ms: header.pay_deadline_ms,
            created_at_ms: header.created_at_ms,
            version: 0,
        };
        order.assert_amounts();
        Ok(order)
    }

    /// Items add up to the order, and what is paid is the total less the discount.
    pub fn assert_amounts(&self) {
        let item_totals: i64 = self.items.iter().map(|i| i.price_cents.get() * i.quantity).sum();
        let item_pays: i64 = self.items.iter().map(|i| i.pay_cents.get()).sum();
        assert_eq!(item_totals, self.total_cents.get(), "order {} items do not sum to its total", self.id);
        assert_eq!(item_pays, self.pay_cents.get(), "order {} item pays do not sum to its pay", self.id);
        assert_eq!(self.total_cents.get() - self.discount_cents.get(), self.pay_cents.get());
        assert!(self.pay_cents.get() >= 0 && self.discount_cents.get() >= 0);
    }
}

/// A transition an order makes in a committed batch, as its status log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusStep {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The order's version before the step; the step's entry carries `version_before + 1`.
    pub version_before: i64,
    pub at_ms: i64,
}

/// One entry of an order's status log: the order's first entry when it is placed, then one
/// per step. Each entry is one `order_status_log` row and one order event (`EventKind::of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLogEntry<'a> {
    /// A new order, in the status it is placed in.
    Placed(&'a Order),
    /// A transition of an existing order.
    Step(StatusStep),
}

impl StatusLogEntry<'_> {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::Placed(order) => order.id,
            Self::Step(step) => step.order_id,
        }
    }

    /// `None` for an order's first entry.
    pub fn from(&self) -> Option<OrderStatus> {
        match self {
            Self::Placed(_) => None,
            Self::Step(step) => Some(step.from),
        }
    }

    pub fn to(&self) -> OrderStatus {
        match self {
            Self::Placed(order) => order.status,
            Self::Step(step) => step.to,
        }
    }

    /// The order's version after the entry.
    pub fn version(&self) -> i64 {
        match self {
            Self::Placed(order) => order.version,
            Self::Step(step) => step.version_before + 1,
        }
    }

    pub fn at_ms(&self) -> i64 {
        match self {
            Self::Placed(order) => order.created_at_ms,
            Self::Step(step) => step.at_ms,
        }
    }
}

/// The status-log entries of a batch's accepted changes: the first entry of each new order,
/// then each step, both in batch order. The status log and the order events are both built
/// from it, so per order they agree one to one, in order. Every step is one the state machine
/// allows.
pub fn log_entries<'a>(
    new_orders: impl Iterator<Item = &'a Order> + 'a,
    steps: impl Iterator<Item = StatusStep> + 'a,
) -> impl Iterator<Item = StatusLogEntry<'a>> + 'a {
    let placed = new_orders.map(|order| {
        assert_eq!(order.status, OrderStatus::PendingPayment, "order {} is placed awaiting payment", order.id);
        StatusLogEntry::Placed(order)
    });
    let stepped = steps.map(|step| {
        assert!(step.from.can_become(step.to), "{step:?} is not a transition");
        assert!(step.version_before >= 0, "{step:?}");
        StatusLogEntry::Step(step)
    });
    placed.chain(stepped)
}

/// What happened to an order, as an order event names it. The names are stored in
/// `order_event.kind`, published, and never reused.
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

    /// The event of a status-log entry (`of_step`).
    pub fn of(entry: &StatusLogEntry<'_>) -> EventKind {
        Self::of_step(entry.from(), entry.to())
    }

    /// The event of a status-log row from `from` to `to`: an order's first row (no `from`) is
    /// `placed`, a step is named by the status it reaches. No step leads back to
    /// `pending_payment`; the caller rules it out (`log_entries` admits only `can_become`).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> NewOrderHeader {
        NewOrderHeader {
            id: OrderId::new(1),
            user_id: UserId::new(7),
            idempotency_key: IdempotencyKey::parse("k-1").unwrap(),
            request_hash: "h".into(),
            created_at_ms: 10,
            pay_deadline_ms: 20,
            coupon_id: None,
        }
    }

    fn line(sku: i64, price: i64, quantity: i64) -> OrderLine {
        OrderLine {
            sku_id: SkuId::new(sku),
            name: format!("sku {sku}"),
            price_cents: Cents::new(price),
            quantity: Quantity::parse(quantity, ORDER_LINE_QUANTITY_MAX).unwrap(),
            limited: false,
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(OrderStatus::parse("open"), None);
    }

    #[test]
    fn every_pair_of_states() {
        use OrderStatus::*;
        // (from, to, allowed): all 25 pairs, one line each.
        let table = [
            (PendingPayment, PendingPayment, false),
            (PendingPayment, Paid, true),
            (PendingPayment, Closed, true),
            (PendingPayment, Finished, false),
            (PendingPayment, Refunded, false),
            (Paid, PendingPayment, false),
            (Paid, Paid, false),
            (Paid, Closed, false),
            (Paid, Finished, true),
            (Paid, Refunded, true),
            (Closed, PendingPayment, false),
            (Closed, Paid, false),
            (Closed, Closed, false),
            (Closed, Finished, false),
            (Closed, Refunded, false),
            (Finished, PendingPayment, false),
            (Finished, Paid, false),
            (Finished, Closed, false),
            (Finished, Finished, false),
            (Finished, Refunded, true),
            (Refunded, PendingPayment, false),
            (Refunded, Paid, false),
            (Refunded, Closed, false),
            (Refunded, Finished, false),
            (Refunded, Refunded, false),
        ];
        assert_eq!(table.len(), 25);
        for (from, to, allowed) in table {
            assert_eq!(from.can_become(to), allowed, "{from} -> {to}");
        }
    }

    #[test]
    fn each_step_moves_stock_as_the_table_says() {
        use OrderEvent::*;
        use OrderStatus::*;
        // (event, from) -> stock step, for every transition the state machine allows.
        let cases = [
            (Pay, PendingPayment, Some(StockStep::Confirm)),
            (Cancel, PendingPayment, Some(StockStep::Release)),
            (Timeout, PendingPayment, Some(StockStep::Release)),
            (Finish, Paid, None),
            (Refund, Paid, Some(StockStep::Return)),
            (Refund, Finished, None),
        ];
        for (event, from, step) in cases {
            assert!(from.apply(event).is_ok(), "{event:?} from {from:?}");
            assert_eq!(event.stock_step(from), step, "{event:?} from {from:?}");
        }
        assert!(!deadline_passed(1_000, 1_000));
        assert!(deadline_passed(1_000, 1_001));
    }

    #[test]
    fn events_follow_the_table() {
        use OrderStatus::*;
        assert_eq!(PendingPayment.apply(OrderEvent::Pay), Ok(Paid));
        assert_eq!(PendingPayment.apply(OrderEvent::Timeout), Ok(Closed));
        assert_eq!(PendingPayment.apply(OrderEvent::Cancel), Ok(Closed));
        assert_eq!(Paid.apply(OrderEvent::Refund), Ok(Refunded));
        assert_eq!(Finished.apply(OrderEvent::Refund), Ok(Refunded));
        assert_eq!(Closed.apply(OrderEvent::Pay), Err(InvalidTransition { from: Closed, to: Paid }));
        assert_eq!(Paid.apply(OrderEvent::Cancel), Err(InvalidTransition { from: Paid, to: Closed }));
        for event in OrderEvent::ALL {
            assert!(Closed.apply(event).is_err() && Refunded.apply(event).is_err(), "nothing leaves a final state");
        }
    }

    #[test]
    fn place_order_validation_in_precedence_order() {
        assert_eq!(PlaceOrder::parse(&[]), Err(OrderError::EmptyItems));
        let many: Vec<(i64, i64)> = (1..=51).map(|i| (i, 1)).collect();
        assert_eq!(PlaceOrder::parse(&many), Err(OrderError::TooManyItems));
        assert_eq!(PlaceOrder::parse(&[(0, 1)]), Err(OrderError::InvalidSkuId(0)));
        assert!(matches!(PlaceOrder::parse(&[(1, 0)]), Err(OrderError::Quantity(_))));
        assert!(matches!(PlaceOrder::parse(&[(1, -3)]), Err(OrderError::Quantity(_))));
        assert!(matches!(PlaceOrder::parse(&[(1, 1_000_000)]), Err(OrderError::Quantity(_))));
        assert_eq!(PlaceOrder::parse(&[(1, 1), (1, 2)]), Err(OrderError::DuplicateSku(SkuId::new(1))));
        assert_eq!(PlaceOrder::parse(&[(1, 2), (3, 4)]).unwrap().lines.len(), 2);
    }

    #[test]
    fn fingerprint_tells_bodies_apart() {
        let a = PlaceOrder::parse(&[(1, 2)]).unwrap();
        let b = PlaceOrder::parse(&[(1, 3)]).unwrap();
        assert_eq!(a.fingerprint(), PlaceOrder::parse(&[(1, 2)]).unwrap().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse("has space").is_none());
        assert!(IdempotencyKey::parse(&"x".repeat(65)).is_none());
        assert!(IdempotencyKey::parse(&"x".repeat(64)).is_some());
    }

    #[test]
    fn pricing_sums_exactly() {
        let order = Order::price(header(), vec![line(1, 333, 3), line(2, 1, 1)], Cents::new(100)).unwrap();
        assert_eq!(order.total_cents, Cents::new(1000));
        assert_eq!(order.pay_cents, Cents::new(900));
        assert_eq!(order.items.iter().map(|i| i.pay_cents.get()).sum::<i64>(), 900);
        assert_eq!(order.status, OrderStatus::PendingPayment);
        let free = Order::price(header(), vec![line(1, 0, 2)], Cents::ZERO).unwrap();
        assert_eq!(free.pay_cents, Cents::ZERO);
    }

    #[test]
    fn pricing_refuses_overflow() {
        let huge = OrderLine { price_cents: Cents::new(i64::MAX / 2), ..line(1, 0, 3) };
        assert!(matches!(Order::price(header(), vec![huge], Cents::ZERO), Err(OrderError::Money(_))));
    }
    #[test]
    fn log_entries_are_new_orders_then_steps_and_each_names_its_event() {
        let order = Order::price(header(), vec![line(1, 500, 2)], Cents::ZERO).unwrap();
        let step = |id, from, to| StatusStep { order_id: OrderId::new(id), from, to, version_before: 3, at_ms: 9 };
        let steps = [
            step(7, OrderStatus::PendingPayment, OrderStatus::Paid),
            step(8, OrderStatus::Finished, OrderStatus::Refunded),
        ];
        let entries: Vec<_> = log_entries([&order].into_iter(), steps.into_iter()).collect();
        let seen: Vec<_> =
            entries.iter().map(|e| (e.order_id(), e.from(), e.to(), e.version(), EventKind::of(e))).collect();
        assert_eq!(
            seen,
            vec![
                (order.id, None, OrderStatus::PendingPayment, 0, EventKind::Placed),
                (OrderId::new(7), Some(OrderStatus::PendingPayment), OrderStatus::Paid, 4, EventKind::Paid),
                (OrderId::new(8), Some(OrderStatus::Finished), OrderStatus::Refunded, 4, EventKind::Refunded),
            ]
        );
        assert_eq!(entries[0].at_ms(), order.created_at_ms);
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("pending_payment"), None);
        assert_eq!(EventKind::of_step(Some(OrderStatus::PendingPayment), OrderStatus::Closed), EventKind::Closed);
    }

    #[test]
    #[should_panic(expected = "is not a transition")]
    fn log_entries_refuse_a_step_the_state_machine_does_not_allow() {
        let back = StatusStep {
            order_id: OrderId::new(7),
            from: OrderStatus::Paid,
            to: OrderStatus::PendingPayment,
            version_before: 1,
            at_ms: 9,
        };
        let _ = log_entries(std::iter::empty(), [back].into_iter()).count();
    }
}
