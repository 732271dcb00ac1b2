//! Hostile clients: a wrong method, an oversized body, too many connections, and thousands of
//! connections sending their body one byte per second. Each is answered in `{code, message}`
//! and none of them keeps normal clients from being served.

use crate::helpers::{spawn_with, AppOptions, Backend, TestDatabase, JWT_SECRET};
use crate::process::ServerProcess;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads one response (head, then `Content-Length` bytes of body) off `stream`.
async fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<RawResponse> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let response = RawResponse { status, head, body: Value::Null };
    let length: usize = response.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(RawResponse { body: serde_json::from_slice(&body).unwrap_or(Value::Null), ..response })
}

async fn connect(address: &str) -> BufReader<TcpStream> {
    let host = address.strip_prefix("http://").expect("an http address");
    BufReader::new(TcpStream::connect(host).await.expect("connect"))
}

/// Sends `request` on a new connection and reads the answer, within a few seconds.
async fn exchange(address: &str, request: &[u8]) -> RawResponse {
    let mut stream = connect(address).await;
    stream.get_mut().write_all(request).await.expect("write");
    tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("an answer within 5 s")
        .expect("a response")
}

/// Whether the server closed `stream` (end of file) within a few seconds.
async fn closed(stream: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await, Ok(Ok(_)))
}

/// A concrete path for a pattern: every `{param}` becomes `1`.
fn concrete(pattern: &str) -> String {
    pattern.split('/').map(|segment| if segment.starts_with('{') { "1" } else { segment }).collect::<Vec<_>>().join("/")
}

#[actix_web::test]
async fn a_wrong_method_on_every_route_is_405_with_allow() {
    let app = spawn_with(AppOptions::new(Backend::Sqlite)).await;
    let table = tianji::http::route_table();
    assert!(table.len() >= 15, "the route table lists the API: {table:?}");
    for (pattern, methods) in &table {
        let path = concrete(pattern);
        let mut allowed: Vec<&str> = table
            .iter()
            .filter(|(other, _)| concrete(other) == path)
            .flat_map(|(_, methods)| methods.iter().map(|m| m.as_str()))
            .collect();
        allowed.sort();
        allowed.dedup();
        for wrong in ["PUT", "DELETE", "PATCH", "GET", "POST"].into_iter().filter(|m| !allowed.contains(m)) {
            let method = reqwest::Method::from_bytes(wrong.as_bytes()).unwrap();
            let response = app.client.request(method, app.url(&path)).send().await.expect("request");
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")), "{wrong} {path}: {body}");
            assert_eq!(allow.as_deref(), Some(allowed.join(", ").as_str()), "{wrong} {path}");
        }
        assert!(!methods.is_empty());
    }
    let response = app.client.delete(app.url("/v1/no-such-route")).send().await.expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "not_found");
}

#[actix_web::test]
async fn oversized_bodies_are_413_in_json_before_they_are_read() {
    let app = spawn_with(AppOptions::new(Backend::Sqlite)).await;
    let token = app.user_token(7);
    // Declared too large, and not one byte of the body sent: answered at once, then closed.
    for (path, extra) in [
        ("/v1/payments/callback", "X-Tianji-Signature: 00\r\n".to_owned()),
        ("/v1/orders", format!("Authorization: Bearer {token}\r\nIdempotency-Key: k1\r\n")),
        ("/v1/no-such-route", String::new()),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: 10000000\r\n\r\n"
        );
        let mut stream = connect(&app.address).await;
        stream.get_mut().write_all(head.as_bytes()).await.expect("write");
        let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream)).await.unwrap().unwrap();
        assert_eq!((response.status, response.body["code"].as_str()), (413, Some("payload_too_large")), "{path}");
        assert!(closed(&mut stream).await, "{path}: the connection is closed after a 413");
    }
    // Chunked, so no length is declared: refused once it grows past the limit.
    let chunk = "x".repeat(70 * 1024);
    let request = format!(
        "POST /v1/payments/callback HTTP/1.1\r\nHost: t\r\nX-Tianji-Signature: 00\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let response = exchange(&app.address, request.as_bytes()).await;
    assert_eq!((response.status, response.body["code"].as_str()), (413, Some("payload_too_large")));
    // A full oversized JSON body through an ordinary client.
    let big = json!({"items": [], "pad": "x".repeat(70 * 1024)});
    let response = app.client.post(app.url("/v1/payments/callback")).json(&big).send().await.expect("request");
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "payload_too_large");
}

#[actix_web::test]
async fn connections_over_the_limit_are_refused_with_503_and_closed() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra = vec![("TIANJI_CONNECTIONS_MAX", "4".into()), ("TIANJI_KEEP_ALIVE", "60s".into())];
    let app = spawn_with(options).await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&app.address).await;
        stream.get_mut().write_all(health).await.unwrap();
        assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
        held.push(stream);
    }
    let refused = exchange(&app.address, health).await;
    assert_eq!((refused.status, refused.body["code"].as_str()), (503, Some("too_many_connections")));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("connection"), Some("close"));
    // One held connection closes: a new one is served again once the server has seen it go.
    drop(held.pop());
    let served = crate::helpers::eventually(Duration::from_secs(5), || async {
        exchange(&app.address, health).await.status == 200
    })
    .await;
    assert!(served, "a connection is served again below the limit");
}

/// One attacker's connections, each cut by the server: how long it lived and the answer.
#[derive(Debug, Clone, Copy)]
struct Cut {
    lived: Duration,
    status: u16,
}

/// What the slow-body attackers share with the test.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    /// Attackers that have sent their first head.
    started: AtomicUsize,
    cuts: Mutex<Vec<Vec<Cut>>>,
    connect_errors: AtomicUsize,
}

/// Sends `head` (which declares a body), then the body one byte per second, on a new
/// connection each time the server cuts the last one, until `stop`.
async fn slow_body_attacker(host: String, head: Arc<String>, slot: usize, attack: Arc<Attack>) {
    let mut first = true;
    while !attack.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let Ok(mut stream) = TcpStream::connect(&host).await else {
            attack.connect_errors.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            continue;
        };
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        if std::mem::take(&mut first) {
            attack.started.fetch_add(1, Ordering::SeqCst);
        }
        let (mut reader, mut writer) = stream.split();
        let answer = async {
            let mut answer = Vec::new();
            // A reset leaves what was read before it, possibly nothing: counted as not a 408.
            let _ = reader.read_to_end(&mut answer).await;
            answer
        };
        let drip = async {
            loop {
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::pin!(answer);
        let answer = tokio::select! {
            answer = &mut answer => answer,
            () = drip => answer.await,
        };
        let status = String::from_utf8_lossy(&answer).split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let cut = Cut { lived: started.elapsed(), status: status.unwrap_or(0) };
        attack.cuts.lock().unwrap()[slot].push(cut);
    }
}

/// Latencies of `clients` clients each making `requests` requests (a SKU read and an order,
/// alternately, each order from a user of its own); panics on any failure.
async fn normal_load(address: &str, sku_id: i64, clients: usize, requests: usize, first_user: i64) -> Vec<Duration> {
    let keys = Arc::new(JwtKeys::new(JWT_SECRET));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, keys, address) = (client.clone(), Arc::clone(&keys), address.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests);
                for r in 0..requests {
                    let user = first_user + (c * requests + r) as i64;
                    let token = keys.mint(UserId::new(user), Role::User, Duration::from_secs(600));
                    let started = Instant::now();
                    let (expected, request) = if r % 2 == 0 {
                        (200, client.get(format!("{address}/v1/skus/{sku_id}")))
                    } else {
                        let body = json!({"items": [{"sku_id": sku_id, "quantity": 1}]});
                        (201, client.post(format!("{address}/v1/orders")).header("Idempotency-Key", "k").json(&body))
                    };
                    let response = request.bearer_auth(token).send().await;
                    let status = response.as_ref().map(|r| r.status().as_u16()).map_err(|e| e.to_string());
                    assert_eq!(status, Ok(expected), "a normal client is served");
                    response.unwrap().bytes().await.expect("the whole answer");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a normal client finished"));
    }
    latencies
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

const SLOW_CONNECTIONS: usize = 2_000;
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(1);

#[test]
fn slow_body_connections_are_cut_and_normal_clients_still_served() {
    let attack_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let database = client_runtime.block_on(TestDatabase::create(Backend::Sqlite));
    let server = ServerProcess::start("hostile", &database.url, &[("TIANJI_BODY_READ_TIMEOUT", "1s")]);
    let address = server.address.clone();
    let keys = JwtKeys::new(JWT_SECRET);
    let admin = keys.mint(UserId::new(1), Role::Admin, Duration::from_secs(600));
    let sku_id = client_runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{address}/v1/admin/skus"))
            .bearer_auth(&admin)
            .json(&json!({"name": "hostile", "price_cents": 100, "stock": 1_000_000}))
            .send()
            .await
            .expect("create sku");
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["sku_id"].as_i64().unwrap()
    });
    let (clients, requests) = (8, 200);
    let mut idle = client_runtime.block_on(normal_load(&address, sku_id, clients, requests, 1_000));

    let host = address.strip_prefix("http://").unwrap().to_owned();
    let buyer = keys.mint(UserId::new(99), Role::User, Duration::from_secs(600));
    let heads = [
        "POST /v1/payments/callback HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         X-Tianji-Signature: 00\r\nContent-Length: 1000\r\n\r\n"
            .to_owned(),
        format!(
            "POST /v1/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: Bearer {buyer}\r\n\
             Idempotency-Key: slow\r\nContent-Length: 1000\r\n\r\n"
        ),
    ]
    .map(Arc::new);
    let attack = Arc::new(Attack { cuts: Mutex::new(vec![Vec::new(); SLOW_CONNECTIONS]), ..Attack::default() });
    let attackers: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|slot| {
            let head = Arc::clone(&heads[slot % 2]);
            attack_runtime.spawn(slow_body_attacker(host.clone(), head, slot, Arc::clone(&attack)))
        })
        .collect();
    let all_started = client_runtime.block_on(crate::helpers::eventually(Duration::from_secs(10), || async {
        attack.started.load(Ordering::SeqCst) == SLOW_CONNECTIONS
    }));
    assert!(all_started, "{} of {SLOW_CONNECTIONS} attackers started", attack.started.load(Ordering::SeqCst));
    let attack_started = Instant::now();
    let mut attacked = client_runtime.block_on(normal_load(&address, sku_id, clients, requests, 100_000));
    let measured_within = attack_started.elapsed();
    let every_attacker_cut = client_runtime.block_on(crate::helpers::eventually(Duration::from_secs(10), || async {
        attack.cuts.lock().unwrap().iter().all(|cuts| !cuts.is_empty())
    }));
    attack.stop.store(true, Ordering::SeqCst);
    client_runtime.block_on(async {
        for attacker in attackers {
            tokio::time::timeout(Duration::from_secs(10), attacker).await.expect("attackers stop").unwrap();
        }
    });
    assert!(every_attacker_cut, "every slow connection is cut");

    let cuts: Vec<Cut> = attack.cuts.lock().unwrap().iter().flatten().copied().collect();
    // A cut is a 408 and a close or, for a few connections under load, a reset with nothing
    // read (cause not yet pinned down; see the README): both end the connection. Anything
    // else would be a bug.
    let resets = cuts.iter().filter(|cut| cut.status == 0).count();
    let other: Vec<&Cut> = cuts.iter().filter(|cut| cut.status != 408 && cut.status != 0).collect();
    assert!(other.is_empty(), "slow connections ended with another answer: {:?}", &other[..other.len().min(5)]);
    let longest = cuts.iter().map(|cut| cut.lived).max().unwrap();
    // The bound is loose on purpose: the attackers' own runtime is busy with 2,000 sockets.
    assert!(longest < BODY_READ_TIMEOUT * 10, "a slow connection lived {longest:?}");
    let (idle_p99, attacked_p99) = (p99(&mut idle), p99(&mut attacked));
    println!(
        "normal clients: p99 idle {idle_p99:?}, p99 with {SLOW_CONNECTIONS} slow-body connections {attacked_p99:?} \
         (ratio {:.2}; {} requests in {measured_within:?}); slow connections cut: {} ({resets} by a reset with no answer read), longest lived \
         {longest:?}, connect errors {}",
        attacked_p99.as_secs_f64() / idle_p99.as_secs_f64(),
        attacked.len(),
        cuts.len(),
        attack.connect_errors.load(Ordering::SeqCst),
    );
    drop(server);
    attack_runtime.shutdown_background();
}
