//! SKUs: admins create and restock them and set their sale (price, window, per-user limit);
//! users read their committed stock and sale. Reads never query the database per request: they
//! come from the snapshot the SKU's actor publishes after each commit (the actor is activated
//! from the database once).

use super::auth::{Admin, Caller};
use super::errors::{ApiError, ErrorBody};
use super::json::JsonBody;
use super::openapi::{Forbidden, Malformed, PayloadTooLarge, Unauthorized, Unavailable, UnsupportedMediaType};
use super::time::{format_ms, parse_ms, parse_optional_ms, Time};
use super::AppState;
use crate::domain::inventory::{Quantity, STOCK_QUANTITY_MAX};
use crate::domain::sale::{Sale, SalePatch};
use crate::domain::sku::SkuDraft;
use crate::domain::{Cents, SkuId};
use crate::persistence::redis::SkuSnapshot;
use actix_web::{get, patch, post, web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSku {
    /// 1 to 200 characters, not all blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    #[schema(minimum = 0, maximum = 1e12)]
    price_cents: i64,
    #[schema(minimum = 0, maximum = 1000000000)]
    stock: i64,
    #[schema(minimum = 0, maximum = 1e12)]
    sale_price_cents: Option<i64>,
    /// RFC 3339; before `sale_ends_at` when both are set.
    #[schema(value_type = Option<Time>)]
    sale_starts_at: Option<String>,
    #[schema(value_type = Option<Time>)]
    sale_ends_at: Option<String>,
    #[schema(minimum = 1, maximum = 1000000)]
    per_user_limit: Option<i64>,
}

/// A PATCH of a SKU's sale: an absent field is left as it is, an explicit `null` clears it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSale {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1e12)]
    sale_price_cents: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Time>)]
    sale_starts_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Time>)]
    sale_ends_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000)]
    per_user_limit: Option<Option<i64>>,
}

/// Marks a field as present, with its value or `null`. serde only calls this for a field that
/// is in the body; an absent one takes the `default`, `None`.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    /// Units to add; the total stays at most 1,000,000,000.
    #[schema(minimum = 1, maximum = 1000000000)]
    quantity: i64,
}

/// A SKU's committed stock (`available + reserved + sold == total`) and its sale.
#[derive(Serialize, ToSchema)]
pub struct SkuBody {
    #[schema(value_type = i64)]
    sku_id: SkuId,
    sku_id_str: String,
    name: String,
    #[schema(value_type = i64)]
    price_cents: Cents,
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    #[schema(value_type = Option<i64>)]
    sale_price_cents: Option<Cents>,
    sale_starts_at: Option<String>,
    sale_ends_at: Option<String>,
    per_user_limit: Option<i64>,
}

impl From<SkuSnapshot> for SkuBody {
    fn from(snapshot: SkuSnapshot) -> Self {
        let c = snapshot.counters;
        let sale = snapshot.sale;
        SkuBody {
            sku_id: snapshot.sku_id,
            sku_id_str: snapshot.sku_id.to_string(),
            name: snapshot.name,
            price_cents: snapshot.price_cents,
            total: c.total,
            available: c.available,
            reserved: c.reserved,
            sold: c.sold,
            sale_price_cents: sale.price_cents,
            sale_starts_at: sale.starts_at_ms.map(format_ms),
            sale_ends_at: sale.ends_at_ms.map(format_ms),
            per_user_limit: sale.per_user_limit,
        }
    }
}

fn parse_sku_id(raw: i64) -> Result<SkuId, ApiError> {
    SkuId::parse(raw).ok_or_else(|| ApiError::not_found("sku_not_found", format!("sku {raw} does not exist")))
}

#[utoipa::path(
    tag = "skus",
    request_body = CreateSku,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = SkuBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_name`, `invalid_price`, `invalid_stock`, `invalid_time`, \
            `invalid_sale_price`, `invalid_sale_window` (the end is not after the start), `invalid_per_user_limit`",
            body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/admin/skus")]
pub async fn create(
    state: web::Data<AppState>,
    _admin: Admin,
    body: JsonBody<CreateSku>,
) -> Result<HttpResponse, ApiError> {
    let mut draft = SkuDraft::parse(&body.name, body.price_cents, body.stock)?;
    draft.sale = Sale::parse(
        body.sale_price_cents,
        parse_optional_ms("sale_starts_at", body.sale_starts_at.as_deref())?,
        parse_optional_ms("sale_ends_at", body.sale_ends_at.as_deref())?,
        body.per_user_limit,
    )?;
    let snapshot = state.core.create_sku(draft).await?;
    Ok(HttpResponse::Created().json(SkuBody::from(snapshot)))
}

#[utoipa::path(
    tag = "skus",
    params(("sku_id" = i64, Path, minimum = 1, description = "A SKU id (snowflake).")),
    request_body = RestockBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The SKU after the restock", body = SkuBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_quantity` (out of range, or the total would pass 1,000,000,000)",
            body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/admin/skus/{sku_id}/restock")]
pub async fn restock(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<i64>,
    body: JsonBody<RestockBody>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = parse_sku_id(path.into_inner())?;
    let quantity = Quantity::parse(body.quantity, STOCK_QUANTITY_MAX)?;
    let snapshot = state.core.restock(sku_id, quantity).await?;
    Ok(HttpResponse::Ok().json(SkuBody::from(snapshot)))
}

#[utoipa::path(
    tag = "skus",
    params(("sku_id" = i64, Path, minimum = 1, description = "A SKU id (snowflake).")),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The SKU", body = SkuBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/skus/{sku_id}")]
pub async fn get(state: web::Data<AppState>, _caller: Caller, path: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let sku_id = parse_sku_id(path.into_inner())?;
    let snapshot = state.core.sku_snapshot(sku_id).await?;
    Ok(HttpResponse::Ok().json(SkuBody::from(snapshot)))
}

/// A present time field of a PATCH, converted; `null` stays a clear.
fn patched_ms(field: &'static str, change: Option<Option<String>>) -> Result<Option<Option<i64>>, ApiError> {
    change.map(|value| value.map(|raw| parse_ms(field, &raw)).transpose()).transpose()
}

/// Changes the sale of a SKU; the merged sale is checked as a whole (`Sale::patch`).
#[utoipa::path(
    tag = "skus",
    params(("sku_id" = i64, Path, minimum = 1, description = "A SKU id (snowflake).")),
    request_body = PatchSale,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The SKU with its new sale", body = SkuBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_time`, `invalid_sale_price`, `invalid_sale_window` (the merged \
            sale ends before it starts), `invalid_per_user_limit`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[patch("/v1/admin/skus/{sku_id}")]
pub async fn update_sale(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<i64>,
    body: JsonBody<PatchSale>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = parse_sku_id(path.into_inner())?;
    let body = body.into_inner();
    let patch = SalePatch {
        price_cents: body.sale_price_cents,
        starts_at_ms: patched_ms("sale_starts_at", body.sale_starts_at)?,
        ends_at_ms: patched_ms("sale_ends_at", body.sale_ends_at)?,
        per_user_limit: body.per_user_limit,
    };
    let snapshot = state.core.update_sale(sku_id, patch).await?;
    Ok(HttpResponse::Ok().json(SkuBody::from(snapshot)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_absent_from_null() {
        let body: PatchSale =
            serde_json::from_str(r#"{"sale_price_cents": 5, "sale_ends_at": null}"#).expect("a valid patch");
        assert_eq!(body.sale_price_cents, Some(Some(5)));
        assert_eq!(body.sale_starts_at, None, "absent: unchanged");
        assert_eq!(body.sale_ends_at, Some(None), "null: cleared");
        assert_eq!(body.per_user_limit, None);
        assert!(serde_json::from_str::<PatchSale>(r#"{"stock": 5}"#).is_err(), "unknown fields are refused");
    }
}
