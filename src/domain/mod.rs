//! Pure types and rules of the trade core: no I/O, no runtime, no clock of their own.
//!
//! Everything that decides about money, stock or order states lives here once and is unit-
//! and property-tested here; actors and handlers call it instead of re-implementing it.

pub mod clock;
pub mod coupon;
pub mod ids;
pub mod inventory;
pub mod learning;
pub mod lease;
pub mod money;
pub mod order;
pub mod payment;
pub mod reconcile;
pub mod sale;
pub mod sku;
pub mod slots;

pub use ids::{CouponId, OrderId, SkuId, Snowflake, TemplateId, UserId};
pub use inventory::{Counters, InventoryError, Ledger, Quantity, Reservation};
pub use money::Cents;
pub use order::{IdempotencyKey, OrderEvent, OrderItem, OrderLine, OrderStatus, PlaceOrder};
