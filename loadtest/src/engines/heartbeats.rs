//! What every `heartbeats` run shares, in process (`engines`) or over HTTP: which learner sends
//! each heartbeat and where it says the learner is (`Schedule`), the phases a run is made of
//! (paced at the learners' cadence, then at the maximum rate), the auditor that remembers the
//! furthest heartbeat sent and acknowledged per learner (`LearnerAudit`), and MariaDB's
//! statement counters read around a phase (`StatementCounts`).
//!
//! Guarantees of the audit, whatever the system: after the final flush, every learner's stored
//! position is never behind the last heartbeat it was acknowledged for, and never past the last
//! one it was sent; with no errors, it equals the last acknowledged one.
//!
//! Pure apart from `StatementCounts::read`: no clock, no I/O.

use crate::check::CheckResult;
use crate::cli::{HeartbeatArgs, HeartbeatPhase, LoadArgs, Mode, LEARNERS_MAX};
use crate::workload::{Workload, CONCURRENCY_MAX};
use sqlx::mysql::MySqlPool;
use sqlx::Row;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of the course one heartbeat moves a learner on: the player's cadence.
pub const POSITION_STEP_SEC: i64 = 15;
/// Heartbeats per section (an hour of video each), after which the learner starts the next.
pub const BEATS_PER_SECTION: u64 = 240;
/// Attempts a paced (open-loop) phase may have in flight unless `--concurrency` says otherwise:
/// at 6,667 heartbeats a second, 600 ms of answers.
pub const PACED_IN_FLIGHT_MAX: usize = 4_096;
/// Learners whose mismatch is named in the check before the rest are only counted.
pub const LEARNERS_LISTED_MAX: usize = 3;

/// Where heartbeat `beat` (0-based) of a learner says the learner is: `(section_id,
/// position_sec)`, strictly increasing in `beat` in the order progress is compared by.
pub fn position(beat: u64) -> (i64, i64) {
    let section_id = 1 + (beat / BEATS_PER_SECTION) as i64;
    let position_sec = (beat % BEATS_PER_SECTION) as i64 * POSITION_STEP_SEC;
    assert!((1..=tianji::domain::learning::SECTION_ID_MAX).contains(&section_id), "beat {beat} past the last section");
    (section_id, position_sec)
}

/// Hands the attempts of a run to the learners in turn: ticket `seq` is heartbeat
/// `seq / learners` of learner `seq % learners`, so at a rate of `learners / cadence` each
/// learner sends one every `cadence`, the sends spread evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    learners: u64,
}

impl Schedule {
    pub fn new(learners: u64) -> Self {
        assert!((1..=LEARNERS_MAX).contains(&learners), "{learners} learners");
        Schedule { learners }
    }

    pub fn learners(&self) -> u64 {
        self.learners
    }

    /// `(learner, beat)` of global ticket `seq`.
    pub fn beat(&self, seq: u64) -> (u64, u64) {
        (seq % self.learners, seq / self.learners)
    }
}

/// One phase of a run: its row name suffix and its workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub workload: Workload,
}

/// The phases `--phases` asks for, in order: `paced` is an open loop at `learners / cadence`
/// for the time limit (`--rate` replaces the rate), `max` the preset's closed loop. An explicit
/// `--rate` alone (no `--phases`) runs one open-loop phase at that rate. `--warmup` puts a
/// `warmup` phase first: the same open loop for exactly one heartbeat per learner (every
/// learner's first, one full cadence), so the phases after it find every learner warm.
pub fn phases(load: &LoadArgs, heartbeats: &HeartbeatArgs, mode: Mode) -> anyhow::Result<Vec<Phase>> {
    let learners = heartbeats.learners()?;
    let cadence_s = std::time::Duration::from(heartbeats.cadence).as_secs_f64();
    if cadence_s <= 0.0 {
        anyhow::bail!("--cadence must be positive");
    }
    let closed = LoadArgs { rate: None, duration: None, ..load.clone() }.workload(mode)?;
    let in_flight_max = load.concurrency.unwrap_or(PACED_IN_FLIGHT_MAX).min(CONCURRENCY_MAX);
    let mut phases = Vec::new();
    if heartbeats.warmup {
        let rate_per_s = load.rate.unwrap_or(learners as f64 / cadence_s);
        let one_round = std::time::Duration::from_secs_f64(learners as f64 / rate_per_s);
        let open = closed.clone().open_loop(rate_per_s, one_round, Some(learners))?;
        anyhow::ensure!(open.attempts == learners, "the warm-up plans {} heartbeats for {learners}", open.attempts);
        phases.push(Phase { name: "warmup", workload: Workload { concurrency: in_flight_max, ..open } });
    }
    for phase in heartbeats.phases() {
        phases.push(match phase {
            HeartbeatPhase::Paced => {
                let rate_per_s = load.rate.unwrap_or(learners as f64 / cadence_s);
                let duration = load.duration.map_or(closed.time_limit, Into::into);
                let open = closed.clone().open_loop(rate_per_s, duration, load.attempts)?;
                Phase { name: "paced", workload: Workload { concurrency: in_flight_max, ..open } }
            }
            HeartbeatPhase::Max => Phase { name: "max", workload: closed.clone() },
        });
    }
    Ok(phases)
}

/// The furthest heartbeat sent and acknowledged per learner (beat + 1; 0: none), across every
/// phase of one system.
#[derive(Debug)]
pub struct LearnerAudit {
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
}

/// How the stored positions compared with the audit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditVerdict {
    /// Stored exactly at the last acknowledged heartbeat.
    pub exact: u64,
    /// Past the last acknowledged heartbeat but not past the last sent (an unanswered or
    /// failed heartbeat that was applied): allowed.
    pub ahead_of_ack: u64,
    /// Behind an acknowledged heartbeat: progress lost.
    pub behind: Vec<u64>,
    /// Past anything sent: progress invented.
    pub beyond_sent: Vec<u64>,
    /// No stored row at all.
    pub missing: Vec<u64>,
}

impl LearnerAudit {
    pub fn new(schedule: Schedule) -> Self {
        let counters = || (0..schedule.learners()).map(|_| AtomicU64::new(0)).collect();
        LearnerAudit { sent: counters(), acked: counters() }
    }

    /// Called before the heartbeat is sent.
    pub fn sent(&self, learner: u64, beat: u64) {
        self.sent[learner as usize].fetch_max(beat + 1, Ordering::Relaxed);
    }

    /// Called once the heartbeat was acknowledged (202).
    pub fn acked(&self, learner: u64, beat: u64) {
        assert!(self.sent[learner as usize].load(Ordering::Relaxed) > beat, "acknowledged before sent");
        self.acked[learner as usize].fetch_max(beat + 1, Ordering::Relaxed);
    }

    /// Compares the stored `(section_id, position_sec)` of every learner (by index; `None`: no
    /// row) with what was sent and acknowledged. A learner with nothing acknowledged is
    /// expected at the opened position `(0, 0)` or at something it sent.
    pub fn compare(&self, stored: &[Option<(i64, i64)>]) -> AuditVerdict {
        assert_eq!(stored.len(), self.sent.len(), "one stored position per learner");
        let at = |mark: u64| if mark == 0 { (0, 0) } else { position(mark - 1) };
        let mut verdict = AuditVerdict::default();
        for (learner, stored) in stored.iter().enumerate() {
            let learner_index = learner as u64;
            let Some(stored) = *stored else {
                verdict.missing.push(learner_index);
                continue;
            };
            let acked = at(self.acked[learner].load(Ordering::Relaxed));
            let sent = at(self.sent[learner].load(Ordering::Relaxed));
            assert!(acked <= sent, "learner {learner}: acknowledged past what was sent");
            if stored < acked {
                verdict.behind.push(learner_index);
            } else if stored > sent {
                verdict.beyond_sent.push(learner_index);
            } else if stored == acked {
                verdict.exact += 1;
            } else {
                verdict.ahead_of_ack += 1;
            }
        }
        verdict
    }
}

impl AuditVerdict {
    /// The problems of the verdict, as the end-state check reports them.
    pub fn into_check(self) -> CheckResult {
        let mut check = CheckResult::default();
        let mut problem = |learners: &[u64], what: &str| {
            if learners.is_empty() {
                return;
            }
            let named: Vec<String> = learners.iter().take(LEARNERS_LISTED_MAX).map(|l| format!("#{l}")).collect();
            check.problem(format!("{} learners {what} (e.g. {})", learners.len(), named.join(", ")));
        };
        problem(&self.behind, "stored behind an acknowledged heartbeat");
        problem(&self.beyond_sent, "stored past anything sent");
        problem(&self.missing, "with no stored progress");
        check
    }

    pub fn note(&self) -> String {
        format!(
            "stored progress: {} learners at their last acknowledged heartbeat, {} past it (an unanswered \
             heartbeat applied), {} behind, {} past anything sent, {} missing",
            self.exact,
            self.ahead_of_ack,
            self.behind.len(),
            self.beyond_sent.len(),
            self.missing.len()
        )
    }
}

/// MariaDB's global statement counters (`SHOW GLOBAL STATUS`), read before and after a phase.
/// Global: they count every client of the server, so a phase should be alone on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementCounts {
    /// INSERT, UPDATE, DELETE and REPLACE statements of every form (`Com_*`).
    pub writes: u64,
    /// COMMIT statements (`Com_commit`): explicit transactions, not autocommitted statements.
    pub commits: u64,
    /// Every statement a client sent (`Questions`), reads and these reads of status included.
    pub questions: u64,
}

/// The `Com_*` counters that count writing statements.
pub const WRITE_COUNTERS: [&str; 8] = [
    "Com_insert",
    "Com_insert_select",
    "Com_update",
    "Com_update_multi",
    "Com_delete",
    "Com_delete_multi",
    "Com_replace",
    "Com_replace_select",
];

impl StatementCounts {
    /// Sums the counters out of `SHOW GLOBAL STATUS` rows (name, value); unknown names are
    /// ignored and a missing counter counts 0.
    pub fn from_status<'a>(rows: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut counts = StatementCounts::default();
        for (name, value) in rows {
            let name_lower = name.to_ascii_lowercase();
            if WRITE_COUNTERS.iter().any(|counter| counter.eq_ignore_ascii_case(&name_lower)) {
                counts.writes += value;
            } else if name_lower == "com_commit" {
                counts.commits += value;
            } else if name_lower == "questions" {
                counts.questions += value;
            }
        }
        counts
    }

    pub async fn read(pool: &MySqlPool) -> anyhow::Result<Self> {
        let rows = sqlx::query("SHOW GLOBAL STATUS WHERE Variable_name LIKE 'Com\\_%' OR Variable_name = 'Questions'")
            .fetch_all(pool)
            .await?;
        let mut pairs = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0)?;
            let value: String = row.try_get(1)?;
            pairs.push((name, value.parse::<u64>().unwrap_or(0)));
        }
        Ok(Self::from_status(pairs.iter().map(|(name, value)| (name.as_str(), *value))))
    }

    /// What happened between `self` (before) and `after`.
    pub fn since(&self, after: &StatementCounts) -> StatementCounts {
        StatementCounts {
            writes: after.writes.saturating_sub(self.writes),
            commits: after.commits.saturating_sub(self.commits),
            questions: after.questions.saturating_sub(self.questions),
        }
    }

    /// The note a row carries: statements per heartbeat and heartbeats per write statement.
    pub fn note(&self, heartbeats: u64) -> String {
        let per = |count: u64| if heartbeats > 0 { count as f64 / heartbeats as f64 } else { f64::NAN };
        let beats_per_write =
            if self.writes > 0 { format!("{:.0}", heartbeats as f64 / self.writes as f64) } else { "-".into() };
        format!(
            "mariadb (global counters): {} write statements ({:.5} per heartbeat, one per {beats_per_write} heartbeats), \
             {} commits, {} statements in all ({:.5} per heartbeat)",
            self.writes,
            per(self.writes),
            self.commits,
            self.questions,
            per(self.questions)
        )
    }
}

/// A ratio for a note: `count / heartbeats`, "-" with no heartbeats.
pub fn per_heartbeat(count: u64, heartbeats: u64) -> String {
    if heartbeats == 0 {
        return "-".into();
    }
    format!("{:.5}", count as f64 / heartbeats as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::workload::Arrival;
    use clap::Parser;

    #[test]
    fn positions_move_forward_with_every_beat() {
        assert_eq!(position(0), (1, 0));
        assert_eq!(position(1), (1, 15));
        assert_eq!(position(BEATS_PER_SECTION - 1), (1, 3_585));
        assert_eq!(position(BEATS_PER_SECTION), (2, 0));
        for beat in 0..2_000 {
            assert!(position(beat) < position(beat + 1), "beat {beat}");
            let (section, second) = position(beat);
            assert!(second <= tianji::domain::learning::POSITION_SEC_MAX && section >= 1);
        }
    }

    #[test]
    fn the_schedule_hands_tickets_to_the_learners_in_turn() {
        let schedule = Schedule::new(3);
        let beats: Vec<(u64, u64)> = (0..7).map(|seq| schedule.beat(seq)).collect();
        assert_eq!(beats, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]);
    }

    fn audit_of(learners: u64, sent: &[(u64, u64)], acked: &[(u64, u64)]) -> LearnerAudit {
        let audit = LearnerAudit::new(Schedule::new(learners));
        sent.iter().for_each(|&(learner, beat)| audit.sent(learner, beat));
        acked.iter().for_each(|&(learner, beat)| audit.acked(learner, beat));
        audit
    }

    #[test]
    fn the_audit_sorts_every_learner() {
        // Learner 0: acked up to beat 2. 1: sent 1, acked 0. 2: nothing sent. 3: acked 0.
        // 4: acked 0. 5: acked 0, no row.
        let sent = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (3, 0), (4, 0), (5, 0)];
        let acked = [(0, 0), (0, 2), (1, 0), (3, 0), (4, 0), (5, 0)];
        let audit = audit_of(6, &sent, &acked);
        let stored = [Some(position(2)), Some(position(1)), Some((0, 0)), Some((0, 0)), Some(position(1)), None];
        let verdict = audit.compare(&stored);
        assert_eq!(
            verdict,
            AuditVerdict { exact: 2, ahead_of_ack: 1, behind: vec![3], beyond_sent: vec![4], missing: vec![5] }
        );
        let check = verdict.clone().into_check();
        assert_eq!(
            check.problems,
            [
                "1 learners stored behind an acknowledged heartbeat (e.g. #3)",
                "1 learners stored past anything sent (e.g. #4)",
                "1 learners with no stored progress (e.g. #5)",
            ]
        );
        assert!(verdict.note().starts_with("stored progress: 2 learners at their last acknowledged heartbeat, 1 past"));
    }

    #[test]
    fn a_faithful_store_passes() {
        let audit = audit_of(2, &[(0, 0), (0, 1), (1, 0)], &[(0, 1), (1, 0)]);
        let verdict = audit.compare(&[Some(position(1)), Some(position(0))]);
        assert_eq!(verdict.exact, 2);
        assert!(verdict.into_check().passed());
    }

    #[test]
    fn statement_counts_sum_the_writing_counters() {
        let rows = [
            ("Com_insert", 5),
            ("Com_update", 7),
            ("COM_DELETE", 1),
            ("Com_select", 100),
            ("Com_commit", 3),
            ("Questions", 200),
            ("Com_stmt_execute", 50),
        ];
        let before = StatementCounts::from_status(rows);
        assert_eq!(before, StatementCounts { writes: 13, commits: 3, questions: 200 });
        let after = StatementCounts { writes: 15, commits: 4, questions: 1_210 };
        assert_eq!(before.since(&after), StatementCounts { writes: 2, commits: 1, questions: 1_010 });
        assert!(before.since(&after).note(2_000).contains("2 write statements (0.00100 per heartbeat, one per 1000"));
        assert_eq!(per_heartbeat(1, 4), "0.25000");
        assert_eq!(per_heartbeat(1, 0), "-");
    }

    fn heartbeat_args(args: &[&str]) -> (LoadArgs, HeartbeatArgs) {
        let mut line = vec!["t", "engines", "--preset", "heartbeats"];
        line.extend_from_slice(args);
        let Command::Engines(engines) = Cli::try_parse_from(line).expect("valid").command else { panic!("engines") };
        (engines.load, engines.heartbeats)
    }

    #[test]
    fn the_preset_paces_the_learners_then_runs_at_the_maximum_rate() {
        let (load, heartbeats) = heartbeat_args(&[]);
        let planned = super::phases(&load, &heartbeats, Mode::Engines).expect("valid");
        assert_eq!(planned.iter().map(|p| p.name).collect::<Vec<_>>(), ["paced", "max"]);
        let paced = &planned[0].workload;
        let rate_per_s = 100_000.0 / 15.0;
        assert_eq!(paced.arrival, Arrival::Open { rate_per_s });
        assert_eq!((paced.concurrency, paced.time_limit), (PACED_IN_FLIGHT_MAX, std::time::Duration::from_secs(20)));
        assert_eq!(paced.attempts, (rate_per_s * 20.0).ceil() as u64);
        assert_eq!((planned[1].workload.arrival, planned[1].workload.concurrency), (Arrival::Closed, 256));
        let (load, heartbeats) = heartbeat_args(&["--learners", "30", "--cadence", "3s", "--phases", "paced"]);
        let planned = super::phases(&load, &heartbeats, Mode::Engines).expect("valid");
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].workload.arrival, Arrival::Open { rate_per_s: 10.0 });
        let (load, heartbeats) = heartbeat_args(&["--rate", "500", "--duration", "2s", "--phases", "paced"]);
        let planned = super::phases(&load, &heartbeats, Mode::Engines).expect("valid");
        assert_eq!(
            (planned[0].workload.arrival, planned[0].workload.attempts),
            (Arrival::Open { rate_per_s: 500.0 }, 1_000)
        );
        let (load, heartbeats) = heartbeat_args(&["--learners", "0"]);
        assert!(super::phases(&load, &heartbeats, Mode::Engines).is_err());
    }

    #[test]
    fn a_warmup_sends_every_learner_its_first_heartbeat_before_the_phases() {
        let (load, heartbeats) = heartbeat_args(&["--warmup"]);
        let planned = super::phases(&load, &heartbeats, Mode::Engines).expect("valid");
        assert_eq!(planned.iter().map(|p| p.name).collect::<Vec<_>>(), ["warmup", "paced", "max"]);
        let warmup = &planned[0].workload;
        assert_eq!(warmup.arrival, Arrival::Open { rate_per_s: 100_000.0 / 15.0 });
        assert_eq!((warmup.attempts, warmup.concurrency), (100_000, PACED_IN_FLIGHT_MAX));
        assert!(warmup.time_limit.abs_diff(std::time::Duration::from_secs(15)) < std::time::Duration::from_millis(1));
        // Tickets 0..learners are beat 0 of every learner: the paced phase starts at beat 1.
        assert_eq!(Schedule::new(100_000).beat(100_000), (0, 1));
        for (learners, cadence) in [("7", "1s"), ("3", "7s"), ("99999", "13s")] {
            let (load, heartbeats) =
                heartbeat_args(&["--warmup", "--learners", learners, "--cadence", cadence, "--phases", "paced"]);
            let planned = super::phases(&load, &heartbeats, Mode::Engines).expect("valid");
            assert_eq!(planned[0].workload.attempts, learners.parse::<u64>().expect("a number"));
        }
    }
}
