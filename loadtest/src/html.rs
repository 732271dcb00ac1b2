//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! assets) with the summary table, a latency-by-percentile plot (log-log, HdrHistogram style)
//! and completed attempts per second over time, one line per engine or scenario.

use crate::driver::SAMPLE_INTERVAL;
use crate::report::{Report, Summary};
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
         <th>throughput /s</th><th>p50 us</th><th>p90 us</th><th>p99 us</th><th>p99.9 us</th>\
         <th>oversold</th><th>seconds</th><th>check</th></tr>",
    );
    for row in &report.results {
        let class = if row.check_passed { "" } else { " class=\"bad\"" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}{}</td><td{class}>{}</td></tr>",
            escape(&row.name),
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
            if row.time_limited { " (time limit)" } else { "" },
            escape(&row.check)
        );
    }
    out.push_str("</table><ul>");
    for ratio in report.ratios.iter().filter(|r| r.name != r.baseline) {
        let _ = write!(
            out,
            "<li>{} / {}: throughput x{:.3}, p50 x{:.2}, p99 x{:.2}</li>",
            escape(&ratio.name),
            escape(&ratio.baseline),
            ratio.throughput,
            ratio.p50,
            ratio.p99
        );
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
    use crate::report::Report;

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
        }
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
