//! The listener, the graceful stop, and a new connection up to its driver: the connection
//! limit, sniffing TCP, HTTP or TLS, the TLS handshake, the WebSocket upgrade.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use super::driver::{ConnectionLimit, ConnectionSlot, Driver};
use super::{Frontend, Inner};
use crate::rewind::Rewind;
use crate::sniff::{MAX_SNIFF_LEN, Sniff, sniff};
use crate::stats::ConnectorStats;
use crate::tls::TlsMode;
use crate::transport::Transport;

/// tungstenite's read buffer per WebSocket connection (see `open_transport`), kept for the
/// connection's life, and the most one read takes from the socket; tungstenite zero-fills
/// it before every read. 2 KiB holds a pomelo client's usual messages (a chat request is
/// ~100 bytes) and a few of them queued; a larger frame grows the buffer to its length and
/// is read 2 KiB per read.
const WS_READ_BUFFER: usize = 2 * 1024;

/// Outcome of [`Frontend::drain_and_kick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Requests still being handled when the drain gave up (0: all answered).
    pub unfinished_requests: usize,
    /// Sessions kicked.
    pub kicked: usize,
    /// Kicked sessions still open when the wait for them gave up (0: all closed).
    pub still_connected: usize,
}

impl Frontend {
    /// Whether [`Frontend::drain_and_kick`] has begun: requests are answered with
    /// [`crate::STOPPING_MESSAGE`] instead of being handled.
    pub fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops accepting connections: `serve` closes its listener (new connects are refused
    /// by the OS) but keeps serving the connections it has until its `shutdown` token is
    /// cancelled. Returns once the listener is closed (at once if `serve` is not running).
    /// For good: a later `serve` on this frontend accepts nothing.
    ///
    /// A graceful stop is `stop_accepting` → [`Frontend::drain_and_kick`] → cancel `serve`'s
    /// token.
    pub async fn stop_accepting(&self) {
        self.inner.stop_accepting.cancel();
        let mut listening = self.inner.listening.subscribe();
        // The sender lives in `self.inner`, so `wait_for` cannot fail while we hold `self`.
        let _ = listening.wait_for(|open| !*open).await;
    }

    /// The graceful drain: every request gets a response before its client is kicked.
    ///
    /// 1. From now on (for good) a request that arrives is not handled but answered at once
    ///    with code 500 and [`crate::STOPPING_MESSAGE`] ("server is stopping; reconnect …"); a
    ///    notify is dropped.
    /// 2. Waits until every request or notify already being handled is answered, at most
    ///    `timeout`. Those still running then are answered with code 500 and
    ///    [`crate::GAVE_UP_MESSAGE`] (their handlers run on; their results are not sent).
    /// 3. Kicks every session with `reason`: each writes what is queued (those responses
    ///    included), then the KICK, then closes; waits, at most `timeout` again, for them to
    ///    close.
    ///
    /// A request that reaches the socket after its connection's KICK was written crossed it
    /// on the wire and is not answered. Call [`Frontend::stop_accepting`] first so no new
    /// clients arrive.
    pub async fn drain_and_kick(&self, reason: &str, timeout: Duration) -> DrainReport {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Pairs with the fence in the driver's `spawn_dispatch`.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let requests = &self.inner.requests;
        requests.close();
        let drained = tokio::time::timeout(timeout, requests.wait()).await.is_ok();
        let unfinished_requests = if drained { 0 } else { requests.len() };
        if !drained {
            tracing::warn!(
                ?timeout,
                left = unfinished_requests,
                "drain: requests still being handled, answering them with an error and kicking"
            );
            // Each of them queues its error response at once.
            self.inner.give_up.cancel();
            if tokio::time::timeout(timeout, requests.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = requests.len(),
                    "drain: requests not answered after giving up on them"
                );
            }
        }
        requests.reopen();
        let sessions = self.inner.sessions.all();
        for s in &sessions {
            s.kick(reason);
        }
        let all_closed = async {
            for s in &sessions {
                s.closed().await;
            }
        };
        let still_connected = match tokio::time::timeout(timeout, all_closed).await {
            Ok(()) => 0,
            Err(_) => {
                let n = sessions.iter().filter(|s| !s.is_closed()).count();
                tracing::warn!(?timeout, left = n, "drain: kicked clients still connected");
                n
            }
        };
        DrainReport {
            unfinished_requests,
            kicked: sessions.len(),
            still_connected,
        }
    }

    /// Serves clients on `listener` until `shutdown` is cancelled, then closes every
    /// connection and waits for connection and handler tasks to finish (at most
    /// `drain_timeout`). After [`Frontend::stop_accepting`] it closes the listener at once
    /// but keeps serving its connections until `shutdown`.
    ///
    /// At most `max_connections` connections are served at once: each accepted one takes a
    /// slot of the limit. When none is left the listener still accepts and closes the new
    /// socket at once (counted as `refused`), so an over-limit client sees a prompt close
    /// rather than hanging in the kernel backlog. Accept errors (e.g. out of file descriptors) are
    /// logged and retried with an exponential back-off of 1 ms to 1 s.
    ///
    /// # Errors
    /// None at present; `Result` leaves room for fatal listener errors.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let limit = Arc::new(ConnectionLimit::new(
            self.inner.config.max_connections,
            self.inner.stats.clone(),
        ));
        let local = listener.local_addr().ok();
        tracing::debug!(addr = ?local, frontend = %self.inner.config.frontend_id, "client port listening");
        let mut backoff = Duration::from_millis(1);
        let stop_accepting = self.inner.stop_accepting.clone();
        self.inner.listening.send_replace(true);
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                () = stop_accepting.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(1);
                    // Only this loop takes slots (connections give theirs back), so taking
                    // one now is as good as holding one across `accept`.
                    let Some(slot) = limit.try_take() else {
                        ConnectorStats::incr(&self.inner.stats.refused);
                        tracing::warn!(%peer, max = self.inner.config.max_connections, "connection refused: max connections reached");
                        drop(stream);
                        continue;
                    };
                    ConnectorStats::incr(&self.inner.stats.accepted);
                    let inner = self.inner.clone();
                    // A clone, not a child token: a child allocates a tree node per
                    // connection, and connections are only ever cancelled all at once.
                    let token = shutdown.clone();
                    let span = tracing::debug_span!("conn", %peer);
                    self.inner
                        .tracker
                        .spawn(ConnectionTask::new(inner, stream, peer, token, slot, span));
                }
                Err(e) => {
                    ConnectorStats::incr(&self.inner.stats.accept_errors);
                    tracing::error!(cause = %e, ?backoff, "accept failed, backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = stop_accepting.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        drop(listener);
        self.inner.listening.send_replace(false);
        if !shutdown.is_cancelled() {
            tracing::debug!(addr = ?local, "client port no longer accepting; serving open connections");
            shutdown.cancelled().await;
        }
        self.inner.tracker.close();
        let drain = self.inner.config.drain_timeout;
        if tokio::time::timeout(drain, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                left = self.inner.tracker.len(),
                "shutdown: tasks still running after the drain timeout, not waiting longer"
            );
        }
        self.inner.tracker.reopen();
        tracing::debug!(addr = ?local, "client port closed");
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A connection's tokio task: its setup (sniffing, the WebSocket upgrade; a TLS
    /// connection's whole life), boxed because it is large and short-lived, then its
    /// [`Driver`] inline, all in the connection's `conn` span. The task is as large as this,
    /// for the connection's whole life.
    pub(super) struct ConnectionTask {
        // The `conn` span, entered while the task is polled and dropped, as `Instrumented`
        // does. Boxed, and `None` while disabled (it is a debug span): 8 bytes in every
        // connection's task instead of the span's 40.
        span: Option<Box<Span>>,
        #[pin]
        stage: Stage,
    }

    impl PinnedDrop for ConnectionTask {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _entered = this.span.as_deref().map(Span::enter);
            this.stage.set(Stage::Done);
        }
    }
}

pin_project_lite::pin_project! {
    /// Where a [`ConnectionTask`] is.
    #[project = StageProj]
    enum Stage {
        Setup { setup: Pin<Box<dyn Future<Output = Option<Driver<TcpStream>>> + Send>> },
        Drive { #[pin] driver: Driver<TcpStream> },
        Done,
    }
}

impl ConnectionTask {
    fn new(
        inner: Arc<Inner>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
        slot: ConnectionSlot,
        span: Span,
    ) -> Self {
        Self {
            span: (!span.is_disabled()).then(|| Box::new(span)),
            stage: Stage::Setup {
                setup: Box::pin(set_up(inner, stream, peer, shutdown, slot)),
            },
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let _entered = this.span.as_deref().map(Span::enter);
        let mut stage = this.stage;
        loop {
            match stage.as_mut().project() {
                StageProj::Setup { setup } => match ready!(setup.as_mut().poll(cx)) {
                    Some(driver) => stage.set(Stage::Drive { driver }),
                    None => {
                        stage.set(Stage::Done);
                        return Poll::Ready(());
                    }
                },
                StageProj::Drive { driver } => {
                    ready!(driver.poll(cx));
                    stage.set(Stage::Done);
                    return Poll::Ready(());
                }
                StageProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A new connection up to its driver (`None` when it ended before one, or when it was a
/// TLS connection, served here to its end).
async fn set_up(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    slot: ConnectionSlot,
) -> Option<Driver<TcpStream>> {
    if inner.config.nodelay {
        let _ = stream.set_nodelay(true);
    }
    let deadline = Instant::now() + inner.config.handshake_timeout;
    let (kind, first) = sniff_stream(&inner, &mut stream, deadline, &shutdown).await?;
    match (kind, inner.config.tls.clone()) {
        // Boxed, the whole TLS connection: a TLS stream holds rustls' connection state inline
        // (over a kilobyte, twice while it is accepted); unboxed, this setup future would be
        // that large for every connection.
        (Sniff::Tls, Some(tls)) => {
            Box::pin(serve_tls(
                inner, stream, first, tls, peer, deadline, shutdown, slot,
            ))
            .await;
            None
        }
        (_, Some(tls)) if tls.mode() == TlsMode::Required => {
            ConnectorStats::incr(&inner.stats.protocol_errors);
            tracing::info!(%peer, "closed: plain connection on a port that requires TLS");
            None
        }
        (kind, _) => {
            let transport =
                open_transport(&inner, stream, first, kind, deadline, &shutdown).await?;
            Some(start_driver(
                inner, transport, kind, false, peer, shutdown, slot,
            ))
        }
    }
}

/// A connection that starts with a TLS ClientHello on a port with TLS: the handshake, then
/// sniffing and serving inside TLS as on a plain socket.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    inner: Arc<Inner>,
    stream: TcpStream,
    first: BytesMut,
    tls: crate::tls::ServerTls,
    peer: SocketAddr,
    deadline: Instant,
    shutdown: CancellationToken,
    slot: ConnectionSlot,
) {
    let io = Rewind::new(first.freeze(), stream);
    let accept = tokio::select! {
        () = shutdown.cancelled() => return,
        // Boxed, as the WebSocket upgrade in `open_transport`: large and short-lived.
        r = tokio::time::timeout_at(deadline, Box::pin(tls.acceptor().accept(io))) => r,
    };
    let mut io = match accept {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            ConnectorStats::incr(&inner.stats.protocol_errors);
            tracing::info!(%peer, cause = %e, "closed: TLS handshake failed");
            return;
        }
        Err(_) => {
            ConnectorStats::incr(&inner.stats.handshake_timeouts);
            tracing::debug!("closed: TLS handshake not done before the handshake timeout");
            return;
        }
    };
    // Inside TLS: raw pomelo packages or a WebSocket upgrade, as on a plain socket.
    let Some((kind, first)) = sniff_stream(&inner, &mut io, deadline, &shutdown).await else {
        return;
    };
    let Some(transport) = open_transport(&inner, io, first, kind, deadline, &shutdown).await else {
        return;
    };
    start_driver(inner, transport, kind, true, peer, shutdown, slot).await;
}

/// Reads until the first bytes decide TCP, HTTP or TLS; `None` when the connection ended
/// (peer closed, read error, handshake timeout, shutdown) first.
async fn sniff_stream<S: AsyncRead + Unpin>(
    inner: &Inner,
    stream: &mut S,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<(Sniff, BytesMut)> {
    // Grows by what arrives only (see `transport::read_some`): usually one small allocation.
    let mut first = BytesMut::new();
    let kind = loop {
        match sniff(&first) {
            Sniff::NeedMore if first.len() < MAX_SNIFF_LEN => {}
            Sniff::NeedMore => break Sniff::Tcp,
            decided => break decided,
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = tokio::time::timeout_at(deadline, crate::transport::read_some(stream, &mut first)) => r,
        };
        match read {
            Err(_) => {
                ConnectorStats::incr(&inner.stats.handshake_timeouts);
                tracing::debug!("closed: no bytes to sniff before the handshake timeout");
                return None;
            }
            Ok(Ok(0)) => return None,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "read error while sniffing");
                return None;
            }
        }
    };
    Some((kind, first))
}

/// The WebSocket upgrade (for an HTTP start) or raw TCP framing over `stream`; `None` when
/// the upgrade failed or did not end in time.
async fn open_transport<S>(
    inner: &Inner,
    stream: S,
    first: BytesMut,
    kind: Sniff,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<Transport<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = inner.config.max_package_size;
    if kind != Sniff::WebSocket {
        // `Sniff::Tls` here (a ClientHello on a port without TLS, or a second one inside TLS)
        // goes to the package decoder too, which refuses type 0x16.
        return Some(Transport::Tcp {
            io: stream,
            rbuf: first,
            decoder: shaddock_protocol::package::PackageDecoder::new(max),
        });
    }
    let ws_config = WebSocketConfig::default()
        // tungstenite zero-fills the free part of its read buffer before every read, and
        // keeps the buffer for the connection's life: at the default 128 KiB that memset
        // was ~93% of the WebSocket connector's instructions, and ~150 KB of RSS per idle
        // connection (4 KiB: ~9 KB of RSS per idle WebSocket connection, 25 % of the WS
        // connector's instructions still memset). A frame larger than this grows the buffer
        // for as long as it needs.
        .read_buffer_size(WS_READ_BUFFER)
        // Max message = max package size (plus its 4-byte header); bounded write buffer.
        .max_message_size(Some(max + 4))
        .max_frame_size(Some(max + 4))
        .write_buffer_size(0)
        .max_write_buffer_size(inner.config.max_write_batch.max(max + 4) * 2);
    let io = Rewind::new(first.freeze(), stream);
    let accept = tokio::select! {
        () = shutdown.cancelled() => return None,
        // Boxed: the upgrade future is large (the setup's future is as large as its
        // largest phase).
        r = tokio::time::timeout_at(
            deadline,
            Box::pin(tokio_tungstenite::accept_async_with_config(io, Some(ws_config))),
        ) => r,
    };
    match accept {
        Ok(Ok(ws)) => Some(Transport::Ws {
            ws: Box::new(ws),
            max_body_len: max,
        }),
        Ok(Err(e)) => {
            ConnectorStats::incr(&inner.stats.protocol_errors);
            tracing::debug!(cause = %e, "websocket upgrade failed");
            None
        }
        Err(_) => {
            ConnectorStats::incr(&inner.stats.handshake_timeouts);
            tracing::debug!("closed: websocket upgrade not done before the handshake timeout");
            None
        }
    }
}

/// The connection's session, and the driver that serves it to its end.
fn start_driver<S>(
    inner: Arc<Inner>,
    transport: Transport<S>,
    kind: Sniff,
    tls: bool,
    peer: SocketAddr,
    shutdown: CancellationToken,
    slot: ConnectionSlot,
) -> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = inner.sessions.create(peer, inner.config.queue_capacity);
    tracing::debug!(
        sid = session.id(),
        ws = kind == Sniff::WebSocket,
        tls,
        "connection open"
    );
    Driver::new(inner, session, transport, shutdown, slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectorConfig;

    /// The connection task's future is allocated once per connection and lives as long as
    /// it: its size is most of what an idle connection costs. Its setup is boxed, so the
    /// task is as large as the driver, which holds every wait it needs across its loop.
    /// Unboxed, the TLS branch made every plain connection's task 8 KB (release build), most
    /// of 10 KB of RSS per idle TCP connection; as nested `async fn`s with a `select!` loop
    /// the driver made it 1,712 bytes (release) / 1,752 (debug); as one hand-written future
    /// 576 (release) in a 40-byte `Instrumented`. Now 528 (release), its span included.
    /// tokio's task cell adds 96 bytes (header, scheduler, id, trailer) and the tracker's
    /// token 8, and is 128-aligned: 632 → a 640-byte cell (measured: one allocation of 640
    /// bytes per connection task, 768 before), mimalloc's 640 size class. Over 536 bytes the
    /// cell would be 768 again.
    #[tokio::test]
    async fn the_connection_task_of_a_plain_socket_stays_small() {
        let frontend = Frontend::builder(ConnectorConfig::default())
            .build()
            .expect("build");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let slot = Arc::new(ConnectionLimit::new(1, frontend.inner.stats.clone()))
            .try_take()
            .unwrap();
        let task = ConnectionTask::new(
            frontend.inner.clone(),
            stream,
            peer,
            CancellationToken::new(),
            slot,
            tracing::debug_span!("conn", %peer),
        );
        let size = std::mem::size_of_val(&task);
        let bound = 536;
        assert!(
            size <= bound,
            "the connection task's future is {size} bytes (bound {bound}): box the large branch"
        );
        drop(task);
        drop(client);
    }
}
