//! Test harness: `spawn_app` starts the real server on port 0 over a fresh database (its own
//! MariaDB schema, or its own SQLite file) and returns a handle to talk HTTP to it. MariaDB
//! and Redis are required where a test asks for them: an unreachable server fails the test,
//! it is never skipped. Databases and Redis keys a test made are removed when it ends.
//!
//! For database faults: `spawn_behind_proxy` puts a `Proxy` between the app and MariaDB,
//! `TestApp::lock_rows` holds row locks from a connection of the test's own, and
//! `answer_within` bounds how long a test waits for a reply.

use crate::proxy::{self, Proxy};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tianji::actors::Core;
use tianji::config::Settings;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tianji::startup::Application;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub const PAYMENT_SECRET: &str = "test-payment-secret-0123456789abcdef012345";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
}

pub fn mysql_root_url() -> String {
    std::env::var("TIANJI_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    std::env::var("TIANJI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub url: String,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::MySql => {
                let name = format!("tianji_test_{}", hex::encode(rand::random::<[u8; 6]>()));
                let url = format!("{}/{name}", mysql_root_url());
                Any::create_database(&url).await.unwrap_or_else(|e| {
                    panic!("MariaDB must be reachable at {} for these tests (see .ci/run): {e}", mysql_root_url())
                });
                TestDatabase { url, backend, _dir: None }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = tianji::persistence::sqlite::url_in(dir.path());
                TestDatabase { url, backend, _dir: Some(dir) }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend != Backend::MySql {
            return;
        }
        let url = self.url.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread. That
        // runtime is frozen meanwhile, with whatever its tasks held (an event relay's claim is a
        // transaction that holds a metadata lock until it commits): so first end every session
        // still on the database, then drop it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                end_sessions_on(&url).await?;
                Any::drop_database(&url).await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.url);
        }
    }
}

/// Ends (`KILL`s) every session connected to the database of `url`, so dropping it cannot wait
/// on a lock one of them holds.
async fn end_sessions_on(url: &str) -> Result<(), sqlx::Error> {
    let name = url.rsplit('/').next().unwrap_or_default().to_owned();
    let mut root = AnyConnection::connect(&mysql_root_url()).await?;
    let sessions: Vec<i64> =
        sqlx::query_scalar("SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?")
            .bind(name)
            .fetch_all(&mut root)
            .await?;
    for session in sessions {
        // A session may end on its own in between: its KILL then fails, which is fine.
        let _ = sqlx::query(&format!("KILL {session}")).execute(&mut root).await;
    }
    root.close().await
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub keys: JwtKeys,
    pub core: Arc<Core>,
    pub db: AnyPool,
    pub redis: Option<String>,
    skus: Mutex<Vec<i64>>,
    // Last, so the pool above closes before the database is dropped.
    pub database: Arc<TestDatabase>,
}

pub struct AppOptions {
    pub backend: Backend,
    pub redis_url: Option<String>,
    pub extra: Vec<(&'static str, String)>,
}

impl AppOptions {
    pub fn new(backend: Backend) -> Self {
        let redis_url = (backend == Backend::MySql).then(redis_url);
        AppOptions { backend, redis_url, extra: Vec::new() }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(AppOptions::new(backend)).await
}

pub async fn spawn_with(options: AppOptions) -> TestApp {
    let database = Arc::new(TestDatabase::create(options.backend).await);
    start(database, options.redis_url, options.extra).await
}

/// Starts another server on the database of `app` (a restart, as far as data goes).
pub async fn restart(app: &TestApp) -> TestApp {
    start(Arc::clone(&app.database), app.redis.clone(), Vec::new()).await
}

async fn start(database: Arc<TestDatabase>, redis: Option<String>, extra: Vec<(&'static str, String)>) -> TestApp {
    // Captured per test (shown when one fails); RUST_LOG overrides the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let mut values: BTreeMap<String, String> = [
        ("TIANJI_BIND", "127.0.0.1:0".to_owned()),
        ("TIANJI_DATABASE_URL", database.url.clone()),
        ("TIANJI_JWT_SECRET", JWT_SECRET.to_owned()),
        ("TIANJI_PAYMENT_SECRET", PAYMENT_SECRET.to_owned()),
        ("TIANJI_HTTP_WORKERS", "2".to_owned()),
        ("TIANJI_ACTOR_THREADS", "2".to_owned()),
        // Tests place orders as fast as the server answers: no per-user limits unless a test
        // (rate_limits.rs) sets them in `extra`.
        ("TIANJI_RATE_ORDERS", "off".to_owned()),
        ("TIANJI_RATE_COUPONS", "off".to_owned()),
        ("TIANJI_RATE_HEARTBEATS", "off".to_owned()),
        ("TIANJI_RATE_READS", "off".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(url) = &redis {
        values.insert("TIANJI_REDIS_URL".into(), url.clone());
    }
    for (name, value) in extra {
        values.insert(name.to_owned(), value);
    }
    let settings = Settings::from_values(&values).expect("test settings are valid");
    let application = Application::build(settings).await.expect("the application starts");
    let address = format!("http://127.0.0.1:{}", application.port());
    let core = Arc::clone(application.core());
    actix_web::rt::spawn(application.run_until_stopped());
    let db = AnyPoolOptions::new().max_connections(4).connect(&database.url).await.expect("test pool");
    TestApp {
        address,
        client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client"),
        keys: JwtKeys::new(JWT_SECRET),
        core,
        db,
        redis,
        skus: Mutex::new(Vec::new()),
        database,
    }
}

/// Database counters of a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbCounters {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub version: i64,
}

impl TestApp {
    pub fn user_token(&self, user_id: i64) -> String {
        self.keys.mint(UserId::new(user_id), Role::User, Duration::from_secs(600))
    }

    pub fn admin_token(&self) -> String {
        self.keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn create_sku(&self, name: &str, price_cents: i64, stock: i64) -> i64 {
        let response = self
            .client
            .post(self.url("/v1/admin/skus"))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({"name": name, "price_cents": price_cents, "stock": stock}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "create sku: {}", response.text().await.unwrap_or_default());
        let body: serde_json::Value = response.json().await.expect("json");
        let sku_id = body["sku_id"].as_i64().expect("sku_id");
        self.skus.lock().unwrap().push(sku_id);
        sku_id
    }

    pub async fn place_order(&self, user_id: i64, key: &str, items: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/orders"))
            .bearer_auth(self.user_token(user_id))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "items": items }))
            .send()
            .await
            .expect("request")
    }

    /// Sends a payment callback signed with the payment secret.
    pub async fn pay(&self, order_id: i64, out_trade_no: &str, amount_cents: i64) -> reqwest::Response {
        let body = serde_json::json!({
            "order_id": order_id, "out_trade_no": out_trade_no, "amount_cents": amount_cents, "channel": "test"
        })
        .to_string();
        let signature = tianji::http::payments::PaymentKey::new(PAYMENT_SECRET).sign(body.as_bytes());
        self.client
            .post(self.url("/v1/payments/callback"))
            .header("content-type", "application/json")
            .header("X-Tianji-Signature", signature)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// POSTs to an order action (`cancel`, `finish`, `refund`) with `token`.
    pub async fn order_action(&self, token: &str, order_id: i64, action: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/orders/{order_id}/{action}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_order(&self, user_id: i64, order_id: i64) -> serde_json::Value {
        let response = self
            .client
            .get(self.url(&format!("/v1/orders/{order_id}")))
            .bearer_auth(self.user_token(user_id))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Places one order of `quantity` units of `sku_id` and returns `(order_id, pay_cents)`.
    pub async fn placed(&self, user_id: i64, sku_id: i64, quantity: i64) -> (i64, i64) {
        let key = format!("k-{}", rand::random::<u64>());
        let response =
            self.place_order(user_id, &key, serde_json::json!([{"sku_id": sku_id, "quantity": quantity}])).await;
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        (body["order_id"].as_i64().unwrap(), body["pay_cents"].as_i64().unwrap())
    }

    pub async fn get_sku(&self, sku_id: i64) -> serde_json::Value {
        let response = self
            .client
            .get(self.url(&format!("/v1/skus/{sku_id}")))
            .bearer_auth(self.user_token(2))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    pub async fn db_counters(&self, sku_id: i64) -> DbCounters {
        let row = sqlx::query("SELECT total, available, reserved, sold, version FROM inventory WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_one(&self.db)
            .await
            .expect("inventory row");
        DbCounters {
            total: row.get("total"),
            available: row.get("available"),
            reserved: row.get("reserved"),
            sold: row.get("sold"),
            version: row.get("version"),
        }
    }

    /// `order_id -> (quantity, status)` of a SKU's reservation rows.
    pub async fn reservations(&self, sku_id: i64) -> HashMap<i64, (i64, String)> {
        sqlx::query("SELECT order_id, quantity, status FROM inventory_reservation WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_all(&self.db)
            .await
            .expect("reservation rows")
            .iter()
            .map(|r| (r.get::<i64, _>("order_id"), (r.get::<i64, _>("quantity"), r.get::<String, _>("status"))))
            .collect()
    }

    /// Orders that hold an item of `sku_id`, with the units of that item.
    pub async fn orders_of_sku(&self, sku_id: i64) -> HashMap<i64, i64> {
        sqlx::query("SELECT order_id, quantity FROM trade_order_item WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_all(&self.db)
            .await
            .expect("order items")
            .iter()
            .map(|r| (r.get::<i64, _>("order_id"), r.get::<i64, _>("quantity")))
            .collect()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query(sql).fetch_one(&self.db).await.expect("count").get::<i64, _>(0)
    }

    /// The Redis snapshot of a SKU once it has caught up with `version` (publishing is
    /// write-behind), or what it holds when the deadline passes.
    pub async fn redis_snapshot(&self, sku_id: i64, version: i64) -> HashMap<String, i64> {
        let url = self.redis.as_ref().expect("this app has Redis");
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis must be reachable");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snapshot: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(format!("tianji:sku:{sku_id}"))
                .query_async(&mut connection)
                .await
                .expect("HGETALL");
            if snapshot.get("version") == Some(&version) || Instant::now() > deadline {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stops the actors, which hold the core: the core, and its database pool with it, is
        // dropped with the test's runtime instead of keeping its connections for the whole run.
        self.core.stop();
        let skus = std::mem::take(&mut *self.skus.lock().unwrap());
        let Some(url) = self.redis.clone().filter(|_| !skus.is_empty()) else {
            return;
        };
        let cleaned = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut connection = redis::Client::open(url.as_str())?.get_connection()?;
            let keys: Vec<String> = skus.iter().map(|id| format!("tianji:sku:{id}")).collect();
            redis::cmd("DEL").arg(keys).query(&mut connection)
        })
        .join();
        if !matches!(cleaned, Ok(Ok(()))) {
            eprintln!("could not remove the test's Redis keys");
        }
    }
}

/// Each story as two tests, `<story>::sqlite` and `<story>::mariadb`. A story is an
/// `async fn(Backend)` of the module the macro is used in (which must have `Backend` in scope).
macro_rules! on_both_backends {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            use super::*;

            #[actix_web::test]
            async fn sqlite() {
                super::$story(Backend::Sqlite).await
            }

            #[actix_web::test]
            async fn mariadb() {
                super::$story(Backend::MySql).await
            }
        }
    )*};
}

pub(crate) use on_both_backends;

/// Polls `check` until it holds or `timeout` passes; for effects that are asynchronous by
/// design (lease expiry, write-behind), never for ordering between requests.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app whose database connections pass through a `Proxy` the test switches; the test's own
/// pool (`app.db`) still reaches MariaDB directly, so it sees the truth during a fault.
pub struct ProxiedApp {
    /// First, so it drops first: its connections close, and MariaDB rolls back whatever a
    /// stalled connection held, before the database is dropped.
    pub proxy: Proxy,
    pub app: TestApp,
}

/// Like `spawn_with`, with `TIANJI_DATABASE_URL` pointing at a proxy for the same database.
pub async fn spawn_behind_proxy(mut options: AppOptions) -> ProxiedApp {
    assert_eq!(options.backend, Backend::MySql, "the proxy stands in front of MariaDB");
    let database = Arc::new(TestDatabase::create(options.backend).await);
    let proxy = Proxy::start(proxy::upstream_of(&database.url));
    options.extra.push(("TIANJI_DATABASE_URL", proxy::through(&database.url, proxy.port())));
    let app = start(database, options.redis_url, options.extra).await;
    ProxiedApp { proxy, app }
}

/// Row locks held by a transaction on a connection of the test's own, as another writer (a
/// report, a batch job, an operator's console) would hold them.
pub struct RowLock {
    holder: tokio::task::JoinHandle<()>,
}

impl RowLock {
    /// Waits until the locks are released.
    pub async fn released(self) {
        self.holder.await.expect("the lock holder panicked");
    }
}

impl TestApp {
    /// Runs `select` (`... FOR UPDATE` with one `?`, bound to `id`) in a transaction on a new
    /// connection; returns once the locks are held, and rolls back `hold` later.
    pub async fn lock_rows(&self, select: &'static str, id: i64, hold: Duration) -> RowLock {
        assert_eq!(self.database.backend, Backend::MySql, "row locks are taken on MariaDB");
        let mut connection = sqlx::MySqlConnection::connect(&self.database.url).await.expect("lock connection");
        let (held, is_held) = tokio::sync::oneshot::channel();
        let holder = actix_web::rt::spawn(async move {
            let mut transaction = connection.begin().await.expect("BEGIN");
            let locked = sqlx::query(select).bind(id).fetch_all(&mut *transaction).await.expect("the rows are locked");
            assert!(!locked.is_empty(), "{select} locked no row");
            let _ = held.send(());
            tokio::time::sleep(hold).await;
            transaction.rollback().await.expect("ROLLBACK");
            connection.close().await.expect("close the lock connection");
        });
        is_held.await.expect("the lock holder took its locks");
        RowLock { holder }
    }

    /// `order_id -> status` of the orders that hold an item of `sku_id`.
    pub async fn order_statuses(&self, sku_id: i64) -> HashMap<i64, String> {
        sqlx::query(
            "SELECT o.id, o.status FROM trade_order o JOIN trade_order_item i ON i.order_id = o.id \
             WHERE i.sku_id = ?",
        )
        .bind(sku_id)
        .fetch_all(&self.db)
        .await
        .expect("orders of the sku")
        .iter()
        .map(|r| (r.get::<i64, _>("id"), r.get::<String, _>("status")))
        .collect()
    }

    /// The auditor's view of one SKU: its counters balance, `sold` is exactly the units of its
    /// paid and finished orders and `reserved` exactly those of its pending ones.
    pub async fn assert_sku_conserved(&self, sku_id: i64) {
        let counters = self.db_counters(sku_id).await;
        assert_eq!(counters.available + counters.reserved + counters.sold, counters.total, "unbalanced: {counters:?}");
        assert!(counters.available >= 0 && counters.reserved >= 0 && counters.sold >= 0, "{counters:?}");
        let (statuses, units) = (self.order_statuses(sku_id).await, self.orders_of_sku(sku_id).await);
        let units_in = |wanted: &[&str]| -> i64 {
            statuses.iter().filter(|(_, status)| wanted.contains(&status.as_str())).map(|(id, _)| units[id]).sum()
        };
        assert_eq!(counters.sold, units_in(&["paid", "finished"]), "sold != units of paid orders: {counters:?}");
        assert_eq!(counters.reserved, units_in(&["pending_payment"]), "reserved != units of pending orders");
    }
}

/// A reply, with what the fault tests look at and how long it took to come.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The JSON body, or the text as a JSON string when it is not JSON.
    pub body: serde_json::Value,
    pub elapsed: Duration,
}

impl Answer {
    pub fn code(&self) -> Option<&str> {
        self.body["code"].as_str()
    }

    /// Status, code (or order status), `Retry-After` and time taken, for the test's output.
    pub fn summary(&self) -> String {
        let what = self.code().or(self.body["status"].as_str()).unwrap_or("-");
        format!("{} {what} (Retry-After {:?}) in {:?}", self.status, self.retry_after, self.elapsed)
    }

    /// The answer the contract gives while the database cannot: 503, `Retry-After`, and a
    /// code that says why.
    pub fn is_unavailable(&self) -> bool {
        self.status == 503 && self.retry_after.is_some() && matches!(self.code(), Some("unavailable" | "overloaded"))
    }
}

/// Sends `request` and waits at most `bound` for the whole reply; `None` if none came.
pub async fn answer_within(
    bound: Duration,
    request: impl std::future::Future<Output = reqwest::Response>,
) -> Option<Answer> {
    let started = Instant::now();
    let reply = async {
        let response = request.await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, retry_after, body)
    };
    let (status, retry_after, body) = tokio::time::timeout(bound, reply).await.ok()?;
    Some(Answer { status, retry_after, body, elapsed: started.elapsed() })
}

impl TestApp {
    /// `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.client.get(self.url("/readyz")).send().await.expect("request")
    }
}

/// An RFC 3339 time `offset_secs` from now (negative: in the past), as request bodies carry it.
pub fn rfc3339_from_now(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    humantime::format_rfc3339_millis(at).to_string()
}

/// Status and JSON body of a reply (`null` when the body is not JSON).
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

impl TestApp {
    /// Sends `method path` with a JSON `body` (none when `null`) and a bearer `token`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(token);
        if !body.is_null() {
            request = request.json(&body);
        }
        status_and_json(request.send().await.expect("request")).await
    }

    /// Creates a SKU from a full admin body (sale fields included) and returns its body.
    pub async fn create_sku_from(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, sku) = self.call(reqwest::Method::POST, "/v1/admin/skus", &self.admin_token(), body).await;
        assert_eq!(status, 201, "create sku: {sku}");
        self.skus.lock().unwrap().push(sku["sku_id"].as_i64().expect("sku_id"));
        sku
    }

    /// `PATCH /v1/admin/skus/{sku_id}` as an admin.
    pub async fn patch_sale(&self, sku_id: i64, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PATCH, &format!("/v1/admin/skus/{sku_id}"), &self.admin_token(), body).await
    }

    /// `POST /v1/admin/coupon-templates` as an admin.
    pub async fn create_template(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, "/v1/admin/coupon-templates", &self.admin_token(), body).await
    }

    /// `POST /v1/coupons/receive` as `user_id`.
    pub async fn receive_coupon(&self, user_id: i64, template_id: i64) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "template_id": template_id });
        self.call(reqwest::Method::POST, "/v1/coupons/receive", &self.user_token(user_id), body).await
    }

    /// `user_id`'s coupons in `status` (all of them when empty).
    pub async fn coupons(&self, user_id: i64, status: &str) -> Vec<serde_json::Value> {
        let path = format!("/v1/coupons?status={status}");
        let (code, body) =
            self.call(reqwest::Method::GET, &path, &self.user_token(user_id), serde_json::Value::Null).await;
        assert_eq!(code, 200, "list coupons: {body}");
        body["coupons"].as_array().expect("coupons").clone()
    }

    /// Places an order of `items` with `coupon_id` under a fresh Idempotency-Key.
    pub async fn place_with_coupon(
        &self,
        user_id: i64,
        items: serde_json::Value,
        coupon_id: i64,
    ) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(self.user_token(user_id))
            .header("Idempotency-Key", format!("k-{}", rand::random::<u64>()))
            .json(&serde_json::json!({ "items": items, "coupon_id": coupon_id }))
            .send()
            .await
            .expect("request");
        status_and_json(response).await
    }
}

/// Starts another server on the database of `app` with `extra` settings (a restart whose
/// settings the test chooses, e.g. a learning flush that never fires on its own).
pub async fn restart_with(app: &TestApp, extra: Vec<(&'static str, String)>) -> TestApp {
    start(Arc::clone(&app.database), app.redis.clone(), extra).await
}

/// A stored `learning_lesson` row, as the test reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LessonRow {
    pub holders: i64,
    pub latest_section_id: i64,
    pub position_sec: i64,
    pub status: String,
    pub updated_at_ms: i64,
}

impl TestApp {
    /// Places one unit of each of `sku_ids` for `user_id` and pays the order; its id.
    pub async fn bought(&self, user_id: i64, sku_ids: &[i64]) -> i64 {
        let items: Vec<serde_json::Value> =
            sku_ids.iter().map(|sku_id| serde_json::json!({"sku_id": sku_id, "quantity": 1})).collect();
        let key = format!("k-{}", rand::random::<u64>());
        let (status, order) = status_and_json(self.place_order(user_id, &key, items.into()).await).await;
        assert_eq!(status, 201, "place: {order}");
        let order_id = order["order_id"].as_i64().expect("order_id");
        let pay_cents = order["pay_cents"].as_i64().expect("pay_cents");
        let (status, order) = status_and_json(self.pay(order_id, &format!("t-{order_id}"), pay_cents).await).await;
        assert_eq!((status, order["status"].as_str()), (200, Some("paid")), "pay: {order}");
        order_id
    }

    /// `POST /v1/learning/heartbeats` as `user_id` with `body`.
    pub async fn heartbeat(&self, user_id: i64, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, "/v1/learning/heartbeats", &self.user_token(user_id), body).await
    }

    /// `GET /v1/learning/lessons` as `user_id`: the lessons listed (asserting the 200).
    pub async fn lessons(&self, user_id: i64) -> Vec<serde_json::Value> {
        let (status, body) = self
            .call(reqwest::Method::GET, "/v1/learning/lessons", &self.user_token(user_id), serde_json::Value::Null)
            .await;
        assert_eq!(status, 200, "lessons: {body}");
        body["lessons"].as_array().expect("lessons").clone()
    }

    /// `GET /v1/learning/progress?course_id=` as `user_id`.
    pub async fn progress(&self, user_id: i64, course_id: i64) -> (u16, serde_json::Value) {
        let path = format!("/v1/learning/progress?course_id={course_id}");
        self.call(reqwest::Method::GET, &path, &self.user_token(user_id), serde_json::Value::Null).await
    }

    /// `GET /v1/admin/learning/stats` as an admin (asserting the 200).
    pub async fn learning_stats(&self) -> serde_json::Value {
        let (status, body) = self
            .call(reqwest::Method::GET, "/v1/admin/learning/stats", &self.admin_token(), serde_json::Value::Null)
            .await;
        assert_eq!(status, 200, "learning stats: {body}");
        body
    }

    /// The stored lesson row of a user and course, if there is one.
    pub async fn lesson_row(&self, user_id: i64, course_id: i64) -> Option<LessonRow> {
        sqlx::query(
            "SELECT holders, latest_section_id, position_sec, status, updated_at FROM learning_lesson \
             WHERE user_id = ? AND course_id = ?",
        )
        .bind(user_id)
        .bind(course_id)
        .fetch_optional(&self.db)
        .await
        .expect("lesson row")
        .map(|row| LessonRow {
            holders: row.get("holders"),
            latest_section_id: row.get("latest_section_id"),
            position_sec: row.get("position_sec"),
            status: row.get("status"),
            updated_at_ms: row.get("updated_at"),
        })
    }
}

/// The auditor of the tests that stop a node under load (SIGTERM in `shutdown`, SIGKILL in
/// `recovery`): per SKU, the counters balance (`available + reserved + sold == total`, none
/// negative), `sold` is exactly the units of its paid and finished orders and `reserved`
/// exactly those of its pending ones, counted in the database while the node is down.
/// `context` names the moment checked in a failure ("round 2").
pub async fn assert_stock_agrees_with_orders(db: &AnyPool, skus: &[i64], context: &str) {
    for sku_id in skus {
        let counters = sqlx::query("SELECT total, available, reserved, sold FROM inventory WHERE sku_id = ?")
            .bind(*sku_id)
            .fetch_one(db)
            .await
            .unwrap_or_else(|e| panic!("{context}: counters of sku {sku_id}: {e}"));
        let (total, available, reserved, sold): (i64, i64, i64, i64) =
            (counters.get("total"), counters.get("available"), counters.get("reserved"), counters.get("sold"));
        assert_eq!(available + reserved + sold, total, "{context}: sku {sku_id} unbalanced");
        assert!(available >= 0 && reserved >= 0 && sold >= 0, "{context}: sku {sku_id} negative");
        let units = |statuses: &'static str| {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(i.quantity), 0) AS SIGNED) AS units FROM trade_order_item i \
                 JOIN trade_order o ON o.id = i.order_id WHERE i.sku_id = ? AND o.status IN ({statuses})"
            );
            async move { sqlx::query(&sql).bind(*sku_id).fetch_one(db).await.unwrap().get::<i64, _>("units") }
        };
        assert_eq!(sold, units("'paid', 'finished'").await, "{context}: sku {sku_id} sold != units of paid orders");
        assert_eq!(reserved, units("'pending_payment'").await, "{context}: sku {sku_id} reserved != pending units");
    }
}

/// The environment variable that replays a test's random timings (`timing_rng`).
pub const TEST_SEED_VAR: &str = "TIANJI_TEST_SEED";

/// A random generator for the moments a test picks at random (when to send SIGTERM, when to
/// kill): seeded from `TIANJI_TEST_SEED` when set, else at random. The seed is printed first,
/// so a failing run names the seed that replays its timings.
pub fn timing_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = match std::env::var(TEST_SEED_VAR) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{TEST_SEED_VAR}={value:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: timing seed {seed} (replay with {TEST_SEED_VAR}={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}
