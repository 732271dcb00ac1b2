//! Turns measurements and checks into what a person reads: one `Summary` row per engine or
//! scenario (throughput, latency percentiles from the histogram, the check), the ratios of
//! every row to a baseline row, the terminal table and the JSON file.
//!
//! Pure apart from writing the JSON file: every number here comes from a `Measurement`.

use crate::check::CheckResult;
use crate::driver::{Measurement, SAMPLE_INTERVAL};
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
        }
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

/// The terminal table: one line per row, then the ratios and any errors by kind.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", report.command, report.workload);
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>8} {:>9} {:>7} {:>11} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7}  check",
        "name",
        "attempts",
        "ok",
        "rejected",
        "errors",
        "thru/s",
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
            "{:<20} {:>9} {:>8} {:>9} {:>7} {:>11.0} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6.2}{limited}  {}",
            row.name,
            row.attempts,
            row.ok,
            row.rejected,
            row.errors,
            row.throughput_per_s,
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
    write_ratios(&mut out, &report.ratios);
    write_details(&mut out, &report.results);
    out
}

fn write_ratios(out: &mut String, ratios: &[Ratio]) {
    for ratio in ratios.iter().filter(|r| r.name != r.baseline) {
        let _ = writeln!(
            out,
            "{} / {}: throughput x{:.3}, p50 x{:.2}, p99 x{:.2}",
            ratio.name, ratio.baseline, ratio.throughput, ratio.p50, ratio.p99
        );
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
    use crate::driver::Measurement;
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
        };
        let text = table(&report);
        assert!(text.contains("tianji-actor"));
        assert!(text.contains("redis-lua / tianji-actor: throughput x0.500"));
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
