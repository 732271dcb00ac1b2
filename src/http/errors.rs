//! The one place where errors become HTTP: every failure a client can see is `ApiError`, a
//! status, a stable snake_case `code` and a message, sent as `{"code", "message"}`. Overload
//! and unavailability carry `Retry-After`. Server-side causes are logged, not sent.

use crate::actors::coupon::ClaimFailure;
use crate::actors::inventory::SkuError;
use crate::actors::learning::LearningError;
use crate::actors::order::LifecycleError;
use crate::actors::user::PlaceError;
use crate::cluster::NotOwner;
use crate::domain::coupon::{ClaimError, TemplateRuleError};
use crate::domain::inventory::InventoryError;
use crate::domain::learning::HeartbeatError;
use crate::domain::order::OrderError;
use crate::domain::sale::{SaleError, SaleRuleError};
use crate::domain::sku::SkuRuleError;
use crate::persistence::StoreError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

/// Seconds a client should wait before retrying an overloaded or unavailable request.
pub const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `not_owner` only: where the key's owner is reached, when known.
    pub owner: Option<String>,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable snake_case code; each response documents the codes it can carry.
    #[schema(example = "insufficient_stock")]
    pub code: String,
    /// For people; clients branch on `code`.
    pub message: String,
    /// With `not_owner`: the advertised URL of the node that owns the key, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), owner: None }
    }

    /// 503 `not_owner`: another node of the cluster (or none, during a takeover) owns the key.
    pub fn not_owner(error: &NotOwner) -> Self {
        ApiError {
            owner: error.owner.clone(),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_owner", error.to_string())
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn unauthorized_with(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn overloaded() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests for this key; retry shortly")
    }

    /// A server-side failure: logged with its cause, answered without it.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        tracing::warn!(%cause, "request failed: unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable; retry shortly")
    }

    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(%cause, "request failed: internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        response.json(ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            owner: self.owner.clone(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => ApiError::unavailable(error),
            StoreError::Corrupt(_) | StoreError::Database(_) => ApiError::internal(error),
            StoreError::NotOwner(not_owner) => ApiError::not_owner(&not_owner),
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(error: InventoryError) -> Self {
        match error {
            InventoryError::InvalidQuantity { .. } => ApiError::unprocessable("invalid_quantity", error.to_string()),
            InventoryError::InsufficientStock { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_stock", error.to_string())
            }
            InventoryError::StockOverflow { .. } => ApiError::unprocessable("invalid_quantity", error.to_string()),
            InventoryError::DuplicateReservation(_)
            | InventoryError::UnknownReservation(_)
            | InventoryError::NotSold { .. } => {
                ApiError::new(StatusCode::CONFLICT, "reservation_conflict", error.to_string())
            }
            InventoryError::Corrupt(_) => ApiError::internal(error),
        }
    }
}

impl From<SkuError> for ApiError {
    fn from(error: SkuError) -> Self {
        match error {
            SkuError::NotFound(_) => ApiError::not_found("sku_not_found", error.to_string()),
            SkuError::Inventory(inner) => inner.into(),
            SkuError::Sale(SaleError::NotStarted { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "sale_not_started", error.to_string())
            }
            SkuError::Sale(SaleError::Ended { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "sale_ended", error.to_string())
            }
            SkuError::InvalidSale(inner) => inner.into(),
            SkuError::Overloaded => ApiError::overloaded(),
            SkuError::Unavailable(reason) => ApiError::unavailable(reason),
            SkuError::NotOwner(not_owner) => ApiError::not_owner(&not_owner),
        }
    }
}

impl From<SaleRuleError> for ApiError {
    fn from(error: SaleRuleError) -> Self {
        let code = match &error {
            SaleRuleError::InvalidPrice(_) => "invalid_sale_price",
            SaleRuleError::InvalidWindow => "invalid_sale_window",
            SaleRuleError::InvalidLimit => "invalid_per_user_limit",
        };
        ApiError::unprocessable(code, error.to_string())
    }
}

impl From<TemplateRuleError> for ApiError {
    fn from(error: TemplateRuleError) -> Self {
        let code = match &error {
            TemplateRuleError::InvalidName => "invalid_name",
            TemplateRuleError::UnknownKind => "invalid_kind",
            TemplateRuleError::InvalidDiscount => "invalid_discount",
            TemplateRuleError::InvalidMinSpend => "invalid_min_spend",
            TemplateRuleError::InvalidTotal => "invalid_total",
            TemplateRuleError::InvalidLimit => "invalid_per_user_limit",
            TemplateRuleError::InvalidWindow => "invalid_window",
        };
        ApiError::unprocessable(code, error.to_string())
    }
}

impl From<ClaimFailure> for ApiError {
    fn from(error: ClaimFailure) -> Self {
        let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, error.to_string());
        match &error {
            ClaimFailure::NotFound(_) => ApiError::not_found("template_not_found", error.to_string()),
            ClaimFailure::Refused(ClaimError::NotStarted) => conflict("not_started"),
            ClaimFailure::Refused(ClaimError::Ended) => conflict("ended"),
            ClaimFailure::Refused(ClaimError::SoldOut) => conflict("sold_out"),
            ClaimFailure::Refused(ClaimError::LimitReached) => conflict("limit_reached"),
            ClaimFailure::Overloaded => ApiError::overloaded(),
            ClaimFailure::Unavailable(reason) | ClaimFailure::Uncertain(reason) => {
                ApiError::unavailable(reason.clone())
            }
            ClaimFailure::Behind => ApiError::unavailable(error.to_string()),
            ClaimFailure::NotOwner(not_owner) => ApiError::not_owner(not_owner),
        }
    }
}

impl From<SkuRuleError> for ApiError {
    fn from(error: SkuRuleError) -> Self {
        let code = match &error {
            SkuRuleError::InvalidName => "invalid_name",
            SkuRuleError::InvalidPrice(_) => "invalid_price",
            SkuRuleError::InvalidStock => "invalid_stock",
        };
        ApiError::unprocessable(code, error.to_string())
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        let code = match &error {
            OrderError::EmptyItems | OrderError::TooManyItems => "invalid_items",
            OrderError::InvalidSkuId(_) => "invalid_sku_id",
            OrderError::DuplicateSku(_) => "duplicate_sku",
            OrderError::Quantity(_) => "invalid_quantity",
            OrderError::Money(_) => "invalid_amount",
        };
        ApiError::unprocessable(code, error.to_string())
    }
}

impl From<PlaceError> for ApiError {
    fn from(error: PlaceError) -> Self {
        match error {
            PlaceError::SkuNotFound(_) => ApiError::not_found("sku_not_found", error.to_string()),
            PlaceError::InsufficientStock { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_stock", error.to_string())
            }
            PlaceError::SaleNotStarted(_) => ApiError::new(StatusCode::CONFLICT, "sale_not_started", error.to_string()),
            PlaceError::SaleEnded(_) => ApiError::new(StatusCode::CONFLICT, "sale_ended", error.to_string()),
            PlaceError::PurchaseLimitReached { .. } => {
                ApiError::new(StatusCode::CONFLICT, "purchase_limit_reached", error.to_string())
            }
            PlaceError::CouponUnavailable => {
                ApiError::new(StatusCode::CONFLICT, "coupon_unavailable", error.to_string())
            }
            PlaceError::CouponMinSpendNotMet(_) => {
                ApiError::unprocessable("coupon_min_spend_not_met", error.to_string())
            }
            PlaceError::KeyReused => ApiError::unprocessable("idempotency_key_reused", error.to_string()),
            PlaceError::Invalid(inner) => inner.into(),
            PlaceError::Overloaded => ApiError::overloaded(),
            PlaceError::Unavailable(reason) | PlaceError::Uncertain(reason) => ApiError::unavailable(reason),
            PlaceError::NotOwner(not_owner) => ApiError::not_owner(&not_owner),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, error.to_string());
        match &error {
            LifecycleError::NotFound => ApiError::not_found("order_not_found", "no such order"),
            LifecycleError::InvalidTransition(_) => conflict("invalid_transition"),
            LifecycleError::AmountMismatch { .. } => ApiError::bad_request("amount_mismatch", error.to_string()),
            LifecycleError::OrderClosed => conflict("order_closed"),
            LifecycleError::AlreadyPaid => conflict("already_paid"),
            LifecycleError::TradeNoReused(_) => conflict("out_trade_no_reused"),
            LifecycleError::Stale => conflict("stale_version"),
            LifecycleError::Overloaded => ApiError::overloaded(),
            LifecycleError::Unavailable(reason) => ApiError::unavailable(reason),
            LifecycleError::NotOwner(not_owner) => ApiError::not_owner(not_owner),
        }
    }
}

impl From<HeartbeatError> for ApiError {
    fn from(error: HeartbeatError) -> Self {
        ApiError::unprocessable("invalid_heartbeat", error.to_string())
    }
}

impl From<LearningError> for ApiError {
    fn from(error: LearningError) -> Self {
        match error {
            LearningError::NotOwned(_) => ApiError::new(StatusCode::FORBIDDEN, "course_not_owned", error.to_string()),
            LearningError::Overloaded => ApiError::overloaded(),
            LearningError::Unavailable(reason) => ApiError::unavailable(reason),
            LearningError::NotOwner(not_owner) => ApiError::not_owner(&not_owner),
        }
    }
}
