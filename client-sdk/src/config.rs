//! [`ClientConfig`]: every knob of a client connection, with its documented default.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::protobuf::Protos;

use crate::reconnect::ReconnectPolicy;
use crate::tls::ClientTls;

/// Settings of one client connection. Build it with [`ClientConfig::default`] and change the
/// fields you need (the struct is `#[non_exhaustive]`), or use the `with_*` helpers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long the connect + handshake (socket, WebSocket upgrade, handshake reply) may take.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Default time a request waits for its response, queueing included; see
    /// [`Client::with_timeout`](crate::Client::with_timeout) for per-call values. Also bounds
    /// how long a notify waits for space in the send queue. Default 10 s.
    pub request_timeout: Duration,
    /// Capacity of the outbound queue (packages waiting for the connection task). A full
    /// queue makes callers wait (up to their timeout): memory stays bounded. Default 256.
    pub send_queue_capacity: usize,
    /// Capacity of each push subscription ([`Client::on`](crate::Client::on)). When a
    /// subscriber is slow and its queue is full, further pushes for it are **dropped** (and
    /// counted, and reported as [`Event::PushDropped`](crate::Event::PushDropped)) rather than
    /// stalling the connection or growing memory. Default 256.
    pub push_capacity: usize,
    /// Capacity of the [`Events`](crate::Events) queue. Events that do not fit are dropped
    /// (the final disconnect reason is also available from
    /// [`Client::closed`](crate::Client::closed)). Default 64.
    pub event_capacity: usize,
    /// Largest package body accepted from the server, in bytes; a larger declared length is a
    /// fatal protocol error. Default 4 MiB (pomelo's own limit is 16 MiB − 1).
    pub max_package_size: usize,
    /// Largest WebSocket message accepted from the server. A server may batch several packages
    /// into one message, so this is larger than `max_package_size`. Default 16 MiB.
    pub max_message_size: usize,
    /// Consider the server dead when nothing (heartbeat or data) arrived for this long.
    /// `None` means twice the interval the server announces (what the pomelo clients do).
    /// Without a server heartbeat interval there is no dead-server detection. Default `None`.
    pub heartbeat_timeout: Option<Duration>,
    /// `user` data sent in the handshake (for the server's handshake hook). Default `None`.
    pub user: Option<Value>,
    /// `sys.type` of the handshake. Default `"shaddock-rust"`.
    pub client_type: String,
    /// `sys.version` of the handshake (servers may refuse old versions with code 501).
    /// Default this crate's version.
    pub client_version: String,
    /// A route dictionary cached from an earlier connection: its version is sent as
    /// `sys.dictVersion`, and it is used when the server then omits `dict`. Default `None`.
    pub dictionary: Option<Arc<RouteDictionary>>,
    /// Protobuf schemas cached from an earlier connection: their version is sent as
    /// `sys.protoVersion` (else `0`, as the JS client does), and they are used when the server
    /// then omits `protos`. Default `None`.
    pub protos: Option<Arc<Protos>>,
    /// Request path of the WebSocket upgrade (`ws://host:port<path>`). Default `"/"`.
    pub ws_path: String,
    /// Set TCP_NODELAY on the socket. Default `true`.
    pub nodelay: bool,
    /// How long [`Client::close`](crate::Client::close) waits for the queued packages to be
    /// written and the socket to close cleanly. Default 2 s.
    pub close_timeout: Duration,
    /// Most bytes written in one TCP write when several packages are queued. Default 64 KiB.
    pub max_write_batch: usize,
    /// A write to the server that makes no progress for this long ends the connection
    /// ([`DisconnectReason::Io`](crate::DisconnectReason::Io)). Default 10 s.
    pub write_timeout: Duration,
    /// TLS to the server: raw TCP over TLS, or WebSocket over TLS (`wss://`), checked
    /// against the [`ClientTls`] root store. Default `None` (plain TCP or `ws://`).
    pub tls: Option<ClientTls>,
    /// Reconnect on its own after a lost connection (see [`crate::reconnect`]). Default `None`:
    /// a lost connection ends the client.
    pub reconnect: Option<ReconnectPolicy>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            send_queue_capacity: 256,
            push_capacity: 256,
            event_capacity: 64,
            max_package_size: 4 << 20,
            max_message_size: 16 << 20,
            heartbeat_timeout: None,
            user: None,
            client_type: "shaddock-rust".to_owned(),
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            dictionary: None,
            protos: None,
            ws_path: "/".to_owned(),
            nodelay: true,
            close_timeout: Duration::from_secs(2),
            max_write_batch: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            tls: None,
            reconnect: None,
        }
    }
}

impl ClientConfig {
    /// This config with `user` handshake data.
    pub fn with_user(mut self, user: Value) -> Self {
        self.user = Some(user);
        self
    }

    /// This config with another default request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// This config with another handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// This config with TLS (TLS + TCP, or `wss://` for [`Transport::WebSocket`](crate::Transport::WebSocket)).
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// This config with a [`ReconnectPolicy`].
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// The capacities with zeros raised to 1 (tokio channels need at least 1).
    pub(crate) fn normalized(mut self) -> Self {
        self.send_queue_capacity = self.send_queue_capacity.max(1);
        self.push_capacity = self.push_capacity.max(1);
        self.event_capacity = self.event_capacity.max(1);
        self.max_package_size = self.max_package_size.max(1);
        self.max_message_size = self.max_message_size.max(self.max_package_size);
        self
    }
}
