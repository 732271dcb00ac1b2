//! The driver every engine and scenario runs under, closed loop by default: `concurrency`
//! tasks take tickets from one counter until `attempts` are taken or the time limit passes,
//! each attempt timed on its own and recorded in the task's own histogram (merged at the end,
//! so recording never contends). Open loop (`Arrival::Open`, in `open_loop`): attempts are sent
//! at planned instants whatever the answers do, and timed from those instants. A sampler thread
//! counts completed attempts every 100 ms, for the throughput-over-time plot and the progress
//! bar.
//!
//! The driver knows nothing about what an attempt does: it hands out (SKU index, quantity) and
//! counts what comes back, per SKU, so the end state can be checked against what was
//! acknowledged.

mod open_loop;

pub use open_loop::{OpenLoopStats, SEND_LATE_AFTER};

use crate::workload::{Arrival, KeyPicker, Workload};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latencies are recorded in microseconds up to this bound (longer ones saturate).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant digits the latency histogram keeps.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How often completed attempts are sampled for the throughput plot.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a client waits after an error before its next attempt, as a client honouring
/// Retry-After would: an error answered at once (a full mailbox) must not turn into a spin
/// that counts thousands of errors a millisecond.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Distinct error messages kept per run (the rest are counted under "other").
pub const ERROR_KINDS_MAX: usize = 16;

/// One attempt as handed to the system under test.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Unique within the run, 0-based.
    pub seq: u64,
    pub sku_index: usize,
    pub quantity: u32,
}

/// What the system under test answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: `units` were taken for one new order.
    Ok { units: u32 },
    /// Refused for want of stock: nothing taken.
    Rejected,
    /// Anything else (overload, unavailable, unexpected answer): counted, never retried.
    Error(String),
}

/// Everything measured in one run of the driver.
pub struct Measurement {
    pub name: String,
    pub attempts: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub time_limited: bool,
    pub latency_us: Histogram<u64>,
    /// Completed attempts at each `SAMPLE_INTERVAL` tick (cumulative).
    pub completed_samples: Vec<u64>,
    /// Acknowledged units and orders per SKU index.
    pub acked_units: Vec<u64>,
    pub acked_orders: Vec<u64>,
    pub error_kinds: BTreeMap<String, u64>,
    /// How the arrivals went, for an open-loop run.
    pub open_loop: Option<OpenLoopStats>,
}

impl Measurement {
    pub fn acked_units_total(&self) -> u64 {
        self.acked_units.iter().sum()
    }
}

/// Counters shared by all tasks of one run.
struct Shared {
    tickets: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    /// Open loop: attempts not sent because the in-flight bound was reached.
    dropped: AtomicU64,
    acked_units: Vec<AtomicU64>,
    acked_orders: Vec<AtomicU64>,
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn new(sku_count: usize) -> Self {
        Shared {
            tickets: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            acked_units: (0..sku_count).map(|_| AtomicU64::new(0)).collect(),
            acked_orders: (0..sku_count).map(|_| AtomicU64::new(0)).collect(),
            error_kinds: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, attempt: &Attempt, outcome: Outcome) {
        match outcome {
            Outcome::Ok { units } => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.acked_units[attempt.sku_index].fetch_add(u64::from(units), Ordering::Relaxed);
                self.acked_orders[attempt.sku_index].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Rejected => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Error(message) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut kinds = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
                let key = if kinds.len() < ERROR_KINDS_MAX || kinds.contains_key(&message) {
                    message
                } else {
                    "other".to_owned()
                };
                *kinds.entry(key).or_default() += 1;
            }
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 <= low, high >= 2 * low, digits <= 5): cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Runs `attempt` under `workload` and measures it. Tasks are spawned on the current Tokio
/// runtime; a panicking task is reported as an error of the run.
pub async fn drive<F, Fut>(name: &str, workload: &Workload, attempt: F) -> anyhow::Result<Measurement>
where
    F: Fn(Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let shared = Arc::new(Shared::new(workload.sku_count));
    let attempt = Arc::new(attempt);
    let picker = Arc::new(KeyPicker::new(workload));
    let sampler = Sampler::start(name, workload.attempts, Arc::clone(&shared));
    let started = Instant::now();
    let driven = match workload.arrival {
        Arrival::Closed => closed_loop(workload, &shared, attempt, picker, started).await.map(|h| (h, None)),
        Arrival::Open { rate_per_s } => {
            let plan = open_loop::Plan { rate_per_s, planned: workload.attempts, in_flight_max: workload.concurrency };
            open_loop::run(plan, Arc::clone(&shared), attempt, picker, started).await.map(|(h, s)| (h, Some(s)))
        }
    };
    let elapsed = started.elapsed();
    let completed_samples = sampler.stop();
    let (latency_us, open_loop) = driven.map_err(|error| anyhow::anyhow!("{name}: {error:#}"))?;
    let mut measurement = collect(name, workload, &shared, latency_us, elapsed, completed_samples);
    if let Some(stats) = &open_loop {
        // Every planned attempt was sent or dropped; dropping is not a time limit.
        assert_eq!(stats.sent + stats.dropped, stats.planned, "open loop lost track of an attempt");
        assert_eq!(measurement.attempts, stats.sent, "an open-loop attempt was not counted");
        measurement.time_limited = false;
    }
    measurement.open_loop = open_loop;
    Ok(measurement)
}

/// `concurrency` clients, each sending its next attempt when its last one was answered.
async fn closed_loop<F, Fut>(
    workload: &Workload,
    shared: &Arc<Shared>,
    attempt: Arc<F>,
    picker: Arc<KeyPicker>,
    started: Instant,
) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let deadline = started + workload.time_limit;
    let tasks: Vec<_> = (0..workload.concurrency)
        .map(|_| {
            let (shared, attempt, picker) = (shared.clone(), attempt.clone(), picker.clone());
            let attempts = workload.attempts;
            tokio::spawn(async move { client_loop(&shared, &*attempt, &picker, attempts, deadline).await })
        })
        .collect();
    let mut latency_us = new_histogram();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(histogram) => latency_us.add(&histogram)?,
            Err(error) => failure = Some(error),
        }
    }
    match failure {
        Some(error) => anyhow::bail!("a client task failed: {error}"),
        None => Ok(latency_us),
    }
}

async fn client_loop<F, Fut>(
    shared: &Shared,
    attempt: &F,
    picker: &KeyPicker,
    attempts: u64,
    deadline: Instant,
) -> Histogram<u64>
where
    F: Fn(Attempt) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut histogram = new_histogram();
    let mut rng = StdRng::from_entropy();
    while Instant::now() < deadline {
        let seq = shared.tickets.fetch_add(1, Ordering::Relaxed);
        if seq >= attempts {
            break;
        }
        let one = Attempt { seq, sku_index: picker.sku_index(&mut rng), quantity: picker.quantity(&mut rng) };
        let sent = Instant::now();
        let outcome = attempt(one).await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(1));
        let failed = matches!(outcome, Outcome::Error(_));
        shared.count(&one, outcome);
        if failed {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    histogram
}

fn collect(
    name: &str,
    workload: &Workload,
    shared: &Shared,
    latency_us: Histogram<u64>,
    elapsed: Duration,
    completed_samples: Vec<u64>,
) -> Measurement {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let attempts = load(&shared.completed);
    Measurement {
        name: name.to_owned(),
        attempts,
        ok: load(&shared.ok),
        rejected: load(&shared.rejected),
        errors: load(&shared.errors),
        elapsed,
        time_limited: attempts < workload.attempts,
        latency_us,
        completed_samples,
        acked_units: shared.acked_units.iter().map(load).collect(),
        acked_orders: shared.acked_orders.iter().map(load).collect(),
        error_kinds: shared.error_kinds.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        open_loop: None,
    }
}

/// A thread that samples the completed counter every `SAMPLE_INTERVAL` and draws the
/// progress bar. A thread rather than a task, so a busy runtime cannot delay the samples. It
/// ends when stopped, or when the run holding it is dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl Sampler {
    fn start(name: &str, attempts: u64, shared: Arc<Shared>) -> Self {
        let progress = ProgressBar::new(attempts);
        // A constant, well-formed template: cannot fail.
        let style =
            ProgressStyle::with_template("{prefix:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}) {msg}")
                .expect("constant progress template is valid");
        progress.set_style(style);
        progress.set_prefix(name.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let started = Instant::now();
            let mut next = started + SAMPLE_INTERVAL;
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += SAMPLE_INTERVAL;
                let completed = shared.completed.load(Ordering::Relaxed);
                samples.push(completed);
                progress.set_position(completed + shared.dropped.load(Ordering::Relaxed));
                progress.set_message(format!(
                    "ok {} rejected {} errors {} dropped {}",
                    shared.ok.load(Ordering::Relaxed),
                    shared.rejected.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                    shared.dropped.load(Ordering::Relaxed)
                ));
            }
            progress.finish_and_clear();
            samples
        });
        Sampler { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        // Taken once, here; Drop only sets the flag.
        let thread = self.thread.take().expect("a sampler is stopped once");
        // The sampler only sleeps and reads atomics; a panic there is a bug worth surfacing.
        thread.join().expect("sampler thread panicked")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::KeyDistribution;

    fn workload(attempts: u64, sku_count: usize, time_limit: Duration) -> Workload {
        Workload::parse(sku_count, 5, attempts, 8, 2, KeyDistribution::Uniform, time_limit).expect("valid workload")
    }

    #[tokio::test]
    async fn counts_every_outcome_once_per_sku() {
        let measured = drive("test", &workload(1_000, 3, Duration::from_secs(10)), |a| async move {
            match a.seq % 3 {
                0 => Outcome::Ok { units: a.quantity },
                1 => Outcome::Rejected,
                _ => Outcome::Error("boom".into()),
            }
        })
        .await
        .expect("run");
        assert_eq!(measured.attempts, 1_000);
        assert_eq!((measured.ok, measured.rejected, measured.errors), (334, 333, 333));
        assert_eq!(measured.acked_orders.iter().sum::<u64>(), 334);
        assert!((334..=668).contains(&measured.acked_units_total()));
        assert_eq!(measured.error_kinds.get("boom"), Some(&333));
        assert_eq!(measured.latency_us.len(), 1_000);
        assert!(!measured.time_limited);
    }

    #[tokio::test]
    async fn the_time_limit_stops_the_run() {
        let limit = Duration::from_millis(300);
        let measured = drive("slow", &workload(1_000_000, 1, limit), |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Outcome::Rejected
        })
        .await
        .expect("run");
        assert!(measured.time_limited);
        assert!(measured.attempts < 1_000_000);
        assert!(measured.elapsed < Duration::from_secs(2));
        assert!(!measured.completed_samples.is_empty());
    }
}
