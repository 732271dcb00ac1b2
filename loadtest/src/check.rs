//! The end-state check run after every engine and scenario: what the system stored must match
//! what it acknowledged, per SKU, and nothing may be oversold.
//!
//! Pure: the caller reads the stored state (from MariaDB, Redis, the memory store or the HTTP
//! API) into `SkuObserved` rows; this module compares them with the driver's counts. Runs
//! against a tianji database end with `reconcile`, tianji's own check of the stored state
//! against itself: every difference it finds is a problem of the run.

/// Problems listed in full before the rest are only counted.
pub const PROBLEMS_LISTED_MAX: usize = 10;

/// What the system under test holds for one SKU after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkuObserved {
    /// Units no longer available: total - available (reserved + sold for tianji).
    pub taken_units: i64,
    /// Order (or reservation) rows that hold this SKU.
    pub order_rows: u64,
    /// Units those rows hold.
    pub order_units: i64,
}

/// The outcome of the check: `oversold` units (0 when correct) and every mismatch found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckResult {
    pub oversold: u64,
    pub units_taken: i64,
    pub order_rows: u64,
    pub problems: Vec<String>,
    /// Problems found beyond `PROBLEMS_LISTED_MAX`.
    pub problems_unlisted: u64,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.oversold == 0 && self.problems.is_empty()
    }

    /// Records a problem found outside the per-SKU comparison (e.g. an idempotency violation).
    pub fn problem(&mut self, message: String) {
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(message);
        } else {
            self.problems_unlisted += 1;
        }
    }

    pub fn summary(&self) -> String {
        if self.passed() {
            return "ok".to_owned();
        }
        let mut text = self.problems.join("; ");
        if self.problems_unlisted > 0 {
            text.push_str(&format!("; and {} more", self.problems_unlisted));
        }
        if self.oversold > 0 {
            text = format!("OVERSOLD {} units; {text}", self.oversold);
        }
        text
    }
}

/// How long reconciliation waits for a database connection or a row lock.
pub const RECONCILE_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs tianji's reconciliation (without `--fix`, without Redis: snapshots are written behind)
/// on the tianji database at `database_url` and records each difference as a problem. `Err`
/// when it could not run (unreachable, not migrated).
pub async fn reconcile(database_url: &str, result: &mut CheckResult) -> anyhow::Result<()> {
    let options = tianji::reconcile::Options {
        database_url: database_url.to_owned(),
        redis_url: None,
        fix: false,
        database_timeout: RECONCILE_DATABASE_TIMEOUT,
    };
    let outcome = tianji::reconcile::run(&options).await?;
    for difference in &outcome.left {
        result.problem(format!("reconcile: {difference}"));
    }
    Ok(())
}

/// Compares the stored state with the acknowledged counts. Every slice is indexed by SKU
/// index; `observed` must have one row per SKU.
pub fn check(stock_per_sku: i64, acked_units: &[u64], acked_orders: &[u64], observed: &[SkuObserved]) -> CheckResult {
    let mut result = CheckResult::default();
    if observed.len() != acked_units.len() {
        result.problem(format!("read back {} SKUs, expected {}", observed.len(), acked_units.len()));
        return result;
    }
    for (index, seen) in observed.iter().enumerate() {
        let units = i64::try_from(acked_units[index]).unwrap_or(i64::MAX);
        let orders = acked_orders[index];
        result.units_taken += seen.taken_units;
        result.order_rows += seen.order_rows;
        let most_taken = seen.taken_units.max(units).max(seen.order_units);
        if most_taken > stock_per_sku {
            result.oversold += (most_taken - stock_per_sku) as u64;
        }
        compare_sku(&mut result, index, stock_per_sku, units, orders, seen);
    }
    result
}

fn compare_sku(
    result: &mut CheckResult,
    index: usize,
    stock: i64,
    acked_units: i64,
    acked_orders: u64,
    seen: &SkuObserved,
) {
    if seen.taken_units < 0 || seen.taken_units > stock {
        result.problem(format!("sku #{index}: {} units taken of {stock}", seen.taken_units));
    }
    if seen.taken_units != acked_units {
        result.problem(format!("sku #{index}: {} units taken but {acked_units} acknowledged", seen.taken_units));
    }
    if seen.order_rows != acked_orders {
        result.problem(format!("sku #{index}: {} order rows but {acked_orders} successes", seen.order_rows));
    }
    if seen.order_units != acked_units {
        result.problem(format!(
            "sku #{index}: order rows hold {} units but {acked_units} acknowledged",
            seen.order_units
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(taken_units: i64, order_rows: u64, order_units: i64) -> SkuObserved {
        SkuObserved { taken_units, order_rows, order_units }
    }

    #[test]
    fn a_consistent_end_state_passes() {
        let result = check(10, &[10, 3], &[7, 3], &[seen(10, 7, 10), seen(3, 3, 3)]);
        assert!(result.passed(), "{}", result.summary());
        assert_eq!((result.units_taken, result.order_rows), (13, 10));
        assert_eq!(result.summary(), "ok");
    }

    #[test]
    fn oversell_is_counted_in_units() {
        let result = check(10, &[12], &[12], &[seen(12, 12, 12)]);
        assert_eq!(result.oversold, 2);
        assert!(!result.passed());
        assert!(result.summary().starts_with("OVERSOLD 2 units"));
    }

    #[test]
    fn acknowledged_beyond_the_stock_is_oversold_even_if_the_store_disagrees() {
        let result = check(10, &[11], &[11], &[seen(10, 10, 10)]);
        assert_eq!(result.oversold, 1);
    }

    #[test]
    fn each_mismatch_is_reported() {
        let lost_units = check(10, &[5], &[5], &[seen(4, 5, 5)]);
        assert_eq!(lost_units.problems, vec!["sku #0: 4 units taken but 5 acknowledged"]);
        let missing_row = check(10, &[5], &[5], &[seen(5, 4, 5)]);
        assert_eq!(missing_row.problems, vec!["sku #0: 4 order rows but 5 successes"]);
        let wrong_units = check(10, &[5], &[5], &[seen(5, 5, 6)]);
        assert_eq!(wrong_units.problems, vec!["sku #0: order rows hold 6 units but 5 acknowledged"]);
        let negative = check(10, &[0], &[0], &[seen(-1, 0, 0)]);
        assert_eq!(negative.problems[0], "sku #0: -1 units taken of 10");
    }

    #[test]
    fn a_short_read_back_fails() {
        let result = check(10, &[1, 1], &[1, 1], &[seen(1, 1, 1)]);
        assert_eq!(result.problems, vec!["read back 1 SKUs, expected 2"]);
    }

    #[test]
    fn problems_beyond_the_listing_limit_are_counted() {
        let acked = vec![1u64; 20];
        let observed = vec![seen(1, 0, 1); 20];
        let result = check(10, &acked, &acked, &observed);
        assert_eq!(result.problems.len(), PROBLEMS_LISTED_MAX);
        assert_eq!(result.problems_unlisted, 10);
        assert!(result.summary().ends_with("and 10 more"));
    }
}
