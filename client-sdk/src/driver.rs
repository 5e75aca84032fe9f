//! The connection task: owns the socket and `select!`s over socket reads, the bounded outbound
//! queue, the heartbeat timers and the close signal.
//!
//! Heartbeats (PROTOCOL.md §6): when the server announced an interval *H*, the driver sends a
//! HEARTBEAT every *H* from the handshake ack on (pomelo echoes each one) and considers the
//! server dead when **nothing** (heartbeat or data) arrived for the heartbeat timeout
//! (`ClientConfig::heartbeat_timeout`, default 2*H*), as the pomelo JS and Unity clients do.
//!
//! Receiving is done in batches: each wake-up for the socket takes every whole package the
//! read brought, and the pushes among them reach each subscriber in one go (one lock, one
//! wake-up), before any response or event that came after them. The timers and the close
//! signal are futures kept across loop turns, and the dead-server deadline is moved lazily
//! (only when it fires), so a busy connection does not touch the timer wheel per package.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::handshake::Kick;
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageType};
use shaddock_protocol::protobuf::Protos;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::event::Event;
use crate::push::{Push, Subscribers};
use crate::transport::{Conn, ReadError};
use crate::{DisconnectReason, Error};

/// `03 000000`: a HEARTBEAT package.
const HEARTBEAT: &[u8] = &[0x03, 0, 0, 0];

/// What a waiting request gets: the raw response body, or why there will be none.
pub(crate) type Waiter = oneshot::Sender<Result<Bytes, Error>>;

/// The in-flight requests: `id → waiter`, and the id counter.
#[derive(Debug)]
pub(crate) struct Pending {
    next_id: u32,
    waiters: HashMap<u32, Waiter>,
    /// Set when the connection has ended: new requests fail at once with this reason.
    closed: Option<DisconnectReason>,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            next_id: 1,
            waiters: HashMap::new(),
            closed: None,
        }
    }
}

impl Pending {
    /// Register a waiter under a fresh id: ids start at 1, wrap within `u32` skipping 0
    /// (0 means "no response wanted") and skip ids still waiting.
    pub(crate) fn register(&mut self, waiter: Waiter) -> Result<u32, Error> {
        if let Some(reason) = &self.closed {
            return Err(Error::Disconnected(reason.clone()));
        }
        loop {
            let id = self.next_id;
            self.next_id = match self.next_id.wrapping_add(1) {
                0 => 1,
                next => next,
            };
            if let Entry::Vacant(slot) = self.waiters.entry(id) {
                slot.insert(waiter);
                return Ok(id);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<Waiter> {
        self.waiters.remove(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether the connection has ended (no new request is accepted).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the connection ended, once it has.
    pub(crate) fn closed_reason(&self) -> Option<DisconnectReason> {
        self.closed.clone()
    }

    #[cfg(test)]
    pub(crate) fn set_next_id(&mut self, id: u32) {
        self.next_id = id;
    }
}

/// Lock helper: a poisoned lock still holds a consistent map (no code panics while holding it).
pub(crate) fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a request's waiter when the call ends early (timeout, cancelled future).
pub(crate) struct PendingGuard {
    pub(crate) pending: Arc<Mutex<Pending>>,
    pub(crate) id: u32,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.pending).remove(self.id);
    }
}

/// Everything the connection task owns.
pub(crate) struct ClientDriver {
    pub(crate) conn: Conn,
    pub(crate) peer: String,
    pub(crate) outbound: mpsc::Receiver<Bytes>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) pending: Arc<Mutex<Pending>>,
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) protos: Option<Arc<Protos>>,
    pub(crate) events: mpsc::Sender<Event>,
    /// Interval between our heartbeats; `None` when the server announced none.
    pub(crate) heartbeat: Option<Duration>,
    /// Dead-server timeout; `None` when the server announced no heartbeat.
    pub(crate) heartbeat_timeout: Option<Duration>,
    pub(crate) max_write_batch: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// The pushes of the current read, delivered together (kept to reuse its allocation).
    pub(crate) pushes: Vec<Push>,
    pub(crate) routes: RouteCache,
}

/// Most distinct uncompressed routes whose `Arc<str>` is kept for reuse (per connection).
const NAME_CACHE: usize = 32;

/// Route strings shared by the pushes of one connection: one `Arc<str>` per dictionary code
/// (made the first time the code is seen) and per uncompressed route (up to [`NAME_CACHE`];
/// later ones get their own allocation), so a push costs no route allocation.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    dictionary: Option<Arc<RouteDictionary>>,
    /// Indexed by code.
    codes: Vec<Option<Arc<str>>>,
    names: Vec<Arc<str>>,
}

impl RouteCache {
    pub(crate) fn new(dictionary: Option<Arc<RouteDictionary>>) -> Self {
        Self {
            dictionary,
            ..Self::default()
        }
    }

    /// The route of a push; `None` for a code the dictionary does not know (or no route).
    fn resolve(&mut self, route: &MessageRoute) -> Option<Arc<str>> {
        match route {
            MessageRoute::Code(code) => {
                let index = usize::from(*code);
                if let Some(Some(route)) = self.codes.get(index) {
                    return Some(route.clone());
                }
                let route: Arc<str> = Arc::from(self.dictionary.as_deref()?.route(*code)?.as_str());
                if self.codes.len() <= index {
                    self.codes.resize(index + 1, None);
                }
                self.codes[index] = Some(route.clone());
                Some(route)
            }
            MessageRoute::Name(name) => {
                let bytes = name.as_bytes();
                if let Some(route) = self.names.iter().find(|r| r.as_bytes() == bytes) {
                    return Some(route.clone());
                }
                let route: Arc<str> = Arc::from(name.as_str());
                if self.names.len() < NAME_CACHE {
                    self.names.push(route.clone());
                }
                Some(route)
            }
            MessageRoute::None => None,
        }
    }
}

impl ClientDriver {
    /// Run until the connection ends; then fail every waiter and say why it ended.
    pub(crate) async fn run(mut self) -> DisconnectReason {
        // Packages that came in the same read as the handshake reply go first.
        let reason = match self.handle_read().1 {
            Some(reason) => reason,
            None => self.drive().await,
        };
        self.finish(reason).await
    }

    /// The connection's loop; returns why it ended.
    async fn drive(&mut self) -> DisconnectReason {
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        let now = Instant::now();
        let ping = tokio::time::sleep_until(now + self.heartbeat.unwrap_or(FAR));
        let deadline = tokio::time::sleep_until(now + self.heartbeat_timeout.unwrap_or(FAR));
        tokio::pin!(cancelled, ping, deadline);
        // When something last arrived from the server: `deadline` is only moved when it fires.
        let mut last_heard = now;
        loop {
            // Not `biased`: a flood of pushes must not starve writes and timers.
            tokio::select! {
                () = &mut cancelled => {
                    self.drain_outbound().await;
                    break DisconnectReason::Closed;
                }
                read = self.conn.fill() => match read {
                    Ok(true) => {
                        let (handled, end) = self.handle_read();
                        if handled > 0 && self.heartbeat_timeout.is_some() {
                            last_heard = Instant::now();
                        }
                        if let Some(reason) = end {
                            break reason;
                        }
                    }
                    Ok(false) => break DisconnectReason::ServerClosed,
                    Err(error) => break self.read_failed(error),
                },
                first = self.outbound.recv() => match first {
                    Some(first) => {
                        if let Err(reason) = self.write_batch(first).await {
                            break reason;
                        }
                    }
                    // Every Client handle is gone: nobody can use this connection any more.
                    None => break DisconnectReason::Closed,
                },
                () = &mut ping, if self.heartbeat.is_some() => {
                    trace!(peer = %self.peer, "heartbeat");
                    if let Err(reason) = self.send(&[Bytes::from_static(HEARTBEAT)]).await {
                        break reason;
                    }
                    ping.as_mut().reset(Instant::now() + self.heartbeat.unwrap_or(FAR));
                }
                () = &mut deadline, if self.heartbeat_timeout.is_some() => {
                    let after = self.heartbeat_timeout.unwrap_or(FAR);
                    let due = last_heard + after;
                    if due > Instant::now() {
                        deadline.as_mut().reset(due);
                        continue;
                    }
                    warn!(peer = %self.peer, ?after, "heartbeat timeout: the server is silent");
                    self.emit(Event::HeartbeatTimeout { after });
                    break DisconnectReason::HeartbeatTimeout { after };
                }
            }
        }
    }

    /// Handle every whole package the last read brought. Returns how many were handled, and
    /// the reason when one of them (or a framing error) ends the connection.
    fn handle_read(&mut self) -> (usize, Option<DisconnectReason>) {
        let mut handled = 0;
        let end = loop {
            match self.conn.next_package() {
                Ok(Some(package)) => {
                    handled += 1;
                    if let Some(reason) = self.handle_package(package) {
                        break Some(reason);
                    }
                }
                Ok(None) => break None,
                Err(error) => break Some(self.read_failed(error)),
            }
        };
        self.flush_pushes();
        (handled, end)
    }

    /// A read error: report it (after the pushes read before it) and say why we stop.
    fn read_failed(&mut self, error: ReadError) -> DisconnectReason {
        match error {
            ReadError::Protocol(error) => {
                warn!(peer = %self.peer, cause = %error, "malformed package from the server");
                let reason = DisconnectReason::Protocol {
                    error: error.to_string(),
                };
                self.emit(Event::ProtocolError { error, fatal: true });
                reason
            }
            ReadError::Other(reason) => reason,
        }
    }

    /// Write `first` and whatever else is queued, up to `max_write_batch` bytes.
    async fn write_batch(&mut self, first: Bytes) -> Result<(), DisconnectReason> {
        let mut size = first.len();
        let mut batch = vec![first];
        while size < self.max_write_batch {
            match self.outbound.try_recv() {
                Ok(next) => {
                    size += next.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        self.send(&batch).await
    }

    /// Write packages, bounded by the write timeout: a server that stops reading ends the
    /// connection instead of wedging this task.
    async fn send(&mut self, packages: &[Bytes]) -> Result<(), DisconnectReason> {
        match tokio::time::timeout(self.write_timeout, self.conn.send(packages)).await {
            Ok(result) => result,
            Err(_) => Err(DisconnectReason::Io {
                error: format!(
                    "write to {} timed out after {:?}",
                    self.peer, self.write_timeout
                ),
            }),
        }
    }

    /// On close: write what was queued before the close, within the close timeout.
    async fn drain_outbound(&mut self) {
        let mut batch = Vec::new();
        while let Ok(next) = self.outbound.try_recv() {
            batch.push(next);
        }
        if !batch.is_empty() {
            let _ = tokio::time::timeout(self.close_timeout, self.conn.send(&batch)).await;
        }
    }

    /// Send an event, after the pushes read before it.
    fn emit(&mut self, event: Event) {
        self.flush_pushes();
        if self.events.try_send(event).is_err() {
            trace!(peer = %self.peer, "event dropped: the events queue is full or gone");
        }
    }

    /// One package from the server; `Some(reason)` when it ends the connection.
    fn handle_package(&mut self, package: Package) -> Option<DisconnectReason> {
        match package.kind {
            PackageType::Heartbeat => trace!(peer = %self.peer, "heartbeat from the server"),
            PackageType::Data => self.handle_data(package.body),
            PackageType::Kick => {
                // pomelo's `{"reason":…}`, pitaya's empty body, plain text: all kicks.
                let reason = Kick::parse(&package.body).reason;
                debug!(peer = %self.peer, %reason, "kicked by the server");
                self.emit(Event::Kicked {
                    reason: reason.clone(),
                });
                return Some(DisconnectReason::Kicked { reason });
            }
            PackageType::Handshake | PackageType::HandshakeAck => {
                debug!(peer = %self.peer, kind = package.kind.name(), "unexpected package ignored");
            }
        }
        None
    }

    fn handle_data(&mut self, body: Bytes) {
        let message = match Message::decode(body) {
            Ok(m) => m,
            Err(error) => {
                warn!(peer = %self.peer, cause = %error, "malformed message from the server dropped");
                self.emit(Event::ProtocolError {
                    error,
                    fatal: false,
                });
                return;
            }
        };
        match message.kind {
            MessageType::Response => {
                let waiter = lock(&self.pending).remove(message.id);
                match waiter {
                    Some(waiter) => {
                        // Pushes that came before the response are queued before it completes.
                        self.flush_pushes();
                        let _ = waiter.send(Ok(message.body));
                    }
                    None => debug!(
                        peer = %self.peer, id = message.id,
                        "response for no waiting request (timed out or cancelled) ignored"
                    ),
                }
            }
            MessageType::Push => {
                let Some(route) = self.routes.resolve(&message.route) else {
                    if let MessageRoute::Code(code) = message.route {
                        warn!(peer = %self.peer, code, "push with an unknown route code dropped");
                        self.emit(Event::UnknownRouteCode { code });
                    }
                    return;
                };
                let code = message.route.as_code();
                self.pushes
                    .push(Push::new(route, code, message.body, self.protos.clone()));
            }
            MessageType::Request | MessageType::Notify => {
                debug!(peer = %self.peer, kind = message.kind.name(), "client-bound request/notify ignored");
            }
        }
    }

    /// Deliver the pushes read so far to their subscribers.
    fn flush_pushes(&mut self) {
        if self.pushes.is_empty() {
            return;
        }
        let (peer, events) = (&self.peer, &self.events);
        let delivery = self.subscribers.deliver(&mut self.pushes, |push| {
            debug!(peer = %peer, route = %push.route, "push dropped for a slow subscriber");
            // Allocate the event only when it can be queued.
            if events.capacity() == 0
                || events
                    .try_send(Event::PushDropped {
                        route: push.route.to_string(),
                    })
                    .is_err()
            {
                trace!(peer = %peer, "event dropped: the events queue is full or gone");
            }
        });
        if delivery.delivered == 0 && delivery.dropped == 0 {
            trace!(peer = %self.peer, "pushes with no subscriber");
        }
    }

    /// The connection ended: fail every waiter (new requests on this connection fail at
    /// once), close the socket. The session (`client::supervise`) decides what follows.
    async fn finish(mut self, reason: DisconnectReason) -> DisconnectReason {
        debug!(peer = %self.peer, %reason, "connection ended");
        self.flush_pushes();
        let waiters: Vec<Waiter> = {
            let mut pending = lock(&self.pending);
            pending.closed = Some(reason.clone());
            pending.waiters.drain().map(|(_, w)| w).collect()
        };
        for waiter in waiters {
            let _ = waiter.send(Err(Error::Disconnected(reason.clone())));
        }
        self.outbound.close();
        let close = async move {
            let _ = tokio::time::timeout(self.close_timeout, self.conn.close()).await;
        };
        if reason == DisconnectReason::Closed {
            // Client::close returns once the socket is closed cleanly.
            close.await;
        } else {
            // A connection that broke: closing it (a WebSocket close handshake with a peer
            // that may be gone) must not delay the reconnect or the waiting callers.
            tokio::spawn(close);
        }
        reason
    }
}

/// A timer that is never due (its `select!` branch is disabled anyway).
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_wrap_skipping_zero_and_busy_ids() {
        let mut p = Pending::default();
        let (tx, _rx) = oneshot::channel();
        assert_eq!(p.register(tx).unwrap(), 1);
        p.set_next_id(u32::MAX);
        let (tx, _rx2) = oneshot::channel();
        assert_eq!(p.register(tx).unwrap(), u32::MAX);
        // 0 is skipped, 1 is still waiting: next is 2.
        let (tx, _rx3) = oneshot::channel();
        assert_eq!(p.register(tx).unwrap(), 2);
        assert_eq!(p.len(), 3);
        p.remove(1);
        p.closed = Some(DisconnectReason::ServerClosed);
        let (tx, _rx4) = oneshot::channel();
        assert!(p.register(tx).unwrap_err().is_disconnected());
    }

    #[test]
    fn guard_removes_its_waiter() {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, _rx) = oneshot::channel();
        let id = lock(&pending).register(tx).unwrap();
        drop(PendingGuard {
            pending: pending.clone(),
            id,
        });
        assert_eq!(lock(&pending).len(), 0);
    }
}
