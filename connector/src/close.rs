//! [`Disconnect`]: why a client connection ended, typed; its text is what the session's
//! close hooks get (and the logs show).

use shaddock_protocol::connection::CloseReason;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// No handshake within the handshake timeout.
    HandshakeTimeout,
    /// No heartbeat within the heartbeat timeout.
    HeartbeatTimeout,
    /// The handshake was refused with this code.
    HandshakeRejected(u16),
    /// Kicked (by the app, a slow-consumer queue, the rate limit) with this reason.
    Kicked(String),
    /// The client sent a package of a type it may not send now.
    UnexpectedPackage(&'static str),
    /// Closed by this side.
    Closed,
    /// The server is shutting down.
    ServerShutdown,
    /// The client closed the connection.
    ClosedByClient,
    /// Reading the socket failed.
    ReadFailed(String),
    /// Writing the socket failed.
    WriteFailed(String),
    /// A write did not complete in time (a slow client).
    WriteTimeout,
    /// The messages queued before a kick were not written in time.
    FlushTimeout,
    /// The client sent a message that does not decode, or of a kind it may not send.
    Malformed(String),
    /// Another reason of the protocol state machine.
    Other(String),
}

/// Why the connector itself kicks a client (the app's kicks carry its own text). Its text is
/// the KICK's `reason` and, after `kicked: `, the close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KickReason {
    /// More packages than the rate limit allows.
    RateLimit,
    /// The outbound queue (of this many messages) is full: the client does not read.
    SlowConsumer {
        /// The queue's capacity.
        capacity: usize,
    },
}

impl std::fmt::Display for KickReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RateLimit => f.write_str("rate limit exceeded"),
            Self::SlowConsumer { capacity } => {
                write!(
                    f,
                    "slow consumer: outbound queue full ({capacity} messages)"
                )
            }
        }
    }
}

impl From<&CloseReason> for Disconnect {
    fn from(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::HandshakeTimeout => Self::HandshakeTimeout,
            CloseReason::HeartbeatTimeout => Self::HeartbeatTimeout,
            CloseReason::HandshakeRejected(code) => Self::HandshakeRejected(*code),
            CloseReason::Kicked(r) => Self::Kicked(r.clone()),
            CloseReason::UnexpectedPackage(t) => Self::UnexpectedPackage(t.name()),
            CloseReason::Local => Self::Closed,
            other => Self::Other(format!("{other:?}")),
        }
    }
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HandshakeTimeout => f.write_str("handshake timeout"),
            Self::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            Self::HandshakeRejected(code) => write!(f, "handshake refused with code {code}"),
            Self::Kicked(r) => write!(f, "kicked: {r}"),
            Self::UnexpectedPackage(t) => write!(f, "client sent a {t} package"),
            Self::Closed => f.write_str("closed"),
            Self::ServerShutdown => f.write_str("server shutdown"),
            Self::ClosedByClient => f.write_str("closed by client"),
            Self::ReadFailed(e) => write!(f, "read failed: {e}"),
            Self::WriteFailed(e) => write!(f, "write failed: {e}"),
            Self::WriteTimeout => f.write_str("write timeout"),
            Self::FlushTimeout => f.write_str("write timeout while flushing before a kick"),
            Self::Malformed(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_texts_are_the_close_hooks_strings() {
        for (d, text) in [
            (Disconnect::HandshakeTimeout, "handshake timeout"),
            (
                Disconnect::HandshakeRejected(501),
                "handshake refused with code 501",
            ),
            (Disconnect::Kicked("bye".into()), "kicked: bye"),
            (Disconnect::ServerShutdown, "server shutdown"),
            (Disconnect::ClosedByClient, "closed by client"),
            (Disconnect::WriteTimeout, "write timeout"),
            (Disconnect::from(&CloseReason::Local), "closed"),
        ] {
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(KickReason::RateLimit.to_string(), "rate limit exceeded");
        assert_eq!(
            KickReason::SlowConsumer { capacity: 8 }.to_string(),
            "slow consumer: outbound queue full (8 messages)"
        );
    }
}
