//! Forwarding: any node of a cluster accepts any request and hands it to the owner of its home
//! key (`home`), over this node's bounded keep-alive client (`cluster::peers::Peers`), and
//! gives the owner's answer back as it is (status, headers, body).
//!
//! Guarantees:
//! - On a single node (`Forward::off`) nothing here runs: the request goes straight on.
//! - One hop at most: a forwarded request carries `X-Tianji-Forwarded: <node id>`, and a node
//!   never forwards such a request again; if it does not own the key either (the range moved
//!   meanwhile) it answers 503 `not_owner` itself. So there are no loops during a takeover.
//! - Bounded: at most `TIANJI_PEER_IN_FLIGHT_MAX` forwards are in flight per node; past it a
//!   request is answered 503 `overloaded` at once, never queued. Every forward ends within
//!   `TIANJI_PEER_TIMEOUT`: an owner that does not answer in time, or cannot be reached, is
//!   503 `owner_unavailable` (after a timeout the outcome is unknown: the client retries with
//!   the same Idempotency-Key, which replays an order that was placed). A key whose owner is
//!   unknown (its range is being taken over) is 503 `not_owner`. Each 503 carries Retry-After.
//! - Every outcome is counted (`tianji_forwarded_requests_total{outcome}`).
//!
//! Registered inside the other layers (in-flight cap, request metrics, request ids, the body
//! guard): a forwarded request holds its place in flight here until the owner's answer is
//! back, and its body is already whole and bounded.

use super::auth::{Caller, JwtKeys};
use super::errors::ApiError;
use super::home::{home, Home};
use super::payments::{PaymentKey, SIGNATURE_HEADER};
use crate::actors::Core;
use crate::cluster::peers::{PeerError, PeerRequest, PeerResponse, Peers};
use crate::cluster::{NotOwner, Ownership};
use crate::domain::slots::Key;
use crate::domain::OrderId;
use crate::metrics::{ForwardMetrics, ForwardOutcome, Metrics};
use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use bytes::Bytes;
use futures::future::{Either, LocalBoxFuture, MapOk};
use futures::TryFutureExt;
use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;

/// The header a forwarded request carries: the id of the node that forwarded it.
pub const FORWARDED_HEADER: &str = "x-tianji-forwarded";

/// Request headers not passed on: they describe one connection, not the request (RFC 9110
/// §7.6.1), or are set again for the hop (`Host`, `Content-Length`, the forwarding mark).
const REQUEST_HEADERS_DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "host",
    "content-length",
    FORWARDED_HEADER,
];

/// Response headers not passed back: the connection's own, and the request id (this node's
/// answer carries this node's id, see `request_id`).
const RESPONSE_HEADERS_DROPPED: &[&str] =
    &["connection", "keep-alive", "transfer-encoding", "trailer", "upgrade", "content-length", "x-request-id"];

/// What a cluster node forwards with.
pub struct Forwarding {
    core: Arc<Core>,
    ownership: Arc<Ownership>,
    peers: Peers,
    keys: web::Data<JwtKeys>,
    payment_key: web::Data<PaymentKey>,
    metrics: ForwardMetrics,
}

impl Forwarding {
    /// `None` on a single node (the core joined no cluster).
    pub fn of(
        core: &Arc<Core>,
        peers: Peers,
        keys: web::Data<JwtKeys>,
        payment_key: web::Data<PaymentKey>,
        metrics: &Metrics,
    ) -> Option<Forwarding> {
        let ownership = Arc::clone(core.cluster()?);
        Some(Forwarding {
            core: Arc::clone(core),
            ownership,
            peers,
            keys,
            payment_key,
            metrics: ForwardMetrics::new(metrics),
        })
    }

    /// The caller the request's bearer token names, if it is valid.
    fn caller(&self, request: &ServiceRequest) -> Option<Caller> {
        let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        self.keys.verify(value.strip_prefix("Bearer ")?.trim()).ok()
    }

    /// The key of the user of `order_id`, read from the database; `None` when there is no
    /// such order or the database does not answer (the handler answers then).
    async fn user_of_order(&self, order_id: OrderId) -> Option<Key> {
        let order = self.core.order(order_id).await.ok()??;
        Some(Key::user(order.user_id))
    }

    /// The order a payment callback's body names, if the body is signed and names one.
    fn callback_order(&self, request: &ServiceRequest, body: &[u8]) -> Option<OrderId> {
        #[derive(serde::Deserialize)]
        struct Named {
            order_id: i64,
        }
        let signature = request.headers().get(SIGNATURE_HEADER)?.to_str().ok()?;
        if !self.payment_key.verify(body, signature) {
            return None;
        }
        OrderId::parse(serde_json::from_slice::<Named>(body).ok()?.order_id)
    }

    /// Serves `request` here or at its home key's owner.
    async fn route<S, B>(
        self: Arc<Self>,
        mut request: ServiceRequest,
        service: Rc<S>,
    ) -> Result<ServiceResponse<EitherBody<B, BoxBody>>, actix_web::Error>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    {
        let mut body = None;
        let key = match home(request.method(), request.path(), || self.caller(&request)) {
            Home::Here => None,
            Home::Key(key) => Some(key),
            Home::OrderOf(order_id) => self.user_of_order(order_id).await,
            Home::CallbackOrder => {
                let read = match super::clients::read_body(&mut request.take_payload()).await {
                    Ok(read) => read,
                    Err(error) => return Ok(request.into_response(error.error_response()).map_into_right_body()),
                };
                request.set_payload(Payload::from(read.clone()));
                let order_id = self.callback_order(&request, &read);
                body = Some(read);
                match order_id {
                    Some(order_id) => self.user_of_order(order_id).await,
                    None => None,
                }
            }
        };
        let Some(not_owner) = key.and_then(|key| self.ownership.check(key).err()) else {
            return Ok(service.call(request).await?.map_into_left_body());
        };
        let forwarded_here = request.headers().contains_key(FORWARDED_HEADER);
        let owner = not_owner.owner.clone().filter(|owner| owner != self.ownership.address());
        let Some(owner) = owner.filter(|_| !forwarded_here) else {
            // Forwarded here already, or no other live node holds the range (or only this
            // node's stale view says it does): one hop at most, and nowhere to go.
            self.metrics.record(ForwardOutcome::NotOwner);
            let not_owner =
                NotOwner { owner: not_owner.owner.filter(|owner| owner != self.ownership.address()), ..not_owner };
            return Ok(request.into_response(ApiError::not_owner(&not_owner).error_response()).map_into_right_body());
        };
        let body = match body {
            Some(body) => body,
            None => match super::clients::read_body(&mut request.take_payload()).await {
                Ok(body) => body,
                Err(error) => return Ok(request.into_response(error.error_response()).map_into_right_body()),
            },
        };
        let answer = match self.peers.send(&owner, self.peer_request(&request, body)).await {
            Ok(response) => {
                self.metrics.record(ForwardOutcome::Answered);
                tracing::debug!(owner, status = response.status, "forwarded to the key's owner");
                relayed(response)
            }
            Err(error) => self.refusal(&owner, error).error_response(),
        };
        Ok(request.into_response(answer).map_into_right_body())
    }

    /// `request` as it is, with `body`, marked as forwarded by this node.
    fn peer_request(&self, request: &ServiceRequest, body: Bytes) -> PeerRequest {
        let mut headers: Vec<(String, Vec<u8>)> = request
            .headers()
            .iter()
            .filter(|(name, _)| !REQUEST_HEADERS_DROPPED.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        headers.push((FORWARDED_HEADER.to_owned(), self.ownership.node_id().as_bytes().to_vec()));
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .expect("a method actix-web parsed is a valid method");
        let path_and_query =
            request.uri().path_and_query().map_or_else(|| request.path().to_owned(), |p| p.to_string());
        PeerRequest { method, path_and_query, headers, body }
    }

    /// The 503 of a forward that got no answer, counted.
    fn refusal(&self, owner: &str, error: PeerError) -> ApiError {
        let unavailable =
            |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "owner_unavailable", message);
        match error {
            PeerError::Busy => {
                self.metrics.record(ForwardOutcome::Overloaded);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests are being forwarded to other nodes; retry shortly",
                )
            }
            PeerError::Timeout(_) => {
                self.metrics.record(ForwardOutcome::Timeout);
                tracing::warn!(owner, "forward timed out");
                unavailable(format!(
                    "the owner of this key ({owner}) did not answer within {:?}: the request may or may not have \
                     taken effect; retry with the same Idempotency-Key",
                    self.peers.limits().timeout
                ))
            }
            PeerError::Unreachable(cause) => {
                self.metrics.record(ForwardOutcome::Unreachable);
                tracing::warn!(owner, %cause, "forward failed: owner unreachable");
                unavailable(format!(
                    "the owner of this key ({owner}) cannot be reached; retry shortly with the same Idempotency-Key"
                ))
            }
        }
    }
}

/// The owner's answer as this node's response.
fn relayed(response: PeerResponse) -> HttpResponse {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut relayed = HttpResponse::build(status);
    for (name, value) in &response.headers {
        if RESPONSE_HEADERS_DROPPED.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            relayed.append_header((name, value));
        }
    }
    relayed.body(response.body)
}

/// The middleware: `App::new().wrap(Forward::new(forwarding))`, `None` on a single node.
#[derive(Clone)]
pub struct Forward {
    forwarding: Option<Arc<Forwarding>>,
}

impl Forward {
    pub fn new(forwarding: Option<Forwarding>) -> Forward {
        Forward { forwarding: forwarding.map(Arc::new) }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Forward
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Transform = ForwardService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ForwardService { service: Rc::new(service), forwarding: self.forwarding.clone() }))
    }
}

pub struct ForwardService<S> {
    service: Rc<S>,
    forwarding: Option<Arc<Forwarding>>,
}

type Local<B> = fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B, BoxBody>>;

impl<S, B> Service<ServiceRequest> for ForwardService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Future = Either<MapOk<S::Future, Local<B>>, LocalBoxFuture<'static, Result<Self::Response, Self::Error>>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        match &self.forwarding {
            // A single node: straight on, no allocation, no look-up.
            None => Either::Left(self.service.call(request).map_ok(ServiceResponse::map_into_left_body as Local<B>)),
            Some(forwarding) => {
                Either::Right(Box::pin(Arc::clone(forwarding).route(request, Rc::clone(&self.service))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owners_answer_is_relayed_as_is_without_its_connection_headers() {
        let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
        let answer = PeerResponse {
            status: 201,
            headers: vec![
                header("content-type", "application/json"),
                header("idempotency-replayed", "true"),
                header("set-cookie", "a=1"),
                header("set-cookie", "b=2"),
                header("connection", "close"),
                header("content-length", "2"),
                header("x-request-id", "the-owners-id"),
            ],
            body: Bytes::from_static(b"{}"),
        };
        let relayed = relayed(answer);
        assert_eq!(relayed.status(), StatusCode::CREATED);
        let headers = relayed.headers();
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert_eq!(headers.get("idempotency-replayed").unwrap(), "true");
        assert_eq!(headers.get_all("set-cookie").count(), 2, "repeated headers stay repeated");
        for dropped in ["connection", "content-length", "x-request-id"] {
            assert!(!headers.contains_key(dropped), "{dropped} is this node's to set");
        }
    }
}
