//! The checks after an HTTP run, through the API and (with `--database-url`) through the
//! server's database: every acknowledged order exists with its owner, line and expected
//! status; per SKU, reserved + sold equals the units of open orders (sold the paid ones,
//! reserved the pending ones); nothing is oversold; no Idempotency-Key made two orders.

use super::api::{Answer, Api, OrderReply, SkuReply};
use super::scenarios::{Expected, Placed};
use crate::check::{check, CheckResult, SkuObserved};
use futures::StreamExt;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};

/// Reads in flight at once while verifying.
pub const VERIFY_CONCURRENCY: usize = 64;

/// What the placed orders say each SKU must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// Units and orders still open (pending or paid), per SKU index.
    pub open_units: Vec<u64>,
    pub open_orders: Vec<u64>,
    pub paid_units: Vec<i64>,
    pub pending_units: Vec<i64>,
}

/// Folds the placed orders and their read-back statuses (same order; `None` = not readable)
/// into per-SKU expectations, listing every order whose status is not the expected one.
pub fn expectation(
    sku_count: usize,
    placed: &[Placed],
    read_statuses: &[Option<String>],
    result: &mut CheckResult,
) -> Expectation {
    let mut expected = Expectation {
        open_units: vec![0; sku_count],
        open_orders: vec![0; sku_count],
        paid_units: vec![0; sku_count],
        pending_units: vec![0; sku_count],
    };
    for (order, read) in placed.iter().zip(read_statuses) {
        let status = match (order.expected, read.as_deref()) {
            (Expected::Unknown, Some(read)) => read,
            (wanted, Some(read)) if wanted.as_str() == read => read,
            (wanted, Some(read)) => {
                result.problem(format!("order {} is {read}, expected {}", order.order_id, wanted.as_str()));
                read
            }
            (wanted, None) => wanted.as_str(),
        };
        let (index, units) = (order.sku_index, i64::from(order.quantity));
        match status {
            "pending_payment" => expected.pending_units[index] += units,
            "paid" => expected.paid_units[index] += units,
            _ => continue,
        }
        expected.open_units[index] += u64::from(order.quantity);
        expected.open_orders[index] += 1;
    }
    expected
}

/// Problems with the order ids themselves: two placements sharing one order.
pub fn duplicate_orders(placed: &[Placed], result: &mut CheckResult) {
    let mut seen = HashSet::with_capacity(placed.len());
    for order in placed {
        if !seen.insert(order.order_id) {
            result.problem(format!("order {} was returned for two Idempotency-Keys", order.order_id));
        }
    }
}

/// Reads every placed order back as its owner. Returns each order's status (or `None`) and
/// the open orders per SKU as the API shows them.
pub async fn read_orders(
    api: &Api,
    sku_ids: &[i64],
    placed: &[Placed],
    result: &mut CheckResult,
) -> (Vec<Option<String>>, Vec<SkuObserved>) {
    let answers: Vec<Answer<OrderReply>> = futures::stream::iter(placed)
        .map(|order| api.order(order.user, order.order_id))
        .buffered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let mut observed = vec![SkuObserved::default(); sku_ids.len()];
    let mut statuses = Vec::with_capacity(placed.len());
    for (order, answer) in placed.iter().zip(answers) {
        let read = match answer {
            Answer::Done(read) => read,
            Answer::SoldOut | Answer::Failed(_) => {
                result.problem(format!("order {} cannot be read back", order.order_id));
                statuses.push(None);
                continue;
            }
        };
        // Tokens are minted for user ids 1..=users: user index i is user id i + 1.
        if read.user_id != order.user as i64 + 1 {
            result.problem(format!("order {} belongs to user {}", order.order_id, read.user_id));
        }
        if let Some(problem) = super::scenarios::wrong_items(&read, sku_ids[order.sku_index], order.quantity) {
            result.problem(problem);
        }
        if matches!(read.status.as_str(), "pending_payment" | "paid") {
            observed[order.sku_index].order_rows += 1;
            observed[order.sku_index].order_units += i64::from(order.quantity);
        }
        statuses.push(Some(read.status));
    }
    (statuses, observed)
}

/// Reads the SKUs' committed counters through the API into `observed` and compares sold and
/// reserved with the paid and pending orders.
pub async fn read_skus(
    api: &Api,
    sku_ids: &[i64],
    stock: i64,
    expected: &Expectation,
    observed: &mut [SkuObserved],
    result: &mut CheckResult,
) {
    let answers: Vec<Answer<SkuReply>> =
        futures::stream::iter(sku_ids).map(|&sku_id| api.sku(sku_id)).buffered(VERIFY_CONCURRENCY).collect().await;
    for (index, answer) in answers.into_iter().enumerate() {
        let Answer::Done(sku) = answer else {
            result.problem(format!("sku {} cannot be read back", sku_ids[index]));
            continue;
        };
        compare_counters("api", index, &sku, stock, expected, result);
        observed[index].taken_units = sku.reserved + sku.sold;
    }
}

fn compare_counters(
    source: &str,
    index: usize,
    sku: &SkuReply,
    stock: i64,
    expected: &Expectation,
    result: &mut CheckResult,
) {
    if sku.total != stock || sku.available + sku.reserved + sku.sold != sku.total {
        result.problem(format!(
            "{source}: sku {}: total {} available {} reserved {} sold {} (stock {stock})",
            sku.sku_id, sku.total, sku.available, sku.reserved, sku.sold
        ));
    }
    if sku.sold != expected.paid_units[index] || sku.reserved != expected.pending_units[index] {
        result.problem(format!(
            "{source}: sku {}: sold {} reserved {}, but paid orders hold {} and pending {}",
            sku.sku_id, sku.sold, sku.reserved, expected.paid_units[index], expected.pending_units[index]
        ));
    }
}

/// `url` as sqlx's drivers name it: MariaDB speaks the MySQL protocol.
pub fn driver_url(url: &str) -> String {
    match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    }
}

/// The same checks against the server's database: its inventory rows, the order items of this
/// run's orders (by Idempotency-Key prefix), and the uniqueness of those keys.
pub async fn check_database(
    url: &str,
    sku_ids: &[i64],
    stock: i64,
    key_prefix: &str,
    placed_count: usize,
    expected: &Expectation,
) -> anyhow::Result<CheckResult> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .connect(&driver_url(url))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to --database-url to verify: {e}"))?;
    let outcome = database_checks(&pool, sku_ids, stock, key_prefix, placed_count, expected).await;
    pool.close().await;
    outcome
}

async fn database_checks(
    pool: &AnyPool,
    sku_ids: &[i64],
    stock: i64,
    key_prefix: &str,
    placed_count: usize,
    expected: &Expectation,
) -> anyhow::Result<CheckResult> {
    let mut result = CheckResult::default();
    let pattern = format!("{key_prefix}%");
    let index_of: HashMap<i64, usize> = sku_ids.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut observed = vec![SkuObserved::default(); sku_ids.len()];
    let (low, high) = (sku_ids.iter().min(), sku_ids.iter().max());
    let rows = sqlx::query(
        "SELECT sku_id, total, available, reserved, sold FROM inventory \
         WHERE sku_id >= ? AND sku_id <= ?",
    )
    .bind(low.copied().unwrap_or(0))
    .bind(high.copied().unwrap_or(0))
    .fetch_all(pool)
    .await?;
    let mut found = 0;
    for row in rows {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("sku_id")?) else {
            continue;
        };
        let sku = SkuReply {
            sku_id: row.try_get("sku_id")?,
            total: row.try_get("total")?,
            available: row.try_get("available")?,
            reserved: row.try_get("reserved")?,
            sold: row.try_get("sold")?,
        };
        compare_counters("db", index, &sku, stock, expected, &mut result);
        observed[index].taken_units = sku.reserved + sku.sold;
        found += 1;
    }
    if found != sku_ids.len() {
        result.problem(format!("db: {found} inventory rows for {} SKUs", sku_ids.len()));
    }
    let items = sqlx::query(
        "SELECT i.sku_id AS sku_id, COUNT(*) AS n, CAST(SUM(i.quantity) AS SIGNED) AS units \
         FROM trade_order_item i JOIN trade_order o ON o.id = i.order_id \
         WHERE o.idempotency_key LIKE ? AND o.status IN ('pending_payment', 'paid') \
         GROUP BY i.sku_id",
    )
    .bind(pattern.clone())
    .fetch_all(pool)
    .await?;
    for row in items {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("sku_id")?) else {
            result.problem("db: an order of this run holds a SKU it never asked for".into());
            continue;
        };
        observed[index].order_rows = row.try_get::<i64, _>("n")? as u64;
        observed[index].order_units = row.try_get("units")?;
    }
    key_checks(pool, &pattern, placed_count, &mut result).await?;
    let compared = check(stock, &expected.open_units, &expected.open_orders, &observed);
    Ok(merge(result, compared, "db"))
}

async fn key_checks(
    pool: &AnyPool,
    pattern: &str,
    placed_count: usize,
    result: &mut CheckResult,
) -> anyhow::Result<()> {
    let orders: i64 = sqlx::query("SELECT COUNT(*) AS n FROM trade_order WHERE idempotency_key LIKE ?")
        .bind(pattern.to_owned())
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    if orders != placed_count as i64 {
        result.problem(format!(
            "db: {orders} orders carry this run's Idempotency-Keys, {placed_count} were acknowledged"
        ));
    }
    let duplicated: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT user_id, idempotency_key FROM trade_order \
         WHERE idempotency_key LIKE ? GROUP BY user_id, idempotency_key HAVING COUNT(*) > 1) d",
    )
    .bind(pattern.to_owned())
    .fetch_one(pool)
    .await?
    .try_get("n")?;
    if duplicated != 0 {
        result.problem(format!("db: {duplicated} Idempotency-Keys made more than one order"));
    }
    Ok(())
}

/// One result from two: the larger oversell, every problem (the second's prefixed).
pub fn merge(mut first: CheckResult, second: CheckResult, prefix: &str) -> CheckResult {
    first.oversold = first.oversold.max(second.oversold);
    for problem in second.problems {
        first.problem(format!("{prefix}: {problem}"));
    }
    first.problems_unlisted += second.problems_unlisted;
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(order_id: i64, sku_index: usize, quantity: u32, expected: Expected) -> Placed {
        Placed { user: 0, order_id, sku_index, quantity, expected }
    }

    #[test]
    fn open_orders_count_toward_their_sku_and_closed_ones_do_not() {
        let orders = vec![
            placed(1, 0, 2, Expected::PendingPayment),
            placed(2, 0, 1, Expected::Paid),
            placed(3, 1, 3, Expected::Closed),
            placed(4, 1, 1, Expected::Unknown),
        ];
        let read = vec![
            Some("pending_payment".to_owned()),
            Some("paid".to_owned()),
            Some("closed".to_owned()),
            Some("paid".to_owned()),
        ];
        let mut result = CheckResult::default();
        let expected = expectation(2, &orders, &read, &mut result);
        assert!(result.passed(), "{}", result.summary());
        assert_eq!(expected.open_units, vec![3, 1]);
        assert_eq!(expected.open_orders, vec![2, 1]);
        assert_eq!(expected.paid_units, vec![1, 1]);
        assert_eq!(expected.pending_units, vec![2, 0]);
    }

    #[test]
    fn a_status_other_than_expected_is_a_problem() {
        let orders = vec![placed(9, 0, 1, Expected::Closed)];
        let mut result = CheckResult::default();
        let expected = expectation(1, &orders, &[Some("paid".into())], &mut result);
        assert_eq!(result.problems, vec!["order 9 is paid, expected closed"]);
        assert_eq!(expected.paid_units, vec![1], "the units follow what the server says");
    }

    #[test]
    fn one_order_for_two_keys_is_a_problem() {
        let orders = vec![placed(5, 0, 1, Expected::PendingPayment), placed(5, 0, 1, Expected::PendingPayment)];
        let mut result = CheckResult::default();
        duplicate_orders(&orders, &mut result);
        assert_eq!(result.problems.len(), 1);
    }

    #[test]
    fn mariadb_urls_use_the_mysql_driver() {
        assert_eq!(driver_url("mariadb://root@127.0.0.1:3306/tianji"), "mysql://root@127.0.0.1:3306/tianji");
        assert_eq!(driver_url("mysql://root@127.0.0.1/tianji"), "mysql://root@127.0.0.1/tianji");
        assert_eq!(driver_url("sqlite:///tmp/t.db?mode=ro"), "sqlite:///tmp/t.db?mode=ro");
    }

    #[test]
    fn merging_keeps_the_worst_oversell_and_every_problem() {
        let first = CheckResult { oversold: 1, problems: vec!["a".into()], ..CheckResult::default() };
        let second = CheckResult { oversold: 3, problems: vec!["b".into()], ..CheckResult::default() };
        let merged = merge(first, second, "db");
        assert_eq!(merged.oversold, 3);
        assert_eq!(merged.problems, vec!["a", "db: b"]);
    }
}
