//! The order session: one actor per open order, the only writer of that order.
//!
//! Placement is a saga over the SKU actors: reserve every line in parallel; if any line fails,
//! release what was reserved; then write the order through the group-commit order writer, and
//! answer only after it is committed. The saga runs inside the session (an atomic response),
//! so a client that disconnects does not cut it short, and later messages to the session wait
//! until placement is done. Payment, cancel and timeout hang off this actor.

use super::inventory::SkuError;
use super::{ask, Core, Refusal, Reply};
use crate::domain::ids::wall_clock_ms;
use crate::domain::order::{NewOrderHeader, Order, OrderError, PlaceOrder};
use crate::domain::{Cents, IdempotencyKey, OrderId, SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{OrderInsert, StoreError};
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
        use crate::domain::inventory::InventoryError;
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

pub struct OrderSession {
    order_id: OrderId,
    order: Option<Order>,
    last_active: Instant,
    core: Arc<Core>,
}

impl Actor for OrderSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let idle_timeout = self.core.limits.idle_timeout;
        ctx.run_interval(idle_timeout / 4, move |session, ctx| {
            if session.last_active.elapsed() >= idle_timeout {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.orders.forget(self.order_id, &ctx.address());
    }
}

impl Handler<Place> for OrderSession {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Place, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let Place { header, request, reply } = msg;
        if self.order.is_some() {
            let _ = reply.send(Err(PlaceError::Unavailable("order already placed".into())));
            return AtomicResponse::new(Box::pin(async {}.into_actor(self)));
        }
        assert_eq!(header.id, self.order_id);
        let core = Arc::clone(&self.core);
        AtomicResponse::new(Box::pin(async move { place(&core, header, request).await }.into_actor(self).map(
            move |result, session, _ctx| {
                session.last_active = Instant::now();
                if let Ok(placed) = &result {
                    session.order = Some(placed.order().clone());
                }
                let _ = reply.send(result);
            },
        )))
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
        let core = Arc::clone(self);
        let session = self
            .orders
            .get_or_activate(order_id, || {
                let core = Arc::clone(&core);
                async move {
                    let arbiter = core.arbiters.for_key(order_id.get());
                    let capacity = core.limits.mailbox_capacity;
                    let session = OrderSession { order_id, order: None, last_active: Instant::now(), core };
                    Ok::<_, PlaceError>(OrderSession::start_in_arbiter(&arbiter, move |ctx| {
                        ctx.set_mailbox_capacity(capacity);
                        session
                    }))
                }
            })
            .await?;
        let request = request.clone();
        ask(session.addr(), |reply| Place { header, request, reply }).await
    }

    /// An order as stored.
    pub async fn order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.store.find_order(order_id).await
    }
}
