//! Authentication: HS256 JWTs with a required `exp`, `sub` the user id as a decimal string and
//! `role` `user` or `admin`. The user id always comes from the token, never from a body. Any
//! other algorithm (including `none`), a wrong secret, an expired or malformed token is 401;
//! a user token on an admin route is 403.

use super::errors::ApiError;
use crate::domain::UserId;
use actix_web::dev::Payload;
use actix_web::{http::header, web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::future::{ready, Ready};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    pub iat: u64,
}

/// The signing and verifying keys of one secret.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user_id`, valid for `ttl`.
    pub fn mint(&self, user_id: UserId, role: Role, ttl: Duration) -> String {
        let now = crate::domain::ids::wall_clock_ms() / 1_000;
        let claims = Claims { sub: user_id.to_string(), role, exp: now + ttl.as_secs(), iat: now };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The caller a bearer token names, if the token is valid.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| ApiError::unauthorized(format!("invalid token: {error}")))?;
        let user_id = data
            .claims
            .sub
            .parse::<i64>()
            .ok()
            .and_then(UserId::parse)
            .ok_or_else(|| ApiError::unauthorized("token subject is not a user id"))?;
        Ok(Caller { user_id, role: data.claims.role })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user_id: UserId,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

fn caller_of(request: &HttpRequest) -> Result<Caller, ApiError> {
    let keys =
        request.app_data::<web::Data<JwtKeys>>().ok_or_else(|| ApiError::internal("JwtKeys missing from app data"))?;
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
    keys.verify(token.trim())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller_of(request))
    }
}

/// A caller with the admin role.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller_of(request).and_then(|caller| {
            if caller.is_admin() {
                Ok(Admin(caller))
            } else {
                Err(ApiError::forbidden("this route needs an admin token"))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let keys = JwtKeys::new(&"s".repeat(32));
        let token = keys.mint(UserId::new(7), Role::User, Duration::from_secs(60));
        let caller = keys.verify(&token).unwrap();
        assert_eq!(caller.user_id, UserId::new(7));
        assert!(!caller.is_admin());

        let other = JwtKeys::new(&"t".repeat(32));
        assert_eq!(other.verify(&token).unwrap_err().code, "unauthorized");

        let now = crate::domain::ids::wall_clock_ms() / 1_000;
        let past = Claims { sub: "7".into(), role: Role::User, exp: now - 5, iat: now - 60 };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &past, &keys.encoding).unwrap();
        assert!(keys.verify(&expired).is_err(), "exp in the past is refused");
    }

    #[test]
    fn alg_none_is_refused() {
        let b64 = base64_url;
        let keys = JwtKeys::new(&"s".repeat(32));
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64(r#"{"sub":"7","role":"admin","exp":99999999999}"#);
        assert!(keys.verify(&format!("{header}.{claims}.")).is_err());
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
