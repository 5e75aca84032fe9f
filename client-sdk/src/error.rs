//! The client's [`Error`] and the [`DisconnectReason`] shared by errors and events.

use std::time::Duration;

use shaddock_protocol::protobuf::{ProtobufError, SchemaError};

/// Why a connection ended. Cloned into every waiting request and into
/// [`Event::Disconnected`](crate::Event::Disconnected).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// [`Client::close`](crate::Client::close) was called, or every `Client` handle was
    /// dropped.
    Closed,
    /// The server sent a KICK package.
    Kicked {
        /// The kick's `reason` (`"kick"` by default in pomelo; empty when the server gave
        /// none, the body's text when it was not JSON).
        reason: String,
    },
    /// Nothing arrived from the server within the heartbeat timeout.
    HeartbeatTimeout {
        /// The timeout in force.
        after: Duration,
    },
    /// The server closed the connection (end of stream or WebSocket close).
    ServerClosed,
    /// The server broke the package framing (unknown package type, oversized or truncated
    /// package, text WebSocket message).
    Protocol {
        /// What was wrong, naming the byte/length/limit.
        error: String,
    },
    /// A transport error (read or write failed).
    Io {
        /// The error text.
        error: String,
    },
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed by the client"),
            Self::Kicked { reason } => write!(f, "kicked by the server: {reason}"),
            Self::HeartbeatTimeout { after } => {
                write!(
                    f,
                    "heartbeat timeout: nothing from the server for {after:?}"
                )
            }
            Self::ServerClosed => f.write_str("the server closed the connection"),
            Self::Protocol { error } => write!(f, "protocol error: {error}"),
            Self::Io { error } => write!(f, "i/o error: {error}"),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting or writing to `peer` failed. Fatal for that connection attempt.
    #[error("i/o error with {peer}: {source}")]
    Io {
        /// The server address.
        peer: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The WebSocket upgrade or a WebSocket read/write with `peer` failed. Fatal for the
    /// connection attempt.
    #[error("websocket error with {peer}: {source}")]
    WebSocket {
        /// The server address.
        peer: String,
        /// The underlying error.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The TLS handshake with `peer` failed (certificate not trusted or not for the name,
    /// no TLS on the port, ...), or the name to verify is not a valid server name. Fatal for
    /// the connection attempt.
    #[error("TLS error with {peer}: {reason}")]
    Tls {
        /// The server address.
        peer: String,
        /// What failed (rustls' alert or certificate error, or the bad name).
        reason: String,
    },
    /// A URL given to [`Client::connect_url`](crate::Client::connect_url) is not
    /// `tcp://`, `tls://`, `ws://` or `wss://` followed by `host:port`.
    #[error("invalid server URL `{url}`: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A wire rule was broken (while encoding a request, or in the server's handshake reply).
    #[error(transparent)]
    Protocol(#[from] shaddock_protocol::Error),
    /// A pomelo-protobuf or prost body could not be encoded or decoded. The connection is
    /// unaffected.
    #[error(transparent)]
    Protobuf(#[from] ProtobufError),
    /// The `protos` of the server's handshake reply are not a valid schema. Fatal for the
    /// connection attempt.
    #[error("invalid protos in the handshake of {peer}: {source}")]
    Schema {
        /// The server address.
        peer: String,
        /// What is wrong with the schema.
        source: SchemaError,
    },
    /// A JSON body could not be written or read as the requested type. The connection is
    /// unaffected.
    #[error("JSON body on route `{route}`: {reason}")]
    Json {
        /// The request or push route.
        route: String,
        /// What serde reported.
        reason: String,
    },
    /// No handshake reply from `peer` within the handshake timeout.
    #[error("no handshake reply from {peer} within {after:?}")]
    HandshakeTimeout {
        /// The server address.
        peer: String,
        /// The timeout in force.
        after: Duration,
    },
    /// `peer` answered the handshake with a code other than 200 (500: bad request or hook
    /// error; 501: client version refused).
    #[error("handshake refused by {peer} with code {code}")]
    HandshakeRejected {
        /// The server address.
        peer: String,
        /// The reply's `code`.
        code: u16,
    },
    /// `peer` closed or kicked the connection during the handshake.
    #[error("{peer} ended the connection during the handshake: {reason}")]
    HandshakeClosed {
        /// The server address.
        peer: String,
        /// How it ended.
        reason: DisconnectReason,
    },
    /// No response to request `id` on `route` within `after`. The waiter has been removed; a
    /// late response is ignored.
    #[error("request {id} on route `{route}` timed out after {after:?}")]
    Timeout {
        /// The request route.
        route: String,
        /// The request id (0 when the request could not even be queued in time).
        id: u32,
        /// The timeout in force.
        after: Duration,
    },
    /// The connection is closed (or closed while the call waited).
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// The connection was lost and the client is reconnecting
    /// ([`WhileReconnecting::FailFast`](crate::WhileReconnecting::FailFast)); the reason it
    /// was lost. Nothing was sent.
    #[error("reconnecting (the connection was lost: {0})")]
    Reconnecting(DisconnectReason),
    /// A reconnect hook ([`ReconnectPolicy::on_reconnect`](crate::ReconnectPolicy::on_reconnect))
    /// or resolver refused the new connection (e.g. the server refused to let the user in
    /// again); that attempt fails and the next one follows.
    #[error("reconnect hook failed: {reason}")]
    Hook {
        /// What the hook reported.
        reason: String,
    },
    /// The gate's `queryEntry` answer did not name a connector.
    #[error("gate {gate} gave no connector: {reply}")]
    Gate {
        /// The gate address.
        gate: String,
        /// The gate's reply (JSON text).
        reply: String,
    },
}

impl Error {
    /// An [`Error::Hook`] saying `reason`.
    pub fn hook(reason: impl std::fmt::Display) -> Self {
        Self::Hook {
            reason: reason.to_string(),
        }
    }

    /// Whether this is a request timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// Whether this means the connection is gone (for good, or while the client reconnects).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected(_) | Self::Reconnecting(_))
    }

    /// Whether the call failed because the client is reconnecting
    /// ([`WhileReconnecting::FailFast`](crate::WhileReconnecting::FailFast)).
    pub fn is_reconnecting(&self) -> bool {
        matches!(self, Self::Reconnecting(_))
    }
}
