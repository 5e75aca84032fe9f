//! The metrics endpoint end to end: a real RPC server and client counting into one registry,
//! the endpoint served over HTTP on 127.0.0.1, scraped with a plain HTTP/1.1 request and
//! parsed with prometheus-parse (a Prometheus text-format parser); the values must be the
//! calls made, the process's memory and CPU, and a connector snapshot read at scrape time.

use bytes::Bytes;
use prometheus_parse::{Scrape, Value};
use shaddock_connector::StatsSnapshot;
use shaddock_rpc::{
    Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcServer, ServerInfo, Target, remote,
};
use shaddock_server::metrics::MetricsBuilder;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

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
        /// Always fails.
        fn fail(Raw) -> Raw;
    }
}

struct EchoImpl;

impl echo::Remote for EchoImpl {
    async fn echo(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
    async fn fail(&self, _: Raw) -> Result<Raw, RemoteError> {
        Err(RemoteError::new(7, "no"))
    }
}

/// One HTTP/1.1 request; the status line, the headers (lower-case names) and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (String, HashMap<String, String>, String) {
    let mut s = t(TcpStream::connect(addr)).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    t(s.write_all(req.as_bytes())).await.unwrap();
    let mut raw = Vec::new();
    t(s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("no end of the response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the one sample of `metric` whose labels are exactly `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && *x.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric}: not a single value: {other:?}"),
    }
}

/// The `+Inf` bucket of the histogram `metric` with `labels`.
fn histogram_total(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let h = s
        .samples
        .iter()
        .find(|x| x.metric == metric && *x.labels == want)
        .unwrap_or_else(|| panic!("no histogram {metric}{labels:?}"));
    let Value::Histogram(buckets) = &h.value else {
        panic!("{metric} is not a histogram: {:?}", h.value);
    };
    buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .expect("no +Inf bucket")
        .count
}

#[tokio::test]
async fn the_endpoint_serves_rpc_process_and_connector_metrics() {
    let mut builder = MetricsBuilder::new();
    let rpc_metrics = builder.rpc();
    let active = Arc::new(AtomicU64::new(3));
    let seen = Arc::clone(&active);
    let builder = builder.connector_stats(move || {
        let mut s = StatsSnapshot::default();
        s.accepted = 10;
        s.active = seen.load(Ordering::SeqCst);
        s.kicked = 6;
        s.rate_limited = 1;
        s.slow_consumers = 2;
        s.protocol_errors = 4;
        s
    });
    let endpoint = t(builder.serve("127.0.0.1:0")).await.unwrap();
    let addr = endpoint.local_addr();
    assert_eq!(endpoint.url(), format!("http://{addr}/metrics"));

    let mut config = RpcConfig::default();
    config.metrics = Some(rpc_metrics);
    let mut registry = Registry::new();
    registry.add(echo::Server::new(EchoImpl)).unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server =
        tokio::spawn(RpcServer::new(registry, config.clone()).serve(listener, shutdown.clone()));
    let rpc = RpcClient::new(config);
    rpc.directory()
        .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", port));
    let stub = echo::Client::new(&rpc);
    let to = || Target::server("echo-1");
    for i in 0..5u8 {
        let r = t(stub.echo(to(), Raw(Bytes::from(vec![i; 4]))))
            .await
            .unwrap();
        assert_eq!(&r.0[..], &[i; 4]);
    }
    for _ in 0..2 {
        t(stub.fail(to(), Raw(Bytes::new()))).await.unwrap_err();
    }
    let err = t(stub.echo(Target::server("nobody"), Raw(Bytes::new())))
        .await
        .unwrap_err();
    assert!(
        matches!(err, shaddock_rpc::RpcError::UnknownPeer { .. }),
        "{err:?}"
    );

    let s = scrape(addr).await;
    let peer = [("peer", "echo-1")];
    assert_eq!(value(&s, "shaddock_rpc_client_calls_total", &peer), 7.0);
    assert_eq!(
        value(
            &s,
            "shaddock_rpc_client_errors_total",
            &[("peer", "echo-1"), ("error", "remote")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "shaddock_rpc_client_errors_total",
            &[("peer", ""), ("error", "unknown_peer")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "shaddock_rpc_client_latency_seconds_count", &peer),
        7.0
    );
    assert_eq!(
        histogram_total(&s, "shaddock_rpc_client_latency_seconds", &peer),
        7.0
    );
    let m = |method| [("service", "echoRemote"), ("method", method)];
    assert_eq!(
        value(&s, "shaddock_rpc_server_calls_total", &m("echo")),
        5.0
    );
    assert_eq!(
        value(&s, "shaddock_rpc_server_calls_total", &m("fail")),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "shaddock_rpc_server_errors_total",
            &[
                ("service", "echoRemote"),
                ("method", "fail"),
                ("error", "handler")
            ]
        ),
        2.0
    );
    assert_eq!(
        histogram_total(&s, "shaddock_rpc_server_latency_seconds", &m("echo")),
        5.0
    );
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    let cpu = value(&s, "process_cpu_seconds_total", &[]);
    assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
    assert!(value(&s, "process_threads", &[]) >= 1.0);
    assert!(value(&s, "process_open_fds", &[]) >= 1.0);
    assert_eq!(value(&s, "shaddock_connector_connections_active", &[]), 3.0);
    assert_eq!(
        value(&s, "shaddock_connector_connections_accepted_total", &[]),
        10.0
    );
    let kicks = |reason| value(&s, "shaddock_connector_kicks_total", &[("reason", reason)]);
    assert_eq!(
        (kicks("slow_consumer"), kicks("rate_limit"), kicks("other")),
        (2.0, 1.0, 3.0)
    );
    assert_eq!(
        value(
            &s,
            "shaddock_connector_closed_total",
            &[("reason", "protocol_error")]
        ),
        4.0
    );

    // Read at scrape time: more calls and a changed snapshot show in the next scrape.
    for _ in 0..3 {
        t(stub.echo(to(), Raw(Bytes::new()))).await.unwrap();
    }
    active.store(1, Ordering::SeqCst);
    let s = scrape(addr).await;
    assert_eq!(value(&s, "shaddock_rpc_client_calls_total", &peer), 10.0);
    assert_eq!(
        value(&s, "shaddock_rpc_server_calls_total", &m("echo")),
        8.0
    );
    assert_eq!(value(&s, "shaddock_connector_connections_active", &[]), 1.0);

    // Only GET/HEAD /metrics.
    let (status, _, _) = http(addr, "GET", "/other").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, headers, _) = http(addr, "POST", "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, headers, body) = http(addr, "HEAD", "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.is_empty());
    assert!(headers["content-length"].parse::<usize>().unwrap() > 0);

    shutdown.cancel();
    t(server).await.unwrap().unwrap();
    t(endpoint.stop()).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the endpoint still accepts after stop"
    );
}

/// `serve(addr, registry)` with a registry of the caller's own: its metrics and the process
/// collector are served.
#[tokio::test]
async fn serve_takes_a_registry_of_the_callers() {
    let mut registry = prometheus_client::registry::Registry::default();
    let c: prometheus_client::metrics::counter::Counter = Default::default();
    registry.register("app_things", "Things done", c.clone());
    c.inc_by(41);
    let endpoint = t(shaddock_server::metrics::serve("127.0.0.1:0", registry))
        .await
        .unwrap();
    c.inc();
    let s = scrape(endpoint.local_addr()).await;
    assert_eq!(value(&s, "app_things_total", &[]), 42.0);
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    t(endpoint.stop()).await;
}

/// `serve_for` binds the `metricsPort` of a server's definition, or nothing without one.
#[tokio::test]
async fn serve_for_uses_the_metrics_port_of_the_definition() {
    use shaddock_server::config::parse_server_def;
    let with = parse_server_def(
        serde_json::json!({"id": "chat-1", "serverType": "chat", "port": 0, "metricsPort": 0}),
        None,
    )
    .unwrap();
    let endpoint = t(MetricsBuilder::new().serve_for(&with))
        .await
        .unwrap()
        .expect("an endpoint for a server with a metricsPort");
    assert_eq!(endpoint.local_addr().ip().to_string(), "127.0.0.1");
    let s = scrape(endpoint.local_addr()).await;
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    t(endpoint.stop()).await;

    let without = parse_server_def(
        serde_json::json!({"id": "chat-2", "serverType": "chat", "port": 0}),
        None,
    )
    .unwrap();
    assert!(
        t(MetricsBuilder::new().serve_for(&without))
            .await
            .unwrap()
            .is_none()
    );
}
