//! Many nodes on one MariaDB: membership, range leases and who may serve a key.
//!
//! Every key hashes to a slot and every slot is in one of a fixed set of ranges
//! (`domain::slots`). A node of a cluster (`TIANJI_ADVERTISE_URL` set) joins the membership
//! table with a worker id no live node holds, then takes range leases in the database
//! (`persistence::sql_cluster`): conditional UPDATEs on the database clock, each take bumping
//! the range's epoch. `node.rs` runs the loop that heartbeats, renews, takes a fair share and
//! releases what is over it (`balance.rs` decides); `Ownership` is this node's picture of the
//! leases.
//!
//! Guarantees: a node activates actors only for keys of ranges it holds (others get
//! `NotOwner`, 503 `not_owner` with the owner's address when known; an order's session runs
//! only where its buyer's range is held), and every commit of a cluster node checks, inside its
//! own transaction and under a share lock, that each range its keys touch is still held and
//! not expired by the database clock, at the epoch the actors that made the change were
//! activated under (a range lost and taken back fences out the actors of before); a change on
//! a lost range is refused, never acknowledged. A SKU is activated (its epoch bumped) only
//! under the same check, so a node that lost a range cannot fence out the new owner's actor. The database's transactions are
//! the only arbiter: nothing here elects anything. Without `TIANJI_ADVERTISE_URL` none of this
//! runs and one node owns every key.

pub mod balance;
pub mod node;
pub mod peers;
pub mod remote;
pub mod start;
pub mod wire;

use crate::config::ConfigError;
use crate::domain::slots::{Key, RangeId, RANGE_COUNT};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// `TIANJI_LEASE_TTL` when unset.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Bounds of `TIANJI_LEASE_TTL`: below a second a database hiccup loses every lease.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(600);
/// Longest advertised URL (the `cluster_node.address` column).
pub const ADVERTISE_URL_LEN_MAX: usize = 255;

/// How this node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Where other nodes and clients reach this node (`http://host:port`).
    pub advertise_url: String,
    /// How long a range lease and a membership heartbeat last without renewal.
    pub lease_ttl: Duration,
    /// The bounds of calls to other nodes (forwarded requests): `TIANJI_PEER_TIMEOUT`,
    /// `TIANJI_PEER_IN_FLIGHT_MAX`.
    pub peers: peers::PeerLimits,
}

impl ClusterSettings {
    /// `None` when `TIANJI_ADVERTISE_URL` is unset; an error when it is set without a MySQL
    /// database (SQLite is one process's file: there is nothing to share).
    pub(crate) fn parse<'a>(
        get: impl Fn(&str) -> Option<&'a str> + Copy,
        mysql: bool,
    ) -> Result<Option<ClusterSettings>, ConfigError> {
        let lease_ttl =
            crate::config::parse_duration(get, "TIANJI_LEASE_TTL", LEASE_TTL_DEFAULT, LEASE_TTL_MIN, LEASE_TTL_MAX)?;
        let peers = peers::PeerLimits::parse(get)?;
        let Some(url) = get("TIANJI_ADVERTISE_URL") else {
            return Ok(None);
        };
        let name = "TIANJI_ADVERTISE_URL";
        if !mysql {
            return Err(crate::config::invalid(name, "a cluster needs TIANJI_DATABASE_URL to be a MySQL URL"));
        }
        let well_formed = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() <= ADVERTISE_URL_LEN_MAX
            && url.bytes().all(|b| b.is_ascii_graphic());
        if !well_formed {
            return Err(crate::config::invalid(
                name,
                format!("expected an http:// or https:// URL of at most {ADVERTISE_URL_LEN_MAX} bytes"),
            ));
        }
        Ok(Some(ClusterSettings { advertise_url: url.trim_end_matches('/').to_owned(), lease_ttl, peers }))
    }

    /// How often leases are renewed: a third of the TTL, so two renewals can fail before one
    /// expires.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// A key this node may not serve: its range is held by another node (`owner`, its address
/// when known) or by none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("range {range} is not owned by this node{}", owner.as_deref().map(|o| format!(" (owner: {o})")).unwrap_or_default())]
pub struct NotOwner {
    pub range: RangeId,
    /// The advertised URL of the node holding the range, if one holds it.
    pub owner: Option<String>,
}

/// A member row as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeRow {
    pub node_id: String,
    pub worker_id: i64,
    pub address: String,
    /// Database clock, milliseconds since the Unix epoch.
    pub heartbeat_at_ms: i64,
}

/// A range lease row as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RangeRow {
    #[schema(value_type = u16)]
    pub range_id: RangeId,
    /// The node id holding (or last holding) the lease.
    pub owner: Option<String>,
    pub epoch: i64,
    /// Database clock, milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

impl RangeRow {
    /// Whether the lease is held by someone at `now_ms` (database clock).
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.owner.is_some() && self.expires_at_ms > now_ms
    }
}

/// The membership and lease tables as read at `now_ms` (database clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub now_ms: i64,
    pub nodes: Vec<NodeRow>,
    /// One row per range, by range id.
    pub ranges: Vec<RangeRow>,
}

impl ClusterView {
    /// Nodes whose heartbeat is younger than `ttl_ms`.
    pub fn live_nodes(&self, ttl_ms: i64) -> impl Iterator<Item = &NodeRow> {
        self.nodes.iter().filter(move |node| node.heartbeat_at_ms + ttl_ms > self.now_ms)
    }

    /// The advertised address of the live holder of `range`.
    pub fn owner_address(&self, range: RangeId) -> Option<&str> {
        let row = self.ranges.get(range.index()).filter(|row| row.is_live(self.now_ms))?;
        let owner = row.owner.as_deref()?;
        self.nodes.iter().find(|node| node.node_id == owner).map(|node| node.address.as_str())
    }
}

/// A lease this node holds: at `epoch`, trusted locally until `valid_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    epoch: i64,
    valid_until: Instant,
}

/// What this node's membership loop and fence did since start, for the metrics
/// (`metrics::ClusterMetrics` reads them at each scrape).
#[derive(Debug, Default)]
pub struct Counts {
    taken: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
    round_failures: AtomicU64,
    fence_refusals: AtomicU64,
}

/// `Counts` as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsRead {
    pub taken: u64,
    pub released: u64,
    pub lost: u64,
    pub round_failures: u64,
    pub fence_refusals: u64,
}

impl Counts {
    /// A round that went through: ranges taken, released and no longer held (released ones
    /// included).
    pub fn round(&self, taken: u64, released: u64, lost: usize) {
        self.taken.fetch_add(taken, Relaxed);
        self.released.fetch_add(released, Relaxed);
        self.lost.fetch_add(lost as u64, Relaxed);
    }

    /// A round that failed on the database (its renewal may not have happened).
    pub fn round_failed(&self) {
        self.round_failures.fetch_add(1, Relaxed);
    }

    /// Changes a commit refused because of a range no longer held.
    pub fn fence_refused(&self, changes: usize) {
        self.fence_refusals.fetch_add(changes as u64, Relaxed);
    }

    pub fn read(&self) -> CountsRead {
        CountsRead {
            taken: self.taken.load(Relaxed),
            released: self.released.load(Relaxed),
            lost: self.lost.load(Relaxed),
            round_failures: self.round_failures.load(Relaxed),
            fence_refusals: self.fence_refusals.load(Relaxed),
        }
    }
}

/// This node's picture of the leases: which ranges it holds at which epoch, and the tables as
/// last read (for owners' addresses and the admin view). Activations consult it; commits
/// check it against the database under a lock (`persistence::sql_cluster::fence`).
pub struct Ownership {
    node_id: String,
    address: String,
    lease_ttl: Duration,
    state: RwLock<State>,
    counts: Counts,
}

struct State {
    held: Vec<Option<Held>>,
    view: ClusterView,
}

impl Ownership {
    pub fn new(node_id: String, address: String, lease_ttl: Duration) -> Ownership {
        let state = State { held: vec![None; usize::from(RANGE_COUNT)], view: ClusterView::default() };
        Ownership { node_id, address, lease_ttl, state: RwLock::new(state), counts: Counts::default() }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// How long a lease is trusted locally after the statement that took or renewed it was
    /// sent: the TTL less a fifth, a margin for the two clocks' rates. Only activations rely on
    /// it; every commit asks the database.
    fn local_validity(&self) -> Duration {
        self.lease_ttl - self.lease_ttl / 5
    }

    /// Whether this node may serve `key` now.
    pub fn check(&self, key: Key) -> Result<(), NotOwner> {
        let range = key.range();
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.held[range.index()] {
            Some(held) if held.valid_until > Instant::now() => Ok(()),
            _ => Err(NotOwner { range, owner: state.view.owner_address(range).map(str::to_owned) }),
        }
    }

    /// The epoch this node holds `range` at, if it holds it (locally still valid).
    pub fn epoch(&self, range: RangeId) -> Option<i64> {
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.held[range.index()].filter(|held| held.valid_until > Instant::now()).map(|held| held.epoch)
    }

    /// A `NotOwner` for `range`, with the owner's address as last read.
    pub fn not_owner(&self, range: RangeId) -> NotOwner {
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        NotOwner { range, owner: state.view.owner_address(range).map(str::to_owned) }
    }

    /// What the membership loop and the fence did since start.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// How many ranges this node holds with a lease still valid locally.
    pub fn held_valid(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        state.held.iter().flatten().filter(|held| held.valid_until > now).count()
    }

    /// Whether this node holds at least one range whose lease is still valid locally (not
    /// expired since the renewal that last confirmed it): a cluster node is ready only then.
    pub fn holds_any(&self) -> bool {
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        state.held.iter().flatten().any(|held| held.valid_until > now)
    }

    /// Every range held, with its epoch (whatever its local validity: the renewal decides).
    pub fn held(&self) -> Vec<(RangeId, i64)> {
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        RangeId::all().filter_map(|range| state.held[range.index()].map(|held| (range, held.epoch))).collect()
    }

    /// Records the tables as read, where the statement reading them was sent at `sent_at`:
    /// ranges the view shows held by this node (live, at the epoch held) are trusted until
    /// `sent_at` + the local validity; every other range is no longer held. Returns the ranges
    /// this node held before and holds no more.
    pub fn apply(&self, view: ClusterView, sent_at: Instant) -> Vec<RangeId> {
        let valid_until = sent_at + self.local_validity();
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lost = Vec::new();
        for range in RangeId::all() {
            let row = view.ranges.get(range.index());
            let ours = row.filter(|row| row.is_live(view.now_ms) && row.owner.as_deref() == Some(&self.node_id));
            let before = state.held[range.index()];
            state.held[range.index()] = ours.map(|row| Held { epoch: row.epoch, valid_until });
            let kept = matches!((before, ours), (Some(held), Some(row)) if held.epoch == row.epoch);
            if before.is_some() && !kept {
                lost.push(range);
            }
        }
        state.view = view;
        lost
    }

    /// Stops holding `ranges` locally (before they are released in the database).
    pub fn forget(&self, ranges: &[RangeId]) {
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for range in ranges {
            state.held[range.index()] = None;
        }
    }

    /// Stops holding every range (membership lost, or leaving).
    pub fn forget_all(&self) -> Vec<RangeId> {
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let lost = RangeId::all().filter(|range| state.held[range.index()].is_some()).collect();
        state.held.iter_mut().for_each(|held| *held = None);
        lost
    }

    /// The tables as last read.
    pub fn view(&self) -> ClusterView {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner()).view.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SkuId;

    fn row(range: u16, owner: Option<&str>, epoch: i64, expires_at_ms: i64) -> RangeRow {
        RangeRow { range_id: RangeId::new(range).unwrap(), owner: owner.map(str::to_owned), epoch, expires_at_ms }
    }

    fn view(now_ms: i64, owner_of: impl Fn(u16) -> Option<(&'static str, i64, i64)>) -> ClusterView {
        let ranges = (0..RANGE_COUNT)
            .map(|r| match owner_of(r) {
                Some((owner, epoch, expires)) => row(r, Some(owner), epoch, expires),
                None => row(r, None, 0, 0),
            })
            .collect();
        let nodes =
            vec![NodeRow { node_id: "b".into(), worker_id: 1, address: "http://b".into(), heartbeat_at_ms: now_ms }];
        ClusterView { now_ms, nodes, ranges }
    }

    #[test]
    fn a_key_is_served_only_in_a_live_range_held_at_its_epoch() {
        let ownership = Ownership::new("a".into(), "http://a".into(), Duration::from_secs(10));
        let key = Key::sku(SkuId::new(7));
        let range = key.range();
        assert_eq!(ownership.check(key), Err(NotOwner { range, owner: None }));
        assert!(!ownership.holds_any(), "nothing taken yet: not ready");

        let lost = ownership.apply(view(1_000, |r| (r == range.get()).then_some(("a", 3, 5_000))), Instant::now());
        assert!(lost.is_empty());
        assert_eq!(ownership.check(key), Ok(()));
        assert_eq!(ownership.epoch(range), Some(3));
        assert!(ownership.holds_any());

        // Taken over by b at a newer epoch: lost here, and b's address is the answer.
        let lost = ownership.apply(view(6_000, |r| (r == range.get()).then_some(("b", 4, 9_000))), Instant::now());
        assert_eq!(lost, vec![range]);
        assert_eq!(ownership.check(key), Err(NotOwner { range, owner: Some("http://b".into()) }));
        assert!(!ownership.holds_any(), "its only range lost: not ready again");
    }

    #[test]
    fn a_lease_not_renewed_in_time_is_not_trusted_locally() {
        let ownership = Ownership::new("a".into(), "http://a".into(), Duration::from_secs(10));
        let key = Key::user(crate::domain::UserId::new(1));
        let long_ago = Instant::now() - Duration::from_secs(9);
        ownership.apply(view(1_000, |_| Some(("a", 1, 5_000))), long_ago);
        assert!(ownership.check(key).is_err(), "8s of local validity passed 9s ago");
        assert!(!ownership.holds_any(), "every lease lapsed locally: not ready");
        assert_eq!(ownership.held().len(), usize::from(RANGE_COUNT), "still held until the renewal decides");
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)], mysql: bool) -> Result<Option<ClusterSettings>, ConfigError> {
        let get = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        ClusterSettings::parse(get, mysql)
    }

    #[test]
    fn a_cluster_needs_mysql_and_a_url_and_defaults_to_a_ten_second_lease() {
        assert_eq!(parse(&[], true).unwrap(), None, "unset: one node owns every key");
        let url = [("TIANJI_ADVERTISE_URL", "http://10.0.0.1:8080/")];
        let settings = parse(&url, true).unwrap().unwrap();
        assert_eq!(settings.advertise_url, "http://10.0.0.1:8080");
        assert_eq!(settings.lease_ttl, LEASE_TTL_DEFAULT);
        assert_eq!(settings.renew_every(), LEASE_TTL_DEFAULT / 3);
        let sqlite = parse(&url, false).unwrap_err().to_string();
        assert!(sqlite.contains("TIANJI_ADVERTISE_URL") && sqlite.contains("MySQL"), "{sqlite}");
        let bad = parse(&[("TIANJI_ADVERTISE_URL", "10.0.0.1:8080")], true).unwrap_err().to_string();
        assert!(bad.contains("TIANJI_ADVERTISE_URL"), "{bad}");
        let ttl = parse(&[("TIANJI_ADVERTISE_URL", "http://a"), ("TIANJI_LEASE_TTL", "2s")], true).unwrap().unwrap();
        assert_eq!(ttl.lease_ttl, Duration::from_secs(2));
        let short = parse(&[("TIANJI_LEASE_TTL", "10ms")], true).unwrap_err().to_string();
        assert!(short.contains("TIANJI_LEASE_TTL"), "{short}");
        assert_eq!(settings.peers, peers::PeerLimits::default());
    }

    #[test]
    fn peer_calls_default_to_two_seconds_and_1024_in_flight_and_are_bounded() {
        let url = ("TIANJI_ADVERTISE_URL", "http://a");
        let set = parse(&[url, ("TIANJI_PEER_TIMEOUT", "500ms"), ("TIANJI_PEER_IN_FLIGHT_MAX", "8")], true);
        let limits = set.unwrap().unwrap().peers;
        assert_eq!((limits.timeout, limits.in_flight_max), (Duration::from_millis(500), 8));
        for bad in [
            ("TIANJI_PEER_TIMEOUT", "1ms"),
            ("TIANJI_PEER_TIMEOUT", "2h"),
            ("TIANJI_PEER_TIMEOUT", "soon"),
            ("TIANJI_PEER_IN_FLIGHT_MAX", "0"),
            ("TIANJI_PEER_IN_FLIGHT_MAX", "many"),
        ] {
            let error = parse(&[url, bad], true).unwrap_err().to_string();
            assert!(error.contains(bad.0), "{bad:?}: {error}");
        }
    }
}
