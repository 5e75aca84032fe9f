//! Runtime knobs of a frontend's client port.

use std::time::Duration;

use crate::limit::RateLimit;
use crate::tls::ServerTls;

/// Settings of one frontend's client port. Every field has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectorConfig {
    /// Id of this frontend server (e.g. `"connector-server-1"`); sessions carry it.
    /// Default `"connector"`.
    pub frontend_id: String,
    /// Server type of this frontend (routes `"<type>.handler.method"` run locally).
    /// Default `"connector"`.
    pub server_type: String,
    /// Largest package body accepted from a client, in bytes; also the WebSocket maximum
    /// message and frame size. Default 64 KiB (pomelo allows 16 MiB; chat messages are small,
    /// and every connection may buffer up to this much).
    pub max_package_size: usize,
    /// Heartbeat interval announced in the handshake (`sys.heartbeat`, whole seconds).
    /// `None` disables heartbeats and the heartbeat timeout, as in pomelo. Default 10 s.
    pub heartbeat_interval: Option<Duration>,
    /// Close a connection this long after its last HEARTBEAT. `None` means twice the interval
    /// (pomelo's default). Default `None`.
    pub heartbeat_timeout: Option<Duration>,
    /// Close a connection that has not completed handshake and ack within this time
    /// (also bounds the sniffing of the first bytes and the WebSocket upgrade). Default 10 s.
    pub handshake_timeout: Duration,
    /// Outbound queue per connection, in messages. A connection whose queue is full is kicked
    /// as a slow consumer. Default 1024.
    pub queue_capacity: usize,
    /// Requests and notifies of one connection handled at once; beyond it the connection
    /// stops reading until one finishes, so a flooding client cannot pile up tasks.
    /// Default 64.
    pub max_in_flight: usize,
    /// Most bytes written to a socket in one write when coalescing queued messages.
    /// Default 64 KiB.
    pub max_write_batch: usize,
    /// A batch write to a client (at most `max_write_batch` bytes) that does not finish
    /// within this time closes the connection.
    /// Default 10 s.
    pub write_timeout: Duration,
    /// On shutdown, how long [`Frontend::serve`](crate::Frontend::serve) waits for
    /// connection and handler tasks to finish before returning anyway. Default 10 s.
    pub drain_timeout: Duration,
    /// Most connections open at once on this port; others are refused (closed at once).
    /// Default 10 000.
    pub max_connections: usize,
    /// Inbound packages per connection (token bucket). `None` (the default) disables it.
    pub rate_limit: Option<RateLimit>,
    /// Set TCP_NODELAY on accepted sockets. Default `true`.
    pub nodelay: bool,
    /// Close a client that sends DATA before completing the handshake (pitaya/nano style).
    /// Default `false`: such data is ignored, as pomelo does (PROTOCOL.md §5.4).
    pub close_on_early_data: bool,
    /// Clients whose handshake `sys.version` compares below this (dot-separated numbers) are
    /// refused with code 501. Default `None` (every version accepted).
    pub min_client_version: Option<String>,
    /// Push scheduling (pomelo's push scheduler). `None` (the default): each connection writes
    /// its queued pushes as soon as it can ("direct"). `Some(interval)`: pushes to a connection
    /// wait up to `interval` and go out together in one write ("buffer", pomelo's
    /// `flushInterval`), which costs a busy broadcast one write per connection per interval
    /// instead of one per push. Responses are never delayed (they flush the pushes queued
    /// before them). At most 60 s; pomelo's default is 20 ms.
    pub push_flush_interval: Option<Duration>,
    /// Without a push flush interval: while requests of the connection are being handled,
    /// its pushes wait up to this long for a response, so that both leave in one write (a
    /// chat message to a room the sender is in: the room's push reaches the sender's
    /// connector just before the reply). Saves a write and the client a read per such
    /// request. Zero writes pushes at once. Default 2 ms.
    pub push_linger: Duration,
    /// TLS on this port ([`ServerTls`]: certificate, key, optional or required, reloadable).
    /// `None` (the default): plain clients only.
    pub tls: Option<ServerTls>,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            frontend_id: "connector".to_owned(),
            server_type: "connector".to_owned(),
            max_package_size: 64 * 1024,
            heartbeat_interval: Some(Duration::from_secs(10)),
            heartbeat_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            queue_capacity: 1024,
            max_in_flight: 64,
            max_write_batch: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            rate_limit: None,
            nodelay: true,
            close_on_early_data: false,
            min_client_version: None,
            push_flush_interval: None,
            push_linger: Duration::from_millis(2),
            tls: None,
        }
    }
}

impl ConnectorConfig {
    /// The heartbeat timeout in effect: the configured one, else twice the interval.
    pub fn effective_heartbeat_timeout(&self) -> Option<Duration> {
        let interval = self.heartbeat_interval?;
        Some(self.heartbeat_timeout.unwrap_or(interval * 2))
    }
}
