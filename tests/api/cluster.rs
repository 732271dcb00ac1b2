//! Several nodes on one MariaDB. Store level: two or more "nodes" (each its own membership
//! row, `Ownership` and fenced store) on one database: a take bumps the epoch, only an
//! unowned or expired lease is taken, expiry is on the database clock, worker ids are unique
//! among live nodes, and an old owner's commit after a takeover is refused and writes nothing
//! even while its lease still looks valid to itself. Process level: the real binary, three
//! nodes splitting the ranges and answering `not_owner` for keys they do not own, and a node
//! ready (`/readyz`) only while it holds a range.

use crate::helpers::{eventually, Backend, TestDatabase, JWT_SECRET};
use crate::process::ServerProcess;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::cluster::{ClusterView, Ownership};
use tianji::domain::lease::CounterDelta;
use tianji::domain::sale::Sale;
use tianji::domain::slots::{Key, RangeId};
use tianji::domain::{Cents, OrderId, SkuId, UserId};
use tianji::http::auth::{JwtKeys, Role};
use tianji::persistence::sql::SqlStore;
use tianji::persistence::sql_cluster::ClusterStore;
use tianji::persistence::{Change, Conflict, LeaseWrite, NewSku, ReservationStatus, SkuEffect, Store};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Short leases, so expiry happens within the test.
const TTL_MS: i64 = 1_000;

/// One node of a store-level cluster.
struct Node {
    id: String,
    worker_id: u16,
    members: ClusterStore,
    ownership: Arc<Ownership>,
    store: SqlStore,
}

impl Node {
    async fn join(url: &str, name: &str) -> Node {
        let sql = tianji::persistence::mysql::connect(url, true, TIMEOUT).await.expect("connect");
        let members = ClusterStore::new(sql.pool());
        let id = format!("{name}-{}", hex::encode(rand::random::<[u8; 4]>()));
        let worker_id = members.join(&id, &format!("http://{name}"), TTL_MS).await.expect("join");
        let ownership =
            Arc::new(Ownership::new(id.clone(), format!("http://{name}"), Duration::from_millis(TTL_MS as u64)));
        let store = sql.fenced_by(Arc::clone(&ownership));
        Node { id, worker_id, members, ownership, store }
    }

    /// Takes `range` if it is free; reads the tables into this node's `Ownership`, trusting
    /// what it holds locally until `trusted_until_from` + the local validity.
    async fn take(&self, range: RangeId, trusted_from: Instant) -> u64 {
        let taken = self.members.take(&self.id, &[range], TTL_MS).await.expect("take");
        self.ownership.apply(self.members.view().await.expect("view"), trusted_from);
        taken
    }

    async fn view(&self) -> ClusterView {
        self.members.view().await.expect("view")
    }
}

/// The first SKU id from `from` whose key falls in a range not in `taken`.
fn sku_in_new_range(from: i64, taken: &BTreeSet<RangeId>) -> SkuId {
    (from..).map(SkuId::new).find(|id| !taken.contains(&Key::sku(*id).range())).expect("some id")
}

async fn create_sku(store: &SqlStore, sku_id: SkuId, stock: i64) {
    let sku = NewSku {
        sku_id,
        name: "cluster".into(),
        price_cents: Cents::new(100),
        total: stock,
        sale: Sale::default(),
        created_at_ms: 1,
    };
    store.create_sku(&sku).await.expect("create sku");
}

/// Reserves one unit of `sku_id` for `order_id` at the SKU epoch `epoch`.
fn reserve_one(sku_id: SkuId, epoch: i64, order_id: i64) -> Change {
    let lease = LeaseWrite {
        order_id: OrderId::new(order_id),
        quantity: 1,
        expires_at_ms: i64::MAX / 2,
        from: None,
        to: ReservationStatus::Reserved,
    };
    let delta = CounterDelta { total: 0, available: -1, reserved: 1, sold: 0 };
    Change { skus: vec![SkuEffect { sku_id, epoch: Some(epoch), delta, lease: Some(lease) }], ..Change::default() }
}

/// Waits until the database clock passes `range`'s expiry, renewing `renewing` meanwhile.
async fn until_expired(node: &Node, range: RangeId, renewing: &[RangeId]) {
    let expired = eventually(Duration::from_millis(TTL_MS as u64 * 5), || async {
        assert!(node.members.heartbeat(&node.id, renewing, TTL_MS).await.unwrap());
        let view = node.view().await;
        !view.ranges[range.index()].is_live(view.now_ms)
    })
    .await;
    assert!(expired, "range {range} did not expire by the database clock");
}

#[tokio::test]
async fn a_take_bumps_the_epoch_and_only_a_free_or_expired_lease_is_taken() {
    let database = TestDatabase::create(Backend::MySql).await;
    let (a, b) = (Node::join(&database.url, "a").await, Node::join(&database.url, "b").await);
    let range = RangeId::new(5).unwrap();
    assert_eq!(a.view().await.ranges[range.index()].epoch, 0, "never taken");

    assert_eq!(a.take(range, Instant::now()).await, 1);
    let row = a.view().await.ranges[range.index()].clone();
    assert_eq!((row.owner.as_deref(), row.epoch), (Some(a.id.as_str()), 1));
    assert_eq!(a.ownership.epoch(range), Some(1));

    assert_eq!(b.take(range, Instant::now()).await, 0, "a live lease is not taken");
    assert_eq!(b.ownership.epoch(range), None);

    // Renewed by its holder, the lease stays; expired by the database clock, it goes.
    assert!(a.members.heartbeat(&a.id, &[range], TTL_MS).await.unwrap());
    until_expired(&a, range, &[]).await;
    assert_eq!(b.take(range, Instant::now()).await, 1);
    let row = b.view().await.ranges[range.index()].clone();
    assert_eq!((row.owner.as_deref(), row.epoch), (Some(b.id.as_str()), 2));
    assert_eq!(b.ownership.epoch(range), Some(2));

    // A renewal by the old holder does not revive it.
    assert!(a.members.heartbeat(&a.id, &[range], TTL_MS).await.unwrap());
    let lost = a.ownership.apply(a.view().await, Instant::now());
    assert_eq!(lost, vec![range]);
    assert_eq!(a.view().await.ranges[range.index()].owner.as_deref(), Some(b.id.as_str()));
}

#[tokio::test]
async fn the_old_owners_commit_after_a_takeover_is_refused_and_writes_nothing() {
    let database = TestDatabase::create(Backend::MySql).await;
    let (a, b) = (Node::join(&database.url, "a").await, Node::join(&database.url, "b").await);
    let lost_sku = sku_in_new_range(1, &BTreeSet::new());
    let lost = Key::sku(lost_sku).range();
    let kept_sku = sku_in_new_range(lost_sku.get() + 1, &BTreeSet::from([lost]));
    let kept = Key::sku(kept_sku).range();
    create_sku(&a.store, lost_sku, 10).await;
    create_sku(&a.store, kept_sku, 10).await;

    // A trusts its lease of `lost` for a minute (as a paused process would): only the
    // database can tell it lost it.
    let far = Instant::now() + Duration::from_secs(60);
    assert_eq!(a.take(lost, far).await, 1);
    assert_eq!(a.take(kept, far).await, 1);
    let states = a.store.activate_skus(&[lost_sku, kept_sku]).await.unwrap();
    let epoch = |n: usize| states[n].as_ref().unwrap().epoch;

    // While A holds the range, its commits go through.
    let report = a.store.commit(&[reserve_one(lost_sku, epoch(0), 1)], 1).await.unwrap();
    assert_eq!(report.outcomes, vec![Ok(())]);

    // `lost` expires by the database clock (A renews only `kept`); A still believes it holds
    // it.
    until_expired(&a, lost, &[kept]).await;
    assert_eq!(a.ownership.epoch(lost), Some(1), "A's own view still says it holds the range");
    let report = a.store.commit(&[reserve_one(lost_sku, epoch(0), 2)], 2).await.unwrap();
    assert_eq!(report.outcomes, vec![Err(Conflict::NotOwner(lost))], "expired by the database clock");

    // B takes it over (a new epoch) without touching the SKU: only the range fences A.
    assert_eq!(b.take(lost, Instant::now()).await, 1);
    let batch = [reserve_one(lost_sku, epoch(0), 3), reserve_one(kept_sku, epoch(1), 4)];
    let report = a.store.commit(&batch, 3).await.unwrap();
    assert_eq!(report.outcomes, vec![Err(Conflict::NotOwner(lost)), Ok(())], "only the lost range is refused");

    // Nothing of A's refused changes is in the database: one reservation each, as committed.
    let pool = a.store.pool();
    for (sku, order) in [(lost_sku, 1), (kept_sku, 4)] {
        let counters: (i64, i64) = sqlx::query_as("SELECT available, reserved FROM inventory WHERE sku_id = ?")
            .bind(sku.get())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(counters, (9, 1));
        let orders: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM inventory_reservation WHERE sku_id = ?")
            .bind(sku.get())
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(orders, vec![order]);
    }

    // B, the new owner, commits on the range.
    let b_state = b.store.activate_skus(&[lost_sku]).await.unwrap().remove(0).unwrap();
    let report = b.store.commit(&[reserve_one(lost_sku, b_state.epoch, 5)], 5).await.unwrap();
    assert_eq!(report.outcomes, vec![Ok(())]);
}

#[tokio::test]
async fn worker_ids_are_unique_among_live_nodes_and_a_dead_nodes_id_is_reused() {
    let database = TestDatabase::create(Backend::MySql).await;
    let url = database.url.clone();
    let joins = (0..4).map(|n| {
        let url = url.clone();
        tokio::spawn(async move { Node::join(&url, &format!("n{n}")).await })
    });
    let mut nodes = Vec::new();
    for join in joins {
        nodes.push(join.await.unwrap());
    }
    let ids: BTreeSet<u16> = nodes.iter().map(|node| node.worker_id).collect();
    assert_eq!(ids, BTreeSet::from([0, 1, 2, 3]), "four live nodes, four distinct worker ids");

    // n1 stops heartbeating; the others go on. Once it has been silent for two TTLs by the
    // database clock, a new node gets its worker id, and n1 learns it is out.
    let silent = nodes.remove(1);
    let reclaimed = eventually(Duration::from_millis(TTL_MS as u64 * 6), || async {
        for node in &nodes {
            assert!(node.members.heartbeat(&node.id, &[], TTL_MS).await.unwrap());
        }
        let view = silent.view().await;
        let row = view.nodes.iter().find(|n| n.node_id == silent.id).unwrap();
        row.heartbeat_at_ms < view.now_ms - 2 * TTL_MS
    })
    .await;
    assert!(reclaimed, "n1's heartbeat never aged past two TTLs");
    let newcomer = Node::join(&url, "n4").await;
    assert_eq!(newcomer.worker_id, silent.worker_id);
    assert!(!silent.members.heartbeat(&silent.id, &[], TTL_MS).await.unwrap(), "n1's row is no longer its own");
    let live: Vec<u16> = nodes.iter().map(|node| node.worker_id).chain([newcomer.worker_id]).collect();
    assert_eq!(live.iter().collect::<BTreeSet<_>>().len(), 4);
}

// Process level: the real binary, several nodes on one database.

/// The lease TTL of the process tests, and how often the nodes renew (a third of it).
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);
pub(crate) const RENEW_EVERY: Duration = Duration::from_millis(667);
/// What a test's own polling (an admin view of every node, every 20 ms) adds to a measured
/// takeover.
const POLL_SLACK: Duration = Duration::from_millis(500);
/// How long a test waits for a node's admin view (a paused node never answers).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a fresh cluster may take to split the ranges (joins are gradual).
const SETTLE_BOUND: Duration = Duration::from_secs(40);

/// Nodes of one cluster, each a `tianji serve` process, on one database.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<Option<ServerProcess>>,
    pub(crate) http: reqwest::Client,
    pub(crate) keys: JwtKeys,
    pub(crate) admin: String,
    // Last: the processes are killed before the database is dropped.
    pub(crate) database: TestDatabase,
}

/// A port free now, for a node that must know its advertised URL before it binds.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_node(name: &str, database_url: &str, pay_timeout: &str) -> ServerProcess {
    start_node_with(name, database_url, &[("TIANJI_PAY_TIMEOUT", pay_timeout)])
}

/// A node of a cluster with `extra` settings on top of the cluster's own.
pub(crate) fn start_node_with(name: &str, database_url: &str, extra: &[(&str, &str)]) -> ServerProcess {
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let advertise = format!("http://127.0.0.1:{port}");
    let ttl = format!("{}ms", LEASE_TTL.as_millis());
    let mut settings = vec![
        ("TIANJI_BIND", bind.as_str()),
        ("TIANJI_ADVERTISE_URL", advertise.as_str()),
        ("TIANJI_LEASE_TTL", ttl.as_str()),
    ];
    settings.extend_from_slice(extra);
    let node = ServerProcess::start(name, database_url, &settings);
    assert_eq!(node.address, advertise);
    node
}

/// User ids from `from` whose key is in `range`, so their orders commit on the SKU's owner.
pub(crate) fn users_in_range(range: RangeId, from: i64, count: usize) -> Vec<i64> {
    (from..).filter(|id| Key::user(UserId::new(*id)).range() == range).take(count).collect()
}

pub(crate) fn range_of_sku(sku_id: i64) -> RangeId {
    Key::sku(SkuId::new(sku_id)).range()
}

impl TestCluster {
    async fn start(name: &str, count: usize) -> TestCluster {
        Self::start_paying_within(name, count, "10m").await
    }

    /// `start`, with orders to be paid within `pay_timeout`.
    async fn start_paying_within(name: &str, count: usize, pay_timeout: &str) -> TestCluster {
        Self::start_with(name, count, &[("TIANJI_PAY_TIMEOUT", pay_timeout)]).await
    }

    /// `start`, every node with `extra` settings.
    pub(crate) async fn start_with(name: &str, count: usize, extra: &[(&str, &str)]) -> TestCluster {
        let database = TestDatabase::create(Backend::MySql).await;
        let nodes =
            (0..count).map(|n| Some(start_node_with(&format!("cluster-{name}-{n}"), &database.url, extra))).collect();
        let keys = JwtKeys::new(JWT_SECRET);
        let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let cluster = TestCluster { nodes, http, keys, admin, database };
        let settled = eventually(SETTLE_BOUND, || cluster.split()).await;
        assert!(settled, "the nodes did not split the ranges in {SETTLE_BOUND:?}: {:?}", cluster.held_by_node().await);
        cluster
    }

    pub(crate) fn address(&self, node: usize) -> &str {
        &self.nodes[node].as_ref().expect("a live node").address
    }

    pub(crate) fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|n| self.nodes[*n].is_some()).collect()
    }

    pub(crate) async fn admin_view(&self, node: usize, query: &str) -> Option<Value> {
        let url = format!("{}/v1/admin/cluster{query}", self.address(node));
        // Bounded: a paused node answers nothing.
        let response = self.http.get(url).bearer_auth(&self.admin).timeout(ADMIN_TIMEOUT).send().await.ok()?;
        assert_eq!(response.status(), 200);
        response.json().await.ok()
    }

    /// The ranges each live node says it holds.
    pub(crate) async fn held_by_node(&self) -> Vec<(usize, BTreeSet<u16>)> {
        let mut held = Vec::new();
        for node in self.live() {
            let view = self.admin_view(node, "").await.unwrap_or(Value::Null);
            let ranges = view["held"].as_array().map(|r| r.iter().map(|r| r.as_u64().unwrap() as u16).collect());
            held.push((node, ranges.unwrap_or_default()));
        }
        held
    }

    /// Whether every range is held by exactly one live node and the split is settled: every
    /// live node holds its fair share, `floor(64 / n)` or one more (`cluster::balance`).
    pub(crate) async fn split(&self) -> bool {
        let held = self.held_by_node().await;
        let total: usize = held.iter().map(|(_, ranges)| ranges.len()).sum();
        let union: BTreeSet<u16> = held.iter().flat_map(|(_, ranges)| ranges.iter().copied()).collect();
        let floor = 64 / held.len();
        total == 64 && union.len() == 64 && held.iter().all(|(_, ranges)| (floor..=floor + 1).contains(&ranges.len()))
    }

    /// The live node holding `range`, if one does now.
    pub(crate) async fn holder(&self, range: RangeId) -> Option<usize> {
        self.held_by_node().await.into_iter().find(|(_, ranges)| ranges.contains(&range.get())).map(|(node, _)| node)
    }

    /// Creates a SKU of `stock` units through `via`; its id (a snowflake) decides its owner.
    pub(crate) async fn create_sku(&self, via: usize, stock: i64) -> i64 {
        let response = self
            .http
            .post(format!("{}/v1/admin/skus", self.address(via)))
            .bearer_auth(&self.admin)
            .json(&json!({"name": "clustered", "price_cents": 100, "stock": stock}))
            .send()
            .await
            .expect("create sku");
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["sku_id"].as_i64().unwrap()
    }

    /// A new SKU whose range `owner` holds, created through `via` (SKUs are created until one
    /// lands there: about one in three).
    pub(crate) async fn sku_owned_by(&self, owner: usize, via: usize, stock: i64) -> i64 {
        for _ in 0..200 {
            let sku_id = self.create_sku(via, stock).await;
            if self.holder(range_of_sku(sku_id)).await == Some(owner) {
                return sku_id;
            }
        }
        panic!("no SKU landed on node {owner}");
    }

    pub(crate) async fn place(
        &self,
        node: usize,
        user_id: i64,
        key: &str,
        sku_id: i64,
    ) -> Result<(u16, Value), reqwest::Error> {
        let token = self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600));
        let response = self
            .http
            .post(format!("{}/v1/orders", self.address(node)))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub(crate) async fn counters(&self, sku_id: i64) -> (i64, i64, i64, i64) {
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&self.database.url).await.unwrap();
        let counters = sqlx::query_as("SELECT total, available, reserved, sold FROM inventory WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        counters
    }

    pub(crate) async fn stored_orders(&self, sku_id: i64) -> BTreeSet<i64> {
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&self.database.url).await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM trade_order_item WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        ids.into_iter().collect()
    }
}

#[tokio::test]
async fn three_nodes_split_the_ranges_and_send_clients_to_a_keys_owner() {
    let cluster = TestCluster::start("split", 3).await;
    let held = cluster.held_by_node().await;
    for (a, (_, ranges_a)) in held.iter().enumerate() {
        for (_, ranges_b) in held.iter().skip(a + 1) {
            assert!(ranges_a.is_disjoint(ranges_b), "a range held twice: {held:?}");
        }
    }

    // A SKU created through node 0 and owned by node 1: only node 1 serves it; the others
    // answer 503 not_owner with node 1's address.
    let sku_id = cluster.sku_owned_by(1, 0, 10).await;
    let owner = cluster.address(1).to_owned();
    let reader = cluster.keys.mint(UserId::new(7), Role::User, Duration::from_secs(600));
    for node in [0, 2] {
        let url = format!("{}/v1/skus/{sku_id}", cluster.address(node));
        let response = cluster.http.get(url).bearer_auth(&reader).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!((body["code"].as_str(), body["owner"].as_str()), (Some("not_owner"), Some(owner.as_str())));
        let located = cluster.admin_view(node, &format!("?kind=sku&id={sku_id}")).await.unwrap();
        assert_eq!(located["key"]["owned_here"], false);
        assert_eq!(located["key"]["owner_address"].as_str(), Some(owner.as_str()));
        assert_eq!(located["key"]["range_id"], range_of_sku(sku_id).get());
    }
    let response = cluster.http.get(format!("{owner}/v1/skus/{sku_id}")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(response.status(), 200);
    for node in cluster.live() {
        let response = cluster.http.get(format!("{}/readyz", cluster.address(node))).send().await.unwrap();
        assert_eq!(response.status(), 200, "node {node} holds its share: ready");
    }

    // A buyer in the SKU's range orders on the owner; elsewhere the order is refused.
    let buyer = users_in_range(range_of_sku(sku_id), 1, 1)[0];
    let (status, body) = cluster.place(2, buyer, "k-elsewhere", sku_id).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (503, Some("not_owner")));
    let (status, _) = cluster.place(1, buyer, "k-owner", sku_id).await.unwrap();
    assert_eq!(status, 201);
    assert_eq!(cluster.counters(sku_id).await, (10, 9, 1, 0));
}

/// `GET /readyz` of `address`: its status and error code.
async fn readiness(http: &reqwest::Client, address: &str) -> (u16, Option<String>) {
    let response = http.get(format!("{address}/readyz")).send().await.expect("readyz");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_node_is_ready_only_once_it_holds_a_range() {
    let database = TestDatabase::create(Backend::MySql).await;
    // A store-level node holds every range and keeps renewing: the process node can take none.
    let holder = Node::join(&database.url, "holder").await;
    let all: Vec<RangeId> = RangeId::all().collect();
    assert_eq!(holder.members.take(&holder.id, &all, TTL_MS).await.unwrap(), all.len() as u64);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let renewal = {
        let (members, id, all) = (holder.members.clone(), holder.id.clone(), all.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(TTL_MS as u64 / 5));
            while !*stopped.borrow() {
                assert!(members.heartbeat(&id, &all, TTL_MS).await.expect("renew"));
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };
    let node = start_node("cluster-ready-0", &database.url, "10m");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    // Not ready through several of its rounds while every range is held elsewhere.
    let watched_until = Instant::now() + LEASE_TTL;
    while Instant::now() < watched_until {
        assert_eq!(readiness(&http, &node.address).await, (503, Some("not_owner_yet".to_owned())));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Released, the ranges are taken and the node turns ready.
    stop.send(true).unwrap();
    renewal.await.unwrap();
    assert_eq!(holder.members.release(&holder.id, &all).await.unwrap(), all.len() as u64);
    let ready = eventually(LEASE_TTL * 2, || async { readiness(&http, &node.address).await.0 == 200 }).await;
    assert!(ready, "the node did not turn ready after taking ranges: {:?}", readiness(&http, &node.address).await);
    node.terminate();
}

#[tokio::test]
async fn a_stopped_node_releases_its_ranges_and_the_others_take_them_at_once() {
    let mut cluster = TestCluster::start("leave", 2).await;
    let sku_id = cluster.sku_owned_by(1, 0, 10).await;
    let range = range_of_sku(sku_id);
    let stopped_at = Instant::now();
    cluster.nodes[1].take().unwrap().terminate();
    // Released on SIGTERM, the range is taken in node 0's next round, well before its TTL.
    let taken = eventually(LEASE_TTL, || async { cluster.holder(range).await == Some(0) }).await;
    assert!(taken, "node 0 did not take the released range within the TTL");
    let buyer = users_in_range(range, 1, 1)[0];
    let (status, _) = cluster.place(0, buyer, "k", sku_id).await.unwrap();
    assert_eq!(status, 201, "after {:?}", stopped_at.elapsed());
}

/// How a buyer finds a SKU's owner: asks the nodes in turn where the key lives, as a client
/// (or a later forwarding layer) would.
#[derive(Clone)]
struct Router {
    http: reqwest::Client,
    keys: Arc<JwtKeys>,
    admin: String,
    addresses: Vec<String>,
}

/// How a buyer's purchase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purchase {
    Bought(i64),
    SoldOut,
}

impl Router {
    fn of(cluster: &TestCluster) -> Router {
        let addresses = cluster.live().into_iter().map(|n| cluster.address(n).to_owned()).collect();
        let keys = Arc::new(JwtKeys::new(JWT_SECRET));
        Router { http: cluster.http.clone(), keys, admin: cluster.admin.clone(), addresses }
    }

    async fn owner_of_sku(&self, sku_id: i64) -> Option<String> {
        for address in &self.addresses {
            let url = format!("{address}/v1/admin/cluster?kind=sku&id={sku_id}");
            let Ok(response) = self.http.get(url).bearer_auth(&self.admin).timeout(ADMIN_TIMEOUT).send().await else {
                continue;
            };
            let Ok(view) = response.json::<Value>().await else { continue };
            if view["key"]["owned_here"] == true {
                return Some(address.clone());
            }
            if let Some(owner) = view["key"]["owner_address"].as_str() {
                return Some(owner.to_owned());
            }
        }
        None
    }

    /// Buys one unit under one Idempotency-Key, following the owner and retrying (the same
    /// key: a retry of a committed order answers with it) until bought or sold out.
    async fn buy(&self, user_id: i64, sku_id: i64) -> Purchase {
        let token = self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600));
        let key = format!("buy-{user_id}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "buyer {user_id} never got an answer");
            if let Some(owner) = self.owner_of_sku(sku_id).await {
                let sent = self
                    .http
                    .post(format!("{owner}/v1/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
                    .send()
                    .await;
                if let Ok(response) = sent {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match (status, body["code"].as_str()) {
                        (200 | 201, _) => return Purchase::Bought(body["order_id"].as_i64().expect("order_id")),
                        (409, Some("insufficient_stock")) => return Purchase::SoldOut,
                        (503, _) => {}
                        other => panic!("buyer {user_id}: unexpected answer {other:?}: {body}"),
                    }
                }
            }
            // Back off before asking again: the owner is moving (or was killed).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_killed_owners_ranges_are_taken_within_a_ttl_and_no_acknowledged_order_is_lost() {
    const STOCK: i64 = 30;
    const BUYERS: usize = 40;
    let mut cluster = TestCluster::start("kill", 3).await;
    let sku_id = cluster.sku_owned_by(1, 0, STOCK).await;
    let range = range_of_sku(sku_id);
    let router = Router::of(&cluster);
    let bought = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let buyers: Vec<_> = users_in_range(range, 1, BUYERS)
        .into_iter()
        .map(|user_id| {
            let (router, bought) = (router.clone(), Arc::clone(&bought));
            tokio::spawn(async move {
                let purchase = router.buy(user_id, sku_id).await;
                bought.fetch_add(
                    usize::from(matches!(purchase, Purchase::Bought(_))),
                    std::sync::atomic::Ordering::SeqCst,
                );
                purchase
            })
        })
        .collect();

    // Mid-sale: the owner dies without a word.
    let started =
        eventually(Duration::from_secs(20), || async { bought.load(std::sync::atomic::Ordering::SeqCst) >= 5 }).await;
    assert!(started, "the sale did not start");
    cluster.nodes[1].take().unwrap().kill();
    let killed_at = Instant::now();
    // Its lease ends at most a TTL after the kill; a survivor's next round (one renewal
    // interval later at most) takes it; the slack covers this test's own polling of the
    // nodes' admin views on a busy machine.
    let bound = LEASE_TTL + RENEW_EVERY + POLL_SLACK;
    let taken = eventually(bound, || async { cluster.holder(range).await.is_some() }).await;
    let takeover = killed_at.elapsed();
    assert!(taken, "nobody took the dead node's range within {bound:?}");
    eprintln!("takeover after kill -9: {takeover:?} (TTL {LEASE_TTL:?}, renewal every {RENEW_EVERY:?})");
    // Two survivors may both try one orphan; the loser takes another one a round later.
    let all_taken = eventually(RENEW_EVERY * 2, || async {
        cluster.held_by_node().await.iter().map(|(_, ranges)| ranges.len()).sum::<usize>() == 64
    })
    .await;
    assert!(all_taken, "the dead node's ranges are not all taken: {:?}", cluster.held_by_node().await);

    let mut acknowledged = BTreeSet::new();
    let mut sold_out = 0;
    for buyer in buyers {
        match buyer.await.unwrap() {
            Purchase::Bought(order_id) => assert!(acknowledged.insert(order_id), "one order per buyer"),
            Purchase::SoldOut => sold_out += 1,
        }
    }
    let stored = cluster.stored_orders(sku_id).await;
    assert!(acknowledged.is_subset(&stored), "acknowledged orders lost: {:?}", acknowledged.difference(&stored));
    let (total, available, reserved, sold) = cluster.counters(sku_id).await;
    assert_eq!(total, STOCK);
    assert_eq!(available + reserved + sold, total, "stock is conserved");
    assert_eq!(reserved + sold, stored.len() as i64, "one unit per stored order: nothing oversold");
    assert_eq!(
        (acknowledged.len(), sold_out),
        (STOCK as usize, BUYERS - STOCK as usize),
        "every unit sold exactly once"
    );
    assert_eq!(stored.len(), acknowledged.len(), "every stored order was acknowledged to its buyer");
}

#[tokio::test]
async fn a_paused_owner_cannot_write_after_its_range_moved() {
    let cluster = TestCluster::start("pause", 2).await;
    let sku_id = cluster.sku_owned_by(1, 0, 20).await;
    let range = range_of_sku(sku_id);
    let buyers = users_in_range(range, 1, 11);
    // The old owner's actors are live: its next requests need no activation.
    let (status, _) = cluster.place(1, buyers[0], "before", sku_id).await.unwrap();
    assert_eq!(status, 201);

    let pid = cluster.nodes[1].as_ref().unwrap().pid().to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill").args([name, &pid]).status().expect("run kill");
        assert!(sent.success(), "{name} to {pid}");
    };
    signal("-STOP");
    // Requests reach the paused owner (the kernel accepts their connections); it handles them
    // only once resumed. Each on a new connection: a pooled one may be closed by the node's
    // keep-alive timer as it resumes, before it reads the request.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(60)).build().unwrap();
    let late: Vec<_> = buyers[1..6]
        .iter()
        .map(|user_id| {
            let (router, user_id, http) = (Router::of(&cluster), *user_id, fresh.clone());
            let address = cluster.address(1).to_owned();
            tokio::spawn(async move {
                let token = router.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600));
                let response = http
                    .post(format!("{address}/v1/orders"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", "late")
                    .json(&json!({"items": [{"sku_id": sku_id, "quantity": 1}]}))
                    .send()
                    .await
                    .expect("the paused node answers once resumed");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();

    // Past its TTL, node 0 takes the range over and sells.
    let moved = eventually(LEASE_TTL * 4, || async { cluster.holder(range).await == Some(0) }).await;
    assert!(moved, "node 0 did not take the paused node's range");
    for user_id in &buyers[6..11] {
        let (status, body) = cluster.place(0, *user_id, "after", sku_id).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }

    signal("-CONT");
    for answer in late {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 503, "the old owner acknowledged a write after the move: {body}");
    }
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&cluster.database.url).await.unwrap();
    let late_orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trade_order WHERE idempotency_key = 'late'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(late_orders, 0, "the old owner wrote after the move");
    let stored = cluster.stored_orders(sku_id).await;
    assert_eq!(stored.len(), 1 + 5);
    assert_eq!(cluster.counters(sku_id).await, (20, 20 - 6, 6, 0));
}

#[tokio::test]
async fn the_pending_orders_of_a_killed_node_are_timed_out_by_the_node_that_takes_its_range() {
    let mut cluster = TestCluster::start_paying_within("deadlines", 2, "3s").await;
    let sku_id = cluster.sku_owned_by(1, 0, 10).await;
    let range = range_of_sku(sku_id);
    let mut orders = Vec::new();
    for user_id in users_in_range(range, 1, 3) {
        let (status, body) = cluster.place(1, user_id, "pending", sku_id).await.unwrap();
        assert_eq!(status, 201, "{body}");
        orders.push(body["order_id"].as_i64().unwrap());
    }
    assert_eq!(cluster.counters(sku_id).await, (10, 7, 3, 0));

    // The owner dies with three orders awaiting payment; only node 0 is left to close them.
    cluster.nodes[1].take().unwrap().kill();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&cluster.database.url).await.unwrap();
    let closed = || async {
        let closed: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM trade_order WHERE status = 'closed' AND id IN ({})",
            orders.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        closed == 3
    };
    // The range moves within a TTL and a round; the deadlines are three seconds after placing.
    let bound = LEASE_TTL + RENEW_EVERY + Duration::from_secs(3) + Duration::from_secs(2);
    assert!(eventually(bound, closed).await, "the dead node's pending orders were not closed within {bound:?}");
    pool.close().await;
    assert_eq!(cluster.counters(sku_id).await, (10, 10, 0, 0), "their units are back on the shelf");
}
