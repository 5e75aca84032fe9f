//! The two transports of the hybrid port behind one interface: whole packages in, bytes out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, StreamExt};
use shaddock_protocol::package::{Package, PackageDecoder, decode_frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::rewind::Rewind;

/// Buffers handed to one `writev` call.
const MAX_IOVECS: usize = 64;

/// Size of the per-thread buffer sockets are read into.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// Sockets are read into this per-thread buffer, then what arrived is copied to the
    /// connection's own buffer: an idle connection holds no read buffer at all (a per-
    /// connection buffer of a few KiB would be most of an idle connection's memory).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Reads once from `io` and appends what arrived to `buf`, which grows by that much only.
/// `Ok(0)` means end of stream.
///
/// # Cancel safety
/// Cancel safe: bytes are only taken from the socket when they are appended.
pub(crate) async fn read_some<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(io, cx, buf)).await
}

/// The poll form of [`read_some`].
fn poll_read_some<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut fallback;
        let mut borrowed = scratch.try_borrow_mut();
        let space: &mut [u8] = match borrowed.as_deref_mut() {
            Ok(s) => s,
            // Only if a read re-entered this thread's scratch: use a buffer of its own.
            Err(_) => {
                fallback = vec![0; 4096];
                &mut fallback
            }
        };
        let mut rb = ReadBuf::new(space);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Why a transport stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Socket error (fatal).
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// Malformed package framing: bad type byte, length over the limit, truncated package
    /// in a WebSocket message (fatal).
    #[error("package: {0}")]
    Package(#[from] shaddock_protocol::Error),
    /// WebSocket protocol error (fatal).
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// A WebSocket message pomelo clients never send: text, or an empty binary message (fatal).
    #[error("unexpected websocket message: {0}")]
    UnexpectedMessage(&'static str),
}

impl TransportError {
    /// Whether the peer sent something malformed (as opposed to the socket failing).
    pub(crate) fn is_protocol(&self) -> bool {
        match self {
            Self::Io(_) => false,
            Self::WebSocket(e) => !matches!(
                e,
                tungstenite::Error::Io(_)
                    | tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
            ),
            _ => true,
        }
    }
}

/// A connection after sniffing: raw TCP packages or WebSocket binary messages.
pub(crate) enum Transport<S> {
    /// Raw TCP: a byte stream of packages.
    Tcp {
        io: S,
        /// Kept in the struct, not the read future, so a cancelled read loses nothing. Holds
        /// only the bytes of an incomplete package; empty (no allocation) between packages.
        rbuf: BytesMut,
        decoder: PackageDecoder,
    },
    /// WebSocket: each binary message holds whole packages.
    Ws {
        ws: Box<WebSocketStream<Rewind<S>>>,
        max_body_len: usize,
    },
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    /// Reads until at least one package is available and appends the packages to `out`.
    /// `Ok(false)` means the peer closed the connection cleanly. `Pending` leaves `out`
    /// untouched: partial input stays in the transport.
    pub(crate) fn poll_read_packages(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Package>,
    ) -> Poll<Result<bool, TransportError>> {
        match self {
            Self::Tcp { io, rbuf, decoder } => loop {
                while let Some(p) = decoder.decode(rbuf)? {
                    out.push_back(p);
                }
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    // Nothing pending: give the buffer back (the packages keep what they use).
                    *rbuf = BytesMut::new();
                }
                if !out.is_empty() {
                    return Poll::Ready(Ok(true));
                }
                if ready!(poll_read_some(io, cx, rbuf))? == 0 {
                    return Poll::Ready(Ok(false));
                }
            },
            Self::Ws { ws, max_body_len } => loop {
                let Some(msg) = ready!(ws.poll_next_unpin(cx)) else {
                    return Poll::Ready(Ok(false));
                };
                match msg? {
                    WsMessage::Binary(data) => {
                        if data.is_empty() {
                            // PROTOCOL.md §2.3: "an empty message also closes the connection".
                            return Poll::Ready(Err(TransportError::UnexpectedMessage(
                                "empty binary message",
                            )));
                        }
                        out.extend(decode_frame(data, *max_body_len)?);
                        return Poll::Ready(Ok(true));
                    }
                    WsMessage::Text(_) => {
                        return Poll::Ready(Err(TransportError::UnexpectedMessage("text message")));
                    }
                    WsMessage::Close(_) => return Poll::Ready(Ok(false)),
                    // Pings are answered by tungstenite on the next read or write.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                }
            },
        }
    }

    /// Writes one coalesced batch and empties it: vectored writes of the shared buffers
    /// (TCP, no copy), or one binary message holding them all (WebSocket; pomelo clients
    /// split a message into its packages, PROTOCOL.md §2.3).
    ///
    /// `progress` belongs to the caller, 0 when a batch starts, kept across `Pending`: on
    /// TCP the buffers of `batch` already written, on WebSocket 1 once the message is
    /// handed to the WebSocket.
    pub(crate) fn poll_write_batch(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Bytes>,
        progress: &mut usize,
    ) -> Poll<Result<(), TransportError>> {
        match self {
            Self::Tcp { io, .. } => {
                while *progress < batch.len() {
                    let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
                    let mut count = 0;
                    for (slice, b) in slices.iter_mut().zip(&batch[*progress..]) {
                        *slice = io::IoSlice::new(b);
                        count += 1;
                    }
                    let mut n =
                        ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    // Drop what was written; keep a partly written buffer's tail.
                    while n > 0 && *progress < batch.len() {
                        let len = batch[*progress].len();
                        if n >= len {
                            n -= len;
                            *progress += 1;
                        } else {
                            bytes::Buf::advance(&mut batch[*progress], n);
                            n = 0;
                        }
                    }
                }
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                batch.clear();
            }
            Self::Ws { ws, .. } => {
                if *progress == 0 {
                    ready!(Pin::new(&mut **ws).poll_ready(cx))?;
                    let message = if batch.len() == 1 {
                        batch.pop().unwrap_or_default()
                    } else {
                        let total = batch.iter().map(Bytes::len).sum();
                        let mut buf = BytesMut::with_capacity(total);
                        for b in batch.drain(..) {
                            buf.extend_from_slice(&b);
                        }
                        buf.freeze()
                    };
                    Pin::new(&mut **ws).start_send(WsMessage::Binary(message))?;
                    *progress = 1;
                }
                ready!(Pin::new(&mut **ws).poll_flush(cx))?;
                batch.clear();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Closes the write side (TCP half-close / WebSocket close frame); errors are ignored
    /// because the connection is going away anyway.
    pub(crate) fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = match self {
            Self::Tcp { io, .. } => ready!(Pin::new(io).poll_shutdown(cx)),
            Self::Ws { ws, .. } => {
                ready!(Pin::new(&mut **ws).poll_close(cx)).map_err(io::Error::other)
            }
        };
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn vectored_batch_survives_partial_writes() {
        // A 7-byte pipe forces many short writes that end inside buffers.
        let (a, mut b) = tokio::io::duplex(7);
        let mut t = Transport::Tcp {
            io: a,
            rbuf: BytesMut::new(),
            decoder: PackageDecoder::new(1024),
        };
        let mut batch: Vec<Bytes> = (0..100u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 13) + 1]))
            .collect();
        let expected: Vec<u8> = batch.iter().flat_map(|b| b.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut out = vec![0u8; expected.len()];
            b.read_exact(&mut out).await.map(|_| (out, expected))
        });
        let mut progress = 0;
        let write = std::future::poll_fn(|cx| t.poll_write_batch(cx, &mut batch, &mut progress));
        tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .unwrap()
            .unwrap();
        assert!(batch.is_empty());
        let (out, expected) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(out, expected);
    }
}
