//! Builds the running service from settings: store (with migrations), snapshots, actors and
//! the HTTP server bound to the configured address (port 0 in tests), and stops it gracefully.
//!
//! A graceful stop (SIGTERM or SIGINT, `Application::run_until`) goes in phases, each bounded:
//!
//! 1. `let_clients_leave`: the node drains (`/readyz` 503, `Connection: close` on every
//!    response, see `http::drain`) and keeps listening, until no connection is open or half of
//!    `TIANJI_SHUTDOWN_TIMEOUT` has passed. Every request that reaches the node is answered,
//!    and a keep-alive client is told to leave rather than having its connection closed under
//!    a request it is sending.
//! 2. `close_server`: the listener closes (new connections are refused), the requests in
//!    flight are answered and the remaining connections closed; past the timeout (counted from
//!    the signal) the connections left are cut.
//! 3. `settle_writes`: the payment deadline timer stops firing and its timeouts in flight
//!    finish, then everything queued in the write pipeline is committed and answered.
//! 4. `publish_left_events` and `flush_write_behind`: the order events not yet published go
//!    to the stream, and learning progress, acknowledged from memory, is written to Redis and
//!    the database.
//! 5. The actors stop.
//!
//! Nothing acknowledged depends on phases 3 to 5 (a 2xx reply waits for its commit), except the
//! learning progress of phase 4. A stop that had to cut connections or could not write what it
//! held reports it (`Shutdown::is_clean`), and the binary then exits non-zero.

use crate::actors::relay::Relay;
use crate::actors::Core;
use crate::config::Settings;
use crate::http::clients::ConnectionGate;
use crate::http::drain::Drain;
use crate::http::{self, auth::JwtKeys, payments::PaymentKey, AppState};
use crate::http::{in_flight::InFlight, in_flight::InFlightCap, limits::RateLimits};
use crate::persistence;
use crate::persistence::redis::events::EventStream;
use crate::persistence::redis::{progress::ProgressMirror, Snapshots};
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use utoipa_actix_web::AppExt;

pub struct Application {
    port: u16,
    server: Server,
    core: Arc<Core>,
    /// The order-event relay, when Redis is configured.
    relay: Option<Relay>,
    /// Set when the stop begins; read by `/readyz` and every response.
    drain: Arc<Drain>,
    /// Counts the open connections the first phase of a stop waits for.
    gate: ConnectionGate,
    /// `TIANJI_SHUTDOWN_TIMEOUT`.
    shutdown_timeout: Duration,
    /// The membership loop of a cluster node (`TIANJI_ADVERTISE_URL`).
    cluster: Option<crate::cluster::start::Clustered>,
}

/// How often the first phase of a stop looks at the open connections.
pub const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How a graceful stop went; `is_clean` when nothing was cut or left unwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Connections still open when the listener closed.
    pub connections_at_close: usize,
    /// Connections cut at the timeout, their requests unanswered (their outcome unknown to
    /// their clients).
    pub connections_cut: usize,
    /// Whether the deadline timer stopped and the write pipeline committed what was queued,
    /// each within its bound.
    pub writes_settled: bool,
    /// Learning progress rows (user, course) that could not be written to the database.
    pub learning_rows_kept: usize,
}

impl Shutdown {
    pub fn is_clean(&self) -> bool {
        self.connections_cut == 0 && self.writes_settled && self.learning_rows_kept == 0
    }
}

impl Application {
    /// Connects, migrates and binds. Needs a running actix `System` (actors start on it).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let (store, member) = match &settings.cluster {
            None => (persistence::connect(&settings.database_url, true, settings.limits.database_timeout).await?, None),
            Some(cluster) => {
                let member =
                    crate::cluster::start::join(&settings.database_url, settings.limits.database_timeout, cluster)
                        .await?;
                (member.store(), Some(member))
            }
        };
        let snapshots = Arc::new(match &settings.redis_url {
            Some(url) => Snapshots::with_redis(url)?,
            None => Snapshots::in_process(),
        });
        let core = Core::start(
            Arc::clone(&store),
            snapshots,
            settings.limits,
            member.as_ref().map_or(settings.worker_id, |member| member.worker_id()),
            settings.pay_timeout,
            settings.actor_threads,
        );
        if let Some(url) = &settings.redis_url {
            core.mirror_learning(ProgressMirror::open(url)?);
        }
        let relay = match &settings.redis_url {
            Some(url) => Some(start_relay(url, &settings, store, &core)?),
            None => None,
        };
        // A cluster node takes its first ranges before it repairs (repairs of others' ranges are refused).
        let cluster = match member {
            Some(member) => Some(member.start(&core).await?),
            None => None,
        };
        core.recover().await?;
        let limits = RateLimits::new(&settings.rate_limits);
        let state = web::Data::new(AppState { core: Arc::clone(&core), limits });
        let in_flight = InFlight::new(settings.in_flight_max);
        let keys = web::Data::new(JwtKeys::with_rules(settings.jwt_secret(), settings.tokens.clone()));
        let clients = settings.clients;
        let gate = ConnectionGate::new(clients.connections_max);
        let accept_max_per_worker = gate.accept_max_per_worker(settings.http_workers);
        let drain = Drain::new();
        let draining = web::Data::from(Arc::clone(&drain));
        let drain_flag = Arc::clone(&drain);
        let admission = gate.clone();
        let payment_key = web::Data::new(PaymentKey::new(settings.payment_secret()));
        let listener = TcpListener::bind(settings.bind)?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .into_utoipa_app()
                .openapi(http::openapi::base())
                .configure(http::configure(state.clone(), keys.clone(), payment_key.clone()))
                .openapi_service(http::openapi::serve)
                .into_app()
                .app_data(draining.clone())
                .wrap(http::metrics::RequestMetrics)
                .wrap(InFlightCap::new(Arc::clone(&in_flight)))
                // Outside the others: a slow or oversized body is refused before any other layer sees it.
                .wrap(from_fn(move |request, next| http::clients::guard(clients, request, next)))
                // Outermost: every response of a draining node closes its connection.
                .wrap(from_fn({
                    let drain = Arc::clone(&drain_flag);
                    move |request, next| http::drain::close_when_draining(Arc::clone(&drain), request, next)
                }))
                // Around everything: every answer, a middleware's refusal too, is logged in its
                // request's span and carries its X-Request-Id.
                .wrap(http::request_id::RequestIds::returned())
                .wrap(http::request_id::RequestIds::traced())
        })
        .on_connect(move |_, connection| admission.admit(connection))
        // Signals are handled in `run_until_stopped`; the workers' own bound is the timeout's,
        // in whole seconds (`run_until` cuts at the exact deadline).
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs_f64().ceil() as u64)
        .client_request_timeout(clients.header_read_timeout)
        .client_disconnect_timeout(http::clients::DISCONNECT_TIMEOUT)
        .keep_alive(keep_alive(clients.keep_alive))
        .max_connections(accept_max_per_worker)
        .backlog(http::clients::BACKLOG_MAX)
        .workers(settings.http_workers)
        .listen(listener)?
        .run();
        tracing::info!(port, database = %redact(&settings.database_url), redis = settings.redis_url.is_some(), "tianji serving");
        let shutdown_timeout = settings.shutdown_timeout;
        Ok(Application { port, server, core, relay, drain, gate, shutdown_timeout, cluster })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully (see the module doc). A second
    /// signal during the stop ends the process at once (exit code 130), nothing more written.
    pub async fn run_until_stopped(self) -> std::io::Result<Shutdown> {
        let mut signals = Signals::listen()?;
        let stop = async move {
            let first = signals.next().await;
            tracing::info!(signal = first, "stopping gracefully");
            actix_web::rt::spawn(async move {
                let second = signals.next().await;
                tracing::error!(signal = second, "second signal during the stop: exiting now");
                std::process::exit(EXIT_CODE_FORCED);
            });
        };
        self.run_until(stop).await
    }

    /// Serves until `stop` completes, then stops gracefully in the phases of the module doc.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> std::io::Result<Shutdown> {
        let Application { server, core, relay, drain, gate, shutdown_timeout, cluster, .. } = self;
        let handle = server.handle();
        let mut serving = actix_web::rt::spawn(server);
        tokio::select! {
            ended = &mut serving => {
                // The server ends on its own only when it failed.
                ended.map_err(std::io::Error::other)??;
                return Err(std::io::Error::other("the HTTP server stopped without being asked"));
            }
            () = stop => {}
        }
        let signalled = Instant::now();
        let_clients_leave(&drain, &gate, signalled + shutdown_timeout / 2).await;
        let deadline = signalled + shutdown_timeout;
        let (connections_at_close, connections_cut) = close_server(handle, serving, &gate, deadline).await;
        let writes_settled = settle_writes(&core).await;
        if let Some(cluster) = cluster {
            // Released now, the ranges move to the other nodes at once instead of after a TTL.
            cluster.leave().await;
        }
        publish_left_events(relay.as_ref()).await;
        let learning_rows_kept = flush_write_behind(&core).await;
        core.stop();
        let shutdown = Shutdown { connections_at_close, connections_cut, writes_settled, learning_rows_kept };
        tracing::info!(?shutdown, clean = shutdown.is_clean(), "stopped");
        Ok(shutdown)
    }
}

/// The exit code when a second signal ends a graceful stop (128 + SIGINT, as shells report it).
pub const EXIT_CODE_FORCED: i32 = 130;

/// SIGTERM and SIGINT, handled by the node itself instead of actix (which stops at once on
/// SIGINT, and on SIGTERM closes idle keep-alive connections under clients that may be sending).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Phase 1: drains and waits, still listening, until no connection is open or `until`. A
/// client answered now is told to close its connection; one that connects now is served.
/// (A polling wait: the open count is shared by every worker and has no waker.)
async fn let_clients_leave(drain: &Drain, gate: &ConnectionGate, until: Instant) {
    drain.start();
    let open_at_start = gate.open();
    tracing::info!(open = open_at_start, "draining: not ready, every response closes its connection");
    while gate.open() > 0 && Instant::now() < until {
        tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
    }
    tracing::info!(open = gate.open(), open_at_start, "connections left when the listener closes");
}

/// Phase 2: closes the listener and lets the workers answer their requests in flight until
/// `deadline`; past it the workers are stopped at once and their connections cut. Returns the
/// connections open when the listener closed and those cut.
async fn close_server(
    handle: ServerHandle,
    mut serving: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    gate: &ConnectionGate,
    deadline: Instant,
) -> (usize, usize) {
    let open = gate.open();
    // The command is sent now; the returned future would only wait for the stop.
    drop(handle.stop(true));
    match tokio::time::timeout_at(deadline, &mut serving).await {
        Ok(Ok(Ok(()))) => (open, 0),
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, "the HTTP server failed while stopping");
            (open, gate.open())
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "the HTTP server task ended abnormally");
            (open, gate.open())
        }
        Err(_elapsed) => {
            let cut = gate.open();
            tracing::error!(cut, "shutdown timeout: cutting the connections still open");
            // Dropping the server stops its workers at once, which closes their connections.
            serving.abort();
            let _ = serving.await;
            (open, cut)
        }
    }
}

/// A write step of the stop (a payment timeout: an activation read, then a commit queued behind
/// at most one other) is given this many database timeouts.
pub const WRITE_STEP_BOUND_DATABASE_TIMEOUTS: u32 = 4;

/// Phase 3: no payment deadline fires any more (one that would have fires at the next start:
/// its order is still pending in the database), the timeouts already started finish, then the
/// write pipeline commits and answers everything queued. Each step is bounded by
/// `WRITE_STEP_BOUND_DATABASE_TIMEOUTS` database timeouts. False when one was not done in time.
async fn settle_writes(core: &Core) -> bool {
    let bound = core.limits().database_timeout * WRITE_STEP_BOUND_DATABASE_TIMEOUTS;
    let timer_stopped = tokio::time::timeout(bound, core.stop_deadlines()).await.is_ok();
    if !timer_stopped {
        tracing::error!(?bound, "payment timeouts still running at shutdown; they finish at the next start");
    }
    let journal_drained = match tokio::time::timeout(bound, core.drain_journal()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::error!(%error, "write pipeline not drained at shutdown");
            false
        }
        Err(_elapsed) => {
            tracing::error!(?bound, "write pipeline not drained within its bound at shutdown");
            false
        }
    };
    timer_stopped && journal_drained
}

/// Phase 4 (after the order events): writes the learning progress the node holds: to Redis
/// first (one round trip per 500 users, so a kill soon after loses little), then to the
/// database. Returns the rows that could not be written to the database.
async fn flush_write_behind(core: &Core) -> usize {
    if let Err(error) = core.flush_learning_to_redis().await {
        tracing::warn!(%error, "learning progress not written to redis at shutdown");
    }
    match core.flush_learning().await {
        Ok(rows) => {
            tracing::info!(rows, "learning progress flushed at shutdown");
            0
        }
        Err(error) => {
            let (kept, _) = core.learning_pending_rows();
            tracing::error!(%error, kept, "learning progress not flushed at shutdown");
            kept
        }
    }
}

/// How long the shutdown sequence gives the relay to publish the events left.
pub const EVENTS_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The order-event relay of this node, on the current runtime (the store's).
fn start_relay(url: &str, settings: &Settings, store: persistence::DynStore, core: &Core) -> anyhow::Result<Relay> {
    let events = &settings.events;
    let stream = EventStream::open(url, &events.stream_key, events.stream_len_max)?;
    let clock = Arc::new(crate::domain::clock::SystemClock);
    Ok(Relay::start(store, stream, clock, events, settings.limits.database_timeout, core.committed()))
}

/// Publishes the events the relay has not yet, within `EVENTS_DRAIN_DEADLINE`; what is left
/// is published by the next start.
async fn publish_left_events(relay: Option<&Relay>) {
    let Some(relay) = relay else { return };
    match relay.drain(EVENTS_DRAIN_DEADLINE).await {
        Ok(published) => tracing::info!(published, "order events published at shutdown"),
        Err(error) => tracing::warn!(%error, "order events left for the next start"),
    }
}

fn keep_alive(idle: std::time::Duration) -> KeepAlive {
    if idle.is_zero() {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(idle)
    }
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
