//! Order events: every status log row has its event, written in the same transaction; payments
//! kept for refund are events too and are listed for admins; the relay publishes every event
//! to the Redis Stream at least once, with the fields the contract names, even when the
//! process is killed mid-publish.

use crate::helpers::{eventually, spawn_with, status_and_json, AppOptions, Backend, TestApp, TestDatabase};
use crate::helpers::{redis_url, JWT_SECRET, PAYMENT_SECRET};
use crate::process::ServerProcess;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tianji::actors::relay::{Relay, RelaySettings};
use tianji::domain::clock::SystemClock;
use tianji::domain::{Cents, OrderId, UserId};
use tianji::http::auth::{JwtKeys, Role};
use tianji::http::payments::PaymentKey;
use tianji::persistence::outbox::EventClaim;
use tianji::persistence::redis::events::EventStream;
use tianji::persistence::{Change, DynStore, Payment, PaymentStatus};

/// A stream key of the test's own, so tests never read each other's events.
fn stream_key(name: &str) -> String {
    format!("tianji:test:events:{name}:{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// Per order, the kinds of its events other than `refund_required` are its status log rows in
/// order: `placed` for the first row, then the target status of each step.
pub async fn assert_events_match_log(db: &AnyPool, context: &str) {
    let mut expected: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let log = sqlx::query("SELECT order_id, from_status, to_status FROM order_status_log ORDER BY id")
        .fetch_all(db)
        .await
        .expect("status log");
    for row in &log {
        let from: Option<String> = row.get("from_status");
        let kind = if from.is_none() { "placed".to_owned() } else { row.get::<String, _>("to_status") };
        expected.entry(row.get("order_id")).or_default().push(kind);
    }
    let mut actual: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let events = sqlx::query("SELECT order_id, kind FROM order_event WHERE kind <> 'refund_required' ORDER BY id")
        .fetch_all(db)
        .await
        .expect("order events");
    for row in &events {
        actual.entry(row.get("order_id")).or_default().push(row.get("kind"));
    }
    assert_eq!(events.len(), log.len(), "{context}: {} events for {} status log rows", events.len(), log.len());
    for (order_id, kinds) in &expected {
        assert_eq!(actual.get(order_id), Some(kinds), "{context}: events of order {order_id} against its log");
    }
    assert_eq!(actual.len(), expected.len(), "{context}: events of orders with no status log");
}

/// An `order_event` row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventRow {
    kind: String,
    order_id: i64,
    body: String,
    published: bool,
}

async fn event_rows(db: &AnyPool) -> BTreeMap<i64, EventRow> {
    sqlx::query("SELECT id, order_id, kind, body, published_at FROM order_event")
        .fetch_all(db)
        .await
        .expect("order events")
        .iter()
        .map(|row| {
            let published_at: Option<i64> = row.get("published_at");
            let event = EventRow {
                kind: row.get("kind"),
                order_id: row.get("order_id"),
                body: row.get("body"),
                published: published_at.is_some(),
            };
            (row.get::<i64, _>("id"), event)
        })
        .collect()
}

/// A stream entry: exactly the four fields of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    event_id: i64,
    kind: String,
    order_id: i64,
    body: String,
}

/// Every entry of `key`, oldest first, read in pages.
async fn stream_entries(key: &str) -> Vec<Entry> {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
    let mut entries = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut redis)
            .await
            .expect("XRANGE");
        let Some((last_id, _)) = page.last() else { return entries };
        start = format!("({last_id}");
        for (id, fields) in &page {
            let pairs: HashMap<&str, &str> =
                fields.chunks(2).map(|pair| (pair[0].as_str(), pair[1].as_str())).collect();
            let names: HashSet<&str> = pairs.keys().copied().collect();
            assert_eq!(names, HashSet::from(["event_id", "kind", "order_id", "body"]), "entry {id}: {fields:?}");
            assert_eq!(fields.len(), 8, "entry {id} repeats a field: {fields:?}");
            entries.push(Entry {
                event_id: pairs["event_id"].parse().expect("event_id is a number"),
                kind: pairs["kind"].to_owned(),
                order_id: pairs["order_id"].parse().expect("order_id is a number"),
                body: pairs["body"].to_owned(),
            });
        }
    }
}

async fn delete_stream(key: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
    let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut redis).await.expect("DEL");
}

/// The stream holds every row (by `event_id`) and nothing else, each entry with exactly its
/// row's fields; returns how many entries are duplicates of an earlier one.
fn assert_stream_holds(entries: &[Entry], rows: &BTreeMap<i64, EventRow>, context: &str) -> usize {
    for entry in entries {
        let row = rows.get(&entry.event_id).unwrap_or_else(|| panic!("{context}: {entry:?} is no stored event"));
        let stored = (&row.kind, row.order_id, &row.body);
        assert_eq!((&entry.kind, entry.order_id, &entry.body), stored, "{context}: event {}", entry.event_id);
    }
    let published: HashSet<i64> = entries.iter().map(|entry| entry.event_id).collect();
    let missing: Vec<&i64> = rows.keys().filter(|id| !published.contains(id)).collect();
    assert!(missing.is_empty(), "{context}: {} events never published: {missing:?}", missing.len());
    entries.len() - published.len()
}

/// Waits until every stored event is marked published; the rows then.
async fn all_published(db: &AnyPool, context: &str) -> BTreeMap<i64, EventRow> {
    let published =
        eventually(Duration::from_secs(20), || async { event_rows(db).await.values().all(|event| event.published) })
            .await;
    assert!(published, "{context}: events still unpublished after 20 s");
    event_rows(db).await
}

async fn admin_payments(app: &TestApp, query: &str) -> (u16, Value) {
    let path = format!("/v1/admin/payments{query}");
    app.call(reqwest::Method::GET, &path, &app.admin_token(), Value::Null).await
}

/// Every page of payments in `status`, `limit` per page; the trade numbers in page order.
async fn every_page(app: &TestApp, status: &str, limit: u32) -> Vec<String> {
    let mut trade_nos = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let query = match &cursor {
            Some(cursor) => format!("?status={status}&limit={limit}&cursor={cursor}"),
            None => format!("?status={status}&limit={limit}"),
        };
        let (code, page) = admin_payments(app, &query).await;
        assert_eq!(code, 200, "{query}: {page}");
        let payments = page["payments"].as_array().expect("payments");
        assert!(payments.len() <= limit as usize);
        for payment in payments {
            assert_eq!(payment["status"], status, "{payment}");
            assert_eq!(payment["order_id_str"], payment["order_id"].to_string(), "{payment}");
            trade_nos.push(payment["out_trade_no"].as_str().expect("out_trade_no").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return trade_nos,
        }
    }
    panic!("more than 100 pages of {status} payments");
}

/// A whole life of orders on one node with Redis: place, pay, finish, refund; place, cancel;
/// a callback after close and one for a paid order, both kept for refund.
async fn lifecycle_events(backend: Backend) {
    let key = stream_key("lifecycle");
    let mut options = AppOptions::new(backend);
    options.redis_url = Some(redis_url());
    options.extra.push(("TIANJI_EVENTS_STREAM", key.clone()));
    let app = spawn_with(options).await;
    let admin = app.admin_token();
    let sku_id = app.create_sku("Course", 1_000, 10).await;

    let (refunded, pay_cents) = app.placed(7, sku_id, 1).await;
    assert_eq!(app.pay(refunded, "t-refunded", pay_cents).await.status(), 200);
    assert_eq!(app.order_action(&admin, refunded, "finish").await.status(), 200);
    assert_eq!(app.order_action(&admin, refunded, "refund").await.status(), 200);
    let (cancelled, _) = app.placed(7, sku_id, 1).await;
    assert_eq!(app.order_action(&app.user_token(7), cancelled, "cancel").await.status(), 200);
    let (late, pay_cents) = app.placed(8, sku_id, 2).await;
    assert_eq!(app.order_action(&app.user_token(8), late, "cancel").await.status(), 200);
    let (status, body) = status_and_json(app.pay(late, "t-late", pay_cents).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("order_closed")), "{body}");
    let (twice, pay_cents) = app.placed(9, sku_id, 1).await;
    assert_eq!(app.pay(twice, "t-first", pay_cents).await.status(), 200);
    let (status, body) = status_and_json(app.pay(twice, "t-second", pay_cents).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("already_paid")), "{body}");

    // The outbox, in the database, against the status log.
    assert_events_match_log(&app.db, "lifecycle").await;
    let rows = event_rows(&app.db).await;
    let kinds = |order_id: i64| -> Vec<&str> {
        rows.values().filter(|e| e.order_id == order_id).map(|e| e.kind.as_str()).collect()
    };
    assert_eq!(kinds(refunded), ["placed", "paid", "finished", "refunded"]);
    assert_eq!(kinds(cancelled), ["placed", "closed"]);
    assert_eq!(kinds(late), ["placed", "closed", "refund_required"]);
    assert_eq!(kinds(twice), ["placed", "paid", "refund_required"]);
    let kept: Vec<Value> = rows
        .values()
        .filter(|e| e.kind == "refund_required")
        .map(|e| serde_json::from_str(&e.body).expect("a JSON body"))
        .collect();
    assert_eq!(kept.len(), 2);
    assert_eq!((kept[0]["order_id"].as_i64(), kept[0]["out_trade_no"].as_str()), (Some(late), Some("t-late")));
    assert_eq!((kept[1]["order_id"].as_i64(), kept[1]["out_trade_no"].as_str()), (Some(twice), Some("t-second")));
    let placed: Value = serde_json::from_str(&rows.values().next().expect("an event").body).expect("JSON");
    assert_eq!(
        placed,
        json!({"order_id": refunded, "user_id": 7, "to": "pending_payment", "version": 0,
        "pay_cents": 1_000, "at_ms": placed["at_ms"]})
    );
    let finished = rows.values().find(|e| e.order_id == refunded && e.kind == "finished").expect("finished");
    let finished: Value = serde_json::from_str(&finished.body).expect("JSON");
    assert_eq!((finished["from"].as_str(), finished["to"].as_str()), (Some("paid"), Some("finished")));
    assert_eq!(finished["version"], 2, "the order's version after the step");

    // The admin list.
    let mut kept_trade_nos = every_page(&app, "refund_required", 1).await;
    assert_eq!(kept_trade_nos.len(), 2, "{kept_trade_nos:?}");
    kept_trade_nos.sort();
    assert_eq!(kept_trade_nos, ["t-late", "t-second"]);
    assert_eq!(every_page(&app, "refunded", 20).await, ["t-refunded"]);
    assert_eq!(every_page(&app, "paid", 20).await, ["t-first"]);
    let (code, page) = admin_payments(&app, "?status=refund_required").await;
    assert_eq!((code, page["next_cursor"].is_null()), (200, true), "{page}");
    let first = &page["payments"][0];
    assert_eq!((first["amount_cents"].as_i64(), first["channel"].as_str()), (Some(1_000), Some("test")), "{page}");
    for (query, status, code) in [
        ("?status=bogus", 422, "invalid_status"),
        ("?status=", 422, "invalid_status"),
        ("", 422, "invalid_query"),
        ("?status=paid&limit=0", 422, "invalid_limit"),
        ("?status=paid&limit=101", 422, "invalid_limit"),
        ("?status=paid&limit=x", 422, "invalid_query"),
        ("?status=paid&cursor=bm9wZQ", 400, "invalid_cursor"),
        ("?status=paid&colour=blue", 422, "invalid_query"),
    ] {
        let (answered, body) = admin_payments(&app, query).await;
        assert_eq!((answered, body["code"].as_str()), (status, Some(code)), "{query}: {body}");
    }
    let path = "/v1/admin/payments?status=paid";
    let (answered, _) = app.call(reqwest::Method::GET, path, &app.user_token(7), Value::Null).await;
    assert_eq!(answered, 403);
    let anonymous = app.client.get(app.url(path)).send().await.expect("request");
    assert_eq!(anonymous.status(), 401);

    // The relay: every event in the stream, with its row's fields, in id order.
    let rows = all_published(&app.db, "lifecycle").await;
    let entries = stream_entries(&key).await;
    let duplicates = assert_stream_holds(&entries, &rows, "lifecycle");
    assert_eq!(duplicates, 0, "no crash, no retry: each event once");
    let ids: Vec<i64> = entries.iter().map(|entry| entry.event_id).collect();
    assert_eq!(ids, rows.keys().copied().collect::<Vec<_>>(), "published oldest first");
    delete_stream(&key).await;
}

crate::helpers::on_both_backends!(lifecycle_events);

/// Redis down: the relay keeps every event and publishes them once Redis is reachable. (Here
/// "down" is an address nothing listens on; the relay's own reconnect is what is tested.)
#[actix_web::test]
async fn events_wait_in_the_outbox_while_redis_is_unreachable() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let key = stream_key("unreachable");
    let unreachable = [("TIANJI_REDIS_URL", "redis://127.0.0.1:1"), ("TIANJI_EVENTS_STREAM", key.as_str())];
    let server = ServerProcess::start("events-unreachable", &database.url, &unreachable);
    let keys = JwtKeys::new(JWT_SECRET);
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let http = reqwest::Client::new();
    let sku = http
        .post(format!("{}/v1/admin/skus", server.address))
        .bearer_auth(&admin)
        .json(&json!({"name": "Course", "price_cents": 500, "stock": 5}))
        .send()
        .await
        .expect("create sku");
    let sku_id = sku.json::<Value>().await.expect("json")["sku_id"].as_i64().expect("sku_id");
    let token = keys.mint(UserId::new(3), Role::User, Duration::from_secs(600));
    for n in 0..3 {
        let placed = http
            .post(format!("{}/v1/orders", server.address))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("u{n}"))
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
            .send()
            .await
            .expect("place");
        assert_eq!(placed.status(), 201);
    }
    let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&database.url).await.expect("pool");
    let rows = event_rows(&db).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.values().all(|event| !event.published), "nothing is marked while Redis cannot take it");
    // SIGTERM: the drain fails within its deadline and the process still stops cleanly.
    server.terminate();
    assert!(event_rows(&db).await.values().all(|event| !event.published));

    let reachable = [("TIANJI_REDIS_URL", redis_url()), ("TIANJI_EVENTS_STREAM", key.clone())];
    let reachable: Vec<(&str, &str)> = reachable.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = ServerProcess::start("events-unreachable", &database.url, &reachable);
    let rows = all_published(&db, "after redis came back").await;
    let duplicates = assert_stream_holds(&stream_entries(&key).await, &rows, "after redis came back");
    assert_eq!(duplicates, 0);
    server.kill();
    delete_stream(&key).await;
    db.close().await;
}

/// What the clients had acknowledged: the events each must have.
#[derive(Debug, Default)]
struct Acknowledged {
    /// `(order_id, kind)` of every acknowledged placement and step.
    steps: Vec<(i64, &'static str)>,
    /// `(order_id, out_trade_no)` of every callback answered 409 `order_closed`.
    kept: Vec<(i64, String)>,
}

struct Load {
    http: reqwest::Client,
    address: String,
    keys: JwtKeys,
    payments: PaymentKey,
    skus: Vec<i64>,
    acknowledged: Mutex<Acknowledged>,
}

impl Load {
    fn ack(&self, order_id: i64, kind: &'static str) {
        self.acknowledged.lock().unwrap().steps.push((order_id, kind));
    }

    async fn pay(&self, order_id: i64, out_trade_no: &str, amount_cents: &Value) -> Option<(u16, Value)> {
        let body = json!({"order_id": order_id, "out_trade_no": out_trade_no, "amount_cents": amount_cents,
            "channel": "test"})
        .to_string();
        let response = self
            .http
            .post(format!("{}/v1/payments/callback", self.address))
            .header("content-type", "application/json")
            .header("X-Tianji-Signature", self.payments.sign(body.as_bytes()))
            .body(body)
            .send()
            .await
            .ok()?;
        read(response).await
    }

    /// One buyer: places orders and pays, cancels, or cancels and then pays late; stops at the
    /// first transport error (the server was killed).
    async fn buyer(self: Arc<Self>, worker: usize, round: usize) {
        let user = 2_000 + worker as i64;
        let token = self.keys.mint(UserId::new(user), Role::User, Duration::from_secs(600));
        for attempt in 0..400 {
            let (sku_id, choice) = {
                let mut rng = rand::thread_rng();
                (self.skus[rng.gen_range(0..self.skus.len())], rng.gen_range(0..100))
            };
            let placed = self
                .http
                .post(format!("{}/v1/orders", self.address))
                .bearer_auth(&token)
                .header("Idempotency-Key", format!("r{round}-w{worker}-{attempt}"))
                .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
                .send()
                .await;
            let Ok(placed) = placed else { return };
            let Some((status, order)) = read(placed).await else { return };
            if status != 201 {
                assert_eq!(status, 503, "placement answered {status} {order}");
                continue;
            }
            let order_id = order["order_id"].as_i64().expect("order id");
            self.ack(order_id, "placed");
            let trade_no = format!("e-{order_id}");
            // A 503 leaves the step's outcome unknown: nothing is acknowledged, the buyer moves on.
            if choice < 45 {
                let Some((status, body)) = self.pay(order_id, &trade_no, &order["pay_cents"]).await else { return };
                assert!(matches!(status, 200 | 503), "payment of {order_id}: {status} {body}");
                if status == 200 {
                    self.ack(order_id, "paid");
                }
                continue;
            }
            if choice >= 75 {
                continue;
            }
            let cancel = self.http.post(format!("{}/v1/orders/{order_id}/cancel", self.address)).bearer_auth(&token);
            let Ok(cancelled) = cancel.send().await else { return };
            let Some((status, body)) = read(cancelled).await else { return };
            assert!(matches!(status, 200 | 503), "cancel of {order_id}: {status} {body}");
            if status != 200 {
                continue;
            }
            self.ack(order_id, "closed");
            if choice >= 60 {
                let Some((status, body)) = self.pay(order_id, &trade_no, &order["pay_cents"]).await else { return };
                if status == 503 {
                    continue;
                }
                assert_eq!((status, body["code"].as_str()), (409, Some("order_closed")), "late payment: {body}");
                self.acknowledged.lock().unwrap().kept.push((order_id, trade_no));
            }
        }
    }
}

async fn read(response: reqwest::Response) -> Option<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

const KILL_ROUNDS: usize = 4;
const KILL_WORKERS: usize = 12;

/// The real binary under a load of orders and payments, killed with SIGKILL at random moments
/// and started again, then stopped with SIGTERM: every event reaches the stream, none of an
/// acknowledged step is missing, and every duplicate repeats its event's fields exactly.
async fn killed_mid_publish(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let key = stream_key("killed");
    let url = redis_url();
    let settings = [("TIANJI_REDIS_URL", url.as_str()), ("TIANJI_EVENTS_STREAM", key.as_str())];
    let keys = JwtKeys::new(JWT_SECRET);
    let mut server = ServerProcess::start("events-killed", &database.url, &settings);
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let mut skus = Vec::new();
    for n in 0..3 {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/admin/skus", server.address))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("sku {n}"), "price_cents": 700 + n, "stock": 100_000}))
            .send()
            .await
            .expect("create sku");
        assert_eq!(response.status(), 201);
        skus.push(response.json::<Value>().await.expect("json")["sku_id"].as_i64().expect("sku_id"));
    }
    let db = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&database.url).await.expect("pool");
    let mut acknowledged = Acknowledged::default();
    for round in 1..=KILL_ROUNDS + 1 {
        let load = Arc::new(Load {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
            address: server.address.clone(),
            keys: JwtKeys::new(JWT_SECRET),
            payments: PaymentKey::new(PAYMENT_SECRET),
            skus: skus.clone(),
            acknowledged: Mutex::new(std::mem::take(&mut acknowledged)),
        });
        let steps_before = load.acknowledged.lock().unwrap().steps.len();
        let buyers: Vec<_> =
            (0..KILL_WORKERS).map(|w| actix_web::rt::spawn(Arc::clone(&load).buyer(w, round))).collect();
        let started = eventually(Duration::from_secs(30), || async {
            load.acknowledged.lock().unwrap().steps.len() > steps_before
        })
        .await;
        assert!(started, "round {round}: nothing acknowledged within 30 s");
        let stop_after = Duration::from_millis(rand::thread_rng().gen_range(50..800));
        tokio::time::sleep(stop_after).await;
        let last = round == KILL_ROUNDS + 1;
        if last {
            // The polite way: what the relay has not published yet goes out before the exit.
            server.terminate();
        } else {
            server.kill();
        }
        for buyer in buyers {
            buyer.await.expect("a buyer panicked");
        }
        acknowledged = std::mem::take(&mut *load.acknowledged.lock().unwrap());
        let context = format!("round {round}");
        assert_events_match_log(&db, &context).await;
        if last {
            let rows = event_rows(&db).await;
            let left = rows.values().filter(|event| !event.published).count();
            assert_eq!(left, 0, "{context}: {left} events left unpublished by the SIGTERM drain");
            break;
        }
        server = ServerProcess::start("events-killed", &database.url, &settings);
        eprintln!("{context}: stopped {stop_after:?} after the round's first acknowledgement");
    }

    let rows = event_rows(&db).await;
    let entries = stream_entries(&key).await;
    let duplicates = assert_stream_holds(&entries, &rows, "at the end");
    let stored: HashSet<(i64, &str)> = rows.values().map(|event| (event.order_id, event.kind.as_str())).collect();
    for (order_id, kind) in &acknowledged.steps {
        assert!(stored.contains(&(*order_id, *kind)), "acknowledged {kind} of order {order_id} has no event");
    }
    for (order_id, trade_no) in &acknowledged.kept {
        let found = rows.values().any(|event| {
            event.kind == "refund_required" && event.order_id == *order_id && event.body.contains(trade_no.as_str())
        });
        assert!(found, "payment {trade_no} kept for refund has no event");
    }
    eprintln!(
        "{} events ({} acknowledged steps, {} payments kept for refund) in {} stream entries: {duplicates} duplicates",
        rows.len(),
        acknowledged.steps.len(),
        acknowledged.kept.len(),
        entries.len()
    );
    delete_stream(&key).await;
    db.close().await;
    // What the kills left agrees with itself: counters, leases, and an event per log row.
    crate::reconcile::assert_reconciles_clean(&database.url, None).await;
}

#[actix_web::test]
async fn killed_mid_publish_every_event_reaches_the_stream_on_mariadb() {
    killed_mid_publish(Backend::MySql).await;
}

#[actix_web::test]
async fn killed_mid_publish_every_event_reaches_the_stream_on_sqlite() {
    killed_mid_publish(Backend::Sqlite).await;
}

/// `n` payments kept for refund, committed at `at_ms` in batches of 100: one event each.
async fn commit_kept_payments(store: &DynStore, n: usize, at_ms: i64) {
    let kept = |k: usize| Change {
        payment: Some(Payment {
            out_trade_no: format!("kept-{at_ms}-{k}"),
            order_id: OrderId::new(1 + k as i64),
            amount_cents: Cents::new(100),
            channel: "test".into(),
            status: PaymentStatus::RefundRequired,
        }),
        ..Change::default()
    };
    let changes: Vec<Change> = (0..n).map(kept).collect();
    for batch in changes.chunks(100) {
        let report = store.commit(batch, at_ms).await.expect("commit");
        assert!(report.outcomes.iter().all(Result::is_ok), "{:?}", report.outcomes);
    }
}

async fn connect(url: &str) -> DynStore {
    tianji::persistence::connect(url, true, Duration::from_secs(5)).await.expect("store")
}

/// Two nodes' relays on one MariaDB database, racing over the same backlog in small rounds:
/// their claims never overlap, so the stream holds every event exactly once, and both worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_mariadb_publish_each_event_once() {
    const EVENTS: usize = 2_000;
    let database = TestDatabase::create(Backend::MySql).await;
    let (store_a, store_b) = (connect(&database.url).await, connect(&database.url).await);
    commit_kept_payments(&store_a, EVENTS, 1_000).await;
    let key = stream_key("two-relays");
    let settings = RelaySettings { stream_key: key.clone(), batch_size_max: 16, ..RelaySettings::default() };
    let relay = |store: &DynStore| {
        let stream = EventStream::open(&redis_url(), &key, settings.stream_entries_max).expect("stream");
        let clock = Arc::new(SystemClock);
        Relay::start(Arc::clone(store), stream, clock, &settings, Duration::from_secs(5), Arc::default())
    };
    let (relay_a, relay_b) = (relay(&store_a), relay(&store_b));
    let done = eventually(Duration::from_secs(30), || async {
        store_a.unpublished_events(1).await.expect("unpublished").is_empty()
    });
    assert!(done.await, "events still unpublished after 30 s");
    let entries = stream_entries(&key).await;
    delete_stream(&key).await;
    let ids: HashSet<i64> = entries.iter().map(|entry| entry.event_id).collect();
    assert_eq!((entries.len(), ids.len()), (EVENTS, EVENTS), "every event once, none twice");
    assert_eq!(ids, (1..=EVENTS as i64).collect::<HashSet<_>>());
    let published = |relay: &Relay| relay.stats().published.load(Ordering::Relaxed);
    let (a, b) = (published(&relay_a), published(&relay_b));
    assert_eq!(a + b, EVENTS as u64, "published: {a} + {b}");
    assert!(a > 0 && b > 0, "both relays published: {a} + {b}");
}

/// A claim holds its rows: on MariaDB a second claim takes only the others and a commit of new
/// events does not wait for it; dropped, it marks nothing; marked, its rows are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_its_rows_until_marked_on_mariadb() {
    let database = TestDatabase::create(Backend::MySql).await;
    let store = connect(&database.url).await;
    commit_kept_payments(&store, 5, 1_000).await;
    let first = store.claim_unpublished(3).await.expect("claim");
    let ids = |claim: &dyn EventClaim| claim.events().iter().map(|event| event.id).collect::<Vec<_>>();
    assert_eq!(ids(&*first), vec![1, 2, 3]);
    let second = store.claim_unpublished(10).await.expect("claim");
    assert_eq!(ids(&*second), vec![4, 5], "the locked rows are skipped");
    // No gap lock: the write pipeline's insert of a new event does not wait for the claims.
    let inserted = tokio::time::timeout(Duration::from_secs(2), commit_kept_payments(&store, 1, 2_000)).await;
    assert!(inserted.is_ok(), "a commit waited on a claim");
    drop(second);
    assert_eq!(first.mark_published(3_000).await.expect("mark"), 3);
    let left: Vec<i64> = store.unpublished_events(10).await.expect("unpublished").iter().map(|e| e.id).collect();
    assert_eq!(left, vec![4, 5, 6], "the dropped claim marked nothing");
}

/// Pruning deletes published events older than the cutoff, a bounded chunk at a time, oldest
/// first, and never an unpublished one however old (explicit timestamps, no clock).
async fn prune_keeps_unpublished_and_recent_events(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = connect(&database.url).await;
    commit_kept_payments(&store, 5, 1_000).await;
    let claim = store.claim_unpublished(3).await.expect("claim");
    assert_eq!(claim.mark_published(1_000).await.expect("mark"), 3);
    assert_eq!(store.mark_published(&[4], 9_000).await.expect("mark"), 1);
    assert_eq!(store.prune_published(5_000, 2).await.expect("prune"), 2, "{backend:?}: a chunk of 2");
    assert_eq!(store.prune_published(5_000, 2).await.expect("prune"), 1, "{backend:?}: the third");
    assert_eq!(store.prune_published(5_000, 2).await.expect("prune"), 0, "{backend:?}: event 4 is recent");
    assert_eq!(store.prune_published(i64::MAX, 10).await.expect("prune"), 1, "{backend:?}: event 4");
    let pool = AnyPool::connect(&database.url).await.expect("pool");
    let rows = event_rows(&pool).await;
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![5], "{backend:?}: the unpublished event stays");
    assert!(!rows[&5].published);
    // Ids are never reused after a prune.
    commit_kept_payments(&store, 1, 10_000).await;
    let left: Vec<i64> = store.unpublished_events(10).await.expect("unpublished").iter().map(|e| e.id).collect();
    assert_eq!(left, vec![5, 6], "{backend:?}");
}

#[tokio::test]
async fn prune_keeps_unpublished_and_recent_events_on_mariadb() {
    prune_keeps_unpublished_and_recent_events(Backend::MySql).await;
}

#[tokio::test]
async fn prune_keeps_unpublished_and_recent_events_on_sqlite() {
    prune_keeps_unpublished_and_recent_events(Backend::Sqlite).await;
}
