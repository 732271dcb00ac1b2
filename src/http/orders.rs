//! Orders: placement (idempotent on the `Idempotency-Key` header) and reading one back.

use super::auth::Caller;
use super::errors::ApiError;
use super::AppState;
use crate::actors::order::Placed;
use crate::domain::order::{Order, OrderItem};
use crate::domain::{Cents, IdempotencyKey, OrderId, PlaceOrder, UserId};
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Set on a response that returns an order placed by an earlier request with the same key.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    items: Vec<ItemRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    sku_id: i64,
    quantity: i64,
}

#[derive(Serialize)]
pub struct OrderBody {
    order_id: OrderId,
    order_id_str: String,
    user_id: UserId,
    status: &'static str,
    items: Vec<OrderItem>,
    total_cents: Cents,
    discount_cents: Cents,
    pay_cents: Cents,
    coupon_id: Option<i64>,
    pay_deadline: String,
    created_at: String,
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<&Order> for OrderBody {
    fn from(order: &Order) -> Self {
        OrderBody {
            order_id: order.id,
            order_id_str: order.id.to_string(),
            user_id: order.user_id,
            status: order.status.as_str(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            discount_cents: order.discount_cents,
            pay_cents: order.pay_cents,
            coupon_id: order.coupon_id,
            pay_deadline: rfc3339(order.pay_deadline_ms),
            created_at: rfc3339(order.created_at_ms),
        }
    }
}

fn idempotency_key(request: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let value = request
        .headers()
        .get(IDEMPOTENCY_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing_idempotency_key", "the Idempotency-Key header is required"))?;
    value.to_str().ok().and_then(IdempotencyKey::parse).ok_or_else(|| {
        ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be 1 to 64 printable ASCII characters")
    })
}

#[post("/v1/orders")]
pub async fn place(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    body: web::Json<PlaceOrderBody>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&request)?;
    let items: Vec<(i64, i64)> = body.items.iter().map(|i| (i.sku_id, i.quantity)).collect();
    let order = PlaceOrder::parse(&items)?;
    let placed = state.idempotency.place_once(&state.core, caller.user_id, key, order).await?;
    let mut response = HttpResponse::Created();
    if let Placed::Replayed(_) = placed {
        response.insert_header((REPLAYED_HEADER, "true"));
    }
    Ok(response.json(OrderBody::from(placed.order())))
}

#[get("/v1/orders/{order_id}")]
pub async fn get(state: web::Data<AppState>, caller: Caller, path: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let order_id = OrderId::parse(path.into_inner()).ok_or_else(not_found)?;
    let order = state.core.order(order_id).await?.ok_or_else(not_found)?;
    // Someone else's order does not exist, as far as this caller can tell.
    if order.user_id != caller.user_id && !caller.is_admin() {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(OrderBody::from(&order)))
}
