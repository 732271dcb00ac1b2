//! Builds the running service from settings: store (with migrations), snapshots, actors and
//! the HTTP server bound to the configured address (port 0 in tests), and stops it gracefully.
//!
//! A graceful stop (SIGTERM or SIGINT, `Application::run_until`) goes in phases, each bounded,
//! under one deadline: `TIANJI_SHUTDOWN_TIMEOUT` after the signal for the HTTP phases (1, 2),
//! and `STOP_WRITES_MAX` more for the writes (3, 4, 5), so a stop takes at most their sum:
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
//!    finish, then everything queued in the write pipeline is committed and answered (a full
//!    pipeline queue is waited on, not refused).
//! 4. `flush_write_behind`: learning progress, acknowledged from memory and held nowhere else,
//!    is written to Redis and the database.
//! 5. `publish_left_events`, best effort with what is left of the deadline (at most
//!    `EVENTS_DRAIN_MAX`): the order events are in the database already, and what is not
//!    published now the next start publishes.
//! 6. The actors stop.
//!
//! Nothing acknowledged depends on phases 3 to 6 (a 2xx reply waits for its commit), except the
//! learning progress of phase 4. A stop that had to cut connections, whose server failed, or
//! that could not write what it held reports it (`Shutdown::is_clean`), and the binary then
//! exits non-zero.

use crate::actors::relay::Relay;
use crate::actors::Core;
use crate::cluster::peers::PeerLimits;
use crate::cluster::remote::NODE_TOKEN_TTL;
use crate::config::Settings;
use crate::http::auth::Role;
use crate::http::clients::ConnectionGate;
use crate::http::drain::Drain;
use crate::http::{self, auth::JwtKeys, payments::PaymentKey, AppState};
use crate::http::{in_flight::InFlight, in_flight::InFlightCap, limits::RateLimits};
use crate::metrics::{ClusterMetrics, Metrics, RelayMetrics, SnapshotMetrics};
use crate::persistence;
use crate::persistence::redis::events::EventStream;
use crate::persistence::redis::{progress::ProgressMirror, Snapshots};
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::Ordering::Relaxed;
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
    /// Whether the HTTP server failed while stopping (its task ended with an error or a
    /// panic): what its connections got is unknown, whatever `connections_cut` says.
    pub server_failed: bool,
    /// The stop began because the node was expelled from its cluster (it exits 1, to be
    /// started again as a new member).
    pub expelled: bool,
}

impl Shutdown {
    pub fn is_clean(&self) -> bool {
        self.connections_cut == 0
            && !self.server_failed
            && self.writes_settled
            && self.learning_rows_kept == 0
            && !self.expelled
    }
}

/// How long the writes after the HTTP phases of a stop (settle the pipeline, flush learning
/// progress, publish order events) may take in all, past `TIANJI_SHUTDOWN_TIMEOUT`: a stop ends
/// at most `TIANJI_SHUTDOWN_TIMEOUT + STOP_WRITES_MAX` after its signal. Ten default database
/// timeouts: the settling steps (`WRITE_STEP_BOUND_DATABASE_TIMEOUTS` each) and a learning flush
/// of a few statements fit in it with room to spare.
pub const STOP_WRITES_MAX: Duration = Duration::from_secs(10);

/// The most the last, best-effort phase of a stop (publishing order events) is given, within
/// what is left of `STOP_WRITES_MAX`.
pub const EVENTS_DRAIN_MAX: Duration = Duration::from_secs(5);

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
        // The app's one recorder: every handle below registers in it, `/metrics` renders it.
        let metrics = Metrics::new();
        // Registered even without Redis, so a dashboard's series exist (at 0) on every node.
        let snapshot_metrics = SnapshotMetrics::new(&metrics);
        let snapshots = Arc::new(match &settings.redis_url {
            Some(url) => Snapshots::with_redis_measured(url, snapshot_metrics)?,
            None => Snapshots::in_process(),
        });
        let core = Core::start_measured(
            Arc::clone(&store),
            snapshots,
            settings.limits,
            member.as_ref().map_or(settings.worker_id, |member| member.worker_id()),
            settings.pay_timeout,
            settings.actor_threads,
            metrics.clone(),
        );
        if let Some(url) = &settings.redis_url {
            core.mirror_learning(ProgressMirror::open(url)?);
        }
        let relay = match &settings.redis_url {
            Some(url) => Some(start_relay(url, &settings, store, &core)?),
            None => None,
        };
        export_relay(&metrics, relay.as_ref());
        let keys = web::Data::new(JwtKeys::with_rules(settings.jwt_secret(), settings.tokens.clone()));
        // Forwards and calls on other nodes' keys each have their own client and bound, so a
        // burst of forwards cannot starve the settlements of committed order steps; the calls,
        // made while serving a request that may have been forwarded, time out first.
        let peers = |limits: fn(PeerLimits) -> PeerLimits| {
            settings.cluster.as_ref().map(|cluster| crate::cluster::peers::Peers::new(limits(cluster.peers)))
        };
        // A cluster node takes its first ranges before it repairs (repairs of others' ranges are refused).
        let mut cluster = match member {
            Some(member) => {
                let (minter, worker_id) = (keys.clone(), member.worker_id());
                // Subjects are positive ids: a node's is its worker id plus one.
                let node = crate::domain::UserId::new(i64::from(worker_id) + 1);
                let ttl = NODE_TOKEN_TTL.min(keys.rules().lifetime_max);
                let mint = Arc::new(move || minter.mint(node, Role::Node, ttl));
                let peers = peers(PeerLimits::nested).expect("a member has cluster settings");
                Some(member.start(&core, mint, peers).await?)
            }
            None => None,
        };
        export_cluster(&metrics, core.cluster());
        core.recover().await?;
        if let Some(cluster) = cluster.as_mut() {
            cluster.recovered(&core);
        }
        let limits = RateLimits::new(&settings.rate_limits, &metrics);
        let state = web::Data::new(AppState { core: Arc::clone(&core), limits });
        let in_flight =
            InFlight::measured(settings.in_flight_max, metrics.counter(&crate::metrics::IN_FLIGHT_REFUSED, &[]));
        let clients = settings.clients;
        let gate = ConnectionGate::new(clients.connections_max);
        let accept_max_per_worker = gate.accept_max_per_worker(settings.http_workers);
        let drain = Drain::new();
        let draining = web::Data::from(Arc::clone(&drain));
        let drain_flag = Arc::clone(&drain);
        let admission = gate.clone();
        let payment_key = web::Data::new(PaymentKey::new(settings.payment_secret()));
        // Only a cluster node forwards; on a single node the layer passes every request straight on.
        let forward = http::forward::Forward::new(peers(std::convert::identity).and_then(|peers| {
            http::forward::Forwarding::of(&core, peers, keys.clone(), payment_key.clone(), &metrics)
        }));
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
                // Innermost: a forwarded request is counted, capped and traced like any other.
                .wrap(forward.clone())
                .wrap(http::metrics::RequestMetrics::new(metrics.clone()))
                .wrap(InFlightCap::new(Arc::clone(&in_flight)))
                // Outside the others: a slow or oversized body is refused before any other layer sees it.
                .wrap(from_fn(move |request, next| http::clients::guard(clients, request, next)))
                // Outermost: every response of a draining node closes its connection.
                .wrap(http::drain::CloseWhenDraining::new(Arc::clone(&drain_flag)))
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
        let expelled = async {
            match &cluster {
                Some(cluster) => cluster.expelled().await,
                None => std::future::pending().await,
            }
        };
        let mut was_expelled = false;
        tokio::select! {
            ended = &mut serving => {
                // The server ends on its own only when it failed.
                ended.map_err(std::io::Error::other)??;
                return Err(std::io::Error::other("the HTTP server stopped without being asked"));
            }
            () = stop => {}
            () = expelled => {
                tracing::error!("expelled from the cluster (presumed dead, its worker id reused): stopping");
                was_expelled = true;
            }
        }
        let signalled = Instant::now();
        let http_deadline = signalled + shutdown_timeout;
        let writes_deadline = http_deadline + STOP_WRITES_MAX;
        let_clients_leave(&drain, &gate, signalled + shutdown_timeout / 2).await;
        let closed = close_server(handle, serving, &gate, http_deadline).await;
        let writes_settled = settle_writes(&core, writes_deadline).await;
        let learning_rows_kept = flush_write_behind(&core, writes_deadline).await;
        if let Some(cluster) = cluster {
            // Released now, the ranges move to the other nodes at once instead of after a TTL;
            // after the learning flush, so a new owner's user actors read the latest progress.
            cluster.leave().await;
        }
        publish_left_events(relay.as_ref(), writes_deadline).await;
        core.stop();
        let shutdown = Shutdown {
            connections_at_close: closed.open,
            connections_cut: closed.cut,
            writes_settled,
            learning_rows_kept,
            server_failed: closed.failed,
            expelled: was_expelled,
        };
        if shutdown.is_clean() {
            tracing::info!(?shutdown, took = ?signalled.elapsed(), "stopped");
        } else {
            tracing::error!(?shutdown, took = ?signalled.elapsed(), "stopped, not cleanly");
        }
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

/// How the HTTP server closed (phase 2).
struct Closed {
    /// Connections open when the listener closed.
    open: usize,
    /// Connections cut at the deadline (or still counted open when the server failed).
    cut: usize,
    /// Whether the server's task ended with an error or a panic.
    failed: bool,
}

/// Phase 2: closes the listener and lets the workers answer their requests in flight until
/// `deadline`; past it the workers are stopped at once and their connections cut.
async fn close_server(
    handle: ServerHandle,
    mut serving: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    gate: &ConnectionGate,
    deadline: Instant,
) -> Closed {
    let open = gate.open();
    // The command is sent now; the returned future would only wait for the stop.
    drop(handle.stop(true));
    match tokio::time::timeout_at(deadline, &mut serving).await {
        Ok(Ok(Ok(()))) => Closed { open, cut: 0, failed: false },
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, "the HTTP server failed while stopping");
            Closed { open, cut: gate.open(), failed: true }
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "the HTTP server task ended abnormally");
            Closed { open, cut: gate.open(), failed: true }
        }
        Err(_elapsed) => {
            let cut = gate.open();
            tracing::error!(cut, "shutdown timeout: cutting the connections still open");
            // Dropping the server stops its workers at once, which closes their connections.
            serving.abort();
            let _ = serving.await;
            Closed { open, cut, failed: false }
        }
    }
}

/// A write step of the stop (a payment timeout: an activation read, then a commit queued behind
/// at most one other) is given this many database timeouts.
pub const WRITE_STEP_BOUND_DATABASE_TIMEOUTS: u32 = 4;

/// Phase 3: no payment deadline fires any more (one that would have fires at the next start:
/// its order is still pending in the database), the timeouts already started finish, then the
/// write pipeline commits and answers everything queued. Each step is bounded by
/// `WRITE_STEP_BOUND_DATABASE_TIMEOUTS` database timeouts, and both by `deadline`. False when
/// one was not done in time.
async fn settle_writes(core: &Core, deadline: Instant) -> bool {
    let bound = core.limits().database_timeout * WRITE_STEP_BOUND_DATABASE_TIMEOUTS;
    let step_deadline = || (Instant::now() + bound).min(deadline);
    let timer_stopped = tokio::time::timeout_at(step_deadline(), core.stop_deadlines()).await.is_ok();
    if !timer_stopped {
        tracing::error!(?bound, "payment timeouts still running at shutdown; they finish at the next start");
    }
    let drained_by = step_deadline();
    let journal_drained = match tokio::time::timeout_at(drained_by, core.drain_journal(drained_by)).await {
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

/// Phase 4 (before the order events, which are safe in the database already): writes the
/// learning progress the node holds, by `deadline`: to Redis first (one round trip per 500
/// users, so a kill soon after loses little), then to the database, waiting for room in a full
/// pipeline queue. Returns the rows that could not be written to the database.
async fn flush_write_behind(core: &Core, deadline: Instant) -> usize {
    match tokio::time::timeout_at(deadline, core.flush_learning_to_redis()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "learning progress not written to redis at shutdown"),
        Err(_elapsed) => tracing::warn!("learning progress not written to redis by the stop's deadline"),
    }
    // A row stays pending until its change commits, so a flush cut at the deadline keeps the
    // rows it did not write, and they are counted below.
    let flushed = tokio::time::timeout_at(deadline, core.flush_learning_before(deadline)).await;
    match flushed {
        Ok(Ok(rows)) => {
            tracing::info!(rows, "learning progress flushed at shutdown");
            0
        }
        Ok(Err(error)) => {
            let (kept, _) = core.learning_pending_rows();
            tracing::error!(%error, kept, "learning progress not flushed at shutdown");
            kept
        }
        Err(_elapsed) => {
            let (kept, _) = core.learning_pending_rows();
            tracing::error!(kept, "learning progress not flushed by the stop's deadline");
            kept
        }
    }
}

/// Registers the event relay's metrics (at 0 on a node without a relay) and, with a relay,
/// reads its counts into them at each scrape.
fn export_relay(metrics: &Metrics, relay: Option<&Relay>) {
    let handles = RelayMetrics::new(metrics);
    let Some(relay) = relay else { return };
    let stats = relay.stats();
    metrics.on_scrape(move || {
        let (published, failed) = (stats.published.load(Relaxed), stats.failed_rounds.load(Relaxed));
        let oldest = Duration::from_millis(stats.oldest_event_age_ms.load(Relaxed));
        handles.read(published, failed, oldest);
    });
}

/// Reads a cluster node's leases and counts into its handles at each scrape (registered on a
/// single node too, at 0).
fn export_cluster(metrics: &Metrics, ownership: Option<&Arc<crate::cluster::Ownership>>) {
    let handles = ClusterMetrics::new(metrics);
    let Some(ownership) = ownership.cloned() else { return };
    metrics.on_scrape(move || handles.read(ownership.held_valid(), &ownership.counts().read()));
}

/// The order-event relay of this node, on the current runtime (the store's).
fn start_relay(url: &str, settings: &Settings, store: persistence::DynStore, core: &Core) -> anyhow::Result<Relay> {
    let events = &settings.events;
    let stream = EventStream::open(url, &events.stream_key, events.stream_entries_max)?;
    let clock = Arc::new(crate::domain::clock::SystemClock);
    Ok(Relay::start(store, stream, clock, events, settings.limits.database_timeout, core.committed()))
}

/// Phase 5: publishes the events the relay has not yet, within `EVENTS_DRAIN_MAX` and by
/// `deadline`; what is left is published by the next start.
async fn publish_left_events(relay: Option<&Relay>, deadline: Instant) {
    let Some(relay) = relay else { return };
    let bound = deadline.saturating_duration_since(Instant::now()).min(EVENTS_DRAIN_MAX);
    if bound.is_zero() {
        tracing::warn!("no time left to publish order events at shutdown; the next start publishes them");
        return;
    }
    match relay.drain(bound).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_clean_only_when_nothing_was_cut_failed_or_left() {
        let clean = Shutdown {
            connections_at_close: 3,
            connections_cut: 0,
            writes_settled: true,
            learning_rows_kept: 0,
            server_failed: false,
            expelled: false,
        };
        assert!(clean.is_clean());
        assert!(!Shutdown { connections_cut: 1, ..clean }.is_clean());
        assert!(!Shutdown { server_failed: true, ..clean }.is_clean(), "a failed server with nothing counted open");
        assert!(!Shutdown { writes_settled: false, ..clean }.is_clean());
        assert!(!Shutdown { learning_rows_kept: 1, ..clean }.is_clean());
        assert!(!Shutdown { expelled: true, ..clean }.is_clean(), "an expelled node exits 1, to be started again");
    }
}
