//! Forwarding between the nodes of a cluster, with the real binary on MariaDB: any node takes
//! any request and answers with the owner's answer (an order placed through a non-owner is
//! stored once, and its Idempotency-Key replays it through yet another node); a request
//! forwarded once is never forwarded again; an owner that is paused or killed is answered for
//! with 503 and Retry-After within the peer timeout, and after the takeover the same requests
//! succeed again.
//!
//! The user and SKU of each order here have the same owner (orders spanning owners are sagas,
//! not forwarding).

use crate::cluster::{range_of_sku, users_in_range, TestCluster, LEASE_TTL, POLL_SLACK, RENEW_EVERY};
use crate::helpers::{eventually, PAYMENT_SECRET};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tianji::domain::UserId;
use tianji::http::auth::Role;
use tianji::http::forward::FORWARDED_HEADER;
use tianji::http::payments::PaymentKey;

/// The peer timeout of these clusters: short, so a paused owner's timeout is seen quickly.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);
/// What a loaded test machine adds to an answer's bound.
const ANSWER_SLACK: Duration = Duration::from_millis(700);

/// An answer: status, `Retry-After`, `Idempotency-Replayed` and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    replayed: bool,
    body: Value,
}

async fn answer(sent: reqwest::RequestBuilder) -> Answer {
    let response = sent.send().await.expect("an answer");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, retry_after) = (response.status().as_u16(), header("retry-after"));
    let replayed = header("idempotency-replayed").as_deref() == Some("true");
    Answer { status, retry_after, replayed, body: response.json().await.unwrap_or(Value::Null) }
}

impl TestCluster {
    fn user_token(&self, user_id: i64) -> String {
        self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600))
    }

    async fn get_sku(&self, via: usize, sku_id: i64) -> Answer {
        let url = format!("{}/v1/skus/{sku_id}", self.address(via));
        answer(self.http.get(url).bearer_auth(self.user_token(7))).await
    }

    async fn order(&self, via: usize, user_id: i64, key: &str, sku_id: i64) -> Answer {
        let sent = self
            .http
            .post(format!("{}/v1/orders", self.address(via)))
            .bearer_auth(self.user_token(user_id))
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}));
        answer(sent).await
    }

    async fn pay(&self, via: usize, order_id: i64, amount_cents: i64) -> Answer {
        let body = json!({"order_id": order_id, "out_trade_no": format!("t-{order_id}"),
            "amount_cents": amount_cents, "channel": "test"})
        .to_string();
        let signature = PaymentKey::new(PAYMENT_SECRET).sign(body.as_bytes());
        let sent = self
            .http
            .post(format!("{}/v1/payments/callback", self.address(via)))
            .header("content-type", "application/json")
            .header("X-Tianji-Signature", signature)
            .body(body);
        answer(sent).await
    }

    /// `tianji_forwarded_requests_total{outcome}` of node `node`.
    async fn forwarded(&self, node: usize, outcome: &str) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.address(node))).send().await.unwrap().text().await.unwrap();
        let series = format!("tianji_forwarded_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |value| value.parse().unwrap())
    }
}

#[tokio::test]
async fn every_node_answers_with_the_owners_answer_and_an_order_is_placed_once() {
    let cluster = TestCluster::start("forward", 3).await;
    for owner in 0..3 {
        let others: Vec<usize> = (0..3).filter(|node| *node != owner).collect();
        let sku_id = cluster.sku_owned_by(owner, others[0], 10).await;
        let buyer = users_in_range(range_of_sku(sku_id), 1 + 1_000 * owner as i64, 1)[0];

        // Reads: the same answer from every node.
        for via in 0..3 {
            let read = cluster.get_sku(via, sku_id).await;
            assert_eq!((read.status, read.body["sku_id"].as_i64()), (200, Some(sku_id)), "via {via}: {read:?}");
            assert_eq!(read.body["available"], 10);
        }

        // Placed through a non-owner, replayed through the other one: one order.
        let key = format!("forwarded-{owner}");
        let placed = cluster.order(others[0], buyer, &key, sku_id).await;
        assert_eq!((placed.status, placed.replayed), (201, false), "{placed:?}");
        let order_id = placed.body["order_id"].as_i64().unwrap();
        let again = cluster.order(others[1], buyer, &key, sku_id).await;
        assert_eq!((again.status, again.replayed), (201, true), "{again:?}");
        assert_eq!(again.body["order_id"].as_i64(), Some(order_id));
        let owned = cluster.order(owner, buyer, &key, sku_id).await;
        assert_eq!((owned.status, owned.replayed, owned.body["order_id"].as_i64()), (201, true, Some(order_id)));
        assert_eq!(cluster.stored_orders(sku_id).await.into_iter().collect::<Vec<_>>(), vec![order_id]);
        assert_eq!(cluster.counters(sku_id).await, (10, 9, 1, 0));

        // The buyer's order read through each node; paid through a non-owner (the callback's
        // body names the order); finished by an admin through the other non-owner.
        for via in 0..3 {
            let url = format!("{}/v1/orders/{order_id}", cluster.address(via));
            let read = answer(cluster.http.get(url).bearer_auth(cluster.user_token(buyer))).await;
            assert_eq!((read.status, read.body["order_id"].as_i64()), (200, Some(order_id)), "via {via}");
        }
        let paid = cluster.pay(others[1], order_id, placed.body["pay_cents"].as_i64().unwrap()).await;
        assert_eq!((paid.status, paid.body["status"].as_str()), (200, Some("paid")), "{paid:?}");
        let url = format!("{}/v1/orders/{order_id}/finish", cluster.address(others[0]));
        let finished = answer(cluster.http.post(url).bearer_auth(&cluster.admin)).await;
        assert_eq!((finished.status, finished.body["status"].as_str()), (200, Some("finished")), "{finished:?}");
        assert_eq!(cluster.counters(sku_id).await, (10, 9, 0, 1));
    }

    // Each forward is counted once on the node that forwarded it.
    let sku_id = cluster.sku_owned_by(1, 0, 1).await;
    let before = (cluster.forwarded(0, "answered").await, cluster.forwarded(1, "answered").await);
    assert_eq!(cluster.get_sku(0, sku_id).await.status, 200);
    let after = (cluster.forwarded(0, "answered").await, cluster.forwarded(1, "answered").await);
    assert_eq!(after, (before.0 + 1, before.1), "counted by the forwarding node, not by the owner");
}

#[tokio::test]
async fn a_forwarded_request_is_never_forwarded_again() {
    let cluster = TestCluster::start("forward-once", 3).await;
    let sku_id = cluster.sku_owned_by(1, 0, 5).await;
    let buyer = users_in_range(range_of_sku(sku_id), 1, 1)[0];
    let refused_before = cluster.forwarded(0, "not_owner").await;

    let url = format!("{}/v1/skus/{sku_id}", cluster.address(0));
    let read = answer(cluster.http.get(url).bearer_auth(cluster.user_token(7)).header(FORWARDED_HEADER, "n2")).await;
    assert_eq!((read.status, read.body["code"].as_str()), (503, Some("not_owner")), "{read:?}");
    assert_eq!(read.body["owner"].as_str(), Some(cluster.address(1)));
    assert_eq!(read.retry_after.as_deref(), Some("1"));

    let sent = cluster
        .http
        .post(format!("{}/v1/orders", cluster.address(0)))
        .bearer_auth(cluster.user_token(buyer))
        .header("Idempotency-Key", "marked")
        .header(FORWARDED_HEADER, "n2")
        .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}));
    let placed = answer(sent).await;
    assert_eq!((placed.status, placed.body["code"].as_str()), (503, Some("not_owner")), "{placed:?}");
    assert!(cluster.stored_orders(sku_id).await.is_empty(), "nothing placed");
    assert_eq!(cluster.forwarded(0, "not_owner").await, refused_before + 2);
    assert_eq!(cluster.forwarded(0, "answered").await, 0, "nothing forwarded");

    // At the owner the mark changes nothing: it serves.
    let url = format!("{}/v1/skus/{sku_id}", cluster.address(1));
    let owned = answer(cluster.http.get(url).bearer_auth(cluster.user_token(7)).header(FORWARDED_HEADER, "n0")).await;
    assert_eq!(owned.status, 200);
}

#[tokio::test]
async fn a_paused_or_killed_owner_is_answered_for_with_503_in_time_and_served_again_after_the_takeover() {
    let timeout = format!("{}ms", PEER_TIMEOUT.as_millis());
    let mut cluster = TestCluster::start_with("forward-down", 3, "10m", &[("TIANJI_PEER_TIMEOUT", &timeout)]).await;
    let sku_id = cluster.sku_owned_by(1, 0, 10).await;
    let range = range_of_sku(sku_id);
    let buyers = users_in_range(range, 1, 2);
    // On a loaded machine node 1 may miss a renewal and its range be ownerless for a moment:
    // the client retries the 503 with the same key, as Retry-After asks.
    let mut placed = cluster.order(0, buyers[0], "before", sku_id).await;
    for _ in 0..20 {
        if placed.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        placed = cluster.order(0, buyers[0], "before", sku_id).await;
    }
    assert_eq!(placed.status, 201, "{placed:?}");
    let order_id = placed.body["order_id"].as_i64().unwrap();

    // Another owner paused: the forward to it times out, its outcome unknown. (Node 2, not 1:
    // a pause on a loaded machine may outlast its lease, and node 1's range must not move
    // before it is killed.)
    let pid = cluster.nodes[2].as_ref().unwrap().pid().to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill").args([name, &pid]).status().expect("run kill");
        assert!(sent.success(), "{name} to {pid}");
    };
    // On a loaded machine node 2 may miss a renewal (2 s leases) just before the pause, and
    // node 0 then knows no live owner and answers `not_owner` itself: a pause that meets a
    // lapsed lease is tried again, at most 3 times.
    let mut attempts = 0;
    let (timed_out, waited) = loop {
        attempts += 1;
        let paused_sku = cluster.sku_owned_by(2, 0, 10).await;
        signal("-STOP");
        let sent_at = Instant::now();
        let answer = cluster.get_sku(0, paused_sku).await;
        let waited = sent_at.elapsed();
        signal("-CONT");
        if answer.body["code"] != "not_owner" || attempts == 3 {
            break (answer, waited);
        }
        eprintln!("node 2's lease had lapsed before the pause: {answer:?}; again");
    };
    assert_eq!((timed_out.status, timed_out.body["code"].as_str()), (503, Some("owner_unavailable")), "{timed_out:?}");
    assert_eq!(timed_out.retry_after.as_deref(), Some("1"));
    assert!(timed_out.body["message"].as_str().unwrap().contains("may or may not"), "{timed_out:?}");
    assert!(waited >= PEER_TIMEOUT && waited < PEER_TIMEOUT + ANSWER_SLACK, "answered after {waited:?}");
    assert_eq!(cluster.forwarded(0, "timeout").await, 1);
    assert_eq!(cluster.holder(range).await, Some(1), "node 1 still holds its range");

    // Killed: refused at once, then (its lease expired) no owner is known, until one takes it.
    cluster.nodes[1].take().unwrap().kill();
    let killed_at = Instant::now();
    for via in [0, 2] {
        let sent_at = Instant::now();
        let down = cluster.order(via, buyers[1], "during", sku_id).await;
        assert_eq!(down.status, 503, "{down:?}");
        assert!(matches!(down.body["code"].as_str(), Some("owner_unavailable" | "not_owner")), "{down:?}");
        assert_eq!(down.retry_after.as_deref(), Some("1"));
        assert!(sent_at.elapsed() < PEER_TIMEOUT + ANSWER_SLACK, "answered after {:?}", sent_at.elapsed());
    }
    let bound = LEASE_TTL + RENEW_EVERY + POLL_SLACK;
    let taken = eventually(bound, || async { cluster.holder(range).await.is_some() }).await;
    assert!(taken, "nobody took the dead node's range within {bound:?}");
    eprintln!("served again {:?} after kill -9", killed_at.elapsed());

    // The survivors see the new owner within a renewal: both serve again, through each other.
    for via in [0, 2] {
        let served = eventually(RENEW_EVERY * 3, || async { cluster.get_sku(via, sku_id).await.status == 200 }).await;
        assert!(served, "node {via} does not serve the SKU after the takeover");
    }
    let during = cluster.order(2, buyers[1], "during", sku_id).await;
    assert_eq!((during.status, during.replayed), (201, false), "{during:?}");
    let replay = cluster.order(0, buyers[0], "before", sku_id).await;
    assert_eq!((replay.status, replay.replayed, replay.body["order_id"].as_i64()), (201, true, Some(order_id)));
    let stored = cluster.stored_orders(sku_id).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(cluster.counters(sku_id).await, (10, 8, 2, 0), "orders {stored:?}");
}

/// p50 and p99 of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_micros();
    (at(0.50), at(0.99))
}

/// What forwarding adds on loopback: one client, one request at a time, alternating between
/// the owner and a non-owner, for a SKU read and an order placement. A measurement, not a
/// check: run it alone, on a release build, and read its output:
/// `cargo test --release --test api cluster_forward::forwarding_latency -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: run alone with --release --nocapture"]
async fn forwarding_latency() {
    const ROUNDS: usize = 2_000;
    const WARM_UP: usize = 200;
    let cluster = TestCluster::start("forward-latency", 3).await;
    let sku_id = cluster.sku_owned_by(1, 0, 1_000_000).await;
    let buyers = users_in_range(range_of_sku(sku_id), 1, ROUNDS + WARM_UP);
    let tokens: Vec<String> = buyers.iter().map(|user_id| cluster.user_token(*user_id)).collect();
    let reader = cluster.user_token(7);
    let (owner, elsewhere) = (cluster.address(1).to_owned(), cluster.address(0).to_owned());
    let timed = |sent: reqwest::RequestBuilder, expected: u16| async move {
        let started = Instant::now();
        let response = sent.send().await.unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await.unwrap();
        assert_eq!(status, expected);
        started.elapsed()
    };
    let (mut read_direct, mut read_forwarded, mut order_direct, mut order_forwarded) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (round, token) in tokens.iter().enumerate() {
        let read = |base: &str| cluster.http.get(format!("{base}/v1/skus/{sku_id}")).bearer_auth(&reader);
        let order = |base: &str, key: &str| {
            cluster
                .http
                .post(format!("{base}/v1/orders"))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
        };
        let samples = (
            timed(read(&owner), 200).await,
            timed(read(&elsewhere), 200).await,
            timed(order(&owner, "direct"), 201).await,
            timed(order(&elsewhere, "forwarded"), 201).await,
        );
        if round >= WARM_UP {
            read_direct.push(samples.0);
            read_forwarded.push(samples.1);
            order_direct.push(samples.2);
            order_forwarded.push(samples.3);
        }
    }
    for (name, direct, forwarded) in
        [("GET /v1/skus/{id}", read_direct, read_forwarded), ("POST /v1/orders", order_direct, order_forwarded)]
    {
        let ((direct_p50, direct_p99), (forwarded_p50, forwarded_p99)) = (percentiles(direct), percentiles(forwarded));
        eprintln!(
            "{name}: owner p50 {direct_p50} us p99 {direct_p99} us; via a non-owner p50 {forwarded_p50} us p99 \
             {forwarded_p99} us; added p50 {} us ({ROUNDS} each)",
            forwarded_p50 as i128 - direct_p50 as i128
        );
    }
}
