//! Internal routes, between the nodes of a cluster: a SKU's owner reserving and settling its
//! units for orders served on other nodes, a template's owner issuing coupons to users other
//! nodes serve (`cluster::remote` calls them). Not in the OpenAPI document; a node credential
//! (`auth::Node`) is required, user and admin tokens are refused.
//!
//! Each call is answered after the key's actor decided and its effect alone was committed,
//! fenced by the key's range (`Core::reserve_alone`, `Core::settle_alone`,
//! `Core::claim_alone`); a refusal is the error as a `cluster::wire::Refused` or
//! `ClaimRefused`, with the status a client would see for it.

use super::auth::Node;
use super::errors::ApiError;
use super::AppState;
use crate::actors::coupon::ClaimFailure;
use crate::actors::inventory::SkuError;
use crate::cluster::wire::{ClaimRefused, Granted, IssueCall, Issued, Refused, ReserveCall, SettleCall};
use crate::domain::inventory::{Quantity, ORDER_LINE_QUANTITY_MAX};
use crate::domain::{OrderId, SkuId, TemplateId, UserId};
use actix_web::{web, HttpResponse, ResponseError};

/// Registers the internal routes (outside the documented API).
pub fn routes(config: &mut utoipa_actix_web::service_config::ServiceConfig) {
    config
        .route("/internal/v1/skus/{sku_id}/reserve", web::post().to(reserve))
        .route("/internal/v1/skus/{sku_id}/settle", web::post().to(settle))
        .route("/internal/v1/coupon-templates/{template_id}/issue", web::post().to(issue));
}

fn ids(sku_id: i64, order_id: i64) -> Result<(SkuId, OrderId), ApiError> {
    let sku_id = SkuId::parse(sku_id).ok_or_else(|| ApiError::not_found("sku_not_found", "no such sku"))?;
    let order_id = OrderId::parse(order_id)
        .ok_or_else(|| ApiError::unprocessable("invalid_order_id", "order_id must be positive"))?;
    Ok((sku_id, order_id))
}

/// The refusal as the serving node reads it, with the status of the same error to a client.
fn refused(error: SkuError) -> HttpResponse {
    let status = ApiError::from(error.clone()).status_code();
    HttpResponse::build(status).json(Refused::of(&error))
}

async fn reserve(
    _node: Node,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    call: web::Json<ReserveCall>,
) -> Result<HttpResponse, ApiError> {
    let (sku_id, order_id) = ids(path.into_inner(), call.order_id)?;
    let quantity = Quantity::parse(call.quantity, ORDER_LINE_QUANTITY_MAX)?;
    Ok(match state.core.reserve_alone(sku_id, order_id, quantity, call.expires_at_ms).await {
        Ok(grant) => HttpResponse::Ok().json(Granted::of(&grant)),
        Err(error) => refused(error),
    })
}

async fn settle(
    _node: Node,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    call: web::Json<SettleCall>,
) -> Result<HttpResponse, ApiError> {
    let (sku_id, order_id) = ids(path.into_inner(), call.order_id)?;
    let settlement = call.settlement().ok_or_else(|| {
        ApiError::unprocessable("invalid_settlement", "a return names its positive quantity, nothing else does")
    })?;
    Ok(match state.core.settle_alone(sku_id, order_id, settlement).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({})),
        Err(error) => refused(error),
    })
}

async fn issue(
    _node: Node,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    call: web::Json<IssueCall>,
) -> Result<HttpResponse, ApiError> {
    let template_id = TemplateId::parse(path.into_inner())
        .ok_or_else(|| ApiError::not_found("template_not_found", "no such coupon template"))?;
    let user_id = UserId::parse(call.user_id)
        .ok_or_else(|| ApiError::unprocessable("invalid_user_id", "user_id must be positive"))?;
    if call.seq < 1 {
        return Err(ApiError::unprocessable("invalid_seq", "seq counts the user's coupons of the template from 1"));
    }
    Ok(match state.core.claim_alone(template_id, user_id, call.seq).await {
        Ok(coupon) => HttpResponse::Ok().json(Issued::of(&coupon)),
        Err(failure) => claim_refused(failure),
    })
}

/// A claim's refusal as the user's node reads it, with the status of the same failure to a
/// client.
fn claim_refused(failure: ClaimFailure) -> HttpResponse {
    let status = ApiError::from(failure.clone()).status_code();
    HttpResponse::build(status).json(ClaimRefused::of(&failure))
}
