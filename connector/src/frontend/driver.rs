//! One connection's loop, as one hand-written future ([`Driver`]): reads packages into the
//! state machine, answers the handshake, parks or spawns messages, writes coalesced batches,
//! and handles kicks, timers and the shutdown.
//!
//! # Why a hand-written future
//! The driver lives as long as its connection, inside the connection's tokio task, so its
//! size is most of what an idle connection costs. As `async fn`s with a `select!` loop it
//! was ~1.7 KB: every `select!` turn made new wait futures (shutdown, kick, outbox, slot,
//! read, sleep), all held at once, and each nested `async fn` layer kept its arguments
//! twice. Here the state is one struct: the waits that need a registration are kept across
//! turns (the shutdown future, one timer), the others are poll methods of what they wait
//! on (the socket, the outbox's waker), so the task registers nothing new per wake-up.
//!
//! # One turn
//! 1. `Turn`: act on the state machine's events; gather its packages and the queued
//!    messages that are due into one batch.
//! 2. `Write` the batch (within `write_timeout`); then, once the state machine is closed,
//!    `Close` the transport (within `write_timeout`) and end; else `Wait`.
//! 3. `Wait` for the shutdown, the timer (handshake / heartbeat deadline, push flush), a
//!    wake-up of the outbox (push, kick, finished request), a handler slot for a parked
//!    message, or packages from the socket (not read while messages are parked).
//!
//! A kick first writes what was queued before it (`KickFlush`, all within one
//! `write_timeout`), then the KICK.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use shaddock_protocol::connection::{CloseReason, Event, ServerConnection};
use shaddock_protocol::message::{Message, MessageType};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use super::Inner;
use super::dispatch::{dispatch, refuse_stopping};
use crate::close::{Disconnect, KickReason};
use crate::handshake;
use crate::limit::TokenBucket;
use crate::session::Session;
use crate::stats::ConnectorStats;
use crate::transport::Transport;

/// The connections of one `serve` call: at most `max` at once (the listener refuses the
/// others), each counted in the stats' `active` while it lives.
pub(super) struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
    stats: Arc<ConnectorStats>,
}

impl ConnectionLimit {
    pub(super) fn new(max: usize, stats: Arc<ConnectorStats>) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max,
            stats,
        }
    }

    /// A slot for one more connection, unless `max` are open.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot(self.clone()))
    }
}

/// One connection's place in its [`ConnectionLimit`], held for the connection's whole life
/// (given back, and the connection no longer counted as active, when dropped). One pointer
/// per connection, where a semaphore permit and a stats guard were 24 bytes.
pub(super) struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// The connection of one session over one transport, to its end (see the
    /// [module docs](self)). Completes when the connection has closed and its session has
    /// been removed.
    pub(super) struct Driver<S> {
        core: Core<S>,
        // The two waits kept across turns: their registrations would otherwise be made
        // again on every wake-up.
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        #[pin]
        timer: Sleep,
    }
}

/// Where the driver is in its turn (see the [module docs](self)).
enum Phase {
    Turn,
    /// Writing the batch; `more`: due messages are left in the outbox; `deadline`: when the
    /// write times out, set once it has had to wait.
    Write {
        more: bool,
        deadline: Option<Instant>,
    },
    /// Writing the messages queued when the kick came (`left` of them not yet taken), then
    /// the KICK; all by `deadline`. The kick's reason stays in the outbox (a pending kick is
    /// never taken back), and is read from there for the KICK.
    KickFlush {
        left: usize,
        deadline: Instant,
    },
    /// Closing the transport, at most until `deadline`; then the end.
    Close {
        deadline: Instant,
    },
    Wait,
}

/// The driver's state but its pinned waits.
struct Core<S> {
    inner: Arc<Inner>,
    session: Session,
    transport: Transport<S>,
    conn: ServerConnection,
    /// Boxed: most frontends have no rate limit, and the box costs them 8 bytes, not 40.
    bucket: Option<Box<TokenBucket>>,
    phase: Phase,
    /// What the next write sends; no allocation between writes.
    batch: Vec<Bytes>,
    /// The transport's progress through `batch` (see `Transport::poll_write_batch`).
    written: usize,
    /// Messages received while `max_in_flight` of this connection's were being handled; the
    /// socket is not read meanwhile. Boxed, and `None` when empty: parking is rare, and
    /// every byte here is a byte per idle connection.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes per idle connection instead of the VecDeque's 32"
    )]
    waiting: Option<Box<VecDeque<Message>>>,
    /// Why the connection ended when this side decided it (else from the state machine).
    /// Boxed, as `waiting`: set once, at the end.
    local_reason: Option<Box<Disconnect>>,
    /// Set by the state machine's `Closed` event: what is left is written, then the end.
    /// Boxed, as `local_reason`: set once, at the end.
    closed: Option<Box<CloseReason>>,
    /// With a push flush interval or linger: when the queued pushes are due.
    flush_at: Option<Instant>,
    /// Whether `timer` is set to a deadline (its `deadline()`) that has not fired yet.
    armed: bool,
    /// The pushes held until `flush_at` have had their one yield before the timer is armed
    /// for them (see `Phase::Wait` in `Core::drive`).
    yielded: bool,
    /// The shutdown has been seen (its future is not polled again).
    shut_down: bool,
    /// A kick is being carried out (the pending reason is not acted on again).
    kicking: bool,
    _slot: ConnectionSlot,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

impl<S> Driver<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub(super) fn new(
        inner: Arc<Inner>,
        session: Session,
        transport: Transport<S>,
        shutdown: CancellationToken,
        slot: ConnectionSlot,
    ) -> Self {
        let conn = ServerConnection::new(inner.connection, now_std());
        let bucket = inner
            .config
            .rate_limit
            .map(|l| Box::new(TokenBucket::new(l, now_std())));
        Self {
            core: Core {
                inner,
                session,
                transport,
                conn,
                bucket,
                phase: Phase::Turn,
                batch: Vec::new(),
                written: 0,
                waiting: None,
                local_reason: None,
                closed: None,
                flush_at: None,
                armed: false,
                yielded: false,
                shut_down: false,
                kicking: false,
                _slot: slot,
            },
            shutdown: shutdown.cancelled_owned(),
            // Not registered until it is first set to a deadline.
            timer: tokio::time::sleep_until(Instant::now()),
        }
    }
}

impl<S> Future for Driver<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let core = this.core;
        match core.drive(cx, this.shutdown, this.timer) {
            Poll::Ready(reason) => {
                let reason = reason.to_string();
                tracing::debug!(sid = core.session.id(), %reason, "connection closed");
                core.inner.sessions.remove(&core.session, &reason);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Core<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Runs turns until the connection ends (its close reason) or has to wait.
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        mut shutdown: Pin<&mut WaitForCancellationFutureOwned>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Disconnect> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Turn) {
                Phase::Turn => self.turn(),
                Phase::Write { more, deadline } => {
                    match self
                        .transport
                        .poll_write_batch(cx, &mut self.batch, &mut self.written)
                    {
                        Poll::Ready(Ok(())) => {
                            // Not kept: an idle connection holds no batch list.
                            self.batch = Vec::new();
                            self.written = 0;
                            self.after_write(more);
                        }
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(cause = %e, "write failed, closing");
                            return Poll::Ready(Disconnect::WriteFailed(e.to_string()));
                        }
                        Poll::Pending => {
                            let timeout = self.inner.config.write_timeout;
                            let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
                            if self.expired(cx, timer.as_mut(), deadline) {
                                tracing::warn!(peer = %self.session.peer_addr(), ?timeout, "write timed out, closing slow client");
                                return Poll::Ready(Disconnect::WriteTimeout);
                            }
                            self.phase = Phase::Write {
                                more,
                                deadline: Some(deadline),
                            };
                            return Poll::Pending;
                        }
                    }
                }
                Phase::KickFlush { mut left, deadline } => loop {
                    if self.batch.is_empty() && left > 0 {
                        let before = self.batch.len();
                        self.session.outbox().take(
                            &mut self.batch,
                            self.inner.config.max_write_batch,
                            left,
                        );
                        left -= self.batch.len() - before;
                    }
                    if self.batch.is_empty() {
                        self.batch = Vec::new();
                        let reason = self.session.pending_kick().unwrap_or_default();
                        self.conn.kick(&reason);
                        break;
                    }
                    match self
                        .transport
                        .poll_write_batch(cx, &mut self.batch, &mut self.written)
                    {
                        Poll::Ready(Ok(())) => self.written = 0,
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(cause = %e, "write failed, closing");
                            return Poll::Ready(Disconnect::WriteFailed(e.to_string()));
                        }
                        Poll::Pending => {
                            if self.expired(cx, timer.as_mut(), deadline) {
                                tracing::warn!(peer = %self.session.peer_addr(), timeout = ?self.inner.config.write_timeout, "queued messages not written before the kick in time, closing");
                                return Poll::Ready(Disconnect::FlushTimeout);
                            }
                            self.phase = Phase::KickFlush { left, deadline };
                            return Poll::Pending;
                        }
                    }
                },
                Phase::Close { deadline } => {
                    if self.transport.poll_close(cx).is_pending()
                        && !self.expired(cx, timer.as_mut(), deadline)
                    {
                        self.phase = Phase::Close { deadline };
                        return Poll::Pending;
                    }
                    let closed = self.closed.take().map_or(CloseReason::Local, |c| *c);
                    return Poll::Ready(
                        self.local_reason
                            .take()
                            .map(|r| *r)
                            .unwrap_or_else(|| Disconnect::from(&closed)),
                    );
                }
                Phase::Wait => {
                    // Pushes just held for the linger: first one round for the tasks already
                    // woken, then a new turn, so that the answer they were held for (a
                    // forward reply read in the same turn: a backend's push and its answer
                    // usually arrive together) is queued and takes them along in one write
                    // without arming the timer for them (a timer moved earlier also wakes
                    // the runtime's driver: one eventfd write). Only then the timer.
                    if self.flush_at.is_some() && !self.yielded {
                        self.yielded = true;
                        self.phase = Phase::Turn;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if self
                        .wait(cx, shutdown.as_mut(), timer.as_mut())
                        .is_pending()
                    {
                        self.phase = Phase::Wait;
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Acts on the state machine's events (kicks, timeouts, closes; the events of packages
    /// read are handled as each package is fed) and gathers what to write: the state
    /// machine's packages first, then the queued messages that are due.
    fn turn(&mut self) {
        self.handle_events();
        while let Some(p) = self.conn.poll_transmit() {
            match p.to_bytes() {
                Ok(b) => self.batch.push(b),
                Err(e) => tracing::error!(cause = %e, "cannot encode package"),
            }
        }
        let more = self.closed.is_none() && self.take_due();
        if self.batch.is_empty() {
            self.after_write(more);
        } else {
            self.phase = Phase::Write {
                more,
                deadline: None,
            };
        }
    }

    /// After a write (or nothing to write): the close once the state machine is closed, another
    /// turn while due messages are left (the byte limit of one write), else the wait.
    fn after_write(&mut self, more: bool) {
        if let Some(reason) = self.closed.as_deref() {
            let stats = &self.inner.stats;
            match reason {
                CloseReason::HandshakeTimeout => ConnectorStats::incr(&stats.handshake_timeouts),
                CloseReason::HeartbeatTimeout => ConnectorStats::incr(&stats.heartbeat_timeouts),
                CloseReason::UnexpectedPackage(_) => ConnectorStats::incr(&stats.protocol_errors),
                _ => {}
            }
            self.phase = Phase::Close {
                deadline: Instant::now() + self.inner.config.write_timeout,
            };
        } else if more {
            self.phase = Phase::Turn;
        } else {
            self.phase = Phase::Wait;
        }
    }

    /// Whether `deadline` has passed, by `timer` (set to it; the task is woken then).
    fn expired(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        deadline: Instant,
    ) -> bool {
        if !self.armed || timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if timer.poll(cx).is_ready() {
            self.armed = false;
            true
        } else {
            false
        }
    }

    /// One wait for input; `Ready` when something happened (the phase is then `Turn`, or
    /// `KickFlush` for a kick).
    fn wait(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: Pin<&mut WaitForCancellationFutureOwned>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<()> {
        if !self.shut_down && shutdown.poll(cx).is_ready() {
            self.shut_down = true;
            self.local_reason = Some(Box::new(Disconnect::ServerShutdown));
            self.conn.close_local();
            return Poll::Ready(());
        }
        // One timer for both deadlines. It is moved earlier at once but later only when it
        // fires (a heartbeat moves the deadline on every package; most moves are later).
        let conn_deadline = self.conn.poll_timeout().map(Instant::from_std);
        let deadline = match (conn_deadline, self.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = deadline
            && (!self.armed || d < timer.deadline())
        {
            timer.as_mut().reset(d);
            self.armed = true;
        }
        if self.armed && timer.poll(cx).is_ready() {
            self.armed = false;
            // A due flush is taken by the turn.
            if conn_deadline.is_some_and(|d| d <= Instant::now()) {
                self.conn.handle_timeout(now_std());
            }
            return Poll::Ready(());
        }
        let woken = self.session.outbox().poll_woken(cx);
        if woken
            && !self.kicking
            && let Some(reason) = self.session.pending_kick()
        {
            self.kicking = true;
            ConnectorStats::incr(&self.inner.stats.kicked);
            tracing::debug!(%reason, "kicking client");
            // Stopping: the messages parked for a handler slot are answered before the
            // KICK, not cut off by it.
            if self.stopping() {
                self.refuse_waiting();
            }
            // What was queued before the kick (e.g. a response) goes out first.
            self.phase = Phase::KickFlush {
                left: self.session.outbox().len(),
                deadline: Instant::now() + self.inner.config.write_timeout,
            };
            return Poll::Ready(());
        }
        if self.waiting.is_some() {
            if self.stopping() {
                self.refuse_waiting();
                return Poll::Ready(());
            }
            // Else the request that frees a slot wakes the outbox.
            if self
                .session
                .outbox()
                .try_start_request(self.inner.config.max_in_flight)
                && let Some(msg) = self.pop_waiting()
            {
                self.spawn_dispatch(msg);
                return Poll::Ready(());
            }
        } else {
            // Backpressure: no reading while messages wait for a handler slot.
            let mut inbound = VecDeque::new();
            if let Poll::Ready(read) = self.transport.poll_read_packages(cx, &mut inbound) {
                self.on_read(read, inbound);
                return Poll::Ready(());
            }
        }
        if woken {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Feeds what a read brought to the state machine (or notes the end of the stream or
    /// the read error).
    fn on_read(
        &mut self,
        read: Result<bool, crate::transport::TransportError>,
        inbound: VecDeque<shaddock_protocol::package::Package>,
    ) {
        let stats = self.inner.stats.clone();
        match read {
            Ok(true) => {
                let now = now_std();
                for package in inbound {
                    if let Some(bucket) = self.bucket.as_mut()
                        && !bucket.try_take(now)
                    {
                        ConnectorStats::incr(&stats.rate_limited);
                        ConnectorStats::incr(&stats.kicked);
                        tracing::warn!(peer = %self.session.peer_addr(), "inbound rate limit exceeded, kicking");
                        self.conn.kick(&KickReason::RateLimit.to_string());
                        break;
                    }
                    self.conn.handle_package(package, now);
                    // In order, before the next package of the same read: a handshake is
                    // answered here, so the ack read with it finds the connection waiting
                    // for it, and the request after the ack is handled.
                    self.handle_events();
                }
            }
            Ok(false) => {
                self.local_reason = Some(Box::new(Disconnect::ClosedByClient));
                self.conn.close_local();
            }
            Err(e) => {
                if e.is_protocol() {
                    ConnectorStats::incr(&stats.protocol_errors);
                }
                tracing::debug!(cause = %e, "read failed, closing");
                self.local_reason = Some(Box::new(Disconnect::ReadFailed(e.to_string())));
                self.conn.close_local();
            }
        }
    }

    /// Acts on the events the state machine has queued: answers a handshake at once, hands
    /// messages to dispatch (or parks them), notes the close (and its reason when local).
    fn handle_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::HandshakeRequest(body) => {
                    let (code, reply) = handshake::respond(&self.inner.handshake, &body);
                    if code == 200 {
                        ConnectorStats::incr(&self.inner.stats.handshakes);
                        self.conn.accept_handshake(reply);
                    } else {
                        ConnectorStats::incr(&self.inner.stats.handshakes_refused);
                        tracing::debug!(code, "handshake refused");
                        self.conn.reject_handshake(code, reply);
                    }
                }
                Event::Established => tracing::trace!("handshake acknowledged"),
                Event::Data(body) => {
                    if let Err(reason) = self.on_data(body) {
                        ConnectorStats::incr(&self.inner.stats.protocol_errors);
                        tracing::debug!(%reason, "malformed message, closing");
                        self.local_reason = Some(Box::new(Disconnect::Malformed(reason)));
                        self.conn.close_local();
                    }
                }
                Event::Closed(reason) => self.closed = Some(Box::new(reason)),
                _ => {}
            }
        }
    }

    /// Moves the queued messages that are due into `batch`, up to `max_write_batch` bytes;
    /// returns whether due messages are left. A queued response makes everything due. Else
    /// queued pushes become due `push_flush_interval` after the first wake-up that found them
    /// (`flush_at`); without an interval, `push_linger` after it while requests of this
    /// connection are being handled, and at once otherwise.
    fn take_due(&mut self) -> bool {
        let outbox = self.session.outbox();
        let (queued, urgent, handling) = outbox.peek();
        if !queued {
            self.flush_at = None;
            return false;
        }
        let config = &self.inner.config;
        let hold = config
            .push_flush_interval
            .or_else(|| (handling && !config.push_linger.is_zero()).then_some(config.push_linger));
        if let Some(interval) = hold
            && !urgent
        {
            let now = Instant::now();
            match self.flush_at {
                None => {
                    self.flush_at = Some(now + interval);
                    self.yielded = false;
                    return false;
                }
                Some(at) if at > now => return false,
                Some(_) => {}
            }
        }
        let more = outbox.take(&mut self.batch, config.max_write_batch, usize::MAX);
        if !more {
            self.flush_at = None;
        }
        more
    }

    /// Decodes a DATA body and spawns its handling (or parks it while `max_in_flight`
    /// messages are being handled). `Err` = malformed message: close.
    fn on_data(&mut self, body: Bytes) -> Result<(), String> {
        let msg = Message::decode(body).map_err(|e| format!("malformed message: {e}"))?;
        match msg.kind {
            MessageType::Request | MessageType::Notify => {}
            other => return Err(format!("client sent a {} message", other.name())),
        }
        if self.stopping() {
            // Answered here, by the connection's task, so the answer is queued before the
            // drain's KICK is processed (a spawned dispatch could lose that race).
            refuse_stopping(&self.inner, &self.session, &msg);
            return Ok(());
        }
        if self.waiting.is_none()
            && self
                .session
                .outbox()
                .try_start_request(self.inner.config.max_in_flight)
        {
            self.spawn_dispatch(msg);
        } else {
            let waiting = self.waiting.get_or_insert_default();
            waiting.push_back(msg);
            ConnectorStats::raise(&self.inner.stats.peak_parked, waiting.len());
        }
        Ok(())
    }

    /// Whether the frontend's graceful stop has begun (see `Frontend::drain_and_kick`).
    fn stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Answers every parked message with the stopping error (see `refuse_stopping`).
    fn refuse_waiting(&mut self) {
        // Not kept: an idle connection holds no queue.
        for msg in self.waiting.take().into_iter().flat_map(|w| *w) {
            refuse_stopping(&self.inner, &self.session, &msg);
        }
    }

    /// The oldest parked message; the queue goes once empty (`None` = nothing parked).
    fn pop_waiting(&mut self) -> Option<Message> {
        let waiting = self.waiting.as_mut()?;
        let msg = waiting.pop_front();
        if waiting.is_empty() {
            self.waiting = None;
        }
        msg
    }

    /// Spawns the handling of `msg`, counted in the outbox's `in_flight` by the caller
    /// (`try_start_request`); the count falls when the handling ends, however it ends.
    fn spawn_dispatch(&self, msg: Message) {
        let slot = InFlight(self.session.clone());
        // Held until the response is queued: the graceful drain waits for these.
        let answered = self.inner.requests.token();
        // Pairs with the fence in `drain_and_kick`: either its wait counts this token, or
        // this load sees `stopping` (a request cannot slip in after the drain ended).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.stopping() {
            drop(answered);
            refuse_stopping(&self.inner, &self.session, &msg);
            return;
        }
        let Some(handling) = dispatch(self.inner.clone(), self.session.clone(), msg, answered)
        else {
            return;
        };
        // A combinator, not an `async` block: a block would hold `handling` twice (as its
        // capture and as the future it awaits), and the task is allocated per message.
        // Boxed: the task then holds a pointer, and tokio's spawn moves (copies) that
        // instead of the ~1 KB future into and inside the task cell.
        self.inner.tracker.spawn(Box::pin(
            handling.map(move |()| drop(slot)).in_current_span(),
        ));
    }
}

/// One message of a connection being handled: ends its count in the outbox when dropped,
/// which wakes the connection task if it waits for the slot or has pushes lingering for
/// this request (see `take_due`).
struct InFlight(Session);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outbox().finish_request();
    }
}
