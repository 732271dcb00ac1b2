//! The order session: one actor per order in use, the only one that moves that order.
//!
//! It drives the order's state machine after placement (pay, cancel, time out, finish,
//! refund), one step at a time. A step is one change of the write pipeline: the transition
//! (version-checked, logged) together with its stock effect (confirm, release or return on
//! every SKU of the order) and its payment row, committed together or not at all. So a paid
//! order always holds its units, and a closed order's units are back on the shelf, at every
//! moment and after any crash. A payment is checked against the deadline here and again at
//! commit time, and answered `paid` only when its units are durably sold.
//!
//! Idle sessions stop; the next message activates the order from the database again. A
//! session whose step ended with an unknown outcome stops too, so the next one reads the truth.

use super::inventory::{Settlement, SkuError};
use super::registry::ActorRef;
use super::{Core, Refusal, Reply};
use crate::domain::inventory::InventoryError;
use crate::domain::order::{deadline_passed, InvalidTransition, Order, StockStep};
use crate::domain::payment::{decide, KnownPayment, PaymentDecision, Refusal as PaymentRefusal};
use crate::domain::slots::{Key, RangeId};
use crate::domain::{Cents, OrderEvent, OrderId, OrderStatus, SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{
    Change, Conflict, CouponMove, LessonGrant, OrderTransition, Payment, PaymentStatus, PurchaseWrite, SkuEffect,
    StoreError,
};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// A payment the provider reported for this order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pay {
    pub out_trade_no: String,
    pub amount_cents: Cents,
    pub channel: String,
    pub reply: Reply<Order, LifecycleError>,
}

/// Cancel, time out, finish or refund the order. `owner`, when given, must own the order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Act {
    pub event: OrderEvent,
    pub owner: Option<UserId>,
    pub reply: Reply<Order, LifecycleError>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("no such order")]
    NotFound,
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    #[error("amount_cents {received} does not match the order's pay_cents {expected}")]
    AmountMismatch { expected: Cents, received: Cents },
    #[error("the order is closed; the payment is recorded for refund")]
    OrderClosed,
    #[error("the order is paid already; this payment is recorded for refund")]
    AlreadyPaid,
    #[error("out_trade_no {0} belongs to another order")]
    TradeNoReused(String),
    #[error("the order changed concurrently; read it again")]
    Stale,
    #[error("overloaded; retry shortly")]
    Overloaded,
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another node of the cluster owns the key (`cluster`).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
}

impl From<Refusal> for LifecycleError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => LifecycleError::Overloaded,
            Refusal::Stopped | Refusal::NoAnswer => LifecycleError::Unavailable("order session stopped".into()),
        }
    }
}

impl From<StoreError> for LifecycleError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotOwner(not_owner) => LifecycleError::NotOwner(not_owner),
            other => LifecycleError::Unavailable(other.to_string()),
        }
    }
}

impl From<PaymentRefusal> for LifecycleError {
    fn from(refusal: PaymentRefusal) -> Self {
        match refusal {
            PaymentRefusal::TradeNoReused => LifecycleError::TradeNoReused(String::new()),
            PaymentRefusal::AmountMismatch { expected, received } => {
                LifecycleError::AmountMismatch { expected, received }
            }
            PaymentRefusal::OrderClosed => LifecycleError::OrderClosed,
            PaymentRefusal::AlreadyPaid => LifecycleError::AlreadyPaid,
        }
    }
}

/// How a step ended for the session: the order it holds now, or `None` when the outcome is
/// unknown and the session must read the order again.
type Ending = (Result<Order, LifecycleError>, Option<Order>);

pub struct OrderSession {
    order_id: OrderId,
    order: Order,
    /// The user's range as held when the session started (`Change::held_ranges`).
    held_ranges: Arc<[(RangeId, i64)]>,
    last_active: Instant,
    core: Arc<Core>,
}

super::traced::handles_traced!(OrderSession);

impl Actor for OrderSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let idle_timeout = self.core.limits.session_idle_timeout;
        ctx.run_interval(idle_timeout / 2, move |session, ctx| {
            if session.last_active.elapsed() >= idle_timeout {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.orders.forget(self.order_id, &ctx.address());
    }
}

impl OrderSession {
    /// Runs one step with the session held exclusively until it is done, then keeps the order
    /// it ended with (or stops, when the outcome is unknown).
    fn exclusive(
        &mut self,
        reply: Reply<Order, LifecycleError>,
        step: impl std::future::Future<Output = Ending> + 'static,
    ) -> AtomicResponse<Self, ()> {
        self.last_active = Instant::now();
        AtomicResponse::new(Box::pin(step.in_current_span().into_actor(self).map(
            move |(result, order), session, ctx| {
                session.last_active = Instant::now();
                match order {
                    Some(order) => session.order = order,
                    None => ctx.stop(),
                }
                let _ = reply.send(result);
            },
        )))
    }
}

impl Handler<Pay> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Pay, _ctx: &mut Self::Context) -> Self::Result {
        let Pay { out_trade_no, amount_cents, channel, reply } = msg;
        let core = Arc::clone(&self.core);
        let order = self.order.clone();
        let held = Arc::clone(&self.held_ranges);
        self.exclusive(reply, async move {
            let payment =
                Payment { out_trade_no, order_id: order.id, amount_cents, channel, status: PaymentStatus::Paid };
            pay(&core, &held, order, payment).await
        })
    }
}

impl Handler<Act> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Act, _ctx: &mut Self::Context) -> Self::Result {
        let Act { event, owner, reply } = msg;
        let core = Arc::clone(&self.core);
        let order = self.order.clone();
        let held = Arc::clone(&self.held_ranges);
        self.exclusive(reply, async move {
            if owner.is_some_and(|owner| owner != order.user_id) {
                return (Err(LifecycleError::NotFound), Some(order));
            }
            if event == OrderEvent::Timeout && !deadline_passed(order.pay_deadline_ms, core.clock.now_ms()) {
                // A deadline that moved or fired early: not due yet, nothing to do.
                return (Ok(order.clone()), Some(order));
            }
            step(&core, &held, order, event, None).await
        })
    }
}

/// Applies `event` to `order` as one change: the transition, its stock effect on every SKU of
/// the order, and `payment` when there is one; fenced by the session's `held` ranges.
async fn step(
    core: &Arc<Core>,
    held: &[(RangeId, i64)],
    order: Order,
    event: OrderEvent,
    payment: Option<Payment>,
) -> Ending {
    let to = match order.status.apply(event) {
        Ok(to) => to,
        Err(error) => return (Err(error.into()), Some(order)),
    };
    // The order's own commit is its user's node's to make (the SKUs may live anywhere).
    // A session whose buyer's range moved stops: the next one starts on the owner, under
    // the owner's epoch.
    if let Err(not_owner) = core.owns(Key::user(order.user_id)) {
        return (Err(not_owner.into()), None);
    }
    let (effects, elsewhere) = match stock_effects(core, &order, event).await {
        Ok(stock) => stock,
        Err(error) => return (Err(error), Some(order)),
    };
    let transition = OrderTransition {
        order_id: order.id,
        from: order.status,
        to,
        expected_version: order.version,
        at_ms: core.clock.now_ms(),
        pay_by_ms: (event == OrderEvent::Pay).then_some(order.pay_deadline_ms),
        refund_payment: event == OrderEvent::Refund,
    };
    let (purchases, coupon) = promotion_effects(&order, event);
    let lessons = event.lesson_step().map(|step| LessonGrant {
        user_id: order.user_id,
        course_ids: order.items.iter().map(|item| item.sku_id).collect(),
        step,
    });
    let change = Change {
        transition: Some(transition),
        payment,
        skus: effects.clone(),
        purchases: purchases.clone(),
        coupon,
        lessons: lessons.clone(),
        held_ranges: held.to_vec(),
        ..Change::default()
    };
    match core.journal.submit(change).await {
        Ok(Ok(())) => {
            // The user's actor first: the sooner it hears, the narrower the window in which
            // an activation that read after the commit registers before the notice.
            core.order_settled(order.user_id, &purchases, coupon, lessons);
            if order.status == OrderStatus::PendingPayment {
                core.timer.forget(order.id).await;
            }
            tracing::info!(order_id = %order.id, from = %order.status, to = %to, "order transition");
            settle_elsewhere(core, order.id, elsewhere).await;
            let next = Order { status: to, version: order.version + 1, ..order };
            (Ok(next.clone()), Some(next))
        }
        // The pipeline undid the refused effects in the SKU actors.
        Ok(Err(Conflict::Stale(_))) => (Err(LifecycleError::Stale), None),
        // Fenced: the range was lost (or lost and taken back) since the session started. It
        // stops, so a new one starts under the epoch held now, or elsewhere.
        Ok(Err(Conflict::NotOwner(range))) => (Err(LifecycleError::NotOwner(core.not_owner(range))), None),
        Ok(Err(conflict)) => (Err(conflict_error(conflict)), Some(order)),
        Err(error) if error.never_queued() => {
            core.abandon(effects);
            let error = match error {
                SubmitError::Overloaded => LifecycleError::Overloaded,
                other => LifecycleError::Unavailable(other.to_string()),
            };
            (Err(error), Some(order))
        }
        Err(error) => {
            tracing::warn!(order_id = %order.id, %error, ?event, "order step failed; its outcome is unknown");
            (Err(LifecycleError::Unavailable(error.to_string())), None)
        }
    }
}

/// What `event` does to the buyer's promotions, committed with the step: the units of limited
/// SKUs go back to the allowance when the order's units go back on the shelf, and the coupon
/// takes the event's step.
fn promotion_effects(order: &Order, event: OrderEvent) -> (Vec<PurchaseWrite>, Option<CouponMove>) {
    let purchases = if event.returns_allowance(order.status) {
        let counted = order.items.iter().filter(|item| item.limit_counted);
        counted
            .map(|item| PurchaseWrite {
                user_id: order.user_id,
                sku_id: item.sku_id,
                units: -item.quantity,
                limit: None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let coupon = order.coupon_id.and_then(|coupon_id| {
        event.coupon_step(order.id).map(|step| CouponMove { coupon_id, user_id: order.user_id, step })
    });
    (purchases, coupon)
}

/// Conflicts a step reports to the caller as they are (`DeadlinePassed` and `DuplicatePayment`
/// are handled by `pay`).
fn conflict_error(conflict: Conflict) -> LifecycleError {
    match conflict {
        Conflict::DeadlinePassed => LifecycleError::OrderClosed,
        Conflict::DuplicatePayment => LifecycleError::AlreadyPaid,
        Conflict::NotOwner(range) => LifecycleError::NotOwner(crate::cluster::NotOwner { range, owner: None }),
        other => LifecycleError::Unavailable(other.to_string()),
    }
}

/// The stock side of `event` on every SKU of `order` this node owns, made in memory by the
/// SKU actors and returned to be committed with the transition (if one SKU refuses, the others
/// are taken back); and the settlements of the SKUs other nodes own, made there only after the
/// step is committed here (a lease is never let go before its order's close is written).
async fn stock_effects(
    core: &Arc<Core>,
    order: &Order,
    event: OrderEvent,
) -> Result<(Vec<SkuEffect>, Vec<(SkuId, Settlement)>), LifecycleError> {
    let settlement = |quantity| match event.stock_step(order.status)? {
        StockStep::Confirm => Some(Settlement::Confirm),
        StockStep::Release => Some(Settlement::Release),
        StockStep::Return => Some(Settlement::Return { quantity }),
    };
    let mut elsewhere = Vec::new();
    let mut here = Vec::new();
    for item in &order.items {
        let Some(settlement) = settlement(item.quantity) else { continue };
        if core.owned_elsewhere(item.sku_id) {
            elsewhere.push((item.sku_id, settlement));
        } else {
            here.push((item.sku_id, settlement));
        }
    }
    let asks = here.into_iter().map(|(sku_id, s)| async move { (sku_id, core.settle(sku_id, order.id, s).await) });
    let results = futures::future::join_all(asks).await;
    let mut effects = Vec::with_capacity(results.len());
    let mut failure = None;
    for (sku_id, result) in results {
        match result {
            Ok(effect) => effects.push(effect),
            // A close finds nothing held (data from before leases followed their orders):
            // nothing to give back.
            Err(SkuError::Inventory(InventoryError::UnknownReservation(_)))
                if matches!(event, OrderEvent::Cancel | OrderEvent::Timeout) =>
            {
                tracing::warn!(%sku_id, order_id = %order.id, "closing an order that held no units on this sku");
            }
            Err(error) => {
                tracing::warn!(%sku_id, order_id = %order.id, ?event, %error, "stock effect refused");
                failure.get_or_insert(match error {
                    SkuError::Overloaded => LifecycleError::Overloaded,
                    // The SKU's range moved (a cluster): the client goes to its new owner.
                    SkuError::NotOwner(not_owner) => LifecycleError::NotOwner(not_owner),
                    other => LifecycleError::Unavailable(other.to_string()),
                });
            }
        }
    }
    match failure {
        None => Ok((effects, elsewhere)),
        Some(error) => {
            core.abandon(effects);
            Err(error)
        }
    }
}

/// Settles a committed step's leases on other nodes, together. One that fails stays as it is
/// in the database, where its owner's repair pass finds it disagreeing with the order and
/// settles it (no retry queue here).
async fn settle_elsewhere(core: &Arc<Core>, order_id: OrderId, settlements: Vec<(SkuId, Settlement)>) {
    let calls = settlements.into_iter().map(|(sku_id, settlement)| async move {
        if let Err(error) = core.settle_elsewhere(sku_id, order_id, settlement).await {
            tracing::warn!(%sku_id, %order_id, ?settlement, %error, "remote settlement failed; its owner's repair settles it");
        }
    });
    futures::future::join_all(calls).await;
}

/// A payment for `order`, idempotent on `out_trade_no` (see `domain::payment`).
async fn pay(core: &Arc<Core>, held: &[(RangeId, i64)], order: Order, payment: Payment) -> Ending {
    let out_trade_no = payment.out_trade_no.clone();
    let known = match core.bounded(|store| async move { store.find_payment(&out_trade_no).await }).await {
        Ok(known) => known,
        Err(error) => return (Err(error.into()), Some(order)),
    };
    let known_view = known.as_ref().map(|k| KnownPayment {
        same_order: k.order_id == order.id,
        amount_cents: k.amount_cents,
        refund_required: k.status == PaymentStatus::RefundRequired,
    });
    match decide(&order, known_view, payment.amount_cents, core.clock.now_ms()) {
        PaymentDecision::Repeat => (Ok(order.clone()), Some(order)),
        PaymentDecision::Refuse(PaymentRefusal::TradeNoReused) => {
            (Err(LifecycleError::TradeNoReused(payment.out_trade_no)), Some(order))
        }
        PaymentDecision::Refuse(refusal) => (Err(refusal.into()), Some(order)),
        PaymentDecision::Pay => {
            let (result, after) = step(core, held, order.clone(), OrderEvent::Pay, Some(payment.clone())).await;
            match result {
                Err(LifecycleError::OrderClosed) => close_and_keep_for_refund(core, held, order, payment).await,
                Err(LifecycleError::AlreadyPaid) => {
                    // Another callback with the same out_trade_no won the race: answer as a repeat.
                    let Some(order) = after else { return (Err(LifecycleError::Stale), None) };
                    Box::pin(pay(core, held, order, payment)).await
                }
                other => (other, after),
            }
        }
        PaymentDecision::CloseAndKeepForRefund => close_and_keep_for_refund(core, held, order, payment).await,
        PaymentDecision::KeepForRefund(refusal) => {
            let kept = Payment { status: PaymentStatus::RefundRequired, ..payment };
            let change = Change { payment: Some(kept.clone()), held_ranges: held.to_vec(), ..Change::default() };
            match core.journal.submit(change).await {
                Ok(Ok(())) | Ok(Err(Conflict::DuplicatePayment)) => {
                    tracing::warn!(order_id = %order.id, out_trade_no = %kept.out_trade_no, status = %order.status, "payment for an order that cannot take it; recorded for refund");
                    (Err(refusal.into()), Some(order))
                }
                Ok(Err(conflict)) => (Err(conflict_error(conflict)), Some(order)),
                Err(error) => (Err(LifecycleError::Unavailable(error.to_string())), Some(order)),
            }
        }
    }
}

/// The deadline passed before the payment could be committed: the order closes (its units go
/// back) and the payment is kept for refund, in one change.
async fn close_and_keep_for_refund(
    core: &Arc<Core>,
    held: &[(RangeId, i64)],
    order: Order,
    payment: Payment,
) -> Ending {
    let kept = Payment { status: PaymentStatus::RefundRequired, ..payment };
    tracing::warn!(order_id = %order.id, out_trade_no = %kept.out_trade_no, "payment after the deadline; closing the order and keeping the payment for refund");
    match step(core, held, order, OrderEvent::Timeout, Some(kept)).await {
        (Ok(_), after) => (Err(LifecycleError::OrderClosed), after),
        other => other,
    }
}

/// The order side of `Core`.
impl Core {
    fn start_session(self: &Arc<Self>, order: Order, held_ranges: Vec<(RangeId, i64)>) -> Addr<OrderSession> {
        let arbiter = self.arbiters.for_key(order.id.get());
        let capacity = self.limits.mailbox_capacity;
        let session = OrderSession {
            order_id: order.id,
            order,
            held_ranges: held_ranges.into(),
            last_active: Instant::now(),
            core: Arc::clone(self),
        };
        super::start_on(&arbiter, capacity, session)
    }

    /// The session of a stored order, activated from the database if it is not running.
    async fn session(self: &Arc<Self>, order_id: OrderId) -> Result<ActorRef<OrderSession>, LifecycleError> {
        self.orders
            .get_or_activate(order_id, || async {
                let read = move |store: crate::persistence::DynStore| async move { store.find_order(order_id).await };
                let order = self.bounded(read).await?.ok_or(LifecycleError::NotFound)?;
                // A session runs on the node that owns its buyer (beside the user's actor).
                let held_ranges = self.activation_ranges(crate::domain::slots::Key::user(order.user_id))?;
                Ok(self.start_session(order, held_ranges))
            })
            .await
    }

    /// Applies a payment callback to its order.
    pub async fn pay_order(
        self: &Arc<Self>,
        order_id: OrderId,
        out_trade_no: String,
        amount_cents: Cents,
        channel: String,
    ) -> Result<Order, LifecycleError> {
        let session = self.session(order_id).await?;
        self.orders.ask(session.addr(), |reply| Pay { out_trade_no, amount_cents, channel, reply }).await
    }

    /// Cancels, finishes or refunds an order; `owner` restricts it to that user's orders.
    pub async fn act_on_order(
        self: &Arc<Self>,
        order_id: OrderId,
        event: OrderEvent,
        owner: Option<UserId>,
    ) -> Result<Order, LifecycleError> {
        let session = self.session(order_id).await?;
        self.orders.ask(session.addr(), |reply| Act { event, owner, reply }).await
    }

    /// Closes an order whose payment deadline passed (called by the deadline timer).
    pub async fn time_out_order(self: &Arc<Self>, order_id: OrderId) -> Result<Order, LifecycleError> {
        self.act_on_order(order_id, OrderEvent::Timeout, None).await
    }
}
