//! Tokens per contract (DESIGN.md §5): `sub`, `role` and `exp` are enough; `nbf`, `iat`, `iss`
//! and `aud` are checked when present or configured; a lifetime past `TIANJI_JWT_LIFETIME_MAX`
//! is refused; every refusal is a 401 with a fixed message that says nothing of the parser.

use crate::helpers::{spawn_with, AppOptions, Backend, TestApp, JWT_SECRET};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Words of serde's, jsonwebtoken's or base64's own errors: none may reach a client.
const PARSER_WORDS: &[&str] = &[
    "serde",
    "jsonwebtoken",
    "json",
    "base64",
    "line",
    "column",
    "field",
    "invalid type",
    "signature",
    "kind",
    "error",
];

enum Token {
    Claims(Value),
    Raw(String),
    Header(&'static str),
    Absent,
}

struct Case {
    what: &'static str,
    token: Token,
    /// 200, or the 401's message.
    expected: Result<(), &'static str>,
}

fn now() -> i64 {
    (tianji::domain::ids::wall_clock_ms() / 1_000) as i64
}

fn sign(claims: &Value, algorithm: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn case(what: &'static str, token: Token, expected: Result<(), &'static str>) -> Case {
    Case { what, token, expected }
}

fn open_cases() -> Vec<Case> {
    let (now, hour) = (now(), 3_600);
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "7", "role": "user", "exp": now + hour});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    };
    let admin_claims = json!({"sub": "1", "role": "admin", "exp": now + hour});
    let year_2500 = 16_725_225_600_i64;
    vec![
        case("only sub, role and exp", Token::Claims(claims(json!({}))), Ok(())),
        case("every optional claim valid", Token::Claims(claims(json!({"iat": now, "nbf": now, "iss": "x"}))), Ok(())),
        case("nbf an hour ahead", Token::Claims(claims(json!({"nbf": now + hour}))), Err("token not yet valid")),
        case("iat an hour ahead", Token::Claims(claims(json!({"iat": now + hour}))), Err("token issued in the future")),
        case("exp in 2500", Token::Claims(claims(json!({"exp": year_2500}))), Err("token lifetime too long")),
        case("exp 25 h ahead", Token::Claims(claims(json!({"exp": now + 25 * hour}))), Err("token lifetime too long")),
        case("exp in the past", Token::Claims(claims(json!({"exp": now - 10}))), Err("token expired")),
        case(
            "an aud nobody configured",
            Token::Claims(claims(json!({"aud": "shop"}))),
            Err("token audience not accepted"),
        ),
        case("no sub", Token::Claims(json!({"role": "user", "exp": now + hour})), Err(MISSING)),
        case("no role", Token::Claims(json!({"sub": "7", "exp": now + hour})), Err(MISSING)),
        case("no exp", Token::Claims(json!({"sub": "7", "role": "user"})), Err(MISSING)),
        case("sub not a number", Token::Claims(claims(json!({"sub": "seven"}))), Err("token subject is not a user id")),
        case("sub a JSON number", Token::Claims(claims(json!({"sub": 7}))), Err("invalid token")),
        case("an unknown role", Token::Claims(claims(json!({"role": "root"}))), Err("invalid token")),
        case("exp a string", Token::Claims(claims(json!({"exp": "tomorrow"}))), Err("invalid token")),
        case(
            "alg none",
            Token::Raw(format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&admin_claims.to_string()))),
            Err("invalid token"),
        ),
        case("HS512", Token::Raw(sign(&admin_claims, Algorithm::HS512, JWT_SECRET)), Err("invalid token")),
        case("HS384", Token::Raw(sign(&admin_claims, Algorithm::HS384, JWT_SECRET)), Err("invalid token")),
        case(
            "another secret",
            Token::Raw(sign(&admin_claims, Algorithm::HS256, &"x".repeat(40))),
            Err("invalid token"),
        ),
        case("not a JWT", Token::Raw("e30.e30.e30".into()), Err("invalid token")),
        case("not base64", Token::Raw("%%%.%%%.%%%".into()), Err("invalid token")),
        case("no Authorization", Token::Absent, Err("missing bearer token")),
        case("Basic instead of Bearer", Token::Header("Basic dXNlcjpwYXNz"), Err(NOT_BEARER)),
    ]
}

const MISSING: &str = "token lacks a required claim (sub, role and exp are required)";
const NOT_BEARER: &str = "the Authorization header must be 'Bearer <token>'";

fn configured_cases() -> Vec<Case> {
    let (now, hour) = (now(), 3_600);
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "7", "role": "user", "exp": now + hour});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    };
    vec![
        case("the configured iss and aud", Token::Claims(claims(json!({"iss": "tianji-test", "aud": "shop"}))), Ok(())),
        case("aud among several", Token::Claims(claims(json!({"iss": "tianji-test", "aud": ["a", "shop"]}))), Ok(())),
        case("no iss", Token::Claims(claims(json!({"aud": "shop"}))), Err("token issuer not accepted")),
        case(
            "another iss",
            Token::Claims(claims(json!({"iss": "evil", "aud": "shop"}))),
            Err("token issuer not accepted"),
        ),
        case("no aud", Token::Claims(claims(json!({"iss": "tianji-test"}))), Err("token audience not accepted")),
        case(
            "another aud",
            Token::Claims(claims(json!({"iss": "tianji-test", "aud": "x"}))),
            Err("token audience not accepted"),
        ),
        case(
            "only sub, role and exp",
            Token::Claims(json!({"sub": "7", "role": "user", "exp": now + hour})),
            Err("token issuer not accepted"),
        ),
    ]
}

async fn run(app: &TestApp, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let mut request = app.client.get(app.url("/v1/coupons?status=unused"));
        request = match &case.token {
            Token::Claims(claims) => request.bearer_auth(sign(claims, Algorithm::HS256, JWT_SECRET)),
            Token::Raw(token) => request.bearer_auth(token),
            Token::Header(value) => request.header("Authorization", *value),
            Token::Absent => request,
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let outcome = match case.expected {
            Ok(()) if status == 200 => continue,
            Err(message) if status == 401 && body["code"] == "unauthorized" && body["message"] == message => {
                let text = message.to_lowercase();
                assert!(!PARSER_WORDS.iter().any(|word| text.contains(word)), "{}: {message}", case.what);
                continue;
            }
            _ => format!("{}: expected {:?}, got {status} {body}", case.what, case.expected),
        };
        failures.push(outcome);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[actix_web::test]
async fn tokens_are_accepted_and_refused_per_contract() {
    let app = spawn_with(AppOptions::new(Backend::Sqlite)).await;
    run(&app, open_cases()).await;
}

#[actix_web::test]
async fn a_configured_issuer_and_audience_are_required() {
    let mut options = AppOptions::new(Backend::Sqlite);
    options.extra = vec![("TIANJI_JWT_ISSUER", "tianji-test".into()), ("TIANJI_JWT_AUDIENCE", "shop".into())];
    let app = spawn_with(options).await;
    run(&app, configured_cases()).await;
}

#[test]
fn the_token_command_mints_accepted_tokens_and_refuses_a_ttl_past_the_maximum() {
    let command = |ttl: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tianji"))
            .args(["token", "--user", "42", "--ttl", ttl])
            .env("TIANJI_JWT_SECRET", JWT_SECRET)
            .env("TIANJI_PAYMENT_SECRET", JWT_SECRET)
            .env("TIANJI_DATA_DIR", std::env::temp_dir().join("tianji-token-command"))
            .env("TIANJI_JWT_ISSUER", "tianji-test")
            .env("TIANJI_JWT_LIFETIME_MAX", "2h")
            .output()
            .expect("tianji token runs")
    };
    let minted = command("1h");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8(minted.stdout).unwrap();
    let rules = tianji::http::auth::TokenRules {
        issuer: Some("tianji-test".into()),
        lifetime_max: std::time::Duration::from_secs(2 * 3_600),
        ..Default::default()
    };
    let caller = tianji::http::auth::JwtKeys::with_rules(JWT_SECRET, rules).verify(token.trim()).expect("accepted");
    assert_eq!(caller.user_id, tianji::domain::UserId::new(42));
    let refused = command("3h");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("TIANJI_JWT_LIFETIME_MAX"));
}
