//! The RPC port against peers that are not the cluster's well-behaved servers: the connection
//! cap, idle peers, frozen peers (heartbeat), slow handlers sharing a link, and the cluster
//! secret (memory per half-sent frame is in `memory.rs`). Real sockets on 127.0.0.1.

use bytes::{BufMut, Bytes, BytesMut};
use shaddock_rpc::{
    Frame, Name, Namespace, Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcServer,
    ServerInfo, Target, remote,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

/// Every await goes through this, so a bug fails instead of hanging.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

remote! {
    /// The remote under test.
    pub mod echo: user "echoRemote" {
        /// Returns its argument.
        fn echo(Raw) -> Raw;
        /// Counts its calls, then returns its argument.
        fn count(Raw) -> Raw;
    }
}

struct EchoImpl(Arc<AtomicU64>);

impl echo::Remote for EchoImpl {
    async fn echo(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
    async fn count(&self, a: Raw) -> Result<Raw, RemoteError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(a)
    }
}

struct Peer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    counted: Arc<AtomicU64>,
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
        let task = tokio::spawn(RpcServer::new(registry, config).serve(listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
            counted,
        }
    }

    fn client(&self, config: RpcConfig) -> RpcClient {
        let rpc = RpcClient::new(config);
        rpc.directory().add(ServerInfo::new(
            "echo-1",
            "echo",
            "127.0.0.1",
            self.addr.port(),
        ));
        rpc
    }

    async fn stop(self) {
        self.shutdown.cancel();
        t(self.task).await.unwrap().unwrap();
    }
}

fn config() -> RpcConfig {
    let mut c = RpcConfig::default();
    c.backoff_base = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    c
}

async fn echo_call(rpc: &RpcClient, n: u8) -> Result<Raw, shaddock_rpc::RpcError> {
    echo::Client::new(rpc)
        .echo(Target::server("echo-1"), Raw(Bytes::from(vec![n; 3])))
        .await
}

fn request(id: u32, method: &'static str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    Frame::Request {
        id,
        namespace: Namespace::User,
        service: Name::from_static("echoRemote").unwrap(),
        method: Name::from_static(method).unwrap(),
        payload: Bytes::copy_from_slice(payload),
    }
    .encode(&mut out, 1 << 20)
    .unwrap();
    out.freeze()
}

/// Reads one whole frame (fails after 10 s); `None` on EOF or a reset.
async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    t(async {
        loop {
            if let Some(f) = Frame::decode(buf, 1 << 20).unwrap() {
                return Some(f);
            }
            match s.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Reads until EOF or a reset (fails after 10 s).
async fn expect_eof(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    t(async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Connection cap

/// With `max_connections = 2` a third peer connects (the kernel completes the handshake) but
/// is not served while two are open; once one closes, it is.
#[tokio::test]
async fn the_connection_cap_holds_extra_peers_until_one_closes() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let peer = Peer::start(cfg).await;
    let mut a = t(TcpStream::connect(peer.addr)).await.unwrap();
    let mut b = t(TcpStream::connect(peer.addr)).await.unwrap();
    for (s, id) in [(&mut a, 1), (&mut b, 2)] {
        t(s.write_all(&request(id, "echo", b"x"))).await.unwrap();
        let mut buf = BytesMut::new();
        match read_frame(s, &mut buf).await {
            Some(Frame::Response {
                id: got,
                result: Ok(_),
            }) => assert_eq!(got, id),
            other => panic!("peer {id} not served: {other:?}"),
        }
    }
    let mut c = t(TcpStream::connect(peer.addr)).await.unwrap();
    t(c.write_all(&request(3, "count", b"x"))).await.unwrap();
    let mut cbuf = BytesMut::new();
    // Not served while the cap is reached (a generous wait for a reply that must not come).
    let early = tokio::time::timeout(Duration::from_millis(500), c.read_buf(&mut cbuf)).await;
    assert!(
        early.is_err(),
        "the third peer was answered over the cap: {early:?}"
    );
    assert_eq!(peer.counted.load(Ordering::SeqCst), 0, "its handler ran");
    drop(a);
    match read_frame(&mut c, &mut cbuf).await {
        Some(Frame::Response {
            id: 3,
            result: Ok(_),
        }) => {}
        other => panic!("the third peer was not served after a slot freed: {other:?}"),
    }
    assert_eq!(peer.counted.load(Ordering::SeqCst), 1);
    drop((b, c));
    peer.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Idle peers are closed

/// A peer that sends nothing for `idle_timeout` is closed with a log line naming it; one that
/// keeps sending (here a request every sixth of the timeout, for two timeouts) is not.
#[tokio::test]
async fn a_silent_peer_is_closed_after_the_idle_timeout_and_a_talking_one_is_not() {
    let (logs, _guard) = shaddock_test_support::logs::capture_logs();
    const IDLE: Duration = Duration::from_millis(600);
    let mut cfg = config();
    cfg.idle_timeout = Some(IDLE);
    let peer = Peer::start(cfg).await;
    let mut silent = t(TcpStream::connect(peer.addr)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut talking = t(TcpStream::connect(peer.addr)).await.unwrap();
    let mut buf = BytesMut::new();
    // Twelve requests 100 ms apart: twice the idle timeout, never silent for a sixth of it.
    for id in 1..=12 {
        t(talking.write_all(&request(id, "echo", b"x")))
            .await
            .unwrap();
        match read_frame(&mut talking, &mut buf).await {
            Some(Frame::Response {
                id: got,
                result: Ok(_),
            }) => assert_eq!(got, id),
            other => panic!("the talking peer was not served: {other:?}"),
        }
        tokio::time::sleep(IDLE / 6).await;
    }
    expect_eof(&mut silent).await;
    logs.expect(silent_addr, "closing idle rpc connection")
        .await;
    // The talking one is still served.
    t(talking.write_all(&request(13, "echo", b"x")))
        .await
        .unwrap();
    assert!(matches!(
        read_frame(&mut talking, &mut buf).await,
        Some(Frame::Response {
            id: 13,
            result: Ok(_)
        })
    ));
    peer.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Heartbeat: a frozen peer

/// A TCP proxy to `upstream` that can be frozen: while frozen it forwards nothing either way
/// and its connections stay open, as with a peer process stopped by `SIGSTOP` (its kernel
/// still completes handshakes and buffers bytes).
struct Proxy {
    addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let gate = frozen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                conns.spawn(pump(dr, uw, gate.subscribe()));
                conns.spawn(pump(ur, dw, gate.subscribe()));
            }
        });
        Self { addr, frozen, task }
    }

    fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a freeze are held until the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A peer that stops answering with its socket open is declared dead by the heartbeat: calls
/// in flight fail with `PeerUnresponsive` within `heartbeat_timeout + heartbeat_interval`
/// (plus a generous margin), far below the 30 s call timeout; new calls fail fast while it
/// stays frozen; once it thaws, calls go through again.
#[tokio::test]
async fn a_frozen_peer_is_detected_by_the_heartbeat_and_calls_fail_fast() {
    const INTERVAL: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(600);
    let peer = Peer::start(config()).await;
    let proxy = Proxy::start(peer.addr).await;
    let mut cfg = config();
    cfg.heartbeat_interval = INTERVAL;
    cfg.heartbeat_timeout = TIMEOUT;
    cfg.call_timeout = Duration::from_secs(30);
    cfg.connect_timeout = Duration::from_secs(1);
    let rpc = RpcClient::new(cfg);
    rpc.directory().add(ServerInfo::new(
        "echo-1",
        "echo",
        "127.0.0.1",
        proxy.addr.port(),
    ));
    t(echo_call(&rpc, 1)).await.unwrap();

    proxy.freeze(true);
    let frozen_at = tokio::time::Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|n| {
            let rpc = rpc.clone();
            tokio::spawn(async move { echo_call(&rpc, n).await })
        })
        .collect();
    for c in calls {
        let err = t(c).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, shaddock_rpc::RpcError::PeerUnresponsive { server_id, .. } if server_id.as_str() == "echo-1"),
            "{err:?}"
        );
    }
    let detected = frozen_at.elapsed();
    assert!(
        detected < TIMEOUT + INTERVAL + Duration::from_secs(3),
        "detected after {detected:?}"
    );

    // While it stays frozen, new calls fail fast (no waiting for a timeout).
    for _ in 0..3 {
        let asked = tokio::time::Instant::now();
        let err = t(echo_call(&rpc, 9)).await.unwrap_err();
        assert!(
            matches!(err, shaddock_rpc::RpcError::PeerDown { .. }),
            "{err:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a call to a dead link took {:?}",
            asked.elapsed()
        );
    }

    proxy.freeze(false);
    let mut back = false;
    for _ in 0..200 {
        if t(echo_call(&rpc, 2)).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the link did not come back after the thaw");
    peer.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A slow handler does not stall its link

remote! {
    /// One route whose handler blocks its thread, one that answers at once.
    pub mod slowpoke: user "slowRemote" {
        /// Blocks (no await) until the test releases it.
        fn block(Raw) -> Raw;
        /// Returns at once.
        fn quick(Raw) -> Raw;
    }
}

struct SlowImpl {
    entered: std::sync::atomic::AtomicBool,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl slowpoke::Remote for SlowImpl {
    async fn block(&self, a: Raw) -> Result<Raw, RemoteError> {
        self.entered.store(true, Ordering::SeqCst);
        // Blocking code inside an async fn, never awaiting: it holds its thread. Wrapped in
        // `block_in_place`, as a CPU-heavy handler on a multi-thread runtime should be: without
        // it tokio cannot move the tasks parked in this worker's LIFO slot (which is not
        // stealable) to another thread, and an unlucky connection task of this test would wait
        // for the release with it. It is still this call's task that blocks: on the old read
        // loop (first poll inline) the read loop itself was stuck here. Bounded, so a failing
        // test cannot leave it stuck; dropping the sender releases it.
        let released = tokio::task::block_in_place(|| {
            self.gate
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20))
        });
        match released {
            Ok(()) => Ok(a),
            Err(_) => Err(RemoteError::new(1, "not released")),
        }
    }
    async fn quick(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
}

/// On one client link, a call whose handler blocks its thread is sent first, then a call to a
/// fast route: the fast one is answered while the slow one is still blocked (the slow handler
/// is released only after the fast reply came back). When handlers got their first poll on
/// the connection's read loop, the fast call was never even read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_handler_does_not_delay_other_calls_on_its_link() {
    let (release, gate) = std::sync::mpsc::channel();
    let imp = Arc::new(SlowImpl {
        entered: std::sync::atomic::AtomicBool::new(false),
        gate: std::sync::Mutex::new(gate),
    });
    let mut registry = Registry::new();
    registry
        .add(slowpoke::Server::new(ArcSlow(Arc::clone(&imp))))
        .unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(RpcServer::new(registry, config()).serve(listener, shutdown.clone()));
    let rpc = RpcClient::new(config());
    rpc.directory()
        .add(ServerInfo::new("slow-1", "slow", "127.0.0.1", addr.port()));
    let stub = slowpoke::Client::new(&rpc);
    t(stub.quick(Target::server("slow-1"), Raw(Bytes::from_static(b"warm"))))
        .await
        .unwrap();

    let slow = {
        let stub = stub.clone();
        tokio::spawn(async move {
            stub.block(Target::server("slow-1"), Raw(Bytes::from_static(b"slow")))
                .await
        })
    };
    // Poll (bounded) until the slow handler is inside its blocking section.
    t(async {
        while !imp.entered.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let fast = tokio::time::timeout(
        LIMIT,
        stub.quick(Target::server("slow-1"), Raw(Bytes::from_static(b"fast"))),
    )
    .await
    .expect("the fast call on the same link was not answered while the slow handler blocked");
    assert_eq!(&fast.unwrap().0[..], b"fast");
    assert!(!slow.is_finished(), "the slow call finished first");
    release.send(()).unwrap();
    let slow = t(slow).await.unwrap().unwrap();
    assert_eq!(&slow.0[..], b"slow");
    shutdown.cancel();
    t(server).await.unwrap().unwrap();
}

/// The generated server wants the implementation by value; the test keeps a handle to it.
struct ArcSlow(Arc<SlowImpl>);

impl slowpoke::Remote for ArcSlow {
    async fn block(&self, a: Raw) -> Result<Raw, RemoteError> {
        slowpoke::Remote::block(&*self.0, a).await
    }
    async fn quick(&self, a: Raw) -> Result<Raw, RemoteError> {
        slowpoke::Remote::quick(&*self.0, a).await
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Cluster secret

fn with_secret(secret: Option<&shaddock_rpc::ClusterSecret>) -> RpcConfig {
    let mut c = config();
    c.secret = secret.cloned();
    c.connect_timeout = Duration::from_millis(500);
    c
}

/// Same secret on both sides: calls go through. A client with another secret, or with none,
/// gets `AuthFailed` (not a timeout, not `PeerDown`), and the handler never runs for it.
#[tokio::test]
async fn only_clients_with_the_cluster_secret_are_served() {
    let (logs, _guard) = shaddock_test_support::logs::capture_logs();
    let secret = shaddock_rpc::ClusterSecret::generate().unwrap();
    let peer = Peer::start(with_secret(Some(&secret))).await;

    let good = peer.client(with_secret(Some(&secret)));
    let r = t(
        echo::Client::new(&good).count(Target::server("echo-1"), Raw(Bytes::from_static(b"ok")))
    )
    .await
    .unwrap();
    assert_eq!(&r.0[..], b"ok");
    assert_eq!(peer.counted.load(Ordering::SeqCst), 1);

    let other = shaddock_rpc::ClusterSecret::generate().unwrap();
    for (what, cfg) in [
        ("a wrong secret", with_secret(Some(&other))),
        ("no secret", with_secret(None)),
    ] {
        let bad = peer.client(cfg);
        for _ in 0..2 {
            let err = t(echo::Client::new(&bad)
                .count(Target::server("echo-1"), Raw(Bytes::from_static(b"no"))))
            .await
            .unwrap_err();
            assert!(
                matches!(&err, shaddock_rpc::RpcError::AuthFailed { server_id, .. } if server_id.as_str() == "echo-1"),
                "{what}: {err:?}"
            );
            assert!(err.is_not_sent());
        }
    }
    assert_eq!(
        peer.counted.load(Ordering::SeqCst),
        1,
        "a handler ran for an unauthenticated peer"
    );
    let text = logs.text();
    assert!(text.contains("wrong cluster secret"), "{text}");
    assert!(text.contains("before authenticating"), "{text}");
    assert!(
        !text.contains(&secret.to_hex()) && !text.contains(&other.to_hex()),
        "a secret was logged"
    );
    // The good client is still served.
    t(echo_call(&good, 7)).await.unwrap();
    peer.stop().await;
}

/// Authentication is mutual: a peer that sends a challenge and then `auth-ok` without knowing
/// the secret (an impostor listening at a server's address) gets no call; the client reports
/// `AuthFailed` and never sends the request.
#[tokio::test]
async fn a_server_that_cannot_prove_the_secret_gets_no_call() {
    let secret = shaddock_rpc::ClusterSecret::generate().unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let impostor = tokio::spawn(async move {
        let mut got_request = false;
        // Two connections: the call's attempt and one retry at most.
        for _ in 0..2 {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_secs(3), listener.accept()).await
            else {
                break;
            };
            let mut out = BytesMut::new();
            Frame::Challenge {
                nonce: Bytes::from(vec![7u8; 32]),
            }
            .encode(&mut out, 1 << 20)
            .unwrap();
            s.write_all(&out).await.unwrap();
            let mut buf = BytesMut::new();
            if !matches!(read_frame(&mut s, &mut buf).await, Some(Frame::Auth { .. })) {
                continue;
            }
            let mut ok = BytesMut::new();
            Frame::AuthOk {
                proof: Bytes::from(vec![0u8; 32]),
            }
            .encode(&mut ok, 1 << 20)
            .unwrap();
            s.write_all(&ok).await.unwrap();
            // Whatever comes next must not be a request.
            if let Some(Frame::Request { .. }) = read_frame(&mut s, &mut buf).await {
                got_request = true;
            }
        }
        got_request
    });
    let rpc = RpcClient::new(with_secret(Some(&secret)));
    rpc.directory()
        .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", addr.port()));
    let err = t(echo_call(&rpc, 1)).await.unwrap_err();
    assert!(
        matches!(&err, shaddock_rpc::RpcError::AuthFailed { .. }),
        "{err:?}"
    );
    drop(rpc);
    assert!(
        !t(impostor).await.unwrap(),
        "the client sent a call to a server that never proved the secret"
    );
}

/// A raw socket that ignores the challenge and sends a request is closed with a warn naming
/// it, and the request's handler never runs; one that sends nothing is closed after the
/// authentication time limit (`connect_timeout`).
#[tokio::test]
async fn unauthenticated_raw_peers_are_closed_and_their_calls_never_run() {
    let (logs, _guard) = shaddock_test_support::logs::capture_logs();
    let secret = shaddock_rpc::ClusterSecret::generate().unwrap();
    let peer = Peer::start(with_secret(Some(&secret))).await;

    let mut raw = t(TcpStream::connect(peer.addr)).await.unwrap();
    let me = raw.local_addr().unwrap();
    t(raw.write_all(&request(1, "count", b"x"))).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(
        matches!(
            read_frame(&mut raw, &mut buf).await,
            Some(Frame::Challenge { .. })
        ),
        "the server opens with a challenge"
    );
    expect_eof(&mut raw).await;
    logs.expect(me, "authentication failed").await;
    assert!(logs.has(me, "a request before authenticating"));

    let mut silent = t(TcpStream::connect(peer.addr)).await.unwrap();
    let silent_me = silent.local_addr().unwrap();
    expect_eof(&mut silent).await;
    logs.expect(silent_me, "no answer to the challenge in time")
        .await;

    assert_eq!(
        peer.counted.load(Ordering::SeqCst),
        0,
        "an unauthenticated call ran"
    );
    let good = peer.client(with_secret(Some(&secret)));
    t(echo_call(&good, 1)).await.unwrap();
    peer.stop().await;
}

/// Before authenticating, a peer cannot make the server buffer a large frame: a header
/// declaring 4 KiB (well under `max_frame_size`) is refused at once.
#[tokio::test]
async fn an_unauthenticated_peer_cannot_send_a_large_frame() {
    let (logs, _guard) = shaddock_test_support::logs::capture_logs();
    let secret = shaddock_rpc::ClusterSecret::generate().unwrap();
    let peer = Peer::start(with_secret(Some(&secret))).await;
    let mut raw = t(TcpStream::connect(peer.addr)).await.unwrap();
    let me = raw.local_addr().unwrap();
    let mut hdr = BytesMut::new();
    hdr.put_u32(4096);
    hdr.put_u8(0x08);
    t(raw.write_all(&hdr)).await.unwrap();
    expect_eof(&mut raw).await;
    logs.expect(me, "exceeds the limit of 1024 bytes").await;
    peer.stop().await;
}
