//! Persistence: the one `Store` trait the actors write through, and its backends.
//!
//! SQL lives here and nowhere else. `sql.rs` holds the statements, shared by MariaDB
//! (`mysql.rs`) and the embedded SQLite default (`sqlite.rs`) through sqlx's `Any` driver;
//! `memory.rs` is a store without a database, the ceiling of the design in benchmarks;
//! `redis.rs` publishes snapshots for readers; `group_commit.rs` batches writes.
//!
//! Every write method is one transaction: a batch is wholly written or not at all, and a
//! caller is only answered after it returns `Ok`.

pub mod group_commit;
pub mod memory;
pub mod mysql;
pub mod redis;
pub mod sql;
pub mod sqlite;

use crate::domain::inventory::{Counters, Reservation};
use crate::domain::order::{Order, OrderStatus};
use crate::domain::{Cents, OrderId, SkuId, UserId};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The SKU row's version moved under us: another owner wrote it. Nothing was written.
    #[error("sku {0} was written by another owner (version check failed)")]
    Fenced(SkuId),
    /// An order changed since it was read (version check failed). Nothing was written.
    #[error("order {0} changed since it was read")]
    Stale(OrderId),
    /// The database could not be reached or answered in time. Nothing is known to be written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored data breaks an invariant; the caller must not serve it.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
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
    pub created_at_ms: i64,
}

/// What a SKU sells as: copied into every order item as its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuInfo {
    pub sku_id: SkuId,
    pub name: String,
    pub price_cents: Cents,
}

/// Everything an inventory actor needs to start serving a SKU.
#[derive(Debug, Clone)]
pub struct SkuState {
    pub info: SkuInfo,
    pub counters: Counters,
    pub version: i64,
    /// Reservations still in status `reserved`.
    pub reservations: Vec<(OrderId, Reservation)>,
}

/// The status of an `inventory_reservation` row. The names are stored and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    Reserved,
    Confirmed,
    Released,
    Expired,
    /// Sold units given back by a refund before the goods went out.
    Returned,
}

impl ReservationStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Returned => "returned",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Reserved, Self::Confirmed, Self::Released, Self::Expired, Self::Returned]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// The final state of one reservation row after a batch. A row without `from` is new and is
/// inserted with its final status (which may already be released); the others must be in
/// status `from` in the database and move to `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationWrite {
    pub order_id: OrderId,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub from: Option<ReservationStatus>,
    pub status: ReservationStatus,
}

/// One group commit of one SKU: its counters after the batch and the reservation rows it
/// touched. Written only if the row is still at `expected_version`, which becomes
/// `expected_version + 1`.
#[derive(Debug, Clone)]
pub struct InventoryBatch {
    pub sku_id: SkuId,
    pub expected_version: i64,
    pub counters: Counters,
    pub writes: Vec<ReservationWrite>,
    pub now_ms: i64,
}

/// What happened to one order of an `insert_orders` batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderInsert {
    Inserted,
    /// The user already has an order under this idempotency key; nothing was written for it.
    DuplicateKey,
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

/// One step of an order's state machine, written with a version check and logged.
#[derive(Debug, Clone)]
pub struct OrderTransition {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The version the order was read at; it becomes `expected_version + 1`.
    pub expected_version: i64,
    pub at_ms: i64,
    /// A payment row to insert in the same transaction (the payment that paid the order).
    pub insert_payment: Option<Payment>,
    /// Mark the order's paid payment refunded in the same transaction.
    pub refund_payment: bool,
}

/// A reservation that recovery must look at: still open (or, for a refund from Paid, still
/// sold) while its order says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsettledReservation {
    pub sku_id: SkuId,
    pub order_id: OrderId,
    pub quantity: i64,
    pub status: ReservationStatus,
    /// `None`: no order was ever written for this reservation.
    pub order_status: Option<OrderStatus>,
    /// The order went from Paid to Refunded (its units go back on the shelf).
    pub refunded_from_paid: bool,
}

/// The database behind the actors. Implementations write each call in one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_sku(&self, sku: &NewSku) -> Result<(), StoreError>;

    /// The SKU's counters, version and open reservations; `None` if there is no such SKU.
    async fn load_sku(&self, sku_id: SkuId) -> Result<Option<SkuState>, StoreError>;

    /// Writes one batch of one SKU, fenced by its version (`StoreError::Fenced` on mismatch).
    async fn commit_inventory(&self, batch: &InventoryBatch) -> Result<(), StoreError>;

    /// Inserts new orders (rows, items and their first status log entry) in one transaction.
    /// An order whose `(user_id, idempotency_key)` exists already is skipped and reported as
    /// `DuplicateKey`; the outcomes are in the order of `orders`.
    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<OrderInsert>, StoreError>;

    async fn find_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError>;

    async fn find_order_by_key(&self, user_id: UserId, idempotency_key: &str) -> Result<Option<Order>, StoreError>;

    /// Moves orders one step each, in one transaction: an order still at its
    /// `expected_version` and `from` moves and its step is logged in `order_status_log`; one that
    /// is not gets `StoreError::Stale` and nothing is written for it. The outcomes are in the
    /// order of `transitions`; an `Err` of the whole call means nothing was written.
    async fn transition_orders(
        &self,
        transitions: &[OrderTransition],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// Stores a payment that did not pay its order; `false` if `out_trade_no` was stored already.
    async fn record_payment(&self, payment: &Payment, at_ms: i64) -> Result<bool, StoreError>;

    async fn find_payment(&self, out_trade_no: &str) -> Result<Option<Payment>, StoreError>;

    /// A user's orders, newest first, older than `before` when given.
    async fn list_orders(
        &self,
        user_id: UserId,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;

    /// Every order awaiting payment with its deadline, for the deadline timer at start.
    async fn pending_deadlines(&self) -> Result<Vec<(OrderId, i64)>, StoreError>;

    /// Reservations whose state lags behind their order's: open under an order that is no
    /// longer pending (or under no order at all), or sold under an order refunded from Paid.
    async fn unsettled_reservations(&self) -> Result<Vec<UnsettledReservation>, StoreError>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a database URL names, running pending migrations when `migrate` is set.
pub async fn connect(url: &str, migrate: bool) -> anyhow::Result<DynStore> {
    let store = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        mysql::connect(url, migrate).await?
    } else if url.starts_with("sqlite:") {
        sqlite::connect(url, migrate).await?
    } else if url == "memory:" {
        return Ok(Arc::new(memory::MemoryStore::default()));
    } else {
        anyhow::bail!("unsupported database URL (expected mysql://, sqlite: or memory:)");
    };
    Ok(Arc::new(store))
}
