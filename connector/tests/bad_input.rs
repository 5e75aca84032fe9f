//! Hostile input on the client port, over raw TCP and WebSocket: garbage bytes, truncated
//! packages, oversized length headers, floods of tiny packages, data before the handshake,
//! half-open connections and handshake floods.
//!
//! For every kind the test asserts three things:
//! 1. the hostile connection is closed (a read returns EOF or a reset within a timeout);
//! 2. the reason was logged: a line of the connection's span (`peer=<its address>`) names
//!    it (logs are captured per test; `#[tokio::test]` runs every task on the test thread);
//! 3. a well-behaved client connected alongside ([`Alongside`]) keeps being served the whole
//!    time: it heartbeats and makes echo calls in a loop, and any failure fails the test.
//!
//! Timeouts of the frontend are short here (handshake 1 s) so the half-open cases end fast.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use shaddock_connector::{
    ConnectorConfig, Frontend, FrontendBuilder, HandlerError, RateLimit, Session,
};
use shaddock_protocol::message::{Message, MessageRoute};
use shaddock_protocol::package::{Package, PackageType};
use shaddock_test_support::logs::capture_logs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// The server under attack

/// Short handshake timeout, small packages, heartbeats every 1 s with a 2 s timeout.
fn hostile_config() -> ConnectorConfig {
    let mut c = test_config();
    c.handshake_timeout = Duration::from_millis(1000);
    c.heartbeat_interval = Some(Duration::from_secs(1));
    c.heartbeat_timeout = Some(Duration::from_secs(2));
    c.max_package_size = 4096;
    c.write_timeout = Duration::from_millis(500);
    c
}

/// `echo` answers its body; `count` (a notify) adds one to `counted`.
fn app(config: ConnectorConfig, counted: Arc<AtomicU64>) -> FrontendBuilder {
    Frontend::builder(config)
        .handler(
            "connector.entryHandler.echo",
            |_s: Session, v: Value| async move { Ok::<_, HandlerError>(v) },
        )
        .handler(
            "connector.entryHandler.count",
            move |_s: Session, _v: Value| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, HandlerError>(())
                }
            },
        )
}

async fn start_hostile(config: ConnectorConfig) -> (Server, Arc<AtomicU64>) {
    let counted = Arc::new(AtomicU64::new(0));
    (start(app(config, counted.clone())).await, counted)
}

// ---------------------------------------------------------------------------------------------
// The well-behaved client

/// A client that, until stopped, sends a HEARTBEAT and makes one echo call every 20 ms.
/// Its task panics on any failure (closed connection, wrong reply, 10 s without a reply).
struct Alongside {
    served: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Alongside {
    async fn start(ws: bool, addr: SocketAddr) -> Self {
        let mut c = Client::connect(ws, addr).await;
        c.handshake().await;
        let served = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let served = served.clone();
            let stop = stop.clone();
            async move {
                let mut id = 0u32;
                while !stop.is_cancelled() {
                    id += 1;
                    c.send(Package::empty(PackageType::Heartbeat)).await;
                    let r = c
                        .call(id, "connector.entryHandler.echo", &json!({"n": id}))
                        .await;
                    assert_eq!(r, json!({"n": id}), "well-behaved client got a wrong reply");
                    served.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        });
        let me = Self { served, stop, task };
        me.served_now().await;
        me
    }

    /// Waits until the client has been served two more times from now (so at least one
    /// whole request/response happened after this call).
    async fn served_now(&self) {
        let from = self.served.load(Ordering::Relaxed);
        let ok = tokio::time::timeout(T, async {
            while self.served.load(Ordering::Relaxed) < from + 2 {
                if self.task.is_finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok() && !self.task.is_finished(),
            "the well-behaved client stopped being served"
        );
    }

    /// Stops the loop; returns how many calls were served. Fails if the client failed.
    async fn finish(self) -> u64 {
        self.stop.cancel();
        within(self.task)
            .await
            .expect("the well-behaved client failed");
        self.served.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

/// Reads until EOF or an error (a reset), discarding what arrives; fails after 10 s or
/// 64 MiB. Returns the bytes read before the close.
async fn expect_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let r = tokio::time::timeout(T, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if got.len() < 4096 {
                        got.extend_from_slice(&buf[..n.min(4096)]);
                    }
                }
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the server did not close the hostile connection");
    got
}

/// Connects, writes `bytes` (a write error means the server already closed: fine), and
/// returns the stream and its local address (the server's `peer`).
async fn raw_send(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, SocketAddr) {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    let me = s.local_addr().unwrap();
    let _ = within(s.write_all(bytes)).await;
    (s, me)
}

/// Connects over raw TCP and completes the handshake as a pomelo client does (HANDSHAKE,
/// wait for the reply, ACK, wait for the first HEARTBEAT); returns the stream and its local
/// address. (An ACK written with the HANDSHAKE works too: the packages of one read are handled
/// in order, see `tcp_handshake_ack_and_request_in_one_write_are_all_handled`.)
async fn raw_established(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let (mut s, me) = raw_send(addr, &handshake_bytes()).await;
    let want = handshake_reply_len();
    let mut reply = vec![0u8; want];
    within(s.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply[0], 0x01, "handshake reply");
    within(s.write_all(&ack_bytes())).await.unwrap();
    let mut hb = [0u8; 4];
    within(s.read_exact(&mut hb)).await.unwrap();
    assert_eq!(hb, [0x03, 0, 0, 0], "heartbeat after the ack");
    (s, me)
}

/// A raw WebSocket upgrade by hand, so tests can write arbitrary frames afterwards.
async fn raw_ws(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    let me = s.local_addr().unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    within(s.write_all(req.as_bytes())).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within(s.read(&mut byte)).await.unwrap();
        assert_eq!(n, 1, "server closed during the upgrade");
        head.push(byte[0]);
        assert!(head.len() < 4096, "upgrade response too long");
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (s, me)
}

/// A client-to-server WebSocket frame (masked, FIN set) with `opcode` and `payload`.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Deterministic pseudo-random bytes (xorshift64).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn handshake_bytes() -> Bytes {
    Package::new(
        PackageType::Handshake,
        Bytes::from_static(br#"{"sys":{"type":"hostile","version":"0.1.0"},"user":{}}"#),
    )
    .to_bytes()
    .unwrap()
}

fn ack_bytes() -> Bytes {
    Package::empty(PackageType::HandshakeAck)
        .to_bytes()
        .unwrap()
}

fn package_bytes(kind: PackageType, body: &[u8]) -> Bytes {
    Package::new(kind, Bytes::copy_from_slice(body))
        .to_bytes()
        .unwrap()
}

fn notify_bytes(route: &str, body: &[u8]) -> Bytes {
    Message::notify(MessageRoute::name(route.to_owned()), body.to_vec())
        .to_package()
        .unwrap()
        .to_bytes()
        .unwrap()
}

fn request_bytes(id: u32, route: &str, body: &[u8]) -> Bytes {
    Message::request(id, MessageRoute::name(route.to_owned()), body.to_vec())
        .to_package()
        .unwrap()
        .to_bytes()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Garbage

#[tokio::test]
async fn garbage_bytes_over_tcp_close_with_a_logged_reason() {
    let (logs, _g) = capture_logs();
    let (server, _) = start_hostile(hostile_config()).await;
    let good = Alongside::start(false, server.addr).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff; 64], "invalid package type byte `0xff`"),
        (vec![0x00, 0, 0, 0], "invalid package type byte `0x00`"),
        (
            vec![0x06, 1, 2, 3, 4, 5],
            "invalid package type byte `0x06`",
        ),
        // HTTP that is not a WebSocket upgrade.
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "websocket upgrade failed",
        ),
        (
            b"POST /login HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            "websocket upgrade failed",
        ),
        // A request line that never ends: refused by the HTTP parser or the handshake timeout.
        (
            [b"GET /".as_slice(), &[b'a'; 20_000]].concat(),
            "websocket upgrade",
        ),
    ];
    for (bytes, why) in &cases {
        let (mut s, me) = raw_send(server.addr, bytes).await;
        expect_eof(&mut s).await;
        logs.expect(me, why).await;
        good.served_now().await;
    }
    // Seeded random garbage: whatever it parses as, it ends in a close with a reason.
    for seed in 1..=30u64 {
        let bytes = garbage(seed, 1 + (seed as usize * 37) % 700);
        let (mut s, me) = raw_send(server.addr, &bytes).await;
        expect_eof(&mut s).await;
        logs.expect(me, "closed").await;
    }
    good.served_now().await;
    assert!(good.finish().await > 0);
    within(async {
        while server.frontend.stats().active != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let st = server.frontend.stats();
    assert!(st.protocol_errors >= 5, "{st:?}");
    server.stop().await;
}

#[tokio::test]
async fn garbage_over_websocket_closes_with_a_logged_reason() {
    let (logs, _g) = capture_logs();
    let (server, _) = start_hostile(hostile_config()).await;
    let good = Alongside::start(true, server.addr).await;

    // Well-formed WebSocket frames carrying garbage packages.
    let packages: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff; 16], "invalid package type byte `0xff`"),
        (garbage(7, 300), "connection closed"),
        (vec![0x04, 0x00, 0x00, 0x08, 1, 2], "truncated package"),
    ];
    for (payload, why) in &packages {
        let (mut s, me) = raw_ws(server.addr).await;
        let _ = within(s.write_all(&ws_frame(0x2, payload))).await;
        expect_eof(&mut s).await;
        logs.expect(me, why).await;
        good.served_now().await;
    }

    // Malformed WebSocket framing.
    let mut unmasked = vec![0x82, 0x04];
    unmasked.extend_from_slice(&[1, 0, 0, 0]);
    let mut rsv = ws_frame(0x2, &[1, 0, 0, 0]);
    rsv[0] |= 0x40;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[0, 0, 0, 0]);
    let frames: Vec<(Vec<u8>, &str)> = vec![
        (unmasked, "read failed: websocket"),
        (rsv, "read failed: websocket"),
        (huge, "read failed: websocket"),
        (ws_frame(0x3, b"reserved opcode"), "read failed: websocket"),
        (ws_frame(0x1, b"text"), "unexpected websocket message: text"),
        (ws_frame(0x2, b""), "unexpected websocket message: empty"),
        // Random bytes as frames: an error, or a frame header waiting for a body that never
        // comes (then the handshake timeout).
        (garbage(11, 200), "connection closed"),
    ];
    for (bytes, why) in &frames {
        let (mut s, me) = raw_ws(server.addr).await;
        let _ = within(s.write_all(bytes)).await;
        expect_eof(&mut s).await;
        logs.expect(me, why).await;
        good.served_now().await;
    }
    good.served_now().await;
    assert!(good.finish().await > 0);
    let st = server.frontend.stats();
    assert!(st.protocol_errors >= 10, "{st:?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Truncated packages and oversized length headers

#[tokio::test]
async fn truncated_packages_are_closed_by_the_timeouts() {
    let (logs, _g) = capture_logs();
    let (server, _) = start_hostile(hostile_config()).await;
    let good = Alongside::start(false, server.addr).await;

    // Before the handshake: half a header, a header and half a body, a handshake missing its
    // last byte. Each waits for bytes that never come; the handshake timeout closes them.
    let hs = handshake_bytes();
    let cases: Vec<Vec<u8>> = vec![
        vec![0x01, 0x00],
        vec![0x01, 0x00, 0x00, 100, b'{', b'"'],
        hs[..hs.len() - 1].to_vec(),
    ];
    let mut hostile = Vec::new();
    for bytes in &cases {
        hostile.push(raw_send(server.addr, bytes).await);
    }
    for (s, me) in &mut hostile {
        expect_eof(s).await;
        logs.expect(*me, "handshake timeout").await;
    }
    good.served_now().await;

    // After the handshake: half a DATA package, then silence. The heartbeat timeout closes it.
    let req = request_bytes(1, "connector.entryHandler.echo", b"{}");
    let (mut s, me) = raw_established(server.addr).await;
    within(s.write_all(&req[..req.len() / 2])).await.unwrap();
    let got = expect_eof(&mut s).await;
    // Never a response to the half request.
    assert!(!got.contains(&0x04), "a DATA package was sent back");
    logs.expect(me, "heartbeat timeout").await;

    // WebSocket: a message that ends inside a package closes at once.
    let (mut s, me) = raw_ws(server.addr).await;
    let _ = within(s.write_all(&ws_frame(0x2, &hs[..hs.len() - 3]))).await;
    expect_eof(&mut s).await;
    logs.expect(me, "truncated package body").await;
    // WebSocket: half a frame header, then silence.
    let (mut s, me) = raw_ws(server.addr).await;
    let _ = within(s.write_all(&[0x82])).await;
    expect_eof(&mut s).await;
    logs.expect(me, "handshake timeout").await;

    good.served_now().await;
    assert!(good.finish().await > 0);
    let st = server.frontend.stats();
    assert_eq!(st.handshake_timeouts, 4, "{st:?}");
    assert_eq!(st.heartbeat_timeouts, 1, "{st:?}");
    server.stop().await;
}

#[tokio::test]
async fn oversized_length_headers_close_before_the_body_is_read() {
    let (logs, _g) = capture_logs();
    let (server, _) = start_hostile(hostile_config()).await;
    let good = Alongside::start(true, server.addr).await;

    // TCP: the header alone is enough to refuse; no body is ever sent.
    for header in [[0x01u8, 0xff, 0xff, 0xff], [0x04, 0x00, 0x10, 0x01]] {
        let (mut s, me) = raw_send(server.addr, &header).await;
        expect_eof(&mut s).await;
        logs.expect(me, "exceeds the limit of 4096 bytes").await;
        good.served_now().await;
    }
    // TCP, after a complete handshake.
    let (mut s, me) = raw_established(server.addr).await;
    let _ = within(s.write_all(&[0x04, 0x7f, 0x00, 0x00])).await;
    expect_eof(&mut s).await;
    logs.expect(me, "exceeds the limit of 4096 bytes").await;

    // WebSocket: a package header over the limit inside a small message.
    let (mut s, me) = raw_ws(server.addr).await;
    let _ = within(s.write_all(&ws_frame(0x2, &[0x01, 0x01, 0x00, 0x00, b'{']))).await;
    expect_eof(&mut s).await;
    logs.expect(me, "exceeds the limit of 4096 bytes").await;
    // WebSocket: a message over the limit (max message = max package + 4 bytes).
    let (mut s, me) = raw_ws(server.addr).await;
    let mut big = vec![0x04, 0x00, 0x20, 0x00];
    big.resize(8196, b'x');
    let _ = within(s.write_all(&ws_frame(0x2, &big))).await;
    expect_eof(&mut s).await;
    logs.expect(me, "read failed: websocket").await;
    // WebSocket: a frame header declaring 16 MiB, body never sent.
    let (mut s, me) = raw_ws(server.addr).await;
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(16u64 << 20).to_be_bytes());
    hdr.extend_from_slice(&[1, 2, 3, 4]);
    let _ = within(s.write_all(&hdr)).await;
    expect_eof(&mut s).await;
    logs.expect(me, "read failed: websocket").await;

    good.served_now().await;
    assert!(good.finish().await > 0);
    assert!(server.frontend.stats().protocol_errors >= 6);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Data before the handshake

#[tokio::test]
async fn data_before_the_handshake_is_ignored_until_the_handshake_timeout() {
    let (logs, _g) = capture_logs();
    let (server, counted) = start_hostile(hostile_config()).await;
    let good = Alongside::start(false, server.addr).await;

    // 2000 notifies and requests, never a handshake: none is handled, none answered.
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend_from_slice(&notify_bytes("connector.entryHandler.count", b"{}"));
        flood.extend_from_slice(&request_bytes(i + 1, "connector.entryHandler.echo", b"{}"));
    }
    let (mut s, me) = raw_send(server.addr, &flood).await;
    let got = expect_eof(&mut s).await;
    assert!(
        got.is_empty(),
        "server answered data sent before the handshake"
    );
    logs.expect(me, "handshake timeout").await;

    // WebSocket: the same, as one message per package.
    let mut ws = Client::ws(server.addr).await;
    for i in 0..50u32 {
        ws.send_raw(&request_bytes(i + 1, "connector.entryHandler.echo", b"{}"))
            .await;
    }
    assert!(ws.recv().await.is_none(), "server answered early data");

    // Handshake then data before the ack: also ignored.
    let mut bytes = handshake_bytes().to_vec();
    bytes.extend_from_slice(&request_bytes(1, "connector.entryHandler.echo", b"{}"));
    let (mut s, me) = raw_send(server.addr, &bytes).await;
    let got = expect_eof(&mut s).await;
    assert!(
        !got.contains(&0x04),
        "server answered data sent before the ack"
    );
    logs.expect(me, "handshake timeout").await;

    assert_eq!(counted.load(Ordering::Relaxed), 0);
    good.served_now().await;
    assert!(good.finish().await > 0);
    assert_eq!(server.frontend.stats().handshake_timeouts, 3);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Half-open connections

#[tokio::test]
async fn half_open_connections_are_closed_by_the_handshake_timeout() {
    let (logs, _g) = capture_logs();
    let (server, _) = start_hostile(hostile_config()).await;
    let good = Alongside::start(true, server.addr).await;

    // Ten of each, all open at once: silent, a prefix of an HTTP method (undecided sniff),
    // half a package header, an upgraded WebSocket that says nothing, a handshake never acked.
    let mut hostile = Vec::new();
    for _ in 0..10 {
        hostile.push(raw_send(server.addr, b"").await);
        hostile.push(raw_send(server.addr, b"GE").await);
        hostile.push(raw_send(server.addr, &[0x01, 0x00]).await);
        hostile.push(raw_ws(server.addr).await);
        hostile.push(raw_send(server.addr, &handshake_bytes()).await);
    }
    good.served_now().await;
    for (s, me) in &mut hostile {
        expect_eof(s).await;
        let _ = me;
    }
    for (i, (_, me)) in hostile.iter().enumerate() {
        let why = match i % 5 {
            0 | 1 => "no bytes to sniff before the handshake timeout",
            _ => "handshake timeout",
        };
        logs.expect(*me, why).await;
    }
    good.served_now().await;
    assert!(good.finish().await > 0);
    let st = server.frontend.stats();
    assert_eq!(st.handshake_timeouts, 50, "{st:?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Handshake floods

/// One flood client: connect, handshake, ack, one echo call, close. `Ok(true)` = served,
/// `Ok(false)` = closed by the server (refused); never hangs (10 s per step).
async fn flood_client(ws: bool, addr: SocketAddr, id: u32) -> bool {
    if ws {
        let Ok(Ok((mut c, _))) =
            tokio::time::timeout(T, tokio_tungstenite::connect_async(format!("ws://{addr}/")))
                .await
        else {
            return false;
        };
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as W;
        if c.send(W::Binary(handshake_bytes())).await.is_err() {
            return false;
        }
        loop {
            match within(c.next()).await {
                Some(Ok(W::Binary(b))) => {
                    let ps = shaddock_protocol::package::decode_frame(b, 1 << 20).unwrap();
                    if ps.iter().any(|p| p.kind == PackageType::Data) {
                        return true;
                    }
                    if ps.iter().any(|p| p.kind == PackageType::Handshake) {
                        let mut out = ack_bytes().to_vec();
                        out.extend_from_slice(&request_bytes(
                            id,
                            "connector.entryHandler.echo",
                            br#"{"x":1}"#,
                        ));
                        if c.send(W::Binary(out.into())).await.is_err() {
                            return false;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    } else {
        let Ok(Ok(mut s)) = tokio::time::timeout(T, TcpStream::connect(addr)).await else {
            return false;
        };
        if within(s.write_all(&handshake_bytes())).await.is_err() {
            return false;
        }
        let mut buf = bytes::BytesMut::new();
        let mut dec = shaddock_protocol::package::PackageDecoder::new(1 << 20);
        loop {
            while let Ok(Some(p)) = dec.decode(&mut buf) {
                match p.kind {
                    PackageType::Data => return true,
                    PackageType::Handshake => {
                        let mut out = ack_bytes().to_vec();
                        out.extend_from_slice(&request_bytes(
                            id,
                            "connector.entryHandler.echo",
                            br#"{"x":1}"#,
                        ));
                        if within(s.write_all(&out)).await.is_err() {
                            return false;
                        }
                    }
                    _ => {}
                }
            }
            match within(s.read_buf(&mut buf)).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }
}

/// A handshake timeout that a loaded machine meets even with hundreds of handshakes at once.
fn flood_config() -> ConnectorConfig {
    let mut c = hostile_config();
    c.handshake_timeout = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn handshake_flood_is_served_and_the_others_carry_on() {
    let (_logs, _g) = capture_logs();
    let (server, _) = start_hostile(flood_config()).await;
    let good = Alongside::start(false, server.addr).await;
    const N: u32 = 300;
    let mut set = JoinSet::new();
    for i in 0..N {
        set.spawn(flood_client(i % 3 == 0, server.addr, i + 1));
    }
    let mut served = 0;
    while let Some(r) = within(set.join_next()).await {
        served += u32::from(r.expect("flood client panicked"));
    }
    assert_eq!(served, N, "every flood client is served");
    good.served_now().await;
    assert!(good.finish().await > 0);
    within(async {
        while server.frontend.stats().active != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(server.frontend.stats().accepted, u64::from(N) + 1);
    server.stop().await;
}

#[tokio::test]
async fn handshake_flood_over_max_connections_is_refused_cleanly() {
    let (logs, _g) = capture_logs();
    let mut cfg = flood_config();
    cfg.max_connections = 40;
    let (server, _) = start_hostile(cfg).await;
    // Connected first, so it holds one of the 40 slots through the flood.
    let good = Alongside::start(false, server.addr).await;
    const N: u32 = 300;
    let mut set = JoinSet::new();
    for i in 0..N {
        set.spawn(flood_client(i % 3 == 0, server.addr, i + 1));
    }
    let (mut served, mut refused) = (0u32, 0u32);
    while let Some(r) = within(set.join_next()).await {
        if r.expect("flood client panicked") {
            served += 1;
        } else {
            refused += 1;
        }
    }
    assert_eq!(served + refused, N);
    assert!(served > 0, "nobody got through");
    let st = server.frontend.stats();
    assert!(st.refused > 0, "the limit was never reached: {st:?}");
    assert_eq!(u64::from(refused), st.refused, "{st:?}");
    assert!(
        logs.text()
            .contains("connection refused: max connections reached")
    );
    good.served_now().await;
    assert!(good.finish().await > 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Floods of tiny packages

/// The inbound limit: a flood over TCP and over WebSocket is kicked with a KICK `rate limit
/// exceeded` once the bucket is empty, and the packages beyond it are not handled: every one
/// of a connection's packages (handshake and ack included) takes a token, the bucket starts
/// full (`burst`) and refills at `per_second`, and the packages after the one refused are
/// dropped unread by any handler.
#[tokio::test]
async fn tiny_package_flood_with_rate_limit_is_kicked_and_counted() {
    let (logs, _g) = capture_logs();
    let mut cfg = hostile_config();
    // The well-behaved client sends ~2 packages per 20 ms (100/s); a flood sends hundreds
    // at once.
    const RATE: u32 = 200;
    const BURST: u32 = 100;
    cfg.rate_limit = Some(RateLimit {
        per_second: RATE,
        burst: BURST,
    });
    // Every notify the limiter lets through gets a handler slot at once (parked ones would be
    // dropped by the kick, making the count depend on scheduling).
    cfg.max_in_flight = 4 * BURST as usize;
    let (server, counted) = start_hostile(cfg).await;
    let good = Alongside::start(false, server.addr).await;

    // TCP: 20 000 heartbeats (80 KB) in one go, more than one read: the server closes with
    // input unread, and the reset that causes may overtake the KICK, so the counters and the
    // log are the proof here; the floods below fit the socket and must see their KICK.
    let hb = package_bytes(PackageType::Heartbeat, b"");
    let bytes: Vec<u8> = hb.iter().copied().cycle().take(4 * 20_000).collect();
    let (mut s, me) = raw_established(server.addr).await;
    let _ = within(s.write_all(&bytes)).await;
    expect_eof(&mut s).await;
    logs.expect(me, "inbound rate limit exceeded").await;
    let st = server.frontend.stats();
    assert_eq!((st.rate_limited, st.kicked), (1, 1), "{st:?}");
    good.served_now().await;

    // 3 × BURST notifies in one write (TCP) or back to back (WebSocket, one message each),
    // right after the handshake.
    const FLOOD: u32 = 3 * BURST;
    let note = notify_bytes("connector.entryHandler.count", b"{}");
    let mut most = 0u64;
    for ws in [false, true] {
        let started = std::time::Instant::now();
        let mut c = Client::connect(ws, server.addr).await;
        c.handshake().await;
        match &mut c {
            Client::Tcp { stream, .. } => {
                let all: Vec<u8> = note
                    .iter()
                    .copied()
                    .cycle()
                    .take(note.len() * FLOOD as usize)
                    .collect();
                within(stream.write_all(&all)).await.unwrap();
            }
            Client::Ws { ws, .. } => {
                use futures_util::SinkExt;
                use tokio_tungstenite::tungstenite::Message as W;
                for _ in 0..FLOOD {
                    within(ws.feed(W::Binary(note.clone()))).await.unwrap();
                }
                within(ws.flush()).await.unwrap();
            }
        }
        let kick = within(c.recv_no_heartbeat())
            .await
            .unwrap_or_else(|| panic!("ws={ws}: closed without a KICK"));
        assert_eq!(kick.kind, PackageType::Kick, "ws={ws}: {kick:?}");
        assert_eq!(&kick.body[..], br#"{"reason":"rate limit exceeded"}"#);
        c.expect_closed().await;
        // Handshake and ack took 2 tokens; at most the burst plus the refill since the
        // connection opened were left for notifies.
        most +=
            u64::from(BURST) + (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u64;
    }
    let st = server.frontend.stats();
    assert_eq!((st.rate_limited, st.kicked), (3, 3), "{st:?}");

    good.served_now().await;
    assert!(good.finish().await > 0);
    // Every handler task has ended once `serve` returns.
    server.stop().await;
    let handled = counted.load(Ordering::Relaxed);
    let least = 2 * u64::from(BURST - 2);
    eprintln!(
        "rate limit: {handled} of {} notifies handled ({least}..={most} allowed)",
        2 * FLOOD
    );
    assert!(
        (least..=most).contains(&handled),
        "{handled} notifies handled; the limit allows {least}..={most} of {}",
        2 * FLOOD
    );
}

/// What the connector reads from a TCP socket at once (its read buffer).
const TCP_READ: usize = 64 * 1024;

/// The flood's memory is bounded by the connection's own queues, checked on this test's
/// frontend (not the test process's RSS, which other tests share): messages are parked for a
/// handler slot only up to one read's worth (`peak_parked`), none is lost, and nothing is
/// kicked or counted as an error.
#[tokio::test]
async fn tiny_package_flood_without_rate_limit_is_served_in_bounded_memory() {
    let (logs, _g) = capture_logs();
    let (server, counted) = start_hostile(hostile_config()).await;
    let good = Alongside::start(true, server.addr).await;

    // 100 000 notifies as fast as the socket takes them, then one request: every notify is
    // handled (none lost), the request is answered, the connection stays.
    const N: u64 = 100_000;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    let note = notify_bytes("connector.entryHandler.count", b"{}");
    // Each chunk also carries a HEARTBEAT, so the 2 s heartbeat timeout does not end a slow run.
    let mut chunk = package_bytes(PackageType::Heartbeat, b"").to_vec();
    for _ in 0..1000 {
        chunk.extend_from_slice(&note);
    }
    for _ in 0..N / 1000 {
        c.send_raw(&chunk).await;
    }
    let r = c
        .call(1, "connector.entryHandler.echo", &json!({"after": "flood"}))
        .await;
    assert_eq!(r, json!({"after": "flood"}));
    within(async {
        while counted.load(Ordering::Relaxed) < N {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(counted.load(Ordering::Relaxed), N);
    // Parked messages (beyond the `max_in_flight` being handled) never exceed what one read
    // holds: the connection stops reading while it has parked messages. Without that
    // backpressure the whole flood piles up here.
    let st = server.frontend.stats();
    // One read is at most TCP_READ bytes after a partial package (shorter than a notify) left
    // from the read before.
    let one_read = (TCP_READ + note.len()) / note.len();
    eprintln!("flood: peak parked {} (bound {one_read})", st.peak_parked);
    assert!(
        st.peak_parked > 0,
        "the flood never filled the handler slots: {st:?}"
    );
    assert!(
        st.peak_parked <= one_read as u64,
        "{} messages parked at once, more than one read ({one_read}): {st:?}",
        st.peak_parked
    );
    assert_eq!(
        (
            st.kicked,
            st.protocol_errors,
            st.slow_consumers,
            st.rate_limited
        ),
        (0, 0, 0, 0),
        "{st:?}"
    );
    good.served_now().await;

    // 200 000 heartbeats, read concurrently: every one is echoed.
    const H: usize = 200_000;
    let (mut rd, mut wr) = raw_established(server.addr).await.0.into_split();
    let reader = tokio::spawn(async move {
        // H heartbeats back, 4 bytes each.
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let want = H * 4;
        while total < want {
            match within(rd.read(&mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total == want
    });
    let hb = package_bytes(PackageType::Heartbeat, b"");
    let chunk: Vec<u8> = hb.iter().copied().cycle().take(4 * 10_000).collect();
    for _ in 0..H / 10_000 {
        within(wr.write_all(&chunk)).await.unwrap();
    }
    assert!(
        within(reader).await.unwrap(),
        "not every heartbeat was echoed"
    );
    let st = server.frontend.stats();
    assert_eq!(
        (
            st.kicked,
            st.protocol_errors,
            st.slow_consumers,
            st.heartbeat_timeouts
        ),
        (0, 0, 0, 0),
        "{st:?}"
    );
    drop(wr);

    // 16 MiB of heartbeats while never reading: the echoes back up, the write times out,
    // the server closes. The writer stops at the first error (the close).
    let (mut s, me) = raw_established(server.addr).await;
    let block: Vec<u8> = hb.iter().copied().cycle().take(1 << 20).collect();
    for _ in 0..16 {
        match tokio::time::timeout(T, s.write_all(&block)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("server neither read nor closed for 10 s"),
        }
    }
    logs.expect(me, "write time").await;
    expect_eof(&mut s).await;

    good.served_now().await;
    assert!(good.finish().await > 0);
    server.stop().await;
}

/// Bytes of the server's handshake reply package under [`hostile_config`].
fn handshake_reply_len() -> usize {
    4 + json!({"code": 200, "sys": {"heartbeat": 1}})
        .to_string()
        .len()
}

#[tokio::test]
async fn a_request_flood_that_never_reads_is_kicked_as_a_slow_consumer() {
    let (logs, _g) = capture_logs();
    let mut cfg = hostile_config();
    cfg.queue_capacity = 16;
    let (server, _) = start_hostile(cfg).await;
    let good = Alongside::start(false, server.addr).await;
    // Requests whose responses are big: the client never reads them.
    let body = json!({"pad": "y".repeat(3000)}).to_string();
    let (mut s, me) = raw_established(server.addr).await;
    let mut chunk = Vec::new();
    for i in 0..100u32 {
        chunk.extend_from_slice(&request_bytes(
            i + 1,
            "connector.entryHandler.echo",
            body.as_bytes(),
        ));
    }
    let mut closed = false;
    for _ in 0..100 {
        match tokio::time::timeout(T, s.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => panic!("server neither read nor closed for 10 s"),
        }
        if logs.has(me, "connection closed") {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "10 000 unread requests of 3 KB did not end the connection"
    );
    expect_eof(&mut s).await;
    logs.expect(me, "connection closed").await;
    let st = server.frontend.stats();
    assert!(
        st.slow_consumers + u64::from(logs.has(me, "write timed out")) >= 1,
        "{st:?}"
    );
    good.served_now().await;
    assert!(good.finish().await > 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The `sniff` fuzz target's body over its seeds (stable CI runs it; `fuzz/` needs nightly)

mod sniff_fuzz {
    include!("../../fuzz/fuzz_targets/sniff_body.rs");
}

#[test]
fn sniff_fuzz_body_over_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sniff");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/sniff exists") {
        let path = entry.expect("readable corpus entry").path();
        let is_seed = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"));
        if is_seed {
            sniff_fuzz::sniff_body(&std::fs::read(&path).expect("readable seed"));
            ran += 1;
        }
    }
    assert!(
        ran >= 20,
        "expected the committed seeds in {}",
        dir.display()
    );
    // And every input of up to two bytes.
    for a in 0..=255u8 {
        sniff_fuzz::sniff_body(&[a]);
        for b in 0..=255u8 {
            sniff_fuzz::sniff_body(&[a, b]);
        }
    }
}
