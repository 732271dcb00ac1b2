//! Hostile rates: a user far over the per-user rate is refused with 429 and a `Retry-After`
//! while other users at a normal rate are all served, on every limited route. The exact bucket
//! arithmetic (and the sweep of idle users) is unit-tested with a fake clock in
//! `src/http/limits.rs`, and the global cap on requests in flight with a gated handler in
//! `src/http/in_flight.rs` (the server reads a body before that layer, so a slow body cannot
//! hold a place); here the real server, over HTTP.

use crate::helpers::{spawn_with, status_and_json, AppOptions, Backend, TestApp};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The order rate of these tests: 10 a second, 10 at once.
const RATE_PER_SEC: u32 = 10;
const BURST: u32 = 10;

struct Reply {
    status: u16,
    retry_after: Option<String>,
    code: Option<String>,
    latency: Duration,
}

/// Sends `count` orders for `user_id`, one every `period` on a fixed schedule from `start`
/// (open loop: a slow reply does not delay the next send).
async fn orders_at(
    app: &TestApp,
    user_id: i64,
    sku_id: i64,
    start: Instant,
    period: Duration,
    count: u32,
) -> Vec<Reply> {
    let token = app.user_token(user_id);
    let sends = (0..count).map(|n| {
        let token = token.clone();
        async move {
            tokio::time::sleep_until(start + period * n).await;
            let sent = Instant::now();
            let response = app
                .client
                .post(app.url("/v1/orders"))
                .bearer_auth(token)
                .header("Idempotency-Key", format!("u{user_id}-{n}"))
                .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
                .send()
                .await
                .expect("request");
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let (status, body) = status_and_json(response).await;
            let code = body["code"].as_str().map(str::to_owned);
            Reply { status, retry_after, code, latency: sent.elapsed() }
        }
    });
    futures::future::join_all(sends).await
}

fn percentile(replies: &[Reply], percent: usize) -> Duration {
    let mut latencies: Vec<Duration> = replies.iter().map(|r| r.latency).collect();
    latencies.sort();
    latencies[(latencies.len() * percent).div_ceil(100) - 1]
}

fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

#[actix_web::test]
async fn a_user_at_ten_times_the_rate_gets_429s_and_others_are_served() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra.push(("TIANJI_RATE_ORDERS", format!("{RATE_PER_SEC}/s,{BURST}")));
    let app = spawn_with(options).await;
    let sku_id = app.create_sku("Rate-limited seat", 100, 100_000).await;
    let normal_users = [2_001, 2_002, 2_003, 2_004, 2_005];
    // Normal users send at half the rate: their buckets never empty.
    let normal_period = Duration::from_secs(2) / RATE_PER_SEC;
    let sends_per_normal_user = 3 * RATE_PER_SEC / 2;

    // Baseline: the normal users alone.
    let start = Instant::now();
    let baseline = futures::future::join_all(
        normal_users.iter().map(|user| orders_at(&app, *user, sku_id, start, normal_period, sends_per_normal_user)),
    )
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    assert_eq!(count(&baseline, 201), baseline.len(), "every baseline order is placed");

    // The same users again (new keys), while user 1 sends ten times the rate for 3 s.
    let start = Instant::now();
    let hammer_period = Duration::from_secs(1) / (10 * RATE_PER_SEC);
    let hammer = orders_at(&app, 1, sku_id, start, hammer_period, 30 * RATE_PER_SEC);
    let normal = futures::future::join_all(
        normal_users
            .iter()
            .map(|user| orders_at(&app, *user + 100, sku_id, start, normal_period, sends_per_normal_user)),
    );
    let (hammer, normal) = futures::future::join(hammer, normal).await;
    let elapsed = start.elapsed();
    let normal: Vec<Reply> = normal.into_iter().flatten().collect();

    let accepted = count(&hammer, 201);
    let limited = count(&hammer, 429);
    assert_eq!(accepted + limited, hammer.len(), "every reply is 201 or 429");
    // GCRA: at most the burst plus one per interval over the time the server saw requests,
    // which is within the time the client measured.
    let accepted_max = BURST as usize + (elapsed.as_secs_f64() * f64::from(RATE_PER_SEC)).ceil() as usize;
    assert!(
        (BURST as usize..=accepted_max).contains(&accepted),
        "accepted {accepted} of {} in {elapsed:?}; at most {accepted_max}",
        hammer.len()
    );
    for reply in hammer.iter().filter(|r| r.status == 429) {
        assert_eq!(reply.code.as_deref(), Some("rate_limited"));
        // 10 a second: the next token is under a second away, so the header says 1.
        assert_eq!(reply.retry_after.as_deref(), Some("1"));
    }
    assert_eq!(count(&normal, 429), 0, "no other user is rate limited");
    assert_eq!(count(&normal, 201), normal.len(), "every other user's order is placed");
    eprintln!(
        "rate limits: user at 10x the rate: {accepted} accepted, {limited} refused in {elapsed:?} (max {accepted_max}); \
         {} users at half the rate: p50 / p99 {:?} / {:?} alone, {:?} / {:?} beside it",
        normal_users.len(),
        percentile(&baseline, 50),
        percentile(&baseline, 99),
        percentile(&normal, 50),
        percentile(&normal, 99),
    );
    let stored = app.count("SELECT COUNT(*) FROM trade_order WHERE user_id = 1").await;
    assert_eq!(stored as usize, accepted, "exactly the accepted orders are stored");
}

#[actix_web::test]
async fn every_limited_route_answers_429_with_retry_after() {
    let mut options = AppOptions::new(Backend::Sqlite);
    for name in ["TIANJI_RATE_ORDERS", "TIANJI_RATE_COUPONS", "TIANJI_RATE_HEARTBEATS"] {
        options.extra.push((name, "1/m,1".to_owned()));
    }
    let app = spawn_with(options).await;
    let order = json!({"items": [{"sku_id": 999_999, "quantity": 1}]});
    let routes = [
        ("/v1/orders", order, 404),
        ("/v1/coupons/receive", json!({"template_id": 999_999}), 404),
        ("/v1/learning/heartbeats", json!({"course_id": 999_999, "section_id": 1, "position_sec": 5}), 403),
    ];
    for (path, body, first_status) in routes {
        let send = |token: Option<String>| {
            let request = app.client.post(app.url(path)).header("Idempotency-Key", "k-1").json(&body);
            match token {
                Some(token) => request.bearer_auth(token).send(),
                None => request.send(),
            }
        };
        let first = send(Some(app.user_token(7))).await.expect("request");
        assert_eq!(first.status(), first_status, "{path}: the first request passes the limiter");
        let second = send(Some(app.user_token(7))).await.expect("request");
        let retry_after: u64 = second.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        let (status, error) = status_and_json(second).await;
        assert_eq!((status, error["code"].as_str()), (429, Some("rate_limited")), "{path}: {error}");
        assert!((59..=60).contains(&retry_after), "{path}: one token a minute, Retry-After {retry_after}");
        let other = send(Some(app.user_token(8))).await.expect("request");
        assert_eq!(other.status(), first_status, "{path}: user 8 has a bucket of its own");
        let anonymous = send(None).await.expect("request");
        assert_eq!(anonymous.status(), 401, "{path}: authentication comes before the limit");
    }
    let (status, _) = app.call(reqwest::Method::GET, "/v1/orders", &app.user_token(7), serde_json::Value::Null).await;
    assert_eq!(status, 200, "reads have a bucket of their own");
}

/// Reads that go to the database share one bucket per user: past it, 429 on each of them, and
/// another user reads on.
#[actix_web::test]
async fn database_reads_share_a_bucket_per_user() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra.push(("TIANJI_RATE_READS", "1/m,2".to_owned()));
    let app = spawn_with(options).await;
    let app = &app;
    let get = |path: &'static str, user: i64| async move {
        app.call(reqwest::Method::GET, path, &app.user_token(user), serde_json::Value::Null).await
    };
    assert_eq!(get("/v1/orders", 7).await.0, 200);
    assert_eq!(get("/v1/coupons", 7).await.0, 200);
    for path in ["/v1/orders", "/v1/coupons", "/v1/orders/123"] {
        let (status, error) = get(path, 7).await;
        assert_eq!((status, error["code"].as_str()), (429, Some("rate_limited")), "{path}: {error}");
    }
    assert_eq!(get("/v1/orders", 8).await.0, 200, "user 8 has a bucket of its own");
}
