//! [`RpcClient`]: one lazily connected, multiplexed connection per peer; typed and raw calls.

use crate::config::RpcConfig;
use crate::directory::{
    Crc32Router, PeerDirectory, PeerEntry, Router, ServerId, ServerInfo, Target,
};
use crate::error::RpcError;
use crate::frame::{CodecError, Frame, FrameCodec, Name, Namespace, WireError};
use crate::hash::FastMap;
use crate::io::spawn_writer;
use crate::payload::Payload;
use bytes::Bytes;
use futures_util::StreamExt;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

/// Calls remotes on peer servers. Cheap to clone; clones share connections.
///
/// - One connection per peer id, opened on the first call to it and shared by every call
///   (requests carry ids; responses are matched to them in any order).
/// - The first call to a peer waits for the connect (at most `connect_timeout`). Once a peer
///   has gone down, calls fail fast with [`RpcError::PeerDown`] while a background task
///   reconnects with exponential backoff; after `reconnect_max_attempts` failures it stops,
///   and the next call tries again.
/// - When a connection drops, every call in flight on it fails at once with
///   [`RpcError::ConnectionLost`]; every call is bounded by `call_timeout` in any case.
/// - Removing a peer from the [`PeerDirectory`] closes its connection.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
    /// This handle's per-call timeout (see [`RpcClient::with_call_timeout`]).
    call_timeout: std::time::Duration,
}

struct ClientInner {
    directory: PeerDirectory,
    config: Arc<RpcConfig>,
    routers: RwLock<FastMap<String, Arc<dyn Router>>>,
    default_router: Arc<dyn Router>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("directory", &self.inner.directory)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client with its own, empty peer directory.
    pub fn new(config: RpcConfig) -> Self {
        Self::with_directory(PeerDirectory::new(), config)
    }

    /// A client over an existing directory. Connections live in the directory's entries, so
    /// use one client per directory (clone the client to share it).
    pub fn with_directory(directory: PeerDirectory, config: RpcConfig) -> Self {
        Self {
            call_timeout: config.call_timeout,
            inner: Arc::new(ClientInner {
                directory,
                config: Arc::new(config),
                routers: RwLock::new(FastMap::default()),
                default_router: Arc::new(Crc32Router),
            }),
        }
    }

    /// A handle sharing this client's connections whose calls time out after `timeout`
    /// instead of `RpcConfig::call_timeout` (stubs built from it inherit it).
    pub fn with_call_timeout(&self, timeout: std::time::Duration) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            call_timeout: timeout,
        }
    }

    /// The state of the connection to peer `id`, or `None` if the peer is unknown.
    pub fn peer_state(&self, id: &str) -> Option<PeerState> {
        let entry = self.inner.directory.entry(id)?;
        let Some(link) = entry.link.get() else {
            return Some(PeerState::Idle);
        };
        let state = match &*link.shared.state.borrow() {
            LinkState::Idle { last_error: None } => PeerState::Idle,
            LinkState::Idle {
                last_error: Some(e),
            } => PeerState::Down {
                reason: e.to_string(),
            },
            LinkState::Connecting { .. } => PeerState::Connecting,
            LinkState::Up(_) => PeerState::Up,
            LinkState::Down { reason } => PeerState::Down {
                reason: reason.to_string(),
            },
        };
        Some(state)
    }

    /// Tells the client that peer `id` is about to leave on purpose (it was asked to stop,
    /// or the cluster is stopping): from now until the peer is removed from the directory,
    /// its connection ending (or a connect to it failing) is logged at DEBUG, and the client
    /// does not reconnect in the background (a later call still tries once). Returns `false`
    /// if `id` is not in the directory.
    pub fn expect_departure(&self, id: &str) -> bool {
        let Some(entry) = self.inner.directory.entry(id) else {
            return false;
        };
        entry
            .link
            .get_or_init(|| Link::new(&entry.info, &self.inner.config))
            .shared
            .departing
            .store(true, Ordering::Relaxed);
        true
    }

    /// Whether peer `id` was marked with [`RpcClient::expect_departure`]: a failed call to it
    /// is then routine (callers may log it at DEBUG).
    pub fn is_departing(&self, id: &str) -> bool {
        self.inner.directory.entry(id).is_some_and(|e| {
            e.link
                .get()
                .is_some_and(|l| l.shared.departing.load(Ordering::Relaxed))
        })
    }

    /// The live peers; add and remove servers here.
    pub fn directory(&self) -> &PeerDirectory {
        &self.inner.directory
    }

    /// The limits and timeouts in use.
    pub fn config(&self) -> &RpcConfig {
        &self.inner.config
    }

    /// Uses `router` for calls routed to `server_type` (default: [`Crc32Router`]).
    pub fn set_router(&self, server_type: impl Into<String>, router: Arc<dyn Router>) {
        self.inner
            .routers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server_type.into(), router);
    }

    /// Which server a target resolves to now.
    ///
    /// # Errors
    /// [`RpcError::UnknownPeer`] (also when the router chose a server that is not in the
    /// directory) or [`RpcError::NoServer`] (the router chose none).
    pub fn resolve(&self, target: Target<'_>) -> Result<ServerInfo, RpcError> {
        self.entry(target).map(|e| e.info.clone())
    }

    fn router(&self, server_type: &str) -> Arc<dyn Router> {
        self.inner
            .routers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(server_type)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.inner.default_router))
    }

    fn entry(&self, target: Target<'_>) -> Result<Arc<PeerEntry>, RpcError> {
        let dir = &self.inner.directory;
        match target {
            Target::Server(id) => dir.entry(id).ok_or_else(|| RpcError::UnknownPeer {
                server_id: id.to_owned(),
            }),
            Target::Route { server_type, key } => {
                let servers = dir.servers_of_type(server_type);
                let router = self.router(server_type);
                let no_server = || RpcError::NoServer {
                    server_type: server_type.to_owned(),
                };
                let id = router.route(key, &servers).ok_or_else(no_server)?;
                // A router may keep a key on a server that is not live now (a stable
                // placement over the configured servers): that call fails fast, naming it.
                dir.entry(id.as_str()).ok_or_else(|| RpcError::UnknownPeer {
                    server_id: id.to_string(),
                })
            }
        }
    }

    /// Calls `service.method` in `namespace` on `target` with a typed argument and reply.
    /// The [`remote!`](crate::remote!) stubs call this.
    ///
    /// # Errors
    /// Any [`RpcError`]; see the type's docs.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: its reply, if any, is discarded.
    pub async fn call<A: Payload, R: Payload>(
        &self,
        target: Target<'_>,
        namespace: Namespace,
        service: &'static str,
        method: &'static str,
        args: A,
    ) -> Result<R, RpcError> {
        let service = Name::from_static(service).map_err(RpcError::from_frame)?;
        let method = Name::from_static(method).map_err(RpcError::from_frame)?;
        let reply = self
            .call_raw(target, namespace, service, method, args.into_payload())
            .await?;
        R::from_payload(reply).map_err(|e| RpcError::Decode { message: e.message })
    }

    /// The link to the peer `target` resolves to, once a frame body of `body_len` bytes (length
    /// prefix excluded) is known to fit `max_frame_size`. Returns the link's shared state, not
    /// the directory entry: removing the peer must drop (and so close) the link even while calls
    /// are waiting on it.
    fn link_for(
        &self,
        target: Target<'_>,
        body_len: usize,
    ) -> Result<(LinkHandle, ServerId), RpcError> {
        let entry = self.entry(target)?;
        let cfg = &self.inner.config;
        if body_len > cfg.max_frame_size {
            return Err(RpcError::FrameTooLarge {
                len: body_len,
                max: cfg.max_frame_size,
            });
        }
        let link = entry
            .link
            .get_or_init(|| Link::new(&entry.info, cfg))
            .handle();
        Ok((link, entry.info.id.clone()))
    }

    /// Calls with raw payload bytes in and out (no copies; for forwarding pre-encoded data).
    ///
    /// # Errors
    /// Any [`RpcError`]; see the type's docs.
    ///
    /// # Cancel safety
    /// As [`RpcClient::call`].
    pub async fn call_raw(
        &self,
        target: Target<'_>,
        namespace: Namespace,
        service: Name,
        method: Name,
        payload: Bytes,
    ) -> Result<Bytes, RpcError> {
        // One call of `call_raw_inner` for both cases: its future is this one's largest
        // part, and two await points on it made the state hold it twice.
        let started = self
            .inner
            .config
            .metrics
            .as_ref()
            .map(|_| std::time::Instant::now());
        let mut peer = None;
        let r = self
            .call_raw_inner(target, namespace, service, method, payload, &mut peer)
            .await;
        if let (Some(started), Some(metrics)) = (started, &self.inner.config.metrics) {
            match peer {
                Some(p) => p.call(started.elapsed(), r.as_ref().err()),
                None => {
                    if let Err(e) = &r {
                        metrics.unresolved(e);
                    }
                }
            }
        }
        r
    }

    /// [`RpcClient::call_raw`]; sets `peer` to the metrics of the chosen peer once it is known.
    async fn call_raw_inner(
        &self,
        target: Target<'_>,
        namespace: Namespace,
        service: Name,
        method: Name,
        payload: Bytes,
        peer: &mut Option<crate::metrics::PeerMetrics>,
    ) -> Result<Bytes, RpcError> {
        let body_len = crate::frame::request_body_len(&service, &method, payload.len());
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        let (link, server_id) = match self.link_for(target, body_len) {
            // A key its router does not know yet: the router places it (bounded by the
            // call's deadline), then the call goes to that server. Boxed: the placement's
            // state is not carried by every call's future.
            Err(RpcError::NoServer { server_type }) => {
                let Target::Route { key, .. } = target else {
                    return Err(RpcError::NoServer { server_type });
                };
                Box::pin(self.place(server_type, key, deadline, &service, &method, body_len))
                    .await?
            }
            r => r?,
        };
        peer.clone_from(&link.shared.metrics);
        let server_id = &server_id;
        // The connect wait counts against the call's deadline too.
        let exchange = async {
            // Connected: no wait. Else the wait for the connect, boxed so that its state is
            // not carried by every call's future.
            let conn = match link.conn_now() {
                Some(conn) => conn,
                None => Box::pin(link.conn()).await?,
            };
            let lost = || conn.pending.lost_error(server_id);
            let (id, rx) = conn.pending.register().ok_or_else(lost)?;
            let mut guard = PendingGuard {
                pending: &conn.pending,
                id,
                armed: true,
            };
            let frame = Frame::Request {
                id,
                namespace,
                service: service.clone(),
                method: method.clone(),
                payload,
            };
            // Room in the queue: no wait (what `send` would do, without its future in this
            // one's state); else the wait, boxed. Waiting senders are served first either way
            // (a permit released while they wait goes to them).
            match conn.tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    Box::pin(conn.tx.send(frame)).await.map_err(|_| lost())?;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(lost()),
            }
            let r = rx.await;
            // Resolved or dropped: the entry is gone from the map either way.
            guard.armed = false;
            r.map_err(|_| lost())
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(wire))) => Err(RpcError::from_wire(wire)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RpcError::Timeout {
                server_id: server_id.clone(),
                service: service.to_string(),
                method: method.to_string(),
                after: self.call_timeout,
            }),
        }
    }

    /// Places a key its router has no server for yet (see [`Router::place`]), bounded by
    /// the call's `deadline`; the link to the server chosen.
    async fn place(
        &self,
        server_type: String,
        key: &[u8],
        deadline: tokio::time::Instant,
        service: &Name,
        method: &Name,
        body_len: usize,
    ) -> Result<(LinkHandle, ServerId), RpcError> {
        let Some(placing) = self.router(&server_type).place(key) else {
            return Err(RpcError::NoServer { server_type });
        };
        let id = tokio::time::timeout_at(deadline, placing)
            .await
            .map_err(|_| RpcError::Timeout {
                server_id: ServerId::from(format!("placement of a `{server_type}` key")),
                service: service.as_str().to_owned(),
                method: method.as_str().to_owned(),
                after: self.call_timeout,
            })??;
        self.link_for(Target::Server(id.as_str()), body_len)
    }

    /// Sends a one-way call with a typed argument; returns once it is queued for writing.
    ///
    /// # Errors
    /// Resolution, connection and size errors; the remote's outcome is never reported.
    pub async fn notify<A: Payload>(
        &self,
        target: Target<'_>,
        namespace: Namespace,
        service: &'static str,
        method: &'static str,
        args: A,
    ) -> Result<(), RpcError> {
        let service = Name::from_static(service).map_err(RpcError::from_frame)?;
        let method = Name::from_static(method).map_err(RpcError::from_frame)?;
        self.notify_raw(target, namespace, service, method, args.into_payload())
            .await
    }

    /// Sends a one-way call with a raw payload.
    ///
    /// # Errors
    /// As [`RpcClient::notify`].
    pub async fn notify_raw(
        &self,
        target: Target<'_>,
        namespace: Namespace,
        service: Name,
        method: Name,
        payload: Bytes,
    ) -> Result<(), RpcError> {
        let frame = Frame::Notify {
            namespace,
            service,
            method,
            payload,
        };
        let (link, server_id) =
            self.link_for(target, frame.encoded_len() - crate::frame::LEN_PREFIX)?;
        // Connected with room in the queue: queued now, no timer (the common case; it also
        // makes a notify that is polled once queue its frame in that poll).
        let frame = match link.conn_now() {
            Some(conn) => match conn.tx.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(frame)) => frame,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(RpcError::ConnectionLost { server_id });
                }
            },
            None => frame,
        };
        let names = match &frame {
            Frame::Notify {
                service, method, ..
            } => (service.to_string(), method.to_string()),
            _ => (String::new(), String::new()),
        };
        let server_id = &server_id;
        let send = async {
            let conn = link.conn().await?;
            conn.tx
                .send(frame)
                .await
                .map_err(|_| RpcError::ConnectionLost {
                    server_id: server_id.clone(),
                })
        };
        match tokio::time::timeout(self.call_timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout {
                server_id: server_id.clone(),
                service: names.0,
                method: names.1,
                after: self.call_timeout,
            }),
        }
    }
}

/// The client's view of one peer connection (see [`RpcClient::peer_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerState {
    /// Not connected and not trying: never called yet, or gave up (the next call retries).
    Idle,
    /// A connect attempt is under way.
    Connecting,
    /// Connected; calls go out.
    Up,
    /// Down; calls fail fast while the client retries with backoff (or has given up).
    Down {
        /// The last connect or connection error.
        reason: String,
    },
}

/// Calls waiting for a response on one connection, by request id.
struct Pending {
    map: Mutex<PendingMap>,
    next_id: AtomicU32,
}

/// Why a connection's calls were failed.
#[derive(Clone, Copy)]
enum Lost {
    /// The connection closed or broke.
    Connection,
    /// The heartbeat found it silent for this long.
    Unresponsive(std::time::Duration),
}

#[derive(Default)]
struct PendingMap {
    /// Set when the connection is gone; no call may register after that.
    closed: Option<Lost>,
    calls: FastMap<u32, oneshot::Sender<Result<Bytes, WireError>>>,
}

type Reply = oneshot::Receiver<Result<Bytes, WireError>>;

impl Pending {
    fn new() -> Self {
        Self {
            map: Mutex::new(PendingMap::default()),
            next_id: AtomicU32::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        // Every critical section is a single map operation; poison carries no broken state.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self) -> Option<(u32, Reply)> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.lock();
        if map.closed.is_some() {
            return None;
        }
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Ids wrap after 2^32 calls; skip one still in flight (a call stuck until timeout).
        while map.calls.contains_key(&id) {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        map.calls.insert(id, tx);
        Some((id, rx))
    }

    fn complete(&self, id: u32, result: Result<Bytes, WireError>) {
        let waiter = self.lock().calls.remove(&id);
        match waiter {
            // The caller may have just given up; nothing to do then.
            Some(tx) => drop(tx.send(result)),
            None => debug!(
                id,
                "rpc response for no waiting call (timed out or abandoned)"
            ),
        }
    }

    /// The error of a call whose connection went away (see [`Pending::close`]).
    fn lost_error(&self, server_id: &ServerId) -> RpcError {
        match self.lock().closed {
            Some(Lost::Unresponsive(silent_for)) => RpcError::PeerUnresponsive {
                server_id: server_id.clone(),
                silent_for,
            },
            _ => RpcError::ConnectionLost {
                server_id: server_id.clone(),
            },
        }
    }

    /// Fails every waiting call (their senders are dropped) and refuses new ones.
    fn close(&self, why: Lost) {
        let calls = {
            let mut map = self.lock();
            map.closed.get_or_insert(why);
            std::mem::take(&mut map.calls)
        };
        if !calls.is_empty() {
            debug!(
                in_flight = calls.len(),
                "failing rpc calls in flight: connection lost"
            );
        }
        drop(calls);
    }
}

/// Removes an abandoned call (timed out or dropped) from the pending map.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u32,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.lock().calls.remove(&self.id);
        }
    }
}

/// What callers need of a live connection.
#[derive(Clone)]
struct Conn {
    tx: mpsc::Sender<Frame>,
    pending: Arc<Pending>,
}

#[derive(Clone)]
enum LinkState {
    /// No driver task runs: never used, or it gave up reconnecting.
    Idle { last_error: Option<Arc<str>> },
    /// A connect attempt is under way. Callers wait only for the first attempt.
    Connecting { initial: bool, last_error: Arc<str> },
    /// Connected.
    Up(Conn),
    /// Waiting to reconnect.
    Down { reason: Arc<str> },
}

struct LinkShared {
    server_id: ServerId,
    host: String,
    addr: String,
    config: RpcConfig,
    cancel: CancellationToken,
    state: watch::Sender<LinkState>,
    /// How the last connect attempt failed: [`FAILED_OTHER`], [`FAILED_AUTH`] (callers then
    /// get [`RpcError::AuthFailed`] instead of [`RpcError::PeerDown`]) or [`FAILED_TLS`]
    /// ([`RpcError::TlsFailed`]).
    failure: std::sync::atomic::AtomicU8,
    /// Where this peer's calls are counted, if anywhere.
    metrics: Option<crate::metrics::PeerMetrics>,
    /// Set by [`RpcClient::expect_departure`]: the peer leaves on purpose (losses at DEBUG,
    /// no background reconnect).
    departing: AtomicBool,
}

const FAILED_OTHER: u8 = 0;
const FAILED_AUTH: u8 = 1;
const FAILED_TLS: u8 = 2;

/// The connection slot of one peer entry; dropping it closes the connection.
pub(crate) struct Link {
    shared: Arc<LinkShared>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Link {
    fn handle(&self) -> LinkHandle {
        LinkHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    fn new(info: &ServerInfo, config: &RpcConfig) -> Self {
        let (state, _) = watch::channel(LinkState::Idle { last_error: None });
        Self {
            shared: Arc::new(LinkShared {
                server_id: info.id.clone(),
                host: info.host.clone(),
                addr: info.addr(),
                config: config.clone(),
                cancel: CancellationToken::new(),
                state,
                failure: std::sync::atomic::AtomicU8::new(FAILED_OTHER),
                metrics: config.metrics.as_ref().map(|m| m.peer(info.id.as_str())),
                departing: AtomicBool::new(false),
            }),
        }
    }
}

/// What a call holds of a link while it runs; does not keep the connection open.
struct LinkHandle {
    shared: Arc<LinkShared>,
}

impl LinkHandle {
    fn down(&self, reason: &str) -> RpcError {
        match self.shared.failure.load(Ordering::Relaxed) {
            FAILED_AUTH => {
                return RpcError::AuthFailed {
                    server_id: self.shared.server_id.clone(),
                    addr: self.shared.addr.clone(),
                    reason: reason.to_owned(),
                };
            }
            FAILED_TLS => {
                return RpcError::TlsFailed {
                    server_id: self.shared.server_id.clone(),
                    addr: self.shared.addr.clone(),
                    reason: reason.to_owned(),
                };
            }
            _ => {}
        }
        RpcError::PeerDown {
            server_id: self.shared.server_id.clone(),
            addr: self.shared.addr.clone(),
            reason: reason.to_owned(),
        }
    }

    /// The live connection if the link is up now.
    fn conn_now(&self) -> Option<Conn> {
        match &*self.shared.state.borrow() {
            LinkState::Up(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// The live connection, starting the driver (and waiting for its first attempt) if none
    /// runs; fails fast while the peer is down.
    async fn conn(&self) -> Result<Conn, RpcError> {
        // Fast path: connected.
        if let LinkState::Up(c) = &*self.shared.state.borrow() {
            return Ok(c.clone());
        }
        let mut rx = self.shared.state.subscribe();
        let wait_limit = self.shared.config.connect_timeout + std::time::Duration::from_secs(1);
        // A caller waits for one connect attempt at most. Once it has seen one under way, an
        // `Idle` state means the driver gave up on it (`reconnect_max_attempts` reached): that
        // is this call's answer, not a cue to start another driver (which would spin, as
        // every driver with `reconnect_max_attempts = 1` gives up after one failure).
        let mut attempted = false;
        loop {
            let start = {
                let state = rx.borrow_and_update();
                match &*state {
                    LinkState::Up(c) => return Ok(c.clone()),
                    LinkState::Down { reason } => return Err(self.down(reason)),
                    LinkState::Connecting {
                        initial: false,
                        last_error,
                    } => return Err(self.down(&format!("reconnecting after: {last_error}"))),
                    LinkState::Connecting { initial: true, .. } => {
                        attempted = true;
                        false
                    }
                    LinkState::Idle { last_error } if attempted => {
                        let reason = last_error.as_deref().unwrap_or("connect attempt failed");
                        return Err(self.down(reason));
                    }
                    LinkState::Idle { .. } => true,
                }
            };
            if start {
                let won = self.shared.state.send_if_modified(|s| {
                    if let LinkState::Idle { last_error } = s {
                        *s = LinkState::Connecting {
                            initial: true,
                            last_error: last_error.clone().unwrap_or_else(|| Arc::from("")),
                        };
                        true
                    } else {
                        false
                    }
                });
                if won {
                    attempted = true;
                    let shared = Arc::clone(&self.shared);
                    let span = tracing::info_span!(
                        "rpc_peer",
                        server_id = %shared.server_id,
                        addr = %shared.addr
                    );
                    tokio::spawn(drive(shared).instrument(span));
                }
                continue;
            }
            match tokio::time::timeout(wait_limit, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(self.down("connect did not finish in time")),
            }
        }
    }
}

/// Connects, runs the connection, reconnects with backoff; ends when the link is dropped or
/// after `reconnect_max_attempts` failed connects in a row.
async fn drive(shared: Arc<LinkShared>) {
    let cfg = &shared.config;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::time::timeout(cfg.connect_timeout, connect(&shared));
        let result = tokio::select! {
            r = attempt => r,
            () = shared.cancel.cancelled() => break,
        };
        let failure = match &result {
            Ok(Err(ConnectError::Auth(_))) => FAILED_AUTH,
            Ok(Err(ConnectError::Tls(_))) => FAILED_TLS,
            _ => FAILED_OTHER,
        };
        shared.failure.store(failure, Ordering::Relaxed);
        let reason: Arc<str> = match result {
            Ok(Ok(stream)) => {
                failures = 0;
                debug!("rpc peer connected");
                let reason = run_connection(stream, &shared).await;
                if shared.cancel.is_cancelled() {
                    break;
                }
                if shared.departing.load(Ordering::Relaxed) {
                    debug!(reason = %reason, "rpc peer left as expected; not reconnecting");
                    shared.state.send_replace(LinkState::Idle {
                        last_error: Some(Arc::from(format!("peer departed: {reason}"))),
                    });
                    return;
                }
                warn!(reason = %reason, "rpc connection lost; reconnecting");
                // Try again at once: the peer may have restarted.
                shared.state.send_replace(LinkState::Connecting {
                    initial: false,
                    last_error: Arc::clone(&reason),
                });
                continue;
            }
            Ok(Err(ConnectError::Other(e))) => Arc::from(e),
            Ok(Err(ConnectError::Auth(e))) => {
                warn!(reason = %e, "rpc authentication failed");
                Arc::from(format!("authentication failed: {e}"))
            }
            Ok(Err(ConnectError::Tls(e))) => {
                warn!(reason = %e, "rpc TLS failed");
                Arc::from(e)
            }
            Err(_) => Arc::from(format!(
                "connect timed out after {:?} (TCP connect, TLS if configured, and the first \
                 ping/pong or the cluster-secret handshake)",
                cfg.connect_timeout
            )),
        };
        failures += 1;
        if shared.departing.load(Ordering::Relaxed) {
            debug!(reason = %reason, "rpc peer is gone as expected; not retrying");
            shared.state.send_replace(LinkState::Idle {
                last_error: Some(reason),
            });
            return;
        }
        if failures >= cfg.reconnect_max_attempts.max(1) {
            warn!(reason = %reason, failures, "rpc peer unreachable; giving up until the next call");
            shared.state.send_replace(LinkState::Idle {
                last_error: Some(reason),
            });
            return;
        }
        let delay = cfg.backoff(failures);
        debug!(reason = %reason, failures, ?delay, "rpc connect failed; backing off");
        shared.state.send_replace(LinkState::Down {
            reason: Arc::clone(&reason),
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.cancel.cancelled() => break,
        }
        shared.state.send_replace(LinkState::Connecting {
            initial: false,
            last_error: reason,
        });
    }
    shared.state.send_replace(LinkState::Down {
        reason: Arc::from("peer removed from the directory"),
    });
    debug!("rpc peer link closed");
}

/// Why a connect attempt failed.
enum ConnectError {
    /// Socket, timeout or protocol trouble.
    Other(String),
    /// The cluster-secret handshake failed (see [`crate::auth`]).
    Auth(String),
    /// The TLS handshake failed or the peer refused our certificate (see [`crate::tls`]).
    Tls(String),
}

/// The connection error for an I/O error of the handshake phase: a TLS failure when rustls
/// reports one (e.g. the server refused our certificate after a TLS 1.3 handshake, which the
/// client sees on its first read), else `what` and the error.
fn io_failure(what: &str, e: &std::io::Error) -> ConnectError {
    match crate::tls::rustls_cause(e) {
        Some(tls) => ConnectError::Tls(format!("the peer refused the TLS session: {tls}")),
        None => ConnectError::Other(format!("{what}: {e}")),
    }
}

/// A connected stream to a peer: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Largest handshake frame body read by [`connect`] (a challenge is 33 bytes).
const HANDSHAKE_MAX: usize = 1024;

/// Writes one frame to a stream not yet split.
async fn write_frame<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    f: &Frame,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::with_capacity(f.encoded_len());
    f.encode(&mut buf, HANDSHAKE_MAX)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads exactly one frame (no read-ahead, so nothing is left over for the framed reader).
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Frame, ConnectError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; crate::frame::LEN_PREFIX];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| io_failure("read failed", &e))?;
    if len[0] == crate::tls::ALERT_RECORD || len[0] == crate::tls::HANDSHAKE_RECORD {
        // No frame of ours is that long (> 350 MB): this is a TLS record.
        return Err(ConnectError::Tls(
            "the peer speaks TLS (its rpc port requires it) and no TLS is configured here \
             (RpcConfig::tls, master.json rpcTls)"
                .into(),
        ));
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > HANDSHAKE_MAX {
        return Err(ConnectError::Other(format!(
            "handshake frame of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| io_failure("read failed", &e))?;
    Frame::decode_body(Bytes::from(body))
        .map_err(|e| ConnectError::Other(format!("bad handshake frame: {e}")))
}

/// Opens a TCP connection (with TLS when configured) and checks the peer answers before the
/// link counts as up: with a cluster secret, answers its challenge and waits for `auth-ok`
/// with the server's proof (checked: a peer that cannot prove the secret gets no call);
/// without, sends one `ping` and waits for its `pong`. The caller bounds it with
/// `connect_timeout`, so a peer whose kernel accepts but whose process is frozen is not up.
async fn connect(shared: &LinkShared) -> Result<Stream, ConnectError> {
    use ConnectError::Other;
    let stream = TcpStream::connect(&shared.addr)
        .await
        .map_err(|e| Other(format!("connect failed: {e}")))?;
    if let Err(e) = stream.set_nodelay(true) {
        debug!(cause = %e, "set_nodelay failed");
    }
    match &shared.config.tls {
        None => {
            let mut stream = stream;
            greet(&mut stream, shared).await?;
            Ok(Stream::Plain(stream))
        }
        Some(tls) => {
            let name = crate::tls::server_name(&shared.host);
            let mut stream = tls.connector().connect(name, stream).await.map_err(|e| {
                match crate::tls::rustls_cause(&e) {
                    Some(tls) => ConnectError::Tls(format!("TLS handshake failed: {tls}")),
                    None => ConnectError::Tls(format!(
                        "TLS handshake failed: {e} (a peer without TLS on its rpc port?)"
                    )),
                }
            })?;
            greet(&mut stream, shared).await?;
            Ok(Stream::Tls(Box::new(stream)))
        }
    }
}

/// The first exchange on a fresh connection (see [`connect`]).
async fn greet<S>(stream: &mut S, shared: &LinkShared) -> Result<(), ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use ConnectError::{Auth, Other, Tls};
    if let Some(secret) = &shared.config.secret {
        let nonce = match read_frame(stream).await? {
            Frame::Challenge { nonce } => nonce,
            other => {
                return Err(Auth(format!(
                    "expected a challenge (a cluster secret is configured here), got {}",
                    other.kind_name()
                )));
            }
        };
        let info = crate::auth::random_bytes().map_err(Other)?;
        let mac = secret.answer(&nonce, &info);
        let answer = Frame::Auth {
            mac: Bytes::copy_from_slice(&mac),
            info: Bytes::copy_from_slice(&info),
        };
        write_frame(stream, &answer)
            .await
            .map_err(|e| io_failure("auth write failed", &e))?;
        return match read_frame(stream).await {
            Ok(Frame::AuthOk { proof }) if secret.verify_server_proof(&nonce, &info, &proof) => {
                Ok(())
            }
            Ok(Frame::AuthOk { .. }) => Err(Auth(
                "peer accepted our answer but could not prove it knows the cluster secret \
                 (not a server of this cluster)"
                    .into(),
            )),
            Ok(_) => Err(Auth(
                "peer answered our authentication with another frame".into(),
            )),
            Err(Tls(e)) => Err(Tls(e)),
            Err(Auth(e) | Other(e)) => Err(Auth(format!(
                "peer closed the connection after our answer to its challenge \
                 (a different cluster secret?): {e}"
            ))),
        };
    }
    write_frame(stream, &Frame::Ping)
        .await
        .map_err(|e| io_failure("first ping failed", &e))?;
    match read_frame(stream).await {
        Ok(Frame::Pong) => Ok(()),
        Ok(Frame::Challenge { .. }) => Err(Auth(
            "peer requires a cluster secret and none is configured here".into(),
        )),
        Ok(_) => Err(Other(
            "peer answered the first ping with another frame".into(),
        )),
        Err(Other(e)) => Err(Other(format!("no pong to the first ping: {e}"))),
        Err(e) => Err(e),
    }
}

/// Notices a silent link: a flag set per frame received, checked at every heartbeat tick.
struct Silence {
    last_seen: tokio::time::Instant,
    seen: bool,
}

/// Runs one connection until it ends; returns why. Calls in flight fail when it returns.
async fn run_connection(stream: Stream, shared: &LinkShared) -> Arc<str> {
    match stream {
        Stream::Plain(s) => {
            let (rd, wr) = s.into_split();
            run_split(rd, wr, shared).await
        }
        Stream::Tls(s) => {
            let (rd, wr) = tokio::io::split(*s);
            run_split(rd, wr, shared).await
        }
    }
}

async fn run_split<R, W>(rd: R, wr: W, shared: &LinkShared) -> Arc<str>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &shared.config;
    let (tx, rx) = mpsc::channel::<Frame>(cfg.queue_capacity.max(1));
    let pending = Arc::new(Pending::new());
    let stop = shared.cancel.child_token();
    let writer = spawn_writer(wr, rx, cfg.write_batch, cfg.max_frame_size, stop.clone());
    let ping_tx = tx.clone();
    shared.state.send_replace(LinkState::Up(Conn {
        tx,
        pending: Arc::clone(&pending),
    }));
    let mut frames = FramedRead::new(rd, FrameCodec::new(cfg.max_frame_size));
    let period = cfg
        .heartbeat_interval
        .max(std::time::Duration::from_millis(1));
    let start = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval_at(start + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The connect's pong was the last frame seen.
    let mut silence = Silence {
        last_seen: start,
        seen: false,
    };
    let mut lost = Lost::Connection;
    let reason: Arc<str> = loop {
        let next = tokio::select! {
            // Socket first: the token and the timer are only registered on when no frame is
            // ready.
            biased;
            f = frames.next() => f,
            () = stop.cancelled() => break Arc::from("connection closed"),
            now = heartbeat.tick() => {
                if std::mem::take(&mut silence.seen) {
                    silence.last_seen = now;
                } else {
                    let silent = now.saturating_duration_since(silence.last_seen);
                    if silent >= cfg.heartbeat_timeout {
                        warn!(silent_for = ?silent, "rpc peer unresponsive; declaring the link dead");
                        lost = Lost::Unresponsive(silent);
                        break Arc::from(format!("peer unresponsive: nothing received for {silent:?}"));
                    }
                }
                // A full queue means frames are already going out; skip this ping.
                let _ = ping_tx.try_send(Frame::Ping);
                continue;
            }
        };
        if next.is_some() {
            silence.seen = true;
        }
        match next {
            Some(Ok(Frame::Response { id, result })) => pending.complete(id, result),
            Some(Ok(Frame::Pong)) => {}
            Some(Ok(_)) => {
                warn!("closing rpc connection: peer sent a request frame to a client");
                break Arc::from("peer sent a request frame to a client");
            }
            Some(Err(CodecError::Io(e))) => break Arc::from(format!("read failed: {e}")),
            Some(Err(e)) => {
                warn!(cause = %e, "closing rpc connection: bad frame");
                break Arc::from(format!("bad frame: {e}"));
            }
            None => break Arc::from("peer closed the connection"),
        }
    };
    // Order matters: refuse new calls and fail those in flight, then stop the writer.
    pending.close(lost);
    shared.state.send_replace(LinkState::Down {
        reason: Arc::clone(&reason),
    });
    stop.cancel();
    match writer.await {
        Ok(Err(e)) => debug!(cause = %e, "rpc write side failed"),
        Err(e) => warn!(cause = %e, "rpc writer task failed"),
        Ok(Ok(())) => {}
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always the server `chat-9`, live or not (a placement over configured servers).
    struct Fixed;

    impl Router for Fixed {
        fn route(&self, _key: &[u8], _servers: &[ServerInfo]) -> Option<ServerId> {
            Some(ServerId::from("chat-9"))
        }
    }

    #[test]
    fn a_routed_server_missing_from_the_directory_is_an_unknown_peer() {
        let rpc = RpcClient::new(RpcConfig::default());
        rpc.directory()
            .add(ServerInfo::new("chat-1", "chat", "127.0.0.1", 1));
        rpc.set_router("chat", Arc::new(Fixed));
        let err = rpc.resolve(Target::route("chat", "room")).unwrap_err();
        assert!(
            matches!(&err, RpcError::UnknownPeer { server_id } if server_id == "chat-9"),
            "{err:?}"
        );
        // The default router still picks among the live ones only.
        assert_eq!(
            rpc.resolve(Target::route("gate", "room"))
                .map(|s| s.id.to_string())
                .unwrap_err()
                .to_string(),
            "no live `gate` server to route to"
        );
    }
}
