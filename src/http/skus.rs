//! SKUs: admins create and restock them; users read their committed stock. Reads never query
//! the database per request: they come from the snapshot the SKU's actor publishes after each
//! commit (the actor is activated from the database once).

use super::auth::{Admin, Caller};
use super::errors::ApiError;
use super::AppState;
use crate::domain::inventory::{Quantity, STOCK_QUANTITY_MAX};
use crate::domain::sku::SkuDraft;
use crate::domain::{Cents, SkuId};
use crate::persistence::redis::SkuSnapshot;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSku {
    name: String,
    price_cents: i64,
    stock: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    quantity: i64,
}

#[derive(Serialize)]
pub struct SkuBody {
    sku_id: SkuId,
    sku_id_str: String,
    name: String,
    price_cents: Cents,
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
}

impl From<SkuSnapshot> for SkuBody {
    fn from(snapshot: SkuSnapshot) -> Self {
        let c = snapshot.counters;
        SkuBody {
            sku_id: snapshot.sku_id,
            sku_id_str: snapshot.sku_id.to_string(),
            name: snapshot.name,
            price_cents: snapshot.price_cents,
            total: c.total,
            available: c.available,
            reserved: c.reserved,
            sold: c.sold,
        }
    }
}

fn parse_sku_id(raw: i64) -> Result<SkuId, ApiError> {
    SkuId::parse(raw).ok_or_else(|| ApiError::not_found("sku_not_found", format!("sku {raw} does not exist")))
}

#[post("/v1/admin/skus")]
pub async fn create(
    state: web::Data<AppState>,
    _admin: Admin,
    body: web::Json<CreateSku>,
) -> Result<HttpResponse, ApiError> {
    let draft = SkuDraft::parse(&body.name, body.price_cents, body.stock)?;
    let snapshot = state.core.create_sku(draft).await?;
    Ok(HttpResponse::Created().json(SkuBody::from(snapshot)))
}

#[post("/v1/admin/skus/{sku_id}/restock")]
pub async fn restock(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<i64>,
    body: web::Json<RestockBody>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = parse_sku_id(path.into_inner())?;
    let quantity = Quantity::parse(body.quantity, STOCK_QUANTITY_MAX)?;
    let snapshot = state.core.restock(sku_id, quantity).await?;
    Ok(HttpResponse::Ok().json(SkuBody::from(snapshot)))
}

#[get("/v1/skus/{sku_id}")]
pub async fn get(state: web::Data<AppState>, _caller: Caller, path: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let sku_id = parse_sku_id(path.into_inner())?;
    let snapshot = state.core.sku_snapshot(sku_id).await?;
    Ok(HttpResponse::Ok().json(SkuBody::from(snapshot)))
}
