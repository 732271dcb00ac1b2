//! Integration tests: the real server over HTTP, on MariaDB (with Redis) and on SQLite.

mod activation;
mod faults;
mod flash_sale;
mod helpers;
mod hostile;
mod idempotency;
mod learning;
mod learning_recovery;
mod leases;
mod lifecycle;
mod openapi;
mod process;
mod promotion;
mod promotion_http;
mod proxy;
mod rate_limits;
mod recovery;
mod redis_resync;
mod restart;
mod snapshots;
mod stores;
mod tokens;
mod validation;
