//! Orders whose SKUs live on other nodes: the cross-node saga. Process level (the real binary,
//! three nodes on one MariaDB): buyers whose users two nodes own buy a SKU a third node owns,
//! each on its user's node; the SKU's owner reserves and settles, and nothing is oversold or
//! lost, also when the SKU's owner is killed mid-sale. App level: the SKU owner's repair pass
//! settles leases a settlement never reached, and the internal routes take only node
//! credentials.

use crate::cluster::{range_of_sku, TestCluster, LEASE_TTL, RENEW_EVERY};
use crate::helpers::{eventually, spawn_app, Backend, PAYMENT_SECRET};
use serde_json::{json, Value};
use sqlx::AnyPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::domain::inventory::Quantity;
use tianji::domain::slots::Key;
use tianji::domain::{OrderId, SkuId, TemplateId, UserId};
use tianji::http::auth::{JwtKeys, Role};

/// `count` user ids from `from` whose range `node` holds now.
async fn users_on(cluster: &TestCluster, node: usize, count: usize, from: i64) -> Vec<i64> {
    let held = cluster.held_by_node().await;
    let ranges = &held.iter().find(|(n, _)| *n == node).expect("a live node").1;
    (from..).filter(|id| ranges.contains(&Key::user(UserId::new(*id)).range().get())).take(count).collect()
}

/// A buyer's client: places, pays and cancels on the node at `address`.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    keys: Arc<JwtKeys>,
}

impl Client {
    fn new() -> Client {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Client { http, keys: Arc::new(JwtKeys::new(crate::helpers::JWT_SECRET)) }
    }

    fn token(&self, user_id: i64) -> String {
        self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600))
    }

    async fn answer(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn place(&self, address: &str, user_id: i64, key: &str, sku_id: i64) -> Option<(u16, Value)> {
        let sent = self
            .http
            .post(format!("{address}/v1/orders"))
            .bearer_auth(self.token(user_id))
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
            .send()
            .await
            .ok()?;
        Some(Self::answer(sent).await)
    }

    /// `POST /v1/coupons/receive` on the node at `address`.
    async fn claim(&self, address: &str, user_id: i64, template_id: i64) -> Option<(u16, Value)> {
        let sent = self
            .http
            .post(format!("{address}/v1/coupons/receive"))
            .bearer_auth(self.token(user_id))
            .json(&json!({"template_id": template_id}))
            .send()
            .await
            .ok()?;
        Some(Self::answer(sent).await)
    }

    /// One unit of `sku_id` with `coupon_id`, on the node at `address`.
    async fn place_with_coupon(&self, address: &str, user_id: i64, sku_id: i64, coupon_id: i64) -> (u16, Value) {
        let sent = self
            .http
            .post(format!("{address}/v1/orders"))
            .bearer_auth(self.token(user_id))
            .header("Idempotency-Key", format!("coupon-{coupon_id}"))
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}], "coupon_id": coupon_id}))
            .send()
            .await
            .expect("place");
        Self::answer(sent).await
    }

    async fn pay(&self, address: &str, order_id: i64, amount_cents: i64) -> Option<(u16, Value)> {
        let body = json!({
            "order_id": order_id, "out_trade_no": format!("t-{order_id}"), "amount_cents": amount_cents, "channel": "test"
        })
        .to_string();
        let signature = tianji::http::payments::PaymentKey::new(PAYMENT_SECRET).sign(body.as_bytes());
        let sent = self
            .http
            .post(format!("{address}/v1/payments/callback"))
            .header("content-type", "application/json")
            .header("X-Tianji-Signature", signature)
            .body(body)
            .send()
            .await
            .ok()?;
        Some(Self::answer(sent).await)
    }

    async fn cancel(&self, address: &str, user_id: i64, order_id: i64) -> (u16, Value) {
        let sent = self
            .http
            .post(format!("{address}/v1/orders/{order_id}/cancel"))
            .bearer_auth(self.token(user_id))
            .send()
            .await
            .expect("cancel");
        Self::answer(sent).await
    }
}

/// A coupon template of `total` coupons (30 off from 50, one per user) whose range `owner`
/// holds, created through node 0 (templates are created until one lands there).
async fn template_owned_by(cluster: &TestCluster, owner: usize, total: i64) -> i64 {
    let valid_until = crate::helpers::rfc3339_from_now(3_600);
    for _ in 0..200 {
        let body = json!({"name": "30 off", "kind": "amount_off", "discount_cents": 30, "min_spend_cents": 50,
            "total": total, "per_user_limit": 1, "valid_until": valid_until});
        let url = format!("{}/v1/admin/coupon-templates", cluster.address(0));
        let response = cluster.http.post(url).bearer_auth(&cluster.admin).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let template_id = response.json::<Value>().await.unwrap()["template_id"].as_i64().unwrap();
        if cluster.holder(Key::template(TemplateId::new(template_id)).range()).await == Some(owner) {
            return template_id;
        }
    }
    panic!("no template landed on node {owner}");
}

async fn pool(cluster: &TestCluster) -> AnyPool {
    sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&cluster.database.url).await.unwrap()
}

/// `order_id -> lease status` of a SKU's reservation rows.
async fn leases(pool: &AnyPool, sku_id: i64) -> BTreeMap<i64, String> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT order_id, status FROM inventory_reservation WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

/// `order_id -> order status` of the orders holding an item of a SKU.
async fn orders(pool: &AnyPool, sku_id: i64) -> BTreeMap<i64, String> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT o.id, o.status FROM trade_order o JOIN trade_order_item i ON i.order_id = o.id WHERE i.sku_id = ?",
    )
    .bind(sku_id)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

fn lease_of(order_status: &str) -> &'static str {
    match order_status {
        "pending_payment" => "reserved",
        "paid" | "finished" => "confirmed",
        "closed" => "released",
        other => panic!("no lease status for {other}"),
    }
}

/// Requests of a latency sample sent before any is counted.
const WARM_UP: usize = 10;

/// Sends one request per user, one at a time, alternating same-node and cross-node (`send`
/// with `true` for same-node), each answered 201; prints the p50 of each kind after the
/// warm-up.
async fn print_p50s<F, Fut>(what: &str, users: Vec<i64>, mut send: F)
where
    F: FnMut(i64, bool) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (n, user_id) in users.into_iter().enumerate() {
        let same_node = n % 2 == 0;
        let started = Instant::now();
        let (status, body) = send(user_id, same_node).await;
        let elapsed = started.elapsed();
        assert_eq!(status, 201, "{body}");
        if n >= WARM_UP {
            samples.entry(if same_node { "same-node" } else { "cross-node" }).or_default().push(elapsed);
        }
    }
    for (kind, samples) in samples {
        eprintln!("{what} p50 {kind}: {} us over {} requests", p50_us(samples.clone()), samples.len());
    }
}

/// The median of `samples`, in microseconds.
fn p50_us(mut samples: Vec<Duration>) -> u128 {
    samples.sort();
    samples[samples.len() / 2].as_micros()
}

#[tokio::test]
async fn buyers_on_two_nodes_buy_a_sku_a_third_node_owns_and_its_leases_follow_their_orders() {
    const STOCK: i64 = 20;
    const BUYERS_PER_NODE: usize = 20;
    const PAID: usize = 7;
    const CANCELLED: usize = 7;
    let cluster = TestCluster::start_with("saga", 3, "6s", &[]).await;
    let sku_id = cluster.sku_owned_by(2, 0, STOCK).await;
    let mut buyers = Vec::new();
    for node in [0, 1] {
        let users = users_on(&cluster, node, BUYERS_PER_NODE, 1_000).await;
        buyers.extend(users.into_iter().map(|user_id| (cluster.address(node).to_owned(), user_id)));
    }

    // Every buyer at once, each on its user's node; a 503 is retried with the same key.
    let client = Client::new();
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let placements: Vec<_> = buyers
        .iter()
        .cloned()
        .map(|(address, user_id)| {
            let (client, refusals) = (client.clone(), Arc::clone(&refusals));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    assert!(Instant::now() < deadline, "buyer {user_id} got no answer");
                    match client.place(&address, user_id, "saga", sku_id).await {
                        Some((201, body)) => {
                            let order = (body["order_id"].as_i64().unwrap(), body["pay_cents"].as_i64().unwrap());
                            return Some((address, user_id, order));
                        }
                        Some((409, body)) if body["code"] == "insufficient_stock" => return None,
                        Some((503, body)) => {
                            refusals.lock().unwrap().push(body);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                        Some(other) => panic!("buyer {user_id}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for placement in placements {
        acknowledged.extend(placement.await.unwrap());
    }
    let refusals = refusals.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), STOCK as usize, "exactly the stock is sold, to buyers of both nodes: {refusals:?}");
    assert_eq!(cluster.counters(sku_id).await, (STOCK, 0, STOCK, 0));
    let pool = pool(&cluster).await;
    let held = leases(&pool, sku_id).await;
    let ids: BTreeSet<i64> = acknowledged.iter().map(|(_, _, (order_id, _))| *order_id).collect();
    assert_eq!(held.keys().copied().collect::<BTreeSet<_>>(), ids, "one lease per acknowledged order, no other");
    assert!(held.values().all(|status| status == "reserved"));
    assert_eq!(orders(&pool, sku_id).await.keys().copied().collect::<BTreeSet<_>>(), ids);

    // Pay some, cancel some, each on its user's node: the lease on the SKU's owner follows
    // (before the answer, unless the call failed on a loaded machine: then the owner's repair
    // pass settles it within a lease TTL or two); the rest time out there.
    let lease_becomes = |order_id: i64, status: &'static str| {
        let pool = pool.clone();
        async move {
            let settled =
                eventually(LEASE_TTL * 3, || async { leases(&pool, sku_id).await[&order_id] == status }).await;
            assert!(settled, "order {order_id}'s lease never became {status}");
        }
    };
    for (address, _, (order_id, pay_cents)) in &acknowledged[..PAID] {
        let (status, body) = client.pay(address, *order_id, *pay_cents).await.expect("pay");
        assert_eq!((status, body["status"].as_str()), (200, Some("paid")), "{body}");
        lease_becomes(*order_id, "confirmed").await;
    }
    for (address, user_id, (order_id, _)) in &acknowledged[PAID..PAID + CANCELLED] {
        let (status, body) = client.cancel(address, *user_id, *order_id).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("closed")), "{body}");
        lease_becomes(*order_id, "released").await;
    }
    let timed_out = STOCK as usize - PAID - CANCELLED;
    let settled = eventually(Duration::from_secs(15), || async {
        cluster.counters(sku_id).await == (STOCK, STOCK - PAID as i64, 0, PAID as i64)
    })
    .await;
    assert!(settled, "the timed-out orders' units did not come back: {:?}", cluster.counters(sku_id).await);
    let (stored, held) = (orders(&pool, sku_id).await, leases(&pool, sku_id).await);
    let closed = stored.values().filter(|status| *status == "closed").count();
    assert_eq!(closed, CANCELLED + timed_out);
    for (order_id, status) in &stored {
        assert_eq!(held[order_id], lease_of(status), "order {order_id} is {status}");
    }
    crate::reconcile::assert_reconciles_clean(&cluster.database.url, None).await;

    // Latency of a placement on node 0: its own SKU, and one node 2 owns (loopback).
    const SAMPLES: usize = 60;
    let local_sku = cluster.sku_owned_by(0, 0, 1_000).await;
    let remote_sku = cluster.sku_owned_by(2, 0, 1_000).await;
    let users = users_on(&cluster, 0, 2 * SAMPLES + WARM_UP, 100_000).await;
    print_p50s("place", users, |user_id, same_node| {
        let sku = if same_node { local_sku } else { remote_sku };
        let client = client.clone();
        let address = cluster.address(0).to_owned();
        async move { client.place(&address, user_id, "latency", sku).await.expect("place") }
    })
    .await;
    pool.close().await;
}

/// How a buyer of the kill test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Placed and paid: `order_id`.
    Paid(i64),
    SoldOut,
}

#[tokio::test]
async fn the_skus_owner_killed_mid_sale_loses_no_acknowledged_order_and_oversells_nothing() {
    const STOCK: i64 = 30;
    const BUYERS_PER_NODE: usize = 25;
    /// The first buyers hold their payment until the SKU's owner is dead.
    const PAID_AFTER_THE_KILL: usize = 5;
    // Short deadlines and grace: a reservation the dead owner committed for an order never
    // written expires within the test, into its new owner's repair pass.
    let settings = [("TIANJI_RESERVATION_GRACE", "1s")];
    let mut cluster = TestCluster::start_with("saga-kill", 3, "6s", &settings).await;
    let sku_id = cluster.sku_owned_by(2, 0, STOCK).await;
    let range = range_of_sku(sku_id);
    let mut buyers = Vec::new();
    for node in [0, 1] {
        let users = users_on(&cluster, node, BUYERS_PER_NODE, 1_000).await;
        buyers.extend(users.into_iter().map(|user_id| (cluster.address(node).to_owned(), user_id)));
    }

    let client = Client::new();
    let killed = Arc::new(AtomicBool::new(false));
    let (kill_seen, _) = tokio::sync::watch::channel(false);
    let refused_after_kill = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicUsize::new(0));
    let sale: Vec<_> = buyers
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, (address, user_id))| {
            let (client, killed, refused, placed) =
                (client.clone(), Arc::clone(&killed), Arc::clone(&refused_after_kill), Arc::clone(&placed));
            let mut kill_seen = kill_seen.subscribe();
            tokio::spawn(async move {
                // Buyers arrive one every 60 ms, so the sale spans the kill.
                tokio::time::sleep(Duration::from_millis(60) * n as u32).await;
                let deadline = Instant::now() + Duration::from_secs(60);
                let order = loop {
                    assert!(Instant::now() < deadline, "buyer {user_id} got no answer");
                    match client.place(&address, user_id, "saga-kill", sku_id).await {
                        Some((201, body)) => {
                            placed.fetch_add(1, Ordering::SeqCst);
                            break (body["order_id"].as_i64().unwrap(), body["pay_cents"].as_i64().unwrap());
                        }
                        Some((409, body)) if body["code"] == "insufficient_stock" => return Ending::SoldOut,
                        Some((503, _)) | None => {
                            refused.fetch_add(usize::from(killed.load(Ordering::SeqCst)), Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Some(other) => panic!("buyer {user_id}: {other:?}"),
                    }
                };
                if n < PAID_AFTER_THE_KILL {
                    // Paid while the SKU's owner is dead: committed on the buyer's node, its
                    // confirmation cannot reach the owner; the range's next owner repairs it.
                    kill_seen.wait_for(|killed| *killed).await.expect("the test signals the kill");
                }
                loop {
                    assert!(Instant::now() < deadline, "buyer {user_id}'s payment got no answer");
                    match client.pay(&address, order.0, order.1).await {
                        Some((200, body)) => {
                            assert_eq!(body["status"], "paid", "{body}");
                            return Ending::Paid(order.0);
                        }
                        Some((503, _)) | None => tokio::time::sleep(Duration::from_millis(50)).await,
                        Some(other) => panic!("buyer {user_id}'s payment: {other:?}"),
                    }
                }
            })
        })
        .collect();

    // Mid-sale, the SKU's owner dies without a word.
    let started =
        eventually(Duration::from_secs(20), || async { placed.load(Ordering::SeqCst) >= 2 * PAID_AFTER_THE_KILL })
            .await;
    assert!(started, "the sale did not start");
    killed.store(true, Ordering::SeqCst);
    cluster.nodes[2].take().unwrap().kill();
    kill_seen.send_replace(true);
    let taken = eventually(LEASE_TTL + RENEW_EVERY * 4, || async {
        cluster.held_by_node().await.iter().map(|(_, ranges)| ranges.len()).sum::<usize>() == 64
    })
    .await;
    assert!(taken, "the dead node's ranges are not all taken: {:?}", cluster.held_by_node().await);
    assert!(cluster.holder(range).await.is_some());

    let mut acknowledged = BTreeSet::new();
    for buyer in sale {
        if let Ending::Paid(order_id) = buyer.await.unwrap() {
            assert!(acknowledged.insert(order_id));
        }
    }
    assert!(refused_after_kill.load(Ordering::SeqCst) > 0, "no placement was refused while the owner was down");
    assert!(acknowledged.len() <= STOCK as usize);

    // Every lease the dead owner left open settles: sold under a paid order, released under
    // an order never written (once expired, by the new owner's repair pass).
    let pool = pool(&cluster).await;
    let settled = eventually(Duration::from_secs(30), || async {
        leases(&pool, sku_id).await.values().all(|status| status != "reserved")
    })
    .await;
    assert!(settled, "open leases left: {:?}", leases(&pool, sku_id).await);
    let stored = orders(&pool, sku_id).await;
    let held = leases(&pool, sku_id).await;
    for order_id in &acknowledged {
        assert_eq!(stored.get(order_id).map(String::as_str), Some("paid"), "acknowledged order {order_id} lost");
        assert_eq!(held[order_id], "confirmed");
    }
    let paid_orders = stored.values().filter(|status| *status == "paid").count();
    assert_eq!(paid_orders, acknowledged.len(), "every paid order was acknowledged to its buyer");
    let sold = acknowledged.len() as i64;
    assert_eq!(cluster.counters(sku_id).await, (STOCK, STOCK - sold, 0, sold), "one unit per paid order");
    pool.close().await;
    crate::reconcile::assert_reconciles_clean(&cluster.database.url, None).await;
}

#[actix_web::test]
async fn the_repair_pass_releases_a_reservation_never_ordered_and_confirms_one_whose_order_was_paid() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("repair", 100, 10).await;
    // Units reserved alone, as a SKU's owner does for another node's placement, for an order
    // that was never written; its lease expired long ago.
    let never = OrderId::new(app.core.next_id());
    let units = Quantity::parse(2, 10).unwrap();
    app.core.reserve_alone(SkuId::new(sku_id), never, units, 1).await.expect("reserved");
    // An order paid on its user's node whose confirmation never reached the SKU's owner: its
    // row says paid, its lease is still open.
    let (paid, _) = app.placed(5, sku_id, 3).await;
    sqlx::query("UPDATE trade_order SET status = 'paid', version = version + 1 WHERE id = ?")
        .bind(paid)
        .execute(&app.db)
        .await
        .unwrap();
    let (pending, _) = app.placed(6, sku_id, 1).await;
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved, counters.sold), (4, 6, 0));

    let pass = app.core.repair_leases(None).await.expect("a pass");
    assert_eq!((pass.repaired, pass.failed), (2, 0), "{pass:?}");
    let leases = app.reservations(sku_id).await;
    assert_eq!(leases[&never.get()].1, "released");
    assert_eq!(leases[&paid].1, "confirmed");
    assert_eq!(leases[&pending].1, "reserved", "an order awaiting payment keeps its units");
    let counters = app.db_counters(sku_id).await;
    assert_eq!((counters.available, counters.reserved, counters.sold), (6, 1, 3));
    // The SKU's actor settled them: what it serves is what is stored.
    let served = app.get_sku(sku_id).await;
    assert_eq!(
        (served["available"].as_i64(), served["reserved"].as_i64(), served["sold"].as_i64()),
        (Some(6), Some(1), Some(3))
    );
    let again = app.core.repair_leases(None).await.expect("a pass");
    assert_eq!(again.repaired, 0, "nothing left to repair: {again:?}");
    let scrape = crate::metrics::scrape(&app).await;
    let repairs = |outcome| scrape.value("tianji_lease_repairs_total", &[("outcome", outcome)]);
    assert_eq!((repairs("repaired"), repairs("failed")), (Some(2.0), Some(0.0)));
}

#[actix_web::test]
async fn internal_routes_take_only_node_credentials_and_node_credentials_open_no_public_route() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("internal", 100, 10).await;
    let node = app.keys.mint(UserId::new(1), Role::Node, Duration::from_secs(60));
    let order_id = app.core.next_id();
    let call = json!({"order_id": order_id, "quantity": 1, "expires_at_ms": 1});
    let reserve = |token: Option<String>| {
        let request = app.client.post(app.url(&format!("/internal/v1/skus/{sku_id}/reserve"))).json(&call);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    for (token, status) in [(None, 401), (Some(app.user_token(5)), 403), (Some(app.admin_token()), 403)] {
        let response = reserve(token).send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert!(body["code"].is_string() && body["message"].is_string(), "{body}");
    }
    assert_eq!(app.db_counters(sku_id).await.reserved, 0, "refused calls reserved nothing");

    let response = reserve(Some(node.clone())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let granted: Value = response.json().await.unwrap();
    assert_eq!((granted["name"].as_str(), granted["unit_price_cents"].as_i64()), (Some("internal"), Some(100)));
    assert_eq!(app.db_counters(sku_id).await.reserved, 1, "committed before the answer");
    let response = reserve(Some(node.clone())).send().await.unwrap();
    assert_eq!(response.status(), 409, "one lease per order and sku");
    let settle = json!({"order_id": order_id, "settlement": "release"});
    let url = app.url(&format!("/internal/v1/skus/{sku_id}/settle"));
    let response = app.client.post(&url).bearer_auth(&node).json(&settle).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.db_counters(sku_id).await.available, 10);
    let bad = json!({"order_id": order_id, "settlement": "return"});
    let response = app.client.post(&url).bearer_auth(&node).json(&bad).send().await.unwrap();
    assert_eq!(response.status(), 422, "a return names its units");

    // A template's owner issues a coupon to a user another node serves: the user's count is
    // the database's, so a second issue of the same seq is refused.
    let valid_until = crate::helpers::rfc3339_from_now(3_600);
    let (status, template) = app
        .create_template(json!({"name": "internal", "kind": "amount_off", "discount_cents": 30,
            "min_spend_cents": 0, "total": 2, "per_user_limit": 1, "valid_until": valid_until}))
        .await;
    assert_eq!(status, 201, "{template}");
    let url = app.url(&format!("/internal/v1/coupon-templates/{}/issue", template["template_id"]));
    let issue = |token: &str, call: Value| app.client.post(&url).bearer_auth(token.to_owned()).json(&call).send();
    let response = issue(&app.user_token(42), json!({"user_id": 42, "seq": 1})).await.unwrap();
    assert_eq!(response.status(), 403);
    let response = issue(&node, json!({"user_id": 42, "seq": 0})).await.unwrap();
    assert_eq!(response.status(), 422);
    let response = issue(&node, json!({"user_id": 42, "seq": 1})).await.unwrap();
    assert_eq!(response.status(), 200);
    let issued: Value = response.json().await.unwrap();
    let stored: Vec<i64> = app.coupons(42, "").await.iter().map(|c| c["coupon_id"].as_i64().unwrap()).collect();
    assert_eq!(stored, vec![issued["coupon_id"].as_i64().unwrap()], "committed before the answer");
    let response = issue(&node, json!({"user_id": 42, "seq": 1})).await.unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.json::<Value>().await.unwrap()["refused"], "limit_reached");
    assert_eq!(app.coupons(42, "").await.len(), 1);

    // A node credential is no user and no admin.
    let response = app.client.get(app.url(&format!("/v1/skus/{sku_id}"))).bearer_auth(&node).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = app.client.get(app.url("/v1/admin/cluster")).bearer_auth(&node).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let document: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(document["paths"].as_object().unwrap().keys().all(|path| !path.starts_with("/internal")));
}

/// A coupon issued for a user after the user's actor read its wallet (as a template's owner
/// does for a user another node serves, whose answer the user's node may have lost) is read
/// from the store when an order names it, once; a coupon of nobody's or of another user stays
/// refused.
#[actix_web::test]
async fn a_coupon_issued_after_the_wallet_was_read_can_be_spent() {
    let app = spawn_app(Backend::MySql).await;
    let sku_id = app.create_sku("late coupon", 100, 10).await;
    let (buyer, other) = (42, 43);
    // The buyer's actor is live, its wallet read (empty).
    app.placed(buyer, sku_id, 1).await;
    let valid_until = crate::helpers::rfc3339_from_now(3_600);
    let (status, template) = app
        .create_template(json!({"name": "late", "kind": "amount_off", "discount_cents": 30,
            "min_spend_cents": 0, "total": 5, "per_user_limit": 1, "valid_until": valid_until}))
        .await;
    assert_eq!(status, 201, "{template}");
    // Issued the way a remote claim is: committed for the buyer, not through its actor.
    let node = app.keys.mint(UserId::new(1), Role::Node, Duration::from_secs(60));
    let url = app.url(&format!("/internal/v1/coupon-templates/{}/issue", template["template_id"]));
    let issue =
        |user_id: i64| app.client.post(&url).bearer_auth(node.clone()).json(&json!({"user_id": user_id, "seq": 1}));
    let late: Value = issue(buyer).send().await.unwrap().json().await.unwrap();
    let late = late["coupon_id"].as_i64().expect("issued");
    let others: Value = issue(other).send().await.unwrap().json().await.unwrap();
    let others = others["coupon_id"].as_i64().expect("issued");

    let items = json!([{"sku_id": sku_id, "quantity": 1}]);
    for not_the_buyers in [others, 987_654_321] {
        let (status, body) = app.place_with_coupon(buyer, items.clone(), not_the_buyers).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("coupon_unavailable")), "{body}");
    }
    let (status, body) = app.place_with_coupon(buyer, items.clone(), late).await;
    assert_eq!((status, body["pay_cents"].as_i64()), (201, Some(70)), "{body}");
    let (status, body) = app.place_with_coupon(buyer, items, late).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("coupon_unavailable")), "locked to the first order: {body}");
}

/// A flash sale through every node: each buyer sends its order to a node picked round-robin,
/// whoever owns the buyer or the SKU; the node forwards it to the buyer's node, which reserves
/// on the SKU's node when that is another one. Exactly the stock is sold, once per acknowledged
/// order, and the database agrees.
#[tokio::test]
async fn a_flash_sale_through_every_node_sells_exactly_the_stock() {
    const STOCK: i64 = 25;
    const BUYERS: i64 = 90;
    let cluster = TestCluster::start("saga-every-node", 3).await;
    let sku_id = cluster.sku_owned_by(2, 0, STOCK).await;
    let sku_range = range_of_sku(sku_id);
    let buyers: Vec<i64> = (5_000..5_000 + BUYERS).collect();
    let homes: BTreeSet<Option<usize>> = {
        let mut homes = BTreeSet::new();
        for user_id in &buyers {
            homes.insert(cluster.holder(Key::user(UserId::new(*user_id)).range()).await);
        }
        homes
    };
    assert_eq!(homes.len(), 3, "buyers live on every node: {homes:?} (the SKU's range {sku_range})");
    // A client retries a 503 (a range between owners while the nodes still balance) with the
    // same Idempotency-Key, as Retry-After asks, a bounded number of times.
    let retried = AtomicUsize::new(0);
    let replies = futures::future::join_all(buyers.iter().enumerate().map(|(n, user_id)| {
        let (cluster, retried) = (&cluster, &retried);
        async move {
            for _ in 0..40 {
                let (status, body) = cluster.place(n % 3, *user_id, "flash", sku_id).await.expect("an answer");
                if status != 503 {
                    return (status, body);
                }
                retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            panic!("buyer {user_id} got 503 forty times");
        }
    }))
    .await;
    eprintln!("503s retried: {}", retried.load(Ordering::Relaxed));
    let mut acknowledged = BTreeSet::new();
    let mut sold_out = 0;
    for (status, body) in &replies {
        match status {
            201 => assert!(acknowledged.insert(body["order_id"].as_i64().unwrap()), "an order answered twice"),
            409 => {
                assert_eq!(body["code"], "insufficient_stock", "{body}");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {body} (the SKU's range {sku_range})"),
        }
    }
    assert_eq!(acknowledged.len() as i64, STOCK, "exactly the stock sold");
    assert_eq!(sold_out, BUYERS - STOCK);
    assert_eq!(cluster.stored_orders(sku_id).await, acknowledged, "every acknowledged order stored, no other");
    assert_eq!(cluster.counters(sku_id).await, (STOCK, 0, STOCK, 0));
    crate::reconcile::assert_reconciles_clean(&cluster.database.url, None).await;
}

/// A coupon rush on a template node 2 owns, by buyers whose users nodes 0, 1 and 2 own, each
/// on its user's node: node 2 issues and commits every coupon (those for the other nodes'
/// users through its internal route), exactly the template's total is issued, one per user,
/// and a coupon claimed that way takes its discount off an order on the buyer's node.
#[tokio::test]
async fn buyers_of_every_node_claim_a_template_a_third_node_owns_and_never_more_than_its_total() {
    const TOTAL: i64 = 12;
    let cluster = TestCluster::start("saga-coupons", 3).await;
    let template_id = template_owned_by(&cluster, 2, TOTAL).await;
    let mut buyers = Vec::new();
    for (node, count) in [(0, 12), (1, 12), (2, 4)] {
        let users = users_on(&cluster, node, count, 20_000).await;
        buyers.extend(users.into_iter().map(|user_id| (cluster.address(node).to_owned(), user_id)));
    }
    let client = Client::new();

    // A buyer of node 0 claims, then claims again: the limit holds across nodes. A claim
    // answered 503 (a range between owners on this loaded machine) is retried; one that was
    // issued all the same is answered `limit_reached` then, and the database shows it.
    let (address, first) = buyers[0].clone();
    let (status, body, retried) = claim_answered(&client, &address, first, template_id).await;
    let limit_reached = |body: &Value| body["code"] == "limit_reached";
    assert!(status == 201 || (retried && status == 409 && limit_reached(&body)), "{status} {body}");
    let (status, body, _) = claim_answered(&client, &address, first, template_id).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("limit_reached")), "{body}");

    // The rest at once.
    let claims = futures::future::join_all(buyers[1..].iter().cloned().map(|(address, user_id)| {
        let client = client.clone();
        async move { (user_id, claim_answered(&client, &address, user_id, template_id).await) }
    }))
    .await;
    let mut answered = BTreeSet::new();
    let mut issued_unanswered = BTreeSet::from([first]);
    for (user_id, (status, body, retried)) in claims {
        match status {
            201 => {
                answered.insert((user_id, body["coupon_id"].as_i64().unwrap()));
            }
            // A claim answered 503 and issued all the same is answered `sold_out` (stock is
            // checked first) or `limit_reached` when retried.
            409 if retried && (body["code"] == "sold_out" || limit_reached(&body)) => {
                issued_unanswered.insert(user_id);
            }
            409 if body["code"] == "sold_out" => {}
            other => panic!("buyer {user_id}: {other} {body}"),
        }
    }
    let pool = pool(&cluster).await;
    let (issued,): (i64,) = sqlx::query_as("SELECT issued FROM coupon_template WHERE id = ?")
        .bind(template_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let stored: Vec<(i64, i64)> = sqlx::query_as("SELECT user_id, id FROM coupon_record WHERE template_id = ?")
        .bind(template_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!((issued, stored.len() as i64), (TOTAL, TOTAL), "exactly the template's total is issued");
    let stored: BTreeMap<i64, i64> = stored.into_iter().collect();
    assert_eq!(stored.len() as i64, TOTAL, "one per user");
    for (user_id, coupon_id) in &answered {
        assert_eq!(stored.get(user_id), Some(coupon_id), "an answered coupon is stored for its buyer");
    }
    for user_id in stored.keys() {
        let was_answered = answered.iter().any(|(holder, _)| holder == user_id);
        assert!(was_answered || issued_unanswered.contains(user_id), "buyer {user_id} holds a coupon never claimed");
    }
    let home: BTreeMap<i64, String> = buyers.iter().map(|(address, user_id)| (*user_id, address.clone())).collect();
    let holders: Vec<(String, i64, i64)> =
        stored.iter().map(|(user_id, coupon_id)| (home[user_id].clone(), *user_id, *coupon_id)).collect();
    let homes: BTreeSet<&str> = holders.iter().map(|(address, ..)| address.as_str()).collect();
    assert!(homes.len() >= 2, "coupons went to buyers of other nodes than the template's: {homes:?}");
    // The template's node issued those of the other nodes' buyers through its internal route.
    let mut issued_remotely = 0.0;
    for node in [0, 1] {
        let text = cluster.http.get(format!("{}/metrics", cluster.address(node))).send().await.unwrap();
        let scrape = crate::metrics::Scrape::parse(&text.text().await.unwrap());
        let calls = scrape.value("tianji_remote_calls_total", &[("call", "issue"), ("outcome", "ok")]);
        issued_remotely += calls.expect("counted");
    }
    assert!(issued_remotely >= 1.0 && issued_remotely <= TOTAL as f64, "{issued_remotely} issued remotely");

    // Each holder spends the coupon on its own node, on a SKU node 1 owns: 100 - 30.
    let sku_id = cluster.sku_owned_by(1, 0, 100).await;
    for (address, user_id, coupon_id) in &holders {
        let mut answer = client.place_with_coupon(address, *user_id, sku_id, *coupon_id).await;
        for _ in 0..40 {
            if answer.0 != 503 {
                break;
            }
            // The same Idempotency-Key: a retry places the order at most once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = client.place_with_coupon(address, *user_id, sku_id, *coupon_id).await;
        }
        let (status, body) = answer;
        assert_eq!((status, body["pay_cents"].as_i64()), (201, Some(70)), "buyer {user_id} on {address}: {body}");
    }
    let (locked,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM coupon_record WHERE template_id = ? AND status = 'locked'")
            .bind(template_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(locked, TOTAL);
    // Latency of a claim on node 0: of a template node 0 owns, and of one node 2 owns.
    const SAMPLES: usize = 60;
    let (local, remote) = (template_owned_by(&cluster, 0, 1_000).await, template_owned_by(&cluster, 2, 1_000).await);
    let users = users_on(&cluster, 0, 2 * SAMPLES + WARM_UP, 200_000).await;
    print_p50s("claim", users, |user_id, same_node| {
        let template = if same_node { local } else { remote };
        let client = client.clone();
        let address = cluster.address(0).to_owned();
        async move {
            let (status, body, _) = claim_answered(&client, &address, user_id, template).await;
            (status, body)
        }
    })
    .await;
    pool.close().await;
    crate::reconcile::assert_reconciles_clean(&cluster.database.url, None).await;
}

/// A claim on the node at `address`, retried while it is answered 503 (as Retry-After asks);
/// whether it was retried.
async fn claim_answered(client: &Client, address: &str, user_id: i64, template_id: i64) -> (u16, Value, bool) {
    let mut retried = false;
    for _ in 0..40 {
        match client.claim(address, user_id, template_id).await {
            Some((503, _)) | None => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some((status, body)) => return (status, body, retried),
        }
    }
    panic!("buyer {user_id} got no answer");
}
