//! Connection events: kicks, heartbeat timeouts, protocol errors, dropped pushes and the final
//! disconnect, delivered on [`Events`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::DisconnectReason;

/// Something that happened to a connection. The last event of a connection is always
/// [`Event::Disconnected`] (unless the events queue was full at that moment; the reason is
/// also available from [`Client::closed`](crate::Client::closed)).
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
    /// The connection ended. Always the last event.
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
