//! The loss windows of learning progress, as the README states them, checked against the real
//! binary: the process is killed with SIGKILL (nothing flushed, nothing finished) or stopped
//! with SIGTERM, started again on the same database, and the player's progress read back.
//!
//! - Killed, Redis up: what reached Redis (every `TIANJI_LEARNING_REDIS_FLUSH`) survives,
//!   though the database flush (`TIANJI_LEARNING_FLUSH`, an hour here) never ran.
//! - Killed, no Redis: what the last database flush wrote survives.
//! - Killed and Redis lost: exactly what the database had survives; the rest is lost.
//! - SIGTERM: everything survives.
//!
//! And in process: the Redis writes are pipelined (users per round trip, counted), and a
//! Redis that is down costs no heartbeat.
//!
//! Every test uses its own random user ids, so its Redis keys are its own; it deletes them.

use crate::helpers::{
    eventually, redis_url, spawn_with, AppOptions, Backend, TestDatabase, JWT_SECRET, PAYMENT_SECRET,
};
use crate::process::ServerProcess;
use serde_json::json;
use sqlx::{AnyPool, Row};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tianji::domain::learning::{LessonStatus, Progress};
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tianji::http::payments::PaymentKey;
use tianji::persistence::redis::progress::{decode, progress_key, PROGRESS_TTL_S, USERS_PER_ROUND_TRIP_MAX};

/// How long a test waits for an asynchronous write (a tick of Redis or the database).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeats a player sends, as `(section_id, position_sec)`, in order.
const BEATS: [(i64, i64); 4] = [(1, 15), (1, 30), (2, 15), (3, 45)];
/// The heartbeats of a later session, after the ones above.
const LATER_BEATS: [(i64, i64); 2] = [(4, 15), (4, 30)];

/// A `tianji serve` child process (killed when dropped) and a client that buys and studies
/// through it.
struct Server {
    process: ServerProcess,
    http: reqwest::Client,
    keys: JwtKeys,
}

impl Server {
    fn start(database_url: &str, settings: &[(&str, String)]) -> Server {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (*name, value.as_str())).collect();
        Server {
            process: ServerProcess::start("learning-recovery", database_url, &settings),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
            keys: JwtKeys::new(JWT_SECRET),
        }
    }

    /// SIGKILL: no shutdown hook, no flush, nothing the process gets to finish.
    fn kill(self) {
        self.process.kill();
    }

    /// SIGTERM, then waits for the process to end on its own.
    fn terminate(self) {
        self.process.terminate();
    }

    fn token(&self, user_id: i64, role: Role) -> String {
        self.keys.mint(UserId::new(user_id), role, Duration::from_secs(600))
    }

    /// Creates a course (a SKU) as an admin; its id.
    async fn create_course(&self) -> i64 {
        let response = self
            .http
            .post(format!("{}/v1/admin/skus", self.process.address))
            .bearer_auth(self.token(1, Role::Admin))
            .json(&json!({"name": "Rust course", "price_cents": 1_999, "stock": 100}))
            .send()
            .await
            .expect("create course");
        assert_eq!(response.status(), 201);
        response.json::<serde_json::Value>().await.expect("json")["sku_id"].as_i64().expect("sku_id")
    }

    /// Places and pays one unit of `course_id` for `user_id`, which opens the course to the user.
    async fn buy(&self, user_id: i64, course_id: i64) {
        let placed = self
            .http
            .post(format!("{}/v1/orders", self.process.address))
            .bearer_auth(self.token(user_id, Role::User))
            .header("Idempotency-Key", format!("buy-{course_id}"))
            .json(&json!({"items": [{"sku_id": course_id, "quantity": 1}]}))
            .send()
            .await
            .expect("place");
        assert_eq!(placed.status(), 201);
        let order: serde_json::Value = placed.json().await.expect("json");
        let order_id = order["order_id"].as_i64().expect("order_id");
        let body = json!({"order_id": order_id, "out_trade_no": format!("pay-{order_id}"),
            "amount_cents": order["pay_cents"], "channel": "test"})
        .to_string();
        let paid = self
            .http
            .post(format!("{}/v1/payments/callback", self.process.address))
            .header("content-type", "application/json")
            .header("X-Tianji-Signature", PaymentKey::new(PAYMENT_SECRET).sign(body.as_bytes()))
            .body(body)
            .send()
            .await
            .expect("pay");
        assert_eq!(paid.status(), 200);
    }

    /// Sends `beats` in order, each answered 202.
    async fn study(&self, user_id: i64, course_id: i64, beats: &[(i64, i64)]) {
        for (section_id, position_sec) in beats {
            let response = self
                .http
                .post(format!("{}/v1/learning/heartbeats", self.process.address))
                .bearer_auth(self.token(user_id, Role::User))
                .json(&json!({"course_id": course_id, "section_id": section_id, "position_sec": position_sec}))
                .send()
                .await
                .expect("heartbeat");
            assert_eq!(response.status(), 202, "heartbeat {section_id}:{position_sec}");
        }
    }

    /// The `(section, position, status)` the service answers for the user's course.
    async fn progress(&self, user_id: i64, course_id: i64) -> (i64, i64, String) {
        let response = self
            .http
            .get(format!("{}/v1/learning/progress?course_id={course_id}", self.process.address))
            .bearer_auth(self.token(user_id, Role::User))
            .send()
            .await
            .expect("progress");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        let field = |name: &str| body[name].as_i64().unwrap_or_else(|| panic!("{name} in {body}"));
        (field("latest_section_id"), field("position_sec"), body["status"].as_str().expect("status").to_owned())
    }
}

/// A player of the test: a random user id (so its Redis key is the test's own) and a course.
struct Player {
    user_id: i64,
    course_id: i64,
}

impl Player {
    async fn enrolled(server: &Server) -> Player {
        let player = Player { user_id: random_user_id(), course_id: server.create_course().await };
        server.buy(player.user_id, player.course_id).await;
        player
    }
}

/// `(section, position, status)` as the service answers after `beat` (and nothing later).
fn learning_at(beat: (i64, i64)) -> (i64, i64, String) {
    (beat.0, beat.1, LessonStatus::Learning.name().to_owned())
}

fn random_user_id() -> i64 {
    1_000_000 + i64::from(rand::random::<u32>())
}

/// The test's view of the database and of Redis.
struct Stores {
    db: AnyPool,
    redis: redis::aio::MultiplexedConnection,
}

impl Stores {
    async fn open(database_url: &str) -> Stores {
        let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(database_url).await.expect("test pool");
        let client = redis::Client::open(redis_url()).expect("redis url");
        let redis = client.get_multiplexed_async_connection().await.expect("Redis must be reachable for these tests");
        Stores { db, redis }
    }

    /// `(section, position)` of the stored lesson row.
    async fn lesson(&self, player: &Player) -> (i64, i64) {
        let row = sqlx::query(
            "SELECT latest_section_id, position_sec FROM learning_lesson WHERE user_id = ? AND course_id = ?",
        )
        .bind(player.user_id)
        .bind(player.course_id)
        .fetch_one(&self.db)
        .await
        .expect("the course is open: its lesson row exists");
        (row.get("latest_section_id"), row.get("position_sec"))
    }

    /// The progress Redis holds for the player's course.
    async fn in_redis(&mut self, player: &Player) -> Option<Progress> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(progress_key(UserId::new(player.user_id)))
            .arg(player.course_id)
            .query_async(&mut self.redis)
            .await
            .expect("HGET");
        value.map(|value| decode(&value).expect("tianji writes what it reads"))
    }

    /// Polls Redis until it holds `beat` for the player (true), or `WRITE_TIMEOUT` passes.
    async fn until_in_redis(&mut self, player: &Player, beat: (i64, i64)) -> bool {
        let deadline = std::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let held = self.in_redis(player).await;
            if held.map(|p| (p.latest_section_id, p.position_sec)) == Some(beat) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes what tianji never writes next to the player's progress: fields and values that do
    /// not parse, progress out of bounds, a key of another type. Returns the keys it added.
    async fn corrupt_beside(&mut self, player: &Player) -> String {
        let key = progress_key(UserId::new(player.user_id));
        let fields = [
            ("garbage".to_owned(), "1:1:learning:1".to_owned()),
            ((player.course_id + 1).to_string(), "not progress".to_owned()),
            ((player.course_id + 2).to_string(), "1:86401:learning:1".to_owned()),
        ];
        let _: () = redis::cmd("HSET").arg(&key).arg(&fields).query_async(&mut self.redis).await.expect("HSET");
        let other_type = progress_key(UserId::new(player.user_id + 1));
        let _: () = redis::cmd("SET").arg(&other_type).arg("1").query_async(&mut self.redis).await.expect("SET");
        other_type
    }

    async fn forget_in_redis(&mut self, player: &Player) {
        let _: () = redis::cmd("DEL")
            .arg(progress_key(UserId::new(player.user_id)))
            .query_async(&mut self.redis)
            .await
            .expect("DEL");
    }
}

fn settings(redis: bool, learning_flush: &str) -> Vec<(&'static str, String)> {
    let mut settings = vec![("TIANJI_LEARNING_FLUSH", learning_flush.to_owned())];
    if redis {
        settings.push(("TIANJI_REDIS_URL", redis_url()));
        settings.push(("TIANJI_LEARNING_REDIS_FLUSH", "200ms".to_owned()));
    }
    settings
}

async fn killed_with_redis_up_keeps_what_reached_redis(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let mut stores = Stores::open(&database.url).await;
    let settings = settings(true, "1h");
    let server = Server::start(&database.url, &settings);
    let player = Player::enrolled(&server).await;

    server.study(player.user_id, player.course_id, &BEATS).await;
    let last = BEATS[BEATS.len() - 1];
    assert!(stores.until_in_redis(&player, last).await, "the progress reached Redis within {WRITE_TIMEOUT:?}");
    assert_eq!(stores.lesson(&player).await, (0, 0), "the database flush has not run: only Redis has the progress");
    server.kill();
    let garbage = stores.corrupt_beside(&player).await;

    let restarted = Server::start(&database.url, &settings);
    // Recovery joined Redis into the database before the service took requests, skipping
    // what does not parse.
    assert_eq!(stores.lesson(&player).await, last);
    assert_eq!(restarted.progress(player.user_id, player.course_id).await, learning_at(last));
    restarted.kill();
    stores.forget_in_redis(&player).await;
    let _: () = redis::cmd("DEL").arg(garbage).query_async(&mut stores.redis).await.expect("DEL");
    crate::reconcile::assert_reconciles_clean(&database.url, None).await;
}

#[actix_web::test]
async fn killed_with_redis_up_keeps_what_reached_redis_on_mariadb() {
    killed_with_redis_up_keeps_what_reached_redis(Backend::MySql).await;
}

#[actix_web::test]
async fn killed_with_redis_up_keeps_what_reached_redis_on_sqlite() {
    killed_with_redis_up_keeps_what_reached_redis(Backend::Sqlite).await;
}

#[actix_web::test]
async fn killed_without_redis_keeps_what_the_database_flush_wrote() {
    let database = TestDatabase::create(Backend::MySql).await;
    let stores = Stores::open(&database.url).await;
    let settings = settings(false, "300ms");
    let server = Server::start(&database.url, &settings);
    let player = Player::enrolled(&server).await;

    server.study(player.user_id, player.course_id, &BEATS).await;
    let last = BEATS[BEATS.len() - 1];
    let flushed = eventually(WRITE_TIMEOUT, || async { stores.lesson(&player).await == last }).await;
    assert!(flushed, "the database flush wrote the progress within {WRITE_TIMEOUT:?}");
    server.kill();

    let restarted = Server::start(&database.url, &settings);
    assert_eq!(restarted.progress(player.user_id, player.course_id).await, learning_at(last));
    restarted.kill();
}

#[actix_web::test]
async fn killed_with_redis_lost_keeps_exactly_what_the_database_had() {
    let database = TestDatabase::create(Backend::MySql).await;
    let mut stores = Stores::open(&database.url).await;
    // A first session, written to the database by a short flush.
    let server = Server::start(&database.url, &settings(false, "300ms"));
    let player = Player::enrolled(&server).await;
    server.study(player.user_id, player.course_id, &BEATS).await;
    let flushed_beat = BEATS[BEATS.len() - 1];
    let flushed = eventually(WRITE_TIMEOUT, || async { stores.lesson(&player).await == flushed_beat }).await;
    assert!(flushed, "the database flush wrote the first session within {WRITE_TIMEOUT:?}");
    server.kill();

    // A second session that only reaches Redis, then the process and Redis's copy are lost.
    let settings = settings(true, "1h");
    let server = Server::start(&database.url, &settings);
    server.study(player.user_id, player.course_id, &LATER_BEATS).await;
    let last = LATER_BEATS[LATER_BEATS.len() - 1];
    let reached = stores.until_in_redis(&player, last).await;
    assert!(reached, "the second session reached Redis within {WRITE_TIMEOUT:?}");
    server.kill();
    stores.forget_in_redis(&player).await;
    let in_database = stores.lesson(&player).await;
    assert_eq!(in_database, flushed_beat, "the second session never reached the database");

    let restarted = Server::start(&database.url, &settings);
    assert_eq!(
        restarted.progress(player.user_id, player.course_id).await,
        learning_at(in_database),
        "what survives is what the database had: the progress since its last flush is lost"
    );
    restarted.kill();
    crate::reconcile::assert_reconciles_clean(&database.url, None).await;
}

#[actix_web::test]
async fn sigterm_loses_nothing() {
    let database = TestDatabase::create(Backend::MySql).await;
    let stores = Stores::open(&database.url).await;
    let settings = settings(false, "1h");
    let server = Server::start(&database.url, &settings);
    let player = Player::enrolled(&server).await;
    server.study(player.user_id, player.course_id, &BEATS).await;
    assert_eq!(stores.lesson(&player).await, (0, 0), "nothing flushed before the stop");
    // Reads that the HTTP workers ask for, many at once: had the workers opened pooled
    // connections for them, those would go down with the workers, before the flush at the stop.
    let token = server.token(player.user_id, Role::User);
    let reads = (0..64)
        .map(|_| server.http.get(format!("{}/v1/orders?limit=5", server.process.address)).bearer_auth(&token).send());
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.expect("list orders").status(), 200);
    }
    server.terminate();

    let last = BEATS[BEATS.len() - 1];
    assert_eq!(stores.lesson(&player).await, last, "the stop flushed the progress");
    let restarted = Server::start(&database.url, &settings);
    assert_eq!(restarted.progress(player.user_id, player.course_id).await, learning_at(last));
    restarted.kill();
}

/// Users whose heartbeats are written in one flush: more than one pipeline's worth.
const MANY_USERS: usize = USERS_PER_ROUND_TRIP_MAX + 100;
const BEATS_PER_USER: usize = 3;

#[actix_web::test]
async fn redis_writes_are_pipelined_many_users_per_round_trip() {
    // Neither tick fires during the test: the flush below is the only Redis write.
    let mut options = AppOptions::new(Backend::MySql);
    options.extra = vec![("TIANJI_LEARNING_FLUSH", "1h".into()), ("TIANJI_LEARNING_REDIS_FLUSH", "1h".into())];
    let app = &spawn_with(options).await;
    let course_id = app.create_sku("Rust course", 1_999, MANY_USERS as i64).await;
    let first_user = random_user_id();
    let users: Vec<i64> = (0..MANY_USERS as i64).map(|n| first_user + n).collect();
    for chunk in users.chunks(50) {
        futures::future::join_all(chunk.iter().map(|user| async move { app.bought(*user, &[course_id]).await })).await;
    }
    for beat in 1..=BEATS_PER_USER as i64 {
        let beats = users.iter().map(|user| async move {
            let (status, body) =
                app.heartbeat(*user, json!({"course_id": course_id, "section_id": 1, "position_sec": beat * 15})).await;
            assert_eq!(status, 202, "heartbeat: {body}");
        });
        futures::future::join_all(beats).await;
    }

    assert_eq!(app.core.learning_pending_rows(), (MANY_USERS, MANY_USERS));
    let written = app.core.flush_learning_to_redis().await.expect("redis is up");
    assert_eq!(app.core.learning_pending_rows(), (MANY_USERS, 0));
    assert_eq!(written, MANY_USERS, "one row per user and course, however many heartbeats");
    let stats = app.core.learning_stats();
    let round_trips = stats.redis_round_trips.load(Ordering::Relaxed);
    assert_eq!(round_trips, MANY_USERS.div_ceil(USERS_PER_ROUND_TRIP_MAX) as u64);
    assert_eq!(stats.redis_failures.load(Ordering::Relaxed), 0);
    let heartbeats = stats.heartbeats.load(Ordering::Relaxed);
    assert_eq!(heartbeats, (MANY_USERS * BEATS_PER_USER) as u64);
    eprintln!(
        "{heartbeats} heartbeats of {MANY_USERS} users: {round_trips} redis round trips ({:.5} per heartbeat)",
        round_trips as f64 / heartbeats as f64
    );

    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
    for user in &users {
        let key = progress_key(UserId::new(*user));
        let value: Option<String> =
            redis::cmd("HGET").arg(&key).arg(course_id).query_async(&mut redis).await.expect("HGET");
        let progress = decode(&value.unwrap_or_else(|| panic!("{key} holds the course"))).expect("decodes");
        assert_eq!((progress.latest_section_id, progress.position_sec), (1, BEATS_PER_USER as i64 * 15));
        let ttl_s: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.expect("TTL");
        assert!(0 < ttl_s && ttl_s <= PROGRESS_TTL_S, "{key} expires: TTL {ttl_s}");
    }
    let keys: Vec<String> = users.iter().map(|user| progress_key(UserId::new(*user))).collect();
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await.expect("DEL");
    assert_eq!(app.core.flush_learning_to_redis().await.expect("redis is up"), 0, "nothing left to write");
}

#[actix_web::test]
async fn heartbeats_go_on_while_redis_is_down_and_nothing_is_lost() {
    let mut options = AppOptions::new(Backend::Sqlite);
    // Nothing listens there.
    options.redis_url = Some("redis://127.0.0.1:1".into());
    options.extra = vec![("TIANJI_LEARNING_FLUSH", "1h".into()), ("TIANJI_LEARNING_REDIS_FLUSH", "1h".into())];
    let app = spawn_with(options).await;
    let course_id = app.create_sku("Rust course", 1_999, 10).await;
    let user = random_user_id();
    app.bought(user, &[course_id]).await;
    let (status, body) =
        app.heartbeat(user, json!({"course_id": course_id, "section_id": 2, "position_sec": 30})).await;
    assert_eq!(status, 202, "heartbeat: {body}");

    assert!(app.core.flush_learning_to_redis().await.is_err(), "redis is down");
    assert!(app.core.flush_learning_to_redis().await.is_err(), "still down; the row was kept and tried again");
    let stats = app.core.learning_stats();
    assert_eq!(stats.redis_round_trips.load(Ordering::Relaxed), 2);
    assert_eq!(stats.redis_failures.load(Ordering::Relaxed), 2);
    assert_eq!(stats.redis_rows_written.load(Ordering::Relaxed), 0);
    assert_eq!(app.core.learning_pending_rows(), (1, 1), "kept for both flushes");

    assert_eq!(app.core.flush_learning().await.expect("the database is up"), 1, "the database flush is unaffected");
    let (status, body) = app.progress(user, course_id).await;
    assert_eq!((status, body["latest_section_id"].as_i64(), body["position_sec"].as_i64()), (200, Some(2), Some(30)));
}
