//! `GET /metrics`: Prometheus text format, no token, and counters that move with the requests
//! that should move them (by route pattern and status, by placement outcome, the journal).
//!
//! Each app has its own recorder, so a story's app counts only the story's own requests and
//! every count is asserted exactly: a whole metric's nonzero series against the list the
//! story's requests make.

use crate::helpers::{spawn_app, spawn_with, status_and_json, AppOptions, Backend, TestApp};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// One sample line of a scrape: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape of `/metrics`.
#[derive(Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Metric names with a `# TYPE` line, with their type.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("a TYPE line: {line}"));
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Scrape { samples, types }
    }

    /// Every series name in the scrape (`x_bucket`, `x_sum`, `x_count` for a histogram `x`).
    pub fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }

    /// The value of the one series of `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let found: Vec<f64> =
            self.samples.iter().filter(|s| s.name == name && s.labels == wanted).map(|s| s.value).collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears {} times", found.len());
        found.first().copied()
    }

    /// The label names the series of `name` carry.
    pub fn label_names(&self, name: &str) -> BTreeSet<&str> {
        self.samples.iter().filter(|s| s.name == name).flat_map(|s| s.labels.keys().map(String::as_str)).collect()
    }
}

/// Parses `name{a="x",b="y"} 1.5` (label values may hold `{`, `}`, `,` and escaped quotes).
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("a sample line: {line}"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices();
        let mut key = String::new();
        let end = loop {
            let (index, c) = chars.next().unwrap_or_else(|| panic!("unclosed labels: {line}"));
            match c {
                '}' => break index,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "a quoted value: {line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().unwrap_or_else(|| panic!("unclosed value: {line}")).1 {
                            '\\' => value.push(chars.next().expect("an escaped character").1),
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        };
        rest = &inside[end + 1..];
    }
    let value = rest.trim().parse().unwrap_or_else(|e| panic!("a number in {line}: {e}"));
    Sample { name, labels, value }
}

/// Scrapes `app` without a token, asserting the 200 and the text format.
pub async fn scrape(app: &TestApp) -> Scrape {
    let response = app.client.get(app.url("/metrics")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Scrape::parse(&response.text().await.expect("body"))
}

fn requests(scrape: &Scrape, method: &str, route: &str, status: &str) -> f64 {
    let labels = [("method", method), ("route", route), ("status", status)];
    scrape.value("tianji_http_requests_total", &labels).unwrap_or(0.0)
}

/// The series of `name` whose value is not 0, by their label values (in label-name order),
/// e.g. `["POST", "/v1/orders", "201"] => 1`.
fn nonzero(scrape: &Scrape, name: &str) -> BTreeMap<Vec<String>, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name && s.value != 0.0)
        .map(|s| (s.labels.values().cloned().collect(), s.value))
        .collect()
}

/// `expected` as `nonzero` answers it.
fn series<const N: usize>(expected: &[([&str; N], f64)]) -> BTreeMap<Vec<String>, f64> {
    expected.iter().map(|(labels, value)| (labels.iter().map(|l| (*l).to_owned()).collect(), *value)).collect()
}

/// The value of an unlabelled series or a single-label one, which must be registered.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or_else(|| panic!("registered at start: {name} {labels:?}"))
}

#[test]
fn a_scrape_line_with_braces_in_a_label_value_parses() {
    let sample = parse_sample(r#"tianji_http_requests_total{route="/v1/orders/{order_id}",status="2\"0"} 3"#);
    assert_eq!(sample.name, "tianji_http_requests_total");
    assert_eq!(sample.labels["route"], "/v1/orders/{order_id}");
    assert_eq!(sample.labels["status"], "2\"0");
    assert_eq!(sample.value, 3.0);
    assert_eq!(parse_sample("tianji_journal_queue_depth 0").labels.len(), 0);
}

#[actix_web::test]
async fn a_201_and_a_sold_out_409_move_their_route_status_and_outcome_counters() {
    let app = spawn_app(Backend::Sqlite).await;
    let sku_id = app.create_sku("metered", 1_000, 1).await;
    let before = scrape(&app).await;
    assert_eq!(before.types.get("tianji_placements_total").map(String::as_str), Some("counter"));
    assert_eq!(before.types.get("tianji_journal_commit_seconds").map(String::as_str), Some("histogram"));
    assert!(nonzero(&before, "tianji_placements_total").is_empty(), "no placement yet");
    assert_eq!(value(&before, "tianji_actor_activations_total", &[("kind", "user")]), 0.0);
    let commits_before = value(&before, "tianji_journal_batch_size_count", &[]);

    let items = json!([{"sku_id": sku_id, "quantity": 1}]);
    let (status, order) = status_and_json(app.place_order(7_001, "m-1", items.clone()).await).await;
    assert_eq!(status, 201, "{order}");
    let (status, sold_out) = status_and_json(app.place_order(7_002, "m-2", items).await).await;
    assert_eq!((status, sold_out["code"].as_str()), (409, Some("insufficient_stock")), "{sold_out}");
    let order_id = order["order_id"].as_i64().expect("order_id");
    let read = app.client.get(app.url(&format!("/v1/orders/{order_id}"))).bearer_auth(app.user_token(7_001));
    assert_eq!(read.send().await.expect("request").status(), 200);
    let missing = app.client.get(app.url("/v1/no-such-route")).send().await.expect("request");
    assert_eq!(missing.status(), 404);

    let after = scrape(&app).await;
    // Every request this app answered, and nothing else: the SKU's creation, the first scrape
    // (counted once answered, so the second is not in its own text), and the story's four.
    // The raw path is never a label: one series per route pattern.
    assert_eq!(
        nonzero(&after, "tianji_http_requests_total"),
        series(&[
            (["POST", "/v1/admin/skus", "201"], 1.0),
            (["GET", "/metrics", "200"], 1.0),
            (["POST", "/v1/orders", "201"], 1.0),
            (["POST", "/v1/orders", "409"], 1.0),
            (["GET", "/v1/orders/{order_id}", "200"], 1.0),
            (["GET", "unmatched", "404"], 1.0),
        ])
    );
    assert_eq!(
        nonzero(&after, "tianji_placements_total"),
        series(&[(["created"], 1.0), (["insufficient_stock"], 1.0)])
    );
    // Two buyers, each activated once (the order read goes to the database, not to an actor).
    assert_eq!(value(&after, "tianji_actor_activations_total", &[("kind", "user")]), 2.0);
    // The one accepted order is the one change the story sent to the write pipeline: one batch.
    assert_eq!(value(&after, "tianji_journal_batch_size_count", &[]), commits_before + 1.0);
    assert_eq!(value(&after, "tianji_journal_rejections_total", &[]), 0.0);
    assert!(nonzero(&after, "tianji_mailbox_rejections_total").is_empty());
}

#[actix_web::test]
async fn metrics_need_no_token_and_are_in_the_openapi_document() {
    let app = spawn_app(Backend::Sqlite).await;
    let scrape = scrape(&app).await;
    for name in ["tianji_build_info", "tianji_actor_activations_total", "tianji_journal_queue_depth"] {
        assert!(scrape.names().contains(name), "{name} in {:?}", scrape.names());
    }
    let (status, document) = status_and_json(app.client.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let operation = &document["paths"]["/metrics"]["get"];
    assert!(operation["security"].is_null(), "no token: {operation}");
    assert!(
        operation["responses"]["200"]["content"]["text/plain; version=0.0.4; charset=utf-8"].is_object(),
        "{operation}"
    );
}

#[actix_web::test]
async fn a_rate_limited_read_is_counted_by_class_and_as_a_429_of_its_route() {
    let options =
        AppOptions { extra: vec![("TIANJI_RATE_READS", "1/m,1".to_owned())], ..AppOptions::new(Backend::Sqlite) };
    let app = spawn_with(options).await;
    let before = scrape(&app).await;
    assert!(nonzero(&before, "tianji_rate_limited_total").is_empty(), "nothing refused yet");
    let read = || app.client.get(app.url("/v1/orders")).bearer_auth(app.user_token(7_003)).send();
    assert_eq!(read().await.expect("request").status(), 200);
    assert_eq!(read().await.expect("request").status(), 429);
    let after = scrape(&app).await;
    assert_eq!(nonzero(&after, "tianji_rate_limited_total"), series(&[(["reads", "rate_limited"], 1.0)]));
    assert_eq!(requests(&after, "GET", "/v1/orders", "200"), 1.0);
    assert_eq!(requests(&after, "GET", "/v1/orders", "429"), 1.0);
    assert_eq!(value(&after, "tianji_in_flight_refused_total", &[]), 0.0);
    // The scrapes themselves are never limited (no token, no bucket), and each is counted.
    for _ in 0..3 {
        scrape(&app).await;
    }
    assert_eq!(requests(&scrape(&app).await, "GET", "/metrics", "200"), 5.0);
}

/// The three series of the event relay: (published, failed rounds, oldest unpublished age).
fn relay(scrape: &Scrape) -> (f64, f64, f64) {
    (
        value(scrape, "tianji_events_published_total", &[]),
        value(scrape, "tianji_events_relay_failures_total", &[]),
        value(scrape, "tianji_events_oldest_unpublished_seconds", &[]),
    )
}

/// Scrapes `app` until `done` holds of the relay's series, for at most `RELAY_WAIT_MAX`.
async fn relay_until(app: &TestApp, what: &str, done: impl Fn((f64, f64, f64)) -> bool) -> (f64, f64, f64) {
    let deadline = std::time::Instant::now() + RELAY_WAIT_MAX;
    loop {
        let seen = relay(&scrape(app).await);
        if done(seen) {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {seen:?} after {RELAY_WAIT_MAX:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long a test waits for the relay's series to reach what it expects.
const RELAY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A stream key of the test's own.
fn stream_key(name: &str) -> String {
    format!("tianji:test:metrics:{name}:{}", hex::encode(rand::random::<[u8; 6]>()))
}

#[actix_web::test]
async fn the_event_relay_exports_what_it_published() {
    let key = stream_key("published");
    let mut options = AppOptions::new(Backend::MySql);
    options.redis_url = Some(crate::helpers::redis_url());
    options.extra.push(("TIANJI_EVENTS_STREAM", key.clone()));
    let app = spawn_with(options).await;
    assert_eq!(relay(&scrape(&app).await), (0.0, 0.0, 0.0), "nothing committed yet");
    let sku_id = app.create_sku("relayed", 1_000, 5).await;
    app.placed(7_004, sku_id, 1).await;
    app.placed(7_005, sku_id, 1).await;
    // Two orders placed: two `placed` events, each published once.
    let (_, failures, _) = relay_until(&app, "two events published", |(published, ..)| published >= 2.0).await;
    assert_eq!(failures, 0.0);
    assert_eq!(relay(&scrape(&app).await).0, 2.0, "each event published once");
    let client = redis::Client::open(crate::helpers::redis_url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
    let entries: i64 = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await.expect("XLEN");
    assert_eq!(entries, 2, "the counter counts what the stream holds");
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.expect("DEL");
}

#[actix_web::test]
async fn an_unreachable_stream_shows_as_failed_rounds_and_a_growing_backlog_age() {
    let mut options = AppOptions::new(Backend::Sqlite);
    // Nothing listens there: every append fails and the event stays unpublished.
    options.redis_url = Some("redis://127.0.0.1:1".to_owned());
    let app = spawn_with(options).await;
    let sku_id = app.create_sku("stuck", 1_000, 5).await;
    app.placed(7_006, sku_id, 1).await;
    let (published, failures, age) =
        relay_until(&app, "a failed round", |(_, failures, age)| failures >= 1.0 && age > 0.0).await;
    assert_eq!(published, 0.0, "nothing reaches an unreachable stream");
    let later = relay_until(&app, "an older backlog", |(_, _, later)| later > age).await;
    assert!(later.1 >= failures, "failed rounds only grow: {failures} -> {}", later.1);
}
