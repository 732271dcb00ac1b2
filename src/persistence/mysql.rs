//! MariaDB / MySQL: the production database. Pool settings and migrations; the statements are
//! in `sql.rs`.
//!
//! Failures are fast: acquiring a connection waits at most the database timeout, and every
//! session waits at most that long (rounded up to whole seconds) for a row lock, so a stalled
//! or locked database answers the request path with 503 instead of holding it.

use super::sql::{Dialect, SqlStore};
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use std::time::Duration;

/// Connections in the pool: the write pipeline uses one at a time, the rest serve activations
/// and reads.
pub const POOL_CONNECTIONS_MAX: u32 = 16;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

pub async fn connect(url: &str, migrate: bool, timeout: Duration) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let url = url.replacen("mariadb://", "mysql://", 1);
    let lock_wait_secs = timeout.as_secs().max(1);
    let pool = AnyPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(timeout)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                connection.execute(format!("SET SESSION innodb_lock_wait_timeout = {lock_wait_secs}").as_str()).await?;
                // UTC sessions: the cluster's lease times are `UNIX_TIMESTAMP(NOW(3))`, which
                // goes through the session's time zone; in a zone with daylight saving the hour
                // that repeats would move every lease by an hour.
                connection.execute("SET SESSION time_zone = '+00:00'").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    if migrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(SqlStore::new(pool, Dialect::MySql))
}
