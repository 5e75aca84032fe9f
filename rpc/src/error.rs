//! Errors a caller sees ([`RpcError`]) and errors a remote handler returns ([`RemoteError`]).

use crate::directory::ServerId;
use crate::frame::{ErrorKind, FrameError, WireError};
use std::time::Duration;

/// Why an RPC call or notify failed. Cheap to match on; every variant names the peer or the
/// call it concerns. None of them poisons the [`crate::RpcClient`]: the next call may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The target server id is not in the peer directory.
    #[error("unknown rpc peer `{server_id}`")]
    UnknownPeer {
        /// The id asked for.
        server_id: String,
    },
    /// No live server of that type (or the router chose none).
    #[error("no live `{server_type}` server to route to")]
    NoServer {
        /// The server type asked for.
        server_type: String,
    },
    /// The peer is down or being reconnected: the call failed fast without being sent.
    #[error("rpc peer `{server_id}` ({addr}) is down: {reason}")]
    PeerDown {
        /// The peer.
        server_id: ServerId,
        /// Its `host:port`.
        addr: String,
        /// The last connect or connection error.
        reason: String,
    },
    /// No response within the per-call timeout. The call may still run on the peer.
    #[error("rpc call {service}.{method} to `{server_id}` timed out after {after:?}")]
    Timeout {
        /// The peer.
        server_id: ServerId,
        /// The service called.
        service: String,
        /// The method called.
        method: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection dropped while the call was in flight (or before it was written).
    /// The call may or may not have run on the peer.
    #[error("rpc connection to `{server_id}` lost mid-call")]
    ConnectionLost {
        /// The peer.
        server_id: ServerId,
    },
    /// The peer stopped answering on an open connection (no frame at all, not even a heartbeat
    /// `pong`, for `heartbeat_timeout`): the link was declared dead, every call in flight on
    /// it failed with this at once, and the client reconnects. The call may or may not have
    /// run on the peer.
    #[error("rpc peer `{server_id}` unresponsive: nothing received for {silent_for:?}")]
    PeerUnresponsive {
        /// The peer.
        server_id: ServerId,
        /// How long the link had been silent when it was declared dead.
        silent_for: Duration,
    },
    /// The peer refused our cluster secret, or requires one and none is configured
    /// ([`crate::RpcConfig::secret`]). The call was not sent; the client retries connecting
    /// with its usual backoff.
    #[error("rpc peer `{server_id}` ({addr}) refused authentication: {reason}")]
    AuthFailed {
        /// The peer.
        server_id: ServerId,
        /// Its `host:port`.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake with the peer failed or the peer refused our certificate (see
    /// [`crate::tls`]): its certificate is not from the cluster CA, it refused ours (none, or
    /// from another CA), or it speaks TLS and this side does not, or the other way round.
    /// The call was not sent; the client retries connecting with its usual backoff.
    #[error("rpc peer `{server_id}` ({addr}): TLS failed: {reason}")]
    TlsFailed {
        /// The peer.
        server_id: ServerId,
        /// Its `host:port`.
        addr: String,
        /// What happened (rustls' words).
        reason: String,
    },
    /// The remote handler ran and returned this error.
    #[error("remote handler error {code}: {message}")]
    Remote {
        /// The handler's code.
        code: u32,
        /// The handler's message.
        message: String,
    },
    /// The peer has no service of that name in that namespace.
    #[error("unknown remote service: {message}")]
    UnknownService {
        /// The peer's description.
        message: String,
    },
    /// The peer's service has no method of that name.
    #[error("unknown remote method: {message}")]
    UnknownMethod {
        /// The peer's description.
        message: String,
    },
    /// The peer could not decode our argument payload.
    #[error("remote could not decode the request payload: {message}")]
    BadRequest {
        /// The peer's description.
        message: String,
    },
    /// The peer failed internally (handler panicked, reply too large).
    #[error("remote internal error: {message}")]
    RemoteInternal {
        /// The peer's description.
        message: String,
    },
    /// We could not decode the peer's reply payload into the expected type.
    #[error("could not decode the rpc reply payload: {message}")]
    Decode {
        /// The decoder's message.
        message: String,
    },
    /// The request would exceed `max_frame_size`; it was not sent.
    #[error("rpc request of {len} bytes exceeds the frame limit of {max} bytes")]
    FrameTooLarge {
        /// Body length of the frame that would have been sent.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A service or method name is empty or longer than 255 bytes.
    #[error("invalid rpc service/method name ({len} bytes; must be 1..=255)")]
    BadName {
        /// Its length.
        len: usize,
    },
}

impl RpcError {
    /// The pomelo response code a frontend should answer a client with for this error
    /// (always 500, pomelo's "server error"), kept here so callers need not match.
    pub fn pomelo_code(&self) -> u32 {
        500
    }

    /// True if the call certainly did not reach the peer (safe to retry elsewhere).
    pub fn is_not_sent(&self) -> bool {
        matches!(
            self,
            Self::UnknownPeer { .. }
                | Self::NoServer { .. }
                | Self::PeerDown { .. }
                | Self::AuthFailed { .. }
                | Self::TlsFailed { .. }
                | Self::FrameTooLarge { .. }
                | Self::BadName { .. }
        )
    }

    /// A short, stable name of the variant (`timeout`, `peer_down`, ...): the `error` label of
    /// the client metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownPeer { .. } => "unknown_peer",
            Self::NoServer { .. } => "no_server",
            Self::PeerDown { .. } => "peer_down",
            Self::Timeout { .. } => "timeout",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::PeerUnresponsive { .. } => "peer_unresponsive",
            Self::AuthFailed { .. } => "auth_failed",
            Self::TlsFailed { .. } => "tls_failed",
            Self::Remote { .. } => "remote",
            Self::UnknownService { .. } => "unknown_service",
            Self::UnknownMethod { .. } => "unknown_method",
            Self::BadRequest { .. } => "bad_request",
            Self::RemoteInternal { .. } => "remote_internal",
            Self::Decode { .. } => "decode",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::BadName { .. } => "bad_name",
        }
    }

    pub(crate) fn from_wire(e: WireError) -> Self {
        let WireError {
            kind,
            code,
            message,
        } = e;
        match kind {
            ErrorKind::Handler => Self::Remote { code, message },
            ErrorKind::UnknownService => Self::UnknownService { message },
            ErrorKind::UnknownMethod => Self::UnknownMethod { message },
            ErrorKind::BadPayload => Self::BadRequest { message },
            ErrorKind::Internal => Self::RemoteInternal { message },
        }
    }

    pub(crate) fn from_frame(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, max } => Self::FrameTooLarge { len, max },
            FrameError::BadName { len } => Self::BadName { len },
            other => Self::Decode {
                message: other.to_string(),
            },
        }
    }
}

/// An error a remote handler returns; its code and message travel back to the caller, who
/// sees [`RpcError::Remote`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote error {code}: {message}")]
pub struct RemoteError {
    /// Application-defined code (pomelo apps use 500 for "server error").
    pub code: u32,
    /// Human-readable detail.
    pub message: String,
}

impl RemoteError {
    /// An error with this code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
