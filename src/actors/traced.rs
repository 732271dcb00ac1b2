//! The caller's span, carried into the actor: `ask` wraps every request message in `Traced`
//! with the span current where it was sent (for an HTTP request, its `request` span, which
//! names the request id), and the actor handles the message inside that span. So whatever an
//! actor logs for a request, and whatever it hands on (a message to another actor, a change to
//! the write pipeline, whose batch span lists the request ids of its items), names the
//! request. Futures a handler spawns keep the span with `in_current_span`.
//!
//! Cost: when the caller is inside a recorded span (the request span, at INFO), a `Span`
//! clone when sent (the subscriber's reference count and the dispatcher's) and an enter/exit
//! around the handler; no allocation. Outside any recorded span (no request, or a filter that
//! drops the request span) nothing is cloned, and the handler enters nothing.

use actix::prelude::*;
use tracing::Span;

/// A message and the span of the work that sent it.
pub struct Traced<M> {
    pub span: Span,
    pub message: M,
}

impl<M> Traced<M> {
    /// `message` in the span current here (`Span::current` clones only a recorded span; with
    /// none current it answers `Span::none()` without touching a reference count).
    pub fn here(message: M) -> Self {
        Traced { span: Span::current(), message }
    }
}

impl<M: Message> Message for Traced<M> {
    type Result = M::Result;
}

/// Makes an actor handle `Traced<M>` as `M`, inside the message's span. For the request
/// messages of `ask`, whose result is `()` (the answer goes back on the message's reply
/// channel); an `AtomicResponse` or other deferred response is driven as usual.
macro_rules! handles_traced {
    ($actor:ty) => {
        impl<M> actix::Handler<$crate::actors::traced::Traced<M>> for $actor
        where
            M: actix::Message<Result = ()>,
            $actor: actix::Handler<M>,
        {
            type Result = ();

            fn handle(
                &mut self,
                traced: $crate::actors::traced::Traced<M>,
                ctx: &mut <$actor as actix::Actor>::Context,
            ) {
                // A disabled span has nothing to enter: skip the guard (and its exit) entirely.
                let _entered = (!traced.span.is_disabled()).then(|| traced.span.enter());
                let response = <$actor as actix::Handler<M>>::handle(self, traced.message, ctx);
                actix::dev::MessageResponse::<$actor, M>::handle(response, ctx, None);
            }
        }
    };
}

pub(crate) use handles_traced;

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Note(tokio::sync::oneshot::Sender<Option<String>>);

    struct Recorder;

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<Note> for Recorder {
        type Result = ();

        fn handle(&mut self, note: Note, _ctx: &mut Context<Self>) {
            let name = Span::current().metadata().map(|m| m.name().to_owned());
            let _ = note.0.send(name);
        }
    }

    handles_traced!(Recorder);

    /// The actor runs on its own thread; the handler still sees the sender's span as current.
    #[actix_web::test]
    async fn the_handler_runs_in_the_senders_span() {
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_test_writer());
        let dispatch = tracing::Dispatch::new(subscriber);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let arbiter = Arbiter::new();
        let thread_dispatch = dispatch.clone();
        let addr = Recorder::start_in_arbiter(&arbiter.handle(), move |_| {
            // The arbiter's thread uses the same subscriber, as the whole process does.
            std::mem::forget(tracing::dispatcher::set_default(&thread_dispatch));
            Recorder
        });
        let span = tracing::info_span!("request", request_id = "r-1");
        let (reply, answer) = tokio::sync::oneshot::channel();
        span.in_scope(|| addr.do_send(Traced::here(Note(reply))));
        assert_eq!(answer.await.unwrap().as_deref(), Some("request"));
        let (reply, answer) = tokio::sync::oneshot::channel();
        addr.do_send(Traced::here(Note(reply)));
        assert_eq!(answer.await.unwrap(), None, "outside any span, none is entered");
        arbiter.stop();
    }
}
