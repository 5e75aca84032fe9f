//! [`Client`]: the cloneable handle — connect and handshake, requests, notifies,
//! subscriptions, close — and the session task that reconnects when a
//! [`ReconnectPolicy`] says so.
//!
//! A client is a *session* over one connection at a time. Each connection (a `Link`) has
//! its own connection task (`driver`), send queue and in-flight requests; the session keeps
//! the subscriptions and the events across connections. The session task waits for each
//! connection task to end and then either closes the session or reconnects.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shaddock_protocol::handshake::{ClientHandshake, HandshakeResponse};
use shaddock_protocol::message::{Message, MessageRoute};
use shaddock_protocol::package::{Package, PackageType};
use shaddock_protocol::protobuf::{Protos, encode_message};
use shaddock_protocol::{RouteDictionary, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, instrument, warn};

use crate::driver::{Answer, ClientDriver, PendingGuard, Requests, RouteCache};
use crate::event::{Event, Events};
use crate::push::{PushStream, Subscribers, decode_value, from_value};
use crate::reconnect::{Backoff, ReconnectPolicy, Resolver, WhileReconnecting};
use crate::transport::{Conn, Io, ReadError, Transport};
use crate::{ClientConfig, ClientTls, DisconnectReason, Error};

/// A pomelo-protocol client. Cheap to clone; every clone drives the same session. The
/// session ends on [`close`](Self::close), when the server ends the connection (unless a
/// [`ReconnectPolicy`] brings it back), or when every handle is
/// dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), shaddock_client::Error> {
/// use serde_json::json;
/// use shaddock_client::{Client, ClientConfig, Transport};
///
/// let (client, _events) =
///     Client::connect("127.0.0.1:3050", Transport::WebSocket, ClientConfig::default()).await?;
/// let mut chat = client.on("onChat");
/// let reply = client
///     .request("connector.entryHandler.enter", &json!({"username": "bob", "rid": "lobby"}))
///     .await?;
/// println!("in the room: {}", reply["users"]);
/// while let Some(push) = chat.recv().await {
///     println!("{}", push.value()?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    session: Arc<Session>,
    /// Set for the handle given to a reconnect hook: bound to the connection being set up.
    link: Option<Arc<Link>>,
    /// Timeout of requests made through this handle.
    timeout: Duration,
}

/// What every handle shares. Dropping the last one ends the session.
struct Session {
    state: watch::Receiver<State>,
    subscribers: Arc<Subscribers>,
    shutdown: CancellationToken,
    while_reconnecting: WhileReconnecting,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Every handle is gone: nobody can use the session any more.
        self.shutdown.cancel();
    }
}

/// Where the session stands.
#[derive(Clone)]
enum State {
    Connected(Arc<Link>),
    /// Lost for this reason; a new connection is being made.
    Reconnecting(DisconnectReason),
    /// Ended for good.
    Closed(DisconnectReason),
}

/// One connection: what requests need to use it.
struct Link {
    peer: String,
    transport: Transport,
    outbound: mpsc::Sender<Bytes>,
    requests: Arc<Requests>,
    dictionary: Option<Arc<RouteDictionary>>,
    protos: Option<Arc<Protos>>,
    handshake: Arc<HandshakeResponse>,
}

impl Link {
    /// The route as it goes on the wire: its dictionary code when it has one.
    fn wire_route(&self, route: &str) -> MessageRoute {
        match &self.dictionary {
            Some(dict) => dict.compress(route),
            None => MessageRoute::name(route),
        }
    }

    fn encode_value(&self, route: &str, body: &Value) -> Result<Bytes, Error> {
        match &self.protos {
            Some(p) if p.has_client_route(route) => Ok(p.client().encode(route, body)?),
            _ => Ok(Bytes::from(json::to_vec(body))),
        }
    }

    fn is_closed(&self) -> bool {
        self.requests.lock().is_closed()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = self.current();
        f.debug_struct("Client")
            .field("peer", &link.as_ref().map(|l| l.peer.clone()))
            .field("transport", &link.as_ref().map(|l| l.transport))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the session task needs to make a new connection.
struct Redial {
    /// The address of the last connection.
    addr: String,
    transport: Transport,
    config: ClientConfig,
    policy: ReconnectPolicy,
    session: Weak<Session>,
    state: watch::Sender<State>,
    events: mpsc::Sender<Event>,
    subscribers: Arc<Subscribers>,
    shutdown: CancellationToken,
}

impl Client {
    /// Connect to `addr` (`host:port`) over `transport`, handshake (with `config.user`),
    /// ack, and start the connection task. Returns the handle and the client's events.
    /// With `config.tls` set, the socket speaks TLS first (and a WebSocket goes to `wss://`).
    /// With `config.reconnect` set, a lost connection is made again (see
    /// [`crate::reconnect`]); the first connection is not retried: its failure is the error.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::WebSocket`] when the connection fails;
    /// [`Error::HandshakeTimeout`], [`Error::HandshakeRejected`], [`Error::HandshakeClosed`],
    /// [`Error::Protocol`] or [`Error::Schema`] when the handshake does.
    #[instrument(skip(config))]
    pub async fn connect(
        addr: &str,
        transport: Transport,
        config: ClientConfig,
    ) -> Result<(Self, Events), Error> {
        let deadline = Instant::now() + config.handshake_timeout;
        let io = dial(addr, &config, deadline).await?;
        Self::start(io, transport, addr, config, deadline).await
    }

    /// Connect to a URL: `tcp://host:port` (raw TCP), `tls://host:port` (raw TCP over TLS),
    /// `ws://host:port[/path]` or `wss://host:port[/path]` (WebSocket, over TLS for `wss`).
    /// A path replaces `config.ws_path`. For `tls://` and `wss://` the certificate is checked
    /// with `config.tls` if set, else with Mozilla's roots ([`ClientTls::webpki_roots`]);
    /// for `tcp://` and `ws://`, `config.tls` is ignored.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL of another shape; otherwise as [`connect`](Self::connect)
    /// (and [`Error::Tls`] when the TLS handshake fails).
    pub async fn connect_url(url: &str, mut config: ClientConfig) -> Result<(Self, Events), Error> {
        let bad = |problem: &str| Error::Url {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (tcp://, tls://, ws:// or wss://)"))?;
        let (transport, secure) = match scheme {
            "tcp" => (Transport::Tcp, false),
            "tls" => (Transport::Tcp, true),
            "ws" => (Transport::WebSocket, false),
            "wss" => (Transport::WebSocket, true),
            _ => return Err(bad("unknown scheme (tcp://, tls://, ws:// or wss://)")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host:port"));
        }
        if !path.is_empty() {
            if transport == Transport::Tcp {
                return Err(bad("a path is only for ws:// and wss://"));
            }
            path.clone_into(&mut config.ws_path);
        }
        if !secure {
            config.tls = None;
        } else if config.tls.is_none() {
            config.tls = Some(ClientTls::webpki_roots());
        }
        Self::connect(authority, transport, config).await
    }

    /// Like [`connect`](Self::connect) over an already connected byte stream (a TLS stream,
    /// `tokio::io::duplex` in tests, ...). `authority` (`host:port`) names the peer in errors
    /// and in the WebSocket request URL. With `config.tls` set, TLS runs over `io` first.
    /// A reconnect (with `config.reconnect`) dials TCP to the policy's resolver address, or
    /// to `authority` when it has none.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_io<S>(
        io: S,
        transport: Transport,
        authority: &str,
        config: ClientConfig,
    ) -> Result<(Self, Events), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = Instant::now() + config.handshake_timeout;
        Self::start(Box::new(io), transport, authority, config, deadline).await
    }

    /// Open the first connection and start the session.
    async fn start(
        io: Box<dyn Io>,
        transport: Transport,
        peer: &str,
        config: ClientConfig,
        deadline: Instant,
    ) -> Result<(Self, Events), Error> {
        let config = config.normalized();
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let subscribers = Arc::new(Subscribers::new(config.push_capacity));
        let shutdown = CancellationToken::new();
        let (link, driver) = open(
            io,
            transport,
            peer,
            &config,
            deadline,
            &subscribers,
            &events_tx,
            shutdown.child_token(),
        )
        .await?;
        let while_reconnecting = config
            .reconnect
            .as_ref()
            .map_or(WhileReconnecting::FailFast, |p| p.while_reconnecting);
        let (state_tx, state_rx) = watch::channel(State::Connected(link));
        let session = Arc::new(Session {
            state: state_rx,
            subscribers: subscribers.clone(),
            shutdown: shutdown.clone(),
            while_reconnecting,
        });
        let timeout = config.request_timeout;
        let first = spawn_driver(driver, peer, transport);
        let redial = Redial {
            addr: peer.to_owned(),
            transport,
            policy: config.reconnect.clone().unwrap_or_default(),
            session: Arc::downgrade(&session),
            state: state_tx,
            events: events_tx,
            subscribers,
            shutdown,
            config,
        };
        tokio::spawn(supervise(first, redial).instrument(debug_span!("client_session", peer)));
        Ok((
            Self {
                session,
                link: None,
                timeout,
            },
            Events::new(events_rx),
        ))
    }

    /// The connection in use, if any (none while reconnecting or once closed).
    fn current(&self) -> Option<Arc<Link>> {
        if let Some(link) = &self.link {
            return Some(link.clone());
        }
        match &*self.session.state.borrow() {
            State::Connected(link) => Some(link.clone()),
            _ => None,
        }
    }

    /// A handle to the same session whose requests time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            session: self.session.clone(),
            link: self.link.clone(),
            timeout,
        }
    }

    /// The request timeout of this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server address (`host:port`) of the connection in use; empty while reconnecting
    /// or once closed.
    pub fn peer(&self) -> String {
        self.current().map(|l| l.peer.clone()).unwrap_or_default()
    }

    /// The transport in use (a reconnect keeps it).
    pub fn transport(&self) -> Transport {
        match self.current() {
            Some(link) => link.transport,
            None => Transport::default(),
        }
    }

    /// The server's handshake reply of the connection in use (`user` data, heartbeat,
    /// dictionary and protos fields); `None` while reconnecting or once closed.
    pub fn handshake(&self) -> Option<Arc<HandshakeResponse>> {
        self.current().map(|l| l.handshake.clone())
    }

    /// The route dictionary in use (`None` when the server does not use one). Keep it and
    /// pass it as [`ClientConfig::dictionary`] to skip it in the next handshake (a reconnect
    /// does so on its own).
    pub fn dictionary(&self) -> Option<Arc<RouteDictionary>> {
        self.current().and_then(|l| l.dictionary.clone())
    }

    /// The protobuf schemas in use (`None` when the server does not use protobuf).
    pub fn protos(&self) -> Option<Arc<Protos>> {
        self.current().and_then(|l| l.protos.clone())
    }

    /// The heartbeat interval the server announced.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.current().and_then(|l| l.handshake.heartbeat)
    }

    /// Requests waiting for their response on the connection in use.
    pub fn pending_requests(&self) -> usize {
        self.current().map_or(0, |l| l.requests.lock().len())
    }

    /// Whether the client has ended for good (a client that is reconnecting is not closed).
    pub fn is_closed(&self) -> bool {
        matches!(*self.session.state.borrow(), State::Closed(_))
    }

    /// Whether the client lost its connection and is making a new one.
    pub fn is_reconnecting(&self) -> bool {
        matches!(*self.session.state.borrow(), State::Reconnecting(_))
    }

    /// Wait until the client ends for good, and say why (with a reconnect policy: why the
    /// last connection was lost, once the policy gave up).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closed(&self) -> DisconnectReason {
        let mut rx = self.session.state.clone();
        match rx.wait_for(|s| matches!(s, State::Closed(_))).await {
            Ok(state) => match &*state {
                State::Closed(reason) => reason.clone(),
                _ => DisconnectReason::Closed,
            },
            // The session task is gone without publishing (it panicked): treat as closed.
            Err(_) => DisconnectReason::Closed,
        }
    }

    /// Close the client: packages queued before the call are written, the socket is
    /// closed (WebSocket close handshake), waiting requests fail with
    /// [`Error::Disconnected`]; a reconnect under way stops. Returns when the session has
    /// ended (bounded by [`ClientConfig::close_timeout`] for the socket part). Closing twice
    /// is harmless.
    #[instrument(skip(self))]
    pub async fn close(&self) {
        self.session.shutdown.cancel();
        self.closed().await;
    }

    /// Subscribe to the pushes of `route` (e.g. `"onChat"`). See [`crate::push`] for what
    /// happens when the subscriber is slow. A subscription lasts across reconnects.
    pub fn on(&self, route: &str) -> PushStream {
        self.session.subscribers.subscribe(Some(route))
    }

    /// Subscribe to every push, whatever its route.
    pub fn on_any(&self) -> PushStream {
        self.session.subscribers.subscribe(None)
    }

    /// Send a request with a JSON body and wait for the response, as JSON. The body is
    /// encoded with the server's client-side protobuf schema when it names `route`, else as
    /// JSON text; the response likewise with the server-side schema.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Disconnected`], [`Error::Reconnecting`],
    /// [`Error::Protocol`] (route too long), [`Error::Protobuf`] / [`Error::Json`] for bodies.
    #[instrument(skip(self, body))]
    pub async fn request(&self, route: &str, body: &Value) -> Result<Value, Error> {
        let (reply, link) = self
            .call(route, |link| link.encode_value(route, body))
            .await?;
        decode_value(link.protos.as_deref(), route, &reply)
    }

    /// [`request`](Self::request) with serde types: `body` is serialized to JSON (then
    /// protobuf if the schema names the route), the response deserialized into `R`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    #[instrument(skip(self, body))]
    pub async fn request_as<T, R>(&self, route: &str, body: &T) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let value = to_value(route, body)?;
        let (reply, link) = self
            .call(route, |link| link.encode_value(route, &value))
            .await?;
        from_value(route, decode_value(link.protos.as_deref(), route, &reply)?)
    }

    /// [`request`](Self::request) with prost messages: standard protobuf on both sides
    /// (compatible with pomelo-protobuf when no repeated numeric field is involved and
    /// `int32`/`sInt32` are declared `sint32`; see `shaddock_protocol::protobuf::typed`).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    #[instrument(skip(self, body))]
    pub async fn request_prost<M, R>(&self, route: &str, body: &M) -> Result<R, Error>
    where
        M: prost::Message,
        R: prost::Message + Default,
    {
        let mut buf = BytesMut::new();
        encode_message(body, &mut buf)?;
        let body = buf.freeze();
        let (reply, _) = self.call(route, |_| Ok(body.clone())).await?;
        Ok(shaddock_protocol::protobuf::decode_message(&reply)?)
    }

    /// Send a request whose body is already encoded; the response body comes back raw.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Disconnected`], [`Error::Reconnecting`],
    /// [`Error::Protocol`].
    ///
    /// # Cancel safety
    /// Dropping the future forgets the request (its waiter is removed; a late response is
    /// ignored); the request may or may not have been sent.
    #[instrument(skip(self, body))]
    pub async fn request_raw(&self, route: &str, body: Bytes) -> Result<Bytes, Error> {
        Ok(self.call(route, |_| Ok(body.clone())).await?.0)
    }

    /// The connection to use before `deadline`: the current one (unless it is `ended`, one
    /// found closed); while reconnecting, the next one (or an error, as the policy says).
    async fn link_before(
        &self,
        deadline: Instant,
        route: &str,
        ended: Option<&Arc<Link>>,
    ) -> Result<Arc<Link>, Error> {
        if let Some(link) = &self.link {
            return match ended {
                None => Ok(link.clone()),
                Some(link) => Err(disconnected(link)),
            };
        }
        let mut rx = self.session.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                State::Connected(link) if !ended.is_some_and(|e| Arc::ptr_eq(e, link)) => {
                    return Ok(link.clone());
                }
                // Ending: the session moves on in a moment.
                State::Connected(_) => {}
                State::Reconnecting(reason)
                    if self.session.while_reconnecting == WhileReconnecting::FailFast =>
                {
                    return Err(Error::Reconnecting(reason.clone()));
                }
                State::Reconnecting(_) => {}
                State::Closed(reason) => return Err(Error::Disconnected(reason.clone())),
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Disconnected(DisconnectReason::Closed)),
                Err(_) => {
                    return Err(Error::Timeout {
                        route: route.to_owned(),
                        id: 0,
                        after: self.timeout,
                    });
                }
            }
        }
    }

    /// Send a request (body made by `encode` for the connection it goes to) and wait for its
    /// response; also gives the connection that answered (for decoding).
    async fn call(
        &self,
        route: &str,
        encode: impl Fn(&Link) -> Result<Bytes, Error>,
    ) -> Result<(Bytes, Arc<Link>), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut ended = None;
        loop {
            let link = self.link_before(deadline, route, ended.as_ref()).await?;
            let (tx, rx) = oneshot::channel();
            // The deadline is enforced by the connection task (one timer per connection).
            let Ok(id) = link.requests.register(tx, deadline) else {
                // The connection ended after we picked it: nothing was sent; pick again.
                ended = Some(link);
                continue;
            };
            let mut guard = PendingGuard {
                requests: &link.requests,
                id,
                armed: true,
            };
            let mut package = BytesMut::new();
            Message::request(id, link.wire_route(route), encode(&link)?)
                .encode_package(&mut package)?;
            let timed_out = || Error::Timeout {
                route: route.to_owned(),
                id,
                after: self.timeout,
            };
            if !queue_before(&link.outbound, package.freeze(), deadline)
                .await
                .map_err(|()| timed_out())?
            {
                // Not queued (the connection ended): nothing was sent; pick again.
                drop(guard);
                ended = Some(link);
                continue;
            }
            let answer = rx.await;
            // Whoever answered took the waiter out.
            guard.disarm();
            drop(guard);
            return match answer {
                Ok(Answer::Body(body)) => Ok((body, link)),
                Ok(Answer::Failed(error)) => Err(error),
                Ok(Answer::TimedOut) => Err(timed_out()),
                Err(_) => Err(disconnected(&link)),
            };
        }
    }

    /// Send a notify (no response) with a JSON body (protobuf when the schema names `route`).
    /// Waits for space in the send queue (and, while reconnecting, for the new connection as
    /// the policy says), up to the handle's timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] (queue full for too long), [`Error::Disconnected`],
    /// [`Error::Reconnecting`], [`Error::Protocol`], [`Error::Protobuf`].
    #[instrument(skip(self, body))]
    pub async fn notify(&self, route: &str, body: &Value) -> Result<(), Error> {
        self.send_notify(route, |link| link.encode_value(route, body))
            .await
    }

    /// [`notify`](Self::notify) with a serde type.
    ///
    /// # Errors
    /// As [`notify`](Self::notify), and [`Error::Json`].
    #[instrument(skip(self, body))]
    pub async fn notify_as<T: Serialize + ?Sized>(
        &self,
        route: &str,
        body: &T,
    ) -> Result<(), Error> {
        let value = to_value(route, body)?;
        self.send_notify(route, |link| link.encode_value(route, &value))
            .await
    }

    /// [`notify`](Self::notify) with a prost message.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    #[instrument(skip(self, body))]
    pub async fn notify_prost<M: prost::Message>(
        &self,
        route: &str,
        body: &M,
    ) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        encode_message(body, &mut buf)?;
        let body = buf.freeze();
        self.send_notify(route, |_| Ok(body.clone())).await
    }

    /// [`notify`](Self::notify) with an already encoded body.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    #[instrument(skip(self, body))]
    pub async fn notify_raw(&self, route: &str, body: Bytes) -> Result<(), Error> {
        self.send_notify(route, |_| Ok(body.clone())).await
    }

    async fn send_notify(
        &self,
        route: &str,
        encode: impl Fn(&Link) -> Result<Bytes, Error>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut ended = None;
        loop {
            let link = self.link_before(deadline, route, ended.as_ref()).await?;
            let mut package = BytesMut::new();
            Message::notify(link.wire_route(route), encode(&link)?).encode_package(&mut package)?;
            let queued = queue_before(&link.outbound, package.freeze(), deadline)
                .await
                .map_err(|()| Error::Timeout {
                    route: route.to_owned(),
                    id: 0,
                    after: self.timeout,
                })?;
            if queued {
                return Ok(());
            }
            // Not queued (the connection ended): pick again.
            ended = Some(link);
        }
    }
}

/// Queue `package` for the connection task, waiting for room until `deadline` (the timer is
/// only made when the queue is full). `Ok(false)`: the connection ended (nothing queued);
/// `Err(())`: the deadline passed.
async fn queue_before(
    outbound: &mpsc::Sender<Bytes>,
    package: Bytes,
    deadline: Instant,
) -> Result<bool, ()> {
    match outbound.try_send(package) {
        Ok(()) => Ok(true),
        Err(TrySendError::Closed(_)) => Ok(false),
        Err(TrySendError::Full(package)) => {
            match tokio::time::timeout_at(deadline, outbound.send(package)).await {
                Ok(sent) => Ok(sent.is_ok()),
                Err(_) => Err(()),
            }
        }
    }
}

/// The error of a call on a connection that ended: its reason.
fn disconnected(link: &Link) -> Error {
    let reason = link
        .requests
        .lock()
        .closed_reason()
        .unwrap_or(DisconnectReason::Closed);
    Error::Disconnected(reason)
}

/// TCP connect to `addr` before `deadline`.
async fn dial(addr: &str, config: &ClientConfig, deadline: Instant) -> Result<Box<dyn Io>, Error> {
    let io_err = |source| Error::Io {
        peer: addr.to_owned(),
        source,
    };
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::HandshakeTimeout {
            peer: addr.to_owned(),
            after: config.handshake_timeout,
        })?
        .map_err(io_err)?;
    stream.set_nodelay(config.nodelay).map_err(io_err)?;
    Ok(Box::new(stream))
}

/// TLS (if configured), WebSocket upgrade (if WebSocket), handshake and ack on `io`; the
/// connection's link and its (not yet started) task.
#[allow(clippy::too_many_arguments)]
async fn open(
    io: Box<dyn Io>,
    transport: Transport,
    peer: &str,
    config: &ClientConfig,
    deadline: Instant,
    subscribers: &Arc<Subscribers>,
    events: &mpsc::Sender<Event>,
    stop: CancellationToken,
) -> Result<(Arc<Link>, ClientDriver), Error> {
    let timeout = || Error::HandshakeTimeout {
        peer: peer.to_owned(),
        after: config.handshake_timeout,
    };
    let (io, secure): (Box<dyn Io>, bool) = match &config.tls {
        None => (io, false),
        Some(tls) => {
            let tls_err = |reason: String| Error::Tls {
                peer: peer.to_owned(),
                reason,
            };
            let name = tls.name_for(peer).map_err(tls_err)?;
            let stream = tokio::time::timeout_at(deadline, tls.connector().connect(name, io))
                .await
                .map_err(|_| timeout())?
                .map_err(|e| tls_err(e.to_string()))?;
            (Box::new(stream), true)
        }
    };
    let mut conn =
        tokio::time::timeout_at(deadline, Conn::open(io, transport, peer, secure, config))
            .await
            .map_err(|_| timeout())??;
    let reply = tokio::time::timeout_at(deadline, handshake(&mut conn, peer, config))
        .await
        .map_err(|_| timeout())??;
    let dictionary = if reply.use_dict {
        match reply.dictionary()? {
            Some(dict) => Some(Arc::new(dict)),
            None => config.dictionary.clone(),
        }
    } else {
        None
    };
    let protos = if reply.use_proto {
        match &reply.protos {
            Some(protos) => Some(Arc::new(Protos::from_handshake(protos).map_err(
                |source| Error::Schema {
                    peer: peer.to_owned(),
                    source,
                },
            )?)),
            None => config.protos.clone(),
        }
    } else {
        None
    };
    let ack = Package::empty(PackageType::HandshakeAck).to_bytes()?;
    conn.send(&[ack])
        .await
        .map_err(|reason| Error::HandshakeClosed {
            peer: peer.to_owned(),
            reason,
        })?;
    let heartbeat = reply.heartbeat.filter(|h| !h.is_zero());
    let heartbeat_timeout = heartbeat.map(|h| config.heartbeat_timeout.unwrap_or(h * 2));
    debug!(peer, %transport, ?heartbeat, dict = dictionary.is_some(), protos = protos.is_some(), "connected");

    let (outbound_tx, outbound_rx) = mpsc::channel(config.send_queue_capacity);
    let requests = Arc::new(Requests::default());
    let driver = ClientDriver {
        conn,
        peer: peer.to_owned(),
        outbound: outbound_rx,
        shutdown: stop.clone(),
        requests: requests.clone(),
        subscribers: subscribers.clone(),
        routes: RouteCache::new(dictionary.clone()),
        pushes: Vec::new(),
        batch: Vec::new(),
        protos: protos.clone(),
        events: events.clone(),
        heartbeat,
        heartbeat_timeout,
        max_write_batch: config.max_write_batch,
        close_timeout: config.close_timeout,
        write_timeout: config.write_timeout,
    };
    let link = Arc::new(Link {
        peer: peer.to_owned(),
        transport,
        outbound: outbound_tx,
        requests,
        dictionary,
        protos,
        handshake: Arc::new(reply),
    });
    Ok((link, driver))
}

fn spawn_driver(
    driver: ClientDriver,
    peer: &str,
    transport: Transport,
) -> JoinHandle<DisconnectReason> {
    let span = debug_span!("client_driver", peer, %transport);
    tokio::spawn(driver.run().instrument(span))
}

/// Why a connection task ended (a panic in it counts as an i/o failure).
async fn ended(task: JoinHandle<DisconnectReason>) -> DisconnectReason {
    match task.await {
        Ok(reason) => reason,
        Err(e) => DisconnectReason::Io {
            error: format!("the connection task failed: {e}"),
        },
    }
}

/// The session task: waits for each connection to end, then closes the session or, as the
/// policy says, makes a new connection.
async fn supervise(mut task: JoinHandle<DisconnectReason>, mut redial: Redial) {
    let reconnects = redial.config.reconnect.is_some();
    loop {
        let reason = ended(task).await;
        if !reconnects || !redial.policy.applies_to(&reason) || redial.shutdown.is_cancelled() {
            redial.close(reason);
            return;
        }
        match redial.reconnect(reason).await {
            Some(next) => task = next,
            None => return,
        }
    }
}

impl Redial {
    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            debug!(peer = %self.addr, "event dropped: the events queue is full or gone");
        }
    }

    /// End the session for good.
    fn close(&self, reason: DisconnectReason) {
        self.subscribers.close();
        self.state.send_replace(State::Closed(reason.clone()));
        self.emit(Event::Disconnected(reason));
    }

    /// Attempts as the policy says; the new connection's task, or `None` when the session
    /// was closed (gave up, [`Client::close`], every handle dropped).
    async fn reconnect(
        &mut self,
        reason: DisconnectReason,
    ) -> Option<JoinHandle<DisconnectReason>> {
        let lost = Instant::now();
        warn!(peer = %self.addr, %reason, "connection lost; reconnecting");
        self.state.send_replace(State::Reconnecting(reason.clone()));
        self.emit(Event::ConnectionLost {
            reason: reason.clone(),
        });
        let mut backoff = Backoff::new(&self.policy);
        let mut attempt: u32 = 0;
        loop {
            let delay = backoff.next_delay();
            let out_of_attempts = self.policy.max_attempts.is_some_and(|m| attempt >= m);
            let out_of_time = self
                .policy
                .max_elapsed
                .is_some_and(|m| lost.elapsed() + delay > m);
            if out_of_attempts || out_of_time {
                let elapsed = lost.elapsed();
                warn!(peer = %self.addr, attempts = attempt, ?elapsed, %reason, "reconnect gave up");
                self.emit(Event::ReconnectGaveUp {
                    attempts: attempt,
                    elapsed,
                });
                self.close(reason);
                return None;
            }
            attempt += 1;
            self.emit(Event::ReconnectAttempt { attempt, delay });
            let shutdown = self.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => {
                    self.close(DisconnectReason::Closed);
                    return None;
                }
            }
            let tried = tokio::select! {
                tried = tokio::time::timeout(self.policy.attempt_timeout, self.attempt(attempt)) => tried,
                () = shutdown.cancelled() => {
                    self.close(DisconnectReason::Closed);
                    return None;
                }
            };
            match tried {
                Ok(Ok((link, task))) => {
                    info!(peer = %link.peer, attempt, "reconnected");
                    self.addr.clone_from(&link.peer);
                    self.config.dictionary.clone_from(&link.dictionary);
                    self.config.protos.clone_from(&link.protos);
                    let peer = link.peer.clone();
                    self.state.send_replace(State::Connected(link));
                    self.emit(Event::Reconnected { attempt, peer });
                    return Some(task);
                }
                Ok(Err(AttemptError::Gone)) => {
                    self.close(DisconnectReason::Closed);
                    return None;
                }
                Ok(Err(AttemptError::Failed(error))) => {
                    debug!(peer = %self.addr, attempt, %error, "reconnect attempt failed");
                    self.emit(Event::ReconnectFailed { attempt, error });
                }
                Err(_) => {
                    let after = self.policy.attempt_timeout;
                    debug!(peer = %self.addr, attempt, ?after, "reconnect attempt timed out");
                    self.emit(Event::ReconnectFailed {
                        attempt,
                        error: Error::HandshakeTimeout {
                            peer: self.addr.clone(),
                            after,
                        },
                    });
                }
            }
        }
    }

    /// One attempt: resolve, connect, handshake, hook. When the hook fails (or the attempt is
    /// cancelled by its timeout), the new connection is closed (its stop token is cancelled
    /// when the guard drops).
    async fn attempt(
        &self,
        attempt: u32,
    ) -> Result<(Arc<Link>, JoinHandle<DisconnectReason>), AttemptError> {
        let addr = match &self.policy.resolver {
            Some(resolve) => resolve_addr(resolve, attempt).await?,
            None => self.addr.clone(),
        };
        let deadline = Instant::now() + self.config.handshake_timeout;
        let io = dial(&addr, &self.config, deadline).await?;
        let stop = self.shutdown.child_token();
        let guard = stop.clone().drop_guard();
        let (link, driver) = open(
            io,
            self.transport,
            &addr,
            &self.config,
            deadline,
            &self.subscribers,
            &self.events,
            stop,
        )
        .await?;
        let task = spawn_driver(driver, &addr, self.transport);
        if let Some(hook) = &self.policy.hook {
            let session = self.session.upgrade().ok_or(AttemptError::Gone)?;
            let client = Client {
                session,
                link: Some(link.clone()),
                timeout: self.config.request_timeout,
            };
            hook(client).await?;
            if link.is_closed() {
                return Err(AttemptError::Failed(disconnected(&link)));
            }
        }
        let _ = guard.disarm();
        Ok((link, task))
    }
}

async fn resolve_addr(resolve: &Resolver, attempt: u32) -> Result<String, AttemptError> {
    Ok(resolve(attempt).await?)
}

/// Why one attempt did not give a connection.
enum AttemptError {
    Failed(Error),
    /// Every handle is gone.
    Gone,
}

impl From<Error> for AttemptError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

fn to_value<T: Serialize + ?Sized>(route: &str, body: &T) -> Result<Value, Error> {
    serde_json::to_value(body).map_err(|e| Error::Json {
        route: route.to_owned(),
        reason: e.to_string(),
    })
}

/// Send the handshake and read the reply (heartbeats or data before it are ignored).
async fn handshake(
    conn: &mut Conn,
    peer: &str,
    config: &ClientConfig,
) -> Result<HandshakeResponse, Error> {
    let request = ClientHandshake {
        client_type: config.client_type.clone(),
        version: config.client_version.clone(),
        rsa: Some(Value::Object(serde_json::Map::new())),
        dict_version: config.dictionary.as_ref().map(|d| d.version().to_owned()),
        proto_version: Some(
            config
                .protos
                .as_ref()
                .map_or_else(|| Value::from(0), |p| Value::from(p.version())),
        ),
        user: config.user.clone(),
    };
    let closed = |reason| Error::HandshakeClosed {
        peer: peer.to_owned(),
        reason,
    };
    let package = Package::new(PackageType::Handshake, request.to_body()).to_bytes()?;
    conn.send(&[package]).await.map_err(closed)?;
    loop {
        let package = match conn.read_package().await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(closed(DisconnectReason::ServerClosed)),
            Err(ReadError::Protocol(e)) => return Err(Error::Protocol(e)),
            Err(ReadError::Other(reason)) => return Err(closed(reason)),
        };
        match package.kind {
            PackageType::Handshake => {
                let reply = HandshakeResponse::parse(&package.body)?;
                if reply.code != 200 {
                    return Err(Error::HandshakeRejected {
                        peer: peer.to_owned(),
                        code: reply.code,
                    });
                }
                return Ok(reply);
            }
            PackageType::Kick => {
                let reason = shaddock_protocol::Kick::parse(&package.body).reason;
                return Err(closed(DisconnectReason::Kicked { reason }));
            }
            other => debug!(
                peer,
                kind = other.name(),
                "package before the handshake reply ignored"
            ),
        }
    }
}
