//! The user actor: one per user, the serializer of what belongs to one user: the user's recent
//! Idempotency-Keys and the placements in flight under them, the units bought of SKUs with a
//! per-user limit, and the coupon wallet (claims, and coupons locked to orders). Learning
//! progress joins it here.
//!
//! Limits and coupons are held in memory before anything is written: a placement holds its
//! limited units (`HoldUnits`, after the SKU actors granted the stock, so it knows the limits)
//! and its coupon (locked at once, before the saga starts), and a claim holds the user's next
//! coupon number of the template; one claim per template runs at a time, the others queue.
//! What a commit refuses is given back; what a commit may or may not have written marks the
//! actor stale, and a stale actor stops as soon as nothing is in flight, so the next request
//! reloads the truth. The commit checks the same limits against the database (the
//! `(user_id, sku_id)` purchase row, the coupon row, the unique `(user, template, seq)` key):
//! a stale actor can refuse too much, never allow too much.
//!
//! A placement with a key the actor knows is answered from memory: the same order again for a
//! retry of a placed key (`Placed::Replayed`), the leader's outcome for concurrent retries of a
//! key in flight, `KeyReused` for another body under the same key. A new key starts the
//! placement saga (`place_new`) without holding the actor: other requests of the user go on
//! while it runs. So a warm user's placement reads nothing from the database before its answer.
//!
//! The actor loads the user's newest `user_keys_max` keys when it activates (one query,
//! batched with the other users activating at the same moment), holds at most that many, and
//! all users together at most `user_keys_total_max`; an older key is still answered correctly,
//! by the database's unique key `(user_id, idempotency_key)`, the last line of defence.

use super::coupon::ClaimFailure;
use super::inventory::{Grant, SkuError};
use super::learning::{lessons_at_activation, pending_before_read, Lessons};
use super::registry::ActorRef;
use super::{schedule_idle_checks, Core, Refusal, Reply};
use crate::domain::coupon::{ClaimError, Coupon, CouponRules, CouponStatus, CouponStep, DiscountError};
use crate::domain::inventory::InventoryError;
use crate::domain::learning::Progress;
use crate::domain::order::{NewOrderHeader, Order, OrderError, PlaceOrder};
use crate::domain::sale::{check_allowance, SaleError};
use crate::domain::slots::RangeId;
use crate::domain::{Cents, CouponId, IdempotencyKey, OrderId, OrderLine, SkuId, TemplateId, UserId};
use crate::metrics::PlacementOutcome;
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{Change, Conflict, CouponMove, LessonGrant, PurchaseWrite, StoreError, UserState};
use actix::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("sku {0} does not exist")]
    SkuNotFound(SkuId),
    #[error("sku {sku_id}: only {available} units available, {requested} requested")]
    InsufficientStock { sku_id: SkuId, available: i64, requested: i64 },
    #[error("the sale of sku {0} has not started")]
    SaleNotStarted(SkuId),
    #[error("the sale of sku {0} has ended")]
    SaleEnded(SkuId),
    #[error("sku {sku_id} is limited to {limit} units per buyer")]
    PurchaseLimitReached { sku_id: SkuId, limit: i64 },
    #[error("the coupon is not available")]
    CouponUnavailable,
    #[error(transparent)]
    CouponMinSpendNotMet(#[from] DiscountError),
    #[error("the same Idempotency-Key was used for a different order")]
    KeyReused,
    #[error(transparent)]
    Invalid(#[from] OrderError),
    #[error("overloaded; retry shortly")]
    Overloaded,
    /// Definitely not placed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Perhaps placed: the commit's outcome is unknown. A retry with the same key finds out.
    #[error("unavailable, the outcome is unknown: {0}")]
    Uncertain(String),
    /// Another node of the cluster owns the key (`cluster`).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
}

impl PlaceError {
    /// When several lines fail, the one reported is the one the client can act on first.
    fn precedence(&self) -> u8 {
        match self {
            PlaceError::Invalid(_) => 0,
            PlaceError::SkuNotFound(_) => 1,
            PlaceError::SaleNotStarted(_) | PlaceError::SaleEnded(_) => 2,
            PlaceError::InsufficientStock { .. } => 3,
            PlaceError::PurchaseLimitReached { .. } => 4,
            PlaceError::CouponUnavailable | PlaceError::CouponMinSpendNotMet(_) => 5,
            PlaceError::KeyReused => 6,
            PlaceError::Overloaded => 7,
            PlaceError::Unavailable(_) => 8,
            PlaceError::Uncertain(_) => 9,
            PlaceError::NotOwner(_) => 10,
        }
    }

    fn from_sku(sku_id: SkuId, error: SkuError) -> Self {
        match error {
            SkuError::NotFound(sku_id) => PlaceError::SkuNotFound(sku_id),
            SkuError::Inventory(InventoryError::InsufficientStock { available, requested }) => {
                PlaceError::InsufficientStock { sku_id, available, requested }
            }
            SkuError::Inventory(other) => PlaceError::Unavailable(other.to_string()),
            SkuError::Sale(SaleError::NotStarted { .. }) => PlaceError::SaleNotStarted(sku_id),
            SkuError::Sale(SaleError::Ended { .. }) => PlaceError::SaleEnded(sku_id),
            SkuError::InvalidSale(other) => PlaceError::Unavailable(other.to_string()),
            SkuError::Overloaded => PlaceError::Overloaded,
            SkuError::Unavailable(reason) => PlaceError::Unavailable(reason),
            SkuError::NotOwner(not_owner) => PlaceError::NotOwner(not_owner),
        }
    }
}

impl From<Refusal> for PlaceError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => PlaceError::Overloaded,
            Refusal::Stopped => PlaceError::Unavailable("user actor stopped".into()),
            Refusal::NoAnswer => PlaceError::Uncertain("user actor stopped before answering".into()),
        }
    }
}

impl From<StoreError> for PlaceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotOwner(not_owner) => PlaceError::NotOwner(not_owner),
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

/// The outcome a placement is counted under: `created`, `replayed` or its answer's error code.
pub fn placement_outcome(result: &Result<Placed, PlaceError>) -> PlacementOutcome {
    match result {
        Ok(Placed::Created(_)) => PlacementOutcome::Created,
        Ok(Placed::Replayed(_)) => PlacementOutcome::Replayed,
        Err(PlaceError::SkuNotFound(_)) => PlacementOutcome::SkuNotFound,
        Err(PlaceError::InsufficientStock { .. }) => PlacementOutcome::InsufficientStock,
        Err(PlaceError::SaleNotStarted(_)) => PlacementOutcome::SaleNotStarted,
        Err(PlaceError::SaleEnded(_)) => PlacementOutcome::SaleEnded,
        Err(PlaceError::PurchaseLimitReached { .. }) => PlacementOutcome::PurchaseLimitReached,
        Err(PlaceError::CouponUnavailable) => PlacementOutcome::CouponUnavailable,
        Err(PlaceError::CouponMinSpendNotMet(_)) => PlacementOutcome::CouponMinSpendNotMet,
        Err(PlaceError::KeyReused) => PlacementOutcome::IdempotencyKeyReused,
        Err(PlaceError::Invalid(_)) => PlacementOutcome::Invalid,
        Err(PlaceError::Overloaded) => PlacementOutcome::Overloaded,
        // A key owned by another node is a 503 like any unavailability.
        Err(PlaceError::Unavailable(_) | PlaceError::NotOwner(_)) => PlacementOutcome::Unavailable,
        Err(PlaceError::Uncertain(_)) => PlacementOutcome::Uncertain,
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

/// Reads of a user's state one activation makes at most when steps of the user keep
/// committing while it reads; past them the actor starts and is told to read again.
pub const ACTIVATION_READS_MAX: usize = 3;

/// Retries of one key that wait for its placement in flight, and claims of one template that
/// wait for the claim in flight; past it they get 503.
pub const WAITERS_PER_KEY_MAX: usize = 64;

/// The most coupons one user actor reads from the store because a placement named one its
/// wallet does not hold (issued after the wallet was read: a claim on the template's node
/// whose answer was lost, or that landed after this actor activated); past it such a coupon
/// is refused from memory.
pub const COUPON_LOOKUPS_MAX: usize = 16;

/// Place an order under an Idempotency-Key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Place {
    pub key: IdempotencyKey,
    pub request: PlaceOrder,
    pub reply: Reply<Placed, PlaceError>,
}

/// Hold units of limited SKUs for a placement in flight: `(sku, units, limit)` per line. All or
/// nothing: if one line would pass its limit, none is held.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HoldUnits {
    pub lines: Vec<(SkuId, i64, i64)>,
    pub reply: Reply<(), PlaceError>,
}

/// Claim a coupon of a template.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Claim {
    pub template_id: TemplateId,
    pub reply: Reply<Coupon, ClaimFailure>,
}

/// An order step of this user committed: units back to the allowance, a coupon step, courses
/// opened or revoked.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct OrderSettled {
    pub returned: Vec<(SkuId, i64)>,
    pub coupon: Option<(CouponId, CouponStep)>,
    pub lessons: Option<LessonGrant>,
}

enum KeyState {
    /// A placement under this key is running; concurrent retries wait for its outcome.
    InFlight { request_hash: String, waiters: Vec<Reply<Placed, PlaceError>> },
    /// Committed. The order itself is kept when this actor placed it.
    Placed { order_id: OrderId, request_hash: String, order: Option<Arc<Order>> },
    /// The last attempt's outcome is unknown: the next one asks the database first.
    Uncertain,
}

/// How a placement saga ended, with what it held that its end must settle.
/// Who a placement is for: the user's actor and the range it was activated under.
pub(crate) struct Buyer {
    addr: Addr<UserActor>,
    user_id: UserId,
    held_ranges: Arc<[(RangeId, i64)]>,
}

pub(crate) struct PlaceOutcome {
    pub result: Result<Placed, PlaceError>,
    /// Units held by `HoldUnits`.
    pub held: Vec<(SkuId, i64)>,
}

pub struct UserActor {
    user_id: UserId,
    keys: HashMap<String, KeyState>,
    /// The keys of `keys`, oldest first, for eviction.
    recency: VecDeque<String>,
    /// Units held of each limited SKU: committed, plus held by placements in flight.
    purchases: HashMap<SkuId, i64>,
    /// The user's coupons as committed, or locked by a placement in flight.
    wallet: HashMap<CouponId, Coupon>,
    /// Coupons of a placement that were not in the wallet and were read from the store once
    /// (at most `COUPON_LOOKUPS_MAX` per activation).
    coupons_looked_up: HashSet<CouponId>,
    /// The user's coupon count per template (the highest `seq`), claims in flight included.
    claims: HashMap<TemplateId, i64>,
    /// Per template with a claim in flight: the claims waiting for it.
    claim_queue: HashMap<TemplateId, VecDeque<Reply<Coupon, ClaimFailure>>>,
    /// The user's courses and learning progress.
    pub(super) lessons: Lessons,
    /// An outcome was unknown: memory may be behind the database. Stops when nothing is in
    /// flight.
    stale: bool,
    /// The user's range as held at activation (`Change::held_ranges`).
    held_ranges: Arc<[(RangeId, i64)]>,
    last_active: Instant,
    core: Arc<Core>,
}

impl UserActor {
    fn new(
        core: Arc<Core>,
        user_id: UserId,
        state: UserState,
        pending_before: &[(SkuId, Progress)],
        held_ranges: Vec<(RangeId, i64)>,
    ) -> Self {
        let lessons = lessons_at_activation(&core, user_id, &state, pending_before);
        let mut actor = UserActor {
            lessons,
            user_id,
            keys: HashMap::new(),
            recency: VecDeque::new(),
            purchases: state.purchases.into_iter().collect(),
            wallet: state.coupons.into_iter().map(|coupon| (coupon.id, coupon)).collect(),
            coupons_looked_up: HashSet::new(),
            claims: state.claims.into_iter().collect(),
            claim_queue: HashMap::new(),
            stale: false,
            held_ranges: held_ranges.into(),
            last_active: Instant::now(),
            core,
        };
        // Newest first from the store: remember oldest first.
        for key in state.recent.into_iter().rev() {
            let state = KeyState::Placed { order_id: key.order_id, request_hash: key.request_hash, order: None };
            actor.remember(key.idempotency_key, state);
        }
        actor
    }

    pub(super) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(super) fn user_id(&self) -> UserId {
        self.user_id
    }

    /// Something happened: the idle timeout starts again.
    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// Records `state` under `key`, then evicts the oldest settled keys past the bounds.
    fn remember(&mut self, key: String, state: KeyState) {
        if self.keys.insert(key.clone(), state).is_none() {
            self.core.user_keys_held.fetch_add(1, Ordering::Relaxed);
            self.recency.push_back(key);
        }
        let limits = self.core.limits;
        while self.keys.len() > limits.user_keys_max
            || (self.core.user_keys_held.load(Ordering::Relaxed) > limits.user_keys_total_max && self.keys.len() > 1)
        {
            // The oldest settled key goes; keys in flight stay (bounded by the mailbox).
            let settled = self.recency.iter().find(|k| !matches!(self.keys.get(*k), Some(KeyState::InFlight { .. })));
            let Some(oldest) = settled.cloned() else { break };
            self.forget(&oldest);
        }
        debug_assert_eq!(self.keys.len(), self.recency.len());
    }

    /// Drops a key from memory (the database still has its order, if any).
    fn forget(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.core.user_keys_held.fetch_sub(1, Ordering::Relaxed);
            self.recency.retain(|held| held != key);
        }
    }

    /// Starts the placement saga for a key with no known outcome. The coupon, if any, is
    /// locked in memory first: two placements with one coupon never both run.
    fn begin(
        &mut self,
        key: IdempotencyKey,
        request: PlaceOrder,
        look_up_first: bool,
        reply: Reply<Placed, PlaceError>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(coupon_id) = request.coupon_id.filter(|id| self.should_look_up(*id)) {
            return self.look_up_coupon(coupon_id, Place { key, request, reply }, ctx);
        }
        let order_id = OrderId::new(self.core.next_id());
        tracing::debug!(user_id = %self.user_id, %order_id, look_up_first, "placement starts");
        let coupon = match request.coupon_id {
            None => None,
            Some(coupon_id) => match self.lock_coupon(coupon_id, order_id) {
                Some(coupon) => Some(coupon),
                None => return drop(reply.send(Err(PlaceError::CouponUnavailable))),
            },
        };
        let request_hash = request.fingerprint();
        let in_flight = KeyState::InFlight { request_hash: request_hash.clone(), waiters: Vec::new() };
        self.remember(key.as_str().to_owned(), in_flight);
        let core = Arc::clone(&self.core);
        let (user_id, me) = (self.user_id, ctx.address());
        let held_ranges = Arc::clone(&self.held_ranges);
        let saga_key = key.clone();
        let saga = async move {
            if look_up_first {
                let key = saga_key.as_str().to_owned();
                let found =
                    core.bounded(move |store| async move { store.find_order_by_key(user_id, &key).await }).await;
                let result = match found {
                    Ok(Some(existing)) => Some(replay(existing, &request_hash)),
                    Ok(None) => None,
                    Err(error) => Some(Err(PlaceError::Uncertain(error.to_string()))),
                };
                if let Some(result) = result {
                    return PlaceOutcome { result, held: Vec::new() };
                }
            }
            let buyer = Buyer { addr: me, user_id, held_ranges };
            core.place_new(buyer, order_id, saga_key, request, coupon).await
        };
        ctx.spawn(saga.in_current_span().into_actor(self).map(move |outcome, actor, ctx| {
            actor.settle_holds(&outcome, order_id, coupon.map(|c| c.id));
            actor.finish(key, outcome.result, reply);
            actor.stop_if_stale(ctx);
        }));
    }

    /// Whether a placement's coupon is to be read from the store first: not in the wallet,
    /// not read before, and lookups left.
    fn should_look_up(&self, coupon_id: CouponId) -> bool {
        !self.wallet.contains_key(&coupon_id)
            && !self.coupons_looked_up.contains(&coupon_id)
            && self.coupons_looked_up.len() < COUPON_LOOKUPS_MAX
    }

    /// Reads a coupon the wallet does not hold; an open one of this user's joins the wallet.
    /// Then `place` is handled again (its key may have moved on meanwhile).
    fn look_up_coupon(&mut self, coupon_id: CouponId, place: Place, ctx: &mut Context<Self>) {
        self.coupons_looked_up.insert(coupon_id);
        let core = Arc::clone(&self.core);
        let read = async move { core.bounded(move |store| async move { store.find_coupon(coupon_id).await }).await };
        ctx.spawn(read.in_current_span().into_actor(self).map(move |found, actor, ctx| match found {
            Ok(found) => {
                let open = |c: &Coupon| matches!(c.status, CouponStatus::Unused | CouponStatus::Locked);
                if let Some(coupon) = found.filter(|c| c.user_id == actor.user_id && open(c)) {
                    tracing::info!(user_id = %actor.user_id, %coupon_id, "a coupon issued after the wallet was read joins it");
                    actor.wallet.entry(coupon_id).or_insert(coupon);
                }
                actor.handle(place, ctx);
            }
            Err(error) => {
                actor.coupons_looked_up.remove(&coupon_id);
                let _ = place.reply.send(Err(error.into()));
            }
        }));
    }

    /// Locks a coupon of the wallet to `order_id` in memory; `None` when it is not the user's
    /// or cannot be locked (used, locked, expired).
    fn lock_coupon(&mut self, coupon_id: CouponId, order_id: OrderId) -> Option<Coupon> {
        let held = self.wallet.get(&coupon_id)?;
        let locked = held.apply(CouponStep::Lock(order_id), self.user_id, self.core.clock.now_ms()).ok()??;
        self.wallet.insert(coupon_id, locked);
        Some(locked)
    }

    /// Settles what a placement held: kept when its order committed, kept (and the actor
    /// marked stale) when that is unknown, given back otherwise.
    fn settle_holds(&mut self, outcome: &PlaceOutcome, order_id: OrderId, coupon_id: Option<CouponId>) {
        let placed_here = matches!(&outcome.result, Ok(Placed::Created(order)) if order.id == order_id);
        if placed_here {
            return;
        }
        if matches!(outcome.result, Err(PlaceError::Uncertain(_))) {
            self.stale = true;
            return;
        }
        for (sku_id, units) in &outcome.held {
            self.give_back_units(*sku_id, *units);
        }
        let Some(coupon_id) = coupon_id else { return };
        if matches!(outcome.result, Err(PlaceError::CouponUnavailable)) {
            // The database refused the lock: this wallet's view of the coupon is wrong.
            self.wallet.remove(&coupon_id);
            return;
        }
        if let Some(coupon) = self.wallet.get(&coupon_id) {
            let released = coupon.apply(CouponStep::Release(order_id), self.user_id, self.core.clock.now_ms());
            match released {
                Ok(Some(released)) => drop(self.wallet.insert(coupon_id, released)),
                _ => unreachable!("only this placement locked the coupon to its order"),
            }
        }
    }

    fn give_back_units(&mut self, sku_id: SkuId, units: i64) {
        let held = self.purchases.entry(sku_id).or_insert(0);
        // Memory may be behind the database (stale): never below zero.
        *held = (*held - units).max(0);
    }

    /// Records a placement's outcome and answers its leader and everyone who waited on it.
    fn finish(&mut self, key: IdempotencyKey, result: Result<Placed, PlaceError>, reply: Reply<Placed, PlaceError>) {
        self.last_active = Instant::now();
        let settled = match &result {
            Ok(placed) => {
                let order = placed.order();
                Some(KeyState::Placed {
                    order_id: order.id,
                    request_hash: order.request_hash.clone(),
                    order: Some(Arc::new(order.clone())),
                })
            }
            Err(PlaceError::Uncertain(_)) => Some(KeyState::Uncertain),
            // Definitely not placed: a retry under the key starts afresh.
            Err(_) => None,
        };
        let slot = self.keys.get_mut(key.as_str()).expect("a key in flight is never evicted");
        let waiters = match settled {
            Some(state) => std::mem::replace(slot, state),
            None => {
                let state = std::mem::replace(slot, KeyState::Uncertain);
                self.forget(key.as_str());
                state
            }
        };
        let KeyState::InFlight { waiters, .. } = waiters else { unreachable!("only this placement settles its key") };
        for waiter in waiters {
            let _ = waiter.send(result.clone().map(|placed| Placed::Replayed(placed.order().clone())));
        }
        let _ = reply.send(result);
    }

    /// Starts a claim on `template_id` as the user's next coupon of it.
    fn start_claim(&mut self, template_id: TemplateId, reply: Reply<Coupon, ClaimFailure>, ctx: &mut Context<Self>) {
        let seq = self.claims.get(&template_id).copied().unwrap_or(0) + 1;
        self.claim_queue.entry(template_id).or_default();
        let core = Arc::clone(&self.core);
        let user_id = self.user_id;
        let held_ranges = Arc::clone(&self.held_ranges);
        let claim = async move { core.claim(user_id, &held_ranges, template_id, seq).await };
        ctx.spawn(claim.in_current_span().into_actor(self).map(move |result, actor, ctx| {
            actor.last_active = Instant::now();
            match &result {
                Ok(coupon) => {
                    actor.claims.insert(template_id, seq);
                    actor.wallet.insert(coupon.id, *coupon);
                }
                // The database disagrees with this actor's count, or may have written it.
                Err(ClaimFailure::Refused(ClaimError::LimitReached))
                | Err(ClaimFailure::Behind)
                | Err(ClaimFailure::Uncertain(_)) => {
                    actor.stale = true;
                }
                Err(_) => {}
            }
            let _ = reply.send(result);
            let next = actor.claim_queue.get_mut(&template_id).and_then(VecDeque::pop_front);
            match next {
                Some(waiter) => actor.start_claim(template_id, waiter, ctx),
                None => drop(actor.claim_queue.remove(&template_id)),
            }
            actor.stop_if_stale(ctx);
        }));
    }

    /// A stale actor stops as soon as nothing is in flight, so the next request of the user
    /// activates one that reads the truth, instead of serving from memory that may be behind.
    fn stop_if_stale(&mut self, ctx: &mut Context<Self>) {
        if self.stale && !self.busy() {
            ctx.stop();
        }
    }

    fn busy(&self) -> bool {
        !self.claim_queue.is_empty() || self.keys.values().any(|state| matches!(state, KeyState::InFlight { .. }))
    }

    /// Stops the actor when it has had nothing to do for the idle timeout, or is stale, and
    /// nothing is in flight.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_active.elapsed() >= self.core.limits.idle_timeout;
        if (idle || self.stale) && !self.busy() {
            ctx.stop();
        }
    }
}

super::traced::handles_traced!(UserActor);

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        schedule_idle_checks(ctx, self.core.limits.idle_timeout, Self::tick);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.user_keys_held.fetch_sub(self.keys.len(), Ordering::Relaxed);
        self.keys.clear();
        self.core.users.forget(self.user_id, &ctx.address());
    }
}

impl Handler<Place> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Place, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let Place { key, request, reply } = msg;
        let request_hash = request.fingerprint();
        match self.keys.get_mut(key.as_str()) {
            Some(KeyState::Placed { request_hash: placed_hash, .. }) if *placed_hash != request_hash => {
                let _ = reply.send(Err(PlaceError::KeyReused));
            }
            Some(KeyState::Placed { order: Some(order), .. }) => {
                let _ = reply.send(Ok(Placed::Replayed(order.as_ref().clone())));
            }
            Some(KeyState::Placed { order_id, order: None, .. }) => {
                // Placed before this activation: the order is read once, then kept.
                let (core, order_id) = (Arc::clone(&self.core), *order_id);
                let read =
                    async move { core.bounded(move |store| async move { store.find_order(order_id).await }).await };
                ctx.spawn(read.in_current_span().into_actor(self).map(move |found, actor, _ctx| {
                    let answer = match found {
                        Ok(Some(order)) => {
                            if let Some(KeyState::Placed { order: kept, .. }) = actor.keys.get_mut(key.as_str()) {
                                *kept = Some(Arc::new(order.clone()));
                            }
                            Ok(Placed::Replayed(order))
                        }
                        Ok(None) => Err(PlaceError::Unavailable(format!("order {order_id} under this key vanished"))),
                        Err(error) => Err(error.into()),
                    };
                    let _ = reply.send(answer);
                }));
            }
            Some(KeyState::InFlight { request_hash: running, waiters }) => {
                if *running != request_hash {
                    let _ = reply.send(Err(PlaceError::KeyReused));
                } else if waiters.len() >= WAITERS_PER_KEY_MAX {
                    let _ = reply.send(Err(PlaceError::Overloaded));
                } else {
                    waiters.push(reply);
                }
            }
            Some(KeyState::Uncertain) => self.begin(key, request, true, reply, ctx),
            None => self.begin(key, request, false, reply, ctx),
        }
    }
}

impl Handler<HoldUnits> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: HoldUnits, _ctx: &mut Self::Context) {
        let HoldUnits { lines, reply } = msg;
        for &(sku_id, units, limit) in &lines {
            let bought = self.purchases.get(&sku_id).copied().unwrap_or(0);
            if check_allowance(Some(limit), bought, units).is_err() {
                return drop(reply.send(Err(PlaceError::PurchaseLimitReached { sku_id, limit })));
            }
        }
        // From here on every line is held.
        for &(sku_id, units, _) in &lines {
            *self.purchases.entry(sku_id).or_insert(0) += units;
        }
        if let Err(Ok(())) = reply.send(Ok(())) {
            // The saga went away before the answer: nothing will settle these units.
            for (sku_id, units, _) in lines {
                self.give_back_units(sku_id, units);
            }
        }
    }
}

impl Handler<Claim> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Claim, ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let Claim { template_id, reply } = msg;
        match self.claim_queue.get_mut(&template_id) {
            Some(waiting) if waiting.len() >= WAITERS_PER_KEY_MAX => drop(reply.send(Err(ClaimFailure::Overloaded))),
            Some(waiting) => waiting.push_back(reply),
            None => self.start_claim(template_id, reply, ctx),
        }
    }
}

impl Handler<OrderSettled> for UserActor {
    type Result = ();

    fn handle(&mut self, notice: OrderSettled, ctx: &mut Self::Context) {
        for (sku_id, units) in notice.returned {
            self.give_back_units(sku_id, units);
        }
        if let Some(grant) = &notice.lessons {
            self.lessons.grant(&grant.course_ids, grant.step, self.core.clock.now_ms());
        }
        let Some((coupon_id, step)) = notice.coupon else { return };
        let stepped = self.wallet.get(&coupon_id).map(|c| c.apply(step, self.user_id, self.core.clock.now_ms()));
        match stepped {
            Some(Ok(Some(after))) => drop(self.wallet.insert(coupon_id, after)),
            Some(Ok(None)) => {}
            // Not held as the database has it (loaded before the step, or a used coupon
            // this activation never held): read the wallet again.
            Some(Err(_)) | None => self.stale = true,
        }
        self.stop_if_stale(ctx);
    }
}

/// A committed step of the user's reached the node while the user's actor was reading its
/// state: the actor may have read the database before that commit, so it reads again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

impl Handler<Reload> for UserActor {
    type Result = ();

    fn handle(&mut self, _reload: Reload, ctx: &mut Self::Context) {
        self.stale = true;
        self.stop_if_stale(ctx);
    }
}

/// The user side of `Core`.
impl Core {
    /// The live actor of a user, activated from the store (batched with the other activations
    /// of the moment) if need be.
    ///
    /// A notice of a committed order step (`order_settled`) that finds the user's actor still
    /// activating cannot reach it, and the state it read may predate the commit: the user is
    /// then remembered in `users_behind`. The activation reads again when that happened while
    /// it read; if it happened after the read, before the actor was registered, the actor is
    /// told to read again (`Reload`: it stops as soon as nothing is in flight and the next
    /// request activates a new one).
    pub(crate) async fn user(self: &Arc<Self>, user_id: UserId) -> Result<ActorRef<UserActor>, StoreError> {
        let load =
            || async { self.user_loader.submit(user_id).await.map_err(|e| StoreError::Unavailable(e.to_string())) };
        self.owns(crate::domain::slots::Key::user(user_id))?;
        let user = self
            .users
            .get_or_activate(user_id, || async {
                // Before the read: a range lost and taken back meanwhile fences this actor out.
                let held_ranges = self.activation_ranges(crate::domain::slots::Key::user(user_id))?;
                let pending = pending_before_read(self, user_id);
                let mut state = load().await?;
                for _ in 0..ACTIVATION_READS_MAX {
                    if self.users_behind.remove(&user_id).is_none() {
                        break;
                    }
                    state = load().await?;
                }
                let actor = UserActor::new(Arc::clone(self), user_id, state, &pending, held_ranges);
                let arbiter = self.arbiters.for_key(user_id.get());
                Ok::<_, StoreError>(super::start_on(&arbiter, self.limits.mailbox_capacity, actor))
            })
            .await?;
        if !self.users_behind.is_empty() && self.users_behind.remove(&user_id).is_some() {
            // A notice past the mailbox bound on purpose, like `OrderSettled`.
            user.addr().do_send(Reload);
        }
        Ok(user)
    }

    /// Places an order for `user_id` under `key`, at most once per key (see the module doc).
    pub async fn place_order(
        self: &Arc<Self>,
        user_id: UserId,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, PlaceError> {
        let user = match self.user(user_id).await {
            Ok(user) => user,
            Err(error) => {
                let result = Err(PlaceError::from(error));
                self.placements.record(placement_outcome(&result));
                return result;
            }
        };
        let result = self.users.ask(user.addr(), |reply| Place { key, request, reply }).await;
        self.placements.record(placement_outcome(&result));
        result
    }

    /// Claims a coupon of `template_id` for `user_id` (see the module doc).
    pub async fn receive_coupon(
        self: &Arc<Self>,
        user_id: UserId,
        template_id: TemplateId,
    ) -> Result<Coupon, ClaimFailure> {
        let user = self.user(user_id).await?;
        self.users.ask(user.addr(), |reply| Claim { template_id, reply }).await
    }

    /// Tells a user's live actor what a committed order step gave back. (An actor that is not
    /// live reads it from the database when it activates.)
    pub(crate) fn order_settled(
        &self,
        user_id: UserId,
        purchases: &[PurchaseWrite],
        coupon: Option<CouponMove>,
        lessons: Option<LessonGrant>,
    ) {
        if purchases.is_empty() && coupon.is_none() && lessons.is_none() {
            return;
        }
        if self.users.is_activating(user_id) {
            self.users_behind.insert(user_id);
        }
        if let Some(user) = self.users.get(user_id) {
            let returned = purchases.iter().map(|p| (p.sku_id, -p.units)).collect();
            // A notice: past the mailbox bound on purpose; refused, the actor would stay
            // behind until it passivates.
            user.addr().do_send(OrderSettled { returned, coupon: coupon.map(|m| (m.coupon_id, m.step)), lessons });
        }
    }

    /// The placement saga: reserve every line on its SKU actor in parallel (and read the
    /// coupon's rules meanwhile); if a line fails, take back what was granted; hold the units
    /// of limited SKUs on the user's actor; price the order with its discount; submit the
    /// order, its reservations, its units and its coupon lock as one change and answer once it
    /// is committed.
    async fn place_new(
        self: &Arc<Self>,
        buyer: Buyer,
        order_id: OrderId,
        key: IdempotencyKey,
        request: PlaceOrder,
        coupon: Option<Coupon>,
    ) -> PlaceOutcome {
        let mut held = Vec::new();
        let result = self.place_held(&buyer, order_id, key, request, coupon, &mut held).await;
        PlaceOutcome { result, held }
    }

    async fn place_held(
        self: &Arc<Self>,
        buyer: &Buyer,
        order_id: OrderId,
        key: IdempotencyKey,
        request: PlaceOrder,
        coupon: Option<Coupon>,
        held: &mut Vec<(SkuId, i64)>,
    ) -> Result<Placed, PlaceError> {
        let now_ms = self.clock.now_ms();
        let header = NewOrderHeader {
            id: order_id,
            user_id: buyer.user_id,
            idempotency_key: key,
            request_hash: request.fingerprint(),
            created_at_ms: now_ms,
            pay_deadline_ms: now_ms + self.pay_timeout.as_millis() as i64,
            coupon_id: coupon.map(|c| c.id),
        };
        let expires_at_ms = header.pay_deadline_ms + self.limits.reservation_grace.as_millis() as i64;
        let reservations = futures::future::join_all(
            request.lines.iter().map(|&(sku_id, quantity)| self.reserve(sku_id, order_id, quantity, expires_at_ms)),
        );
        let rules = self.coupon_rules(coupon);
        let (reservations, rules) = futures::future::join(reservations, rules).await;
        let mut grants: Vec<Grant> = Vec::with_capacity(request.lines.len());
        let mut failure: Option<PlaceError> = rules.as_ref().err().cloned();
        // Remote reservations whose outcome is unknown (the call failed or timed out): the
        // owner may have committed them; released with the rest if the placement fails.
        let mut unknown_elsewhere = Vec::new();
        for (&(sku_id, _), result) in request.lines.iter().zip(reservations) {
            match result {
                Ok(grant) => grants.push(grant),
                Err(error) => {
                    if matches!(error, SkuError::Unavailable(_)) && self.owned_elsewhere(sku_id) {
                        unknown_elsewhere.push(sku_id);
                    }
                    let error = PlaceError::from_sku(sku_id, error);
                    if failure.as_ref().is_none_or(|f| error.precedence() < f.precedence()) {
                        failure = Some(error);
                    }
                }
            }
        }
        if let Some(error) = failure {
            self.give_back(order_id, grants);
            self.release_elsewhere(order_id, unknown_elsewhere);
            return Err(error);
        }
        let limited: Vec<(SkuId, i64, i64)> = request
            .lines
            .iter()
            .zip(&grants)
            .filter_map(|(&(sku_id, quantity), grant)| {
                grant.info.sale.per_user_limit.map(|limit| (sku_id, quantity.units(), limit))
            })
            .collect();
        if !limited.is_empty() {
            if let Err(error) = self.users.ask(&buyer.addr, |reply| HoldUnits { lines: limited.clone(), reply }).await {
                self.give_back(order_id, grants);
                return Err(error);
            }
            held.extend(limited.iter().map(|&(sku_id, units, _)| (sku_id, units)));
        }
        let rules = rules.ok().flatten();
        self.price_and_submit(header, &request, grants, &limited, coupon, rules, &buyer.held_ranges).await
    }

    /// The rules of a coupon's template (templates never change once created).
    async fn coupon_rules(self: &Arc<Self>, coupon: Option<Coupon>) -> Result<Option<CouponRules>, PlaceError> {
        let Some(coupon) = coupon else { return Ok(None) };
        match self.template_rules(coupon.template_id).await {
            Ok(rules) => Ok(Some(rules)),
            Err(ClaimFailure::NotFound(_)) => Err(PlaceError::CouponUnavailable),
            Err(ClaimFailure::Overloaded) => Err(PlaceError::Overloaded),
            Err(ClaimFailure::NotOwner(not_owner)) => Err(PlaceError::NotOwner(not_owner)),
            Err(other) => Err(PlaceError::Unavailable(other.to_string())),
        }
    }

    /// Prices the order from its grants and the coupon, submits it as one change (fenced by the
    /// buyer's `held_ranges`), and answers.
    #[allow(clippy::too_many_arguments)]
    async fn price_and_submit(
        self: &Arc<Self>,
        header: NewOrderHeader,
        request: &PlaceOrder,
        grants: Vec<Grant>,
        limited: &[(SkuId, i64, i64)],
        coupon: Option<Coupon>,
        rules: Option<CouponRules>,
        held_ranges: &[(RangeId, i64)],
    ) -> Result<Placed, PlaceError> {
        let lines: Vec<OrderLine> = request
            .lines
            .iter()
            .zip(&grants)
            .map(|(&(sku_id, quantity), grant)| OrderLine {
                sku_id,
                name: grant.info.name.clone(),
                price_cents: grant.unit_price_cents,
                quantity,
                limited: grant.info.sale.per_user_limit.is_some(),
            })
            .collect();
        let discount = match rules.map(|rules| total_of(&lines).and_then(|total| Ok(rules.discount(total)?))) {
            None => Ok(Cents::ZERO),
            Some(discount) => discount,
        };
        let order_id = header.id;
        let order = match discount.and_then(|discount| Ok(Order::price(header, lines, discount)?)) {
            Ok(order) => order,
            Err(error) => {
                self.give_back(order_id, grants);
                return Err(error);
            }
        };
        // Lines of SKUs other nodes own were committed there; the rest commit with the order.
        let (effects, elsewhere) = super::inventory::split_grants(grants);
        let purchases = limited
            .iter()
            .map(|&(sku_id, units, limit)| PurchaseWrite { user_id: order.user_id, sku_id, units, limit: Some(limit) })
            .collect();
        let coupon =
            coupon.map(|c| CouponMove { coupon_id: c.id, user_id: order.user_id, step: CouponStep::Lock(order.id) });
        let change = Change {
            order: Some(order.clone()),
            skus: effects.clone(),
            purchases,
            coupon,
            held_ranges: held_ranges.to_vec(),
            ..Change::default()
        };
        let outcome = self.journal.submit(change).await;
        // Refused or never queued, the order is not written: its remote reservations go back.
        // (An unknown outcome leaves them to the order: written, it settles them; not written,
        // they expire into their owner's repair.)
        let not_written = match &outcome {
            Ok(result) => result.is_err(),
            Err(error) => error.never_queued(),
        };
        if not_written {
            self.release_elsewhere(order.id, elsewhere);
        }
        match outcome {
            Ok(Ok(())) => {
                self.timer.schedule(order.id, order.pay_deadline_ms).await;
                Ok(Placed::Created(order))
            }
            Ok(Err(Conflict::DuplicateKey)) => {
                // An order under this key is older than the keys this actor holds: answer
                // with it. (The pipeline has undone this placement's reservations.)
                let (user_id, key) = (order.user_id, order.idempotency_key.clone());
                let existing =
                    self.bounded(move |store| async move { store.find_order_by_key(user_id, &key).await }).await?;
                let existing =
                    existing.ok_or_else(|| PlaceError::Unavailable("order under this key vanished".into()))?;
                replay(existing, &order.request_hash)
            }
            Ok(Err(Conflict::PurchaseLimit(sku_id))) => {
                let limit = limited.iter().find(|l| l.0 == sku_id).map_or(0, |l| l.2);
                Err(PlaceError::PurchaseLimitReached { sku_id, limit })
            }
            Ok(Err(Conflict::CouponMismatch(_))) => Err(PlaceError::CouponUnavailable),
            Ok(Err(Conflict::NotOwner(range))) => Err(PlaceError::NotOwner(self.not_owner(range))),
            Ok(Err(conflict)) => Err(PlaceError::Unavailable(conflict.to_string())),
            Err(SubmitError::Overloaded) => {
                self.abandon(effects);
                Err(PlaceError::Overloaded)
            }
            Err(error) if error.never_queued() => {
                self.abandon(effects);
                Err(PlaceError::Unavailable(error.to_string()))
            }
            Err(error) => {
                tracing::warn!(order_id = %order.id, %error, "order commit failed; its outcome is unknown");
                Err(PlaceError::Uncertain(error.to_string()))
            }
        }
    }
}

/// The undiscounted total of priced lines.
fn total_of(lines: &[OrderLine]) -> Result<Cents, PlaceError> {
    let mut total = Cents::ZERO;
    for line in lines {
        let amount = line.price_cents.checked_mul(line.quantity.units()).map_err(OrderError::from)?;
        total = total.checked_add(amount).map_err(OrderError::from)?;
    }
    Ok(total)
}
