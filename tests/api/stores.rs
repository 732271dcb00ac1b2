//! The memory store is a model of the SQL stores: the same random batches of changes (with
//! duplicate and case-variant keys and trade numbers, stale epochs and versions, leases out of
//! place, counters pushed out of balance, courses opened and revoked, progress written behind)
//! run through the memory store, SQLite and MariaDB
//! must be decided the same way and leave the same data.

use crate::helpers::{Backend, TestDatabase};
use proptest::prelude::*;
use std::time::Duration;
use tianji::domain::learning::{Heartbeat, Progress};
use tianji::domain::lease::CounterDelta;
use tianji::domain::order::{NewOrderHeader, Order};
use tianji::domain::{Cents, IdempotencyKey, OrderId, OrderLine, OrderStatus, Quantity, SkuId, UserId};
use tianji::persistence::memory::MemoryStore;
use tianji::persistence::{
    Change, CommitReport, DynStore, LeaseWrite, LessonGrant, LessonStep, NewSku, OrderTransition, Payment,
    PaymentStatus, ProgressWrite, ReservationStatus, SkuEffect,
};

const SKUS: [i64; 2] = [1, 2];
const KEYS: [&str; 4] = ["a", "b", "A", "c"];
const TRADE_NOS: [&str; 3] = ["t1", "t2", "T1"];

#[derive(Debug, Clone)]
enum Step {
    Place { order: i64, user: i64, key: usize, sku: usize, units: i64, stale: bool },
    Settle { order: i64, sku: usize, units: i64, version: i64, to: ReservationStatus, trade_no: usize },
    Restock { sku: usize, units: i64, stale: bool },
    Lessons { user: i64, sku: usize, open: bool },
    Progress { user: i64, sku: usize, section: i64, position: i64, finished: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1i64..8, 1i64..3, 0..KEYS.len(), 0..2usize, 1i64..4, prop::bool::weighted(0.1))
            .prop_map(|(order, user, key, sku, units, stale)| Step::Place { order, user, key, sku, units, stale }),
        2 => (1i64..8, 0..2usize, 1i64..4, 0i64..2, prop::bool::ANY, 0..TRADE_NOS.len())
            .prop_map(|(order, sku, units, version, pay, trade_no)| {
                let to = if pay { ReservationStatus::Confirmed } else { ReservationStatus::Released };
                Step::Settle { order, sku, units, version, to, trade_no }
            }),
        1 => (0..2usize, 1i64..4, prop::bool::weighted(0.1)).prop_map(|(sku, units, stale)| Step::Restock { sku, units, stale }),
        1 => (1i64..3, 0..2usize, prop::bool::weighted(0.7)).prop_map(|(user, sku, open)| Step::Lessons { user, sku, open }),
        1 => (1i64..3, 0..2usize, 1i64..4, 0i64..100, prop::bool::weighted(0.2))
            .prop_map(|(user, sku, section, position, finished)| Step::Progress { user, sku, section, position, finished }),
    ]
}

fn change(step: &Step) -> Change {
    let sku_id = |index: usize| SkuId::new(SKUS[index]);
    let epoch = |stale: bool| Some(if stale { 0 } else { 1 });
    match *step {
        Step::Place { order, user, key, sku, units, stale } => {
            let header = NewOrderHeader {
                id: OrderId::new(order),
                user_id: UserId::new(user),
                idempotency_key: IdempotencyKey::parse(KEYS[key]).unwrap(),
                request_hash: "h".into(),
                created_at_ms: 1,
                pay_deadline_ms: 1_000,
                coupon_id: None,
            };
            let quantity = Quantity::parse(units, 10).unwrap();
            let line = OrderLine {
                sku_id: sku_id(sku),
                name: "n".into(),
                price_cents: Cents::new(10),
                quantity,
                limited: false,
            };
            let order = Order::price(header, vec![line], Cents::ZERO).unwrap();
            let lease = LeaseWrite {
                order_id: order.id,
                quantity: units,
                expires_at_ms: 9,
                from: None,
                to: ReservationStatus::Reserved,
            };
            let delta = CounterDelta { total: 0, available: -units, reserved: units, sold: 0 };
            let effect = SkuEffect { sku_id: sku_id(sku), epoch: epoch(stale), delta, lease: Some(lease) };
            Change { order: Some(order), skus: vec![effect], ..Change::default() }
        }
        Step::Settle { order, sku, units, version, to, trade_no } => {
            let pay = to == ReservationStatus::Confirmed;
            let delta = if pay {
                CounterDelta { total: 0, available: 0, reserved: -units, sold: units }
            } else {
                CounterDelta { total: 0, available: units, reserved: -units, sold: 0 }
            };
            let lease = LeaseWrite {
                order_id: OrderId::new(order),
                quantity: units,
                expires_at_ms: 9,
                from: Some(ReservationStatus::Reserved),
                to,
            };
            let transition = OrderTransition {
                order_id: OrderId::new(order),
                from: OrderStatus::PendingPayment,
                to: if pay { OrderStatus::Paid } else { OrderStatus::Closed },
                expected_version: version,
                at_ms: 2,
                pay_by_ms: pay.then_some(1_000),
                refund_payment: false,
            };
            let payment = pay.then(|| Payment {
                out_trade_no: TRADE_NOS[trade_no].into(),
                order_id: OrderId::new(order),
                amount_cents: Cents::new(10 * units),
                channel: "c".into(),
                status: PaymentStatus::Paid,
            });
            let effect = SkuEffect { sku_id: sku_id(sku), epoch: Some(1), delta, lease: Some(lease) };
            Change { transition: Some(transition), payment, skus: vec![effect], ..Change::default() }
        }
        Step::Lessons { user, sku, open } => Change {
            lessons: Some(LessonGrant {
                user_id: UserId::new(user),
                course_ids: vec![sku_id(sku)],
                step: if open { LessonStep::Open } else { LessonStep::Revoke },
            }),
            ..Change::default()
        },
        Step::Progress { user, sku, section, position, finished } => {
            let heartbeat = Heartbeat { course_id: sku_id(sku), section_id: section, position_sec: position, finished };
            let progress = Progress::reported(&heartbeat, 3);
            Change {
                progress: vec![ProgressWrite { user_id: UserId::new(user), course_id: sku_id(sku), progress }],
                ..Change::default()
            }
        }
        Step::Restock { sku, units, stale } => {
            let delta = CounterDelta { total: units, available: units, reserved: 0, sold: 0 };
            Change {
                skus: vec![SkuEffect { sku_id: sku_id(sku), epoch: epoch(stale), delta, lease: None }],
                ..Change::default()
            }
        }
    }
}

async fn prepared(store: &DynStore) {
    for sku_id in SKUS {
        let sku = NewSku {
            sku_id: SkuId::new(sku_id),
            name: "s".into(),
            price_cents: Cents::new(10),
            total: 5,
            sale: Default::default(),
            created_at_ms: 0,
        };
        store.create_sku(&sku).await.unwrap();
    }
    let ids: Vec<SkuId> = SKUS.iter().map(|id| SkuId::new(*id)).collect();
    let activated = store.activate_skus(&ids).await.unwrap();
    assert!(activated.iter().all(|state| state.as_ref().is_some_and(|s| s.epoch == 1)));
}

/// Everything a batch sequence can leave behind, in a comparable form.
async fn contents(store: &DynStore) -> Vec<String> {
    let mut seen = Vec::new();
    let ids: Vec<SkuId> = SKUS.iter().map(|id| SkuId::new(*id)).collect();
    for state in store.activate_skus(&ids).await.unwrap().into_iter().flatten() {
        let mut leases = state.reservations.clone();
        leases.sort_by_key(|(order_id, _)| *order_id);
        seen.push(format!("{:?} {:?} v{} {:?}", state.info.sku_id, state.counters, state.version, leases));
    }
    for order in 1..8 {
        let order = store.find_order(OrderId::new(order)).await.unwrap();
        seen.push(format!("{:?}", order.map(|o| (o.id, o.status, o.version, o.idempotency_key))));
    }
    let users: Vec<UserId> = (1..3).map(UserId::new).collect();
    for state in store.load_users(&users, 8).await.unwrap() {
        seen.push(format!("{:?}", state.lessons));
    }
    for trade_no in TRADE_NOS {
        seen.push(format!("{:?}", store.find_payment(trade_no).await.unwrap().map(|p| (p.order_id, p.status))));
    }
    for event in store.unpublished_events(1_000).await.unwrap() {
        seen.push(format!("event {} {:?} {:?} {}", event.id, event.order_id, event.kind, event.body));
    }
    for status in [PaymentStatus::Paid, PaymentStatus::RefundRequired, PaymentStatus::Refunded] {
        let listed = store.list_payments(status, None, 100).await.unwrap();
        seen.push(format!("{status:?}: {:?}", listed.iter().map(|p| &p.payment.out_trade_no).collect::<Vec<_>>()));
    }
    seen
}

fn outcomes(report: CommitReport) -> (Vec<String>, Vec<(SkuId, i64)>) {
    let mut versions: Vec<(SkuId, i64)> = report.versions.into_iter().collect();
    versions.sort();
    (report.outcomes.iter().map(|o| format!("{o:?}")).collect(), versions)
}

async fn compare(backend: Backend, batches: Vec<Vec<Step>>) {
    let database = TestDatabase::create(backend).await;
    let sql = tianji::persistence::connect(&database.url, true, Duration::from_secs(5)).await.unwrap();
    let memory: DynStore = std::sync::Arc::new(MemoryStore::default());
    prepared(&sql).await;
    prepared(&memory).await;
    for batch in &batches {
        let changes: Vec<Change> = batch.iter().map(change).collect();
        let from_memory = outcomes(memory.commit(&changes, 5).await.unwrap());
        let from_sql = outcomes(sql.commit(&changes, 5).await.unwrap());
        assert_eq!(from_memory, from_sql, "{backend:?} decided differently on {batch:?}");
    }
    assert_eq!(contents(&memory).await, contents(&sql).await, "{backend:?} holds other data");
}

fn batches() -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(prop::collection::vec(step(), 1..8), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_decides_and_stores_like_the_memory_store(batches in batches()) {
        tokio::runtime::Runtime::new().unwrap().block_on(compare(Backend::Sqlite, batches));
    }

    #[test]
    fn mariadb_decides_and_stores_like_the_memory_store(batches in batches()) {
        tokio::runtime::Runtime::new().unwrap().block_on(compare(Backend::MySql, batches));
    }
}
