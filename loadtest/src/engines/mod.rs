//! `engines`: the same driver (closed or open loop) against each reservation engine, one after
//! the other, each from the same fresh state, each checked against what it stored.
//!
//! An engine is set up (SKUs created where it keeps stock), driven, read back, checked and
//! cleaned up (Redis keys deleted); the one MariaDB database of the run is dropped at the end.
//! While it is driven, the CPU time of this process (driver and engine), of MariaDB and of
//! Redis is measured, for machine time per operation.
//! One file per engine: `tianji.rs` (actors, durable or in memory), `redis_lua.rs` (the
//! classic script, with or without the durable order insert), `row_lock.rs` (one conditional
//! UPDATE per attempt). Under the `coupons` preset an attempt claims one coupon of a template
//! (the "SKU", its total the stock): `tianji_claims.rs` (the same actors), `redis_claim.rs`
//! (the seckill script, with or without the durable coupon insert), `mysql_conditional.rs`
//! (one conditional UPDATE and INSERT per claim), all audited alike by `claims.rs`.
//! Under the `heartbeats` preset an attempt is one learner's progress heartbeat
//! (`heartbeats_run.rs`): tianji's actors with the write-behind (`heartbeats_tianji.rs`), one
//! UPDATE or one HSET per heartbeat (`heartbeats_baselines.rs`), audited by `heartbeats.rs`.

pub mod claims;
pub mod heartbeats;
pub mod heartbeats_baselines;
pub mod heartbeats_run;
pub mod heartbeats_tianji;
pub mod mysql_conditional;
pub mod redis_claim;
pub mod redis_lua;
pub mod row_lock;
pub mod tianji;
pub mod tianji_claims;

use crate::check::{check, CheckResult, SkuObserved};
use crate::cli::{EngineName, EnginesArgs};
use crate::cpu::{CpuMeter, Probe, Source};
use crate::database::{with_fresh_database, FreshDatabase};
use crate::driver::{drive, Attempt, Outcome};
use crate::process::{self, url_port, MYSQLD_NAMES, REDIS_NAMES};
use crate::report::{ratios, Report, Summary};
use crate::target::require_loopback;
use crate::workload::Workload;
use async_trait::async_trait;
use std::sync::Arc;

/// The engine every other is compared with.
pub const BASELINE_ENGINE: &str = "tianji-actor";

/// What an engine holds after the run, per SKU index, plus anything it found wrong on the way
/// and notes for the report.
#[derive(Debug, Default)]
pub struct ReadBack {
    pub observed: Vec<SkuObserved>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// One reservation engine under test.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Reserves `attempt.quantity` units of SKU `attempt.sku_index` for a new order, or (a
    /// coupon engine) claims one coupon of template `attempt.sku_index`.
    async fn attempt(&self, attempt: Attempt) -> Outcome;

    /// Reads the final state back from where the engine keeps it.
    async fn read_back(&self) -> anyhow::Result<ReadBack>;

    /// Removes what the engine created outside the run's database (Redis keys, threads).
    async fn cleanup(&self) -> anyhow::Result<()>;
}

/// Everything an engine's setup may need.
pub struct Setup<'a> {
    pub workload: &'a Workload,
    pub database: &'a FreshDatabase,
    pub redis_url: &'a str,
    /// Unique per run: namespaces Redis keys.
    pub run_id: &'a str,
    /// Who makes each coupon claim (coupon engines only).
    pub claimants: claims::Claimants,
}

pub async fn run(args: &EnginesArgs) -> anyhow::Result<Report> {
    if args.load.preset == crate::cli::Preset::Heartbeats {
        return heartbeats_run::run(args).await;
    }
    require_loopback("--mysql-url", &args.mysql_url, &["mysql", "mariadb"])?;
    require_loopback("--redis-url", &args.redis_url, &["redis"])?;
    let workload = args.load.workload(crate::cli::Mode::Engines)?;
    let names = args.selected_engines()?;
    let coupons = args.load.preset.claims_coupons();
    if coupons && (workload.max_quantity != 1 || workload.stock_per_sku < 1) {
        anyhow::bail!(
            "preset coupons claims one coupon per attempt of templates of at least 1: --max-quantity 1, --stock >= 1"
        );
    }
    let claimants = claims::Claimants::new(args.repeat_claims_share()?);
    let run_id = hex::encode(rand::random::<[u8; 6]>());
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    eprintln!("engines: {}", describe(&workload, coupons, claimants));
    let mut notes = Vec::new();
    let probes = cpu_probes(args, &mut notes);
    notes.iter().for_each(|note| eprintln!("{note}"));
    let server = args.mysql_url.replacen("mariadb://", "mysql://", 1);
    let results = with_fresh_database(&server, |database| {
        let (workload, redis_url, run_id) = (&workload, args.redis_url.as_str(), run_id.as_str());
        let probes = &probes;
        async move {
            let mut rows = Vec::new();
            for name in names {
                let setup = Setup { workload, database: &database, redis_url, run_id, claimants };
                let row = measure_engine(name, coupons, &setup, probes).await?;
                eprintln!(
                    "{:<18} {:>10.0} /s  cpu {} us/op  ok {}  rejected {}  errors {}  check {}",
                    row.name,
                    row.throughput_per_s,
                    crate::report::optional(row.cpu_us_per_op, 1),
                    row.ok,
                    row.rejected,
                    row.errors,
                    row.check
                );
                rows.push(row);
            }
            anyhow::Ok(rows)
        }
    })
    .await?;
    Ok(Report {
        command: "engines".into(),
        workload: describe(&workload, coupons, claimants),
        ratios: ratios(&results, BASELINE_ENGINE),
        results,
        started_at,
        notes,
    })
}

/// This process, MariaDB, Redis and the machine; a server that cannot be found is left out
/// with a note.
fn cpu_probes(args: &EnginesArgs, notes: &mut Vec<String>) -> Vec<Probe> {
    let mut probes = vec![Probe::new("tianji-loadtest", Source::ThisProcess)];
    let mysqld = args.load.mysqld_pid.map(|pid| (pid, "--mysqld-pid"));
    let found = process::find(mysqld, url_port(&args.mysql_url), MYSQLD_NAMES);
    probes.extend(process::probe("mariadbd", "--mysqld-pid", found, notes));
    let redis = args.redis_pid.map(|pid| (pid, "--redis-pid"));
    let found = process::find(redis, url_port(&args.redis_url), REDIS_NAMES);
    probes.extend(process::probe("redis-server", "--redis-pid", found, notes));
    probes.push(Probe::new("machine", Source::Machine));
    probes
}

fn describe(workload: &Workload, coupons: bool, claimants: claims::Claimants) -> String {
    if !coupons {
        return workload.describe();
    }
    format!("coupon claims: templates are the SKUs, their totals the units; {}; {claimants}", workload.describe())
}

async fn start_engine(name: EngineName, coupons: bool, setup: &Setup<'_>) -> anyhow::Result<Arc<dyn Engine>> {
    use tianji_claims::TianjiClaimEngine;
    assert!(name.runs(coupons), "selected_engines lets only fitting engines through");
    Ok(match (name, coupons) {
        (EngineName::TianjiActor, false) => Arc::new(tianji::TianjiEngine::durable(setup).await?),
        (EngineName::TianjiMemory, false) => Arc::new(tianji::TianjiEngine::in_memory(setup).await?),
        (EngineName::TianjiActor, true) => Arc::new(TianjiClaimEngine::durable(setup).await?),
        (EngineName::TianjiMemory, true) => Arc::new(TianjiClaimEngine::in_memory(setup).await?),
        (EngineName::RedisLua, _) => Arc::new(redis_lua::RedisLuaEngine::start(setup, false).await?),
        (EngineName::RedisLuaDurable, _) => Arc::new(redis_lua::RedisLuaEngine::start(setup, true).await?),
        (EngineName::MysqlRowLock, _) => Arc::new(row_lock::RowLockEngine::start(setup).await?),
        (EngineName::RedisClaim, _) => Arc::new(redis_claim::RedisClaimEngine::start(setup, false).await?),
        (EngineName::RedisClaimDurable, _) => Arc::new(redis_claim::RedisClaimEngine::start(setup, true).await?),
        (EngineName::MysqlConditional, _) => Arc::new(mysql_conditional::ConditionalEngine::start(setup).await?),
        (EngineName::NaiveUpdate | EngineName::RedisHset, _) => {
            anyhow::bail!("{} runs preset heartbeats only", name.spelled())
        }
    })
}

/// Sets one engine up, drives it, reads it back and checks it; cleans up in every case.
async fn measure_engine(
    name: EngineName,
    coupons: bool,
    setup: &Setup<'_>,
    probes: &[Probe],
) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    let engine = start_engine(name, coupons, setup).await?;
    eprintln!(
        "{}: set up {} SKUs in {:.1} s",
        engine.name(),
        setup.workload.sku_count,
        started.elapsed().as_secs_f64()
    );
    // tianji's durable engine leaves tianji's tables, which must reconcile after the run.
    let reconciled = (name == EngineName::TianjiActor).then_some(setup.database.url.as_str());
    let measured = drive_and_check(&engine, setup.workload, probes, reconciled).await;
    let cleaned = engine.cleanup().await;
    let summary = measured?;
    cleaned?;
    Ok(summary)
}

async fn drive_and_check(
    engine: &Arc<dyn Engine>,
    workload: &Workload,
    probes: &[Probe],
    reconciled_database_url: Option<&str>,
) -> anyhow::Result<Summary> {
    let driven = Arc::clone(engine);
    let meter = CpuMeter::start(probes.to_vec());
    let measurement = drive(engine.name(), workload, move |attempt| {
        let engine = Arc::clone(&driven);
        async move { engine.attempt(attempt).await }
    })
    .await?;
    let cpu = meter.stop();
    let started = std::time::Instant::now();
    let read_back = engine.read_back().await?;
    eprintln!("{}: read back in {:.1} s", engine.name(), started.elapsed().as_secs_f64());
    let mut result: CheckResult =
        check(workload.stock_per_sku, &measurement.acked_units, &measurement.acked_orders, &read_back.observed);
    for problem in read_back.problems {
        result.problem(problem);
    }
    if let Some(url) = reconciled_database_url {
        crate::check::reconcile(url, &mut result).await?;
    }
    Ok(Summary::new(&measurement, &result, read_back.notes).with_cpu(&cpu))
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::workload::KeyDistribution;
    use std::time::Duration;

    /// A small `tianji-actor` run on MariaDB (`TIANJI_TEST_MYSQL_URL`) passes its end check,
    /// tianji's reconciliation included; a counter changed by hand afterwards fails it.
    #[actix_web::test]
    async fn a_tianji_run_reconciles_and_a_difference_fails_the_check() {
        let server = std::env::var("TIANJI_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let workload = Workload::parse(4, 20, 200, 8, 2, KeyDistribution::Uniform, Duration::from_secs(60))
            .expect("a valid workload");
        let run = with_fresh_database(&server, |database| {
            let workload = &workload;
            async move {
                let setup = Setup {
                    workload,
                    database: &database,
                    redis_url: "redis://127.0.0.1:6379",
                    run_id: "reconcile-test",
                    claimants: claims::Claimants::new(0.0),
                };
                let summary = measure_engine(EngineName::TianjiActor, false, &setup, &[]).await?;
                assert!(summary.check_passed, "the run's end check: {}", summary.check);
                assert!(summary.ok > 0, "the run placed orders");

                let pool = database.pool(1).await?;
                let moved = sqlx::query(
                    "UPDATE inventory SET reserved = reserved - 1, available = available + 1 WHERE reserved > 0 LIMIT 1",
                )
                .execute(&pool)
                .await?;
                assert_eq!(moved.rows_affected(), 1);
                pool.close().await;
                let mut result = CheckResult::default();
                crate::check::reconcile(&database.url, &mut result).await?;
                assert!(!result.passed(), "a counter changed by hand fails the check");
                assert!(result.problems[0].starts_with("reconcile: sku_counters sku:"), "{:?}", result.problems);
                anyhow::Ok(())
            }
        })
        .await;
        run.expect("the run and its checks");
    }
}
