//! Quiet when all is well: a peer the client was told is leaving (`expect_departure`) is
//! dropped at DEBUG without a background reconnect, while an unannounced loss still warns and
//! reconnects; a connection that closes before sending a byte (a port probe) is DEBUG on a
//! server with a cluster secret, and a wrong answer to the challenge still warns.

use bytes::Bytes;
use shaddock_rpc::{
    ClusterSecret, PeerState, Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcServer,
    ServerInfo, Target, remote,
};
use shaddock_test_support::logs::capture_logs;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

remote! {
    /// Echoes.
    pub mod echo: user "echoRemote" {
        /// Returns its argument.
        fn echo(Raw) -> Raw;
    }
}

struct EchoImpl;

impl echo::Remote for EchoImpl {
    async fn echo(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
}

struct Server {
    port: u16,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: &RpcConfig) -> Self {
        let mut registry = Registry::new();
        registry.add(echo::Server::new(EchoImpl)).unwrap();
        let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            RpcServer::new(registry, config.clone()).serve(listener, shutdown.clone()),
        );
        Self {
            port,
            shutdown,
            task,
        }
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
    c.reconnect_max_attempts = 3;
    c
}

async fn echo_once(rpc: &RpcClient, id: &str) {
    let r = t(echo::Client::new(rpc).echo(Target::server(id), Raw(Bytes::from_static(b"hi"))))
        .await
        .expect("echo");
    assert_eq!(&r.0[..], b"hi");
}

/// Polls (bounded) until `pred` holds on the captured log text.
async fn log_until(
    logs: &shaddock_test_support::logs::LogBuf,
    what: &str,
    pred: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + LIMIT;
    while !pred(&logs.text()) {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn warn_lines_of(text: &str, server_id: &str) -> Vec<String> {
    let span = format!("server_id={server_id} ");
    text.lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&span))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_expected_departure_is_quiet_and_not_reconnected_an_unexpected_one_warns() {
    let (logs, _g) = capture_logs();
    let cfg = config();
    let leaving = Server::start(&cfg).await;
    let lost = Server::start(&cfg).await;
    let rpc = RpcClient::new(cfg);
    rpc.directory().add(ServerInfo::new(
        "leaving-1",
        "echo",
        "127.0.0.1",
        leaving.port,
    ));
    rpc.directory()
        .add(ServerInfo::new("lost-1", "echo", "127.0.0.1", lost.port));
    echo_once(&rpc, "leaving-1").await;
    echo_once(&rpc, "lost-1").await;
    assert!(!rpc.is_departing("leaving-1"));
    assert!(rpc.expect_departure("leaving-1"));
    assert!(rpc.is_departing("leaving-1"));
    assert!(
        !rpc.expect_departure("nobody"),
        "an unknown peer cannot be marked"
    );

    leaving.stop().await;
    lost.stop().await;
    log_until(&logs, "the expected departure was not logged", |l| {
        l.contains("rpc peer left as expected; not reconnecting")
    })
    .await;
    // The unannounced loss is reported and retried until the client gives up.
    log_until(&logs, "the unannounced loss was not reported", |l| {
        l.contains("rpc connection lost; reconnecting") && l.contains("giving up")
    })
    .await;
    assert_eq!(
        rpc.peer_state("leaving-1")
            .map(|s| matches!(s, PeerState::Down { .. })),
        Some(true),
        "the departed peer is idle with its reason"
    );
    let text = logs.text();
    assert!(
        warn_lines_of(&text, "leaving-1").is_empty(),
        "the expected departure warned:\n{text}"
    );
    assert!(
        !warn_lines_of(&text, "lost-1").is_empty(),
        "the unannounced loss did not warn:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("server_id=leaving-1")
                && l.contains("rpc connect failed; backing off")),
        "the departed peer was reconnected in the background:\n{text}"
    );

    // A later call still tries once, quietly, and fails naming the peer.
    let err = t(echo::Client::new(&rpc).echo(Target::server("leaving-1"), Raw(Bytes::new())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("leaving-1"), "{err}");
    let text = logs.text();
    assert!(
        warn_lines_of(&text, "leaving-1").is_empty(),
        "a call after the departure warned:\n{text}"
    );
}

#[tokio::test]
async fn a_probe_that_sends_nothing_is_debug_a_wrong_secret_warns() {
    let (logs, _g) = capture_logs();
    let mut cfg = config();
    cfg.secret = Some(ClusterSecret::generate().unwrap());
    let server = Server::start(&cfg).await;
    let addr = format!("127.0.0.1:{}", server.port);

    // Connect and close without a byte, as `shaddock stop`'s wait-for-exit probe does; once
    // after reading the challenge (a clean close), once with it unread (a reset).
    for read_first in [true, false] {
        let mut s = t(TcpStream::connect(&addr)).await.unwrap();
        if read_first {
            use tokio::io::AsyncReadExt;
            // The whole challenge frame (one small segment on loopback).
            let mut b = [0u8; 4096];
            t(s.read(&mut b)).await.unwrap();
        } else {
            // Let the challenge arrive unread, so closing resets the connection.
            t(s.readable()).await.unwrap();
        }
        drop(s);
    }
    log_until(&logs, "the probes' ends were not logged", |l| {
        l.matches("peer closed the connection before sending anything")
            .count()
            >= 2
    })
    .await;

    // A client with another secret is still a warning.
    let mut wrong = config();
    wrong.secret = Some(ClusterSecret::generate().unwrap());
    let rpc = RpcClient::new(wrong);
    rpc.directory()
        .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", server.port));
    let _ = t(echo::Client::new(&rpc).echo(Target::server("echo-1"), Raw(Bytes::new()))).await;
    log_until(&logs, "the wrong secret did not warn", |l| {
        l.lines()
            .any(|l| l.contains(" WARN ") && l.contains("authentication failed"))
    })
    .await;
    let text = logs.text();
    let probe_warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("before sending anything"))
        .collect();
    assert!(probe_warnings.is_empty(), "a probe warned:\n{text}");
    server.stop().await;
}
