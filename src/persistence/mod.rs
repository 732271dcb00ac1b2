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
use crate::domain::order::Order;
use crate::domain::{Cents, OrderId, SkuId, UserId};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The SKU row's version moved under us: another owner wrote it. Nothing was written.
    #[error("sku {0} was written by another owner (version check failed)")]
    Fenced(SkuId),
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
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(error.to_string()),
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
}

impl ReservationStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

/// The final state of one reservation row after a batch. `is_new` rows are inserted (with
/// their final status, which may already be released); the others were `reserved` in the
/// database and move to `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationWrite {
    pub order_id: OrderId,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub status: ReservationStatus,
    pub is_new: bool,
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

    async fn find_order_by_key(
        &self,
        user_id: UserId,
        idempotency_key: &str,
    ) -> Result<Option<Order>, StoreError>;
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
