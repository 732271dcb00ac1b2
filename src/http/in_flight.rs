//! A global cap on requests in flight: past `in_flight_max` requests being served at once (from
//! the moment this layer gets the request until its response is built), a new request is
//! answered 503 `overloaded` with `Retry-After` at once instead of queueing behind the others.
//! Registered inside the slow-client guard (`clients::guard`), which reads the body first with a
//! timeout of its own, so a slow body holds a connection but never a place here. By Little's
//! law a node that answers N requests a second holds N x latency in flight; past the cap the
//! queue would only add latency to every request, so refusing early keeps the admitted ones
//! fast.
//!
//! The health routes (`/healthz`, `/readyz`, `/metrics`) are exempt: an orchestrator must see
//! an overloaded node as alive, and an overloaded node is when its metrics matter most (a
//! scrape is one request per scrape interval, so it cannot be what overloads it). The count is
//! shared by every HTTP worker of the server; refusals are counted
//! (`tianji_in_flight_refused_total`).

use super::errors::ApiError;
use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::StatusCode;
use actix_web::ResponseError;
use futures::future::LocalBoxFuture;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Paths never refused by the cap.
const EXEMPT_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The count of requests in flight and its maximum, shared by every worker.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
    refused_total: AtomicU64,
    refused: metrics::Counter,
}

impl InFlight {
    pub fn new(max: usize) -> Arc<InFlight> {
        InFlight::measured(max, metrics::Counter::noop())
    }

    /// `new`, counting refusals on `refused` too (`tianji_in_flight_refused_total`).
    pub fn measured(max: usize, refused: metrics::Counter) -> Arc<InFlight> {
        assert!(max > 0, "at least one request can be in flight");
        Arc::new(InFlight { count: AtomicUsize::new(0), max, refused_total: AtomicU64::new(0), refused })
    }

    /// Requests being served now (health routes not counted).
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// A permit if fewer than `max` requests are in flight; it counts until dropped.
    pub fn try_enter(self: &Arc<Self>) -> Option<Permit> {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            self.refused.increment(1);
            return None;
        }
        Some(Permit { in_flight: Arc::clone(self) })
    }
}

/// One request in flight.
pub struct Permit {
    in_flight: Arc<InFlight>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.in_flight.count.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a permit is counted while it lives");
    }
}

/// The middleware: `App::new().wrap(InFlightCap::new(Arc::clone(&in_flight)))`.
pub struct InFlightCap {
    in_flight: Arc<InFlight>,
}

impl InFlightCap {
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        InFlightCap { in_flight }
    }
}

impl<S, B> Transform<S, ServiceRequest> for InFlightCap
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = InFlightService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(InFlightService { service, in_flight: Arc::clone(&self.in_flight) }))
    }
}

pub struct InFlightService<S> {
    service: S,
    in_flight: Arc<InFlight>,
}

impl<S, B> Service<ServiceRequest> for InFlightService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    /// Counts the request here, synchronously (before the inner service is called), until its
    /// response is built.
    fn call(&self, request: ServiceRequest) -> Self::Future {
        let permit = if EXEMPT_PATHS.contains(&request.path()) {
            None
        } else {
            match self.in_flight.try_enter() {
                Some(permit) => Some(permit),
                None => {
                    let error = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "the server is at its limit of requests in flight; retry shortly",
                    );
                    let response = request.into_response(error.error_response()).map_into_right_body();
                    return Box::pin(ready(Ok(response)));
                }
            }
        };
        let response = self.service.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response.map(ServiceResponse::map_into_left_body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as actix_test;
    use actix_web::{web, App, HttpResponse};
    use tokio::sync::Notify;

    #[test]
    fn permits_count_up_to_the_max_and_release_on_drop() {
        let in_flight = InFlight::new(2);
        let first = in_flight.try_enter().expect("1 of 2");
        let second = in_flight.try_enter().expect("2 of 2");
        assert!(in_flight.try_enter().is_none(), "3 of 2 is refused");
        assert_eq!((in_flight.count(), in_flight.refused_total()), (2, 1));
        drop(first);
        let third = in_flight.try_enter().expect("a released permit makes room");
        drop((second, third));
        assert_eq!(in_flight.count(), 0);
    }

    /// Cap 1, one request held inside its handler by a gate: the next is refused at once with
    /// 503 `overloaded`, health is still answered, and once the held one is answered the place
    /// is free again. The held request is counted when `call` returns, so no waiting is needed.
    #[actix_web::test]
    async fn past_the_cap_a_request_is_refused_at_once_and_health_is_exempt() {
        let in_flight = InFlight::new(1);
        let gate = Arc::new(Notify::new());
        let held_gate = Arc::clone(&gate);
        let app = actix_test::init_service(
            App::new()
                .wrap(InFlightCap::new(Arc::clone(&in_flight)))
                .route(
                    "/slow",
                    web::get().to(move || {
                        let gate = Arc::clone(&held_gate);
                        async move {
                            gate.notified().await;
                            HttpResponse::Ok().finish()
                        }
                    }),
                )
                .route("/fast", web::get().to(HttpResponse::Ok))
                .route("/healthz", web::get().to(HttpResponse::Ok)),
        )
        .await;

        let held = app.call(actix_test::TestRequest::get().uri("/slow").to_request());
        assert_eq!(in_flight.count(), 1, "counted from the call on");
        let refused = actix_test::call_service(&app, actix_test::TestRequest::get().uri("/fast").to_request()).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers().get(actix_web::http::header::RETRY_AFTER).unwrap(), "1");
        let body: serde_json::Value = actix_test::read_body_json(refused).await;
        assert_eq!(body["code"], "overloaded");
        let health = actix_test::call_service(&app, actix_test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(health.status(), StatusCode::OK, "health routes are exempt");
        assert_eq!((in_flight.count(), in_flight.refused_total()), (1, 1));

        gate.notify_one();
        let held = held.await.expect("the held request is answered");
        assert_eq!(held.status(), StatusCode::OK);
        assert_eq!(in_flight.count(), 0, "an answered request frees its place");
        let next = actix_test::call_service(&app, actix_test::TestRequest::get().uri("/fast").to_request()).await;
        assert_eq!(next.status(), StatusCode::OK);
    }
}
