//! The RPC client and server over real sockets on 127.0.0.1: concurrency, errors, timeouts,
//! routing, peers going away, bad frames, shutdown.

use bytes::{BufMut, Bytes, BytesMut};
use shaddock_rpc::{
    Frame, FrameCodec, Name, Namespace, PeerState, Raw, Registry, RegistryError, RemoteError,
    Router, RpcClient, RpcConfig, RpcError, RpcServer, ServerId, ServerInfo, Target, remote,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use shaddock_test_support::logs::capture_logs;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

/// Every await in these tests goes through this, so a bug fails instead of hanging.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// A number argument or reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    /// The number.
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

/// A text reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Text {
    /// The text.
    #[prost(string, tag = "1")]
    pub s: String,
}

remote! {
    /// A user-namespace remote exercising every outcome.
    pub mod math: user "mathRemote" {
        /// Doubles n.
        fn double(Num) -> Num;
        /// Fails with code n.
        fn fail(Num) -> ();
        /// Panics.
        fn boom(Num) -> Num;
        /// Reports n as entered, then waits for a gate permit.
        fn hang(Num) -> Num;
        /// Returns the server id.
        fn whoami(Num) -> Text;
        /// Records n (used as a notify).
        fn record(Num) -> ();
    }
}

remote! {
    /// A sys-namespace remote with raw bytes in and out.
    pub mod forward: sys "forwardRemote" {
        /// Returns the bytes reversed.
        fn forward(Raw) -> Raw;
    }
}

remote! {
    /// Same service name as `math`, but in `sys`: the namespaces are separate.
    pub mod sys_math: sys "mathRemote" {
        /// Triples n.
        fn double(Num) -> Num;
    }
}

struct Ctl {
    id: String,
    entered: mpsc::Sender<u64>,
    recorded: mpsc::Sender<u64>,
    gate: Semaphore,
}

struct MathImpl(Arc<Ctl>);

impl math::Remote for MathImpl {
    async fn double(&self, a: Num) -> Result<Num, RemoteError> {
        Ok(Num { n: a.n * 2 })
    }
    async fn fail(&self, a: Num) -> Result<(), RemoteError> {
        Err(RemoteError::new(
            a.n as u32,
            format!("failed on purpose ({})", a.n),
        ))
    }
    async fn boom(&self, _a: Num) -> Result<Num, RemoteError> {
        panic!("handler panics on purpose");
    }
    async fn hang(&self, a: Num) -> Result<Num, RemoteError> {
        let _ = self.0.entered.try_send(a.n);
        match self.0.gate.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return Err(RemoteError::new(1, "gate closed")),
        }
        Ok(a)
    }
    async fn whoami(&self, _a: Num) -> Result<Text, RemoteError> {
        Ok(Text {
            s: self.0.id.clone(),
        })
    }
    async fn record(&self, a: Num) -> Result<(), RemoteError> {
        let _ = self.0.recorded.try_send(a.n);
        Ok(())
    }
}

struct ForwardImpl;

impl forward::Remote for ForwardImpl {
    async fn forward(&self, a: Raw) -> Result<Raw, RemoteError> {
        let mut v = a.0.to_vec();
        v.reverse();
        Ok(Raw(Bytes::from(v)))
    }
}

struct SysMathImpl;

impl sys_math::Remote for SysMathImpl {
    async fn double(&self, a: Num) -> Result<Num, RemoteError> {
        Ok(Num { n: a.n * 3 })
    }
}

struct Peer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    ctl: Arc<Ctl>,
    entered: mpsc::Receiver<u64>,
    recorded: mpsc::Receiver<u64>,
}

fn registry(ctl: &Arc<Ctl>) -> Registry {
    let mut r = Registry::new();
    r.add(math::Server::new(MathImpl(Arc::clone(ctl)))).unwrap();
    r.add(forward::Server::new(ForwardImpl)).unwrap();
    r.add(sys_math::Server::new(SysMathImpl)).unwrap();
    r
}

async fn start_on(id: &str, listener: TcpListener, config: RpcConfig) -> Peer {
    let addr = listener.local_addr().unwrap();
    let (entered_tx, entered) = mpsc::channel(1024);
    let (recorded_tx, recorded) = mpsc::channel(1024);
    let ctl = Arc::new(Ctl {
        id: id.to_owned(),
        entered: entered_tx,
        recorded: recorded_tx,
        gate: Semaphore::new(0),
    });
    let shutdown = CancellationToken::new();
    let server = RpcServer::new(registry(&ctl), config);
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    Peer {
        addr,
        shutdown,
        task,
        ctl,
        entered,
        recorded,
    }
}

async fn start_server(id: &str, config: RpcConfig) -> Peer {
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    start_on(id, listener, config).await
}

fn client_for(peers: &[(&str, &str, SocketAddr)], config: RpcConfig) -> RpcClient {
    let rpc = RpcClient::new(config);
    for (id, ty, addr) in peers {
        rpc.directory()
            .add(ServerInfo::new(*id, *ty, "127.0.0.1", addr.port()));
    }
    rpc
}

fn quick_config() -> RpcConfig {
    let mut c = RpcConfig::default();
    c.backoff_base = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    c.connect_timeout = Duration::from_secs(2);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_from_many_tasks() {
    let peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let stub = math::Client::new(&rpc);
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let n = task * 1000 + i;
                let r = stub.double(Target::server("math-1"), Num { n }).await?;
                assert_eq!(r.n, n * 2, "reply matched to the wrong request");
            }
            Ok::<_, RpcError>(())
        }));
    }
    for task in tasks {
        t(task).await.unwrap().unwrap();
    }
    // And through the raw API with sys namespace bytes passing untouched.
    let reply = t(rpc.call_raw(
        Target::server("math-1"),
        Namespace::Sys,
        Name::from_static("forwardRemote").unwrap(),
        Name::from_static("forward").unwrap(),
        Bytes::from_static(b"abc"),
    ))
    .await
    .unwrap();
    assert_eq!(&reply[..], b"cba");
    peer.shutdown.cancel();
    t(peer.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn sys_and_user_namespaces_are_separate() {
    let peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let target = Target::server("math-1");
    let user = t(math::Client::new(&rpc).double(target, Num { n: 5 }))
        .await
        .unwrap();
    let sys = t(sys_math::Client::new(&rpc).double(target, Num { n: 5 }))
        .await
        .unwrap();
    assert_eq!((user.n, sys.n), (10, 15));
    let raw = t(forward::Client::new(&rpc).forward(target, Raw(Bytes::from_static(b"xyz"))))
        .await
        .unwrap();
    assert_eq!(raw.0, Bytes::from_static(b"zyx"));
    // forwardRemote exists only in sys.
    let err = t(rpc.call::<Raw, Raw>(
        target,
        Namespace::User,
        "forwardRemote",
        "forward",
        Raw::default(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, RpcError::UnknownService { .. }), "{err:?}");
}

#[tokio::test]
async fn failures_come_back_as_typed_errors() {
    let peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let stub = math::Client::new(&rpc);
    let target = Target::server("math-1");

    match t(stub.fail(target, Num { n: 501 })).await {
        Err(RpcError::Remote { code, message }) => {
            assert_eq!(code, 501);
            assert_eq!(message, "failed on purpose (501)");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let err = t(stub.boom(target, Num { n: 1 })).await.unwrap_err();
    assert!(matches!(err, RpcError::RemoteInternal { .. }), "{err:?}");
    let err = t(rpc.call::<Num, Num>(target, Namespace::User, "mathRemote", "nope", Num { n: 1 }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::UnknownMethod { message } if message.contains("nope")),
        "{err:?}"
    );
    let err = t(rpc.call::<Num, Num>(target, Namespace::User, "nobody", "double", Num { n: 1 }))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::UnknownService { .. }), "{err:?}");
    // An argument that is not a valid `Num` encoding.
    let err = t(rpc.call::<Raw, Num>(
        target,
        Namespace::User,
        "mathRemote",
        "double",
        Raw(Bytes::from_static(b"\xff\xff\xff")),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, RpcError::BadRequest { .. }), "{err:?}");
    // A reply that is not a valid `Num` for us.
    let err = t(rpc.call::<Raw, Num>(
        target,
        Namespace::Sys,
        "forwardRemote",
        "forward",
        Raw(Bytes::from_static(b"\xff\xff\xff")),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
    // The connection survived all of that.
    assert_eq!(t(stub.double(target, Num { n: 4 })).await.unwrap().n, 8);
}

#[tokio::test]
async fn notify_runs_the_method_without_a_reply() {
    let mut peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let stub = math::Client::new(&rpc);
    for n in [7, 8, 9] {
        t(stub.notify().record(Target::server("math-1"), Num { n }))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(t(peer.recorded.recv()).await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, [7, 8, 9]);
}

#[tokio::test]
async fn a_slow_call_times_out_and_the_connection_keeps_working() {
    let mut peer = start_server("math-1", RpcConfig::default()).await;
    let mut cfg = RpcConfig::default();
    cfg.call_timeout = Duration::from_millis(300);
    let rpc = client_for(&[("math-1", "math", peer.addr)], cfg);
    let stub = math::Client::new(&rpc);
    let err = t(stub.hang(Target::server("math-1"), Num { n: 1 }))
        .await
        .unwrap_err();
    match err {
        RpcError::Timeout {
            server_id, method, ..
        } => {
            assert_eq!(server_id.as_str(), "math-1");
            assert_eq!(method, "hang");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(t(peer.entered.recv()).await, Some(1));
    // A handle with its own, shorter timeout shares the connection.
    let quick = math::Client::new(&rpc.with_call_timeout(Duration::from_millis(50)));
    let err = t(quick.hang(Target::server("math-1"), Num { n: 2 }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { after, .. } if after == Duration::from_millis(50)),
        "{err:?}"
    );
    assert_eq!(t(peer.entered.recv()).await, Some(2));
    assert_eq!(rpc.peer_state("math-1"), Some(PeerState::Up));
    // Let the abandoned calls finish: their late replies must be ignored, not misdelivered.
    peer.ctl.gate.add_permits(2);
    for n in 0..20 {
        assert_eq!(
            t(stub.double(Target::server("math-1"), Num { n }))
                .await
                .unwrap()
                .n,
            n * 2
        );
    }
}

#[tokio::test]
async fn calls_in_flight_fail_at_once_when_the_peer_dies() {
    // A fake peer that answers pings (the client's connect check), reads five requests and
    // then drops the connection without answering them.
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut frames = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
        let mut seen = 0;
        while seen < 5 {
            match futures_util::StreamExt::next(&mut frames).await {
                Some(Ok(Frame::Request { .. })) => seen += 1,
                Some(Ok(Frame::Ping)) => {
                    futures_util::SinkExt::send(&mut frames, Frame::Pong)
                        .await
                        .unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(frames);
        drop(listener);
    });
    let mut cfg = quick_config();
    cfg.call_timeout = Duration::from_secs(60); // a hang would trip the test's own timeout
    let rpc = client_for(&[("gone-1", "gone", addr)], cfg);
    let calls: Vec<_> = (0..5)
        .map(|n| {
            let stub = math::Client::new(&rpc);
            tokio::spawn(async move { stub.double(Target::server("gone-1"), Num { n }).await })
        })
        .collect();
    t(fake).await.unwrap();
    for c in calls {
        let err = t(c).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RpcError::ConnectionLost { server_id } if server_id.as_str() == "gone-1"),
            "{err:?}"
        );
    }
    // The peer is gone for good: further calls fail fast instead of waiting.
    let err = t(math::Client::new(&rpc).double(Target::server("gone-1"), Num { n: 1 }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::PeerDown { .. } | RpcError::ConnectionLost { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_peer_that_is_down_fails_fast_and_is_reached_once_it_comes_up() {
    // Reserve a free port, then close it so nothing listens there yet.
    let port = {
        let l = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        l.local_addr().unwrap().port()
    };
    let rpc = RpcClient::new(quick_config());
    rpc.directory()
        .add(ServerInfo::new("math-1", "math", "127.0.0.1", port));
    let stub = math::Client::new(&rpc);
    for _ in 0..3 {
        let err = t(stub.double(Target::server("math-1"), Num { n: 1 }))
            .await
            .unwrap_err();
        match &err {
            RpcError::PeerDown {
                server_id, addr, ..
            } => {
                assert_eq!(server_id.as_str(), "math-1");
                assert_eq!(addr, &format!("127.0.0.1:{port}"));
            }
            other => panic!("expected PeerDown, got {other:?}"),
        }
        assert!(err.is_not_sent());
    }
    assert!(
        matches!(
            rpc.peer_state("math-1"),
            Some(PeerState::Down { .. } | PeerState::Connecting)
        ),
        "{:?}",
        rpc.peer_state("math-1")
    );
    assert_eq!(rpc.peer_state("nobody"), None);
    let listener = t(TcpListener::bind(("127.0.0.1", port))).await.unwrap();
    let peer = start_on("math-1", listener, RpcConfig::default()).await;
    assert_eq!(eventually_double(&stub, 21).await, 42);
    peer.shutdown.cancel();
}

/// Regression: with `reconnect_max_attempts = 1` the driver gives up after its one attempt,
/// and the waiting call used to take that `Idle` state as "start a new driver" — forever,
/// logging "giving up" many times per millisecond. Each call must make one attempt and fail.
#[tokio::test]
async fn one_attempt_per_call_when_max_attempts_is_one() {
    let (logs, _guard) = capture_logs();
    let port = {
        let l = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = quick_config();
    config.reconnect_max_attempts = 1;
    let rpc = RpcClient::new(config);
    rpc.directory()
        .add(ServerInfo::new("math-1", "math", "127.0.0.1", port));
    let stub = math::Client::new(&rpc);
    for call in 1..=2 {
        let err = t(stub.double(Target::server("math-1"), Num { n: 1 }))
            .await
            .unwrap_err();
        match &err {
            RpcError::PeerDown { reason, .. } => {
                assert!(reason.contains("connect failed"), "{reason}");
            }
            other => panic!("expected PeerDown, got {other:?}"),
        }
        let text = logs.text();
        let attempts = text.matches("giving up until the next call").count();
        assert_eq!(
            attempts, call,
            "one connect attempt per call; logs:\n{text}"
        );
        assert!(
            matches!(rpc.peer_state("math-1"), Some(PeerState::Down { .. })),
            "{:?}",
            rpc.peer_state("math-1")
        );
    }
}

/// Calls until the peer answers; bounded in attempts (the backoff is at most 50 ms).
async fn eventually_double(stub: &math::Client, n: u64) -> u64 {
    for _ in 0..200 {
        match t(stub.double(Target::server("math-1"), Num { n })).await {
            Ok(r) => return r.n,
            Err(RpcError::PeerDown { .. } | RpcError::ConnectionLost { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    panic!("peer never came back");
}

#[tokio::test]
async fn the_client_reconnects_when_the_peer_restarts() {
    let peer = start_server("math-1", RpcConfig::default()).await;
    let addr = peer.addr;
    let rpc = client_for(&[("math-1", "math", addr)], quick_config());
    let stub = math::Client::new(&rpc);
    assert_eq!(
        t(stub.double(Target::server("math-1"), Num { n: 1 }))
            .await
            .unwrap()
            .n,
        2
    );

    peer.shutdown.cancel();
    t(peer.task).await.unwrap().unwrap();
    // The old connection is closed; the next call fails (never hangs).
    let err = t(stub.double(Target::server("math-1"), Num { n: 1 }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::PeerDown { .. } | RpcError::ConnectionLost { .. }
        ),
        "{err:?}"
    );

    let listener = t(TcpListener::bind(addr)).await.unwrap();
    let peer = start_on("math-1", listener, RpcConfig::default()).await;
    assert_eq!(eventually_double(&stub, 5).await, 10);
    peer.shutdown.cancel();
    t(peer.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_calls_in_flight() {
    let mut peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let stub = math::Client::new(&rpc);
    let call = tokio::spawn(async move { stub.hang(Target::server("math-1"), Num { n: 3 }).await });
    assert_eq!(t(peer.entered.recv()).await, Some(3));
    peer.shutdown.cancel();
    // New connections are refused once the listener is gone.
    let serving = peer.task;
    peer.ctl.gate.add_permits(1);
    assert_eq!(t(call).await.unwrap().unwrap().n, 3);
    t(serving).await.unwrap().unwrap();
    assert!(t(TcpStream::connect(peer.addr)).await.is_err());
}

#[tokio::test]
async fn removing_a_peer_closes_its_connection_and_fails_its_calls() {
    let mut peer = start_server("math-1", RpcConfig::default()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], RpcConfig::default());
    let stub = math::Client::new(&rpc);
    let call = tokio::spawn(async move { stub.hang(Target::server("math-1"), Num { n: 1 }).await });
    assert_eq!(t(peer.entered.recv()).await, Some(1));
    assert!(rpc.directory().remove("math-1").is_some());
    let err = t(call).await.unwrap().unwrap_err();
    assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    let err = t(math::Client::new(&rpc).double(Target::server("math-1"), Num { n: 1 }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::UnknownPeer { server_id } if server_id == "math-1"),
        "{err:?}"
    );
}

struct AlwaysLast;

impl Router for AlwaysLast {
    fn route(&self, _key: &[u8], servers: &[ServerInfo]) -> Option<ServerId> {
        servers.last().map(|s| s.id.clone())
    }
}

#[tokio::test]
async fn calls_route_by_type_and_key_or_by_id() {
    let a = start_server("chat-1", RpcConfig::default()).await;
    let b = start_server("chat-2", RpcConfig::default()).await;
    let rpc = client_for(
        &[("chat-2", "chat", b.addr), ("chat-1", "chat", a.addr)],
        RpcConfig::default(),
    );
    let stub = math::Client::new(&rpc);
    let servers = rpc.directory().servers_of_type("chat");
    let mut hit = [false, false];
    for uid in 0..40 {
        let key = format!("user-{uid}");
        let want = &servers[crc32fast::hash(key.as_bytes()) as usize % 2];
        let got = t(stub.whoami(Target::route("chat", &key), Num::default()))
            .await
            .unwrap();
        assert_eq!(got.s, want.id.as_str(), "key {key}");
        hit[usize::from(got.s == "chat-2")] = true;
    }
    assert_eq!(hit, [true, true], "both servers should get some keys");
    let got = t(stub.whoami(Target::server("chat-1"), Num::default()))
        .await
        .unwrap();
    assert_eq!(got.s, "chat-1");

    rpc.set_router("chat", Arc::new(AlwaysLast));
    for key in ["a", "b", "c"] {
        let got = t(stub.whoami(Target::route("chat", key), Num::default()))
            .await
            .unwrap();
        assert_eq!(got.s, "chat-2");
    }
    let err = t(stub.whoami(Target::route("gate", "a"), Num::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::NoServer { server_type } if server_type == "gate"),
        "{err:?}"
    );
    let err = t(stub.whoami(Target::server("chat-9"), Num::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::UnknownPeer { .. }), "{err:?}");
}

#[tokio::test]
async fn oversized_and_malformed_frames_close_only_that_connection() {
    let (logs, _guard) = capture_logs();
    let mut cfg = RpcConfig::default();
    cfg.max_frame_size = 1024;
    let peer = start_server("math-1", cfg.clone()).await;
    let rpc = client_for(&[("math-1", "math", peer.addr)], cfg);
    let stub = math::Client::new(&rpc);
    assert_eq!(
        t(stub.double(Target::server("math-1"), Num { n: 1 }))
            .await
            .unwrap()
            .n,
        2
    );

    let bad: [&[u8]; 4] = [
        b"\x00\x10\x00\x00",                     // declares 1 MiB > 1024
        b"\x00\x00\x00\x01\x7f",                 // unknown kind
        b"\x00\x00\x00\x03\x02\x05\x00",         // unknown namespace
        b"\x00\x00\x00\x05\x03\x00\x00\x00\x01", // a response sent to a server
    ];
    for bytes in bad {
        let mut raw = t(TcpStream::connect(peer.addr)).await.unwrap();
        t(raw.write_all(bytes)).await.unwrap();
        let mut buf = [0u8; 16];
        // The server closes the connection: EOF (or a reset), never an answer.
        match t(raw.read(&mut buf)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("server answered a bad frame with {n} bytes"),
        }
        // Everyone else is still served.
        assert_eq!(
            t(stub.double(Target::server("math-1"), Num { n: 2 }))
                .await
                .unwrap()
                .n,
            4
        );
    }
    let text = logs.text();
    assert!(text.contains("exceeds the limit of 1024 bytes"), "{text}");
    assert!(text.contains("unknown rpc frame kind byte 0x7f"), "{text}");
    assert!(text.contains("closing rpc connection"), "{text}");

    // Too large on our side: refused before sending, the connection stays.
    let err = t(rpc.call::<Raw, Raw>(
        Target::server("math-1"),
        Namespace::Sys,
        "forwardRemote",
        "forward",
        Raw(Bytes::from(vec![0u8; 2000])),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { max: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(
        t(stub.double(Target::server("math-1"), Num { n: 3 }))
            .await
            .unwrap()
            .n,
        6
    );
}

#[tokio::test]
async fn pipelined_raw_requests_get_matching_responses() {
    // Speak the wire by hand: many requests in one write, answers matched by id.
    let peer = start_server("math-1", RpcConfig::default()).await;
    let mut raw = t(TcpStream::connect(peer.addr)).await.unwrap();
    let mut out = BytesMut::new();
    for id in 1..=50u32 {
        let payload = prost::Message::encode_to_vec(&Num { n: u64::from(id) });
        Frame::Request {
            id,
            namespace: Namespace::User,
            service: Name::from_static("mathRemote").unwrap(),
            method: Name::from_static("double").unwrap(),
            payload: Bytes::from(payload),
        }
        .encode(&mut out, 1 << 20)
        .unwrap();
    }
    out.put_slice(b""); // nothing else
    t(raw.write_all(&out)).await.unwrap();
    let mut frames = tokio_util::codec::FramedRead::new(raw, FrameCodec::new(1 << 20));
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 50 {
        match t(futures_util::StreamExt::next(&mut frames)).await {
            Some(Ok(Frame::Response { id, result: Ok(p) })) => {
                let n: Num = prost::Message::decode(p).unwrap();
                assert_eq!(n.n, u64::from(id) * 2);
                assert!(seen.insert(id), "duplicate response {id}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn duplicate_services_are_refused_at_build_time() {
    let (tx, _rx) = mpsc::channel(1);
    let ctl = Arc::new(Ctl {
        id: "x".into(),
        entered: tx.clone(),
        recorded: tx,
        gate: Semaphore::new(0),
    });
    let mut r = registry(&ctl);
    let err = r.add(math::Server::new(MathImpl(ctl))).err();
    assert_eq!(
        err,
        Some(RegistryError::Duplicate {
            namespace: Namespace::User,
            name: "mathRemote".into()
        })
    );
    assert_eq!(
        math::METHODS,
        ["double", "fail", "boom", "hang", "whoami", "record"]
    );
}
