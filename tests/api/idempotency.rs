//! Retries with one Idempotency-Key make one order, also when they race.

use crate::helpers::{spawn_app, Backend, TestApp};
use serde_json::json;
use std::collections::HashSet;

async fn fifty_concurrent_retries_make_one_order(app: TestApp) {
    let sku_id = app.create_sku("Course", 1_000, 10).await;
    let retries = (0..50).map(|_| {
        let app = &app;
        async move {
            let response = app.place_order(42, "checkout-42", json!([{"sku_id": sku_id, "quantity": 2}])).await;
            assert_eq!(response.status(), 201);
            response.json::<serde_json::Value>().await.unwrap()["order_id"].as_i64().unwrap()
        }
    });
    let order_ids: HashSet<i64> = futures::future::join_all(retries).await.into_iter().collect();
    assert_eq!(order_ids.len(), 1, "all retries answer with the same order");

    assert_eq!(app.count("SELECT COUNT(*) FROM trade_order WHERE user_id = 42").await, 1);
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved), (8, 2));
    let reserved: Vec<_> = app.reservations(sku_id).await.into_iter().filter(|(_, (_, s))| s == "reserved").collect();
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0].0, *order_ids.iter().next().unwrap());

    // A later retry is a replay; the same key with another body is refused and changes nothing.
    let replay = app.place_order(42, "checkout-42", json!([{"sku_id": sku_id, "quantity": 2}])).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers().get("idempotency-replayed").unwrap(), "true");
    let other_body = app.place_order(42, "checkout-42", json!([{"sku_id": sku_id, "quantity": 3}])).await;
    assert_eq!(other_body.status(), 422);
    assert_eq!(other_body.json::<serde_json::Value>().await.unwrap()["code"], "idempotency_key_reused");
    assert_eq!(app.db_counters(sku_id).await, counters);

    // Keys belong to users: another user's identical key is another order.
    let stranger = app.place_order(43, "checkout-42", json!([{"sku_id": sku_id, "quantity": 2}])).await;
    assert_eq!(stranger.status(), 201);
    assert_eq!(app.count("SELECT COUNT(*) FROM trade_order").await, 2);
}

#[actix_web::test]
async fn fifty_concurrent_retries_make_one_order_on_mariadb() {
    fifty_concurrent_retries_make_one_order(spawn_app(Backend::MySql).await).await;
}

#[actix_web::test]
async fn fifty_concurrent_retries_make_one_order_on_sqlite() {
    fifty_concurrent_retries_make_one_order(spawn_app(Backend::Sqlite).await).await;
}

#[actix_web::test]
async fn a_retry_on_a_sold_out_sku_still_returns_the_order() {
    let app = spawn_app(Backend::Sqlite).await;
    let sku_id = app.create_sku("Last one", 100, 1).await;
    let first = app.place_order(5, "only", json!([{"sku_id": sku_id, "quantity": 1}])).await;
    assert_eq!(first.status(), 201);
    let retry = app.place_order(5, "only", json!([{"sku_id": sku_id, "quantity": 1}])).await;
    assert_eq!(retry.status(), 201, "a retry is answered with its order even though the SKU is sold out");
}

#[actix_web::test]
async fn keys_that_differ_only_in_case_are_two_keys_on_mariadb() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("Case", 100, 10).await;
    let items = json!([{"sku_id": sku_id, "quantity": 1}]);
    let upper = app.place_order(5, "Checkout-1", items.clone()).await;
    let lower = app.place_order(5, "checkout-1", items).await;
    assert_eq!((upper.status().as_u16(), lower.status().as_u16()), (201, 201));
    let upper: serde_json::Value = upper.json().await.unwrap();
    let lower: serde_json::Value = lower.json().await.unwrap();
    assert_ne!(upper["order_id"], lower["order_id"]);
    assert_eq!(app.db_counters(sku_id).await.reserved, 2);
}
