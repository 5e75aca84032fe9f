//! The two transports of the hybrid port behind one interface: whole packages in, bytes out.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use shaddock_protocol::package::{Package, PackageDecoder, decode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::rewind::Rewind;

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
        /// Kept in the struct, not the read future, so a cancelled read loses nothing.
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
    /// `Ok(false)` means the peer closed the connection cleanly.
    ///
    /// # Cancel safety
    /// Cancel safe: partial input stays in the transport.
    pub(crate) async fn read_packages(
        &mut self,
        out: &mut VecDeque<Package>,
    ) -> Result<bool, TransportError> {
        match self {
            Self::Tcp { io, rbuf, decoder } => loop {
                while let Some(p) = decoder.decode(rbuf)? {
                    out.push_back(p);
                }
                if !out.is_empty() {
                    return Ok(true);
                }
                if rbuf.capacity() - rbuf.len() < 1024 {
                    rbuf.reserve(4096);
                }
                if io.read_buf(rbuf).await? == 0 {
                    return Ok(false);
                }
            },
            Self::Ws { ws, max_body_len } => loop {
                let Some(msg) = ws.next().await else {
                    return Ok(false);
                };
                match msg? {
                    WsMessage::Binary(data) => {
                        if data.is_empty() {
                            // PROTOCOL.md §2.3: "an empty message also closes the connection".
                            return Err(TransportError::UnexpectedMessage("empty binary message"));
                        }
                        out.extend(decode_frame(data, *max_body_len)?);
                        return Ok(true);
                    }
                    WsMessage::Text(_) => {
                        return Err(TransportError::UnexpectedMessage("text message"));
                    }
                    WsMessage::Close(_) => return Ok(false),
                    // Pings are answered by tungstenite on the next read or write.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                }
            },
        }
    }

    /// Writes one coalesced batch: one socket write (TCP) or one binary message (WebSocket,
    /// which pomelo clients split into packages, PROTOCOL.md §2.3).
    pub(crate) async fn write_batch(&mut self, batch: Bytes) -> Result<(), TransportError> {
        match self {
            Self::Tcp { io, .. } => {
                io.write_all(&batch).await?;
                io.flush().await?;
            }
            Self::Ws { ws, .. } => ws.send(WsMessage::Binary(batch)).await?,
        }
        Ok(())
    }

    /// Closes the write side (TCP half-close / WebSocket close frame); errors are ignored
    /// because the connection is going away anyway.
    pub(crate) async fn close(&mut self) {
        match self {
            Self::Tcp { io, .. } => {
                let _ = io.shutdown().await;
            }
            Self::Ws { ws, .. } => {
                let _ = (**ws).close(None).await;
            }
        }
    }
}
