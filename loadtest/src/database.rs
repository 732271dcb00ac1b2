//! A fresh MariaDB database per run (`tianji_load_<random>`), so every engine starts from the
//! same empty state and nothing of an earlier run or of a real deployment is touched. The
//! caller drops it at the end, also when the run failed (`with_fresh_database`).

use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use std::future::Future;
use std::time::Duration;

/// How long to wait for a connection from a pool before the attempt fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct FreshDatabase {
    /// `mysql://.../tianji_load_<random>`
    pub url: String,
    pub name: String,
}

impl FreshDatabase {
    /// Creates the database on the server `server_url` names (a URL without database name).
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let name = format!("tianji_load_{}", hex::encode(rand::random::<[u8; 6]>()));
        let url = format!("{}/{name}", server_url.trim_end_matches('/'));
        sqlx::Any::create_database(&url).await.map_err(|e| anyhow::anyhow!("creating database {name}: {e}"))?;
        Ok(FreshDatabase { url, name })
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        sqlx::Any::drop_database(&self.url).await.map_err(|e| anyhow::anyhow!("dropping database {}: {e}", self.name))
    }

    /// A pool on this database with at most `connections_max` connections.
    pub async fn pool(&self, connections_max: u32) -> anyhow::Result<MySqlPool> {
        Ok(MySqlPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&self.url)
            .await?)
    }
}

/// Runs `work` on a fresh database and drops the database afterwards, whether `work`
/// succeeded, failed or was interrupted with Ctrl-C.
pub async fn with_fresh_database<T, F, Fut>(server_url: &str, work: F) -> anyhow::Result<T>
where
    F: FnOnce(std::sync::Arc<FreshDatabase>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let database = std::sync::Arc::new(FreshDatabase::create(server_url).await?);
    eprintln!("created database {}", database.name);
    let outcome = tokio::select! {
        outcome = work(std::sync::Arc::clone(&database)) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let dropped = database.drop_database().await;
    match (&outcome, dropped) {
        (_, Ok(())) => eprintln!("dropped database {}", database.name),
        (Ok(_), Err(error)) => return Err(error),
        (Err(_), Err(error)) => eprintln!("{error}"),
    }
    outcome
}
