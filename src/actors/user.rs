//! The user actor: one per user, the serializer of what belongs to one user. Today that is the
//! user's recent Idempotency-Keys and the placements in flight under them; per-user purchase
//! limits, the coupon wallet and learning progress join it here.
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

use super::inventory::{Grant, SkuError};
use super::{ask, Core, Refusal, Reply};
use crate::domain::inventory::InventoryError;
use crate::domain::order::{NewOrderHeader, Order, OrderError, PlaceOrder};
use crate::domain::{Cents, IdempotencyKey, OrderId, OrderLine, SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{Change, Conflict, RecentKey, StoreError};
use actix::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
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
    /// Definitely not placed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Perhaps placed: the commit's outcome is unknown. A retry with the same key finds out.
    #[error("unavailable, the outcome is unknown: {0}")]
    Uncertain(String),
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
            PlaceError::Uncertain(_) => 6,
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
            Refusal::Stopped => PlaceError::Unavailable("user actor stopped".into()),
            Refusal::NoAnswer => PlaceError::Uncertain("user actor stopped before answering".into()),
        }
    }
}

impl From<StoreError> for PlaceError {
    fn from(error: StoreError) -> Self {
        PlaceError::Unavailable(error.to_string())
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

/// The stored order under a key, if the request is the same one that made it.
pub fn replay(order: Order, request_hash: &str) -> Result<Placed, PlaceError> {
    if order.request_hash == request_hash {
        Ok(Placed::Replayed(order))
    } else {
        Err(PlaceError::KeyReused)
    }
}

/// Retries of one key that wait for its placement in flight; past it they get 503.
pub const WAITERS_PER_KEY_MAX: usize = 64;

/// Place an order under an Idempotency-Key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Place {
    pub key: IdempotencyKey,
    pub request: PlaceOrder,
    pub reply: Reply<Placed, PlaceError>,
}

enum KeyState {
    /// A placement under this key is running; concurrent retries wait for its outcome.
    InFlight { request_hash: String, waiters: Vec<Reply<Placed, PlaceError>> },
    /// Committed. The order itself is kept when this actor placed it.
    Placed { order_id: OrderId, request_hash: String, order: Option<Arc<Order>> },
    /// The last attempt's outcome is unknown: the next one asks the database first.
    Uncertain,
}

pub struct UserActor {
    user_id: UserId,
    keys: HashMap<String, KeyState>,
    /// The keys of `keys`, oldest first, for eviction.
    recency: VecDeque<String>,
    last_active: Instant,
    core: Arc<Core>,
}

impl UserActor {
    fn new(core: Arc<Core>, user_id: UserId, recent: Vec<RecentKey>) -> Self {
        let mut actor =
            UserActor { user_id, keys: HashMap::new(), recency: VecDeque::new(), last_active: Instant::now(), core };
        // Newest first from the store: remember oldest first.
        for key in recent.into_iter().rev() {
            let state = KeyState::Placed { order_id: key.order_id, request_hash: key.request_hash, order: None };
            actor.remember(key.idempotency_key, state);
        }
        actor
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

    /// Starts the placement saga for a key with no known outcome.
    fn begin(
        &mut self,
        key: IdempotencyKey,
        request: PlaceOrder,
        look_up_first: bool,
        reply: Reply<Placed, PlaceError>,
        ctx: &mut Context<Self>,
    ) {
        let request_hash = request.fingerprint();
        let in_flight = KeyState::InFlight { request_hash: request_hash.clone(), waiters: Vec::new() };
        self.remember(key.as_str().to_owned(), in_flight);
        let core = Arc::clone(&self.core);
        let user_id = self.user_id;
        let saga_key = key.clone();
        let saga = async move {
            if look_up_first {
                match core.bounded(core.store.find_order_by_key(user_id, saga_key.as_str())).await {
                    Ok(Some(existing)) => return replay(existing, &request_hash),
                    Ok(None) => {}
                    Err(error) => return Err(PlaceError::Uncertain(error.to_string())),
                }
            }
            core.place_new(user_id, saga_key, request).await
        };
        ctx.spawn(saga.into_actor(self).map(move |result, actor, _ctx| actor.finish(key, result, reply)));
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

    /// Stops the actor when it has had nothing to do for the idle timeout and nothing is in
    /// flight.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_active.elapsed() >= self.core.limits.idle_timeout;
        let busy = self.keys.values().any(|state| matches!(state, KeyState::InFlight { .. }));
        if idle && !busy {
            ctx.stop();
        }
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = (self.core.limits.idle_timeout / 4).max(std::time::Duration::from_millis(10));
        ctx.run_interval(every, |actor, ctx| actor.tick(ctx));
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
                let read = async move { core.bounded(core.store.find_order(order_id)).await };
                ctx.spawn(read.into_actor(self).map(move |found, actor, _ctx| {
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

/// The placement side of `Core`.
impl Core {
    /// Places an order for `user_id` under `key`, at most once per key (see the module doc).
    pub async fn place_order(
        self: &Arc<Self>,
        user_id: UserId,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, PlaceError> {
        let user = self
            .users
            .get_or_activate(user_id, || async {
                let recent =
                    self.user_loader.submit(user_id).await.map_err(|e| PlaceError::Unavailable(e.to_string()))?;
                let actor = UserActor::new(Arc::clone(self), user_id, recent);
                let arbiter = self.arbiters.for_key(user_id.get());
                Ok::<_, PlaceError>(super::start_on(&arbiter, self.limits.mailbox_capacity, actor))
            })
            .await?;
        ask(user.addr(), |reply| Place { key, request, reply }).await
    }

    /// The placement saga: reserve every line on its SKU actor in parallel; if a line fails,
    /// take back what was granted; otherwise submit the order and its reservations as one
    /// change and answer once it is committed.
    async fn place_new(
        self: &Arc<Self>,
        user_id: UserId,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, PlaceError> {
        let order_id = OrderId::new(self.ids.next_id());
        let now_ms = self.clock.now_ms();
        let header = NewOrderHeader {
            id: order_id,
            user_id,
            idempotency_key: key,
            request_hash: request.fingerprint(),
            created_at_ms: now_ms,
            pay_deadline_ms: now_ms + self.pay_timeout.as_millis() as i64,
        };
        let expires_at_ms = header.pay_deadline_ms + self.limits.reservation_grace.as_millis() as i64;
        let reservations = futures::future::join_all(
            request.lines.iter().map(|&(sku_id, quantity)| self.reserve(sku_id, order_id, quantity, expires_at_ms)),
        )
        .await;
        let mut grants: Vec<Grant> = Vec::with_capacity(request.lines.len());
        let mut failure: Option<PlaceError> = None;
        for (&(sku_id, _), result) in request.lines.iter().zip(reservations) {
            match result {
                Ok(grant) => grants.push(grant),
                Err(error) => {
                    let error = PlaceError::from_sku(sku_id, error);
                    if failure.as_ref().is_none_or(|f| error.precedence() < f.precedence()) {
                        failure = Some(error);
                    }
                }
            }
        }
        if let Some(error) = failure {
            self.abandon(grants.into_iter().map(|g| g.effect));
            return Err(error);
        }
        let lines = request
            .lines
            .iter()
            .zip(&grants)
            .map(|(&(sku_id, quantity), grant)| OrderLine {
                sku_id,
                name: grant.info.name.clone(),
                price_cents: grant.info.price_cents,
                quantity,
            })
            .collect();
        let order = match Order::price(header, lines, Cents::ZERO) {
            Ok(order) => order,
            Err(error) => {
                self.abandon(grants.into_iter().map(|g| g.effect));
                return Err(error.into());
            }
        };
        let effects: Vec<_> = grants.into_iter().map(|g| g.effect).collect();
        let change = Change { order: Some(order.clone()), skus: effects.clone(), ..Change::default() };
        match self.journal.submit(change).await {
            Ok(Ok(())) => {
                self.timer.schedule(order.id, order.pay_deadline_ms).await;
                Ok(Placed::Created(order))
            }
            Ok(Err(Conflict::DuplicateKey)) => {
                // An order under this key is older than the keys this actor holds: answer
                // with it. (The pipeline has undone this placement's reservations.)
                let existing =
                    self.bounded(self.store.find_order_by_key(order.user_id, &order.idempotency_key)).await?;
                let existing =
                    existing.ok_or_else(|| PlaceError::Unavailable("order under this key vanished".into()))?;
                replay(existing, &order.request_hash)
            }
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
                tracing::warn!(%order_id, %error, "order commit failed; its outcome is unknown");
                Err(PlaceError::Uncertain(error.to_string()))
            }
        }
    }
}
