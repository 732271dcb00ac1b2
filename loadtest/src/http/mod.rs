//! `http`: end to end against a running `tianji serve` on a loopback address. Creates the
//! run's SKUs (or, scenario `coupons`, coupon templates) through the admin API, drives the
//! scenario (closed or open loop) with keep-alive connections, checks the end state through the
//! API (and the database, SQLite or MariaDB, when given), then drives a bare actix-web handler
//! that the tool starts itself with the same load, and reports tianji / bare: requests/s and
//! CPU time per request side by side.
//!
//! CPU time is measured over each driven phase: for tianji, of the server process, of MariaDB
//! and of this process (the client); for bare, of its server threads and of the rest of this
//! process; for both, of the whole machine (client and server share its cores).

pub mod api;
pub mod bare;
pub mod coupons;
pub mod heartbeats;
pub mod scenarios;
pub mod verify;

use crate::check::{check, CheckResult};
use crate::cli::{HttpArgs, Mode, Scenario};
use crate::cpu::{CpuMeter, CpuReading, Probe, Source};
use crate::driver::{drive, Attempt, Measurement, Outcome};
use crate::process::{self, url_port, MYSQLD_NAMES};
use crate::report::{ratios, Report, Summary};
use crate::target::require_loopback;
use crate::workload::Workload;
use api::{Answer, Api, Claim};
use coupons::{ClaimLedger, CouponContext};
use futures::StreamExt;
use scenarios::{Ledger, ScenarioContext};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SKUs created at once during setup.
pub const SKU_CREATE_CONCURRENCY: usize = 64;
/// The most users tokens are minted for.
pub const USERS_MAX: u32 = 1_000_000;
/// The row every other is compared with.
pub const BARE_NAME: &str = "bare-actix";
/// Shortest JWT secret tianji accepts, in bytes.
pub const SECRET_LEN_MIN_BYTES: usize = 32;

pub fn main(args: &HttpArgs) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.clamp(1, 64))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn secret(value: &Option<String>, file: &Option<std::path::PathBuf>, what: &str) -> anyhow::Result<Option<String>> {
    let secret = match (value, file) {
        (Some(value), _) => value.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {what} from {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if secret.len() < SECRET_LEN_MIN_BYTES {
        anyhow::bail!("{what} is shorter than {SECRET_LEN_MIN_BYTES} bytes");
    }
    Ok(Some(secret))
}

fn check_database_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    let parsed = require_loopback("--database-url", url, &["mysql", "mariadb"])?;
    if parsed.path().trim_matches('/').is_empty() {
        anyhow::bail!(
            "--database-url {url:?} names no database: give the server's, e.g. mysql://root@127.0.0.1:3306/tianji"
        );
    }
    Ok(())
}

fn build_api(args: &HttpArgs, base: &str, jwt_secret: &str, concurrency: usize) -> anyhow::Result<Api> {
    if !(1..=USERS_MAX).contains(&args.users) {
        anyhow::bail!("--users must be between 1 and {USERS_MAX}");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(args.request_timeout.into())
        .tcp_nodelay(true)
        .build()?;
    let user_tokens = (1..=u64::from(args.users))
        .map(|user| api::mint_token(jwt_secret, user, "user"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Api {
        client,
        base: base.trim_end_matches('/').to_owned(),
        user_tokens,
        admin_token: api::mint_token(jwt_secret, u64::from(args.users) + 1, "admin")?,
    })
}

async fn run(args: &HttpArgs) -> anyhow::Result<Report> {
    let target = require_loopback("--target", &args.target, &["http"])?;
    if let Some(url) = &args.database_url {
        check_database_url(url)?;
    }
    let scenario = args.scenario();
    let jwt_secret = secret(&args.jwt_secret, &args.jwt_secret_file, "the JWT secret")?
        .ok_or_else(|| anyhow::anyhow!("give --jwt-secret or --jwt-secret-file"))?;
    let payment_secret = secret(&args.payment_secret, &args.payment_secret_file, "the payment secret")?;
    if scenario == Scenario::Heartbeats {
        return heartbeats::run(args, &target, &jwt_secret, payment_secret.as_deref()).await;
    }
    if scenario == Scenario::Mixed && payment_secret.is_none() {
        anyhow::bail!("scenario mixed pays orders: give --payment-secret or --payment-secret-file");
    }
    if !(0.0..=1.0).contains(&args.replay_fraction) {
        anyhow::bail!("--replay-fraction must be between 0 and 1");
    }
    let workload = args.load.workload(Mode::Http)?;
    if scenario == Scenario::Coupons && workload.max_quantity != 1 {
        anyhow::bail!("scenario coupons claims one coupon per attempt: --max-quantity must be 1");
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let api = Arc::new(build_api(args, target.as_str(), &jwt_secret, workload.concurrency)?);
    let described = describe_workload(args, scenario, &workload);
    eprintln!("http {} against {}: {described}", scenario_name(scenario), api.base);
    let mut run_notes = Vec::new();
    let row = match scenario {
        Scenario::Coupons => run_coupons(args, &api, &target, &workload, &mut run_notes).await?,
        _ => run_orders(args, scenario, payment_secret, &api, &target, &workload, &mut run_notes).await?,
    };
    let mut results = vec![row];
    report_row(&results[0]);
    if !args.no_bare {
        results.push(run_bare(args, scenario, &workload).await?);
        report_row(&results[1]);
    }
    Ok(Report {
        command: format!("http {}", scenario_name(scenario)),
        workload: format!("{described} against {}", api.base),
        ratios: ratios(&results, BARE_NAME),
        results,
        started_at,
        notes: run_notes,
    })
}

fn describe_workload(args: &HttpArgs, scenario: Scenario, workload: &Workload) -> String {
    match scenario {
        Scenario::Coupons => format!(
            "coupon claims: templates are the SKUs, their totals the units, per-user limit {}, {} users in turn; {}",
            args.per_user_limit,
            args.users,
            workload.describe()
        ),
        _ => workload.describe(),
    }
}

/// Drives `attempt` under `workload` while the server's CPU (and MariaDB's, and this
/// process's) is measured.
async fn drive_measured<F, Fut>(
    args: &HttpArgs,
    target: &reqwest::Url,
    name: &str,
    workload: &Workload,
    run_notes: &mut Vec<String>,
    attempt: F,
) -> anyhow::Result<(Measurement, Vec<CpuReading>)>
where
    F: Fn(Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let meter = CpuMeter::start(server_probes(args, target, run_notes));
    run_notes.iter().for_each(|note| eprintln!("{note}"));
    let measurement = drive(name, workload, attempt).await?;
    Ok((measurement, meter.stop()))
}

/// Scenarios flash-sale, catalog and mixed: orders placed (and paid, cancelled, read).
async fn run_orders(
    args: &HttpArgs,
    scenario: Scenario,
    payment_secret: Option<String>,
    api: &Arc<Api>,
    target: &reqwest::Url,
    workload: &Workload,
    run_notes: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let sku_ids = create_skus(api, workload).await?;
    let context = Arc::new(ScenarioContext {
        api: Arc::clone(api),
        sku_ids,
        run_id: hex::encode(rand::random::<[u8; 6]>()),
        replay_fraction: args.replay_fraction,
        payment_secret: payment_secret.filter(|_| scenario == Scenario::Mixed),
        ledger: Ledger::default(),
    });
    let name = format!("tianji-{}", scenario_name(scenario));
    let driven = Arc::clone(&context);
    let (measurement, cpu) = drive_measured(args, target, &name, workload, run_notes, move |attempt| {
        let context = Arc::clone(&driven);
        async move { context.attempt(attempt).await }
    })
    .await?;
    let result = verify_run(&context, workload, &measurement, args.database_url.as_deref()).await?;
    let notes = vec![format!(
        "{} idempotency replays sent; SKUs {}",
        context.ledger.replays.load(Ordering::Relaxed),
        describe_skus(&context.sku_ids)
    )];
    Ok(Summary::new(&measurement, &result, notes).with_cpu(&cpu))
}

/// Scenario coupons: one claim per attempt of the run's templates.
async fn run_coupons(
    args: &HttpArgs,
    api: &Arc<Api>,
    target: &reqwest::Url,
    workload: &Workload,
    run_notes: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let templates =
        coupons::create_templates(api, workload.sku_count, workload.stock_per_sku, args.per_user_limit).await?;
    eprintln!("created {} coupon templates in {:.1} s", templates.len(), started.elapsed().as_secs_f64());
    let context =
        Arc::new(CouponContext { api: Arc::clone(api), ledger: ClaimLedger::new(templates.len()), templates });
    let name = format!("tianji-{}", scenario_name(Scenario::Coupons));
    let driven = Arc::clone(&context);
    let (measurement, cpu) = drive_measured(args, target, &name, workload, run_notes, move |attempt| {
        let context = Arc::clone(&driven);
        async move { context.attempt(attempt).await }
    })
    .await?;
    let result = verify_coupons(&context, &measurement, args.database_url.as_deref()).await?;
    let (claimed, sold_out, at_limit) = context.ledger.counts();
    let notes = vec![format!(
        "{claimed} claimed (201), {sold_out} refused sold_out (409), {at_limit} refused limit_reached (409), \
         {} other; templates {} of {} coupons, per-user limit {}",
        measurement.errors,
        describe_skus(&context.template_ids()),
        workload.stock_per_sku,
        args.per_user_limit
    )];
    Ok(Summary::new(&measurement, &result, notes).with_cpu(&cpu))
}

fn report_row(row: &Summary) {
    eprintln!(
        "{}: {:.0} /s, cpu {} us/op, check {}",
        row.name,
        row.throughput_per_s,
        crate::report::optional(row.cpu_us_per_op, 1),
        row.check
    );
}

/// This process (the client), the server (by --server-pid or the port it listens on), MariaDB
/// and the machine.
fn server_probes(args: &HttpArgs, target: &reqwest::Url, notes: &mut Vec<String>) -> Vec<Probe> {
    let mut probes = vec![Probe::new("tianji-loadtest", Source::ThisProcess)];
    let server = args.server_pid.map(|pid| (pid, "--server-pid"));
    let found = process::find(server, target.port_or_known_default(), &[]);
    probes.extend(process::probe("server", "--server-pid", found, notes));
    let mysqld = args.load.mysqld_pid.map(|pid| (pid, "--mysqld-pid"));
    let database_port = args.database_url.as_deref().filter(|url| !url.starts_with("sqlite:")).and_then(url_port);
    let found = process::find(mysqld, database_port, MYSQLD_NAMES);
    probes.extend(process::probe("mariadbd", "--mysqld-pid", found, notes));
    probes.push(Probe::new("machine", Source::Machine));
    probes
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::FlashSale => "flash-sale",
        Scenario::Catalog => "catalog",
        Scenario::Mixed => "mixed",
        Scenario::Coupons => "coupons",
        Scenario::Heartbeats => "heartbeats",
    }
}

fn describe_skus(sku_ids: &[i64]) -> String {
    match sku_ids {
        [only] => format!("[{only}]"),
        [first, .., last] => format!("{first}..{last} ({} SKUs)", sku_ids.len()),
        [] => "none".into(),
    }
}

async fn create_skus(api: &Api, workload: &Workload) -> anyhow::Result<Vec<i64>> {
    let started = Instant::now();
    let answers: Vec<Answer<api::SkuReply>> = futures::stream::iter(0..workload.sku_count)
        .map(|index| async move { api.create_sku(&format!("load sku {index}"), workload.stock_per_sku).await })
        .buffered(SKU_CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut sku_ids = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Answer::Done(sku) => sku_ids.push(sku.sku_id),
            Answer::SoldOut => anyhow::bail!("creating a SKU answered insufficient_stock"),
            Answer::Failed(message) => anyhow::bail!("creating a SKU failed: {message}"),
        }
    }
    eprintln!("created {} SKUs in {:.1} s", sku_ids.len(), started.elapsed().as_secs_f64());
    Ok(sku_ids)
}

/// Every check of a coupons run, through the API and then the database.
async fn verify_coupons(
    context: &CouponContext,
    measurement: &Measurement,
    database_url: Option<&str>,
) -> anyhow::Result<CheckResult> {
    let started = Instant::now();
    let claims = context.ledger.per_template(&context.templates);
    let mut result = CheckResult::default();
    let (claimed, sold_out, at_limit) = context.ledger.counts();
    if (claimed, sold_out + at_limit) != (measurement.ok, measurement.rejected) {
        result.problem(format!(
            "the ledger holds {claimed} claims and {} refusals, the driver counted {} and {}",
            sold_out + at_limit,
            measurement.ok,
            measurement.rejected
        ));
    }
    let through_api = coupons::check_api(&context.api, &claims, measurement.errors).await;
    (result.units_taken, result.order_rows) = (through_api.units_taken, through_api.order_rows);
    result = verify::merge(result, through_api, "api");
    if let Some(url) = database_url {
        let in_database = coupons::check_database(url, &claims, measurement.errors).await?;
        (result.units_taken, result.order_rows) = (in_database.units_taken, in_database.order_rows);
        result = verify::merge(result, in_database, "db");
        crate::check::reconcile(url, &mut result).await?;
    }
    eprintln!("verified in {:.1} s", started.elapsed().as_secs_f64());
    Ok(result)
}

/// Every check of the run, through the API and then the database.
async fn verify_run(
    context: &ScenarioContext,
    workload: &Workload,
    measurement: &Measurement,
    database_url: Option<&str>,
) -> anyhow::Result<CheckResult> {
    let started = Instant::now();
    let placed = context.ledger.orders();
    let mut result = CheckResult::default();
    for problem in context.ledger.replay_problems.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        result.problem(problem.clone());
    }
    verify::duplicate_orders(&placed, &mut result);
    let (statuses, mut observed) = verify::read_orders(&context.api, &context.sku_ids, &placed, &mut result).await;
    let expected = verify::expectation(workload.sku_count, &placed, &statuses, &mut result);
    // Every success placed an order; an error may have come after a placement (mixed).
    let placed_count = placed.len() as u64;
    if placed_count < measurement.ok || placed_count > measurement.ok + measurement.errors {
        result.problem(format!("{} successes but {} orders placed", measurement.ok, placed.len()));
    }
    let stock = workload.stock_per_sku;
    verify::read_skus(&context.api, &context.sku_ids, stock, &expected, &mut observed, &mut result).await;
    let compared = check(stock, &expected.open_units, &expected.open_orders, &observed);
    let mut result = verify::merge(compared, result, "api");
    if let Some(url) = database_url {
        let in_database =
            verify::check_database(url, &context.sku_ids, stock, &context.key_prefix(), placed.len(), &expected)
                .await?;
        result = verify::merge(result, in_database, "db");
        crate::check::reconcile(url, &mut result).await?;
    }
    eprintln!("verified in {:.1} s", started.elapsed().as_secs_f64());
    Ok(result)
}

/// The same load against the bare reference handler, which runs in this process: its threads
/// are measured apart from the client's.
async fn run_bare(args: &HttpArgs, scenario: Scenario, workload: &Workload) -> anyhow::Result<Summary> {
    let server = bare::BareServer::start(args.bare_workers.clamp(1, 64))?;
    let meter = CpuMeter::start(vec![
        Probe::new("bare server threads", Source::Threads(bare::THREAD_NAME_PREFIXES)),
        Probe::new("tianji-loadtest client", Source::ThisProcessExcept(bare::THREAD_NAME_PREFIXES)),
        Probe::new("machine", Source::Machine),
    ]);
    let api = Arc::new(Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(workload.concurrency)
            .timeout(Duration::from(args.request_timeout))
            .tcp_nodelay(true)
            .build()?,
        base: server.url.clone(),
        user_tokens: vec!["Bearer reference".into()],
        admin_token: "Bearer reference".into(),
    });
    let measured = drive(BARE_NAME, workload, move |attempt| {
        let api = Arc::clone(&api);
        async move {
            if scenario == Scenario::Coupons {
                return match api.receive(0, attempt.sku_index as i64 + 1).await {
                    Claim::Claimed(_) => Outcome::Ok { units: 1 },
                    Claim::SoldOut | Claim::LimitReached => Outcome::Rejected,
                    Claim::Failed(message) => Outcome::Error(message),
                };
            }
            let key = format!("bare-{}", attempt.seq);
            match api.place(0, &key, attempt.sku_index as i64 + 1, attempt.quantity).await {
                Answer::Done(_) => Outcome::Ok { units: attempt.quantity },
                Answer::SoldOut => Outcome::Rejected,
                Answer::Failed(message) => Outcome::Error(message),
            }
        }
    })
    .await;
    // Read before the stop: the server's threads end with it.
    let cpu = meter.stop();
    server.stop().await?;
    let measurement = measured?;
    let mut summary = Summary::new(
        &measurement,
        &CheckResult::default(),
        vec![format!(
            "reference: a minimal actix-web JSON handler with {} workers, no state to check",
            args.bare_workers
        )],
    )
    .with_cpu(&cpu);
    summary.check = "n/a (reference)".into();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_must_be_loopback_and_name_a_database() {
        assert!(check_database_url("sqlite:///tmp/tianji.db?mode=ro").is_ok());
        assert!(check_database_url("mysql://root@127.0.0.1:3306/tianji").is_ok());
        assert!(check_database_url("mariadb://root@127.0.0.1/tianji").is_ok());
        assert!(check_database_url("mysql://root@127.0.0.1:3306").is_err(), "no database");
        assert!(check_database_url("mysql://root@10.0.0.1:3306/tianji").is_err(), "not loopback");
        assert!(check_database_url("postgres://127.0.0.1/tianji").is_err());
    }
}
