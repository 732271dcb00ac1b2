//! Learning: courses opened by a paid order and revoked by its refund, heartbeats merged and
//! answered from memory, and the progress written behind, every story on SQLite and MariaDB.
//!
//! The HTTP stories run the real server with a learning flush that does not fire by itself
//! within a test (`TIANJI_LEARNING_FLUSH=1h`), so only the story's own
//! `core.flush_learning()` writes progress and the write-behind's counters are exact. The
//! stories where times matter run straight through `Core` on a `ManualClock`. Users are random
//! ids, so nothing another run left in the shared Redis meets them.

use crate::helpers::{
    on_both_backends, restart_with, spawn_with, status_and_json, AppOptions, Backend, LessonRow, TestApp, TestDatabase,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tianji::actors::learning::LearningError;
use tianji::actors::user::Placed;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::clock::ManualClock;
use tianji::domain::learning::{Heartbeat, HeartbeatError, HeartbeatInput, LessonStatus, Progress};
use tianji::domain::order::Order;
use tianji::domain::sale::Sale;
use tianji::domain::sku::SkuDraft;
use tianji::domain::{Cents, IdempotencyKey, PlaceOrder, SkuId, UserId};
use tianji::persistence::redis::Snapshots;

on_both_backends!(
    an_order_opens_its_courses_when_paid_and_a_cancelled_one_never,
    heartbeats_merge_in_memory_in_any_order_and_never_move_back,
    a_course_not_owned_is_403_and_nothing_changes,
    bad_heartbeats_and_queries_are_refused_and_nothing_changes,
    a_refund_revokes_and_buying_again_restores_the_kept_progress,
    a_flush_writes_one_row_per_user_and_course_and_a_restart_reads_it,
    two_hundred_users_beat_at_once_and_one_flush_writes_them_all,
    every_order_of_the_same_heartbeats_gives_the_same_progress,
    progress_times_come_from_the_clock_through_a_flush_and_a_restart,
);

/// Keeps the background flusher out of the way: the stories flush when they mean to.
fn flush_by_hand() -> Vec<(&'static str, String)> {
    vec![("TIANJI_LEARNING_FLUSH", "1h".to_owned())]
}

async fn learning_app(backend: Backend) -> TestApp {
    spawn_with(AppOptions { extra: flush_by_hand(), ..AppOptions::new(backend) }).await
}

/// A user id no other test or earlier run uses (1 is the admin token's).
fn fresh_user() -> i64 {
    1_000_000 + i64::from(rand::random::<u32>())
}

fn beat(course_id: i64, section_id: i64, position_sec: i64) -> Value {
    json!({"course_id": course_id, "section_id": section_id, "position_sec": position_sec})
}

fn finished(course_id: i64, section_id: i64, position_sec: i64) -> Value {
    json!({"course_id": course_id, "section_id": section_id, "position_sec": position_sec, "finished": true})
}

/// `(latest_section_id, position_sec, status)` of a progress body.
fn at(body: &Value) -> (i64, i64, &str) {
    let field = |name: &str| body[name].as_i64().unwrap_or_else(|| panic!("{name} in {body}"));
    (field("latest_section_id"), field("position_sec"), body["status"].as_str().expect("status"))
}

/// The course ids of a lessons list, in its order.
fn course_ids(lessons: &[Value]) -> Vec<i64> {
    lessons.iter().map(|lesson| lesson["course_id"].as_i64().expect("course_id")).collect()
}

/// Milliseconds since the epoch of an RFC 3339 `updated_at`.
fn ms_of(body: &Value) -> i64 {
    let text = body["updated_at"].as_str().unwrap_or_else(|| panic!("updated_at in {body}"));
    let at = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"));
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

fn stored(holders: i64, section: i64, position: i64, status: &str, updated_at_ms: i64) -> LessonRow {
    LessonRow { holders, latest_section_id: section, position_sec: position, status: status.into(), updated_at_ms }
}

/// `(heartbeats, rows_flushed, flushes)` from the admin route, whose `pending_rows` agrees
/// with the core's.
async fn counters(app: &TestApp) -> (i64, i64, i64) {
    let stats = app.learning_stats().await;
    let pending = app.core.learning_pending_rows().0;
    assert_eq!(stats["pending_rows"].as_u64(), Some(pending as u64), "{stats}");
    let field = |name: &str| stats[name].as_i64().unwrap_or_else(|| panic!("{name} in {stats}"));
    (field("heartbeats"), field("rows_flushed"), field("flushes"))
}

async fn flush(app: &TestApp) -> usize {
    app.core.flush_learning().await.expect("the flush commits")
}

async fn an_order_opens_its_courses_when_paid_and_a_cancelled_one_never(backend: Backend) {
    let app = learning_app(backend).await;
    let (buyer, someone_else) = (fresh_user(), fresh_user());
    let rust = app.create_sku("Rust", 1_000, 10).await;
    let sql = app.create_sku("SQL", 500, 10).await;
    let later = app.create_sku("Paid later", 300, 10).await;
    let dropped = app.create_sku("Cancelled", 300, 10).await;
    assert!(app.lessons(buyer).await.is_empty());

    app.bought(buyer, &[rust, sql]).await;
    let (pending, pay_cents) = app.placed(buyer, later, 1).await;
    let (cancelled, _) = app.placed(buyer, dropped, 1).await;
    let (status, order) = status_and_json(app.order_action(&app.user_token(buyer), cancelled, "cancel").await).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("closed")));

    let lessons = app.lessons(buyer).await;
    let mut paid = vec![rust, sql];
    paid.sort_unstable();
    assert_eq!(course_ids(&lessons), paid, "every SKU of the paid order, by course id: {lessons:?}");
    for lesson in &lessons {
        assert_eq!(at(lesson), (0, 0, "not_started"), "{lesson}");
        assert_eq!(lesson["course_id_str"].as_str(), Some(&*lesson["course_id"].to_string()));
        ms_of(lesson);
        let course_id = lesson["course_id"].as_i64().unwrap();
        assert_eq!(app.progress(buyer, course_id).await, (200, lesson.clone()), "one progress, two routes");
        let row = app.lesson_row(buyer, course_id).await.expect("opened in the payment's commit");
        assert_eq!((row.holders, row.latest_section_id, row.status.as_str()), (1, 0, "not_started"));
    }
    for course_id in [later, dropped] {
        let (status, body) = app.progress(buyer, course_id).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("course_not_owned")), "{body}");
        let (status, body) = app.heartbeat(buyer, beat(course_id, 1, 10)).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("course_not_owned")), "{body}");
        assert_eq!(app.lesson_row(buyer, course_id).await, None, "an unpaid order opens nothing");
    }
    assert!(app.lessons(someone_else).await.is_empty(), "the courses are the buyer's alone");

    let (status, order) = status_and_json(app.pay(pending, &format!("t-{pending}"), pay_cents).await).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("paid")));
    let mut owned = vec![rust, sql, later];
    owned.sort_unstable();
    assert_eq!(course_ids(&app.lessons(buyer).await), owned, "paid later, opened then");
    assert_eq!(app.lesson_row(buyer, dropped).await, None);
    assert_eq!(counters(&app).await, (0, 0, 0), "a refused heartbeat is not counted");
}

async fn heartbeats_merge_in_memory_in_any_order_and_never_move_back(backend: Backend) {
    let app = learning_app(backend).await;
    let (in_order, reversed) = (fresh_user(), fresh_user());
    let course = app.create_sku("Course", 1_000, 10).await;
    for user in [in_order, reversed] {
        app.bought(user, &[course]).await;
    }
    let sequence = [(1, 0), (1, 15), (2, 5), (2, 20)];
    for (section, position) in sequence {
        let (status, reply) = app.heartbeat(in_order, beat(course, section, position)).await;
        assert_eq!((status, at(&reply)), (202, (section, position, "learning")), "{reply}");
        assert_eq!(reply["course_id"].as_i64(), Some(course));
    }
    for (section, position) in sequence.into_iter().rev() {
        let (status, reply) = app.heartbeat(reversed, beat(course, section, position)).await;
        assert_eq!((status, at(&reply)), (202, (2, 20, "learning")), "an older heartbeat changes no position");
    }
    let (_, mine) = app.progress(in_order, course).await;
    let (_, theirs) = app.progress(reversed, course).await;
    assert_eq!((at(&mine), at(&theirs)), ((2, 20, "learning"), (2, 20, "learning")));

    // Never back: an earlier section, an earlier position in the same section.
    let mut last = ms_of(&mine);
    for (section, position) in [(1, 500), (2, 19), (2, 0)] {
        let (status, reply) = app.heartbeat(in_order, beat(course, section, position)).await;
        assert_eq!((status, at(&reply)), (202, (2, 20, "learning")), "{reply}");
        assert!(ms_of(&reply) >= last, "updated_at never goes back either");
        last = ms_of(&reply);
    }

    // Read at once, from memory: nothing is in the database yet.
    let (status, reply) = app.heartbeat(in_order, beat(course, 3, 10)).await;
    assert_eq!((status, at(&reply)), (202, (3, 10, "learning")));
    let (status, now) = app.progress(in_order, course).await;
    assert_eq!((status, &now), (200, &reply), "GET shows the latest accepted heartbeat");
    let row = app.lesson_row(in_order, course).await.expect("row");
    assert_eq!((row.latest_section_id, row.position_sec, row.status.as_str()), (0, 0, "not_started"));
    assert_eq!(counters(&app).await, (12, 0, 0));

    // Finished, from an earlier position: finished, the position stays; and it stays finished.
    let (status, reply) = app.heartbeat(in_order, finished(course, 1, 0)).await;
    assert_eq!((status, at(&reply)), (202, (3, 10, "finished")));
    for (section, position) in [(4, 30), (1, 0)] {
        let (status, reply) = app.heartbeat(in_order, beat(course, section, position)).await;
        assert_eq!((status, at(&reply)), (202, (4, 30, "finished")), "studied again, still finished");
    }
    let lessons = app.lessons(in_order).await;
    assert_eq!(lessons.iter().map(at).collect::<Vec<_>>(), [(4, 30, "finished")]);
    assert_eq!(at(&app.lessons(reversed).await[0]), (2, 20, "learning"), "one user's progress is theirs");
}

async fn a_course_not_owned_is_403_and_nothing_changes(backend: Backend) {
    let app = learning_app(backend).await;
    let (owner, stranger) = (fresh_user(), fresh_user());
    let course = app.create_sku("Course", 1_000, 10).await;
    let no_such_course = 12_345;
    app.bought(owner, &[course]).await;
    assert_eq!(app.heartbeat(owner, beat(course, 2, 30)).await.0, 202);
    let (_, before) = app.progress(owner, course).await;

    for (who, course_id) in [(stranger, course), (stranger, no_such_course), (owner, no_such_course)] {
        let (status, body) = app.heartbeat(who, finished(course_id, 9, 0)).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("course_not_owned")), "{body}");
        assert_eq!(body["message"].as_str(), Some(&*format!("course {course_id} is not owned by the user")));
        let (status, body) = app.progress(who, course_id).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("course_not_owned")), "{body}");
    }

    assert_eq!(app.progress(owner, course).await, (200, before), "the owner's progress is untouched");
    assert!(app.lessons(stranger).await.is_empty());
    assert_eq!(counters(&app).await, (1, 0, 0), "refused heartbeats are not counted");
    assert_eq!(flush(&app).await, 1, "only the owner's row is written");
    assert_eq!(app.lesson_row(stranger, course).await, None);
    assert_eq!(app.lesson_row(owner, no_such_course).await, None);
    assert_eq!(app.count("SELECT COUNT(*) FROM learning_lesson").await, 1);
}

/// What a refused request gets: status, code and, when the test pins it, the message.
type Refusal = (u16, &'static str, Option<String>);

/// Sends a raw body to the heartbeat route.
async fn send_raw(app: &TestApp, token: Option<&str>, content_type: &str, body: &str) -> (u16, Value) {
    let mut request =
        app.client.post(app.url("/v1/learning/heartbeats")).header("content-type", content_type).body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    status_and_json(request.send().await.expect("request")).await
}

async fn bad_heartbeats_and_queries_are_refused_and_nothing_changes(backend: Backend) {
    let app = learning_app(backend).await;
    let learner = fresh_user();
    let course = app.create_sku("Course", 1_000, 10).await;
    app.bought(learner, &[course]).await;
    assert_eq!(app.heartbeat(learner, beat(course, 2, 30)).await.0, 202);
    let (_, before) = app.progress(learner, course).await;
    let token = app.user_token(learner);

    let invalid = |error: HeartbeatError| (422, "invalid_heartbeat", Some(error.to_string()));
    let malformed = (400, "malformed_request", None);
    let body = |section: &str, position: &str| {
        format!(r#"{{"course_id": {course}, "section_id": {section}, "position_sec": {position}}}"#)
    };
    // (what, body, (status, code, message))
    let table: Vec<(&str, String, Refusal)> = vec![
        ("negative position", body("1", "-1"), invalid(HeartbeatError::InvalidPosition)),
        ("position past a day", body("1", "86401"), invalid(HeartbeatError::InvalidPosition)),
        ("absurd position", body("1", &i64::MAX.to_string()), invalid(HeartbeatError::InvalidPosition)),
        ("section 0", body("0", "10"), invalid(HeartbeatError::InvalidSection)),
        ("negative section", body("-3", "10"), invalid(HeartbeatError::InvalidSection)),
        ("section past the last", body("1000001", "10"), invalid(HeartbeatError::InvalidSection)),
        ("absurd section", body(&i64::MIN.to_string(), "10"), invalid(HeartbeatError::InvalidSection)),
        ("course 0", beat(0, 1, 10).to_string(), invalid(HeartbeatError::InvalidCourse)),
        ("negative course", beat(-5, 1, 10).to_string(), invalid(HeartbeatError::InvalidCourse)),
        ("bad course before bad section", beat(0, 0, -1).to_string(), invalid(HeartbeatError::InvalidCourse)),
        ("unknown course", finished(12_345, 1, 10).to_string(), (403, "course_not_owned", None)),
        ("position beyond i64", body("1", "1e30"), malformed.clone()),
        ("fractional position", body("1", "1.5"), malformed.clone()),
        ("position as a string", body("1", r#""10""#), malformed.clone()),
        ("section null", body("null", "10"), malformed.clone()),
        (
            "unknown field",
            json!({"course_id": course, "section_id": 9, "position_sec": 0, "user_id": learner}).to_string(),
            malformed.clone(),
        ),
        ("missing section", json!({"course_id": course, "position_sec": 10}).to_string(), malformed.clone()),
        ("missing course", json!({"section_id": 9, "position_sec": 10}).to_string(), malformed.clone()),
        (
            "finished not a bool",
            json!({"course_id": course, "section_id": 9, "position_sec": 0, "finished": "yes"}).to_string(),
            malformed.clone(),
        ),
        ("not JSON", r#"{"course_id": "#.to_owned(), malformed.clone()),
        ("empty body", String::new(), malformed.clone()),
        ("an array", "[]".to_owned(), malformed.clone()),
    ];
    for (what, body, (status, code, message)) in &table {
        let (got, reply) = send_raw(&app, Some(&token), "application/json", body).await;
        assert_eq!((got, reply["code"].as_str()), (*status, Some(*code)), "{what}: {reply}");
        if let Some(message) = message {
            assert_eq!(reply["message"].as_str(), Some(message.as_str()), "{what}");
        }
    }
    let valid = beat(course, 9, 0).to_string();
    let (status, reply) = send_raw(&app, Some(&token), "text/plain", &valid).await;
    assert_eq!((status, reply["code"].as_str()), (415, Some("unsupported_media_type")));
    for token in [None, Some("not-a-token")] {
        let (status, reply) = send_raw(&app, token, "application/json", &valid).await;
        assert_eq!((status, reply["code"].as_str()), (401, Some("unauthorized")), "{reply}");
    }

    // Reads: a bad query, no token, a user token on the admin route.
    for query in ["", "?course_id=abc", "?course_id=99999999999999999999", &format!("?course_id={course}&user=1")] {
        let path = format!("/v1/learning/progress{query}");
        let (status, reply) = app.call(Method::GET, &path, &token, Value::Null).await;
        assert_eq!((status, reply["code"].as_str()), (422, Some("invalid_query")), "{query}: {reply}");
    }
    for course_id in [0, -1] {
        let (status, reply) = app.progress(learner, course_id).await;
        assert_eq!((status, reply["code"].as_str()), (422, Some("invalid_course_id")), "{reply}");
    }
    for path in ["/v1/learning/lessons", &format!("/v1/learning/progress?course_id={course}")] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 401, "{path}");
    }
    let (status, reply) = app.call(Method::GET, "/v1/admin/learning/stats", &token, Value::Null).await;
    assert_eq!((status, reply["code"].as_str()), (403, Some("forbidden")));

    assert_eq!(app.progress(learner, course).await, (200, before), "nothing refused moved the progress");
    assert_eq!(counters(&app).await, (1, 0, 0), "only the one valid heartbeat counted");
    assert_eq!(flush(&app).await, 1);
    assert_eq!(app.lesson_row(learner, course).await.map(|row| row.latest_section_id), Some(2));
    assert_eq!(app.count("SELECT COUNT(*) FROM learning_lesson").await, 1, "no row for a refused course");
}

async fn refund(app: &TestApp, order_id: i64) {
    let (status, order) = status_and_json(app.order_action(&app.admin_token(), order_id, "refund").await).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("refunded")), "{order}");
}

async fn a_refund_revokes_and_buying_again_restores_the_kept_progress(backend: Backend) {
    let app = learning_app(backend).await;
    let buyer = fresh_user();
    let course = app.create_sku("Course", 1_000, 10).await;
    let first = app.bought(buyer, &[course]).await;
    assert_eq!(app.heartbeat(buyer, beat(course, 3, 120)).await.0, 202);
    let second = app.bought(buyer, &[course]).await;
    assert_eq!(app.lesson_row(buyer, course).await.map(|row| row.holders), Some(2), "two paid orders hold it");
    let (_, lesson) = app.progress(buyer, course).await;
    assert_eq!(at(&lesson), (3, 120, "learning"), "a second purchase keeps the progress");

    refund(&app, first).await;
    let (status, reply) = app.heartbeat(buyer, beat(course, 3, 130)).await;
    assert_eq!((status, at(&reply)), (202, (3, 130, "learning")), "the other paid order still holds it");
    assert_eq!(app.lesson_row(buyer, course).await.map(|row| row.holders), Some(1));

    refund(&app, second).await;
    let (status, body) = app.heartbeat(buyer, beat(course, 4, 0)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("course_not_owned")));
    assert_eq!(app.progress(buyer, course).await.0, 403);
    assert!(app.lessons(buyer).await.is_empty(), "a revoked course is not listed");
    let row = app.lesson_row(buyer, course).await.expect("the row stays");
    assert_eq!(
        (row.holders, row.latest_section_id),
        (0, 0),
        "revoked in the refund's commit, progress not yet flushed"
    );

    assert_eq!(flush(&app).await, 1, "progress accepted before the refund is still written");
    let row = app.lesson_row(buyer, course).await.expect("row");
    assert_eq!((row.holders, row.latest_section_id, row.position_sec, row.status.as_str()), (0, 3, 130, "learning"));

    app.bought(buyer, &[course]).await;
    let lessons = app.lessons(buyer).await;
    assert_eq!(lessons.iter().map(at).collect::<Vec<_>>(), [(3, 130, "learning")], "bought again: progress back");
    let (status, reply) = app.heartbeat(buyer, beat(course, 3, 140)).await;
    assert_eq!((status, at(&reply)), (202, (3, 140, "learning")));
    assert_eq!(flush(&app).await, 1);

    let restarted = restart_with(&app, flush_by_hand()).await;
    let lessons = restarted.lessons(buyer).await;
    assert_eq!(lessons.iter().map(at).collect::<Vec<_>>(), [(3, 140, "learning")]);
    assert_eq!(restarted.lesson_row(buyer, course).await.map(|row| row.holders), Some(1));
}

async fn a_flush_writes_one_row_per_user_and_course_and_a_restart_reads_it(backend: Backend) {
    let app = learning_app(backend).await;
    let (alice, bob) = (fresh_user(), fresh_user());
    let (rust, sql) = (app.create_sku("Rust", 1_000, 10).await, app.create_sku("SQL", 500, 10).await);
    app.bought(alice, &[rust, sql]).await;
    app.bought(bob, &[rust]).await;
    assert_eq!(counters(&app).await, (0, 0, 0));
    let opened = app.lesson_row(alice, rust).await.expect("opened");

    // 40 heartbeats of one user and course, 10 of another course, 10 of another user.
    for beat_index in 0..40 {
        let (status, _) = app.heartbeat(alice, beat(rust, 1 + beat_index / 10, (beat_index % 10) * 15)).await;
        assert_eq!(status, 202);
    }
    for beat_index in 0..10 {
        assert_eq!(app.heartbeat(alice, beat(sql, 1, beat_index * 15)).await.0, 202);
        assert_eq!(app.heartbeat(bob, beat(rust, 2, beat_index * 15)).await.0, 202);
    }
    assert_eq!(app.lesson_row(alice, rust).await, Some(opened), "nothing written before the flush");

    assert_eq!(flush(&app).await, 3, "one row per user and course, however many heartbeats");
    assert_eq!(counters(&app).await, (60, 3, 1), "60 heartbeats, 3 rows, one flush");
    for (user, course, expected) in [(alice, rust, (4, 135)), (alice, sql, (1, 135)), (bob, rust, (2, 135))] {
        let (status, progress) = app.progress(user, course).await;
        assert_eq!((status, at(&progress)), (200, (expected.0, expected.1, "learning")));
        let row = stored(1, expected.0, expected.1, "learning", ms_of(&progress));
        assert_eq!(app.lesson_row(user, course).await, Some(row), "the row is what the user was shown");
    }

    assert_eq!(flush(&app).await, 0, "nothing new: nothing written");
    assert_eq!(counters(&app).await, (60, 3, 1));
    assert_eq!(app.heartbeat(alice, beat(rust, 4, 150)).await.0, 202);
    assert_eq!(flush(&app).await, 1);
    assert_eq!(counters(&app).await, (61, 4, 2));

    let restarted = restart_with(&app, flush_by_hand()).await;
    let lessons = restarted.lessons(alice).await;
    let mut expected = vec![(rust, (4, 150, "learning")), (sql, (1, 135, "learning"))];
    expected.sort_unstable();
    let listed: Vec<(i64, (i64, i64, &str))> =
        lessons.iter().map(|l| (l["course_id"].as_i64().unwrap(), at(l))).collect();
    assert_eq!(listed, expected, "a fresh node reads the flushed progress");
    assert_eq!(at(&restarted.progress(bob, rust).await.1), (2, 135, "learning"));
    assert_eq!(counters(&restarted).await, (0, 0, 0), "the figures are the node's since it started");
}

async fn two_hundred_users_beat_at_once_and_one_flush_writes_them_all(backend: Backend) {
    const USERS: i64 = 200;
    let app = learning_app(backend).await;
    let course = app.create_sku("Course", 1_000, USERS).await;
    let first = fresh_user();
    let users: Vec<i64> = (first..first + USERS).collect();
    let courses = [course];
    futures::future::join_all(users.iter().map(|user| app.bought(*user, &courses))).await;

    let beats = |user: i64| {
        let app = &app;
        async move {
            let mut statuses = Vec::new();
            for (section, position) in [(1, 15), (1, 30), (2, 0)] {
                statuses.push(app.heartbeat(user, beat(course, section, position)).await.0);
            }
            statuses
        }
    };
    let statuses = futures::future::join_all(users.iter().map(|user| beats(*user))).await;
    assert!(statuses.iter().flatten().all(|status| *status == 202), "{statuses:?}");

    assert_eq!(flush(&app).await, USERS as usize);
    assert_eq!(counters(&app).await, (3 * USERS, USERS, 1), "600 heartbeats, one row each, one flush");
    let written = format!(
        "SELECT COUNT(*) FROM learning_lesson WHERE course_id = {course} AND latest_section_id = 2 \
         AND position_sec = 0 AND status = 'learning' AND holders = 1"
    );
    assert_eq!(app.count(&written).await, USERS);
}

// Through `Core` on a manual clock, where the times themselves are asserted.

const START_MS: i64 = 1_800_000_000_000;
const BEAT_MS: i64 = 15_000;
/// Long in real time too, so no order times out and no flush fires by itself.
const PAY_TIMEOUT: Duration = Duration::from_secs(3_600);
const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// A `Core` on a fresh database and a manual clock, with no Redis: what a node holds unflushed
/// is all there is.
struct Fixture {
    core: Arc<Core>,
    clock: Arc<ManualClock>,
    worker_id: u16,
    database: TestDatabase,
}

async fn start_core(url: &str, clock: &Arc<ManualClock>, worker_id: u16) -> Arc<Core> {
    let store = tianji::persistence::connect(url, true, DATABASE_TIMEOUT).await.expect("the store opens");
    let limits = ActorLimits {
        database_timeout: DATABASE_TIMEOUT,
        learning_flush: Duration::from_secs(3_600),
        ..ActorLimits::default()
    };
    let snapshots = Arc::new(Snapshots::in_process());
    Core::start_with_clock(store, snapshots, limits, worker_id, PAY_TIMEOUT, 2, clock.clone())
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let database = TestDatabase::create(backend).await;
        let clock = ManualClock::starting_at(START_MS);
        let core = start_core(&database.url, &clock, 1).await;
        Fixture { core, clock, worker_id: 1, database }
    }

    /// Stops the core and starts another on the same database, as a process restart would.
    async fn restart(&mut self) {
        self.core.stop();
        self.worker_id += 1;
        self.core = start_core(&self.database.url, &self.clock, self.worker_id).await;
    }

    async fn course(&self) -> SkuId {
        let draft =
            SkuDraft { name: "Course".into(), price_cents: Cents::new(1_000), stock: 1_000, sale: Sale::default() };
        self.core.create_sku(draft).await.expect("sku created").sku_id
    }

    async fn buy(&self, user: UserId, course: SkuId) -> Order {
        let key = IdempotencyKey::parse(&format!("k-{}", rand::random::<u64>())).expect("valid key");
        let request = PlaceOrder::parse(&[(course.get(), 1)]).expect("valid lines");
        let order = match self.core.place_order(user, key, request).await {
            Ok(Placed::Created(order)) => order,
            other => panic!("expected a new order, got {other:?}"),
        };
        let trade_no = format!("t-{}", order.id);
        self.core.pay_order(order.id, trade_no, order.pay_cents, "test".into()).await.expect("paid")
    }

    async fn beat(&self, user: UserId, course: SkuId, section: i64, position: i64, finished: bool) -> Progress {
        let input = HeartbeatInput {
            course_id: course.get(),
            section_id: section,
            position_sec: position,
            finished: Some(finished),
        };
        let heartbeat = Heartbeat::parse(&input).expect("a valid heartbeat");
        self.core.heartbeat(user, heartbeat).await.expect("accepted")
    }

    async fn flush(&self) -> usize {
        self.core.flush_learning().await.expect("the flush commits")
    }

    async fn progress(&self, user: UserId, course: SkuId) -> Result<Progress, LearningError> {
        self.core.progress(user, course).await
    }
}

fn progress(section: i64, position: i64, status: LessonStatus, updated_at_ms: i64) -> Progress {
    Progress { latest_section_id: section, position_sec: position, status, updated_at_ms }
}

/// Every order of `items`.
fn permutations<T: Copy>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (index, first) in items.iter().enumerate() {
        let rest: Vec<T> = items.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, item)| *item).collect();
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            all.push(tail);
        }
    }
    all
}

/// Four heartbeats (one of them reports the course finished) reach 24 users in each of the 24
/// orders, one step every 15 s: all 24 end in the same state, and no reply ever moves back.
async fn every_order_of_the_same_heartbeats_gives_the_same_progress(backend: Backend) {
    let mut f = Fixture::new(backend).await;
    let course = f.course().await;
    let heartbeats = [(1, 40, false), (2, 10, true), (1, 0, false), (2, 5, false)];
    let orders = permutations(&heartbeats);
    assert_eq!(orders.len(), 24);
    let first = fresh_user();
    let users: Vec<UserId> = (0..orders.len() as i64).map(|i| UserId::new(first + i)).collect();
    for user in &users {
        f.buy(*user, course).await;
    }

    let mut last: Vec<Progress> = vec![Progress::opened(START_MS); users.len()];
    for step in 0..heartbeats.len() {
        f.clock.advance_ms(BEAT_MS);
        for ((user, order), last) in users.iter().zip(&orders).zip(last.iter_mut()) {
            let (section, position, finished) = order[step];
            let reply = f.beat(*user, course, section, position, finished).await;
            assert_eq!(last.join(&reply), reply, "a reply never moves back: {last:?} then {reply:?}");
            *last = reply;
        }
    }
    let expected = progress(2, 10, LessonStatus::Finished, START_MS + 4 * BEAT_MS);
    for (user, order) in users.iter().zip(&orders) {
        assert_eq!(f.progress(*user, course).await, Ok(expected), "{order:?}");
    }
    assert_eq!(f.flush().await, users.len(), "one row per user");
    f.restart().await;
    for user in &users {
        assert_eq!(f.progress(*user, course).await, Ok(expected), "as flushed, times included");
    }
}

/// Opened at the payment's time; each heartbeat's time is the clock's when it arrived; the
/// flushed row carries the same; a restart reads it back, and what was accepted after the last
/// flush is lost on a node without Redis (the window the README states).
async fn progress_times_come_from_the_clock_through_a_flush_and_a_restart(backend: Backend) {
    let mut f = Fixture::new(backend).await;
    let course = f.course().await;
    let learner = UserId::new(fresh_user());
    f.clock.advance_ms(1_000);
    let paid_at_ms = START_MS + 1_000;
    f.buy(learner, course).await;
    let lessons = f.core.lessons(learner).await.expect("lessons");
    assert_eq!(lessons.len(), 1);
    assert_eq!((lessons[0].course_id, lessons[0].progress), (course, Progress::opened(paid_at_ms)));
    assert_eq!(f.progress(UserId::new(fresh_user()), course).await, Err(LearningError::NotOwned(course)));

    f.clock.advance_ms(BEAT_MS);
    assert_eq!(
        f.beat(learner, course, 1, 15, false).await,
        progress(1, 15, LessonStatus::Learning, paid_at_ms + BEAT_MS)
    );
    f.clock.advance_ms(BEAT_MS);
    let latest = progress(1, 30, LessonStatus::Learning, paid_at_ms + 2 * BEAT_MS);
    assert_eq!(f.beat(learner, course, 1, 30, false).await, latest);
    assert_eq!(f.flush().await, 1);

    f.clock.advance_ms(BEAT_MS);
    let unflushed = f.beat(learner, course, 2, 0, false).await;
    assert_eq!(unflushed, progress(2, 0, LessonStatus::Learning, paid_at_ms + 3 * BEAT_MS));
    assert_eq!(f.progress(learner, course).await, Ok(unflushed));

    f.restart().await;
    assert_eq!(f.progress(learner, course).await, Ok(latest), "the flushed progress, times included");
    f.clock.advance_ms(BEAT_MS);
    let resumed = f.beat(learner, course, 1, 45, false).await;
    assert_eq!(resumed, progress(1, 45, LessonStatus::Learning, paid_at_ms + 4 * BEAT_MS));
}
