//! Request ids and log formats: every answer carries its own `X-Request-Id`, whoever gave it
//! (a handler, the fallback, auth, the rate limits, the slow-client guard, the connection
//! gate); the real binary logs JSON lines when told to, and the id of an order's request is in
//! the lines its actors and its pipeline batch log; a bad log setting stops the start.

use crate::helpers::{spawn_with, AppOptions, Backend, TestDatabase, JWT_SECRET};
use crate::process::ServerProcess;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `X-Request-Id` of a response: present and a UUID.
fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    let id = headers.get("x-request-id").expect("every response has an X-Request-Id");
    let id = id.to_str().expect("ASCII").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
    id
}

/// The head of the response to `request`, sent on a new connection, and that connection.
async fn raw_head(address: &str, request: &[u8]) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(address.strip_prefix("http://").unwrap()).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.expect("read"), 1, "closed before the head ended");
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("a head within 5 s");
    (String::from_utf8(head).expect("an ASCII head"), stream)
}

/// The status and `X-Request-Id` of a raw response head.
fn status_and_id(head: &str) -> (u16, String) {
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let id = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no X-Request-Id in {head:?}"));
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
    (status, id)
}

#[actix_web::test]
async fn every_answer_carries_its_own_request_id() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra.push(("TIANJI_RATE_ORDERS", "1/m,1".to_owned()));
    options.extra.push(("TIANJI_BODY_READ_TIMEOUT", "200ms".to_owned()));
    let app = spawn_with(options).await;
    let (user, admin) = (app.user_token(7), app.admin_token());
    let mut ids = HashSet::new();
    let mut seen = |status: u16, expected: u16, id: String, what: &str| {
        assert_eq!(status, expected, "{what}");
        assert!(ids.insert(id.clone()), "{what}: the id {id} was given before");
    };

    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    seen(response.status().as_u16(), 200, request_id(response.headers()), "health");
    let sku = json!({"name": "Tracing course", "price_cents": 1_000, "stock": 5});
    let response = app.client.post(app.url("/v1/admin/skus")).bearer_auth(&admin).json(&sku).send().await.unwrap();
    seen(response.status().as_u16(), 201, request_id(response.headers()), "created");
    let sku_id = response.json::<Value>().await.unwrap()["sku_id"].as_i64().unwrap();
    let response = app.client.get(app.url("/v1/skus/999999")).bearer_auth(&user).send().await.unwrap();
    seen(response.status().as_u16(), 404, request_id(response.headers()), "a handler's 404");
    let response = app.client.get(app.url("/v1/no-such-route")).send().await.unwrap();
    seen(response.status().as_u16(), 404, request_id(response.headers()), "the fallback's 404");
    let response = app.client.delete(app.url("/v1/orders")).send().await.unwrap();
    seen(response.status().as_u16(), 405, request_id(response.headers()), "the fallback's 405");
    let response = app.client.get(app.url("/v1/orders")).send().await.unwrap();
    seen(response.status().as_u16(), 401, request_id(response.headers()), "no token");
    let order = json!({"items": [{"sku_id": sku_id, "quantity": 1}]});
    for (key, status, what) in [("k-1", 201, "an order"), ("k-2", 429, "past the rate limit")] {
        let request = app.client.post(app.url("/v1/orders")).bearer_auth(&user).header("Idempotency-Key", key);
        let response = request.json(&order).send().await.unwrap();
        seen(response.status().as_u16(), status, request_id(response.headers()), what);
    }
    let big = json!({"items": [], "pad": "x".repeat(70 * 1024)});
    let response = app.client.post(app.url("/v1/payments/callback")).json(&big).send().await.unwrap();
    seen(response.status().as_u16(), 413, request_id(response.headers()), "an oversized body");
    // Two bytes of a ten-byte body, then nothing: the guard answers once its timeout passes.
    let slow = b"POST /v1/payments/callback HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{}";
    let (head, _connection) = raw_head(&app.address, slow).await;
    let (status, id) = status_and_id(&head);
    seen(status, 408, id, "a slow body");
    // A client's own id is recorded, never answered as ours.
    let response = app.client.get(app.url("/healthz")).header("X-Request-Id", "client-1").send().await.unwrap();
    let id = request_id(response.headers());
    assert_ne!(id, "client-1");
    seen(response.status().as_u16(), 200, id, "with a client id");
    let hostile = format!("{}\"}} {{\"level\":\"ERROR\"", "a".repeat(10_000));
    let response = app.client.get(app.url("/healthz")).header("X-Request-Id", hostile).send().await.unwrap();
    seen(response.status().as_u16(), 200, request_id(response.headers()), "with a hostile client id");
}

#[actix_web::test]
async fn a_connection_over_the_limit_is_refused_with_a_request_id() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra = vec![("TIANJI_CONNECTIONS_MAX", "1".into()), ("TIANJI_KEEP_ALIVE", "60s".into())];
    let app = spawn_with(options).await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let (head, _held) = raw_head(&app.address, health).await;
    let (status, held_id) = status_and_id(&head);
    assert_eq!(status, 200);
    let (head, _refused) = raw_head(&app.address, health).await;
    let (status, refused_id) = status_and_id(&head);
    assert_eq!(status, 503, "{head}");
    assert_ne!(held_id, refused_id);
}

/// The JSON objects among `lines`, asserting that every line is one.
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(value["level"].is_string() && value["target"].is_string(), "a log line: {line}");
            value
        })
        .collect()
}

/// Whether `line` was logged inside a span named `name` whose `field` contains `text`.
fn in_span(line: &Value, name: &str, field: &str, text: &str) -> bool {
    let spans = line["spans"].as_array().map(Vec::as_slice).unwrap_or_default();
    spans.iter().any(|span| span["name"] == name && span[field].as_str().is_some_and(|value| value.contains(text)))
}

#[actix_web::test]
async fn json_logs_name_the_request_in_its_actors_and_its_pipeline_batch() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let logs = [("TIANJI_LOG_FORMAT", "json"), ("RUST_LOG", "warn,tianji=debug")];
    let server = ServerProcess::start_logged("tracing-json", &database.url, &logs);
    let keys = JwtKeys::new(JWT_SECRET);
    let client = reqwest::Client::new();
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let sku = json!({"name": "Logged course", "price_cents": 1_000, "stock": 5});
    let created = client.post(format!("{}/v1/admin/skus", server.address)).bearer_auth(admin).json(&sku);
    let created: Value = created.send().await.unwrap().json().await.unwrap();
    let order = json!({"items": [{"sku_id": created["sku_id"], "quantity": 1}]});
    let user = keys.mint(UserId::new(7), Role::User, Duration::from_secs(600));
    let request = client.post(format!("{}/v1/orders", server.address)).bearer_auth(user);
    let response = request.header("Idempotency-Key", "k-1").json(&order).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let id = request_id(response.headers());

    // The order was answered after its commit, and each line was written before that: they
    // only have to come through the pipe.
    let found = crate::helpers::eventually(Duration::from_secs(5), || {
        let lines = json_lines(&server.log_lines());
        let by_actor = lines.iter().any(|line| {
            let target = line["target"].as_str().unwrap();
            target.starts_with("tianji::actors::") && in_span(line, "request", "request_id", &id)
        });
        let by_batch = lines.iter().any(|line| {
            in_span(line, "group_commit", "batcher", "journal") && in_span(line, "group_commit", "request_ids", &id)
        });
        async move { by_actor && by_batch }
    })
    .await;
    assert!(found, "request {id} in an actor's line and in its batch's:\n{}", server.log_lines().join("\n"));
}

/// `tianji serve` with `settings`: its exit status and what it wrote to stderr.
fn refused_start(settings: &[(&str, &str)]) -> (Option<i32>, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tianji"))
        .arg("serve")
        .env("TIANJI_DATA_DIR", data_dir.path())
        .env("TIANJI_BIND", "127.0.0.1:0")
        .envs(settings.iter().copied())
        .output()
        .expect("the binary runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_log_setting_stops_the_start_naming_it() {
    let (code, stderr) = refused_start(&[("TIANJI_LOG_FORMAT", "yaml")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TIANJI_LOG_FORMAT"), "{stderr}");
    let (code, stderr) = refused_start(&[("TIANJI_OTLP_ENDPOINT", "collector:4318")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TIANJI_OTLP_ENDPOINT"), "{stderr}");
}

#[cfg(not(feature = "otlp"))]
#[test]
fn an_otlp_endpoint_without_the_feature_stops_the_start() {
    let (code, stderr) = refused_start(&[("TIANJI_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TIANJI_OTLP_ENDPOINT") && stderr.contains("`otlp` feature"), "{stderr}");
}

/// A stand-in OTLP/HTTP collector: counts the POSTs to `/v1/traces`.
#[cfg(feature = "otlp")]
#[actix_web::test]
async fn spans_are_exported_to_the_configured_collector() {
    use actix_web::{web, App, HttpResponse, HttpServer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&posts);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = HttpServer::new(move || {
        let counted = Arc::clone(&counted);
        App::new().route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                let counted = Arc::clone(&counted);
                async move {
                    assert!(!body.is_empty(), "an export carries spans");
                    counted.fetch_add(1, Ordering::SeqCst);
                    HttpResponse::Ok().content_type("application/x-protobuf").finish()
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(collector);

    let database = TestDatabase::create(Backend::Sqlite).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    // Request spans are INFO; the exporter sends every 100 ms instead of every 5 s.
    let settings =
        [("TIANJI_OTLP_ENDPOINT", endpoint.as_str()), ("RUST_LOG", "info"), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let server = ServerProcess::start("tracing-otlp", &database.url, &settings);
    let response = reqwest::get(format!("{}/healthz", server.address)).await.unwrap();
    assert_eq!(response.status(), 200);
    let exported =
        crate::helpers::eventually(Duration::from_secs(10), || async { posts.load(Ordering::SeqCst) > 0 }).await;
    assert!(exported, "the request's span reaches the collector");
}
