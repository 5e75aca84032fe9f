//! The Shaddock frontend: pomelo's hybrid connector and its session service, in Rust.
//!
//! One TCP port per frontend serves both raw TCP pomelo clients and WebSocket clients; the
//! first bytes of a connection decide which (see [`sniff()`]). After framing, both transports
//! yield whole packages into the same per-connection loop.
//!
//! # Layout
//! - [`config`]: [`ConnectorConfig`], every knob with its documented default.
//! - [`close`]: [`Disconnect`], why a connection ended (typed; its text goes to close hooks).
//! - [`mod@sniff`]: the pure TCP-or-HTTP decision over the first bytes.
//! - [`rewind`]: replays the sniffed bytes into the chosen protocol.
//! - [`limit`]: the token bucket of the per-connection rate limit.
//! - [`stats`]: counters (accepted, refused, kicked, rate limited, ...).
//! - [`session`]: [`Session`] handles and the [`SessionService`].
//! - [`handler`]: local handlers (async fns of extractors), filters, the error handler; the
//!   contracts are `shaddock_core`'s, shared with backends.
//! - [`frontend`]: [`Frontend`] — builder, listener, per-connection driver, dispatch, pushes.
//! - [`remote`]: forwarding to backends over RPC and the frontend's `sessionRemote` (the sys
//!   contracts themselves are `shaddock_core::sys`).
//! - [`transport`]: raw TCP and WebSocket behind one package interface.
//! - [`tls`]: TLS on the client port ([`ServerTls`]), reloadable certificates.
//!
//! # Connection life
//! accept (a slot of `max_connections`, else refused) → sniff the first bytes (with TLS
//! configured, a ClientHello → TLS handshake → sniff again inside) → WebSocket
//! upgrade (limits: max message = max package size, bounded write buffer) or raw TCP → the
//! per-connection driver `select!`s over socket reads, the session's outbound queue, kick
//! requests, the state machine's next deadline
//! ([`shaddock_protocol::connection::ServerConnection`]) and the shutdown token. Requests and
//! notifies are decoded (dictionary routes, JSON or protobuf bodies), filtered and run as
//! tasks (at most `max_in_flight` per connection), locally for this server's type or through
//! a [`Forwarder`] ([`RpcForwarder`]) for others; responses and pushes go through a bounded
//! queue of shared, already encoded buffers and leave coalesced (many messages, one write).
//! A full queue kicks the client as a slow consumer.
//!
//! # Use
//! ```no_run
//! use serde::Deserialize;
//! use serde_json::{json, Value};
//! use shaddock_connector::{ConnectorConfig, Frontend, HandlerError, Json, Session};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(Deserialize)]
//! struct Enter {
//!     uid: String,
//! }
//!
//! async fn enter(session: Session, Json(e): Json<Enter>) -> Result<Value, HandlerError> {
//!     session.bind(&e.uid).map_err(|e| HandlerError::new(500, e.to_string()))?;
//!     Ok(json!({"code": 200}))
//! }
//!
//! let frontend = Frontend::builder(ConnectorConfig::default())
//!     .handler("connector.entryHandler.enter", enter)
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3010").await?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn({
//!     let frontend = frontend.clone();
//!     let shutdown = shutdown.clone();
//!     async move { frontend.serve(listener, shutdown).await }
//! });
//! // Later, from anywhere: push to everyone (encoded once), kick by uid, count.
//! frontend.broadcast("onNews", &json!({"text": "hello"}))?;
//! frontend.sessions().kick_by_uid("alice", "bye");
//! let _online = frontend.sessions().count();
//! shutdown.cancel();
//! # Ok(()) }
//! ```
//!
//! # Cancel safety
//! Unless stated otherwise, public async functions are not cancel safe.

pub mod close;
pub mod config;
pub mod frontend;
pub mod handler;
mod handshake;
pub mod limit;
pub mod metrics;
mod outbox;
pub mod remote;
pub mod rewind;
pub mod session;
pub mod sniff;
pub mod stats;
pub mod tls;
pub mod transport;

pub use close::{Disconnect, KickReason};
pub use config::ConnectorConfig;
pub use frontend::{
    DrainReport, Error, Forwarder, Frontend, FrontendBuilder, GAVE_UP_MESSAGE, PushReport,
    STOPPING_MESSAGE,
};
pub use handler::{
    Filter, FromRequest, Handler, HandlerError, Json, Proto, Request, RequestInfo, State,
};
pub use limit::{RateLimit, TokenBucket};
pub use metrics::{MessageKind, RouteMetrics};
pub use remote::{BindHook, RpcForwarder, SessionRemote};
pub use session::{Session, SessionConfig, SessionError, SessionId, SessionService};
pub use shaddock_protocol::BodyCodec;
pub use sniff::{Sniff, sniff};
pub use stats::{ConnectorStats, StatsSnapshot};
pub use tls::{ServerTls, TlsError, TlsMode};
