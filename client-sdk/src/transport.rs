//! Raw TCP and WebSocket behind one package interface.
//!
//! Both transports are generic over any `AsyncRead + AsyncWrite + Unpin + Send` stream (boxed),
//! so tests can use `tokio::io::duplex`, and TLS ([`ClientTls`](crate::ClientTls)) is a
//! stream wrapped around the socket before either transport starts.
//!
//! - TCP: a [`PackageDecoder`] keeps partial packages between reads, so any split or
//!   coalescing of the byte stream works.
//! - WebSocket: each binary message may hold several packages (pomelo's batched pushes); the
//!   client sends exactly one package per message, as pomelo and pinus require.
//!
//! Reading is split in two so that one socket read holding many packages is handled in one
//! pass: [`Conn::fill`] waits for input, [`Conn::next_package`] takes the whole packages it
//! brought without waiting. Package bodies are slices of the read buffer (no copy).

use std::fmt;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use shaddock_protocol::package::{FramePackages, Package, PackageDecoder};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{ClientConfig, DisconnectReason, Error};

/// Which transport to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Raw TCP: packages written back to back on the socket (pomelo's `tcp`).
    #[default]
    Tcp,
    /// WebSocket (`ws://`), one package per binary message (pomelo's `ws`).
    WebSocket,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::WebSocket => "ws",
        })
    }
}

/// A byte stream the client can run on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A read that ended the connection.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The server broke the framing.
    Protocol(shaddock_protocol::Error),
    /// Something else (transport failure, text message): the reason to report.
    Other(DisconnectReason),
}

/// Bytes the TCP read buffer grows by when it runs low. Package bodies share the buffer, so
/// a block stays allocated until the last push read from it is dropped.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes tungstenite takes per read from the socket buffer ([`WS_SOCKET_READ`]). It
/// zero-fills that much of its read buffer before **every** read, including the reads that
/// find nothing (each poll of a connection task woken by something else), so its size is paid
/// per poll: at 16 KiB that memset was ~2/3 of the generator's instructions on WebSocket, at
/// 4 KiB still ~30 %. A larger frame grows the buffer for as long as it needs.
const WS_READ_BUFFER: usize = 512;
/// The socket reads of a WebSocket connection go through a buffer of this size (filled
/// without zeroing), so a small [`WS_READ_BUFFER`] costs no extra system calls: a burst of
/// pushes is still read from the socket 4 KiB at a time.
const WS_SOCKET_READ: usize = 4 * 1024;
/// Grow the read buffer before a read when less than this is free (no tiny reads).
const MIN_READ: usize = 4 * 1024;

/// One connection's transport, with its read-side state kept here (not in futures) so that
/// [`Conn::fill`] and [`Conn::read_package`] are cancel safe.
pub(crate) enum Conn {
    Tcp {
        io: Box<dyn Io>,
        buf: BytesMut,
        decoder: PackageDecoder,
    },
    Ws {
        ws: Box<WebSocketStream<BufReader<Box<dyn Io>>>>,
        /// The packages of the last message not yet taken (they share its buffer).
        pending: Option<FramePackages>,
        max_package_size: usize,
        /// tungstenite's last read found no whole frame and the socket buffer empty: until
        /// the socket has data, asking it again would only cost a read attempt (and its
        /// zero-fill), so [`Conn::fill`] waits on the socket buffer instead.
        starved: bool,
    },
}

impl Conn {
    /// Wrap a connected stream; for WebSocket, run the upgrade with `ws://{authority}{path}`
    /// (`wss://` when `io` is a TLS stream, `secure`).
    pub(crate) async fn open(
        io: Box<dyn Io>,
        transport: Transport,
        authority: &str,
        secure: bool,
        config: &ClientConfig,
    ) -> Result<Self, Error> {
        match transport {
            Transport::Tcp => Ok(Self::Tcp {
                io,
                buf: BytesMut::with_capacity(READ_CHUNK),
                decoder: PackageDecoder::new(config.max_package_size),
            }),
            Transport::WebSocket => {
                let scheme = if secure { "wss" } else { "ws" };
                let url = format!("{scheme}://{authority}{}", config.ws_path);
                // read_buffer_size: tungstenite zero-fills the free part of its read buffer
                // (default 128 KiB) before every read; at the default that memset was ~46% of
                // the load generator's CPU on WebSocket (see WS_READ_BUFFER).
                let ws_config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .max_message_size(Some(config.max_message_size))
                    .max_frame_size(Some(config.max_message_size));
                let io = BufReader::with_capacity(WS_SOCKET_READ, io);
                let (ws, _response) =
                    tokio_tungstenite::client_async_with_config(url, io, Some(ws_config))
                        .await
                        .map_err(|e| Error::WebSocket {
                            peer: authority.to_owned(),
                            source: Box::new(e),
                        })?;
                Ok(Self::Ws {
                    ws: Box::new(ws),
                    pending: None,
                    max_package_size: config.max_package_size,
                    starved: false,
                })
            }
        }
    }

    /// The next whole package; `Ok(None)` when the server closed the connection.
    ///
    /// # Cancel safety
    /// Cancel safe: partial input stays in `self`.
    pub(crate) async fn read_package(&mut self) -> Result<Option<Package>, ReadError> {
        loop {
            if let Some(package) = self.next_package()? {
                return Ok(Some(package));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// A whole package already read, without waiting; `Ok(None)` when [`fill`](Self::fill)
    /// must read more. A framing error comes after the good packages before it.
    pub(crate) fn next_package(&mut self) -> Result<Option<Package>, ReadError> {
        match self {
            Self::Tcp { buf, decoder, .. } => decoder.decode(buf).map_err(ReadError::Protocol),
            Self::Ws { pending, .. } => match pending.as_mut().and_then(Iterator::next) {
                Some(Ok(package)) => Ok(Some(package)),
                Some(Err(e)) => Err(ReadError::Protocol(e)),
                None => {
                    *pending = None;
                    Ok(None)
                }
            },
        }
    }

    /// Wait for more input (one socket read, or one WebSocket binary message); `Ok(false)`
    /// when the server closed the connection cleanly. Call it only once
    /// [`next_package`](Self::next_package) has returned `Ok(None)`.
    ///
    /// # Cancel safety
    /// Cancel safe: what was read stays in `self`.
    pub(crate) async fn fill(&mut self) -> Result<bool, ReadError> {
        match self {
            Self::Tcp { io, buf, .. } => {
                if buf.capacity() - buf.len() < MIN_READ {
                    // Reuses the block in place when no push still holds a part of it.
                    buf.reserve(READ_CHUNK);
                }
                match io.read_buf(buf).await {
                    Ok(0) if buf.is_empty() => Ok(false),
                    Ok(0) => Err(ReadError::Other(DisconnectReason::Protocol {
                        error: format!(
                            "the server closed the connection inside a package ({} bytes pending)",
                            buf.len()
                        ),
                    })),
                    Ok(_) => Ok(true),
                    Err(e) => Err(ReadError::Other(DisconnectReason::Io {
                        error: e.to_string(),
                    })),
                }
            }
            Self::Ws {
                ws,
                pending,
                max_package_size,
                starved,
            } => loop {
                if *starved {
                    // Wait for the socket itself (a read into the socket buffer, no zero-fill);
                    // what it brings (data, end, error) is then tungstenite's to read.
                    let filled = std::future::poll_fn(|cx| {
                        Pin::new(ws.get_mut()).poll_fill_buf(cx).map_ok(|_| ())
                    })
                    .await;
                    *starved = false;
                    if let Err(e) = filled {
                        return Err(ReadError::Other(DisconnectReason::Io {
                            error: tokio_tungstenite::tungstenite::Error::Io(e).to_string(),
                        }));
                    }
                }
                let next = std::future::poll_fn(|cx| {
                    let next = ws.poll_next_unpin(cx);
                    *starved = next.is_pending();
                    next
                })
                .await;
                match next {
                    Some(Ok(WsMessage::Binary(msg))) => {
                        if msg.is_empty() {
                            return Err(ReadError::Other(DisconnectReason::Protocol {
                                error: "empty WebSocket message".to_owned(),
                            }));
                        }
                        // A message holds whole packages; the good ones before a bad one
                        // are taken first, then the error ends the connection.
                        *pending = Some(FramePackages::new(msg, *max_package_size));
                        return Ok(true);
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(ReadError::Other(DisconnectReason::Protocol {
                            error: "text WebSocket message (pomelo sends binary messages)"
                                .to_owned(),
                        }));
                    }
                    Some(Ok(WsMessage::Close(_))) | None => return Ok(false),
                    Some(Ok(_)) => {} // ping / pong / raw frame: tungstenite answers pings
                    Some(Err(e)) => {
                        return Err(ReadError::Other(DisconnectReason::Io {
                            error: e.to_string(),
                        }));
                    }
                }
            },
        }
    }

    /// Write whole packages (each one already encoded) and flush.
    pub(crate) async fn send(&mut self, packages: &[Bytes]) -> Result<(), DisconnectReason> {
        let io_err = |e: &dyn fmt::Display| DisconnectReason::Io {
            error: e.to_string(),
        };
        match self {
            Self::Tcp { io, .. } => {
                if let [one] = packages {
                    io.write_all(one).await.map_err(|e| io_err(&e))?;
                } else {
                    let mut batch = BytesMut::with_capacity(packages.iter().map(Bytes::len).sum());
                    for p in packages {
                        batch.extend_from_slice(p);
                    }
                    io.write_all(&batch).await.map_err(|e| io_err(&e))?;
                }
                io.flush().await.map_err(|e| io_err(&e))
            }
            Self::Ws { ws, .. } => {
                for p in packages {
                    ws.feed(WsMessage::Binary(p.clone()))
                        .await
                        .map_err(|e| io_err(&e))?;
                }
                ws.flush().await.map_err(|e| io_err(&e))
            }
        }
    }

    /// Close the transport: TCP shutdown, or a WebSocket close handshake.
    pub(crate) async fn close(&mut self) {
        match self {
            Self::Tcp { io, .. } => {
                let _ = io.shutdown().await;
            }
            Self::Ws { ws, .. } => {
                let _ = SinkExt::close(ws.as_mut()).await;
                // Read until the server's close frame (or the end).
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
    }
}
