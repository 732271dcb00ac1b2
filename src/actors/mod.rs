//! Actors: one per hot key, each owning its key's state and serializing every change to it.
//!
//! `inventory.rs` (one per SKU), `user.rs` (one per user), `coupon.rs` (one per coupon
//! template) and `order.rs` (one per order in use) hold their messages, state and handlers;
//! `learning.rs` adds heartbeats to the user actor and writes their progress behind; `registry.rs` activates and forgets them;
//! `timer.rs` holds the payment deadlines; `journal.rs` is the node's one write pipeline;
//! `recovery.rs` settles leases at start and `repair.rs` (a cluster node's periodic pass) those a
//! cross-node settlement missed;
//! `traced.rs` carries the caller's span (and so its request id) into the actors.
//! `Core` is the facade the HTTP layer talks to (commands and queries) and what the actors
//! share. Actors run on dedicated arbiters (threads), apart from the HTTP workers, by key.

pub mod cluster;
pub mod coupon;
pub mod inventory;
pub mod journal;
pub mod learning;
pub mod order;
pub mod recovery;
pub mod registry;
pub mod relay;
pub mod repair;
pub mod timer;
pub mod traced;
pub mod user;

use crate::domain::clock::{DynClock, SystemClock};
use crate::domain::coupon::{Coupon, CouponStatus, CouponView, TemplateDraft};
use crate::domain::order::Order;
use crate::domain::sku::SkuDraft;
use crate::domain::TemplateId;
use crate::domain::{OrderId, OrderStatus, SkuId, Snowflake, UserId};
use crate::metrics::{ActorKind, JournalMetrics, LearningMetrics, Metrics, Placements};
use crate::persistence::group_commit::{self, BatchLimits, Batcher};
use crate::persistence::redis::{SkuSnapshot, Snapshots};
use crate::persistence::{
    Change, Conflict, DynStore, NewSku, NewTemplate, SkuState, StoreError, TemplateState, UserState,
};
use actix::dev::ToEnvelope;
use actix::prelude::*;
use dashmap::DashSet;
use registry::Registry;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use traced::Traced;

/// The bounds every actor works within.
#[derive(Debug, Clone, Copy)]
pub struct ActorLimits {
    /// Messages an actor's mailbox holds before senders are refused (503 overloaded).
    pub mailbox_capacity: usize,
    /// The most changes one group commit writes.
    pub batch_size_max: usize,
    /// How long an open batch waits for more changes before it is written.
    pub batch_delay: Duration,
    /// An actor with no work for this long stops; its state is in the database.
    pub idle_timeout: Duration,
    /// An order session with no work for this long stops (orders are many and mostly idle).
    pub session_idle_timeout: Duration,
    /// How long a reservation's recorded expiry outlives its order's payment deadline.
    pub reservation_grace: Duration,
    /// Bounds waiting for the database on the request path: a connection, a statement, a
    /// batch's commit. Past it the caller gets 503 (and, for a commit, the outcome is unknown).
    pub database_timeout: Duration,
    /// Idempotency-Keys a user actor holds.
    pub user_keys_max: usize,
    /// Idempotency-Keys all user actors hold together.
    pub user_keys_total_max: usize,
    /// How often merged learning progress is written to the database.
    pub learning_flush: Duration,
    /// How often merged learning progress is written to Redis, when Redis is configured.
    pub learning_redis_flush: Duration,
}

impl Default for ActorLimits {
    fn default() -> Self {
        ActorLimits {
            mailbox_capacity: 4_096,
            batch_size_max: 1_024,
            batch_delay: Duration::from_millis(1),
            idle_timeout: Duration::from_secs(300),
            session_idle_timeout: Duration::from_secs(10),
            reservation_grace: Duration::from_secs(120),
            database_timeout: Duration::from_secs(1),
            user_keys_max: 64,
            user_keys_total_max: 1_000_000,
            learning_flush: Duration::from_secs(60),
            learning_redis_flush: Duration::from_secs(1),
        }
    }
}

/// Why a message did not reach its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The mailbox is at capacity: the caller should back off and retry.
    Full,
    /// The actor stopped before the message was delivered; it was not processed.
    Stopped,
    /// The actor stopped or failed without answering; the outcome is unknown to the caller.
    NoAnswer,
}

/// The reply channel every request message carries.
pub type Reply<T, E> = oneshot::Sender<Result<T, E>>;

/// Sends a request built around a reply channel with `try_send` (never waiting on a full
/// mailbox) and waits for the answer. The actor handles it inside the caller's span (`Traced`).
pub async fn ask<A, M, T, E>(addr: &Addr<A>, build: impl FnOnce(Reply<T, E>) -> M) -> Result<T, E>
where
    A: Actor + Handler<Traced<M>>,
    A::Context: ToEnvelope<A, Traced<M>>,
    M: Message<Result = ()> + Send + 'static,
    E: From<Refusal>,
{
    ask_counted(addr, &metrics::Counter::noop(), build).await
}

/// `ask`, counting a refusal by a full mailbox on `mailbox_rejections`.
pub async fn ask_counted<A, M, T, E>(
    addr: &Addr<A>,
    mailbox_rejections: &metrics::Counter,
    build: impl FnOnce(Reply<T, E>) -> M,
) -> Result<T, E>
where
    A: Actor + Handler<Traced<M>>,
    A::Context: ToEnvelope<A, Traced<M>>,
    M: Message<Result = ()> + Send + 'static,
    E: From<Refusal>,
{
    let (reply, answer) = oneshot::channel();
    addr.try_send(Traced::here(build(reply))).map_err(|error| match error {
        SendError::Full(_) => {
            mailbox_rejections.increment(1);
            E::from(Refusal::Full)
        }
        SendError::Closed(_) => E::from(Refusal::Stopped),
    })?;
    answer.await.map_err(|_| E::from(Refusal::NoAnswer))?
}

/// Starts `actor` on `arbiter` with a mailbox that holds `capacity` messages from the first
/// one on. (`Actor::start_in_arbiter` sets the capacity only once the arbiter runs the actor's
/// constructor, so a burst that arrives before that meets actix's default of 16.)
pub fn start_on<A>(arbiter: &ArbiterHandle, capacity: usize, actor: A) -> Addr<A>
where
    A: Actor<Context = Context<A>> + Send,
{
    let (sender, receiver) = actix::dev::channel::channel(capacity);
    let spawned = arbiter.spawn_fn(move || {
        Context::with_receiver(receiver).run(actor);
    });
    if !spawned {
        tracing::error!("arbiter stopped; the actor never starts and its callers get 503");
    }
    Addr::new(sender)
}

/// The shortest interval between two idle checks, so a tiny idle timeout (in tests) does not
/// keep an actor's thread busy.
pub const IDLE_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Schedules `tick` every quarter of `idle_timeout` (at least `IDLE_CHECK_INTERVAL_MIN`), so an
/// actor idle past its timeout stops within a quarter of it more. Called from `started`; `tick`
/// decides whether the actor is idle and may stop.
pub fn schedule_idle_checks<A>(ctx: &mut Context<A>, idle_timeout: Duration, tick: fn(&mut A, &mut Context<A>))
where
    A: Actor<Context = Context<A>>,
{
    let every = (idle_timeout / 4).max(IDLE_CHECK_INTERVAL_MIN);
    ctx.run_interval(every, tick);
}

/// A fixed set of arbiters (threads with their own event loop) that actors are spread over.
pub struct ArbiterPool {
    arbiters: Vec<Arbiter>,
}

impl ArbiterPool {
    /// Starts `count` arbiters. Needs a running actix `System`.
    pub fn start(count: usize) -> Self {
        assert!(count > 0);
        ArbiterPool { arbiters: (0..count).map(|_| Arbiter::new()).collect() }
    }

    /// The arbiter a key's actor runs on: stable per key.
    pub fn for_key(&self, key: i64) -> ArbiterHandle {
        let index = (key.unsigned_abs() % self.arbiters.len() as u64) as usize;
        self.arbiters[index].handle()
    }

    pub fn stop(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Drop for ArbiterPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the actors share, and the one door the HTTP layer goes through.
pub struct Core {
    store: DynStore,
    snapshots: Arc<Snapshots>,
    skus: Registry<SkuId, inventory::InventoryActor>,
    users: Registry<UserId, user::UserActor>,
    orders: Registry<OrderId, order::OrderSession>,
    templates: Registry<TemplateId, coupon::TemplateActor>,
    /// The node's one write pipeline.
    journal: Batcher<Change, Result<(), Conflict>>,
    /// SKU activations of the same moment share one read.
    sku_loader: Batcher<SkuId, Option<SkuState>>,
    /// User activations of the same moment share one read.
    user_loader: Batcher<UserId, UserState>,
    /// Template activations of the same moment share one read.
    template_loader: Batcher<TemplateId, Option<TemplateState>>,
    /// SKU ids that do not exist, so a flood of them does not reach the database.
    unknown_skus: DashSet<SkuId>,
    /// Users whose actor was activating when a step of theirs committed (see `Core::user`).
    /// An entry lives from that commit until the user's activation ends, so the set holds at
    /// most the users whose activation was in flight (or failed) at such a moment.
    users_behind: DashSet<UserId>,
    /// Idempotency-Keys held by all user actors.
    user_keys_held: AtomicUsize,
    arbiters: ArbiterPool,
    limits: ActorLimits,
    ids: Snowflake,
    clock: DynClock,
    /// How long a buyer has to pay a new order.
    pay_timeout: Duration,
    /// Payment deadlines of pending orders.
    timer: timer::DeadlineTimer,
    /// Merged learning progress not yet written.
    learning: learning::WriteBehind,
    /// Placements by outcome.
    placements: Placements,
    /// Leases the repair pass settled or failed to.
    repairs: crate::metrics::RepairMetrics,
    /// The app's recorder, which every handle above was registered in.
    metrics: Metrics,
    /// The runtime the core started on, where every store call runs (see `bounded`).
    home: tokio::runtime::Handle,
    /// Signalled after every committed batch: wakes the event relay (`relay`).
    committed: Arc<tokio::sync::Notify>,
    /// This node's leases when it is part of a cluster (`cluster.rs`); unset on a single node.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Ownership>>,
    /// The client of other nodes' SKUs and templates when this node is part of a cluster;
    /// unset on a single node.
    remote: std::sync::OnceLock<Arc<crate::cluster::remote::RemoteKeys>>,
    /// The rules of templates other nodes own, read once (rules never change once created);
    /// at most `coupon::RULES_KEPT_MAX`.
    rules_elsewhere: dashmap::DashMap<TemplateId, crate::domain::coupon::CouponRules>,
}

/// What a core is started with besides its store and limits.
struct Node {
    worker_id: u16,
    pay_timeout: Duration,
    arbiter_count: usize,
    clock: DynClock,
    metrics: Metrics,
}

/// The most coupons of one user a listing reads.
pub const COUPONS_READ_MAX: u32 = 1_000;

/// Unknown SKU ids remembered at most; past it the set starts over.
pub const UNKNOWN_SKUS_MAX: usize = 100_000;

impl Core {
    /// Builds the core on the wall clock and starts its pipeline and arbiters, counting into a
    /// recorder of its own (`metrics`). Needs a running `System`.
    pub fn start(
        store: DynStore,
        snapshots: Arc<Snapshots>,
        limits: ActorLimits,
        worker_id: u16,
        pay_timeout: Duration,
        arbiter_count: usize,
    ) -> Arc<Core> {
        Core::start_with_clock(store, snapshots, limits, worker_id, pay_timeout, arbiter_count, Arc::new(SystemClock))
    }

    /// `start` on the given clock.
    pub fn start_with_clock(
        store: DynStore,
        snapshots: Arc<Snapshots>,
        limits: ActorLimits,
        worker_id: u16,
        pay_timeout: Duration,
        arbiter_count: usize,
        clock: DynClock,
    ) -> Arc<Core> {
        let node = Node { worker_id, pay_timeout, arbiter_count, clock, metrics: Metrics::new() };
        Core::launch(store, snapshots, limits, node)
    }

    /// `start`, counting into the app's `metrics` (which its HTTP layer renders).
    pub fn start_measured(
        store: DynStore,
        snapshots: Arc<Snapshots>,
        limits: ActorLimits,
        worker_id: u16,
        pay_timeout: Duration,
        arbiter_count: usize,
        metrics: Metrics,
    ) -> Arc<Core> {
        let node = Node { worker_id, pay_timeout, arbiter_count, clock: Arc::new(SystemClock), metrics };
        Core::launch(store, snapshots, limits, node)
    }

    fn launch(store: DynStore, snapshots: Arc<Snapshots>, limits: ActorLimits, node: Node) -> Arc<Core> {
        let Node { worker_id, pay_timeout, arbiter_count, clock, metrics } = node;
        let (timer, timer_task) = timer::DeadlineTimer::channel();
        let loads = BatchLimits { size_max: 1_000, delay: Duration::ZERO, queue_max: limits.mailbox_capacity };
        let core = Arc::new_cyclic(|weak| Core {
            journal: journal::start(
                weak.clone(),
                Arc::clone(&store),
                Arc::clone(&clock),
                &limits,
                JournalMetrics::new(&metrics),
            ),
            sku_loader: loader(
                "sku_activations",
                &store,
                loads,
                limits.database_timeout,
                |store, ids: Vec<SkuId>| async move { store.activate_skus(&ids).await },
            ),
            user_loader: loader(
                "user_activations",
                &store,
                loads,
                limits.database_timeout,
                move |store, ids: Vec<UserId>| async move { store.load_users(&ids, limits.user_keys_max).await },
            ),
            template_loader: loader(
                "template_activations",
                &store,
                loads,
                limits.database_timeout,
                |store, ids: Vec<TemplateId>| async move { store.load_templates(&ids).await },
            ),
            store,
            snapshots,
            skus: Registry::new(ActorKind::Sku, &metrics),
            users: Registry::new(ActorKind::User, &metrics),
            orders: Registry::new(ActorKind::Order, &metrics),
            templates: Registry::new(ActorKind::Template, &metrics),
            unknown_skus: DashSet::new(),
            users_behind: DashSet::new(),
            user_keys_held: AtomicUsize::new(0),
            arbiters: ArbiterPool::start(arbiter_count),
            limits,
            ids: Snowflake::new(worker_id),
            clock,
            pay_timeout,
            timer,
            learning: learning::WriteBehind::measured(LearningMetrics::new(&metrics)),
            placements: Placements::new(&metrics),
            repairs: crate::metrics::RepairMetrics::new(&metrics),
            metrics,
            home: tokio::runtime::Handle::current(),
            committed: Arc::new(tokio::sync::Notify::new()),
            cluster: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            rules_elsewhere: dashmap::DashMap::new(),
        });
        tokio::spawn(timer_task.run(Arc::downgrade(&core), Arc::clone(&core.clock)));
        tokio::spawn(learning::run_flusher(Arc::downgrade(&core), limits.learning_flush));
        core
    }

    pub fn limits(&self) -> ActorLimits {
        self.limits
    }

    /// The recorder the core counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// (snapshots written to Redis, failed Redis writes) since start.
    pub fn redis_stats(&self) -> (u64, u64) {
        self.snapshots.redis_stats()
    }

    /// Stops the payment deadline timer (see `timer`): no order times out from now on, and
    /// this returns once the timeouts already started have finished. Shutdown, before the
    /// pipeline drains.
    pub async fn stop_deadlines(&self) {
        self.timer.stop().await;
    }

    /// Waits until every change queued in the write pipeline before this call has been
    /// committed and answered: batches commit one after another, so an empty change queued
    /// now is answered only after all of them. Changes queued later are not waited for. A full
    /// queue is waited on until `deadline` (`Overloaded` past it): at shutdown the queue is
    /// full exactly when there is most to wait for.
    pub async fn drain_journal(&self, deadline: tokio::time::Instant) -> Result<(), group_commit::SubmitError> {
        // Answered at all, the empty change's batch was written after every earlier one,
        // whatever its own outcome (it conflicts with nothing).
        self.journal.submit_before(Change::default(), deadline).await.map(drop)
    }

    /// Stops the actors' arbiters (benchmarks and tests that start many cores).
    pub fn stop(&self) {
        self.arbiters.stop();
    }

    /// User actors live or activating now.
    pub fn live_users(&self) -> usize {
        self.users.len()
    }

    /// A new snowflake id of this node.
    pub fn next_id(&self) -> i64 {
        self.ids.next_id()
    }

    /// Whether the write pipeline runs and the database answers within the database timeout.
    pub async fn ready(&self) -> Result<(), StoreError> {
        if !self.journal.is_running() {
            return Err(StoreError::Unavailable("the write pipeline stopped".into()));
        }
        self.bounded(|store| async move { store.ping().await }).await
    }

    /// Creates a SKU and answers with its committed state.
    pub async fn create_sku(self: &Arc<Self>, draft: SkuDraft) -> Result<SkuSnapshot, inventory::SkuError> {
        let sku = NewSku {
            sku_id: SkuId::new(self.next_id()),
            name: draft.name,
            price_cents: draft.price_cents,
            total: draft.stock,
            sale: draft.sale,
            created_at_ms: self.clock.now_ms(),
        };
        let stored = sku.clone();
        self.bounded(|store| async move { store.create_sku(&stored).await }).await?;
        self.unknown_skus.remove(&sku.sku_id);
        tracing::info!(sku_id = %sku.sku_id, stock = sku.total, "sku created");
        if let Some(created) = cluster::created_elsewhere(self, &sku) {
            return Ok(created);
        }
        self.sku_snapshot(sku.sku_id).await
    }

    /// Creates a coupon template and answers with it as stored.
    pub async fn create_template(self: &Arc<Self>, draft: TemplateDraft) -> Result<TemplateState, StoreError> {
        let template = NewTemplate { id: TemplateId::new(self.next_id()), draft, created_at_ms: self.clock.now_ms() };
        let stored = template.clone();
        self.bounded(|store| async move { store.create_template(&stored).await }).await?;
        tracing::info!(template_id = %template.id, total = template.draft.total, "coupon template created");
        Ok(TemplateState { id: template.id, draft: template.draft, issued: 0 })
    }

    /// A user's coupons as the user sees them (`view`: only those), newest first, at most
    /// `limit`. Expired is an unused coupon past its validity, decided at `now`.
    pub async fn list_coupons(
        &self,
        user_id: UserId,
        view: Option<CouponView>,
        limit: u32,
    ) -> Result<Vec<(Coupon, CouponView)>, StoreError> {
        let stored = view.map(|view| match view {
            CouponView::Unused | CouponView::Expired => CouponStatus::Unused,
            CouponView::Locked => CouponStatus::Locked,
            CouponView::Used => CouponStatus::Used,
        });
        // Unused and expired share a stored status and are told apart here, by the domain's
        // rule, so the read is wider than the page.
        let coupons = self
            .bounded(move |store| async move { store.list_coupons(user_id, stored, COUPONS_READ_MAX).await })
            .await?;
        let now_ms = self.clock.now_ms();
        Ok(coupons
            .into_iter()
            .map(|coupon| (coupon, CouponView::of(coupon.status, coupon.valid_until_ms, now_ms)))
            .filter(|(_, seen)| view.is_none_or(|wanted| *seen == wanted))
            .take(limit as usize)
            .collect())
    }

    /// An order as stored.
    pub async fn order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.bounded(move |store| async move { store.find_order(order_id).await }).await
    }

    /// A user's orders, newest first, older than `before` when given.
    pub async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        self.bounded(move |store| async move { store.list_orders(user_id, status, before, limit).await }).await
    }

    /// Signalled after every committed batch (its events are in the outbox then).
    pub fn committed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    /// Payments in `status`, newest first, after `after` when given.
    pub async fn list_payments(
        &self,
        status: crate::persistence::PaymentStatus,
        after: Option<crate::persistence::PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<crate::persistence::PaymentRecord>, StoreError> {
        self.bounded(move |store| async move { store.list_payments(status, after, limit).await }).await
    }

    /// `read` of the store, or `Unavailable` once the database timeout passes. It runs on the
    /// core's own runtime, whoever asks (an HTTP worker, an actor's arbiter): a pooled
    /// connection belongs to the runtime that opened it, and an HTTP worker's runtime goes
    /// down at shutdown, before the last writes.
    pub(crate) async fn bounded<T, Fut>(&self, read: impl FnOnce(DynStore) -> Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let read = crate::persistence::within(self.limits.database_timeout, read(Arc::clone(&self.store)));
        match self.home.spawn(tracing::Instrument::in_current_span(read)).await {
            Ok(result) => result,
            Err(error) => Err(StoreError::Unavailable(format!("the store task ended: {error}"))),
        }
    }

    /// Remembers an id that names no SKU, within bounds.
    fn remember_unknown_sku(&self, sku_id: SkuId) {
        if self.unknown_skus.len() >= UNKNOWN_SKUS_MAX {
            self.unknown_skus.clear();
        }
        self.unknown_skus.insert(sku_id);
    }
}

/// A batcher of reads for activations: whatever queued while the previous read ran is read
/// in one statement, bounded by the database timeout.
fn loader<T, R, Fut>(
    name: &'static str,
    store: &DynStore,
    limits: BatchLimits,
    timeout: Duration,
    read: impl Fn(DynStore, Vec<T>) -> Fut + Send + 'static,
) -> Batcher<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
{
    let store = Arc::clone(store);
    Batcher::spawn(name, limits, move |items| {
        let read = read(Arc::clone(&store), items);
        crate::persistence::within(timeout, read)
    })
}
