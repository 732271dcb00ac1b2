//! Integration tests: the real server over HTTP, on MariaDB (with Redis) and on SQLite.

mod faults;
mod flash_sale;
mod helpers;
mod idempotency;
mod learning;
mod learning_recovery;
mod leases;
mod lifecycle;
mod process;
mod promotion;
mod promotion_http;
mod proxy;
mod recovery;
mod redis_resync;
mod restart;
mod snapshots;
mod stores;
mod validation;
