//! Recovery at start: settle every lease that disagrees with its order, then arm the deadline
//! of every order awaiting payment. Runs before the service takes requests and before any SKU
//! actor exists, so no lease can be touched by anything else meanwhile.
//!
//! Leases and orders are committed together on one node, so disagreements come from data
//! written before that, from a bug, or (in a cluster) from an order served on another node
//! whose settlement did not reach this one; whatever their status, `domain::lease::lease_repair`
//! says what each needs (`Core::repair_of`, shared with the repair pass of `repair.rs`). On a
//! cluster node an open lease with no order is left until it expires (`lease_due`). Repairs
//! go through the write pipeline in batches and are retried with backoff until they are
//! written (a database that is slow or locked at start delays the start, it does not leave a
//! repair for "the next start"), up to `RECOVERY_RETRY_FOR`, after which the start fails
//! loudly. A repair that cannot be made (units of a paid order were sold again since) is
//! reported as an error, never written unbalanced.
//!
//! Then, when Redis is configured, the learning progress Redis kept (the short-tick copy of the
//! write-behind) is scanned page by page and joined into the database through the pipeline,
//! `PROGRESS_ROWS_PER_CHANGE` rows per change. The join only moves rows that exist forward, so
//! an entry older than the database, or for a course never opened, changes nothing; an entry
//! that does not parse is logged and skipped. Redis is not the source of truth: if it does not
//! answer after `REDIS_ATTEMPTS_MAX` tries of a page, the start goes on without the rest (the
//! progress only Redis had is lost, as after losing Redis); a database that fails is retried
//! like the repairs.

use super::learning::PROGRESS_ROWS_PER_CHANGE;
use super::Core;
use crate::domain::lease::{lease_agrees, lease_due, lease_repair, LeaseRepair};
use crate::persistence::redis::progress::{ProgressMirror, ScanPage};
use crate::persistence::{Change, Conflict, LeaseWrite, SkuEffect, UnsettledLease};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Repairs submitted together; the pipeline puts them into batches of its own size.
const REPAIRS_PER_ROUND_MAX: usize = 1_000;
/// Deadlines handed to the timer in one command.
pub(super) const DEADLINES_PER_COMMAND_MAX: usize = 10_000;
/// How long recovery keeps retrying a database that fails before the start gives up.
pub const RECOVERY_RETRY_FOR: Duration = Duration::from_secs(300);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Progress changes submitted together (each `PROGRESS_ROWS_PER_CHANGE` rows).
const PROGRESS_CHANGES_PER_ROUND_MAX: usize = 16;
/// Tries of one page of the Redis scan before the start goes on without the rest.
const REDIS_ATTEMPTS_MAX: u32 = 3;

/// What recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub leases_repaired: usize,
    /// Leases that could not be repaired (logged as errors).
    pub leases_unrepairable: usize,
    pub deadlines_armed: usize,
    /// Progress entries read from Redis and joined into the database.
    pub progress_recovered: usize,
    /// Progress entries in Redis that did not parse (logged).
    pub progress_skipped: usize,
}

impl Core {
    /// Settles leases, then arms deadlines (see the module doc).
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<Recovered> {
        let started = Instant::now();
        let repaired = AtomicUsize::new(0);
        // A failed round is retried from a fresh scan: what it wrote is settled by then.
        let unrepairable = self.retrying("settle leases", || self.settle_leases(&repaired)).await?;
        let repaired_ms = started.elapsed().as_millis() as u64;
        let deadlines = self.retrying("load deadlines", || self.store.pending_deadlines()).await?;
        let deadlines = self.own_deadlines(deadlines);
        let mut recovered = Recovered {
            leases_repaired: repaired.load(Ordering::Relaxed),
            leases_unrepairable: unrepairable,
            deadlines_armed: deadlines.len(),
            ..Recovered::default()
        };
        for chunk in deadlines.chunks(DEADLINES_PER_COMMAND_MAX) {
            self.timer.schedule_many(chunk.to_vec()).await;
        }
        if let Some(mirror) = self.learning.mirror() {
            self.recover_progress(mirror, &mut recovered).await?;
        }
        tracing::info!(?recovered, repaired_ms, elapsed_ms = started.elapsed().as_millis() as u64, "recovered");
        Ok(recovered)
    }

    /// One pass: scan, then repair round by round. Counts repairs into `repaired`; returns
    /// how many leases cannot be repaired.
    async fn settle_leases(&self, repaired: &AtomicUsize) -> Result<usize, String> {
        let unsettled = self.store.unsettled_leases().await.map_err(|error| error.to_string())?;
        let mut unrepairable = 0;
        let mut repairs: Vec<(UnsettledLease, Change)> = Vec::new();
        let now_ms = self.clock.now_ms();
        for lease in unsettled {
            match self.repair_of(&lease, now_ms) {
                Triage::Repair(repair) => repairs.push((lease.clone(), repair_change(&lease, repair))),
                Triage::Unrepairable => unrepairable += 1,
                Triage::NotHere => {}
            }
        }
        for round in repairs.chunks(REPAIRS_PER_ROUND_MAX.min(self.limits.mailbox_capacity)) {
            let changes: Vec<Change> = round.iter().map(|(_, change)| change.clone()).collect();
            let outcomes = self.commit_all(changes).await?;
            for ((lease, _), outcome) in round.iter().zip(outcomes) {
                match outcome {
                    Ok(()) => {
                        repaired.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(conflict) => {
                        unrepairable += 1;
                        tracing::error!(sku_id = %lease.sku_id, order_id = %lease.order_id, lease = lease.status.as_str(), order = ?lease.order_status, %conflict, "lease cannot be repaired: its units are no longer available");
                    }
                }
            }
        }
        Ok(unrepairable)
    }

    /// Joins the progress Redis holds into the database, page by page (see the module doc).
    /// Fails only when the database keeps failing for `RECOVERY_RETRY_FOR`.
    async fn recover_progress(&self, mirror: &ProgressMirror, recovered: &mut Recovered) -> anyhow::Result<()> {
        let started = Instant::now();
        let (mut cursor, mut round_trips) = (0, 0);
        let rows_per_round =
            PROGRESS_ROWS_PER_CHANGE * PROGRESS_CHANGES_PER_ROUND_MAX.min(self.limits.mailbox_capacity);
        loop {
            let Some(page) = redis_page(mirror, cursor).await else {
                tracing::warn!(?recovered, "redis did not answer; learning progress only redis kept is not recovered");
                return Ok(());
            };
            round_trips += page.round_trips;
            recovered.progress_skipped += page.skipped;
            for round in page.writes.chunks(rows_per_round) {
                let changes: Vec<Change> = round
                    .chunks(PROGRESS_ROWS_PER_CHANGE)
                    .map(|rows| Change { progress: rows.to_vec(), ..Change::default() })
                    .collect();
                // Joining is idempotent: a round that failed is simply submitted again.
                let outcomes = self.retrying("recover learning progress", || self.commit_all(changes.clone())).await?;
                assert!(outcomes.iter().all(Result::is_ok), "progress writes are never refused: {outcomes:?}");
                recovered.progress_recovered += round.len();
            }
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            rows = recovered.progress_recovered,
            skipped = recovered.progress_skipped,
            round_trips,
            elapsed_ms,
            "learning progress recovered from redis"
        );
        Ok(())
    }

    /// Submits every change and waits for all of them; `Err` if any batch failed.
    async fn commit_all(&self, changes: Vec<Change>) -> Result<Vec<Result<(), Conflict>>, String> {
        let submitted = futures::future::join_all(changes.into_iter().map(|change| self.journal.submit(change))).await;
        submitted.into_iter().map(|result| result.map_err(|error| error.to_string())).collect()
    }

    /// Runs `attempt` until it succeeds, with backoff, for at most `RECOVERY_RETRY_FOR`.
    async fn retrying<T, E, F, Fut>(&self, what: &str, mut attempt: F) -> anyhow::Result<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if started.elapsed() < RECOVERY_RETRY_FOR => {
                    tracing::warn!(what, %error, retry_in_ms = backoff.as_millis() as u64, "recovery step failed; retrying");
                    // Pacing retries against a failing database, not ordering events.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(error) => anyhow::bail!("recovery could not {what} for {RECOVERY_RETRY_FOR:?}: {error}"),
            }
        }
    }
}

/// One page of the Redis scan from `cursor`, tried `REDIS_ATTEMPTS_MAX` times; `None` if
/// Redis never answered.
async fn redis_page(mirror: &ProgressMirror, cursor: u64) -> Option<ScanPage> {
    let mut backoff = BACKOFF_MIN;
    for attempt in 1..=REDIS_ATTEMPTS_MAX {
        match mirror.scan_page(cursor).await {
            Ok(page) => return Some(page),
            Err(error) => {
                tracing::warn!(%error, attempt, cursor, "reading learning progress from redis failed");
                if attempt < REDIS_ATTEMPTS_MAX {
                    // Pacing retries against a failing Redis, not ordering events.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
    None
}

/// What a lease that may disagree with its order needs from this node.
pub(super) enum Triage {
    /// This node owns the SKU and the lease needs `LeaseRepair`.
    Repair(LeaseRepair),
    /// It disagrees with its order and no repair applies (logged as an error).
    Unrepairable,
    /// Nothing to do here: it agrees, another node of the cluster owns the SKU, or (on a
    /// cluster node) it is an open lease whose order may still be on its way.
    NotHere,
}

impl Core {
    /// The one triage of a lease, at start (`recover`) and in the repair pass (`repair`).
    pub(super) fn repair_of(&self, lease: &UnsettledLease, now_ms: i64) -> Triage {
        if self.owns(crate::domain::slots::Key::sku(lease.sku_id)).is_err() {
            // Another node of the cluster owns the SKU: it repairs it.
            return Triage::NotHere;
        }
        if self.cluster().is_some() && !lease_due(lease.status, lease.order_status, lease.expires_at_ms, now_ms) {
            return Triage::NotHere;
        }
        match lease_repair(lease.status, lease.order_status, lease.refunded_from_paid) {
            Some(repair) => {
                tracing::info!(sku_id = %lease.sku_id, order_id = %lease.order_id, ?repair, "repairing lease");
                Triage::Repair(repair)
            }
            None if !lease_agrees(lease.status, lease.order_status, lease.refunded_from_paid) => {
                tracing::error!(sku_id = %lease.sku_id, order_id = %lease.order_id, lease = lease.status.as_str(), order = ?lease.order_status, "lease disagrees with its order and no repair applies");
                Triage::Unrepairable
            }
            None => Triage::NotHere,
        }
    }
}

/// The change that brings `lease` in line with its order by `repair`, written before any SKU
/// actor exists (no epoch).
fn repair_change(lease: &UnsettledLease, repair: LeaseRepair) -> Change {
    let write = LeaseWrite {
        order_id: lease.order_id,
        quantity: lease.quantity,
        expires_at_ms: lease.expires_at_ms,
        from: Some(lease.status),
        to: repair.target(),
    };
    let effect =
        SkuEffect { sku_id: lease.sku_id, epoch: None, delta: repair.delta(lease.quantity), lease: Some(write) };
    Change { skus: vec![effect], ..Change::default() }
}
