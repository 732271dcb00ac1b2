//! The inventory actor: one per SKU, the only one that decides about that SKU's stock.
//!
//! It holds the SKU's `Ledger` in memory and answers at once: a request the ledger refuses
//! (sold out, unknown lease) touches nothing; an accepted one moves the ledger and hands the
//! caller a `SkuEffect` (counter delta, reservation row, the actor's owner epoch). The caller
//! puts the effect into its change (an order step and its stock effect are one change) and
//! submits it to the node's write pipeline; the actor never writes itself.
//!
//! After every batch the pipeline sends a `Committed` notice: committed effects move the
//! actor's view of the database (`committed`, what readers see), refused ones are undone in the
//! ledger. If a batch failed, or the SKU was fenced (a newer activation owns it), the actor
//! stops: its memory may be ahead of the database, so it must never answer from it again; the
//! next request activates a fresh actor from the database under a new epoch.
//!
//! Leases do not run out in here: a reservation is written in the same commit as its order,
//! and only the order's own close (cancel, timeout) lets its units go. In a cluster, an order
//! served on another node reserves and settles here through the internal routes: the effect is
//! then committed alone (`Core::reserve_alone`, `Core::settle_alone`), and a lease such an order
//! left open is settled by the repair pass (`repair.rs`) by the order's status, never by a clock
//! in here.

use super::registry::ActorRef;
use super::{schedule_idle_checks, ActorLimits, Core, Refusal, Reply};
use crate::domain::inventory::{InventoryError, Ledger, Quantity, Reservation};
use crate::domain::lease::CounterDelta;
use crate::domain::sale::{Sale, SaleError, SalePatch, SaleRuleError};
use crate::domain::slots::Key;
use crate::domain::{Cents, OrderId, SkuId};
use crate::persistence::redis::SkuSnapshot;
use crate::persistence::{
    Change, Conflict, LeaseWrite, ReservationStatus, SaleWrite, SkuEffect, SkuInfo, SkuState, StoreError,
};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("sku {0} does not exist")]
    NotFound(SkuId),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// Outside the SKU's sale window.
    #[error(transparent)]
    Sale(#[from] SaleError),
    #[error(transparent)]
    InvalidSale(#[from] SaleRuleError),
    #[error("sku is overloaded; retry shortly")]
    Overloaded,
    #[error("sku is unavailable: {0}")]
    Unavailable(String),
    /// Another node of the cluster owns the key (`cluster`).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
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
        match error {
            StoreError::NotOwner(not_owner) => SkuError::NotOwner(not_owner),
            other => SkuError::Unavailable(other.to_string()),
        }
    }
}

/// Units held for an order: what the SKU sells as (for the order's item snapshot) and the
/// effect to commit with the order.
#[derive(Debug, Clone)]
pub struct Grant {
    pub info: SkuInfo,
    /// The unit price at the moment of the reservation (the sale's, inside its window).
    pub unit_price_cents: Cents,
    /// The effect to commit with the order; `None` when another node of the cluster owns the
    /// SKU and committed the reservation already (`cluster::remote`).
    pub effect: Option<SkuEffect>,
}

/// A placement's grants split by where they were committed: the effects made here (to commit
/// with the order), and the SKUs whose owners on other nodes committed theirs already.
pub(crate) fn split_grants(grants: Vec<Grant>) -> (Vec<SkuEffect>, Vec<SkuId>) {
    let mut elsewhere = Vec::new();
    let effects = grants
        .into_iter()
        .filter_map(|grant| {
            if grant.effect.is_none() {
                elsewhere.push(grant.info.sku_id);
            }
            grant.effect
        })
        .collect();
    (effects, elsewhere)
}

/// Hold `quantity` units for `order_id`; the lease row records `expires_at_ms` (the order's
/// deadline plus grace) for readers and reconciliation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reserve {
    pub order_id: OrderId,
    pub quantity: Quantity,
    pub expires_at_ms: i64,
    pub reply: Reply<Grant, SkuError>,
}

/// Takes back an effect that was never submitted (a placement that failed on another line, a
/// change the pipeline refused to queue). Memory only: nothing was written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon {
    pub effect: SkuEffect,
}

/// The stock side of an order step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The order was paid: its reserved units are sold.
    Confirm,
    /// The order closed: its reserved units go back on the shelf.
    Release,
    /// A refund before delivery: the `quantity` units sold to the order go back on the shelf.
    Return { quantity: i64 },
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub order_id: OrderId,
    pub settlement: Settlement,
    pub reply: Reply<SkuEffect, SkuError>,
}

/// Changes the SKU's sale; answers with the committed state once it is written. The actor
/// serves nothing else meanwhile, so no reservation is granted under a sale that has been
/// replaced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateSale {
    pub patch: SalePatch,
    pub reply: Reply<SkuSnapshot, SkuError>,
}

/// Adds units; answers with the effect to commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restock {
    pub quantity: Quantity,
    pub reply: Reply<SkuEffect, SkuError>,
}

/// The last committed state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GetSnapshot {
    pub reply: Reply<SkuSnapshot, SkuError>,
}

/// What a batch of the write pipeline did with this SKU's effects of one epoch.
#[derive(Message, Debug, Default)]
#[rtype(result = "()")]
pub struct Committed {
    pub epoch: i64,
    /// The SKU's version after the batch, when an effect of it was written.
    pub version: Option<i64>,
    /// The sum of the committed effects.
    pub delta: CounterDelta,
    /// How many effects the batch settled (committed or refused).
    pub settled: usize,
    pub refused: Vec<(SkuEffect, Conflict)>,
    /// The batch failed as a whole: nothing of it is known to be written.
    pub failed: bool,
}

pub struct InventoryActor {
    info: SkuInfo,
    ledger: Ledger,
    epoch: i64,
    /// What the database holds, as far as this actor knows: the sum of committed effects.
    committed: SkuSnapshot,
    /// Effects handed out and not yet settled by a notice or an `Unreserve`.
    outstanding: usize,
    failed: bool,
    last_active: Instant,
    core: Arc<Core>,
}

impl InventoryActor {
    fn limits(&self) -> ActorLimits {
        self.core.limits
    }

    fn effect(&self, delta: CounterDelta, lease: Option<LeaseWrite>) -> SkuEffect {
        SkuEffect { sku_id: self.info.sku_id, epoch: Some(self.epoch), delta, lease }
    }

    /// Runs a ledger operation and returns the effect it made, or the ledger's refusal.
    fn change(
        &mut self,
        lease: Option<LeaseWrite>,
        operation: impl FnOnce(&mut Ledger) -> Result<(), InventoryError>,
    ) -> Result<SkuEffect, SkuError> {
        if self.failed {
            return Err(SkuError::Unavailable("sku actor is stopping".into()));
        }
        let before = self.ledger.counters();
        operation(&mut self.ledger)?;
        // From here on the effect is handed out and must be settled.
        let delta = CounterDelta::between(before, self.ledger.counters());
        assert!(!delta.is_zero(), "an accepted change moves stock");
        self.outstanding += 1;
        Ok(self.effect(delta, lease))
    }

    /// Undoes an effect that was not written. `false` if it cannot be undone from memory.
    fn undo(&mut self, effect: &SkuEffect) -> bool {
        use ReservationStatus::*;
        let undone = match &effect.lease {
            Some(LeaseWrite { order_id, from: None, to: Reserved, .. }) => self.ledger.release(*order_id).map(drop),
            Some(LeaseWrite { order_id, quantity, expires_at_ms, from: Some(Reserved), to: Confirmed }) => {
                let lease = Reservation { quantity: *quantity, expires_at_ms: *expires_at_ms };
                self.ledger.unconfirm(*order_id, lease)
            }
            Some(LeaseWrite { order_id, quantity, expires_at_ms, from: Some(Reserved), to: Released }) => {
                Quantity::parse(*quantity, u32::MAX).and_then(|q| self.ledger.reserve(*order_id, q, *expires_at_ms))
            }
            Some(LeaseWrite { quantity, from: Some(Confirmed), to: Returned, .. }) => self.ledger.unreturn(*quantity),
            None => self.ledger.unrestock(effect.delta.total),
            Some(other) => Err(InventoryError::Corrupt(format!("no undo for {other:?}"))),
        };
        undone.is_ok()
    }

    /// Takes back a handed-out effect that will never be submitted (abandoned, or its caller
    /// went away before the answer).
    fn take_back(&mut self, effect: &SkuEffect, ctx: &mut Context<Self>) {
        self.outstanding = self.outstanding.checked_sub(1).expect("only handed-out effects are taken back");
        if !self.undo(effect) {
            self.fail("a taken-back effect could not be undone", ctx);
        }
    }

    /// Stops for good: memory may be ahead of the database.
    fn fail(&mut self, reason: &str, ctx: &mut Context<Self>) {
        tracing::warn!(sku_id = %self.info.sku_id, epoch = self.epoch, reason, "sku actor stops; the next request reloads it");
        self.failed = true;
        ctx.stop();
    }

    /// Stops the actor when it has had nothing to do for the idle timeout and nothing of it is
    /// on its way through the pipeline.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_active.elapsed() >= self.limits().idle_timeout;
        if idle && self.outstanding == 0 {
            tracing::debug!(sku_id = %self.info.sku_id, "passivating idle sku actor");
            ctx.stop();
        }
    }
}

super::traced::handles_traced!(InventoryActor);

impl Actor for InventoryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.snapshots.publish(self.committed.clone());
        schedule_idle_checks(ctx, self.limits().idle_timeout, Self::tick);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.skus.forget(self.info.sku_id, &ctx.address());
    }
}

impl Handler<Reserve> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Reserve, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let Reserve { order_id, quantity, expires_at_ms, reply } = msg;
        let lease = LeaseWrite {
            order_id,
            quantity: quantity.units(),
            expires_at_ms,
            from: None,
            to: ReservationStatus::Reserved,
        };
        let price = self.info.sale.price_at(self.info.price_cents, self.core.clock.now_ms());
        let result = price.map_err(SkuError::from).and_then(|unit_price_cents| {
            let effect = self.change(Some(lease), |ledger| ledger.reserve(order_id, quantity, expires_at_ms))?;
            Ok(Grant { info: self.info.clone(), unit_price_cents, effect: Some(effect) })
        });
        let (sku_id, units, granted) = (self.info.sku_id, quantity.units(), result.is_ok());
        tracing::debug!(%sku_id, %order_id, units, granted, "reservation asked");
        if let Err(Ok(Grant { effect: Some(unclaimed), .. })) = reply.send(result) {
            self.take_back(&unclaimed, ctx);
        }
    }
}

impl Handler<Abandon> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Abandon, ctx: &mut Self::Context) {
        if msg.effect.epoch != Some(self.epoch) || self.failed {
            return; // Made by an earlier activation, whose memory is gone.
        }
        self.take_back(&msg.effect, ctx);
    }
}

impl Handler<Settle> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let Settle { order_id, settlement, reply } = msg;
        let lease = self.ledger.reservation(order_id);
        let result = match (settlement, lease) {
            (Settlement::Return { quantity }, _) => {
                let write = LeaseWrite {
                    order_id,
                    quantity,
                    expires_at_ms: 0,
                    from: Some(ReservationStatus::Confirmed),
                    to: ReservationStatus::Returned,
                };
                self.change(Some(write), |ledger| ledger.return_sold(quantity))
            }
            (_, None) => Err(InventoryError::UnknownReservation(order_id).into()),
            (Settlement::Confirm, Some(lease)) => {
                let write = settled_lease(order_id, lease, ReservationStatus::Confirmed);
                self.change(Some(write), |ledger| ledger.confirm(order_id).map(drop))
            }
            (Settlement::Release, Some(lease)) => {
                let write = settled_lease(order_id, lease, ReservationStatus::Released);
                self.change(Some(write), |ledger| ledger.release(order_id).map(drop))
            }
        };
        if let Err(Ok(unclaimed)) = reply.send(result) {
            self.take_back(&unclaimed, ctx);
        }
    }
}

fn settled_lease(order_id: OrderId, lease: Reservation, to: ReservationStatus) -> LeaseWrite {
    LeaseWrite {
        order_id,
        quantity: lease.quantity,
        expires_at_ms: lease.expires_at_ms,
        from: Some(ReservationStatus::Reserved),
        to,
    }
}

impl Handler<Restock> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: Restock, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let result = self.change(None, |ledger| ledger.restock(msg.quantity));
        if let Err(Ok(unclaimed)) = msg.reply.send(result) {
            self.take_back(&unclaimed, ctx);
        }
    }
}

impl Handler<UpdateSale> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateSale, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let UpdateSale { patch, reply } = msg;
        let sale = match self.info.sale.patch(&patch) {
            Ok(sale) => sale,
            Err(error) => return drop(reply.send(Err(error.into()))),
        };
        if self.failed {
            return drop(reply.send(Err(SkuError::Unavailable("sku actor is stopping".into()))));
        }
        let write = SaleWrite { sku_id: self.info.sku_id, epoch: self.epoch, sale };
        let core = Arc::clone(&self.core);
        let submitted = async move { core.journal.submit(Change { sale: Some(write), ..Change::default() }).await };
        ctx.wait(submitted.in_current_span().into_actor(self).map(move |outcome, actor, ctx| {
            let answer = match outcome {
                Ok(Ok(())) => {
                    actor.set_sale(sale);
                    Ok(actor.committed.clone())
                }
                Ok(Err(conflict)) => {
                    actor.fail("fenced while changing the sale", ctx);
                    Err(SkuError::Unavailable(conflict.to_string()))
                }
                Err(error) => {
                    // Perhaps written: the next activation reads whichever sale is stored.
                    if !error.never_queued() {
                        actor.fail("a sale change's outcome is unknown", ctx);
                    }
                    Err(SkuError::Unavailable(error.to_string()))
                }
            };
            let _ = reply.send(answer);
        }));
    }
}

impl InventoryActor {
    /// Serves `sale` from now on (it is committed).
    fn set_sale(&mut self, sale: Sale) {
        self.info.sale = sale;
        self.committed.sale = sale;
        self.core.snapshots.publish(self.committed.clone());
    }
}

impl Handler<GetSnapshot> for InventoryActor {
    type Result = ();

    fn handle(&mut self, msg: GetSnapshot, _ctx: &mut Self::Context) {
        let _ = msg.reply.send(Ok(self.committed.clone()));
    }
}

impl Handler<Committed> for InventoryActor {
    type Result = ();

    fn handle(&mut self, notice: Committed, ctx: &mut Self::Context) {
        if notice.epoch != self.epoch || self.failed {
            return; // A notice for an earlier activation of this SKU.
        }
        if notice.failed {
            return self.fail("a batch with its effects failed", ctx);
        }
        self.outstanding = self.outstanding.checked_sub(notice.settled).expect("notices settle handed-out effects");
        if !notice.delta.is_zero() {
            let after = self.committed.counters.apply(notice.delta);
            self.committed.counters = after.expect("committed effects keep the stored counters balanced");
        }
        if let Some(version) = notice.version {
            assert!(version > self.committed.version, "versions only grow");
            self.committed.version = version;
            self.core.snapshots.publish(self.committed.clone());
        }
        for (effect, conflict) in &notice.refused {
            match conflict {
                Conflict::Fenced(sku_id) if *sku_id == self.info.sku_id => {
                    return self.fail("fenced: another activation owns the sku", ctx);
                }
                Conflict::LeaseMismatch(sku_id, _) if *sku_id == self.info.sku_id => {
                    return self.fail("a lease in the database is not as this actor holds it", ctx);
                }
                Conflict::NotOwner(range) if *range == crate::domain::slots::Key::sku(self.info.sku_id).range() => {
                    return self.fail("its range is no longer held by this node", ctx);
                }
                _ => {}
            }
            if !self.undo(effect) {
                return self.fail("a refused effect could not be undone", ctx);
            }
        }
    }
}

/// Starts an actor for a SKU state just activated from the store.
fn start(core: &Arc<Core>, state: SkuState) -> Result<Addr<InventoryActor>, SkuError> {
    let sku_id = state.info.sku_id;
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
        sale: state.info.sale,
    };
    let actor = InventoryActor {
        info: state.info,
        ledger,
        epoch: state.epoch,
        committed,
        outstanding: 0,
        failed: false,
        last_active: Instant::now(),
        core: Arc::clone(core),
    };
    let arbiter = core.arbiters.for_key(sku_id.get());
    Ok(super::start_on(&arbiter, core.limits.mailbox_capacity, actor))
}

/// The SKU side of `Core`: find or activate a SKU's actor and ask it.
impl Core {
    /// The live actor of a SKU, activated from the store (batched with the other activations
    /// of the moment) if need be. Ids known not to exist are refused from memory.
    pub(crate) async fn sku(self: &Arc<Self>, sku_id: SkuId) -> Result<ActorRef<InventoryActor>, SkuError> {
        if let Some(actor) = self.skus.get(sku_id) {
            return Ok(actor);
        }
        self.owns(crate::domain::slots::Key::sku(sku_id))?;
        if self.unknown_skus.contains(&sku_id) {
            return Err(SkuError::NotFound(sku_id));
        }
        self.skus
            .get_or_activate(sku_id, || async {
                let state = self.sku_loader.submit(sku_id).await.map_err(|e| SkuError::Unavailable(e.to_string()))?;
                match state {
                    Some(state) => start(self, state),
                    None => {
                        self.remember_unknown_sku(sku_id);
                        Err(SkuError::NotFound(sku_id))
                    }
                }
            })
            .await
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
        match self.skus.ask(actor.addr(), &build).await {
            Err(SkuError::Unavailable(reason)) if !actor.addr().connected() => {
                tracing::debug!(%sku_id, %reason, "sku actor stopped; activating again");
                let actor = self.sku(sku_id).await?;
                self.skus.ask(actor.addr(), build).await
            }
            other => other,
        }
    }

    /// Holds units of a SKU for an order: on the SKU's actor when this node owns the SKU (the
    /// grant's effect is committed with the order), else on its owner, which commits the
    /// reservation alone before it answers (the grant has no effect).
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at_ms: i64,
    ) -> Result<Grant, SkuError> {
        if let Some(elsewhere) = self.elsewhere(Key::sku(sku_id)) {
            let (owner, remote) = elsewhere?;
            return remote.reserve(&owner, sku_id, order_id, quantity, expires_at_ms).await;
        }
        self.ask_sku(sku_id, |reply| Reserve { order_id, quantity, expires_at_ms, reply }).await
    }

    /// Gives back the units of a placement that will not be written: effects made here are
    /// taken back in memory; reservations committed on other nodes are released there, best
    /// effort (what is not released is settled by the owner's repair pass once it expires).
    pub(crate) fn give_back(self: &Arc<Self>, order_id: OrderId, grants: Vec<Grant>) {
        let (effects, remote) = split_grants(grants);
        self.abandon(effects);
        self.release_elsewhere(order_id, remote);
    }

    /// Releases `order_id`'s reservations on SKUs of other nodes, in the background, best
    /// effort: the order was never written.
    pub(crate) fn release_elsewhere(self: &Arc<Self>, order_id: OrderId, sku_ids: Vec<SkuId>) {
        if sku_ids.is_empty() {
            return;
        }
        let core = Arc::clone(self);
        self.home.spawn(
            async move {
                for sku_id in sku_ids {
                    if let Err(error) = core.settle_elsewhere(sku_id, order_id, Settlement::Release).await {
                        tracing::warn!(%sku_id, %order_id, %error, "releasing a remote reservation failed; its owner's repair releases it");
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Settles the lease of `order_id` on a SKU another node owns (after the order's step was
    /// committed here). `Ok` when it is settled, or when the owner holds no open lease of the
    /// order any more (settled already, by a repair).
    pub(crate) async fn settle_elsewhere(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        settlement: Settlement,
    ) -> Result<(), SkuError> {
        let result = match self.elsewhere(Key::sku(sku_id)) {
            Some(Ok((owner, remote))) => remote.settle(&owner, sku_id, order_id, settlement).await,
            Some(Err(not_owner)) => Err(SkuError::NotOwner(not_owner)),
            // Owned here now (a range taken over): the actor settles it, alone.
            None => self.settle_alone(sku_id, order_id, settlement).await,
        };
        match result {
            Err(SkuError::Inventory(InventoryError::UnknownReservation(_))) => {
                tracing::debug!(%sku_id, %order_id, ?settlement, "no open lease left to settle");
                Ok(())
            }
            other => other,
        }
    }

    /// Whether another node of the cluster owns the SKU now (never on a single node).
    pub(crate) fn owned_elsewhere(&self, sku_id: SkuId) -> bool {
        self.elsewhere(Key::sku(sku_id)).is_some()
    }

    /// The owner's side of a remote reservation: the SKU's actor holds the units and the
    /// reservation is committed alone (fenced by the SKU's range) before the answer.
    pub async fn reserve_alone(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at_ms: i64,
    ) -> Result<Grant, SkuError> {
        let core = Arc::clone(self);
        // Spawned: a caller that goes away does not leave the effect handed out and unsubmitted.
        let task = self.home.spawn(
            async move {
                let grant = core.ask_sku(sku_id, |reply| Reserve { order_id, quantity, expires_at_ms, reply }).await?;
                let effect = grant.effect.clone().expect("this node's actor made the effect");
                core.commit_alone(effect).await?;
                Ok(Grant { effect: None, ..grant })
            }
            .in_current_span(),
        );
        task.await.map_err(|_| SkuError::Unavailable("reservation task failed".into()))?
    }

    /// The owner's side of a remote settlement (and the repair pass's): the SKU's actor
    /// settles the lease and the effect is committed alone before the answer.
    pub async fn settle_alone(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        settlement: Settlement,
    ) -> Result<(), SkuError> {
        let core = Arc::clone(self);
        let task = self.home.spawn(
            async move {
                let effect = core.ask_sku(sku_id, |reply| Settle { order_id, settlement, reply }).await?;
                core.commit_alone(effect).await
            }
            .in_current_span(),
        );
        task.await.map_err(|_| SkuError::Unavailable("settlement task failed".into()))?
    }

    /// Commits one SKU effect as a change of its own; an effect that never reached the
    /// pipeline is taken back.
    async fn commit_alone(self: &Arc<Self>, effect: SkuEffect) -> Result<(), SkuError> {
        let change = Change { skus: vec![effect.clone()], ..Change::default() };
        match self.journal.submit(change).await {
            Ok(Ok(())) => Ok(()),
            // The pipeline undid the refused effect in the actor.
            Ok(Err(Conflict::NotOwner(range))) => Err(SkuError::NotOwner(self.not_owner(range))),
            Ok(Err(conflict)) => Err(SkuError::Unavailable(conflict.to_string())),
            Err(error) => {
                if error.never_queued() {
                    self.abandon([effect]);
                }
                Err(match error {
                    crate::persistence::group_commit::SubmitError::Overloaded => SkuError::Overloaded,
                    other => SkuError::Unavailable(other.to_string()),
                })
            }
        }
    }

    /// Takes back effects that will not be submitted.
    pub(crate) fn abandon(&self, effects: impl IntoIterator<Item = SkuEffect>) {
        for effect in effects {
            match self.skus.get(effect.sku_id) {
                // Past the mailbox bound on purpose: refused, the units would stay held until
                // a reload. Bounded by the effects handed out.
                Some(actor) => actor.addr().do_send(Abandon { effect }),
                None => tracing::debug!(sku_id = %effect.sku_id, "sku actor gone; its reload dropped the effect"),
            }
        }
    }

    pub(crate) async fn settle(
        self: &Arc<Self>,
        sku_id: SkuId,
        order_id: OrderId,
        settlement: Settlement,
    ) -> Result<SkuEffect, SkuError> {
        self.ask_sku(sku_id, |reply| Settle { order_id, settlement, reply }).await
    }

    /// Adds units to a SKU and answers with its committed state once they are written.
    pub async fn restock(self: &Arc<Self>, sku_id: SkuId, quantity: Quantity) -> Result<SkuSnapshot, SkuError> {
        let core = Arc::clone(self);
        // Spawned: a client that goes away does not leave the effect handed out and unsubmitted.
        let written = self.home.spawn(
            async move {
                let effect = core.ask_sku(sku_id, |reply| Restock { quantity, reply }).await?;
                core.commit_alone(effect).await
            }
            .in_current_span(),
        );
        written.await.map_err(|_| SkuError::Unavailable("restock task failed".into()))??;
        // Asked after the commit: the actor has its notice by then (the pipeline sends notices
        // before it answers the batch's callers).
        self.ask_sku(sku_id, |reply| GetSnapshot { reply }).await
    }

    /// Changes a SKU's sale (see `UpdateSale`) and answers with its committed state.
    pub async fn update_sale(self: &Arc<Self>, sku_id: SkuId, patch: SalePatch) -> Result<SkuSnapshot, SkuError> {
        self.ask_sku(sku_id, |reply| UpdateSale { patch, reply }).await
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
