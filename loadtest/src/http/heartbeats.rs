//! Scenario `heartbeats` over HTTP: `--learners` learners (default 100,000) each owning one
//! course, sending `POST /v1/learning/heartbeats`, first paced (each learner one heartbeat per
//! `--cadence`, 15 s, spread evenly, open loop for the time limit, latency from the planned
//! send), then at the maximum rate (closed loop).
//!
//! Setup: one SKU (the course) created as admin; each learner comes to own it either by one
//! order placed and paid through the signed payment callback (`--seed-learners api`, the
//! user's story), or, faster for 100,000 learners, by its `learning_lesson` row inserted
//! directly into the server's MariaDB (`--seed-learners database`, through --database-url;
//! the learners are fresh users, so no actor holds them yet).
//!
//! Reported per phase: the rate achieved, latency, the server's CPU per heartbeat, and the
//! delta of `GET /v1/admin/learning/stats` (heartbeats, rows flushed, flushes, Redis round
//! trips) with MariaDB's statement counters when --database-url names it, so statements per
//! heartbeat can be read off. At the end every learner's progress is read through the API
//! (the actor's memory) and audited: never behind an acknowledged heartbeat, never past a
//! sent one.

use super::api::{mint_token, Answer, Api, OrderReply};
use crate::check::CheckResult;
use crate::cli::{HttpArgs, LearnerSeed, Mode};
use crate::cpu::CpuMeter;
use crate::driver::{drive, Outcome};
use crate::engines::heartbeats::{per_heartbeat, phases, position, LearnerAudit, Phase, Schedule, StatementCounts};
use crate::engines::heartbeats_run::insert_lessons;
use crate::report::{Report, Summary};
use futures::StreamExt;
use serde::Deserialize;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use std::sync::Arc;
use std::time::Instant;

/// Learners are users `HTTP_LEARNER_USER_ID_BASE + index`: apart from the users of other
/// scenarios and of the in-process engines (`engines::heartbeats_run::LEARNER_USER_ID_BASE`).
pub const HTTP_LEARNER_USER_ID_BASE: i64 = 2_000_000_000;
/// Orders placed and paid at once while seeding through the API; progress reads at once at the
/// end.
pub const SETUP_CONCURRENCY: usize = 128;
/// Seeding failures named before the run gives up.
pub const SEED_FAILURES_LISTED_MAX: usize = 3;

/// `GET /v1/admin/learning/stats`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct LearningStats {
    pub heartbeats: u64,
    pub rows_flushed: u64,
    pub flushes: u64,
    pub redis_round_trips: u64,
    pub redis_failures: u64,
    pub redis_rows_written: u64,
    pub pending_rows: u64,
    pub redis_pending_rows: u64,
}

impl LearningStats {
    /// The counters' growth from `self` to `after` (the pending rows as they are `after`).
    pub fn since(&self, after: &LearningStats) -> LearningStats {
        LearningStats {
            heartbeats: after.heartbeats.saturating_sub(self.heartbeats),
            rows_flushed: after.rows_flushed.saturating_sub(self.rows_flushed),
            flushes: after.flushes.saturating_sub(self.flushes),
            redis_round_trips: after.redis_round_trips.saturating_sub(self.redis_round_trips),
            redis_failures: after.redis_failures.saturating_sub(self.redis_failures),
            redis_rows_written: after.redis_rows_written.saturating_sub(self.redis_rows_written),
            pending_rows: after.pending_rows,
            redis_pending_rows: after.redis_pending_rows,
        }
    }

    pub fn note(&self) -> String {
        let beats = self.heartbeats;
        format!(
            "server learning stats delta: {beats} heartbeats; {} rows flushed in {} flushes ({} rows per heartbeat); \
             {} redis round trips ({} per heartbeat, {} failed), {} redis rows; pending now {} rows (redis {})",
            self.rows_flushed,
            self.flushes,
            per_heartbeat(self.rows_flushed, beats),
            self.redis_round_trips,
            per_heartbeat(self.redis_round_trips, beats),
            self.redis_failures,
            self.redis_rows_written,
            self.pending_rows,
            self.redis_pending_rows
        )
    }
}

/// What every heartbeat of the run needs.
struct Learners {
    api: Api,
    course_id: i64,
    schedule: Schedule,
    audit: LearnerAudit,
}

impl Learners {
    async fn beat(&self, seq: u64) -> Outcome {
        let (learner, beat) = self.schedule.beat(seq);
        let (section_id, position_sec) = position(beat);
        let body =
            serde_json::json!({ "course_id": self.course_id, "section_id": section_id, "position_sec": position_sec });
        self.audit.sent(learner, beat);
        let sent = self
            .api
            .client
            .post(format!("{}/v1/learning/heartbeats", self.api.base))
            .header("Authorization", self.api.user_token(learner as usize))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                self.audit.acked(learner, beat);
                Outcome::Ok { units: 1 }
            }
            Ok(response) => Outcome::Error(format!("heartbeat: {}", response.status().as_u16())),
            Err(error) => Outcome::Error(if error.is_timeout() { "timeout".into() } else { "transport".into() }),
        }
    }

    /// The progress the server answers for `learner` (its actor's memory).
    async fn progress(&self, learner: u64) -> Result<(i64, i64), String> {
        #[derive(Deserialize)]
        struct Body {
            latest_section_id: i64,
            position_sec: i64,
        }
        let sent = self
            .api
            .client
            .get(format!("{}/v1/learning/progress?course_id={}", self.api.base, self.course_id))
            .header("Authorization", self.api.user_token(learner as usize))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !sent.status().is_success() {
            return Err(format!("progress: {}", sent.status().as_u16()));
        }
        let body: Body = sent.json().await.map_err(|error| error.to_string())?;
        Ok((body.latest_section_id, body.position_sec))
    }
}

pub async fn run(
    args: &HttpArgs,
    target: &reqwest::Url,
    jwt_secret: &str,
    payment_secret: Option<&str>,
) -> anyhow::Result<Report> {
    let learners = args.heartbeats.learners()?;
    let phases = phases(&args.load, &args.heartbeats, Mode::Http)?;
    let database = match (args.seed_learners, args.database_url.as_deref()) {
        (_, Some(url)) if !url.starts_with("sqlite:") => Some(mysql_pool(url).await?),
        (LearnerSeed::Database, _) => anyhow::bail!("--seed-learners database needs a MariaDB --database-url"),
        _ => None,
    };
    if args.seed_learners == LearnerSeed::Api && payment_secret.is_none() {
        anyhow::bail!("--seed-learners api pays one order per learner: give --payment-secret(-file)");
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let connections = phases.iter().map(|phase| phase.workload.concurrency).max().unwrap_or(1);
    let api = learner_api(args, target, jwt_secret, learners, connections)?;
    let course_id = create_course(&api, learners).await?;
    let schedule = Schedule::new(learners);
    let learners_state = Arc::new(Learners { api, course_id, schedule, audit: LearnerAudit::new(schedule) });
    let started = Instant::now();
    match (args.seed_learners, &database) {
        (LearnerSeed::Database, Some(pool)) => {
            insert_lessons(pool, learners, HTTP_LEARNER_USER_ID_BASE, course_id).await?
        }
        _ => seed_through_api(&learners_state, payment_secret.unwrap_or_default()).await?,
    }
    let seeded = format!("{:?}", args.seed_learners).to_lowercase();
    eprintln!("{learners} learners own course {course_id} ({seeded}) after {:.1} s", started.elapsed().as_secs_f64());
    let described = format!(
        "{learners} learners owning course {course_id} (seeded through {seeded}); {} against {}",
        phases.iter().map(|p| format!("{}: {}", p.name, p.workload.describe())).collect::<Vec<_>>().join("; "),
        learners_state.api.base
    );
    let mut run_notes = Vec::new();
    let mut results = Vec::new();
    let mut tickets_base = 0;
    for phase in &phases {
        let row = measure_phase(args, target, &learners_state, tickets_base, phase, database.as_ref(), &mut run_notes)
            .await?;
        super::report_row(&row);
        results.push(row);
        tickets_base += phase.workload.attempts;
    }
    if let Some(last) = results.last_mut() {
        let check = audit_through_api(&learners_state).await;
        last.check = check.0.summary();
        last.check_passed = check.0.passed();
        last.notes.push(check.1);
    }
    if let Some(pool) = database {
        pool.close().await;
    }
    Ok(Report {
        command: "http heartbeats".into(),
        workload: described,
        ratios: Vec::new(),
        results,
        started_at,
        notes: run_notes,
    })
}

async fn mysql_pool(url: &str) -> anyhow::Result<MySqlPool> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    Ok(MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(crate::database::ACQUIRE_TIMEOUT)
        .connect(&url)
        .await?)
}

fn learner_api(
    args: &HttpArgs,
    target: &reqwest::Url,
    jwt_secret: &str,
    learners: u64,
    connections: usize,
) -> anyhow::Result<Api> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(args.request_timeout.into())
        .tcp_nodelay(true)
        .build()?;
    let user_tokens = (0..learners)
        .map(|learner| mint_token(jwt_secret, (HTTP_LEARNER_USER_ID_BASE + learner as i64) as u64, "user"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Api {
        client,
        base: target.as_str().trim_end_matches('/').to_owned(),
        user_tokens,
        admin_token: mint_token(jwt_secret, HTTP_LEARNER_USER_ID_BASE as u64 - 1, "admin")?,
    })
}

/// The course: one SKU with a unit per learner.
async fn create_course(api: &Api, learners: u64) -> anyhow::Result<i64> {
    match api.create_sku("heartbeats course", learners as i64).await {
        Answer::Done(sku) => Ok(sku.sku_id),
        Answer::SoldOut => anyhow::bail!("creating the course answered insufficient_stock"),
        Answer::Failed(message) => anyhow::bail!("creating the course failed: {message}"),
    }
}

/// One order placed and paid per learner; every one must succeed.
async fn seed_through_api(learners: &Arc<Learners>, payment_secret: &str) -> anyhow::Result<()> {
    let run_id = hex::encode(rand::random::<[u8; 4]>());
    let count = learners.schedule.learners();
    let failures: Vec<String> = futures::stream::iter(0..count)
        .map(|learner| {
            let (learners, run_id) = (Arc::clone(learners), run_id.clone());
            async move {
                let key = format!("hb-{run_id}-{learner}");
                let order: OrderReply = match learners.api.place(learner as usize, &key, learners.course_id, 1).await {
                    Answer::Done(order) => order,
                    Answer::SoldOut => return Some("place: insufficient_stock".to_owned()),
                    Answer::Failed(message) => return Some(format!("place: {message}")),
                };
                match learners.api.pay(payment_secret, &order, &format!("pay-{key}")).await {
                    Answer::Done(()) => None,
                    Answer::SoldOut => Some("pay: insufficient_stock".to_owned()),
                    Answer::Failed(message) => Some(message),
                }
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    if let Some(first) = failures.first() {
        let named: Vec<&String> = failures.iter().take(SEED_FAILURES_LISTED_MAX).collect();
        anyhow::bail!("{} of {count} learners could not buy the course (first: {first}; {named:?})", failures.len());
    }
    Ok(())
}

async fn learning_stats(api: &Api) -> anyhow::Result<LearningStats> {
    let sent = api
        .client
        .get(format!("{}/v1/admin/learning/stats", api.base))
        .header("Authorization", &api.admin_token)
        .send()
        .await?;
    if !sent.status().is_success() {
        anyhow::bail!("learning stats: {}", sent.status());
    }
    Ok(sent.json().await?)
}

async fn measure_phase(
    args: &HttpArgs,
    target: &reqwest::Url,
    learners: &Arc<Learners>,
    tickets_base: u64,
    phase: &Phase,
    database: Option<&MySqlPool>,
    run_notes: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let name = format!("tianji-heartbeats {}", phase.name);
    let stats_before = learning_stats(&learners.api).await?;
    let statements_before = match database {
        Some(pool) => Some(StatementCounts::read(pool).await?),
        None => None,
    };
    let mut probe_notes = Vec::new();
    let meter = CpuMeter::start(super::server_probes(args, target, &mut probe_notes));
    probe_notes.iter().for_each(|note| eprintln!("{note}"));
    let driven = Arc::clone(learners);
    let measurement = drive(&name, &phase.workload, move |attempt| {
        let learners = Arc::clone(&driven);
        async move { learners.beat(tickets_base + attempt.seq).await }
    })
    .await?;
    let cpu = meter.stop();
    let stats = stats_before.since(&learning_stats(&learners.api).await?);
    let mut notes = vec![stats.note()];
    if let (Some(pool), Some(before)) = (database, statements_before) {
        notes.push(before.since(&StatementCounts::read(pool).await?).note(measurement.ok));
    }
    if stats.heartbeats != measurement.ok {
        notes.push(format!(
            "the server counted {} heartbeats, the client {} acknowledged",
            stats.heartbeats, measurement.ok
        ));
    }
    for note in probe_notes {
        if !run_notes.contains(&note) {
            run_notes.push(note);
        }
    }
    let mut summary = Summary::new(&measurement, &CheckResult::default(), notes).with_cpu(&cpu);
    summary.check = "see the last phase".into();
    Ok(summary)
}

/// A learner's `(section_id, position_sec)` as the server answered it.
type ProgressAnswer = Result<(i64, i64), String>;

/// Every learner's progress as the server answers it, against the audit.
async fn audit_through_api(learners: &Arc<Learners>) -> (CheckResult, String) {
    let started = Instant::now();
    let count = learners.schedule.learners();
    let answers: Vec<(u64, ProgressAnswer)> = futures::stream::iter(0..count)
        .map(|learner| {
            let learners = Arc::clone(learners);
            async move { (learner, learners.progress(learner).await) }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut stored = vec![None; count as usize];
    let mut unreadable = 0;
    for (learner, answer) in answers {
        match answer {
            Ok(position) => stored[learner as usize] = Some(position),
            Err(_) => unreadable += 1,
        }
    }
    let verdict = learners.audit.compare(&stored);
    let note = format!(
        "{} (read through GET /v1/learning/progress in {:.1} s, {unreadable} unreadable)",
        verdict.note(),
        started.elapsed().as_secs_f64()
    );
    (verdict.into_check(), note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_deltas_count_growth_and_keep_the_pending_rows() {
        let before =
            LearningStats { heartbeats: 10, rows_flushed: 4, flushes: 1, pending_rows: 9, ..Default::default() };
        let after = LearningStats {
            heartbeats: 4_010,
            rows_flushed: 1_004,
            flushes: 2,
            redis_round_trips: 8,
            pending_rows: 3,
            ..Default::default()
        };
        let delta = before.since(&after);
        assert_eq!((delta.heartbeats, delta.rows_flushed, delta.flushes, delta.pending_rows), (4_000, 1_000, 1, 3));
        assert!(delta
            .note()
            .contains("1000 rows flushed in 1 flushes (0.25000 rows per heartbeat); 8 redis round trips (0.00200"));
        let body = r#"{"heartbeats":1,"rows_flushed":2,"flushes":3,"redis_round_trips":4,"redis_failures":0,
            "redis_rows_written":5,"pending_rows":6,"redis_pending_rows":7}"#;
        let parsed: LearningStats = serde_json::from_str(body).expect("the server's stats body");
        assert_eq!((parsed.heartbeats, parsed.redis_pending_rows), (1, 7));
    }
}
