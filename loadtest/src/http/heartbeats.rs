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
//!
//! Each row also carries a timeline, second by second of the phase: the latency percentiles
//! of the heartbeats planned in that second (from the planned send, as the row, and from the
//! actual send), and the seconds in which the server's database flushes ended (its stats
//! polled once a second), so a tail can be placed: the cold start, a flush, or spread out.
//! `--warmup` runs every learner's first heartbeat as a row of its own before the others.

use super::api::{mint_token, Answer, Api, OrderReply};
use crate::check::CheckResult;
use crate::cli::{HttpArgs, LearnerSeed, Mode};
use crate::cpu::CpuMeter;
use crate::driver::LATENCY_MAX_US;
use crate::driver::{drive, Outcome};
use crate::engines::heartbeats::{per_heartbeat, phases, position, LearnerAudit, Phase, Schedule, StatementCounts};
use crate::engines::heartbeats_run::insert_lessons;
use crate::report::{Report, Summary};
use crate::workload::{planned_offset, Arrival, Workload};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Learners are users `HTTP_LEARNER_USER_ID_BASE + index`: apart from the users of other
/// scenarios and of the in-process engines (`engines::heartbeats_run::LEARNER_USER_ID_BASE`).
pub const HTTP_LEARNER_USER_ID_BASE: i64 = 2_000_000_000;
/// Orders placed and paid at once while seeding through the API; progress reads at once at the
/// end.
pub const SETUP_CONCURRENCY: usize = 128;
/// Seeding failures named before the run gives up.
pub const SEED_FAILURES_LISTED_MAX: usize = 3;
/// How often the server's learning stats are read during a phase, for the timeline.
pub const STATS_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Significant digits of the per-second histograms (coarser than the row's: many of them).
const TIMELINE_SIGNIFICANT_DIGITS: u8 = 2;

/// Latency second by second of a phase. A heartbeat belongs to the second of its planned send
/// (open loop; the plan counted from `started`, taken just before the driver starts its own
/// clock, so at most microseconds early) or of its send (closed loop).
pub struct LatencyTimeline {
    started: Instant,
    rate_per_s: Option<f64>,
    /// Per second: (from the planned send, from the send), in microseconds.
    seconds: Mutex<Vec<(Histogram<u64>, Histogram<u64>)>>,
}

/// One second of a `LatencyTimeline`, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondLatency {
    pub heartbeats: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// p99 from the actual send: what the server and the network took, without the client's
    /// own delay in sending.
    pub p99_from_send_us: u64,
}

impl LatencyTimeline {
    pub fn new(workload: &Workload) -> Self {
        let rate_per_s = match workload.arrival {
            Arrival::Open { rate_per_s } => Some(rate_per_s),
            Arrival::Closed => None,
        };
        LatencyTimeline { started: Instant::now(), rate_per_s, seconds: Mutex::new(Vec::new()) }
    }

    /// Attempt `seq` (of the phase) sent at `sent` and answered at `answered`.
    pub fn record(&self, seq: u64, sent: Instant, answered: Instant) {
        let planned = self.rate_per_s.map_or(sent, |rate| self.started + planned_offset(seq, rate));
        let second = planned.saturating_duration_since(self.started).as_secs() as usize;
        let micros = |from: Instant| {
            u64::try_from(answered.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX).max(1)
        };
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        while seconds.len() <= second {
            seconds.push((timeline_histogram(), timeline_histogram()));
        }
        let (from_planned, from_send) = &mut seconds[second];
        from_planned.saturating_record(micros(planned));
        from_send.saturating_record(micros(sent));
    }

    pub fn per_second(&self) -> Vec<SecondLatency> {
        let seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        seconds
            .iter()
            .map(|(from_planned, from_send)| SecondLatency {
                heartbeats: from_planned.len(),
                p50_us: from_planned.value_at_quantile(0.50),
                p99_us: from_planned.value_at_quantile(0.99),
                max_us: from_planned.max(),
                p99_from_send_us: from_send.value_at_quantile(0.99),
            })
            .collect()
    }
}

fn timeline_histogram() -> Histogram<u64> {
    // Constant, valid bounds: cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, TIMELINE_SIGNIFICANT_DIGITS).expect("constant histogram bounds")
}

/// Milliseconds, short: "0.8", "12", "1450".
fn short_ms(micros: u64) -> String {
    if micros < 10_000 {
        format!("{:.1}", micros as f64 / 1_000.0)
    } else {
        format!("{:.0}", micros as f64 / 1_000.0)
    }
}

/// The timeline as the notes of a row: one list per figure, second by second, and the seconds
/// whose p99 was past `TAIL_NAMED_AFTER_US`.
pub fn timeline_notes(seconds: &[SecondLatency], flushes: &[FlushSeen]) -> Vec<String> {
    let list = |figure: fn(&SecondLatency) -> String| seconds.iter().map(figure).collect::<Vec<_>>().join(" ");
    let slow: Vec<String> = seconds
        .iter()
        .enumerate()
        .filter(|(_, second)| second.p99_us > TAIL_NAMED_AFTER_US)
        .map(|(at, second)| format!("{at}s ({} ms)", short_ms(second.p99_us)))
        .collect();
    let flushed: Vec<String> = flushes
        .iter()
        .map(|flush| format!("{}s (+{} rows, {} pending)", flush.second, flush.rows, flush.pending_rows))
        .collect();
    vec![
        format!("timeline, p99 ms per second of the phase (from the planned send): {}", list(|s| short_ms(s.p99_us))),
        format!("timeline, p99 ms per second (from the actual send): {}", list(|s| short_ms(s.p99_from_send_us))),
        format!("timeline, p50 ms per second: {}", list(|s| short_ms(s.p50_us))),
        format!("timeline, max ms per second: {}", list(|s| short_ms(s.max_us))),
        format!(
            "timeline: {} of {} seconds with p99 over {} ms: [{}]; database flushes seen ending in seconds: [{}]",
            slow.len(),
            seconds.len(),
            TAIL_NAMED_AFTER_US / 1_000,
            slow.join(", "),
            flushed.join(", ")
        ),
    ]
}

/// A second whose p99 is past this is named in the timeline's summary: the target's p99.
pub const TAIL_NAMED_AFTER_US: u64 = 10_000;

/// A database flush of the server seen by polling its stats: in which second of the phase the
/// counters moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushSeen {
    pub second: u64,
    pub rows: u64,
    pub pending_rows: u64,
}

/// Reads the server's learning stats every `STATS_POLL_INTERVAL` until `stop`, and returns the
/// seconds (from `started`) in which flushed rows grew.
async fn watch_flushes(
    learners: Arc<Learners>,
    started: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<FlushSeen> {
    let mut seen = Vec::new();
    let mut previous: Option<LearningStats> = None;
    let mut ticks = tokio::time::interval(STATS_POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return seen,
            _ = ticks.tick() => {}
        }
        let Ok(now) = learning_stats(&learners.api).await else { continue };
        if let Some(before) = previous {
            let delta = before.since(&now);
            if delta.rows_flushed > 0 {
                let second = started.elapsed().as_secs();
                seen.push(FlushSeen { second, rows: delta.rows_flushed, pending_rows: now.pending_rows });
            }
        }
        previous = Some(now);
    }
}

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
    /// Sends global ticket `seq`, attempt `phase_seq` of the phase, timed into `timeline`.
    async fn beat(&self, seq: u64, phase_seq: u64, timeline: &LatencyTimeline) -> Outcome {
        let sent_at = Instant::now();
        let outcome = self.send_beat(seq).await;
        timeline.record(phase_seq, sent_at, Instant::now());
        outcome
    }

    async fn send_beat(&self, seq: u64) -> Outcome {
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
    let timeline = Arc::new(LatencyTimeline::new(&phase.workload));
    let (stop_watching, stop) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch_flushes(Arc::clone(learners), timeline.started, stop));
    let timed = Arc::clone(&timeline);
    let measurement = drive(&name, &phase.workload, move |attempt| {
        let (learners, timeline) = (Arc::clone(&driven), Arc::clone(&timed));
        async move { learners.beat(tickets_base + attempt.seq, attempt.seq, &timeline).await }
    })
    .await?;
    let cpu = meter.stop();
    let _ = stop_watching.send(());
    let flushes = watcher.await.unwrap_or_default();
    let stats = stats_before.since(&learning_stats(&learners.api).await?);
    let mut notes = vec![stats.note()];
    let timeline_lines = timeline_notes(&timeline.per_second(), &flushes);
    timeline_lines.iter().for_each(|line| eprintln!("{name} {line}"));
    notes.extend(timeline_lines);
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

    #[test]
    fn the_timeline_puts_each_heartbeat_in_the_second_of_its_planned_send() {
        let open = Workload { arrival: Arrival::Open { rate_per_s: 10.0 }, ..test_workload() };
        let timeline = LatencyTimeline::new(&open);
        let at = |ms: u64| timeline.started + Duration::from_millis(ms);
        // Seq 5 is planned at 0.5 s, sent at once, answered in 2 ms.
        timeline.record(5, at(500), at(502));
        // Seq 12 is planned at 1.2 s but sent 300 ms late and answered 1 ms later.
        timeline.record(12, at(1_500), at(1_501));
        let seconds = timeline.per_second();
        assert_eq!(seconds.len(), 2);
        assert_eq!((seconds[0].heartbeats, seconds[1].heartbeats), (1, 1));
        assert!((1_990..=2_010).contains(&seconds[0].p99_us), "{:?}", seconds[0]);
        assert!((299_000..=303_000).contains(&seconds[1].p99_us), "late sends count: {:?}", seconds[1]);
        assert!((990..=1_010).contains(&seconds[1].p99_from_send_us), "{:?}", seconds[1]);
        let flushes = [FlushSeen { second: 1, rows: 100, pending_rows: 3 }];
        let notes = timeline_notes(&seconds, &flushes);
        assert!(notes[0].ends_with("(from the planned send): 2.0 301"), "{}", notes[0]);
        assert!(notes[4].contains("1 of 2 seconds with p99 over 10 ms: [1s (301 ms)]"), "{}", notes[4]);
        assert!(notes[4].ends_with("[1s (+100 rows, 3 pending)]"), "{}", notes[4]);
        // Closed loop: by the second of the send.
        let closed = LatencyTimeline::new(&test_workload());
        closed.record(0, closed.started + Duration::from_millis(2_100), closed.started + Duration::from_millis(2_104));
        assert_eq!(closed.per_second().len(), 3);
    }

    fn test_workload() -> Workload {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let line = ["t", "http", "--preset", "heartbeats", "--target", "http://127.0.0.1:1", "--jwt-secret", "s"];
        let Command::Http(http) = Cli::try_parse_from(line).expect("valid").command else { panic!("http") };
        http.load.workload(Mode::Http).expect("valid")
    }
}
