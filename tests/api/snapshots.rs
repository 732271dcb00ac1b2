//! Redis only mirrors committed state: when it is down, sales go on and nothing is lost.

use crate::helpers::{eventually, spawn_with, AppOptions, Backend};
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn sales_go_on_while_redis_is_down() {
    let mut options = AppOptions::new(Backend::MySql);
    // Nothing listens on port 1: every snapshot write fails.
    options.redis_url = Some("redis://127.0.0.1:1".into());
    let app = spawn_with(options).await;
    let sku_id = app.create_sku("Offline mirror", 300, 5).await;
    for buyer in 0..5 {
        let response = app.place_order(buyer + 1, "k", json!([{"sku_id": sku_id, "quantity": 1}])).await;
        assert_eq!(response.status(), 201);
    }
    assert_eq!(app.place_order(99, "k", json!([{"sku_id": sku_id, "quantity": 1}])).await.status(), 409);
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved), (0, 5));
    let sku = app.get_sku(sku_id).await;
    assert_eq!(sku["reserved"], 5, "readers are served from the in-process snapshot");
    let failures_counted = eventually(Duration::from_secs(5), || async { app.core.redis_stats().1 > 0 }).await;
    assert!(failures_counted, "failed Redis writes are counted");
}
