//! Builds the running service from settings: store (with migrations), snapshots, actors and
//! the HTTP server bound to the configured address (port 0 in tests).

use crate::actors::Core;
use crate::config::Settings;
use crate::http::{self, auth::JwtKeys, payments::PaymentKey, AppState};
use crate::persistence;
use crate::persistence::redis::{progress::ProgressMirror, Snapshots};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;

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
        let state = web::Data::new(AppState { core: Arc::clone(&core) });
        let keys = web::Data::new(JwtKeys::new(settings.jwt_secret()));
        let payment_key = web::Data::new(PaymentKey::new(settings.payment_secret()));
        let listener = TcpListener::bind(settings.bind)?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new().configure(http::configure(state.clone(), keys.clone(), payment_key.clone()))
        })
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
            Err(error) => tracing::error!(%error, "learning progress not flushed at shutdown"),
        }
        Ok(())
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
