//! The OpenAPI 3 document of the API, generated from the code: every handler carries a
//! `#[utoipa::path]` and is registered through `utoipa_actix_web`, so the document lists exactly
//! the routes `super::routes` registers (a handler without a path description does not compile
//! there). This module adds what no handler says: the title, the bearer security schemes, the
//! shared error responses, and serves the document at `/openapi.json` with a browsable UI at
//! `/docs` (its assets are compiled into the binary).

use super::errors::ErrorBody;
use actix_web::http::{header, Method};
use actix_web::{web, HttpResponse};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToResponse};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where the browsable UI is served (`/docs/` and everything under it).
pub const UI_PATH: &str = "/docs";

/// The security scheme of a user's bearer token (`role` `user` or `admin`).
pub const USER_TOKEN: &str = "user_token";
/// The security scheme of an admin's bearer token (`role` `admin`).
pub const ADMIN_TOKEN: &str = "admin_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tianji",
        description = "Flash sales: SKUs, coupons, orders, payments and learning progress. Errors are \
                       `{code, message}`; each response lists the codes it can carry. Ids are JSON \
                       numbers, repeated as strings in `*_str` fields for JavaScript clients. Any \
                       route may also answer 405 `method_not_allowed` (with `Allow`) to another \
                       method on its path, and 408 `request_timeout` to a body that arrives too slowly."
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody),
        responses(Malformed, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, RateLimited, Unavailable)
    ),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "skus", description = "SKUs (a course is a SKU), their stock and sale"),
        (name = "coupons", description = "Coupon templates and the coupons users receive"),
        (name = "orders", description = "Orders and their lifecycle"),
        (name = "payments", description = "The payment provider's signed callback"),
        (name = "learning", description = "Owned courses, heartbeats and progress"),
        (name = "cluster", description = "Members and range leases of a cluster, and where a key lives"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            USER_TOKEN,
            bearer("HS256 JWT: `sub` the user id as a decimal string, `role` `user` or `admin`, `exp` required."),
        );
        components.add_security_scheme(ADMIN_TOKEN, bearer("HS256 JWT with `role` `admin`."));
    }
}

/// The document before any route is added: info, security schemes, shared responses.
pub fn base() -> Document {
    ApiDoc::openapi()
}

/// Serves `document` at `DOCUMENT_PATH` and the UI under `UI_PATH/`; `UI_PATH` itself
/// redirects there.
pub fn serve(document: Document) -> (SwaggerUi, actix_web::Resource) {
    let ui = SwaggerUi::new(format!("{UI_PATH}/{{_:.*}}")).url(DOCUMENT_PATH, document);
    let redirect = web::resource(UI_PATH).route(web::get().to(|| async {
        HttpResponse::PermanentRedirect().insert_header((header::LOCATION, format!("{UI_PATH}/"))).finish()
    }));
    (ui, redirect)
}

/// Every `(path pattern, methods)` the document describes, e.g. `("/v1/orders", [GET, POST])`.
/// The patterns are actix's (`/v1/skus/{sku_id}`), in the document's (sorted) order.
pub fn route_table(document: &Document) -> Vec<(String, Vec<Method>)> {
    let methods = |item: &utoipa::openapi::PathItem| {
        let operations = [
            (HttpMethod::Get, &item.get),
            (HttpMethod::Post, &item.post),
            (HttpMethod::Put, &item.put),
            (HttpMethod::Patch, &item.patch),
            (HttpMethod::Delete, &item.delete),
            (HttpMethod::Head, &item.head),
            (HttpMethod::Options, &item.options),
            (HttpMethod::Trace, &item.trace),
        ];
        operations
            .into_iter()
            .filter(|(_, operation)| operation.is_some())
            .map(|(method, _)| to_method(method))
            .collect()
    };
    document.paths.paths.iter().map(|(path, item)| (path.clone(), methods(item))).collect()
}

fn to_method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// An error response: `description` names the codes it carries; the body is `ErrorBody`.
fn error_response(description: &str, retry_after: bool) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        utoipa::openapi::ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            utoipa::openapi::HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

macro_rules! error_response {
    ($name:ident, $description:literal, $retry_after:literal) => {
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), RefOr::T(error_response($description, $retry_after)))
            }
        }
    };
}

error_response!(Malformed, "`malformed_request`: the body is not JSON of the documented shape.", false);
error_response!(
    Unauthorized,
    "`unauthorized`: no `Authorization: Bearer` token, or one that is invalid or expired.",
    false
);
error_response!(Forbidden, "`forbidden`: the route needs an admin token.", false);
error_response!(PayloadTooLarge, "`payload_too_large`: the body is larger than 64 KiB.", false);
error_response!(UnsupportedMediaType, "`unsupported_media_type`: the body is not `application/json`.", false);
error_response!(RateLimited, "`rate_limited`: this user sends too fast; retry after `Retry-After` seconds.", true);
error_response!(
    Unavailable,
    "`overloaded` (too many requests in flight, for this key, or forwarded to other nodes), \
     `too_many_connections` (this connection is over the connection limit), `unavailable` (the \
     database does not answer), and on a cluster node `not_owner` (no node holds the key's range \
     now, or the request was forwarded here already) or `owner_unavailable` (the node owning the \
     key did not answer: after a timeout the request may have taken effect; retry with the same \
     Idempotency-Key); retry after `Retry-After` seconds.",
    true
);
