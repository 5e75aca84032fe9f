//! [`RpcConfig`]: every limit and timeout of the RPC client and server.

use std::time::Duration;

/// Limits and timeouts for [`crate::RpcClient`] and [`crate::RpcServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcConfig {
    /// Largest frame body accepted or sent, in bytes. A peer that declares a bigger frame is
    /// disconnected; a call whose request would be bigger fails with
    /// [`crate::RpcError::FrameTooLarge`]. Default: 8 MiB.
    pub max_frame_size: usize,
    /// How long a call waits for its response (queueing included). Default: 10 s.
    pub call_timeout: Duration,
    /// Capacity of each connection's outbound frame queue; callers (or handlers replying)
    /// wait when it is full. Default: 4096 frames.
    pub queue_capacity: usize,
    /// Handlers running at once per server connection; the server stops reading that
    /// connection while they are all busy. Default: 4096.
    pub max_in_flight_per_connection: usize,
    /// Time allowed for one connect to a peer: the TCP connect and the peer's first answer
    /// (the `pong` to a first `ping`, or the cluster-secret handshake). A server with a
    /// `secret` gives each accepted peer this long to authenticate. Default: 3 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled after each failed attempt. Default: 100 ms.
    pub backoff_base: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub backoff_max: Duration,
    /// Failed connect attempts in a row before the client stops retrying in the background;
    /// the next call then tries again (and waits for that one attempt). Default: 20.
    pub reconnect_max_attempts: u32,
    /// Frames a writer drains from its queue into one buffer before writing (write
    /// coalescing). Default: 256.
    pub write_batch: usize,
    /// Connections an [`crate::RpcServer`] serves at once. The server takes a slot *before*
    /// it accepts, so while all are taken further peers wait in the kernel's listen backlog
    /// (their connect succeeds, nothing is read from them) until a connection closes; none
    /// is accepted and dropped. Default: 1024.
    pub max_connections: usize,
    /// An [`crate::RpcServer`] closes a connection on which nothing (no frame at all, not even
    /// a heartbeat ping) arrived for this long, logging the peer at `info`. It is checked a
    /// quarter of it at a time, so the close comes between `idle_timeout` and 1.25 x
    /// `idle_timeout` after the last frame. `None`: never. Must be well above the clients'
    /// `heartbeat_interval`, which keeps every live link busy. Default: 60 s.
    pub idle_timeout: Option<Duration>,
    /// A client link sends a `ping` frame this often (the server answers `pong`), whether or
    /// not calls are flowing. Default: 1 s.
    pub heartbeat_interval: Duration,
    /// A client link on which nothing at all arrived (no reply, no `pong`) for this long is
    /// declared dead: every call in flight on it fails at once with
    /// [`crate::RpcError::PeerUnresponsive`], new calls fail fast with
    /// [`crate::RpcError::PeerDown`], and the client reconnects (a reconnect counts only once
    /// the peer has answered a `ping`, within `connect_timeout`). Silence is checked at each
    /// heartbeat, so a peer that freezes (e.g. `SIGSTOP`) with its socket open is detected
    /// between `heartbeat_timeout` and `heartbeat_timeout + heartbeat_interval` after the
    /// last frame it sent. Default: 3 s.
    pub heartbeat_timeout: Duration,
    /// The cluster secret. When set, an [`crate::RpcServer`] serves only peers that prove
    /// they know it (HMAC-SHA256 challenge-response, see [`crate::auth`]), within
    /// `connect_timeout` of accepting them, before it reads any call; an [`crate::RpcClient`]
    /// answers the challenge, and fails with [`crate::RpcError::AuthFailed`] (retrying with
    /// the usual backoff) when the peer refuses it or asks for a secret it does not have.
    /// Client and server must agree: set it on both or on neither. Default: `None`.
    pub secret: Option<crate::ClusterSecret>,
    /// TLS with a cluster CA (mutual TLS, see [`crate::tls`]). When set, an
    /// [`crate::RpcServer`] serves TLS peers with a certificate of the CA only, and an
    /// [`crate::RpcClient`] connects with TLS, checks the server's certificate against the CA
    /// and presents its own. The TLS handshake counts against `connect_timeout`. Set it on
    /// every server of the cluster or on none. Default: `None` (plain TCP).
    pub tls: Option<crate::RpcTls>,
    /// Where calls, errors and latencies are counted ([`crate::RpcMetrics`], registered in a
    /// Prometheus registry by the caller): per peer on the client side, per method on the
    /// server side. `None`: nothing is counted (the cost is one branch per call).
    /// Default: `None`.
    pub metrics: Option<crate::RpcMetrics>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            max_frame_size: 8 * 1024 * 1024,
            call_timeout: Duration::from_secs(10),
            queue_capacity: 4096,
            max_in_flight_per_connection: 4096,
            connect_timeout: Duration::from_secs(3),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            reconnect_max_attempts: 20,
            write_batch: 256,
            max_connections: 1024,
            idle_timeout: Some(Duration::from_secs(60)),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            secret: None,
            tls: None,
            metrics: None,
        }
    }
}

impl RpcConfig {
    /// The delay before reconnect attempt number `attempt` (1-based): `backoff_base * 2^(attempt-1)`,
    /// capped at `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.backoff_base
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}
