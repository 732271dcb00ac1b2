//! `GET /metrics` (Prometheus text format, see `crate::metrics`): the app's own recorder, the
//! core's `Metrics`, rendered; and the middleware that counts every answered request by
//! method, route pattern and status (`tianji_http_requests_total`) into that recorder.
//!
//! Per request the middleware does no look-up by string: the route is the resource actix
//! matched, identified by the address of its name in this worker's route map (which lives, and
//! stays put, as long as the worker's app); each worker resolves a resource to its route's
//! counters once, on the resource's first request. The status is bucketed by a `match` into a
//! fixed array of counters per route, each registered on its first use. So a request costs a
//! walk of the matched resource's index path, a scan of at most `ROUTES_MAX` addresses and one
//! atomic add.
//!
//! It is registered inside the in-flight cap: a request that cap refuses never reached a route
//! and is counted by `tianji_in_flight_refused_total` instead. `/metrics` needs no token and is
//! exempt from the in-flight cap (see `in_flight`).

use super::AppState;
use crate::metrics::Metrics;
use ::metrics::Counter;
use actix_web::body::MessageBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{Method, StatusCode};
use actix_web::{get, web, HttpRequest, HttpResponse};
use pin_project_lite::pin_project;
use std::cell::{OnceCell, RefCell};
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// The route label of a request no resource matched (404, 405) or that failed before one did.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The most (method, route) pairs one worker tells apart; past it requests count under method
/// `other` and `UNMATCHED_ROUTE`. The API has about 25, plus 404s and 405s by method; the bound
/// keeps the scan short and the label values few whatever clients send.
pub const ROUTES_MAX: usize = 64;

/// The status codes the API answers, each with its own counter; any other code is counted
/// under its class (`STATUS_CLASSES`).
const STATUSES: [(u16, &str); 17] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (503, "503"),
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATUS_SLOTS: usize = STATUSES.len() + STATUS_CLASSES.len();

/// The index of `status`'s counter: its own for a code in `STATUSES`, else its class's.
fn status_slot(status: StatusCode) -> usize {
    let code = status.as_u16();
    let own = match code {
        200 => Some(0),
        201 => Some(1),
        202 => Some(2),
        204 => Some(3),
        304 => Some(4),
        400 => Some(5),
        401 => Some(6),
        403 => Some(7),
        404 => Some(8),
        405 => Some(9),
        408 => Some(10),
        409 => Some(11),
        413 => Some(12),
        415 => Some(13),
        422 => Some(14),
        429 => Some(15),
        503 => Some(16),
        _ => None,
    };
    // `StatusCode` holds 100..=999; codes past 5xx count as 5xx.
    own.unwrap_or_else(|| STATUSES.len() + usize::from(code / 100).clamp(1, 5) - 1)
}

fn status_label(slot: usize) -> &'static str {
    match STATUSES.get(slot) {
        Some((_, label)) => label,
        None => STATUS_CLASSES[slot - STATUSES.len()],
    }
}

/// The method label: the method's name for the standard ones, else `other` (a client's
/// invented method never becomes a label value of its own).
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    const LABELS: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"];
    STANDARD.iter().position(|standard| standard == method).map_or("other", |index| LABELS[index])
}

/// The counters of one route (method and pattern), one per status slot, each registered on its
/// first request.
struct RouteCounters {
    method: &'static str,
    route: String,
    by_status: [OnceCell<Counter>; STATUS_SLOTS],
    recorder: Metrics,
}

impl RouteCounters {
    fn new(method: &'static str, route: String, recorder: &Metrics) -> Self {
        RouteCounters { method, route, by_status: std::array::from_fn(|_| OnceCell::new()), recorder: recorder.clone() }
    }

    fn count(&self, status: StatusCode) {
        let slot = status_slot(status);
        let counter = self.by_status[slot].get_or_init(|| {
            let labels = [("method", self.method), ("route", self.route.as_str()), ("status", status_label(slot))];
            self.recorder.counter(&crate::metrics::HTTP_REQUESTS, &labels)
        });
        counter.increment(1);
    }
}

/// One worker's routes.
struct Routes {
    /// The named resources seen so far, by the address and length of their name in the
    /// worker's route map: the per-request look-up.
    resolved: RefCell<Vec<(*const u8, usize, Rc<RouteCounters>)>>,
    /// Every (method, route) counted so far, at most `ROUTES_MAX`.
    known: RefCell<Vec<Rc<RouteCounters>>>,
    /// Requests past `ROUTES_MAX` routes, and those that failed without a response.
    overflow: Rc<RouteCounters>,
}

impl Routes {
    fn new(recorder: &Metrics) -> Self {
        Routes {
            resolved: RefCell::new(Vec::new()),
            known: RefCell::new(Vec::new()),
            overflow: Rc::new(RouteCounters::new("other", UNMATCHED_ROUTE.to_owned(), recorder)),
        }
    }

    fn count(&self, request: &HttpRequest, status: StatusCode) {
        match request.match_name() {
            Some(name) if !name.is_empty() => self.named(request, name).count(status),
            _ => self.unnamed(request).count(status),
        }
    }

    /// A named resource's counters. The name is a `String` inside the worker's route map,
    /// which is built before the first request and never changes, so its address names the
    /// resource for the worker's life (resources in different modules may share a name, never
    /// an address). Each resource the route macros make answers one method.
    fn named(&self, request: &HttpRequest, name: &str) -> Rc<RouteCounters> {
        let address = (name.as_ptr(), name.len());
        let resolved = self.resolved.borrow().iter().find(|(ptr, len, _)| (*ptr, *len) == address).map(|e| e.2.clone());
        if let Some(counters) = resolved {
            return counters;
        }
        let counters = self.unnamed(request);
        let mut resolved = self.resolved.borrow_mut();
        if resolved.len() < ROUTES_MAX {
            resolved.push((address.0, address.1, Rc::clone(&counters)));
        }
        counters
    }

    /// The counters of a request by its method and matched pattern (`UNMATCHED_ROUTE` when
    /// none matched): a look-up by string, taken only on a named resource's first request and
    /// by requests no named resource took (the OpenAPI UI, 404s, 405s).
    fn unnamed(&self, request: &HttpRequest) -> Rc<RouteCounters> {
        let method = method_label(request.method());
        let route = request.match_pattern().unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
        if let Some(counters) = self.known.borrow().iter().find(|c| c.method == method && c.route == route) {
            return Rc::clone(counters);
        }
        let mut known = self.known.borrow_mut();
        if known.len() >= ROUTES_MAX {
            return Rc::clone(&self.overflow);
        }
        let counters = Rc::new(RouteCounters::new(method, route, &self.overflow.recorder));
        known.push(Rc::clone(&counters));
        counters
    }
}

/// The middleware: `App::new().wrap(RequestMetrics::new(metrics))`, counting into the app's
/// recorder.
pub struct RequestMetrics {
    recorder: Metrics,
}

impl RequestMetrics {
    pub fn new(recorder: Metrics) -> Self {
        RequestMetrics { recorder }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestMetricsService { service, routes: Rc::new(Routes::new(&self.recorder)) }))
    }
}

pub struct RequestMetricsService<S> {
    service: S,
    routes: Rc<Routes>,
}

impl<S, B> Service<ServiceRequest> for RequestMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Counted<S::Future>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        Counted { response: self.service.call(request), routes: Rc::clone(&self.routes) }
    }
}

pin_project! {
    /// The inner service's response, counted once it is built.
    pub struct Counted<F> {
        #[pin]
        response: F,
        routes: Rc<Routes>,
    }
}

impl<F, B> Future for Counted<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.response.poll(cx));
        match &result {
            Ok(response) => this.routes.count(response.request(), response.status()),
            Err(error) => this.routes.overflow.count(error.as_response_error().status_code()),
        }
        Poll::Ready(result)
    }
}

#[utoipa::path(
    tag = "health",
    responses((status = 200, description = "Every metric of the node in the Prometheus text exposition format \
        (0.0.4); needs no token and is never refused by the in-flight cap",
        body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type(crate::metrics::CONTENT_TYPE).body(state.core.metrics().render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_by_name_and_invented_ones_as_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[test]
    fn every_status_has_one_slot_and_its_label_names_it() {
        for (slot, (code, label)) in STATUSES.iter().enumerate() {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(status_slot(status), slot, "{code}");
            assert_eq!(status_label(slot), *label);
        }
        let classes =
            [(101, "1xx"), (206, "2xx"), (302, "3xx"), (418, "4xx"), (500, "5xx"), (599, "5xx"), (999, "5xx")];
        for (code, class) in classes {
            assert_eq!(status_label(status_slot(StatusCode::from_u16(code).unwrap())), class, "{code}");
        }
    }
}
