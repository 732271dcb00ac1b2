//! What a request no route took gets: 405 `method_not_allowed` with `Allow` when its path is a
//! route's and only the method is wrong, else 404 `not_found`. It knows the routes only as a
//! list of `(path pattern, methods)` (actix patterns, `/v1/orders/{order_id}`), so it does not
//! care how the routes are registered; `super::route_table` derives the list from the same
//! registration the router uses.

use super::errors::ApiError;
use actix_web::dev::ResourceDef;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};

/// The routes' patterns and their methods.
pub struct RouteTable {
    routes: Vec<(ResourceDef, Vec<Method>)>,
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = (String, Vec<Method>)>) -> Self {
        let routes: Vec<_> =
            routes.into_iter().map(|(pattern, methods)| (ResourceDef::new(pattern), methods)).collect();
        assert!(routes.iter().all(|(_, methods)| !methods.is_empty()), "a route has at least one method");
        RouteTable { routes }
    }

    /// The methods routes with a pattern matching `path` take, sorted; empty if none matches.
    pub fn allowed(&self, path: &str) -> Vec<Method> {
        let mut allowed: Vec<Method> = self
            .routes
            .iter()
            .filter(|(pattern, _)| pattern.is_match(path))
            .flat_map(|(_, methods)| methods.iter().cloned())
            .collect();
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        allowed
    }

    /// The answer to `request`, which no route took.
    pub fn answer(&self, request: &HttpRequest) -> HttpResponse {
        let allowed = self.allowed(request.path());
        if allowed.is_empty() {
            return ApiError::not_found("not_found", "no such route").error_response();
        }
        debug_assert!(!allowed.contains(request.method()), "a route took no request of its own method");
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} {} is not a route; this path takes {}", request.method(), request.path(), names.join(", ")),
        )
        .error_response();
        let allow = header::HeaderValue::from_str(&names.join(", ")).expect("method names are valid header text");
        response.headers_mut().insert(header::ALLOW, allow);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new([
            ("/v1/orders".to_owned(), vec![Method::POST]),
            ("/v1/orders".to_owned(), vec![Method::GET]),
            ("/v1/orders/{order_id}".to_owned(), vec![Method::GET]),
            ("/v1/orders/{order_id}/cancel".to_owned(), vec![Method::POST]),
        ])
    }

    #[test]
    fn methods_are_those_of_every_matching_pattern() {
        let table = table();
        assert_eq!(table.allowed("/v1/orders"), [Method::GET, Method::POST]);
        assert_eq!(table.allowed("/v1/orders/42"), [Method::GET]);
        assert_eq!(table.allowed("/v1/orders/42/cancel"), [Method::POST]);
        assert!(table.allowed("/v1/orders/42/cancel/now").is_empty());
        assert!(table.allowed("/v1/order").is_empty());
    }

    #[actix_web::test]
    async fn a_wrong_method_is_405_with_allow_and_an_unknown_path_404() {
        let table = table();
        let request = actix_web::test::TestRequest::delete().uri("/v1/orders").to_http_request();
        let response = table.answer(&request);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, POST");
        let request = actix_web::test::TestRequest::get().uri("/v2/nothing").to_http_request();
        assert_eq!(table.answer(&request).status(), StatusCode::NOT_FOUND);
    }
}
