//! The actors and the write pipeline on the in-memory store, straight through `Core`, on a
//! manual clock: an order and its reservations commit together, refusals write nothing, a
//! payment is decided by the deadline on the clock, and a burst at activation meets the
//! configured mailbox.

use std::sync::Arc;
use std::time::Duration;
use tianji::actors::order::LifecycleError;
use tianji::actors::user::{PlaceError, Placed};
use tianji::actors::{ActorLimits, Core};
use tianji::domain::clock::ManualClock;
use tianji::domain::order::Order;
use tianji::domain::{Cents, IdempotencyKey, OrderEvent, PlaceOrder, SkuId, UserId};
use tianji::persistence::memory::MemoryStore;
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{NewSku, PaymentStatus, ReservationStatus, Store};

const START_MS: i64 = 1_800_000_000_000;
const PAY_TIMEOUT: Duration = Duration::from_secs(60);

struct Fixture {
    core: Arc<Core>,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    sku_id: SkuId,
}

async fn fixture(stock: i64) -> Fixture {
    fixture_with(stock, ActorLimits::default()).await
}

async fn fixture_with(stock: i64, limits: ActorLimits) -> Fixture {
    let store = Arc::new(MemoryStore::default());
    let sku_id = SkuId::new(77);
    let sku = NewSku {
        sku_id,
        name: "Seat".into(),
        price_cents: Cents::new(10),
        total: stock,
        sale: Default::default(),
        created_at_ms: 0,
    };
    store.create_sku(&sku).await.unwrap();
    let clock = ManualClock::starting_at(START_MS);
    let snapshots = Arc::new(Snapshots::in_process());
    let core = Core::start_with_clock(store.clone(), snapshots, limits, 1, PAY_TIMEOUT, 1, clock.clone());
    Fixture { core, store, clock, sku_id }
}

impl Fixture {
    async fn place(&self, user: i64, key: &str, quantity: i64) -> Result<Placed, PlaceError> {
        let request = PlaceOrder::parse(&[(self.sku_id.get(), quantity)]).unwrap();
        self.core.place_order(UserId::new(user), IdempotencyKey::parse(key).unwrap(), request).await
    }

    async fn placed(&self, user: i64, key: &str, quantity: i64) -> Order {
        match self.place(user, key, quantity).await {
            Ok(Placed::Created(order)) => order,
            other => panic!("expected a new order, got {other:?}"),
        }
    }

    fn stored(&self) -> (i64, i64, i64, i64) {
        let c = self.store.counters(self.sku_id).unwrap().0;
        (c.total, c.available, c.reserved, c.sold)
    }
}

#[actix_web::test]
async fn an_order_and_its_reservation_commit_together() {
    let f = fixture(5).await;
    let order = f.placed(1, "a", 2).await;
    assert_eq!(f.stored(), (5, 3, 2, 0));
    assert_eq!(f.store.reservation_status(f.sku_id, order.id), Some(ReservationStatus::Reserved));
    assert_eq!(f.store.find_order(order.id).await.unwrap().unwrap().status, order.status);
    // A retry under the same key is answered from the user actor, with the same order.
    assert_eq!(f.place(1, "a", 2).await, Ok(Placed::Replayed(order.clone())));
    assert_eq!(f.place(1, "a", 3).await, Err(PlaceError::KeyReused));
    assert_eq!(f.stored(), (5, 3, 2, 0));
}

#[actix_web::test]
async fn sold_out_is_refused_without_a_write() {
    let f = fixture(1).await;
    f.placed(1, "first", 1).await;
    let version = f.store.counters(f.sku_id).unwrap().1;
    for user in 2..100 {
        let refused = f.place(user, "late", 1).await;
        assert!(matches!(refused, Err(PlaceError::InsufficientStock { available: 0, requested: 1, .. })));
    }
    assert_eq!(f.store.counters(f.sku_id).unwrap().1, version, "refusals wrote nothing");
    assert_eq!(f.stored(), (1, 0, 1, 0));
}

#[actix_web::test]
async fn payment_before_the_deadline_sells_and_after_it_closes_and_keeps_for_refund() {
    let f = fixture(2).await;
    let on_time = f.placed(1, "on-time", 1).await;
    let late = f.placed(2, "late", 1).await;
    f.clock.advance_ms(PAY_TIMEOUT.as_millis() as i64);
    let paid = f.core.pay_order(on_time.id, "t-1".into(), on_time.pay_cents, "test".into()).await.unwrap();
    assert_eq!(paid.status.as_str(), "paid");
    assert_eq!(f.store.reservation_status(f.sku_id, on_time.id), Some(ReservationStatus::Confirmed));

    f.clock.advance_ms(1);
    let refused = f.core.pay_order(late.id, "t-2".into(), late.pay_cents, "test".into()).await;
    assert_eq!(refused, Err(LifecycleError::OrderClosed));
    assert_eq!(f.store.reservation_status(f.sku_id, late.id), Some(ReservationStatus::Released));
    assert_eq!(f.store.find_payment("t-2").await.unwrap().unwrap().status, PaymentStatus::RefundRequired);
    // Units: one sold, the late order's back on the shelf; a repeat gets the same answer.
    assert_eq!(f.stored(), (2, 1, 0, 1));
    let repeat = f.core.pay_order(late.id, "t-2".into(), late.pay_cents, "test".into()).await;
    assert_eq!(repeat, Err(LifecycleError::OrderClosed));
    assert_eq!(f.stored(), (2, 1, 0, 1));
}

#[actix_web::test]
async fn a_timeout_before_the_deadline_on_the_clock_changes_nothing() {
    let f = fixture(1).await;
    let order = f.placed(1, "k", 1).await;
    let early = f.core.time_out_order(order.id).await.unwrap();
    assert_eq!(early.status.as_str(), "pending_payment");
    f.clock.advance_ms(PAY_TIMEOUT.as_millis() as i64 + 1);
    let closed = f.core.time_out_order(order.id).await.unwrap();
    assert_eq!(closed.status.as_str(), "closed");
    assert_eq!(f.stored(), (1, 1, 0, 0));
    let cancel = f.core.act_on_order(order.id, OrderEvent::Cancel, Some(UserId::new(1))).await;
    assert!(matches!(cancel, Err(LifecycleError::InvalidTransition(_))));
}

#[actix_web::test]
async fn a_burst_at_activation_meets_the_configured_mailbox() {
    // The SKU's actor is not active: the burst activates it and must not meet a small mailbox.
    let f = fixture(1_000).await;
    let burst = (1..=500).map(|user| f.place(user, "burst", 1));
    let results = futures::future::join_all(burst).await;
    let refused: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(refused.is_empty(), "{} of 500 refused, first: {:?}", refused.len(), refused.first());
    assert_eq!(f.stored(), (1_000, 500, 500, 0));
}

#[actix_web::test]
async fn a_key_older_than_the_window_is_answered_by_the_database_and_its_units_come_back() {
    // The user actor holds one key: the retry of the first meets the unique key in the store.
    let f = fixture_with(3, ActorLimits { user_keys_max: 1, ..ActorLimits::default() }).await;
    let first = f.placed(1, "a", 1).await;
    f.placed(1, "b", 1).await;
    assert_eq!(f.place(1, "a", 1).await, Ok(Placed::Replayed(first)));
    assert_eq!(f.stored(), (3, 1, 2, 0));
    // The refused retry's reservation was undone in the SKU actor: exactly one unit is left.
    f.placed(2, "c", 1).await;
    assert!(matches!(f.place(3, "d", 1).await, Err(PlaceError::InsufficientStock { available: 0, .. })));
    assert_eq!(f.stored(), (3, 0, 3, 0));
}
