//! Local handlers, filters and the error-handler hook of a frontend.
//!
//! The contracts are [`shaddock_core`]'s, shared with backends: a handler is any async fn of
//! extractors ([`Handler`]; the frontend's session extractor is [`Session`]), a filter the one
//! async [`Filter`] trait with `before` and `after`. A body that does not fit a handler's
//! extractors becomes an error response to that request; the connection stays up.
//!
//! The error handler turns a [`HandlerError`] into the response body; by default the body is
//! `{"code":<code>,"msg":<message>}` (`msg` omitted when empty).

use std::sync::Arc;

use serde_json::Value;
pub use shaddock_core::filter;
pub use shaddock_core::{
    AfterFn, BeforeFn, BoxFuture, CODE_ERROR, DynFilter, ErasedHandler, Filter, FromRequest,
    Handler, HandlerError, Json, Outcome, Proto, Request, RequestInfo, State, StateMap, erase,
};

use crate::session::Session;

/// The frontend's session is an extractor: a handler taking a [`Session`] gets the client's.
impl FromRequest<Self> for Session {
    fn from_request(req: &Request<Self>) -> Result<Self, HandlerError> {
        Ok(req.session().clone())
    }
}

/// Turns an error into the response body (pomelo's `errorHandler`).
pub type ErrorHandler = Arc<dyn Fn(&RequestInfo, &Session, &HandlerError) -> Value + Send + Sync>;
