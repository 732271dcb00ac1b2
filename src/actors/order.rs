//! The order session: one actor per open order, the only writer of that order.
//!
//! Placement is a saga over the SKU actors: reserve every line in parallel; if any line fails,
//! release what was reserved; then write the order through the group-commit order writer, and
//! answer only after it is committed. The saga runs inside the session (an atomic response),
//! so a client that disconnects does not cut it short, and later messages to the session wait
//! until placement is done.
//!
//! After placement the session drives the order's state machine (pay, cancel, time out, finish,
//! refund): each step is a durable, version-checked transition first and its stock effect
//! second, so a crash in between leaves the lease behind its order, never ahead of it; recovery
//! at start settles such leases. Idle sessions stop; the next message activates the order
//! from the database again.

use super::inventory::SkuError;
use super::registry::ActorRef;
use super::{ask, Core, Refusal, Reply};
use crate::domain::ids::wall_clock_ms;
use crate::domain::inventory::InventoryError;
use crate::domain::order::{InvalidTransition, NewOrderHeader, Order, OrderError, PlaceOrder};
use crate::domain::{Cents, IdempotencyKey, OrderEvent, OrderId, OrderStatus, SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{OrderInsert, OrderTransition, Payment, PaymentStatus, StoreError};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("sku {0} does not exist")]
    SkuNotFound(SkuId),
    #[error("sku {sku_id}: only {available} units available, {requested} requested")]
    InsufficientStock { sku_id: SkuId, available: i64, requested: i64 },
    #[error("the same Idempotency-Key was used for a different order")]
    KeyReused,
    #[error(transparent)]
    Invalid(#[from] OrderError),
    #[error("overloaded; retry shortly")]
    Overloaded,
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl PlaceError {
    /// When several lines fail, the one reported is the one the client can act on first.
    fn precedence(&self) -> u8 {
        match self {
            PlaceError::Invalid(_) => 0,
            PlaceError::SkuNotFound(_) => 1,
            PlaceError::InsufficientStock { .. } => 2,
            PlaceError::KeyReused => 3,
            PlaceError::Overloaded => 4,
            PlaceError::Unavailable(_) => 5,
        }
    }

    fn from_sku(sku_id: SkuId, error: SkuError) -> Self {
        match error {
            SkuError::NotFound(sku_id) => PlaceError::SkuNotFound(sku_id),
            SkuError::Inventory(InventoryError::InsufficientStock { available, requested }) => {
                PlaceError::InsufficientStock { sku_id, available, requested }
            }
            SkuError::Inventory(other) => PlaceError::Unavailable(other.to_string()),
            SkuError::Overloaded => PlaceError::Overloaded,
            SkuError::Unavailable(reason) => PlaceError::Unavailable(reason),
        }
    }
}

impl From<Refusal> for PlaceError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => PlaceError::Overloaded,
            Refusal::Stopped | Refusal::NoAnswer => PlaceError::Unavailable("order session stopped".into()),
        }
    }
}

impl From<StoreError> for PlaceError {
    fn from(error: StoreError) -> Self {
        PlaceError::Unavailable(error.to_string())
    }
}

impl From<SubmitError> for PlaceError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Overloaded => PlaceError::Overloaded,
            other => PlaceError::Unavailable(other.to_string()),
        }
    }
}

/// How a placement ended for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// A new order, committed.
    Created(Order),
    /// The order this Idempotency-Key made before.
    Replayed(Order),
}

impl Placed {
    pub fn order(&self) -> &Order {
        match self {
            Placed::Created(order) | Placed::Replayed(order) => order,
        }
    }
}

/// Place the order this session was started for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Place {
    pub header: NewOrderHeader,
    pub request: PlaceOrder,
    pub reply: Reply<Placed, PlaceError>,
}

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
            StoreError::Stale(_) => LifecycleError::Stale,
            other => LifecycleError::Unavailable(other.to_string()),
        }
    }
}

pub struct OrderSession {
    order_id: OrderId,
    /// `None` only while the order is being placed.
    order: Option<Order>,
    last_active: Instant,
    core: Arc<Core>,
}

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
    /// Runs one step on the order with the session held exclusively until it is done, then
    /// keeps the order it ended with.
    fn exclusive<T: Send + 'static, E: Send + 'static>(
        &mut self,
        reply: Reply<T, E>,
        step: impl std::future::Future<Output = (Result<T, E>, Option<Order>)> + 'static,
    ) -> AtomicResponse<Self, ()> {
        self.last_active = Instant::now();
        AtomicResponse::new(Box::pin(step.into_actor(self).map(move |(result, order), session, _ctx| {
            session.last_active = Instant::now();
            if let Some(order) = order {
                session.order = Some(order);
            }
            let _ = reply.send(result);
        })))
    }
}

impl Handler<Place> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Place, _ctx: &mut Self::Context) -> Self::Result {
        let Place { header, request, reply } = msg;
        let core = Arc::clone(&self.core);
        let placed_before = self.order.is_some();
        assert_eq!(header.id, self.order_id);
        self.exclusive(reply, async move {
            if placed_before {
                return (Err(PlaceError::Unavailable("order already placed".into())), None);
            }
            let result = place(&core, header, request).await;
            let order = result.as_ref().ok().map(|placed| placed.order().clone());
            (result, order)
        })
    }
}

impl Handler<Pay> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Pay, _ctx: &mut Self::Context) -> Self::Result {
        let Pay { out_trade_no, amount_cents, channel, reply } = msg;
        let core = Arc::clone(&self.core);
        let order = self.order.clone();
        self.exclusive(reply, async move {
            let Some(order) = order else { return (Err(LifecycleError::NotFound), None) };
            let payment =
                Payment { out_trade_no, order_id: order.id, amount_cents, channel, status: PaymentStatus::Paid };
            let (result, order) = pay(&core, order, payment).await;
            (result, Some(order))
        })
    }
}

impl Handler<Act> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Act, _ctx: &mut Self::Context) -> Self::Result {
        let Act { event, owner, reply } = msg;
        let core = Arc::clone(&self.core);
        let order = self.order.clone();
        self.exclusive(reply, async move {
            let Some(order) = order else { return (Err(LifecycleError::NotFound), None) };
            if owner.is_some_and(|owner| owner != order.user_id) {
                return (Err(LifecycleError::NotFound), Some(order));
            }
            if event == OrderEvent::Timeout && wall_clock_ms() as i64 <= order.pay_deadline_ms {
                // A deadline that moved or fired early: not due yet, nothing to do.
                return (Ok(order.clone()), Some(order));
            }
            match step(&core, &order, event, None).await {
                Ok(next) => (Ok(next.clone()), Some(next)),
                Err(error) => (Err(error), Some(order)),
            }
        })
    }
}

/// Applies `event` to `order`: the transition first, durable and version-checked (with the
/// payment row when there is one), then its effect on stock. A crash between the two leaves
/// the lease behind its order; recovery at the next start settles it (`Core::recover`).
async fn step(
    core: &Arc<Core>,
    order: &Order,
    event: OrderEvent,
    payment: Option<Payment>,
) -> Result<Order, LifecycleError> {
    let to = order.status.apply(event)?;
    let at_ms = wall_clock_ms() as i64;
    let transition = OrderTransition {
        order_id: order.id,
        from: order.status,
        to,
        expected_version: order.version,
        at_ms,
        insert_payment: payment,
        refund_payment: event == OrderEvent::Refund,
    };
    core.transition_writer.submit(transition).await.map_err(|error| match error {
        SubmitError::Overloaded => LifecycleError::Overloaded,
        SubmitError::Store(error) => error.into(),
        SubmitError::Closed => LifecycleError::Unavailable("transition writer stopped".into()),
    })??;
    let next = Order { status: to, version: order.version + 1, ..order.clone() };
    if order.status == OrderStatus::PendingPayment {
        core.timer.forget(order.id).await;
    }
    let effects = order.items.iter().map(|item| stock_effect(core, order, item.sku_id, item.quantity, event));
    futures::future::join_all(effects).await;
    tracing::info!(order_id = %order.id, from = %order.status, to = %to, "order transition");
    Ok(next)
}

/// The stock side of a transition, retried a few times; what still fails is left to recovery.
async fn stock_effect(core: &Arc<Core>, order: &Order, sku_id: SkuId, quantity: i64, event: OrderEvent) {
    let from_paid = order.status == OrderStatus::Paid;
    for attempt in 1..=STOCK_EFFECT_ATTEMPTS_MAX {
        let result = match event {
            OrderEvent::Pay => core.confirm(sku_id, order.id).await,
            OrderEvent::Cancel | OrderEvent::Timeout => core.release(sku_id, order.id).await,
            OrderEvent::Refund if from_paid => core.return_sold(sku_id, order.id, quantity).await,
            OrderEvent::Refund | OrderEvent::Finish => return,
        };
        match result {
            Ok(_) => return,
            // Released by its lease or by an earlier attempt: nothing is held any more.
            Err(SkuError::Inventory(InventoryError::UnknownReservation(_)))
                if matches!(event, OrderEvent::Cancel | OrderEvent::Timeout) =>
            {
                return
            }
            Err(error @ (SkuError::Overloaded | SkuError::Unavailable(_))) if attempt < STOCK_EFFECT_ATTEMPTS_MAX => {
                tracing::debug!(%sku_id, order_id = %order.id, %error, attempt, "stock effect failed; retrying");
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::error!(%sku_id, order_id = %order.id, ?event, %error, "stock effect failed; recovery settles it at the next start");
                return;
            }
        }
    }
}

/// How often a transition's stock effect is tried before it is left to recovery.
const STOCK_EFFECT_ATTEMPTS_MAX: u32 = 3;

/// A payment for `order`: idempotent on `out_trade_no`. Returns the result and the order as it
/// ends up.
async fn pay(core: &Arc<Core>, order: Order, payment: Payment) -> (Result<Order, LifecycleError>, Order) {
    match core.store.find_payment(&payment.out_trade_no).await {
        Err(error) => return (Err(error.into()), order),
        Ok(Some(known)) => {
            // A repeat of a callback already handled: the same answer as the first time.
            let result = if known.order_id != order.id {
                Err(LifecycleError::TradeNoReused(known.out_trade_no))
            } else if known.amount_cents != payment.amount_cents {
                Err(LifecycleError::AmountMismatch { expected: known.amount_cents, received: payment.amount_cents })
            } else if known.status == PaymentStatus::RefundRequired {
                Err(if order.status == OrderStatus::Closed {
                    LifecycleError::OrderClosed
                } else {
                    LifecycleError::AlreadyPaid
                })
            } else {
                Ok(order.clone())
            };
            return (result, order);
        }
        Ok(None) => {}
    }
    if payment.amount_cents != order.pay_cents {
        return (
            Err(LifecycleError::AmountMismatch { expected: order.pay_cents, received: payment.amount_cents }),
            order,
        );
    }
    let mut order = order;
    if order.status == OrderStatus::PendingPayment && wall_clock_ms() as i64 > order.pay_deadline_ms {
        // Too late: the deadline closes the order first, then the payment is one for a closed order.
        match step(core, &order, OrderEvent::Timeout, None).await {
            Ok(closed) => order = closed,
            Err(error) => return (Err(error), order),
        }
    }
    match order.status {
        OrderStatus::PendingPayment => match step(core, &order, OrderEvent::Pay, Some(payment)).await {
            Ok(paid) => (Ok(paid.clone()), paid),
            Err(error) => (Err(error), order),
        },
        status => {
            let refund = Payment { status: PaymentStatus::RefundRequired, ..payment };
            if let Err(error) = core.store.record_payment(&refund, wall_clock_ms() as i64).await {
                return (Err(error.into()), order);
            }
            tracing::warn!(order_id = %order.id, out_trade_no = %refund.out_trade_no, %status, "payment for an order that cannot take it; recorded for refund");
            let error =
                if status == OrderStatus::Closed { LifecycleError::OrderClosed } else { LifecycleError::AlreadyPaid };
            (Err(error), order)
        }
    }
}

/// The placement saga. Called inside the order's session.
async fn place(core: &Arc<Core>, header: NewOrderHeader, request: PlaceOrder) -> Result<Placed, PlaceError> {
    let order_id = header.id;
    let grace_ms = core.limits.reservation_grace.as_millis() as i64;
    let expires_at_ms = header.pay_deadline_ms + grace_ms;
    assert!(expires_at_ms > header.pay_deadline_ms, "a lease must outlive its order's deadline");

    let reservations = futures::future::join_all(
        request.lines.iter().map(|&(sku_id, quantity)| core.reserve(sku_id, order_id, quantity, expires_at_ms)),
    )
    .await;
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut reserved = Vec::with_capacity(request.lines.len());
    let mut failure: Option<PlaceError> = None;
    for (&(sku_id, quantity), result) in request.lines.iter().zip(reservations) {
        match result {
            Ok(info) => {
                reserved.push(sku_id);
                lines.push(crate::domain::OrderLine {
                    sku_id,
                    name: info.name,
                    price_cents: info.price_cents,
                    quantity,
                });
            }
            Err(error) => {
                let error = PlaceError::from_sku(sku_id, error);
                if failure.as_ref().is_none_or(|f| error.precedence() < f.precedence()) {
                    failure = Some(error);
                }
            }
        }
    }
    if let Some(error) = failure {
        release_all(core, order_id, &reserved).await;
        return Err(error);
    }

    let order = match Order::price(header, lines, Cents::ZERO) {
        Ok(order) => order,
        Err(error) => {
            release_all(core, order_id, &reserved).await;
            return Err(error.into());
        }
    };
    match core.order_writer.submit(order.clone()).await {
        Ok(OrderInsert::Inserted) => Ok(Placed::Created(order)),
        Ok(OrderInsert::DuplicateKey) => {
            // Another placement under the same key won the unique key; this one gives back its
            // units and answers with the winner.
            release_all(core, order_id, &reserved).await;
            let existing = core.store.find_order_by_key(order.user_id, &order.idempotency_key).await?;
            let existing = existing.ok_or_else(|| PlaceError::Unavailable("order under this key vanished".into()))?;
            replay(existing, &order.request_hash)
        }
        Err(SubmitError::Overloaded) => {
            // Definitely not written: the writer refused it before any batch took it.
            release_all(core, order_id, &reserved).await;
            Err(PlaceError::Overloaded)
        }
        Err(error) => {
            // The commit may or may not have landed (a lost acknowledgement looks the same as a
            // failure), so the reservations are left to their leases rather than released under
            // an order that might exist. A retry with the same key finds the order if it landed.
            tracing::warn!(%order_id, %error, "order write failed; its reservations end with their leases");
            Err(error.into())
        }
    }
}

/// Gives back the units of a placement that will not become an order. A release that fails is
/// logged; the reservation's lease returns the units when it runs out.
async fn release_all(core: &Arc<Core>, order_id: OrderId, skus: &[SkuId]) {
    let releases = futures::future::join_all(skus.iter().map(|&sku_id| core.release(sku_id, order_id))).await;
    for (sku_id, result) in skus.iter().zip(releases) {
        if let Err(error) = result {
            tracing::warn!(%sku_id, %order_id, %error, "release failed; the lease will return the units");
        }
    }
}

/// The stored order under a key, if the request is the same one that made it.
pub fn replay(order: Order, request_hash: &str) -> Result<Placed, PlaceError> {
    if order.request_hash == request_hash {
        Ok(Placed::Replayed(order))
    } else {
        Err(PlaceError::KeyReused)
    }
}

/// The order side of `Core`.
impl Core {
    /// Places a new order for `user_id` in a new order session. The caller has already made
    /// sure no order exists under `key` (see `http::idempotency`); the database's unique key
    /// settles any race that slips past.
    pub async fn place_order(
        self: &Arc<Self>,
        user_id: UserId,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, PlaceError> {
        let order_id = OrderId::new(self.ids.next_id());
        let now_ms = wall_clock_ms() as i64;
        let header = NewOrderHeader {
            id: order_id,
            user_id,
            idempotency_key: key,
            request_hash: request.fingerprint(),
            created_at_ms: now_ms,
            pay_deadline_ms: now_ms + self.pay_timeout.as_millis() as i64,
        };
        let session = self
            .orders
            .get_or_activate(order_id, || async { Ok::<_, PlaceError>(self.start_session(order_id, None)) })
            .await?;
        let placed = ask(session.addr(), |reply| Place { header, request: request.clone(), reply }).await?;
        if let Placed::Created(order) = &placed {
            self.timer.schedule(order.id, order.pay_deadline_ms).await;
        }
        Ok(placed)
    }

    fn start_session(self: &Arc<Self>, order_id: OrderId, order: Option<Order>) -> Addr<OrderSession> {
        let arbiter = self.arbiters.for_key(order_id.get());
        let capacity = self.limits.mailbox_capacity;
        let session = OrderSession { order_id, order, last_active: Instant::now(), core: Arc::clone(self) };
        super::start_on(&arbiter, capacity, session)
    }

    /// The session of a stored order, activated from the database if it is passivated.
    async fn session(self: &Arc<Self>, order_id: OrderId) -> Result<ActorRef<OrderSession>, LifecycleError> {
        self.orders
            .get_or_activate(order_id, || async {
                let order = self.store.find_order(order_id).await?.ok_or(LifecycleError::NotFound)?;
                Ok(self.start_session(order_id, Some(order)))
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
        ask(session.addr(), |reply| Pay { out_trade_no, amount_cents, channel, reply }).await
    }

    /// Cancels, finishes or refunds an order; `owner` restricts it to that user's orders.
    pub async fn act_on_order(
        self: &Arc<Self>,
        order_id: OrderId,
        event: OrderEvent,
        owner: Option<UserId>,
    ) -> Result<Order, LifecycleError> {
        let session = self.session(order_id).await?;
        ask(session.addr(), |reply| Act { event, owner, reply }).await
    }

    /// Closes an order whose payment deadline passed (called by the deadline timer).
    pub async fn time_out_order(self: &Arc<Self>, order_id: OrderId) -> Result<Order, LifecycleError> {
        self.act_on_order(order_id, OrderEvent::Timeout, None).await
    }

    /// An order as stored.
    pub async fn order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.store.find_order(order_id).await
    }
}
