//! Every bad input gets its status and code, and changes nothing.

use crate::helpers::{spawn_app, Backend, TestApp, JWT_SECRET};
use base64::Engine;
use serde_json::json;
use std::time::Duration;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    token: Option<String>,
    key: Option<&'static str>,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn expired_token() -> String {
    let now = tianji::domain::ids::wall_clock_ms() / 1_000;
    let claims = json!({"sub": "7", "role": "user", "exp": now - 10, "iat": now - 100});
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn cases(app: &TestApp, sku_id: i64, foreign_order: i64) -> Vec<Case> {
    let user = Some(app.user_token(7));
    let admin = Some(app.admin_token());
    let order = |items: serde_json::Value| json!({ "items": items }).to_string();
    let one = |quantity: i64| order(json!([{"sku_id": sku_id, "quantity": quantity}]));
    let case = |what, token: &Option<String>, body: String, status, code| Case {
        what,
        method: "POST",
        path: "/v1/orders".into(),
        token: token.clone(),
        key: Some("k-1"),
        content_type: "application/json",
        body,
        status,
        code,
    };
    let wrong_secret =
        JwtKeys::new("another-secret-another-secret-another").mint(UserId::new(7), Role::User, Duration::from_secs(60));
    let alg_none =
        format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"7","role":"admin","exp":99999999999}"#));
    let admin_create = |what, body: serde_json::Value, status, code| Case {
        path: "/v1/admin/skus".into(),
        ..case(what, &admin, body.to_string(), status, code)
    };
    vec![
        case("zero quantity", &user, one(0), 422, "invalid_quantity"),
        case("negative quantity", &user, one(-3), 422, "invalid_quantity"),
        case("absurd quantity", &user, one(1_000_000_000), 422, "invalid_quantity"),
        case(
            "quantity beyond i64",
            &user,
            format!(r#"{{"items":[{{"sku_id":{sku_id},"quantity":1e30}}]}}"#),
            400,
            "malformed_request",
        ),
        case(
            "fractional quantity",
            &user,
            format!(r#"{{"items":[{{"sku_id":{sku_id},"quantity":1.5}}]}}"#),
            400,
            "malformed_request",
        ),
        case("unknown sku", &user, order(json!([{"sku_id": 12345, "quantity": 1}])), 404, "sku_not_found"),
        case("non-positive sku id", &user, order(json!([{"sku_id": 0, "quantity": 1}])), 422, "invalid_sku_id"),
        case("empty items", &user, order(json!([])), 422, "invalid_items"),
        case(
            "same sku twice",
            &user,
            order(json!([{"sku_id": sku_id, "quantity": 1}, {"sku_id": sku_id, "quantity": 1}])),
            422,
            "duplicate_sku",
        ),
        case("malformed json", &user, "{\"items\": [".into(), 400, "malformed_request"),
        case(
            "unknown field",
            &user,
            json!({"items": [{"sku_id": sku_id, "quantity": 1}], "user_id": 99}).to_string(),
            400,
            "malformed_request",
        ),
        case("missing items", &user, "{}".into(), 400, "malformed_request"),
        Case { key: None, ..case("missing idempotency key", &user, one(1), 400, "missing_idempotency_key") },
        Case { key: Some("has space"), ..case("bad idempotency key", &user, one(1), 400, "invalid_idempotency_key") },
        Case { content_type: "text/plain", ..case("not json", &user, one(1), 415, "unsupported_media_type") },
        case(
            "body too large",
            &user,
            format!(r#"{{"items":[],"pad":"{}"}}"#, "x".repeat(70_000)),
            413,
            "payload_too_large",
        ),
        case("missing token", &None, one(1), 401, "unauthorized"),
        case("expired token", &Some(expired_token()), one(1), 401, "unauthorized"),
        case("wrong-secret token", &Some(wrong_secret), one(1), 401, "unauthorized"),
        case("alg none token", &Some(alg_none), one(1), 401, "unauthorized"),
        case("garbage token", &Some("not.a.token".into()), one(1), 401, "unauthorized"),
        Case {
            token: user.clone(),
            ..admin_create(
                "user token creates a sku",
                json!({"name": "x", "price_cents": 1, "stock": 1}),
                403,
                "forbidden",
            )
        },
        admin_create("negative price", json!({"name": "x", "price_cents": -1, "stock": 1}), 422, "invalid_price"),
        admin_create("negative stock", json!({"name": "x", "price_cents": 1, "stock": -1}), 422, "invalid_stock"),
        admin_create("empty name", json!({"name": "  ", "price_cents": 1, "stock": 1}), 422, "invalid_name"),
        Case {
            path: format!("/v1/admin/skus/{sku_id}/restock"),
            ..case("user token restocks", &user, json!({"quantity": 5}).to_string(), 403, "forbidden")
        },
        Case {
            path: format!("/v1/admin/skus/{sku_id}/restock"),
            ..case("zero restock", &admin, json!({"quantity": 0}).to_string(), 422, "invalid_quantity")
        },
        Case {
            path: "/v1/admin/skus/999/restock".into(),
            ..case("restock unknown sku", &admin, json!({"quantity": 1}).to_string(), 404, "sku_not_found")
        },
        Case {
            method: "GET",
            path: format!("/v1/orders/{foreign_order}"),
            ..case("someone else's order", &user, String::new(), 404, "order_not_found")
        },
        Case {
            method: "GET",
            path: "/v1/orders/abc".into(),
            ..case("order id not a number", &user, String::new(), 404, "not_found")
        },
        Case {
            method: "GET",
            path: "/v1/skus/77".into(),
            ..case("unknown sku read", &user, String::new(), 404, "sku_not_found")
        },
        Case {
            method: "GET",
            path: "/v1/nothing".into(),
            ..case("unknown route", &user, String::new(), 404, "not_found")
        },
    ]
}

async fn bad_input_gets_its_status_and_changes_nothing(app: TestApp) {
    let sku_id = app.create_sku("Guarded", 500, 10).await;
    let foreign = app.place_order(8, "theirs", json!([{"sku_id": sku_id, "quantity": 1}])).await;
    assert_eq!(foreign.status(), 201);
    let foreign_order = foreign.json::<serde_json::Value>().await.unwrap()["order_id"].as_i64().unwrap();
    let before = app.db_counters(sku_id).await;
    let orders_before = app.count("SELECT COUNT(*) FROM trade_order").await;
    let skus_before = app.count("SELECT COUNT(*) FROM inventory").await;

    for case in cases(&app, sku_id, foreign_order) {
        let mut request = match case.method {
            "GET" => app.client.get(app.url(&case.path)),
            _ => app.client.post(app.url(&case.path)).header("content-type", case.content_type).body(case.body.clone()),
        };
        if let Some(token) = &case.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = case.key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body: serde_json::Value =
            response.json().await.unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", case.what));
        assert_eq!(
            (status, body["code"].as_str().unwrap_or_default()),
            (case.status, case.code),
            "{}: {body}",
            case.what
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: a message", case.what);
    }

    assert_eq!(app.db_counters(sku_id).await, before, "bad input changed the stock");
    assert_eq!(app.count("SELECT COUNT(*) FROM trade_order").await, orders_before);
    assert_eq!(app.count("SELECT COUNT(*) FROM inventory").await, skus_before);
}

#[actix_web::test]
async fn bad_input_gets_its_status_and_changes_nothing_on_mariadb() {
    bad_input_gets_its_status_and_changes_nothing(spawn_app(Backend::MySql).await).await;
}

#[actix_web::test]
async fn bad_input_gets_its_status_and_changes_nothing_on_sqlite() {
    bad_input_gets_its_status_and_changes_nothing(spawn_app(Backend::Sqlite).await).await;
}

#[actix_web::test]
async fn health_and_readiness() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
