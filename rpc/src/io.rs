//! The write side shared by client and server connections: drain the bounded queue into one
//! buffer, then write it with one call (write coalescing).

use crate::frame::Frame;
use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Flush the coalescing buffer early once it holds this many bytes.
const FLUSH_AT: usize = 256 * 1024;

/// Spawns the write side of a connection (client or server): [`write_frames`] in its own task,
/// in the current span. When it ends it cancels `stop`, so the reader of that connection stops
/// too if the socket died under it.
pub(crate) fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut w: W,
    mut rx: mpsc::Receiver<Frame>,
    batch: usize,
    max_frame_size: usize,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(
        async move {
            let r = write_frames(&mut w, &mut rx, batch, max_frame_size, &stop).await;
            stop.cancel();
            r
        }
        .in_current_span(),
    )
}

/// Writes queued frames until every sender is gone (then shuts the write side down), a write
/// fails, or `stop` fires. Encoding errors (frame too large; callers check first) drop that
/// frame with a log line.
async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut mpsc::Receiver<Frame>,
    batch: usize,
    max_frame_size: usize,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let batch = batch.max(1);
    let mut frames = Vec::with_capacity(batch);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut frames, batch) => n,
            () = stop.cancelled() => return Ok(()),
        };
        if n == 0 {
            break;
        }
        for f in frames.drain(..) {
            if let Err(e) = f.encode(&mut buf, max_frame_size) {
                tracing::error!(cause = %e, "dropping an rpc frame that cannot be encoded");
            }
            if buf.len() >= FLUSH_AT {
                write_all(w, &buf, stop).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            write_all(w, &buf, stop).await?;
            buf.clear();
        }
    }
    tokio::select! {
        r = w.shutdown() => r,
        () = stop.cancelled() => Ok(()),
    }
}

async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    stop: &CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        // The flush is free on TCP; on TLS it makes sure the records went out.
        r = async {
            w.write_all(buf).await?;
            w.flush().await
        } => r,
        () = stop.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "rpc connection closed while writing",
        )),
    }
}
