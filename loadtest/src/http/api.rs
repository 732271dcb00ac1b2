//! A client of tianji's HTTP API (DESIGN section 5) for the scenarios: tokens minted for many
//! users, one keep-alive connection pool, and one method per call the scenarios make. Every
//! answer is classified here into what the driver counts.

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long minted tokens stay valid: longer than any run may last.
pub const TOKEN_TTL: Duration = Duration::from_secs(2 * 3_600);
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
pub const SIGNATURE_HEADER: &str = "X-Tianji-Signature";

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    role: &'a str,
    exp: u64,
    iat: u64,
}

/// A bearer token for `user_id` with `role` ("user" or "admin"), HS256 over `secret`.
pub fn mint_token(secret: &str, user_id: u64, role: &str) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims { sub: user_id.to_string(), role, exp: now + TOKEN_TTL.as_secs(), iat: now };
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))?;
    Ok(format!("Bearer {token}"))
}

/// hex(HMAC-SHA256(secret, body)): the payment callback's signature.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone, Deserialize)]
pub struct SkuReply {
    pub sku_id: i64,
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderItemReply {
    pub sku_id: i64,
    pub quantity: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderReply {
    pub order_id: i64,
    pub user_id: i64,
    pub status: String,
    pub pay_cents: i64,
    pub items: Vec<OrderItemReply>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TemplateReply {
    pub template_id: i64,
    pub total: i64,
    /// Coupons committed to users.
    pub issued: i64,
    pub per_user_limit: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CouponReply {
    pub coupon_id: i64,
    pub template_id: i64,
    pub status: String,
}

#[derive(Debug, Deserialize)]
struct ErrorReply {
    code: String,
}

/// What a call came back with, as the scenarios count it.
#[derive(Debug)]
pub enum Answer<T> {
    Done(T),
    /// 409 insufficient_stock.
    SoldOut,
    /// Anything else; the text names the status and code (or the transport failure).
    Failed(String),
}

/// What a coupon claim came back with: its two refusals apart from the rest.
#[derive(Debug)]
pub enum Claim {
    /// 201 with the coupon.
    Claimed(CouponReply),
    /// 409 sold_out: the template has issued its total.
    SoldOut,
    /// 409 limit_reached: the user holds the template's per-user limit.
    LimitReached,
    /// Anything else, named as for `Answer::Failed`.
    Failed(String),
}

/// The refusal a claim's error answer stands for, if it is one of the two expected ones.
pub fn claim_refusal(status: u16, code: &str) -> Option<Claim> {
    match (status, code) {
        (409, "sold_out") => Some(Claim::SoldOut),
        (409, "limit_reached") => Some(Claim::LimitReached),
        _ => None,
    }
}

#[derive(Serialize)]
struct PlaceItem {
    sku_id: i64,
    quantity: u32,
}

#[derive(Serialize)]
struct PlaceBody {
    items: [PlaceItem; 1],
}

#[derive(Serialize)]
struct PaymentCallback<'a> {
    order_id: i64,
    out_trade_no: &'a str,
    amount_cents: i64,
    channel: &'a str,
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub user_tokens: Vec<String>,
    pub admin_token: String,
}

fn transport(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connection refused or reset".into()
    } else {
        format!("transport: {}", error.without_url())
    }
}

/// The status and error code of an error answer.
async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let code = response.json::<ErrorReply>().await.map(|e| e.code).unwrap_or_else(|_| "no error code".into());
    (status, code)
}

async fn failure(response: reqwest::Response) -> String {
    let (status, code) = error_code(response).await;
    format!("{status} {code}")
}

/// Reads a 2xx JSON answer as `T`, a 409 `insufficient_stock` as `SoldOut`, the rest as failed.
async fn classify<T: for<'de> Deserialize<'de>>(
    sent: Result<reqwest::Response, reqwest::Error>,
    expected: StatusCode,
) -> Answer<T> {
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Answer::Failed(transport(error)),
    };
    if response.status() == expected {
        return match response.json::<T>().await {
            Ok(value) => Answer::Done(value),
            Err(error) => Answer::Failed(format!("unreadable answer: {}", error.without_url())),
        };
    }
    let message = failure(response).await;
    if message == "409 insufficient_stock" {
        Answer::SoldOut
    } else {
        Answer::Failed(message)
    }
}

impl Api {
    pub fn user_token(&self, user_index: usize) -> &str {
        &self.user_tokens[user_index % self.user_tokens.len()]
    }

    pub async fn create_sku(&self, name: &str, stock: i64) -> Answer<SkuReply> {
        let body = serde_json::json!({ "name": name, "price_cents": 100, "stock": stock });
        let sent = self
            .client
            .post(format!("{}/v1/admin/skus", self.base))
            .header("Authorization", &self.admin_token)
            .json(&body)
            .send()
            .await;
        classify(sent, StatusCode::CREATED).await
    }

    pub async fn sku(&self, sku_id: i64) -> Answer<SkuReply> {
        let sent = self
            .client
            .get(format!("{}/v1/skus/{sku_id}", self.base))
            .header("Authorization", &self.admin_token)
            .send()
            .await;
        classify(sent, StatusCode::OK).await
    }

    pub async fn place(&self, user: usize, key: &str, sku_id: i64, quantity: u32) -> Answer<OrderReply> {
        let body = PlaceBody { items: [PlaceItem { sku_id, quantity }] };
        let sent = self
            .client
            .post(format!("{}/v1/orders", self.base))
            .header("Authorization", self.user_token(user))
            .header(IDEMPOTENCY_HEADER, key)
            .json(&body)
            .send()
            .await;
        classify(sent, StatusCode::CREATED).await
    }

    pub async fn order(&self, user: usize, order_id: i64) -> Answer<OrderReply> {
        let sent = self
            .client
            .get(format!("{}/v1/orders/{order_id}", self.base))
            .header("Authorization", self.user_token(user))
            .send()
            .await;
        classify(sent, StatusCode::OK).await
    }

    /// An `amount_off` template of `total` coupons (100 cents off, no minimum spend), valid
    /// until `valid_until` (RFC 3339).
    pub async fn create_template(
        &self,
        name: &str,
        total: i64,
        per_user_limit: i64,
        valid_until: &str,
    ) -> Answer<TemplateReply> {
        let body = serde_json::json!({
            "name": name,
            "kind": "amount_off",
            "discount_cents": 100,
            "min_spend_cents": 0,
            "total": total,
            "per_user_limit": per_user_limit,
            "valid_until": valid_until,
        });
        let sent = self
            .client
            .post(format!("{}/v1/admin/coupon-templates", self.base))
            .header("Authorization", &self.admin_token)
            .json(&body)
            .send()
            .await;
        classify(sent, StatusCode::CREATED).await
    }

    pub async fn template(&self, template_id: i64) -> Answer<TemplateReply> {
        let sent = self
            .client
            .get(format!("{}/v1/coupon-templates/{template_id}", self.base))
            .header("Authorization", &self.admin_token)
            .send()
            .await;
        classify(sent, StatusCode::OK).await
    }

    /// Claims one coupon of the template as the user.
    pub async fn receive(&self, user: usize, template_id: i64) -> Claim {
        let sent = self
            .client
            .post(format!("{}/v1/coupons/receive", self.base))
            .header("Authorization", self.user_token(user))
            .json(&serde_json::json!({ "template_id": template_id }))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Claim::Failed(transport(error)),
        };
        if response.status() == StatusCode::CREATED {
            return match response.json::<CouponReply>().await {
                Ok(coupon) => Claim::Claimed(coupon),
                Err(error) => Claim::Failed(format!("unreadable answer: {}", error.without_url())),
            };
        }
        let (status, code) = error_code(response).await;
        claim_refusal(status, &code).unwrap_or_else(|| Claim::Failed(format!("{status} {code}")))
    }

    /// Cancels a pending order as its owner; any 2xx is success.
    pub async fn cancel(&self, user: usize, order_id: i64) -> Answer<()> {
        let sent = self
            .client
            .post(format!("{}/v1/orders/{order_id}/cancel", self.base))
            .header("Authorization", self.user_token(user))
            .send()
            .await;
        succeeded("cancel", sent).await
    }

    /// The payment provider's signed callback; any 2xx is success (its body is not read).
    pub async fn pay(&self, secret: &str, order: &OrderReply, out_trade_no: &str) -> Answer<()> {
        let callback = PaymentCallback {
            order_id: order.order_id,
            out_trade_no,
            amount_cents: order.pay_cents,
            channel: "loadtest",
        };
        // Plain integers and strings: serializing cannot fail.
        let body = serde_json::to_vec(&callback).expect("callback body serializes");
        let sent = self
            .client
            .post(format!("{}/v1/payments/callback", self.base))
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, sign(secret, &body))
            .body(body)
            .send()
            .await;
        succeeded("payment callback", sent).await
    }
}

/// Any 2xx is done (the body is not read); the rest failed, named after `call`.
async fn succeeded(call: &str, sent: Result<reqwest::Response, reqwest::Error>) -> Answer<()> {
    match sent {
        Ok(response) if response.status().is_success() => Answer::Done(()),
        Ok(response) => Answer::Failed(format!("{call}: {}", failure(response).await)),
        Err(error) => Answer::Failed(format!("{call}: {}", transport(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_the_two_claim_refusals_are_refusals() {
        assert!(matches!(claim_refusal(409, "sold_out"), Some(Claim::SoldOut)));
        assert!(matches!(claim_refusal(409, "limit_reached"), Some(Claim::LimitReached)));
        assert!(claim_refusal(409, "not_started").is_none());
        assert!(claim_refusal(409, "insufficient_stock").is_none());
        assert!(claim_refusal(503, "sold_out").is_none());
    }

    #[test]
    fn tokens_carry_the_documented_claims() {
        let token = mint_token("a-secret-of-enough-length-for-tests", 42, "user").expect("mint");
        let raw = token.strip_prefix("Bearer ").expect("bearer");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            raw,
            &jsonwebtoken::DecodingKey::from_secret(b"a-secret-of-enough-length-for-tests"),
            &validation,
        )
        .expect("valid token");
        assert_eq!(decoded.claims["sub"], "42");
        assert_eq!(decoded.claims["role"], "user");
        assert!(decoded.claims["iat"].as_u64() < decoded.claims["exp"].as_u64());
    }
}
