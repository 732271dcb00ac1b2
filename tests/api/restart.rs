//! State lives in the database: a new process serves the same stock, and a stale owner that
//! kept old state in memory is fenced by the row version instead of overselling.

use crate::helpers::{restart, spawn_app, Backend, TestApp};
use serde_json::json;

async fn stock_and_orders_survive_a_restart(app: TestApp) {
    let sku_id = app.create_sku("Workshop", 2_500, 10).await;
    let mut order_ids = Vec::new();
    for buyer in 0..3 {
        let response =
            app.place_order(100 + buyer, &format!("k{buyer}"), json!([{"sku_id": sku_id, "quantity": 2}])).await;
        assert_eq!(response.status(), 201);
        order_ids.push(response.json::<serde_json::Value>().await.unwrap()["order_id"].as_i64().unwrap());
    }
    let before = app.db_counters(sku_id).await;
    assert_eq!((before.available, before.reserved), (4, 6));

    let again = restart(&app).await;
    let sku = again.get_sku(sku_id).await;
    assert_eq!((sku["available"].as_i64(), sku["reserved"].as_i64()), (Some(4), Some(6)), "reloaded with its leases");
    for (buyer, order_id) in order_ids.iter().enumerate() {
        let response = again
            .client
            .get(again.url(&format!("/v1/orders/{order_id}")))
            .bearer_auth(again.user_token(100 + buyer as i64))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The new process sells exactly what is left.
    let mut created = 0;
    for buyer in 0..5 {
        let response = again.place_order(200 + buyer, "after", json!([{"sku_id": sku_id, "quantity": 1}])).await;
        created += i32::from(response.status() == 201);
    }
    assert_eq!(created, 4);
    let after = again.db_counters(sku_id).await;
    assert_eq!((after.total, after.available, after.reserved, after.sold), (10, 0, 10, 0));
}

#[actix_web::test]
async fn stock_and_orders_survive_a_restart_on_mariadb() {
    stock_and_orders_survive_a_restart(spawn_app(Backend::MySql).await).await;
}

#[actix_web::test]
async fn stock_and_orders_survive_a_restart_on_sqlite() {
    stock_and_orders_survive_a_restart(spawn_app(Backend::Sqlite).await).await;
}

#[actix_web::test]
async fn a_stale_owner_is_fenced_not_oversold() {
    let first = spawn_app(Backend::MySql).await;
    let sku_id = first.create_sku("Contested", 100, 3).await;
    assert_eq!(first.place_order(1, "a", json!([{"sku_id": sku_id, "quantity": 1}])).await.status(), 201);

    // A second owner takes the SKU and sells from the same row.
    let second = restart(&first).await;
    assert_eq!(second.place_order(2, "b", json!([{"sku_id": sku_id, "quantity": 2}])).await.status(), 201);

    // The first still believes 2 units are available; its write fails the version check.
    let stale = first.place_order(3, "c", json!([{"sku_id": sku_id, "quantity": 2}])).await;
    assert_eq!(stale.status(), 503);
    assert_eq!(stale.headers().get("retry-after").unwrap(), "1");
    assert_eq!(stale.json::<serde_json::Value>().await.unwrap()["code"], "unavailable");

    // The retry reloads from the database and sees the truth: sold out.
    let retry = first.place_order(3, "c", json!([{"sku_id": sku_id, "quantity": 2}])).await;
    assert_eq!(retry.status(), 409);
    let counters = first.db_counters(sku_id).await;
    assert_eq!((counters.total, counters.available, counters.reserved, counters.sold), (3, 0, 3, 0));
    assert_eq!(first.orders_of_sku(sku_id).await.values().sum::<i64>(), 3);
}
