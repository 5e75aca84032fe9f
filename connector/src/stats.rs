//! Counters of one frontend's connections: how many were accepted, refused, kicked and why.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the listener and every connection task.
///
/// All counts are monotonic except `active`; `peak_parked` is a high-water mark.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) kicked: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) heartbeat_timeouts: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) peak_parked: AtomicU64,
    pub(crate) handshakes: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) pushed: AtomicU64,
}

/// A point-in-time copy of [`ConnectorStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Connections accepted and served (not counting refused ones).
    pub accepted: u64,
    /// Connections open right now.
    pub active: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: u64,
    /// Connections ended by a kick, for any reason (application, slow consumer, rate limit).
    pub kicked: u64,
    /// Connections kicked for going over the inbound rate limit.
    pub rate_limited: u64,
    /// Connections kicked because their outbound queue was full.
    pub slow_consumers: u64,
    /// Connections closed for not finishing the handshake in time.
    pub handshake_timeouts: u64,
    /// Connections closed for missing heartbeats.
    pub heartbeat_timeouts: u64,
    /// Connections closed for malformed input (bad package, message or WebSocket frame).
    pub protocol_errors: u64,
    /// Errors returned by `accept` (the listener backs off and retries).
    pub accept_errors: u64,
    /// The most messages one connection has had parked at once, waiting for a handler slot
    /// (`max_in_flight` being handled). A connection does not read while it has parked
    /// messages, so this is at most the messages of one read: 64 KiB over TCP (plus a
    /// partial package left from the read before), one WebSocket message.
    pub peak_parked: u64,
    /// Pomelo handshakes accepted (code 200).
    pub handshakes: u64,
    /// Pomelo handshakes refused (a client too old, a bad handshake body).
    pub handshakes_refused: u64,
    /// Pushes queued to sessions (one per session reached; responses not counted).
    pub pushed: u64,
}

impl ConnectorStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: r(&self.accepted),
            active: r(&self.active),
            refused: r(&self.refused),
            kicked: r(&self.kicked),
            rate_limited: r(&self.rate_limited),
            slow_consumers: r(&self.slow_consumers),
            handshake_timeouts: r(&self.handshake_timeouts),
            heartbeat_timeouts: r(&self.heartbeat_timeouts),
            protocol_errors: r(&self.protocol_errors),
            accept_errors: r(&self.accept_errors),
            peak_parked: r(&self.peak_parked),
            handshakes: r(&self.handshakes),
            handshakes_refused: r(&self.handshakes_refused),
            pushed: r(&self.pushed),
        }
    }

    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Raises the high-water mark `peak` to `value`.
    pub(crate) fn raise(peak: &AtomicU64, value: usize) {
        peak.fetch_max(u64::try_from(value).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
