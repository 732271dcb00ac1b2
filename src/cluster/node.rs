//! The loop of a cluster node: every `TIANJI_LEASE_TTL / 3` it heartbeats its member row and
//! renews its live leases (one transaction, one database instant), reads the tables, drops
//! what it lost, and takes or releases ranges by `balance::plan_round`. Leaving (SIGTERM)
//! releases every lease and ends the heartbeat, so the others take over at once instead of
//! after a TTL.
//!
//! Guarantees: a range the database no longer shows held by this node at the epoch it took is
//! dropped from `Ownership` and its actors are evicted (`on_lost`) in the round that sees it;
//! a range is dropped locally before it is released in the database; a node whose member row
//! was taken over (it was presumed dead) drops every range and stops taking part, so it can
//! never mint ids with a worker id another node holds while it owns anything.

use super::balance::plan_round;
use super::{ClusterSettings, Ownership};
use crate::domain::slots::RangeId;
use crate::persistence::sql_cluster::ClusterStore;
use crate::persistence::{within, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Rounds run back to back at start, so a node owns its share before it serves.
pub const START_ROUNDS_MAX: usize = 8;

/// Called with ranges this node lost or gave up, to evict their actors.
pub type OnLost = Arc<dyn Fn(&[RangeId]) + Send + Sync>;
/// Called after a round took ranges, to take over their pending work (payment deadlines).
pub type OnTaken = Arc<dyn Fn() + Send + Sync>;

pub struct ClusterNode {
    store: ClusterStore,
    ownership: Arc<Ownership>,
    worker_id: u16,
    settings: ClusterSettings,
    /// Bounds every statement of the loop.
    timeout: Duration,
    on_lost: OnLost,
    on_taken: OnTaken,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub taken: u64,
    pub released: u64,
    pub lost: usize,
    /// The member row is no longer this node's.
    pub expelled: bool,
}

impl ClusterNode {
    pub fn new(
        store: ClusterStore,
        ownership: Arc<Ownership>,
        worker_id: u16,
        settings: ClusterSettings,
        timeout: Duration,
        on_lost: OnLost,
        on_taken: OnTaken,
    ) -> ClusterNode {
        ClusterNode { store, ownership, worker_id, settings, timeout, on_lost, on_taken }
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    fn ttl_ms(&self) -> i64 {
        self.settings.lease_ttl.as_millis() as i64
    }

    /// One round: heartbeat and renew, read, drop what is lost, take or release. Counted in
    /// `Ownership::counts`.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let counts = self.ownership.counts();
        match self.round_uncounted().await {
            Ok(round) => {
                counts.round(round.taken, round.released, round.lost);
                Ok(round)
            }
            Err(error) => {
                counts.round_failed();
                Err(error)
            }
        }
    }

    async fn round_uncounted(&self) -> Result<Round, StoreError> {
        let node_id = self.ownership.node_id().to_owned();
        let held: Vec<RangeId> = self.ownership.held().into_iter().map(|(range, _)| range).collect();
        let sent_at = Instant::now();
        if !within(self.timeout, self.store.heartbeat(&node_id, &held, self.ttl_ms())).await? {
            let lost = self.ownership.forget_all();
            (self.on_lost)(&lost);
            tracing::error!(
                node_id,
                lost = lost.len(),
                "this node's member row was taken over: it serves no key any more"
            );
            return Ok(Round { lost: lost.len(), expelled: true, ..Round::default() });
        }
        let view = within(self.timeout, self.store.view()).await?;
        let plan = plan_round(&view, &node_id, self.worker_id, self.ttl_ms());
        // Renewed leases count from before the renewal was sent.
        let mut lost = self.ownership.apply(view, sent_at);
        let mut round = Round::default();
        if !plan.release.is_empty() {
            self.ownership.forget(&plan.release);
            lost.extend(&plan.release);
            round.released = within(self.timeout, self.store.release(&node_id, &plan.release)).await?;
        }
        if !lost.is_empty() {
            (self.on_lost)(&lost);
            tracing::info!(?lost, "ranges no longer held here");
        }
        round.lost = lost.len();
        if !plan.take.is_empty() {
            let sent_at = Instant::now();
            round.taken = within(self.timeout, self.store.take(&node_id, &plan.take, self.ttl_ms())).await?;
            let view = within(self.timeout, self.store.view()).await?;
            let lost_meanwhile = self.ownership.apply(view, sent_at);
            if !lost_meanwhile.is_empty() {
                (self.on_lost)(&lost_meanwhile);
                round.lost += lost_meanwhile.len();
            }
            if round.taken > 0 {
                tracing::info!(taken = round.taken, "ranges taken");
                (self.on_taken)();
            }
        }
        Ok(round)
    }

    /// Rounds back to back until one takes nothing (at most `START_ROUNDS_MAX`).
    pub async fn settle(&self) -> Result<(), StoreError> {
        for _ in 0..START_ROUNDS_MAX {
            let round = self.round().await?;
            if round.taken == 0 || round.expelled {
                break;
            }
        }
        Ok(())
    }

    /// Runs rounds every `renew_every` until `stop` turns true (`false`) or the node is
    /// expelled (`true`). A failed round is logged; leases not renewed in time stop being
    /// trusted locally (`Ownership::check`) and the database refuses commits on them.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> bool {
        let mut ticks = tokio::time::interval(self.settings.renew_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return false;
            }
            match self.round().await {
                Ok(round) if round.expelled => return true,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cluster round failed; retrying next round"),
            }
        }
    }

    /// Leaves the cluster: drops every range locally (their actors evicted), releases them in
    /// the database and ends the heartbeat. Best effort within the timeout: what is not
    /// released expires after the TTL.
    pub async fn leave(&self) {
        let node_id = self.ownership.node_id().to_owned();
        let held = self.ownership.forget_all();
        (self.on_lost)(&held);
        let released = within(self.timeout, self.store.release(&node_id, &held)).await;
        let left = within(self.timeout, self.store.leave(&node_id, self.ttl_ms())).await;
        match (released, left) {
            (Ok(released), Ok(())) => tracing::info!(released, "left the cluster"),
            (released, left) => {
                tracing::warn!(?released, ?left, "leaving the cluster failed; leases expire after the TTL")
            }
        }
    }
}
