//! Many buyers, few units: exactly the stock is sold, and the database, the reservation rows,
//! the API and the Redis snapshot agree afterwards.

use crate::helpers::{spawn_app, Backend, TestApp};
use serde_json::json;
use std::collections::{HashMap, HashSet};

const BUYERS: i64 = 2_000;
const STOCK: i64 = 100;

async fn two_thousand_buyers_for_one_hundred_units(app: TestApp) {
    let sku_id = app.create_sku("Flash sale seat", 9_900, STOCK).await;
    let buyers = (0..BUYERS).map(|buyer| {
        let app = &app;
        async move {
            let response = app
                .place_order(10_000 + buyer, &format!("buy-{buyer}"), json!([{"sku_id": sku_id, "quantity": 1}]))
                .await;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json body");
            (status, body)
        }
    });
    let replies = futures::future::join_all(buyers).await;

    let mut by_status: HashMap<u16, i64> = HashMap::new();
    let mut acknowledged = HashSet::new();
    for (status, body) in &replies {
        *by_status.entry(*status).or_default() += 1;
        match status {
            201 => {
                assert_eq!(body["status"], "pending_payment");
                assert_eq!(body["pay_cents"], 9_900);
                assert!(acknowledged.insert(body["order_id"].as_i64().unwrap()), "an order id was answered twice");
            }
            409 => assert_eq!(body["code"], "insufficient_stock"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(by_status.get(&201), Some(&STOCK), "{by_status:?}");
    assert_eq!(by_status.get(&409), Some(&(BUYERS - STOCK)), "{by_status:?}");

    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.total, counters.available, counters.reserved, counters.sold), (STOCK, 0, STOCK, 0));

    let reservations = app.reservations(sku_id).await;
    assert_eq!(reservations.len() as i64, STOCK);
    assert!(reservations.values().all(|(quantity, status)| *quantity == 1 && status == "reserved"));
    let reserved_orders: HashSet<i64> = reservations.keys().copied().collect();
    assert_eq!(reserved_orders, acknowledged, "every acknowledged order holds exactly its reservation");

    let ordered = app.orders_of_sku(sku_id).await;
    assert_eq!(
        ordered.keys().copied().collect::<HashSet<_>>(),
        acknowledged,
        "the order rows are the acknowledged ones"
    );
    assert_eq!(ordered.values().sum::<i64>(), STOCK);

    let api = app.get_sku(sku_id).await;
    assert_eq!(
        (api["available"].as_i64(), api["reserved"].as_i64(), api["sold"].as_i64()),
        (Some(0), Some(STOCK), Some(0))
    );

    if app.redis.is_some() {
        let snapshot = app.redis_snapshot(sku_id, counters.version).await;
        assert_eq!(snapshot.get("version"), Some(&counters.version), "{snapshot:?}");
        assert_eq!(snapshot.get("total"), Some(&STOCK));
        assert_eq!(snapshot.get("available"), Some(&0));
        assert_eq!(snapshot.get("reserved"), Some(&STOCK));
        assert_eq!(snapshot.get("sold"), Some(&0));
    }
    crate::reconcile::assert_reconciles_clean(&app.database.url, app.redis.as_deref()).await;
}

#[actix_web::test]
async fn two_thousand_buyers_for_one_hundred_units_on_mariadb() {
    two_thousand_buyers_for_one_hundred_units(spawn_app(Backend::MySql).await).await;
}

#[actix_web::test]
async fn two_thousand_buyers_for_one_hundred_units_on_sqlite() {
    two_thousand_buyers_for_one_hundred_units(spawn_app(Backend::Sqlite).await).await;
}

#[actix_web::test]
async fn multi_line_orders_take_all_lines_or_nothing() {
    let app = spawn_app(Backend::MySql).await;
    let plenty = app.create_sku("Notebook", 250, 10).await;
    let scarce = app.create_sku("Signed copy", 5_000, 1).await;

    let first = app
        .place_order(7, "basket-1", json!([{"sku_id": plenty, "quantity": 3}, {"sku_id": scarce, "quantity": 1}]))
        .await;
    assert_eq!(first.status(), 201);
    let order: serde_json::Value = first.json().await.unwrap();
    assert_eq!(order["total_cents"], 3 * 250 + 5_000);
    assert_eq!(order["items"].as_array().unwrap().len(), 2);

    let second = app
        .place_order(8, "basket-2", json!([{"sku_id": plenty, "quantity": 2}, {"sku_id": scarce, "quantity": 1}]))
        .await;
    assert_eq!(second.status(), 409);
    let counters = app.db_counters(plenty).await;
    assert_eq!((counters.available, counters.reserved), (7, 3), "the failed basket gave its notebooks back");
    // The failed basket was never written: its notebooks were taken back in memory.
    let rows = app.reservations(plenty).await;
    assert_eq!(rows.values().map(|(q, s)| (*q, s.as_str())).collect::<Vec<_>>(), vec![(3, "reserved")]);
}
