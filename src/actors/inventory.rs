//! The inventory actor: one per SKU, the only writer of that SKU's stock.
//!
//! Each change is applied to the in-memory `Ledger` at once (so the next message sees it) and
//! joins the open batch; a batch is written in one transaction, fenced by the SKU's version,
//! and its callers are answered only after the commit. While one batch commits the next one
//! fills. A request the ledger refuses (sold out, unknown lease) is answered at once without
//! touching the database. If a commit fails, the actor fails every pending caller and stops:
//! its in-memory state is ahead of the database, so it must never answer from it again; the
//! next request activates a fresh actor from the database.

use super::registry::ActorRef;
use super::{ask, ActorLimits, Core, Refusal, Reply};
use crate::domain::ids::wall_clock_ms;
use crate::domain::inventory::{InventoryError, Ledger, Quantity};
use crate::domain::{OrderId, SkuId};
use crate::persistence::redis::{SkuSnapshot, Snapshots};
use crate::persistence::{DynStore, InventoryBatch, ReservationStatus, ReservationWrite, SkuInfo, StoreError};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("sku {0} does not exist")]
    NotFound(SkuId),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("sku is overloaded; retry shortly")]
    Overloaded,
    #[error("sku is unavailable: {0}")]
    Unavailable(String),
}

impl From<Refusal> for SkuError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => SkuError::Overloaded,
            Refusal::Stopped => SkuError::Unavailable("sku actor stopped".into()),
            Refusal::NoAnswer => SkuError::Unavailable("sku actor stopped before answering".into()),
        }
    }
}

impl From<StoreError> for SkuError {
    fn from(error: StoreError) -> Self {
        SkuError::Unavailable(error.to_string())
    }
}

/// Hold `quantity` units for `order_id` until `expires_at_ms`; answers with what the SKU sells
/// as, for the order's item snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reserve {
    pub order_id: OrderId,
    pub quantity: Quantity,
    pub expires_at_ms: i64,
    pub reply: Reply<SkuInfo, SkuError>,
}

/// The order was paid: its reserved units are sold. Answers with the units.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Confirm {
    pub order_id: OrderId,
    pub reply: Reply<i64, SkuError>,
}

/// The order will not be paid: its reserved units go back on the shelf. Answers with the units.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub order_id: OrderId,
    pub reply: Reply<i64, SkuError>,
}

/// A refund before delivery: the `quantity` units sold to `order_id` go back on the shelf.
/// The order's reservation row moves from confirmed to returned, once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReturnSold {
    pub order_id: OrderId,
    pub quantity: i64,
    pub reply: Reply<i64, SkuError>,
}

/// Adds units; answers with the committed snapshot that includes them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restock {
    pub quantity: Quantity,
    pub reply: Reply<SkuSnapshot, SkuError>,
}

/// The last committed state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GetSnapshot {
    pub reply: Reply<SkuSnapshot, SkuError>,
}

/// A caller waiting for the batch that holds its change.
enum Waiter {
    Reserved(Reply<SkuInfo, SkuError>),
    Units(Reply<i64, SkuError>, i64),
    Restocked(Reply<SkuSnapshot, SkuError>),
}

impl Waiter {
    fn answer(self, outcome: Result<&SkuSnapshot, &SkuError>, info: &SkuInfo) {
        // A caller that went away no longer needs its answer; the change is committed anyway.
        match (self, outcome) {
            (Waiter::Reserved(reply), Ok(_)) => drop(reply.send(Ok(info.clone()))),
            (Waiter::Units(reply, units), Ok(_)) => drop(reply.send(Ok(units))),
            (Waiter::Restocked(reply), Ok(snapshot)) => drop(reply.send(Ok(snapshot.clone()))),
            (Waiter::Reserved(reply), Err(error)) => drop(reply.send(Err(error.clone()))),
            (Waiter::Units(reply, _), Err(error)) => drop(reply.send(Err(error.clone()))),
            (Waiter::Restocked(reply), Err(error)) => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// The changes made since the last flush, collapsed to one row write per order.
#[derive(Default)]
struct Batch {
    writes: HashMap<OrderId, ReservationWrite>,
    waiters: Vec<Waiter>,
    counters_changed: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.counters_changed
    }

    fn size(&self) -> usize {
        self.writes.len().max(self.waiters.len())
    }

    fn reserve(&mut self, order_id: OrderId, quantity: i64, expires_at_ms: i64) {
        let write =
            ReservationWrite { order_id, quantity, expires_at_ms, from: None, status: ReservationStatus::Reserved };
        let previous = self.writes.insert(order_id, write);
        assert!(previous.is_none(), "order {order_id} reserved twice in one batch");
        self.counters_changed = true;
    }

    /// Moves a reservation from `from` to `to`, in this batch's row if it has one.
    fn settle(&mut self, order_id: OrderId, quantity: i64, from: ReservationStatus, to: ReservationStatus) {
        assert_ne!(from, to);
        self.counters_changed = true;
        match self.writes.get_mut(&order_id) {
            Some(write) => {
                assert_eq!(write.status, from, "order {order_id} is not {} in this batch", from.as_str());
                write.status = to;
            }
            None => {
                let write = ReservationWrite { order_id, quantity, expires_at_ms: 0, from: Some(from), status: to };
                self.writes.insert(order_id, write);
            }
        }
    }
}

pub struct InventoryActor {
    info: SkuInfo,
    ledger: Ledger,
    /// The snapshot of the last commit; its version is the row's version in the database.
    committed: SkuSnapshot,
    open: Batch,
    committing: bool,
    failed: bool,
    flush_timer: Option<SpawnHandle>,
    last_active: Instant,
    core: Arc<Core>,
}

impl InventoryActor {
    fn limits(&self) -> ActorLimits {
        self.core.limits
    }

    fn store(&self) -> DynStore {
        Arc::clone(&self.core.store)
    }

    fn snapshots(&self) -> &Snapshots {
        &self.core.snapshots
    }

    /// Whether new work must be refused: the actor failed, or its open batch is full while the
    /// previous one is still committing (the bound on un-committed changes).
    fn refusal(&self) -> Option<SkuError> {
        if self.failed {
            return Some(SkuError::Unavailable("sku actor is stopping".into()));
        }
        if self.committing && self.open.size() >= self.limits().batch_size_max {
            return Some(SkuError::Overloaded);
        }
        None
    }

    /// Closes the open batch now if it is full, or arms the delay timer.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.open.size() >= self.limits().batch_size_max {
            self.flush(ctx);
        } else if self.flush_timer.is_none() && !self.committing {
            let delay = self.limits().batch_delay;
            self.flush_timer = Some(ctx.run_later(delay, |actor, ctx| {
                actor.flush_timer = None;
                actor.flush(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.failed || self.open.is_empty() {
            return;
        }
        if let Some(timer) = self.flush_timer.take() {
            ctx.cancel_future(timer);
        }
        let batch = std::mem::take(&mut self.open);
        let counters = self.ledger.counters();
        let snapshot = SkuSnapshot { counters, version: self.committed.version + 1, ..self.committed.clone() };
        let write = InventoryBatch {
            sku_id: self.info.sku_id,
            expected_version: self.committed.version,
            counters,
            writes: batch.writes.into_values().collect(),
            now_ms: wall_clock_ms() as i64,
        };
        let waiters = batch.waiters;
        let store = self.store();
        let started = Instant::now();
        self.committing = true;
        let commit = async move { store.commit_inventory(&write).await.map(|()| write.writes.len()) };
        ctx.spawn(commit.into_actor(self).map(move |result, actor, ctx| {
            tracing::debug!(sku_id = %actor.info.sku_id, batch_size = waiters.len(), elapsed_us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "inventory batch");
            actor.committed_batch(result.map(|_| snapshot), waiters, ctx);
        }));
    }

    fn committed_batch(
        &mut self,
        result: Result<SkuSnapshot, StoreError>,
        waiters: Vec<Waiter>,
        ctx: &mut Context<Self>,
    ) {
        self.committing = false;
        match result {
            Ok(snapshot) => {
                assert_eq!(snapshot.version, self.committed.version + 1);
                assert!(snapshot.counters.is_balanced());
                self.committed = snapshot;
                self.snapshots().publish(self.committed.clone());
                for waiter in waiters {
                    waiter.answer(Ok(&self.committed), &self.info);
                }
                // The next batch filled while this one committed: write it now.
                self.flush(ctx);
            }
            Err(error) => {
                tracing::error!(sku_id = %self.info.sku_id, %error, "inventory commit failed; failing pending callers and stopping");
                self.failed = true;
                let failure = SkuError::Unavailable(error.to_string());
                let pending = waiters.into_iter().chain(std::mem::take(&mut self.open).waiters);
                for waiter in pending {
                    waiter.answer(Err(&failure), &self.info);
                }
                ctx.stop();
            }
        }
    }

    /// Releases leases that ran out, and stops the actor when it has had nothing to do for
    /// the idle timeout and holds no lease (a lease needs its timer running).
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.failed {
            return;
        }
        let expired = self.ledger.expire_due(wall_clock_ms() as i64);
        if !expired.is_empty() {
            tracing::info!(sku_id = %self.info.sku_id, leases = expired.len(), "reservations expired");
            for (order_id, quantity) in expired {
                self.open.settle(order_id, quantity, ReservationStatus::Reserved, ReservationStatus::Expired);
            }
            self.schedule_flush(ctx);
            return;
        }
        let idle = self.last_active.elapsed() >= self.limits().idle_timeout;
        if idle && self.open.is_empty() && !self.committing && self.ledger.open_reservations() == 0 {
            tracing::debug!(sku_id = %self.info.sku_id, "passivating idle sku actor");
            ctx.stop();
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
    }
}

impl Actor for InventoryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.snapshots().publish(self.committed.clone());
        ctx.run_interval(self.limits().lease_tick, |actor, ctx| actor.tick(ctx));
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.skus.forget(self.info.sku_id, &ctx.address());
    }
}

impl Handler<Reserve> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Reserve, ctx: &mut Self::Context) {
        self.touch();
        if let Some(error) = self.refusal() {
            let _ = msg.reply.send(Err(error));
            return;
        }
        if self.open.writes.contains_key(&msg.order_id) {
            let _ = msg.reply.send(Err(InventoryError::DuplicateReservation(msg.order_id).into()));
            return;
        }
        if let Err(error) = self.ledger.reserve(msg.order_id, msg.quantity, msg.expires_at_ms) {
            let _ = msg.reply.send(Err(error.into()));
            return;
        }
        self.open.reserve(msg.order_id, msg.quantity.units(), msg.expires_at_ms);
        self.open.waiters.push(Waiter::Reserved(msg.reply));
        self.schedule_flush(ctx);
    }
}

impl InventoryActor {
    fn settle(
        &mut self,
        order_id: OrderId,
        status: ReservationStatus,
        reply: Reply<i64, SkuError>,
        ctx: &mut Context<Self>,
    ) {
        self.touch();
        if self.failed {
            let _ = reply.send(Err(SkuError::Unavailable("sku actor is stopping".into())));
            return;
        }
        let result = match status {
            ReservationStatus::Confirmed => self.ledger.confirm(order_id),
            _ => self.ledger.release(order_id),
        };
        match result {
            Ok(units) => {
                self.open.settle(order_id, units, ReservationStatus::Reserved, status);
                self.open.waiters.push(Waiter::Units(reply, units));
                self.schedule_flush(ctx);
            }
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
        }
    }
}

impl Handler<Confirm> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Confirm, ctx: &mut Self::Context) {
        self.settle(msg.order_id, ReservationStatus::Confirmed, msg.reply, ctx);
    }
}

impl Handler<Release> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Self::Context) {
        self.settle(msg.order_id, ReservationStatus::Released, msg.reply, ctx);
    }
}

impl Handler<ReturnSold> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: ReturnSold, ctx: &mut Self::Context) {
        self.touch();
        if self.failed {
            let _ = msg.reply.send(Err(SkuError::Unavailable("sku actor is stopping".into())));
            return;
        }
        let already = self.open.writes.get(&msg.order_id).is_some_and(|w| w.status == ReservationStatus::Returned);
        if already {
            let _ = msg.reply.send(Err(InventoryError::NotSold {
                sold: self.ledger.counters().sold,
                requested: msg.quantity,
            }
            .into()));
            return;
        }
        if let Err(error) = self.ledger.return_sold(msg.quantity) {
            let _ = msg.reply.send(Err(error.into()));
            return;
        }
        self.open.settle(msg.order_id, msg.quantity, ReservationStatus::Confirmed, ReservationStatus::Returned);
        self.open.waiters.push(Waiter::Units(msg.reply, msg.quantity));
        self.schedule_flush(ctx);
    }
}

impl Handler<Restock> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Restock, ctx: &mut Self::Context) {
        self.touch();
        if let Some(error) = self.refusal() {
            let _ = msg.reply.send(Err(error));
            return;
        }
        if let Err(error) = self.ledger.restock(msg.quantity) {
            let _ = msg.reply.send(Err(error.into()));
            return;
        }
        self.open.counters_changed = true;
        self.open.waiters.push(Waiter::Restocked(msg.reply));
        self.schedule_flush(ctx);
    }
}

impl Handler<GetSnapshot> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: GetSnapshot, _ctx: &mut Self::Context) {
        let _ = msg.reply.send(Ok(self.committed.clone()));
    }
}

/// Loads a SKU from the store and starts its actor on the SKU's arbiter.
async fn activate(core: Arc<Core>, sku_id: SkuId) -> Result<Addr<InventoryActor>, SkuError> {
    let state = core.store.load_sku(sku_id).await?.ok_or(SkuError::NotFound(sku_id))?;
    let ledger = Ledger::restore(state.counters, state.reservations).map_err(|error| {
        tracing::error!(%sku_id, %error, "refusing to serve a sku whose stored state does not balance");
        SkuError::Unavailable(error.to_string())
    })?;
    let committed = SkuSnapshot {
        sku_id,
        name: state.info.name.clone(),
        price_cents: state.info.price_cents,
        counters: state.counters,
        version: state.version,
    };
    let arbiter = core.arbiters.for_key(sku_id.get());
    let mailbox_capacity = core.limits.mailbox_capacity;
    let actor = InventoryActor {
        info: state.info,
        ledger,
        committed,
        open: Batch::default(),
        committing: false,
        failed: false,
        flush_timer: None,
        last_active: Instant::now(),
        core,
    };
    Ok(super::start_on(&arbiter, mailbox_capacity, actor))
}

/// The SKU side of `Core`: find or activate a SKU's actor and ask it.
impl Core {
    pub async fn sku(self: &Arc<Self>, sku_id: SkuId) -> Result<ActorRef<InventoryActor>, SkuError> {
        self.skus.get_or_activate(sku_id, || activate(Arc::clone(self), sku_id)).await
    }

    /// Asks a SKU's actor, activating it first; retried once if the actor stopped before the
    /// message was delivered (a message that was never delivered was never processed).
    async fn ask_sku<M, T>(
        self: &Arc<Self>,
        sku_id: SkuId,
        build: impl Fn(Reply<T, SkuError>) -> M,
    ) -> Result<T, SkuError>
    where
        M: Message<Result = ()> + Send + 'static,
        InventoryActor: Handler<M>,
    {
        let actor = self.sku(sku_id).await?;
        match ask(actor.addr(), &build).await {
            Err(SkuError::Unavailable(reason)) if !actor.addr().connected() => {
                tracing::debug!(%sku_id, %reason, "sku actor stopped; activating again");
                let actor = self.sku(sku_id).await?;
                ask(actor.addr(), build).await
            }
            other => other,
        }
    }

    pub async fn reserve(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at_ms: i64,
    ) -> Result<SkuInfo, SkuError> {
        let actor = self.sku(sku_id).await?;
        // Not retried: a reservation whose answer was lost may have been made; its lease ends it.
        ask(actor.addr(), |reply| Reserve { order_id, quantity, expires_at_ms, reply }).await
    }

    pub async fn confirm(self: &Arc<Self>, sku_id: SkuId, order_id: OrderId) -> Result<i64, SkuError> {
        self.ask_sku(sku_id, |reply| Confirm { order_id, reply }).await
    }

    pub async fn release(self: &Arc<Self>, sku_id: SkuId, order_id: OrderId) -> Result<i64, SkuError> {
        self.ask_sku(sku_id, |reply| Release { order_id, reply }).await
    }

    pub async fn return_sold(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        quantity: i64,
    ) -> Result<i64, SkuError> {
        self.ask_sku(sku_id, |reply| ReturnSold { order_id, quantity, reply }).await
    }

    pub async fn restock(self: &Arc<Self>, sku_id: SkuId, quantity: Quantity) -> Result<SkuSnapshot, SkuError> {
        self.ask_sku(sku_id, |reply| Restock { quantity, reply }).await
    }

    /// The committed state of a SKU: from the snapshot cache, else from its actor (activated
    /// from the database once, then served from memory).
    pub async fn sku_snapshot(self: &Arc<Self>, sku_id: SkuId) -> Result<SkuSnapshot, SkuError> {
        if let Some(snapshot) = self.snapshots.get(sku_id) {
            return Ok(snapshot);
        }
        self.ask_sku(sku_id, |reply| GetSnapshot { reply }).await
    }
}
