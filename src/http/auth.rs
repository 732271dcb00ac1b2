//! Authentication: HS256 JWTs per DESIGN.md §5. Required claims: `sub` (the user id as a
//! decimal string), `role` (`user` or `admin`) and `exp`. Optional claims, checked when present:
//! `nbf` (not before), `iat` (issued at, not in the future), `iss`, `aud`; when an issuer or an
//! audience is configured (`TokenRules`) the token must carry the matching claim. A token may
//! not live longer than `TokenRules::lifetime_max` (from `iat`, or from now without it). The
//! user id always comes from the token, never from a body.
//!
//! Every refusal is a 401 with a fixed message (`TokenError`): parser and library details are
//! logged at debug level, never sent. A user token on an admin route is 403; a node token
//! (`Role::Node`, the credential of calls between nodes) is 403 on every public route, and a
//! user or admin token is 403 on the internal routes (`Node`).

use super::errors::ApiError;
use crate::domain::UserId;
use actix_web::dev::Payload;
use actix_web::{http::header, web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::future::{ready, Ready};
use std::time::Duration;

/// Seconds an issuer's clock may run ahead of ours: `nbf` and `iat` up to this far in the
/// future are accepted. `exp` gets no leeway.
pub const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
    /// Another node of the cluster, minted by a node from the shared secret: accepted only on
    /// the internal routes (`http::internal`), refused on every public one.
    Node,
}

/// The claims `mint` writes.
#[derive(Debug, Serialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The claims a token may carry, all optional at this stage so that a missing one is told
/// apart from a malformed token. Other claims (`jti`, ...) are ignored.
#[derive(Debug, Deserialize)]
struct ReceivedClaims {
    sub: Option<String>,
    role: Option<Role>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<Audience>,
}

/// `aud` is one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, expected: &str) -> bool {
        match self {
            Audience::One(one) => one == expected,
            Audience::Many(many) => many.iter().any(|one| one == expected),
        }
    }
}

/// What a token must satisfy beyond its signature: settings `TIANJI_JWT_ISSUER`,
/// `TIANJI_JWT_AUDIENCE` and `TIANJI_JWT_LIFETIME_MAX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// When set, `iss` is required and must equal it; when unset, any `iss` is accepted.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must contain it; when unset, a token with an `aud` is
    /// refused (RFC 7519: a recipient not named in a present `aud` must reject the token).
    pub audience: Option<String>,
    /// The longest accepted span from `iat` (or from now) to `exp`.
    pub lifetime_max: Duration,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules { issuer: None, audience: None, lifetime_max: Duration::from_secs(24 * 3_600) }
    }
}

/// Why a token is refused, in the order the checks run. The messages are the 401's messages:
/// fixed text, nothing from the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("the Authorization header must be 'Bearer <token>'")]
    NotBearer,
    /// Malformed, wrongly signed, another algorithm (`none` included), or a claim of the wrong type.
    #[error("invalid token")]
    Invalid,
    #[error("token lacks a required claim (sub, role and exp are required)")]
    MissingClaim,
    #[error("token subject is not a user id")]
    BadSubject,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::unauthorized(error.to_string())
    }
}

/// The signing and verifying keys of one secret, and the rules tokens must satisfy.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    rules: TokenRules,
}

impl JwtKeys {
    /// Keys with the default rules (no issuer or audience, a lifetime of at most 24 hours).
    pub fn new(secret: &str) -> Self {
        Self::with_rules(secret, TokenRules::default())
    }

    pub fn with_rules(secret: &str, rules: TokenRules) -> Self {
        // jsonwebtoken checks the signature and the algorithm only; the claims are checked by
        // `check`, so that each refusal has its own fixed message.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            rules,
        }
    }

    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// A token for `user_id`, valid for `ttl`, carrying the configured issuer and audience.
    /// `ttl` beyond `lifetime_max` makes a token `verify` refuses: `tianji token` checks first.
    pub fn mint(&self, user_id: UserId, role: Role, ttl: Duration) -> String {
        let now = crate::domain::ids::wall_clock_ms() / 1_000;
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            exp: now + ttl.as_secs(),
            iat: now,
            iss: self.rules.issuer.clone(),
            aud: self.rules.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The caller a bearer token names, if the token is valid now.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        self.verify_at(token, crate::domain::ids::wall_clock_ms() / 1_000)
    }

    /// The caller a bearer token names, if the token is valid at `now_secs` (Unix seconds).
    pub fn verify_at(&self, token: &str, now_secs: u64) -> Result<Caller, TokenError> {
        let data =
            jsonwebtoken::decode::<ReceivedClaims>(token, &self.decoding, &self.validation).map_err(|error| {
                tracing::debug!(%error, "token refused");
                TokenError::Invalid
            })?;
        check(&data.claims, &self.rules, now_secs)
    }
}

/// The claims' checks, in a fixed order: presence, subject, time, lifetime, issuer, audience.
fn check(claims: &ReceivedClaims, rules: &TokenRules, now_secs: u64) -> Result<Caller, TokenError> {
    let (Some(sub), Some(role), Some(exp)) = (&claims.sub, claims.role, claims.exp) else {
        return Err(TokenError::MissingClaim);
    };
    let user_id = sub.parse::<i64>().ok().and_then(UserId::parse).ok_or(TokenError::BadSubject)?;
    if exp <= now_secs {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_secs + CLOCK_SKEW_SECS) {
        return Err(TokenError::NotYetValid);
    }
    if claims.iat.is_some_and(|iat| iat > now_secs + CLOCK_SKEW_SECS) {
        return Err(TokenError::IssuedInFuture);
    }
    let lifetime_start = claims.iat.unwrap_or(now_secs);
    if exp.saturating_sub(lifetime_start) > rules.lifetime_max.as_secs() {
        return Err(TokenError::LifetimeTooLong);
    }
    if let Some(issuer) = &rules.issuer {
        if claims.iss.as_deref() != Some(issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
    }
    let audience_ok = match (&rules.audience, &claims.aud) {
        (Some(expected), Some(audience)) => audience.contains(expected),
        (Some(_), None) | (None, Some(_)) => false,
        (None, None) => true,
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    Ok(Caller { user_id, role })
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

/// The caller of a public route: a user or an admin, never a node.
fn caller_of(request: &HttpRequest) -> Result<Caller, ApiError> {
    let caller = token_of(request)?;
    if caller.role == Role::Node {
        return Err(ApiError::forbidden("a node credential is accepted only on internal routes"));
    }
    Ok(caller)
}

fn token_of(request: &HttpRequest) -> Result<Caller, ApiError> {
    let keys =
        request.app_data::<web::Data<JwtKeys>>().ok_or_else(|| ApiError::internal("JwtKeys missing from app data"))?;
    let value = request.headers().get(header::AUTHORIZATION).ok_or(TokenError::Missing)?;
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(TokenError::NotBearer)?;
    Ok(keys.verify(token.trim())?)
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

/// Another node of the cluster (a token with the `node` role): the caller of internal routes.
#[derive(Debug, Clone, Copy)]
pub struct Node(pub Caller);

impl FromRequest for Node {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(token_of(request).and_then(|caller| match caller.role {
            Role::Node => Ok(Node(caller)),
            Role::User | Role::Admin => Err(ApiError::forbidden("this route needs a node credential")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const HOUR: u64 = 3_600;

    fn keys(rules: TokenRules) -> JwtKeys {
        JwtKeys::with_rules(&"s".repeat(32), rules)
    }

    fn signed(keys: &JwtKeys, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap()
    }

    #[test]
    fn round_trip_and_rejections() {
        let keys = JwtKeys::new(&"s".repeat(32));
        let token = keys.mint(UserId::new(7), Role::User, Duration::from_secs(60));
        let caller = keys.verify(&token).unwrap();
        assert_eq!(caller.user_id, UserId::new(7));
        assert!(!caller.is_admin());
        assert_eq!(JwtKeys::new(&"t".repeat(32)).verify(&token).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn claims_are_checked_in_order() {
        use serde_json::json;
        let open = keys(TokenRules::default());
        let strict = keys(TokenRules {
            issuer: Some("tianji".into()),
            audience: Some("shop".into()),
            lifetime_max: Duration::from_secs(HOUR),
        });
        let exp = NOW + 60;
        let cases: &[(&JwtKeys, serde_json::Value, Result<(), TokenError>)] = &[
            (&open, json!({"sub": "7", "role": "user", "exp": exp}), Ok(())),
            (&open, json!({"sub": "7", "role": "admin", "exp": exp, "iat": NOW, "nbf": NOW, "jti": "x"}), Ok(())),
            (&open, json!({"role": "user", "exp": exp}), Err(TokenError::MissingClaim)),
            (&open, json!({"sub": "7", "exp": exp}), Err(TokenError::MissingClaim)),
            (&open, json!({"sub": "7", "role": "user"}), Err(TokenError::MissingClaim)),
            (&open, json!({"sub": "7", "role": "node", "exp": exp}), Ok(())),
            (&open, json!({"sub": "7", "role": "root", "exp": exp}), Err(TokenError::Invalid)),
            (&open, json!({"sub": 7, "role": "user", "exp": exp}), Err(TokenError::Invalid)),
            (&open, json!({"sub": "7", "role": "user", "exp": "soon"}), Err(TokenError::Invalid)),
            (&open, json!({"sub": "-7", "role": "user", "exp": exp}), Err(TokenError::BadSubject)),
            (&open, json!({"sub": "7", "role": "user", "exp": NOW}), Err(TokenError::Expired)),
            (&open, json!({"sub": "7", "role": "user", "exp": exp, "nbf": NOW + CLOCK_SKEW_SECS}), Ok(())),
            (
                &open,
                json!({"sub": "7", "role": "user", "exp": exp, "nbf": NOW + CLOCK_SKEW_SECS + 1}),
                Err(TokenError::NotYetValid),
            ),
            (
                &open,
                json!({"sub": "7", "role": "user", "exp": exp, "iat": NOW + HOUR}),
                Err(TokenError::IssuedInFuture),
            ),
            (&open, json!({"sub": "7", "role": "user", "exp": NOW + 24 * HOUR}), Ok(())),
            (&open, json!({"sub": "7", "role": "user", "exp": NOW + 24 * HOUR + 1}), Err(TokenError::LifetimeTooLong)),
            (&open, json!({"sub": "7", "role": "user", "exp": 16_725_225_600_u64}), Err(TokenError::LifetimeTooLong)),
            (
                &open,
                json!({"sub": "7", "role": "user", "exp": exp, "iat": NOW - 24 * HOUR}),
                Err(TokenError::LifetimeTooLong),
            ),
            (&open, json!({"sub": "7", "role": "user", "exp": exp, "iss": "anyone"}), Ok(())),
            (&open, json!({"sub": "7", "role": "user", "exp": exp, "aud": "shop"}), Err(TokenError::WrongAudience)),
            (&strict, json!({"sub": "7", "role": "user", "exp": exp, "iss": "tianji", "aud": "shop"}), Ok(())),
            (&strict, json!({"sub": "7", "role": "user", "exp": exp, "iss": "tianji", "aud": ["x", "shop"]}), Ok(())),
            (&strict, json!({"sub": "7", "role": "user", "exp": exp, "aud": "shop"}), Err(TokenError::WrongIssuer)),
            (
                &strict,
                json!({"sub": "7", "role": "user", "exp": exp, "iss": "other", "aud": "shop"}),
                Err(TokenError::WrongIssuer),
            ),
            (&strict, json!({"sub": "7", "role": "user", "exp": exp, "iss": "tianji"}), Err(TokenError::WrongAudience)),
            (
                &strict,
                json!({"sub": "7", "role": "user", "exp": exp, "iss": "tianji", "aud": "other"}),
                Err(TokenError::WrongAudience),
            ),
            (
                &strict,
                json!({"sub": "7", "role": "user", "exp": NOW + HOUR + 1, "iss": "tianji", "aud": "shop"}),
                Err(TokenError::LifetimeTooLong),
            ),
        ];
        for (index, (keys, claims, expected)) in cases.iter().enumerate() {
            let outcome = keys.verify_at(&signed(keys, claims.clone()), NOW).map(|_| ());
            assert_eq!(&outcome, expected, "case {index}: {claims}");
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let keys = JwtKeys::new(&"s".repeat(32));
        let claims = serde_json::json!({"sub": "7", "role": "admin", "exp": NOW + 60});
        let none = format!("{}.{}.", base64_url(r#"{"alg":"none","typ":"JWT"}"#), base64_url(&claims.to_string()));
        assert_eq!(keys.verify_at(&none, NOW).unwrap_err(), TokenError::Invalid);
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(&[b's'; 32]))
                .unwrap();
        assert_eq!(keys.verify_at(&hs512, NOW).unwrap_err(), TokenError::Invalid);
        assert_eq!(keys.verify_at("not.a.token", NOW).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn minted_tokens_carry_the_configured_issuer_and_audience() {
        let rules =
            TokenRules { issuer: Some("tianji".into()), audience: Some("shop".into()), ..TokenRules::default() };
        let strict = keys(rules);
        let token = strict.mint(UserId::new(9), Role::Admin, Duration::from_secs(HOUR));
        assert!(strict.verify(&token).unwrap().is_admin());
        assert_eq!(keys(TokenRules::default()).verify(&token).unwrap_err(), TokenError::WrongAudience);
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
