//! MariaDB / MySQL: the production database. Pool settings and migrations; the statements are
//! in `sql.rs`.

use super::sql::{Dialect, SqlStore};
use sqlx::any::AnyPoolOptions;
use std::time::Duration;

/// Connections in the pool: group commit keeps the number of writers small, the rest serve
/// idempotency look-ups and order reads.
pub const POOL_CONNECTIONS_MAX: u32 = 16;
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

pub async fn connect(url: &str, migrate: bool) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let url = url.replacen("mariadb://", "mysql://", 1);
    let pool = AnyPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(&url)
        .await?;
    if migrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(SqlStore::new(pool, Dialect::MySql))
}
