//! The RPC port over TLS with a cluster CA (mutual TLS), with certificates made at test time:
//! calls go through between servers with certificates of the CA (with and without the
//! cluster secret); a client without a certificate, with one from another CA, or speaking
//! plain TCP is refused with a logged reason on the server and a typed error on the client; a
//! server whose certificate is not from the CA gets no call; the secret is still checked
//! inside TLS. Real sockets on 127.0.0.1.

use bytes::Bytes;
use shaddock_rpc::{
    ClusterSecret, Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcError, RpcServer, RpcTls,
    ServerInfo, Target, remote,
};
use shaddock_test_support::logs::{LogBuf, capture_logs};
use shaddock_test_support::tls::TestCa;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
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
        /// Counts its calls, then returns its argument.
        fn count(Raw) -> Raw;
    }
}

struct EchoImpl(Arc<AtomicU64>);

impl echo::Remote for EchoImpl {
    async fn count(&self, a: Raw) -> Result<Raw, RemoteError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(a)
    }
}

struct Peer {
    port: u16,
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
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(RpcServer::new(registry, config).serve(listener, shutdown.clone()));
        Self {
            port,
            shutdown,
            task,
            counted,
        }
    }

    fn client(&self, config: RpcConfig) -> RpcClient {
        let rpc = RpcClient::new(config);
        rpc.directory()
            .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", self.port));
        rpc
    }

    fn calls(&self) -> u64 {
        self.counted.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        t(self.task).await.unwrap().unwrap();
    }
}

async fn count(rpc: &RpcClient, payload: Bytes) -> Result<Raw, RpcError> {
    t(echo::Client::new(rpc).count(Target::server("echo-1"), Raw(payload))).await
}

fn config(tls: Option<RpcTls>, secret: Option<&ClusterSecret>) -> RpcConfig {
    let mut c = RpcConfig::default();
    c.tls = tls;
    c.secret = secret.cloned();
    c.backoff_base = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    // The server waits half of it for a ClientHello before taking a silent peer for a plain
    // one: generous, so a loaded machine does not turn a TLS client into a "plain" one.
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// A server's TLS setting: the cluster CA and a certificate it signed (a fresh one per call,
/// as every server of a cluster has its own).
fn member(ca: &TestCa) -> RpcTls {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    RpcTls::from_pem(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

/// Polls the log until it holds `what` (the server logs a refusal after the client saw it).
async fn log_has(logs: &LogBuf, what: &str) {
    let found = tokio::time::timeout(LIMIT, async {
        while !logs.text().contains(what) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no log line with {what:?} in:\n{}",
        logs.text()
    );
}

fn assert_tls_failed(err: &RpcError, reason_has: &str, what: &str) {
    match err {
        RpcError::TlsFailed {
            server_id, reason, ..
        } => {
            assert_eq!(server_id.as_str(), "echo-1", "{what}");
            assert!(
                reason.contains(reason_has),
                "{what}: reason {reason:?} lacks {reason_has:?}"
            );
        }
        other => panic!("{what}: expected TlsFailed, got {other:?}"),
    }
    assert!(err.is_not_sent(), "{what}");
}

/// Certificates of the cluster CA on both sides, with the cluster secret inside TLS: calls go
/// through, many at once on the one connection, and a reply larger than a TLS record.
#[tokio::test]
async fn calls_work_over_mutual_tls_with_and_without_the_secret() {
    let ca = TestCa::new("rpc-ok");
    let secret = ClusterSecret::generate().unwrap();
    for secret in [None, Some(&secret)] {
        let peer = Peer::start(config(Some(member(&ca)), secret)).await;
        let rpc = peer.client(config(Some(member(&ca)), secret));
        let r = count(&rpc, Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(&r.0[..], b"hello");

        let calls: Vec<_> = (0..64u8)
            .map(|i| {
                let rpc = rpc.clone();
                tokio::spawn(async move { count(&rpc, Bytes::from(vec![i; 100])).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = t(c).await.unwrap().unwrap();
            assert_eq!(&r.0[..], &vec![i as u8; 100][..]);
        }
        // Larger than one TLS record (16 KiB): spans many records each way.
        let big = Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let r = count(&rpc, big.clone()).await.unwrap();
        assert_eq!(r.0, big);
        assert_eq!(peer.calls(), 66, "secret {:?}", secret.is_some());
        assert_eq!(rpc.peer_state("echo-1"), Some(shaddock_rpc::PeerState::Up));
        peer.stop().await;
    }
}

/// A client that presents no certificate completes its side of a TLS 1.3 handshake, then the
/// server refuses it: the client gets `TlsFailed`, the server logs why, no handler runs.
#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (logs, _guard) = capture_logs();
    let ca = TestCa::new("rpc-nocert");
    let peer = Peer::start(config(Some(member(&ca)), None)).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rpc = peer.client(config(
        Some(RpcTls::from_configs(Arc::new(no_cert), None)),
        None,
    ));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "refused the TLS session", "no client certificate");
    log_has(&logs, "TLS refused").await;
    log_has(&logs, "peer sent no certificates").await;
    assert_eq!(
        peer.calls(),
        0,
        "a handler ran for a peer without a certificate"
    );
    peer.stop().await;
}

/// A client whose certificate another CA signed is refused by the server; a server whose
/// certificate another CA signed is refused by the client (it gets no call).
#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    let (logs, _guard) = capture_logs();
    let ca = TestCa::new("rpc-cluster");
    let other = TestCa::new("rpc-other");
    let peer = Peer::start(config(Some(member(&ca)), None)).await;

    // Trusts the cluster CA, presents a certificate of the other one.
    let (cert, key) = other.issue(&["localhost"]);
    let stranger = RpcTls::from_pem(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    let rpc = peer.client(config(Some(stranger), None));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "refused the TLS session", "client cert of another CA");
    log_has(&logs, "invalid peer certificate: UnknownIssuer").await;
    assert_eq!(peer.calls(), 0);

    // A server of another cluster at the address: the client refuses it.
    let impostor = Peer::start(config(Some(member(&other)), None)).await;
    let rpc = impostor.client(config(Some(member(&ca)), None));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "UnknownIssuer", "server cert of another CA");
    assert_eq!(impostor.calls(), 0, "a call reached a server of another CA");

    // The cluster's own client is still served by the cluster's server.
    let good = peer.client(config(Some(member(&ca)), None));
    count(&good, Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(peer.calls(), 1);
    impostor.stop().await;
    peer.stop().await;
}

/// Plain TCP against a TLS port (with or without the secret) and TLS against a plain port:
/// refused, with a reason that says TLS on both ends.
#[tokio::test]
async fn plain_tcp_and_tls_do_not_mix() {
    let (logs, _guard) = capture_logs();
    let ca = TestCa::new("rpc-plain");
    let secret = ClusterSecret::generate().unwrap();

    // A plain client sends its first ping: the server sees it is not TLS.
    let peer = Peer::start(config(Some(member(&ca)), None)).await;
    let rpc = peer.client(config(None, None));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "the peer speaks TLS", "plain client");
    log_has(&logs, "plain TCP peer on a TLS rpc port").await;
    peer.stop().await;

    // A plain client with a secret waits for a challenge that never comes in the clear.
    let peer = Peer::start(config(Some(member(&ca)), Some(&secret))).await;
    let rpc = peer.client(config(None, Some(&secret)));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "the peer speaks TLS", "plain client with a secret");
    log_has(&logs, "no TLS ClientHello").await;
    assert_eq!(peer.calls(), 0);
    peer.stop().await;

    // A TLS client against a plain port.
    let plain = Peer::start(config(None, None)).await;
    let rpc = plain.client(config(Some(member(&ca)), None));
    let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
    assert_tls_failed(&err, "TLS handshake failed", "TLS client, plain server");
    assert_eq!(plain.calls(), 0);
    plain.stop().await;
}

/// Inside TLS the cluster secret is still required: a client with the right certificate but
/// another secret (or none) gets `AuthFailed` and no handler runs.
#[tokio::test]
async fn the_secret_is_still_checked_over_tls() {
    let (logs, _guard) = capture_logs();
    let ca = TestCa::new("rpc-secret");
    let secret = ClusterSecret::generate().unwrap();
    let wrong = ClusterSecret::generate().unwrap();
    let peer = Peer::start(config(Some(member(&ca)), Some(&secret))).await;
    for (what, s) in [("a wrong secret", Some(&wrong)), ("no secret", None)] {
        let rpc = peer.client(config(Some(member(&ca)), s));
        let err = count(&rpc, Bytes::from_static(b"no")).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::AuthFailed { server_id, .. } if server_id.as_str() == "echo-1"),
            "{what}: {err:?}"
        );
    }
    log_has(&logs, "wrong cluster secret").await;
    log_has(&logs, "before authenticating").await;
    assert_eq!(peer.calls(), 0);
    let good = peer.client(config(Some(member(&ca)), Some(&secret)));
    count(&good, Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(peer.calls(), 1);
    peer.stop().await;
}
