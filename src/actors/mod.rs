//! Actors: one per hot key, each owning its key's state and serializing every change to it.
//!
//! `inventory.rs` (one per SKU) and `order.rs` (one per order session) hold their messages,
//! state and handlers; `registry.rs` activates and forgets them. `Core` is what they share:
//! the store, the snapshots, the registries, the order writer and the arbiters they run on.
//! Actors run on dedicated arbiters (threads), apart from the HTTP workers, picked by key.

pub mod inventory;
pub mod order;
pub mod registry;
pub mod timer;

use crate::domain::order::Order;
use crate::domain::{OrderId, SkuId, Snowflake};
use crate::persistence::group_commit::{BatchLimits, Batcher};
use crate::persistence::redis::Snapshots;
use crate::persistence::{DynStore, OrderInsert, OrderTransition, StoreError};
use actix::dev::ToEnvelope;
use actix::prelude::*;
use registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
    /// How often an inventory actor looks for leases that ran out.
    pub lease_tick: Duration,
    /// How long a reservation outlives its order's payment deadline.
    pub reservation_grace: Duration,
}

impl Default for ActorLimits {
    fn default() -> Self {
        ActorLimits {
            mailbox_capacity: 4_096,
            batch_size_max: 1_024,
            batch_delay: Duration::from_millis(1),
            idle_timeout: Duration::from_secs(300),
            session_idle_timeout: Duration::from_secs(10),
            lease_tick: Duration::from_millis(250),
            reservation_grace: Duration::from_secs(120),
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
/// mailbox) and waits for the answer.
pub async fn ask<A, M, T, E>(addr: &Addr<A>, build: impl FnOnce(Reply<T, E>) -> M) -> Result<T, E>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = ()> + Send + 'static,
    E: From<Refusal>,
{
    let (reply, answer) = oneshot::channel();
    addr.try_send(build(reply)).map_err(|error| match error {
        SendError::Full(_) => E::from(Refusal::Full),
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

/// What the actors share.
pub struct Core {
    pub store: DynStore,
    pub snapshots: Arc<Snapshots>,
    pub skus: Registry<SkuId, inventory::InventoryActor>,
    pub orders: Registry<OrderId, order::OrderSession>,
    pub order_writer: Batcher<Order, OrderInsert>,
    /// Group commit of order steps (pay, cancel, timeout, finish, refund).
    pub transition_writer: Batcher<OrderTransition, Result<(), StoreError>>,
    pub arbiters: ArbiterPool,
    pub limits: ActorLimits,
    pub ids: Snowflake,
    /// How long a buyer has to pay a new order.
    pub pay_timeout: Duration,
    /// Payment deadlines of pending orders.
    pub timer: timer::DeadlineTimer,
}

impl Core {
    /// Builds the core and starts its order writer and arbiters. Needs a running `System`.
    pub fn start(
        store: DynStore,
        snapshots: Arc<Snapshots>,
        limits: ActorLimits,
        worker_id: u16,
        pay_timeout: Duration,
        arbiter_count: usize,
    ) -> Arc<Core> {
        let order_writer =
            writer(
                "orders",
                &store,
                &limits,
                |store, orders: Vec<Order>| async move { store.insert_orders(&orders).await },
            );
        let transition_writer =
            writer("order_transitions", &store, &limits, |store, transitions: Vec<OrderTransition>| async move {
                store.transition_orders(&transitions).await
            });
        let (timer, timer_task) = timer::DeadlineTimer::channel();
        let core = Arc::new(Core {
            store,
            snapshots,
            skus: Registry::default(),
            orders: Registry::default(),
            order_writer,
            transition_writer,
            arbiters: ArbiterPool::start(arbiter_count),
            limits,
            ids: Snowflake::new(worker_id),
            pay_timeout,
            timer,
        });
        tokio::spawn(timer_task.run(Arc::downgrade(&core)));
        core
    }

    /// Brings stock in line with orders after a crash, then arms the deadlines of every order
    /// awaiting payment. Runs at start, before the service takes requests.
    ///
    /// A step of an order is written before its effect on stock, so a crash can leave a lease
    /// behind its order: open under an order that was paid or closed (or under no order at all,
    /// when the crash came between reserving and writing the order), or sold under an order
    /// refunded before delivery. Each such lease gets the repair `domain::order::lease_repair`
    /// names; a repair that fails is logged and left for the next start. Returns (leases
    /// repaired, deadlines armed).
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<(usize, usize)> {
        use crate::domain::order::{lease_repair, LeaseRepair};
        use crate::persistence::ReservationStatus;
        use futures::StreamExt;

        let started = std::time::Instant::now();
        let lagging = self.store.unsettled_reservations().await?;
        let scanned_ms = started.elapsed().as_millis() as u64;
        let repairs: Vec<_> = lagging
            .into_iter()
            .filter_map(|lease| {
                let open = lease.status == ReservationStatus::Reserved;
                lease_repair(open, lease.order_status, lease.refunded_from_paid).map(|repair| (lease, repair))
            })
            .collect();
        let repaired = repairs.len();
        let outcomes = futures::stream::iter(repairs)
            .map(|(lease, repair)| async move {
                let (sku, order) = (lease.sku_id, lease.order_id);
                let result = match repair {
                    LeaseRepair::Release => self.release(sku, order).await.map(drop),
                    LeaseRepair::Confirm => self.confirm(sku, order).await.map(drop),
                    LeaseRepair::ConfirmThenReturn => match self.confirm(sku, order).await {
                        Ok(_) => self.return_sold(sku, order, lease.quantity).await.map(drop),
                        Err(error) => Err(error),
                    },
                    LeaseRepair::Return => self.return_sold(sku, order, lease.quantity).await.map(drop),
                };
                (lease, repair, result)
            })
            .buffer_unordered(RECOVERY_IN_FLIGHT_MAX)
            .collect::<Vec<_>>()
            .await;
        let mut failed = 0;
        for (lease, repair, result) in outcomes {
            match result {
                Ok(()) => tracing::info!(sku_id = %lease.sku_id, order_id = %lease.order_id, ?repair, "lease repaired"),
                Err(error) => {
                    // Not fatal: a service that cannot start repairs nothing. The lease stays
                    // as it is in the database and is looked at again at the next start.
                    failed += 1;
                    tracing::error!(sku_id = %lease.sku_id, order_id = %lease.order_id, ?repair, %error, "lease repair failed");
                }
            }
        }
        let repaired = repaired - failed;
        let repaired_ms = started.elapsed().as_millis() as u64;
        let deadlines = self.store.pending_deadlines().await?;
        let loaded_ms = started.elapsed().as_millis() as u64;
        let armed = deadlines.len();
        for chunk in deadlines.chunks(DEADLINES_PER_COMMAND_MAX) {
            self.timer.schedule_many(chunk.to_vec()).await;
        }
        tracing::info!(
            scanned_ms,
            repaired_ms,
            loaded_ms,
            armed_ms = started.elapsed().as_millis() as u64,
            "recovery phases (cumulative)"
        );
        Ok((repaired, armed))
    }
}

/// A group-commit writer over the store, bounded like the actors.
fn writer<T, R, Fut>(
    name: &'static str,
    store: &DynStore,
    limits: &ActorLimits,
    write: fn(DynStore, Vec<T>) -> Fut,
) -> Batcher<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
{
    let store = Arc::clone(store);
    let bounds =
        BatchLimits { size_max: limits.batch_size_max, delay: limits.batch_delay, queue_max: limits.mailbox_capacity };
    Batcher::spawn(name, bounds, move |items| write(Arc::clone(&store), items))
}

/// Deadlines handed to the timer in one command during recovery.
const DEADLINES_PER_COMMAND_MAX: usize = 10_000;

/// Lease repairs run at once during recovery.
const RECOVERY_IN_FLIGHT_MAX: usize = 64;
