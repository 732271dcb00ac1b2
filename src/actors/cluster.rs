//! The cluster side of `Core`: whether this node may serve a key, and evicting the actors of
//! ranges it lost.
//!
//! Guarantees: on a single node (no `Ownership` joined) every key is served and nothing here
//! costs more than one empty `OnceLock` read. On a cluster node an actor is activated only
//! for a key of a range held (locally valid) now; the actors of a range lost or given up are
//! dropped from their registries, so the next request for one of their keys meets the
//! activation check (503 `not_owner`). A dropped actor may still finish a message it holds:
//! its commit is fenced by the database and refused.

use super::Core;
use crate::cluster::remote::RemoteKeys;
use crate::cluster::{NotOwner, Ownership};
use crate::domain::slots::{Key, RangeId};
use crate::domain::{Counters, OrderId, UserId};
use crate::persistence::redis::SkuSnapshot;
use crate::persistence::{NewSku, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The answer to creating `sku` on a node that does not own its key (any node creates SKUs;
/// the id decides the owner): the SKU as written, since no actor of it runs here. `None`
/// when this node owns it (the actor answers).
pub(super) fn created_elsewhere(core: &Core, sku: &NewSku) -> Option<SkuSnapshot> {
    core.owns(Key::sku(sku.sku_id)).err()?;
    let counters = Counters { total: sku.total, available: sku.total, reserved: 0, sold: 0 };
    assert!(counters.is_balanced());
    Some(SkuSnapshot {
        sku_id: sku.sku_id,
        name: sku.name.clone(),
        price_cents: sku.price_cents,
        counters,
        version: 0,
        sale: sku.sale,
    })
}

impl Core {
    /// Makes this core a cluster node's: from now on keys are served only in held ranges, and
    /// the SKUs and templates of other nodes are called through `remote`. Called once, before
    /// the node serves.
    pub fn join_cluster(&self, ownership: Arc<Ownership>, remote: Arc<RemoteKeys>) {
        assert!(self.cluster.set(ownership).is_ok(), "a core joins one cluster, once");
        assert!(self.remote.set(remote).is_ok(), "a core joins one cluster, once");
    }

    /// Where a SKU's units or a template's coupons are decided when another node owns the
    /// `key`: that node's address and the client to call it with. `None` when this node owns
    /// the key (always, on a single node); `Err` when no live node holds its range now (a
    /// takeover in progress).
    pub(crate) fn elsewhere(&self, key: Key) -> Option<Result<(String, &RemoteKeys), NotOwner>> {
        let ownership = self.cluster.get()?;
        let not_owner = ownership.check(key).err()?;
        let remote = self.remote.get()?;
        Some(match not_owner.owner.as_deref() {
            Some(owner) if owner != ownership.address() => Ok((owner.to_owned(), remote.as_ref())),
            _ => Err(not_owner),
        })
    }

    /// This node's leases, when it is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<Ownership>> {
        self.cluster.get()
    }

    /// Whether this node may activate an actor for `key`.
    pub(crate) fn owns(&self, key: Key) -> Result<(), NotOwner> {
        match self.cluster.get() {
            None => Ok(()),
            Some(ownership) => ownership.check(key),
        }
    }

    /// What an actor for `key` activated now records (`Change::held_ranges`): the range of its
    /// key with the epoch this node holds it at, so its commits are refused once the range
    /// was lost, even if this node took it back since. Empty on a single node.
    pub(crate) fn activation_ranges(&self, key: Key) -> Result<Vec<(RangeId, i64)>, NotOwner> {
        let Some(ownership) = self.cluster.get() else { return Ok(Vec::new()) };
        let range = key.range();
        match ownership.epoch(range) {
            Some(epoch) => Ok(vec![(range, epoch)]),
            None => Err(ownership.not_owner(range)),
        }
    }

    /// A `NotOwner` for `range`, with its owner's address when known.
    pub(crate) fn not_owner(&self, range: RangeId) -> NotOwner {
        match self.cluster.get() {
            None => NotOwner { range, owner: None },
            Some(ownership) => ownership.not_owner(range),
        }
    }

    /// Arms the payment deadline of every pending order of a buyer this node serves again
    /// (after it took ranges), so the orders of a node that died are timed out here. Returns
    /// how many deadlines were armed.
    pub async fn rearm_deadlines(&self) -> Result<usize, StoreError> {
        let deadlines = self.bounded(|store| async move { store.pending_deadlines().await }).await?;
        let deadlines = self.own_deadlines(deadlines);
        for chunk in deadlines.chunks(super::recovery::DEADLINES_PER_COMMAND_MAX) {
            self.timer.schedule_many(chunk.to_vec()).await;
        }
        Ok(deadlines.len())
    }

    /// The deadlines of orders whose buyer this node serves (their sessions run here), as the
    /// timer takes them. Every one on a single node.
    pub(crate) fn own_deadlines(&self, deadlines: Vec<(OrderId, UserId, i64)>) -> Vec<(OrderId, i64)> {
        let ours = |user_id: UserId| self.owns(Key::user(user_id)).is_ok();
        deadlines.into_iter().filter(|(_, user_id, _)| ours(*user_id)).map(|(id, _, at)| (id, at)).collect()
    }

    /// Drops the actors of `ranges` from their registries. Returns how many were dropped.
    pub fn evict_ranges(&self, ranges: &[RangeId]) -> usize {
        if ranges.is_empty() {
            return 0;
        }
        let lost: BTreeSet<RangeId> = ranges.iter().copied().collect();
        let evicted = self.skus.evict(|sku_id| lost.contains(&Key::sku(*sku_id).range()))
            + self.users.evict(|user_id| lost.contains(&Key::user(*user_id).range()))
            + self.templates.evict(|template_id| lost.contains(&Key::template(*template_id).range()));
        if evicted > 0 {
            tracing::info!(evicted, ranges = lost.len(), "actors of lost ranges evicted");
        }
        evicted
    }
}
