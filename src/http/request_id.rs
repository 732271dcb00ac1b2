//! Request ids: every request the app serves gets a fresh id (a random UUID, minted by
//! `tracing-actix-web`'s `TracingLogger`), a span `request{request_id, method, path}` that
//! everything done for it is logged in, and the id back in the `X-Request-Id` response header,
//! whatever answered it: a handler, the fallback (404/405), or a middleware (the body guard's
//! 413/408/503, the in-flight cap's 503, the rate limits' 429). Register it outermost:
//! `.wrap(RequestIds::returned()).wrap(RequestIds::traced())`, the second wrap outside the first.
//!
//! A client's own `X-Request-Id` is never used as the id: the id is the key that joins a
//! request's log lines, actor spans and pipeline batches, and a key a client chooses can be
//! reused or copied from another client's request, merging their traces. A client id of at
//! most `CLIENT_REQUEST_ID_LEN_MAX_BYTES` bytes of `[A-Za-z0-9._:-]` is recorded beside ours
//! (`client_request_id`) so a caller can find its request; anything else is ignored, so a
//! hostile header can neither bloat nor forge log lines.
//!
//! Answers actix-web gives before a request reaches the app (a head that cannot be parsed or
//! does not arrive within `TIANJI_HEADER_READ_TIMEOUT`) have no request and so no id.

use actix_web::body::MessageBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage};
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tracing::field::Empty;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder, TracingLogger};

/// The response header that carries the request id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent `X-Request-Id` recorded, in bytes.
pub const CLIENT_REQUEST_ID_LEN_MAX_BYTES: usize = 64;

/// The two layers of request ids.
pub struct RequestIds;

impl RequestIds {
    /// Mints the id and opens the request span (outer).
    pub fn traced() -> TracingLogger<RequestSpan> {
        TracingLogger::new()
    }

    /// Puts the id on every response (inner: it reads the id `traced` minted).
    pub fn returned() -> ReturnRequestId {
        ReturnRequestId
    }
}

/// The request span: one per request, at INFO, so it is recorded under the default filter
/// and every event of the request (a warning from a handler, an actor's debug line) names it.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request.extensions().get::<RequestId>().copied();
        let span = tracing::info_span!(
            "request",
            request_id = request_id.map(tracing::field::display),
            method = %request.method(),
            path = request.path(),
            client_request_id = Empty,
            status = Empty,
        );
        if span.is_disabled() {
            return span;
        }
        if let Some(id) = request_id {
            crate::telemetry::tag_request(&span, id.into());
        }
        if let Some(client) = client_request_id(request.headers()) {
            span.record("client_request_id", client);
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        // Only an exporter sees a span's fields after its last event: text and JSON logs
        // never show it, so the default build does not pay for it.
        if cfg!(feature = "otlp") {
            let status = match outcome {
                Ok(response) => response.status(),
                Err(error) => error.as_response_error().status_code(),
            };
            span.record("status", status.as_u16());
        }
    }
}

/// A client's `X-Request-Id`, if it is short and plain enough to record.
pub fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    let acceptable = (1..=CLIENT_REQUEST_ID_LEN_MAX_BYTES).contains(&value.len()) && value.bytes().all(plain);
    acceptable.then_some(value)
}

/// The header value of an id: its 36 hyphenated lowercase hex digits.
fn header_value(id: RequestId) -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("hex digits and hyphens are valid header text")
}

/// The middleware that sets `X-Request-Id` on the response.
pub struct ReturnRequestId;

impl<S, B> Transform<S, ServiceRequest> for ReturnRequestId
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = ReturnRequestIdService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ReturnRequestIdService { service }))
    }
}

pub struct ReturnRequestIdService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for ReturnRequestIdService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = WithRequestId<S::Future>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let id = request.extensions().get::<RequestId>().copied();
        debug_assert!(id.is_some(), "TracingLogger wraps this layer and mints the id first");
        WithRequestId { response: self.service.call(request), id }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, with the id set on it (no allocation beyond the header).
    pub struct WithRequestId<F> {
        #[pin]
        response: F,
        id: Option<RequestId>,
    }
}

impl<F, B> Future for WithRequestId<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Every layer of the app answers its refusals itself (`Ok`), and a handler's error is
        // answered by its route, so no error escapes without its response.
        let mut response = ready!(this.response.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID_HEADER, header_value(id));
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::errors::ApiError;
    use actix_web::middleware::Next;
    use actix_web::test as actix_test;
    use actix_web::{web, App, HttpResponse, ResponseError};

    #[test]
    fn client_ids_are_recorded_only_when_short_and_plain() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(value).unwrap());
            client_request_id(&headers).map(str::to_owned)
        };
        assert_eq!(with("web-7f3a.retry_2:eu").as_deref(), Some("web-7f3a.retry_2:eu"));
        assert_eq!(with(&"a".repeat(CLIENT_REQUEST_ID_LEN_MAX_BYTES)).map(|v| v.len()), Some(64));
        assert_eq!(with(&"a".repeat(CLIENT_REQUEST_ID_LEN_MAX_BYTES + 1)), None);
        assert_eq!(with(""), None);
        assert_eq!(with("a b"), None);
        assert_eq!(with("id\"} {\"level\":\"ERROR"), None);
        assert_eq!(client_request_id(&HeaderMap::new()), None);
    }

    /// Answers from a handler, from an error and from a middleware inside these layers all
    /// carry a distinct 36-character id.
    #[actix_web::test]
    async fn every_answer_carries_its_own_id() {
        let app = actix_test::init_service(
            App::new()
                .route("/ok", web::get().to(HttpResponse::Ok))
                .route("/failing", web::get().to(|| async { Err::<HttpResponse, _>(ApiError::forbidden("no")) }))
                .wrap(actix_web::middleware::from_fn(|request: ServiceRequest, next: Next<_>| async move {
                    if request.path() == "/refused" {
                        return Ok(request.into_response(ApiError::overloaded().error_response()));
                    }
                    Ok(next.call(request).await?.map_into_boxed_body())
                }))
                .wrap(RequestIds::returned())
                .wrap(RequestIds::traced()),
        )
        .await;
        let mut seen = std::collections::HashSet::new();
        for (path, status) in [("/ok", 200), ("/failing", 403), ("/refused", 503), ("/missing", 404), ("/ok", 200)] {
            let response = actix_test::call_service(&app, actix_test::TestRequest::get().uri(path).to_request()).await;
            assert_eq!(response.status().as_u16(), status, "{path}");
            let id = response.headers().get(REQUEST_ID_HEADER).expect("an id").to_str().unwrap().to_owned();
            assert_eq!(id.len(), 36, "{id}");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            assert!(seen.insert(id), "ids differ between requests");
        }
    }
}
