//! [`ServerContext`]: what a running server knows — its own config (with the ports it actually
//! bound), the live cluster as the master reports it, its RPC client, channels and frontend.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

// The frontend-running side: the frontend this server may run, and its sessions.
use shaddock_connector::{Frontend, Session, SessionError};
use shaddock_protocol::{BodyCodec, RouteDictionary};
use shaddock_rpc::{RpcClient, RpcError, ServerInfo, Target};
use tokio_util::sync::CancellationToken;

use crate::app::{Rejoin, RejoinHook, RouteKey};
use crate::backend::SessionInfo;
use crate::channel::ChannelService;
use crate::cluster::{ClaimOutcome, ClaimPolicy, ClusterBackend, ServerRecord, UidClaim};
use crate::config::ServerConfig;
use crate::placement::Placements;
use crate::proto::{
    Claim, KickArgs, KickUid, MovesArgs, PlaceArgs, Rejoined, ServerEntry, Snapshot, master_remote,
    session_remote,
};

/// The live servers, shared by the context and the channel service.
pub(crate) type ClusterView = Arc<RwLock<Arc<Snapshot>>>;

/// A live server as the master reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveServer {
    /// Its id.
    pub id: String,
    /// Its type.
    pub server_type: String,
    /// Its host.
    pub host: String,
    /// The RPC port it bound.
    pub port: u16,
    /// The client port it bound (frontends).
    pub client_port: Option<u16>,
    /// Whether it is a frontend.
    pub frontend: bool,
    /// Its process id.
    pub pid: u32,
}

impl LiveServer {
    pub(crate) fn from_entry(e: &ServerEntry) -> Self {
        Self {
            id: e.id.clone(),
            server_type: e.server_type.clone(),
            host: e.host.clone(),
            port: u16::try_from(e.port).unwrap_or(0),
            client_port: u16::try_from(e.client_port).ok().filter(|&p| p != 0),
            frontend: e.frontend,
            pid: e.pid,
        }
    }
}

/// Why [`ServerContext::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The master refused it (duplicate-login policy `RefuseNew`).
    #[error("bind of uid `{uid}` refused: {reason}")]
    Refused {
        /// The uid.
        uid: String,
        /// The master's reason.
        reason: String,
    },
    /// The master could not be asked.
    #[error("bind of uid `{uid}`: master unreachable: {source}")]
    Master {
        /// The uid.
        uid: String,
        /// The RPC error.
        source: RpcError,
    },
    /// The cluster registry (NATS) could not take the claim.
    #[error("bind of uid `{uid}`: cluster registry: {message}")]
    Cluster {
        /// The uid.
        uid: String,
        /// The backend's error.
        message: String,
    },
    /// The local session refused it (already bound to another uid, closed).
    #[error(transparent)]
    Session(#[from] SessionError),
}

struct Inner {
    server: ServerConfig,
    configured: Vec<ServerConfig>,
    env: String,
    rpc: RpcClient,
    master_id: String,
    cluster: ClusterView,
    channels: ChannelService,
    frontend: OnceLock<Frontend>,
    codec: BodyCodec,
    stop: CancellationToken,
    placements: Placements,
    /// On frontends: the placed types whose sessions re-join when their keys move.
    rejoins: OnceLock<Vec<RejoinSpec>>,
    /// Re-joins and their confirmations run one at a time.
    rejoin_order: tokio::sync::Mutex<()>,
    /// In a cluster on NATS (master.json's `cluster`): this process's backend handle, the
    /// source of the cluster view, placements and uid claims. `None`: the master is.
    backend: Option<Arc<dyn ClusterBackend>>,
    /// The duplicate-login policy uid claims follow on the backend (`None`: any number of
    /// sessions per uid, no claims).
    policy: Option<ClaimPolicy>,
    /// This run's start time (ms since the Unix epoch), as its [`ServerRecord`] carries it.
    start_time: u64,
    /// Lost server runs (id, start time) this server has handled already.
    losses_seen: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
    /// Losses another frontend noticed and this one follows until `settled`.
    following: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
}

/// A server of a cluster on NATS: its backend handle and the duplicate-login policy its uid
/// claims follow (`None`: any number of sessions per uid, no claims).
pub(crate) struct OnNats {
    pub(crate) backend: Arc<dyn ClusterBackend>,
    pub(crate) policy: Option<ClaimPolicy>,
    /// The counters of broadcasts published on NATS (the channel service's).
    pub(crate) pushes: crate::metrics::ClusterPushMetrics,
}

/// How long a noticer waits for each frontend's `clusterMoves.lost`.
const MOVE_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a follower holds new placements at most when `settled` does not come.
const MOVE_HOLD_MAX: Duration = Duration::from_secs(10);
/// How long a noticer keeps trying to place one key again while the store cannot write
/// (a JetStream leader election after a NATS node was lost).
const PLACE_AGAIN_FOR: Duration = Duration::from_secs(10);

/// Places `key` (formerly on a lost server) again; retried with a short backoff while the
/// store is unavailable, for at most [`PLACE_AGAIN_FOR`]. `None` (logged) when it cannot.
async fn place_again(
    backend: &Arc<dyn ClusterBackend>,
    server_type: &str,
    key: &[u8],
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + PLACE_AGAIN_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match backend.place(server_type, key).await {
            Ok(Some(id)) => return Some(id),
            Ok(None) => {
                tracing::warn!(key = %String::from_utf8_lossy(key), %server_type, "no live server to place the key on");
                return None;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(cause = %e, "placing a lost server's key again: retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(key), cause = %e, "cannot place the key again; its sessions are not re-joined");
                return None;
            }
        }
    }
}

/// This frontend's open `sessions` grouped by the route key `spec` gives them.
fn sessions_by_key(
    spec: &RejoinSpec,
    sessions: &[Session],
) -> std::collections::HashMap<String, Vec<Session>> {
    let mut by_key: std::collections::HashMap<String, Vec<Session>> =
        std::collections::HashMap::new();
    for s in sessions.iter().filter(|s| !s.is_closed()) {
        by_key
            .entry((spec.key)(&SessionInfo::of(s)))
            .or_default()
            .push(s.clone());
    }
    by_key
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A placed type's route key and re-join hook, on a frontend.
pub(crate) struct RejoinSpec {
    pub(crate) server_type: String,
    pub(crate) key: RouteKey,
    pub(crate) hook: RejoinHook,
}

/// The running server's view of itself and of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ServerContext {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("server", &self.inner.server.id)
            .field("env", &self.inner.env)
            .finish_non_exhaustive()
    }
}

impl ServerContext {
    pub(crate) fn new(
        server: ServerConfig,
        configured: Vec<ServerConfig>,
        env: String,
        rpc: RpcClient,
        master_id: String,
        codec: BodyCodec,
        nats: Option<OnNats>,
    ) -> Self {
        let (backend, policy, nats_pushes) = match nats {
            Some(n) => (
                Some(n.backend.clone()),
                n.policy,
                Some(crate::channel::NatsPushes {
                    backend: n.backend,
                    metrics: n.pushes,
                }),
            ),
            None => (None, None, None),
        };
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let cluster: ClusterView = Arc::default();
        let channels =
            ChannelService::new(rpc.clone(), codec.clone(), cluster.clone(), nats_pushes);
        Self {
            inner: Arc::new(Inner {
                server,
                configured,
                env,
                rpc,
                master_id,
                cluster,
                channels,
                frontend: OnceLock::new(),
                codec,
                stop: CancellationToken::new(),
                placements: Placements::default(),
                rejoins: OnceLock::new(),
                rejoin_order: tokio::sync::Mutex::new(()),
                backend,
                policy,
                start_time,
                losses_seen: std::sync::Mutex::default(),
                following: std::sync::Mutex::default(),
            }),
        }
    }

    /// This server's config, with the ports it actually bound (port `0` resolved).
    pub fn server(&self) -> &ServerConfig {
        &self.inner.server
    }

    /// This server's id.
    pub fn server_id(&self) -> &str {
        &self.inner.server.id
    }

    /// This server's type.
    pub fn server_type(&self) -> &str {
        &self.inner.server.server_type
    }

    /// The environment (`development`, ...).
    pub fn env(&self) -> &str {
        &self.inner.env
    }

    /// The RPC client (its directory follows the master's view of the cluster).
    pub fn rpc(&self) -> &RpcClient {
        &self.inner.rpc
    }

    /// The channel service of this server.
    pub fn channels(&self) -> &ChannelService {
        &self.inner.channels
    }

    /// The client port, on a frontend once it is built.
    pub fn frontend(&self) -> Option<&Frontend> {
        self.inner.frontend.get()
    }

    /// The route dictionary of the app, if it has one.
    pub fn dictionary(&self) -> Option<&Arc<RouteDictionary>> {
        self.inner.codec.dictionary()
    }

    /// How this app writes PUSH packages: its dictionary and protobuf schemas.
    pub fn codec(&self) -> &BodyCodec {
        &self.inner.codec
    }

    /// The servers of the cluster's configuration (`servers.json` of the environment, in file
    /// order) as this process loaded it at start; servers added at runtime are not in it (see
    /// [`ServerContext::servers`] for the live ones). For placements that must not move while a
    /// server is down (route over the configured servers united with the live ones).
    pub fn configured_servers(&self) -> &[ServerConfig] {
        &self.inner.configured
    }

    /// Every live server, sorted by id.
    pub fn servers(&self) -> Vec<LiveServer> {
        let snap = self.snapshot();
        snap.servers.iter().map(LiveServer::from_entry).collect()
    }

    /// The live servers of one type, sorted by id (pomelo's `app.getServersByType`).
    pub fn servers_of_type(&self, server_type: &str) -> Vec<LiveServer> {
        let snap = self.snapshot();
        snap.servers
            .iter()
            .filter(|e| e.server_type == server_type)
            .map(LiveServer::from_entry)
            .collect()
    }

    /// Asks this server to stop gracefully (as `shaddock stop` does for the whole cluster).
    pub fn request_stop(&self) {
        self.inner.stop.cancel();
    }

    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.inner.stop
    }

    pub(crate) fn master_id(&self) -> &str {
        &self.inner.master_id
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .cluster
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn placements(&self) -> &Placements {
        &self.inner.placements
    }

    pub(crate) fn set_rejoins(&self, specs: Vec<RejoinSpec>) {
        let _ = self.inner.rejoins.set(specs);
    }

    pub(crate) fn set_frontend(&self, frontend: Frontend) {
        let _ = self.inner.frontend.set(frontend);
    }

    /// Installs a new cluster view and brings the peer directory in line with it: new
    /// servers become routable, removed ones are dropped (their connections close).
    pub(crate) fn apply_snapshot(&self, snap: Snapshot) {
        if self.inner.backend.is_some() {
            // On NATS the registry is the cluster view; the master's covers one host.
            return;
        }
        let generation = snap.placement_generation;
        self.install_view(snap);
        if let Some(since) = self.inner.placements.advance(generation)
            && self.frontend().is_some()
        {
            tokio::spawn(self.clone().rejoin_and_confirm(since, generation));
        }
    }

    /// The backend handle, in a cluster on NATS.
    pub(crate) fn backend(&self) -> Option<&Arc<dyn ClusterBackend>> {
        self.inner.backend.as_ref()
    }

    /// This run's record for the registry (connections and RSS 0: refreshed by the stats
    /// loop; `metrics_port` set by the caller once the endpoint is bound).
    pub(crate) fn record(&self) -> ServerRecord {
        let s = &self.inner.server;
        ServerRecord {
            id: s.id.clone(),
            server_type: s.server_type.clone(),
            host: s.host.clone(),
            port: s.port.unwrap_or(0),
            client_port: s.client_port.filter(|&p| p != 0),
            frontend: s.frontend,
            pid: std::process::id(),
            start_time: self.inner.start_time,
            connections: 0,
            rss_bytes: 0,
            restarts: crate::process::restarts_from_env(),
            metrics_port: None,
            degraded: None,
        }
    }

    /// In a cluster on NATS: installs the registry's live servers as the cluster view (the
    /// peer directory follows: new servers routable, removed ones dropped).
    pub(crate) fn apply_records(&self, version: u64, records: &[ServerRecord]) {
        let servers = records
            .iter()
            .map(|r| ServerEntry {
                id: r.id.clone(),
                server_type: r.server_type.clone(),
                host: r.host.clone(),
                port: u32::from(r.port),
                client_port: u32::from(r.client_port.unwrap_or(0)),
                frontend: r.frontend,
                pid: r.pid,
                extra_json: String::new(),
                metrics_port: 0,
            })
            .collect();
        self.install_view(Snapshot {
            version,
            servers,
            placement_generation: 0,
        });
    }

    /// In a cluster on NATS: `lost` left the registry as this server's handle sees it
    /// (expired or deregistered). This server is the *noticer* of the loss:
    /// 1. it stops placing uncached keys, drops its cached placements on `lost`, and (on a
    ///    frontend) asks every other frontend to do the same and to say which of its
    ///    sessions' keys were there (`clusterMoves.lost`, awaited);
    /// 2. it places every one of those keys again on a survivor (its own handle judged
    ///    `lost` lost; the compare-and-set makes concurrent placers agree; a key whose server
    ///    came back under the same id stays there, its state gone);
    /// 3. it has every other frontend re-join its sessions' keys there
    ///    (`clusterMoves.rejoin`, awaited), then re-joins its own;
    /// 4. every frontend places keys again (`clusterMoves.settled`).
    ///
    /// So no message is acknowledged in a moved room before all its members are back in it.
    pub(crate) async fn server_lost(
        self,
        lost_id: String,
        lost_start: u64,
        also_gone: Arc<Vec<String>>,
    ) {
        let Some(backend) = self.inner.backend.clone() else {
            return;
        };
        if !self.first_sight(&lost_id, lost_start) {
            // Followed already: only the placements this server cached on `lost` since (its
            // handle, not having judged the loss yet, could still answer it) are dropped.
            self.inner.placements.forget_server(&lost_id);
            return;
        }
        self.inner.placements.begin_move();
        let mut keys = self.keys_on(&backend, &lost_id);
        let others: Vec<String> = if self.frontend().is_some() {
            backend
                .servers()
                .into_iter()
                .filter(|s| {
                    s.frontend
                        && s.id != self.server_id()
                        && s.id != lost_id
                        && !also_gone.contains(&s.id)
                })
                .map(|s| s.id)
                .collect()
        } else {
            Vec::new()
        };
        let stub = crate::moves::cluster_moves::Client::new(&self.inner.rpc);
        // 1. Every frontend holds its placements and tells its keys on `lost`.
        let mut calls = tokio::task::JoinSet::new();
        for id in &others {
            let (stub, id, lost) = (stub.clone(), id.clone(), lost_id.clone());
            calls.spawn(async move {
                let r = tokio::time::timeout(
                    MOVE_CALL_TIMEOUT,
                    stub.lost(Target::server(&id), lost, lost_start),
                )
                .await;
                (id, r)
            });
        }
        let mut followers = Vec::new();
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((id, Ok(Ok(theirs)))) => {
                    keys.extend(theirs);
                    followers.push(id);
                }
                Ok((id, Ok(Err(e)))) => {
                    tracing::warn!(frontend = %id, cause = %e, "frontend not told of the lost server");
                }
                Ok((id, Err(_))) => {
                    tracing::warn!(frontend = %id, "frontend did not answer about the lost server in time");
                }
                Err(e) => tracing::warn!(cause = %e, "lost-server call task failed"),
            }
        }
        // 2. Every key placed again.
        match backend.reassign_lost(&lost_id).await {
            Ok(moved) if !moved.is_empty() => {
                tracing::info!(server = %lost_id, keys = moved.len(), "lost server's keys placed on survivors");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(server = %lost_id, cause = %e, "cannot place the lost server's keys again yet: placing the known ones one by one");
            }
        }
        let mut now_on: Vec<(String, Vec<u8>, String)> = Vec::new();
        for (server_type, key) in &keys {
            if let Some(to) = place_again(&backend, server_type, key).await {
                now_on.push((server_type.clone(), key.clone(), to));
            }
        }
        // 3. Every frontend re-joins, this one last.
        let mut calls = tokio::task::JoinSet::new();
        for id in &followers {
            let (stub, id, lost, map) = (stub.clone(), id.clone(), lost_id.clone(), now_on.clone());
            calls.spawn(async move {
                let r = tokio::time::timeout(
                    MOVE_CALL_TIMEOUT,
                    stub.rejoin(Target::server(&id), lost, lost_start, map),
                )
                .await;
                (id, r)
            });
        }
        while let Some(done) = calls.join_next().await {
            if let Ok((id, r)) = done
                && !matches!(r, Ok(Ok(())))
            {
                tracing::warn!(frontend = %id, "frontend did not confirm its re-joins in time");
            }
        }
        self.rejoin_keys(&lost_id, &now_on).await;
        // 4. Placements again, everywhere.
        self.inner.placements.end_move();
        for id in followers {
            let (stub, lost) = (stub.clone(), lost_id.clone());
            tokio::spawn(async move {
                if let Err(e) = stub
                    .notify()
                    .settled(Target::server(&id), lost, lost_start)
                    .await
                {
                    tracing::debug!(frontend = %id, cause = %e, "settled not sent (it clears by itself)");
                }
            });
        }
    }

    /// `clusterMoves.lost` from the noticer of a loss: hold new placements, drop the cached
    /// ones on `lost_id`, and tell which keys this server knew there. If the noticer does
    /// not settle within [`MOVE_HOLD_MAX`], this server handles the loss itself.
    pub(crate) fn follow_loss(&self, lost_id: String, start_time: u64) -> Vec<(String, Vec<u8>)> {
        let Some(backend) = self.inner.backend.clone() else {
            return Vec::new();
        };
        if !self.first_sight(&lost_id, start_time) {
            // Noticed here too: this server re-joins its own sessions itself.
            return Vec::new();
        }
        self.inner.placements.begin_move();
        lock(&self.inner.following).insert((lost_id.clone(), start_time));
        let keys = self.keys_on(&backend, &lost_id);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MOVE_HOLD_MAX).await;
            if me.settle(&lost_id, start_time) {
                tracing::warn!(server = %lost_id, "the loss's noticer never settled: handling it here");
                lock(&me.inner.losses_seen).remove(&(lost_id.clone(), start_time));
                me.server_lost(lost_id, start_time, Arc::default()).await;
            }
        });
        keys.into_iter().collect()
    }

    /// `clusterMoves.rejoin`: re-join this frontend's sessions whose keys are in `now_on`.
    pub(crate) async fn follow_rejoin(&self, lost_id: &str, now_on: &[(String, Vec<u8>, String)]) {
        self.rejoin_keys(lost_id, now_on).await;
    }

    /// `clusterMoves.settled`: the move of `lost_id`'s keys is over everywhere. `true` when
    /// this server was holding for it.
    pub(crate) fn settle(&self, lost_id: &str, start_time: u64) -> bool {
        let held = lock(&self.inner.following).remove(&(lost_id.to_owned(), start_time));
        if held {
            self.inner.placements.end_move();
        }
        held
    }

    /// Whether this is the first time this server handles the loss of this run of `id`.
    fn first_sight(&self, id: &str, start_time: u64) -> bool {
        let mut seen = lock(&self.inner.losses_seen);
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert((id.to_owned(), start_time))
    }

    /// The keys this server knows on `server_id` (its route caches, dropped, and the
    /// backend's cache).
    fn keys_on(
        &self,
        backend: &Arc<dyn ClusterBackend>,
        server_id: &str,
    ) -> std::collections::BTreeSet<(String, Vec<u8>)> {
        let mut keys: std::collections::BTreeSet<(String, Vec<u8>)> = self
            .inner
            .placements
            .forget_server(server_id)
            .into_iter()
            .collect();
        keys.extend(backend.placements_of(server_id));
        keys
    }

    /// In a cluster on NATS, once this server's backend is healthy again: every cached
    /// placement the registry now puts on another server (moved while this host was cut off)
    /// is routed there from now on, and this frontend's sessions of those keys re-join there.
    pub(crate) async fn recheck_placements(&self) {
        let Some(backend) = self.inner.backend.clone() else {
            return;
        };
        let mut moved: std::collections::BTreeMap<String, Vec<(String, Vec<u8>, String)>> =
            std::collections::BTreeMap::new();
        for (server_type, key, was) in self.inner.placements.cached() {
            match backend.placement(&server_type, &key).await {
                Ok(Some(now)) if now != was => {
                    moved.entry(was).or_default().push((server_type, key, now));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%server_type, key = %String::from_utf8_lossy(&key), cause = %e, "cannot check a cached placement after the cluster was degraded");
                }
            }
        }
        for (was, now_on) in moved {
            tracing::info!(server = %was, keys = now_on.len(), "keys moved off a server while this host was cut off: re-joining them where they are now");
            self.rejoin_keys(&was, &now_on).await;
        }
    }

    /// Runs the re-join hooks for this frontend's sessions whose keys are in `now_on`
    /// (type, key, the server it is on now), after caching those placements (calls route
    /// there at once, whatever this server's handle still believes).
    async fn rejoin_keys(&self, lost: &str, now_on: &[(String, Vec<u8>, String)]) {
        for (server_type, key, server_id) in now_on {
            self.inner.placements.remember(server_type, key, server_id);
        }
        let (Some(frontend), Some(specs)) = (self.frontend(), self.inner.rejoins.get()) else {
            return;
        };
        if now_on.is_empty() || specs.is_empty() {
            return;
        }
        let sessions = frontend.sessions().all();
        for spec in specs {
            let mut by_key = sessions_by_key(spec, &sessions);
            for (server_type, key, server_id) in now_on {
                if *server_type != spec.server_type {
                    continue;
                }
                let key = String::from_utf8_lossy(key).into_owned();
                let Some(sessions) = by_key.remove(&key) else {
                    continue;
                };
                tracing::info!(server = %lost, %key, to = %server_id, sessions = sessions.len(), "re-joining sessions whose server was lost");
                let rejoin = Rejoin {
                    server_type: spec.server_type.clone(),
                    key,
                    server_id: server_id.clone(),
                    sessions,
                };
                (spec.hook)(self.clone(), rejoin).await;
            }
        }
    }

    /// Installs a cluster view and brings the peer directory in line with it.
    fn install_view(&self, snap: Snapshot) {
        let dir = self.inner.rpc.directory();
        let mut live = std::collections::HashSet::new();
        for e in &snap.servers {
            let Ok(port) = u16::try_from(e.port) else {
                continue;
            };
            if port == 0 {
                continue;
            }
            live.insert(e.id.clone());
            dir.add(ServerInfo::new(
                e.id.as_str(),
                e.server_type.as_str(),
                e.host.as_str(),
                port,
            ));
        }
        for known in dir.all() {
            if known.id.as_str() != self.inner.master_id && !live.contains(known.id.as_str()) {
                tracing::debug!(server = %known.id, "server left the cluster");
                dir.remove(known.id.as_str());
            }
        }
        *self
            .inner
            .cluster
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snap);
    }

    /// Re-joins this frontend's sessions whose keys moved after `since`, then tells the master
    /// it is done up to `generation`: the master serves a moved key again once every live
    /// frontend has. One at a time, in order, so that a confirmation never overtakes an
    /// earlier generation's re-join.
    async fn rejoin_and_confirm(self, since: u64, generation: u64) {
        let _in_order = self.inner.rejoin_order.lock().await;
        if self.inner.rejoins.get().is_some_and(|r| !r.is_empty())
            && !self.clone().rejoin_moved(since).await
        {
            return;
        }
        let master = master_remote::Client::new(&self.inner.rpc);
        let args = Rejoined {
            server_id: self.server_id().to_owned(),
            generation,
        };
        if let Err(e) = master
            .rejoined(Target::server(&self.inner.master_id), args)
            .await
        {
            tracing::debug!(generation, cause = %e, "cannot confirm the re-join to the master");
        }
    }

    /// Runs the re-join hooks for this frontend's sessions whose keys moved after `since`.
    /// `false`: the master could not say which keys moved (nothing was re-joined).
    async fn rejoin_moved(self, since: u64) -> bool {
        let master = master_remote::Client::new(&self.inner.rpc);
        let target = Target::server(&self.inner.master_id);
        let reply = match master.moves(target, MovesArgs { since }).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(since, cause = %e, "cannot ask the master which keys moved; sessions not re-joined");
                return false;
            }
        };
        let (Some(frontend), Some(specs)) = (self.frontend(), self.inner.rejoins.get()) else {
            return true;
        };
        let sessions = frontend.sessions().all();
        for spec in specs {
            let mut by_key = sessions_by_key(spec, &sessions);
            // Where each of those keys lives now: from the moves (the last move of a key
            // wins), or, when the master no longer has all of them, asked key by key.
            let mut now: Vec<(String, String)> = Vec::new();
            if reply.complete {
                let mut last = std::collections::HashMap::new();
                for m in reply
                    .moves
                    .iter()
                    .filter(|m| m.server_type == spec.server_type)
                {
                    last.insert(
                        String::from_utf8_lossy(&m.key).into_owned(),
                        m.server_id.clone(),
                    );
                }
                now.extend(last.into_iter().filter(|(k, _)| by_key.contains_key(k)));
            } else {
                for key in by_key.keys() {
                    let args = PlaceArgs {
                        server_type: spec.server_type.clone(),
                        key: key.clone().into_bytes(),
                        lookup_only: true,
                    };
                    if let Ok(r) = master.place(target, args).await {
                        now.push((key.clone(), r.server_id));
                    }
                }
            }
            tracing::info!(server_type = %spec.server_type, keys = now.len(), "re-joining sessions whose keys moved");
            for (key, server_id) in now {
                let Some(sessions) = by_key.remove(&key) else {
                    continue;
                };
                let rejoin = Rejoin {
                    server_type: spec.server_type.clone(),
                    key,
                    server_id,
                    sessions,
                };
                (spec.hook)(self.clone(), rejoin).await;
            }
        }
        true
    }

    /// Binds a frontend session to `uid` cluster-wide: the master applies the duplicate-login
    /// policy (kicking the uid's session on another connector, or refusing this bind), then
    /// the session is bound locally. Use this instead of `Session::bind` in frontend handlers.
    ///
    /// # Errors
    /// [`BindError`].
    pub async fn bind(&self, session: &Session, uid: &str) -> Result<(), BindError> {
        if session.uid().as_deref() == Some(uid) {
            return Ok(());
        }
        if let Some(backend) = &self.inner.backend {
            return self.bind_on_backend(backend, session, uid).await;
        }
        let claim = Claim {
            uid: uid.to_owned(),
            frontend_id: session.frontend_id().to_owned(),
            session_id: session.id(),
        };
        let master = master_remote::Client::new(&self.inner.rpc);
        // Until the session is bound, a claim the master may have granted is released if this
        // bind fails or is abandoned (its future dropped): the close hook would not see it.
        let mut pending = PendingClaim {
            ctx: self,
            claim: Some(claim.clone()),
        };
        match master
            .claim(Target::server(&self.inner.master_id), claim)
            .await
        {
            Ok(()) => {}
            Err(RpcError::Remote { message, .. }) => {
                return Err(BindError::Refused {
                    uid: uid.to_owned(),
                    reason: message,
                });
            }
            Err(source) => {
                return Err(BindError::Master {
                    uid: uid.to_owned(),
                    source,
                });
            }
        }
        session.bind(uid)?;
        pending.claim = None;
        Ok(())
    }

    /// [`Self::bind`] in a cluster on NATS: the claim is a compare-and-set in the uid bucket.
    async fn bind_on_backend(
        &self,
        backend: &Arc<dyn ClusterBackend>,
        session: &Session,
        uid: &str,
    ) -> Result<(), BindError> {
        let Some(policy) = self.inner.policy else {
            session.bind(uid)?;
            return Ok(());
        };
        let claim = UidClaim {
            frontend: session.frontend_id().to_owned(),
            frontend_start: self.inner.start_time,
            session: session.id(),
        };
        match backend.claim_uid(uid, claim.clone(), policy).await {
            Ok(ClaimOutcome::Claimed { replaced }) => {
                if let Some(old) = replaced {
                    tracing::info!(uid, old = %old.frontend, new = %claim.frontend, "duplicate login: kicking the old session");
                    self.kick_session(&old.frontend, old.session, "", "logged in elsewhere")
                        .await;
                }
            }
            Ok(ClaimOutcome::Refused { owner }) => {
                return Err(BindError::Refused {
                    uid: uid.to_owned(),
                    reason: format!("uid `{uid}` is already logged in on `{}`", owner.frontend),
                });
            }
            Err(e) => {
                return Err(BindError::Cluster {
                    uid: uid.to_owned(),
                    message: e.to_string(),
                });
            }
        }
        if let Err(e) = session.bind(uid) {
            if let Err(re) = backend.release_uid(uid, &claim).await {
                tracing::debug!(uid, cause = %re, "uid claim not released after a failed bind");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Kicks a session (by id, or every session of `uid` when it is not empty) on a frontend;
    /// returns how many were kicked (0 when the frontend cannot be reached, logged).
    async fn kick_session(&self, frontend: &str, session_id: u64, uid: &str, reason: &str) -> u64 {
        let args = KickArgs {
            session_id,
            uid: uid.to_owned(),
            reason: reason.to_owned(),
        };
        match session_remote::Client::new(&self.inner.rpc)
            .kick(Target::server(frontend), args)
            .await
        {
            Ok(c) => c.n,
            Err(e) => {
                tracing::warn!(%frontend, cause = %e, "could not kick the session there");
                0
            }
        }
    }

    /// Tells the master this claim is no longer held (it drops it only if it is still this
    /// frontend's and session's).
    pub(crate) fn release_claim(&self, claim: Claim) {
        if let Some(backend) = self.inner.backend.clone() {
            if self.inner.policy.is_none() {
                return;
            }
            let c = UidClaim {
                frontend: claim.frontend_id,
                frontend_start: self.inner.start_time,
                session: claim.session_id,
            };
            tokio::spawn(async move {
                if let Err(e) = backend.release_uid(&claim.uid, &c).await {
                    tracing::debug!(uid = %claim.uid, cause = %e, "uid claim not released");
                }
            });
            return;
        }
        let rpc = self.inner.rpc.clone();
        let master = self.inner.master_id.clone();
        tokio::spawn(async move {
            let stub = master_remote::Client::new(&rpc);
            if let Err(e) = stub.notify().release(Target::server(&master), claim).await {
                tracing::debug!(cause = %e, "uid release not sent");
            }
        });
    }

    /// Kicks `uid` on every frontend it is connected to; returns how many sessions.
    ///
    /// # Errors
    /// The master could not be reached.
    pub async fn kick_uid(&self, uid: &str, reason: &str) -> Result<u64, RpcError> {
        if let Some(backend) = &self.inner.backend {
            let owner = backend
                .uid_owner(uid)
                .await
                .map_err(|e| RpcError::RemoteInternal {
                    message: format!("cluster registry: {e}"),
                })?;
            return Ok(match owner {
                Some(o) => self.kick_session(&o.frontend, 0, uid, reason).await,
                None => 0,
            });
        }
        let master = master_remote::Client::new(&self.inner.rpc);
        let n = master
            .kick_uid(
                Target::server(&self.inner.master_id),
                KickUid {
                    uid: uid.to_owned(),
                    reason: reason.to_owned(),
                },
            )
            .await?;
        Ok(n.n)
    }
}

/// A uid claim asked for by [`ServerContext::bind`] and not yet bound to its session.
struct PendingClaim<'a> {
    ctx: &'a ServerContext,
    claim: Option<Claim>,
}

impl Drop for PendingClaim<'_> {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            tracing::debug!(uid = %claim.uid, session = claim.session_id, "bind failed or abandoned: releasing its uid claim");
            self.ctx.release_claim(claim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaddock_rpc::RpcConfig;

    #[test]
    fn the_configured_servers_are_kept_in_file_order() {
        let dir = std::env::temp_dir().join(format!("shaddock-ctx-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("servers.json"),
            r#"{"development": {"chat": [
                {"id": "chat-2", "host": "127.0.0.1", "port": 0},
                {"id": "chat-1", "host": "127.0.0.1", "port": 0}]}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("master.json"),
            r#"{"development": {"id": "master", "host": "127.0.0.1", "port": 0}}"#,
        )
        .unwrap();
        let cluster = crate::config::ClusterConfig::load(&dir, "development").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let me = cluster.servers[0].clone();
        let ctx = ServerContext::new(
            me,
            cluster.servers.clone(),
            "development".into(),
            RpcClient::new(RpcConfig::default()),
            "master".into(),
            BodyCodec::default(),
            None,
        );
        let ids: Vec<&str> = ctx
            .configured_servers()
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["chat-2", "chat-1"]);
        // Nothing is live before the master's first snapshot.
        assert!(ctx.servers_of_type("chat").is_empty());
    }
}
