//! A user actor that activates while something of the user's is written: a step whose notice
//! finds no live actor to tell, or a learning flush that drops what it wrote from the
//! write-behind. The actor read its state before that write; it must not serve the older state.
//!
//! The store is the memory store behind a gate that holds a user read after it has read, so
//! the commit lands exactly between the read and the actor's start. (The later window, a commit
//! after the read but before the actor is registered, is covered by `Reload`; it is not made
//! reproducible here.)

use crate::helpers::eventually;
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tianji::actors::user::Placed;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::clock::ManualClock;
use tianji::domain::coupon::{Coupon, CouponStatus};
use tianji::domain::learning::{Heartbeat, HeartbeatInput};
use tianji::domain::order::Order;
use tianji::domain::sale::Sale;
use tianji::domain::sku::SkuDraft;
use tianji::domain::{Cents, IdempotencyKey, OrderId, OrderStatus, PlaceOrder, SkuId, TemplateId, UserId};
use tianji::persistence::memory::MemoryStore;
use tianji::persistence::outbox::StoredEvent;
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{
    Change, CommitReport, DynStore, NewSku, NewTemplate, Payment, PaymentCursor, PaymentRecord, PaymentStatus,
    SkuState, Store, StoreError, TemplateState, UnsettledLease, UserState,
};
use tokio::sync::{oneshot, Notify};

/// The memory store; while a gate is set, the next user read waits on it after reading.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    gate: Mutex<Option<oneshot::Receiver<()>>>,
    read: Notify,
    reads: AtomicUsize,
}

impl GatedStore {
    /// Holds the next user read after it has read, until the returned sender fires.
    fn hold_next_user_read(&self) -> oneshot::Sender<()> {
        let (open, gate) = oneshot::channel();
        *self.gate.lock().unwrap() = Some(gate);
        open
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn create_sku(&self, sku: &NewSku) -> Result<(), StoreError> {
        self.inner.create_sku(sku).await
    }

    async fn activate_skus(&self, sku_ids: &[SkuId]) -> Result<Vec<Option<SkuState>>, StoreError> {
        self.inner.activate_skus(sku_ids).await
    }

    async fn load_users(&self, user_ids: &[UserId], per_user_max: usize) -> Result<Vec<UserState>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let states = self.inner.load_users(user_ids, per_user_max).await?;
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            self.read.notify_one();
            let _ = gate.await;
        }
        Ok(states)
    }

    async fn create_template(&self, template: &NewTemplate) -> Result<(), StoreError> {
        self.inner.create_template(template).await
    }

    async fn load_templates(&self, template_ids: &[TemplateId]) -> Result<Vec<Option<TemplateState>>, StoreError> {
        self.inner.load_templates(template_ids).await
    }

    async fn find_coupon(&self, coupon_id: tianji::domain::CouponId) -> Result<Option<Coupon>, StoreError> {
        self.inner.find_coupon(coupon_id).await
    }

    async fn list_coupons(
        &self,
        user_id: UserId,
        status: Option<CouponStatus>,
        limit: u32,
    ) -> Result<Vec<Coupon>, StoreError> {
        self.inner.list_coupons(user_id, status, limit).await
    }

    async fn commit(&self, changes: &[Change], now_ms: i64) -> Result<CommitReport, StoreError> {
        self.inner.commit(changes, now_ms).await
    }

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.find_order(order_id).await
    }

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError> {
        self.inner.find_order_by_key(user_id, idempotency_key).await
    }

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError> {
        self.inner.find_payment(out_trade_no).await
    }

    async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.list_orders(user_id, status, before, limit).await
    }

    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, UserId, i64)>, StoreError> {
        self.inner.pending_deadlines().await
    }

    async fn unsettled_leases(&self) -> Result<Vec<UnsettledLease>, StoreError> {
        self.inner.unsettled_leases().await
    }

    async fn unpublished_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.unpublished_events(limit).await
    }

    async fn mark_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError> {
        self.inner.mark_published(ids, at_ms).await
    }

    async fn prune_published(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.inner.prune_published(before_ms, limit).await
    }

    async fn list_payments(
        &self,
        status: PaymentStatus,
        after: Option<PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.inner.list_payments(status, after, limit).await
    }
}

fn core_on(store: &DynStore, clock: &Arc<ManualClock>, worker_id: u16) -> Arc<Core> {
    core_with(store, clock, worker_id, ActorLimits::default())
}

fn core_with(store: &DynStore, clock: &Arc<ManualClock>, worker_id: u16, limits: ActorLimits) -> Arc<Core> {
    let snapshots = Arc::new(Snapshots::in_process());
    let pay_timeout = Duration::from_secs(3_600);
    Core::start_with_clock(store.clone(), snapshots, limits, worker_id, pay_timeout, 1, clock.clone())
}

/// The payment that opens a course commits while the buyer's actor is activating on the node
/// that pays: the activation read the buyer's courses before the commit, so it reads again,
/// and the first answer already shows the course.
#[actix_web::test]
async fn a_user_actor_that_read_before_a_commit_reads_again() {
    let gated = Arc::new(GatedStore::default());
    let store: DynStore = gated.clone();
    let clock = ManualClock::starting_at(1_800_000_000_000);
    // The order is placed on another node, so the paying node has no actor of the buyer.
    let placing = core_on(&store, &clock, 1);
    let paying = core_on(&store, &clock, 2);
    let draft = SkuDraft { name: "Course".into(), price_cents: Cents::new(1_000), stock: 10, sale: Sale::default() };
    let course = placing.create_sku(draft).await.expect("sku created").sku_id;
    let buyer = UserId::new(7);
    let key = IdempotencyKey::parse("k-1").expect("valid key");
    let request = PlaceOrder::parse(&[(course.get(), 1)]).expect("valid lines");
    let Ok(Placed::Created(order)) = placing.place_order(buyer, key, request).await else { panic!("placed") };

    let reads_before = gated.reads.load(Ordering::Relaxed);
    let open = gated.hold_next_user_read();
    let reading = tokio::spawn({
        let paying = paying.clone();
        async move { paying.lessons(buyer).await }
    });
    gated.read.notified().await;
    // The buyer's state is read, its actor not started: now the payment commits.
    paying.pay_order(order.id, "t-1".into(), order.pay_cents, "test".into()).await.expect("paid");
    open.send(()).expect("the read waits");
    let first = reading.await.expect("no panic").expect("lessons");
    let courses: Vec<SkuId> = first.iter().map(|lesson| lesson.course_id).collect();
    assert_eq!(courses, vec![course], "the activation read again after the payment's commit");
    let reads = gated.reads.load(Ordering::Relaxed) - reads_before;
    assert_eq!(reads, 2, "one read before the commit, one after");
    placing.stop();
    paying.stop();
}

/// A user's actor passivated with progress still waiting for the database; it activates again
/// and, while it reads, a flush writes that progress and drops it from the write-behind. The
/// actor read the row before the flush, so only what was pending before its read tells it the
/// progress: it must show that, never the older row.
#[actix_web::test]
async fn an_actor_that_read_before_a_flush_shows_the_flushed_progress() {
    let gated = Arc::new(GatedStore::default());
    let store: DynStore = gated.clone();
    let clock = ManualClock::starting_at(1_800_000_000_000);
    // Idle actors stop within about a second; the background flush never fires by itself.
    let limits = ActorLimits {
        idle_timeout: Duration::from_secs(1),
        learning_flush: Duration::from_secs(3_600),
        ..ActorLimits::default()
    };
    let core = core_with(&store, &clock, 1, limits);
    let draft = SkuDraft { name: "Course".into(), price_cents: Cents::new(1_000), stock: 10, sale: Sale::default() };
    let course = core.create_sku(draft).await.expect("sku created").sku_id;
    let learner = UserId::new(9);
    let key = IdempotencyKey::parse("k-1").expect("valid key");
    let request = PlaceOrder::parse(&[(course.get(), 1)]).expect("valid lines");
    let Ok(Placed::Created(order)) = core.place_order(learner, key, request).await else { panic!("placed") };
    core.pay_order(order.id, "t-1".into(), order.pay_cents, "test".into()).await.expect("paid");
    let input = HeartbeatInput { course_id: course.get(), section_id: 3, position_sec: 40, finished: None };
    let beat = Heartbeat::parse(&input).expect("a valid heartbeat");
    let accepted = core.heartbeat(learner, beat).await.expect("accepted");
    assert_eq!(core.learning_pending_rows().0, 1, "the progress waits for the database");

    let passivated = eventually(Duration::from_secs(10), || async { core.live_users() == 0 }).await;
    assert!(passivated, "the learner's actor stopped when idle");
    let open = gated.hold_next_user_read();
    let reading = tokio::spawn({
        let core = core.clone();
        async move { core.progress(learner, course).await }
    });
    gated.read.notified().await;
    // The row is read (not yet the heartbeat's progress): now the flush writes and settles it.
    assert_eq!(core.flush_learning().await.expect("the flush commits"), 1);
    assert_eq!(core.learning_pending_rows().0, 0);
    open.send(()).expect("the read waits");
    let shown = reading.await.expect("no panic").expect("owned");
    assert_eq!(shown, accepted, "the activation shows the accepted progress, not the row it read");
    core.stop();
}
