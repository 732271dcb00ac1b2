//! Draining: the node's state from the moment it is told to stop (SIGTERM or SIGINT) until it
//! exits. While it drains:
//!
//! - `/readyz` answers 503 `draining`, so a load balancer stops routing new work here;
//! - every response carries `Connection: close`, so a keep-alive client never sends another
//!   request into a connection the node is about to close: it opens a new one, which the load
//!   balancer sends elsewhere (or which this node still answers while it listens);
//! - nothing else changes: requests are served in full, and the node keeps listening until its
//!   connections are gone (see `startup::Application::run_until`).
//!
//! The flag only ever goes from serving to draining.

use actix_web::body::MessageBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::ConnectionType;
use actix_web::Error;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Whether the node drains; shared by every HTTP worker and the shutdown sequence.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Starts draining; idempotent.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Middleware: a response produced while the node drains closes its connection. The flag is
/// read once the response exists, so a request that started before the drain and ends during
/// it closes its connection too. Per request it costs no allocation and no atomic write: the
/// inner future is wrapped in place, and each worker shares the flag through an `Rc` of its own.
pub struct CloseWhenDraining {
    drain: Arc<Drain>,
}

impl CloseWhenDraining {
    pub fn new(drain: Arc<Drain>) -> Self {
        CloseWhenDraining { drain }
    }
}

impl<S, B> Transform<S, ServiceRequest> for CloseWhenDraining
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = CloseWhenDrainingService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CloseWhenDrainingService { service, drain: Rc::new(Arc::clone(&self.drain)) }))
    }
}

/// This worker's handle on the shared flag: a request clones the `Rc` (a plain increment on
/// the worker's thread) instead of the `Arc`, whose count every worker would write.
type WorkerDrain = Rc<Arc<Drain>>;

pub struct CloseWhenDrainingService<S> {
    service: S,
    drain: WorkerDrain,
}

impl<S, B> Service<ServiceRequest> for CloseWhenDrainingService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Closing<S::Future>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        Closing { response: self.service.call(request), drain: Rc::clone(&self.drain) }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, told to close its connection if the node drains by then.
    pub struct Closing<F> {
        #[pin]
        response: F,
        drain: WorkerDrain,
    }
}

impl<F, B> Future for Closing<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.response.poll(cx))?;
        if this.drain.is_draining() {
            response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as actix_test;
    use actix_web::{web, App, HttpResponse};

    #[actix_web::test]
    async fn responses_close_their_connection_only_while_draining() {
        let drain = Drain::new();
        let app = actix_test::init_service(
            App::new().wrap(CloseWhenDraining::new(Arc::clone(&drain))).route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let serving = actix_test::call_service(&app, actix_test::TestRequest::get().to_request()).await;
        assert_ne!(serving.response().head().connection_type(), ConnectionType::Close);
        drain.start();
        assert!(drain.is_draining());
        let draining = actix_test::call_service(&app, actix_test::TestRequest::get().to_request()).await;
        assert_eq!(draining.response().head().connection_type(), ConnectionType::Close);
        assert_eq!(draining.status(), 200, "a draining node still serves");
    }
}
