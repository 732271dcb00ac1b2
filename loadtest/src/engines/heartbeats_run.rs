//! `engines --preset heartbeats`: the same learners' heartbeats against each learning engine,
//! one after the other, each phase (paced, then at the maximum rate) followed by the engine's
//! final flush and an audit of what it stored.
//!
//! Engines: `tianji-actor` (the user actors, progress written behind to MariaDB, and to Redis
//! every second), `tianji-memory` (the same actors on the in-memory store), `naive-update` (one
//! autocommitted UPDATE per heartbeat) and `redis-hset` (one HSET per heartbeat). Per phase:
//! throughput, latency, CPU per heartbeat (this process, MariaDB, Redis), MariaDB's statement
//! counters around the phase (its final flush included) and, for tianji, the write-behind's
//! rows and Redis round trips per heartbeat.
//!
//! Guarantees: every learner owns its course before the first heartbeat; after each phase's
//! final flush, every learner's stored position is checked against the audit (never behind an
//! acknowledged heartbeat, never past a sent one).

use super::heartbeats::{position, LearnerAudit, Phase, Schedule, StatementCounts};
use super::heartbeats_baselines::{NaiveUpdate, RedisHset};
use super::heartbeats_tianji::TianjiLearners;
use crate::cli::{EngineName, EnginesArgs, Mode};
use crate::cpu::{CpuMeter, Probe};
use crate::database::{with_fresh_database, FreshDatabase};
use crate::driver::{drive, Outcome};
use crate::report::{ratios, Report, Summary};
use crate::target::require_loopback;
use async_trait::async_trait;
use sqlx::mysql::MySqlPool;
use sqlx::{QueryBuilder, Row};
use std::sync::Arc;
use std::time::Duration;

/// The row every other is compared with.
pub const BASELINE_ROW: &str = "tianji-actor max";
/// The engines the preset runs unless `--engines` names some, in this order.
pub const HEARTBEAT_ENGINES: [EngineName; 4] =
    [EngineName::TianjiActor, EngineName::TianjiMemory, EngineName::NaiveUpdate, EngineName::RedisHset];
/// Learners are users `LEARNER_USER_ID_BASE + index`: far from the users of a server sharing
/// the same Redis, whose progress keys (`learning:progress:{user_id}`) are left alone.
pub const LEARNER_USER_ID_BASE: i64 = 1_000_000_000;
/// Rows per INSERT while giving the learners their course.
pub const ROWS_PER_INSERT_MAX: usize = 1_000;

/// One learning engine under test.
#[async_trait]
pub trait LearnerEngine: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Records one heartbeat of learner `learner` (0-based); `Err` names what went wrong.
    async fn beat(&self, learner: u64, section_id: i64, position_sec: i64) -> Result<(), String>;

    /// Ends a phase: writes whatever the engine holds behind (tianji's final flush) and says
    /// what it wrote since the last call.
    async fn settle(&self) -> anyhow::Result<Vec<String>>;

    /// `(section_id, position_sec)` stored per learner (`None`: no row).
    async fn stored(&self) -> anyhow::Result<Vec<Option<(i64, i64)>>>;

    /// Removes what the engine created outside the run's database (Redis keys, actors).
    async fn cleanup(&self) -> anyhow::Result<()>;
}

/// Everything an engine's setup needs.
pub struct LearnerSetup<'a> {
    pub database: &'a FreshDatabase,
    pub redis_url: &'a str,
    pub run_id: &'a str,
    pub learners: u64,
    pub learning_flush: Option<Duration>,
}

pub async fn run(args: &EnginesArgs) -> anyhow::Result<Report> {
    require_loopback("--mysql-url", &args.mysql_url, &["mysql", "mariadb"])?;
    require_loopback("--redis-url", &args.redis_url, &["redis"])?;
    let learners = args.heartbeats.learners()?;
    let phases = super::heartbeats::phases(&args.load, &args.heartbeats, Mode::Engines)?;
    let names = selected_engines(args)?;
    let learning_flush = args.learning_flush.map(Duration::from);
    let run_id = hex::encode(rand::random::<[u8; 6]>());
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let described = describe(learners, &phases, learning_flush);
    eprintln!("engines heartbeats: {described}");
    let mut notes = Vec::new();
    let probes = super::cpu_probes(args, &mut notes);
    notes.iter().for_each(|note| eprintln!("{note}"));
    let server = args.mysql_url.replacen("mariadb://", "mysql://", 1);
    let results = with_fresh_database(&server, |database| {
        let (phases, probes, run_id) = (&phases, &probes, run_id.as_str());
        let redis_url = args.redis_url.as_str();
        async move {
            let status = database.pool(1).await?;
            let mut rows = Vec::new();
            for name in names {
                let setup = LearnerSetup { database: &database, redis_url, run_id, learners, learning_flush };
                let started = std::time::Instant::now();
                let engine = start_engine(name, &setup).await?;
                eprintln!(
                    "{}: {learners} learners given their course in {:.1} s",
                    engine.name(),
                    started.elapsed().as_secs_f64()
                );
                let measured = measure_engine(&engine, learners, phases, &status, probes).await;
                let cleaned = engine.cleanup().await;
                rows.extend(measured?);
                cleaned?;
            }
            status.close().await;
            anyhow::Ok(rows)
        }
    })
    .await?;
    Ok(Report {
        command: "engines heartbeats".into(),
        workload: described,
        ratios: ratios(&results, BASELINE_ROW),
        results,
        started_at,
        notes,
    })
}

/// The engines named (each must be a learning engine), else all of `HEARTBEAT_ENGINES`.
pub fn selected_engines(args: &EnginesArgs) -> anyhow::Result<Vec<EngineName>> {
    if args.engines.is_empty() {
        return Ok(HEARTBEAT_ENGINES.to_vec());
    }
    if let Some(misfit) = args.engines.iter().find(|name| !HEARTBEAT_ENGINES.contains(name)) {
        anyhow::bail!("engine {} does not run preset heartbeats", misfit.spelled());
    }
    let mut engines = args.engines.clone();
    engines.sort();
    engines.dedup();
    Ok(engines)
}

fn describe(learners: u64, phases: &[Phase], learning_flush: Option<Duration>) -> String {
    let phases: Vec<String> =
        phases.iter().map(|phase| format!("{}: {}", phase.name, phase.workload.describe())).collect();
    let flush = learning_flush.map_or("the default".to_owned(), |every| format!("{every:?}"));
    format!(
        "{learners} learners each owning one course; tianji's database flush every {flush} (redis every 1 s); {}",
        phases.join("; ")
    )
}

async fn start_engine(name: EngineName, setup: &LearnerSetup<'_>) -> anyhow::Result<Arc<dyn LearnerEngine>> {
    Ok(match name {
        EngineName::TianjiActor => Arc::new(TianjiLearners::durable(setup).await?),
        EngineName::TianjiMemory => Arc::new(TianjiLearners::in_memory(setup).await?),
        EngineName::NaiveUpdate => Arc::new(NaiveUpdate::start(setup).await?),
        EngineName::RedisHset => Arc::new(RedisHset::start(setup).await?),
        other => anyhow::bail!("engine {} does not run preset heartbeats", other.spelled()),
    })
}

/// Every phase against one engine; heartbeats continue from one phase to the next (the
/// tickets of a phase start where the last one's plan ended), so positions keep moving on.
async fn measure_engine(
    engine: &Arc<dyn LearnerEngine>,
    learners: u64,
    phases: &[Phase],
    status: &MySqlPool,
    probes: &[Probe],
) -> anyhow::Result<Vec<Summary>> {
    let schedule = Schedule::new(learners);
    let audit = Arc::new(LearnerAudit::new(schedule));
    let mut tickets_base = 0;
    let mut rows = Vec::new();
    for phase in phases {
        let row = measure_phase(engine, schedule, &audit, tickets_base, phase, status, probes).await?;
        eprintln!(
            "{:<22} {:>9.0} /s  p50 {} us  p99 {} us  cpu {} us/heartbeat  check {}",
            row.name,
            row.throughput_per_s,
            row.p50_us,
            row.p99_us,
            crate::report::optional(row.cpu_us_per_op, 1),
            row.check
        );
        rows.push(row);
        tickets_base += phase.workload.attempts;
    }
    Ok(rows)
}

async fn measure_phase(
    engine: &Arc<dyn LearnerEngine>,
    schedule: Schedule,
    audit: &Arc<LearnerAudit>,
    tickets_base: u64,
    phase: &Phase,
    status: &MySqlPool,
    probes: &[Probe],
) -> anyhow::Result<Summary> {
    let name = format!("{} {}", engine.name(), phase.name);
    let before = StatementCounts::read(status).await?;
    let meter = CpuMeter::start(probes.to_vec());
    let (driven, audited) = (Arc::clone(engine), Arc::clone(audit));
    let measurement = drive(&name, &phase.workload, move |attempt| {
        let (engine, audit) = (Arc::clone(&driven), Arc::clone(&audited));
        async move {
            let (learner, beat) = schedule.beat(tickets_base + attempt.seq);
            let (section_id, position_sec) = position(beat);
            audit.sent(learner, beat);
            match engine.beat(learner, section_id, position_sec).await {
                Ok(()) => {
                    audit.acked(learner, beat);
                    Outcome::Ok { units: 1 }
                }
                Err(message) => Outcome::Error(message),
            }
        }
    })
    .await?;
    // The final flush is part of the phase: its CPU and its statements are counted.
    let mut notes = engine.settle().await?;
    let cpu = meter.stop();
    let after = StatementCounts::read(status).await?;
    notes.push(before.since(&after).note(measurement.ok));
    let verdict = audit.compare(&engine.stored().await?);
    notes.push(verdict.note());
    Ok(Summary::new(&measurement, &verdict.into_check(), notes).with_cpu(&cpu))
}

/// The user id of learner `learner`.
pub fn learner_user_id(learner: u64) -> i64 {
    LEARNER_USER_ID_BASE + learner as i64
}

/// Gives every learner (user `user_id_base + i`) course `course_id` by inserting its `learning_lesson` row (one holder,
/// not started) directly: the state a paid order leaves, without placing 100,000 orders.
/// Must run before anything loads these users.
pub async fn insert_lessons(
    database: &MySqlPool,
    learners: u64,
    user_id_base: i64,
    course_id: i64,
) -> anyhow::Result<()> {
    let opened_at_ms = tianji::domain::ids::wall_clock_ms() as i64;
    let all: Vec<u64> = (0..learners).collect();
    for chunk in all.chunks(ROWS_PER_INSERT_MAX) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO learning_lesson (user_id, course_id, holders, latest_section_id, position_sec, status, \
             updated_at) ",
        );
        insert.push_values(chunk, |mut row, &learner| {
            row.push_bind(user_id_base + learner as i64).push_bind(course_id).push_bind(1i64);
            row.push_bind(0i64).push_bind(0i64).push_bind("not_started").push_bind(opened_at_ms);
        });
        insert.build().execute(database).await?;
    }
    Ok(())
}

/// `(section_id, position_sec)` of every learner's row of `course_id` in `learning_lesson`
/// (learner `i` is user `user_id_base + i`).
pub async fn sql_positions(
    database: &MySqlPool,
    learners: u64,
    user_id_base: i64,
    course_id: i64,
) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
    let mut stored = vec![None; learners as usize];
    let rows = sqlx::query("SELECT user_id, latest_section_id, position_sec FROM learning_lesson WHERE course_id = ?")
        .bind(course_id)
        .fetch_all(database)
        .await?;
    for row in rows {
        let learner = row.try_get::<i64, _>("user_id")? - user_id_base;
        if let Some(slot) = usize::try_from(learner).ok().and_then(|index| stored.get_mut(index)) {
            *slot = Some((row.try_get("latest_section_id")?, row.try_get("position_sec")?));
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn engines_args(line: &[&str]) -> EnginesArgs {
        let Command::Engines(args) = Cli::try_parse_from(line).expect("valid").command else { panic!("engines") };
        args
    }

    #[test]
    fn the_preset_runs_the_learning_engines_only() {
        let args = engines_args(&["t", "engines", "--preset", "heartbeats"]);
        assert_eq!(selected_engines(&args).expect("defaults"), HEARTBEAT_ENGINES);
        let args = engines_args(&["t", "engines", "--preset", "heartbeats", "--engines", "redis-hset,tianji-actor"]);
        assert_eq!(selected_engines(&args).expect("fit"), [EngineName::TianjiActor, EngineName::RedisHset]);
        let args = engines_args(&["t", "engines", "--preset", "heartbeats", "--engines", "redis-lua"]);
        assert!(selected_engines(&args).is_err());
        let args = engines_args(&["t", "engines", "--engines", "naive-update"]);
        assert!(args.selected_engines().is_err(), "naive-update runs only heartbeats");
    }

    #[test]
    fn learners_are_far_from_a_server_s_users() {
        assert_eq!(learner_user_id(0), 1_000_000_000);
        assert_eq!(learner_user_id(99_999), 1_000_099_999);
    }
}
