//! Turns measurements and checks into what a person reads: one `Summary` row per engine or
//! scenario (throughput, latency percentiles from the histogram, machine time per operation,
//! for open loop the rate achieved against the one asked, the check), the ratios of every row
//! to a baseline row, the terminal table and the JSON file.
//!
//! An operation is an answered attempt (acknowledged or refused for want of stock): the unit of
//! the throughput, and of the CPU time per operation beside it.
//!
//! Pure apart from writing the JSON file: every number here comes from a `Measurement` and
//! the `CpuReading`s taken around it.

use crate::check::CheckResult;
use crate::cpu::CpuReading;
use crate::driver::{Measurement, OpenLoopStats, SAMPLE_INTERVAL, SEND_LATE_AFTER};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Percentiles drawn in the HTML latency plot.
pub const PLOT_PERCENTILES: [f64; 10] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// One row of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub attempts: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub throughput_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub oversold: u64,
    pub elapsed_s: f64,
    /// The run stopped at its time limit before making every attempt.
    pub time_limited: bool,
    pub units_acknowledged: u64,
    pub units_taken: i64,
    pub order_rows: u64,
    /// "ok", or what the end-state check found wrong.
    pub check: String,
    pub check_passed: bool,
    pub error_kinds: Vec<(String, u64)>,
    /// (percentile, latency in microseconds) for the plot.
    pub latency_curve_us: Vec<(f64, u64)>,
    /// Completed attempts per second in each sample interval.
    pub throughput_timeline_per_s: Vec<f64>,
    /// Anything engine-specific worth reading beside the numbers (e.g. commits).
    pub notes: Vec<String>,
    /// "send" (closed loop) or "planned send" (open loop): where each latency starts.
    pub latency_from: String,
    /// Set for an open-loop run.
    pub open_loop: Option<OpenLoopSummary>,
    /// CPU time of each process measured over the run (and of the whole machine).
    pub cpu: Vec<CpuShare>,
    /// Microseconds of CPU per operation, summed over the processes measured.
    pub cpu_us_per_op: Option<f64>,
    /// The same per acknowledged attempt (per order).
    pub cpu_us_per_ok: Option<f64>,
    /// Busy time of every core per operation, whoever used it.
    pub machine_cpu_us_per_op: Option<f64>,
}

/// How an open-loop row's arrivals went.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenLoopSummary {
    pub rate_asked_per_s: f64,
    pub rate_sent_per_s: f64,
    pub planned: u64,
    pub sent: u64,
    /// Due while `in_flight_max` attempts were outstanding: not sent.
    pub dropped: u64,
    /// Sent more than `sent_late_after_us` after their planned instant.
    pub sent_late: u64,
    pub sent_late_after_us: u64,
    pub send_lag_max_us: u64,
    pub in_flight_max: usize,
}

impl OpenLoopSummary {
    pub fn new(stats: &OpenLoopStats) -> Self {
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        OpenLoopSummary {
            rate_asked_per_s: stats.rate_asked_per_s,
            rate_sent_per_s: stats.rate_sent_per_s(),
            planned: stats.planned,
            sent: stats.sent,
            dropped: stats.dropped,
            sent_late: stats.sent_late,
            sent_late_after_us: micros(SEND_LATE_AFTER),
            send_lag_max_us: micros(stats.send_lag_max),
            in_flight_max: stats.in_flight_max,
        }
    }
}

/// One process's CPU time over a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuShare {
    /// e.g. "tianji-loadtest", "server pid 4242", "mariadbd pid 3781", "machine".
    pub process: String,
    pub cpu_s: f64,
    /// Average cores kept busy: cpu_s / wall seconds.
    pub cores: f64,
    pub us_per_op: Option<f64>,
    /// The whole machine rather than one process: not part of the sum.
    pub whole_machine: bool,
}

/// Microseconds of CPU per operation, when there were operations.
fn per_op_us(cpu_s: f64, operations: u64) -> Option<f64> {
    (operations > 0).then(|| cpu_s * 1e6 / operations as f64)
}

impl Summary {
    pub fn new(measurement: &Measurement, check: &CheckResult, notes: Vec<String>) -> Self {
        let h = &measurement.latency_us;
        let seconds = measurement.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        Summary {
            name: measurement.name.clone(),
            attempts: measurement.attempts,
            ok: measurement.ok,
            rejected: measurement.rejected,
            errors: measurement.errors,
            // Answered attempts (ok or rejected) per second: errors are not throughput.
            throughput_per_s: (measurement.ok + measurement.rejected) as f64 / seconds,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            oversold: check.oversold,
            elapsed_s: seconds,
            time_limited: measurement.time_limited,
            units_acknowledged: measurement.acked_units_total(),
            units_taken: check.units_taken,
            order_rows: check.order_rows,
            check: check.summary(),
            check_passed: check.passed(),
            error_kinds: measurement.error_kinds.iter().map(|(kind, count)| (kind.clone(), *count)).collect(),
            latency_curve_us: PLOT_PERCENTILES.iter().map(|&p| (p, h.value_at_quantile(p / 100.0))).collect(),
            throughput_timeline_per_s: per_interval_rates(&measurement.completed_samples),
            notes,
            latency_from: if measurement.open_loop.is_some() { "planned send" } else { "send" }.to_owned(),
            open_loop: measurement.open_loop.as_ref().map(OpenLoopSummary::new),
            cpu: Vec::new(),
            cpu_us_per_op: None,
            cpu_us_per_ok: None,
            machine_cpu_us_per_op: None,
        }
    }

    /// Operations: answered attempts, the unit of the throughput.
    pub fn operations(&self) -> u64 {
        self.ok + self.rejected
    }

    /// Adds the CPU time measured over the run; processes that could not be read are named in
    /// the notes and left out of the sum.
    pub fn with_cpu(mut self, readings: &[CpuReading]) -> Self {
        let operations = self.operations();
        let mut processes_s = None;
        for reading in readings {
            let (Some(cpu_s), Some(cores)) = (reading.cpu_s, reading.cores) else {
                self.notes.push(format!("cpu: {reading}"));
                continue;
            };
            if reading.whole_machine {
                self.machine_cpu_us_per_op = per_op_us(cpu_s, operations);
            } else {
                processes_s = Some(processes_s.unwrap_or(0.0) + cpu_s);
            }
            self.cpu.push(CpuShare {
                process: reading.label.clone(),
                cpu_s,
                cores,
                us_per_op: per_op_us(cpu_s, operations),
                whole_machine: reading.whole_machine,
            });
        }
        self.cpu_us_per_op = processes_s.and_then(|cpu_s| per_op_us(cpu_s, operations));
        self.cpu_us_per_ok = processes_s.and_then(|cpu_s| per_op_us(cpu_s, self.ok));
        self
    }
}

/// Rates per second from cumulative counts sampled every `SAMPLE_INTERVAL`.
pub fn per_interval_rates(cumulative: &[u64]) -> Vec<f64> {
    let interval_s = SAMPLE_INTERVAL.as_secs_f64();
    let mut previous = 0;
    cumulative
        .iter()
        .map(|&count| {
            let delta = count.saturating_sub(previous);
            previous = count;
            delta as f64 / interval_s
        })
        .collect()
}

/// One row compared with the baseline row: each value is row / baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    pub name: String,
    pub baseline: String,
    pub throughput: f64,
    /// CPU per operation (summed over the processes measured) / the baseline's.
    pub cpu_per_op: f64,
    pub p50: f64,
    pub p99: f64,
}

/// Ratios of every row to the row named `baseline` (none if it is absent).
pub fn ratios(rows: &[Summary], baseline: &str) -> Vec<Ratio> {
    let Some(base) = rows.iter().find(|row| row.name == baseline) else {
        return Vec::new();
    };
    let divide = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    rows.iter()
        .map(|row| Ratio {
            name: row.name.clone(),
            baseline: baseline.to_owned(),
            throughput: divide(row.throughput_per_s, base.throughput_per_s),
            cpu_per_op: divide(row.cpu_us_per_op.unwrap_or(f64::NAN), base.cpu_us_per_op.unwrap_or(f64::NAN)),
            p50: divide(row.p50_us as f64, base.p50_us as f64),
            p99: divide(row.p99_us as f64, base.p99_us as f64),
        })
        .collect()
}

/// Everything one invocation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub workload: String,
    pub results: Vec<Summary>,
    pub ratios: Vec<Ratio>,
    pub started_at: String,
    /// About the run as a whole (e.g. which processes the CPU times are of).
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|row| row.check_passed)
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(())
    }
}

/// The terminal table: one line per row, then the open-loop arrivals, the CPU time by
/// process, the ratios and any errors by kind.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", report.command, report.workload);
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>8} {:>9} {:>7} {:>11} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7}  check",
        "name",
        "attempts",
        "ok",
        "rejected",
        "errors",
        "thru/s",
        "cpu us/op",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "oversold",
        "secs"
    );
    for row in &report.results {
        let limited = if row.time_limited { "*" } else { " " };
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8} {:>9} {:>7} {:>11.0} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6.2}{limited}  {}",
            row.name,
            row.attempts,
            row.ok,
            row.rejected,
            row.errors,
            row.throughput_per_s,
            optional(row.cpu_us_per_op, 1),
            row.p50_us,
            row.p90_us,
            row.p99_us,
            row.p999_us,
            row.oversold,
            row.elapsed_s,
            row.check
        );
    }
    if report.results.iter().any(|row| row.time_limited) {
        let _ = writeln!(out, "* stopped at the time limit before every attempt was made");
    }
    let _ = writeln!(
        out,
        "cpu us/op: CPU time (user + system) of the processes measured, per answered attempt; \
         machine: busy time of every core, whatever ran"
    );
    write_open_loop(&mut out, &report.results);
    write_cpu(&mut out, &report.results);
    write_ratios(&mut out, &report.ratios);
    write_details(&mut out, &report.results);
    for note in &report.notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// A number with `decimals`, or "-" when there is none.
pub fn optional(value: Option<f64>, decimals: usize) -> String {
    value.filter(|v| v.is_finite()).map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// One line per open-loop row: the rate asked and achieved, what was dropped or sent late,
/// and the latency percentiles, which count from the planned send.
pub fn open_loop_line(row: &Summary, open: &OpenLoopSummary) -> String {
    let share = if open.planned > 0 { 100.0 * open.sent as f64 / open.planned as f64 } else { 0.0 };
    format!(
        "{}: open loop asked {:.0}/s, sent {:.0}/s ({share:.1}% of {} planned); {} dropped/late at {} in \
         flight; {} sent over {} us late (worst {} us); from the planned send p50 {} us, p99 {} us, p99.9 {} us",
        row.name,
        open.rate_asked_per_s,
        open.rate_sent_per_s,
        open.planned,
        open.dropped,
        open.in_flight_max,
        open.sent_late,
        open.sent_late_after_us,
        open.send_lag_max_us,
        row.p50_us,
        row.p99_us,
        row.p999_us
    )
}

fn write_open_loop(out: &mut String, rows: &[Summary]) {
    for row in rows {
        if let Some(open) = &row.open_loop {
            let _ = writeln!(out, "{}", open_loop_line(row, open));
        }
    }
}

/// One line per row: CPU per operation in total and by process, the machine's, per order.
pub fn cpu_line(row: &Summary) -> String {
    let parts: Vec<String> = row
        .cpu
        .iter()
        .filter(|share| !share.whole_machine)
        .map(|share| format!("{} {} ({:.2} cores)", share.process, optional(share.us_per_op, 1), share.cores))
        .collect();
    format!(
        "{}: cpu {} us/op = {}; machine {} us/op; {} us per acknowledged attempt",
        row.name,
        optional(row.cpu_us_per_op, 1),
        if parts.is_empty() { "nothing measured".to_owned() } else { parts.join(" + ") },
        optional(row.machine_cpu_us_per_op, 1),
        optional(row.cpu_us_per_ok, 1)
    )
}

fn write_cpu(out: &mut String, rows: &[Summary]) {
    for row in rows.iter().filter(|row| !row.cpu.is_empty()) {
        let _ = writeln!(out, "{}", cpu_line(row));
    }
}

/// "a / b: throughput x0.316, cpu/op x2.85, p50 x1.20, p99 x3.10".
pub fn ratio_line(ratio: &Ratio) -> String {
    let cpu = if ratio.cpu_per_op.is_finite() { format!("x{:.2}", ratio.cpu_per_op) } else { "-".to_owned() };
    format!(
        "{} / {}: throughput x{:.3}, cpu/op {cpu}, p50 x{:.2}, p99 x{:.2}",
        ratio.name, ratio.baseline, ratio.throughput, ratio.p50, ratio.p99
    )
}

fn write_ratios(out: &mut String, ratios: &[Ratio]) {
    for ratio in ratios.iter().filter(|r| r.name != r.baseline) {
        let _ = writeln!(out, "{}", ratio_line(ratio));
    }
}

fn write_details(out: &mut String, rows: &[Summary]) {
    for row in rows {
        for note in &row.notes {
            let _ = writeln!(out, "{}: {note}", row.name);
        }
        for (kind, count) in &row.error_kinds {
            let _ = writeln!(out, "{}: {count} x error: {kind}", row.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Measurement, OpenLoopStats};
    use hdrhistogram::Histogram;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn measurement(name: &str, latencies_us: &[u64], elapsed_s: u64) -> Measurement {
        let mut latency_us = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for &us in latencies_us {
            latency_us.record(us).expect("in range");
        }
        Measurement {
            name: name.to_owned(),
            attempts: latencies_us.len() as u64,
            ok: 2,
            rejected: latencies_us.len() as u64 - 2,
            errors: 0,
            elapsed: Duration::from_secs(elapsed_s),
            time_limited: false,
            latency_us,
            completed_samples: vec![10, 30, 30, 60],
            acked_units: vec![2],
            acked_orders: vec![2],
            error_kinds: BTreeMap::new(),
            open_loop: None,
        }
    }

    fn summary(name: &str, latencies_us: &[u64], elapsed_s: u64) -> Summary {
        let check = CheckResult { units_taken: 2, order_rows: 2, ..CheckResult::default() };
        Summary::new(&measurement(name, latencies_us, elapsed_s), &check, vec![])
    }

    #[test]
    fn percentiles_and_throughput_come_from_the_measurement() {
        let latencies: Vec<u64> = (1..=1_000).collect();
        let row = summary("a", &latencies, 2);
        assert_eq!(row.throughput_per_s, 500.0);
        assert_eq!(row.p50_us, 500);
        assert_eq!(row.p90_us, 900);
        assert_eq!(row.p99_us, 990);
        assert_eq!(row.p999_us, 999);
        assert_eq!(row.max_us, 1_000);
        assert_eq!(row.latency_curve_us.first(), Some(&(0.0, 1)));
        assert_eq!(row.latency_curve_us.last(), Some(&(100.0, 1_000)));
        assert!(row.check_passed);
    }

    #[test]
    fn timeline_rates_are_per_second_deltas() {
        assert_eq!(per_interval_rates(&[10, 30, 30, 60]), vec![100.0, 200.0, 0.0, 300.0]);
    }

    #[test]
    fn ratios_divide_by_the_baseline_row() {
        let base = summary("tianji-actor", &[100; 100], 1);
        let other = summary("redis-lua", &[200; 50], 1);
        let ratios = ratios(&[base, other], "tianji-actor");
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios[0].throughput, 1.0);
        assert_eq!(ratios[1].throughput, 0.5);
        assert_eq!(ratios[1].p50, 2.0);
        assert!(super::ratios(&ratios_rows(), "absent").is_empty());
    }

    fn reading(label: &str, cpu_s: Option<f64>, whole_machine: bool) -> CpuReading {
        CpuReading { label: label.into(), cpu_s, cores: cpu_s.map(|s| s / 2.0), whole_machine }
    }

    #[test]
    fn cpu_per_operation_sums_the_processes_and_leaves_the_machine_aside() {
        // 1,000 answers (2 ok, 998 rejected) over 2 s.
        let latencies: Vec<u64> = (1..=1_000).collect();
        let row = summary("tianji-flash-sale", &latencies, 2).with_cpu(&[
            reading("tianji-loadtest", Some(0.010), false),
            reading("server pid 7", Some(0.030), false),
            reading("mariadbd pid 9", None, false),
            reading("machine", Some(0.050), true),
        ]);
        assert_eq!(row.operations(), 1_000);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(row.cpu_us_per_op, 40.0), "{:?}", row.cpu_us_per_op);
        assert!(close(row.cpu_us_per_ok, 20_000.0));
        assert!(close(row.machine_cpu_us_per_op, 50.0));
        assert_eq!(row.cpu.len(), 3, "the unreadable process is left out");
        assert!(close(row.cpu[1].us_per_op, 30.0));
        assert_eq!(row.cpu[1].cores, 0.015);
        assert!(row.notes.contains(&"cpu: mariadbd pid 9 not measured".to_owned()));
        let line = cpu_line(&row);
        assert!(line.starts_with("tianji-flash-sale: cpu 40.0 us/op = tianji-loadtest 10.0 (0.01 cores) + server"));
        assert!(line.contains("machine 50.0 us/op"));
    }

    #[test]
    fn the_cpu_ratio_compares_with_the_bare_row() {
        let latencies: Vec<u64> = (1..=100).collect();
        let tianji = summary("tianji-flash-sale", &latencies, 1).with_cpu(&[reading("p", Some(0.006), false)]);
        let bare = summary("bare-actix", &latencies, 1).with_cpu(&[reading("p", Some(0.002), false)]);
        let ratios = ratios(&[tianji, bare], "bare-actix");
        assert!((ratios[0].cpu_per_op - 3.0).abs() < 1e-9);
        assert_eq!(
            ratio_line(&ratios[0]),
            "tianji-flash-sale / bare-actix: throughput x1.000, cpu/op x3.00, p50 x1.00, p99 x1.00"
        );
    }

    #[test]
    fn an_open_loop_row_shows_the_rate_asked_and_achieved() {
        let mut measured = measurement("open", &[100, 200, 300, 1_900], 1);
        measured.open_loop = Some(OpenLoopStats {
            rate_asked_per_s: 5.0,
            planned: 5,
            sent: 4,
            dropped: 1,
            sent_late: 1,
            send_lag_max: std::time::Duration::from_micros(1_500),
            send_span: std::time::Duration::from_millis(800),
            in_flight_max: 2,
        });
        let row = Summary::new(&measured, &CheckResult::default(), vec![]);
        assert_eq!(row.latency_from, "planned send");
        let open = row.open_loop.clone().expect("open loop");
        assert_eq!((open.dropped, open.sent_late, open.send_lag_max_us), (1, 1, 1_500));
        assert!((open.rate_sent_per_s - 4.0).abs() < 1e-9);
        let line = open_loop_line(&row, &open);
        assert!(
            line.starts_with("open: open loop asked 5/s, sent 4/s (80.0% of 5 planned); 1 dropped/late at 2 in flight")
        );
        assert!(line.ends_with("p99 1900 us, p99.9 1900 us"), "{line}");
        assert_eq!(summary("closed", &[1, 2, 3], 1).latency_from, "send");
    }

    fn ratios_rows() -> Vec<Summary> {
        vec![summary("x", &[1, 2, 3], 1)]
    }

    #[test]
    fn the_table_lists_rows_ratios_and_json_has_the_named_fields() {
        let rows = vec![summary("tianji-actor", &[100; 10], 1), summary("redis-lua", &[300; 10], 2)];
        let report = Report {
            command: "engines".into(),
            workload: "test".into(),
            ratios: ratios(&rows, "tianji-actor"),
            results: rows,
            started_at: "now".into(),
            notes: vec!["cpu: server pid 7 (--server-pid)".into()],
        };
        let text = table(&report);
        assert!(text.contains("tianji-actor"));
        assert!(text.contains("redis-lua / tianji-actor: throughput x0.500, cpu/op -"));
        assert!(text.contains("cpu: server pid 7 (--server-pid)"));
        let json: serde_json::Value = serde_json::to_value(&report).expect("json");
        let row = &json["results"][1];
        for field in [
            "name",
            "attempts",
            "ok",
            "rejected",
            "errors",
            "throughput_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "oversold",
        ] {
            assert!(!row[field].is_null(), "missing {field}");
        }
        assert_eq!(json["ratios"][1]["throughput"], 0.5);
        assert!(report.passed());
    }
}
