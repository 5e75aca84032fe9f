//! The server side of one client connection as a sans-IO state machine: handshake,
//! handshake ack, heartbeat, kick and the two timeouts (PROTOCOL.md §5.4, §6, §7).
//!
//! No IO and no clock: the owner feeds packages and `now`, and polls for what to send, what
//! happened and when to wake it next.
//!
//! # States (PROTOCOL.md §5.4)
//! ```text
//!            HANDSHAKE                  HANDSHAKE_ACK
//!  Initial ─────────────▶ (owner decides) ──200──▶ WaitingAck ─────────────▶ Working
//!     │                        │ 500/501                │                      │
//!     │ handshake timeout      ▼                        │ handshake timeout    │ heartbeat timeout,
//!     └──────────────────▶  Closed ◀────────────────────┘                      │ kick, KICK from client
//!                              ▲───────────────────────────────────────────────┘
//! ```
//! | state | HANDSHAKE | HANDSHAKE_ACK | HEARTBEAT | DATA | KICK |
//! |---|---|---|---|---|---|
//! | initial | event for the owner | ignore | ignore | ignore | close |
//! | waiting for ack | ignore | → working, send HEARTBEAT | ignore | ignore | close |
//! | working | ignore | ignore | send HEARTBEAT, re-arm timeout | event | close |
//!
//! # Call order
//! 1. [`ServerConnection::new`] with the config and `now` (arms the handshake timeout).
//! 2. For every package read: [`ServerConnection::handle_package`]; when the deadline returned
//!    by [`ServerConnection::poll_timeout`] passes: [`ServerConnection::handle_timeout`].
//! 3. After each input, drain [`ServerConnection::poll_event`] (a
//!    [`Event::HandshakeRequest`] must be answered with
//!    [`ServerConnection::accept_handshake`] or [`ServerConnection::reject_handshake`]) and
//!    [`ServerConnection::poll_transmit`] (packages to write, in order), then sleep until
//!    [`ServerConnection::poll_timeout`].
//! 4. Once [`ServerConnection::is_closed`] is true and the transmit queue is drained, close the
//!    transport.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::handshake::Kick;
use crate::package::{Package, PackageType};

/// Timers of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Heartbeat interval announced to the client; `None` disables heartbeats and the
    /// heartbeat timeout (pomelo without the `heartbeat` option).
    pub heartbeat_interval: Option<Duration>,
    /// Close this long after the last HEARTBEAT (or the ack). `None` = 2 × interval (pomelo).
    pub heartbeat_timeout: Option<Duration>,
    /// Close when handshake + ack are not done this long after the connection started.
    /// `None` disables it (pomelo has none; its 90 s socket idle timeout plays the part).
    pub handshake_timeout: Option<Duration>,
    /// Close the connection on DATA received before the handshake is acknowledged, as
    /// pitaya and nano do, instead of ignoring it as pomelo does (§5.4). Default `false`.
    pub close_on_early_data: bool,
}

impl Default for ConnectionConfig {
    /// Heartbeat 10 s, timeout 20 s, handshake timeout 10 s.
    fn default() -> Self {
        Self {
            heartbeat_interval: Some(Duration::from_secs(10)),
            heartbeat_timeout: None,
            handshake_timeout: Some(Duration::from_secs(10)),
            close_on_early_data: false,
        }
    }
}

impl ConnectionConfig {
    fn effective_heartbeat_timeout(&self) -> Option<Duration> {
        let interval = self.heartbeat_interval?;
        Some(self.heartbeat_timeout.unwrap_or(interval * 2))
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the client's HANDSHAKE.
    Initial,
    /// HANDSHAKE received, the owner has not answered it yet.
    Handshaking,
    /// Handshake answered with 200; waiting for HANDSHAKE_ACK.
    WaitingAck,
    /// Established: DATA and HEARTBEAT flow.
    Working,
    /// Finished; nothing more is accepted.
    Closed,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Handshake and ack were not completed within the handshake timeout.
    HandshakeTimeout,
    /// No HEARTBEAT within the heartbeat timeout (no kick is sent, as in pomelo).
    HeartbeatTimeout,
    /// The owner refused the handshake with this code (500 or 501); the reply was queued.
    HandshakeRejected(u16),
    /// The server kicked the client with this reason.
    Kicked(String),
    /// The client sent a package it must not send: KICK, or DATA before the handshake was
    /// acknowledged when [`ConnectionConfig::close_on_early_data`] is set.
    UnexpectedPackage(PackageType),
    /// The owner closed the connection without a kick (transport gone, shutdown, error).
    Local,
}

/// Something the owner must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The client's HANDSHAKE body (JSON text, unparsed); answer with
    /// [`ServerConnection::accept_handshake`] or [`ServerConnection::reject_handshake`].
    HandshakeRequest(Bytes),
    /// HANDSHAKE_ACK received: the connection is working.
    Established,
    /// A DATA package body (a message) received in the working state.
    Data(Bytes),
    /// The connection is closed; drain [`ServerConnection::poll_transmit`], then close.
    Closed(CloseReason),
}

/// The server side of one pomelo client connection. See the [module docs](self).
#[derive(Debug)]
pub struct ServerConnection {
    /// What it needs of its [`ConnectionConfig`] after `new` (not the whole config: the
    /// connection lives as long as its client, idle most of the time, so each byte of it
    /// is a byte per connection): the effective heartbeat timeout ...
    heartbeat_timeout: Option<Duration>,
    /// ... and [`ConnectionConfig::close_on_early_data`].
    close_on_early_data: bool,
    state: State,
    /// The one timer: handshake deadline before working, heartbeat deadline after.
    deadline: Option<Instant>,
    transmit: VecDeque<Package>,
    events: VecDeque<Event>,
}

/// Frees a drained queue's buffer: a connection spends its life idle between a few packages
/// (handshake, heartbeats), and a kept buffer of four slots is 160 bytes per connection; a
/// new one costs an allocation per heartbeat instead.
fn release_if_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

impl ServerConnection {
    /// A connection that started at `now`, waiting for the client's HANDSHAKE.
    pub fn new(config: ConnectionConfig, now: Instant) -> Self {
        Self {
            heartbeat_timeout: config.effective_heartbeat_timeout(),
            close_on_early_data: config.close_on_early_data,
            state: State::Initial,
            deadline: config.handshake_timeout.map(|t| now + t),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection has finished (the transmit queue may still hold a last reply).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds one package received from the client.
    pub fn handle_package(&mut self, package: Package, now: Instant) {
        match (self.state, package.kind) {
            (State::Closed, _) => {}
            // "A KICK sent by a client has no handler: the server disconnects." (§7)
            (_, PackageType::Kick) => self.close(CloseReason::UnexpectedPackage(PackageType::Kick)),
            (State::Initial, PackageType::Handshake) => {
                self.state = State::Handshaking;
                self.events.push_back(Event::HandshakeRequest(package.body));
            }
            (State::WaitingAck, PackageType::HandshakeAck) => {
                // "On it the server moves the connection to working and immediately runs its
                // heartbeat logic, i.e. sends a HEARTBEAT right away" (§5.3).
                self.state = State::Working;
                self.events.push_back(Event::Established);
                self.heartbeat(now);
            }
            (State::Working, PackageType::Heartbeat) => self.heartbeat(now),
            (State::Working, PackageType::Data) => self.events.push_back(Event::Data(package.body)),
            (_, PackageType::Data) if self.close_on_early_data => {
                self.close(CloseReason::UnexpectedPackage(PackageType::Data));
            }
            // Everything else is ignored silently, as pomelo does (§5.4, §12): data, heartbeat
            // and ack before the handshake, data before the ack, a second handshake.
            _ => {}
        }
    }

    /// Answers the pending handshake with a 200 reply (`reply` is the HANDSHAKE body to send).
    /// Ignored unless a [`Event::HandshakeRequest`] is pending.
    pub fn accept_handshake(&mut self, reply: Bytes) {
        if self.state != State::Handshaking {
            return;
        }
        self.transmit.push_back(Package {
            kind: PackageType::Handshake,
            body: reply,
        });
        self.state = State::WaitingAck;
    }

    /// Refuses the pending handshake: queues `reply` (e.g. `{"code":500}`) and closes with
    /// `code`. Ignored unless a [`Event::HandshakeRequest`] is pending.
    pub fn reject_handshake(&mut self, code: u16, reply: Bytes) {
        if self.state != State::Handshaking {
            return;
        }
        self.transmit.push_back(Package {
            kind: PackageType::Handshake,
            body: reply,
        });
        self.close(CloseReason::HandshakeRejected(code));
    }

    /// Kicks the client: in the working state a KICK package `{"reason":…}` is queued (pomelo
    /// sends it only then, §7); in every state the connection closes.
    pub fn kick(&mut self, reason: &str) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Working {
            self.transmit.push_back(Package {
                kind: PackageType::Kick,
                body: Kick::new(reason).to_body(),
            });
        }
        self.close(CloseReason::Kicked(reason.to_owned()));
    }

    /// Closes without a kick (transport gone, shutdown, framing error).
    pub fn close_local(&mut self) {
        self.close(CloseReason::Local);
    }

    /// Tells the connection that time has reached `now`; closes it when its deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.state {
            State::Initial | State::Handshaking | State::WaitingAck => {
                self.close(CloseReason::HandshakeTimeout);
            }
            State::Working => self.close(CloseReason::HeartbeatTimeout),
            State::Closed => {}
        }
    }

    /// The next package to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Package> {
        let p = self.transmit.pop_front();
        if p.is_none() {
            release_if_empty(&mut self.transmit);
        }
        p
    }

    /// When [`ServerConnection::handle_timeout`] must next be called; `None` = no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            None
        } else {
            self.deadline
        }
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() {
            release_if_empty(&mut self.events);
        }
        e
    }

    /// "Whenever it gets a HEARTBEAT (or the ack), it sends a HEARTBEAT back at once and
    /// re-arms one timer of T" (§6). Without a configured heartbeat nothing happens.
    fn heartbeat(&mut self, now: Instant) {
        match self.heartbeat_timeout {
            Some(timeout) => {
                self.transmit.push_back(Package {
                    kind: PackageType::Heartbeat,
                    body: Bytes::new(),
                });
                self.deadline = Some(now + timeout);
            }
            None => self.deadline = None,
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.deadline = None;
        self.events.push_back(Event::Closed(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(kind: PackageType) -> Package {
        Package {
            kind,
            body: Bytes::new(),
        }
    }

    /// A virtual clock.
    struct Clock(Instant);
    impl Clock {
        fn advance(&mut self, d: Duration) -> Instant {
            self.0 += d;
            self.0
        }
    }

    fn config() -> ConnectionConfig {
        ConnectionConfig {
            heartbeat_interval: Some(Duration::from_secs(3)),
            heartbeat_timeout: None,
            handshake_timeout: Some(Duration::from_secs(5)),
            close_on_early_data: false,
        }
    }

    fn kinds(c: &mut ServerConnection) -> Vec<PackageType> {
        std::iter::from_fn(|| c.poll_transmit())
            .map(|p| p.kind)
            .collect()
    }

    fn established(clock: &Clock) -> ServerConnection {
        let mut c = ServerConnection::new(config(), clock.0);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        assert!(matches!(c.poll_event(), Some(Event::HandshakeRequest(_))));
        c.accept_handshake(Bytes::from_static(b"{\"code\":200,\"sys\":{}}"));
        c.handle_package(pkg(PackageType::HandshakeAck), clock.0);
        assert_eq!(c.poll_event(), Some(Event::Established));
        assert_eq!(
            kinds(&mut c),
            vec![PackageType::Handshake, PackageType::Heartbeat]
        );
        c
    }

    /// An idle connection keeps no queue buffers: drained queues are freed.
    #[test]
    fn drained_queues_hold_no_memory() {
        let clock = Clock(Instant::now());
        let mut c = established(&clock);
        c.handle_package(pkg(PackageType::Heartbeat), clock.0);
        assert_eq!(kinds(&mut c), vec![PackageType::Heartbeat]);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.transmit.capacity(), 0);
        assert_eq!(c.events.capacity(), 0);
    }

    #[test]
    fn handshake_ack_then_heartbeat_right_away() {
        let clock = Clock(Instant::now());
        let c = established(&clock);
        assert_eq!(c.state(), State::Working);
        assert_eq!(c.poll_timeout(), Some(clock.0 + Duration::from_secs(6)));
    }

    #[test]
    fn heartbeats_are_echoed_and_rearm_the_timer() {
        let mut clock = Clock(Instant::now());
        let mut c = established(&clock);
        let t = clock.advance(Duration::from_secs(5));
        c.handle_timeout(t);
        assert_eq!(c.state(), State::Working);
        c.handle_package(pkg(PackageType::Heartbeat), t);
        assert_eq!(kinds(&mut c), vec![PackageType::Heartbeat]);
        assert_eq!(c.poll_timeout(), Some(t + Duration::from_secs(6)));
        // Data does not re-arm the timer (§6: only heartbeats do).
        let t = clock.advance(Duration::from_secs(4));
        c.handle_package(pkg(PackageType::Data), t);
        assert_eq!(c.poll_event(), Some(Event::Data(Bytes::new())));
        let t = clock.advance(Duration::from_secs(2));
        c.handle_timeout(t);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::HeartbeatTimeout))
        );
        assert!(c.is_closed());
        assert_eq!(kinds(&mut c), vec![], "no kick on heartbeat timeout");
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn handshake_timeout_in_initial_and_waiting_ack() {
        let mut clock = Clock(Instant::now());
        let mut c = ServerConnection::new(config(), clock.0);
        let t = clock.advance(Duration::from_millis(4999));
        c.handle_timeout(t);
        assert_eq!(c.state(), State::Initial);
        let t = clock.advance(Duration::from_millis(1));
        c.handle_timeout(t);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::HandshakeTimeout))
        );

        let mut clock = Clock(Instant::now());
        let mut c = ServerConnection::new(config(), clock.0);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        c.poll_event();
        c.accept_handshake(Bytes::new());
        let t = clock.advance(Duration::from_secs(5));
        c.handle_timeout(t);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::HandshakeTimeout))
        );
    }

    #[test]
    fn early_packages_are_ignored() {
        let clock = Clock(Instant::now());
        let mut c = ServerConnection::new(config(), clock.0);
        for k in [
            PackageType::HandshakeAck,
            PackageType::Heartbeat,
            PackageType::Data,
        ] {
            c.handle_package(pkg(k), clock.0);
        }
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.state(), State::Initial);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        c.poll_event();
        c.accept_handshake(Bytes::new());
        // Data, heartbeat and a second handshake before the ack: ignored.
        for k in [
            PackageType::Data,
            PackageType::Heartbeat,
            PackageType::Handshake,
        ] {
            c.handle_package(pkg(k), clock.0);
        }
        assert_eq!(c.poll_event(), None);
        assert_eq!(kinds(&mut c), vec![PackageType::Handshake]);
        assert_eq!(c.state(), State::WaitingAck);
    }

    #[test]
    fn early_data_closes_when_strict() {
        let clock = Clock(Instant::now());
        let strict = ConnectionConfig {
            close_on_early_data: true,
            ..config()
        };
        // Before the handshake.
        let mut c = ServerConnection::new(strict, clock.0);
        c.handle_package(pkg(PackageType::Heartbeat), clock.0);
        assert_eq!(c.state(), State::Initial, "heartbeats are still ignored");
        c.handle_package(pkg(PackageType::Data), clock.0);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::UnexpectedPackage(
                PackageType::Data
            )))
        );
        // Between the reply and the ack.
        let mut c = ServerConnection::new(strict, clock.0);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        c.poll_event();
        c.accept_handshake(Bytes::new());
        c.handle_package(pkg(PackageType::Data), clock.0);
        assert!(c.is_closed());
    }

    #[test]
    fn rejected_handshake_sends_reply_then_closes() {
        let clock = Clock(Instant::now());
        let mut c = ServerConnection::new(config(), clock.0);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        c.poll_event();
        c.reject_handshake(501, Bytes::from_static(b"{\"code\":501}"));
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::HandshakeRejected(501)))
        );
        let p = c.poll_transmit().expect("reply");
        assert_eq!(p.kind, PackageType::Handshake);
        assert_eq!(&p.body[..], b"{\"code\":501}");
    }

    #[test]
    fn kick_sends_reason_only_when_working() {
        let clock = Clock(Instant::now());
        let mut c = established(&clock);
        c.kick("kick");
        let p = c.poll_transmit().expect("kick");
        assert_eq!(p.kind, PackageType::Kick);
        assert_eq!(&p.body[..], b"{\"reason\":\"kick\"}");
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::Kicked("kick".into())))
        );
        // Nothing after closing.
        c.handle_package(pkg(PackageType::Heartbeat), clock.0);
        assert_eq!(c.poll_transmit(), None);

        let mut c = ServerConnection::new(config(), clock.0);
        c.kick("early");
        assert_eq!(c.poll_transmit(), None);
        assert!(c.is_closed());
    }

    #[test]
    fn client_kick_closes() {
        let clock = Clock(Instant::now());
        let mut c = established(&clock);
        c.handle_package(pkg(PackageType::Kick), clock.0);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::UnexpectedPackage(
                PackageType::Kick
            )))
        );
    }

    #[test]
    fn no_heartbeat_configured_means_no_timer_after_ack() {
        let clock = Clock(Instant::now());
        let mut c = ServerConnection::new(
            ConnectionConfig {
                heartbeat_interval: None,
                heartbeat_timeout: None,
                handshake_timeout: None,
                close_on_early_data: false,
            },
            clock.0,
        );
        assert_eq!(c.poll_timeout(), None);
        c.handle_package(pkg(PackageType::Handshake), clock.0);
        c.poll_event();
        c.accept_handshake(Bytes::new());
        c.handle_package(pkg(PackageType::HandshakeAck), clock.0);
        assert_eq!(kinds(&mut c), vec![PackageType::Handshake]);
        assert_eq!(c.poll_timeout(), None);
        c.handle_package(pkg(PackageType::Heartbeat), clock.0);
        assert_eq!(kinds(&mut c), vec![], "no echo without a heartbeat config");
    }
}
