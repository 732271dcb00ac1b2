//! `tianji reconcile [--fix]`, the real binary against a real database (and Redis on MariaDB):
//! a database after a normal lifecycle is clean (exit 0); each kind of difference written by
//! hand is reported with its kind and key (exit 1); `--fix` repairs the safe ones and says so,
//! leaves the rest reported (a template count a running actor is not fenced against with
//! "stop the nodes first"), and a running server's actor is fenced by a counter repair; missing
//! or wrong order events are reported and never written; a database that is not migrated is
//! refused (exit 2).

use crate::helpers::{spawn_app, status_and_json, Backend, TestApp, TestDatabase, JWT_SECRET, PAYMENT_SECRET};
use serde_json::json;
use std::process::Output;
use tianji::reconcile::{EXIT_CLEAN, EXIT_DIFFERENCES, EXIT_ERROR};

/// How many placements may meet the fence a counter repair sets before one goes through: the
/// fenced actor fails its callers once, then the next activation serves from the repaired row.
const PLACEMENTS_AFTER_FENCE_MAX: usize = 3;

/// The output of `tianji reconcile` (with `--fix` when `fix`) on `database_url`, with Redis at
/// `redis_url` or without Redis.
pub async fn run_reconcile(database_url: &str, redis_url: Option<&str>, fix: bool) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tianji"));
    // The settings `serve` reads, secrets included (MariaDB requires them to be set).
    command
        .arg("reconcile")
        .env("TIANJI_DATABASE_URL", database_url)
        .env("TIANJI_JWT_SECRET", JWT_SECRET)
        .env("TIANJI_PAYMENT_SECRET", PAYMENT_SECRET)
        .env("RUST_LOG", "error");
    match redis_url {
        Some(url) => command.env("TIANJI_REDIS_URL", url),
        None => command.env_remove("TIANJI_REDIS_URL"),
    };
    if fix {
        command.arg("--fix");
    }
    command.output().await.expect("the tianji binary runs")
}

/// Runs `tianji reconcile` (checking the snapshots in Redis when `redis_url` is given) and
/// requires a clean result: the end check of the load and kill tests.
pub async fn assert_reconciles_clean(database_url: &str, redis_url: Option<&str>) {
    let output = run_reconcile(database_url, redis_url, false).await;
    let report = Report::of(&output);
    assert_eq!(report.code, EXIT_CLEAN, "reconcile found differences:\n{}", report.text);
}

/// A reconcile run as the test reads it.
struct Report {
    code: u8,
    text: String,
}

impl Report {
    fn of(output: &Output) -> Report {
        let code = output.status.code().expect("reconcile exits with a code") as u8;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Report { code, text }
    }

    /// Whether a line starts with `prefix` (`difference`, `fixed`, `left`) and names `kind` and
    /// `key` as its next two fields.
    fn has(&self, prefix: &str, kind: &str, key: &str) -> bool {
        self.text.lines().any(|line| {
            let mut fields = line.split(' ');
            fields.next() == Some(prefix) && fields.next() == Some(kind) && fields.next() == Some(key)
        })
    }

    fn count(&self, prefix: &str) -> usize {
        self.text.lines().filter(|line| line.starts_with(&format!("{prefix} "))).count()
    }
}

async fn reconcile(app: &TestApp, fix: bool) -> Report {
    Report::of(&run_reconcile(&app.database.url, app.redis.as_deref(), fix).await)
}

/// What the lifecycle left, for the test to tamper with.
struct Lifecycle {
    /// A SKU with an order awaiting payment on it.
    open_sku: i64,
    /// A limited SKU (per-user limit 3) with a paid order of user 11 on it.
    limited_sku: i64,
    /// A SKU whose leases the test breaks.
    broken_sku: i64,
    template_id: i64,
    /// A paid order of user 11 that used a coupon.
    coupon_order: i64,
    coupon_id: i64,
    /// An order of user 11 cancelled before payment, and what it would have cost.
    cancelled: (i64, i64),
}

async fn place(app: &TestApp, user_id: i64, sku_id: i64, quantity: i64) -> (i64, i64) {
    let (status, order) = status_and_json(
        app.place_order(
            user_id,
            &format!("k-{}", rand::random::<u64>()),
            json!([{"sku_id": sku_id, "quantity": quantity}]),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "place: {order}");
    (order["order_id"].as_i64().unwrap(), order["pay_cents"].as_i64().unwrap())
}

async fn pay(app: &TestApp, order_id: i64, pay_cents: i64) {
    let (status, body) = status_and_json(app.pay(order_id, &format!("t-{order_id}"), pay_cents).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("paid")), "pay: {body}");
}

async fn act(app: &TestApp, order_id: i64, action: &str, expected: &str) {
    let token = if action == "cancel" { app.user_token(11) } else { app.admin_token() };
    let (status, body) = status_and_json(app.order_action(&token, order_id, action).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some(expected)), "{action}: {body}");
}

/// Orders placed, paid, cancelled, finished and refunded (before and after delivery), coupons
/// claimed and used, on three SKUs; then the Redis snapshots caught up with the database.
async fn lifecycle(app: &TestApp) -> Lifecycle {
    let open_sku = app.create_sku("open", 1_000, 10).await;
    let limited =
        app.create_sku_from(json!({"name": "limited", "price_cents": 500, "stock": 10, "per_user_limit": 3})).await;
    let limited_sku = limited["sku_id"].as_i64().unwrap();
    let broken_sku = app.create_sku("broken", 300, 10).await;
    let valid_until = crate::helpers::rfc3339_from_now(3_600);
    let (status, template) = app
        .create_template(json!({"name": "100 off", "kind": "amount_off", "discount_cents": 100,
            "min_spend_cents": 0, "total": 5, "per_user_limit": 2, "valid_until": valid_until}))
        .await;
    assert_eq!(status, 201, "{template}");
    let template_id = template["template_id"].as_i64().unwrap();
    let (status, coupon) = app.receive_coupon(11, template_id).await;
    assert_eq!(status, 201, "{coupon}");
    let coupon_id = coupon["coupon_id"].as_i64().unwrap();
    let (status, _) = app.receive_coupon(12, template_id).await;
    assert_eq!(status, 201);

    // A paid order with the coupon, on the limited SKU.
    let (status, order) = app.place_with_coupon(11, json!([{"sku_id": limited_sku, "quantity": 2}]), coupon_id).await;
    assert_eq!(status, 201, "{order}");
    let coupon_order = order["order_id"].as_i64().unwrap();
    pay(app, coupon_order, order["pay_cents"].as_i64().unwrap()).await;
    // Awaiting payment; cancelled; refunded before delivery; refunded after delivery; finished.
    place(app, 11, open_sku, 1).await;
    let cancelled = place(app, 11, open_sku, 2).await;
    act(app, cancelled.0, "cancel", "closed").await;
    let (returned, cents) = place(app, 11, limited_sku, 1).await;
    pay(app, returned, cents).await;
    act(app, returned, "refund", "refunded").await;
    let (delivered, cents) = place(app, 12, open_sku, 1).await;
    pay(app, delivered, cents).await;
    act(app, delivered, "finish", "finished").await;
    act(app, delivered, "refund", "refunded").await;
    let (finished, cents) = place(app, 12, broken_sku, 3).await;
    pay(app, finished, cents).await;
    act(app, finished, "finish", "finished").await;
    place(app, 13, broken_sku, 1).await;

    if app.redis.is_some() {
        for sku_id in [open_sku, limited_sku, broken_sku] {
            let version = app.db_counters(sku_id).await.version;
            let snapshot = app.redis_snapshot(sku_id, version).await;
            assert_eq!(snapshot.get("version"), Some(&version), "the snapshot of sku {sku_id} caught up");
        }
    }
    Lifecycle { open_sku, limited_sku, broken_sku, template_id, coupon_order, coupon_id, cancelled }
}

async fn a_normal_lifecycle_reconciles_clean(backend: Backend) {
    let app = spawn_app(backend).await;
    lifecycle(&app).await;
    let report = reconcile(&app, false).await;
    assert_eq!(report.code, EXIT_CLEAN, "{}", report.text);
    assert_eq!(report.count("difference"), 0, "{}", report.text);
    let summary = report.text.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(
            "reconcile: clean; 3 skus, 7 leases, 7 orders, 1 templates, 2 coupons, 1 purchase rows, 3 lessons"
        ),
        "{summary}"
    );
    assert_eq!(summary.contains("redis snapshots checked"), backend == Backend::MySql, "{summary}");
}

crate::helpers::on_both_backends!(a_normal_lifecycle_reconciles_clean);

async fn execute(app: &TestApp, sql: &str, bind: i64) {
    let result = sqlx::query(sql).bind(bind).execute(&app.db).await.expect(sql);
    assert_eq!(result.rows_affected(), 1, "{sql} with {bind}");
}

async fn redis_command(app: &TestApp, command: &mut redis::Cmd) {
    let client = redis::Client::open(app.redis.as_deref().expect("redis")).expect("redis url");
    let mut connection = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
    command.query_async::<()>(&mut connection).await.expect("redis command");
}

#[actix_web::test]
async fn each_difference_is_reported_and_the_safe_ones_are_fixed() {
    let app = spawn_app(Backend::MySql).await;
    let story = lifecycle(&app).await;
    let (open, limited, broken) = (story.open_sku, story.limited_sku, story.broken_sku);
    let (cancelled, cancelled_cents) = story.cancelled;
    // A payment that comes after the close is kept for refund, with its event.
    let (status, body) = status_and_json(app.pay(cancelled, &format!("t-{cancelled}"), cancelled_cents).await).await;
    assert_eq!(status, 409, "a payment for a closed order: {body}");
    let valid_until = crate::helpers::rfc3339_from_now(3_600);
    let (status, template) = app
        .create_template(json!({"name": "50 off", "kind": "amount_off", "discount_cents": 50,
            "min_spend_cents": 0, "total": 5, "per_user_limit": 1, "valid_until": valid_until}))
        .await;
    assert_eq!(status, 201, "{template}");
    let overcounted = template["template_id"].as_i64().unwrap();
    let (status, _) = app.receive_coupon(13, overcounted).await;
    assert_eq!(status, 201);
    // Safe to repair: counters the leases prove, an issued count the records prove (raised to
    // them), snapshots.
    execute(&app, "UPDATE inventory SET reserved = reserved - 1, available = available + 1 WHERE sku_id = ?", open)
        .await;
    execute(&app, "UPDATE coupon_template SET issued = issued - 1 WHERE id = ?", story.template_id).await;
    redis_command(&app, redis::cmd("HSET").arg(format!("tianji:sku:{limited}")).arg("sold").arg(99)).await;
    redis_command(&app, redis::cmd("DEL").arg(format!("tianji:sku:{broken}"))).await;
    // Not safe: a lease let go under a finished order, a purchase count, a lesson, a coupon.
    execute(
        &app,
        "UPDATE inventory_reservation SET status = 'released' WHERE status = 'confirmed' AND sku_id = ?",
        broken,
    )
    .await;
    execute(&app, "UPDATE user_sku_purchase SET units = units + 1 WHERE user_id = 11 AND sku_id = ?", limited).await;
    execute(&app, "UPDATE learning_lesson SET holders = holders + 1 WHERE user_id = 11 AND course_id = ?", limited)
        .await;
    execute(&app, "UPDATE coupon_record SET status = 'unused', order_id = NULL WHERE id = ?", story.coupon_id).await;
    // Not while a node runs: an issued count above the records (the template's running actor
    // is not fenced against lowering it).
    execute(&app, "UPDATE coupon_template SET issued = issued + 1 WHERE id = ?", overcounted).await;
    // Never: events are history. A paid event gone (moved to an order that does not exist), a
    // closed event turned into a paid one, a refund_required event gone.
    let paid_event = "UPDATE order_event SET order_id = -order_id WHERE kind = 'paid' AND order_id = ?";
    execute(&app, paid_event, story.coupon_order).await;
    execute(&app, "UPDATE order_event SET kind = 'paid' WHERE kind = 'closed' AND order_id = ?", cancelled).await;
    let kept_event = "UPDATE order_event SET order_id = -order_id WHERE kind = 'refund_required' AND order_id = ?";
    execute(&app, kept_event, cancelled).await;

    let report = reconcile(&app, false).await;
    assert_eq!(report.code, EXIT_DIFFERENCES, "{}", report.text);
    let (open_key, broken_key) = (format!("sku:{open}"), format!("sku:{broken}"));
    let template_key = format!("template:{}", story.template_id);
    let safe = [
        ("sku_counters", open_key.clone()),
        ("snapshot_counters", format!("tianji:sku:{open}")),
        ("coupon_issued", template_key.clone()),
        ("snapshot_counters", format!("tianji:sku:{limited}")),
        ("snapshot_missing", format!("tianji:sku:{broken}")),
    ];
    let lease_key = format!("lease:{broken}/");
    let unsafe_ones = [
        ("sku_counters", broken_key.clone()),
        ("sku_items", broken_key.clone()),
        ("purchase_units", format!("purchase:11/{limited}")),
        ("lesson_holders", format!("lesson:11/{limited}")),
        ("coupon_order", format!("order:{}", story.coupon_order)),
        ("coupon_issued", format!("template:{overcounted}")),
        ("event_missing", format!("order:{}", story.coupon_order)),
        ("event_mismatch", format!("order:{cancelled}")),
        ("event_missing", format!("order:{cancelled}")),
    ];
    for (kind, key) in safe.iter().chain(&unsafe_ones) {
        assert!(report.has("difference", kind, key), "{kind} {key} not reported:\n{}", report.text);
    }
    let lease_line = report.text.lines().find(|l| l.starts_with(&format!("difference lease_status {lease_key}")));
    assert!(lease_line.is_some_and(|l| l.ends_with("found=released")), "{}", report.text);
    assert_eq!(report.count("difference"), safe.len() + unsafe_ones.len() + 1, "{}", report.text);

    let fixed = reconcile(&app, true).await;
    assert_eq!(fixed.code, EXIT_DIFFERENCES, "unsafe differences stay:\n{}", fixed.text);
    for (kind, key) in &safe {
        assert!(fixed.has("fixed", kind, key), "{kind} {key} not fixed:\n{}", fixed.text);
    }
    for (kind, key) in &unsafe_ones {
        assert!(fixed.has("left", kind, key), "{kind} {key} not left:\n{}", fixed.text);
    }
    let lowered = fixed.text.lines().find(|l| l.starts_with(&format!("left coupon_issued template:{overcounted} ")));
    assert!(lowered.is_some_and(|l| l.ends_with("stop the nodes first)")), "{}", fixed.text);
    let refund_line = format!("left event_missing order:{cancelled} expected=refund_required_events>=1 ");
    assert!(fixed.text.contains(&refund_line), "{}", fixed.text);
    assert_eq!(fixed.count("left"), unsafe_ones.len() + 1, "{}", fixed.text);
    assert_eq!(fixed.count("unfixed"), 0, "{}", fixed.text);

    let again = reconcile(&app, false).await;
    assert_eq!(again.code, EXIT_DIFFERENCES, "{}", again.text);
    assert_eq!(again.count("difference"), unsafe_ones.len() + 1, "only the unsafe ones are left:\n{}", again.text);
    let counters = app.db_counters(open).await;
    assert_eq!((counters.reserved, counters.available, counters.sold), (1, 8, 1), "{counters:?}");
    let issued = app.count(&format!("SELECT issued FROM coupon_template WHERE id = {}", story.template_id)).await;
    assert_eq!(issued, 2);
    let issued = app.count(&format!("SELECT issued FROM coupon_template WHERE id = {overcounted}")).await;
    assert_eq!(issued, 2, "not lowered while a node may run");
    let events = app.count(&format!("SELECT COUNT(*) FROM order_event WHERE order_id = {cancelled}")).await;
    assert_eq!(events, 2, "no event is written");

    // The repair fenced the SKU's running actor: its next commit is refused, it reloads from
    // the repaired row, and the SKU goes on selling from there.
    let mut placed = None;
    for _ in 0..PLACEMENTS_AFTER_FENCE_MAX {
        let key = format!("k-{}", rand::random::<u64>());
        let response = app.place_order(14, &key, json!([{"sku_id": open, "quantity": 1}])).await;
        let (status, body) = status_and_json(response).await;
        if status == 201 {
            placed = Some(body);
            break;
        }
        assert_eq!(status, 503, "a fenced actor answers 503: {body}");
    }
    assert!(placed.is_some(), "no placement went through after the fence");
    let counters = app.db_counters(open).await;
    assert_eq!((counters.reserved, counters.available, counters.sold), (2, 7, 1), "{counters:?}");
    let after = reconcile(&app, false).await;
    assert!(!after.text.contains(&format!(" {open_key} ")), "the repaired sku stays clean:\n{}", after.text);

    // Once the unsafe ones are put right by hand, the fixes left nothing behind.
    execute(
        &app,
        "UPDATE inventory_reservation SET status = 'confirmed' WHERE status = 'released' AND sku_id = ?",
        broken,
    )
    .await;
    execute(&app, "UPDATE user_sku_purchase SET units = units - 1 WHERE user_id = 11 AND sku_id = ?", limited).await;
    execute(&app, "UPDATE learning_lesson SET holders = holders - 1 WHERE user_id = 11 AND course_id = ?", limited)
        .await;
    let restored = sqlx::query("UPDATE coupon_record SET status = 'used', order_id = ? WHERE id = ?")
        .bind(story.coupon_order)
        .bind(story.coupon_id)
        .execute(&app.db)
        .await
        .expect("restore the coupon");
    assert_eq!(restored.rows_affected(), 1);
    execute(&app, "UPDATE coupon_template SET issued = issued - 1 WHERE id = ?", overcounted).await;
    execute(&app, "UPDATE order_event SET order_id = -order_id WHERE order_id = ?", -story.coupon_order).await;
    execute(&app, "UPDATE order_event SET kind = 'closed' WHERE kind = 'paid' AND order_id = ?", cancelled).await;
    execute(&app, "UPDATE order_event SET order_id = -order_id WHERE order_id = ?", -cancelled).await;
    let version = app.db_counters(open).await.version;
    assert_eq!(app.redis_snapshot(open, version).await.get("version"), Some(&version), "the new sale is published");
    let clean = reconcile(&app, false).await;
    assert_eq!(clean.code, EXIT_CLEAN, "{}", clean.text);
}

#[actix_web::test]
async fn a_database_that_is_not_migrated_is_refused() {
    for backend in [Backend::Sqlite, Backend::MySql] {
        let database = TestDatabase::create(backend).await;
        let report = Report::of(&run_reconcile(&database.url, None, false).await);
        assert_eq!(report.code, EXIT_ERROR, "{backend:?}: {}", report.text);
        assert!(report.text.contains("run `tianji migrate` first"), "{backend:?}: {}", report.text);
    }
    let report = Report::of(&run_reconcile("mysql://root@127.0.0.1:1/none", None, false).await);
    assert_eq!(report.code, EXIT_ERROR, "an unreachable database: {}", report.text);
}

/// More SKUs than one part holds, and a lease of a SKU that does not exist: the check pages
/// through every SKU and reads the rows of missing SKUs too.
async fn a_database_larger_than_a_part_is_read_in_parts(backend: Backend) {
    let app = spawn_app(backend).await;
    let skus = tianji::persistence::sql_reconcile::SKUS_PER_PART_MAX as i64 + 1;
    let rows: Vec<String> = (1..=skus)
        .map(|sku_id| {
            // The last SKU (alone in the second part) counts a reservation no lease holds.
            let (available, reserved) = if sku_id == skus { (4, 1) } else { (5, 0) };
            format!("({sku_id}, 'bulk {sku_id}', 100, 5, {available}, {reserved}, 0, 1, 0, 0)")
        })
        .collect();
    let insert = format!(
        "INSERT INTO inventory (sku_id, name, price_cents, total, available, reserved, sold, version, created_at, \
         updated_at) VALUES {}",
        rows.join(", ")
    );
    let inserted = sqlx::query(&insert).execute(&app.db).await.expect("insert skus");
    assert_eq!(inserted.rows_affected(), skus as u64);
    let missing_sku = skus + 1_000;
    execute(
        &app,
        "INSERT INTO inventory_reservation (sku_id, order_id, quantity, status, expires_at, created_at, updated_at) \
         VALUES (?, 5, 1, 'released', 0, 0, 0)",
        missing_sku,
    )
    .await;

    let report = Report::of(&run_reconcile(&app.database.url, None, false).await);
    assert_eq!(report.code, EXIT_DIFFERENCES, "{}", report.text);
    assert!(report.has("difference", "sku_counters", &format!("sku:{skus}")), "{}", report.text);
    let stray = format!("difference lease_status lease:{missing_sku}/5 expected=an_existing_sku found=released");
    assert!(report.text.contains(&stray), "{}", report.text);
    assert_eq!(report.count("difference"), 2, "{}", report.text);
    let summary = report.text.lines().last().unwrap_or_default();
    assert!(summary.starts_with(&format!("reconcile: 2 differences; {skus} skus, 1 leases, 0 orders")), "{summary}");
}

crate::helpers::on_both_backends!(a_database_larger_than_a_part_is_read_in_parts);
