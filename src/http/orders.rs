//! Orders: placement (idempotent on the `Idempotency-Key` header, optionally with one of the
//! buyer's coupons) and reading one back.

use super::auth::{Admin, Caller};
use super::errors::{ApiError, ErrorBody};
use super::json::JsonBody;
use super::limits::{Orders, RateLimited, Reads};
use super::openapi::{
    Forbidden, PayloadTooLarge, RateLimited as RateLimitedResponse, Unauthorized, Unavailable, UnsupportedMediaType,
};
use super::query::{optional_status, page_limit, parse_optional};
use super::time::format_ms;
use super::AppState;
use crate::actors::user::Placed;
use crate::domain::order::{Order, OrderItem};
use crate::domain::{Cents, CouponId, IdempotencyKey, OrderEvent, OrderId, OrderStatus, PlaceOrder, SkuId, UserId};
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Set on a response that returns an order placed by an earlier request with the same key.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed";

/// An order: 1 to 50 lines, each SKU once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    #[schema(min_items = 1, max_items = 50)]
    items: Vec<ItemRequest>,
    /// One of the buyer's unused coupons to apply.
    #[schema(minimum = 1)]
    coupon_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    #[schema(minimum = 1)]
    sku_id: i64,
    #[schema(minimum = 1, maximum = 10000)]
    quantity: i64,
}

#[derive(Serialize, ToSchema)]
pub struct OrderBody {
    #[schema(value_type = i64)]
    order_id: OrderId,
    order_id_str: String,
    #[schema(value_type = i64)]
    user_id: UserId,
    /// `pending_payment`, `paid`, `closed`, `finished` or `refunded`.
    status: &'static str,
    items: Vec<OrderItemBody>,
    #[schema(value_type = i64)]
    total_cents: Cents,
    #[schema(value_type = i64)]
    discount_cents: Cents,
    #[schema(value_type = i64)]
    pay_cents: Cents,
    #[schema(value_type = Option<i64>)]
    coupon_id: Option<CouponId>,
    pay_deadline: String,
    created_at: String,
}

/// One line of an order, with its name and price as they were when ordered.
#[derive(Serialize, ToSchema)]
pub struct OrderItemBody {
    #[schema(value_type = i64)]
    sku_id: SkuId,
    name: String,
    #[schema(value_type = i64)]
    price_cents: Cents,
    quantity: i64,
    /// What the buyer pays for this line after its share of the discount.
    #[schema(value_type = i64)]
    pay_cents: Cents,
}

impl From<&OrderItem> for OrderItemBody {
    fn from(item: &OrderItem) -> Self {
        OrderItemBody {
            sku_id: item.sku_id,
            name: item.name.clone(),
            price_cents: item.price_cents,
            quantity: item.quantity,
            pay_cents: item.pay_cents,
        }
    }
}

impl From<&Order> for OrderBody {
    fn from(order: &Order) -> Self {
        OrderBody {
            order_id: order.id,
            order_id_str: order.id.to_string(),
            user_id: order.user_id,
            status: order.status.as_str(),
            items: order.items.iter().map(OrderItemBody::from).collect(),
            total_cents: order.total_cents,
            discount_cents: order.discount_cents,
            pay_cents: order.pay_cents,
            coupon_id: order.coupon_id,
            pay_deadline: format_ms(order.pay_deadline_ms),
            created_at: format_ms(order.created_at_ms),
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

fn parse_coupon_id(raw: i64) -> Result<CouponId, ApiError> {
    CouponId::parse(raw).ok_or_else(|| ApiError::unprocessable("invalid_coupon_id", "coupon_id must be a positive id"))
}

#[utoipa::path(
    tag = "orders",
    request_body = PlaceOrderBody,
    params(
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,64}$",
            description = "1 to 64 printable ASCII characters; a retry with the same key and body returns the same order"),
    ),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 201, description = "The order, placed now or by an earlier request with the same key \
            (then with `Idempotency-Replayed: true`)", body = OrderBody,
            headers(("Idempotency-Replayed" = String, description = "`true` when the order was placed earlier"))),
        (status = 400, description = "`malformed_request`, `missing_idempotency_key`, `invalid_idempotency_key`",
            body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
        (status = 409, description = "`insufficient_stock`, `sale_not_started`, `sale_ended`, \
            `purchase_limit_reached`, `coupon_unavailable`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_items`, `invalid_sku_id`, `duplicate_sku`, `invalid_quantity`, \
            `invalid_amount`, `invalid_coupon_id`, `coupon_min_spend_not_met`, `idempotency_key_reused` (the key \
            was used with another body)", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/orders")]
pub async fn place(
    state: web::Data<AppState>,
    caller: RateLimited<Orders>,
    request: HttpRequest,
    body: JsonBody<PlaceOrderBody>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&request)?;
    let items: Vec<(i64, i64)> = body.items.iter().map(|i| (i.sku_id, i.quantity)).collect();
    let mut order = PlaceOrder::parse(&items)?;
    order.coupon_id = body.coupon_id.map(parse_coupon_id).transpose()?;
    let placed = state.core.place_order(caller.user_id, key, order).await?;
    let mut response = HttpResponse::Created();
    if let Placed::Replayed(_) = placed {
        response.insert_header((REPLAYED_HEADER, "true"));
    }
    Ok(response.json(OrderBody::from(placed.order())))
}

#[utoipa::path(
    tag = "orders",
    params(("order_id" = i64, Path, minimum = 1, description = "An order id (snowflake).")),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order (its owner's or, for an admin, anyone's)", body = OrderBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`order_not_found` (also for someone else's order)", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/orders/{order_id}")]
pub async fn get(
    state: web::Data<AppState>,
    caller: RateLimited<Reads>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let order_id = OrderId::parse(path.into_inner()).ok_or_else(not_found)?;
    let order = state.core.order(order_id).await?.ok_or_else(not_found)?;
    // Someone else's order does not exist, as far as this caller can tell.
    if order.user_id != caller.user_id && !caller.is_admin() {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(OrderBody::from(&order)))
}

/// Acts on an order by its id for `caller`; a user only reaches their own orders.
async fn act(
    state: &AppState,
    raw_id: i64,
    event: OrderEvent,
    owner: Option<UserId>,
) -> Result<HttpResponse, ApiError> {
    let order_id = OrderId::parse(raw_id).ok_or_else(|| ApiError::not_found("order_not_found", "no such order"))?;
    let order = state.core.act_on_order(order_id, event, owner).await?;
    Ok(HttpResponse::Ok().json(OrderBody::from(&order)))
}

/// PendingPayment -> Closed, by the order's owner; its units and coupon go back.
#[utoipa::path(
    tag = "orders",
    params(("order_id" = i64, Path, minimum = 1, description = "An order id (snowflake).")),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order after the transition", body = OrderBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (the order's status does not allow it), \
            `stale_version`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/orders/{order_id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    act(&state, path.into_inner(), OrderEvent::Cancel, Some(caller.user_id)).await
}

/// Paid -> Finished (the goods are delivered).
#[utoipa::path(
    tag = "orders",
    params(("order_id" = i64, Path, minimum = 1, description = "An order id (snowflake).")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The order after the transition", body = OrderBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (the order's status does not allow it), \
            `stale_version`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/orders/{order_id}/finish")]
pub async fn finish(state: web::Data<AppState>, _admin: Admin, path: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    act(&state, path.into_inner(), OrderEvent::Finish, None).await
}

/// Paid or Finished -> Refunded.
#[utoipa::path(
    tag = "orders",
    params(("order_id" = i64, Path, minimum = 1, description = "An order id (snowflake).")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The order after the transition", body = OrderBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (the order's status does not allow it), \
            `stale_version`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/orders/{order_id}/refund")]
pub async fn refund(state: web::Data<AppState>, _admin: Admin, path: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    act(&state, path.into_inner(), OrderEvent::Refund, None).await
}

/// The most orders one page lists.
pub const PAGE_SIZE_MAX: u32 = 100;
pub const PAGE_SIZE_DEFAULT: u32 = 20;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only orders with this status; empty or absent for all.
    #[param(pattern = "^(pending_payment|paid|closed|finished|refunded)?$")]
    status: Option<String>,
    /// At most this many orders (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page; opaque.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    orders: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Cursors are the id of the last order of a page, wrapped so that clients treat them as
/// opaque. Ids only grow, so a page boundary stays put while new orders arrive.
fn encode_cursor(order_id: OrderId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{}", order_id.get()))
}

fn decode_cursor(cursor: &str) -> Option<OrderId> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    OrderId::parse(text.strip_prefix("o:")?.parse().ok()?)
}

#[utoipa::path(
    tag = "orders",
    params(ListQuery),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = OrderPage),
        (status = 400, description = "`invalid_cursor`: not a cursor this API gave out", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`invalid_query`, `invalid_status`, `invalid_limit`", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/orders")]
pub async fn list(
    state: web::Data<AppState>,
    caller: RateLimited<Reads>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let status = optional_status(query.status.as_deref(), "order", OrderStatus::parse)?;
    let limit = page_limit(query.limit, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
    let before = parse_optional(query.cursor.as_deref(), decode_cursor, |_| {
        ApiError::bad_request("invalid_cursor", "cursor is not one this API gave out")
    })?;
    let orders = state.core.list_orders(caller.user_id, status, before, limit).await?;
    let next_cursor = (orders.len() == limit as usize).then(|| orders.last().map(|o| encode_cursor(o.id))).flatten();
    Ok(HttpResponse::Ok().json(OrderPage { orders: orders.iter().map(OrderBody::from).collect(), next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let id = OrderId::new(516_108_883_538_739_200);
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("o:-5")), None);
    }
}
