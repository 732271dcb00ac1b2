//! The order's life after placement: paid exactly once, cancelled or timed out with its units
//! back on the shelf, finished or refunded by an admin, late payments kept for refund.

use crate::helpers::{eventually, spawn_app, spawn_with, AppOptions, Backend};
use serde_json::Value;
use std::time::Duration;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[actix_web::test]
async fn a_payment_repeated_a_hundred_times_pays_once() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("Course", 1_250, 10).await;
    let (order_id, pay_cents) = app.placed(7, sku_id, 2).await;
    assert_eq!(pay_cents, 2_500);

    let callbacks = (0..100).map(|_| app.pay(order_id, "trade-1", pay_cents));
    let replies = futures::future::join_all(callbacks).await;
    for reply in replies {
        let (status, body) = json(reply).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("paid")), "{body}");
    }
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved, counters.sold), (8, 0, 2));
    assert_eq!(app.count("SELECT COUNT(*) FROM payment").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM order_status_log WHERE to_status = 'paid'").await, 1);
    assert_eq!(app.reservations(sku_id).await[&order_id].1, "confirmed");

    // A second payment (another trade number) for a paid order is kept for refund.
    let (status, body) = json(app.pay(order_id, "trade-2", pay_cents).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("already_paid")));
    assert_eq!(app.count("SELECT COUNT(*) FROM payment WHERE status = 'refund_required'").await, 1);
    assert_eq!(app.db_counters(sku_id).await.sold, 2);
}

#[actix_web::test]
async fn a_payment_must_match_and_be_signed() {
    let app = spawn_app(Backend::Sqlite).await;
    let sku_id = app.create_sku("Course", 1_000, 3).await;
    let (order_id, pay_cents) = app.placed(7, sku_id, 1).await;

    let (status, body) = json(app.pay(order_id, "t-1", pay_cents - 1).await).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("amount_mismatch")));
    let unsigned = app
        .client
        .post(app.url("/v1/payments/callback"))
        .header("content-type", "application/json")
        .header("X-Tianji-Signature", "00".repeat(32))
        .body(format!(r#"{{"order_id":{order_id},"out_trade_no":"t-2","amount_cents":{pay_cents},"channel":"x"}}"#))
        .send()
        .await
        .unwrap();
    let (status, body) = json(unsigned).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("bad_signature")));
    let (status, body) = json(app.pay(999, "t-3", 1).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("order_not_found")));

    assert_eq!(app.get_order(7, order_id).await["status"], "pending_payment");
    assert_eq!(app.count("SELECT COUNT(*) FROM payment").await, 0);
    assert_eq!(app.db_counters(sku_id).await.sold, 0);
}

#[actix_web::test]
async fn cancel_gives_the_units_back_and_a_late_payment_is_kept_for_refund() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("Seat", 500, 5).await;
    let (order_id, pay_cents) = app.placed(7, sku_id, 3).await;

    let (status, _) = json(app.order_action(&app.user_token(8), order_id, "cancel").await).await;
    assert_eq!(status, 404, "someone else's order");
    let (status, body) = json(app.order_action(&app.user_token(7), order_id, "cancel").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("closed")));
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved), (5, 0));
    assert_eq!(app.reservations(sku_id).await[&order_id].1, "released");

    let (status, body) = json(app.order_action(&app.user_token(7), order_id, "cancel").await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("invalid_transition")));

    let (status, body) = json(app.pay(order_id, "late-1", pay_cents).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("order_closed")));
    let (status, _) = json(app.pay(order_id, "late-1", pay_cents).await).await;
    assert_eq!(status, 409, "the repeat gets the same answer");
    assert_eq!(app.count("SELECT COUNT(*) FROM payment WHERE status = 'refund_required'").await, 1);
    assert_eq!(app.get_order(7, order_id).await["status"], "closed");
    assert_eq!(app.db_counters(sku_id).await.sold, 0);
}

#[actix_web::test]
async fn an_unpaid_order_times_out_within_a_second_of_its_deadline() {
    let mut options = AppOptions::new(Backend::MySql);
    options.extra.push(("TIANJI_PAY_TIMEOUT", "1s".into()));
    let app = spawn_with(options).await;
    let sku_id = app.create_sku("Flash", 100, 2).await;
    let (order_id, pay_cents) = app.placed(7, sku_id, 2).await;

    let closed =
        eventually(Duration::from_secs(5), || async { app.get_order(7, order_id).await["status"] == "closed" }).await;
    assert!(closed, "the order did not time out");
    let closed_at = app
        .count(&format!("SELECT created_at FROM order_status_log WHERE order_id = {order_id} AND to_status = 'closed'"))
        .await;
    let deadline = app.count(&format!("SELECT pay_deadline FROM trade_order WHERE id = {order_id}")).await;
    assert!((0..1_000).contains(&(closed_at - deadline)), "closed {} ms after the deadline", closed_at - deadline);
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved), (2, 0));

    let (status, body) = json(app.pay(order_id, "after-deadline", pay_cents).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("order_closed")));
}

#[actix_web::test]
async fn admins_finish_and_refund() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("Book", 800, 10).await;
    let admin = app.admin_token();
    let (delivered, pay) = app.placed(7, sku_id, 2).await;
    assert_eq!(app.pay(delivered, "t-delivered", pay).await.status(), 200);
    let (returned, pay) = app.placed(7, sku_id, 3).await;
    assert_eq!(app.pay(returned, "t-returned", pay).await.status(), 200);
    let (pending, _) = app.placed(7, sku_id, 1).await;

    assert_eq!(app.order_action(&app.user_token(7), delivered, "finish").await.status(), 403);
    let (status, body) = json(app.order_action(&admin, delivered, "finish").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("finished")));
    let (status, body) = json(app.order_action(&admin, delivered, "refund").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("refunded")));
    let after_delivered = app.db_counters(sku_id).await;
    assert_eq!(after_delivered.sold, 5, "refund after delivery leaves the units sold");

    let (status, body) = json(app.order_action(&admin, returned, "refund").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("refunded")));
    let counters = app.db_counters(sku_id).await;
    assert_eq!(
        (counters.available, counters.reserved, counters.sold),
        (7, 1, 2),
        "refund before delivery returns the units"
    );
    assert_eq!(app.reservations(sku_id).await[&returned].1, "returned");
    assert_eq!(app.count("SELECT COUNT(*) FROM payment WHERE status = 'refunded'").await, 2);

    let (status, body) = json(app.order_action(&admin, pending, "refund").await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("invalid_transition")));
    let (status, _) = json(app.order_action(&admin, returned, "refund").await).await;
    assert_eq!(status, 409, "nothing leaves Refunded");
    assert_eq!(app.db_counters(sku_id).await, counters);
}

#[actix_web::test]
async fn orders_are_listed_newest_first_in_stable_pages() {
    let app = spawn_app(Backend::Sqlite).await;
    let sku_id = app.create_sku("Pen", 100, 100).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(app.placed(7, sku_id, 1).await.0);
    }
    app.placed(8, sku_id, 1).await;
    let cancelled = placed[1];
    assert_eq!(app.order_action(&app.user_token(7), cancelled, "cancel").await.status(), 200);

    let page = |query: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url(&format!("/v1/orders{query}")))
                .bearer_auth(app.user_token(7))
                .send()
                .await
                .unwrap();
            json(response).await
        }
    };
    let ids = |body: &Value| {
        body["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_i64().unwrap()).collect::<Vec<_>>()
    };

    let (status, first) = page("?limit=2".into()).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&first), vec![placed[4], placed[3]]);
    // An order placed between pages does not shift the next page.
    app.placed(7, sku_id, 1).await;
    let (_, second) = page(format!("?limit=2&cursor={}", first["next_cursor"].as_str().unwrap())).await;
    assert_eq!(ids(&second), vec![placed[2], placed[1]]);
    let (_, third) = page(format!("?limit=2&cursor={}", second["next_cursor"].as_str().unwrap())).await;
    assert_eq!(ids(&third), vec![placed[0]]);
    assert!(third["next_cursor"].is_null());

    let (_, closed) = page("?status=closed".into()).await;
    assert_eq!(ids(&closed), vec![cancelled]);
    for (query, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=101", "invalid_limit"),
        ("?status=open", "invalid_status"),
        ("?cursor=zzz", "invalid_cursor"),
    ] {
        let (status, body) = page(query.into()).await;
        assert_eq!((status / 100, body["code"].as_str()), (4, Some(code)), "{query}");
    }
}
