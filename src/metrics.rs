//! The node's Prometheus metrics: every metric's name, help text, labels and buckets, in one
//! place, and `Metrics`, the recorder of one app that its `GET /metrics` renders.
//!
//! Guarantees:
//! - One recorder per app (`Metrics`, built when the app is): its core, its HTTP layer and its
//!   event relay register into it and nothing else does, so two apps in one process (the tests
//!   start many) never count into each other's scrape. No global recorder is installed.
//! - Handles are created once by their owners (a registry per actor kind, the journal, the rate
//!   limiter, the snapshot publisher, ...) from the app's `Metrics` and kept in the owning
//!   struct; counting is then an atomic add on the handle, never a look-up by name. Only the
//!   constructors below touch the recorder's name-keyed registry. Values kept elsewhere (the
//!   event relay's) are read into their handles by a hook at each scrape.
//! - A handle is registered when its owner is built, so every metric an owner can move is in
//!   the scrape (at 0) before the first event; only the per-route request counters appear with
//!   their first request (their label set is open-ended).
//! - Histograms have fixed buckets (below); their raw samples are folded into the buckets at
//!   each scrape and every `UPKEEP_INTERVAL`, so memory stays bounded between scrapes.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::{Arc, Mutex};
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
pub const EVENTS_PUBLISHED: MetricDef = def(
    "tianji_events_published_total",
    MetricKind::Counter,
    &[],
    "Order events appended to the Redis stream by the event relay (an event published again counts again)",
);
pub const EVENTS_RELAY_FAILURES: MetricDef = def(
    "tianji_events_relay_failures_total",
    MetricKind::Counter,
    &[],
    "Event relay rounds (and prunes) that failed, on the database or Redis, and were retried",
);
pub const EVENTS_OLDEST_UNPUBLISHED: MetricDef = def(
    "tianji_events_oldest_unpublished_seconds",
    MetricKind::Gauge,
    &[],
    "Age of the oldest unpublished order event the relay's last round found, in seconds, when it found it (0 when none waited): how far the stream lags behind the commits",
);
pub const FORWARDED: MetricDef = def(
    "tianji_forwarded_requests_total",
    MetricKind::Counter,
    &["outcome"],
    "Requests of a cluster node for a key another node owns, by outcome: `answered` (forwarded, the owner's answer returned, whatever its status), `overloaded` (too many forwards in flight: 503), `unreachable` and `timeout` (the owner did not answer: 503 owner_unavailable), `not_owner` (not forwarded: the owner is unknown, or the request was forwarded here already: 503)",
);
pub const CLUSTER_RANGES_HELD: MetricDef = def(
    "tianji_cluster_ranges_held",
    MetricKind::Gauge,
    &[],
    "Range leases this cluster node holds now (locally valid); 0 on a single node, which owns every key",
);
pub const CLUSTER_RANGES_TAKEN: MetricDef = def(
    "tianji_cluster_ranges_taken_total",
    MetricKind::Counter,
    &[],
    "Range leases this node took (orphaned or expired ranges, each take a new epoch)",
);
pub const CLUSTER_RANGES_RELEASED: MetricDef = def(
    "tianji_cluster_ranges_released_total",
    MetricKind::Counter,
    &[],
    "Range leases this node gave up to balance the cluster (a node over its share, 4 a round at most)",
);
pub const CLUSTER_RANGES_LOST: MetricDef = def(
    "tianji_cluster_ranges_lost_total",
    MetricKind::Counter,
    &[],
    "Ranges this node stopped holding, released or not (expired before renewal, taken over, expelled); their actors were evicted",
);
pub const CLUSTER_ROUND_FAILURES: MetricDef = def(
    "tianji_cluster_round_failures_total",
    MetricKind::Counter,
    &[],
    "Membership rounds (heartbeat and lease renewal, then takes and releases) that failed on the database; leases not renewed in time stop being trusted",
);
pub const CLUSTER_FENCE_REFUSALS: MetricDef = def(
    "tianji_cluster_fence_refusals_total",
    MetricKind::Counter,
    &[],
    "Changes a commit refused (503 not_owner) because a range they touch is no longer held by this node at the epoch it took",
);
pub const REMOTE_CALLS: MetricDef = def(
    "tianji_remote_calls_total",
    MetricKind::Counter,
    &["call", "outcome"],
    "Calls of a cluster node to the node that owns a SKU or a coupon template, by call (`reserve`, `settle`, `issue`) and outcome: `ok` (committed there), `refused` (the owner refused: sold out, not the owner any more, ...), `overloaded` (too many calls in flight here: not sent, 503), `failed` (no answer in time, unreachable, unreadable, or the owner could not act or tell: perhaps done; the owner's repair pass, or the user's reload of its coupons, settles it)",
);
pub const LEASE_REPAIRS: MetricDef = def(
    "tianji_lease_repairs_total",
    MetricKind::Counter,
    &["outcome"],
    "Leases of this node's SKUs that disagreed with their orders and that the repair pass settled (`repaired`) or failed to settle (`failed`: the next pass tries again)",
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
    EVENTS_PUBLISHED,
    EVENTS_RELAY_FAILURES,
    EVENTS_OLDEST_UNPUBLISHED,
    FORWARDED,
    CLUSTER_RANGES_HELD,
    CLUSTER_RANGES_TAKEN,
    CLUSTER_RANGES_RELEASED,
    CLUSTER_RANGES_LOST,
    CLUSTER_ROUND_FAILURES,
    CLUSTER_FENCE_REFUSALS,
    REMOTE_CALLS,
    LEASE_REPAIRS,
    BUILD_INFO,
];

/// A scrape-time reading: moves handles to values kept elsewhere (e.g. the event relay's
/// counters), run before every render.
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    hooks: Mutex<Vec<ScrapeHook>>,
}

/// One app's metrics: its own recorder, which every handle of the app is registered in and
/// `GET /metrics` renders. Cloning shares the recorder.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A new recorder: buckets set, every metric described, `tianji_build_info` set, and a
    /// thread that folds histogram samples every `UPKEEP_INTERVAL` for as long as a clone of
    /// this value lives.
    pub fn new() -> Self {
        let recorder = build();
        let handle = recorder.handle();
        let metrics = Metrics { inner: Arc::new(Inner { recorder, handle, hooks: Mutex::new(Vec::new()) }) };
        metrics.gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        let weak = Arc::downgrade(&metrics.inner);
        let upkeep = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            match weak.upgrade() {
                Some(inner) => inner.handle.run_upkeep(),
                None => return,
            }
        });
        if let Err(error) = upkeep {
            tracing::warn!(%error, "metrics upkeep thread not started; histograms are folded at scrape only");
        }
        metrics
    }

    /// What `GET /metrics` answers: every metric of this app, in the text format, after the
    /// scrape hooks ran.
    pub fn render(&self) -> String {
        for hook in self.inner.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            hook();
        }
        self.inner.handle.render()
    }

    /// Runs `hook` before every render, for as long as this recorder lives (values that are
    /// kept elsewhere and read when scraped).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.inner.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::new(hook));
    }

    /// A counter handle of `metric` with `labels` (names in the order of its definition).
    pub fn counter(&self, metric: &MetricDef, labels: &[(&'static str, &str)]) -> Counter {
        assert_eq!(metric.kind, MetricKind::Counter, "{}", metric.name);
        self.inner.recorder.register_counter(&key(metric, labels), &metadata())
    }

    /// A gauge handle of `metric` with `labels`.
    pub fn gauge(&self, metric: &MetricDef, labels: &[(&'static str, &str)]) -> Gauge {
        assert_eq!(metric.kind, MetricKind::Gauge, "{}", metric.name);
        self.inner.recorder.register_gauge(&key(metric, labels), &metadata())
    }

    /// A histogram handle of `metric` with `labels`.
    pub fn histogram(&self, metric: &MetricDef, labels: &[(&'static str, &str)]) -> Histogram {
        assert_eq!(metric.kind, MetricKind::Histogram, "{}", metric.name);
        self.inner.recorder.register_histogram(&key(metric, labels), &metadata())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
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
    pub fn new(metrics: &Metrics, kind: ActorKind) -> Self {
        let labels = [("kind", kind.label())];
        ActorMetrics {
            activations: metrics.counter(&ACTIVATIONS, &labels),
            passivations: metrics.counter(&PASSIVATIONS, &labels),
            mailbox_rejections: metrics.counter(&MAILBOX_REJECTIONS, &labels),
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
    pub fn new(metrics: &Metrics) -> Self {
        Placements {
            by_outcome: PlacementOutcome::ALL
                .map(|outcome| metrics.counter(&PLACEMENTS, &[("outcome", outcome.label())])),
        }
    }

    pub fn record(&self, outcome: PlacementOutcome) {
        self.by_outcome[outcome as usize].increment(1);
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
    pub fn new(metrics: &Metrics) -> Self {
        JournalMetrics {
            batch_size: metrics.histogram(&JOURNAL_BATCH_SIZE, &[]),
            commit_seconds: metrics.histogram(&JOURNAL_COMMIT_SECONDS, &[]),
            queue_depth: metrics.gauge(&JOURNAL_QUEUE_DEPTH, &[]),
            rejections: metrics.counter(&JOURNAL_REJECTIONS, &[]),
        }
    }
}

/// The Redis snapshot publisher's handles.
#[derive(Debug, Clone)]
pub struct SnapshotMetrics {
    pub written: Counter,
    pub failures: Counter,
}

impl SnapshotMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        SnapshotMetrics {
            written: metrics.counter(&REDIS_SNAPSHOTS_WRITTEN, &[]),
            failures: metrics.counter(&REDIS_SNAPSHOT_FAILURES, &[]),
        }
    }

    /// Handles that count nothing (a publisher outside a server).
    pub fn noop() -> Self {
        SnapshotMetrics { written: Counter::noop(), failures: Counter::noop() }
    }
}

/// The learning write-behind's handles.
#[derive(Debug, Clone)]
pub struct LearningMetrics {
    pub heartbeats: Counter,
    pub rows_written: Counter,
}

impl LearningMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        LearningMetrics {
            heartbeats: metrics.counter(&HEARTBEATS, &[]),
            rows_written: metrics.counter(&LEARNING_ROWS_WRITTEN, &[]),
        }
    }
}

/// Handles that count nothing (a write-behind outside a core, e.g. in unit tests).
impl Default for LearningMetrics {
    fn default() -> Self {
        LearningMetrics { heartbeats: Counter::noop(), rows_written: Counter::noop() }
    }
}

/// The event relay's handles. The relay keeps its own counts (`actors::relay::RelayStats`);
/// they are read into these at each scrape (`Metrics::on_scrape`), so publishing moves no
/// handle. Registered on every node, with or without a relay, so the series exist (at 0).
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    pub published: Counter,
    pub failures: Counter,
    pub oldest_unpublished_seconds: Gauge,
}

impl RelayMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        RelayMetrics {
            published: metrics.counter(&EVENTS_PUBLISHED, &[]),
            failures: metrics.counter(&EVENTS_RELAY_FAILURES, &[]),
            oldest_unpublished_seconds: metrics.gauge(&EVENTS_OLDEST_UNPUBLISHED, &[]),
        }
    }

    /// Sets the handles to the relay's counts: events published and failed rounds since start,
    /// and the age of the oldest unpublished event its last round found (zero when none).
    pub fn read(&self, published: u64, failures: u64, oldest_unpublished: std::time::Duration) {
        self.published.absolute(published);
        self.failures.absolute(failures);
        self.oldest_unpublished_seconds.set(oldest_unpublished.as_secs_f64());
    }
}

/// How a request for a key another node owns ended on this node (`http::forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardOutcome {
    Answered,
    Overloaded,
    Unreachable,
    Timeout,
    NotOwner,
}

impl ForwardOutcome {
    pub const ALL: [ForwardOutcome; 5] = [
        ForwardOutcome::Answered,
        ForwardOutcome::Overloaded,
        ForwardOutcome::Unreachable,
        ForwardOutcome::Timeout,
        ForwardOutcome::NotOwner,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ForwardOutcome::Answered => "answered",
            ForwardOutcome::Overloaded => "overloaded",
            ForwardOutcome::Unreachable => "unreachable",
            ForwardOutcome::Timeout => "timeout",
            ForwardOutcome::NotOwner => "not_owner",
        }
    }
}

/// One counter per forwarding outcome, indexed by the outcome. Registered by cluster nodes
/// only: a single node forwards nothing.
#[derive(Debug, Clone)]
pub struct ForwardMetrics {
    by_outcome: [Counter; ForwardOutcome::ALL.len()],
}

impl ForwardMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        ForwardMetrics {
            by_outcome: ForwardOutcome::ALL.map(|outcome| metrics.counter(&FORWARDED, &[("outcome", outcome.label())])),
        }
    }

    pub fn record(&self, outcome: ForwardOutcome) {
        self.by_outcome[outcome as usize].increment(1);
    }
}

/// A cluster node's handles. Its membership loop and its fence count into `cluster::Counts`
/// (they run before the app's metrics exist); the counts are read into these at each scrape.
/// Registered on every node, so the series exist (at 0) on a single node too.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub ranges_held: Gauge,
    pub taken: Counter,
    pub released: Counter,
    pub lost: Counter,
    pub round_failures: Counter,
    pub fence_refusals: Counter,
}

impl ClusterMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        ClusterMetrics {
            ranges_held: metrics.gauge(&CLUSTER_RANGES_HELD, &[]),
            taken: metrics.counter(&CLUSTER_RANGES_TAKEN, &[]),
            released: metrics.counter(&CLUSTER_RANGES_RELEASED, &[]),
            lost: metrics.counter(&CLUSTER_RANGES_LOST, &[]),
            round_failures: metrics.counter(&CLUSTER_ROUND_FAILURES, &[]),
            fence_refusals: metrics.counter(&CLUSTER_FENCE_REFUSALS, &[]),
        }
    }

    /// Sets the handles to the ranges held now and the counts since start.
    pub fn read(&self, ranges_held: usize, counts: &crate::cluster::CountsRead) {
        self.ranges_held.set(ranges_held as f64);
        self.taken.absolute(counts.taken);
        self.released.absolute(counts.released);
        self.lost.absolute(counts.lost);
        self.round_failures.absolute(counts.round_failures);
        self.fence_refusals.absolute(counts.fence_refusals);
    }
}

/// A call to the owner of another node's key (`cluster::remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCall {
    Reserve,
    Settle,
    Issue,
}

/// How a call to another node's key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteOutcome {
    Ok,
    Refused,
    Overloaded,
    Failed,
}

impl RemoteCall {
    pub const ALL: [RemoteCall; 3] = [RemoteCall::Reserve, RemoteCall::Settle, RemoteCall::Issue];

    pub fn label(self) -> &'static str {
        match self {
            RemoteCall::Reserve => "reserve",
            RemoteCall::Settle => "settle",
            RemoteCall::Issue => "issue",
        }
    }
}

impl RemoteOutcome {
    pub const ALL: [RemoteOutcome; 4] =
        [RemoteOutcome::Ok, RemoteOutcome::Refused, RemoteOutcome::Overloaded, RemoteOutcome::Failed];

    pub fn label(self) -> &'static str {
        match self {
            RemoteOutcome::Ok => "ok",
            RemoteOutcome::Refused => "refused",
            RemoteOutcome::Overloaded => "overloaded",
            RemoteOutcome::Failed => "failed",
        }
    }
}

/// One counter per call and outcome, indexed by both. Registered by cluster nodes only: a
/// single node calls no other.
#[derive(Debug, Clone)]
pub struct RemoteMetrics {
    by_call: [[Counter; RemoteOutcome::ALL.len()]; RemoteCall::ALL.len()],
}

impl RemoteMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        RemoteMetrics {
            by_call: RemoteCall::ALL.map(|call| {
                RemoteOutcome::ALL.map(|outcome| {
                    metrics.counter(&REMOTE_CALLS, &[("call", call.label()), ("outcome", outcome.label())])
                })
            }),
        }
    }

    pub fn record(&self, call: RemoteCall, outcome: RemoteOutcome) {
        self.by_call[call as usize][outcome as usize].increment(1);
    }
}

/// The repair pass's handles (`actors::repair`, cluster nodes; a single node settles such
/// leases in its recovery at start). Registered on every node, so the series exist at 0.
#[derive(Debug, Clone)]
pub struct RepairMetrics {
    pub repaired: Counter,
    pub failed: Counter,
}

impl RepairMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        RepairMetrics {
            repaired: metrics.counter(&LEASE_REPAIRS, &[("outcome", "repaired")]),
            failed: metrics.counter(&LEASE_REPAIRS, &[("outcome", "failed")]),
        }
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
    pub fn new(metrics: &Metrics, class: &'static str) -> Self {
        RateLimitMetrics {
            rate_limited: metrics.counter(&RATE_LIMITED, &[("class", class), ("reason", "rate_limited")]),
            keys_full: metrics.counter(&RATE_LIMITED, &[("class", class), ("reason", "keys_full")]),
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
        for (index, outcome) in ForwardOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "ALL is in declaration order: `record` indexes by it");
        }
        for (index, call) in RemoteCall::ALL.iter().enumerate() {
            assert_eq!(*call as usize, index, "ALL is in declaration order: `record` indexes by it");
        }
        for (index, outcome) in RemoteOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "ALL is in declaration order: `record` indexes by it");
        }
        for (index, outcome) in PlacementOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "ALL is in declaration order: `record` indexes by it");
        }
        assert!(BATCH_SIZE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMIT_SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn handles_move_what_render_shows_with_help_and_buckets() {
        let metrics = Metrics::new();
        let placements = Placements::new(&metrics);
        let series = "tianji_placements_total{outcome=\"sale_ended\"}";
        assert_eq!(sample(&metrics.render(), series), Some("0"), "registered before the first event");
        placements.record(PlacementOutcome::SaleEnded);
        placements.record(PlacementOutcome::SaleEnded);
        let text = metrics.render();
        assert_eq!(sample(&text, series), Some("2"));
        assert!(text.contains("# HELP tianji_placements_total Order placements"));
        let journal = JournalMetrics::new(&metrics);
        journal.batch_size.record(3.0);
        let text = metrics.render();
        assert!(text.contains("# TYPE tianji_journal_batch_size histogram"), "{text}");
        assert_eq!(sample(&text, "tianji_journal_batch_size_bucket{le=\"2\"}"), Some("0"), "{text}");
        assert_eq!(sample(&text, "tianji_journal_batch_size_bucket{le=\"4\"}"), Some("1"), "{text}");
        assert_eq!(sample(&text, "tianji_journal_commit_seconds_bucket{le=\"0.0005\"}"), Some("0"), "{text}");
        let build_info = format!("tianji_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &build_info), Some("1"));
    }

    #[test]
    fn each_recorder_counts_only_its_own_handles() {
        let (one, other) = (Metrics::new(), Metrics::new());
        let series = "tianji_placements_total{outcome=\"created\"}";
        Placements::new(&one).record(PlacementOutcome::Created);
        let _registered = Placements::new(&other);
        assert_eq!(sample(&one.render(), series), Some("1"));
        assert_eq!(sample(&other.render(), series), Some("0"));
    }

    #[test]
    fn scrape_hooks_run_before_each_render() {
        let metrics = Metrics::new();
        let published = metrics.counter(&EVENTS_PUBLISHED, &[]);
        let kept = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let read = Arc::clone(&kept);
        metrics.on_scrape(move || published.absolute(read.load(std::sync::atomic::Ordering::Relaxed)));
        kept.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sample(&metrics.render(), "tianji_events_published_total"), Some("7"));
        kept.store(9, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sample(&metrics.render(), "tianji_events_published_total"), Some("9"));
    }
}
