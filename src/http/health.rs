//! Liveness and readiness. `/readyz` is ready only while the node is not draining (see
//! `drain`), the database answers within the database timeout and, on a cluster node, it
//! holds at least one range lease still valid by its last renewal (`Ownership::holds_any`),
//! so it turns not-ready at once on SIGTERM, within about a second of an outage, and while a
//! cluster node owns nothing (before its first take, or after losing every range).

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
        (status = 503, description = "`draining`: the node is shutting down; `not_owner_yet`: a cluster node holds no range lease (not yet, or lost them all); `not_ready`: the database does not answer within its timeout", body = ErrorBody,
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
    if state.core.cluster().is_some_and(|ownership| !ownership.holds_any()) {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", super::errors::RETRY_AFTER_SECS.to_string()))
            .json(json!({"code": "not_owner_yet", "message": "this cluster node holds no range lease (not yet, or lost them all); send work elsewhere"}));
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
