//! Connection events: kicks, heartbeat timeouts, protocol errors, dropped pushes and the final
//! disconnect, delivered on [`Events`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::DisconnectReason;

/// Something that happened to a client's connection. The last event is always
/// [`Event::Disconnected`] (unless the events queue was full at that moment; the reason is
/// also available from [`Client::closed`](crate::Client::closed)). With a
/// [`ReconnectPolicy`](crate::ReconnectPolicy), a lost connection is
/// [`Event::ConnectionLost`] instead, followed by the reconnect events
/// ([`ReconnectAttempt`](Event::ReconnectAttempt), [`ReconnectFailed`](Event::ReconnectFailed),
/// then [`Reconnected`](Event::Reconnected) or [`ReconnectGaveUp`](Event::ReconnectGaveUp) and
/// [`Disconnected`](Event::Disconnected)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The server kicked this client (package KICK); the connection then ends.
    Kicked {
        /// The kick's `reason`; empty when the server gave none (pitaya's empty body), the
        /// body's text when it was not JSON.
        reason: String,
    },
    /// Nothing arrived from the server within the heartbeat timeout; the connection then
    /// ends.
    HeartbeatTimeout {
        /// The timeout in force.
        after: Duration,
    },
    /// The server sent something malformed. `fatal` errors (package framing) end the
    /// connection; others (one bad message, an unknown route code) drop that message only.
    ProtocolError {
        /// What was wrong.
        error: shaddock_protocol::Error,
        /// Whether the connection ends because of it.
        fatal: bool,
    },
    /// A push arrived for a route the dictionary does not know (compressed route code).
    UnknownRouteCode {
        /// The code.
        code: u16,
    },
    /// A push was dropped because a subscriber's queue was full (a slow subscriber).
    PushDropped {
        /// The push route.
        route: String,
    },
    /// The connection ended for `reason` and the client will reconnect (its
    /// [`ReconnectPolicy`](crate::ReconnectPolicy) applies to that reason). Requests in
    /// flight have failed with [`Error::Disconnected`](crate::Error::Disconnected).
    ConnectionLost {
        /// Why the connection ended.
        reason: DisconnectReason,
    },
    /// Reconnect attempt `attempt` (from 1) starts after `delay`.
    ReconnectAttempt {
        /// The attempt number, from 1 for each lost connection.
        attempt: u32,
        /// The backoff waited before it (jitter included).
        delay: Duration,
    },
    /// Reconnect attempt `attempt` failed (resolver, connect, handshake or hook); another
    /// follows unless the policy's limits are reached.
    ReconnectFailed {
        /// The attempt number.
        attempt: u32,
        /// What failed.
        error: crate::Error,
    },
    /// The client is connected again, to `peer`, and its hook has run: requests go to the
    /// new connection.
    Reconnected {
        /// The attempt that succeeded.
        attempt: u32,
        /// The server address (`host:port`) of the new connection.
        peer: String,
    },
    /// The policy's limits were reached without a new connection; [`Event::Disconnected`]
    /// (with the reason the connection was lost) follows and the client is closed.
    ReconnectGaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Time from the loss to giving up.
        elapsed: Duration,
    },
    /// The client's connection ended for good. Always the last event.
    Disconnected(DisconnectReason),
}

/// The stream of [`Event`]s of one connection. Ends after [`Event::Disconnected`]. Dropping
/// it is fine: events are then discarded.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the connection has ended and every event was read.
    ///
    /// # Cancel safety
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
