//! Coupons: admins create templates; users read a template, receive coupons of it and list
//! their own. The rules (what a template may be, who may claim when, what a coupon takes off)
//! live in `domain::coupon`; a claim is decided by the template's and the user's actors and
//! answered only once it is committed.

use super::auth::{Admin, Caller};
use super::errors::{ApiError, ErrorBody};
use super::json::JsonBody;
use super::limits::{Coupons, RateLimited, Reads};
use super::openapi::{
    Forbidden, Malformed, PayloadTooLarge, RateLimited as RateLimitedResponse, Unauthorized, Unavailable,
    UnsupportedMediaType,
};
use super::query::{optional_status, page_limit};
use super::time::{format_ms, parse_ms, parse_optional_ms, Time};
use super::AppState;
use crate::domain::coupon::{Coupon, CouponKind, CouponStatus, CouponView, TemplateDraft, TemplateInput};
use crate::domain::{Cents, CouponId, OrderId, TemplateId};
use crate::persistence::TemplateState;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The most coupons one listing returns.
pub const PAGE_SIZE_MAX: u32 = 100;
pub const PAGE_SIZE_DEFAULT: u32 = 50;

/// A coupon template. `amount_off` takes `discount_cents` (and neither percent field);
/// `percent_off` takes `percent_off` and optionally `max_discount_cents` (not `discount_cents`).
/// The claim window, when set, is not empty, and `valid_until` is after the claim start and
/// not before the claim end.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// 1 to 200 characters, not all blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    #[schema(pattern = "^(amount_off|percent_off)$", example = "amount_off")]
    kind: String,
    #[schema(minimum = 1, maximum = 1e12)]
    discount_cents: Option<i64>,
    #[schema(minimum = 1, maximum = 100)]
    percent_off: Option<i64>,
    #[schema(minimum = 1, maximum = 1e12)]
    max_discount_cents: Option<i64>,
    #[schema(minimum = 0, maximum = 1e12)]
    min_spend_cents: i64,
    #[schema(minimum = 1, maximum = 100000000)]
    total: i64,
    #[schema(minimum = 1, maximum = 1000)]
    per_user_limit: i64,
    #[schema(value_type = Option<Time>)]
    claim_starts_at: Option<String>,
    #[schema(value_type = Option<Time>)]
    claim_ends_at: Option<String>,
    #[schema(value_type = Time)]
    valid_until: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    #[schema(minimum = 1)]
    template_id: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only coupons with this status; empty or absent for all.
    #[param(pattern = "^(unused|locked|used|expired)?$")]
    status: Option<String>,
    /// At most this many coupons (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct TemplateBody {
    #[schema(value_type = i64)]
    template_id: TemplateId,
    template_id_str: String,
    name: String,
    /// `amount_off` or `percent_off`.
    kind: &'static str,
    #[schema(value_type = Option<i64>)]
    discount_cents: Option<Cents>,
    percent_off: Option<i64>,
    #[schema(value_type = Option<i64>)]
    max_discount_cents: Option<Cents>,
    #[schema(value_type = i64)]
    min_spend_cents: Cents,
    total: i64,
    /// Coupons committed to users.
    issued: i64,
    per_user_limit: i64,
    claim_starts_at: Option<String>,
    claim_ends_at: Option<String>,
    valid_until: String,
}

impl From<TemplateState> for TemplateBody {
    fn from(template: TemplateState) -> Self {
        let TemplateDraft { name, rules, total, per_user_limit, claim_starts_at_ms, claim_ends_at_ms } = template.draft;
        let (discount_cents, percent_off, max_discount_cents) = match rules.kind {
            CouponKind::AmountOff { discount_cents } => (Some(discount_cents), None, None),
            CouponKind::PercentOff { percent_off, max_discount_cents } => (None, Some(percent_off), max_discount_cents),
        };
        TemplateBody {
            template_id: template.id,
            template_id_str: template.id.to_string(),
            name,
            kind: rules.kind.name(),
            discount_cents,
            percent_off,
            max_discount_cents,
            min_spend_cents: rules.min_spend_cents,
            total,
            issued: template.issued,
            per_user_limit,
            claim_starts_at: claim_starts_at_ms.map(format_ms),
            claim_ends_at: claim_ends_at_ms.map(format_ms),
            valid_until: format_ms(rules.valid_until_ms),
        }
    }
}

/// A coupon as its holder sees it: `status` is the view (`expired` for an unused coupon past
/// its validity), `order_id` the order that holds it, if any.
#[derive(Serialize, ToSchema)]
pub struct CouponBody {
    #[schema(value_type = i64)]
    coupon_id: CouponId,
    coupon_id_str: String,
    #[schema(value_type = i64)]
    template_id: TemplateId,
    /// `unused`, `locked`, `used` or `expired`.
    status: &'static str,
    #[schema(value_type = Option<i64>)]
    order_id: Option<OrderId>,
    valid_until: String,
}

impl CouponBody {
    fn new(coupon: &Coupon, view: CouponView) -> Self {
        CouponBody {
            coupon_id: coupon.id,
            coupon_id_str: coupon.id.to_string(),
            template_id: coupon.template_id,
            status: view.as_str(),
            order_id: coupon.order_id,
            valid_until: format_ms(coupon.valid_until_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CouponPage {
    coupons: Vec<CouponBody>,
}

fn template_not_found(raw: i64) -> ApiError {
    ApiError::not_found("template_not_found", format!("coupon template {raw} does not exist"))
}

#[utoipa::path(
    tag = "coupons",
    request_body = CreateTemplate,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = TemplateBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_name`, `invalid_kind`, `invalid_discount` (a field of the other \
            kind, or the kind's own missing or out of range), `invalid_min_spend`, `invalid_total`, \
            `invalid_per_user_limit`, `invalid_time`, `invalid_window`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/admin/coupon-templates")]
pub async fn create_template(
    state: web::Data<AppState>,
    _admin: Admin,
    body: JsonBody<CreateTemplate>,
) -> Result<HttpResponse, ApiError> {
    let input = TemplateInput {
        name: &body.name,
        kind: &body.kind,
        discount_cents: body.discount_cents,
        percent_off: body.percent_off,
        max_discount_cents: body.max_discount_cents,
        min_spend_cents: body.min_spend_cents,
        total: body.total,
        per_user_limit: body.per_user_limit,
        claim_starts_at_ms: parse_optional_ms("claim_starts_at", body.claim_starts_at.as_deref())?,
        claim_ends_at_ms: parse_optional_ms("claim_ends_at", body.claim_ends_at.as_deref())?,
        valid_until_ms: parse_ms("valid_until", &body.valid_until)?,
    };
    let draft = TemplateDraft::parse(&input)?;
    let template = state.core.create_template(draft).await?;
    Ok(HttpResponse::Created().json(TemplateBody::from(template)))
}

#[utoipa::path(
    tag = "coupons",
    params(("template_id" = i64, Path, minimum = 1, description = "A coupon template id (snowflake).")),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The template with the coupons issued so far", body = TemplateBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/coupon-templates/{template_id}")]
pub async fn get_template(
    state: web::Data<AppState>,
    _caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let template_id = TemplateId::parse(raw).ok_or_else(|| template_not_found(raw))?;
    let template = state.core.template_state(template_id).await?;
    Ok(HttpResponse::Ok().json(TemplateBody::from(template)))
}

#[utoipa::path(
    tag = "coupons",
    request_body = ReceiveBody,
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 201, description = "The coupon, committed to the caller", body = CouponBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
        (status = 409, description = "`not_started`, `ended`, `sold_out`, `limit_reached`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_template_id`", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/coupons/receive")]
pub async fn receive(
    state: web::Data<AppState>,
    caller: RateLimited<Coupons>,
    body: JsonBody<ReceiveBody>,
) -> Result<HttpResponse, ApiError> {
    let template_id = TemplateId::parse(body.template_id)
        .ok_or_else(|| ApiError::unprocessable("invalid_template_id", "template_id must be a positive id"))?;
    let coupon = state.core.receive_coupon(caller.user_id, template_id).await?;
    assert_eq!(coupon.status, CouponStatus::Unused, "a coupon is received unused");
    Ok(HttpResponse::Created().json(CouponBody::new(&coupon, CouponView::Unused)))
}

#[utoipa::path(
    tag = "coupons",
    params(ListQuery),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The caller's coupons, newest first", body = CouponPage),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`invalid_query`, `invalid_status`, `invalid_limit`", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/coupons")]
pub async fn list(
    state: web::Data<AppState>,
    caller: RateLimited<Reads>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let view = optional_status(query.status.as_deref(), "coupon", CouponView::parse)?;
    let limit = page_limit(query.limit, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
    let coupons = state.core.list_coupons(caller.user_id, view, limit).await?;
    assert!(coupons.len() <= limit as usize, "a page holds at most its limit");
    let coupons = coupons.iter().map(|(coupon, view)| CouponBody::new(coupon, *view)).collect();
    Ok(HttpResponse::Ok().json(CouponPage { coupons }))
}
