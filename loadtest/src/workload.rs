//! What one run asks for: how many SKUs with how many units, how many attempts by how many
//! concurrent clients, bounded by a time limit, and which SKU each attempt picks (uniform or
//! zipf) with how many units (1..=max). Attempts arrive closed loop (each client waits for its
//! answer) or open loop (at a constant rate, whatever the answers do).
//!
//! Pure: no I/O. The same `Workload` drives every engine and every HTTP scenario, so their
//! numbers are comparable.

use rand::Rng;
use rand_distr::{Distribution, Zipf};
use std::time::Duration;

/// The largest number of SKUs a run may create (also bounds per-SKU bookkeeping memory).
pub const SKU_COUNT_MAX: usize = 1_000_000;
/// The most attempts one run may make.
pub const ATTEMPTS_MAX: u64 = 100_000_000;
/// The most concurrent clients one run may use.
pub const CONCURRENCY_MAX: usize = 65_536;
/// The longest a single engine or scenario may run.
pub const TIME_LIMIT_MAX: Duration = Duration::from_secs(3_600);
/// The highest open-loop arrival rate, in attempts per second.
pub const RATE_MAX_PER_S: f64 = 1_000_000.0;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("--skus must be between 1 and {SKU_COUNT_MAX}, got {0}")]
    SkuCount(usize),
    #[error("--stock must be between 0 and 1000000000 units, got {0}")]
    Stock(i64),
    #[error("--attempts must be between 1 and {ATTEMPTS_MAX}, got {0}")]
    Attempts(u64),
    #[error("--concurrency must be between 1 and {CONCURRENCY_MAX}, got {0}")]
    Concurrency(usize),
    #[error("--max-quantity must be between 1 and 10000, got {0}")]
    MaxQuantity(u32),
    #[error("--time-limit must be between 1 ms and 3600 s, got {0:?}")]
    TimeLimit(Duration),
    #[error("--zipf exponent must be a finite number > 0, got {0}")]
    ZipfExponent(f64),
    #[error("--rate must be a number of attempts per second > 0 and <= {RATE_MAX_PER_S}, got {0}")]
    Rate(f64),
    #[error("--duration must be between 1 ms and 3600 s, got {0:?}")]
    Duration(Duration),
    #[error("--rate {rate_per_s}/s for {duration:?} plans {planned} attempts; it must plan 1..={ATTEMPTS_MAX}")]
    Planned { rate_per_s: f64, duration: Duration, planned: u64 },
}

/// How attempts arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// `concurrency` clients, each sending its next attempt when its last one was answered: the
    /// system under test sets the pace (and a stall hides the attempts it delays).
    Closed,
    /// Attempt `i` is sent at `i / rate_per_s` seconds after the start, answered or not, with at
    /// most `concurrency` in flight; latency counts from that planned instant.
    Open { rate_per_s: f64 },
}

/// When attempt `index` (0-based) of an open-loop run is due, after the run's start.
pub fn planned_offset(index: u64, rate_per_s: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate_per_s)
}

/// How many attempts an open-loop run plans: one every `1 / rate_per_s` seconds that falls
/// within `duration`, at most `attempts_max`.
pub fn planned_attempts(rate_per_s: f64, duration: Duration, attempts_max: Option<u64>) -> u64 {
    // Attempt i is due at i / rate: those with i / rate < duration are 0..ceil(rate * duration).
    let within = (rate_per_s * duration.as_secs_f64()).ceil();
    let within = if within >= u64::MAX as f64 { u64::MAX } else { within as u64 };
    attempts_max.map_or(within, |max| within.min(max))
}

/// How an attempt picks its SKU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDistribution {
    Uniform,
    /// Rank k (1-based) is picked with probability proportional to k^-exponent; rank 1 is SKU 0.
    Zipf {
        exponent: f64,
    },
}

/// A validated run description.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub sku_count: usize,
    pub stock_per_sku: i64,
    pub attempts: u64,
    pub concurrency: usize,
    pub max_quantity: u32,
    pub distribution: KeyDistribution,
    /// Closed loop: the longest the run sends attempts. Open loop: the length of the schedule.
    pub time_limit: Duration,
    pub arrival: Arrival,
}

impl Workload {
    /// Checks every bound; once you hold a `Workload`, its values are in range.
    pub fn parse(
        sku_count: usize,
        stock_per_sku: i64,
        attempts: u64,
        concurrency: usize,
        max_quantity: u32,
        distribution: KeyDistribution,
        time_limit: Duration,
    ) -> Result<Self, WorkloadError> {
        if !(1..=SKU_COUNT_MAX).contains(&sku_count) {
            return Err(WorkloadError::SkuCount(sku_count));
        }
        if !(0..=1_000_000_000).contains(&stock_per_sku) {
            return Err(WorkloadError::Stock(stock_per_sku));
        }
        if !(1..=ATTEMPTS_MAX).contains(&attempts) {
            return Err(WorkloadError::Attempts(attempts));
        }
        if !(1..=CONCURRENCY_MAX).contains(&concurrency) {
            return Err(WorkloadError::Concurrency(concurrency));
        }
        if !(1..=10_000).contains(&max_quantity) {
            return Err(WorkloadError::MaxQuantity(max_quantity));
        }
        if time_limit.is_zero() || time_limit > TIME_LIMIT_MAX {
            return Err(WorkloadError::TimeLimit(time_limit));
        }
        if let KeyDistribution::Zipf { exponent } = distribution {
            if !exponent.is_finite() || exponent <= 0.0 {
                return Err(WorkloadError::ZipfExponent(exponent));
            }
        }
        Ok(Workload {
            sku_count,
            stock_per_sku,
            attempts,
            concurrency,
            max_quantity,
            distribution,
            time_limit,
            arrival: Arrival::Closed,
        })
    }

    /// The same workload open loop: `rate_per_s` attempts a second for `duration`, at most
    /// `attempts_max` of them, `concurrency` becoming the bound on attempts in flight.
    pub fn open_loop(
        self,
        rate_per_s: f64,
        duration: Duration,
        attempts_max: Option<u64>,
    ) -> Result<Workload, WorkloadError> {
        if !rate_per_s.is_finite() || rate_per_s <= 0.0 || rate_per_s > RATE_MAX_PER_S {
            return Err(WorkloadError::Rate(rate_per_s));
        }
        if duration < Duration::from_millis(1) || duration > TIME_LIMIT_MAX {
            return Err(WorkloadError::Duration(duration));
        }
        let planned = planned_attempts(rate_per_s, duration, attempts_max);
        if !(1..=ATTEMPTS_MAX).contains(&planned) {
            return Err(WorkloadError::Planned { rate_per_s, duration, planned });
        }
        Ok(Workload { attempts: planned, time_limit: duration, arrival: Arrival::Open { rate_per_s }, ..self })
    }

    pub fn describe(&self) -> String {
        let distribution = match self.distribution {
            KeyDistribution::Uniform => "uniform".to_owned(),
            KeyDistribution::Zipf { exponent } => format!("zipf {exponent}"),
        };
        let (sku_count, stock, quantity_max) = (self.sku_count, self.stock_per_sku, self.max_quantity);
        let skus = format!("{sku_count} SKU(s) x {stock} units ({distribution}), 1..={quantity_max} units each");
        match self.arrival {
            Arrival::Closed => format!(
                "{skus}, closed loop: {} attempts, {} concurrent, time limit {:?}",
                self.attempts, self.concurrency, self.time_limit
            ),
            Arrival::Open { rate_per_s } => format!(
                "{skus}, open loop: {rate_per_s}/s for {:?} ({} attempts planned), at most {} in flight",
                self.time_limit, self.attempts, self.concurrency
            ),
        }
    }
}

/// Picks the SKU (an index in `0..sku_count`) and the quantity of each attempt.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    sku_count: usize,
    max_quantity: u32,
    zipf: Option<Zipf<f64>>,
}

impl KeyPicker {
    pub fn new(workload: &Workload) -> Self {
        let zipf = match workload.distribution {
            KeyDistribution::Uniform => None,
            // Workload::parse checked the exponent (> 0, finite) and the count (>= 1), the
            // only ways Zipf::new can fail.
            KeyDistribution::Zipf { exponent } => {
                Some(Zipf::new(workload.sku_count as u64, exponent).expect("validated zipf parameters"))
            }
        };
        KeyPicker { sku_count: workload.sku_count, max_quantity: workload.max_quantity, zipf }
    }

    pub fn sku_index<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match &self.zipf {
            None => rng.gen_range(0..self.sku_count),
            Some(zipf) => {
                // Samples are ranks 1..=n as floats; clamp in case rounding steps outside.
                let rank = zipf.sample(rng) as usize;
                rank.clamp(1, self.sku_count) - 1
            }
        }
    }

    pub fn quantity<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        rng.gen_range(1..=self.max_quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn workload(sku_count: usize, distribution: KeyDistribution, max_quantity: u32) -> Workload {
        Workload::parse(sku_count, 10, 1_000, 4, max_quantity, distribution, Duration::from_secs(1))
            .expect("valid workload")
    }

    #[test]
    fn bounds_are_enforced_in_order() {
        let uniform = KeyDistribution::Uniform;
        let second = Duration::from_secs(1);
        assert_eq!(Workload::parse(0, 1, 1, 1, 1, uniform, second), Err(WorkloadError::SkuCount(0)));
        assert_eq!(Workload::parse(1, -1, 1, 1, 1, uniform, second), Err(WorkloadError::Stock(-1)));
        assert_eq!(Workload::parse(1, 1, 0, 1, 1, uniform, second), Err(WorkloadError::Attempts(0)));
        assert_eq!(Workload::parse(1, 1, 1, 0, 1, uniform, second), Err(WorkloadError::Concurrency(0)));
        assert_eq!(Workload::parse(1, 1, 1, 1, 0, uniform, second), Err(WorkloadError::MaxQuantity(0)));
        assert_eq!(
            Workload::parse(1, 1, 1, 1, 1, uniform, Duration::ZERO),
            Err(WorkloadError::TimeLimit(Duration::ZERO))
        );
        let bad_zipf = KeyDistribution::Zipf { exponent: 0.0 };
        assert_eq!(Workload::parse(1, 1, 1, 1, 1, bad_zipf, second), Err(WorkloadError::ZipfExponent(0.0)));
    }

    #[test]
    fn the_open_loop_schedule_is_one_attempt_every_one_over_rate_seconds() {
        assert_eq!(planned_offset(0, 1_000.0), Duration::ZERO);
        assert_eq!(planned_offset(1, 1_000.0), Duration::from_millis(1));
        assert_eq!(planned_offset(2_500, 1_000.0), Duration::from_millis(2_500));
        assert_eq!(planned_offset(3, 4.0), Duration::from_millis(750));
        // Gaps stay exact far into a long run (no drift from summing intervals).
        let late = planned_offset(99_999_999, 1_000_000.0);
        assert!(late.abs_diff(Duration::from_nanos(99_999_999_000)) <= Duration::from_nanos(10), "{late:?}");
        let gaps: Vec<Duration> = (0..5).map(|i| planned_offset(i + 1, 3.0) - planned_offset(i, 3.0)).collect();
        assert!(gaps.iter().all(|gap| gap.abs_diff(Duration::from_nanos(333_333_333)) <= Duration::from_nanos(1)));
    }

    #[test]
    fn the_open_loop_plans_rate_times_duration_attempts() {
        let second = Duration::from_secs(1);
        assert_eq!(planned_attempts(1_000.0, 10 * second, None), 10_000);
        assert_eq!(planned_attempts(1_000.0, 10 * second, Some(500)), 500);
        // Due at 0, 0.4 and 0.8 s: three fall within one second.
        assert_eq!(planned_attempts(2.5, second, None), 3);
        assert_eq!(planned_attempts(0.5, Duration::from_millis(1), None), 1);
        let open = workload(1, KeyDistribution::Uniform, 1).open_loop(200.0, 2 * second, None).expect("valid");
        assert_eq!((open.attempts, open.time_limit), (400, 2 * second));
        assert_eq!(open.arrival, Arrival::Open { rate_per_s: 200.0 });
        assert_eq!(open.concurrency, 4, "the concurrency bounds attempts in flight");
    }

    #[test]
    fn open_loop_bounds_are_enforced() {
        let closed = workload(1, KeyDistribution::Uniform, 1);
        let second = Duration::from_secs(1);
        assert_eq!(closed.clone().open_loop(0.0, second, None), Err(WorkloadError::Rate(0.0)));
        assert!(matches!(closed.clone().open_loop(f64::NAN, second, None), Err(WorkloadError::Rate(_))));
        assert_eq!(closed.clone().open_loop(2e6, second, None), Err(WorkloadError::Rate(2e6)));
        assert_eq!(closed.clone().open_loop(10.0, Duration::ZERO, None), Err(WorkloadError::Duration(Duration::ZERO)));
        let too_many = closed.open_loop(1e6, TIME_LIMIT_MAX, None);
        assert!(matches!(too_many, Err(WorkloadError::Planned { planned: 3_600_000_000, .. })));
    }

    #[test]
    fn one_sku_always_picks_index_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        for distribution in [KeyDistribution::Uniform, KeyDistribution::Zipf { exponent: 1.1 }] {
            let picker = KeyPicker::new(&workload(1, distribution, 1));
            assert!((0..1_000).all(|_| picker.sku_index(&mut rng) == 0));
        }
    }

    #[test]
    fn uniform_covers_every_sku_evenly() {
        let mut rng = StdRng::seed_from_u64(2);
        let picker = KeyPicker::new(&workload(10, KeyDistribution::Uniform, 1));
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[picker.sku_index(&mut rng)] += 1;
        }
        // Each expects 10,000; 5 standard deviations is about 475.
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
    }

    #[test]
    fn zipf_favours_low_ranks_in_the_expected_ratio() {
        let mut rng = StdRng::seed_from_u64(3);
        let picker = KeyPicker::new(&workload(1_000, KeyDistribution::Zipf { exponent: 1.1 }, 1));
        let mut counts = vec![0u32; 1_000];
        for _ in 0..200_000 {
            counts[picker.sku_index(&mut rng)] += 1;
        }
        // P(rank 1) / P(rank 2) = 2^1.1 ~ 2.14.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.95..2.35).contains(&ratio), "rank 1 / rank 2 = {ratio}");
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        assert!(counts[999] > 0, "the tail is reachable");
    }

    #[test]
    fn quantities_stay_within_one_to_max() {
        let mut rng = StdRng::seed_from_u64(4);
        let picker = KeyPicker::new(&workload(1, KeyDistribution::Uniform, 3));
        let mut seen = [false; 4];
        for _ in 0..1_000 {
            let quantity = picker.quantity(&mut rng);
            assert!((1..=3).contains(&quantity));
            seen[quantity as usize] = true;
        }
        assert_eq!(seen, [false, true, true, true]);
    }
}
