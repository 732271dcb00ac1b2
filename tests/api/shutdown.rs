//! SIGTERM under load, against the real binary: the node answers every request that reached
//! it, writes what it holds and exits 0 within its bound.
//!
//! Buyers with keep-alive connections place orders (each with its own Idempotency-Key), pay
//! half of them through the signed callback and report learning progress on the courses they
//! paid for; orders have one second to be paid, so payment deadlines fire all along, and
//! SIGTERM arrives while all of that runs. Every outcome is recorded: an answer, a connection
//! refused (the listener closed: fine), or a request that was sent and got a reset or an end
//! of stream instead of an answer (never fine). A buyer behaves as it would behind a load
//! balancer: once an answer says `Connection: close` (the node drains), it sends nothing more
//! to this node. Then the process must exit 0 within the bound, and the database must hold
//! every acknowledged order (with its status or a later one), every acknowledged payment, every
//! heartbeat answered 202 (only the shutdown writes them: the periodic flush is an hour away),
//! and balanced stock that agrees with the orders and the reservations; it is checked while the
//! node is down, so nothing moves under the check. The same database serves several rounds.
//!
//! And, with raw connections: a request whose body is still arriving when SIGTERM comes, and
//! a keep-alive connection that was idle then, are both answered, while `/readyz` says
//! `draining`.

use crate::helpers::{eventually, Backend, TestDatabase, JWT_SECRET, PAYMENT_SECRET};
use crate::process::ServerProcess;
use rand::Rng;
use serde_json::json;
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tianji::http::payments::PaymentKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 3;
const SKUS: usize = 3;
const UNITS_PER_SKU: i64 = 1_000_000;
const BUYERS: usize = 16;
/// Chance, in percent, that a buyer pays the order it placed.
const PAY_PERCENT: u32 = 50;
/// The buyers have this many orders per buyer acknowledged before SIGTERM is sent (a few
/// seconds: past the payment timeout, so deadlines fire while the node stops)...
const ORDERS_PER_BUYER_BEFORE_SIGTERM: usize = 10;
/// `TIANJI_PAY_TIMEOUT` of the node under test.
const PAY_TIMEOUT: &str = "1s";
/// ...and SIGTERM comes at random within this much more.
const SIGTERM_JITTER_MS_MAX: u64 = 300;
/// `TIANJI_SHUTDOWN_TIMEOUT` of the node under test.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The node's own bound (`TIANJI_SHUTDOWN_TIMEOUT + STOP_WRITES_MAX`), and a second for the
/// process to end after its last write.
const EXIT_BOUND: Duration =
    Duration::from_secs(SHUTDOWN_TIMEOUT.as_secs() + tianji::startup::STOP_WRITES_MAX.as_secs() + 1);
/// How long the test waits for load to reach the SIGTERM point, or for buyers to finish.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const SERVER_NAME: &str = "shutdown";

/// What one request came to.
#[derive(Debug)]
enum Outcome {
    /// A full answer: status, JSON body (`null` when not JSON), and whether the node asked to
    /// close the connection.
    Answered { status: u16, body: serde_json::Value, closing: bool },
    /// A new connection was refused: the node no longer listens. The request was never sent.
    Refused,
    /// Anything else: the request may have been sent, and no answer came.
    Broken(String),
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if refused(&error) => return Outcome::Refused,
        Err(error) => return Outcome::Broken(format!("{error:?}")),
    };
    let status = response.status().as_u16();
    let closing = response
        .headers()
        .get(reqwest::header::CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    match response.bytes().await {
        Ok(body) => {
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            Outcome::Answered { status, body, closing }
        }
        Err(error) => Outcome::Broken(format!("reading the body: {error:?}")),
    }
}

/// Whether the connection itself was refused (nothing was sent), by the error's causes.
fn refused(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return error.is_connect();
            }
        }
        cause = current.source();
    }
    false
}

/// Everything the buyers had acknowledged, carried from round to round, and the outcomes of
/// the round.
#[derive(Debug, Default)]
struct Ledger {
    /// `order_id -> (sku_id, status acknowledged last)`.
    orders: HashMap<i64, (i64, &'static str)>,
    /// `(user_id, course_id) -> section_id` of the last heartbeat answered 202.
    progress: HashMap<(i64, i64), i64>,
    /// Answers of the round that told the buyer to close its connection (the node drained).
    told_to_leave: usize,
    refused: usize,
    broken: Vec<String>,
}

struct Buyers {
    address: String,
    keys: JwtKeys,
    payments: PaymentKey,
    skus: Vec<i64>,
    round: usize,
    ledger: Mutex<Ledger>,
}

/// How a buyer's turn ended.
enum Turn {
    Continue,
    /// Told to leave, refused or broken: the buyer sends nothing more.
    Stop,
}

impl Buyers {
    /// Records `outcome`; the answer's status and body when there is one, and whether the
    /// buyer must stop (after this answer).
    fn record(&self, what: &str, outcome: Outcome) -> (Option<(u16, serde_json::Value)>, Turn) {
        let mut ledger = self.ledger.lock().unwrap();
        match outcome {
            Outcome::Answered { status, body, closing } => {
                let turn = if closing {
                    ledger.told_to_leave += 1;
                    Turn::Stop
                } else {
                    Turn::Continue
                };
                (Some((status, body)), turn)
            }
            Outcome::Refused => {
                ledger.refused += 1;
                (None, Turn::Stop)
            }
            Outcome::Broken(error) => {
                ledger.broken.push(format!("{what}: {error}"));
                (None, Turn::Stop)
            }
        }
    }

    /// One buyer: its own keep-alive connection; places an order, pays it or not, and reports
    /// progress on every course it paid for, until the node tells it to leave.
    async fn buyer(self: Arc<Self>, index: usize) {
        let user_id = 1_000 + index as i64;
        let token = self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600));
        let http = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().expect("client");
        let mut owned: Vec<i64> = Vec::new();
        for attempt in 0.. {
            let (sku_id, pays) = {
                let mut rng = rand::thread_rng();
                (self.skus[rng.gen_range(0..self.skus.len())], rng.gen_range(0..100) < PAY_PERCENT)
            };
            let placing = http
                .post(format!("{}/v1/orders", self.address))
                .bearer_auth(&token)
                .header("Idempotency-Key", format!("r{}-u{user_id}-{attempt}", self.round))
                .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}));
            let (answer, turn) = self.record("place", send(placing).await);
            let Some((status, order)) = answer else { return };
            assert_eq!(status, 201, "placing an order answered {order}");
            let order_id = order["order_id"].as_i64().expect("order_id");
            self.ledger.lock().unwrap().orders.insert(order_id, (sku_id, "pending_payment"));
            if let Turn::Stop = turn {
                return;
            }
            if pays {
                let body = json!({"order_id": order_id, "out_trade_no": format!("pay-{order_id}"),
                    "amount_cents": order["pay_cents"], "channel": "test"})
                .to_string();
                let paying = http
                    .post(format!("{}/v1/payments/callback", self.address))
                    .header("content-type", "application/json")
                    .header("X-Tianji-Signature", self.payments.sign(body.as_bytes()))
                    .body(body);
                let (answer, turn) = self.record("pay", send(paying).await);
                let Some((status, paid)) = answer else { return };
                match (status, paid["status"].as_str(), paid["code"].as_str()) {
                    (200, Some("paid"), _) => {
                        self.ledger.lock().unwrap().orders.insert(order_id, (sku_id, "paid"));
                        if !owned.contains(&sku_id) {
                            owned.push(sku_id);
                        }
                    }
                    // Its deadline passed first: closed, the payment kept for refund.
                    (409, _, Some("order_closed")) => {
                        self.ledger.lock().unwrap().orders.insert(order_id, (sku_id, "closed"));
                    }
                    _ => panic!("paying answered {status} {paid}"),
                }
                if let Turn::Stop = turn {
                    return;
                }
            }
            for &course_id in &owned {
                if let Turn::Stop = self.study(&http, &token, user_id, course_id).await {
                    return;
                }
            }
        }
    }

    /// One heartbeat on a course, one section further than the last one answered.
    async fn study(&self, http: &reqwest::Client, token: &str, user_id: i64, course_id: i64) -> Turn {
        let section_id = self.ledger.lock().unwrap().progress.get(&(user_id, course_id)).copied().unwrap_or(0) + 1;
        let beating = http
            .post(format!("{}/v1/learning/heartbeats", self.address))
            .bearer_auth(token)
            .json(&json!({"course_id": course_id, "section_id": section_id, "position_sec": 10}));
        let (answer, turn) = self.record("heartbeat", send(beating).await);
        let Some((status, body)) = answer else { return Turn::Stop };
        assert_eq!(status, 202, "a heartbeat answered {body}");
        self.ledger.lock().unwrap().progress.insert((user_id, course_id), section_id);
        turn
    }
}

async fn create_skus(address: &str, keys: &JwtKeys) -> Vec<i64> {
    let http = reqwest::Client::new();
    let token = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let mut skus = Vec::new();
    for n in 0..SKUS {
        let response = http
            .post(format!("{address}/v1/admin/skus"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("course {n}"), "price_cents": 1_999, "stock": UNITS_PER_SKU}))
            .send()
            .await
            .expect("create sku");
        assert_eq!(response.status(), 201);
        skus.push(response.json::<serde_json::Value>().await.expect("json")["sku_id"].as_i64().expect("sku_id"));
    }
    skus
}

fn start(database: &TestDatabase) -> ServerProcess {
    let timeout = format!("{}s", SHUTDOWN_TIMEOUT.as_secs());
    // The periodic learning flush is an hour away: only the shutdown writes the progress.
    ServerProcess::start(
        SERVER_NAME,
        &database.url,
        &[("TIANJI_SHUTDOWN_TIMEOUT", &timeout), ("TIANJI_LEARNING_FLUSH", "1h"), ("TIANJI_PAY_TIMEOUT", PAY_TIMEOUT)],
    )
}

async fn terminated_under_load(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let mut first = Some(start(&database));
    let skus = create_skus(&first.as_ref().expect("started").address, &keys).await;
    let db = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&database.url).await.unwrap();
    let mut ledger = Ledger::default();
    let mut timings = crate::helpers::timing_rng(&format!("terminated_under_load {backend:?}"));
    for round in 1..=ROUNDS {
        // Every round after the first starts again on the same database.
        let server = first.take().unwrap_or_else(|| start(&database));
        let buyers = Arc::new(Buyers {
            address: server.address.clone(),
            keys: JwtKeys::new(JWT_SECRET),
            payments: PaymentKey::new(PAYMENT_SECRET),
            skus: skus.clone(),
            round,
            ledger: Mutex::new(Ledger {
                orders: std::mem::take(&mut ledger.orders),
                progress: std::mem::take(&mut ledger.progress),
                ..Ledger::default()
            }),
        });
        let before = buyers.ledger.lock().unwrap().orders.len();
        let running: Vec<_> = (0..BUYERS).map(|b| actix_web::rt::spawn(Arc::clone(&buyers).buyer(b))).collect();
        let loaded = eventually(LOAD_TIMEOUT, || async {
            (buyers.ledger.lock().unwrap().orders.len() - before) >= BUYERS * ORDERS_PER_BUYER_BEFORE_SIGTERM
        })
        .await;
        assert!(loaded, "round {round}: the buyers did not get their orders through");
        tokio::time::sleep(Duration::from_millis(timings.gen_range(0..=SIGTERM_JITTER_MS_MAX))).await;
        server.send_terminate();
        let signalled = std::time::Instant::now();
        let all_stopped = tokio::time::timeout(LOAD_TIMEOUT, futures::future::join_all(running)).await;
        for stopped in all_stopped.expect("every buyer stops once told to leave") {
            stopped.expect("a buyer panicked");
        }
        let status = server.exited_within(EXIT_BOUND).await;
        let took = signalled.elapsed();
        assert!(status.success(), "round {round}: tianji exited with {status} after SIGTERM");

        ledger = std::mem::take(&mut *buyers.ledger.lock().unwrap());
        assert!(ledger.broken.is_empty(), "round {round}: requests without an answer: {:#?}", ledger.broken);
        assert_eq!(
            (ledger.told_to_leave, ledger.refused),
            (BUYERS, 0),
            "round {round}: every buyer is answered once more and told to leave, none refused"
        );
        audit(&db, &ledger, &skus, round).await;
        let count = |wanted: &str| ledger.orders.values().filter(|(_, status)| *status == wanted).count();
        eprintln!(
            "round {round}: stopped in {took:?}; {} acknowledged orders ({} paid, {} answered closed), \
             {} courses with progress, all intact",
            ledger.orders.len(),
            count("paid"),
            count("closed"),
            ledger.progress.len()
        );
    }
    db.close().await;
    // What every SIGTERM left agrees with itself: counters, leases, coupons, events.
    crate::reconcile::assert_reconciles_clean(&database.url, None).await;
}

/// Checks the database against what the buyers had acknowledged.
async fn audit(db: &AnyPool, ledger: &Ledger, skus: &[i64], round: usize) {
    let orders: HashMap<i64, String> = sqlx::query("SELECT id, status FROM trade_order")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("id"), row.get("status")))
        .collect();
    for (order_id, (_, seen)) in &ledger.orders {
        let stored =
            orders.get(order_id).unwrap_or_else(|| panic!("round {round}: acknowledged order {order_id} is lost"));
        // The status acknowledged last, or a later one: a pending order may have been paid
        // (the buyer was told to leave with that answer) or timed out.
        let later = *seen == "pending_payment" && matches!(stored.as_str(), "paid" | "closed");
        assert!(stored == seen || later, "round {round}: order {order_id} is {stored}, acknowledged {seen}");
    }
    let closed = orders.values().filter(|status| *status == "closed").count();
    eprintln!("round {round}: {} orders in the database, {closed} of them closed at their deadline", orders.len());
    let payments: HashMap<i64, String> = sqlx::query("SELECT order_id, status FROM payment")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("order_id"), row.get("status")))
        .collect();
    for (order_id, (_, seen)) in &ledger.orders {
        if *seen == "paid" {
            assert_eq!(
                payments.get(order_id).map(String::as_str),
                Some("paid"),
                "round {round}: payment of {order_id}"
            );
        }
    }
    crate::helpers::assert_stock_agrees_with_orders(db, skus, &format!("round {round}")).await;
    // After a graceful stop no reservation outlives its order: every open one is a pending
    // order's, and they hold exactly what the counters say is reserved.
    let open: Vec<(i64, Option<String>)> = sqlx::query(
        "SELECT r.order_id, o.status FROM inventory_reservation r \
         LEFT JOIN trade_order o ON o.id = r.order_id WHERE r.status = 'reserved'",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get("order_id"), row.get("status")))
    .collect();
    for (order_id, status) in &open {
        assert_eq!(status.as_deref(), Some("pending_payment"), "round {round}: open reservation of order {order_id}");
    }
    for sku_id in skus {
        let (reserved, leased): (i64, i64) = (
            sqlx::query("SELECT reserved FROM inventory WHERE sku_id = ?")
                .bind(*sku_id)
                .fetch_one(db)
                .await
                .unwrap()
                .get("reserved"),
            sqlx::query(
                "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) AS units FROM inventory_reservation \
                 WHERE sku_id = ? AND status = 'reserved'",
            )
            .bind(*sku_id)
            .fetch_one(db)
            .await
            .unwrap()
            .get("units"),
        );
        assert_eq!(reserved, leased, "round {round}: sku {sku_id} reserved != open reservations");
    }
    for ((user_id, course_id), section_id) in &ledger.progress {
        let row = sqlx::query(
            "SELECT latest_section_id, position_sec FROM learning_lesson WHERE user_id = ? AND course_id = ?",
        )
        .bind(*user_id)
        .bind(*course_id)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("round {round}: lesson of user {user_id}, course {course_id}: {e}"));
        let stored: (i64, i64) = (row.get("latest_section_id"), row.get("position_sec"));
        assert_eq!(stored, (*section_id, 10), "round {round}: progress of user {user_id} on course {course_id}");
    }
}

#[actix_web::test]
async fn sigterm_under_load_answers_everything_and_loses_nothing_on_mariadb() {
    terminated_under_load(Backend::MySql).await;
}

#[actix_web::test]
async fn sigterm_under_load_answers_everything_and_loses_nothing_on_sqlite() {
    terminated_under_load(Backend::Sqlite).await;
}

/// A response read off a raw connection: status, head (lower case) and body.
struct RawResponse {
    status: u16,
    head: String,
    body: serde_json::Value,
}

impl RawResponse {
    fn closes(&self) -> bool {
        self.head.lines().any(|line| line.trim() == "connection: close")
    }
}

/// Reads one response with a `Content-Length` off `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let read = async {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read the head");
            assert!(n > 0, "the connection ended before a response: {:?}", String::from_utf8_lossy(&buffer));
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("content-length"));
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read the body");
            assert!(n > 0, "the connection ended inside a body");
            buffer.extend_from_slice(&chunk[..n]);
        }
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let body = serde_json::from_slice(&buffer[head_end..head_end + length]).unwrap_or(serde_json::Value::Null);
        RawResponse { status, head, body }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, read).await.expect("a response in time")
}

/// Whether the node closes `stream` next (end of stream, nothing more sent).
async fn closed_by_node(stream: &mut tokio::net::TcpStream) -> bool {
    let mut rest = [0u8; 64];
    matches!(tokio::time::timeout(CLIENT_TIMEOUT, stream.read(&mut rest)).await, Ok(Ok(0)))
}

#[actix_web::test]
async fn a_request_in_progress_and_an_idle_connection_are_answered_while_draining() {
    let database = TestDatabase::create(Backend::MySql).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let server = start(&database);
    let skus = create_skus(&server.address, &keys).await;
    let host = server.address.trim_start_matches("http://").to_owned();

    // A keep-alive connection, answered once and then idle.
    let health = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut idle = tokio::net::TcpStream::connect(&host).await.expect("connect");
    idle.write_all(health.as_bytes()).await.unwrap();
    let first = read_response(&mut idle).await;
    assert!(first.status == 200 && !first.closes(), "before the stop: {}", first.head);

    // An order whose body is half sent.
    let token = keys.mint(UserId::new(7), Role::User, Duration::from_secs(600));
    let body = json!({"items": [{"sku_id": skus[0], "quantity": 2}]}).to_string();
    let (early, late) = body.split_at(body.len() / 2);
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: slow\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = tokio::net::TcpStream::connect(&host).await.expect("connect");
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(early.as_bytes()).await.unwrap();

    let address = server.address.clone();
    server.send_terminate();
    let http = reqwest::Client::new();
    let draining = eventually(Duration::from_secs(5), || async {
        match send(http.get(format!("{address}/readyz"))).await {
            Outcome::Answered { status: 503, body, closing } => body["code"] == "draining" && closing,
            Outcome::Answered { status: 200, .. } => false,
            other => panic!("readyz while the node drains: {other:?}"),
        }
    })
    .await;
    assert!(draining, "readyz never said draining");

    idle.write_all(health.as_bytes()).await.unwrap();
    let second = read_response(&mut idle).await;
    assert_eq!(second.status, 200, "the idle connection's next request: {}", second.head);
    assert!(second.closes(), "a draining node tells the client to close: {}", second.head);
    assert!(closed_by_node(&mut idle).await, "the node closes the connection after that answer");

    slow.write_all(late.as_bytes()).await.unwrap();
    let placed = read_response(&mut slow).await;
    assert_eq!(placed.status, 201, "the order in progress at SIGTERM: {:?}", placed.body);
    assert!(placed.closes(), "{}", placed.head);
    assert!(closed_by_node(&mut slow).await, "the node closes the connection after that answer");

    let status = server.exited_within(EXIT_BOUND).await;
    assert!(status.success(), "tianji exited with {status} after SIGTERM");
    let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&database.url).await.unwrap();
    let order_id = placed.body["order_id"].as_i64().expect("order_id");
    let stored: String = sqlx::query("SELECT status FROM trade_order WHERE id = ?")
        .bind(order_id)
        .fetch_one(&db)
        .await
        .unwrap()
        .get("status");
    assert_eq!(stored, "pending_payment");
    db.close().await;
}

/// Past `TIANJI_SHUTDOWN_TIMEOUT` a request still in progress is cut: the node still stops,
/// and says so with a non-zero exit code.
#[actix_web::test]
async fn past_the_timeout_connections_are_cut_and_the_exit_code_says_so() {
    let database = TestDatabase::create(Backend::MySql).await;
    let settings =
        [("TIANJI_SHUTDOWN_TIMEOUT", "1s"), ("TIANJI_BODY_READ_TIMEOUT", "60s"), ("TIANJI_LOG_FORMAT", "json")];
    let server = ServerProcess::start_logged(SERVER_NAME, &database.url, &settings);
    let host = server.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/payments/callback HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: 100\r\n\r\n"
    );
    let mut stuck = tokio::net::TcpStream::connect(&host).await.expect("connect");
    stuck.write_all(head.as_bytes()).await.unwrap();
    // `100 Continue` comes once the node has parsed the head: from then on the request is in
    // progress, waiting for a body that never comes in time.
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(CLIENT_TIMEOUT, stuck.read(&mut byte)).await.expect("in time").expect("read");
        assert_eq!(n, 1, "the connection ended before 100 Continue");
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{:?}", String::from_utf8_lossy(&interim));
    stuck.write_all(b"{\"order_id\"").await.unwrap();

    let signalled = std::time::Instant::now();
    server.send_terminate();
    // The connection ends without an answer (an end of stream or a reset, not a response).
    let mut rest = [0u8; 64];
    let after = tokio::time::timeout(CLIENT_TIMEOUT, stuck.read(&mut rest)).await.expect("the connection ends");
    assert!(matches!(after, Ok(0) | Err(_)), "the cut request got no answer: {after:?}");
    assert!(signalled.elapsed() >= Duration::from_secs(1), "cut only at the timeout: {:?}", signalled.elapsed());
    let logs = server.log_lines_when_exited(EXIT_BOUND).await;
    assert_eq!(logs.status.code(), Some(1), "a stop that cut a request exits 1, got {}", logs.status);
    // The process exiting would end the connection too: the node's own account proves that it
    // cut this one at the timeout (and that nothing else made the stop unclean).
    let events: Vec<serde_json::Value> = logs.lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let logged = |message: &str| events.iter().find(|event| event["message"] == message);
    let cutting = logged("shutdown timeout: cutting the connections still open")
        .unwrap_or_else(|| panic!("the cut is logged when it happens: {:#?}", logs.lines));
    assert_eq!(cutting["cut"], 1, "{cutting}");
    let report = logged("stopped, not cleanly").unwrap_or_else(|| panic!("no final report: {:#?}", logs.lines));
    let shutdown = report["shutdown"].as_str().expect("the report's shutdown field");
    for part in ["connections_cut: 1", "writes_settled: true", "learning_rows_kept: 0", "server_failed: false"] {
        assert!(shutdown.contains(part), "{part} in the final report: {shutdown}");
    }
}
