//! Test helpers: a scripted fake pomelo server on 127.0.0.1:0 over raw TCP or WebSocket.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shaddock_client::Transport;
use shaddock_protocol::message::Message;
use shaddock_protocol::package::{Package, PackageDecoder, PackageType, decode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Every await in the tests is bounded by this.
pub const T: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

pub const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::WebSocket];

/// The server side of one fake connection.
pub enum Peer {
    Tcp {
        stream: TcpStream,
        buf: BytesMut,
        decoder: PackageDecoder,
    },
    Ws {
        ws: Box<WebSocketStream<TcpStream>>,
        pending: VecDeque<Package>,
    },
}

impl Peer {
    /// The next package from the client; `None` when it closed.
    pub async fn recv(&mut self) -> Option<Package> {
        within(async {
            match self {
                Self::Tcp {
                    stream,
                    buf,
                    decoder,
                } => loop {
                    if let Some(p) = decoder.decode(buf).expect("client sent a bad package") {
                        return Some(p);
                    }
                    match stream.read_buf(buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                },
                Self::Ws { ws, pending } => loop {
                    if let Some(p) = pending.pop_front() {
                        return Some(p);
                    }
                    match ws.next().await {
                        Some(Ok(WsMessage::Binary(b))) => {
                            let packages = decode_frame(b, 1 << 20).expect("bad ws message");
                            // pomelo servers need exactly one package per message.
                            assert_eq!(packages.len(), 1, "one package per WebSocket message");
                            pending.extend(packages);
                        }
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                        Some(Ok(_)) => {}
                    }
                },
            }
        })
        .await
    }

    /// The next non-heartbeat package.
    pub async fn recv_no_heartbeat(&mut self) -> Option<Package> {
        loop {
            let p = self.recv().await?;
            if p.kind != PackageType::Heartbeat {
                return Some(p);
            }
        }
    }

    /// The next DATA message (heartbeats skipped).
    pub async fn recv_message(&mut self) -> Message {
        let p = self.recv_no_heartbeat().await.expect("client closed");
        assert_eq!(p.kind, PackageType::Data, "expected DATA, got {p:?}");
        Message::decode(p.body).expect("client sent a bad message")
    }

    /// Raw bytes: one write (TCP) or one binary message (WebSocket).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within(async {
            match self {
                Self::Tcp { stream, .. } => {
                    let _ = stream.write_all(bytes).await;
                }
                Self::Ws { ws, .. } => {
                    let _ = ws
                        .send(WsMessage::Binary(Bytes::copy_from_slice(bytes)))
                        .await;
                }
            }
        })
        .await
    }

    pub async fn send(&mut self, p: &Package) {
        self.send_raw(&p.to_bytes().unwrap()).await;
    }

    pub async fn send_message(&mut self, m: &Message) {
        self.send(&m.to_package().unwrap()).await;
    }

    /// Read the client's handshake, answer `reply`, read the ack. Returns the request JSON.
    pub async fn handshake(&mut self, reply: &str) -> Value {
        let p = self.recv().await.expect("handshake");
        assert_eq!(p.kind, PackageType::Handshake);
        let request: Value = serde_json::from_slice(&p.body).unwrap();
        self.send(&Package::new(
            PackageType::Handshake,
            Bytes::copy_from_slice(reply.as_bytes()),
        ))
        .await;
        let ack = self.recv().await.expect("ack");
        assert_eq!(ack.kind, PackageType::HandshakeAck);
        request
    }

    /// Read and discard everything until the client closes; returns how many heartbeats came.
    pub async fn drain(&mut self) -> usize {
        let mut heartbeats = 0;
        while let Some(p) = self.recv().await {
            if p.kind == PackageType::Heartbeat {
                heartbeats += 1;
            }
        }
        heartbeats
    }
}

/// Accept one connection on `listener` (bounded by [`T`]) as a [`Peer`] of `transport`.
pub async fn accept_peer(listener: &TcpListener, transport: Transport) -> Peer {
    let (stream, _) = within(listener.accept()).await.unwrap();
    match transport {
        Transport::Tcp => Peer::Tcp {
            stream,
            buf: BytesMut::new(),
            decoder: PackageDecoder::new(1 << 20),
        },
        _ => Peer::Ws {
            ws: Box::new(
                within(tokio_tungstenite::accept_async(stream))
                    .await
                    .unwrap(),
            ),
            pending: VecDeque::new(),
        },
    }
}

/// Accept one connection on 127.0.0.1:0 and run `script` on it.
pub async fn fake_server<F, Fut, R>(transport: Transport, script: F) -> (SocketAddr, JoinHandle<R>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send,
    R: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let peer = accept_peer(&listener, transport).await;
        script(peer).await
    });
    (addr, task)
}
