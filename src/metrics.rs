//! The node's Prometheus metrics: every metric's name, help text, labels and buckets, in one
//! place, and the one recorder of the process that `GET /metrics` renders.
//!
//! Guarantees:
//! - One recorder per process (`recorder`, built once): every app started in the process (the
//!   tests start many) registers into it and serves the same text.
//! - Handles are created once by their owners (a registry per actor kind, the journal, the rate
//!   limiter, the snapshot publisher, ...) and kept in the owning struct; counting is then an
//!   atomic add on the handle, never a look-up by name. Only the constructors below touch the
//!   recorder's name-keyed registry.
//! - A handle is registered when its owner is built, so every metric an owner can move is in
//!   the scrape (at 0) before the first event; only the per-route request counters appear with
//!   their first request (their label set is open-ended).
//! - Histograms have fixed buckets (below); their raw samples are folded into the buckets at
//!   each scrape and every `UPKEEP_INTERVAL`, so memory stays bounded between scrapes.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::sync::OnceLock;
use std::time::Duration;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds of the journal batch-size buckets, in changes (the batch limit is at most
/// 10,000; 1,024 by default).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 10_000.0];

/// Upper bounds of the journal commit-latency buckets, in seconds (the database timeout is 1 s
/// by default).
pub const COMMIT_SECONDS_BUCKETS: &[f64] =
    &[0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the node: its name, kind, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> MetricDef {
    MetricDef { name, kind, labels, help }
}

pub const HTTP_REQUESTS: MetricDef = def(
    "tianji_http_requests_total",
    MetricKind::Counter,
    &["method", "route", "status"],
    "HTTP requests answered, by method, route pattern (`unmatched` for no route) and status code (or class, e.g. `5xx`, for a code the API does not use)",
);
pub const PLACEMENTS: MetricDef = def(
    "tianji_placements_total",
    MetricKind::Counter,
    &["outcome"],
    "Order placements that reached the user actor, by outcome (`created`, `replayed`, or the error code)",
);
pub const MAILBOX_REJECTIONS: MetricDef = def(
    "tianji_mailbox_rejections_total",
    MetricKind::Counter,
    &["kind"],
    "Messages refused because the actor's mailbox was full (answered 503 overloaded), by actor kind",
);
pub const ACTIVATIONS: MetricDef = def(
    "tianji_actor_activations_total",
    MetricKind::Counter,
    &["kind"],
    "Actors activated (state read and actor started), by actor kind",
);
pub const PASSIVATIONS: MetricDef = def(
    "tianji_actor_passivations_total",
    MetricKind::Counter,
    &["kind"],
    "Actors stopped (idle, stale or fenced), by actor kind",
);
pub const JOURNAL_BATCH_SIZE: MetricDef =
    def("tianji_journal_batch_size", MetricKind::Histogram, &[], "Changes per transaction of the write pipeline");
pub const JOURNAL_COMMIT_SECONDS: MetricDef = def(
    "tianji_journal_commit_seconds",
    MetricKind::Histogram,
    &[],
    "Time to commit one batch of the write pipeline, in seconds (failed and timed-out commits included)",
);
pub const JOURNAL_QUEUE_DEPTH: MetricDef = def(
    "tianji_journal_queue_depth",
    MetricKind::Gauge,
    &[],
    "Changes waiting for the next batch of the write pipeline, as of the last batch closed",
);
pub const JOURNAL_REJECTIONS: MetricDef = def(
    "tianji_journal_rejections_total",
    MetricKind::Counter,
    &[],
    "Changes refused because the write pipeline's queue was full (answered 503 overloaded)",
);
pub const REDIS_SNAPSHOTS_WRITTEN: MetricDef =
    def("tianji_redis_snapshots_written_total", MetricKind::Counter, &[], "SKU snapshots written to Redis");
pub const REDIS_SNAPSHOT_FAILURES: MetricDef = def(
    "tianji_redis_snapshot_failures_total",
    MetricKind::Counter,
    &[],
    "Failed Redis round trips of the snapshot publisher (writes, connects and probes)",
);
pub const HEARTBEATS: MetricDef = def(
    "tianji_learning_heartbeats_total",
    MetricKind::Counter,
    &[],
    "Learning heartbeats accepted (merged in memory)",
);
pub const LEARNING_ROWS_WRITTEN: MetricDef = def(
    "tianji_learning_rows_written_total",
    MetricKind::Counter,
    &[],
    "Learning progress rows written to the database (heartbeats / rows = write amplification)",
);
pub const RATE_LIMITED: MetricDef = def(
    "tianji_rate_limited_total",
    MetricKind::Counter,
    &["class", "reason"],
    "Requests refused by the per-user rate limits, by route class and reason (`rate_limited`: 429; `keys_full`: 503, too many users tracked)",
);
pub const IN_FLIGHT_REFUSED: MetricDef = def(
    "tianji_in_flight_refused_total",
    MetricKind::Counter,
    &[],
    "Requests refused with 503 overloaded because the node was at its cap of requests in flight",
);
pub const BUILD_INFO: MetricDef =
    def("tianji_build_info", MetricKind::Gauge, &["version"], "Always 1; the version of the running binary");

/// Every metric of the node.
pub const ALL: &[MetricDef] = &[
    HTTP_REQUESTS,
    PLACEMENTS,
    MAILBOX_REJECTIONS,
    ACTIVATIONS,
    PASSIVATIONS,
    JOURNAL_BATCH_SIZE,
    JOURNAL_COMMIT_SECONDS,
    JOURNAL_QUEUE_DEPTH,
    JOURNAL_REJECTIONS,
    REDIS_SNAPSHOTS_WRITTEN,
    REDIS_SNAPSHOT_FAILURES,
    HEARTBEATS,
    LEARNING_ROWS_WRITTEN,
    RATE_LIMITED,
    IN_FLIGHT_REFUSED,
    BUILD_INFO,
];

static RECORDER: OnceLock<PrometheusRecorder> = OnceLock::new();

/// The process's recorder, built on first use: buckets set, every metric described, the
/// upkeep thread started, and installed as the global `metrics` recorder when none is (so
/// `metrics::counter!` elsewhere lands in the same scrape).
fn recorder() -> &'static PrometheusRecorder {
    if let Some(recorder) = RECORDER.get() {
        return recorder;
    }
    let recorder = RECORDER.get_or_init(build);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another global metrics recorder is installed; /metrics shows tianji's own metrics only");
        }
        let handle = recorder.handle();
        let upkeep = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
        if let Err(error) = upkeep {
            tracing::warn!(%error, "metrics upkeep thread not started; histograms are folded at scrape only");
        }
        gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
    });
    recorder
}

fn build() -> PrometheusRecorder {
    let buckets = [(&JOURNAL_BATCH_SIZE, BATCH_SIZE_BUCKETS), (&JOURNAL_COMMIT_SECONDS, COMMIT_SECONDS_BUCKETS)];
    let mut builder = PrometheusBuilder::new();
    for (metric, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), bounds)
            .expect("the bucket lists above are not empty");
    }
    let recorder = builder.build_recorder();
    for metric in ALL {
        let (name, help) = (KeyName::from_const_str(metric.name), SharedString::const_str(metric.help));
        let unit = metric.name.ends_with("_seconds").then_some(Unit::Seconds);
        match metric.kind {
            MetricKind::Counter => recorder.describe_counter(name, unit, help),
            MetricKind::Gauge => recorder.describe_gauge(name, unit, help),
            MetricKind::Histogram => recorder.describe_histogram(name, unit, help),
        }
    }
    recorder
}

/// What `GET /metrics` answers: every metric of the process, in the text format.
pub fn render() -> String {
    recorder().handle().render()
}

fn key(metric: &MetricDef, labels: &[(&'static str, &str)]) -> Key {
    debug_assert_eq!(
        labels.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        metric.labels,
        "{}: labels as defined",
        metric.name
    );
    let labels: Vec<Label> = labels.iter().map(|(name, value)| Label::new(*name, (*value).to_owned())).collect();
    Key::from_parts(metric.name, labels)
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

/// A counter handle of `metric` with `labels` (names in the order of its definition).
pub fn counter(metric: &MetricDef, labels: &[(&'static str, &str)]) -> Counter {
    assert_eq!(metric.kind, MetricKind::Counter, "{}", metric.name);
    recorder().register_counter(&key(metric, labels), &metadata())
}

/// A gauge handle of `metric` with `labels`.
pub fn gauge(metric: &MetricDef, labels: &[(&'static str, &str)]) -> Gauge {
    assert_eq!(metric.kind, MetricKind::Gauge, "{}", metric.name);
    recorder().register_gauge(&key(metric, labels), &metadata())
}

/// A histogram handle of `metric` with `labels`.
pub fn histogram(metric: &MetricDef, labels: &[(&'static str, &str)]) -> Histogram {
    assert_eq!(metric.kind, MetricKind::Histogram, "{}", metric.name);
    recorder().register_histogram(&key(metric, labels), &metadata())
}

/// The kinds of actor the registries hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Sku,
    User,
    Template,
    Order,
}

impl ActorKind {
    pub fn label(self) -> &'static str {
        match self {
            ActorKind::Sku => "sku",
            ActorKind::User => "user",
            ActorKind::Template => "template",
            ActorKind::Order => "order",
        }
    }
}

/// What one actor kind's registry counts.
#[derive(Debug, Clone)]
pub struct ActorMetrics {
    pub activations: Counter,
    pub passivations: Counter,
    pub mailbox_rejections: Counter,
}

impl ActorMetrics {
    pub fn new(kind: ActorKind) -> Self {
        let labels = [("kind", kind.label())];
        ActorMetrics {
            activations: counter(&ACTIVATIONS, &labels),
            passivations: counter(&PASSIVATIONS, &labels),
            mailbox_rejections: counter(&MAILBOX_REJECTIONS, &labels),
        }
    }
}

/// How a placement that reached the user actor ended: `created`, `replayed`, or the error code
/// its answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementOutcome {
    Created,
    Replayed,
    SkuNotFound,
    InsufficientStock,
    SaleNotStarted,
    SaleEnded,
    PurchaseLimitReached,
    CouponUnavailable,
    CouponMinSpendNotMet,
    IdempotencyKeyReused,
    Invalid,
    Overloaded,
    Unavailable,
    Uncertain,
}

impl PlacementOutcome {
    pub const ALL: [PlacementOutcome; 14] = [
        PlacementOutcome::Created,
        PlacementOutcome::Replayed,
        PlacementOutcome::SkuNotFound,
        PlacementOutcome::InsufficientStock,
        PlacementOutcome::SaleNotStarted,
        PlacementOutcome::SaleEnded,
        PlacementOutcome::PurchaseLimitReached,
        PlacementOutcome::CouponUnavailable,
        PlacementOutcome::CouponMinSpendNotMet,
        PlacementOutcome::IdempotencyKeyReused,
        PlacementOutcome::Invalid,
        PlacementOutcome::Overloaded,
        PlacementOutcome::Unavailable,
        PlacementOutcome::Uncertain,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PlacementOutcome::Created => "created",
            PlacementOutcome::Replayed => "replayed",
            PlacementOutcome::SkuNotFound => "sku_not_found",
            PlacementOutcome::InsufficientStock => "insufficient_stock",
            PlacementOutcome::SaleNotStarted => "sale_not_started",
            PlacementOutcome::SaleEnded => "sale_ended",
            PlacementOutcome::PurchaseLimitReached => "purchase_limit_reached",
            PlacementOutcome::CouponUnavailable => "coupon_unavailable",
            PlacementOutcome::CouponMinSpendNotMet => "coupon_min_spend_not_met",
            PlacementOutcome::IdempotencyKeyReused => "idempotency_key_reused",
            PlacementOutcome::Invalid => "invalid",
            PlacementOutcome::Overloaded => "overloaded",
            PlacementOutcome::Unavailable => "unavailable",
            PlacementOutcome::Uncertain => "uncertain",
        }
    }
}

/// One counter per placement outcome, indexed by the outcome (no look-up per placement).
#[derive(Debug, Clone)]
pub struct Placements {
    by_outcome: [Counter; PlacementOutcome::ALL.len()],
}

impl Placements {
    pub fn new() -> Self {
        Placements {
            by_outcome: PlacementOutcome::ALL.map(|outcome| counter(&PLACEMENTS, &[("outcome", outcome.label())])),
        }
    }

    pub fn record(&self, outcome: PlacementOutcome) {
        self.by_outcome[outcome as usize].increment(1);
    }
}

impl Default for Placements {
    fn default() -> Self {
        Placements::new()
    }
}

/// The write pipeline's handles.
#[derive(Debug, Clone)]
pub struct JournalMetrics {
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub queue_depth: Gauge,
    pub rejections: Counter,
}

impl JournalMetrics {
    pub fn new() -> Self {
        JournalMetrics {
            batch_size: histogram(&JOURNAL_BATCH_SIZE, &[]),
            commit_seconds: histogram(&JOURNAL_COMMIT_SECONDS, &[]),
            queue_depth: gauge(&JOURNAL_QUEUE_DEPTH, &[]),
            rejections: counter(&JOURNAL_REJECTIONS, &[]),
        }
    }
}

impl Default for JournalMetrics {
    fn default() -> Self {
        JournalMetrics::new()
    }
}

/// The Redis snapshot publisher's handles.
#[derive(Debug, Clone)]
pub struct SnapshotMetrics {
    pub written: Counter,
    pub failures: Counter,
}

impl SnapshotMetrics {
    pub fn new() -> Self {
        SnapshotMetrics {
            written: counter(&REDIS_SNAPSHOTS_WRITTEN, &[]),
            failures: counter(&REDIS_SNAPSHOT_FAILURES, &[]),
        }
    }
}

impl Default for SnapshotMetrics {
    fn default() -> Self {
        SnapshotMetrics::new()
    }
}

/// The learning write-behind's handles.
#[derive(Debug, Clone)]
pub struct LearningMetrics {
    pub heartbeats: Counter,
    pub rows_written: Counter,
}

impl LearningMetrics {
    pub fn new() -> Self {
        LearningMetrics { heartbeats: counter(&HEARTBEATS, &[]), rows_written: counter(&LEARNING_ROWS_WRITTEN, &[]) }
    }
}

impl Default for LearningMetrics {
    fn default() -> Self {
        LearningMetrics::new()
    }
}

/// The handles of one rate-limited route class.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    /// 429: the user is over the rate.
    pub rate_limited: Counter,
    /// 503: the class tracks as many users as it may.
    pub keys_full: Counter,
}

impl RateLimitMetrics {
    pub fn new(class: &'static str) -> Self {
        RateLimitMetrics {
            rate_limited: counter(&RATE_LIMITED, &[("class", class), ("reason", "rate_limited")]),
            keys_full: counter(&RATE_LIMITED, &[("class", class), ("reason", "keys_full")]),
        }
    }

    /// Handles that count nothing (buckets built outside a server, e.g. in unit tests).
    pub fn noop() -> Self {
        RateLimitMetrics { rate_limited: Counter::noop(), keys_full: Counter::noop() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn names_are_unique_prefixed_and_carry_their_unit() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "no name twice");
        for metric in ALL {
            assert!(metric.name.starts_with("tianji_"), "{}", metric.name);
            assert_eq!(metric.kind == MetricKind::Counter, metric.name.ends_with("_total"), "{}", metric.name);
            assert!(!metric.help.is_empty());
        }
        for (index, outcome) in PlacementOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "ALL is in declaration order: `record` indexes by it");
        }
        assert!(BATCH_SIZE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMIT_SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn handles_move_what_render_shows_with_help_and_buckets() {
        let placements = Placements::new();
        let series = "tianji_placements_total{outcome=\"sale_ended\"}";
        let before: u64 = sample(&render(), series).expect("registered before the first event").parse().unwrap();
        placements.record(PlacementOutcome::SaleEnded);
        placements.record(PlacementOutcome::SaleEnded);
        let text = render();
        let after: u64 = sample(&text, series).unwrap().parse().unwrap();
        // Other tests of this process may place with this outcome too, never fewer.
        assert!(after >= before + 2, "{before} -> {after}");
        assert!(text.contains("# HELP tianji_placements_total Order placements"));
        let journal = JournalMetrics::new();
        journal.batch_size.record(3.0);
        let text = render();
        assert!(text.contains("# TYPE tianji_journal_batch_size histogram"), "{text}");
        assert!(sample(&text, "tianji_journal_batch_size_bucket{le=\"4\"}").is_some(), "{text}");
        assert!(sample(&text, "tianji_journal_commit_seconds_bucket{le=\"0.0005\"}").is_some(), "{text}");
        let build_info = format!("tianji_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &build_info), Some("1"));
    }
}
