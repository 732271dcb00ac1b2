//! Persistence: the one `Store` trait the actors write through, and its backends.
//!
//! SQL lives here and nowhere else. `sql.rs` holds the statements, shared by MariaDB
//! (`mysql.rs`) and the embedded SQLite default (`sqlite.rs`) through sqlx's `Any` driver;
//! `memory.rs` is a store without a database, the ceiling of the design in benchmarks;
//! `redis.rs` publishes snapshots for readers; `group_commit.rs` batches writes.
//!
//! Every change to trade data goes through `Store::commit`, one transaction per batch of
//! changes from any number of keys: prefetch what the batch depends on, decide every change
//! with `plan::decide` (the same decision in every backend), write what was accepted with
//! multi-row statements, commit. A change is wholly written or not at all, and its caller is
//! answered only after the commit.

pub mod group_commit;
pub mod memory;
pub mod mysql;
pub mod outbox;
pub mod plan;
pub mod redis;
pub mod sql;
pub mod sql_cluster;
mod sql_learning;
mod sql_outbox;
mod sql_promotion;
pub mod sql_reconcile;
pub mod sqlite;

use crate::domain::coupon::{Coupon, CouponStatus, CouponStep, TemplateDraft};
use crate::domain::inventory::{Counters, Reservation};
use crate::domain::learning::Progress;
use crate::domain::lease::CounterDelta;
pub use crate::domain::lease::ReservationStatus;
pub use crate::domain::order::LessonStep;
use crate::domain::order::{Order, OrderStatus};
use crate::domain::sale::Sale;
use crate::domain::{Cents, CouponId, OrderId, SkuId, TemplateId, UserId};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered in time. Nothing is known to be written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored data breaks an invariant; the caller must not serve it.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
    /// The key's range is not held by this node of a cluster (nothing was read or written).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(error.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// A SKU as created by an admin.
#[derive(Debug, Clone)]
pub struct NewSku {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
    pub total: i64,
    pub sale: Sale,
    pub created_at_ms: i64,
}

/// What a SKU sells as: copied into every order item as its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuInfo {
    pub sku_id: SkuId,
    pub name: String,
    /// The list price; the sale's price applies inside its window.
    pub price_cents: Cents,
    pub sale: Sale,
}

/// A sale set on a SKU by its actor, fenced by the actor's owner epoch like its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleWrite {
    pub sku_id: SkuId,
    pub epoch: i64,
    pub sale: Sale,
}

/// Units of a limited SKU a change adds to a user's purchases (a placement, checked against
/// `limit`) or takes back from them (`units` negative: the order closed or was refunded before
/// delivery). The `(user_id, sku_id)` row is the durable count the limit is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseWrite {
    pub user_id: UserId,
    pub sku_id: SkuId,
    pub units: i64,
    pub limit: Option<i64>,
}

/// A coupon template as created by an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTemplate {
    pub id: TemplateId,
    pub draft: TemplateDraft,
    pub created_at_ms: i64,
}

/// A template as stored, with how many coupons it has issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateState {
    pub id: TemplateId,
    pub draft: TemplateDraft,
    pub issued: i64,
}

/// A new coupon: the user's `seq`-th of its template. Written only while the template has
/// coupons left and `seq` is the next one of the user and within the template's per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponIssue {
    pub coupon: Coupon,
    pub seq: i64,
    /// Claimed by the user's node from the template's owner (a cluster): committed by the
    /// template's owner, fenced by the template's range alone. The user's count needs no fence:
    /// `seq` must be the user's next one and within the per-user limit, as the database has it.
    pub user_served_elsewhere: bool,
}

/// A step in a coupon's life (`domain::coupon::CouponStep`) taken by `user_id`'s order. The
/// commit applies the domain rule to the stored coupon: refused when its precondition fails,
/// nothing written when the step changes nothing (a return of an expired coupon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponMove {
    pub coupon_id: CouponId,
    pub user_id: UserId,
    pub step: CouponStep,
}

/// Everything a user actor needs to start: recent placements, units bought of limited SKUs,
/// the coupons that can still change (unused and locked), and the user's coupon count per
/// template (the highest `seq`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    pub recent: Vec<RecentKey>,
    pub purchases: Vec<(SkuId, i64)>,
    pub coupons: Vec<Coupon>,
    pub claims: Vec<(TemplateId, i64)>,
    /// Every lesson row of the user, owned or not.
    pub lessons: Vec<(SkuId, LessonRow)>,
}

/// Everything an inventory actor needs to start serving a SKU.
#[derive(Debug, Clone)]
pub struct SkuState {
    pub info: SkuInfo,
    pub counters: Counters,
    /// Bumped by every commit that touches the SKU.
    pub version: i64,
    /// The owner epoch this activation took: every write of the actor must carry it, and a
    /// later activation (here or on another node) makes it stale.
    pub epoch: i64,
    /// Reservations still in status `reserved`.
    pub reservations: Vec<(OrderId, Reservation)>,
}

/// A change to one reservation row. A write without `from` inserts a new row in status `to`;
/// the others must find the row in status `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub order_id: OrderId,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub from: Option<ReservationStatus>,
    pub to: ReservationStatus,
}

/// The part of a change that falls on one SKU: its counters move by `delta`, and at most one
/// of its reservation rows changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuEffect {
    pub sku_id: SkuId,
    /// The owner epoch of the actor that made the effect; written only if the SKU is still at
    /// it. `None` only for repairs at start, before any actor owns the SKU.
    pub epoch: Option<i64>,
    pub delta: CounterDelta,
    pub lease: Option<LeaseWrite>,
}

/// One step of an order's state machine, written with a version check and logged.
#[derive(Debug, Clone)]
pub struct OrderTransition {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The version the order was read at; it becomes `expected_version + 1`.
    pub expected_version: i64,
    pub at_ms: i64,
    /// A payment: refused at commit time if the commit happens after this deadline.
    pub pay_by_ms: Option<i64>,
    /// Mark the order's paid payment refunded in the same transaction.
    pub refund_payment: bool,
}

/// One entry of the write pipeline: everything one logical step writes, across tables and
/// keys, committed together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// A new order (row, items, first status log entry).
    pub order: Option<Order>,
    pub transition: Option<OrderTransition>,
    /// A payment row (the one that pays, or one kept for refund).
    pub payment: Option<Payment>,
    pub skus: Vec<SkuEffect>,
    pub purchases: Vec<PurchaseWrite>,
    pub coupon: Option<CouponMove>,
    pub issue: Option<CouponIssue>,
    pub sale: Option<SaleWrite>,
    /// Courses an order step opens or revokes (a payment, a refund).
    pub lessons: Option<LessonGrant>,
    /// Learning progress written behind from the user actors (never refused).
    pub progress: Vec<ProgressWrite>,
    /// On a cluster node: the ranges the actors that made this change were activated under,
    /// with the epoch this node held each at then. The commit is refused unless each is still
    /// held at that epoch (`sql_cluster::needed`). Empty on a single node.
    pub held_ranges: Vec<(crate::domain::slots::RangeId, i64)>,
}

/// Opens or revokes the courses of one order for its buyer: a course is a SKU, every SKU of a
/// paid order is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LessonGrant {
    pub user_id: UserId,
    pub course_ids: Vec<SkuId>,
    pub step: LessonStep,
}

/// A user's merged progress on a course, to be joined into its lesson row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressWrite {
    pub user_id: UserId,
    pub course_id: SkuId,
    pub progress: Progress,
}

/// A `learning_lesson` row: how many of the user's paid or finished orders hold the course
/// (owned while above zero) and the progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LessonRow {
    pub holders: i64,
    pub progress: Progress,
}

/// Why one change of a batch was not written. The rest of the batch is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The SKU is owned by a newer activation (or does not exist), or the change would leave
    /// its stored counters unbalanced: the actor's view is stale.
    #[error("sku {0} is owned elsewhere or its stored stock disagrees")]
    Fenced(SkuId),
    /// An order with this id exists already (ids are unique snowflakes: a bug or a replay).
    #[error("order {0} exists already")]
    DuplicateOrder(OrderId),
    /// The user already has an order under this idempotency key.
    #[error("an order exists under this idempotency key")]
    DuplicateKey,
    /// The `out_trade_no` is stored already.
    #[error("the payment is stored already")]
    DuplicatePayment,
    /// The order is not at the status and version the step was made from.
    #[error("order {0} changed since it was read")]
    Stale(OrderId),
    /// A reservation row is not in the status the change moves it from (or exists already):
    /// the actor's view of it is stale.
    #[error("the reservation of order {1} on sku {0} is not as the change expects")]
    LeaseMismatch(SkuId, OrderId),
    /// A payment reached the commit after its order's deadline.
    #[error("the payment deadline passed before the commit")]
    DeadlinePassed,
    /// The user's units of the SKU would pass its per-user limit (or go below zero).
    #[error("the purchase limit of sku {0} is reached")]
    PurchaseLimit(SkuId),
    /// The template has no coupons left (or does not exist).
    #[error("coupon template {0} is sold out")]
    SoldOut(TemplateId),
    /// The user holds the template's per-user limit already (or the claim's `seq` is past it).
    #[error("the per-user limit of coupon template {0} is reached")]
    ClaimLimit(TemplateId),
    /// Below the limit, but the claim's `seq` is not the user's next one: the claimer's count
    /// of the user's coupons is behind (a coupon issued it does not know of).
    #[error("the user's coupon count of template {0} is behind")]
    ClaimBehind(TemplateId),
    /// The coupon is not where the move expects it (another user's, another order's, in
    /// another status, or expired).
    #[error("coupon {0} is not available")]
    CouponMismatch(CouponId),
    /// The change touches a key of a range this node of a cluster no longer holds (at the
    /// epoch it took it, unexpired by the database clock): another node may own it now.
    #[error("range {0} is not owned by this node")]
    NotOwner(crate::domain::slots::RangeId),
}

/// What one `Store::commit` did: one outcome per change, in order, and the version each
/// written SKU has now.
#[derive(Debug, Clone, Default)]
pub struct CommitReport {
    pub outcomes: Vec<Result<(), Conflict>>,
    pub versions: HashMap<SkuId, i64>,
}

/// What a payment row records. The names are stored and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// It paid its order.
    Paid,
    /// It arrived for an order that could not take it (closed, or paid already): the money
    /// must go back to the payer.
    RefundRequired,
    /// Its order was refunded.
    Refunded,
}

impl PaymentStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::RefundRequired => "refund_required",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Paid, Self::RefundRequired, Self::Refunded].into_iter().find(|s| s.as_str() == name)
    }
}

/// A payment reported by the payment provider, unique by `out_trade_no`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub out_trade_no: String,
    pub order_id: OrderId,
    pub amount_cents: Cents,
    pub channel: String,
    pub status: PaymentStatus,
}

/// A payment row with its times, as the admin list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub payment: Payment,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl PaymentRecord {
    /// Where the page that ends with this payment stops.
    pub fn cursor(&self) -> PaymentCursor {
        PaymentCursor { created_at_ms: self.created_at_ms, out_trade_no: self.payment.out_trade_no.clone() }
    }
}

/// A position in the payments of one status, newest first: payments are ordered by
/// `(created_at, out_trade_no)` descending, a total order that new payments never disturb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCursor {
    pub created_at_ms: i64,
    pub out_trade_no: String,
}

impl PaymentCursor {
    /// Whether `record` comes after this position (is older).
    pub fn precedes(&self, record: &PaymentRecord) -> bool {
        (record.created_at_ms, record.payment.out_trade_no.as_str()) < (self.created_at_ms, self.out_trade_no.as_str())
    }
}

/// A recent placement of a user: what the user actor needs to answer a retry from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentKey {
    pub idempotency_key: String,
    pub order_id: OrderId,
    pub request_hash: String,
}

/// A reservation whose status disagrees with its order's (see `domain::lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsettledLease {
    pub sku_id: SkuId,
    pub order_id: OrderId,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub status: ReservationStatus,
    /// `None`: no order was ever written for this reservation.
    pub order_status: Option<OrderStatus>,
    /// The order went from Paid to Refunded (its units go back on the shelf).
    pub refunded_from_paid: bool,
}

/// The database behind the actors.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_sku(&self, sku: &NewSku) -> Result<(), StoreError>;

    /// Takes ownership of SKUs for new actors: bumps each one's epoch (fencing out any older
    /// owner) and reads its counters and open reservations, in one transaction. `None` for
    /// an id with no SKU; results are in the order of `sku_ids`.
    async fn activate_skus(&self, sku_ids: &[SkuId]) -> Result<Vec<Option<SkuState>>, StoreError>;

    /// What each user's actor starts from: the newest `per_user_max` placements (newest
    /// first), purchases of limited SKUs, unused and locked coupons, coupon counts per
    /// template. Results are in the order of `user_ids`.
    async fn load_users(&self, user_ids: &[UserId], per_user_max: usize) -> Result<Vec<UserState>, StoreError>;

    async fn create_template(&self, template: &NewTemplate) -> Result<(), StoreError>;

    /// Templates with their issued counts, for their actors; `None` for an id with no
    /// template. Results are in the order of `template_ids`.
    async fn load_templates(&self, template_ids: &[TemplateId]) -> Result<Vec<Option<TemplateState>>, StoreError>;

    /// One coupon by id, whoever holds it.
    async fn find_coupon(&self, coupon_id: CouponId) -> Result<Option<Coupon>, StoreError>;

    /// A user's coupons, newest first, at most `limit`, with the stored status given (all when
    /// `None`).
    async fn list_coupons(
        &self,
        user_id: UserId,
        status: Option<CouponStatus>,
        limit: u32,
    ) -> Result<Vec<Coupon>, StoreError>;

    /// Writes a batch of changes in one transaction (see the module doc). `Err` means nothing
    /// is known to be written.
    async fn commit(&self, changes: &[Change], now_ms: i64) -> Result<CommitReport, StoreError>;

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError>;

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError>;

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError>;

    /// A user's orders, newest first, older than `before` when given.
    async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;

    /// Every order awaiting payment with its buyer and deadline, for the deadline timer.
    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, UserId, i64)>, StoreError>;

    /// Reservations whose status disagrees with their order's (`domain::lease`), whatever
    /// their status.
    async fn unsettled_leases(&self) -> Result<Vec<UnsettledLease>, StoreError>;

    /// A page of the leases a cluster node's repair pass settles (`actors::repair`): open
    /// leases whose order is settled, or was never written and whose expiry passed by `now_ms`
    /// (`domain::lease::lease_due`), and sold ones whose order was refunded; after `after` in
    /// `(sku_id, order_id)` order, at most `limit`. This default pages through
    /// `unsettled_leases` in memory; the SQL stores read one page.
    async fn leases_due(
        &self,
        now_ms: i64,
        after: Option<(SkuId, OrderId)>,
        limit: u32,
    ) -> Result<Vec<UnsettledLease>, StoreError> {
        let mut due: Vec<UnsettledLease> = self
            .unsettled_leases()
            .await?
            .into_iter()
            .filter(|lease| after.is_none_or(|after| (lease.sku_id, lease.order_id) > after))
            .filter(|lease| match (lease.status, lease.order_status) {
                (ReservationStatus::Reserved, Some(OrderStatus::PendingPayment)) => false,
                (ReservationStatus::Reserved, order) => {
                    crate::domain::lease::lease_due(lease.status, order, lease.expires_at_ms, now_ms)
                }
                (ReservationStatus::Confirmed, Some(OrderStatus::Refunded)) => true,
                _ => false,
            })
            .collect();
        due.sort_by_key(|lease| (lease.sku_id, lease.order_id));
        due.truncate(limit as usize);
        Ok(due)
    }

    /// The oldest order events not yet published, at most `limit`, by id (`outbox`).
    async fn unpublished_events(&self, limit: u32) -> Result<Vec<outbox::StoredEvent>, StoreError>;

    /// Marks the events `ids` published at `at_ms`; an event published already keeps its first
    /// time. Returns how many were marked now.
    async fn mark_published(&self, ids: &[i64], at_ms: i64) -> Result<u64, StoreError>;

    /// Claims the oldest unpublished order events, at most `limit`, for one relay round: no
    /// other relay claims them until this claim is marked or dropped. This default, for a
    /// store with one relay, reads without a lock (`outbox::UnlockedClaim`).
    async fn claim_unpublished(&self, limit: u32) -> Result<Box<dyn outbox::EventClaim + '_>, StoreError> {
        let events = self.unpublished_events(limit).await?;
        Ok(Box::new(outbox::UnlockedClaim { store: self, events }))
    }

    /// Deletes at most `limit` order events published before `before_ms`, oldest first; never
    /// an unpublished one. Returns how many it deleted.
    async fn prune_published(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Payments in `status`, newest first (`PaymentCursor`), after `after` when given, at most
    /// `limit`.
    async fn list_payments(
        &self,
        status: PaymentStatus,
        after: Option<PaymentCursor>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError>;
}

pub type DynStore = Arc<dyn Store>;

/// `operation`, or `StoreError::Unavailable` once `timeout` passes (for a write, its outcome
/// is then unknown).
pub async fn within<T>(
    timeout: std::time::Duration,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!("the database did not answer within {timeout:?}"))),
    }
}

/// Opens the store a database URL names, running pending migrations when `migrate` is set.
/// `timeout` bounds acquiring a connection and, on MariaDB, how long a statement waits for a
/// row lock.
pub async fn connect(url: &str, migrate: bool, timeout: std::time::Duration) -> anyhow::Result<DynStore> {
    let store = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        mysql::connect(url, migrate, timeout).await?
    } else if url.starts_with("sqlite:") {
        sqlite::connect(url, migrate, timeout).await?
    } else if url == "memory:" {
        return Ok(Arc::new(memory::MemoryStore::default()));
    } else {
        anyhow::bail!("unsupported database URL (expected mysql://, sqlite: or memory:)");
    };
    Ok(Arc::new(store))
}
