//! Promotions over HTTP: a sale's window and price, the per-user limit under a burst and across
//! a restart, coupons from template to paid order, and every bad promotion input refused
//! without a change.

use crate::helpers::{restart, rfc3339_from_now, spawn_app, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

const HOUR_SECS: i64 = 3_600;

fn one(sku_id: i64, quantity: i64) -> Value {
    json!([{"sku_id": sku_id, "quantity": quantity}])
}

/// Places `quantity` units of `sku_id` for `user_id` under a fresh key.
async fn order(app: &TestApp, user_id: i64, sku_id: i64, quantity: i64) -> (u16, Value) {
    let key = format!("k-{}", rand::random::<u64>());
    crate::helpers::status_and_json(app.place_order(user_id, &key, one(sku_id, quantity)).await).await
}

#[actix_web::test]
async fn a_sale_sells_only_inside_its_window_and_at_its_price() {
    let app = spawn_app(Backend::Sqlite).await;
    let starts_at = rfc3339_from_now(HOUR_SECS);
    let sku = app
        .create_sku_from(json!({"name": "Course", "price_cents": 1_000, "stock": 10, "sale_price_cents": 600,
            "sale_starts_at": starts_at, "sale_ends_at": rfc3339_from_now(2 * HOUR_SECS)}))
        .await;
    let sku_id = sku["sku_id"].as_i64().unwrap();
    assert_eq!((sku["sale_price_cents"].as_i64(), sku["sale_starts_at"].as_str()), (Some(600), Some(&*starts_at)));
    assert!(sku["per_user_limit"].is_null());

    let before = app.db_counters(sku_id).await;
    let (status, body) = order(&app, 7, sku_id, 1).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sale_not_started")));
    assert_eq!(app.db_counters(sku_id).await, before, "a refused order writes nothing");
    assert_eq!((app.get_sku(sku_id).await["available"].as_i64(), before.available), (Some(10), 10));

    let (status, sku) = app.patch_sale(sku_id, json!({"sale_starts_at": rfc3339_from_now(-HOUR_SECS)})).await;
    assert_eq!(status, 200, "{sku}");
    assert_eq!(sku["sale_price_cents"], 600, "an absent field is unchanged");
    let (status, placed) = order(&app, 7, sku_id, 2).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!((placed["items"][0]["price_cents"].as_i64(), placed["total_cents"].as_i64()), (Some(600), Some(1_200)));

    let ended = json!({"sale_starts_at": rfc3339_from_now(-2 * HOUR_SECS), "sale_ends_at": rfc3339_from_now(-60)});
    assert_eq!(app.patch_sale(sku_id, ended).await.0, 200);
    let (status, body) = order(&app, 7, sku_id, 1).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sale_ended")));

    let (status, sku) = app.patch_sale(sku_id, json!({})).await;
    assert_eq!((status, sku["sale_price_cents"].as_i64()), (200, Some(600)), "an empty patch changes nothing");
    let cleared = json!({"sale_price_cents": null, "sale_starts_at": null, "sale_ends_at": null});
    let (status, sku) = app.patch_sale(sku_id, cleared).await;
    assert_eq!(status, 200);
    for field in ["sale_price_cents", "sale_starts_at", "sale_ends_at", "per_user_limit"] {
        assert!(sku[field].is_null(), "{field} cleared: {sku}");
    }
    let (status, placed) = order(&app, 7, sku_id, 1).await;
    assert_eq!((status, placed["items"][0]["price_cents"].as_i64()), (201, Some(1_000)), "list price again");
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved, counters.sold), (7, 3, 0));
}

/// One buyer, limit 3: a burst of 20 gets exactly 3; a cancel gives one back; a restart forgets
/// nothing.
async fn the_limit_holds_under_a_burst_and_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let sku =
        app.create_sku_from(json!({"name": "Flash", "price_cents": 500, "stock": 100, "per_user_limit": 3})).await;
    let sku_id = sku["sku_id"].as_i64().unwrap();
    assert_eq!(sku["per_user_limit"], 3);

    let burst = futures::future::join_all((0..20).map(|_| order(&app, 7, sku_id, 1))).await;
    let placed: Vec<i64> =
        burst.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b["order_id"].as_i64().unwrap()).collect();
    let limited = burst.iter().filter(|(s, b)| *s == 409 && b["code"] == "purchase_limit_reached").count();
    assert_eq!((placed.len(), limited), (3, 17), "{burst:?}");
    assert_eq!(app.db_counters(sku_id).await.reserved, 3);

    let (status, body) =
        crate::helpers::status_and_json(app.order_action(&app.user_token(7), placed[0], "cancel").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("closed")));
    assert_eq!(order(&app, 7, sku_id, 1).await.0, 201, "the cancelled unit is back in the allowance");
    let (status, body) = order(&app, 7, sku_id, 1).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("purchase_limit_reached")));
    assert_eq!(order(&app, 8, sku_id, 3).await.0, 201, "the limit is per buyer");

    let restarted = restart(&app).await;
    let (status, body) = order(&restarted, 7, sku_id, 1).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("purchase_limit_reached")), "{body}");
    let counters = restarted.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved), (94, 6));
    restarted.assert_sku_conserved(sku_id).await;
}

#[actix_web::test]
async fn the_per_user_limit_holds_on_sqlite() {
    the_limit_holds_under_a_burst_and_a_restart(Backend::Sqlite).await;
}

#[actix_web::test]
async fn the_per_user_limit_holds_on_mariadb() {
    the_limit_holds_under_a_burst_and_a_restart(Backend::MySql).await;
}

/// A template of two coupons (500 off from 1,000, one per user) from claim to paid order.
async fn coupons_from_template_to_paid_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b, c) = (7, 8, 9);
    let valid_until = rfc3339_from_now(24 * HOUR_SECS);
    let (status, template) = app
        .create_template(json!({"name": "500 off", "kind": "amount_off", "discount_cents": 500,
            "min_spend_cents": 1_000, "total": 2, "per_user_limit": 1, "valid_until": valid_until}))
        .await;
    assert_eq!(status, 201, "{template}");
    assert_eq!((template["issued"].as_i64(), template["discount_cents"].as_i64()), (Some(0), Some(500)));
    assert_eq!((template["percent_off"].clone(), template["valid_until"].as_str()), (Value::Null, Some(&*valid_until)));
    let template_id = template["template_id"].as_i64().unwrap();

    let (status, coupon_a) = app.receive_coupon(a, template_id).await;
    assert_eq!((status, coupon_a["status"].as_str()), (201, Some("unused")), "{coupon_a}");
    let coupon_a = coupon_a["coupon_id"].as_i64().unwrap();
    let refused = |(status, body): (u16, Value)| (status, body["code"].as_str().map(str::to_owned));
    assert_eq!(refused(app.receive_coupon(a, template_id).await), (409, Some("limit_reached".into())));
    let (status, coupon_b) = app.receive_coupon(b, template_id).await;
    assert_eq!(status, 201);
    let coupon_b = coupon_b["coupon_id"].as_i64().unwrap();
    assert_eq!(refused(app.receive_coupon(c, template_id).await), (409, Some("sold_out".into())));
    let path = format!("/v1/coupon-templates/{template_id}");
    let (status, template) = app.call(Method::GET, &path, &app.user_token(c), Value::Null).await;
    assert_eq!((status, template["issued"].as_i64()), (200, Some(2)));
    assert_eq!(app.count("SELECT COUNT(*) FROM coupon_record").await, 2);

    let sku_id = app.create_sku("Course", 999, 10).await;
    let (status, first) = app.place_with_coupon(a, one(sku_id, 2), coupon_a).await;
    assert_eq!(status, 201, "{first}");
    let first_id = first["order_id"].as_i64().unwrap();
    assert_eq!(
        (first["total_cents"].as_i64(), first["discount_cents"].as_i64(), first["pay_cents"].as_i64()),
        (Some(1_998), Some(500), Some(1_498))
    );
    assert_eq!(first["coupon_id"].as_i64(), Some(coupon_a));
    let items_pay: i64 = first["items"].as_array().unwrap().iter().map(|i| i["pay_cents"].as_i64().unwrap()).sum();
    assert_eq!(items_pay, 1_498);

    assert_eq!(
        refused(app.place_with_coupon(a, one(sku_id, 2), coupon_a).await),
        (409, Some("coupon_unavailable".into()))
    );
    assert_eq!(
        refused(app.place_with_coupon(b, one(sku_id, 2), coupon_a).await),
        (409, Some("coupon_unavailable".into()))
    );
    let before = app.db_counters(sku_id).await;
    let below = app.place_with_coupon(b, one(sku_id, 1), coupon_b).await;
    assert_eq!(refused(below), (422, Some("coupon_min_spend_not_met".into())));
    assert_eq!(app.db_counters(sku_id).await, before, "stock unchanged");
    assert_eq!((before.available, before.reserved), (8, 2));

    let locked = app.coupons(a, "locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!((locked[0]["coupon_id"].as_i64(), locked[0]["order_id"].as_i64()), (Some(coupon_a), Some(first_id)));
    assert_eq!(app.coupons(b, "unused").await.len(), 1, "B's coupon was not locked by the refused order");

    assert_eq!(app.order_action(&app.user_token(a), first_id, "cancel").await.status(), 200);
    let unused = app.coupons(a, "unused").await;
    assert_eq!((unused.len(), unused[0]["order_id"].clone()), (1, Value::Null), "released: {unused:?}");
    assert!(app.coupons(a, "locked").await.is_empty());

    let (status, second) = app.place_with_coupon(a, one(sku_id, 2), coupon_a).await;
    assert_eq!((status, second["pay_cents"].as_i64()), (201, Some(1_498)), "{second}");
    let second_id = second["order_id"].as_i64().unwrap();
    assert_eq!(app.pay(second_id, "trade-1", 1_498).await.status(), 200);
    let used = app.coupons(a, "used").await;
    assert_eq!((used.len(), used[0]["order_id"].as_i64()), (1, Some(second_id)));
    assert_eq!(app.coupons(a, "").await.len(), 1, "A holds one coupon in all");
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved, counters.sold), (8, 0, 2));
}

#[actix_web::test]
async fn coupons_from_template_to_paid_order_on_sqlite() {
    coupons_from_template_to_paid_order(Backend::Sqlite).await;
}

#[actix_web::test]
async fn coupons_from_template_to_paid_order_on_mariadb() {
    coupons_from_template_to_paid_order(Backend::MySql).await;
}

/// One bad request and the refusal it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    token: String,
    body: Value,
    status: u16,
    code: &'static str,
}

/// `base` with the fields of `changes` set (a `null` sends the field as null).
fn with(base: &Value, changes: Value) -> Value {
    let mut body = base.clone();
    body.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
    body
}

fn bad_promotion_cases(app: &TestApp, sku_id: i64) -> Vec<Case> {
    let (admin, user) = (app.admin_token(), app.user_token(7));
    let (soon, later) = (rfc3339_from_now(HOUR_SECS), rfc3339_from_now(2 * HOUR_SECS));
    let template = json!({"name": "T", "kind": "amount_off", "discount_cents": 100, "min_spend_cents": 0,
        "total": 10, "per_user_limit": 1, "valid_until": later});
    let new_sku = json!({"name": "New", "price_cents": 100, "stock": 1});
    let case = |what, method, path: &str, token: &String, body, status, code| Case {
        what,
        method,
        path: path.to_owned(),
        token: token.clone(),
        body,
        status,
        code,
    };
    let create_template = |what, changes, code| {
        case(what, Method::POST, "/v1/admin/coupon-templates", &admin, with(&template, changes), 422, code)
    };
    let create_sku =
        |what, changes, code| case(what, Method::POST, "/v1/admin/skus", &admin, with(&new_sku, changes), 422, code);
    let patch = format!("/v1/admin/skus/{sku_id}");
    let patch_sale = |what, body, status, code| case(what, Method::PATCH, &patch, &admin, body, status, code);
    let as_user = |what, method, path: &str, body, status, code| case(what, method, path, &user, body, status, code);
    vec![
        create_template(
            "percent_off 150",
            json!({"kind": "percent_off", "discount_cents": null, "percent_off": 150}),
            "invalid_discount",
        ),
        create_template("negative discount", json!({"discount_cents": -5}), "invalid_discount"),
        create_template(
            "claim ends before it starts",
            json!({"claim_starts_at": later, "claim_ends_at": soon}),
            "invalid_window",
        ),
        create_template(
            "valid_until before claim start",
            json!({"claim_starts_at": later, "valid_until": soon}),
            "invalid_window",
        ),
        create_template("unknown kind", json!({"kind": "buy_one_get_one"}), "invalid_kind"),
        create_template("unparseable valid_until", json!({"valid_until": "soon"}), "invalid_time"),
        as_user("template by a user", Method::POST, "/v1/admin/coupon-templates", template.clone(), 403, "forbidden"),
        as_user(
            "unknown template on receive",
            Method::POST,
            "/v1/coupons/receive",
            json!({"template_id": 12_345}),
            404,
            "template_not_found",
        ),
        as_user(
            "non-positive template on receive",
            Method::POST,
            "/v1/coupons/receive",
            json!({"template_id": 0}),
            422,
            "invalid_template_id",
        ),
        as_user("unknown template", Method::GET, "/v1/coupon-templates/12345", Value::Null, 404, "template_not_found"),
        as_user(
            "non-positive template",
            Method::GET,
            "/v1/coupon-templates/-1",
            Value::Null,
            404,
            "template_not_found",
        ),
        as_user("unknown coupon status", Method::GET, "/v1/coupons?status=lost", Value::Null, 422, "invalid_status"),
        as_user("coupon page too large", Method::GET, "/v1/coupons?limit=101", Value::Null, 422, "invalid_limit"),
        patch_sale("per_user_limit 0", json!({"per_user_limit": 0}), 422, "invalid_per_user_limit"),
        patch_sale(
            "sale ends before it starts",
            json!({"sale_starts_at": later, "sale_ends_at": soon}),
            422,
            "invalid_sale_window",
        ),
        patch_sale(
            "sale ends before the kept start",
            json!({"sale_ends_at": rfc3339_from_now(-2 * HOUR_SECS)}),
            422,
            "invalid_sale_window",
        ),
        patch_sale("negative sale price", json!({"sale_price_cents": -1}), 422, "invalid_sale_price"),
        patch_sale("unparseable sale time", json!({"sale_ends_at": "2026-13-40"}), 422, "invalid_time"),
        patch_sale("unknown field in patch", json!({"stock": 50}), 400, "malformed_request"),
        as_user("patch by a user", Method::PATCH, &patch, json!({"per_user_limit": 5}), 403, "forbidden"),
        case("patch of an unknown sku", Method::PATCH, "/v1/admin/skus/12345", &admin, json!({}), 404, "sku_not_found"),
        create_sku(
            "new sku with an inverted window",
            json!({"sale_starts_at": later, "sale_ends_at": soon}),
            "invalid_sale_window",
        ),
        create_sku("new sku with limit 0", json!({"per_user_limit": 0}), "invalid_per_user_limit"),
        create_sku("new sku with a bad time", json!({"sale_starts_at": "noon"}), "invalid_time"),
    ]
}

#[actix_web::test]
async fn bad_promotion_input_is_refused_and_changes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let sale = json!({"name": "Course", "price_cents": 1_000, "stock": 5, "sale_price_cents": 800,
        "sale_starts_at": rfc3339_from_now(-HOUR_SECS), "per_user_limit": 2});
    let sku_before = app.create_sku_from(sale).await;
    let sku_id = sku_before["sku_id"].as_i64().unwrap();

    for Case { what, method, path, token, body, status, code } in bad_promotion_cases(&app, sku_id) {
        let (got, reply) = app.call(method, &path, &token, body).await;
        assert_eq!((got, reply["code"].as_str()), (status, Some(code)), "{what}: {reply}");
        if code == "invalid_time" {
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains("must be an RFC 3339 time"), "{what}: no parser internals: {message}");
        }
    }
    let (status, reply) = app.place_with_coupon(7, one(sku_id, 1), 0).await;
    assert_eq!((status, reply["code"].as_str()), (422, Some("invalid_coupon_id")), "{reply}");

    assert_eq!(app.get_sku(sku_id).await, sku_before, "the sale is as it was");
    for table in ["coupon_template", "coupon_record", "trade_order", "user_sku_purchase"] {
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM {table}")).await, 0, "{table}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM inventory").await, 1, "no sku created");
}
