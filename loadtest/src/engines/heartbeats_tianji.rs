//! tianji's learning, in process: every heartbeat is `Core::heartbeat`, merged on the user's
//! actor and answered from memory; the merged progress is written behind, to Redis every
//! second (`tianji-actor` only, as a server with `TIANJI_REDIS_URL` does) and to the database
//! every learning flush. `tianji-actor` commits to MariaDB, `tianji-memory` runs the same actors
//! on the in-memory store, the ceiling of the design.
//!
//! Setup: instead of placing and paying 100,000 orders, each learner's `learning_lesson` row
//! (one holder, not started) is inserted before the core starts: directly in SQL for MariaDB,
//! as one committed course grant per learner for the memory store. That is the state a paid
//! order leaves, and the actors load it at activation as they would.

use super::heartbeats::per_heartbeat;
use super::heartbeats_run::{
    insert_lessons, learner_user_id, sql_positions, LearnerEngine, LearnerSetup, LEARNER_USER_ID_BASE,
};
use super::tianji::{memory_store, ARBITER_COUNT, PAY_TIMEOUT, WORKER_ID};
use async_trait::async_trait;
use sqlx::mysql::MySqlPool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tianji::actors::learning::LearningStats;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::learning::Heartbeat;
use tianji::domain::{SkuId, UserId};
use tianji::persistence::redis::progress::{progress_key, ProgressMirror};
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{Change, DynStore, LessonGrant, LessonStep};

/// The course every learner of `tianji-actor` owns (each engine its own, so their rows never
/// mix in the run's database).
pub const DURABLE_COURSE_ID: i64 = 1;
pub const MEMORY_COURSE_ID: i64 = 2;
/// Course grants committed to the memory store at once during setup.
pub const GRANTS_PER_COMMIT: usize = 1_000;
/// Users read back from the memory store (or whose Redis keys are deleted) at once.
pub const USERS_PER_READ: usize = 1_000;

/// The write-behind's counters at one instant.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    heartbeats: u64,
    rows_flushed: u64,
    flushes: u64,
    redis_round_trips: u64,
    redis_rows_written: u64,
}

impl Figures {
    fn read(stats: &LearningStats) -> Self {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Figures {
            heartbeats: load(&stats.heartbeats),
            rows_flushed: load(&stats.rows_flushed),
            flushes: load(&stats.flushes),
            redis_round_trips: load(&stats.redis_round_trips),
            redis_rows_written: load(&stats.redis_rows_written),
        }
    }

    fn since(&self, before: &Figures) -> Figures {
        Figures {
            heartbeats: self.heartbeats - before.heartbeats,
            rows_flushed: self.rows_flushed - before.rows_flushed,
            flushes: self.flushes - before.flushes,
            redis_round_trips: self.redis_round_trips - before.redis_round_trips,
            redis_rows_written: self.redis_rows_written - before.redis_rows_written,
        }
    }
}

pub struct TianjiLearners {
    name: &'static str,
    core: Arc<Core>,
    store: DynStore,
    learners: u64,
    course_id: SkuId,
    /// The run's database, for reading back what the durable engine flushed.
    database: Option<MySqlPool>,
    /// Set when progress is mirrored to Redis: its keys are deleted at cleanup.
    redis: Option<redis::Client>,
    /// The counters at the end of the last phase.
    settled: Mutex<Figures>,
}

impl TianjiLearners {
    pub async fn durable(setup: &LearnerSetup<'_>) -> anyhow::Result<Self> {
        let (store, database) = durable_store_of(setup).await?;
        insert_lessons(&database, setup.learners, LEARNER_USER_ID_BASE, DURABLE_COURSE_ID).await?;
        let core = start_core(&store, setup);
        core.mirror_learning(ProgressMirror::open(setup.redis_url)?);
        let redis = Some(redis::Client::open(setup.redis_url)?);
        Ok(Self::new("tianji-actor", core, store, setup.learners, DURABLE_COURSE_ID, Some(database), redis))
    }

    pub async fn in_memory(setup: &LearnerSetup<'_>) -> anyhow::Result<Self> {
        let store = memory_store().await?;
        grant_in_store(&store, setup.learners, MEMORY_COURSE_ID).await?;
        let core = start_core(&store, setup);
        Ok(Self::new("tianji-memory", core, store, setup.learners, MEMORY_COURSE_ID, None, None))
    }

    fn new(
        name: &'static str,
        core: Arc<Core>,
        store: DynStore,
        learners: u64,
        course_id: i64,
        database: Option<MySqlPool>,
        redis: Option<redis::Client>,
    ) -> Self {
        let course_id = SkuId::new(course_id);
        TianjiLearners { name, core, store, learners, course_id, database, redis, settled: Mutex::default() }
    }

    async fn memory_positions(&self) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
        let mut stored = Vec::with_capacity(self.learners as usize);
        let all: Vec<UserId> = (0..self.learners).map(|learner| UserId::new(learner_user_id(learner))).collect();
        for users in all.chunks(USERS_PER_READ) {
            for state in self.store.load_users(users, 1).await? {
                let lesson = state.lessons.iter().find(|(course_id, _)| *course_id == self.course_id);
                stored.push(lesson.map(|(_, row)| (row.progress.latest_section_id, row.progress.position_sec)));
            }
        }
        Ok(stored)
    }
}

/// The durable store on the run's database (tianji's migrations create its tables there), as
/// `super::tianji::durable_store` opens it, and a small pool for the setup and the read-back.
async fn durable_store_of(setup: &LearnerSetup<'_>) -> anyhow::Result<(DynStore, MySqlPool)> {
    let timeout = ActorLimits::default().database_timeout;
    let store = tianji::persistence::connect(&setup.database.url, true, timeout).await?;
    Ok((store, setup.database.pool(2).await?))
}

/// The core as every in-process engine runs it, with the learning flush asked for.
fn start_core(store: &DynStore, setup: &LearnerSetup<'_>) -> Arc<Core> {
    let mut limits = ActorLimits::default();
    if let Some(every) = setup.learning_flush {
        limits.learning_flush = every;
    }
    Core::start(Arc::clone(store), Arc::new(Snapshots::in_process()), limits, WORKER_ID, PAY_TIMEOUT, ARBITER_COUNT)
}

/// One committed course grant per learner, as a paid order's commit would make it.
async fn grant_in_store(store: &DynStore, learners: u64, course_id: i64) -> anyhow::Result<()> {
    let all: Vec<u64> = (0..learners).collect();
    for chunk in all.chunks(GRANTS_PER_COMMIT) {
        let changes: Vec<Change> = chunk
            .iter()
            .map(|&learner| Change {
                lessons: Some(LessonGrant {
                    user_id: UserId::new(learner_user_id(learner)),
                    course_ids: vec![SkuId::new(course_id)],
                    step: LessonStep::Open,
                }),
                ..Change::default()
            })
            .collect();
        let report = store.commit(&changes, wall_clock_ms() as i64).await?;
        if let Some(refused) = report.outcomes.iter().find_map(|outcome| outcome.err()) {
            anyhow::bail!("a course grant was refused: {refused}");
        }
    }
    Ok(())
}

#[async_trait]
impl LearnerEngine for TianjiLearners {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn beat(&self, learner: u64, section_id: i64, position_sec: i64) -> Result<(), String> {
        let heartbeat = Heartbeat { course_id: self.course_id, section_id, position_sec, finished: false };
        let user_id = UserId::new(learner_user_id(learner));
        match self.core.heartbeat(user_id, heartbeat).await {
            Ok(progress) if (progress.latest_section_id, progress.position_sec) >= (section_id, position_sec) => Ok(()),
            Ok(progress) => Err(format!("answered progress {progress:?} behind the heartbeat")),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn settle(&self) -> anyhow::Result<Vec<String>> {
        let redis_rows = self.core.flush_learning_to_redis().await?;
        let rows = self.core.flush_learning().await.map_err(|error| anyhow::anyhow!("final flush: {error}"))?;
        let now = Figures::read(self.core.learning_stats());
        let phase = {
            let mut settled = self.settled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let phase = now.since(&settled);
            *settled = now;
            phase
        };
        let beats = phase.heartbeats;
        let mut notes = vec![format!(
            "write-behind: {beats} heartbeats; database: {} rows in {} flushes ({} rows per heartbeat), the final \
             flush {rows} rows; redis: {} round trips ({} per heartbeat), {} rows, the final write {redis_rows} rows",
            phase.rows_flushed,
            phase.flushes,
            per_heartbeat(phase.rows_flushed, beats),
            phase.redis_round_trips,
            per_heartbeat(phase.redis_round_trips, beats),
            phase.redis_rows_written,
        )];
        let (pending, redis_pending) = self.core.learning_pending_rows();
        if pending + redis_pending > 0 {
            notes.push(format!("still pending after the final flush: {pending} rows (redis {redis_pending})"));
        }
        Ok(notes)
    }

    async fn stored(&self) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
        match &self.database {
            Some(database) => sql_positions(database, self.learners, LEARNER_USER_ID_BASE, self.course_id.get()).await,
            None => self.memory_positions().await,
        }
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.core.stop();
        if let Some(client) = &self.redis {
            let mut connection = client.get_multiplexed_tokio_connection().await?;
            let all: Vec<String> =
                (0..self.learners).map(|learner| progress_key(UserId::new(learner_user_id(learner)))).collect();
            for keys in all.chunks(USERS_PER_READ) {
                let _: i64 = redis::cmd("UNLINK").arg(keys).query_async(&mut connection).await?;
            }
        }
        if let Some(database) = &self.database {
            database.close().await;
        }
        Ok(())
    }
}
