//! Promotions through `Core` on SQLite and MariaDB: coupon claims racing for a template's last
//! coupons and a user's limit, one coupon in two orders, per-user purchase limits across a
//! cancel and a restart, sale windows on a manual clock, and a coupon's life with its order.
//!
//! Every story runs once per backend, on a fresh database, straight through `Core` (no HTTP),
//! on a `ManualClock`: time moves only when the story moves it, nothing sleeps. Each asserts
//! exact counts from the replies, then reads the database itself, and ends with `audit`, which
//! checks the promotion invariants over every row.

use crate::helpers::{on_both_backends, Backend, TestDatabase};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tianji::actors::coupon::ClaimFailure;
use tianji::actors::user::{PlaceError, Placed};
use tianji::actors::{ActorLimits, Core};
use tianji::domain::clock::ManualClock;
use tianji::domain::coupon::{ClaimError, Coupon, TemplateDraft, TemplateInput};
use tianji::domain::order::Order;
use tianji::domain::sale::Sale;
use tianji::domain::sku::SkuDraft;
use tianji::domain::{Cents, CouponId, IdempotencyKey, OrderEvent, PlaceOrder, SkuId, TemplateId, UserId};
use tianji::persistence::redis::Snapshots;

const START_MS: i64 = 1_800_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Long in real time too: the deadline timer waits `deadline - now` of real time, so within a
/// test it never fires by itself; stories time orders out by moving the clock and asking.
const PAY_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Generous, so a loaded CI machine answers slowly rather than `Unavailable`.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

on_both_backends!(
    thousands_of_users_race_for_the_last_coupons,
    one_user_racing_claims_meets_the_per_user_limit,
    one_coupon_in_two_concurrent_orders_goes_to_one,
    a_purchase_limit_holds_under_a_race_a_cancel_and_a_restart,
    a_sale_is_open_only_inside_its_window_at_its_price,
    a_coupon_follows_its_order_and_discounts_it_exactly,
    a_coupon_below_its_min_spend_is_refused_and_kept,
    the_auditor_sees_each_broken_invariant,
);

/// A `Core` on a fresh database and a manual clock, with the test's own pool on the database.
struct Fixture {
    core: Arc<Core>,
    clock: Arc<ManualClock>,
    db: AnyPool,
    /// Snowflake worker of the running core; a restart takes the next one, so ids made in the
    /// same millisecond by the old and the new core never collide.
    worker_id: u16,
    // Last, so the pool above closes before the database is dropped.
    database: TestDatabase,
}

/// Mailboxes and queues (they take `mailbox_capacity`: the pipeline's, and the activation
/// loaders') above the largest burst a story sends, 5,000 claims at once. The stories check who
/// wins a race, not backpressure: at the default 4,096, a few hundred of the 5,000 users'
/// activations meet a full loader queue and are refused (503) before they reach the template.
fn limits() -> ActorLimits {
    ActorLimits { mailbox_capacity: 8_192, database_timeout: DATABASE_TIMEOUT, ..ActorLimits::default() }
}

async fn fixture(backend: Backend) -> Fixture {
    let database = TestDatabase::create(backend).await;
    let clock = ManualClock::starting_at(START_MS);
    let core = start_core(&database.url, &clock, 1).await;
    let db = AnyPoolOptions::new().max_connections(2).connect(&database.url).await.expect("test pool");
    Fixture { core, clock, db, worker_id: 1, database }
}

async fn start_core(url: &str, clock: &Arc<ManualClock>, worker_id: u16) -> Arc<Core> {
    let store = tianji::persistence::connect(url, true, DATABASE_TIMEOUT).await.expect("the store opens");
    let snapshots = Arc::new(Snapshots::in_process());
    Core::start_with_clock(store, snapshots, limits(), worker_id, PAY_TIMEOUT, 2, clock.clone())
}

impl Fixture {
    /// Stops the core and starts another on the same database, as a process restart would.
    async fn restart(&mut self) {
        self.core.stop();
        self.worker_id += 1;
        self.core = start_core(&self.database.url, &self.clock, self.worker_id).await;
    }

    async fn sku(&self, price_cents: i64, stock: i64, sale: Sale) -> SkuId {
        let draft = SkuDraft { name: "Course".into(), price_cents: Cents::new(price_cents), stock, sale };
        self.core.create_sku(draft).await.expect("sku created").sku_id
    }

    async fn template(&self, draft: TemplateDraft) -> TemplateId {
        self.core.create_template(draft).await.expect("template created").id
    }

    async fn claim(&self, user: i64, template_id: TemplateId) -> Coupon {
        self.core.receive_coupon(UserId::new(user), template_id).await.expect("coupon claimed")
    }

    async fn place(
        &self,
        user: i64,
        key: &str,
        lines: &[(SkuId, i64)],
        coupon_id: Option<CouponId>,
    ) -> Result<Placed, PlaceError> {
        let raw: Vec<(i64, i64)> = lines.iter().map(|(sku_id, units)| (sku_id.get(), *units)).collect();
        let request = PlaceOrder { coupon_id, ..PlaceOrder::parse(&raw).expect("valid lines") };
        self.core.place_order(UserId::new(user), IdempotencyKey::parse(key).expect("valid key"), request).await
    }

    async fn placed(&self, user: i64, key: &str, lines: &[(SkuId, i64)], coupon_id: Option<CouponId>) -> Order {
        match self.place(user, key, lines, coupon_id).await {
            Ok(Placed::Created(order)) => order,
            other => panic!("expected a new order under {key}, got {other:?}"),
        }
    }

    async fn pay(&self, order: &Order) -> Order {
        let trade_no = format!("t-{}", order.id);
        self.core.pay_order(order.id, trade_no, order.pay_cents, "test".into()).await.expect("paid")
    }

    async fn act(&self, order: &Order, event: OrderEvent) -> Order {
        self.core.act_on_order(order.id, event, None).await.unwrap_or_else(|e| panic!("{event:?}: {e:?}"))
    }

    async fn count(&self, sql: &str, id: i64) -> i64 {
        sqlx::query(sql).bind(id).fetch_one(&self.db).await.expect("count").get::<i64, _>(0)
    }

    /// `(total, available, reserved, sold, version)` of a SKU as stored.
    async fn counters(&self, sku_id: SkuId) -> (i64, i64, i64, i64, i64) {
        let row = sqlx::query("SELECT total, available, reserved, sold, version FROM inventory WHERE sku_id = ?")
            .bind(sku_id.get())
            .fetch_one(&self.db)
            .await
            .expect("inventory row");
        (row.get("total"), row.get("available"), row.get("reserved"), row.get("sold"), row.get("version"))
    }

    /// `(status, order_id)` of a coupon as stored.
    async fn coupon_row(&self, coupon_id: CouponId) -> (String, Option<i64>) {
        let row = sqlx::query("SELECT status, order_id FROM coupon_record WHERE id = ?")
            .bind(coupon_id.get())
            .fetch_one(&self.db)
            .await
            .expect("coupon row");
        (row.get("status"), row.get("order_id"))
    }

    async fn purchased_units(&self, user: i64, sku_id: SkuId) -> Option<i64> {
        sqlx::query("SELECT units FROM user_sku_purchase WHERE user_id = ? AND sku_id = ?")
            .bind(user)
            .bind(sku_id.get())
            .fetch_optional(&self.db)
            .await
            .expect("purchase row")
            .map(|row| row.get("units"))
    }

    async fn audit(&self) {
        audit(&self.db).await;
    }
}

fn amount_off(discount_cents: i64, total: i64, per_user_limit: i64, valid_until_ms: i64) -> TemplateDraft {
    template_draft("amount_off", Some(discount_cents), None, total, per_user_limit, valid_until_ms)
}

fn percent_off(percent: i64, total: i64, per_user_limit: i64, valid_until_ms: i64) -> TemplateDraft {
    template_draft("percent_off", None, Some(percent), total, per_user_limit, valid_until_ms)
}

fn template_draft(
    kind: &str,
    discount_cents: Option<i64>,
    percent_off: Option<i64>,
    total: i64,
    per_user_limit: i64,
    valid_until_ms: i64,
) -> TemplateDraft {
    TemplateDraft::parse(&template_input(kind, discount_cents, percent_off, total, per_user_limit, valid_until_ms))
        .expect("valid template")
}

fn template_input(
    kind: &str,
    discount_cents: Option<i64>,
    percent_off: Option<i64>,
    total: i64,
    per_user_limit: i64,
    valid_until_ms: i64,
) -> TemplateInput<'_> {
    TemplateInput {
        name: "Promotion",
        kind,
        discount_cents,
        percent_off,
        max_discount_cents: None,
        min_spend_cents: 0,
        total,
        per_user_limit,
        claim_starts_at_ms: None,
        claim_ends_at_ms: None,
        valid_until_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// The stories.

/// 5,000 users at once for 500 coupons: exactly 500 get one, the rest are told it is sold out,
/// and the template's count is exactly its rows.
async fn thousands_of_users_race_for_the_last_coupons(backend: Backend) {
    const USERS: i64 = 5_000;
    const TOTAL: i64 = 500;
    let f = fixture(backend).await;
    let template_id = f.template(amount_off(100, TOTAL, 1, START_MS + DAY_MS)).await;

    let claims = (1..=USERS).map(|user| f.core.receive_coupon(UserId::new(user), template_id));
    let results = futures::future::join_all(claims).await;

    let won: Vec<&Coupon> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let sold_out = results.iter().filter(|r| **r == Err(ClaimFailure::Refused(ClaimError::SoldOut))).count();
    let other: Vec<_> = results.iter().filter(|r| matches!(r, Err(e) if *e != ClaimError::SoldOut.into())).collect();
    assert!(other.is_empty(), "{} unexpected refusals, first: {:?}", other.len(), other.first());
    assert_eq!((won.len() as i64, sold_out as i64), (TOTAL, USERS - TOTAL));
    let winners: HashSet<UserId> = won.iter().map(|coupon| coupon.user_id).collect();
    assert_eq!(winners.len() as i64, TOTAL, "no user won twice");
    assert_eq!(f.core.template_state(template_id).await.expect("template").issued, TOTAL);

    let id = template_id.get();
    assert_eq!(f.count("SELECT issued FROM coupon_template WHERE id = ?", id).await, TOTAL);
    assert_eq!(f.count("SELECT COUNT(*) FROM coupon_record WHERE template_id = ?", id).await, TOTAL);
    assert_eq!(f.count("SELECT COUNT(DISTINCT user_id) FROM coupon_record WHERE template_id = ?", id).await, TOTAL);
    let stored: HashSet<i64> = sqlx::query("SELECT user_id FROM coupon_record WHERE template_id = ?")
        .bind(id)
        .fetch_all(&f.db)
        .await
        .expect("coupon rows")
        .iter()
        .map(|row| row.get("user_id"))
        .collect();
    assert_eq!(stored, winners.iter().map(|user| user.get()).collect(), "the stored holders are the winners");
    f.audit().await;
}

/// One user claiming 50 times at once from a template of 3 per user: 3 coupons, numbered 1 to 3.
async fn one_user_racing_claims_meets_the_per_user_limit(backend: Backend) {
    let f = fixture(backend).await;
    let template_id = f.template(amount_off(100, 1_000, 3, START_MS + DAY_MS)).await;

    let claims = (0..50).map(|_| f.core.receive_coupon(UserId::new(7), template_id));
    let results = futures::future::join_all(claims).await;

    let won = results.iter().filter(|r| r.is_ok()).count();
    let limited = results.iter().filter(|r| **r == Err(ClaimFailure::Refused(ClaimError::LimitReached))).count();
    assert_eq!((won, limited), (3, 47), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(f.core.template_state(template_id).await.expect("template").issued, 3);

    let seqs: Vec<i64> =
        sqlx::query("SELECT seq FROM coupon_record WHERE template_id = ? AND user_id = ? ORDER BY seq")
            .bind(template_id.get())
            .bind(7_i64)
            .fetch_all(&f.db)
            .await
            .expect("coupon rows")
            .iter()
            .map(|row| row.get("seq"))
            .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(f.count("SELECT issued FROM coupon_template WHERE id = ?", template_id.get()).await, 3);
    f.audit().await;
}

/// Two orders of one user with the same coupon at once: one is placed with it, the other is
/// refused and holds no stock. Once the winner is cancelled the coupon serves the other.
async fn one_coupon_in_two_concurrent_orders_goes_to_one(backend: Backend) {
    let f = fixture(backend).await;
    let sku_id = f.sku(1_000, 10, Sale::default()).await;
    let template_id = f.template(amount_off(300, 10, 1, START_MS + DAY_MS)).await;
    let coupon = f.claim(1, template_id).await;

    // Different units per order, so the stock held tells whose order holds it.
    let (one, two) = futures::future::join(
        f.place(1, "one", &[(sku_id, 1)], Some(coupon.id)),
        f.place(1, "two", &[(sku_id, 2)], Some(coupon.id)),
    )
    .await;
    let (winner, winner_units, loser_key, loser_units, loser) = match (&one, &two) {
        (Ok(Placed::Created(order)), refused) => (order.clone(), 1, "two", 2, refused),
        (refused, Ok(Placed::Created(order))) => (order.clone(), 2, "one", 1, refused),
        other => panic!("exactly one order is placed, got {other:?}"),
    };
    assert_eq!(*loser, Err(PlaceError::CouponUnavailable));
    assert_eq!((winner.coupon_id, winner.discount_cents.get()), (Some(coupon.id), 300));
    assert_eq!(f.coupon_row(coupon.id).await, ("locked".into(), Some(winner.id.get())));
    let (total, available, reserved, sold, _) = f.counters(sku_id).await;
    assert_eq!((total, available, reserved, sold), (10, 10 - winner_units, winner_units, 0));
    assert_eq!(f.count("SELECT COUNT(*) FROM trade_order WHERE user_id = ?", 1).await, 1);
    f.audit().await;

    // Released by the winner's cancel, the coupon is the loser's to use.
    f.act(&winner, OrderEvent::Cancel).await;
    assert_eq!(f.coupon_row(coupon.id).await, ("unused".into(), None));
    let second = f.placed(1, loser_key, &[(sku_id, loser_units)], Some(coupon.id)).await;
    assert_eq!(f.coupon_row(coupon.id).await, ("locked".into(), Some(second.id.get())));
    let (_, available, reserved, _, _) = f.counters(sku_id).await;
    assert_eq!((available, reserved), (10 - loser_units, loser_units));
    f.audit().await;
}

/// 20 orders of one unit at once from one user on a SKU limited to 3 per user: 3 placed. A
/// cancel gives one unit back to the allowance; a restarted core still counts the other 3.
async fn a_purchase_limit_holds_under_a_race_a_cancel_and_a_restart(backend: Backend) {
    let mut f = fixture(backend).await;
    let sale = Sale { per_user_limit: Some(3), ..Sale::default() };
    let sku_id = f.sku(500, 100, sale).await;
    let refused = Err(PlaceError::PurchaseLimitReached { sku_id, limit: 3 });

    let keys: Vec<String> = (0..20).map(|n| format!("race-{n}")).collect();
    let one_unit = [(sku_id, 1)];
    let orders = keys.iter().map(|key| f.place(9, key, &one_unit, None));
    let results = futures::future::join_all(orders).await;
    let placed: Vec<&Order> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Placed::Created(order)) => Some(order),
            _ => None,
        })
        .collect();
    let limited = results.iter().filter(|r| **r == refused).count();
    assert_eq!((placed.len(), limited), (3, 17), "{:?}", results.iter().find(|r| r.is_err() && **r != refused));
    assert!(placed.iter().all(|order| order.items.iter().all(|item| item.limit_counted)));
    assert_eq!(f.purchased_units(9, sku_id).await, Some(3));
    let (total, available, reserved, sold, _) = f.counters(sku_id).await;
    assert_eq!((total, available, reserved, sold), (100, 97, 3, 0));
    f.audit().await;

    // A cancel gives its unit back: one more order fits, and no more.
    f.act(placed[0], OrderEvent::Cancel).await;
    assert_eq!(f.purchased_units(9, sku_id).await, Some(2));
    f.placed(9, "after-cancel", &[(sku_id, 1)], None).await;
    assert_eq!(f.place(9, "one-too-many", &[(sku_id, 1)], None).await, refused);
    assert_eq!(f.purchased_units(9, sku_id).await, Some(3));

    // A new core reads the allowance from the database.
    f.restart().await;
    assert_eq!(f.place(9, "after-restart", &[(sku_id, 1)], None).await, refused);
    assert_eq!(f.purchased_units(9, sku_id).await, Some(3));
    let (total, available, reserved, sold, _) = f.counters(sku_id).await;
    assert_eq!((total, available, reserved, sold), (100, 97, 3, 0));
    assert_eq!(f.count("SELECT COUNT(*) FROM trade_order WHERE user_id = ?", 9).await, 4);
    f.audit().await;
}

/// Before its window a sale refuses and writes nothing; inside it the order pays the sale
/// price; from its end on it refuses again.
async fn a_sale_is_open_only_inside_its_window_at_its_price(backend: Backend) {
    let f = fixture(backend).await;
    let (starts_at_ms, ends_at_ms) = (START_MS + HOUR_MS, START_MS + 2 * HOUR_MS);
    let sale = Sale::parse(Some(600), Some(starts_at_ms), Some(ends_at_ms), None).expect("valid sale");
    let sku_id = f.sku(1_000, 5, sale).await;
    let before = f.counters(sku_id).await;

    f.clock.advance_ms(HOUR_MS - 1);
    assert_eq!(f.place(1, "early", &[(sku_id, 1)], None).await, Err(PlaceError::SaleNotStarted(sku_id)));
    assert_eq!(f.counters(sku_id).await, before, "a refusal writes nothing");
    assert_eq!(f.count("SELECT COUNT(*) FROM trade_order WHERE user_id = ?", 1).await, 0);

    f.clock.advance_ms(1);
    let order = f.placed(1, "on-time", &[(sku_id, 2)], None).await;
    let item = &order.items[0];
    assert_eq!((item.price_cents.get(), item.quantity, item.pay_cents.get()), (600, 2, 1_200));
    assert_eq!((order.total_cents.get(), order.discount_cents.get(), order.pay_cents.get()), (1_200, 0, 1_200));
    let stored_price = f.count("SELECT price_cents FROM trade_order_item WHERE order_id = ?", order.id.get()).await;
    assert_eq!(stored_price, 600);
    let after_order = f.counters(sku_id).await;
    assert_eq!((after_order.1, after_order.2), (3, 2));

    f.clock.advance_ms(HOUR_MS - 1);
    f.placed(2, "last-moment", &[(sku_id, 1)], None).await;
    let last = f.counters(sku_id).await;
    f.clock.advance_ms(1);
    assert_eq!(f.place(3, "late", &[(sku_id, 1)], None).await, Err(PlaceError::SaleEnded(sku_id)));
    assert_eq!(f.counters(sku_id).await, last, "a refusal writes nothing");
    assert_eq!((last.1, last.2), (2, 3));
    assert_eq!(f.count("SELECT COUNT(*) FROM trade_order WHERE user_id = ?", 3).await, 0);
    f.audit().await;
}

/// Payment uses the coupon, a cancel or a timeout gives it back, a refund gives it back while
/// it is valid and leaves it used once it expired; the discount is exact and spread over the
/// items.
async fn a_coupon_follows_its_order_and_discounts_it_exactly(backend: Backend) {
    let f = fixture(backend).await;
    let book = f.sku(1_000, 50, Sale::default()).await;
    let pen = f.sku(333, 50, Sale::default()).await;
    let amount = f.template(amount_off(300, 100, 5, START_MS + 10 * DAY_MS)).await;
    let percent = f.template(percent_off(15, 100, 1, START_MS + 2 * HOUR_MS)).await;
    let mut wallet = Vec::new();
    for _ in 0..4 {
        wallet.push(f.claim(1, amount).await);
    }
    let short_lived = f.claim(1, percent).await;

    // Pay consumes.
    let paid = f.placed(1, "paid", &[(book, 2)], Some(wallet[0].id)).await;
    assert_eq!((paid.total_cents.get(), paid.discount_cents.get(), paid.pay_cents.get()), (2_000, 300, 1_700));
    assert_eq!(f.coupon_row(wallet[0].id).await, ("locked".into(), Some(paid.id.get())));
    f.pay(&paid).await;
    assert_eq!(f.coupon_row(wallet[0].id).await, ("used".into(), Some(paid.id.get())));

    // Cancel releases.
    let cancelled = f.placed(1, "cancelled", &[(book, 1)], Some(wallet[1].id)).await;
    assert_eq!(cancelled.discount_cents.get(), 300);
    f.act(&cancelled, OrderEvent::Cancel).await;
    assert_eq!(f.coupon_row(wallet[1].id).await, ("unused".into(), None));

    // Timeout releases.
    let timed_out = f.placed(1, "timed-out", &[(pen, 1)], Some(wallet[2].id)).await;
    assert_eq!((timed_out.discount_cents.get(), timed_out.pay_cents.get()), (300, 33));
    f.clock.advance_ms(PAY_TIMEOUT.as_millis() as i64 + 1);
    let closed = f.core.time_out_order(timed_out.id).await.expect("timed out");
    assert_eq!(closed.status.as_str(), "closed");
    assert_eq!(f.coupon_row(wallet[2].id).await, ("unused".into(), None));

    // A refund of a paid order returns a valid coupon, which then serves another order.
    f.act(&paid, OrderEvent::Refund).await;
    assert_eq!(f.coupon_row(wallet[0].id).await, ("unused".into(), None));
    let reused = f.placed(1, "reused", &[(book, 1)], Some(wallet[0].id)).await;
    assert_eq!(f.coupon_row(wallet[0].id).await, ("locked".into(), Some(reused.id.get())));
    f.audit().await;

    // Percent off over two lines: floor(15% of 2,333) = 349, spread so the items sum exactly.
    let mixed = f.placed(1, "mixed", &[(book, 2), (pen, 1)], Some(short_lived.id)).await;
    assert_eq!((mixed.total_cents.get(), mixed.discount_cents.get(), mixed.pay_cents.get()), (2_333, 349, 1_984));
    assert_items_sum_to_the_order(&mixed);
    for order in [&paid, &cancelled, &timed_out, &reused] {
        assert_items_sum_to_the_order(order);
    }
    f.pay(&mixed).await;
    assert_eq!(f.coupon_row(short_lived.id).await, ("used".into(), Some(mixed.id.get())));

    // Refunded after the coupon expired: it stays used, with its order.
    f.clock.advance_ms(2 * HOUR_MS);
    let refunded = f.act(&mixed, OrderEvent::Refund).await;
    assert_eq!(refunded.status.as_str(), "refunded");
    assert_eq!(f.coupon_row(short_lived.id).await, ("used".into(), Some(mixed.id.get())));
    assert_eq!(f.count("SELECT COUNT(*) FROM trade_order WHERE coupon_id IS NOT NULL AND user_id = ?", 1).await, 5);
    f.audit().await;
}

/// An order below the coupon's minimum spend is refused and holds nothing: the coupon stays
/// unused and serves the next order that reaches it, whose discount stops at the template's cap.
async fn a_coupon_below_its_min_spend_is_refused_and_kept(backend: Backend) {
    let f = fixture(backend).await;
    let sku_id = f.sku(1_000, 10, Sale::default()).await;
    let capped = TemplateInput {
        min_spend_cents: 1_500,
        max_discount_cents: Some(120),
        ..template_input("percent_off", None, Some(50), 10, 1, START_MS + DAY_MS)
    };
    let template_id = f.template(TemplateDraft::parse(&capped).expect("valid template")).await;
    let coupon = f.claim(1, template_id).await;
    let before = f.counters(sku_id).await;

    let refused = f.place(1, "below", &[(sku_id, 1)], Some(coupon.id)).await;
    assert!(matches!(refused, Err(PlaceError::CouponMinSpendNotMet(_))), "{refused:?}");
    assert_eq!(f.coupon_row(coupon.id).await, ("unused".into(), None));
    assert_eq!(f.counters(sku_id).await, before, "a refusal writes nothing");

    let order = f.placed(1, "above", &[(sku_id, 2)], Some(coupon.id)).await;
    assert_eq!((order.total_cents.get(), order.discount_cents.get(), order.pay_cents.get()), (2_000, 120, 1_880));
    assert_eq!(f.coupon_row(coupon.id).await, ("locked".into(), Some(order.id.get())));
    let (total, available, reserved, sold, _) = f.counters(sku_id).await;
    assert_eq!((total, available, reserved, sold), (10, 8, 2, 0));
    f.audit().await;
}

fn assert_items_sum_to_the_order(order: &Order) {
    let pay_sum: i64 = order.items.iter().map(|item| item.pay_cents.get()).sum();
    assert_eq!(pay_sum, order.pay_cents.get(), "items pay the order: {order:?}");
    assert_eq!(order.pay_cents.get(), order.total_cents.get() - order.discount_cents.get());
    for item in &order.items {
        let line_cents = item.price_cents.get() * item.quantity;
        assert!((0..=line_cents).contains(&item.pay_cents.get()), "item pays 0..={line_cents}: {item:?}");
    }
}

/// The auditor passes on a sound database and fails on each kind of broken row it is there to
/// see, one at a time (each break is undone before the next).
async fn the_auditor_sees_each_broken_invariant(backend: Backend) {
    use futures::FutureExt;
    let f = fixture(backend).await;
    let sku_id = f.sku(1_000, 10, Sale { per_user_limit: Some(5), ..Sale::default() }).await;
    let template_id = f.template(amount_off(100, 10, 2, START_MS + DAY_MS)).await;
    let coupon = f.claim(1, template_id).await;
    let order = f.placed(1, "k", &[(sku_id, 2)], Some(coupon.id)).await;
    f.audit().await;

    let (sku, template, coupon, order) = (sku_id.get(), template_id.get(), coupon.id.get(), order.id.get());
    let breaks: [(&str, &str, i64); 6] = [
        (
            "UPDATE coupon_template SET issued = issued - 1 WHERE id = ?",
            "UPDATE coupon_template SET issued = issued + 1 WHERE id = ?",
            template,
        ),
        (
            "UPDATE coupon_record SET status = 'used' WHERE id = ?",
            "UPDATE coupon_record SET status = 'locked' WHERE id = ?",
            coupon,
        ),
        (
            "UPDATE user_sku_purchase SET units = units + 1 WHERE sku_id = ?",
            "UPDATE user_sku_purchase SET units = units - 1 WHERE sku_id = ?",
            sku,
        ),
        (
            "UPDATE inventory SET reserved = reserved - 1, sold = sold + 1 WHERE sku_id = ?",
            "UPDATE inventory SET reserved = reserved + 1, sold = sold - 1 WHERE sku_id = ?",
            sku,
        ),
        (
            "UPDATE inventory_reservation SET quantity = quantity + 1 WHERE order_id = ?",
            "UPDATE inventory_reservation SET quantity = quantity - 1 WHERE order_id = ?",
            order,
        ),
        (
            "UPDATE trade_order_item SET pay_cents = pay_cents + 1 WHERE order_id = ?",
            "UPDATE trade_order_item SET pay_cents = pay_cents - 1 WHERE order_id = ?",
            order,
        ),
    ];
    for (break_sql, undo_sql, id) in breaks {
        let changed = sqlx::query(break_sql).bind(id).execute(&f.db).await.expect(break_sql).rows_affected();
        assert_eq!(changed, 1, "{break_sql}");
        let caught = std::panic::AssertUnwindSafe(f.audit()).catch_unwind().await.is_err();
        assert!(caught, "the auditor missed: {break_sql}");
        sqlx::query(undo_sql).bind(id).execute(&f.db).await.expect(undo_sql);
    }
    f.audit().await;
}

// ---------------------------------------------------------------------------------------------
// The auditor.

struct AuditOrder {
    user_id: i64,
    status: String,
    total_cents: i64,
    discount_cents: i64,
    pay_cents: i64,
    coupon_id: Option<i64>,
}

struct AuditItem {
    order_id: i64,
    sku_id: i64,
    price_cents: i64,
    quantity: i64,
    pay_cents: i64,
    limit_counted: bool,
}

struct AuditCoupon {
    id: i64,
    user_id: i64,
    template_id: i64,
    seq: i64,
    status: String,
    order_id: Option<i64>,
    valid_until_ms: i64,
}

/// Checks the promotion invariants over every row of the database:
/// - a template's `issued` is its coupon rows, within `0..=total`; a user's coupons of a
///   template are numbered `1..=n` with `n <= per_user_limit`;
/// - a coupon holds an order exactly when it is not unused; a locked coupon's order awaits
///   payment with that coupon; a used coupon's order is paid or finished, or was refunded after
///   the coupon expired (a refund returns only a valid coupon);
/// - an order pays `total - discount`, its items pay it exactly, each within `0..=` its line;
/// - `user_sku_purchase.units` is the limit-counted units of the user's orders that hold them:
///   awaiting payment, paid, finished, or refunded after delivery (from finished);
/// - per SKU the counters balance, `reserved` is the units of orders awaiting payment (and of
///   its open reservation rows), `sold` those of orders paid, finished or refunded from finished.
async fn audit(db: &AnyPool) {
    let fetch = |sql: &'static str| async move { sqlx::query(sql).fetch_all(db).await.expect(sql) };

    let orders: HashMap<i64, AuditOrder> =
        fetch("SELECT id, user_id, status, total_cents, discount_cents, pay_cents, coupon_id FROM trade_order")
            .await
            .iter()
            .map(|r| {
                let order = AuditOrder {
                    user_id: r.get("user_id"),
                    status: r.get("status"),
                    total_cents: r.get("total_cents"),
                    discount_cents: r.get("discount_cents"),
                    pay_cents: r.get("pay_cents"),
                    coupon_id: r.get("coupon_id"),
                };
                (r.get("id"), order)
            })
            .collect();
    let items: Vec<AuditItem> =
        fetch("SELECT order_id, sku_id, price_cents, quantity, pay_cents, limit_counted FROM trade_order_item")
            .await
            .iter()
            .map(|r| AuditItem {
                order_id: r.get("order_id"),
                sku_id: r.get("sku_id"),
                price_cents: r.get("price_cents"),
                quantity: r.get("quantity"),
                pay_cents: r.get("pay_cents"),
                limit_counted: r.get::<i64, _>("limit_counted") != 0,
            })
            .collect();
    // order id -> (from status, at) of its refund.
    let refunds: HashMap<i64, (String, i64)> =
        fetch("SELECT order_id, from_status, created_at FROM order_status_log WHERE to_status = 'refunded'")
            .await
            .iter()
            .map(|r| (r.get("order_id"), (r.get("from_status"), r.get("created_at"))))
            .collect();
    let coupons: Vec<AuditCoupon> =
        fetch("SELECT id, user_id, template_id, seq, status, order_id, valid_until FROM coupon_record")
            .await
            .iter()
            .map(|r| AuditCoupon {
                id: r.get("id"),
                user_id: r.get("user_id"),
                template_id: r.get("template_id"),
                seq: r.get("seq"),
                status: r.get("status"),
                order_id: r.get("order_id"),
                valid_until_ms: r.get("valid_until"),
            })
            .collect();

    audit_templates(&fetch("SELECT id, total, issued, per_user_limit FROM coupon_template").await, &coupons);
    audit_coupons(&coupons, &orders, &refunds);
    audit_orders(&orders, &items);
    audit_purchases(&fetch("SELECT user_id, sku_id, units FROM user_sku_purchase").await, &orders, &items, &refunds);
    let reservations = fetch("SELECT sku_id, quantity FROM inventory_reservation WHERE status = 'reserved'").await;
    audit_inventory(
        &fetch("SELECT sku_id, total, available, reserved, sold FROM inventory").await,
        &reservations,
        &orders,
        &items,
        &refunds,
    );
}

/// Whether an order's units are still the buyer's: refunded from finished (after delivery)
/// keeps them, like paid and finished; refunded from paid and closed give them back.
fn holds_units(order_id: i64, status: &str, refunds: &HashMap<i64, (String, i64)>) -> bool {
    match status {
        "pending_payment" | "paid" | "finished" => true,
        "refunded" => refunds.get(&order_id).is_some_and(|(from, _)| from == "finished"),
        _ => false,
    }
}

fn audit_templates(templates: &[sqlx::any::AnyRow], coupons: &[AuditCoupon]) {
    for template in templates {
        let (id, total, issued, limit): (i64, i64, i64, i64) =
            (template.get("id"), template.get("total"), template.get("issued"), template.get("per_user_limit"));
        let rows: Vec<&AuditCoupon> = coupons.iter().filter(|c| c.template_id == id).collect();
        assert_eq!(issued, rows.len() as i64, "template {id}: issued is its coupon rows");
        assert!((0..=total).contains(&issued), "template {id}: issued {issued} outside 0..={total}");
        let mut seqs: HashMap<i64, Vec<i64>> = HashMap::new();
        for coupon in rows {
            seqs.entry(coupon.user_id).or_default().push(coupon.seq);
        }
        for (user, mut held) in seqs {
            held.sort_unstable();
            let expected: Vec<i64> = (1..=held.len() as i64).collect();
            assert_eq!(held, expected, "template {id}, user {user}: coupons numbered 1..=n");
            assert!(held.len() as i64 <= limit, "template {id}, user {user}: {} coupons, limit {limit}", held.len());
        }
    }
}

fn audit_coupons(coupons: &[AuditCoupon], orders: &HashMap<i64, AuditOrder>, refunds: &HashMap<i64, (String, i64)>) {
    for coupon in coupons {
        let id = coupon.id;
        assert_eq!(coupon.order_id.is_some(), coupon.status != "unused", "coupon {id}: an order iff not unused");
        let Some(order_id) = coupon.order_id else { continue };
        let order = orders.get(&order_id).unwrap_or_else(|| panic!("coupon {id}: its order {order_id} exists"));
        assert_eq!(order.coupon_id, Some(id), "coupon {id}: its order {order_id} names it");
        assert_eq!(order.user_id, coupon.user_id, "coupon {id}: its order is its user's");
        match coupon.status.as_str() {
            "locked" => assert_eq!(order.status, "pending_payment", "coupon {id} locked by order {order_id}"),
            "used" => {
                let refunded_after_expiry = order.status == "refunded"
                    && refunds.get(&order_id).is_some_and(|(_, at_ms)| *at_ms > coupon.valid_until_ms);
                assert!(
                    matches!(order.status.as_str(), "paid" | "finished") || refunded_after_expiry,
                    "coupon {id} used by order {order_id} in status {}",
                    order.status
                );
            }
            other => panic!("coupon {id}: unknown status {other}"),
        }
    }
    // From the order's side: an order awaiting payment or paid holds its coupon.
    for (order_id, order) in orders {
        let Some(coupon_id) = order.coupon_id else { continue };
        let coupon = coupons.iter().find(|c| c.id == coupon_id);
        let coupon = coupon.unwrap_or_else(|| panic!("order {order_id}: its coupon {coupon_id} exists"));
        let held = (coupon.status.as_str(), coupon.order_id == Some(*order_id));
        match order.status.as_str() {
            "pending_payment" => assert_eq!(held, ("locked", true), "order {order_id} holds coupon {coupon_id}"),
            "paid" | "finished" => assert_eq!(held, ("used", true), "order {order_id} used coupon {coupon_id}"),
            _ => assert!(held.0 == "used" || !held.1, "closed order {order_id} still locks coupon {coupon_id}"),
        }
    }
}

fn audit_orders(orders: &HashMap<i64, AuditOrder>, items: &[AuditItem]) {
    for (order_id, order) in orders {
        let mine: Vec<&AuditItem> = items.iter().filter(|item| item.order_id == *order_id).collect();
        assert!(!mine.is_empty(), "order {order_id} has items");
        let total: i64 = mine.iter().map(|item| item.price_cents * item.quantity).sum();
        let paid: i64 = mine.iter().map(|item| item.pay_cents).sum();
        assert_eq!(order.total_cents, total, "order {order_id}: total is its lines");
        assert_eq!(
            order.pay_cents,
            order.total_cents - order.discount_cents,
            "order {order_id}: pays total - discount"
        );
        assert_eq!(order.pay_cents, paid, "order {order_id}: items pay the order");
        assert!((0..=order.total_cents).contains(&order.discount_cents), "order {order_id}: discount within total");
        for item in mine {
            let line = item.price_cents * item.quantity;
            assert!((0..=line).contains(&item.pay_cents), "order {order_id}: item pays {} of {line}", item.pay_cents);
        }
    }
}

fn audit_purchases(
    rows: &[sqlx::any::AnyRow],
    orders: &HashMap<i64, AuditOrder>,
    items: &[AuditItem],
    refunds: &HashMap<i64, (String, i64)>,
) {
    let mut expected: HashMap<(i64, i64), i64> = HashMap::new();
    for item in items.iter().filter(|item| item.limit_counted) {
        let order = &orders[&item.order_id];
        if holds_units(item.order_id, &order.status, refunds) {
            *expected.entry((order.user_id, item.sku_id)).or_insert(0) += item.quantity;
        }
    }
    let stored: HashMap<(i64, i64), i64> =
        rows.iter().map(|r| ((r.get("user_id"), r.get("sku_id")), r.get("units"))).collect();
    for key in expected.keys().chain(stored.keys()).collect::<HashSet<_>>() {
        let (want, have) = (expected.get(key).copied().unwrap_or(0), stored.get(key).copied().unwrap_or(0));
        assert_eq!(have, want, "(user, sku) {key:?}: stored units are the units its orders hold");
    }
}

fn audit_inventory(
    skus: &[sqlx::any::AnyRow],
    reservations: &[sqlx::any::AnyRow],
    orders: &HashMap<i64, AuditOrder>,
    items: &[AuditItem],
    refunds: &HashMap<i64, (String, i64)>,
) {
    for sku in skus {
        let sku_id: i64 = sku.get("sku_id");
        let (total, available, reserved, sold): (i64, i64, i64, i64) =
            (sku.get("total"), sku.get("available"), sku.get("reserved"), sku.get("sold"));
        assert_eq!(available + reserved + sold, total, "sku {sku_id}: counters balance");
        assert!(available >= 0 && reserved >= 0 && sold >= 0, "sku {sku_id}: counters never negative");
        let units_where = |held: &dyn Fn(i64, &str) -> bool| -> i64 {
            let of_sku = items.iter().filter(|item| item.sku_id == sku_id);
            of_sku.filter(|item| held(item.order_id, &orders[&item.order_id].status)).map(|item| item.quantity).sum()
        };
        let pending = units_where(&|_, status| status == "pending_payment");
        let sold_units = units_where(&|id, status| status != "pending_payment" && holds_units(id, status, refunds));
        let open: i64 = reservations
            .iter()
            .filter(|r| r.get::<i64, _>("sku_id") == sku_id)
            .map(|r| r.get::<i64, _>("quantity"))
            .sum();
        assert_eq!(reserved, pending, "sku {sku_id}: reserved is the units of orders awaiting payment");
        assert_eq!(reserved, open, "sku {sku_id}: reserved is its open reservation rows");
        assert_eq!(sold, sold_units, "sku {sku_id}: sold is the units of orders paid, finished or delivered");
    }
}
