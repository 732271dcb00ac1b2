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
    connect_isolated(url, migrate, timeout, Isolation::ServerDefault).await
}

/// `connect` for a node of a cluster: its sessions run at READ COMMITTED. A single node has one
/// write pipeline, so its batches never overlap; the nodes of a cluster commit at the same
/// time. At REPEATABLE READ a batch's locking read of rows it is about to insert (new order
/// ids, above every id in the table) locks the gap at the end of the index; two nodes' batches
/// both hold that gap and each one's INSERT waits for the other's: a deadlock, and both orders
/// answered 503. At READ COMMITTED a locking read locks only the rows it finds: each key is
/// written by its owner alone (the fence), and unique keys refuse the rest.
pub async fn connect_cluster(url: &str, timeout: Duration) -> anyhow::Result<SqlStore> {
    connect_isolated(url, true, timeout, Isolation::ReadCommitted).await
}

/// The isolation level of a pool's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// The server's (REPEATABLE READ unless configured otherwise).
    ServerDefault,
    ReadCommitted,
}

async fn connect_isolated(
    url: &str,
    migrate: bool,
    timeout: Duration,
    isolation: Isolation,
) -> anyhow::Result<SqlStore> {
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
                if isolation == Isolation::ReadCommitted {
                    connection.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                }
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
