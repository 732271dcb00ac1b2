//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! assets) with the summary table (CPU per operation beside the throughput), the open-loop
//! arrivals, the CPU time by process, a latency-by-percentile plot (log-log, HdrHistogram
//! style) and completed attempts per second over time, one line per engine or scenario.

use crate::driver::SAMPLE_INTERVAL;
use crate::report::{optional, ratio_line, Report, Summary};
use std::fmt::Write as _;

/// Plot size in SVG user units.
const PLOT_WIDTH: f64 = 760.0;
const PLOT_HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 40.0;
const MARGIN_TOP: f64 = 20.0;
const MARGIN_RIGHT: f64 = 160.0;
/// Where "max" (the 100th percentile) sits on the percentile axis, in nines.
const MAX_PERCENTILE_NINES: f64 = 6.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The position of a percentile on the "nines" axis: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3.
pub fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return MAX_PERCENTILE_NINES;
    }
    (-(1.0 - percentile / 100.0).log10()).min(MAX_PERCENTILE_NINES)
}

pub fn render(report: &Report) -> String {
    let mut page = String::new();
    let title = format!("tianji-loadtest {}", escape(&report.command));
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.bad{{color:#b00;font-weight:bold}}</style>\
         </head><body><h1>{title}</h1><p>{}</p><p>started {}</p>",
        escape(&report.workload),
        escape(&report.started_at)
    );
    page.push_str(&summary_table(report));
    page.push_str(&open_loop_table(&report.results));
    page.push_str(&cpu_table(report));
    page.push_str("<h2>Latency by percentile</h2>");
    page.push_str(&latency_plot(&report.results));
    page.push_str("<h2>Completed attempts per second over time</h2>");
    page.push_str(&throughput_plot(&report.results));
    page.push_str("</body></html>\n");
    page
}

fn summary_table(report: &Report) -> String {
    let mut out = String::from(
        "<table><tr><th>name</th><th>attempts</th><th>ok</th><th>rejected</th><th>errors</th>\
         <th>throughput /s</th><th>CPU us/op</th><th>p50 us</th><th>p90 us</th><th>p99 us</th>\
         <th>p99.9 us</th><th>latency from</th><th>oversold</th><th>seconds</th><th>check</th></tr>",
    );
    for row in &report.results {
        let class = if row.check_passed { "" } else { " class=\"bad\"" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}{}</td>\
             <td{class}>{}</td></tr>",
            escape(&row.name),
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
            escape(&row.latency_from),
            row.oversold,
            row.elapsed_s,
            if row.time_limited { " (time limit)" } else { "" },
            escape(&row.check)
        );
    }
    out.push_str(
        "</table><p>An operation is an answered attempt (acknowledged or refused for want of \
         stock). CPU us/op: CPU time (user + system) of the processes measured, per operation.</p><ul>",
    );
    for ratio in report.ratios.iter().filter(|r| r.name != r.baseline) {
        let _ = write!(out, "<li>{}</li>", escape(&ratio_line(ratio)));
    }
    out.push_str("</ul>");
    out
}

/// The open-loop rows: rate asked and achieved, dropped and late sends.
fn open_loop_table(rows: &[Summary]) -> String {
    if rows.iter().all(|row| row.open_loop.is_none()) {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Open loop</h2><table><tr><th>name</th><th>asked /s</th><th>sent /s</th><th>planned</th>\
         <th>sent</th><th>dropped/late</th><th>in flight max</th><th>sent late</th>\
         <th>worst send lag us</th><th>p50 us</th><th>p99 us</th><th>p99.9 us</th></tr>",
    );
    for row in rows {
        let Some(open) = &row.open_loop else { continue };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.name),
            open.rate_asked_per_s,
            open.rate_sent_per_s,
            open.planned,
            open.sent,
            open.dropped,
            open.in_flight_max,
            open.sent_late,
            open.send_lag_max_us,
            row.p50_us,
            row.p99_us,
            row.p999_us
        );
    }
    out.push_str(
        "</table><p>Latency counts from each attempt's planned send. Dropped/late: due while the \
         most attempts allowed were in flight, so not sent.</p>",
    );
    out
}

/// CPU time by row and process.
fn cpu_table(report: &Report) -> String {
    if report.results.iter().all(|row| row.cpu.is_empty()) {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Machine time per operation</h2><table><tr><th>name</th><th>process</th><th>CPU s</th>\
         <th>cores</th><th>CPU us/op</th></tr>",
    );
    for row in &report.results {
        for share in &row.cpu {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
                escape(&row.name),
                escape(&share.process),
                share.cpu_s,
                share.cores,
                optional(share.us_per_op, 1)
            );
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td><b>processes measured</b></td><td></td><td></td><td><b>{}</b></td></tr>",
            escape(&row.name),
            optional(row.cpu_us_per_op, 1)
        );
    }
    out.push_str("</table><ul>");
    for note in &report.notes {
        let _ = write!(out, "<li>{}</li>", escape(note));
    }
    out.push_str("</ul>");
    out
}

/// Maps data coordinates onto the plot area.
struct Frame {
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, value: f64) -> f64 {
        MARGIN_LEFT + value / self.x_max.max(f64::MIN_POSITIVE) * PLOT_WIDTH
    }

    fn y(&self, value: f64) -> f64 {
        let span = (self.y_max - self.y_min).max(f64::MIN_POSITIVE);
        MARGIN_TOP + PLOT_HEIGHT - (value - self.y_min) / span * PLOT_HEIGHT
    }
}

fn svg_open() -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-size=\"12\"><rect x=\"{MARGIN_LEFT}\" y=\"{MARGIN_TOP}\" \
         width=\"{PLOT_WIDTH}\" height=\"{PLOT_HEIGHT}\" fill=\"none\" stroke=\"#888\"/>",
        w = MARGIN_LEFT + PLOT_WIDTH + MARGIN_RIGHT,
        h = MARGIN_TOP + PLOT_HEIGHT + MARGIN_BOTTOM,
    )
}

fn polyline(points: &[(f64, f64)], colour: &str) -> String {
    let coordinates: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>", coordinates.join(" "))
}

fn legend(rows: &[Summary]) -> String {
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let y = MARGIN_TOP + 16.0 * index as f64 + 10.0;
        let x = MARGIN_LEFT + PLOT_WIDTH + 10.0;
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{y}\">{}</text>",
            y - 4.0,
            COLOURS[index % COLOURS.len()],
            x + 16.0,
            escape(&row.name)
        );
    }
    out
}

fn latency_plot(rows: &[Summary]) -> String {
    let values = rows.iter().flat_map(|row| row.latency_curve_us.iter().map(|(_, us)| *us));
    let top = values.max().unwrap_or(1).max(10) as f64;
    let frame = Frame { x_max: MAX_PERCENTILE_NINES, y_min: 0.0, y_max: top.log10().ceil() };
    let mut svg = svg_open();
    for (label, percentile) in
        [("0", 0.0), ("90", 90.0), ("99", 99.0), ("99.9", 99.9), ("99.99", 99.99), ("99.999", 99.999), ("max", 100.0)]
    {
        let x = frame.x(nines(percentile));
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            MARGIN_TOP + PLOT_HEIGHT + 16.0
        );
    }
    for decade in 0..=frame.y_max as u32 {
        let y = frame.y(f64::from(decade));
        let _ = write!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} us</text>",
            MARGIN_LEFT + PLOT_WIDTH,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            10u64.pow(decade)
        );
    }
    for (index, row) in rows.iter().enumerate() {
        let points: Vec<(f64, f64)> = row
            .latency_curve_us
            .iter()
            .map(|&(p, us)| (frame.x(nines(p)), frame.y((us.max(1) as f64).log10())))
            .collect();
        svg.push_str(&polyline(&points, COLOURS[index % COLOURS.len()]));
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>{}</svg>",
        MARGIN_LEFT + PLOT_WIDTH / 2.0,
        MARGIN_TOP + PLOT_HEIGHT + 34.0,
        legend(rows)
    );
    svg
}

fn throughput_plot(rows: &[Summary]) -> String {
    let interval_s = SAMPLE_INTERVAL.as_secs_f64();
    let longest = rows.iter().map(|row| row.throughput_timeline_per_s.len()).max().unwrap_or(0);
    let peak = rows.iter().flat_map(|row| row.throughput_timeline_per_s.iter().copied()).fold(1.0, f64::max);
    let frame = Frame { x_max: (longest as f64 * interval_s).max(interval_s), y_min: 0.0, y_max: peak * 1.05 };
    let mut svg = svg_open();
    for step in 0..=4 {
        let value = frame.y_max * f64::from(step) / 4.0;
        let y = frame.y(value);
        let _ = write!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{value:.0}</text>",
            MARGIN_LEFT + PLOT_WIDTH,
            MARGIN_LEFT - 6.0,
            y + 4.0
        );
    }
    for step in 0..=4 {
        let seconds = frame.x_max * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{seconds:.1} s</text>",
            frame.x(seconds),
            MARGIN_TOP + PLOT_HEIGHT + 16.0
        );
    }
    for (index, row) in rows.iter().enumerate() {
        let points: Vec<(f64, f64)> = row
            .throughput_timeline_per_s
            .iter()
            .enumerate()
            .map(|(i, &rate)| (frame.x((i + 1) as f64 * interval_s), frame.y(rate)))
            .collect();
        svg.push_str(&polyline(&points, COLOURS[index % COLOURS.len()]));
    }
    svg.push_str(&legend(rows));
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CpuShare, OpenLoopSummary, Report};

    fn row(name: &str) -> Summary {
        Summary {
            name: name.to_owned(),
            attempts: 10,
            ok: 5,
            rejected: 5,
            errors: 0,
            throughput_per_s: 100.0,
            p50_us: 10,
            p90_us: 20,
            p99_us: 30,
            p999_us: 40,
            max_us: 50,
            oversold: 0,
            elapsed_s: 0.1,
            time_limited: false,
            units_acknowledged: 5,
            units_taken: 5,
            order_rows: 5,
            check: "ok".into(),
            check_passed: true,
            error_kinds: vec![],
            latency_curve_us: vec![(0.0, 1), (50.0, 10), (99.0, 30), (100.0, 50)],
            throughput_timeline_per_s: vec![50.0, 100.0, 150.0],
            notes: vec![],
            latency_from: "send".into(),
            open_loop: None,
            cpu: vec![],
            cpu_us_per_op: None,
            cpu_us_per_ok: None,
            machine_cpu_us_per_op: None,
        }
    }

    #[test]
    fn open_loop_and_cpu_tables_appear_when_measured() {
        let closed = row("bare-actix");
        let mut open = row("tianji-flash-sale");
        open.open_loop = Some(OpenLoopSummary {
            rate_asked_per_s: 1_000.0,
            rate_sent_per_s: 990.0,
            planned: 10_000,
            sent: 9_900,
            dropped: 100,
            sent_late: 3,
            sent_late_after_us: 1_000,
            send_lag_max_us: 2_500,
            in_flight_max: 256,
        });
        open.cpu = vec![CpuShare {
            process: "server pid 7".into(),
            cpu_s: 1.5,
            cores: 0.75,
            us_per_op: Some(151.5),
            whole_machine: false,
        }];
        open.cpu_us_per_op = Some(151.5);
        let report = Report {
            command: "http flash-sale".into(),
            workload: "w".into(),
            results: vec![open, closed],
            ratios: vec![],
            started_at: "now".into(),
            notes: vec!["cpu: server pid 7 (--server-pid)".into()],
        };
        let page = render(&report);
        assert!(page.contains("<h2>Open loop</h2>") && page.contains("<td>990</td>"));
        assert!(page.contains("<h2>Machine time per operation</h2>") && page.contains("<td>151.5</td>"));
        assert!(page.contains("<li>cpu: server pid 7 (--server-pid)</li>"));
        let plain = render(&Report { results: vec![row("a")], notes: vec![], ..report });
        assert!(!plain.contains("Open loop") && !plain.contains("Machine time"));
    }

    #[test]
    fn nines_place_percentiles_on_a_log_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert_eq!(nines(100.0), MAX_PERCENTILE_NINES);
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = Report {
            command: "engines".into(),
            workload: "<1 sku>".into(),
            results: vec![row("tianji-actor"), row("a<b")],
            ratios: vec![],
            started_at: "now".into(),
            notes: vec![],
        };
        let page = render(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 2);
        assert_eq!(page.matches("<polyline").count(), 4);
        assert!(page.contains("a&lt;b") && page.contains("&lt;1 sku&gt;"));
        assert!(!page.contains("a<b"));
        for external in ["src=", "href=", "<script", "@import", "url("] {
            assert!(!page.contains(external), "external reference {external}");
        }
    }
}
