//! The classic ways to keep learning progress, one write per heartbeat, against which tianji's
//! write-behind is measured:
//! - `naive-update`: one autocommitted `UPDATE learning_lesson SET ... WHERE user_id = ? AND
//!   course_id = ?` per heartbeat on MariaDB (tianji's own table, its rows inserted first).
//! - `redis-hset`: one `HSET` per heartbeat of the learner's hash (field: the course, value:
//!   tianji's encoding `section:position:status:updated_at_ms`), keys namespaced by the run.
//!
//! Neither merges: the heartbeat's position is written as it comes. With the learners sending
//! in turn, one learner's heartbeats are never in flight together, so the audit holds for
//! them too; what they cost per heartbeat is the point.

use super::heartbeats_run::{
    insert_lessons, learner_user_id, sql_positions, LearnerEngine, LearnerSetup, LEARNER_USER_ID_BASE,
};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use sqlx::mysql::MySqlPool;
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::learning::{LessonStatus, Progress};
use tianji::persistence::redis::progress::{decode, encode};

/// The course of `naive-update`'s learners and of `redis-hset`'s.
pub const NAIVE_COURSE_ID: i64 = 3;
pub const REDIS_COURSE_ID: i64 = 4;
/// Connections `naive-update` updates through (each UPDATE waits for its own commit).
pub const NAIVE_CONNECTIONS_MAX: u32 = 64;
/// Keys read back or deleted per round trip.
pub const KEYS_PER_ROUND_TRIP: usize = 1_000;

pub struct NaiveUpdate {
    database: MySqlPool,
    learners: u64,
}

impl NaiveUpdate {
    pub async fn start(setup: &LearnerSetup<'_>) -> anyhow::Result<Self> {
        let database = setup.database.pool(NAIVE_CONNECTIONS_MAX).await?;
        // tianji's tables (a no-op when tianji-actor ran its migrations already).
        tianji::persistence::mysql::MIGRATOR.run(&database).await?;
        insert_lessons(&database, setup.learners, LEARNER_USER_ID_BASE, NAIVE_COURSE_ID).await?;
        Ok(NaiveUpdate { database, learners: setup.learners })
    }
}

#[async_trait]
impl LearnerEngine for NaiveUpdate {
    fn name(&self) -> &'static str {
        "naive-update"
    }

    async fn beat(&self, learner: u64, section_id: i64, position_sec: i64) -> Result<(), String> {
        let updated = sqlx::query(
            "UPDATE learning_lesson SET latest_section_id = ?, position_sec = ?, status = 'learning', updated_at = ? \
             WHERE user_id = ? AND course_id = ?",
        )
        .bind(section_id)
        .bind(position_sec)
        .bind(wall_clock_ms() as i64)
        .bind(learner_user_id(learner))
        .bind(NAIVE_COURSE_ID)
        .execute(&self.database)
        .await;
        match updated {
            Ok(_) => Ok(()),
            Err(error) => Err(format!("update: {error}")),
        }
    }

    async fn settle(&self) -> anyhow::Result<Vec<String>> {
        Ok(vec!["every heartbeat committed on its own (autocommit)".into()])
    }

    async fn stored(&self) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
        sql_positions(&self.database, self.learners, LEARNER_USER_ID_BASE, NAIVE_COURSE_ID).await
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.database.close().await;
        Ok(())
    }
}

pub struct RedisHset {
    connection: MultiplexedConnection,
    /// `tianji_load:{run}:learning:`, followed by the user id.
    prefix: String,
    learners: u64,
}

impl RedisHset {
    pub async fn start(setup: &LearnerSetup<'_>) -> anyhow::Result<Self> {
        let client = redis::Client::open(setup.redis_url)?;
        let connection = client.get_multiplexed_tokio_connection().await?;
        let prefix = format!("tianji_load:{}:learning:", setup.run_id);
        Ok(RedisHset { connection, prefix, learners: setup.learners })
    }

    fn key(&self, learner: u64) -> String {
        format!("{}{}", self.prefix, learner_user_id(learner))
    }

    fn keys(&self) -> Vec<String> {
        (0..self.learners).map(|learner| self.key(learner)).collect()
    }
}

#[async_trait]
impl LearnerEngine for RedisHset {
    fn name(&self) -> &'static str {
        "redis-hset"
    }

    async fn beat(&self, learner: u64, section_id: i64, position_sec: i64) -> Result<(), String> {
        let progress = Progress {
            latest_section_id: section_id,
            position_sec,
            status: LessonStatus::Learning,
            updated_at_ms: wall_clock_ms() as i64,
        };
        let mut connection = self.connection.clone();
        let written: Result<i64, _> = redis::cmd("HSET")
            .arg(self.key(learner))
            .arg(REDIS_COURSE_ID)
            .arg(encode(&progress))
            .query_async(&mut connection)
            .await;
        written.map(|_| ()).map_err(|error| format!("hset: {error}"))
    }

    async fn settle(&self) -> anyhow::Result<Vec<String>> {
        Ok(vec!["every heartbeat one HSET (one round trip, not durable beyond Redis's own persistence)".into()])
    }

    async fn stored(&self) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
        let mut connection = self.connection.clone();
        let mut stored = Vec::with_capacity(self.learners as usize);
        for keys in self.keys().chunks(KEYS_PER_ROUND_TRIP) {
            let mut pipeline = redis::pipe();
            for key in keys {
                pipeline.hget(key, REDIS_COURSE_ID);
            }
            let values: Vec<Option<String>> = pipeline.query_async(&mut connection).await?;
            for value in values {
                let progress = value.map(|value| decode(&value)).transpose()?;
                // No hash yet: the learner's course as opened (the row the others insert).
                stored.push(Some(progress.map_or((0, 0), |p| (p.latest_section_id, p.position_sec))));
            }
        }
        Ok(stored)
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        for keys in self.keys().chunks(KEYS_PER_ROUND_TRIP) {
            let _: i64 = redis::cmd("UNLINK").arg(keys).query_async(&mut connection).await?;
        }
        Ok(())
    }
}
