//! SQLite: the embedded default, so `tianji serve` runs on a fresh machine with no servers.
//! Write-ahead logging with full sync: an acknowledged commit survives a process crash.

use super::sql::{Dialect, SqlStore};
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use std::time::Duration;

pub const POOL_CONNECTIONS_MAX: u32 = 8;
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub async fn connect(url: &str, migrate: bool) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|connection, _| {
            Box::pin(async move {
                // Writers queue on the database lock for up to 10 s instead of failing at once.
                connection
                    .execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
                    .await?;
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
