//! Local handlers by route, filters and the error-handler hook.
//!
//! A handler is a typed async fn `(Session, T) -> Result<R, E>` with `T: Deserialize`,
//! `R: Serialize` and `E: Into<HandlerError>`; it is erased once, when registered, into a boxed
//! handler that decodes the body, calls, and encodes the reply (axum's pattern, without the
//! extractor machinery). A body that does not decode into `T` becomes an error response to
//! that request; the connection stays up.
//!
//! Filters run around every request and notify, local or forwarded, as in pomelo: before
//! filters may refuse a message (the refusal becomes the error response), after filters see
//! the outcome. The error handler turns a [`HandlerError`] into the response body; by default
//! the body is `{"code":<code>,"msg":<message>}` (`msg` omitted when empty).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shaddock_protocol::message::MessageType;

use crate::session::Session;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The pomelo error code used when nothing more specific applies.
pub const CODE_ERROR: i64 = 500;

/// A failed request: becomes a response body `{"code":…,"msg":…}` (pomelo has no error message
/// type; errors are ordinary responses, PROTOCOL.md §8.4).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("code {code}: {message}")]
pub struct HandlerError {
    /// The `code` of the response body (500 unless the handler chose another).
    pub code: i64,
    /// Human-readable reason, sent as `msg` when not empty.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A code-500 error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(CODE_ERROR, message)
    }

    /// The default response body.
    pub fn to_body(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), Value::from(self.code));
        if !self.message.is_empty() {
            m.insert("msg".into(), Value::from(self.message.clone()));
        }
        Value::Object(m)
    }
}

/// A JSON error as a client may see it: what is wrong with the body it sent, without the
/// server's type names (serde writes `expected struct Echo` and the like). The full error is
/// logged at debug level.
impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        tracing::debug!(cause = %e, "JSON error answered with a generic message");
        Self::internal(body_error_message(&e))
    }
}

/// The client's message for a body that does not fit a handler: the field it lacks or
/// should not have when serde says so, else a generic sentence (serde's other messages name
/// Rust types).
pub(crate) fn body_error_message(e: &serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        return format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        );
    }
    let text = e.to_string();
    let field = |prefix: &str| {
        let rest = text.split_once(prefix)?.1;
        Some(rest.split_once('`')?.0.to_owned())
    };
    if let Some(f) = field("missing field `") {
        format!("the request body has no field `{f}`, which this route requires")
    } else if let Some(f) = field("unknown field `") {
        format!("the request body has a field `{f}`, which this route does not accept")
    } else if let Some(f) = field("duplicate field `") {
        format!("the request body has the field `{f}` twice")
    } else {
        "the request body does not have the fields and types this route expects".to_owned()
    }
}

/// What filters and the error handler learn about a message.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The route string (`serverType.handler.method`).
    pub route: String,
    /// The request id; 0 for notifies.
    pub id: u32,
    /// Request or notify.
    pub kind: MessageType,
}

/// A handler with its argument type erased: decoded JSON body in, JSON reply out. `S` is the
/// session it gets: [`Session`] here, the server crate's backend session there.
pub trait ErasedHandler<S = Session>: Send + Sync {
    /// Decodes `body` into the handler's argument type, runs it, encodes the reply.
    fn call(&self, session: S, body: Value) -> BoxFuture<'static, Result<Value, HandlerError>>;
}

/// A typed async handler; implemented for every `Fn(S, T) -> impl Future<Output =
/// Result<R, E>>` with the bounds below (`S` defaults to the frontend's [`Session`]).
pub trait Handler<T, S = Session>: Clone + Send + Sync + 'static {
    /// Runs the handler on a decoded body.
    fn call(&self, session: S, body: Value) -> BoxFuture<'static, Result<Value, HandlerError>>;
}

impl<F, Fut, T, R, E, S> Handler<T, S> for F
where
    F: Fn(S, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    R: Serialize,
    E: Into<HandlerError>,
{
    fn call(&self, session: S, body: Value) -> BoxFuture<'static, Result<Value, HandlerError>> {
        let arg = match serde_json::from_value::<T>(body) {
            Ok(arg) => arg,
            Err(e) => {
                tracing::debug!(
                    cause = %e,
                    argument = std::any::type_name::<T>(),
                    "request body does not decode into the handler's argument"
                );
                let err = HandlerError::internal(body_error_message(&e));
                return Box::pin(async move { Err(err) });
            }
        };
        let fut = (self)(session, arg);
        Box::pin(async move {
            let reply = fut.await.map_err(Into::into)?;
            serde_json::to_value(reply).map_err(|e| {
                tracing::error!(
                    cause = %e,
                    reply = std::any::type_name::<R>(),
                    "handler reply does not encode as JSON"
                );
                HandlerError::internal("the server could not encode its response")
            })
        })
    }
}

struct Erased<H, T> {
    handler: H,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<H: Handler<T, S>, T: 'static, S> ErasedHandler<S> for Erased<H, T> {
    fn call(&self, session: S, body: Value) -> BoxFuture<'static, Result<Value, HandlerError>> {
        self.handler.call(session, body)
    }
}

/// Erases a typed handler's argument type, once, at registration.
pub fn erase<H, T, S>(handler: H) -> Arc<dyn ErasedHandler<S>>
where
    H: Handler<T, S>,
    T: 'static,
    S: 'static,
{
    Arc::new(Erased {
        handler,
        _t: std::marker::PhantomData,
    })
}

/// Runs before a message is handled; `Err` refuses it (the error becomes the response).
pub trait BeforeFilter: Send + Sync + 'static {
    /// Checks one message.
    ///
    /// # Errors
    /// The refusal, answered to requests as an error response.
    fn before(
        &self,
        info: &RequestInfo,
        body: &Value,
        session: &Session,
    ) -> Result<(), HandlerError>;
}

impl<F> BeforeFilter for F
where
    F: Fn(&RequestInfo, &Value, &Session) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn before(
        &self,
        info: &RequestInfo,
        body: &Value,
        session: &Session,
    ) -> Result<(), HandlerError> {
        self(info, body, session)
    }
}

/// Runs after a message was handled (or refused), with the outcome.
pub trait AfterFilter: Send + Sync + 'static {
    /// Observes one outcome.
    fn after(&self, info: &RequestInfo, session: &Session, outcome: &Result<Value, HandlerError>);
}

impl<F> AfterFilter for F
where
    F: Fn(&RequestInfo, &Session, &Result<Value, HandlerError>) + Send + Sync + 'static,
{
    fn after(&self, info: &RequestInfo, session: &Session, outcome: &Result<Value, HandlerError>) {
        self(info, session, outcome);
    }
}

/// Turns an error into the response body (pomelo's `errorHandler`).
pub type ErrorHandler = Arc<dyn Fn(&RequestInfo, &Session, &HandlerError) -> Value + Send + Sync>;
