//! Builds the running service from settings: store (with migrations), snapshots, actors and
//! the HTTP server bound to the configured address (port 0 in tests).

use crate::actors::Core;
use crate::config::Settings;
use crate::http::clients::ConnectionGate;
use crate::http::{self, auth::JwtKeys, payments::PaymentKey, AppState};
use crate::http::{in_flight::InFlight, in_flight::InFlightCap, limits::RateLimits};
use crate::persistence;
use crate::persistence::redis::{progress::ProgressMirror, Snapshots};
use actix_web::dev::Server;
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use utoipa_actix_web::AppExt;

pub struct Application {
    port: u16,
    server: Server,
    core: Arc<Core>,
}

impl Application {
    /// Connects, migrates and binds. Needs a running actix `System` (actors start on it).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = persistence::connect(&settings.database_url, true, settings.limits.database_timeout).await?;
        let snapshots = Arc::new(match &settings.redis_url {
            Some(url) => Snapshots::with_redis(url)?,
            None => Snapshots::in_process(),
        });
        let core = Core::start(
            store,
            snapshots,
            settings.limits,
            settings.worker_id,
            settings.pay_timeout,
            settings.actor_threads,
        );
        if let Some(url) = &settings.redis_url {
            core.mirror_learning(ProgressMirror::open(url)?);
        }
        core.recover().await?;
        let limits = RateLimits::new(&settings.rate_limits);
        let state = web::Data::new(AppState { core: Arc::clone(&core), limits });
        let in_flight = InFlight::new(settings.in_flight_max);
        let keys = web::Data::new(JwtKeys::with_rules(settings.jwt_secret(), settings.tokens.clone()));
        let clients = settings.clients;
        let gate = ConnectionGate::new(clients.connections_max);
        let accept_max_per_worker = gate.accept_max_per_worker(settings.http_workers);
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
                .wrap(InFlightCap::new(Arc::clone(&in_flight)))
                // Outermost: a slow or oversized body is refused before any other layer sees it.
                .wrap(from_fn(move |request, next| http::clients::guard(clients, request, next)))
        })
        .on_connect(move |_, connection| gate.admit(connection))
        .client_request_timeout(clients.header_read_timeout)
        .client_disconnect_timeout(http::clients::DISCONNECT_TIMEOUT)
        .keep_alive(keep_alive(clients.keep_alive))
        .max_connections(accept_max_per_worker)
        .backlog(http::clients::BACKLOG_MAX)
        .workers(settings.http_workers)
        .listen(listener)?
        .run();
        tracing::info!(port, database = %redact(&settings.database_url), redis = settings.redis_url.is_some(), "tianji serving");
        Ok(Application { port, server, core })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Serves until SIGTERM or SIGINT; the server answers what is in flight, then the
    /// learning progress the node holds is written: to Redis first (one round trip per 500
    /// users, so a kill soon after loses little), then to the database.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        if let Err(error) = self.core.flush_learning_to_redis().await {
            tracing::warn!(%error, "learning progress not written to redis at shutdown");
        }
        match self.core.flush_learning().await {
            Ok(rows) => tracing::info!(rows, "learning progress flushed at shutdown"),
            Err(error) => {
                let (kept, _) = self.core.learning_pending_rows();
                tracing::error!(%error, kept, "learning progress not flushed at shutdown");
            }
        }
        Ok(())
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
