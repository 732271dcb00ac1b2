//! Payments as admins see them: the list by status, above all the payments kept as
//! `refund_required` (a callback for an order that was closed or paid already), whose money
//! must go back to the payer. Pages are newest first with an opaque cursor, like the orders.

use super::auth::Admin;
use super::errors::{ApiError, ErrorBody};
use super::openapi::{Forbidden, Unauthorized, Unavailable};
use super::payments::OUT_TRADE_NO_LEN_MAX;
use super::query::{optional_status, page_limit, parse_optional};
use super::time::format_ms;
use super::AppState;
use crate::domain::{Cents, OrderId};
use crate::persistence::{PaymentCursor, PaymentRecord, PaymentStatus};
use actix_web::{get, web, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The most payments one page lists.
pub const PAGE_SIZE_MAX: u32 = 100;
/// How many payments a page lists when the query names no `limit`.
pub const PAGE_SIZE_DEFAULT: u32 = 20;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PaymentListQuery {
    /// The payments' status.
    #[param(pattern = "^(paid|refund_required|refunded)$")]
    status: String,
    /// At most this many payments (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page; opaque.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentBody {
    out_trade_no: String,
    #[schema(value_type = i64)]
    order_id: OrderId,
    order_id_str: String,
    #[schema(value_type = i64)]
    amount_cents: Cents,
    channel: String,
    /// `paid`, `refund_required` or `refunded`.
    status: &'static str,
    /// When the payment was recorded (RFC 3339).
    created_at: String,
    /// When its status last changed (RFC 3339).
    updated_at: String,
}

impl From<&PaymentRecord> for PaymentBody {
    fn from(record: &PaymentRecord) -> Self {
        let payment = &record.payment;
        PaymentBody {
            out_trade_no: payment.out_trade_no.clone(),
            order_id: payment.order_id,
            order_id_str: payment.order_id.to_string(),
            amount_cents: payment.amount_cents,
            channel: payment.channel.clone(),
            status: payment.status.as_str(),
            created_at: format_ms(record.created_at_ms),
            updated_at: format_ms(record.updated_at_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PaymentPage {
    payments: Vec<PaymentBody>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// A cursor is the position of the last payment of a page (`created_at` and `out_trade_no`,
/// a total order), wrapped so that clients treat it as opaque.
fn encode_cursor(cursor: &PaymentCursor) -> String {
    let text = format!("p:{}:{}", cursor.created_at_ms, cursor.out_trade_no);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Option<PaymentCursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (created_at, out_trade_no) = text.strip_prefix("p:")?.split_once(':')?;
    let created_at_ms: i64 = created_at.parse().ok()?;
    let trade_no_ok = !out_trade_no.is_empty()
        && out_trade_no.len() <= OUT_TRADE_NO_LEN_MAX
        && out_trade_no.bytes().all(|b| b.is_ascii_graphic());
    (created_at_ms >= 0 && trade_no_ok).then(|| PaymentCursor { created_at_ms, out_trade_no: out_trade_no.to_owned() })
}

#[utoipa::path(
    tag = "payments",
    params(PaymentListQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Payments in the status, newest first", body = PaymentPage),
        (status = 400, description = "`invalid_cursor`: not a cursor this API gave out", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, description = "`invalid_query` (e.g. no `status`), `invalid_status`, `invalid_limit`",
            body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/admin/payments")]
pub async fn list_payments(
    state: web::Data<AppState>,
    _admin: Admin,
    query: web::Query<PaymentListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let status = optional_status(Some(&query.status), "payment", PaymentStatus::parse)?
        .ok_or_else(|| ApiError::unprocessable("invalid_status", "status must be paid, refund_required or refunded"))?;
    let limit = page_limit(query.limit, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
    let after = parse_optional(query.cursor.as_deref(), decode_cursor, |_| {
        ApiError::bad_request("invalid_cursor", "cursor is not one this API gave out")
    })?;
    let records = state.core.list_payments(status, after, limit).await?;
    let next_cursor =
        (records.len() == limit as usize).then(|| records.last().map(|r| encode_cursor(&r.cursor()))).flatten();
    let payments = records.iter().map(PaymentBody::from).collect();
    Ok(HttpResponse::Ok().json(PaymentPage { payments, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let cursor = PaymentCursor { created_at_ms: 1_764_000_000_000, out_trade_no: "a:b\"c".into() };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        let forged = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&forged("o:5")), None);
        assert_eq!(decode_cursor(&forged("p:-1:t")), None);
        assert_eq!(decode_cursor(&forged("p:5:")), None);
        assert_eq!(decode_cursor(&forged("p:5:with space")), None);
        assert_eq!(decode_cursor(&forged(&format!("p:5:{}", "x".repeat(65)))), None);
    }
}
