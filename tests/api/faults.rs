//! Database faults on MariaDB, and the guarantees that must hold through them: no
//! acknowledgement without a commit, no unit sold twice, no unit held longer than its lease,
//! and an answer (503 with `Retry-After`, or the result) within bounded time.
//!
//! Faults are made without touching the shared server: row locks taken by a connection of the
//! test's own (`TestApp::lock_rows`), and an outage or a hang of the app's connections through
//! a proxy (`spawn_behind_proxy`). The truth is read through the test's direct pool.

use crate::helpers::{
    answer_within, eventually, restart, spawn_behind_proxy, spawn_with, Answer, AppOptions, Backend, TestApp,
};
use crate::proxy::Mode;
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tianji::domain::ids::wall_clock_ms;

/// Longest wait for any one reply; the contract's bound is the database timeout (1 s) and a
/// lock or fault window, so no answer within it is a hang.
const ANSWER_BOUND: Duration = Duration::from_secs(15);
/// How fast a request must fail while the database is gone (1 s database timeout, plus slack).
const FAIL_FAST_BOUND: Duration = Duration::from_secs(3);
/// Retries of a payment the provider makes after a 503, one `Retry-After` apart.
const PAYMENT_RETRIES_MAX: usize = 10;
/// Row locks another writer takes: on one order, on one SKU's counters.
const LOCK_ORDER: &str = "SELECT id FROM trade_order WHERE id = ? FOR UPDATE";
const LOCK_INVENTORY: &str = "SELECT * FROM inventory WHERE sku_id = ? FOR UPDATE";
/// Requests in flight when placing many orders.
const PLACING_CONCURRENCY_MAX: usize = 64;

fn short_deadlines() -> AppOptions {
    let mut options = AppOptions::new(Backend::MySql);
    options.extra.push(("TIANJI_PAY_TIMEOUT", "2s".into()));
    options.extra.push(("TIANJI_RESERVATION_GRACE", "1s".into()));
    options
}

fn one_unit(sku_id: i64) -> serde_json::Value {
    json!([{"sku_id": sku_id, "quantity": 1}])
}

async fn answered(request: impl std::future::Future<Output = reqwest::Response>, what: &str) -> Answer {
    answer_within(ANSWER_BOUND, request).await.unwrap_or_else(|| panic!("{what}: no answer within {ANSWER_BOUND:?}"))
}

/// A payment callback's answer must be one the contract allows.
fn assert_payment_answer(answer: &Answer, what: &str) {
    let allowed = (answer.status == 200 && answer.body["status"] == "paid")
        || (answer.status == 409 && answer.code() == Some("order_closed"))
        || answer.is_unavailable();
    assert!(allowed, "{what}: not a contract answer: {answer:?}");
}

/// Pays like a provider does: the same callback again after every 503, a bounded number of
/// times. Returns every answer, the last one settled.
async fn pay_until_settled(app: &TestApp, order_id: i64, trade_no: &str, pay_cents: i64) -> Vec<Answer> {
    let mut answers = Vec::new();
    for _ in 0..PAYMENT_RETRIES_MAX {
        let answer = answered(app.pay(order_id, trade_no, pay_cents), trade_no).await;
        assert_payment_answer(&answer, trade_no);
        let retry_after = answer.retry_after.clone();
        let settled = answer.status != 503;
        answers.push(answer);
        if settled {
            return answers;
        }
        let seconds = retry_after.and_then(|s| s.parse().ok()).unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    panic!("{trade_no}: still 503 after {PAYMENT_RETRIES_MAX} retries: {answers:?}");
}

async fn pay_deadline_ms(app: &TestApp, order_id: i64) -> i64 {
    app.count(&format!("SELECT pay_deadline FROM trade_order WHERE id = {order_id}")).await
}

/// Waits for a wall-clock moment (a deadline), not for another request.
async fn until_past(moment_ms: i64) {
    let left_ms = moment_ms - wall_clock_ms() as i64 + 50;
    tokio::time::sleep(Duration::from_millis(left_ms.max(0) as u64)).await;
}

#[derive(Clone, Copy)]
enum Locked {
    OrderRow,
    InventoryRow,
}

/// Buyer A pays the last unit while another connection holds a row it needs; then, once the
/// lock is gone and A's deadline passed, buyer B tries to buy the same unit.
async fn a_payment_under_a_row_lock_sells_once(locked: Locked) {
    const LOCK_HOLD: Duration = Duration::from_millis(3_500);
    let app = spawn_with(short_deadlines()).await;
    let sku_id = app.create_sku("Last seat", 900, 1).await;
    let (order_a, pay_a) = app.placed(7, sku_id, 1).await;

    let (select, id) = match locked {
        Locked::OrderRow => (LOCK_ORDER, order_a),
        Locked::InventoryRow => (LOCK_INVENTORY, sku_id),
    };
    let lock = app.lock_rows(select, id, LOCK_HOLD).await;
    let during = answered(app.pay(order_a, "trade-a", pay_a), "A's payment under the lock").await;
    eprintln!("A's payment under the lock: {}", during.summary());
    assert_payment_answer(&during, "A's payment under the lock");
    lock.released().await;
    until_past(pay_deadline_ms(&app, order_a).await).await;

    let mut answers_a = vec![during];
    answers_a.extend(pay_until_settled(&app, order_a, "trade-a", pay_a).await);
    let placed_b = answered(app.place_order(8, "b", one_unit(sku_id)), "B's order").await;
    let answers_b = match placed_b.status {
        201 => pay_until_settled(&app, placed_b.body["order_id"].as_i64().unwrap(), "trade-b", pay_a).await,
        _ => Vec::new(),
    };
    let brief = |answers: &[Answer]| answers.iter().map(Answer::summary).collect::<Vec<_>>();
    eprintln!("A: {:?}; B placed {}; B paid {:?}", brief(&answers_a), placed_b.status, brief(&answers_b));

    let statuses = app.order_statuses(sku_id).await;
    let sold_orders = statuses.values().filter(|s| matches!(s.as_str(), "paid" | "finished")).count();
    assert!(sold_orders <= 1, "one unit, {sold_orders} orders sold: {statuses:?}");
    app.assert_sku_conserved(sku_id).await;
    let a_told_paid = answers_a.iter().any(|a| a.status == 200);
    if a_told_paid {
        assert_eq!(statuses[&order_a], "paid", "A was answered paid");
        assert_ne!(placed_b.status, 201, "A was answered paid, yet B got the unit");
    }
    let settled_a = answers_a.last().expect("A was answered");
    if settled_a.status == 409 {
        assert!(!a_told_paid, "A was answered paid, then order_closed");
        let kept = "SELECT COUNT(*) FROM payment WHERE out_trade_no = 'trade-a' AND status = 'refund_required'";
        assert_eq!(app.count(kept).await, 1, "A's refused payment is kept for refund");
        assert_eq!(placed_b.status, 201, "A's order closed, so its unit is back on the shelf: {placed_b:?}");
        assert_eq!(answers_b.last().map(|a| a.status), Some(200), "B pays the unit A did not get");
    }
}

#[actix_web::test]
async fn a_locked_order_row_during_payment_never_sells_a_unit_twice() {
    a_payment_under_a_row_lock_sells_once(Locked::OrderRow).await;
}

#[actix_web::test]
async fn a_locked_inventory_row_during_payment_never_sells_a_unit_twice() {
    a_payment_under_a_row_lock_sells_once(Locked::InventoryRow).await;
}

/// Places one order of one unit for each of `buyers` distinct users, a bounded number at a time.
async fn place_one_unit_each(app: &TestApp, sku_id: i64, buyers: std::ops::Range<i64>) -> Vec<i64> {
    futures::stream::iter(buyers)
        .map(|buyer| async move { app.placed(buyer, sku_id, 1).await.0 })
        .buffer_unordered(PLACING_CONCURRENCY_MAX)
        .collect()
        .await
}

/// The state an older build could leave: orders paid and their payments stored, but the
/// reservations never confirmed, and for `expired` of them the lease even expired (its units
/// put back on the shelf under a paid order).
async fn lose_the_confirms(app: &TestApp, sku_id: i64, expired: i64) {
    let now_ms = wall_clock_ms() as i64;
    let of_sku = "id IN (SELECT order_id FROM trade_order_item WHERE sku_id = ?)";
    let statements = [
        format!("UPDATE trade_order SET status = 'paid', version = version + 1, updated_at = {now_ms} WHERE {of_sku}"),
        format!(
            "INSERT INTO order_status_log (order_id, from_status, to_status, version, created_at) \
             SELECT id, 'pending_payment', 'paid', version, {now_ms} FROM trade_order WHERE {of_sku}"
        ),
        format!(
            "INSERT INTO payment (out_trade_no, order_id, amount_cents, channel, status, created_at, updated_at) \
             SELECT CONCAT('trade-', id), id, pay_cents, 'test', 'paid', {now_ms}, {now_ms} FROM trade_order \
             WHERE {of_sku}"
        ),
        format!(
            "UPDATE inventory_reservation SET status = 'expired', updated_at = {now_ms} \
             WHERE sku_id = ? AND status = 'reserved' ORDER BY order_id LIMIT {expired}"
        ),
        format!(
            "UPDATE inventory SET reserved = reserved - {expired}, available = available + {expired}, \
             version = version + 1, updated_at = {now_ms} WHERE sku_id = ?"
        ),
    ];
    let mut transaction = app.db.begin().await.expect("BEGIN");
    for statement in &statements {
        sqlx::query(statement).bind(sku_id).execute(&mut *transaction).await.expect(statement);
    }
    transaction.commit().await.expect("COMMIT");
}

#[actix_web::test]
async fn paid_orders_whose_confirm_was_lost_keep_their_units_after_restart() {
    const UNITS: i64 = 3_000;
    const EXPIRED: i64 = 500;
    let app = spawn_with(AppOptions::new(Backend::MySql)).await;
    let sku_id = app.create_sku("Sold out course", 4_900, UNITS).await;
    let orders = place_one_unit_each(&app, sku_id, 10_000..10_000 + UNITS).await;
    assert_eq!(orders.len() as i64, UNITS);
    lose_the_confirms(&app, sku_id, EXPIRED).await;

    let lock = app.lock_rows(LOCK_INVENTORY, sku_id, Duration::from_millis(1_500)).await;
    let again = restart(&app).await;
    lock.released().await;

    let reservations = again.reservations(sku_id).await;
    let unconfirmed: Vec<_> = reservations.iter().filter(|(_, (_, status))| status != "confirmed").collect();
    assert_eq!(reservations.len() as i64, UNITS);
    assert!(unconfirmed.is_empty(), "{} of {UNITS} paid orders' units not confirmed", unconfirmed.len());
    let counters = again.db_counters(sku_id).await;
    assert_eq!((counters.total, counters.available, counters.reserved, counters.sold), (UNITS, 0, 0, UNITS));
    let fresh = answered(again.place_order(1, "fresh", one_unit(sku_id)), "a fresh order").await;
    assert_eq!((fresh.status, fresh.code()), (409, Some("insufficient_stock")), "{fresh:?}");
    again.assert_sku_conserved(sku_id).await;
}

#[actix_web::test]
async fn deadlines_passed_during_an_outage_close_soon_after_it() {
    const ORDERS: i64 = 100;
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut options = AppOptions::new(Backend::MySql);
    options.extra.push(("TIANJI_PAY_TIMEOUT", "2s".into()));
    let proxied = spawn_behind_proxy(options).await;
    let app = &proxied.app;
    let sku_id = app.create_sku("Flash", 100, ORDERS).await;
    place_one_unit_each(app, sku_id, 100..100 + ORDERS).await;

    let outage_started_ms = wall_clock_ms() as i64;
    proxied.proxy.set(Mode::Refuse);
    tokio::time::sleep(OUTAGE).await;
    proxied.proxy.set(Mode::Pass);
    let returned = Instant::now();
    let latest_deadline_ms = app.count("SELECT MAX(pay_deadline) FROM trade_order").await;
    assert!(latest_deadline_ms > outage_started_ms, "the deadlines passed before the outage");
    assert!(latest_deadline_ms < wall_clock_ms() as i64, "the outage ended before the deadlines");

    let all_closed = eventually(Duration::from_secs(10), || async {
        let closed = app.count("SELECT COUNT(*) FROM trade_order WHERE status = 'closed'").await;
        let counters = app.db_counters(sku_id).await;
        closed == ORDERS && (counters.available, counters.reserved) == (ORDERS, 0)
    })
    .await;
    let closed = app.count("SELECT COUNT(*) FROM trade_order WHERE status = 'closed'").await;
    let counters = app.db_counters(sku_id).await;
    eprintln!("{:?} after the database returned: {closed} of {ORDERS} closed, {counters:?}", returned.elapsed());
    assert!(all_closed, "10 s after the outage: {closed} of {ORDERS} orders closed, {counters:?}");
    app.assert_sku_conserved(sku_id).await;
}

/// One new order and one readiness probe while the proxy is in `mode`, with their timings.
async fn probe(app: &TestApp, sku_id: i64, buyer: i64, mode: &str) -> (Option<Answer>, Option<Answer>) {
    let order = answer_within(ANSWER_BOUND, app.place_order(buyer, "k", one_unit(sku_id))).await;
    let ready = answer_within(ANSWER_BOUND, app.readyz()).await;
    let show = |answer: &Option<Answer>| match answer {
        Some(answer) => answer.summary(),
        None => format!("no answer within {ANSWER_BOUND:?}"),
    };
    eprintln!("{mode}: new order {}; /readyz {}", show(&order), show(&ready));
    (order, ready)
}

#[actix_web::test]
async fn failures_are_fast_while_the_database_is_gone() {
    let proxied = spawn_behind_proxy(AppOptions::new(Backend::MySql)).await;
    let app = &proxied.app;
    let sku_id = app.create_sku("Warm", 100, 1_000).await;
    app.placed(1, sku_id, 1).await;

    proxied.proxy.set(Mode::Refuse);
    let refused = probe(app, sku_id, 2, "refuse").await;
    proxied.proxy.set(Mode::Stall);
    let stalled = probe(app, sku_id, 3, "stall").await;
    proxied.proxy.set(Mode::Pass);
    let returned = Instant::now();
    let mut buyer = 100;
    let served = eventually(Duration::from_secs(10), || {
        buyer += 1;
        let placed = answer_within(FAIL_FAST_BOUND, app.place_order(buyer, "k", one_unit(sku_id)));
        async move { placed.await.is_some_and(|a| a.status == 201) }
    })
    .await;
    eprintln!("pass: a new order placed {:?} after the database returned (served: {served})", returned.elapsed());

    for (mode, (order, ready)) in [("refuse", refused), ("stall", stalled)] {
        let order = order.unwrap_or_else(|| panic!("{mode}: a new order got no answer within {ANSWER_BOUND:?}"));
        assert!(order.is_unavailable(), "{mode}: a new order answered {order:?}");
        assert!(order.elapsed < FAIL_FAST_BOUND, "{mode}: a new order took {:?}", order.elapsed);
        let ready = ready.unwrap_or_else(|| panic!("{mode}: /readyz got no answer within {ANSWER_BOUND:?}"));
        assert_eq!(ready.status, 503, "{mode}: /readyz answered {ready:?}");
        assert!(ready.elapsed < FAIL_FAST_BOUND, "{mode}: /readyz took {:?}", ready.elapsed);
    }
    assert!(served, "no order was placed within 10 s of the database's return");
}
