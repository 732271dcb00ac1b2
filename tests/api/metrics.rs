//! `GET /metrics`: Prometheus text format, no token, and counters that move with the requests
//! that should move them (by route pattern and status, by placement outcome, the journal).
//!
//! The recorder is one per process, so every app of this test binary counts into the same
//! series and other tests run at the same time: a story reads each counter before and after
//! its own requests and asserts that the counter moved by at least its own requests, and that
//! the series it must not touch did not appear from nothing.

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

fn placements(scrape: &Scrape, outcome: &str) -> f64 {
    scrape
        .value("tianji_placements_total", &[("outcome", outcome)])
        .unwrap_or_else(|| panic!("every outcome is registered at start: {outcome}"))
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
    let moved = |name: &str, a: f64, b: f64| assert!(b >= a + 1.0, "{name}: {a} -> {b}");
    for (method, route, status) in [
        ("POST", "/v1/orders", "201"),
        ("POST", "/v1/orders", "409"),
        ("GET", "/v1/orders/{order_id}", "200"),
        ("GET", "unmatched", "404"),
    ] {
        let name = format!("{method} {route} {status}");
        moved(&name, requests(&before, method, route, status), requests(&after, method, route, status));
    }
    // POST and GET of one pattern are two series; no GET of the list was made here.
    assert!(requests(&after, "GET", "/v1/orders", "201") == 0.0, "a 201 is never a GET's");
    moved("created", placements(&before, "created"), placements(&after, "created"));
    moved("insufficient_stock", placements(&before, "insufficient_stock"), placements(&after, "insufficient_stock"));
    let users =
        |scrape: &Scrape| scrape.value("tianji_actor_activations_total", &[("kind", "user")]).expect("registered");
    moved("user activations", users(&before), users(&after));
    let commits = |scrape: &Scrape| scrape.value("tianji_journal_batch_size_count", &[]).expect("registered");
    moved("journal commits", commits(&before), commits(&after));
    // The raw path is never a label: one series per route pattern.
    let raw = format!("/v1/orders/{order_id}");
    assert!(after.samples.iter().all(|s| s.labels.get("route") != Some(&raw)), "a raw path became a label");
    // Nothing counts below zero.
    for sample in &after.samples {
        assert!(sample.value >= 0.0, "{sample:?}");
    }
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
    let limited = [("class", "reads"), ("reason", "rate_limited")];
    let before = scrape(&app).await;
    let read = || app.client.get(app.url("/v1/orders")).bearer_auth(app.user_token(7_003)).send();
    assert_eq!(read().await.expect("request").status(), 200);
    assert_eq!(read().await.expect("request").status(), 429);
    let after = scrape(&app).await;
    let refused = |scrape: &Scrape| scrape.value("tianji_rate_limited_total", &limited).expect("registered");
    assert!(refused(&after) >= refused(&before) + 1.0, "{} -> {}", refused(&before), refused(&after));
    let answered = |scrape: &Scrape| requests(scrape, "GET", "/v1/orders", "429");
    assert!(answered(&after) >= answered(&before) + 1.0);
    // The scrapes themselves are never limited: no token, no bucket.
    for _ in 0..3 {
        scrape(&app).await;
    }
}
