//! The master: starts every configured server as its own process (this same binary), watches
//! and restarts them, keeps the cluster view servers follow, answers the CLI, and owns the
//! cluster-wide uid registry.
//!
//! - `state`: what the master knows of each server (`ServerState`, restarts, crashes).
//! - `supervise`: starting, watching, restarting and stopping the server processes.
//! - `remote`: the `master` remote (registration, watch, admin calls, uids, placements).
//! - `output`: the lines the master prints and relays from its servers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shaddock_rpc::{Registry, RemoteError, RpcClient, RpcConfig, RpcServer, ServerInfo, Target};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::DuplicateLogin;
use crate::config::{ClusterConfig, RestartPolicy, ServerConfig, parse_server_def};
use crate::placement::PlacementTable;
use crate::proto::{
    AddArgs, AddReply, Claim, ClaimSet, Count, KickUid, ListReply, ListRow, MovesArgs, MovesReply,
    PlaceArgs, PlaceReply, Rejoined, ServerEntry, Snapshot, StatsReport, StopArgs, WatchArgs,
    master_remote, server_remote,
};
use shaddock_core::sys::{KickArgs, session_remote};

mod nats_admin;
mod output;
mod remote;
mod state;
mod supervise;

use output::*;
use remote::*;
use state::*;

pub(crate) use state::ServerState;

/// How long `watch` holds a request when nothing changes (below the RPC call timeout).
const WATCH_HOLD: Duration = Duration::from_secs(5);
/// How long `place` holds a key that moved (its server was lost or restarted) until every live
/// frontend has re-joined its sessions there; below the RPC call timeout.
const REJOIN_WAIT: Duration = Duration::from_secs(3);
/// How long a graceful stop waits for one group of servers.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// The line the master prints when it listens: `SHADDOCK_MASTER_LISTENING host:port`.
pub const LISTENING_LINE: &str = "SHADDOCK_MASTER_LISTENING";
/// The line the master prints once every configured server has registered.
pub const READY_LINE: &str = "SHADDOCK_CLUSTER_READY";
/// The line the master prints when a server exits before the cluster is up, followed by
/// `<server id> could not start: <its error>`; it then stops what it started and exits 1.
pub const START_FAILED_LINE: &str = "SHADDOCK_CLUSTER_FAILED";

/// A server definition as JSON (the shape of one servers.json entry plus `serverType`).
pub(crate) fn server_def_json(cfg: &ServerConfig) -> String {
    let mut o = cfg.extra.clone();
    o.insert("id".into(), cfg.id.clone().into());
    o.insert("serverType".into(), cfg.server_type.clone().into());
    o.insert("host".into(), cfg.host.clone().into());
    if let Some(p) = cfg.port {
        o.insert("port".into(), p.into());
    }
    if let Some(p) = cfg.client_port {
        o.insert("clientPort".into(), p.into());
    }
    o.insert("frontend".into(), cfg.frontend.into());
    Value::Object(o).to_string()
}

/// Runs the master until the cluster is stopped or killed.
pub(crate) async fn run_master(
    cluster: ClusterConfig,
    config_dir: PathBuf,
    policy: DuplicateLogin,
    exit_with_parent: bool,
    host_id: Option<String>,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let listener =
        tokio::net::TcpListener::bind((cluster.master.host.as_str(), cluster.master.port))
            .await
            .map_err(|e| {
                format!(
                    "master {}: cannot listen on {}:{}: {e}",
                    cluster.master.id, cluster.master.host, cluster.master.port
                )
            })?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let addr = format!("{}:{port}", cluster.master.host);
    let config_dir = std::path::absolute(&config_dir).unwrap_or(config_dir);
    // The cluster secret: $SHADDOCK_RPC_SECRET if set, else a fresh one (the default,
    // `"rpcSecret": "random"`), written to this machine's secret file for admin commands and
    // removed at exit; with `"rpcSecret": "none"`, none (RPC unauthenticated).
    let mut _secret_file = None;
    let rpc_secret = match crate::process::rpc_secret_from_env()? {
        Some(s) => Some(s),
        None if cluster.master.random_rpc_secret => {
            let s = shaddock_rpc::ClusterSecret::generate()
                .map_err(|e| format!("master {}: {e}", cluster.master.id))?;
            _secret_file = Some(
                crate::secret::write_secret_file(&addr, &s)
                    .map_err(|e| format!("master {}: {e}", cluster.master.id))?,
            );
            Some(s)
        }
        None => None,
    };
    if rpc_secret.is_some() {
        tracing::debug!("rpc ports require the cluster secret");
    } else {
        tracing::info!("rpcSecret is \"none\": rpc ports are unauthenticated");
    }
    let mut rpc_cfg = RpcConfig::default();
    rpc_cfg.secret = rpc_secret.clone();
    rpc_cfg.tls = cluster
        .master
        .load_rpc_tls()
        .map_err(|e| format!("master {}: master.json rpcTls: {e}", cluster.master.id))?;
    if rpc_cfg.tls.is_some() {
        tracing::debug!("rpc ports use TLS with the cluster CA (rpcTls)");
    }
    // Its own Prometheus endpoint (RPC counters and the process), if master.json asks.
    let mut metrics = crate::metrics::MetricsBuilder::new();
    rpc_cfg.metrics = Some(metrics.rpc());
    let metrics_server = match cluster.master.metrics_port {
        Some(p) => Some(
            metrics
                .serve((cluster.master.host.as_str(), p))
                .await
                .map_err(|e| {
                    format!(
                        "master {}: cannot serve metrics on {}:{p} (metricsPort): {e}",
                        cluster.master.id, cluster.master.host
                    )
                })?,
        ),
        None => None,
    };
    let metrics_url = metrics_server
        .as_ref()
        .map(|m| {
            format!(
                "http://{}:{}/metrics",
                cluster.master.host,
                m.local_addr().port()
            )
        })
        .unwrap_or_default();
    let (snap, _) = watch::channel(Arc::new(Snapshot::default()));
    let master = Arc::new(Master {
        state: Mutex::new(State::default()),
        snap,
        rpc: RpcClient::new(rpc_cfg.clone()),
        exe,
        env: cluster.env.clone(),
        config_dir,
        master_id: cluster.master.id.clone(),
        addr: Mutex::new(addr.clone()),
        policy,
        placement_grace: cluster.master.placement_grace,
        restart: cluster.master.restart.clone(),
        exit: CancellationToken::new(),
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        start_failure: Mutex::new(None),
        rpc_secret,
        metrics_url,
    });
    {
        let mut st = lock(&master.state);
        for s in &cluster.servers {
            st.servers.insert(
                s.id.clone(),
                Managed {
                    degraded: String::new(),
                    cfg: s.clone(),
                    def_json: None,
                    pid: 0,
                    started: None,
                    state: ServerState::Starting,
                    restarts: 0,
                    connections: 0,
                    entry: None,
                    stopping: false,
                    kill: CancellationToken::new(),
                    down_epoch: 0,
                    registered_once: false,
                },
            );
        }
    }
    let mut registry = Registry::new();
    registry
        .add(master_remote::Server::new(MasterRemote(master.clone())))
        .map_err(|e| e.to_string())?;
    let rpc_token = CancellationToken::new();
    let server = tokio::spawn(RpcServer::new(registry, rpc_cfg).serve(listener, rpc_token.clone()));
    // A cluster on NATS: `stop`, `kill` and `add` from any host reach this master there.
    let admin_task = match &cluster.master.cluster {
        Some(nats) => {
            let mut hosts: Vec<String> = match host_id {
                Some(h) => vec![h],
                None => cluster
                    .servers
                    .iter()
                    .map(|s| s.host_id().to_owned())
                    .collect(),
            };
            hosts.sort();
            hosts.dedup();
            Some(nats_admin::serve(master.clone(), nats, hosts).await?)
        }
        None => None,
    };
    say(&format!("{LISTENING_LINE} {addr}"));
    tracing::info!(master = %cluster.master.id, %addr, env = %cluster.env, servers = cluster.servers.len(), "master listening");
    if cluster.servers.is_empty() && !master.ready.swap(true, Ordering::SeqCst) {
        say(READY_LINE);
    }
    for s in &cluster.servers {
        master.spawn_supervisor(s.id.clone());
    }
    let parent_gone = async {
        if exit_with_parent {
            crate::process::stdin_closed().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = master.exit.cancelled() => {}
        () = crate::process::terminated() => {
            tracing::info!("interrupted: stopping the cluster");
            master.clone().stop_all().await;
        }
        () = parent_gone => {
            tracing::warn!("the parent went away (stdin closed): stopping the cluster");
            master.clone().stop_all().await;
        }
    }
    // A stop already under way (`stop`, `kill`, a failed start) finishes first: leaving now
    // would kill the servers it is stopping gracefully.
    master.exit.cancelled().await;
    // A `stop` or `kill` from NATS gets its last answer (`done`) before we go.
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // Let the CLI's last call get its reply before the port closes.
    rpc_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(m) = metrics_server {
        m.stop().await;
    }
    match lock(&master.start_failure).take() {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Whether every server in `live` has applied a view of version `at` or later.
pub(super) fn views_complete<'a>(
    at: u64,
    mut live: impl Iterator<Item = &'a str>,
    applied: &HashMap<String, u64>,
) -> bool {
    live.all(|id| applied.get(id).is_some_and(|&v| v >= at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_until_every_server_applied_the_full_view() {
        let mut applied = HashMap::new();
        let live = ["chat-1", "connector-1"];
        assert!(!views_complete(7, live.into_iter(), &applied));
        applied.insert("chat-1".to_owned(), 7);
        applied.insert("connector-1".to_owned(), 6);
        assert!(!views_complete(7, live.into_iter(), &applied));
        applied.insert("connector-1".to_owned(), 9);
        assert!(views_complete(7, live.into_iter(), &applied));
        assert!(views_complete(7, std::iter::empty(), &HashMap::new()));
    }

    #[test]
    fn a_crash_loop_is_more_than_max_crashes_within_the_window() {
        let policy = RestartPolicy {
            crash_loop_max: 2,
            crash_loop_window: Duration::from_secs(10),
            ..RestartPolicy::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut log = CrashLog {
            at: VecDeque::new(),
        };
        assert!(!log.crashed(at(0), &policy));
        assert!(!log.crashed(at(5), &policy));
        // The crash at 0 s is out of the window by 11 s: still two within 10 s.
        assert!(!log.crashed(at(11), &policy));
        assert_eq!(log.count(), 2);
        assert!(log.crashed(at(12), &policy));
        assert_eq!(log.count(), 3);
    }

    #[test]
    fn server_definitions_round_trip() {
        let v: Value = serde_json::from_str(
            r#"{"id":"chat-3","serverType":"chat","host":"127.0.0.1","port":"0","restart":"true"}"#,
        )
        .unwrap();
        let cfg = parse_server_def(v, None).unwrap();
        assert_eq!(cfg.port, Some(0));
        assert!(restart_enabled(&cfg, &RestartPolicy::default()));
        let back: Value = serde_json::from_str(&server_def_json(&cfg)).unwrap();
        assert_eq!(parse_server_def(back, None).unwrap(), cfg);
    }
}
