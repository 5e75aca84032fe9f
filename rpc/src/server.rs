//! [`RpcServer`]: accepts RPC connections and dispatches calls to registered services.

use crate::auth::{ClusterSecret, random_bytes};
use crate::config::RpcConfig;
use crate::frame::{
    CodecError, ErrorKind, Frame, FrameCodec, Name, WireError, ok_response_body_len,
};
use crate::io::spawn_writer;
use crate::service::Registry;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

/// Largest frame body read from a peer that has not authenticated yet (an `auth` frame is 65
/// bytes with the client's 32 bytes of `info`).
const AUTH_FRAME_MAX: usize = 1024;

/// Serves the services of a [`Registry`] on a listener.
///
/// Each connection reads frames in one task and runs every call in its own task (never on the
/// read loop), so many calls are in flight per connection and a slow handler blocks nobody;
/// replies go through a bounded queue to a writer task that coalesces them. A bad frame closes
/// that connection only (with a `warn!` naming the peer and the reason). At most
/// `max_connections` are served at once (the slot is taken before `accept`); a connection
/// silent for `idle_timeout` is closed; with a `secret`, nothing but the authentication
/// handshake is read before the peer proved it knows the secret (see [`crate::auth`]).
#[derive(Debug, Clone)]
pub struct RpcServer {
    registry: Arc<Registry>,
    config: Arc<RpcConfig>,
}

impl RpcServer {
    /// A server for these services.
    pub fn new(registry: Registry, config: RpcConfig) -> Self {
        Self {
            registry: Arc::new(registry),
            config: Arc::new(config),
        }
    }

    /// The services served.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Accepts connections until `shutdown` fires; then stops accepting, lets every
    /// connection finish the calls it has read (their replies are written), closes them, and
    /// returns. Replies to a peer that does not read them are written for at most
    /// `call_timeout` after shutdown; then that connection is closed anyway.
    ///
    /// # Errors
    /// None at present (accept errors are logged and retried with a backoff); the `Result`
    /// leaves room for fatal listener errors.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let span = tracing::info_span!("rpc_server", local = %local);
        async move {
            debug!("rpc server listening");
            let tracker = TaskTracker::new();
            let mut accept_backoff = Duration::from_millis(5);
            let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
            let mut full_logged = false;
            loop {
                // A connection slot first, then accept: beyond the cap peers wait in the
                // kernel's backlog instead of being accepted and costing a task and buffers.
                let slot = match Arc::clone(&slots).try_acquire_owned() {
                    Ok(s) => s,
                    Err(_) => {
                        if !full_logged {
                            warn!(
                                max_connections = self.config.max_connections,
                                "rpc connection cap reached; new peers wait in the backlog"
                            );
                            full_logged = true;
                        }
                        tokio::select! {
                            s = Arc::clone(&slots).acquire_owned() => match s {
                                Ok(s) => s,
                                Err(_) => break,
                            },
                            () = shutdown.cancelled() => break,
                        }
                    }
                };
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    () = shutdown.cancelled() => break,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        if slots.available_permits() > 0 {
                            full_logged = false;
                        }
                        accept_backoff = Duration::from_millis(5);
                        if let Err(e) = stream.set_nodelay(true) {
                            debug!(peer = %peer, cause = %e, "set_nodelay failed");
                        }
                        let this = self.clone();
                        let token = shutdown.clone();
                        let span = tracing::info_span!("rpc_conn", peer = %peer);
                        tracker.spawn(
                            async move {
                                this.run_tcp(stream, token).await;
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => {
                        warn!(cause = %e, "rpc accept failed; backing off {accept_backoff:?}");
                        tokio::select! {
                            () = tokio::time::sleep(accept_backoff) => {}
                            () = shutdown.cancelled() => break,
                        }
                        accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            drop(listener);
            debug!("rpc server stopped accepting; draining connections");
            tracker.close();
            tracker.wait().await;
            debug!("rpc server stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Serves one already-accepted connection (any byte stream, e.g. `tokio::io::duplex` in
    /// tests) until the peer closes it, it sends a bad frame, or `shutdown` fires. No TLS is
    /// done here, whatever [`RpcConfig::tls`] says: the stream is taken as it is.
    pub async fn serve_connection<S>(&self, io: S, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        self.run_connection(rd, wr, shutdown).await;
    }

    /// Serves one accepted TCP connection: plain, or after the TLS handshake when the port
    /// has TLS (a peer that fails it is closed with a `warn!` saying why).
    async fn run_tcp(&self, stream: TcpStream, shutdown: CancellationToken) {
        let Some(tls) = &self.config.tls else {
            let (rd, wr) = stream.into_split();
            self.run_connection(rd, wr, shutdown).await;
            return;
        };
        let Some(acceptor) = tls.acceptor() else {
            warn!(
                "closing rpc connection: TLS is configured without a server side (no certificate to serve)"
            );
            return;
        };
        let limit = self.config.connect_timeout;
        let handshake = tokio::time::timeout(limit, accept_tls(stream, acceptor, limit / 2));
        let accepted = tokio::select! {
            r = handshake => r,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(Ok(tls_stream)) => {
                debug!("rpc peer passed the TLS handshake");
                let (rd, wr) = tokio::io::split(tls_stream);
                self.run_connection(rd, wr, shutdown).await;
            }
            // A port probe (connect, then close without a byte) is routine, not a refusal.
            Ok(Err(why)) if why == CLOSED_BEFORE_TLS => debug!("{why}"),
            Ok(Err(why)) => warn!(reason = %why, "closing rpc connection: TLS refused"),
            Err(_) => warn!(
                timeout = ?limit,
                "closing rpc connection: TLS refused: no TLS handshake in time (a plain TCP peer waiting for a cluster-secret challenge?)"
            ),
        }
    }

    async fn run_connection<R, W>(&self, rd: R, wr: W, shutdown: CancellationToken)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.config;
        let (tx, rx) = mpsc::channel::<Frame>(cfg.queue_capacity.max(1));
        // Cancelled by the writer when it ends: unblocks the reader if the socket died.
        let writer_stop = CancellationToken::new();
        let writer = spawn_writer(
            wr,
            rx,
            cfg.write_batch,
            cfg.max_frame_size,
            writer_stop.clone(),
        );
        let permits = Arc::new(Semaphore::new(cfg.max_in_flight_per_connection.max(1)));
        // Before authentication only handshake-sized frames are accepted: an unauthenticated
        // peer cannot make the server buffer a large frame.
        let first_limit = if cfg.secret.is_some() {
            AUTH_FRAME_MAX.min(cfg.max_frame_size)
        } else {
            cfg.max_frame_size
        };
        let mut frames = FramedRead::new(rd, FrameCodec::new(first_limit));
        debug!("rpc connection open");
        let mut idle = cfg.idle_timeout.map(IdleCheck::new);
        let authed = match &cfg.secret {
            None => true,
            Some(secret) => {
                let limit = cfg.connect_timeout;
                tokio::select! {
                    r = tokio::time::timeout(limit, authenticate(&mut frames, &tx, secret)) => match r {
                        Ok(Ok(())) => {
                            *frames.decoder_mut() = FrameCodec::new(cfg.max_frame_size);
                            true
                        }
                        // A port probe (connect, then close without a byte): routine.
                        Ok(Err(why)) if why == CLOSED_SILENT => {
                            debug!("{why}");
                            false
                        }
                        Ok(Err(why)) => {
                            warn!(reason = %why, "closing rpc connection: authentication failed");
                            false
                        }
                        Err(_) => {
                            warn!(timeout = ?limit, "closing rpc connection: authentication failed: no answer to the challenge in time");
                            false
                        }
                    },
                    () = shutdown.cancelled() => false,
                    () = writer_stop.cancelled() => false,
                }
            }
        };
        loop {
            // Checked here as well as in the selects below, which poll the socket first: a
            // peer that never stops sending must not keep the connection from shutting down.
            if !authed || shutdown.is_cancelled() || writer_stop.is_cancelled() {
                break;
            }
            // Fast paths first: registering on the cancellation tokens costs a lock, so
            // only wait on them when the permit or the next frame is not ready.
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                    () = writer_stop.cancelled() => break,
                },
            };
            let next = tokio::select! {
                biased;
                f = frames.next() => f,
                () = shutdown.cancelled() => break,
                () = writer_stop.cancelled() => break,
                silent = idle_tick(&mut idle) => {
                    if let Some(silent) = silent {
                        info!(silent_for = ?silent, "closing idle rpc connection: nothing received");
                        break;
                    }
                    continue;
                }
            };
            if let (Some(idle), Some(Ok(_))) = (&mut idle, &next) {
                idle.seen = true;
            }
            match next {
                None => {
                    debug!("rpc peer closed the connection");
                    break;
                }
                Some(Err(CodecError::Io(e))) => {
                    debug!(cause = %e, "rpc connection read failed");
                    break;
                }
                Some(Err(e)) => {
                    warn!(cause = %e, "closing rpc connection: bad frame");
                    break;
                }
                Some(Ok(Frame::Request {
                    id,
                    namespace,
                    service,
                    method,
                    payload,
                })) => {
                    let (call, inline) = self
                        .registry
                        .dispatch_wire(namespace, &service, &method, payload);
                    let max = cfg.max_frame_size;
                    let tx = tx.clone();
                    let metered = cfg.metrics.clone().map(|m| (m, std::time::Instant::now()));
                    // Boxed: tokio's spawn then moves a pointer, not the future, into and
                    // inside the task cell.
                    let task = Box::pin(async move {
                        let result = run_guarded(call).await;
                        let frame = reply_frame(id, result, &service, &method, max);
                        if let Some((m, started)) = metered {
                            count_served(&m, &frame, &service, &method, started.elapsed());
                        }
                        // The connection may be gone; then the reply has nowhere to go.
                        send_reply(&tx, frame).await;
                        drop(permit);
                    });
                    run_inline_or_spawn(inline, task);
                }
                Some(Ok(Frame::Notify {
                    namespace,
                    service,
                    method,
                    payload,
                })) => {
                    let (call, inline) = self
                        .registry
                        .dispatch_wire(namespace, &service, &method, payload);
                    let task = Box::pin(async move {
                        if let Err(e) = run_guarded(call).await {
                            debug!(%service, %method, kind = ?e.kind, message = %e.message, "rpc notify failed");
                        }
                        drop(permit);
                    });
                    run_inline_or_spawn(inline, task);
                }
                Some(Ok(Frame::Ping)) => {
                    // Answered from the read loop, never queued behind a permit. A full queue
                    // means replies are going out anyway, which the client counts as alive.
                    let _ = tx.try_send(Frame::Pong);
                }
                Some(Ok(Frame::Pong)) => {}
                Some(Ok(
                    f @ (Frame::Challenge { .. } | Frame::Auth { .. } | Frame::AuthOk { .. }),
                )) => {
                    warn!(
                        frame = f.kind_name(),
                        "closing rpc connection: unexpected authentication frame"
                    );
                    break;
                }
                Some(Ok(Frame::Response { id, .. })) => {
                    warn!(
                        id,
                        "closing rpc connection: peer sent a response frame to a server"
                    );
                    break;
                }
            }
        }
        // Replies of calls still running go out before the writer closes the socket: the
        // writer ends when the last sender (held by those calls) is dropped.
        drop(tx);
        drop(frames);
        // At shutdown, a peer that stopped reading must not hold `serve` forever: its callers
        // give up after `call_timeout`, so its replies get at most that long to go out.
        let mut writer = writer;
        let written = tokio::select! {
            r = &mut writer => r,
            () = shutdown.cancelled() => match tokio::time::timeout(cfg.call_timeout, &mut writer).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(timeout = ?cfg.call_timeout, "closing rpc connection at shutdown: the peer is not reading its replies");
                    writer_stop.cancel();
                    writer.await
                }
            },
        };
        match written {
            Ok(Ok(())) => debug!("rpc connection closed"),
            Ok(Err(e)) => debug!(cause = %e, "rpc connection write failed"),
            Err(e) => warn!(cause = %e, "rpc writer task failed"),
        }
    }
}

/// The server's side of the cluster-secret handshake (see [`crate::auth`]): sends a
/// challenge, reads exactly one frame, which must be an `auth` with the right MAC, and answers
/// `auth-ok`. Nothing else is read before it succeeds, so no call of an unauthenticated peer
/// is ever dispatched. The error says why, for the log (never the secret or the MAC).
async fn authenticate<R>(
    frames: &mut FramedRead<R, FrameCodec>,
    tx: &mpsc::Sender<Frame>,
    secret: &ClusterSecret,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
{
    let nonce = Bytes::copy_from_slice(&random_bytes()?);
    tx.send(Frame::Challenge {
        nonce: nonce.clone(),
    })
    .await
    .map_err(|_| "connection closed before the challenge went out".to_owned())?;
    match frames.next().await {
        Some(Ok(Frame::Auth { mac, info })) => {
            if !secret.verify(&nonce, &info, &mac) {
                return Err("wrong cluster secret (bad challenge answer)".into());
            }
            let proof = secret.server_proof(&nonce, &info);
            tx.send(Frame::AuthOk {
                proof: Bytes::copy_from_slice(&proof),
            })
            .await
            .map_err(|_| "connection closed before auth-ok went out".to_owned())?;
            debug!("rpc peer authenticated");
            Ok(())
        }
        Some(Ok(other)) => Err(format!(
            "peer sent {} before authenticating (no cluster secret configured?)",
            other.kind_name()
        )),
        // Reset before a single byte came (a probe that closed with our challenge unread).
        Some(Err(CodecError::Io(e)))
            if e.kind() == std::io::ErrorKind::ConnectionReset
                && frames.read_buffer().is_empty() =>
        {
            Err(CLOSED_SILENT.into())
        }
        Some(Err(e)) => Err(format!("bad frame before authenticating: {e}")),
        None => Err(CLOSED_SILENT.into()),
    }
}

/// Why a connection ended that closed before sending a single byte (a port probe such as the
/// admin command's wait-for-exit check): logged at DEBUG, not as a failed authentication.
const CLOSED_SILENT: &str = "peer closed the connection before sending anything";
/// The same before the TLS handshake.
const CLOSED_BEFORE_TLS: &str = "peer closed the connection before the TLS handshake";

/// The server side of the TLS handshake. A peer whose first byte is not a TLS handshake
/// record speaks plain TCP, and so does one that sends nothing within `first_byte_within` (a
/// TLS client sends its ClientHello at once; a plain one with a cluster secret waits for the
/// challenge): it gets a fatal alert (so a Shaddock client can say why) and is refused
/// without handing its bytes to rustls. The error says why, for the log.
async fn accept_tls(
    mut stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    first_byte_within: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    let Ok(peeked) = tokio::time::timeout(first_byte_within, stream.peek(&mut first)).await else {
        let _ = stream.write_all(&crate::tls::PLAIN_PEER_ALERT).await;
        let _ = stream.shutdown().await;
        return Err(format!(
            "peer sent nothing for {first_byte_within:?}: no TLS ClientHello (a plain TCP \
             peer waiting for a cluster-secret challenge on a TLS rpc port?)"
        ));
    };
    let n = peeked.map_err(|e| format!("read failed before the TLS handshake: {e}"))?;
    if n == 0 {
        return Err(CLOSED_BEFORE_TLS.into());
    }
    if first[0] != crate::tls::HANDSHAKE_RECORD {
        // Best effort: the peer may be gone already.
        let _ = stream.write_all(&crate::tls::PLAIN_PEER_ALERT).await;
        let _ = stream.shutdown().await;
        return Err(format!(
            "plain TCP peer on a TLS rpc port (first byte 0x{:02x} is not a TLS handshake; \
             give that server the cluster's rpcTls too)",
            first[0]
        ));
    }
    acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// Counts one served request into the method's metrics. Names the peer asked for that no
/// service has are counted under `(unknown)`, so a peer cannot make up label sets.
fn count_served(
    m: &crate::metrics::RpcMetrics,
    frame: &Frame,
    service: &Name,
    method: &Name,
    took: Duration,
) {
    let err = match frame {
        Frame::Response { result: Err(e), .. } => Some(e.kind),
        _ => None,
    };
    let handles = match err {
        Some(ErrorKind::UnknownService) => m.method(&unknown_name(), &unknown_name()),
        Some(ErrorKind::UnknownMethod) => m.method(service, &unknown_name()),
        _ => m.method(service, method),
    };
    handles.call(took, err);
}

fn unknown_name() -> Name {
    Name::from_static("(unknown)").unwrap_or_else(|_| unreachable!("a valid name"))
}

/// Notices a connection on which nothing arrived for `timeout`: a flag set per frame (no
/// clock read, no timer reset on the hot path) and a check every quarter of `timeout`.
struct IdleCheck {
    timeout: Duration,
    tick: tokio::time::Interval,
    last_seen: tokio::time::Instant,
    seen: bool,
}

impl IdleCheck {
    fn new(timeout: Duration) -> Self {
        let period = (timeout / 4).max(Duration::from_millis(1));
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(start + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            timeout,
            tick,
            last_seen: start,
            seen: false,
        }
    }
}

/// Waits for the next idle check; `Some(silence)` when the connection has been silent for
/// the whole timeout. Never completes when there is no idle timeout.
async fn idle_tick(idle: &mut Option<IdleCheck>) -> Option<Duration> {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let now = idle.tick.tick().await;
    if std::mem::take(&mut idle.seen) {
        idle.last_seen = now;
        return None;
    }
    let silent = now.saturating_duration_since(idle.last_seen);
    (silent >= idle.timeout).then_some(silent)
}

/// Queues a call's reply frame: at once when the queue has room, else waits for room (a
/// boxed wait, so that the call's task, spawned per call, stays small: a smaller task is
/// a cheaper allocation).
async fn send_reply(tx: &mpsc::Sender<Frame>, frame: Frame) {
    match tx.try_send(frame) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(frame)) => {
            let _ = Box::pin(tx.send(frame)).await;
        }
    }
}

/// Runs a call's or notify's task: polled once here, on the read loop, only for a service that
/// asked for it (see `Service::inline`), so one that finishes without waiting costs no task.
/// Every other one (and one that waits) runs in its own task, so a CPU-heavy or blocking
/// handler cannot stall the read loop and the others multiplexed on this connection. The
/// no-op waker is enough: a task still pending is spawned, and polls it again with its own.
fn run_inline_or_spawn<F>(inline: bool, mut task: std::pin::Pin<Box<F>>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if inline
        && task
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    {
        return;
    }
    tokio::spawn(task);
}

/// Runs a call, turning a handler panic into an [`ErrorKind::Internal`] error.
async fn run_guarded(call: crate::service::BoxCall) -> Result<bytes::Bytes, WireError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(r) => r,
        Err(_) => Err(panicked()),
    }
}

fn panicked() -> WireError {
    WireError {
        kind: ErrorKind::Internal,
        code: 0,
        message: "rpc handler panicked".into(),
    }
}

/// The response frame for a finished call; a reply too large for one frame becomes an
/// [`ErrorKind::Internal`] error so the caller hears about it instead of timing out.
fn reply_frame(
    id: u32,
    result: Result<bytes::Bytes, WireError>,
    service: &Name,
    method: &Name,
    max: usize,
) -> Frame {
    let result = match result {
        Ok(p) if ok_response_body_len(p.len()) > max => Err(WireError {
            kind: ErrorKind::Internal,
            code: 0,
            message: format!(
                "{service}.{method} reply of {} bytes exceeds the frame limit of {max} bytes",
                ok_response_body_len(p.len())
            ),
        }),
        other => other,
    };
    if let Err(e) = &result {
        debug!(%service, %method, kind = ?e.kind, code = e.code, "rpc call failed");
    }
    Frame::Response { id, result }
}
