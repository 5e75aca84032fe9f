//! The Shaddock frontend: pomelo's hybrid connector and its session service, in Rust.
//!
//! One TCP port per frontend serves both raw TCP pomelo clients and WebSocket clients; the
//! first bytes of a connection decide which (see [`sniff`]). After framing, both transports
//! yield whole packages into the same per-connection loop.
//!
//! # Layout
//! - [`config`]: [`ConnectorConfig`], every knob with its documented default.
//! - [`sniff`]: the pure TCP-or-HTTP decision over the first bytes.
//! - [`rewind`]: replays the sniffed bytes into the chosen protocol.
//! - [`limit`]: the token bucket of the per-connection rate limit.
//! - [`stats`]: counters (accepted, refused, kicked, rate limited, ...).
//! - [`session`]: [`Session`] handles and the [`SessionService`].
//! - [`handler`]: typed local handlers, filters, the error handler.
//! - [`frontend`]: [`Frontend`] — builder, listener, per-connection driver, dispatch, pushes.
//! - [`remote`]: forwarding to backends over RPC and the frontend's `sys` remotes.
//! - [`transport`]: raw TCP and WebSocket behind one package interface.
//!
//! # Cancel safety
//! Unless stated otherwise, public async functions are not cancel safe.

mod codec;
pub mod config;
pub mod frontend;
pub mod handler;
mod handshake;
pub mod limit;
pub mod remote;
pub mod rewind;
pub mod session;
pub mod sniff;
pub mod stats;
pub mod transport;

pub use config::ConnectorConfig;
pub use frontend::{Error, ForwardRequest, Forwarder, Frontend, FrontendBuilder, PushReport};
pub use handler::{AfterFilter, BeforeFilter, Handler, HandlerError, RequestInfo};
pub use limit::{RateLimit, TokenBucket};
pub use remote::{RpcForwarder, SessionRemote};
pub use session::{Session, SessionConfig, SessionError, SessionId, SessionService};
pub use sniff::{Sniff, sniff};
pub use stats::{ConnectorStats, StatsSnapshot};
