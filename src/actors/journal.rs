//! The journal: the node's one write pipeline. Every actor hands its accepted changes here
//! (an order with its reservations, an order step with its stock effect and payment, a
//! restock, a repair) and is answered after the batch that holds the change commits.
//!
//! A batch closes at `batch_size_max` changes or `batch_delay` and is written by
//! `Store::commit` in ONE transaction, whatever keys it spans; while it commits the next one
//! fills (pipelined). The queue is bounded by `mailbox_capacity`: a full queue refuses at once
//! (503 `overloaded`), nothing half-written. A commit that does not finish within
//! `database_timeout` counts as failed with an unknown outcome.
//!
//! After each batch, before any caller is answered, every SKU actor with effects in it gets one
//! `Committed` notice (its committed delta, what was refused, or that the batch failed), so a
//! caller that asks the SKU after its answer sees its change.
//!
//! Measured: changes per batch and commit time (histograms), the queue depth as each batch
//! closes, and the changes a full queue refused (`crate::metrics::JournalMetrics`).

use super::inventory::Committed;
use super::{ActorLimits, Core};
use crate::domain::clock::DynClock;
use crate::domain::SkuId;
use crate::metrics::JournalMetrics;
use crate::persistence::group_commit::{BatchLimits, Batcher, QueueMetrics};
use crate::persistence::{Change, CommitReport, Conflict, DynStore, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

pub fn start(
    core: Weak<Core>,
    store: DynStore,
    clock: DynClock,
    limits: &ActorLimits,
    metrics: JournalMetrics,
) -> Batcher<Change, Result<(), Conflict>> {
    let bounds =
        BatchLimits { size_max: limits.batch_size_max, delay: limits.batch_delay, queue_max: limits.mailbox_capacity };
    let timeout = limits.database_timeout;
    let queue = QueueMetrics { depth: metrics.queue_depth.clone(), rejections: metrics.rejections.clone() };
    Batcher::spawn_measured("journal", bounds, queue, move |changes: Vec<Change>| {
        let (core, store, clock) = (core.clone(), Arc::clone(&store), Arc::clone(&clock));
        let (batch_size, commit_seconds) = (metrics.batch_size.clone(), metrics.commit_seconds.clone());
        async move {
            batch_size.record(changes.len() as f64);
            let now_ms = clock.now_ms();
            let started = std::time::Instant::now();
            // Past the timeout the commit's outcome is unknown: its callers are told so.
            let result = crate::persistence::within(timeout, store.commit(&changes, now_ms)).await;
            let elapsed = started.elapsed();
            commit_seconds.record(elapsed.as_secs_f64());
            let commit_us = elapsed.as_micros() as u64;
            tracing::debug!(batch_size = changes.len(), commit_us, ok = result.is_ok(), "journal batch");
            if let Some(core) = core.upgrade() {
                notify_skus(&core, &changes, &result);
                if result.is_ok() {
                    // The batch's order events are in the outbox: one permit for the relay.
                    core.committed.notify_one();
                }
            }
            result.map(|report| report.outcomes)
        }
    })
}

/// Sends each live SKU actor with effects in the batch its one notice.
fn notify_skus(core: &Core, changes: &[Change], result: &Result<CommitReport, StoreError>) {
    let mut notices: HashMap<(SkuId, i64), Committed> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        for effect in &change.skus {
            // Repairs at start carry no epoch: no actor made them.
            let Some(epoch) = effect.epoch else { continue };
            let notice =
                notices.entry((effect.sku_id, epoch)).or_insert_with(|| Committed { epoch, ..Committed::default() });
            notice.settled += 1;
            match result {
                Err(_) => notice.failed = true,
                Ok(report) => match report.outcomes[index] {
                    Ok(()) => {
                        notice.delta = notice.delta.plus(effect.delta);
                        notice.version = report.versions.get(&effect.sku_id).copied();
                    }
                    Err(conflict) => notice.refused.push((effect.clone(), conflict)),
                },
            }
        }
    }
    for ((sku_id, _), notice) in notices {
        match core.skus.get(sku_id) {
            // Past the mailbox bound on purpose: a lost notice would leave the actor's memory
            // wrong. Bounded by the batch size.
            Some(actor) => actor.addr().do_send(notice),
            None => tracing::debug!(%sku_id, "sku actor gone before its notice; its reload reads the outcome"),
        }
    }
}
