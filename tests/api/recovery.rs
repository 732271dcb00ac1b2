//! Kill -9 under load, at random moments, and start again on the same database: nothing that
//! was acknowledged is lost, and stock balances with orders.
//!
//! The server runs as a child process (the real binary). Clients place, pay and cancel
//! concurrently and remember what was acknowledged; the process is killed with SIGKILL at a
//! random moment, started again, and the database is checked against what the clients saw.

use crate::helpers::{Backend, TestDatabase, JWT_SECRET, PAYMENT_SECRET};
use rand::Rng;
use serde_json::json;
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tianji::http::payments::PaymentKey;

const ROUNDS: usize = 3;
const SKUS: usize = 3;
const UNITS_PER_SKU: i64 = 2_000;
const WORKERS: usize = 24;
const ATTEMPTS_PER_WORKER_MAX: usize = 500;

/// A `tianji serve` child process, killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(database_url: &str) -> Server {
        Server::start_with(database_url, &[])
    }

    fn start_with(database_url: &str, settings: &[(&str, &str)]) -> Server {
        let data_dir = std::env::temp_dir().join(format!("tianji-recovery-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tianji"))
            .arg("serve")
            .env("TIANJI_BIND", "127.0.0.1:0")
            .env("TIANJI_DATABASE_URL", database_url)
            .env("TIANJI_DATA_DIR", data_dir)
            .env("TIANJI_JWT_SECRET", JWT_SECRET)
            .env("TIANJI_PAYMENT_SECRET", PAYMENT_SECRET)
            .env("TIANJI_HTTP_WORKERS", "2")
            .env("TIANJI_ACTOR_THREADS", "2")
            .env_remove("TIANJI_REDIS_URL")
            .env("RUST_LOG", "error")
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tianji binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let port: u16 = line
            .trim()
            .strip_prefix("tianji listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("tianji did not start: {line:?}"));
        Server { child, address: format!("http://127.0.0.1:{port}") }
    }

    /// SIGKILL: no shutdown hook, no flush, nothing the process gets to finish.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client last had acknowledged for an order, and the step it sent without an answer.
#[derive(Debug, Clone)]
struct Seen {
    status: &'static str,
    unanswered: Option<&'static str>,
}

struct Clients {
    http: reqwest::Client,
    address: String,
    keys: JwtKeys,
    payments: PaymentKey,
    skus: Vec<i64>,
    seen: Mutex<HashMap<i64, Seen>>,
}

impl Clients {
    fn see(&self, order_id: i64, status: &'static str, unanswered: Option<&'static str>) {
        self.seen.lock().unwrap().insert(order_id, Seen { status, unanswered });
    }

    /// One buyer: place, then pay, cancel or leave pending; stops at the first transport
    /// error (the server was killed).
    async fn buyer(self: Arc<Self>, worker: usize) {
        let user = 1_000 + worker as i64;
        let token = self.keys.mint(UserId::new(user), Role::User, Duration::from_secs(600));
        for attempt in 0..ATTEMPTS_PER_WORKER_MAX {
            let (sku_id, quantity, choice) = {
                let mut rng = rand::thread_rng();
                (self.skus[rng.gen_range(0..self.skus.len())], rng.gen_range(1..=2), rng.gen_range(0..100))
            };
            let placed = self
                .http
                .post(format!("{}/v1/orders", self.address))
                .bearer_auth(&token)
                .header("Idempotency-Key", format!("w{worker}-{attempt}-{}", rand::random::<u32>()))
                .json(&json!({"items": [{"sku_id": sku_id, "quantity": quantity}]}))
                .send()
                .await;
            let Ok(placed) = placed else { return };
            if placed.status() != 201 {
                continue;
            }
            let Ok(order) = placed.json::<serde_json::Value>().await else { return };
            let order_id = order["order_id"].as_i64().expect("order id");
            self.see(order_id, "pending_payment", None);
            let (target, request) = match choice {
                0..45 => {
                    let body = json!({"order_id": order_id, "out_trade_no": format!("pay-{order_id}"),
                        "amount_cents": order["pay_cents"], "channel": "test"})
                    .to_string();
                    let signature = self.payments.sign(body.as_bytes());
                    let request = self
                        .http
                        .post(format!("{}/v1/payments/callback", self.address))
                        .header("content-type", "application/json")
                        .header("X-Tianji-Signature", signature)
                        .body(body);
                    ("paid", request)
                }
                45..70 => {
                    let url = format!("{}/v1/orders/{order_id}/cancel", self.address);
                    ("closed", self.http.post(url).bearer_auth(&token))
                }
                _ => continue,
            };
            self.see(order_id, "pending_payment", Some(target));
            match request.send().await {
                Ok(response) if response.status() == 200 => self.see(order_id, target, None),
                Ok(response) => panic!("{target} of order {order_id} answered {}", response.status()),
                Err(_) => return,
            }
        }
    }
}

async fn create_skus(address: &str, keys: &JwtKeys) -> Vec<i64> {
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let http = reqwest::Client::new();
    let mut skus = Vec::new();
    for n in 0..SKUS {
        let response = http
            .post(format!("{address}/v1/admin/skus"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("sku {n}"), "price_cents": 1_000 + n as i64, "stock": UNITS_PER_SKU}))
            .send()
            .await
            .expect("create sku");
        assert_eq!(response.status(), 201);
        skus.push(response.json::<serde_json::Value>().await.unwrap()["sku_id"].as_i64().unwrap());
    }
    skus
}

/// Checks the database against what the clients had acknowledged.
async fn audit(db: &AnyPool, seen: &HashMap<i64, Seen>, skus: &[i64], round: usize) {
    let statuses: HashMap<i64, String> = sqlx::query("SELECT id, status FROM trade_order")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("id"), row.get("status")))
        .collect();
    for (order_id, seen) in seen {
        let stored =
            statuses.get(order_id).unwrap_or_else(|| panic!("round {round}: acknowledged order {order_id} is lost"));
        let allowed = stored == seen.status || Some(stored.as_str()) == seen.unanswered;
        assert!(allowed, "round {round}: order {order_id} is {stored}, the client saw {seen:?}");
    }

    let now_ms = tianji::domain::ids::wall_clock_ms() as i64;
    let open = sqlx::query(
        "SELECT r.order_id, r.expires_at, o.status FROM inventory_reservation r \
         LEFT JOIN trade_order o ON o.id = r.order_id WHERE r.status = 'reserved'",
    )
    .fetch_all(db)
    .await
    .unwrap();
    for row in &open {
        let (order_id, expires_at): (i64, i64) = (row.get("order_id"), row.get("expires_at"));
        let order_status: Option<String> = row.get("status");
        assert!(
            order_status.as_deref() == Some("pending_payment") || expires_at <= now_ms,
            "round {round}: open reservation of order {order_id} ({order_status:?}) outlived its order"
        );
    }

    for sku_id in skus {
        let counters = sqlx::query("SELECT total, available, reserved, sold FROM inventory WHERE sku_id = ?")
            .bind(*sku_id)
            .fetch_one(db)
            .await
            .unwrap();
        let (total, available, reserved, sold): (i64, i64, i64, i64) =
            (counters.get("total"), counters.get("available"), counters.get("reserved"), counters.get("sold"));
        assert_eq!(available + reserved + sold, total, "round {round}: sku {sku_id} unbalanced");
        assert!(available >= 0 && reserved >= 0 && sold >= 0);
        let units = |statuses: &'static str| {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(i.quantity), 0) AS SIGNED) AS units FROM trade_order_item i \
                 JOIN trade_order o ON o.id = i.order_id WHERE i.sku_id = ? AND o.status IN ({statuses})"
            );
            async move { sqlx::query(&sql).bind(*sku_id).fetch_one(db).await.unwrap().get::<i64, _>("units") }
        };
        assert_eq!(sold, units("'paid', 'finished'").await, "round {round}: sku {sku_id} sold != units of paid orders");
        assert_eq!(
            reserved,
            units("'pending_payment'").await,
            "round {round}: sku {sku_id} reserved != units of pending orders"
        );
    }
}

#[actix_web::test]
async fn killed_at_random_moments_loses_nothing_acknowledged() {
    let database = TestDatabase::create(Backend::MySql).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let mut server = Server::start(&database.url);
    let skus = create_skus(&server.address, &keys).await;
    let db = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&database.url).await.unwrap();
    let seen: Arc<Mutex<HashMap<i64, Seen>>> = Arc::default();

    for round in 1..=ROUNDS {
        let clients = Arc::new(Clients {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            address: server.address.clone(),
            keys: JwtKeys::new(JWT_SECRET),
            payments: PaymentKey::new(PAYMENT_SECRET),
            skus: skus.clone(),
            seen: Mutex::new(std::mem::take(&mut *seen.lock().unwrap())),
        });
        let buyers: Vec<_> = (0..WORKERS).map(|w| actix_web::rt::spawn(Arc::clone(&clients).buyer(w))).collect();
        // The kill point: somewhere in the first second of load.
        let kill_after = Duration::from_millis(rand::thread_rng().gen_range(150..900));
        tokio::time::sleep(kill_after).await;
        server.kill();
        for buyer in buyers {
            buyer.await.expect("a buyer panicked");
        }
        let acknowledged = clients.seen.lock().unwrap().clone();
        assert!(!acknowledged.is_empty(), "round {round}: no order was acknowledged before the kill");

        server = Server::start(&database.url);
        audit(&db, &acknowledged, &skus, round).await;
        eprintln!("round {round}: killed after {kill_after:?}; {} acknowledged orders intact", acknowledged.len());
        *seen.lock().unwrap() = acknowledged;
    }
    server.kill();
    db.close().await;
}

#[actix_web::test]
async fn deadlines_that_passed_while_down_close_right_after_start() {
    let database = TestDatabase::create(Backend::MySql).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let pay_timeout = [("TIANJI_PAY_TIMEOUT", "2s")];
    let server = Server::start_with(&database.url, &pay_timeout);
    let skus = create_skus(&server.address, &keys).await;
    let token = keys.mint(UserId::new(5), Role::User, Duration::from_secs(600));
    let http = reqwest::Client::new();
    for n in 0..20 {
        let response = http
            .post(format!("{}/v1/orders", server.address))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("d{n}"))
            .json(&json!({"items": [{"sku_id": skus[0], "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    server.kill();
    let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&database.url).await.unwrap();
    let latest_deadline: i64 =
        sqlx::query("SELECT MAX(pay_deadline) AS d FROM trade_order").fetch_one(&db).await.unwrap().get("d");
    assert!(latest_deadline > tianji::domain::ids::wall_clock_ms() as i64, "killed before the deadlines");
    // Down past every deadline.
    let until_past = latest_deadline - tianji::domain::ids::wall_clock_ms() as i64 + 100;
    tokio::time::sleep(Duration::from_millis(until_past.max(0) as u64)).await;

    let restarted = Server::start_with(&database.url, &pay_timeout);
    let started_ms = tianji::domain::ids::wall_clock_ms() as i64;
    let closed = crate::helpers::eventually(Duration::from_secs(5), || async {
        // Closed first, units back right after: wait for both.
        let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM trade_order WHERE status = 'pending_payment'")
            .fetch_one(&db)
            .await
            .unwrap()
            .get("n");
        let reserved: i64 = sqlx::query("SELECT reserved FROM inventory WHERE sku_id = ?")
            .bind(skus[0])
            .fetch_one(&db)
            .await
            .unwrap()
            .get("reserved");
        pending == 0 && reserved == 0
    })
    .await;
    assert!(closed, "orders whose deadline passed while down were not closed with their units back");
    let last_close: i64 = sqlx::query("SELECT MAX(created_at) AS t FROM order_status_log WHERE to_status = 'closed'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("t");
    assert!(last_close - started_ms < 1_000, "closed {} ms after start", last_close - started_ms);
    let counters = sqlx::query("SELECT available, reserved FROM inventory WHERE sku_id = ?")
        .bind(skus[0])
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!((counters.get::<i64, _>("available"), counters.get::<i64, _>("reserved")), (UNITS_PER_SKU, 0));
    restarted.kill();
    db.close().await;
}
