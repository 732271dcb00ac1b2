//! Integration tests: the real server over HTTP, on MariaDB (with Redis) and on SQLite.

mod flash_sale;
mod helpers;
mod idempotency;
mod leases;
mod lifecycle;
mod recovery;
mod restart;
mod snapshots;
mod validation;
