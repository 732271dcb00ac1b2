//! Kill -9 under load, at random moments, and start again on the same database: nothing that
//! was acknowledged is lost, stock balances with orders, and coupons with their templates and
//! orders.
//!
//! The server runs as a child process (the real binary). Clients claim coupons and place, pay
//! and cancel orders (some with a coupon) concurrently and remember what was acknowledged; the
//! process is killed with SIGKILL at a random moment, started again, and the database is checked
//! against what the clients saw.

use crate::helpers::{eventually, rfc3339_from_now, Backend, TestDatabase, JWT_SECRET, PAYMENT_SECRET};
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

const ROUNDS: usize = 3;
const SKUS: usize = 3;
const UNITS_PER_SKU: i64 = 2_000;
const WORKERS: usize = 24;
/// The first of the two users who claim the last template's one coupon at the end.
const LAST_CLAIMANTS_FIRST: i64 = 1_000_000;
const ATTEMPTS_PER_WORKER_MAX: usize = 500;
/// The coupon templates, as `(discount_cents, min_spend_cents, total, per_user_limit)`. Every
/// buyer claims a coupon of one of them at random right after its first placement of each round
/// and more along the way: the second sells out early (usually in the first round), the first
/// lasts longer, so coupons are locked, used and released in every round. The second needs a
/// spend one unit does not reach: placements of one unit with it are refused.
const TEMPLATES: [(i64, i64, i64, i64); 2] = [(300, 1_000, 60, 4), (500, 1_500, 12, 2)];
/// Chance, in percent, that a buyer claims a coupon before each later placement.
const CLAIM_PERCENT: u32 = 15;
/// Chance, in percent, that a buyer holding a coupon places its order with it.
const COUPON_ORDER_PERCENT: u32 = 60;
/// Names the server's data directory.
const SERVER_NAME: &str = "recovery";

/// What a client last had acknowledged for an order, the step it sent without an answer, and
/// the coupon it placed the order with.
#[derive(Debug, Clone)]
struct Seen {
    status: &'static str,
    unanswered: Option<&'static str>,
    coupon: Option<i64>,
}

/// Everything the clients had acknowledged, carried from round to round.
#[derive(Debug, Default)]
struct Ledger {
    orders: HashMap<i64, Seen>,
    /// `coupon_id -> (user_id, template_id)` of every claim answered 201.
    coupons: HashMap<i64, (i64, i64)>,
    /// Claims answered 409 `sold_out`.
    sold_out: usize,
    /// Orders placed with a coupon and answered 201.
    coupon_orders: usize,
}

struct Clients {
    http: reqwest::Client,
    address: String,
    keys: JwtKeys,
    payments: PaymentKey,
    skus: Vec<i64>,
    templates: Vec<i64>,
    ledger: Mutex<Ledger>,
}

/// Status and JSON body of a reply (`null` when it is not JSON); `None` when the body could not
/// be read (the server was killed).
async fn read(response: reqwest::Response) -> Option<(u16, serde_json::Value)> {
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
}

impl Clients {
    /// Clients of the server at `address`, carrying on `ledger`.
    fn new(address: &str, skus: &[i64], templates: &[i64], ledger: Ledger) -> Clients {
        Clients {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            address: address.to_owned(),
            keys: JwtKeys::new(JWT_SECRET),
            payments: PaymentKey::new(PAYMENT_SECRET),
            skus: skus.to_vec(),
            templates: templates.to_vec(),
            ledger: Mutex::new(ledger),
        }
    }

    fn see(&self, order_id: i64, status: &'static str, unanswered: Option<&'static str>, coupon: Option<i64>) {
        self.ledger.lock().unwrap().orders.insert(order_id, Seen { status, unanswered, coupon });
    }

    /// Claims a coupon of `template_id`; `Err` on a transport error (the server was killed).
    async fn claim(&self, user: i64, token: &str, template_id: i64) -> Result<Option<i64>, ()> {
        let sent = self
            .http
            .post(format!("{}/v1/coupons/receive", self.address))
            .bearer_auth(token)
            .json(&json!({"template_id": template_id}))
            .send()
            .await;
        let (status, body) = match sent {
            Ok(response) => read(response).await.ok_or(())?,
            Err(_) => return Err(()),
        };
        let mut ledger = self.ledger.lock().unwrap();
        match (status, body["code"].as_str()) {
            (201, _) => {
                let coupon_id = body["coupon_id"].as_i64().unwrap_or_else(|| panic!("claim answered {body}"));
                assert_eq!(body["template_id"].as_i64(), Some(template_id), "claim answered {body}");
                let earlier = ledger.coupons.insert(coupon_id, (user, template_id));
                assert!(earlier.is_none(), "coupon {coupon_id} was issued twice");
                Ok(Some(coupon_id))
            }
            (409, Some("sold_out")) => {
                ledger.sold_out += 1;
                Ok(None)
            }
            (409, Some("limit_reached")) | (503, _) => Ok(None),
            _ => panic!("claim of template {template_id} by user {user} answered {status} {body}"),
        }
    }

    /// The buyer's unused coupons, as the server lists them (none on a 503); `None` on a
    /// transport error.
    async fn unused_coupons(&self, token: &str) -> Option<Vec<i64>> {
        let url = format!("{}/v1/coupons?status=unused&limit=100", self.address);
        let (status, body) = read(self.http.get(url).bearer_auth(token).send().await.ok()?).await?;
        if status == 503 {
            return Some(Vec::new());
        }
        assert_eq!(status, 200, "list coupons: {body}");
        Some(body["coupons"].as_array().expect("coupons").iter().map(|c| c["coupon_id"].as_i64().unwrap()).collect())
    }

    /// One buyer: claims coupons now and then, places orders (some with one of the coupons in
    /// its wallet, which is the server's list of its unused ones after the first placement), then
    /// pays, cancels or leaves them pending; stops at the first transport error (the server was
    /// killed). The first placement goes first, so orders are acknowledged early in a round.
    async fn buyer(self: Arc<Self>, worker: usize) {
        let user = 1_000 + worker as i64;
        let token = self.keys.mint(UserId::new(user), Role::User, Duration::from_secs(600));
        let mut wallet = Vec::new();
        for attempt in 0..ATTEMPTS_PER_WORKER_MAX {
            if attempt == 1 {
                let Some(unused) = self.unused_coupons(&token).await else { return };
                wallet = unused;
            }
            let (template_id, claim) = {
                let mut rng = rand::thread_rng();
                (
                    self.templates[rng.gen_range(0..self.templates.len())],
                    attempt == 1 || (attempt > 1 && rng.gen_range(0..100) < CLAIM_PERCENT),
                )
            };
            if claim {
                match self.claim(user, &token, template_id).await {
                    Ok(Some(coupon_id)) => wallet.push(coupon_id),
                    Ok(None) => {}
                    Err(()) => return,
                }
            }
            let (sku_id, quantity, choice, coupon) = {
                let mut rng = rand::thread_rng();
                let coupon = (!wallet.is_empty() && rng.gen_range(0..100) < COUPON_ORDER_PERCENT)
                    .then(|| wallet.swap_remove(rng.gen_range(0..wallet.len())));
                (self.skus[rng.gen_range(0..self.skus.len())], rng.gen_range(1..=2), rng.gen_range(0..100), coupon)
            };
            let mut body = json!({"items": [{"sku_id": sku_id, "quantity": quantity}]});
            if let Some(coupon_id) = coupon {
                body["coupon_id"] = json!(coupon_id);
            }
            let placed = self
                .http
                .post(format!("{}/v1/orders", self.address))
                .bearer_auth(&token)
                .header("Idempotency-Key", format!("w{worker}-{attempt}-{}", rand::random::<u32>()))
                .json(&body)
                .send()
                .await;
            let Ok(placed) = placed else { return };
            let Some((status, order)) = read(placed).await else { return };
            if status != 201 {
                // Refused (or unknown, on a 503): the coupon is still the buyer's unless the
                // server says it is not available.
                if order["code"] != "coupon_unavailable" {
                    wallet.extend(coupon);
                }
                continue;
            }
            let order_id = order["order_id"].as_i64().expect("order id");
            assert_eq!(order["coupon_id"].as_i64(), coupon, "order {order_id} answered {order}");
            self.see(order_id, "pending_payment", None, coupon);
            if coupon.is_some() {
                self.ledger.lock().unwrap().coupon_orders += 1;
            }
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
            self.see(order_id, "pending_payment", Some(target), coupon);
            match request.send().await {
                Ok(response) if response.status() == 200 => {
                    self.see(order_id, target, None, coupon);
                    if target == "closed" {
                        // Closing the order released its coupon.
                        wallet.extend(coupon);
                    }
                }
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

async fn create_templates(address: &str, keys: &JwtKeys) -> Vec<i64> {
    let mut templates = Vec::new();
    for (n, template) in TEMPLATES.into_iter().enumerate() {
        templates.push(create_template(address, keys, template, &format!("coupon {n}")).await);
    }
    templates
}

/// Creates an amount_off template `(discount_cents, min_spend_cents, total, per_user_limit)`.
async fn create_template(address: &str, keys: &JwtKeys, template: (i64, i64, i64, i64), name: &str) -> i64 {
    let (discount_cents, min_spend_cents, total, per_user_limit) = template;
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/admin/coupon-templates"))
        .bearer_auth(&admin)
        .json(&json!({"name": name, "kind": "amount_off", "discount_cents": discount_cents,
            "min_spend_cents": min_spend_cents, "total": total, "per_user_limit": per_user_limit,
            "valid_until": rfc3339_from_now(24 * 3_600)}))
        .send()
        .await
        .expect("create coupon template");
    assert_eq!(response.status(), 201);
    response.json::<serde_json::Value>().await.unwrap()["template_id"].as_i64().unwrap()
}

/// Checks the database against what the clients had acknowledged.
async fn audit(db: &AnyPool, ledger: &Ledger, skus: &[i64], round: usize) {
    let orders: HashMap<i64, (String, Option<i64>)> = sqlx::query("SELECT id, status, coupon_id FROM trade_order")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("id"), (row.get("status"), row.get("coupon_id"))))
        .collect();
    for (order_id, seen) in &ledger.orders {
        let (stored, coupon) =
            orders.get(order_id).unwrap_or_else(|| panic!("round {round}: acknowledged order {order_id} is lost"));
        let allowed = stored == seen.status || Some(stored.as_str()) == seen.unanswered;
        assert!(allowed, "round {round}: order {order_id} is {stored}, the client saw {seen:?}");
        assert_eq!(
            *coupon, seen.coupon,
            "round {round}: order {order_id} holds another coupon than it was placed with"
        );
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

    crate::helpers::assert_stock_agrees_with_orders(db, skus, &format!("round {round}")).await;

    audit_coupons(db, ledger, round).await;
    crate::events::assert_events_match_log(db, &format!("round {round}")).await;
}

/// Coupons: each template issued exactly the coupons it has records of, never more than its
/// total nor more than its per-user limit to one user; every acknowledged claim exists; a locked
/// coupon is held by its pending order, a used one by its paid (or finished) order, and the
/// other way round; no two open or paid orders share a coupon. (No order is refunded here, so a
/// used coupon never belongs to a refunded order.)
async fn audit_coupons(db: &AnyPool, ledger: &Ledger, round: usize) {
    let templates = sqlx::query(
        "SELECT t.id, t.total, t.issued, t.per_user_limit, \
         (SELECT COUNT(*) FROM coupon_record r WHERE r.template_id = t.id) AS records, \
         (SELECT COUNT(*) FROM coupon_record r WHERE r.template_id = t.id GROUP BY r.user_id \
          ORDER BY COUNT(*) DESC LIMIT 1) AS most_to_one_user \
         FROM coupon_template t",
    )
    .fetch_all(db)
    .await
    .unwrap();
    // The rounds' templates, and after them the last one.
    assert!(templates.len() >= TEMPLATES.len(), "round {round}: coupon templates");
    for row in &templates {
        let (template_id, total, issued, limit, records): (i64, i64, i64, i64, i64) =
            (row.get("id"), row.get("total"), row.get("issued"), row.get("per_user_limit"), row.get("records"));
        let most_to_one_user: Option<i64> = row.get("most_to_one_user");
        assert_eq!(issued, records, "round {round}: template {template_id} issued {issued}, has {records} coupons");
        assert!((0..=total).contains(&issued), "round {round}: template {template_id} issued {issued} of {total}");
        assert!(
            most_to_one_user.unwrap_or(0) <= limit,
            "round {round}: template {template_id} gave {most_to_one_user:?} coupons to one user, limit {limit}"
        );
    }

    let coupons = sqlx::query(
        "SELECT r.id, r.user_id, r.template_id, r.status, r.order_id, r.used_at, \
         o.status AS order_status, o.coupon_id AS order_coupon, o.user_id AS order_user \
         FROM coupon_record r LEFT JOIN trade_order o ON o.id = r.order_id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut stored = HashMap::new();
    for row in &coupons {
        let (coupon_id, user_id, template_id, status): (i64, i64, i64, String) =
            (row.get("id"), row.get("user_id"), row.get("template_id"), row.get("status"));
        let (order_id, used_at): (Option<i64>, Option<i64>) = (row.get("order_id"), row.get("used_at"));
        let order_status: Option<String> = row.get("order_status");
        let (order_coupon, order_user): (Option<i64>, Option<i64>) = (row.get("order_coupon"), row.get("order_user"));
        let held = order_coupon == Some(coupon_id) && order_user == Some(user_id);
        let what = format!(
            "round {round}: coupon {coupon_id} is {status} with order {order_id:?} ({order_status:?}, \
             coupon {order_coupon:?}, user {order_user:?}), used_at {used_at:?}"
        );
        match status.as_str() {
            "unused" => assert!(order_id.is_none() && used_at.is_none(), "{what}"),
            "locked" => assert!(held && order_status.as_deref() == Some("pending_payment"), "{what}"),
            "used" => {
                assert!(held && matches!(order_status.as_deref(), Some("paid" | "finished")), "{what}");
                assert!(used_at.is_some(), "{what}");
            }
            _ => panic!("{what}: no such status"),
        }
        stored.insert(coupon_id, (user_id, template_id));
    }
    for (coupon_id, claimed) in &ledger.coupons {
        let found = stored.get(coupon_id);
        assert_eq!(found, Some(claimed), "round {round}: acknowledged coupon {coupon_id} (user, template) is lost");
    }

    let with_coupons = sqlx::query(
        "SELECT o.id, o.status, o.coupon_id, o.discount_cents, r.status AS coupon_status, r.order_id AS coupon_order \
         FROM trade_order o LEFT JOIN coupon_record r ON r.id = o.coupon_id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut holders: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in &with_coupons {
        let (order_id, status, discount_cents): (i64, String, i64) =
            (row.get("id"), row.get("status"), row.get("discount_cents"));
        let coupon_id: Option<i64> = row.get("coupon_id");
        let (coupon_status, coupon_order): (Option<String>, Option<i64>) =
            (row.get("coupon_status"), row.get("coupon_order"));
        let what = format!(
            "round {round}: order {order_id} is {status} with coupon {coupon_id:?} ({coupon_status:?}, \
             held by {coupon_order:?}), discount {discount_cents}"
        );
        let Some(coupon_id) = coupon_id else {
            assert_eq!(discount_cents, 0, "{what}");
            continue;
        };
        assert!(discount_cents > 0 && coupon_status.is_some(), "{what}");
        let held = coupon_order == Some(order_id);
        match status.as_str() {
            "pending_payment" => assert!(held && coupon_status.as_deref() == Some("locked"), "{what}"),
            "paid" | "finished" => assert!(held && coupon_status.as_deref() == Some("used"), "{what}"),
            _ => assert!(!held, "{what}: a closed order still holds its coupon"),
        }
        if matches!(status.as_str(), "pending_payment" | "paid" | "finished") {
            holders.entry(coupon_id).or_default().push(order_id);
        }
    }
    for (coupon_id, orders) in holders {
        assert_eq!(orders.len(), 1, "round {round}: coupon {coupon_id} is held by the orders {orders:?}");
    }
}

async fn killed_at_random_moments(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let mut server = ServerProcess::start(SERVER_NAME, &database.url, &[]);
    let skus = create_skus(&server.address, &keys).await;
    let templates = create_templates(&server.address, &keys).await;
    let db = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&database.url).await.unwrap();
    let mut ledger = Ledger::default();
    let mut timings = crate::helpers::timing_rng(&format!("killed_at_random_moments {backend:?}"));

    for round in 1..=ROUNDS {
        let clients = Arc::new(Clients::new(&server.address, &skus, &templates, std::mem::take(&mut ledger)));
        let buyers: Vec<_> = (0..WORKERS).map(|w| actix_web::rt::spawn(Arc::clone(&clients).buyer(w))).collect();
        // The kill point: at random within 750 ms after the first acknowledged order (however
        // slowly a loaded machine gets the first one through).
        let acknowledged =
            eventually(Duration::from_secs(30), || async { !clients.ledger.lock().unwrap().orders.is_empty() }).await;
        assert!(acknowledged, "round {round}: no order was acknowledged within 30 s");
        let kill_after = Duration::from_millis(timings.gen_range(0..750));
        tokio::time::sleep(kill_after).await;
        server.kill();
        for buyer in buyers {
            buyer.await.expect("a buyer panicked");
        }
        ledger = std::mem::take(&mut *clients.ledger.lock().unwrap());
        assert!(!ledger.orders.is_empty(), "round {round}: no order was acknowledged before the kill");

        server = ServerProcess::start(SERVER_NAME, &database.url, &[]);
        audit(&db, &ledger, &skus, round).await;
        eprintln!(
            "round {round}: killed {kill_after:?} after the first acknowledged order; {} acknowledged orders ({} with a coupon) and {} coupons \
             intact, {} claims sold out",
            ledger.orders.len(),
            ledger.coupon_orders,
            ledger.coupons.len(),
            ledger.sold_out
        );
    }
    // However few claims and coupon orders the kills let through, the restarted server then
    // sells out a template of one coupon and that coupon buys a paid order, so the audit also
    // sees both.
    let clients = Clients::new(&server.address, &skus, &templates, std::mem::take(&mut ledger));
    let last = create_template(&server.address, &keys, (100, 0, 1, 1), "last coupon").await;
    let (winner, loser) = (LAST_CLAIMANTS_FIRST, LAST_CLAIMANTS_FIRST + 1);
    let token = clients.keys.mint(UserId::new(winner), Role::User, Duration::from_secs(600));
    let coupon_id = clients.claim(winner, &token, last).await.expect("claimed").expect("the one coupon");
    let sold_out_before = clients.ledger.lock().unwrap().sold_out;
    let other = clients.keys.mint(UserId::new(loser), Role::User, Duration::from_secs(600));
    assert_eq!(clients.claim(loser, &other, last).await, Ok(None), "the second claim of one coupon");
    assert_eq!(clients.ledger.lock().unwrap().sold_out, sold_out_before + 1, "answered sold_out");
    let body = json!({"items": [{"sku_id": skus[0], "quantity": 1}], "coupon_id": coupon_id});
    let placed = clients
        .http
        .post(format!("{}/v1/orders", clients.address))
        .bearer_auth(&token)
        .header("Idempotency-Key", "last-coupon")
        .json(&body)
        .send()
        .await
        .expect("place");
    let (status, order) = read(placed).await.expect("an answer");
    assert_eq!(status, 201, "an order with coupon {coupon_id}: {order}");
    let order_id = order["order_id"].as_i64().expect("order id");
    clients.see(order_id, "pending_payment", None, Some(coupon_id));
    clients.ledger.lock().unwrap().coupon_orders += 1;
    let payment = json!({"order_id": order_id, "out_trade_no": format!("pay-{order_id}"),
        "amount_cents": order["pay_cents"], "channel": "test"})
    .to_string();
    let paid = clients
        .http
        .post(format!("{}/v1/payments/callback", clients.address))
        .header("content-type", "application/json")
        .header("X-Tianji-Signature", clients.payments.sign(payment.as_bytes()))
        .body(payment)
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status(), 200, "payment of order {order_id}");
    clients.see(order_id, "paid", None, Some(coupon_id));
    ledger = std::mem::take(&mut *clients.ledger.lock().unwrap());
    audit(&db, &ledger, &skus, ROUNDS + 1).await;
    assert!(ledger.sold_out > 0, "no claim ran into sold_out");
    assert!(ledger.coupon_orders > 0, "no order was placed with a coupon");
    server.kill();
    db.close().await;
    // Whatever the kills interrupted, the stored state agrees with itself.
    crate::reconcile::assert_reconciles_clean(&database.url, None).await;
}

#[actix_web::test]
async fn killed_at_random_moments_loses_nothing_acknowledged_on_mariadb() {
    killed_at_random_moments(Backend::MySql).await;
}

#[actix_web::test]
async fn killed_at_random_moments_loses_nothing_acknowledged_on_sqlite() {
    killed_at_random_moments(Backend::Sqlite).await;
}

#[actix_web::test]
async fn deadlines_that_passed_while_down_close_right_after_start() {
    let database = TestDatabase::create(Backend::MySql).await;
    let keys = JwtKeys::new(JWT_SECRET);
    let pay_timeout = [("TIANJI_PAY_TIMEOUT", "2s")];
    let server = ServerProcess::start(SERVER_NAME, &database.url, &pay_timeout);
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

    let restarted = ServerProcess::start(SERVER_NAME, &database.url, &pay_timeout);
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
