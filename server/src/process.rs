//! One server process: binds its ports, registers with the master, keeps its peer directory in
//! line with the master's view, serves clients (frontends) and remotes, and stops gracefully.

use std::sync::Arc;
use std::time::Duration;

// The frontend-running side: a frontend server's client port.
use shaddock_connector::{ConnectorConfig, Frontend, ServerTls, Session};
use shaddock_protocol::BodyCodec;
use shaddock_rpc::{Registry, RemoteError, RpcClient, RpcConfig, RpcServer, ServerInfo, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Hook};
use crate::backend::MsgRemote;
use crate::cluster::{ClaimPolicy, ClusterBackend, ServerRecord};
use crate::config::ServerConfig;
use crate::context::{RejoinSpec, ServerContext};
use crate::frontend::{forwarder, session_remote};
use crate::proto::{
    Claim, ClaimSet, ServerEntry, StatsReport, StopArgs, WatchArgs, master_remote, msg_remote,
    server_remote,
};

/// The line a server process prints on its standard output (which the master reads) when it
/// ends with an error, followed by the error: how the master, and the launcher after it, learn
/// why a server could not start.
pub const FAILED_LINE: &str = "SHADDOCK_SERVER_FAILED";

/// The environment variable that carries the cluster secret (hex) from the master to the
/// servers it starts, and to admin tools (`list`, `stop`). Never passed on a command line and
/// never logged.
pub const RPC_SECRET_ENV: &str = "SHADDOCK_RPC_SECRET";

/// The environment variable in which a launcher tells a server how many times it restarted
/// it (carried in its registry record, shown by `list` in a cluster on NATS).
pub const RESTARTS_ENV: &str = "SHADDOCK_RESTARTS";

/// The restarts in [`RESTARTS_ENV`] (0 when unset or unreadable).
pub(crate) fn restarts_from_env() -> u32 {
    std::env::var(RESTARTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The cluster secret in [`RPC_SECRET_ENV`], if set and not empty.
///
/// # Errors
/// The variable is set but is not a hex secret of at least 16 bytes (the message names the
/// variable, never its value).
pub fn rpc_secret_from_env() -> Result<Option<shaddock_rpc::ClusterSecret>, String> {
    match std::env::var(RPC_SECRET_ENV) {
        Ok(v) if !v.trim().is_empty() => shaddock_rpc::ClusterSecret::from_hex(&v)
            .map(Some)
            .map_err(|e| format!("${RPC_SECRET_ENV}: {e}")),
        _ => Ok(None),
    }
}

/// The RPC settings of every server and tool of the cluster: the defaults, with the cluster
/// secret from [`RPC_SECRET_ENV`] when it is set.
///
/// # Errors
/// As [`rpc_secret_from_env`].
pub fn rpc_config_from_env() -> Result<RpcConfig, String> {
    let mut cfg = RpcConfig::default();
    cfg.secret = rpc_secret_from_env()?;
    Ok(cfg)
}

/// The type the master has in a server's peer directory.
pub(crate) const MASTER_TYPE: &str = "__master";

/// How long a frontend waits for in-flight requests on stop, and then again for the kicked
/// clients to go.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a frontend's `serve` may take to finish once cancelled.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a server process failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A port could not be bound.
    #[error("server `{server}`: cannot bind {what} {addr}: {source}")]
    Bind {
        /// The server id.
        server: String,
        /// `rpc port` or `client port`.
        what: &'static str,
        /// `host:port`.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The remotes could not be registered.
    #[error("server `{server}`: {source}")]
    Registry {
        /// The server id.
        server: String,
        /// The error.
        source: shaddock_rpc::RegistryError,
    },
    /// The frontend could not be built.
    #[error("server `{server}`: {source}")]
    Frontend {
        /// The server id.
        server: String,
        /// The error.
        source: shaddock_connector::Error,
    },
    /// A component's start failed.
    #[error("server `{server}`: component `{component}` failed to start: {source}")]
    Component {
        /// The server id.
        server: String,
        /// The component.
        component: String,
        /// Its error.
        source: crate::app::ComponentError,
    },
    /// The app's declarations are wrong (a bad route, a dictionary that cannot be built).
    #[error("server `{server}`: {source}")]
    App {
        /// The server id.
        server: String,
        /// The error.
        source: crate::app::AppError,
    },
    /// The master could not be reached or refused the registration.
    #[error("server `{server}`: cannot register with master {master}: {message}")]
    Register {
        /// The server id.
        server: String,
        /// The master's address.
        master: String,
        /// The error.
        message: String,
    },
    /// The `ssl` certificate or key of the frontend could not be loaded.
    #[error("server `{server}`: TLS on the client port: {message}")]
    Tls {
        /// The server id.
        server: String,
        /// What failed, naming the file (or the servers.json field).
        message: String,
    },
    /// The master address is not `host:port`.
    #[error("bad master address `{0}` (want host:port)")]
    MasterAddr(String),
    /// master.json's `rpcTls` files cannot be read, or the metrics port cannot be bound.
    #[error("server `{server}`: {message}")]
    Setup {
        /// The server id.
        server: String,
        /// What failed, naming the file or the address.
        message: String,
    },
    /// The cluster secret in the environment is unusable.
    #[error("server `{server}`: {message}")]
    Secret {
        /// The server id.
        server: String,
        /// What is wrong (never the secret).
        message: String,
    },
}

struct StopRemote {
    ctx: ServerContext,
}

impl server_remote::Remote for StopRemote {
    async fn stop(&self, args: StopArgs) -> Result<(), RemoteError> {
        if args.notice_only {
            // The cluster is stopping: every peer leaves on purpose from now on.
            tracing::debug!(reason = %args.reason, "the cluster is stopping");
            let rpc = self.ctx.rpc();
            for peer in rpc.directory().all() {
                // The master stays until every server has gone.
                if peer.server_type != MASTER_TYPE {
                    rpc.expect_departure(peer.id.as_str());
                }
            }
            return Ok(());
        }
        tracing::debug!(reason = %args.reason, "stop requested");
        self.ctx.request_stop();
        Ok(())
    }
}

fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (h, p) = addr.rsplit_once(':')?;
    Some((h.to_owned(), p.parse().ok()?))
}

/// A client of the `master` remote of the master listening on `addr` (`host:port`), which its
/// calls reach as `Target::server(id)`: for tools outside the cluster (the CLI, a launcher).
/// `None` if `addr` is not `host:port`.
pub fn master_client(id: &str, addr: &str, cfg: RpcConfig) -> Option<master_remote::Client> {
    let (host, port) = split_addr(addr)?;
    let rpc = RpcClient::new(cfg);
    rpc.directory()
        .add(ServerInfo::new(id, MASTER_TYPE, host, port));
    Some(master_remote::Client::new(&rpc))
}

fn entry_of(s: &ServerConfig, metrics_port: u16) -> ServerEntry {
    ServerEntry {
        id: s.id.clone(),
        server_type: s.server_type.clone(),
        host: s.host.clone(),
        port: u32::from(s.port.unwrap_or(0)),
        client_port: u32::from(s.client_port.unwrap_or(0)),
        frontend: s.frontend,
        pid: std::process::id(),
        extra_json: serde_json::Value::Object(s.extra.clone()).to_string(),
        metrics_port: u32::from(metrics_port),
    }
}

/// The frontend options a server's entry in servers.json may set: `max-connections`,
/// `heartbeat` (seconds, 0 = off), `push-flush-interval` (milliseconds, 0 = off: pomelo's
/// buffer push scheduler and its `flushInterval`, see `ConnectorConfig::push_flush_interval`)
/// and `push-linger` (milliseconds, see `ConnectorConfig::push_linger`).
fn connector_config(s: &ServerConfig) -> ConnectorConfig {
    let mut c = ConnectorConfig::default();
    c.frontend_id = s.id.clone();
    c.server_type = s.server_type.clone();
    let number = |key: &str| s.extra.get(key).and_then(serde_json::Value::as_u64);
    if let Some(n) = number("max-connections") {
        c.max_connections = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    }
    if let Some(n) = number("heartbeat") {
        c.heartbeat_interval = (n > 0).then(|| Duration::from_secs(n));
    }
    if let Some(ms) = number("push-flush-interval") {
        c.push_flush_interval = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(ms) = number("push-linger") {
        c.push_linger = Duration::from_millis(ms);
    }
    c
}

async fn bind(
    server: &str,
    what: &'static str,
    host: &str,
    port: u16,
) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        server: server.to_owned(),
        what,
        addr: format!("{host}:{port}"),
        source,
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host");
    for addr in tokio::net::lookup_host((host, port)).await.map_err(err)? {
        match listen(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// Accept queue of the listeners: connection bursts (a reconnect storm, a load test) overflow
/// the default of 128 and the kernel then drops SYNs, which clients retry 1 s and 3 s later.
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind` do on Unix: a restarted server can rebind its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs one server until it is told to stop (or its master goes away).
pub(crate) async fn run_server(
    app: App,
    env: String,
    me: ServerConfig,
    configured: Vec<ServerConfig>,
    master_id: String,
    master_addr: String,
    master_cfg: crate::config::MasterConfig,
) -> Result<(), StartError> {
    let rpc_tls = master_cfg.rpc_tls;
    let nats = master_cfg.cluster;
    let id = me.id.clone();
    let (mhost, mport) =
        split_addr(&master_addr).ok_or_else(|| StartError::MasterAddr(master_addr.clone()))?;
    let rpc_listener = bind(&id, "rpc port", &me.host, me.port.unwrap_or(0)).await?;
    let client_listener = match (me.frontend, me.client_port) {
        (true, Some(p)) => Some(bind(&id, "client port", &me.host, p).await?),
        _ => None,
    };
    let mut actual = me.clone();
    actual.port = rpc_listener.local_addr().ok().map(|a| a.port());
    actual.client_port = client_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());

    let mut rpc_cfg = rpc_config_from_env().map_err(|message| StartError::Secret {
        server: id.clone(),
        message,
    })?;
    let setup_err = |message: String| StartError::Setup {
        server: id.clone(),
        message,
    };
    if let Some(files) = &rpc_tls {
        rpc_cfg.tls = Some(
            files
                .load()
                .map_err(|e| setup_err(format!("master.json rpcTls: {e}")))?,
        );
    }
    // The Prometheus endpoint's registry (served below, once the frontend exists).
    let mut metrics = crate::metrics::MetricsBuilder::new();
    rpc_cfg.metrics = Some(metrics.rpc());
    let rpc = RpcClient::new(rpc_cfg.clone());
    rpc.directory().add(ServerInfo::new(
        master_id.as_str(),
        MASTER_TYPE,
        mhost,
        mport,
    ));
    for (t, d) in &app.types {
        if let Some(r) = &d.router {
            rpc.set_router(t.clone(), r.clone());
        }
    }
    let dictionary = app.route_dictionary().map_err(|source| StartError::App {
        server: id.clone(),
        source,
    })?;
    // In a cluster on NATS: this process's own backend handle (registry, placements, uids).
    let backend: Option<Arc<dyn ClusterBackend>> = match &nats {
        Some(cfg) => Some(Arc::new(
            crate::cluster::NatsBackend::connect(cfg, &id)
                .await
                .map_err(|e| setup_err(format!("cluster backend: {e}")))?,
        )),
        None => None,
    };
    let policy = match app.duplicate_login {
        crate::app::DuplicateLogin::KickOld => Some(ClaimPolicy::KickOld),
        crate::app::DuplicateLogin::RefuseNew => Some(ClaimPolicy::RefuseNew),
        crate::app::DuplicateLogin::Allow => None,
    };
    // Pushes on NATS (app-wide broadcasts), counted on /metrics.
    let cluster_pushes = backend.as_ref().map(|_| metrics.cluster_pushes());
    // The backend's own counters (slow-consumer drops, reconnects), read at each scrape.
    if let Some(b) = &backend {
        let b = b.clone();
        metrics.cluster_stats(move || b.stats());
    }
    let ctx = ServerContext::new(
        actual.clone(),
        configured,
        env,
        rpc.clone(),
        master_id.clone(),
        BodyCodec::new(dictionary.clone(), app.protos.clone()),
        backend
            .clone()
            .zip(cluster_pushes.clone())
            .map(|(backend, pushes)| crate::context::OnNats {
                backend,
                policy,
                pushes,
            }),
    );
    // What handlers extract: the app's state and this server's context.
    let state = app.server_state(&ctx);
    let mut rejoins = Vec::new();
    for (t, d) in &app.types {
        if d.placed {
            let router = ctx
                .placements()
                .router(t, &rpc, &master_id, backend.clone());
            rpc.set_router(t.clone(), Arc::new(router));
            if let (Some(key), Some(hook)) = (&d.route_key, &d.rejoin) {
                rejoins.push(RejoinSpec {
                    server_type: t.clone(),
                    key: key.clone(),
                    hook: hook.clone(),
                });
            }
        }
    }
    if me.frontend {
        ctx.set_rejoins(rejoins);
    }
    let def = app.type_def(&me.server_type);

    let mut registry = Registry::new();
    for f in &app.rpc_filters {
        registry.filter_arc(f.clone());
    }
    let reg_err = |source| StartError::Registry {
        server: id.clone(),
        source,
    };
    registry
        .add(server_remote::Server::new(StopRemote { ctx: ctx.clone() }))
        .map_err(reg_err)?;
    if !def.handlers.is_empty() {
        registry
            .add(msg_remote::Server::new(MsgRemote::new(
                ctx.clone(),
                &def,
                state.clone(),
            )))
            .map_err(reg_err)?;
    }
    for setup in &def.remotes {
        setup(&ctx, &mut registry).map_err(reg_err)?;
    }

    for c in &app.components {
        c.run(Hook::Start, &ctx)
            .await
            .map_err(|source| StartError::Component {
                server: id.clone(),
                component: c.name().to_owned(),
                source,
            })?;
    }

    // The frontend, if any.
    let client_token = CancellationToken::new();
    let mut client_task = None;
    if let Some(listener) = client_listener {
        let keys = app
            .types
            .iter()
            .filter_map(|(t, d)| d.route_key.clone().map(|k| (t.clone(), k)))
            .collect();
        let mut config = connector_config(&actual);
        let tls_err = |message: String| StartError::Tls {
            server: id.clone(),
            message,
        };
        if let Some(ssl) = actual.ssl().map_err(|e| tls_err(e.to_string()))? {
            let tls = ServerTls::from_pem_files(&ssl.cert, &ssl.key, ssl.mode)
                .map_err(|e| tls_err(e.to_string()))?;
            tracing::info!(server = %id, cert = %ssl.cert.display(), mode = %ssl.mode, "TLS on the client port; SIGHUP reloads the certificate");
            tokio::spawn(reload_on_sighup(tls.clone(), client_token.clone()));
            config.tls = Some(tls);
        }
        let mut builder = Frontend::builder(config)
            .forwarder(Arc::new(forwarder(&ctx, keys)))
            .state_map(&state);
        if let Some(d) = &dictionary {
            builder = builder.dictionary(d.clone());
        }
        if let Some(h) = &app.error_handler {
            let h = h.clone();
            builder = builder.error_handler(move |info, s, e| h(info, s, e));
        }
        for (route, h) in &def.frontend_handlers {
            builder = builder.erased_handler(route, h.clone());
        }
        for f in &def.frontend_filters {
            builder = builder.dyn_filter(f.clone());
        }
        if let Some(p) = &app.protos {
            builder = builder.protos(p.clone());
        }
        // Per-route metrics, labelled by the app's routes only (others: "(unknown)").
        let mut routes: Vec<&str> = app
            .types
            .values()
            .flat_map(|d| d.handlers.keys().chain(d.frontend_handlers.keys()))
            .map(String::as_str)
            .collect();
        routes.sort_unstable();
        routes.dedup();
        builder = builder.route_metrics(metrics.frontend_routes(routes));
        for setup in &def.frontend {
            builder = setup(&ctx, builder);
        }
        let frontend = builder.build().map_err(|source| StartError::Frontend {
            server: id.clone(),
            source,
        })?;
        ctx.set_frontend(frontend.clone());
        metrics = metrics.frontend(&frontend);
        // Registered before the RPC server starts below, so backends can reach sessions.
        registry
            .add(session_remote(&ctx, &frontend))
            .map_err(reg_err)?;
        if let (Some(backend), Some(counters)) = (&backend, &cluster_pushes) {
            registry
                .add(crate::moves::cluster_moves::Server::new(
                    crate::moves::MovesRemote { ctx: ctx.clone() },
                ))
                .map_err(reg_err)?;
            // App-wide broadcasts (and uid pushes) published on NATS for this frontend,
            // subscribed before this server is in the registry. NATS spreads the interest to
            // its other nodes asynchronously: a broadcast published on another node in the
            // first moments after this frontend appeared can still miss it (at most once).
            let pushes = backend
                .subscribe_pushes(&id, &me.server_type)
                .await
                .map_err(|e| setup_err(format!("cluster push subscription: {e}")))?;
            tokio::spawn(run_cluster_pushes(
                frontend.clone(),
                pushes,
                counters.clone(),
                client_token.clone(),
            ));
        }
        // A uid's claim at the master ends with its session, and with an unbind.
        let hook_ctx = ctx.clone();
        frontend.sessions().on_closed(move |s, _reason| {
            if let Some(uid) = s.uid() {
                hook_ctx.release_claim(claim_of_session(s, uid));
            }
        });
        let hook_ctx = ctx.clone();
        frontend.sessions().on_unbound(move |s, uid| {
            hook_ctx.release_claim(claim_of_session(s, uid.to_owned()));
        });
        let token = client_token.clone();
        client_task = Some(tokio::spawn(async move {
            frontend.serve(listener, token).await
        }));
    }

    let metrics_server = metrics
        .serve_for(&actual)
        .await
        .map_err(|e| setup_err(e.to_string()))?;
    let metrics_port = metrics_server.as_ref().map_or(0, |m| m.local_addr().port());
    if let Some(m) = &metrics_server {
        tracing::debug!(server = %id, url = %m.url(), "metrics endpoint");
    }
    let rpc_token = CancellationToken::new();
    let rpc_task =
        tokio::spawn(RpcServer::new(registry, rpc_cfg).serve(rpc_listener, rpc_token.clone()));

    // Register with the master (it may still be starting its listener: retry for a while).
    let master = master_remote::Client::new(&rpc);
    let entry = entry_of(&actual, metrics_port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let snap = loop {
        match master
            .register(Target::server(&master_id), entry.clone())
            .await
        {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(cause = %e, "register failed, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(StartError::Register {
                    server: id.clone(),
                    master: master_addr.clone(),
                    message: e.to_string(),
                });
            }
        }
    };
    let master_version = snap.version;
    ctx.apply_snapshot(snap);
    if let Some(frontend) = ctx.frontend()
        && backend.is_none()
    {
        // The master's claims under this id become exactly what its sessions hold: none
        // left from an earlier process of this id.
        let claims = frontend
            .sessions()
            .all()
            .iter()
            .filter_map(|s| s.uid().map(|uid| claim_of_session(s, uid)))
            .collect();
        let set = ClaimSet {
            frontend_id: id.clone(),
            claims,
        };
        if let Err(e) = master.reconcile(Target::server(&master_id), set).await {
            tracing::warn!(cause = %e, "uid claims not reconciled with the master");
        }
    }
    tracing::debug!(server = %id, rpc = ?actual.port, client = ?actual.client_port, "server registered with the master");
    let bg = CancellationToken::new();
    if let Some(backend) = &backend {
        // The registry's watch first, so that no change between the read and the watch is
        // missed; then this server's own record, then the view as it is now.
        let watch = backend.watch();
        let mut record = ctx.record();
        record.metrics_port = (metrics_port != 0).then_some(metrics_port);
        backend
            .register(record)
            .await
            .map_err(|e| setup_err(format!("cluster registry: {e}")))?;
        let known = backend.servers();
        ctx.apply_records(0, &known);
        tokio::spawn(registry_loop(ctx.clone(), watch, known, bg.clone()));
        if ctx.frontend().is_some() {
            tokio::spawn(recheck_after_degraded(ctx.clone(), bg.clone()));
        }
        tracing::debug!(server = %id, "server registered in the cluster registry");
    }
    for c in &app.components {
        if let Err(e) = c.run(Hook::AfterStart, &ctx).await {
            tracing::error!(server = %id, component = c.name(), cause = %e, "component's after_start failed: stopping");
            ctx.request_stop();
        }
    }

    let stop = ctx.stop_token().clone();
    tokio::spawn(watch_loop(ctx.clone(), master_version, bg.clone()));
    tokio::spawn(stats_loop(ctx.clone(), bg.clone()));
    tokio::spawn(stdin_watch(ctx.clone()));

    tokio::select! {
        () = stop.cancelled() => {}
        () = terminated() => tracing::info!("interrupted"),
    }
    tracing::debug!(server = %id, "stopping");
    bg.cancel();
    if let Some(backend) = &backend {
        // Peers stop routing here at once (a record left to expire would take the TTL).
        if let Err(e) = backend.deregister(&id).await {
            tracing::debug!(cause = %e, "not deregistered from the cluster registry (its record expires)");
        }
    }
    for c in &app.components {
        if let Err(e) = c.run(Hook::BeforeStop, &ctx).await {
            tracing::warn!(server = %id, component = c.name(), cause = %e, "component's before_stop failed");
        }
    }

    if let (Some(task), Some(frontend)) = (client_task, ctx.frontend()) {
        // Refuse new clients, answer the requests in flight, then kick the rest (the
        // connector writes their queued responses before the KICK).
        frontend.stop_accepting().await;
        let report = frontend
            .drain_and_kick("server stopping", DRAIN_TIMEOUT)
            .await;
        if report.kicked + report.unfinished_requests + report.still_connected > 0 {
            tracing::info!(
                kicked = report.kicked,
                unfinished = report.unfinished_requests,
                still_connected = report.still_connected,
                "clients drained"
            );
        } else {
            tracing::debug!("clients drained: none were connected");
        }
        client_token.cancel();
        let _ = tokio::time::timeout(KICK_TIMEOUT, task).await;
    }
    for c in &app.components {
        if let Err(e) = c.run(Hook::Stop, &ctx).await {
            tracing::warn!(server = %id, component = c.name(), cause = %e, "component's stop failed");
        }
    }
    rpc_token.cancel();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, rpc_task).await;
    if let Some(m) = metrics_server {
        m.stop().await;
    }
    tracing::debug!(server = %id, "stopped");
    Ok(())
}

/// Queues each push read from NATS to this frontend's sessions, as `sessionRemote.broadcast`
/// and `sessionRemote.push` would (the same queues and counters), until `stop`.
async fn run_cluster_pushes(
    frontend: Frontend,
    mut pushes: crate::cluster::PushStream,
    counters: crate::metrics::ClusterPushMetrics,
    stop: CancellationToken,
) {
    let id = frontend.config().frontend_id.clone();
    loop {
        let push = tokio::select! {
            () = stop.cancelled() => return,
            p = pushes.next() => p,
        };
        let Some(push) = push else {
            if !stop.is_cancelled() {
                tracing::warn!(frontend = %id, "the NATS push subscription ended: broadcasts no longer reach this frontend");
            }
            return;
        };
        let report = match &push.uids {
            None => {
                counters.broadcasts_received.inc();
                frontend.broadcast_encoded(&push.package)
            }
            Some(uids) => {
                counters.pushes_received.inc();
                frontend.push_encoded_to_uids(uids, &push.package)
            }
        };
        tracing::trace!(frontend = %id, sent = report.sent, full = report.full, missing = report.missing, broadcast = push.uids.is_none(), "push from NATS queued");
    }
}

/// The master's claim of `uid` by this session.
fn claim_of_session(s: &Session, uid: String) -> Claim {
    Claim {
        uid,
        frontend_id: s.frontend_id().to_owned(),
        session_id: s.id(),
    }
}

/// Re-reads the client port's certificate and key on every SIGHUP until `stop`; a bad file is
/// logged by [`ServerTls::reload`] and the certificate in use stays.
async fn reload_on_sighup(tls: ServerTls, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "no SIGHUP handler: the TLS certificate cannot be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!(cert = %tls.cert_path().display(), "SIGHUP: reloading the TLS certificate");
                // Errors are logged by `reload`, naming the file.
                let _ = tls.reload();
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM (never, if neither handler can be installed).
pub(crate) async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if r.is_err() {
                std::future::pending::<()>().await;
            }
        }
        () = sigterm => {}
    }
}

/// In a cluster on NATS: follows the registry. Every change re-reads the live servers (so a
/// lagged watcher misses nothing) and installs them as the cluster view; a server gone from
/// it (by id and run) is handled as lost ([`ServerContext::server_lost`]).
async fn registry_loop(
    ctx: ServerContext,
    mut watch: crate::cluster::ServerWatch,
    mut known: Vec<ServerRecord>,
    stop: CancellationToken,
) {
    let Some(backend) = ctx.backend().cloned() else {
        return;
    };
    let mut version = 0u64;
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => return,
            ev = watch.next() => ev,
        };
        if ev.is_none() {
            return;
        }
        let now = backend.servers();
        version += 1;
        ctx.apply_records(version, &now);
        let gone: Vec<&ServerRecord> = known
            .iter()
            .filter(|k| {
                !now.iter()
                    .any(|n| n.id == k.id && n.start_time == k.start_time)
            })
            .filter(|k| k.id != ctx.server_id())
            .collect();
        // Servers lost together (a host) are not asked about each other's loss.
        let gone_ids: Arc<Vec<String>> = Arc::new(gone.iter().map(|g| g.id.clone()).collect());
        for g in gone {
            tracing::info!(server = %g.id, "server left the cluster registry");
            tokio::spawn(
                ctx.clone()
                    .server_lost(g.id.clone(), g.start_time, gone_ids.clone()),
            );
        }
        known = now;
    }
}

/// In a cluster on NATS, on a frontend: each time its backend is healthy again after being
/// degraded (its host cut off, its NATS without quorum), checks its cached placements against
/// the registry's ([`ServerContext::recheck_placements`]). While it was cut off, the other
/// hosts may have judged its servers lost and moved their keys: nobody asked this frontend
/// to re-join its sessions (it was lost with them), and it would go on routing them to the
/// old server.
async fn recheck_after_degraded(ctx: ServerContext, stop: CancellationToken) {
    let Some(backend) = ctx.backend().cloned() else {
        return;
    };
    let mut health = backend.health();
    let mut reloads = backend.placements_reloaded();
    reloads.borrow_and_update();
    let mut degraded = matches!(
        *health.borrow_and_update(),
        crate::cluster::Health::Degraded(_)
    );
    loop {
        // Also each time the placements are loaded again (their watch started again after an
        // outage): the health can be healthy again a moment before that, while the cache
        // still holds what it held before the cut.
        let reloaded = tokio::select! {
            () = stop.cancelled() => return,
            r = health.changed() => if r.is_err() { return } else { false },
            r = reloads.changed() => if r.is_err() { return } else { reloads.borrow_and_update(); true },
        };
        let ok = matches!(*health.borrow_and_update(), crate::cluster::Health::Ok);
        if ok && (degraded || reloaded) {
            ctx.recheck_placements().await;
        }
        degraded = !ok;
    }
}

/// Follows the master's cluster view with a long poll (in a cluster on NATS, only so that the
/// master knows this server is up: the view itself comes from the registry).
async fn watch_loop(ctx: ServerContext, mut version: u64, stop: CancellationToken) {
    let master = master_remote::Client::new(ctx.rpc());
    loop {
        let args = WatchArgs {
            version,
            server_id: ctx.server_id().to_owned(),
        };
        let r = tokio::select! {
            () = stop.cancelled() => return,
            r = master.watch(Target::server(ctx.master_id()), args) => r,
        };
        match r {
            Ok(snap) => {
                if snap.version != version {
                    version = snap.version;
                    ctx.apply_snapshot(snap);
                }
            }
            Err(e) => {
                tracing::debug!(cause = %e, "watch failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Reports the connection count to the master every second.
async fn stats_loop(ctx: ServerContext, stop: CancellationToken) {
    let master = master_remote::Client::new(ctx.rpc());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let connections = ctx.frontend().map_or(0, |f| f.sessions().count() as u64);
        if let Some(backend) = ctx.backend() {
            if let Err(e) = backend.set_connections(ctx.server_id(), connections) {
                tracing::debug!(cause = %e, "connection count not set in the registry");
            }
            if let Ok(p) = crate::metrics::ProcessStats::read() {
                let _ = backend.set_rss(ctx.server_id(), p.rss_bytes);
            }
        }
        let degraded = match ctx.backend().map(|b| b.health().borrow().clone()) {
            Some(crate::cluster::Health::Degraded(reason)) => reason,
            _ => String::new(),
        };
        let report = StatsReport {
            server_id: ctx.server_id().to_owned(),
            connections,
            degraded,
        };
        if let Err(e) = master
            .notify()
            .report(Target::server(ctx.master_id()), report)
            .await
        {
            tracing::debug!(cause = %e, "stats report not sent");
        }
    }
}

/// The master holds our stdin open; end of file means the master is gone: stop.
async fn stdin_watch(ctx: ServerContext) {
    stdin_closed().await;
    tracing::warn!("master went away (stdin closed); stopping");
    ctx.request_stop();
}

/// Completes when standard input reaches end of file (or cannot be read): the parent that
/// holds the other end of the pipe is gone, however it died (even SIGKILL closes its end).
pub(crate) async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_options_from_servers_json() {
        let mut s = ServerConfig {
            id: "connector-server-1".into(),
            server_type: "connector".into(),
            host: "127.0.0.1".into(),
            port: Some(0),
            client_port: Some(0),
            frontend: true,
            extra: serde_json::Map::new(),
        };
        let c = connector_config(&s);
        assert_eq!(c.push_flush_interval, None);
        assert_eq!(
            c.heartbeat_interval,
            ConnectorConfig::default().heartbeat_interval
        );
        let extra = serde_json::json!({"max-connections": 7, "heartbeat": 3, "push-flush-interval": 20, "push-linger": 0});
        s.extra = extra.as_object().cloned().unwrap_or_default();
        let c = connector_config(&s);
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(3)));
        assert_eq!(c.push_flush_interval, Some(Duration::from_millis(20)));
        assert_eq!(c.push_linger, Duration::ZERO);
        s.extra.insert("push-flush-interval".into(), 0.into());
        assert_eq!(connector_config(&s).push_flush_interval, None);
    }
}
