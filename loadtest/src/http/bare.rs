//! The reference endpoints: minimal actix-web JSON handlers at `POST /v1/orders` and
//! `POST /v1/coupons/receive` that parse the same body tianji gets and answer 201 with a small
//! order or coupon, touching nothing else (no token check, no actor, no database). Driven with
//! the same load as tianji, it is the ceiling of HTTP + JSON on this machine; the report gives
//! tianji / bare.
//!
//! It runs on 127.0.0.1:0 in its own thread with its own actix System, and is stopped by the
//! run that started it. Its threads carry names starting with `THREAD_NAME_PREFIXES`, so their
//! CPU time can be told apart from the client's in the same process.

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Same body limit as tianji's API.
pub const BODY_SIZE_MAX_BYTES: usize = 64 * 1024;
/// The thread running the server's System.
const THREAD_NAME: &str = "bare-server";
/// Names of every thread of the server: its System's, actix-server's acceptor ("actix-server
/// acceptor") and its workers, which run as actix arbiters ("actix-rt|system:N|arbiter:M").
/// Linux keeps the first 15 bytes of a name. The client runs on plain Tokio threads.
pub const THREAD_NAME_PREFIXES: &[&str] = &[THREAD_NAME, "actix-server", "actix-rt"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    sku_id: i64,
    quantity: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    items: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveBody {
    template_id: i64,
}

async fn receive(next_id: web::Data<AtomicI64>, body: web::Json<ReceiveBody>) -> HttpResponse {
    let coupon_id = next_id.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Created().json(serde_json::json!({
        "coupon_id": coupon_id,
        "coupon_id_str": coupon_id.to_string(),
        "template_id": body.template_id,
        "status": "unused",
        "order_id": null,
        "valid_until": "2099-12-31T23:59:59.000Z",
    }))
}

async fn place(next_id: web::Data<AtomicI64>, body: web::Json<PlaceBody>) -> HttpResponse {
    let order_id = next_id.fetch_add(1, Ordering::Relaxed);
    let quantity: i64 = body.items.iter().map(|item| item.quantity).sum();
    let sku_id = body.items.first().map_or(0, |item| item.sku_id);
    HttpResponse::Created().json(serde_json::json!({
        "order_id": order_id,
        "user_id": 1,
        "status": "pending_payment",
        "items": [{ "sku_id": sku_id, "quantity": quantity }],
        "pay_cents": 100 * quantity,
    }))
}

pub struct BareServer {
    pub url: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl BareServer {
    /// Starts the server with `workers` worker threads on a free loopback port.
    pub fn start(workers: usize) -> anyhow::Result<Self> {
        let (ready, started) = mpsc::channel();
        let thread = std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let next_id = web::Data::new(AtomicI64::new(1));
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(next_id.clone())
                        .app_data(web::JsonConfig::default().limit(BODY_SIZE_MAX_BYTES))
                        .route("/v1/orders", web::post().to(place))
                        .route("/v1/coupons/receive", web::post().to(receive))
                })
                .workers(workers)
                .bind(("127.0.0.1", 0));
                let server = match server {
                    Ok(server) => server,
                    Err(error) => {
                        let _ = ready.send(Err(error.to_string()));
                        return Ok(());
                    }
                };
                let address: Vec<SocketAddr> = server.addrs();
                let running = server.run();
                let _ = ready.send(Ok((address, running.handle())));
                running.await
            })
        })?;
        let (addresses, handle) = started
            .recv()
            .map_err(|_| anyhow::anyhow!("the bare server thread ended before it started"))?
            .map_err(|e| anyhow::anyhow!("binding the bare server: {e}"))?;
        let address = addresses.first().ok_or_else(|| anyhow::anyhow!("the bare server bound no address"))?;
        Ok(BareServer { url: format!("http://{address}"), handle, thread: Some(thread) })
    }

    /// Stops the server gracefully and waits for its thread.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| anyhow::anyhow!("the bare server thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for BareServer {
    /// A server that was not stopped (an error path) is stopped without waiting.
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.handle.stop(false));
        }
    }
}
