//! The payment provider's callback. The body is authenticated before it is parsed: its
//! HMAC-SHA256 under `TIANJI_PAYMENT_SECRET`, hex in `X-Tianji-Signature`, is compared in
//! constant time. Repeats of a callback (same `out_trade_no`) get the first answer again.
//! The body is already whole and bounded when the handler runs: `clients::guard` refuses an
//! oversized body (413, by `Content-Length` before reading it) or a slow one (408) first.

use super::errors::{ApiError, ErrorBody};
use super::openapi::{PayloadTooLarge, Unavailable};
use super::orders::OrderBody;
use super::AppState;
use crate::domain::{Cents, OrderId};
use actix_web::{post, web, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "X-Tianji-Signature";
pub const OUT_TRADE_NO_LEN_MAX: usize = 64;
pub const CHANNEL_LEN_MAX: usize = 32;

/// The key payment callbacks are signed with.
pub struct PaymentKey(Vec<u8>);

impl PaymentKey {
    pub fn new(secret: &str) -> Self {
        PaymentKey(secret.as_bytes().to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The hex signature of `body`, as the provider sends it.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature_hex` is the signature of `body`, compared in constant time.
    pub fn verify(&self, body: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex.trim()) else { return false };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    }
}

/// The provider's report of a payment.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    #[schema(minimum = 1)]
    order_id: i64,
    /// The provider's trade number: 1 to 64 printable ASCII characters. Repeats get the first answer.
    #[schema(pattern = "^[!-~]{1,64}$")]
    out_trade_no: String,
    /// Must equal the order's `pay_cents`.
    #[schema(minimum = 0)]
    amount_cents: i64,
    /// 1 to 32 bytes, e.g. `wechat`.
    #[schema(min_length = 1, max_length = 32)]
    channel: String,
}

#[utoipa::path(
    tag = "payments",
    request_body = Callback,
    params(
        ("X-Tianji-Signature" = String, Header, pattern = "^[0-9a-fA-F]{64}$",
            description = "hex(HMAC-SHA256(payment secret, raw body))"),
    ),
    responses(
        (status = 200, description = "The paid order (or the first answer to this `out_trade_no`)", body = OrderBody),
        (status = 400, description = "`malformed_request`, `amount_mismatch` (not the order's `pay_cents`)",
            body = ErrorBody),
        (status = 401, description = "`bad_signature`: the signature is missing or does not match the body",
            body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`order_closed` (the payment is kept as `refund_required`), `already_paid`, \
            `out_trade_no_reused`, `invalid_transition`, `stale_version`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`invalid_out_trade_no`, `invalid_channel`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/payments/callback")]
pub async fn callback(
    state: web::Data<AppState>,
    key: web::Data<PaymentKey>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let signature = request.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !key.verify(&body, signature) {
        return Err(ApiError::unauthorized_with("bad_signature", "X-Tianji-Signature does not match the body"));
    }
    let callback: Callback = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("malformed_request", format!("invalid callback body: {error}")))
        .and_then(super::json::parse)?;
    let trade_no_ok = !callback.out_trade_no.is_empty()
        && callback.out_trade_no.len() <= OUT_TRADE_NO_LEN_MAX
        && callback.out_trade_no.bytes().all(|b| b.is_ascii_graphic());
    if !trade_no_ok {
        return Err(ApiError::unprocessable(
            "invalid_out_trade_no",
            "out_trade_no must be 1 to 64 printable ASCII characters",
        ));
    }
    if callback.channel.is_empty() || callback.channel.len() > CHANNEL_LEN_MAX {
        return Err(ApiError::unprocessable("invalid_channel", "channel must be 1 to 32 characters"));
    }
    if callback.amount_cents < 0 {
        return Err(ApiError::bad_request("amount_mismatch", "amount_cents cannot be negative"));
    }
    let order_id =
        OrderId::parse(callback.order_id).ok_or_else(|| ApiError::not_found("order_not_found", "no such order"))?;
    let order = state
        .core
        .pay_order(order_id, callback.out_trade_no, Cents::new(callback.amount_cents), callback.channel)
        .await?;
    Ok(HttpResponse::Ok().json(OrderBody::from(&order)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_their_body() {
        let key = PaymentKey::new("payment-secret-payment-secret-0123");
        let body = br#"{"order_id":1}"#;
        let signature = key.sign(body);
        assert!(key.verify(body, &signature));
        assert!(!key.verify(br#"{"order_id":2}"#, &signature));
        assert!(!key.verify(body, "zz"));
        assert!(!PaymentKey::new("another-secret-another-secret-0123").verify(body, &signature));
    }
}
