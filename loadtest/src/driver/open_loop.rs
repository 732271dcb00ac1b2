//! The open-loop driver: attempt `i` is due `i / rate` seconds after the start and is sent
//! then, whatever the attempts before it are doing, so a stall of the system under test shows
//! up as latency instead of as fewer attempts (no coordinated omission). Latency counts from the
//! planned instant, not from the send, so a send the load generator made late counts against
//! the result too, and the report says how late the generator was.
//!
//! Guarantees: at most `in_flight_max` attempts are outstanding; an attempt due while all of
//! them are out is not queued but counted as dropped; every planned attempt is either sent or
//! dropped (`sent + dropped == planned`); `run` returns only after every sent attempt has been
//! answered and counted.
//!
//! A plain thread keeps the schedule (`std::thread::sleep` wakes within tens of microseconds,
//! the runtime's timer only to the millisecond) and spawns each attempt onto the runtime the
//! run was started from, where the closed loop's clients would have run. If the run is dropped
//! (Ctrl-C), the thread stops within `SLEEP_SLICE_MAX` instead of keeping the schedule.

use super::{new_histogram, Attempt, Outcome, Shared};
use crate::workload::{planned_offset, KeyPicker};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A send this long after its planned instant is counted as late: the generator, not the
/// system under test, fell behind.
pub const SEND_LATE_AFTER: Duration = Duration::from_millis(1);
/// The longest the sender sleeps before looking whether the run was abandoned.
const SLEEP_SLICE_MAX: Duration = Duration::from_millis(100);
/// Histograms the in-flight attempts record into, picked by sequence number, so that
/// recording from many runtime threads rarely waits on one lock.
const HISTOGRAM_SHARDS: usize = 16;

/// What an open-loop run sends: `planned` attempts at `rate_per_s`, at most `in_flight_max`
/// outstanding.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rate_per_s: f64,
    pub planned: u64,
    pub in_flight_max: usize,
}

/// How the arrivals of an open-loop run went.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLoopStats {
    pub rate_asked_per_s: f64,
    pub planned: u64,
    pub sent: u64,
    /// Due while `in_flight_max` attempts were outstanding: not sent, not timed.
    pub dropped: u64,
    /// Sent more than `SEND_LATE_AFTER` after their planned instant.
    pub sent_late: u64,
    /// The longest any send (or drop) came after its planned instant.
    pub send_lag_max: Duration,
    /// From the start to the last send or drop.
    pub send_span: Duration,
    pub in_flight_max: usize,
}

impl OpenLoopStats {
    /// Attempts sent per second over the schedule, or over the sending if that took longer.
    pub fn rate_sent_per_s(&self) -> f64 {
        let scheduled_s = self.planned as f64 / self.rate_asked_per_s;
        self.sent as f64 / scheduled_s.max(self.send_span.as_secs_f64()).max(f64::MIN_POSITIVE)
    }
}

/// Microseconds from an attempt's planned send to its answer: what a client keeping the
/// schedule waits, including any time the attempt waited to be sent. At least 1, the
/// histogram's floor.
pub fn latency_from_planned_us(planned_at: Instant, answered_at: Instant) -> u64 {
    let waited = answered_at.saturating_duration_since(planned_at);
    u64::try_from(waited.as_micros()).unwrap_or(u64::MAX).max(1)
}

type Shards = Arc<Vec<Mutex<Histogram<u64>>>>;

/// Sends `plan` from `started` on, waits for every answer, and returns the latencies from the
/// planned instants with the arrival statistics.
pub(super) async fn run<F, Fut>(
    plan: Plan,
    shared: Arc<Shared>,
    attempt: Arc<F>,
    picker: Arc<KeyPicker>,
    started: Instant,
) -> anyhow::Result<(Histogram<u64>, OpenLoopStats)>
where
    F: Fn(Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    assert!(plan.rate_per_s > 0.0 && plan.in_flight_max > 0, "a validated workload plans a positive rate");
    let permits = u32::try_from(plan.in_flight_max)?;
    let in_flight = Arc::new(Semaphore::new(plan.in_flight_max));
    let shards: Shards = Arc::new((0..HISTOGRAM_SHARDS).map(|_| Mutex::new(new_histogram())).collect());
    let abandon = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
    let sender = Sender {
        plan,
        runtime: tokio::runtime::Handle::current(),
        in_flight: Arc::clone(&in_flight),
        abandoned: Arc::clone(&abandon.0),
    };
    let (counted, recorded) = (Arc::clone(&shared), Arc::clone(&shards));
    let stats = tokio::task::spawn_blocking(move || sender.send_all(&counted, &*attempt, &picker, &recorded, started))
        .await
        .map_err(|error| anyhow::anyhow!("the open-loop sender failed: {error}"))?;
    // Each sent attempt holds a permit until it is counted: all permits back, all answered
    // (or panicked, which drops the permit without counting).
    let all_back = in_flight.acquire_many(permits).await?;
    drop(all_back);
    let answered = shared.completed.load(Ordering::Relaxed);
    if answered != stats.sent {
        anyhow::bail!("{} of {} open-loop attempts panicked", stats.sent - answered, stats.sent);
    }
    let mut latency_us = new_histogram();
    for shard in shards.iter() {
        latency_us.add(&*shard.lock().unwrap_or_else(|p| p.into_inner()))?;
    }
    assert_eq!(latency_us.len(), stats.sent, "every sent attempt is timed once");
    drop(abandon);
    Ok((latency_us, stats))
}

/// Tells the sender to stop when the run is dropped before it finished.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The thread that keeps the schedule.
struct Sender {
    plan: Plan,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<Semaphore>,
    abandoned: Arc<AtomicBool>,
}

impl Sender {
    fn send_all<F, Fut>(
        &self,
        shared: &Arc<Shared>,
        attempt: &F,
        picker: &KeyPicker,
        shards: &Shards,
        started: Instant,
    ) -> OpenLoopStats
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let mut rng = StdRng::from_entropy();
        let mut stats = OpenLoopStats {
            rate_asked_per_s: self.plan.rate_per_s,
            planned: self.plan.planned,
            sent: 0,
            dropped: 0,
            sent_late: 0,
            send_lag_max: Duration::ZERO,
            send_span: Duration::ZERO,
            in_flight_max: self.plan.in_flight_max,
        };
        for seq in 0..self.plan.planned {
            let planned_at = started + planned_offset(seq, self.plan.rate_per_s);
            if !self.sleep_until(planned_at) {
                break;
            }
            let lag = planned_at.elapsed();
            stats.send_lag_max = stats.send_lag_max.max(lag);
            let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                stats.dropped += 1;
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if lag > SEND_LATE_AFTER {
                stats.sent_late += 1;
            }
            let one = Attempt { seq, sku_index: picker.sku_index(&mut rng), quantity: picker.quantity(&mut rng) };
            let answer = attempt(one);
            let (shared, shards) = (Arc::clone(shared), Arc::clone(shards));
            self.runtime.spawn(async move {
                let outcome = answer.await;
                let micros = latency_from_planned_us(planned_at, Instant::now());
                let shard = &shards[(seq % HISTOGRAM_SHARDS as u64) as usize];
                shard.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros);
                shared.count(&one, outcome);
                drop(permit);
            });
            stats.sent += 1;
        }
        stats.send_span = started.elapsed();
        stats
    }

    /// Sleeps until `instant`; false if the run was abandoned meanwhile.
    fn sleep_until(&self, instant: Instant) -> bool {
        loop {
            if self.abandoned.load(Ordering::Relaxed) {
                return false;
            }
            let left = instant.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(SLEEP_SLICE_MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{drive, Outcome};
    use crate::workload::{KeyDistribution, Workload};

    fn open(rate_per_s: f64, duration: Duration, in_flight_max: usize) -> Workload {
        Workload::parse(1, 1_000_000, 1, in_flight_max, 1, KeyDistribution::Uniform, Duration::from_secs(1))
            .and_then(|closed| closed.open_loop(rate_per_s, duration, None))
            .expect("valid workload")
    }

    #[test]
    fn latency_counts_from_the_planned_instant() {
        let planned_at = Instant::now();
        let answered_at = planned_at + Duration::from_micros(2_500);
        assert_eq!(latency_from_planned_us(planned_at, answered_at), 2_500);
        assert_eq!(latency_from_planned_us(answered_at, planned_at), 1, "never below the floor");
    }

    #[test]
    fn a_stall_shows_in_the_percentiles_from_the_planned_send() {
        // 100 attempts planned 1 ms apart against a system that answers each in 100 us but
        // stalls for 50 ms at the start: the attempts due during the stall are answered at its
        // end. Timed from their planned instants they waited up to 50 ms; timed from when they
        // could be sent (what a closed loop measures) each took 100 us.
        let start = Instant::now();
        let stall_end = start + Duration::from_millis(50);
        let mut from_planned = new_histogram();
        let mut from_send = new_histogram();
        for index in 0..100u64 {
            let planned_at = start + Duration::from_millis(index);
            let sent_at = planned_at.max(stall_end);
            let answered_at = sent_at + Duration::from_micros(100);
            from_planned.record(latency_from_planned_us(planned_at, answered_at)).expect("in range");
            from_send.record(latency_from_planned_us(sent_at, answered_at)).expect("in range");
        }
        assert_eq!(from_send.value_at_quantile(0.99), 100);
        assert_eq!(from_planned.value_at_quantile(0.50), 100);
        let p99_ms = from_planned.value_at_quantile(0.99) / 1_000;
        assert!((49..=50).contains(&p99_ms), "p99 {p99_ms} ms");
        assert!(from_planned.value_at_quantile(0.75) > 20_000, "a quarter of the attempts waited over 20 ms");
    }

    #[test]
    fn the_achieved_rate_is_sent_over_the_schedule() {
        let stats = OpenLoopStats {
            rate_asked_per_s: 1_000.0,
            planned: 1_000,
            sent: 900,
            dropped: 100,
            sent_late: 0,
            send_lag_max: Duration::ZERO,
            send_span: Duration::from_millis(999),
            in_flight_max: 8,
        };
        assert!((stats.rate_sent_per_s() - 900.0).abs() < 1e-9);
        let slow = OpenLoopStats { send_span: Duration::from_secs(2), ..stats };
        assert!((slow.rate_sent_per_s() - 450.0).abs() < 1e-9, "a sender that fell behind sent slower");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_go_out_at_the_rate_whatever_the_answers_take() {
        // 20 ms answers at 500/s: about 10 in flight, none dropped, each timed near 20 ms.
        let measured = drive("open", &open(500.0, Duration::from_millis(400), 64), |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Outcome::Rejected
        })
        .await
        .expect("run");
        let stats = measured.open_loop.clone().expect("open-loop stats");
        assert_eq!((stats.planned, stats.sent, stats.dropped), (200, 200, 0));
        assert_eq!(measured.attempts, 200);
        assert_eq!(measured.latency_us.len(), 200);
        assert!(measured.latency_us.value_at_quantile(0.5) >= 20_000);
        assert!(stats.send_span >= Duration::from_millis(390), "the schedule was kept, not rushed");
        // Exactly 500/s unless the sender fell behind (a loaded machine), never faster.
        assert!((400.0..=500.0 + 1e-6).contains(&stats.rate_sent_per_s()), "{}", stats.rate_sent_per_s());
        assert!(!measured.time_limited);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_due_while_the_bound_is_out_are_dropped_not_queued() {
        // Answers take 100 ms, 2 may be in flight, one is due every 5 ms: most are dropped.
        let measured = drive("bounded", &open(200.0, Duration::from_millis(300), 2), |a| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Outcome::Ok { units: a.quantity }
        })
        .await
        .expect("run");
        let stats = measured.open_loop.clone().expect("open-loop stats");
        assert_eq!(stats.planned, 60);
        assert_eq!(stats.sent + stats.dropped, 60);
        assert!((2..=8).contains(&stats.sent), "sent {}", stats.sent);
        assert_eq!(measured.ok, stats.sent);
        assert_eq!(measured.acked_orders.iter().sum::<u64>(), stats.sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_run_stops_sending() {
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&sent);
        let workload = open(100.0, Duration::from_secs(60), 8);
        let run = drive("abandoned", &workload, move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Outcome::Rejected }
        });
        assert!(tokio::time::timeout(Duration::from_millis(200), run).await.is_err(), "the run outlasts 200 ms");
        let at_drop = sent.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(sent.load(Ordering::Relaxed) <= at_drop + 11, "still sending after the run was dropped");
    }

    #[test]
    fn a_busy_runtime_delays_answers_and_the_latency_shows_it() {
        // A current-thread runtime that one attempt blocks for 60 ms: the attempts due
        // meanwhile are sent on time but cannot run; timed from their planned instants, the
        // wait is theirs.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let measured = runtime
            .block_on(drive("blocked", &open(1_000.0, Duration::from_millis(100), 1_000), |a| async move {
                if a.seq == 0 {
                    std::thread::sleep(Duration::from_millis(60));
                }
                Outcome::Rejected
            }))
            .expect("run");
        let waited_10_ms = measured.latency_us.count_between(10_000, u64::MAX);
        assert!(waited_10_ms >= 30, "only {waited_10_ms} attempts waited 10 ms or more");
        assert!(measured.latency_us.max() >= 50_000);
    }
}
