//! Slow and greedy clients: what keeps a few thousand bad connections from starving the rest.
//!
//! - Request heads must arrive within `header_read_timeout` (actix's `client_request_timeout`)
//!   and an idle keep-alive connection is closed after `keep_alive`; both are set on the server
//!   in `startup`.
//! - `guard`, the outermost middleware, reads every request body before anything else sees the
//!   request: a `Content-Length` over `BODY_SIZE_MAX_BYTES` is 413 before a byte of the body is
//!   read; a body that grows past it is 413 as soon as it does; a body that has not fully
//!   arrived within `body_read_timeout` (from the end of the head) is 408 `request_timeout`.
//!   These answers close the connection. So a slow body never reaches a handler, the rate
//!   limits or the in-flight cap, and the payment callback never checks a signature over a
//!   body it is still waiting for.
//! - `ConnectionGate` counts open connections across workers. Past `connections_max`, a new
//!   connection's requests are answered 503 `too_many_connections` (with `Retry-After`) and
//!   the connection closed: a clear refusal rather than a silent queue. A quarter more than
//!   that, the workers stop accepting at all, so file descriptors stay bounded.

use super::errors::ApiError;
use super::BODY_SIZE_MAX_BYTES;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Settings `TIANJI_BODY_READ_TIMEOUT`, `TIANJI_HEADER_READ_TIMEOUT`, `TIANJI_KEEP_ALIVE` and
/// `TIANJI_CONNECTIONS_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From the end of the request head to the last byte of its body.
    pub body_read_timeout: Duration,
    /// From accepting a connection (or the end of the previous response) to the end of a head.
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection is kept; zero turns keep-alive off.
    pub keep_alive: Duration,
    /// Open connections served, across all workers.
    pub connections_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            body_read_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            connections_max: 10_000,
        }
    }
}

/// How long a closing connection may take to flush its last response.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections waiting in the kernel to be accepted.
pub const BACKLOG_MAX: u32 = 4_096;

/// Counts open connections; `admit` runs on every new connection (`HttpServer::on_connect`).
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    open: Arc<AtomicUsize>,
    connections_max: usize,
}

/// Held in a connection's data while it is open: whether it came over the limit.
struct ConnectionTicket {
    over_limit: bool,
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        let before = self.open.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "a connection closed that was never counted");
    }
}

impl ConnectionGate {
    pub fn new(connections_max: usize) -> Self {
        assert!(connections_max > 0, "at least one connection is served");
        ConnectionGate { open: Arc::new(AtomicUsize::new(0)), connections_max }
    }

    /// Counts a new connection and marks it if it is over the limit.
    pub fn admit(&self, connection: &mut Extensions) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        connection.insert(ConnectionTicket { over_limit: open > self.connections_max, open: Arc::clone(&self.open) });
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Actix's per-worker accept limit: a quarter over the served limit, shared by the workers,
    /// so refusals can still be answered while descriptors stay bounded.
    pub fn accept_max_per_worker(&self, workers: usize) -> usize {
        assert!(workers > 0);
        (self.connections_max + self.connections_max.div_ceil(4)).div_ceil(workers)
    }
}

/// The outermost middleware (see the module doc): refuses connections over the limit, then
/// reads the whole body under the size limit and the read timeout, then hands the request on
/// with its body in memory.
pub async fn guard(
    limits: ClientLimits,
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let over_limit = request.conn_data::<ConnectionTicket>().is_some_and(|ticket| ticket.over_limit);
    if over_limit {
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("the server holds its maximum of {} connections; retry shortly", limits.connections_max),
        );
        return Ok(request.into_response(closing(error)));
    }
    if declared_length(&request).is_some_and(|length| length > BODY_SIZE_MAX_BYTES) {
        return Ok(request.into_response(closing(too_large())));
    }
    let mut payload = request.take_payload();
    let body = match tokio::time::timeout(limits.body_read_timeout, read_body(&mut payload)).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return Ok(request.into_response(closing(error))),
        Err(_elapsed) => {
            let error = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body must arrive within {} ms", limits.body_read_timeout.as_millis()),
            );
            return Ok(request.into_response(closing(error)));
        }
    };
    debug_assert!(body.len() <= BODY_SIZE_MAX_BYTES);
    request.set_payload(Payload::from(body));
    Ok(next.call(request).await?.map_into_boxed_body())
}

/// The body's declared length; `None` without the header (chunked or empty). An unparsable
/// header never gets here: the HTTP parser refuses it.
fn declared_length(request: &ServiceRequest) -> Option<usize> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads a whole body of at most `BODY_SIZE_MAX_BYTES` (413 past it).
pub(crate) async fn read_body(payload: &mut Payload) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| {
            tracing::debug!(%error, "request body unreadable");
            ApiError::bad_request("malformed_request", "the request body could not be read")
        })?;
        if body.len() + chunk.len() > BODY_SIZE_MAX_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request bodies are limited to {BODY_SIZE_MAX_BYTES} bytes"),
    )
}

/// The error's response, closing the connection: what is left of the body is never read.
fn closing(error: ApiError) -> HttpResponse {
    let mut response = error.error_response();
    response.head_mut().set_connection_type(ConnectionType::Close);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_open_connections_and_mark_those_over_the_limit() {
        let gate = ConnectionGate::new(2);
        let mut connections: Vec<Extensions> = (0..3).map(|_| Extensions::new()).collect();
        for connection in &mut connections {
            gate.admit(connection);
        }
        let over: Vec<bool> = connections.iter().map(|c| c.get::<ConnectionTicket>().unwrap().over_limit).collect();
        assert_eq!(over, [false, false, true]);
        assert_eq!(gate.open(), 3);
        connections.truncate(1);
        assert_eq!(gate.open(), 1);
        assert_eq!(gate.accept_max_per_worker(2), 2);
        assert_eq!(ConnectionGate::new(10_000).accept_max_per_worker(4), 3_125);
    }
}
