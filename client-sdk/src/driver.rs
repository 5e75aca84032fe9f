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
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::handshake::Kick;
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageType};
use shaddock_protocol::protobuf::Protos;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::event::Event;
use crate::push::{Push, Subscribers};
use crate::transport::{Conn, ReadError};
use crate::{DisconnectReason, Error};

/// `03 000000`: a HEARTBEAT package.
const HEARTBEAT: &[u8] = &[0x03, 0, 0, 0];

/// What a waiting request gets.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The raw response body.
    Body(Bytes),
    /// Why there will be none (the connection ended).
    Failed(Error),
    /// Its deadline passed first (the caller makes the [`Error::Timeout`]).
    TimedOut,
}

/// Where a request's answer goes.
pub(crate) type Waiter = oneshot::Sender<Answer>;

/// A request waiting for its response.
#[derive(Debug)]
struct Waiting {
    waiter: Waiter,
    deadline: Instant,
}

/// Hashes request ids (small sequential `u32`s) with one multiplication instead of SipHash:
/// the ids are chosen here, not by the server.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The [`Hasher`] of [`IdHash`].
#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

/// 2^64 / φ: consecutive ids spread over both the low bits (the bucket) and the high bits
/// (hashbrown's tag) of the hash.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(FIBONACCI);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }
}

/// The in-flight requests: `id → waiter` with each request's deadline, and the id counter.
#[derive(Debug)]
pub(crate) struct Pending {
    next_id: u32,
    waiters: HashMap<u32, Waiting, IdHash>,
    /// When the connection task sweeps the expired requests next: no later than the earliest
    /// deadline of `waiters` (`None`: no sweep planned).
    sweep_at: Option<Instant>,
    /// Set when the connection has ended: new requests fail at once with this reason.
    closed: Option<DisconnectReason>,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            next_id: 1,
            waiters: HashMap::default(),
            sweep_at: None,
            closed: None,
        }
    }
}

impl Pending {
    /// Register a waiter under a fresh id: ids start at 1, wrap within `u32` skipping 0
    /// (0 means "no response wanted") and skip ids still waiting. Also says whether the
    /// request's `deadline` comes before the planned sweep (the connection task must then
    /// move its timer: [`Requests::register`] tells it).
    fn register(&mut self, waiter: Waiter, deadline: Instant) -> Result<(u32, bool), Error> {
        if let Some(reason) = &self.closed {
            return Err(Error::Disconnected(reason.clone()));
        }
        let earlier = self.sweep_at.is_none_or(|at| deadline < at);
        if earlier {
            self.sweep_at = Some(deadline);
        }
        loop {
            let id = self.next_id;
            self.next_id = match self.next_id.wrapping_add(1) {
                0 => 1,
                next => next,
            };
            if let Entry::Vacant(slot) = self.waiters.entry(id) {
                slot.insert(Waiting { waiter, deadline });
                return Ok((id, earlier));
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<Waiter> {
        self.waiters.remove(&id).map(|w| w.waiter)
    }

    /// Move the waiters whose deadline is not after `now` to `expired`; plan the next sweep
    /// at the earliest deadline left, and return it. One pass over the waiting requests
    /// (the cost of a sweep grows with them; sweeps come at most once per timer tick, 1 ms,
    /// and with one timeout for all requests about once per timeout).
    fn sweep(&mut self, now: Instant, expired: &mut Vec<Waiter>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        expired.extend(
            self.waiters
                .extract_if(|_, w| {
                    if w.deadline <= now {
                        return true;
                    }
                    next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                    false
                })
                .map(|(_, w)| w.waiter),
        );
        self.sweep_at = next;
        next
    }

    /// End: no new request is accepted; the waiters are handed back (to be failed).
    fn close(&mut self, reason: DisconnectReason) -> Vec<Waiter> {
        self.closed = Some(reason);
        self.sweep_at = None;
        self.waiters.drain().map(|(_, w)| w.waiter).collect()
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

/// The requests of one connection, shared by the callers and the connection task. Request
/// timeouts are enforced by the connection task: one timer per connection, set to the
/// earliest deadline, instead of a timer per request (see [`sweep_deadlines`]).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pending: Mutex<Pending>,
    /// Set when a request's deadline comes before the planned sweep.
    rearm: AtomicBool,
    /// The connection task, woken when `rearm` is set.
    task: AtomicWaker,
}

impl Requests {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock still holds a consistent map (no code panics while holding it).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a request that fails with [`Answer::TimedOut`] at `deadline` unless answered
    /// before; its id.
    pub(crate) fn register(&self, waiter: Waiter, deadline: Instant) -> Result<u32, Error> {
        let (id, earlier) = self.lock().register(waiter, deadline)?;
        if earlier {
            self.rearm.store(true, Ordering::Release);
            self.task.wake();
        }
        Ok(id)
    }
}

/// Removes a request's waiter when the call ends early (queueing timed out, cancelled
/// future); [`disarm`](Self::disarm)ed once the answer came (its waiter is already gone).
pub(crate) struct PendingGuard<'a> {
    pub(crate) requests: &'a Requests,
    pub(crate) id: u32,
    pub(crate) armed: bool,
}

impl PendingGuard<'_> {
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.requests.lock().remove(self.id);
        }
    }
}

/// The connection task's request timeouts: a timer set to the earliest deadline (moved when
/// a request with an earlier one comes); when it fires, the expired requests get
/// [`Answer::TimedOut`]. Polled with the connection's loop in the same task, so it runs even
/// while that loop waits for a write. With the same timeout for every request the timer
/// fires about once per timeout, whatever the request rate.
async fn sweep_deadlines(requests: &Requests) -> Infallible {
    let timer = tokio::time::sleep(FAR);
    tokio::pin!(timer);
    let (mut polled, mut registered) = (false, false);
    let mut expired = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            // The waker stays registered until a rearm's wake takes it.
            if !registered {
                requests.task.register(cx.waker());
                registered = true;
            }
            if requests.rearm.swap(false, Ordering::AcqRel) {
                registered = false;
                let at = requests.lock().sweep_at;
                timer
                    .as_mut()
                    .reset(at.unwrap_or_else(|| Instant::now() + FAR));
                polled = false;
                continue;
            }
            if poll_timer(timer.as_mut(), &mut polled, cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let next = requests.lock().sweep(now, &mut expired);
            for waiter in expired.drain(..) {
                let _ = waiter.send(Answer::TimedOut);
            }
            timer.as_mut().reset(next.unwrap_or(now + FAR));
            polled = false;
        }
    })
    .await
}

/// Poll `timer` only when it may have fired. Once polled (and pending) a timer wakes this
/// task when it fires, and until then `is_elapsed` (one atomic load) says no, so the polls
/// of the other wake-ups (each a coop-budget check and a waker registration) are skipped.
/// `polled` is false for a timer not polled since it was made or reset.
fn poll_timer(timer: Pin<&mut Sleep>, polled: &mut bool, cx: &mut Context<'_>) -> Poll<()> {
    if *polled && !timer.is_elapsed() {
        return Poll::Pending;
    }
    let ready = timer.poll(cx);
    *polled = ready.is_pending();
    ready
}

/// Everything the connection task owns.
pub(crate) struct ClientDriver {
    pub(crate) conn: Conn,
    pub(crate) peer: String,
    pub(crate) outbound: mpsc::Receiver<Bytes>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) requests: Arc<Requests>,
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
    /// The packages of the current write (kept to reuse its allocation).
    pub(crate) batch: Vec<Bytes>,
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
            None => {
                let requests = self.requests.clone();
                tokio::select! {
                    biased;
                    reason = self.drive() => reason,
                    never = sweep_deadlines(&requests) => match never {},
                }
            }
        };
        self.finish(reason).await
    }

    /// The connection's loop; returns why it ended.
    async fn drive(&mut self) -> DisconnectReason {
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        let now = Instant::now();
        // One timer for both heartbeat duties: the next heartbeat to send (`ping_at`) and the
        // dead-server check (`check_at`, moved lazily to `last_heard + timeout` when due).
        let mut ping_at = now + self.heartbeat.unwrap_or(FAR);
        let mut check_at = now + self.heartbeat_timeout.unwrap_or(FAR);
        let timer = tokio::time::sleep_until(ping_at.min(check_at));
        tokio::pin!(cancelled, timer);
        let mut timer_polled = false;
        // Set while the send queue was found empty (this task is then woken by the next
        // package, or when the queue closes): its emptiness is checked before polling it.
        let mut queue_waiting = false;
        // Polled once, `cancelled` wakes this task when the token is cancelled; after that a
        // look at the token is enough (no poll of the token's waiter list per wake-up).
        let mut watching = false;
        // When something last arrived from the server.
        let mut last_heard = now;
        loop {
            // Not `biased`: a flood of pushes must not starve writes and timers.
            tokio::select! {
                () = std::future::poll_fn(|cx| {
                    if shutdown.is_cancelled() {
                        return Poll::Ready(());
                    }
                    if watching {
                        return Poll::Pending;
                    }
                    watching = true;
                    cancelled.as_mut().poll(cx)
                }) => {
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
                first = std::future::poll_fn(|cx| {
                    let outbound = &mut self.outbound;
                    if queue_waiting && outbound.is_empty() && !outbound.is_closed() {
                        return Poll::Pending;
                    }
                    let first = outbound.poll_recv(cx);
                    queue_waiting = first.is_pending();
                    first
                }) => match first {
                    Some(first) => {
                        if let Err(reason) = self.write_batch(first).await {
                            break reason;
                        }
                    }
                    // Every Client handle is gone: nobody can use this connection any more.
                    None => break DisconnectReason::Closed,
                },
                () = std::future::poll_fn(|cx| poll_timer(timer.as_mut(), &mut timer_polled, cx)),
                    if self.heartbeat.is_some() => {
                    let now = Instant::now();
                    if let Some(after) = self.heartbeat_timeout.filter(|_| check_at <= now) {
                        let due = last_heard + after;
                        if due <= now {
                            warn!(peer = %self.peer, ?after, "heartbeat timeout: the server is silent");
                            self.emit(Event::HeartbeatTimeout { after });
                            break DisconnectReason::HeartbeatTimeout { after };
                        }
                        check_at = due;
                    }
                    if ping_at <= now {
                        trace!(peer = %self.peer, "heartbeat");
                        if let Err(reason) = self.send(&[Bytes::from_static(HEARTBEAT)]).await {
                            break reason;
                        }
                        ping_at = Instant::now() + self.heartbeat.unwrap_or(FAR);
                    }
                    timer.as_mut().reset(ping_at.min(check_at));
                    timer_polled = false;
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
        // The batch's Vec is kept across writes (no allocation per write).
        let mut batch = std::mem::take(&mut self.batch);
        let mut size = first.len();
        batch.push(first);
        while size < self.max_write_batch {
            match self.outbound.try_recv() {
                Ok(next) => {
                    size += next.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let sent = self.send(&batch).await;
        batch.clear();
        self.batch = batch;
        sent
    }

    /// Write packages, bounded by the write timeout: a server that stops reading ends the
    /// connection instead of wedging this task. The timer is made only for a write that does
    /// not complete at once (the usual write costs none).
    async fn send(&mut self, packages: &[Bytes]) -> Result<(), DisconnectReason> {
        let (conn, peer, after) = (&mut self.conn, &self.peer, self.write_timeout);
        let write = conn.send(packages);
        tokio::pin!(write);
        if let Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
            return result;
        }
        match tokio::time::timeout(after, write).await {
            Ok(result) => result,
            Err(_) => Err(DisconnectReason::Io {
                error: format!("write to {peer} timed out after {after:?}"),
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
                let waiter = self.requests.lock().remove(message.id);
                match waiter {
                    Some(waiter) => {
                        // Pushes that came before the response are queued before it completes.
                        self.flush_pushes();
                        let _ = waiter.send(Answer::Body(message.body));
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
        fail_waiters(&self.requests, &reason);
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

/// End `requests` (when not ended yet): every waiter gets [`Error::Disconnected`].
fn fail_waiters(requests: &Requests, reason: &DisconnectReason) {
    let waiters = {
        let mut pending = requests.lock();
        if pending.is_closed() {
            return;
        }
        pending.close(reason.clone())
    };
    for waiter in waiters {
        let _ = waiter.send(Answer::Failed(Error::Disconnected(reason.clone())));
    }
}

impl Drop for ClientDriver {
    /// A connection task that ends without [`finish`](Self::finish) (it panicked, or its
    /// runtime is shutting down) still fails its waiting requests: their timeouts were its
    /// timer.
    fn drop(&mut self) {
        fail_waiters(
            &self.requests,
            &DisconnectReason::Io {
                error: "the connection task ended".to_owned(),
            },
        );
    }
}

/// A timer that is never due (its `select!` branch is disabled anyway).
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn ids_start_at_one_wrap_skipping_zero_and_busy_ids() {
        let mut p = Pending::default();
        let (tx, _rx) = oneshot::channel();
        assert_eq!(p.register(tx, later(10)).unwrap(), (1, true));
        p.set_next_id(u32::MAX);
        let (tx, _rx2) = oneshot::channel();
        assert_eq!(p.register(tx, later(10)).unwrap().0, u32::MAX);
        // 0 is skipped, 1 is still waiting: next is 2.
        let (tx, _rx3) = oneshot::channel();
        assert_eq!(p.register(tx, later(10)).unwrap().0, 2);
        assert_eq!(p.len(), 3);
        p.remove(1);
        p.closed = Some(DisconnectReason::ServerClosed);
        let (tx, _rx4) = oneshot::channel();
        assert!(p.register(tx, later(10)).unwrap_err().is_disconnected());
    }

    #[test]
    fn the_sweep_moves_only_for_an_earlier_deadline_and_takes_the_expired() {
        let mut p = Pending::default();
        let now = Instant::now();
        let at = |secs| now + Duration::from_secs(secs);
        let mut rxs = Vec::new();
        let mut add = |p: &mut Pending, deadline| {
            let (tx, rx) = oneshot::channel();
            rxs.push(rx);
            p.register(tx, deadline).unwrap()
        };
        assert_eq!(add(&mut p, at(5)), (1, true));
        assert_eq!(
            add(&mut p, at(9)),
            (2, false),
            "later: the planned sweep stands"
        );
        assert_eq!(add(&mut p, at(2)), (3, true), "earlier: the sweep moves");
        assert_eq!(p.sweep_at, Some(at(2)));
        let mut expired = Vec::new();
        assert_eq!(p.sweep(at(1), &mut expired), Some(at(2)));
        assert!(expired.is_empty());
        assert_eq!(p.sweep(at(5), &mut expired), Some(at(9)));
        assert_eq!(expired.len(), 2);
        assert_eq!(p.len(), 1);
        assert!(p.remove(2).is_some());
        assert_eq!(p.sweep(at(6), &mut expired), None);
        assert_eq!(
            add(&mut p, at(20)),
            (4, true),
            "nothing planned: the sweep is set"
        );
    }

    #[test]
    fn guard_removes_its_waiter_unless_disarmed() {
        let requests = Requests::default();
        let (tx, _rx) = oneshot::channel();
        let id = requests.register(tx, later(10)).unwrap();
        drop(PendingGuard {
            requests: &requests,
            id,
            armed: true,
        });
        assert_eq!(requests.lock().len(), 0);
        let (tx, _rx) = oneshot::channel();
        let id = requests.register(tx, later(10)).unwrap();
        let mut guard = PendingGuard {
            requests: &requests,
            id,
            armed: true,
        };
        guard.disarm();
        drop(guard);
        assert_eq!(requests.lock().len(), 1);
    }

    #[test]
    fn ids_hash_apart() {
        let hash = |id: u32| IdHash.hash_one(id);
        let buckets: std::collections::HashSet<u64> = (0..1024).map(|id| hash(id) & 1023).collect();
        assert_eq!(buckets.len(), 1024, "consecutive ids fill distinct buckets");
        let tags: std::collections::HashSet<u64> = (0..1024).map(|id| hash(id) >> 57).collect();
        assert!(tags.len() > 100, "and vary the high bits: {}", tags.len());
    }
}
