//! [`Client`]: the cloneable handle — connect and handshake, requests, notifies,
//! subscriptions, close.

use std::sync::{Arc, Mutex};
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
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, instrument};

use crate::driver::{ClientDriver, Pending, PendingGuard, RouteCache, lock};
use crate::event::Events;
use crate::push::{PushStream, Subscribers, decode_value, from_value};
use crate::transport::{Conn, Io, ReadError, Transport};
use crate::{ClientConfig, ClientTls, DisconnectReason, Error};

/// A connection to a pomelo-protocol server. Cheap to clone; every clone drives the same
/// connection. The connection ends on [`close`](Self::close), when the server ends it, or when
/// every handle is dropped.
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
    shared: Arc<Shared>,
    /// Timeout of requests made through this handle.
    timeout: Duration,
}

struct Shared {
    peer: String,
    transport: Transport,
    outbound: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    subscribers: Arc<Subscribers>,
    dictionary: Option<Arc<RouteDictionary>>,
    protos: Option<Arc<Protos>>,
    handshake: HandshakeResponse,
    shutdown: CancellationToken,
    closed: watch::Receiver<Option<DisconnectReason>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.shared.peer)
            .field("transport", &self.shared.transport)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connect to `addr` (`host:port`) over `transport`, handshake (with `config.user`),
    /// ack, and start the connection task. Returns the handle and the connection's events.
    /// With `config.tls` set, the socket speaks TLS first (and a WebSocket goes to `wss://`).
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
        Self::connect_with_deadline(Box::new(stream), transport, addr, config, deadline).await
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
        Self::connect_with_deadline(Box::new(io), transport, authority, config, deadline).await
    }

    async fn connect_with_deadline(
        io: Box<dyn Io>,
        transport: Transport,
        peer: &str,
        config: ClientConfig,
        deadline: Instant,
    ) -> Result<(Self, Events), Error> {
        let config = config.normalized();
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
            tokio::time::timeout_at(deadline, Conn::open(io, transport, peer, secure, &config))
                .await
                .map_err(|_| timeout())??;
        let reply = tokio::time::timeout_at(deadline, handshake(&mut conn, peer, &config))
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
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let (closed_tx, closed_rx) = watch::channel(None);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let subscribers = Arc::new(Subscribers::new(config.push_capacity));
        let shutdown = CancellationToken::new();
        let driver = ClientDriver {
            conn,
            peer: peer.to_owned(),
            outbound: outbound_rx,
            shutdown: shutdown.clone(),
            pending: pending.clone(),
            subscribers: subscribers.clone(),
            routes: RouteCache::new(dictionary.clone()),
            pushes: Vec::new(),
            protos: protos.clone(),
            events: events_tx,
            closed: closed_tx,
            heartbeat,
            heartbeat_timeout,
            max_write_batch: config.max_write_batch,
            close_timeout: config.close_timeout,
            write_timeout: config.write_timeout,
        };
        let span = debug_span!("client_driver", peer, %transport);
        tokio::spawn(driver.run().instrument(span));
        let shared = Arc::new(Shared {
            peer: peer.to_owned(),
            transport,
            outbound: outbound_tx,
            pending,
            subscribers,
            dictionary,
            protos,
            handshake: reply,
            shutdown,
            closed: closed_rx,
        });
        Ok((
            Self {
                shared,
                timeout: config.request_timeout,
            },
            Events::new(events_rx),
        ))
    }

    /// A handle to the same connection whose requests time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            shared: self.shared.clone(),
            timeout,
        }
    }

    /// The request timeout of this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server address (`host:port`).
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    /// The server's handshake reply (`user` data, heartbeat, dictionary and protos fields).
    pub fn handshake(&self) -> &HandshakeResponse {
        &self.shared.handshake
    }

    /// The route dictionary in use (`None` when the server does not use one). Keep it and
    /// pass it as [`ClientConfig::dictionary`] to skip it in the next handshake.
    pub fn dictionary(&self) -> Option<&Arc<RouteDictionary>> {
        self.shared.dictionary.as_ref()
    }

    /// The protobuf schemas in use (`None` when the server does not use protobuf).
    pub fn protos(&self) -> Option<&Arc<Protos>> {
        self.shared.protos.as_ref()
    }

    /// The heartbeat interval the server announced.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.shared.handshake.heartbeat
    }

    /// Requests waiting for their response.
    pub fn pending_requests(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Wait until the connection ends, and say why.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closed(&self) -> DisconnectReason {
        let mut rx = self.shared.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(DisconnectReason::Closed),
            // The driver is gone without publishing (it panicked): treat as closed.
            Err(_) => DisconnectReason::Closed,
        }
    }

    /// Close the connection: packages queued before the call are written, the socket is
    /// closed (WebSocket close handshake), waiting requests fail with
    /// [`Error::Disconnected`]. Returns when the connection task has finished (bounded by
    /// [`ClientConfig::close_timeout`] for the socket part). Closing twice is harmless.
    #[instrument(skip(self), fields(peer = %self.shared.peer))]
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        self.closed().await;
    }

    /// Subscribe to the pushes of `route` (e.g. `"onChat"`). See [`crate::push`] for what
    /// happens when the subscriber is slow.
    pub fn on(&self, route: &str) -> PushStream {
        self.shared.subscribers.subscribe(Some(route))
    }

    /// Subscribe to every push, whatever its route.
    pub fn on_any(&self) -> PushStream {
        self.shared.subscribers.subscribe(None)
    }

    /// Send a request with a JSON body and wait for the response, as JSON. The body is
    /// encoded with the server's client-side protobuf schema when it names `route`, else as
    /// JSON text; the response likewise with the server-side schema.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Disconnected`], [`Error::Protocol`] (route too long),
    /// [`Error::Protobuf`] / [`Error::Json`] for bodies.
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn request(&self, route: &str, body: &Value) -> Result<Value, Error> {
        let body = self.encode_value(route, body)?;
        let reply = self.request_raw_inner(route, body).await?;
        decode_value(self.shared.protos.as_deref(), route, &reply)
    }

    /// [`request`](Self::request) with serde types: `body` is serialized to JSON (then
    /// protobuf if the schema names the route), the response deserialized into `R`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn request_as<T, R>(&self, route: &str, body: &T) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let value = to_value(route, body)?;
        let body = self.encode_value(route, &value)?;
        let reply = self.request_raw_inner(route, body).await?;
        from_value(
            route,
            decode_value(self.shared.protos.as_deref(), route, &reply)?,
        )
    }

    /// [`request`](Self::request) with prost messages: standard protobuf on both sides
    /// (compatible with pomelo-protobuf when no repeated numeric field is involved and
    /// `int32`/`sInt32` are declared `sint32`; see `shaddock_protocol::protobuf::typed`).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn request_prost<M, R>(&self, route: &str, body: &M) -> Result<R, Error>
    where
        M: prost::Message,
        R: prost::Message + Default,
    {
        let mut buf = BytesMut::new();
        encode_message(body, &mut buf)?;
        let reply = self.request_raw_inner(route, buf.freeze()).await?;
        Ok(shaddock_protocol::protobuf::decode_message(&reply)?)
    }

    /// Send a request whose body is already encoded; the response body comes back raw.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Disconnected`], [`Error::Protocol`].
    ///
    /// # Cancel safety
    /// Dropping the future forgets the request (its waiter is removed; a late response is
    /// ignored); the request may or may not have been sent.
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn request_raw(&self, route: &str, body: Bytes) -> Result<Bytes, Error> {
        self.request_raw_inner(route, body).await
    }

    async fn request_raw_inner(&self, route: &str, body: Bytes) -> Result<Bytes, Error> {
        let deadline = Instant::now() + self.timeout;
        let (tx, rx) = oneshot::channel();
        let id = lock(&self.shared.pending).register(tx)?;
        let _guard = PendingGuard {
            pending: self.shared.pending.clone(),
            id,
        };
        let route_wire = self.wire_route(route);
        let mut package = BytesMut::new();
        Message::request(id, route_wire, body).encode_package(&mut package)?;
        let timed_out = || Error::Timeout {
            route: route.to_owned(),
            id,
            after: self.timeout,
        };
        tokio::time::timeout_at(deadline, self.shared.outbound.send(package.freeze()))
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| self.disconnected())?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.disconnected()),
            Err(_) => Err(timed_out()),
        }
    }

    /// Send a notify (no response) with a JSON body (protobuf when the schema names `route`).
    /// Waits for space in the send queue, up to the handle's timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] (queue full for too long), [`Error::Disconnected`],
    /// [`Error::Protocol`], [`Error::Protobuf`].
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn notify(&self, route: &str, body: &Value) -> Result<(), Error> {
        let body = self.encode_value(route, body)?;
        self.notify_raw_inner(route, body).await
    }

    /// [`notify`](Self::notify) with a serde type.
    ///
    /// # Errors
    /// As [`notify`](Self::notify), and [`Error::Json`].
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn notify_as<T: Serialize + ?Sized>(
        &self,
        route: &str,
        body: &T,
    ) -> Result<(), Error> {
        let value = to_value(route, body)?;
        let body = self.encode_value(route, &value)?;
        self.notify_raw_inner(route, body).await
    }

    /// [`notify`](Self::notify) with a prost message.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn notify_prost<M: prost::Message>(
        &self,
        route: &str,
        body: &M,
    ) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        encode_message(body, &mut buf)?;
        self.notify_raw_inner(route, buf.freeze()).await
    }

    /// [`notify`](Self::notify) with an already encoded body.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    #[instrument(skip(self, body), fields(peer = %self.shared.peer))]
    pub async fn notify_raw(&self, route: &str, body: Bytes) -> Result<(), Error> {
        self.notify_raw_inner(route, body).await
    }

    async fn notify_raw_inner(&self, route: &str, body: Bytes) -> Result<(), Error> {
        if let Some(reason) = self.shared.closed.borrow().clone() {
            return Err(Error::Disconnected(reason));
        }
        let mut package = BytesMut::new();
        Message::notify(self.wire_route(route), body).encode_package(&mut package)?;
        tokio::time::timeout(self.timeout, self.shared.outbound.send(package.freeze()))
            .await
            .map_err(|_| Error::Timeout {
                route: route.to_owned(),
                id: 0,
                after: self.timeout,
            })?
            .map_err(|_| self.disconnected())
    }

    /// The route as it goes on the wire: its dictionary code when it has one.
    fn wire_route(&self, route: &str) -> MessageRoute {
        match &self.shared.dictionary {
            Some(dict) => dict.compress(route),
            None => MessageRoute::name(route),
        }
    }

    fn encode_value(&self, route: &str, body: &Value) -> Result<Bytes, Error> {
        match &self.shared.protos {
            Some(p) if p.has_client_route(route) => Ok(p.client().encode(route, body)?),
            _ => Ok(Bytes::from(json::to_vec(body))),
        }
    }

    fn disconnected(&self) -> Error {
        let reason = self
            .shared
            .closed
            .borrow()
            .clone()
            .unwrap_or(DisconnectReason::Closed);
        Error::Disconnected(reason)
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
