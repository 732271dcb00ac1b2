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
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Middleware (`from_fn`): a response produced while the node drains closes its connection.
/// The flag is read once the response exists, so a request that started before the drain and
/// ends during it closes its connection too.
pub async fn close_when_draining(
    drain: Arc<Drain>,
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(request).await?;
    if drain.is_draining() {
        response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::test as actix_test;
    use actix_web::{web, App, HttpResponse};

    #[actix_web::test]
    async fn responses_close_their_connection_only_while_draining() {
        let drain = Drain::new();
        let flag = Arc::clone(&drain);
        let app = actix_test::init_service(
            App::new()
                .wrap(from_fn(move |request, next| close_when_draining(Arc::clone(&flag), request, next)))
                .route("/", web::get().to(HttpResponse::Ok)),
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
