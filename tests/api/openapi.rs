//! The OpenAPI document is the contract: it is served from the binary, it parses as OpenAPI 3,
//! every route the server registers is in it with its methods, and every documented response
//! says what its body is.
//!
//! The registered routes come from one place: the `#[get(..)]`-style attributes in `src/http`,
//! which are what actix routes by. Each must be in the document, and each documented route
//! must be served (a request to it is not the fallback's 404 `not_found` or 405).

use crate::helpers::{spawn_app, Backend, TestApp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const METHODS: [&str; 8] = ["get", "post", "put", "patch", "delete", "head", "options", "trace"];

/// `(method, path)` of every actix route attribute in `src/http/*.rs`.
fn route_attributes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("source");
        for line in source.lines().map(str::trim) {
            for method in METHODS {
                let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) else { continue };
                let route = rest.split('"').next().expect("a quoted path");
                routes.insert((method.to_owned(), route.to_owned()));
            }
        }
    }
    assert!(routes.len() >= 20, "found the route attributes: {routes:?}");
    routes
}

async fn document(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/openapi.json")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("the document is JSON")
}

/// `(method, path)` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_string(), path.clone()))
        })
        .collect()
}

/// What `reference` (`#/components/...`) points at in `document`.
fn resolve<'a>(document: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("a local reference: {reference}"));
    document.pointer(pointer).unwrap_or_else(|| panic!("{reference} resolves"))
}

#[actix_web::test]
async fn the_document_parses_as_openapi_3_and_every_response_has_a_schema() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document(&app).await;
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", document["openapi"]);
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(document.clone()).expect("an OpenAPI 3 document");
    assert_eq!(parsed.paths.paths.len(), document["paths"].as_object().unwrap().len());
    let schemes = document["components"]["securitySchemes"].as_object().expect("security schemes");
    assert!(schemes.contains_key("user_token") && schemes.contains_key("admin_token"));

    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][&method];
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: a success response");
        for (status, response) in responses {
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(reference) => resolve(&document, reference),
                None => response,
            };
            // `/metrics` answers the Prometheus text format; every other route JSON.
            let media = if path == "/metrics" { tianji::metrics::CONTENT_TYPE } else { "application/json" };
            let schema = &response["content"][media]["schema"];
            assert!(schema.is_object(), "{method} {path} {status}: a {media} body with a schema");
            if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
                resolve(&document, reference);
            }
            if !status.starts_with('2') {
                assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{method} {path} {status}: an error body");
            }
        }
        let secured = operation.get("security").is_some();
        let public = ["/healthz", "/readyz", "/metrics", "/v1/payments/callback"].contains(&path.as_str());
        assert_eq!(secured, !public, "{method} {path}: bearer security unless public");
        if secured {
            assert!(responses.contains_key("401"), "{method} {path}: documents 401");
        }
    }
}

#[actix_web::test]
async fn every_registered_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document(&app).await;
    let documented = operations(&document);
    let registered = route_attributes();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(undocumented.is_empty(), "registered but not in the document: {undocumented:?}");
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(unregistered.is_empty(), "in the document but not a route attribute: {unregistered:?}");

    // The library's route table (used by the 405 fallback) is the same list.
    let table: BTreeSet<(String, String)> = tianji::http::route_table()
        .into_iter()
        .flat_map(|(path, methods)| methods.into_iter().map(move |m| (m.as_str().to_lowercase(), path.clone())))
        .collect();
    assert_eq!(table, documented);

    let mut answers = BTreeMap::new();
    for (method, path) in &documented {
        let concrete = path.split('/').map(|part| if part.starts_with('{') { "1" } else { part }).collect::<Vec<_>>();
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let response = app
            .client
            .request(method.clone(), app.url(&concrete.join("/")))
            .bearer_auth(app.admin_token())
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let fallback = status == 405 || (status == 404 && body["code"] == "not_found");
        assert!(!fallback, "{method} {path} is documented but not served: {status} {body}");
        answers.insert(format!("{method} {path}"), status);
    }
    assert_eq!(answers.len(), documented.len());
}

#[actix_web::test]
async fn the_ui_is_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.client.get(app.url("/docs/")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let html = response.text().await.expect("text");
    assert!(html.contains("swagger"), "the Swagger UI page");
    let config = app.client.get(app.url("/docs/swagger-initializer.js")).send().await.expect("request");
    assert_eq!(config.status(), 200);
    assert!(config.text().await.expect("text").contains("/openapi.json"), "the UI reads /openapi.json");
}
