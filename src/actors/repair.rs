//! The repair pass of a cluster node: the SKU owner's side of the cross-node saga.
//!
//! An order served on another node settles its leases here only after its own step is
//! committed there (`order.rs`); a settlement that did not arrive (the call failed, that node
//! died), or a placement whose order was never written, leaves a lease that disagrees with its
//! order in the shared database. Every `every`, and once right after this node takes ranges,
//! the pass reads a page of such leases (`Store::leases_due`), keeps those of SKUs this node
//! owns, triages each exactly as recovery does (`Core::repair_of`: `domain::lease` decides)
//! and settles it through the SKU's actor, committed alone (`Core::settle_alone`), so the
//! actor's memory and the database move together.
//!
//! Guarantees: at most `REPAIRS_PER_PASS_MAX` leases per pass, `REPAIRS_IN_FLIGHT_MAX` at a
//! time; the page cursor moves on, so every lease is reached in a bounded number of passes
//! however many other nodes' leases come first; a lease that a settlement reached first is
//! found settled by its actor and left alone; nothing is queued in memory between passes.

use super::inventory::{Settlement, SkuError};
use super::recovery::Triage;
use super::Core;
use crate::domain::inventory::InventoryError;
use crate::domain::lease::LeaseRepair;
use crate::domain::{OrderId, SkuId};
use crate::persistence::{StoreError, UnsettledLease};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Leases one pass reads at most.
pub const REPAIRS_PER_PASS_MAX: u32 = 500;
/// Repairs of one pass in flight at once.
pub const REPAIRS_IN_FLIGHT_MAX: usize = 32;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairPass {
    /// Leases read (of every node's SKUs).
    pub read: usize,
    /// Leases settled now.
    pub repaired: usize,
    /// Leases whose settlement failed (the next passes try again).
    pub failed: usize,
    /// Where the next pass starts; `None`: from the beginning.
    pub next: Option<(SkuId, OrderId)>,
}

/// The settlements of the SKU actor that make `repair`, for a lease of `quantity` units;
/// `None` for the repairs only recovery at start makes (units let go and taken again).
fn settlements(repair: LeaseRepair, quantity: i64) -> Option<Vec<Settlement>> {
    match repair {
        LeaseRepair::Release => Some(vec![Settlement::Release]),
        LeaseRepair::Confirm => Some(vec![Settlement::Confirm]),
        LeaseRepair::ConfirmThenReturn => Some(vec![Settlement::Confirm, Settlement::Return { quantity }]),
        LeaseRepair::Return => Some(vec![Settlement::Return { quantity }]),
        LeaseRepair::Retake | LeaseRepair::Rehold => None,
    }
}

impl Core {
    /// One repair pass from `after` (see the module doc).
    pub async fn repair_leases(self: &Arc<Self>, after: Option<(SkuId, OrderId)>) -> Result<RepairPass, StoreError> {
        let now_ms = self.clock.now_ms();
        let page = self
            .bounded(move |store| async move { store.leases_due(now_ms, after, REPAIRS_PER_PASS_MAX).await })
            .await?;
        let next = if page.len() < REPAIRS_PER_PASS_MAX as usize {
            None
        } else {
            page.last().map(|lease| (lease.sku_id, lease.order_id))
        };
        let mut pass = RepairPass { read: page.len(), next, ..RepairPass::default() };
        let due: Vec<(UnsettledLease, Vec<Settlement>)> = page
            .into_iter()
            .filter_map(|lease| match self.repair_of(&lease, now_ms) {
                Triage::Repair(repair) => {
                    let steps = settlements(repair, lease.quantity);
                    if steps.is_none() {
                        tracing::error!(sku_id = %lease.sku_id, order_id = %lease.order_id, ?repair, "this repair is made at start only");
                    }
                    steps.map(|steps| (lease, steps))
                }
                Triage::Unrepairable | Triage::NotHere => None,
            })
            .collect();
        for chunk in due.chunks(REPAIRS_IN_FLIGHT_MAX) {
            let repairs = chunk.iter().map(|(lease, steps)| self.repair_one(lease, steps));
            for repaired in futures::future::join_all(repairs).await {
                match repaired {
                    Ok(()) => pass.repaired += 1,
                    Err(()) => pass.failed += 1,
                }
            }
        }
        self.repairs.repaired.increment(pass.repaired as u64);
        self.repairs.failed.increment(pass.failed as u64);
        if pass.repaired > 0 || pass.failed > 0 {
            tracing::info!(?pass, "leases repaired");
        }
        Ok(pass)
    }

    /// Settles one lease step by step; a step its actor finds settled already ends it.
    async fn repair_one(self: &Arc<Self>, lease: &UnsettledLease, steps: &[Settlement]) -> Result<(), ()> {
        for &settlement in steps {
            match self.settle_alone(lease.sku_id, lease.order_id, settlement).await {
                Ok(()) => {}
                Err(SkuError::Inventory(InventoryError::UnknownReservation(_))) => return Ok(()),
                Err(error) => {
                    tracing::warn!(sku_id = %lease.sku_id, order_id = %lease.order_id, ?settlement, %error, "lease repair failed; the next pass tries again");
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

/// Runs a pass every `every` until `stop` turns true (a cluster node's loop).
pub async fn run_repairs(core: Weak<Core>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut after = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let Some(core) = core.upgrade() else { return };
        match core.repair_leases(after).await {
            Ok(pass) => after = pass.next,
            Err(error) => tracing::warn!(%error, "lease repair pass failed; retrying at the next tick"),
        }
    }
}
