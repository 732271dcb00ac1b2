//! SQLite: the embedded default, so `tianji serve` runs on a fresh machine with no servers.
//! Write-ahead logging with full sync: an acknowledged commit survives a process crash.

use super::sql::{Dialect, SqlStore};
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use std::time::Duration;

pub const POOL_CONNECTIONS_MAX: u32 = 8;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub async fn connect(url: &str, migrate: bool, timeout: Duration) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(timeout)
        // An embedded file does not drop connections: no ping before each use.
        .test_before_acquire(false)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                // Writers queue on the database lock for up to the timeout, not forever.
                let busy_ms = timeout.as_millis().max(1);
                let pragmas =
                    format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = {busy_ms};");
                connection.execute(pragmas.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    if migrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(SqlStore::new(pool, Dialect::Sqlite))
}

/// The URL of the embedded database inside a data directory.
pub fn url_in(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("tianji.db").display())
}
