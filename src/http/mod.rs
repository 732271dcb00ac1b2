//! The HTTP API (actix-web): routes per resource, JWT auth, JSON errors. Handlers parse at the
//! edge into domain types, call the actors through the `Core` facade, and translate the
//! outcome; they decide nothing about money or stock themselves.

pub mod auth;
pub mod clients;
pub mod cluster_admin;
pub mod coupons;
pub mod drain;
pub mod errors;
pub mod fallback;
pub mod forward;
pub mod health;
pub mod home;
pub mod in_flight;
pub mod internal;
pub mod json;
pub mod learning;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod payments;
pub mod payments_admin;
pub mod query;
pub mod request_id;
pub mod skus;
pub mod time;

use crate::actors::Core;
use actix_web::error::{JsonPayloadError, PathError};
use actix_web::{web, App, HttpRequest, HttpResponse};
use errors::ApiError;
use std::sync::Arc;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::AppExt;

/// The largest request body accepted, in bytes.
pub const BODY_SIZE_MAX_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    pub core: Arc<Core>,
    /// The per-user buckets of the rate-limited routes.
    pub limits: limits::RateLimits,
}

fn json_error(error: JsonPayloadError, _request: &HttpRequest) -> actix_web::Error {
    let api = match &error {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {BODY_SIZE_MAX_BYTES} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ),
        other => ApiError::bad_request("malformed_request", other.to_string()),
    };
    api.into()
}

fn path_error(_error: PathError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::not_found("not_found", "no such resource").into()
}

/// 405 with `Allow` for a route's path with another method, else 404: see `fallback`.
async fn unrouted(request: HttpRequest) -> HttpResponse {
    static TABLE: std::sync::OnceLock<fallback::RouteTable> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let served_by_openapi = [
            (openapi::DOCUMENT_PATH.to_owned(), vec![actix_web::http::Method::GET]),
            (format!("{}/{{_:.*}}", openapi::UI_PATH), vec![actix_web::http::Method::GET]),
        ];
        fallback::RouteTable::new(route_table().into_iter().chain(served_by_openapi))
    });
    table.answer(&request)
}

/// Registers every route, the shared state and the extractor limits.
pub fn configure(
    state: web::Data<AppState>,
    keys: web::Data<auth::JwtKeys>,
    payment_key: web::Data<payments::PaymentKey>,
) -> impl FnOnce(&mut ServiceConfig) {
    move |config| {
        config
            .app_data(state)
            .app_data(keys)
            .app_data(payment_key)
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|error, _| ApiError::unprocessable("invalid_query", error.to_string()).into()),
            )
            .app_data(web::JsonConfig::default().limit(BODY_SIZE_MAX_BYTES).error_handler(json_error))
            .app_data(web::PayloadConfig::default().limit(BODY_SIZE_MAX_BYTES))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .configure(routes)
            .configure(internal::routes)
            .default_service(web::to(unrouted));
    }
}

/// Registers every route of the API, each with its OpenAPI description: the one list of
/// routes, from which the document (`document`) and the route table are derived.
pub fn routes(config: &mut ServiceConfig) {
    config
        .service(health::healthz)
        .service(health::readyz)
        .service(metrics::metrics)
        .service(skus::create)
        .service(skus::restock)
        .service(skus::get)
        .service(skus::update_sale)
        .service(coupons::create_template)
        .service(coupons::get_template)
        .service(coupons::receive)
        .service(coupons::list)
        .service(orders::place)
        .service(orders::list)
        .service(orders::get)
        .service(orders::cancel)
        .service(orders::finish)
        .service(orders::refund)
        .service(payments::callback)
        .service(payments_admin::list_payments)
        .service(cluster_admin::cluster)
        .service(learning::list_lessons)
        .service(learning::receive_heartbeat)
        .service(learning::read_progress)
        .service(learning::stats);
}

/// The OpenAPI document of every route `routes` registers.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, document) = App::new().into_utoipa_app().openapi(openapi::base()).configure(routes).split_for_parts();
    document
}

/// Every registered `(path pattern, methods)`, e.g. `("/v1/orders", [GET, POST])`, from the
/// document; the document and UI themselves (`/openapi.json`, `/docs`) are not in it.
pub fn route_table() -> Vec<(String, Vec<actix_web::http::Method>)> {
    openapi::route_table(&document())
}
