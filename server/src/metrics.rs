//! A server's Prometheus endpoint: `GET /metrics` on the HTTP port of servers.json's
//! `metricsPort` (see [`crate::config::ServerConfig::metrics_port`]), in the Prometheus text
//! format (0.0.4) written by prometheus-client, the Prometheus project's Rust client.
//!
//! What it serves:
//! - whatever the caller registered in the [`Registry`] (the RPC client and server counters
//!   of [`shaddock_rpc::RpcMetrics`], through [`MetricsBuilder::rpc`]);
//! - the process, read from `/proc/self` at each scrape ([`ProcessCollector`]):
//!   `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_threads`, `process_open_fds`,
//!   `process_start_time_seconds` (the names the Prometheus clients of other languages use);
//! - a frontend's connection counters, read from a closure returning the connector's
//!   [`StatsSnapshot`] at each scrape ([`ConnectorStatsCollector`], through
//!   [`MetricsBuilder::connector_stats`]).
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use shaddock_server::metrics::MetricsBuilder;
//! let mut metrics = MetricsBuilder::new();
//! let rpc_metrics = metrics.rpc(); // put it in the RpcConfig of the server and the client
//! let endpoint = metrics.serve("0.0.0.0:9100").await?;
//! println!("metrics at {}", endpoint.url());
//! # drop(rpc_metrics); Ok(()) }
//! ```
//!
//! The endpoint answers `GET` (and `HEAD`) `/metrics`, 404 for other paths, 405 for other
//! methods; at most [`MAX_CONNECTIONS`] scrapers at once, each with
//! [`HEADER_TIMEOUT`] to send its request head. It stops when the [`MetricsServer`] is stopped
//! or dropped.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use shaddock_connector::StatsSnapshot;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Scrapers served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a scraper has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the registry a server's endpoint serves: the process collector is in it from the
/// start; add the RPC metrics, a connector's counters and anything else, then
/// [`serve`](Self::serve).
#[derive(Debug)]
pub struct MetricsBuilder {
    registry: Registry,
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsBuilder {
    /// A registry with the [`ProcessCollector`].
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        Self { registry }
    }

    /// The registry, to register more metrics or collectors.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Registers the RPC metrics; put the result in [`shaddock_rpc::RpcConfig::metrics`] of
    /// the process's RPC server and client (one registration per process: the same metrics
    /// serve both).
    pub fn rpc(&mut self) -> shaddock_rpc::RpcMetrics {
        shaddock_rpc::RpcMetrics::register(&mut self.registry)
    }

    /// Registers the counters of pushes that go through the cluster's NATS subjects instead
    /// of RPCs (a cluster on NATS, issue 15); see [`ClusterPushMetrics`].
    pub fn cluster_pushes(&mut self) -> ClusterPushMetrics {
        let m = ClusterPushMetrics::default();
        let r = self.registry.sub_registry_with_prefix("shaddock_cluster");
        r.register(
            "broadcasts_published",
            "App-wide broadcasts published as one NATS message (backends)",
            m.broadcasts_published.clone(),
        );
        r.register(
            "broadcast_errors",
            "App-wide broadcasts that could not be published (too large for the NATS max payload, NATS unreachable)",
            m.broadcast_errors.clone(),
        );
        r.register(
            "broadcasts_received",
            "App-wide broadcasts received from NATS and queued to every session (frontends)",
            m.broadcasts_received.clone(),
        );
        r.register(
            "pushes_received",
            "Uid pushes received from NATS and queued to their sessions (frontends)",
            m.pushes_received.clone(),
        );
        m
    }

    /// Adds a cluster backend's own counters, read from `snapshot` at each scrape (e.g.
    /// `move || backend.stats()`): `shaddock_cluster_slow_consumers_total` (NATS messages the
    /// client dropped because a subscription was read too slowly), `..._reconnects_total`,
    /// `..._bad_pushes_total`, `..._bad_entries_total`.
    pub fn cluster_stats(
        &mut self,
        snapshot: impl Fn() -> crate::cluster::ClusterStats + Send + Sync + 'static,
    ) {
        self.registry
            .register_collector(Box::new(ClusterStatsCollector {
                snapshot: Box::new(snapshot),
            }));
    }

    /// Adds a frontend's connection counters, read from `snapshot` at each scrape (e.g.
    /// `move || stats.snapshot()` with the frontend's `Arc<ConnectorStats>`).
    pub fn connector_stats(
        mut self,
        snapshot: impl Fn() -> StatsSnapshot + Send + Sync + 'static,
    ) -> Self {
        self.registry
            .register_collector(Box::new(ConnectorStatsCollector::new(snapshot)));
        self
    }

    /// Adds everything a frontend counts: its connection counters
    /// ([`ConnectorStatsCollector`]), its queue depths (`shaddock_connector_queued_messages`,
    /// `shaddock_connector_queued_messages_max`, read at each scrape) and the per-route
    /// metrics of [`RouteMetricsFamilies`]; returns the hook to give the frontend's builder
    /// ([`shaddock_connector::FrontendBuilder::route_metrics`]). `routes` are the routes
    /// that get their own label (the app's handler routes and its dictionary); any other
    /// route is counted as [`UNKNOWN_ROUTE`].
    pub fn frontend_routes<'a>(
        &mut self,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Arc<RouteMetricsFamilies> {
        RouteMetricsFamilies::register(&mut self.registry, routes)
    }

    /// Adds a frontend's counters, queue depths and users online
    /// (`shaddock_connector_users_online`: distinct uids bound to its sessions), read from
    /// `frontend` at each scrape.
    pub fn frontend(mut self, frontend: &shaddock_connector::Frontend) -> Self {
        let f = frontend.clone();
        self.registry
            .register_collector(Box::new(ConnectorStatsCollector::new(move || f.stats())));
        let f = frontend.clone();
        self.registry
            .register_collector(Box::new(QueueCollector(Box::new(move || {
                let (total, most) = f.queued();
                (total, most, f.sessions().uid_count() as u64)
            }))));
        self
    }

    /// The registry as built.
    pub fn into_registry(self) -> Registry {
        self.registry
    }

    /// Serves the registry on `addr` (see [`serve`]).
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> std::io::Result<MetricsServer> {
        serve_registry(addr, self.registry).await
    }

    /// Serves the registry on `host:metricsPort` of `server` (its servers.json entry), or
    /// returns `Ok(None)` when the entry has no `metricsPort`. With port `0` the real port is
    /// [`MetricsServer::local_addr`]'s.
    ///
    /// # Errors
    /// The port cannot be bound; the error names the server and the address.
    pub async fn serve_for(
        self,
        server: &crate::config::ServerConfig,
    ) -> std::io::Result<Option<MetricsServer>> {
        let Some(addr) = server.metrics_addr() else {
            return Ok(None);
        };
        match serve_registry(addr.as_str(), self.registry).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!(
                    "{}/{}: cannot serve metrics on {addr} (metricsPort): {e}",
                    server.server_type, server.id
                ),
            )),
        }
    }
}

/// Counters of the pushes that travel on the cluster's NATS subjects (served as
/// `shaddock_cluster_*_total`). Clones count into the same counters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClusterPushMetrics {
    /// Broadcasts published, one NATS message each (on backends).
    pub broadcasts_published: Counter,
    /// Broadcasts refused before publishing (on backends).
    pub broadcast_errors: Counter,
    /// Broadcast messages received and queued to every session (on frontends).
    pub broadcasts_received: Counter,
    /// Uid push messages received and queued to their sessions (on frontends).
    pub pushes_received: Counter,
}

/// Serves `registry` at `GET /metrics` on `addr`, adding the [`ProcessCollector`] to it.
///
/// # Errors
/// The port cannot be bound.
pub async fn serve(
    addr: impl ToSocketAddrs,
    mut registry: Registry,
) -> std::io::Result<MetricsServer> {
    registry.register_collector(Box::new(ProcessCollector));
    serve_registry(addr, registry).await
}

async fn serve_registry(
    addr: impl ToSocketAddrs,
    registry: Registry,
) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let span = tracing::info_span!("metrics", local = %local_addr);
    let task =
        tokio::spawn(accept_loop(listener, Arc::new(registry), shutdown.clone()).instrument(span));
    tracing::debug!(addr = %local_addr, "metrics endpoint listening");
    Ok(MetricsServer {
        local_addr,
        shutdown,
        task: Some(task),
    })
}

/// A running metrics endpoint; stops when [`stop`](Self::stop)ped or dropped.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://host:port/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.local_addr)
    }

    /// Stops accepting, closes the open scrapes, and waits for the accept loop to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take()
            && let Err(e) = t.await
        {
            tracing::warn!(cause = %e, "metrics endpoint task failed");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished scrapes so the set does not grow.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics endpoint: accept failed; retrying in 100 ms");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let registry = Arc::clone(&registry);
        conns.spawn(
            async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<Incoming>| {
                    let r = respond(&registry, req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, cause = %e, "metrics scrape connection ended with an error");
                }
            }
            .in_current_span(),
        );
    }
    // Dropping the set aborts the scrapes still open.
    drop(conns);
    tracing::debug!("metrics endpoint stopped");
}

/// The answer to one request.
fn respond(registry: &Registry, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        tracing::error!(cause = %e, "metrics could not be encoded");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        );
    }
    let len = text.len();
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(text)
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// This process as `/proc/self` shows it at scrape time. A file that cannot be read (not
/// Linux) leaves its metrics out; the scrape still succeeds.
///
/// CPU time is counted in the kernel's clock ticks of `/proc/<pid>/stat`, which Linux
/// reports in `USER_HZ` = 100 per second on every architecture it runs on (asking
/// `sysconf(_SC_CLK_TCK)` would need `unsafe`, which the workspace forbids).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// Ticks per second of `/proc/<pid>/stat` times (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// What [`ProcessCollector`] reads (public for tests and tools).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`.
    ///
    /// # Errors
    /// `/proc/self/stat` or `/proc/self/status` cannot be read or parsed.
    pub fn read() -> std::io::Result<Self> {
        let bad = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/self/{what}"),
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let status = std::fs::read_to_string("/proc/self/status")?;
        let (utime, stime, start_ticks) = parse_stat(&stat).ok_or_else(|| bad("stat"))?;
        let rss_bytes = crate::procfs::parse_vm_rss(&status).ok_or_else(|| bad("status VmRSS"))?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let virtual_bytes = kb("VmSize:").unwrap_or(0).saturating_mul(1024);
        let threads = kb("Threads:").unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Ok(Self {
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            rss_bytes,
            virtual_bytes,
            threads,
            open_fds,
            start_time_seconds: boot as f64 + start_ticks as f64 / USER_HZ,
        })
    }
}

/// `utime`, `stime` and `starttime` (fields 14, 15 and 22) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let p = match ProcessStats::read() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(cause = %e, "no process metrics");
                return Ok(());
            }
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 5] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                p.rss_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                p.virtual_bytes as f64,
            ),
            ("process_threads", "OS threads", None, p.threads as f64),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                p.open_fds as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        Ok(())
    }
}

/// A cluster backend's counters at each scrape ([`MetricsBuilder::cluster_stats`]).
struct ClusterStatsCollector {
    snapshot: Box<dyn Fn() -> crate::cluster::ClusterStats + Send + Sync>,
}

impl fmt::Debug for ClusterStatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterStatsCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for ClusterStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let s = (self.snapshot)();
        for (name, help, v) in [
            (
                "shaddock_cluster_slow_consumers",
                "NATS messages the cluster client dropped because a subscription was read too slowly",
                s.slow_consumers,
            ),
            (
                "shaddock_cluster_reconnects",
                "Reconnections of the cluster client to NATS after a lost connection",
                s.reconnects,
            ),
            (
                "shaddock_cluster_bad_pushes",
                "Push messages from NATS that could not be decoded (dropped)",
                s.bad_pushes,
            ),
            (
                "shaddock_cluster_bad_entries",
                "Registry, placement or beat entries that could not be decoded (skipped)",
                s.bad_entries,
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// A frontend's connection counters ([`StatsSnapshot`]), read at each scrape from a closure.
///
/// | metric | kind | from |
/// |---|---|---|
/// | `shaddock_connector_connections_accepted_total` | counter | `accepted` |
/// | `shaddock_connector_connections_active` | gauge | `active` |
/// | `shaddock_connector_connections_refused_total` | counter | `refused` (connection cap) |
/// | `shaddock_connector_kicks_total{reason}` | counter | `reason="slow_consumer"`, `"rate_limit"`, `"other"` (application kicks: `kicked` less the two) |
/// | `shaddock_connector_rate_limited_total` | counter | `rate_limited` |
/// | `shaddock_connector_closed_total{reason}` | counter | `reason="handshake_timeout"`, `"heartbeat_timeout"`, `"protocol_error"` |
/// | `shaddock_connector_accept_errors_total` | counter | `accept_errors` |
/// | `shaddock_connector_peak_parked_messages` | gauge | `peak_parked` |
/// | `shaddock_connector_handshakes_total{outcome}` | counter | `outcome="accepted"` (`handshakes`), `"refused"` (`handshakes_refused`) |
/// | `shaddock_connector_pushes_total` | counter | `pushed` |
pub struct ConnectorStatsCollector {
    snapshot: Box<dyn Fn() -> StatsSnapshot + Send + Sync>,
}

impl fmt::Debug for ConnectorStatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorStatsCollector")
            .finish_non_exhaustive()
    }
}

impl ConnectorStatsCollector {
    /// A collector reading `snapshot` at each scrape.
    pub fn new(snapshot: impl Fn() -> StatsSnapshot + Send + Sync + 'static) -> Self {
        Self {
            snapshot: Box::new(snapshot),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

fn by_outcome(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&'static str, u64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (outcome, v) in values {
        let c = ConstCounter::new(*v);
        c.encode(family.encode_family(&Outcome { outcome })?)?;
    }
    Ok(())
}

impl Collector for ConnectorStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let s = (self.snapshot)();
        let counter = |encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        let by_reason = |encoder: &mut DescriptorEncoder<'_>,
                         name: &str,
                         help: &str,
                         values: &[(&'static str, u64)]| {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, v) in values {
                let c = ConstCounter::new(*v);
                c.encode(family.encode_family(&Reason { reason })?)?;
            }
            Ok::<(), fmt::Error>(())
        };
        counter(
            &mut encoder,
            "shaddock_connector_connections_accepted",
            "Client connections accepted and served",
            s.accepted,
        )?;
        let active = ConstGauge::new(s.active);
        active.encode(encoder.encode_descriptor(
            "shaddock_connector_connections_active",
            "Client connections open now",
            None,
            active.metric_type(),
        )?)?;
        counter(
            &mut encoder,
            "shaddock_connector_connections_refused",
            "Client connections closed at once because max-connections were open",
            s.refused,
        )?;
        let other = s
            .kicked
            .saturating_sub(s.rate_limited)
            .saturating_sub(s.slow_consumers);
        by_reason(
            &mut encoder,
            "shaddock_connector_kicks",
            "Client connections kicked, by reason",
            &[
                ("slow_consumer", s.slow_consumers),
                ("rate_limit", s.rate_limited),
                ("other", other),
            ],
        )?;
        counter(
            &mut encoder,
            "shaddock_connector_rate_limited",
            "Client connections kicked for going over the inbound rate limit",
            s.rate_limited,
        )?;
        by_reason(
            &mut encoder,
            "shaddock_connector_closed",
            "Client connections closed by the server for a fault of the client, by reason",
            &[
                ("handshake_timeout", s.handshake_timeouts),
                ("heartbeat_timeout", s.heartbeat_timeouts),
                ("protocol_error", s.protocol_errors),
            ],
        )?;
        counter(
            &mut encoder,
            "shaddock_connector_accept_errors",
            "Errors returned by accept on the client port",
            s.accept_errors,
        )?;
        by_outcome(
            &mut encoder,
            "shaddock_connector_handshakes",
            "Pomelo handshakes answered, by outcome",
            &[
                ("accepted", s.handshakes),
                ("refused", s.handshakes_refused),
            ],
        )?;
        counter(
            &mut encoder,
            "shaddock_connector_pushes",
            "Pushes queued to client connections (one per connection reached)",
            s.pushed,
        )?;
        let parked = ConstGauge::new(s.peak_parked);
        parked.encode(encoder.encode_descriptor(
            "shaddock_connector_peak_parked_messages",
            "The most messages one connection has had parked at once",
            None,
            parked.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The route label of a message whose route is not one of the app's (a client may send any
/// name): labels stay bounded.
pub const UNKNOWN_ROUTE: &str = "(unknown)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    kind: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn route_latency() -> Histogram {
    Histogram::new(shaddock_rpc::metrics::LATENCY_BUCKETS)
}

/// The handles of one route and kind.
#[derive(Clone, Debug)]
struct RouteHandles {
    count: Counter,
    errors: Counter,
    latency: Histogram,
}

/// Per-route metrics of a frontend's messages (the [`shaddock_connector::RouteMetrics`]
/// hook), labels `route` (one of the routes given at registration, else [`UNKNOWN_ROUTE`])
/// and `kind` (`request` or `notify`):
///
/// | metric | kind |
/// |---|---|
/// | `shaddock_frontend_messages_total{route,kind}` | counter: messages handled |
/// | `shaddock_frontend_message_errors_total{route,kind}` | counter: answered with an error |
/// | `shaddock_frontend_message_latency_seconds{route,kind}` | histogram: filters + handler (or forward) |
///
/// The handles of every known route are made at registration, so a message costs one map
/// lookup and three atomic updates.
#[derive(Debug)]
pub struct RouteMetricsFamilies {
    known: HashMap<String, [RouteHandles; 2]>,
    unknown: [RouteHandles; 2],
}

impl RouteMetricsFamilies {
    fn register<'a>(
        registry: &mut Registry,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Self> {
        let count: Family<RouteLabels, Counter> = Family::default();
        let errors: Family<RouteLabels, Counter> = Family::default();
        let latency: LatencyFamily = Family::new_with_constructor(route_latency);
        let r = registry.sub_registry_with_prefix("shaddock_frontend");
        r.register(
            "messages",
            "Client requests and notifies handled, by route and kind",
            count.clone(),
        );
        r.register(
            "message_errors",
            "Client requests and notifies answered with an error, by route and kind",
            errors.clone(),
        );
        r.register_with_unit(
            "message_latency",
            "Time from a client message to its outcome (filters and handler or forward), by route and kind",
            Unit::Seconds,
            latency.clone(),
        );
        let handles = |route: &str| {
            ["request", "notify"].map(|kind| {
                let l = RouteLabels {
                    route: route.to_owned(),
                    kind,
                };
                RouteHandles {
                    count: count.get_or_create_owned(&l),
                    errors: errors.get_or_create_owned(&l),
                    latency: latency.get_or_create_owned(&l),
                }
            })
        };
        let known = routes
            .into_iter()
            .map(|r| (r.to_owned(), handles(r)))
            .collect();
        Arc::new(Self {
            known,
            unknown: handles(UNKNOWN_ROUTE),
        })
    }
}

impl shaddock_connector::RouteMetrics for RouteMetricsFamilies {
    fn handled(
        &self,
        route: &str,
        kind: shaddock_connector::MessageKind,
        took: Duration,
        failed: bool,
    ) {
        let h = self.known.get(route).unwrap_or(&self.unknown);
        let h = &h[usize::from(kind == shaddock_connector::MessageKind::Notify)];
        h.count.inc();
        if failed {
            h.errors.inc();
        }
        h.latency.observe(took.as_secs_f64());
    }
}

/// A frontend's gauges read at scrape time: `(total, longest)` messages queued and the
/// users online (distinct uids bound to its sessions).
struct QueueCollector(Box<dyn Fn() -> (u64, u64, u64) + Send + Sync>);

impl fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueCollector").finish_non_exhaustive()
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let (total, most, users) = (self.0)();
        for (name, help, v) in [
            (
                "shaddock_connector_queued_messages",
                "Messages queued for writing, over every client connection",
                total,
            ),
            (
                "shaddock_connector_queued_messages_max",
                "Messages queued for writing on the most loaded client connection",
                most,
            ),
            (
                "shaddock_connector_users_online",
                "Users online: distinct uids bound to a client session here",
                users,
            ),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 123456 1000000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some((250, 50, 123456)));
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_read() {
        let p = ProcessStats::read().unwrap();
        assert!(p.rss_bytes > 0 && p.threads > 0 && p.open_fds > 0, "{p:?}");
        assert!(p.start_time_seconds > 1.0e9, "{p:?}");
    }
}
