//! Reservations are leases: unconfirmed units come back by themselves when the lease ends.
//! Driven on the in-memory store, straight through the actors.

use crate::helpers::eventually;
use std::sync::Arc;
use std::time::Duration;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::inventory::{InventoryError, Quantity};
use tianji::domain::{Cents, OrderId, SkuId};
use tianji::persistence::memory::MemoryStore;
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{NewSku, ReservationStatus, Store};

async fn core_with_sku(stock: i64) -> (Arc<Core>, Arc<MemoryStore>, SkuId) {
    let store = Arc::new(MemoryStore::default());
    let sku_id = SkuId::new(77);
    let sku = NewSku { sku_id, name: "Lease".into(), price_cents: Cents::new(10), total: stock, created_at_ms: 0 };
    store.create_sku(&sku).await.unwrap();
    let limits = ActorLimits { lease_tick: Duration::from_millis(10), ..ActorLimits::default() };
    let core = Core::start(store.clone(), Arc::new(Snapshots::in_process()), limits, 1, Duration::from_secs(60), 1);
    (core, store, sku_id)
}

#[actix_web::test]
async fn an_expired_lease_returns_its_units() {
    let (core, store, sku_id) = core_with_sku(5).await;
    let now = wall_clock_ms() as i64;
    let lapsed = OrderId::new(1);
    let live = OrderId::new(2);
    let two = Quantity::parse(2, 10).unwrap();
    core.reserve(sku_id, lapsed, two, now - 1).await.unwrap();
    core.reserve(sku_id, live, two, now + 3_600_000).await.unwrap();

    let returned = eventually(Duration::from_secs(5), || async {
        core.sku_snapshot(sku_id).await.unwrap().counters.reserved == 2
    })
    .await;
    assert!(returned, "the lapsed lease was not released");
    let (counters, _) = store.counters(sku_id).unwrap();
    assert_eq!((counters.available, counters.reserved), (3, 2));
    assert_eq!(store.reservation_status(sku_id, lapsed), Some(ReservationStatus::Expired));
    assert_eq!(store.reservation_status(sku_id, live), Some(ReservationStatus::Reserved));
    // An expired lease cannot be paid for any more.
    let confirm = core.confirm(sku_id, lapsed).await;
    assert!(matches!(
        confirm,
        Err(tianji::actors::inventory::SkuError::Inventory(InventoryError::UnknownReservation(_)))
    ));
    assert_eq!(core.confirm(sku_id, live).await, Ok(2));
    assert_eq!(store.counters(sku_id).unwrap().0.sold, 2);
}

#[actix_web::test]
async fn sold_out_is_refused_without_a_write() {
    let (core, store, sku_id) = core_with_sku(1).await;
    let one = Quantity::parse(1, 10).unwrap();
    let far = wall_clock_ms() as i64 + 3_600_000;
    core.reserve(sku_id, OrderId::new(1), one, far).await.unwrap();
    let version = store.counters(sku_id).unwrap().1;
    for order in 2..100 {
        let refused = core.reserve(sku_id, OrderId::new(order), one, far).await;
        assert!(matches!(
            refused,
            Err(tianji::actors::inventory::SkuError::Inventory(InventoryError::InsufficientStock { .. }))
        ));
    }
    assert_eq!(store.counters(sku_id).unwrap().1, version, "refusals wrote nothing");
}

#[actix_web::test]
async fn a_burst_at_activation_meets_the_configured_mailbox() {
    // The SKU's actor is not active: the burst activates it and must not meet a small mailbox.
    let (core, store, sku_id) = core_with_sku(1_000).await;
    let far = wall_clock_ms() as i64 + 3_600_000;
    let one = Quantity::parse(1, 10).unwrap();
    let burst = (1..=500).map(|order| core.reserve(sku_id, OrderId::new(order), one, far));
    let results = futures::future::join_all(burst).await;
    let refused: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(refused.is_empty(), "{} of 500 refused, first: {:?}", refused.len(), refused.first());
    assert_eq!(store.counters(sku_id).unwrap().0.reserved, 500);
}
