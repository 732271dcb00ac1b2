//! The rule by which a node decides, each renewal round, which ranges to take and which to
//! give up. Pure: it reads a `ClusterView` and names ranges; the conditional UPDATEs decide
//! whether a take wins.
//!
//! The rule: with `n` live nodes (heartbeat younger than the TTL, this node included), a
//! node's share is `ceil(RANGE_COUNT / n)`.
//! - Below its share, a node takes orphaned ranges (never taken, or expired by the database
//!   clock), at most `TAKE_PER_ROUND_MAX` a round, starting at an offset of its own so that
//!   nodes joining together mostly try different ranges. It never takes a live lease.
//! - Above `floor(RANGE_COUNT / n)`, and only while no range is orphaned and some live node
//!   holds fewer than that floor, a node releases at most `RELEASE_PER_ROUND_MAX` ranges a
//!   round (its highest ids, never going below the floor), which the node below the floor
//!   then takes as orphans.
//!
//! So a dead node's ranges are taken within one round after they expire (its heartbeat
//! expires with them, so the survivors' shares grow), a joining node fills up gradually, and
//! ranges move only from a node over the floor to one under it: no storm, no ping-pong, and a
//! settled cluster has every node at the floor or one above it.

use super::ClusterView;
use crate::domain::slots::{RangeId, RANGE_COUNT};

/// The most ranges a node takes in one round.
pub const TAKE_PER_ROUND_MAX: usize = 16;
/// The most ranges a node gives up in one round.
pub const RELEASE_PER_ROUND_MAX: usize = 4;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundPlan {
    pub take: Vec<RangeId>,
    pub release: Vec<RangeId>,
}

/// What node `me` (node id, worker id for its offset) does this round.
pub fn plan_round(view: &ClusterView, me: &str, worker_id: u16, ttl_ms: i64) -> RoundPlan {
    let now_ms = view.now_ms;
    let mut live: Vec<&str> = view.live_nodes(ttl_ms).map(|node| node.node_id.as_str()).collect();
    if !live.contains(&me) {
        live.push(me);
    }
    let nodes = live.len();
    let share = usize::from(RANGE_COUNT).div_ceil(nodes);
    let floor = usize::from(RANGE_COUNT) / nodes;
    let held_by =
        |node: &str| view.ranges.iter().filter(|row| row.is_live(now_ms) && row.owner.as_deref() == Some(node)).count();
    let mine: Vec<RangeId> = view
        .ranges
        .iter()
        .filter(|row| row.is_live(now_ms) && row.owner.as_deref() == Some(me))
        .map(|row| row.range_id)
        .collect();
    let mut orphans: Vec<RangeId> =
        view.ranges.iter().filter(|row| !row.is_live(now_ms)).map(|row| row.range_id).collect();
    let offset = (usize::from(worker_id) * usize::from(RANGE_COUNT) / 7) % usize::from(RANGE_COUNT);
    orphans.sort_by_key(|range| (range.index() + usize::from(RANGE_COUNT) - offset) % usize::from(RANGE_COUNT));

    let mut plan = RoundPlan::default();
    if mine.len() < share {
        plan.take = orphans.iter().copied().take((share - mine.len()).min(TAKE_PER_ROUND_MAX)).collect();
    } else if mine.len() > floor && orphans.is_empty() && live.iter().any(|node| held_by(node) < floor) {
        let over = (mine.len() - floor).min(RELEASE_PER_ROUND_MAX);
        plan.release = mine.iter().rev().take(over).copied().collect();
    }
    assert!(plan.take.is_empty() || plan.release.is_empty());
    assert!(plan.take.len() <= TAKE_PER_ROUND_MAX && plan.release.len() <= RELEASE_PER_ROUND_MAX);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeRow, RangeRow};

    const TTL_MS: i64 = 2_000;
    const NOW_MS: i64 = 100_000;

    fn cluster(nodes: &[&str], owner_of: impl Fn(usize) -> Option<&'static str>) -> ClusterView {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(n, id)| NodeRow {
                node_id: (*id).to_owned(),
                worker_id: n as i64,
                address: format!("http://{id}"),
                heartbeat_at_ms: NOW_MS,
            })
            .collect();
        let ranges = RangeId::all()
            .map(|range| RangeRow {
                range_id: range,
                owner: owner_of(range.index()).map(str::to_owned),
                epoch: 1,
                expires_at_ms: NOW_MS + TTL_MS,
            })
            .collect();
        ClusterView { now_ms: NOW_MS, nodes, ranges }
    }

    /// Runs rounds of every node (in turn, each take and release applied at once) until
    /// nothing changes; returns the ranges each node holds and the rounds it took.
    fn settle(mut view: ClusterView, nodes: &[&str]) -> (Vec<usize>, usize) {
        for round in 1..=200 {
            let mut changed = false;
            for (n, node) in nodes.iter().enumerate() {
                let plan = plan_round(&view, node, n as u16, TTL_MS);
                for range in &plan.take {
                    let row = &mut view.ranges[range.index()];
                    assert!(!row.is_live(NOW_MS), "a take of a live lease");
                    row.owner = Some((*node).to_owned());
                    row.expires_at_ms = NOW_MS + TTL_MS;
                    changed = true;
                }
                for range in &plan.release {
                    view.ranges[range.index()].expires_at_ms = NOW_MS;
                    changed = true;
                }
            }
            if !changed {
                let held = nodes
                    .iter()
                    .map(|node| {
                        view.ranges.iter().filter(|r| r.is_live(NOW_MS) && r.owner.as_deref() == Some(*node)).count()
                    })
                    .collect();
                return (held, round);
            }
        }
        panic!("no settlement in 200 rounds");
    }

    #[test]
    fn nodes_split_an_empty_table_fairly() {
        let (held, _) = settle(cluster(&["a", "b", "c"], |_| None), &["a", "b", "c"]);
        assert_eq!(held.iter().sum::<usize>(), 64);
        assert!(held.iter().all(|h| (21..=22).contains(h)), "{held:?}");
    }

    #[test]
    fn a_joining_node_gets_its_share_gradually() {
        let view = cluster(&["a", "b"], |_| Some("a"));
        let first = plan_round(&view, "a", 0, TTL_MS);
        assert_eq!(first.release.len(), RELEASE_PER_ROUND_MAX, "a releases a few at a time");
        assert!(plan_round(&view, "b", 1, TTL_MS).take.is_empty(), "b takes no live lease");
        let (held, rounds) = settle(view, &["a", "b"]);
        assert_eq!(held, vec![32, 32]);
        assert!(rounds > 2, "gradual, not at once");
    }

    #[test]
    fn a_dead_nodes_ranges_are_taken_in_one_round() {
        let mut view = cluster(&["a", "b", "c"], |r| Some(["a", "b", "c"][r % 3]));
        // c stopped: its heartbeat and its leases ran out together.
        view.nodes[2].heartbeat_at_ms = NOW_MS - TTL_MS;
        for row in view.ranges.iter_mut().filter(|row| row.owner.as_deref() == Some("c")) {
            row.expires_at_ms = NOW_MS - 1;
        }
        let take_a = plan_round(&view, "a", 0, TTL_MS).take;
        let take_b = plan_round(&view, "b", 1, TTL_MS).take;
        assert_eq!((take_a.len(), take_b.len()), (32 - 22, 32 - 21), "both fill up to their share");
        let (held, _) = settle(view, &["a", "b"]);
        assert_eq!(held, vec![32, 32]);
    }

    #[test]
    fn a_balanced_cluster_moves_nothing() {
        let view = cluster(&["a", "b", "c"], |r| Some(["a", "b", "c"][r % 3]));
        for (n, node) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(plan_round(&view, node, n as u16, TTL_MS), RoundPlan::default());
        }
    }
}
