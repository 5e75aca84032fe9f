//! Hostile input on the RPC port, beyond what `rpc.rs` covers: seeded garbage, every
//! truncation of a valid frame, length prefixes at and past the limit, inconsistent inner
//! lengths, half-open connections, a connection flood, a flood of tiny frames, and a peer that
//! sends requests but never reads the replies.
//!
//! Each hostile connection must end (EOF or a reset within a timeout) with a log line of its
//! `rpc_conn{peer=…}` span, while an ordinary [`RpcClient`] keeps being served. Half-open
//! connections are shown not to block anyone and to be closed by shutdown (the idle timeout,
//! 60 s by default, is tested in `hardening.rs`).

use bytes::{Bytes, BytesMut};
use shaddock_rpc::{
    Frame, Name, Namespace, Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcServer,
    ServerInfo, Target, remote,
};
use shaddock_test_support::logs::capture_logs;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);
const MAX: usize = 1024;

/// Every await goes through this, so a bug fails instead of hanging.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

remote! {
    /// The remote under attack.
    pub mod echo: user "echoRemote" {
        /// Returns its argument.
        fn echo(Raw) -> Raw;
        /// Counts (used as a notify).
        fn count(Raw) -> ();
    }
}

struct EchoImpl(Arc<AtomicU64>);

impl echo::Remote for EchoImpl {
    async fn echo(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
    async fn count(&self, _a: Raw) -> Result<(), RemoteError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Peer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    counted: Arc<AtomicU64>,
    rpc: RpcClient,
}

impl Peer {
    async fn start(config: RpcConfig) -> Self {
        let counted = Arc::new(AtomicU64::new(0));
        let mut registry = Registry::new();
        registry
            .add(echo::Server::new(EchoImpl(counted.clone())))
            .unwrap();
        let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            RpcServer::new(registry, config.clone()).serve(listener, shutdown.clone()),
        );
        let rpc = RpcClient::new(config);
        rpc.directory()
            .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", addr.port()));
        Self {
            addr,
            shutdown,
            task,
            counted,
            rpc,
        }
    }

    /// An ordinary call through the client: proves the server still serves others.
    async fn served(&self, n: u8) {
        let stub = echo::Client::new(&self.rpc);
        let r = t(stub.echo(Target::server("echo-1"), Raw(Bytes::from(vec![n; 3]))))
            .await
            .expect("an ordinary call failed");
        assert_eq!(&r.0[..], &[n; 3]);
    }

    /// Cancels and waits (bounded) for `serve` to return.
    async fn stop(self) {
        self.shutdown.cancel();
        t(self.task).await.unwrap().unwrap();
    }
}

fn config() -> RpcConfig {
    let mut c = RpcConfig::default();
    c.max_frame_size = MAX;
    c.backoff_base = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    c
}

/// What the server logs when a connection ends for any reason.
const ENDED: &[&str] = &[
    "bad frame",
    "read failed",
    "peer closed the connection",
    "rpc connection closed",
];

// ---------------------------------------------------------------------------------------------
// Raw sockets

async fn raw(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let s = t(TcpStream::connect(addr)).await.unwrap();
    let me = s.local_addr().unwrap();
    (s, me)
}

/// Reads until EOF or a reset (fails after 10 s); returns the bytes read.
async fn expect_eof(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let r = tokio::time::timeout(LIMIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the server did not close the hostile connection");
    total
}

fn name(s: &'static str) -> Name {
    Name::from_static(s).unwrap()
}

fn request(id: u32, method: &'static str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    Frame::Request {
        id,
        namespace: Namespace::User,
        service: name("echoRemote"),
        method: name(method),
        payload: Bytes::copy_from_slice(payload),
    }
    .encode(&mut out, 1 << 20)
    .unwrap();
    out.freeze()
}

fn notify(method: &'static str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    Frame::Notify {
        namespace: Namespace::User,
        service: name("echoRemote"),
        method: name(method),
        payload: Bytes::copy_from_slice(payload),
    }
    .encode(&mut out, 1 << 20)
    .unwrap();
    out.freeze()
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

/// Reads whole frames from `s` until `n` responses arrived; returns their ids.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<u32> {
    let mut buf = BytesMut::new();
    let mut ids = Vec::new();
    while ids.len() < n {
        while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
            match f {
                Frame::Response { id, result: Ok(_) } => ids.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        if ids.len() >= n {
            break;
        }
        let got = t(s.read_buf(&mut buf)).await.unwrap();
        assert!(got > 0, "closed after {} of {n} responses", ids.len());
    }
    ids
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn garbage_and_every_truncation_end_only_that_connection() {
    let (logs, _g) = capture_logs();
    let peer = Peer::start(config()).await;
    peer.served(0).await;

    // Seeded garbage, then the write side closed: an error, or EOF inside a frame.
    for seed in 1..=40u64 {
        let (mut s, me) = raw(peer.addr).await;
        let bytes = garbage(seed, 1 + (seed as usize * 53) % 900);
        let _ = t(s.write_all(&bytes)).await;
        let _ = t(s.shutdown()).await;
        expect_eof(&mut s).await;
        logs.expect_any(me, ENDED).await;
    }
    peer.served(1).await;

    // Every strict prefix of a valid request, then EOF: never a response, a logged close.
    let whole = request(9, "echo", b"hello");
    for cut in 1..whole.len() {
        let (mut s, me) = raw(peer.addr).await;
        t(s.write_all(&whole[..cut])).await.unwrap();
        t(s.shutdown()).await.unwrap();
        assert_eq!(expect_eof(&mut s).await, 0, "answered a truncated frame");
        logs.expect(me, "bytes remaining on stream").await;
    }
    // And the whole of it works on the same kind of connection.
    let (mut s, _) = raw(peer.addr).await;
    t(s.write_all(&whole)).await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec![9]);
    peer.served(2).await;
    peer.stop().await;
}

#[tokio::test]
async fn length_prefixes_and_inner_lengths_that_lie() {
    let (logs, _g) = capture_logs();
    let peer = Peer::start(config()).await;
    peer.served(0).await;

    let mut over_by_one = ((MAX + 1) as u32).to_be_bytes().to_vec();
    over_by_one.push(0x01);
    // A service name length past the end of the frame.
    let mut long_name = vec![0, 0, 0, 9, 0x01, 0, 0, 0, 1, 0x01, 200, b'a', b'b'];
    long_name.truncate(13);
    // A name of length 0.
    let empty_name = vec![0, 0, 0, 8, 0x01, 0, 0, 0, 1, 0x01, 0, 0];
    // An error frame whose message length runs past the end.
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (
            vec![0xff, 0xff, 0xff, 0xff],
            &["exceeds the limit of 1024 bytes"],
        ),
        (over_by_one, &["exceeds the limit of 1024 bytes"]),
        (vec![0, 0, 0, 0], &["bad frame"]),
        (vec![0, 0, 0, 3, 0x01, 0, 0], &["bad frame"]),
        (long_name, &["bad frame"]),
        (empty_name, &["bad frame"]),
        (vec![0, 0, 0, 2, 0x02, 0x00], &["bad frame"]),
    ];
    for (bytes, why) in &cases {
        let (mut s, me) = raw(peer.addr).await;
        // No shutdown of the write side: the header alone must be enough to close.
        let _ = t(s.write_all(bytes)).await;
        assert_eq!(expect_eof(&mut s).await, 0);
        logs.expect_any(me, why).await;
        peer.served(1).await;
    }

    // A frame of exactly the limit is accepted, one byte more is not.
    let (mut s, _) = raw(peer.addr).await;
    let at_limit = request(5, "echo", &vec![7u8; MAX - 22]);
    assert_eq!(at_limit.len(), MAX + 4, "test frame sized to the limit");
    t(s.write_all(&at_limit)).await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec![5]);
    let (mut s, me) = raw(peer.addr).await;
    let past = request(6, "echo", &vec![7u8; MAX - 21]);
    t(s.write_all(&past)).await.unwrap();
    assert_eq!(expect_eof(&mut s).await, 0);
    logs.expect(me, "exceeds the limit of 1024 bytes").await;
    peer.served(2).await;
    peer.stop().await;
}

#[tokio::test]
async fn half_open_connections_block_no_one_and_shutdown_closes_them() {
    let (logs, _g) = capture_logs();
    let peer = Peer::start(config()).await;
    let whole = request(1, "echo", b"x");
    let mut hostile = Vec::new();
    for i in 0..30 {
        let (mut s, me) = raw(peer.addr).await;
        let part: &[u8] = match i % 3 {
            0 => b"",
            1 => &whole[..2],
            _ => &whole[..whole.len() - 1],
        };
        t(s.write_all(part)).await.unwrap();
        hostile.push((s, me));
    }
    // Everyone else is served while they wait.
    for n in 0..10 {
        peer.served(n).await;
    }
    // None of them got anything.
    for (s, _) in &mut hostile {
        let mut b = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut b))
                .await
                .is_err(),
            "a half-open connection got an answer or was closed early"
        );
    }
    // Shutdown ends them all and returns.
    let rpc = peer.rpc.clone();
    peer.stop().await;
    drop(rpc);
    for (s, _) in &mut hostile {
        expect_eof(s).await;
    }
    assert!(logs.text().contains("rpc server stopped"));
}

#[tokio::test]
async fn a_connection_flood_is_served_and_the_others_carry_on() {
    let peer = Peer::start(config()).await;
    const N: u32 = 400;
    let mut set = JoinSet::new();
    for i in 0..N {
        let addr = peer.addr;
        set.spawn(async move {
            let (mut s, _) = raw(addr).await;
            let req = request(i, "echo", &i.to_be_bytes());
            t(s.write_all(&req)).await.unwrap();
            read_responses(&mut s, 1).await == vec![i]
        });
    }
    let mut n = 0u8;
    let mut ok = 0;
    while let Some(r) = t(set.join_next()).await {
        ok += u32::from(r.expect("flood connection panicked"));
        if ok % 50 == 0 {
            peer.served(n).await;
            n = n.wrapping_add(1);
        }
    }
    assert_eq!(ok, N);
    peer.served(255).await;
    peer.stop().await;
}

#[tokio::test]
async fn a_flood_of_tiny_frames_is_served_without_loss() {
    let peer = Peer::start(config()).await;
    const N: u64 = 100_000;
    let (mut s, _) = raw(peer.addr).await;
    let one = notify("count", b"");
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    for _ in 0..N / 1000 {
        t(s.write_all(&chunk)).await.unwrap();
    }
    t(s.write_all(&request(42, "echo", b"after")))
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec![42]);
    t(async {
        while peer.counted.load(Ordering::Relaxed) < N {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(peer.counted.load(Ordering::Relaxed), N);
    peer.served(0).await;
    peer.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_reads_blocks_no_one_and_not_shutdown() {
    let (logs, _g) = capture_logs();
    let mut cfg = config();
    // Also the bound on writing replies to this peer after shutdown.
    cfg.call_timeout = Duration::from_secs(1);
    let peer = Peer::start(cfg).await;
    let (mut s, me) = raw(peer.addr).await;
    // 1000-byte replies to requests it never reads, until the server stops reading it
    // (its socket buffers and reply queue are full) or 64 MiB were sent.
    let req = request(1, "echo", &[b'z'; 990]);
    let chunk: Vec<u8> = req.iter().copied().cycle().take(req.len() * 256).collect();
    let mut sent = 0usize;
    // A write that makes no progress for 3 s means the server stopped reading; a shorter wait
    // can be mistaken for backpressure when the machine is merely busy, and then the replies
    // still fit the socket buffers and nothing is left unwritten at shutdown.
    while sent < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(3), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("server closed a peer that only sent valid requests: {e}"),
            Err(_) => break, // the server stopped reading: backpressure
        }
    }
    // Others are still served.
    for n in 0..5 {
        peer.served(n).await;
    }
    // Shutdown returns even though this peer's replies cannot be written.
    peer.stop().await;
    expect_eof(&mut s).await;
    logs.expect(me, "the peer is not reading its replies").await;
}
