//! The contracts Shaddock's frontends and backends share, with no transport in them: what a
//! handler is and takes, filters, [`HandlerError`], and every `sys` remote with its messages.
//!
//! Layers go one way: `shaddock-protocol` (wire, body codec) ← `shaddock-rpc` ←
//! `shaddock-core` (this crate) ← `shaddock-connector` (frontends) and `shaddock-server`
//! (backends, the master; it runs frontends through the connector). A backend needs nothing
//! of the connector to declare handlers, call sys remotes or encode bodies.
//!
//! # Layout
//! - [`handler`]: [`Handler`] — any async fn of extractors — and its erased form.
//! - [`extract`]: [`FromRequest`], [`Json`], [`Proto`], [`State`].
//! - [`request`]: [`Request`], [`RequestInfo`], [`StateMap`].
//! - [`filter`]: the one async [`Filter`] trait (before and after), for both server kinds.
//! - [`error`]: [`HandlerError`], the client's error response.
//! - [`sys`]: `msgRemote`, `sessionRemote`, `master`, `server` and their messages.

pub mod error;
pub mod extract;
pub mod filter;
pub mod handler;
pub mod request;
pub mod sys;

pub use error::{CODE_ERROR, HandlerError};
pub use extract::{FromRequest, Json, Proto, State};
pub use filter::{AfterFn, BeforeFn, DynFilter, Filter};
pub use handler::{BoxFuture, ErasedHandler, Handler, Outcome, erase};
pub use request::{Request, RequestInfo, StateMap};
