//! A tiny pomelo test client over raw TCP or WebSocket, built on shaddock-protocol.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shaddock_connector::{ConnectorConfig, Frontend, FrontendBuilder};
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageDecoder, PackageType, decode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Every await in the tests goes through this.
pub const T: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// A running frontend; cancelled (and awaited) on drop via `stop`.
pub struct Server {
    pub addr: SocketAddr,
    pub frontend: Frontend,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.unwrap().unwrap();
    }
}

pub fn test_config() -> ConnectorConfig {
    let mut c = ConnectorConfig::default();
    c.frontend_id = "connector-1".into();
    c.heartbeat_interval = Some(Duration::from_secs(1));
    // The test client sends heartbeats only where a test says so; tests of the heartbeat
    // timeout set their own.
    c.heartbeat_timeout = Some(Duration::from_secs(30));
    c.handshake_timeout = Duration::from_secs(5);
    c
}

pub async fn start(builder: FrontendBuilder) -> Server {
    let frontend = builder.build().expect("build");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let f = frontend.clone();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { f.serve(listener, s).await });
    Server {
        addr,
        frontend,
        shutdown,
        task,
    }
}

pub enum Client {
    Tcp {
        stream: TcpStream,
        buf: BytesMut,
        decoder: PackageDecoder,
        pending: VecDeque<Package>,
    },
    Ws {
        ws: Box<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        pending: VecDeque<Package>,
    },
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Self {
        let stream = within(TcpStream::connect(addr)).await.unwrap();
        Self::Tcp {
            stream,
            buf: BytesMut::new(),
            decoder: PackageDecoder::new(16 << 20),
            pending: VecDeque::new(),
        }
    }

    pub async fn ws(addr: SocketAddr) -> Self {
        let (ws, _) = within(tokio_tungstenite::connect_async(format!("ws://{addr}/")))
            .await
            .unwrap();
        Self::Ws {
            ws: Box::new(ws),
            pending: VecDeque::new(),
        }
    }

    pub async fn connect(ws: bool, addr: SocketAddr) -> Self {
        if ws {
            Self::ws(addr).await
        } else {
            Self::tcp(addr).await
        }
    }

    /// The client's own address (the server's `peer` for it).
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tcp { stream, .. } => stream.local_addr().unwrap(),
            Self::Ws { ws, .. } => match ws.get_ref() {
                MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
                _ => unreachable!("plain ws:// only"),
            },
        }
    }

    /// Sends raw bytes (one write / one binary message).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            Self::Tcp { stream, .. } => within(stream.write_all(bytes)).await.unwrap(),
            Self::Ws { ws, .. } => {
                within(ws.send(WsMessage::Binary(Bytes::copy_from_slice(bytes))))
                    .await
                    .unwrap()
            }
        }
    }

    pub async fn send(&mut self, p: Package) {
        let b = p.to_bytes().unwrap();
        self.send_raw(&b).await;
    }

    /// The next package, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Package> {
        within(self.recv_inner()).await
    }

    async fn recv_inner(&mut self) -> Option<Package> {
        match self {
            Self::Tcp {
                stream,
                buf,
                decoder,
                pending,
            } => loop {
                if let Some(p) = pending.pop_front() {
                    return Some(p);
                }
                if let Some(p) = decoder.decode(buf).unwrap() {
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
                        pending.extend(decode_frame(b, 16 << 20).unwrap())
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// WebSocket only: the packages of the next binary message (heartbeats included).
    pub async fn recv_ws_message(&mut self) -> Vec<Package> {
        let Self::Ws { ws, pending } = self else {
            panic!("not a websocket client");
        };
        assert!(pending.is_empty());
        loop {
            match within(ws.next()).await {
                Some(Ok(WsMessage::Binary(b))) => return decode_frame(b, 16 << 20).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// The next package that is not a heartbeat.
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
        let p = self.recv_no_heartbeat().await.expect("connection closed");
        assert_eq!(p.kind, PackageType::Data, "expected DATA, got {p:?}");
        Message::decode(p.body).unwrap()
    }

    /// Asserts the server closes the connection (packages before the close are skipped).
    pub async fn expect_closed(&mut self) {
        while let Some(p) = self.recv().await {
            let _ = p;
        }
    }

    /// Handshake; returns the reply JSON. Does not ack.
    pub async fn handshake_only(&mut self, body: &str) -> Value {
        self.send(Package::new(
            PackageType::Handshake,
            Bytes::copy_from_slice(body.as_bytes()),
        ))
        .await;
        let p = self.recv().await.expect("handshake reply");
        assert_eq!(p.kind, PackageType::Handshake);
        serde_json::from_slice(&p.body).unwrap()
    }

    /// Full handshake + ack, and the server's first heartbeat.
    pub async fn handshake(&mut self) -> Value {
        let reply = self
            .handshake_only(r#"{"sys":{"type":"rust-test","version":"0.1.0","rsa":{},"protoVersion":0},"user":{}}"#)
            .await;
        assert_eq!(reply["code"], 200, "reply {reply}");
        self.send(Package::empty(PackageType::HandshakeAck)).await;
        reply
    }

    pub async fn request(&mut self, id: u32, route: &str, body: &Value) {
        self.send_message(Message::request(
            id,
            MessageRoute::name(route.to_owned()),
            serde_json::to_vec(body).unwrap(),
        ))
        .await;
    }

    pub async fn notify(&mut self, route: &str, body: &Value) {
        self.send_message(Message::notify(
            MessageRoute::name(route.to_owned()),
            serde_json::to_vec(body).unwrap(),
        ))
        .await;
    }

    pub async fn send_message(&mut self, m: Message) {
        self.send(m.to_package().unwrap()).await;
    }

    /// Sends a request and returns the response body as JSON.
    pub async fn call(&mut self, id: u32, route: &str, body: &Value) -> Value {
        self.request(id, route, body).await;
        let m = self.recv_message().await;
        assert_eq!(m.kind, MessageType::Response);
        assert_eq!(m.id, id);
        serde_json::from_slice(&m.body).unwrap()
    }
}

/// Words of server internals a client must never see in an error message: RPC service and
/// method names, Rust type names and paths, debug formatting.
const INTERNAL_WORDS: &[&str] = &[
    "rpc",
    "RPC",
    "msgRemote",
    "sessionRemote",
    "forward_message",
    "forwardMessage",
    "sys.",
    "service `",
    "method `",
    "struct ",
    "enum ",
    "::",
    "Error",
    "Some(",
    "127.0.0.1",
];

/// Asserts an error response body is `{"code": code, "msg": …}` with a message that names
/// none of [`INTERNAL_WORDS`]; returns the message.
pub fn assert_client_error(body: &Value, code: i64) -> String {
    assert_eq!(body["code"], code, "{body}");
    let msg = body["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no msg in {body}"));
    assert!(!msg.is_empty(), "{body}");
    for w in INTERNAL_WORDS {
        assert!(
            !msg.contains(w),
            "error message shows internals ({w:?}): {msg}"
        );
    }
    msg.to_owned()
}
