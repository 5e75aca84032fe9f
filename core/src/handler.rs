//! Handlers: plain async fns whose arguments are extractors, erased once at registration.
//!
//! Every `Fn(A1, …, An) -> impl Future<Output = Result<R, E>>` with each `Ai:
//! FromRequest<S>`, `R: Serialize` and `E: Into<HandlerError>` is a [`Handler`] (0 to 8
//! arguments), so a route's handler reads
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use shaddock_core::{HandlerError, Json, State};
//! # #[derive(Clone)] struct Rooms;
//! # #[derive(Deserialize)] struct Send { content: String }
//! # #[derive(Serialize)] struct Sent { n: usize }
//! async fn send(State(_rooms): State<Rooms>, Json(m): Json<Send>) -> Result<Json<Sent>, HandlerError> {
//!     Ok(Json(Sent { n: m.content.len() }))
//! }
//! ```
//!
//! Extraction runs before the fn is called; the first extractor that fails answers the
//! request with its error (the fn does not run).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::error::HandlerError;
use crate::extract::FromRequest;
use crate::request::Request;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of a handler: the response body, or the error answered instead.
pub type Outcome = Result<Value, HandlerError>;

/// A typed handler for sessions `S`; `Args` is the tuple of its extractor types (inferred).
pub trait Handler<Args, S>: Clone + Send + Sync + 'static {
    /// Extracts the arguments from `req` and runs the handler; the `Ok` value is the
    /// response body.
    fn call(&self, req: &Request<S>) -> BoxFuture<'static, Outcome>;
}

/// A reply as a JSON value (`()` is `{}` on the wire: the frontend answers an empty object
/// for `null`).
fn reply_value<R: Serialize>(reply: &R) -> Outcome {
    serde_json::to_value(reply).map_err(|e| {
        tracing::error!(
            cause = %e,
            reply = std::any::type_name::<R>(),
            "handler reply does not encode as JSON"
        );
        HandlerError::internal("the server could not encode its response")
    })
}

macro_rules! impl_handler {
    ($($a:ident),*) => {
        impl<F, Fut, R, E, S, $($a,)*> Handler<($($a,)*), S> for F
        where
            F: Fn($($a),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<R, E>> + Send + 'static,
            R: Serialize,
            E: Into<HandlerError>,
            $($a: FromRequest<S>,)*
        {
            #[allow(non_snake_case, unused_variables)]
            fn call(&self, req: &Request<S>) -> BoxFuture<'static, Outcome> {
                $(
                    let $a = match $a::from_request(req) {
                        Ok(v) => v,
                        Err(e) => return Box::pin(async move { Err(e) }),
                    };
                )*
                let fut = (self)($($a),*);
                Box::pin(async move {
                    let reply = fut.await.map_err(Into::into)?;
                    reply_value(&reply)
                })
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// A handler with its argument types erased.
pub trait ErasedHandler<S>: Send + Sync {
    /// Extracts, runs, encodes the reply.
    fn call(&self, req: &Request<S>) -> BoxFuture<'static, Outcome>;
}

struct Erased<H, A> {
    handler: H,
    _args: std::marker::PhantomData<fn() -> A>,
}

impl<H: Handler<A, S>, A: 'static, S> ErasedHandler<S> for Erased<H, A> {
    fn call(&self, req: &Request<S>) -> BoxFuture<'static, Outcome> {
        self.handler.call(req)
    }
}

/// Erases a handler's argument types, once, at registration.
pub fn erase<H, A, S>(handler: H) -> Arc<dyn ErasedHandler<S>>
where
    H: Handler<A, S>,
    A: 'static,
    S: 'static,
{
    Arc::new(Erased {
        handler,
        _args: std::marker::PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Json, RequestInfo, State, StateMap};
    use serde::Deserialize;
    use serde_json::json;
    use shaddock_protocol::message::MessageType;

    #[derive(Clone)]
    struct Greeting(&'static str);

    #[derive(Deserialize)]
    struct Hello {
        name: String,
    }

    async fn hello(
        State(g): State<Greeting>,
        Json(h): Json<Hello>,
    ) -> Result<Json<Value>, HandlerError> {
        if h.name == "nobody" {
            return Err(HandlerError::new(404, "no such user"));
        }
        Ok(Json(json!({"text": format!("{} {}", g.0, h.name)})))
    }

    async fn nothing() -> Result<(), HandlerError> {
        Ok(())
    }

    fn request(body: Value) -> Request<()> {
        let mut state = StateMap::new();
        state.insert(Greeting("hi"));
        Request::new(RequestInfo::new("a.b.c", 1, MessageType::Request), (), body).with_state(state)
    }

    #[tokio::test]
    async fn extractors_feed_a_plain_async_fn() {
        let h = erase::<_, _, ()>(hello);
        assert_eq!(
            h.call(&request(json!({"name": "ann"}))).await,
            Ok(json!({"text": "hi ann"}))
        );
        assert_eq!(
            h.call(&request(json!({"name": "nobody"}))).await,
            Err(HandlerError::new(404, "no such user"))
        );
        let e = h.call(&request(json!({}))).await.unwrap_err();
        assert_eq!(e, HandlerError::internal("field `name` is required"));
        let n = erase::<_, _, ()>(nothing);
        assert_eq!(n.call(&request(json!(null))).await, Ok(Value::Null));
    }
}
