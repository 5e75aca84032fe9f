//! The frontend: builder, listener, per-connection driver, dispatch and pushes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::connection::{CloseReason, ConnectionConfig, Event, ServerConnection};
use shaddock_protocol::handshake::{Flavor, HandshakeProtos, ServerHandshake};
use shaddock_protocol::message::{Message, MessageRoute, MessageType, Route};
use shaddock_protocol::protobuf::Protos;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::BodyCodec;
use crate::config::ConnectorConfig;
use crate::handler::{
    AfterFilter, BeforeFilter, BoxFuture, ErasedHandler, ErrorHandler, Handler, HandlerError,
    RequestInfo,
};
use crate::handshake::{self, HandshakeConfig};
use crate::limit::TokenBucket;
use crate::rewind::Rewind;
use crate::session::{Session, SessionConfig, SessionId, SessionService};
use crate::sniff::{MAX_SNIFF_LEN, Sniff, sniff};
use crate::stats::{ConnectorStats, StatsSnapshot};
use crate::transport::Transport;

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

/// A request or notify for another server type, handed to the [`Forwarder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ForwardRequest {
    /// Route info (route string, id, kind).
    pub info: RequestInfo,
    /// The target server type (first part of the route).
    pub server_type: String,
    /// The client's session.
    pub session: Session,
    /// The decoded JSON body.
    pub body: Value,
}

/// Sends routes of other server types to a backend (over RPC, see [`crate::remote`]).
pub trait Forwarder: Send + Sync + 'static {
    /// Forwards one message; the `Ok` value is the response body.
    ///
    /// # Errors
    /// A [`HandlerError`] for the client (no server of the type, backend down or slow ...).
    fn forward(&self, request: ForwardRequest) -> BoxFuture<'static, Result<Value, HandlerError>>;
}

/// Builds a [`Frontend`]: handlers, filters, dictionary, forwarder.
pub struct FrontendBuilder {
    config: ConnectorConfig,
    session_config: SessionConfig,
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    errors: Vec<Error>,
    before: Vec<Arc<dyn BeforeFilter>>,
    after: Vec<Arc<dyn AfterFilter>>,
    error_handler: Option<ErrorHandler>,
    dictionary: Option<Arc<RouteDictionary>>,
    protos: Option<Arc<Protos>>,
    forwarder: Option<Arc<dyn Forwarder>>,
}

impl std::fmt::Debug for FrontendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendBuilder")
            .field("config", &self.config)
            .field("routes", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FrontendBuilder {
    /// Registers a local handler for `route` (`"<this server type>.handler.method"`).
    /// Malformed, foreign or duplicate routes make [`FrontendBuilder::build`] fail.
    #[must_use]
    pub fn handler<H, T>(mut self, route: &str, handler: H) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        match Route::parse(route) {
            Err(e) => self.errors.push(Error::InvalidRoute {
                route: route.to_owned(),
                reason: e.to_string(),
            }),
            Ok(r) if r.server_type != self.config.server_type => {
                self.errors.push(Error::InvalidRoute {
                    route: route.to_owned(),
                    reason: format!(
                        "server type `{}` is not this frontend's type `{}`",
                        r.server_type, self.config.server_type
                    ),
                });
            }
            Ok(_) => {
                let erased = crate::handler::erase::<H, T, Session>(handler);
                if self.handlers.insert(route.to_owned(), erased).is_some() {
                    self.errors.push(Error::DuplicateRoute(route.to_owned()));
                }
            }
        }
        self
    }

    /// Adds a before filter (run in registration order).
    #[must_use]
    pub fn before(mut self, filter: impl BeforeFilter) -> Self {
        self.before.push(Arc::new(filter));
        self
    }

    /// Adds an after filter (run in registration order).
    #[must_use]
    pub fn after(mut self, filter: impl AfterFilter) -> Self {
        self.after.push(Arc::new(filter));
        self
    }

    /// Sets the error handler that builds the response body of a failed request.
    #[must_use]
    pub fn error_handler(
        mut self,
        f: impl Fn(&RequestInfo, &Session, &HandlerError) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(f));
        self
    }

    /// Uses a route dictionary (`useDict`): sent in the handshake, used to expand compressed
    /// routes from clients and to compress pushes.
    #[must_use]
    pub fn dictionary(mut self, dictionary: Arc<RouteDictionary>) -> Self {
        self.dictionary = Some(dictionary);
        self
    }

    /// Uses pomelo-protobuf schemas (`useProtobuf`): announced in the handshake, used for
    /// bodies of the routes they list (clientProtos to decode, serverProtos to encode).
    #[must_use]
    pub fn protos(mut self, protos: Arc<Protos>) -> Self {
        self.protos = Some(protos);
        self
    }

    /// Sets the forwarder for routes of other server types.
    #[must_use]
    pub fn forwarder(mut self, forwarder: Arc<dyn Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Sets the session policy.
    #[must_use]
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.session_config = config;
        self
    }

    /// The routes registered so far (for building the dictionary).
    pub fn routes(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// Builds the frontend.
    ///
    /// # Errors
    /// The first bad handler route or config value.
    pub fn build(mut self) -> Result<Frontend, Error> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        let c = &self.config;
        if c.queue_capacity == 0
            || c.max_connections == 0
            || c.max_package_size == 0
            || c.max_in_flight == 0
        {
            return Err(Error::InvalidConfig(
                "queue_capacity, max_connections, max_package_size and max_in_flight must be > 0"
                    .into(),
            ));
        }
        if let Some(f) = c.push_flush_interval
            && (f.is_zero() || f > Duration::from_secs(60))
        {
            return Err(Error::InvalidConfig(format!(
                "push_flush_interval {f:?} must be > 0 and at most 60 s"
            )));
        }
        if let Some(h) = c.heartbeat_interval
            && (h.as_secs() == 0 || h.subsec_nanos() != 0)
        {
            return Err(Error::InvalidConfig(format!(
                "heartbeat_interval {h:?} must be a whole number of seconds ≥ 1"
            )));
        }
        let stats = Arc::new(ConnectorStats::default());
        let codec = BodyCodec {
            dictionary: self.dictionary.clone(),
            protos: self.protos.clone(),
        };
        let sessions = SessionService::new(
            &c.frontend_id,
            self.session_config,
            stats.clone(),
            codec.clone(),
        );
        let handshake_protos = self.protos.as_ref().map(|p| {
            let parsed = p.handshake_json();
            HandshakeProtos::with_version(
                parsed["server"].clone(),
                parsed["client"].clone(),
                p.version(),
            )
        });
        let handshake = HandshakeConfig {
            server: ServerHandshake::new(
                c.heartbeat_interval,
                self.dictionary.as_deref(),
                handshake_protos.as_ref(),
                Flavor::Pomelo,
            ),
            min_client_version: c
                .min_client_version
                .as_deref()
                .map(handshake::parse_version),
        };
        Ok(Frontend {
            inner: Arc::new(Inner {
                connection: ConnectionConfig {
                    heartbeat_interval: c.heartbeat_interval,
                    heartbeat_timeout: c.heartbeat_timeout,
                    handshake_timeout: Some(c.handshake_timeout),
                    close_on_early_data: c.close_on_early_data,
                },
                config: self.config,
                stats,
                sessions,
                handshake,
                handlers: self.handlers,
                before: self.before,
                after: self.after,
                error_handler: self.error_handler,
                codec,
                forwarder: self.forwarder,
                tracker: TaskTracker::new(),
                requests: TaskTracker::new(),
                stop_accepting: CancellationToken::new(),
                listening: tokio::sync::watch::Sender::new(false),
            }),
        })
    }
}

struct Inner {
    config: ConnectorConfig,
    connection: ConnectionConfig,
    stats: Arc<ConnectorStats>,
    sessions: SessionService,
    handshake: HandshakeConfig,
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    before: Vec<Arc<dyn BeforeFilter>>,
    after: Vec<Arc<dyn AfterFilter>>,
    error_handler: Option<ErrorHandler>,
    codec: BodyCodec,
    forwarder: Option<Arc<dyn Forwarder>>,
    /// Connection tasks and in-flight handler tasks, waited for on shutdown.
    tracker: TaskTracker,
    /// In-flight request and notify tasks only (also in `tracker`), for the graceful drain.
    requests: TaskTracker,
    /// Cancelled by [`Frontend::stop_accepting`]: `serve` closes its listener.
    stop_accepting: CancellationToken,
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

/// Outcome of [`Frontend::drain_and_kick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Requests still being handled when the drain gave up (0: all answered).
    pub unfinished_requests: usize,
    /// Sessions kicked.
    pub kicked: usize,
    /// Kicked sessions still open when the wait for them gave up (0: all closed).
    pub still_connected: usize,
}

/// Outcome of a push to several sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// Sessions the message was queued for.
    pub sent: usize,
    /// Sessions not found or closed.
    pub missing: usize,
    /// Sessions whose queue was full (they were kicked as slow consumers).
    pub full: usize,
}

impl std::ops::AddAssign for PushReport {
    fn add_assign(&mut self, other: Self) {
        self.sent += other.sent;
        self.missing += other.missing;
        self.full += other.full;
    }
}

impl Frontend {
    /// Starts building a frontend with `config`.
    pub fn builder(config: ConnectorConfig) -> FrontendBuilder {
        FrontendBuilder {
            config,
            session_config: SessionConfig::default(),
            handlers: HashMap::new(),
            errors: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            error_handler: None,
            dictionary: None,
            protos: None,
            forwarder: None,
        }
    }

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

    /// Encodes a PUSH of `body` (JSON) on `route` once, as a whole DATA package; the route is
    /// compressed when the dictionary has it. Send the result with
    /// [`Session::send_encoded`] or [`Frontend::push_encoded`].
    ///
    /// # Errors
    /// [`Error::Encode`] for a route over 255 bytes or a body over the package limit.
    pub fn encode_push(&self, route: &str, body: &Value) -> Result<Bytes, Error> {
        Ok(self.inner.codec.push_package(route, body)?)
    }

    /// Pushes `body` on `route` to one session.
    ///
    /// # Errors
    /// [`Error::Encode`]; a missing or full session is reported in the [`PushReport`].
    pub fn push(&self, sid: SessionId, route: &str, body: &Value) -> Result<PushReport, Error> {
        self.push_many(&[sid], route, body)
    }

    /// Pushes `body` on `route` to each session of `sids`, encoding it once.
    ///
    /// # Errors
    /// [`Error::Encode`].
    pub fn push_many(
        &self,
        sids: &[SessionId],
        route: &str,
        body: &Value,
    ) -> Result<PushReport, Error> {
        let bytes = self.encode_push(route, body)?;
        Ok(self.push_encoded(sids, &bytes))
    }

    /// Sends already encoded packages (one shared buffer) to each session of `sids`.
    pub fn push_encoded(&self, sids: &[SessionId], packages: &Bytes) -> PushReport {
        let mut report = PushReport::default();
        for sid in sids {
            match self.inner.sessions.get(*sid) {
                None => report.missing += 1,
                Some(s) => tally(&mut report, s.send_encoded(packages.clone())),
            }
        }
        report
    }

    /// Sends already encoded packages (one shared buffer) to every session bound to each uid
    /// of `uids`; a uid with no session here counts as one `missing`.
    pub fn push_encoded_to_uids(&self, uids: &[String], packages: &Bytes) -> PushReport {
        self.push_to_uid_iter(uids.iter().map(String::as_str), packages)
    }

    /// As [`Frontend::push_encoded_to_uids`], with the uids packed in one buffer, each
    /// followed by a NUL byte (`PushArgs::uid_list`, what a channel sends). A uid that is not
    /// UTF-8 counts as `missing`.
    pub fn push_encoded_to_uid_list(&self, uid_list: &[u8], packages: &Bytes) -> PushReport {
        // Usually all of it is UTF-8: check it once, not uid by uid.
        if let Ok(list) = std::str::from_utf8(uid_list) {
            return self.push_to_uid_iter(list.split('\0').filter(|u| !u.is_empty()), packages);
        }
        let mut bad = 0;
        let uids = uid_list
            .split(|b| *b == 0)
            .filter(|u| !u.is_empty())
            .filter_map(|u| {
                let s = std::str::from_utf8(u).ok();
                bad += usize::from(s.is_none());
                s
            });
        let mut report = self.push_to_uid_iter(uids, packages);
        report.missing += bad;
        report
    }

    fn push_to_uid_iter<'a>(
        &self,
        uids: impl IntoIterator<Item = &'a str>,
        packages: &Bytes,
    ) -> PushReport {
        let mut report = PushReport::default();
        let missing = self.inner.sessions.for_each_of_uids(uids, |s| {
            tally(&mut report, s.send_encoded(packages.clone()));
        });
        report.missing += missing;
        report
    }

    /// Sends already encoded packages (one shared buffer) to every open session.
    pub fn broadcast_encoded(&self, packages: &Bytes) -> PushReport {
        let mut report = PushReport::default();
        for s in self.inner.sessions.all() {
            tally(&mut report, s.send_encoded(packages.clone()));
        }
        report
    }

    /// Pushes `body` on `route` to every open session, encoding it once.
    ///
    /// # Errors
    /// [`Error::Encode`].
    pub fn broadcast(&self, route: &str, body: &Value) -> Result<PushReport, Error> {
        let bytes = self.encode_push(route, body)?;
        Ok(self.broadcast_encoded(&bytes))
    }

    /// Stops accepting connections: `serve` closes its listener (new connects are refused
    /// by the OS) but keeps serving the connections it has until its `shutdown` token is
    /// cancelled. Returns once the listener is closed (at once if `serve` is not running).
    /// For good: a later `serve` on this frontend accepts nothing.
    ///
    /// A graceful stop is `stop_accepting` → [`Frontend::drain_and_kick`] → cancel `serve`'s
    /// token.
    pub async fn stop_accepting(&self) {
        self.inner.stop_accepting.cancel();
        let mut listening = self.inner.listening.subscribe();
        // The sender lives in `self.inner`, so `wait_for` cannot fail while we hold `self`.
        let _ = listening.wait_for(|open| !*open).await;
    }

    /// The graceful drain: waits until no request or notify of any client is being handled
    /// (their responses are then queued), at most `timeout`; then kicks every session with
    /// `reason` (each writes what is queued, then the KICK, then closes) and waits, at most
    /// `timeout` again, for them to close. Clients stay connected and may send requests while
    /// the drain runs; call [`Frontend::stop_accepting`] first so no new ones arrive.
    pub async fn drain_and_kick(&self, reason: &str, timeout: Duration) -> DrainReport {
        let requests = &self.inner.requests;
        requests.close();
        let drained = tokio::time::timeout(timeout, requests.wait()).await.is_ok();
        let unfinished_requests = if drained { 0 } else { requests.len() };
        requests.reopen();
        if !drained {
            tracing::warn!(
                ?timeout,
                left = unfinished_requests,
                "drain: requests still being handled, kicking anyway"
            );
        }
        let sessions = self.inner.sessions.all();
        for s in &sessions {
            s.kick(reason);
        }
        let all_closed = async {
            for s in &sessions {
                s.closed().await;
            }
        };
        let still_connected = match tokio::time::timeout(timeout, all_closed).await {
            Ok(()) => 0,
            Err(_) => {
                let n = sessions.iter().filter(|s| !s.is_closed()).count();
                tracing::warn!(?timeout, left = n, "drain: kicked clients still connected");
                n
            }
        };
        DrainReport {
            unfinished_requests,
            kicked: sessions.len(),
            still_connected,
        }
    }

    /// Serves clients on `listener` until `shutdown` is cancelled, then closes every
    /// connection and waits for connection and handler tasks to finish (at most
    /// `drain_timeout`). After [`Frontend::stop_accepting`] it closes the listener at once
    /// but keeps serving its connections until `shutdown`.
    ///
    /// At most `max_connections` connections are served at once: a permit is taken before
    /// `accept`. When none is left the listener still accepts and closes the new socket at
    /// once (counted as `refused`), so an over-limit client sees a prompt close rather than
    /// hanging in the kernel backlog. Accept errors (e.g. out of file descriptors) are
    /// logged and retried with an exponential back-off of 1 ms to 1 s.
    ///
    /// # Errors
    /// None at present; `Result` leaves room for fatal listener errors.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let limit = Arc::new(Semaphore::new(self.inner.config.max_connections));
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, frontend = %self.inner.config.frontend_id, "client port listening");
        let mut backoff = Duration::from_millis(1);
        let stop_accepting = self.inner.stop_accepting.clone();
        self.inner.listening.send_replace(true);
        loop {
            let permit = limit.clone().try_acquire_owned().ok();
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                () = stop_accepting.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(1);
                    // A slot may have been freed while we waited in accept.
                    let permit = permit.or_else(|| limit.clone().try_acquire_owned().ok());
                    let Some(permit) = permit else {
                        ConnectorStats::incr(&self.inner.stats.refused);
                        tracing::warn!(%peer, max = self.inner.config.max_connections, "connection refused: max connections reached");
                        drop(stream);
                        continue;
                    };
                    ConnectorStats::incr(&self.inner.stats.accepted);
                    let inner = self.inner.clone();
                    // A clone, not a child token: a child allocates a tree node per
                    // connection, and connections are only ever cancelled all at once.
                    let token = shutdown.clone();
                    let span = tracing::debug_span!("conn", %peer);
                    self.inner
                        .tracker
                        .spawn(run_connection(inner, stream, peer, token, permit).instrument(span));
                }
                Err(e) => {
                    ConnectorStats::incr(&self.inner.stats.accept_errors);
                    tracing::error!(cause = %e, ?backoff, "accept failed, backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = stop_accepting.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        drop(listener);
        self.inner.listening.send_replace(false);
        if !shutdown.is_cancelled() {
            tracing::info!(addr = ?local, "client port no longer accepting; serving open connections");
            shutdown.cancelled().await;
        }
        self.inner.tracker.close();
        let drain = self.inner.config.drain_timeout;
        if tokio::time::timeout(drain, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                left = self.inner.tracker.len(),
                "shutdown: tasks still running after the drain timeout, not waiting longer"
            );
        }
        self.inner.tracker.reopen();
        tracing::info!(addr = ?local, "client port closed");
        Ok(())
    }
}

fn tally(report: &mut PushReport, r: Result<(), crate::session::SessionError>) {
    match r {
        Ok(()) => report.sent += 1,
        Err(crate::session::SessionError::QueueFull { .. }) => report.full += 1,
        Err(_) => report.missing += 1,
    }
}

/// Decrements the active-connection count when a connection task ends.
struct ActiveGuard(Arc<ConnectorStats>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run_connection(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    inner
        .stats
        .active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _active = ActiveGuard(inner.stats.clone());
    if inner.config.nodelay {
        let _ = stream.set_nodelay(true);
    }
    let deadline = Instant::now() + inner.config.handshake_timeout;
    // Sniff: read until the first bytes decide TCP or HTTP.
    // Grows by what arrives only (see `transport::read_some`): usually one small allocation.
    let mut first = BytesMut::new();
    let kind = loop {
        match sniff(&first) {
            Sniff::NeedMore if first.len() < MAX_SNIFF_LEN => {}
            Sniff::NeedMore => break Sniff::Tcp,
            decided => break decided,
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout_at(deadline, crate::transport::read_some(&mut stream, &mut first)) => r,
        };
        match read {
            Err(_) => {
                ConnectorStats::incr(&inner.stats.handshake_timeouts);
                tracing::debug!("closed: no bytes to sniff before the handshake timeout");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "read error while sniffing");
                return;
            }
        }
    };
    let max = inner.config.max_package_size;
    let transport = if kind == Sniff::WebSocket {
        let ws_config = WebSocketConfig::default()
            // Max message = max package size (plus its 4-byte header); bounded write buffer.
            .max_message_size(Some(max + 4))
            .max_frame_size(Some(max + 4))
            .write_buffer_size(0)
            .max_write_buffer_size(inner.config.max_write_batch.max(max + 4) * 2);
        let io = Rewind::new(first.freeze(), stream);
        let accept = tokio::select! {
            () = shutdown.cancelled() => return,
            // Boxed: the upgrade future is large, and the connection task's future is as
            // large as its largest phase for the connection's whole life.
            r = tokio::time::timeout_at(
                deadline,
                Box::pin(tokio_tungstenite::accept_async_with_config(io, Some(ws_config))),
            ) => r,
        };
        match accept {
            Ok(Ok(ws)) => Transport::Ws {
                ws: Box::new(ws),
                max_body_len: max,
            },
            Ok(Err(e)) => {
                ConnectorStats::incr(&inner.stats.protocol_errors);
                tracing::debug!(cause = %e, "websocket upgrade failed");
                return;
            }
            Err(_) => {
                ConnectorStats::incr(&inner.stats.handshake_timeouts);
                tracing::debug!("closed: websocket upgrade not done before the handshake timeout");
                return;
            }
        }
    } else {
        Transport::Tcp {
            io: stream,
            rbuf: first,
            decoder: shaddock_protocol::package::PackageDecoder::new(max),
        }
    };
    let session = inner.sessions.create(peer, inner.config.queue_capacity);
    tracing::debug!(
        sid = session.id(),
        ws = kind == Sniff::WebSocket,
        "connection open"
    );
    let mut driver = Driver {
        inner: inner.clone(),
        session: session.clone(),
        transport,
        shutdown,
        inflight: Arc::new(Semaphore::new(inner.config.max_in_flight)),
        waiting: VecDeque::new(),
    };
    // `run(&mut self)`: an `async fn` taking `self` by value keeps two copies of it.
    let reason = driver.run().await;
    drop(driver);
    tracing::debug!(sid = session.id(), %reason, "connection closed");
    inner.sessions.remove(&session, &reason);
}

struct Driver<S> {
    inner: Arc<Inner>,
    session: Session,
    transport: Transport<S>,
    shutdown: CancellationToken,
    /// Messages of this connection being handled at once (`max_in_flight` permits).
    inflight: Arc<Semaphore>,
    /// Messages received while all permits were taken; the socket is not read meanwhile.
    waiting: VecDeque<Message>,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

fn describe(reason: &CloseReason) -> String {
    match reason {
        CloseReason::HandshakeTimeout => "handshake timeout".into(),
        CloseReason::HeartbeatTimeout => "heartbeat timeout".into(),
        CloseReason::HandshakeRejected(code) => format!("handshake refused with code {code}"),
        CloseReason::Kicked(r) => format!("kicked: {r}"),
        CloseReason::UnexpectedPackage(t) => format!("client sent a {} package", t.name()),
        CloseReason::Local => "closed".into(),
        other => format!("{other:?}"),
    }
}

impl<S> Driver<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Runs the connection to its end; returns the close reason.
    async fn run(&mut self) -> String {
        let stats = self.inner.stats.clone();
        let mut conn = ServerConnection::new(self.inner.connection, now_std());
        let mut bucket = self
            .inner
            .config
            .rate_limit
            .map(|l| TokenBucket::new(l, now_std()));
        let mut inbound = VecDeque::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut local_reason: Option<String> = None;
        // With a push flush interval: when the queued pushes are due.
        let mut flush_at: Option<Instant> = None;
        loop {
            // 1. Act on what the state machine reported.
            let mut closed: Option<CloseReason> = None;
            while let Some(event) = conn.poll_event() {
                match event {
                    Event::HandshakeRequest(body) => {
                        let (code, reply) = handshake::respond(&self.inner.handshake, &body);
                        if code == 200 {
                            conn.accept_handshake(reply);
                        } else {
                            tracing::debug!(code, "handshake refused");
                            conn.reject_handshake(code, reply);
                        }
                    }
                    Event::Established => tracing::trace!("handshake acknowledged"),
                    Event::Data(body) => {
                        if let Err(reason) = self.on_data(body) {
                            ConnectorStats::incr(&stats.protocol_errors);
                            tracing::debug!(%reason, "malformed message, closing");
                            local_reason = Some(reason);
                            conn.close_local();
                        }
                    }
                    Event::Closed(reason) => closed = Some(reason),
                    _ => {}
                }
            }
            // 2. Write: state-machine packages first, then queued messages, coalesced.
            while let Some(p) = conn.poll_transmit() {
                match p.to_bytes() {
                    Ok(b) => batch.push(b),
                    Err(e) => tracing::error!(cause = %e, "cannot encode package"),
                }
            }
            let mut more = false;
            if closed.is_none() {
                more = self.take_due(&mut batch, &mut flush_at);
            }
            if !batch.is_empty()
                && let Err(reason) = self.write(&mut batch).await
            {
                return reason;
            }
            if let Some(reason) = closed {
                match &reason {
                    CloseReason::HandshakeTimeout => {
                        ConnectorStats::incr(&stats.handshake_timeouts)
                    }
                    CloseReason::HeartbeatTimeout => {
                        ConnectorStats::incr(&stats.heartbeat_timeouts)
                    }
                    CloseReason::UnexpectedPackage(_) => {
                        ConnectorStats::incr(&stats.protocol_errors)
                    }
                    _ => {}
                }
                let _ =
                    tokio::time::timeout(self.inner.config.write_timeout, self.transport.close())
                        .await;
                return local_reason.unwrap_or_else(|| describe(&reason));
            }
            if more {
                // The byte limit of one write left due messages queued: write them first.
                continue;
            }
            // 3. Wait for the next input.
            // One timer for both deadlines: the task's future holds every select branch for
            // the connection's whole life, so each one costs memory per connection.
            let conn_deadline = conn.poll_timeout().map(Instant::from_std);
            let deadline = match (conn_deadline, flush_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    local_reason = Some("server shutdown".into());
                    conn.close_local();
                }
                reason = self.session.kick_requested() => {
                    ConnectorStats::incr(&stats.kicked);
                    tracing::debug!(%reason, "kicking client");
                    // What was queued before the kick (e.g. a response) goes out first.
                    if let Err(reason) = self.flush_before_kick(&mut batch).await {
                        return reason;
                    }
                    conn.kick(&reason);
                }
                permit = self.inflight.clone().acquire_owned(), if !self.waiting.is_empty() => {
                    if let (Ok(permit), Some(msg)) = (permit, self.waiting.pop_front()) {
                        self.spawn_dispatch(msg, permit);
                    }
                }
                // Backpressure: no reading while messages wait for a handler slot.
                read = self.transport.read_packages(&mut inbound), if self.waiting.is_empty() => match read {
                    Ok(true) => {
                        let now = now_std();
                        for package in inbound.drain(..) {
                            if let Some(bucket) = bucket.as_mut()
                                && !bucket.try_take(now)
                            {
                                ConnectorStats::incr(&stats.rate_limited);
                                ConnectorStats::incr(&stats.kicked);
                                tracing::warn!(peer = %self.session.peer_addr(), "inbound rate limit exceeded, kicking");
                                conn.kick("rate limit exceeded");
                                break;
                            }
                            conn.handle_package(package, now);
                        }
                        // Not kept: an idle connection holds no package list.
                        inbound = VecDeque::new();
                    }
                    Ok(false) => {
                        local_reason = Some("closed by client".into());
                        conn.close_local();
                    }
                    Err(e) => {
                        if e.is_protocol() {
                            ConnectorStats::incr(&stats.protocol_errors);
                        }
                        tracing::debug!(cause = %e, "read failed, closing");
                        local_reason = Some(format!("read failed: {e}"));
                        conn.close_local();
                    }
                },
                () = self.session.outbox().woken() => {}
                () = sleep => {
                    // A due flush is taken at the top of the loop.
                    if conn_deadline.is_some_and(|d| d <= Instant::now()) {
                        conn.handle_timeout(now_std());
                    }
                }
            }
        }
    }

    /// Moves the queued messages that are due into `batch`, up to `max_write_batch` bytes;
    /// returns whether due messages are left. A queued response makes everything due. Else
    /// queued pushes become due `push_flush_interval` after the first wake-up that found them
    /// (`flush_at`); without an interval, `push_linger` after it while requests of this
    /// connection are being handled, and at once otherwise.
    fn take_due(&mut self, batch: &mut Vec<Bytes>, flush_at: &mut Option<Instant>) -> bool {
        let outbox = self.session.outbox();
        let (queued, urgent) = outbox.peek();
        if !queued {
            *flush_at = None;
            return false;
        }
        let config = &self.inner.config;
        let hold = config.push_flush_interval.or_else(|| {
            let handling = self.inflight.available_permits() < config.max_in_flight;
            (handling && !config.push_linger.is_zero()).then_some(config.push_linger)
        });
        if let Some(interval) = hold
            && !urgent
        {
            let now = Instant::now();
            match *flush_at {
                None => {
                    *flush_at = Some(now + interval);
                    return false;
                }
                Some(at) if at > now => return false,
                Some(_) => {}
            }
        }
        let more = outbox.take(batch, self.inner.config.max_write_batch, usize::MAX);
        if !more {
            *flush_at = None;
        }
        more
    }

    /// Writes the messages queued when a kick is processed (not those queued after), all
    /// within one `write_timeout`. A client too slow for that is closed without the KICK
    /// (a write cut short may have left half a package on the wire).
    async fn flush_before_kick(&mut self, batch: &mut Vec<Bytes>) -> Result<(), String> {
        let outbox = self.session.outbox();
        let mut left = outbox.len();
        let timeout = self.inner.config.write_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let before = batch.len();
            if left > 0 {
                outbox.take(batch, self.inner.config.max_write_batch, left);
                left -= batch.len() - before;
            }
            if batch.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.transport.write_batch(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(cause = %e, "write failed, closing");
                    return Err(format!("write failed: {e}"));
                }
                Err(_) => {
                    tracing::warn!(peer = %self.session.peer_addr(), ?timeout, "queued messages not written before the kick in time, closing");
                    return Err("write timeout while flushing before a kick".into());
                }
            }
        }
        Ok(())
    }

    /// Writes `batch` as one write (one WebSocket message); empties it.
    async fn write(&mut self, batch: &mut Vec<Bytes>) -> Result<(), String> {
        match tokio::time::timeout(
            self.inner.config.write_timeout,
            self.transport.write_batch(batch),
        )
        .await
        {
            Ok(Ok(())) => {
                // Not kept: an idle connection holds no batch list.
                *batch = Vec::new();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "write failed, closing");
                Err(format!("write failed: {e}"))
            }
            Err(_) => {
                tracing::warn!(peer = %self.session.peer_addr(), timeout = ?self.inner.config.write_timeout, "write timed out, closing slow client");
                Err("write timeout".into())
            }
        }
    }

    /// Decodes a DATA body and spawns its handling (or parks it while `max_in_flight`
    /// messages are being handled). `Err` = malformed message: close.
    fn on_data(&mut self, body: Bytes) -> Result<(), String> {
        let msg = Message::decode(body).map_err(|e| format!("malformed message: {e}"))?;
        match msg.kind {
            MessageType::Request | MessageType::Notify => {}
            other => return Err(format!("client sent a {} message", other.name())),
        }
        if self.waiting.is_empty()
            && let Ok(permit) = self.inflight.clone().try_acquire_owned()
        {
            self.spawn_dispatch(msg, permit);
        } else {
            self.waiting.push_back(msg);
        }
        Ok(())
    }

    fn spawn_dispatch(&self, msg: Message, permit: OwnedSemaphorePermit) {
        let inner = self.inner.clone();
        let session = self.session.clone();
        let request = self.inner.requests.token();
        self.inner.tracker.spawn(
            async move {
                dispatch(inner, session.clone(), msg).await;
                drop(permit);
                // Pushes lingering for this request are due now (see `take_due`).
                session.outbox().wake_if_queued();
                drop(request);
            }
            .in_current_span(),
        );
    }
}

/// Handles one request or notify and queues its response.
async fn dispatch(inner: Arc<Inner>, session: Session, msg: Message) {
    // "An id of 0 means no response wanted" (§4.2).
    let wants_reply = msg.kind == MessageType::Request && msg.id != 0;
    let route: String = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => {
            match inner.codec.dictionary.as_ref().and_then(|d| d.route(*code)) {
                Some(r) => r.as_str().to_owned(),
                None => {
                    tracing::warn!(code, "unknown route code");
                    if wants_reply {
                        reply(
                            &inner,
                            &session,
                            msg.id,
                            "",
                            &HandlerError::internal(format!("unknown route code {code}")).to_body(),
                        );
                    }
                    return;
                }
            }
        }
        _ => return,
    };
    let info = RequestInfo {
        route,
        id: msg.id,
        kind: msg.kind,
    };
    let outcome = run_request(&inner, &session, &info, &msg.body).await;
    for f in &inner.after {
        f.after(&info, &session, &outcome);
    }
    if let Err(e) = &outcome {
        tracing::debug!(route = %info.route, code = e.code, error = %e.message, "request failed");
    }
    if wants_reply {
        let body = match outcome {
            Ok(Value::Null) => Value::Object(serde_json::Map::new()),
            Ok(v) => v,
            Err(e) => match &inner.error_handler {
                Some(h) => h(&info, &session, &e),
                None => e.to_body(),
            },
        };
        reply(&inner, &session, info.id, &info.route, &body);
    }
}

async fn run_request(
    inner: &Inner,
    session: &Session,
    info: &RequestInfo,
    raw: &Bytes,
) -> Result<Value, HandlerError> {
    let parsed = Route::parse(&info.route).map_err(|_| {
        tracing::warn!(route = %info.route, "route is not serverType.handler.method");
        HandlerError::internal(format!("invalid route `{}`", info.route))
    })?;
    let body = inner
        .codec
        .decode(&info.route, raw)
        .map_err(|e| HandlerError::internal(format!("invalid request body: {e}")))?;
    for f in &inner.before {
        f.before(info, &body, session)?;
    }
    if parsed.server_type == inner.config.server_type {
        let Some(handler) = inner.handlers.get(&info.route) else {
            tracing::warn!(route = %info.route, "no handler for route");
            return Err(HandlerError::internal(format!(
                "unknown route `{}`",
                info.route
            )));
        };
        handler.call(session.clone(), body).await
    } else {
        let Some(forwarder) = &inner.forwarder else {
            tracing::warn!(route = %info.route, "no forwarder for a remote route");
            return Err(HandlerError::internal(format!(
                "no server of type `{}`",
                parsed.server_type
            )));
        };
        let server_type = parsed.server_type.to_owned();
        forwarder
            .forward(ForwardRequest {
                info: info.clone(),
                server_type,
                session: session.clone(),
                body,
            })
            .await
    }
}

fn reply(inner: &Inner, session: &Session, id: u32, route: &str, body: &Value) {
    match inner.codec.response_package(id, route, body) {
        Ok(bytes) => {
            if let Err(e) = session.send_response(bytes) {
                tracing::debug!(cause = %e, "response not queued");
            }
        }
        Err(e) => tracing::error!(cause = %e, id, "cannot encode response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A frontend with `uids.len()` sessions (no connections), bound to the given uids.
    fn frontend_with_sessions(uids: &[Option<&str>]) -> (Frontend, Vec<Session>) {
        let frontend = Frontend::builder(ConnectorConfig::default())
            .build()
            .unwrap();
        let sessions = (0..uids.len())
            .map(|i| {
                let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                let s = frontend.inner.sessions.create(peer, 4);
                if let Some(uid) = uids[i] {
                    s.bind(uid).unwrap();
                }
                s
            })
            .collect();
        (frontend, sessions)
    }

    #[test]
    fn a_push_to_many_sessions_shares_one_buffer() {
        let (frontend, receivers) = frontend_with_sessions(&[None, None, None]);
        let sids: Vec<SessionId> = receivers.iter().map(Session::id).collect();
        let report = frontend
            .push_many(&sids, "onChat", &json!({"msg": "once"}))
            .unwrap();
        assert_eq!(report.sent, 3);
        let got: Vec<Bytes> = receivers
            .iter()
            .map(|session| {
                let mut batch = Vec::new();
                session.outbox().take(&mut batch, usize::MAX, usize::MAX);
                assert_eq!(batch.len(), 1);
                batch.remove(0)
            })
            .collect();
        // Same bytes, same allocation: encoded once, shared by all three queues.
        assert!(
            got.iter()
                .all(|b| b.as_ptr() == got[0].as_ptr() && b.len() == got[0].len())
        );
        let msg = Message::decode(got[0].slice(4..)).unwrap();
        assert_eq!(msg.kind, MessageType::Push);
        assert_eq!(&msg.body[..], br#"{"msg":"once"}"#);
    }

    #[test]
    fn a_packed_uid_list_reaches_every_session_of_each_uid() {
        let (frontend, all) =
            frontend_with_sessions(&[Some("alice"), Some("bob"), Some("alice"), Some("carol")]);
        let package = Bytes::from_static(b"pkg");
        // alice (2 sessions), bob, an unknown uid, and bytes that are not UTF-8.
        let report = frontend.push_encoded_to_uid_list(b"alice\0nobody\0bob\0\xff\0", &package);
        assert_eq!((report.sent, report.missing, report.full), (3, 2, 0));
        let queued: Vec<usize> = all.iter().map(|s| s.outbox().len()).collect();
        assert_eq!(queued, vec![1, 1, 1, 0], "carol was not a target");
        // All UTF-8 (the usual case, checked in one go).
        let report = frontend.push_encoded_to_uid_list(b"carol\0nobody\0alice\0", &package);
        assert_eq!((report.sent, report.missing, report.full), (3, 1, 0));
        let queued: Vec<usize> = all.iter().map(|s| s.outbox().len()).collect();
        assert_eq!(queued, vec![2, 1, 2, 1]);
    }

    #[test]
    fn config_is_validated() {
        let c = ConnectorConfig {
            heartbeat_interval: Some(Duration::from_millis(1500)),
            ..ConnectorConfig::default()
        };
        assert!(matches!(
            Frontend::builder(c).build(),
            Err(Error::InvalidConfig(_))
        ));
        let c = ConnectorConfig {
            queue_capacity: 0,
            ..ConnectorConfig::default()
        };
        assert!(Frontend::builder(c).build().is_err());
    }
}
