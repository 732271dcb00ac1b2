//! Several nodes on one MariaDB. Store level: two or more "nodes" (each its own membership
//! row, `Ownership` and fenced store) on one database: a take bumps the epoch, only an
//! unowned or expired lease is taken, expiry is on the database clock, worker ids are unique
//! among live nodes, and an old owner's commit after a takeover is refused and writes nothing
//! even while its lease still looks valid to itself. Process level: the real binary, three
//! nodes splitting the ranges and answering `not_owner` for keys they do not own.

use crate::helpers::{eventually, Backend, TestDatabase};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::cluster::{ClusterView, Ownership};
use tianji::domain::lease::CounterDelta;
use tianji::domain::sale::Sale;
use tianji::domain::slots::{Key, RangeId};
use tianji::domain::{Cents, OrderId, SkuId};
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
