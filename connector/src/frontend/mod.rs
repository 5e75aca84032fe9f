//! The frontend: builder, listener, per-connection driver, dispatch and pushes.
//!
//! - [`builder`](FrontendBuilder): handlers, filters, state, dictionary, forwarder;
//!   validation.
//! - `push`: pushes to sessions by id, by uid, to everyone ([`PushReport`]).
//! - `serve`: the listener, the graceful stop ([`DrainReport`]), a new connection's
//!   sniffing and WebSocket upgrade.
//! - `driver`: one connection's loop (reads, writes, timers, kicks).
//! - `dispatch`: one request or notify: route, decode, filters, handler or forwarder, reply.

mod builder;
mod dispatch;
mod driver;
mod push;
mod serve;

use std::collections::HashMap;
use std::sync::Arc;

use shaddock_protocol::connection::ConnectionConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use shaddock_protocol::BodyCodec;

use crate::config::ConnectorConfig;
use crate::handler::{
    BoxFuture, DynFilter, ErasedHandler, ErrorHandler, Outcome, Request, StateMap,
};
use crate::handshake::HandshakeConfig;
use crate::session::{Session, SessionService};
use crate::stats::{ConnectorStats, StatsSnapshot};

pub use builder::FrontendBuilder;
pub use push::PushReport;
pub use serve::DrainReport;

/// Errors of building a [`Frontend`] or encoding a push.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A handler route is not `serverType.handler.method` or not of this server's type.
    #[error("invalid handler route `{route}`: {reason}")]
    InvalidRoute {
        /// The route as registered.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two handlers for one route.
    #[error("duplicate handler route `{0}`")]
    DuplicateRoute(String),
    /// A configuration value out of range.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Encoding a message failed (route too long, body too large).
    #[error("encoding message: {0}")]
    Encode(#[from] shaddock_protocol::Error),
}

/// The message (code 500) answering a request that arrives while the frontend is stopping
/// (after [`Frontend::drain_and_kick`] started): it was not handled.
pub const STOPPING_MESSAGE: &str = "server is stopping; reconnect and send the request again";

/// The message (code 500) answering a request still being handled when the graceful drain
/// gave up waiting for it: the client is kicked next, and the request may still complete.
pub const GAVE_UP_MESSAGE: &str = "server is stopping and did not finish this request in time (it may \
     still complete); reconnect";

/// Sends routes of other server types to a backend (over RPC, see [`crate::remote`]).
pub trait Forwarder: Send + Sync + 'static {
    /// Forwards one message for a server of `server_type` (the first part of its route);
    /// the `Ok` value is the response body. What the future needs of `request` is taken
    /// before it is returned (the request itself stays with the frontend's filters).
    ///
    /// # Errors
    /// A [`HandlerError`](crate::HandlerError) for the client (no server of the type, backend down or slow ...).
    fn forward(&self, server_type: &str, request: &Request<Session>)
    -> BoxFuture<'static, Outcome>;
}

struct Inner {
    config: ConnectorConfig,
    connection: ConnectionConfig,
    stats: Arc<ConnectorStats>,
    sessions: SessionService,
    handshake: HandshakeConfig,
    handlers: HashMap<String, Arc<dyn ErasedHandler<Session>>>,
    filters: Vec<Arc<dyn DynFilter<Session>>>,
    state: StateMap,
    error_handler: Option<ErrorHandler>,
    codec: BodyCodec,
    forwarder: Option<Arc<dyn Forwarder>>,
    /// Per-route metrics, if the application wants them.
    route_metrics: Option<Arc<dyn crate::metrics::RouteMetrics>>,
    /// Connection tasks and in-flight handler tasks, waited for on shutdown.
    tracker: TaskTracker,
    /// In-flight request and notify tasks only (also in `tracker`), for the graceful drain.
    requests: TaskTracker,
    /// Cancelled by [`Frontend::stop_accepting`]: `serve` closes its listener.
    stop_accepting: CancellationToken,
    /// Set when [`Frontend::drain_and_kick`] starts (for good): requests that arrive are
    /// answered with [`STOPPING_MESSAGE`] instead of being handled.
    stopping: std::sync::atomic::AtomicBool,
    /// Cancelled when the drain gives up waiting: the requests still being handled are
    /// answered with [`GAVE_UP_MESSAGE`] at once (their handlers run on, their results unsent).
    give_up: CancellationToken,
    /// Whether `serve` holds an open listener.
    listening: tokio::sync::watch::Sender<bool>,
}

/// A frontend server's client port: connections, sessions, dispatch and pushes.
/// Cheap to clone (all clones share everything).
#[derive(Clone)]
pub struct Frontend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("frontend_id", &self.inner.config.frontend_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Frontend {
    /// The configuration.
    pub fn config(&self) -> &ConnectorConfig {
        &self.inner.config
    }

    /// The session service.
    pub fn sessions(&self) -> &SessionService {
        &self.inner.sessions
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The messages queued for writing now: their sum over every session and the longest
    /// one queue (walks the sessions: for a scrape, not a hot path).
    pub fn queued(&self) -> (u64, u64) {
        let (mut total, mut most) = (0u64, 0u64);
        for s in self.inner.sessions.all() {
            let n = s.outbox().len() as u64;
            total += n;
            most = most.max(n);
        }
        (total, most)
    }
}
