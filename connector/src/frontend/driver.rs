//! One connection's loop: reads packages into the state machine, answers the handshake,
//! parks or spawns messages, writes coalesced batches, and handles kicks and timers.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use shaddock_protocol::connection::{CloseReason, Event, ServerConnection};
use shaddock_protocol::message::{Message, MessageType};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Inner;
use super::dispatch::{dispatch, refuse_stopping};
use crate::close::{Disconnect, KickReason};
use crate::handshake;
use crate::limit::TokenBucket;
use crate::session::Session;
use crate::stats::ConnectorStats;
use crate::transport::Transport;

/// Runs the connection of `session` over `transport` to its end; returns the close reason.
pub(super) async fn run<S>(
    inner: Arc<Inner>,
    session: Session,
    transport: Transport<S>,
    shutdown: CancellationToken,
) -> Disconnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut driver = Driver {
        inflight: Arc::new(Semaphore::new(inner.config.max_in_flight)),
        inner,
        session,
        transport,
        shutdown,
        waiting: VecDeque::new(),
    };
    // `run(&mut self)`: an `async fn` taking `self` by value keeps two copies of it.
    driver.run().await
}

struct Driver<S> {
    inner: Arc<Inner>,
    session: Session,
    transport: Transport<S>,
    shutdown: CancellationToken,
    /// Messages of this connection being handled at once (`max_in_flight` permits).
    inflight: Arc<Semaphore>,
    /// Messages received while all permits were taken; the socket is not read meanwhile.
    waiting: VecDeque<Message>,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

impl<S> Driver<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Runs the connection to its end; returns the close reason.
    async fn run(&mut self) -> Disconnect {
        let stats = self.inner.stats.clone();
        let mut conn = ServerConnection::new(self.inner.connection, now_std());
        let mut bucket = self
            .inner
            .config
            .rate_limit
            .map(|l| TokenBucket::new(l, now_std()));
        let mut inbound = VecDeque::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut local_reason: Option<Disconnect> = None;
        // With a push flush interval: when the queued pushes are due.
        let mut flush_at: Option<Instant> = None;
        // Set by the state machine's `Closed` event; the loop then writes what is left and ends.
        let mut closed: Option<CloseReason> = None;
        loop {
            // 1. Act on what the state machine reported (kicks, timeouts, closes; the events
            // of packages read are handled as each package is fed, below).
            self.handle_events(&mut conn, &mut closed, &mut local_reason);
            // 2. Write: state-machine packages first, then queued messages, coalesced.
            while let Some(p) = conn.poll_transmit() {
                match p.to_bytes() {
                    Ok(b) => batch.push(b),
                    Err(e) => tracing::error!(cause = %e, "cannot encode package"),
                }
            }
            let mut more = false;
            if closed.is_none() {
                more = self.take_due(&mut batch, &mut flush_at);
            }
            if !batch.is_empty()
                && let Err(reason) = self.write(&mut batch).await
            {
                return reason;
            }
            if let Some(reason) = closed {
                match &reason {
                    CloseReason::HandshakeTimeout => {
                        ConnectorStats::incr(&stats.handshake_timeouts)
                    }
                    CloseReason::HeartbeatTimeout => {
                        ConnectorStats::incr(&stats.heartbeat_timeouts)
                    }
                    CloseReason::UnexpectedPackage(_) => {
                        ConnectorStats::incr(&stats.protocol_errors)
                    }
                    _ => {}
                }
                let _ =
                    tokio::time::timeout(self.inner.config.write_timeout, self.transport.close())
                        .await;
                return local_reason.unwrap_or_else(|| Disconnect::from(&reason));
            }
            if more {
                // The byte limit of one write left due messages queued: write them first.
                continue;
            }
            // 3. Wait for the next input.
            // One timer for both deadlines: the task's future holds every select branch for
            // the connection's whole life, so each one costs memory per connection.
            let conn_deadline = conn.poll_timeout().map(Instant::from_std);
            let deadline = match (conn_deadline, flush_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    local_reason = Some(Disconnect::ServerShutdown);
                    conn.close_local();
                }
                reason = self.session.kick_requested() => {
                    ConnectorStats::incr(&stats.kicked);
                    tracing::debug!(%reason, "kicking client");
                    // Stopping: the messages parked for a handler slot are answered before
                    // the KICK, not cut off by it.
                    if self.stopping() {
                        self.refuse_waiting();
                    }
                    // What was queued before the kick (e.g. a response) goes out first.
                    if let Err(reason) = self.flush_before_kick(&mut batch).await {
                        return reason;
                    }
                    conn.kick(&reason);
                }
                permit = self.inflight.clone().acquire_owned(), if !self.waiting.is_empty() => {
                    if self.stopping() {
                        self.refuse_waiting();
                    } else if let (Ok(permit), Some(msg)) = (permit, self.waiting.pop_front()) {
                        self.spawn_dispatch(msg, permit);
                    }
                }
                // Backpressure: no reading while messages wait for a handler slot.
                read = self.transport.read_packages(&mut inbound), if self.waiting.is_empty() => match read {
                    Ok(true) => {
                        let now = now_std();
                        for package in inbound.drain(..) {
                            if let Some(bucket) = bucket.as_mut()
                                && !bucket.try_take(now)
                            {
                                ConnectorStats::incr(&stats.rate_limited);
                                ConnectorStats::incr(&stats.kicked);
                                tracing::warn!(peer = %self.session.peer_addr(), "inbound rate limit exceeded, kicking");
                                conn.kick(&KickReason::RateLimit.to_string());
                                break;
                            }
                            conn.handle_package(package, now);
                            // In order, before the next package of the same read: a handshake
                            // is answered here, so the ack read with it finds the connection
                            // waiting for it, and the request after the ack is handled.
                            self.handle_events(&mut conn, &mut closed, &mut local_reason);
                        }
                        // Not kept: an idle connection holds no package list.
                        inbound = VecDeque::new();
                    }
                    Ok(false) => {
                        local_reason = Some(Disconnect::ClosedByClient);
                        conn.close_local();
                    }
                    Err(e) => {
                        if e.is_protocol() {
                            ConnectorStats::incr(&stats.protocol_errors);
                        }
                        tracing::debug!(cause = %e, "read failed, closing");
                        local_reason = Some(Disconnect::ReadFailed(e.to_string()));
                        conn.close_local();
                    }
                },
                () = self.session.outbox().woken() => {}
                () = sleep => {
                    // A due flush is taken at the top of the loop.
                    if conn_deadline.is_some_and(|d| d <= Instant::now()) {
                        conn.handle_timeout(now_std());
                    }
                }
            }
        }
    }

    /// Acts on the events the state machine has queued: answers a handshake at once, hands
    /// messages to dispatch (or parks them), notes the close (and its reason when local).
    fn handle_events(
        &mut self,
        conn: &mut ServerConnection,
        closed: &mut Option<CloseReason>,
        local_reason: &mut Option<Disconnect>,
    ) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::HandshakeRequest(body) => {
                    let (code, reply) = handshake::respond(&self.inner.handshake, &body);
                    if code == 200 {
                        ConnectorStats::incr(&self.inner.stats.handshakes);
                        conn.accept_handshake(reply);
                    } else {
                        ConnectorStats::incr(&self.inner.stats.handshakes_refused);
                        tracing::debug!(code, "handshake refused");
                        conn.reject_handshake(code, reply);
                    }
                }
                Event::Established => tracing::trace!("handshake acknowledged"),
                Event::Data(body) => {
                    if let Err(reason) = self.on_data(body) {
                        ConnectorStats::incr(&self.inner.stats.protocol_errors);
                        tracing::debug!(%reason, "malformed message, closing");
                        *local_reason = Some(Disconnect::Malformed(reason));
                        conn.close_local();
                    }
                }
                Event::Closed(reason) => *closed = Some(reason),
                _ => {}
            }
        }
    }

    /// Moves the queued messages that are due into `batch`, up to `max_write_batch` bytes;
    /// returns whether due messages are left. A queued response makes everything due. Else
    /// queued pushes become due `push_flush_interval` after the first wake-up that found them
    /// (`flush_at`); without an interval, `push_linger` after it while requests of this
    /// connection are being handled, and at once otherwise.
    fn take_due(&mut self, batch: &mut Vec<Bytes>, flush_at: &mut Option<Instant>) -> bool {
        let outbox = self.session.outbox();
        let (queued, urgent) = outbox.peek();
        if !queued {
            *flush_at = None;
            return false;
        }
        let config = &self.inner.config;
        let hold = config.push_flush_interval.or_else(|| {
            let handling = self.inflight.available_permits() < config.max_in_flight;
            (handling && !config.push_linger.is_zero()).then_some(config.push_linger)
        });
        if let Some(interval) = hold
            && !urgent
        {
            let now = Instant::now();
            match *flush_at {
                None => {
                    *flush_at = Some(now + interval);
                    return false;
                }
                Some(at) if at > now => return false,
                Some(_) => {}
            }
        }
        let more = outbox.take(batch, self.inner.config.max_write_batch, usize::MAX);
        if !more {
            *flush_at = None;
        }
        more
    }

    /// Writes the messages queued when a kick is processed (not those queued after), all
    /// within one `write_timeout`. A client too slow for that is closed without the KICK
    /// (a write cut short may have left half a package on the wire).
    async fn flush_before_kick(&mut self, batch: &mut Vec<Bytes>) -> Result<(), Disconnect> {
        let outbox = self.session.outbox();
        let mut left = outbox.len();
        let timeout = self.inner.config.write_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let before = batch.len();
            if left > 0 {
                outbox.take(batch, self.inner.config.max_write_batch, left);
                left -= batch.len() - before;
            }
            if batch.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.transport.write_batch(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(cause = %e, "write failed, closing");
                    return Err(Disconnect::WriteFailed(e.to_string()));
                }
                Err(_) => {
                    tracing::warn!(peer = %self.session.peer_addr(), ?timeout, "queued messages not written before the kick in time, closing");
                    return Err(Disconnect::FlushTimeout);
                }
            }
        }
        Ok(())
    }

    /// Writes `batch` as one write (one WebSocket message); empties it.
    async fn write(&mut self, batch: &mut Vec<Bytes>) -> Result<(), Disconnect> {
        match tokio::time::timeout(
            self.inner.config.write_timeout,
            self.transport.write_batch(batch),
        )
        .await
        {
            Ok(Ok(())) => {
                // Not kept: an idle connection holds no batch list.
                *batch = Vec::new();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "write failed, closing");
                Err(Disconnect::WriteFailed(e.to_string()))
            }
            Err(_) => {
                tracing::warn!(peer = %self.session.peer_addr(), timeout = ?self.inner.config.write_timeout, "write timed out, closing slow client");
                Err(Disconnect::WriteTimeout)
            }
        }
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
        if self.waiting.is_empty()
            && let Ok(permit) = self.inflight.clone().try_acquire_owned()
        {
            self.spawn_dispatch(msg, permit);
        } else {
            self.waiting.push_back(msg);
            ConnectorStats::raise(&self.inner.stats.peak_parked, self.waiting.len());
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
        for msg in self.waiting.drain(..) {
            refuse_stopping(&self.inner, &self.session, &msg);
        }
        // Not kept: an idle connection holds no queue.
        self.waiting = VecDeque::new();
    }

    fn spawn_dispatch(&self, msg: Message, permit: OwnedSemaphorePermit) {
        let inner = self.inner.clone();
        let session = self.session.clone();
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
        let Some(handling) = dispatch(inner, session.clone(), msg, answered) else {
            return;
        };
        // A combinator, not an `async` block: a block would hold `handling` twice (as its
        // capture and as the future it awaits), and the task is allocated per message.
        // Boxed: the task then holds a pointer, and tokio's spawn moves (copies) that
        // instead of the ~1 KB future into and inside the task cell.
        self.inner.tracker.spawn(Box::pin(
            handling
                .map(move |()| {
                    drop(permit);
                    // Pushes lingering for this request are due now (see `take_due`).
                    session.outbox().wake_if_queued();
                })
                .in_current_span(),
        ));
    }
}
