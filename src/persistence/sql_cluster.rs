//! The SQL of a cluster (MariaDB only): membership rows, range leases and the fence every
//! commit of a cluster node passes.
//!
//! Every time is the DATABASE's clock (`DB_NOW_MS` inside the statement), never a node's, so
//! nodes with drifting clocks agree on who holds what. A take is a conditional UPDATE that
//! bumps the range's epoch and succeeds only on a range that was never taken or whose lease
//! expired; a renewal extends only a live lease of its holder; a release expires it now. The
//! fence (`fence`) reads the rows of the ranges a batch touches with a share lock in the
//! batch's own transaction: a taker's UPDATE waits for the batch to commit, and a batch waits
//! for a take in progress, so a commit either happens while its node still holds every range
//! at the epoch it took, or is refused.

use super::sql::push_list;
use super::{Change, StoreError};
use crate::cluster::{ClusterView, NodeRow, RangeRow};
use crate::domain::ids::WORKER_ID_MAX;
use crate::domain::slots::{Key, RangeId};
use sqlx::any::Any;
use sqlx::{AnyConnection, AnyPool, QueryBuilder, Row};
use std::collections::{BTreeMap, BTreeSet};

/// The database clock in milliseconds since the Unix epoch, as a BIGINT.
const DB_NOW_MS: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// Attempts at inserting a new member row before giving up (another node inserting the same
/// worker id at the same moment costs one).
pub const JOIN_ATTEMPTS_MAX: usize = 16;

/// The ranges a change's keys fall in: its user's (a new order, purchases, a coupon move or
/// issue, courses opened), its SKUs' and its template's. An issue the template's owner commits
/// for a user another node serves is fenced by the template's range alone (the database checks
/// the user's count: `CouponIssue::user_served_elsewhere`). Learning progress is not fenced: it
/// is merged (a join that never loses progress), so a late write of an old owner is harmless.
/// An order transition or a payment is fenced by the range its order session was activated
/// under (the user's, in `Change::held_ranges`), whatever else it carries.
pub fn ranges_of(change: &Change) -> BTreeSet<RangeId> {
    let users = change
        .order
        .iter()
        .map(|order| order.user_id)
        .chain(change.purchases.iter().map(|write| write.user_id))
        .chain(change.coupon.iter().map(|movement| movement.user_id))
        .chain(change.issue.iter().filter(|issue| !issue.user_served_elsewhere).map(|issue| issue.coupon.user_id))
        .chain(change.lessons.iter().map(|grant| grant.user_id))
        .map(Key::user);
    let skus =
        change.skus.iter().map(|effect| effect.sku_id).chain(change.sale.iter().map(|sale| sale.sku_id)).map(Key::sku);
    let templates = change.issue.iter().map(|issue| Key::template(issue.coupon.template_id));
    users.chain(skus).chain(templates).map(Key::range).collect()
}

/// What `change` needs to commit on a cluster node: every range it touches, held at an epoch.
/// A range its actors were activated under (`Change::held_ranges`) must still be held at the
/// epoch of that activation (a range lost and taken back since fences them out: their memory
/// may be stale); any other range at the epoch this node holds it now (`current`; `None`: not
/// held, so refused). SKU keys need no more: their own epoch fences an earlier activation.
pub fn needed(change: &Change, current: impl Fn(RangeId) -> Option<i64>) -> Vec<(RangeId, Option<i64>)> {
    let mut needs: BTreeMap<RangeId, Option<i64>> =
        ranges_of(change).into_iter().map(|range| (range, current(range))).collect();
    for (range, epoch) in &change.held_ranges {
        needs.insert(*range, Some(*epoch));
    }
    needs.into_iter().collect()
}

/// Inside a commit's transaction: of `ranges`, those the database shows held by `node_id`
/// and unexpired, with the epoch each is held at. Locks the rows in share mode until the
/// transaction ends, so no take of them can commit before this transaction does.
pub async fn fence(
    tx: &mut AnyConnection,
    node_id: &str,
    ranges: &BTreeSet<RangeId>,
) -> Result<BTreeMap<RangeId, i64>, StoreError> {
    if ranges.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut select = QueryBuilder::<Any>::new(format!(
        "SELECT range_id, owner, epoch, expires_at - {DB_NOW_MS} AS remaining_ms FROM cluster_range WHERE range_id IN "
    ));
    push_list(&mut select, ranges.iter().map(|range| i64::from(range.get())));
    select.push(" LOCK IN SHARE MODE");
    let mut held = BTreeMap::new();
    for row in select.build().fetch_all(&mut *tx).await? {
        let range = range_from(row.try_get("range_id")?)?;
        let owner: Option<String> = row.try_get("owner")?;
        let remaining_ms: i64 = row.try_get("remaining_ms")?;
        if owner.as_deref() == Some(node_id) && remaining_ms > 0 {
            held.insert(range, row.try_get("epoch")?);
        }
    }
    Ok(held)
}

fn range_from(value: i64) -> Result<RangeId, StoreError> {
    u16::try_from(value).ok().and_then(RangeId::new).ok_or_else(|| StoreError::Corrupt(format!("range id {value}")))
}

/// Membership and leases, on the pool of the store.
#[derive(Clone)]
pub struct ClusterStore {
    pool: AnyPool,
}

impl ClusterStore {
    pub fn new(pool: AnyPool) -> ClusterStore {
        ClusterStore { pool }
    }

    /// Claims a worker id for `node_id`: first the row of a node dead for two TTLs (its
    /// heartbeat older than that; a paused node gets one TTL to notice it lost its leases
    /// before its worker id is reused), else a new row with the next id. Returns the worker id.
    pub async fn join(&self, node_id: &str, address: &str, ttl_ms: i64) -> Result<u16, StoreError> {
        let dead_before = format!("{DB_NOW_MS} - ?");
        for _ in 0..JOIN_ATTEMPTS_MAX {
            let dead: Option<i64> = sqlx::query(&format!(
                "SELECT worker_id FROM cluster_node WHERE heartbeat_at < {dead_before} ORDER BY worker_id LIMIT 1"
            ))
            .bind(2 * ttl_ms)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("worker_id"))
            .transpose()?;
            if let Some(worker_id) = dead {
                let claimed = sqlx::query(&format!(
                    "UPDATE cluster_node SET node_id = ?, address = ?, heartbeat_at = {DB_NOW_MS}, joined_at = {DB_NOW_MS} \
                     WHERE worker_id = ? AND heartbeat_at < {dead_before}"
                ))
                .bind(node_id.to_owned())
                .bind(address.to_owned())
                .bind(worker_id)
                .bind(2 * ttl_ms)
                .execute(&self.pool)
                .await?;
                if claimed.rows_affected() == 1 {
                    return worker(worker_id);
                }
                continue;
            }
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(worker_id) + 1, 0) AS next FROM cluster_node")
                .fetch_one(&self.pool)
                .await?
                .try_get("next")?;
            if next > i64::from(WORKER_ID_MAX) {
                return Err(StoreError::Unavailable(format!(
                    "all {} worker ids are held by live nodes",
                    WORKER_ID_MAX + 1
                )));
            }
            let inserted = sqlx::query(&format!(
                "INSERT INTO cluster_node (node_id, worker_id, address, heartbeat_at, joined_at) \
                 VALUES (?, ?, ?, {DB_NOW_MS}, {DB_NOW_MS})"
            ))
            .bind(node_id.to_owned())
            .bind(next)
            .bind(address.to_owned())
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => return worker(next),
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(StoreError::Unavailable(format!("no worker id claimed in {JOIN_ATTEMPTS_MAX} attempts")))
    }

    /// Heartbeats `node_id` and renews its live leases of `ranges`, in one transaction on one
    /// database instant (so a node's leases and its membership expire together). `false` when
    /// the member row is no longer this node's (it was presumed dead and its worker id reused).
    pub async fn heartbeat(&self, node_id: &str, ranges: &[RangeId], ttl_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let beat = sqlx::query(&format!("UPDATE cluster_node SET heartbeat_at = {DB_NOW_MS} WHERE node_id = ?"))
            .bind(node_id.to_owned())
            .execute(&mut *tx)
            .await?;
        if beat.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !ranges.is_empty() {
            let mut renew = QueryBuilder::<Any>::new(format!("UPDATE cluster_range SET expires_at = {DB_NOW_MS} + "));
            renew.push_bind(ttl_ms).push(" WHERE owner = ").push_bind(node_id.to_owned());
            renew.push(format!(" AND expires_at > {DB_NOW_MS} AND range_id IN "));
            push_list(&mut renew, ranges.iter().map(|range| i64::from(range.get())));
            renew.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Takes those of `ranges` that are unowned or expired, bumping each one's epoch. Which
    /// ones were won shows in the next `view`.
    pub async fn take(&self, node_id: &str, ranges: &[RangeId], ttl_ms: i64) -> Result<u64, StoreError> {
        if ranges.is_empty() {
            return Ok(0);
        }
        let mut take = QueryBuilder::<Any>::new("UPDATE cluster_range SET owner = ");
        take.push_bind(node_id.to_owned()).push(format!(", epoch = epoch + 1, expires_at = {DB_NOW_MS} + "));
        take.push_bind(ttl_ms).push(format!(" WHERE (owner IS NULL OR expires_at <= {DB_NOW_MS}) AND range_id IN "));
        push_list(&mut take, ranges.iter().map(|range| i64::from(range.get())));
        Ok(take.build().execute(&self.pool).await?.rows_affected())
    }

    /// Ends `node_id`'s leases of `ranges` now (the owner is kept, so its address stays known
    /// until another node takes the range).
    pub async fn release(&self, node_id: &str, ranges: &[RangeId]) -> Result<u64, StoreError> {
        if ranges.is_empty() {
            return Ok(0);
        }
        let mut release = QueryBuilder::<Any>::new(format!("UPDATE cluster_range SET expires_at = {DB_NOW_MS}"));
        release.push(" WHERE owner = ").push_bind(node_id.to_owned());
        release.push(format!(" AND expires_at > {DB_NOW_MS} AND range_id IN "));
        push_list(&mut release, ranges.iter().map(|range| i64::from(range.get())));
        Ok(release.build().execute(&self.pool).await?.rows_affected())
    }

    /// Ends a member's heartbeat now, so its worker id can be claimed after two TTLs.
    pub async fn leave(&self, node_id: &str, ttl_ms: i64) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE cluster_node SET heartbeat_at = {DB_NOW_MS} - ? WHERE node_id = ?"))
            .bind(ttl_ms)
            .bind(node_id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The membership and lease tables, with the database's time of the read.
    pub async fn view(&self) -> Result<ClusterView, StoreError> {
        let mut tx = self.pool.begin().await?;
        let now_ms: i64 =
            sqlx::query(&format!("SELECT {DB_NOW_MS} AS now_ms")).fetch_one(&mut *tx).await?.try_get("now_ms")?;
        let nodes =
            sqlx::query("SELECT node_id, worker_id, address, heartbeat_at FROM cluster_node ORDER BY worker_id")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    Ok(NodeRow {
                        node_id: row.try_get("node_id")?,
                        worker_id: row.try_get::<i64, _>("worker_id")?,
                        address: row.try_get("address")?,
                        heartbeat_at_ms: row.try_get("heartbeat_at")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
        let ranges = sqlx::query("SELECT range_id, owner, epoch, expires_at FROM cluster_range ORDER BY range_id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok(RangeRow {
                    range_id: range_from(row.try_get("range_id")?)?,
                    owner: row.try_get("owner")?,
                    epoch: row.try_get("epoch")?,
                    expires_at_ms: row.try_get("expires_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        if ranges.iter().enumerate().any(|(n, row)| row.range_id.index() != n) || ranges.len() != RangeId::all().count()
        {
            return Err(StoreError::Corrupt("cluster_range does not hold one row per range".into()));
        }
        Ok(ClusterView { now_ms, nodes, ranges })
    }
}

fn worker(worker_id: i64) -> Result<u16, StoreError> {
    u16::try_from(worker_id)
        .ok()
        .filter(|id| *id <= WORKER_ID_MAX)
        .ok_or_else(|| StoreError::Corrupt(format!("worker id {worker_id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::coupon::{Coupon, CouponStatus};
    use crate::domain::{CouponId, TemplateId, UserId};
    use crate::persistence::CouponIssue;

    fn issue(user_served_elsewhere: bool) -> Change {
        let coupon = Coupon {
            id: CouponId::new(1),
            template_id: TemplateId::new(700),
            user_id: UserId::new(3),
            status: CouponStatus::Unused,
            order_id: None,
            valid_until_ms: 10,
        };
        Change { issue: Some(CouponIssue { coupon, seq: 1, user_served_elsewhere }), ..Change::default() }
    }

    #[test]
    fn an_issue_is_fenced_by_its_user_and_template_unless_the_user_is_served_elsewhere() {
        let (user, template) = (Key::user(UserId::new(3)).range(), Key::template(TemplateId::new(700)).range());
        assert_ne!(user, template, "the ids are picked so the two ranges differ");
        assert_eq!(ranges_of(&issue(false)), BTreeSet::from([user, template]));
        assert_eq!(ranges_of(&issue(true)), BTreeSet::from([template]));
        let held = |range: RangeId| (range == template).then_some(4);
        assert_eq!(needed(&issue(true), held), vec![(template, Some(4))]);
        assert!(needed(&issue(false), held).contains(&(user, None)), "a user range not held refuses the change");
    }
}
