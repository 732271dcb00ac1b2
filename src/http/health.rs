//! Liveness and readiness. `/readyz` is ready only while the database answers within the
//! database timeout, so it turns not-ready within about a second of an outage.

use super::AppState;
use actix_web::{get, web, HttpResponse};
use serde_json::json;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.core.ready().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", super::errors::RETRY_AFTER_SECS.to_string()))
                .json(json!({"code": "not_ready", "message": "database unreachable"}))
        }
    }
}
