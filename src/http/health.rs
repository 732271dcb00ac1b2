//! Liveness and readiness. `/readyz` is ready only while the node is not draining (see
//! `drain`) and the database answers within the database timeout, so it turns not-ready at
//! once on SIGTERM and within about a second of an outage.

use super::drain::Drain;
use super::errors::ErrorBody;
use super::AppState;
use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use serde_json::json;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    #[schema(example = "ok")]
    status: &'static str,
}

#[utoipa::path(tag = "health", responses((status = 200, description = "The process serves", body = HealthBody)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody { status: "ok" })
}

#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "The database answers", body = HealthBody),
        (status = 503, description = "`draining`: the node is shutting down; `not_ready`: the database does not answer within its timeout", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>, drain: web::Data<Drain>) -> HttpResponse {
    if drain.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", super::errors::RETRY_AFTER_SECS.to_string()))
            .json(json!({"code": "draining", "message": "the node is shutting down; send new work elsewhere"}));
    }
    match state.core.ready().await {
        Ok(()) => HttpResponse::Ok().json(HealthBody { status: "ready" }),
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", super::errors::RETRY_AFTER_SECS.to_string()))
                .json(json!({"code": "not_ready", "message": "database unreachable"}))
        }
    }
}
