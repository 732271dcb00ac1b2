//! The HTTP API (actix-web): routes per resource, JWT auth, JSON errors. Handlers parse at the
//! edge into domain types, call the actors through the `Core` facade, and translate the
//! outcome; they decide nothing about money or stock themselves.

pub mod auth;
pub mod coupons;
pub mod errors;
pub mod health;
pub mod learning;
pub mod orders;
pub mod payments;
pub mod query;
pub mod skus;
pub mod time;

use crate::actors::Core;
use actix_web::error::{JsonPayloadError, PathError};
use actix_web::{web, HttpRequest, HttpResponse};
use errors::ApiError;
use std::sync::Arc;

/// The largest request body accepted, in bytes.
pub const BODY_SIZE_MAX_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    pub core: Arc<Core>,
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

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("not_found", "no such route"))
}

/// Registers every route, the shared state and the extractor limits.
pub fn configure(
    state: web::Data<AppState>,
    keys: web::Data<auth::JwtKeys>,
    payment_key: web::Data<payments::PaymentKey>,
) -> impl FnOnce(&mut web::ServiceConfig) {
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
            .service(health::healthz)
            .service(health::readyz)
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
            .service(learning::list_lessons)
            .service(learning::receive_heartbeat)
            .service(learning::read_progress)
            .service(learning::stats)
            .default_service(web::to(not_found));
    }
}
