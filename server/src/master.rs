//! The master: starts every configured server as its own process (this same binary), watches
//! and restarts them, keeps the cluster view servers follow, answers the CLI, and owns the
//! cluster-wide uid registry.

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
    PlaceArgs, PlaceReply, ServerEntry, Snapshot, StatsReport, StopArgs, WatchArgs, master_remote,
    server_remote,
};
use shaddock_core::sys::{KickArgs, session_remote};

/// How long `watch` holds a request when nothing changes (below the RPC call timeout).
const WATCH_HOLD: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for one group of servers.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// The line the master prints when it listens: `SHADDOCK_MASTER_LISTENING host:port`.
pub const LISTENING_LINE: &str = "SHADDOCK_MASTER_LISTENING";
/// The line the master prints once every configured server has registered.
pub const READY_LINE: &str = "SHADDOCK_CLUSTER_READY";
/// The line the master prints when a server exits before the cluster is up, followed by
/// `<server id> could not start: <its error>`; it then stops what it started and exits 1.
pub const START_FAILED_LINE: &str = "SHADDOCK_CLUSTER_FAILED";

/// Writes one line to standard output, ignoring a closed pipe (the launcher may be gone).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Relays a server's standard output to the master's, line by line, and returns the error it
/// reported with [`crate::process::FAILED_LINE`] before exiting, if it did.
fn relay_server_output(
    id: String,
    out: tokio::process::ChildStdout,
) -> tokio::task::JoinHandle<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        let mut failure = None;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match line.strip_prefix(crate::process::FAILED_LINE) {
                    Some(cause) => failure = Some(cause.trim().to_owned()),
                    None => say(&line),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(server = %id, cause = %e, "server output not readable");
                    break;
                }
            }
        }
        failure
    })
}

/// Where a managed server is in its life, as `list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerState {
    /// Its process is started and has not registered yet.
    Starting,
    /// Registered with the master.
    Running,
    /// Crashed; restarted after its backoff.
    Restarting,
    /// Stopped (told to, or killed).
    Stopped,
    /// Ended on its own with restart off.
    Exited,
    /// Crashed too often: not restarted again.
    CrashLoop,
    /// Could not start.
    Failed,
}

impl ServerState {
    /// The word `list` prints.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::CrashLoop => "crash-loop",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

struct Managed {
    cfg: ServerConfig,
    /// The server's definition, passed to the child when it was added at runtime.
    def_json: Option<String>,
    pid: u32,
    started: Option<Instant>,
    state: ServerState,
    restarts: u32,
    connections: u64,
    entry: Option<ServerEntry>,
    /// Told to stop or be killed: never restarted.
    stopping: bool,
    kill: CancellationToken,
    /// Grows each time its process ends (a grace timer moves its keys only if it is unchanged).
    down_epoch: u64,
    /// It registered before: its next registration is a new process whose state is gone.
    registered_once: bool,
}

#[derive(Default)]
struct State {
    servers: BTreeMap<String, Managed>,
    version: u64,
    /// uid -> (frontend id, session id).
    uids: HashMap<String, (String, u64)>,
    /// The view version at which every configured server had first registered.
    all_registered_at: Option<u64>,
    /// Server id -> the latest view version it has applied (from its `watch` calls).
    applied: HashMap<String, u64>,
    /// Where the keys of placed server types live.
    placements: PlacementTable,
}

pub(crate) struct Master {
    state: Mutex<State>,
    snap: watch::Sender<Arc<Snapshot>>,
    rpc: RpcClient,
    exe: PathBuf,
    env: String,
    config_dir: PathBuf,
    master_id: String,
    addr: Mutex<String>,
    policy: DuplicateLogin,
    /// How long a lost server's placed keys wait for it before they move.
    placement_grace: Duration,
    restart: RestartPolicy,
    /// Cancelled when the master should exit.
    exit: CancellationToken,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// Set when a server could not start: the cluster start failed (`run_master`'s error).
    start_failure: Mutex<Option<String>>,
    /// The cluster secret handed to every server started (environment only, never logged).
    rpc_secret: Option<shaddock_rpc::ClusterSecret>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the master restarts `cfg`'s server when it exits on its own: its own setting in
/// servers.json, else master.json's `restart.enabled`.
fn restart_enabled(cfg: &ServerConfig, policy: &RestartPolicy) -> bool {
    cfg.restart().unwrap_or(policy.enabled)
}

/// The crashes of one server within the crash-loop window.
struct CrashLog {
    at: VecDeque<Instant>,
}

impl CrashLog {
    /// Notes a crash at `now`; true if the server crashed more than `policy.crash_loop_max`
    /// times within `policy.crash_loop_window` (a crash loop: do not restart it again).
    fn crashed(&mut self, now: Instant, policy: &RestartPolicy) -> bool {
        self.at.push_back(now);
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.crash_loop_window)
        {
            self.at.pop_front();
        }
        self.at.len() > policy.crash_loop_max as usize
    }

    fn count(&self) -> usize {
        self.at.len()
    }
}

impl Master {
    fn publish(&self, st: &mut State) {
        st.version += 1;
        let servers = st
            .servers
            .values()
            .filter_map(|m| m.entry.clone())
            .collect();
        self.snap.send_replace(Arc::new(Snapshot {
            version: st.version,
            servers,
            placement_generation: st.placements.generation(),
        }));
    }

    fn spawn_supervisor(self: &Arc<Self>, id: String) {
        let m = self.clone();
        tokio::spawn(async move { m.supervise(id).await });
    }

    async fn supervise(self: Arc<Self>, id: String) {
        let policy = self.restart.clone();
        let mut backoff = policy.backoff;
        let mut crashes = CrashLog {
            at: VecDeque::new(),
        };
        loop {
            let (cfg, def_json, kill) = {
                let mut st = lock(&self.state);
                let Some(m) = st.servers.get_mut(&id) else {
                    return;
                };
                if m.stopping {
                    if m.state == ServerState::Restarting {
                        m.state = ServerState::Stopped;
                        self.publish(&mut st);
                    }
                    return;
                }
                (m.cfg.clone(), m.def_json.clone(), m.kill.clone())
            };
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg("--server-id")
                .arg(&cfg.id)
                .arg("--master")
                .arg(lock(&self.addr).clone())
                .arg("--master-id")
                .arg(&self.master_id)
                .arg("-e")
                .arg(&self.env)
                .arg("--config")
                .arg(&self.config_dir);
            if let Some(def) = &def_json {
                cmd.arg("--server-def").arg(def);
            }
            // The cluster secret goes through the environment: a command line is visible to
            // every user of the host (`ps`).
            match &self.rpc_secret {
                Some(s) => cmd.env(crate::process::RPC_SECRET_ENV, s.to_hex()),
                None => cmd.env_remove(crate::process::RPC_SECRET_ENV),
            };
            if let Some(n) = cfg
                .extra
                .get("worker-threads")
                .and_then(serde_json::Value::as_u64)
                .filter(|n| *n >= 1)
            {
                cmd.arg("--worker-threads").arg(n.to_string());
            }
            // stdout: relayed, and where a server that cannot start says why.
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            let started_at = Instant::now();
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(server = %id, cause = %e, exe = %self.exe.display(), "cannot start server process");
                    {
                        let mut st = lock(&self.state);
                        if let Some(m) = st.servers.get_mut(&id) {
                            m.state = ServerState::Failed;
                        }
                        self.publish(&mut st);
                    }
                    if !self.ready.load(Ordering::SeqCst) {
                        self.start_failed(&id, &format!("cannot run {}: {e}", self.exe.display()));
                    }
                    return;
                }
            };
            // Held open for the child's life: the child stops when it reads end of file.
            let stdin = child.stdin.take();
            let output = child
                .stdout
                .take()
                .map(|out| relay_server_output(id.clone(), out));
            {
                let mut st = lock(&self.state);
                if let Some(m) = st.servers.get_mut(&id) {
                    m.pid = child.id().unwrap_or(0);
                    m.started = Some(started_at);
                    m.state = ServerState::Starting;
                    m.connections = 0;
                }
            }
            tracing::info!(server = %id, pid = child.id().unwrap_or(0), "server process started");
            let status = tokio::select! {
                s = child.wait() => s,
                () = kill.cancelled() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            drop(stdin);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let ran = started_at.elapsed();
            // Its output ends with it (unless it left a child holding the pipe: bounded).
            let failure = match output {
                Some(task) => tokio::time::timeout(Duration::from_secs(2), task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
                None => None,
            };
            enum Next {
                Stopped,
                StartFailed,
                Exited,
                CrashLoop(usize),
                Restart,
            }
            let next = {
                let mut st = lock(&self.state);
                let Some(m) = st.servers.get_mut(&id) else {
                    return;
                };
                m.entry = None;
                m.pid = 0;
                m.connections = 0;
                let next = if m.stopping {
                    Next::Stopped
                } else if !self.ready.load(Ordering::SeqCst) {
                    Next::StartFailed
                } else if !restart_enabled(&m.cfg, &policy) {
                    Next::Exited
                } else if crashes.crashed(Instant::now(), &policy) {
                    Next::CrashLoop(crashes.count())
                } else {
                    Next::Restart
                };
                m.state = match next {
                    Next::Stopped => ServerState::Stopped,
                    Next::StartFailed => ServerState::Failed,
                    Next::Exited => ServerState::Exited,
                    Next::CrashLoop(_) => ServerState::CrashLoop,
                    Next::Restart => {
                        m.restarts += 1;
                        ServerState::Restarting
                    }
                };
                m.down_epoch += 1;
                let epoch = m.down_epoch;
                st.uids.retain(|_, (fid, _)| fid != &id);
                self.publish(&mut st);
                self.rpc.directory().remove(&id);
                if !self.stopping.load(Ordering::SeqCst) {
                    self.move_keys_after_grace(id.clone(), epoch);
                }
                next
            };
            match next {
                Next::Stopped => {
                    tracing::info!(server = %id, %status, "server stopped");
                    return;
                }
                Next::StartFailed => {
                    let cause = failure.unwrap_or_else(|| format!("it exited ({status})"));
                    self.start_failed(&id, &cause);
                    return;
                }
                Next::Exited => {
                    tracing::warn!(server = %id, %status, error = failure.as_deref().unwrap_or("-"), "server exited; not restarted (its restart is off)");
                    return;
                }
                Next::CrashLoop(n) => {
                    tracing::error!(
                        server = %id,
                        crashes = n,
                        window_secs = policy.crash_loop_window.as_secs(),
                        last_status = %status,
                        last_error = failure.as_deref().unwrap_or("-"),
                        "server crashed {n} times within {} s; not restarting it again (crash-loop)",
                        policy.crash_loop_window.as_secs()
                    );
                    return;
                }
                Next::Restart => {}
            }
            // A server that ran a whole window was healthy: its next restart is quick again.
            if ran >= policy.crash_loop_window {
                backoff = policy.backoff;
            }
            tracing::warn!(server = %id, %status, error = failure.as_deref().unwrap_or("-"), ?backoff, "server exited; restarting");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = kill.cancelled() => {
                    // Stopped while waiting to restart: say so, or `stop` waits for a
                    // "restarting" server that never comes (STOP_WAIT twice).
                    let mut st = lock(&self.state);
                    if let Some(m) = st.servers.get_mut(&id) {
                        m.state = ServerState::Stopped;
                    }
                    self.publish(&mut st);
                    tracing::info!(server = %id, "stopped while waiting to restart");
                    return;
                }
            }
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    /// After the grace period, moves the placed keys of `id` to its type's live servers if
    /// it is still down in the same way (not back, not down again since).
    fn move_keys_after_grace(self: &Arc<Self>, id: String, epoch: u64) {
        let m = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(m.placement_grace).await;
            let mut st = lock(&m.state);
            let Some(server) = st.servers.get(&id) else {
                return;
            };
            if server.entry.is_some()
                || server.down_epoch != epoch
                || m.stopping.load(Ordering::SeqCst)
                || st.placements.load_of(&id) == 0
            {
                return;
            }
            let server_type = server.cfg.server_type.clone();
            let survivors: Vec<String> = st
                .servers
                .values()
                .filter(|s| s.cfg.server_type == server_type && s.entry.is_some())
                .map(|s| s.cfg.id.clone())
                .collect();
            let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
            let moves = st.placements.move_from(&server_type, &id, &survivors);
            if moves.is_empty() {
                tracing::warn!(server = %id, grace = ?m.placement_grace, "server still down and no survivor of its type: its keys stay");
                return;
            }
            tracing::info!(server = %id, moved = moves.len(), grace = ?m.placement_grace, generation = st.placements.generation(), "server still down: its keys are placed on survivors");
            m.publish(&mut st);
        });
    }

    fn all_registered(st: &State) -> bool {
        st.servers.values().all(|m| m.entry.is_some())
    }

    /// Prints the ready line once every configured server has registered *and* every
    /// registered one has applied a view holding them all (its next `watch` says so): from
    /// then on any server can route to any other, so a placement over the configured servers
    /// (e.g. the chat's rooms) works for the first client.
    fn announce_ready_when_views_complete(&self, st: &State) {
        let Some(at) = st.all_registered_at else {
            return;
        };
        let live = st
            .servers
            .values()
            .filter_map(|m| m.entry.as_ref().map(|e| e.id.as_str()));
        if views_complete(at, live, &st.applied) && !self.ready.swap(true, Ordering::SeqCst) {
            say(READY_LINE);
            tracing::info!("every configured server is up and knows the others");
        }
    }

    /// A server ended before the cluster was up: say why, stop what was started, and make
    /// the master exit with that error (once, for the first server that failed).
    fn start_failed(self: &Arc<Self>, id: &str, cause: &str) {
        let message = format!("{id} could not start: {cause}");
        {
            let mut failure = lock(&self.start_failure);
            if failure.is_some() || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            *failure = Some(message.clone());
        }
        tracing::error!(server = %id, %cause, "a server could not start; stopping the cluster");
        say(&format!("{START_FAILED_LINE} {message}"));
        tokio::spawn(self.clone().stop_all());
    }

    /// Stops a group of servers over RPC and waits for their processes to end.
    async fn stop_group(&self, frontend: bool) {
        let ids: Vec<(String, bool)> = {
            let mut st = lock(&self.state);
            st.servers
                .values_mut()
                .filter(|m| m.cfg.frontend == frontend)
                .map(|m| {
                    m.stopping = true;
                    (m.cfg.id.clone(), m.entry.is_some())
                })
                .collect()
        };
        let stub = server_remote::Client::new(&self.rpc);
        for (id, registered) in &ids {
            let sent = *registered
                && stub
                    .stop(
                        Target::server(id),
                        StopArgs {
                            reason: "cluster stop".into(),
                        },
                    )
                    .await
                    .is_ok();
            if !sent {
                self.kill_one(id);
            }
        }
        let names: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
        if !self.wait_exited(&names, STOP_WAIT).await {
            tracing::warn!("servers did not stop in time; killing them");
            for id in &names {
                self.kill_one(id);
            }
            self.wait_exited(&names, STOP_WAIT).await;
        }
    }

    fn kill_one(&self, id: &str) {
        let mut st = lock(&self.state);
        if let Some(m) = st.servers.get_mut(id) {
            m.stopping = true;
            m.kill.cancel();
        }
    }

    /// Waits until none of `ids` has a running process; false on timeout.
    async fn wait_exited(&self, ids: &[String], within: Duration) -> bool {
        let mut rx = self.snap.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let done = {
                let st = lock(&self.state);
                ids.iter().all(|id| {
                    st.servers
                        .get(id)
                        .is_none_or(|m| m.pid == 0 && m.state != ServerState::Restarting)
                })
            };
            if done {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    async fn stop_all(self: Arc<Self>) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("stopping the cluster: frontends first");
        self.stop_group(true).await;
        self.stop_group(false).await;
        tracing::info!("every server stopped; master exits");
        self.exit.cancel();
    }

    async fn kill_all(self: Arc<Self>) {
        self.stopping.store(true, Ordering::SeqCst);
        let ids: Vec<String> = lock(&self.state).servers.keys().cloned().collect();
        for id in &ids {
            self.kill_one(id);
        }
        self.wait_exited(&ids, STOP_WAIT).await;
        self.exit.cancel();
    }

    fn add_server(self: &Arc<Self>, args: AddArgs) -> Result<String, String> {
        let mut obj = Map::new();
        for kv in args.pairs {
            // Names stay text (`id=7` is the id "7"); other values become what they look like.
            let text = ["id", "serverType", "type", "host"].contains(&kv.key.as_str());
            let v = match kv.value.as_str() {
                s if text => Value::String(s.to_owned()),
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                s => s
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(s.to_owned())),
            };
            obj.insert(kv.key, v);
        }
        let cfg = parse_server_def(Value::Object(obj), None).map_err(|e| e.to_string())?;
        let mut st = lock(&self.state);
        if st.servers.contains_key(&cfg.id) {
            return Err(format!("a server with id `{}` already exists", cfg.id));
        }
        let def = server_def_json(&cfg);
        let id = cfg.id.clone();
        st.servers.insert(
            id.clone(),
            Managed {
                cfg,
                def_json: Some(def),
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
        drop(st);
        self.spawn_supervisor(id.clone());
        Ok(id)
    }
}

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

struct MasterRemote(Arc<Master>);

impl master_remote::Remote for MasterRemote {
    async fn register(&self, entry: ServerEntry) -> Result<Snapshot, RemoteError> {
        let m = &self.0;
        if let Ok(port) = u16::try_from(entry.port)
            && port != 0
        {
            m.rpc.directory().add(ServerInfo::new(
                entry.id.as_str(),
                entry.server_type.as_str(),
                entry.host.as_str(),
                port,
            ));
        }
        let mut st = lock(&m.state);
        match st.servers.get_mut(&entry.id) {
            Some(s) => {
                s.state = ServerState::Running;
                s.pid = entry.pid;
                s.entry = Some(entry.clone());
                let again = std::mem::replace(&mut s.registered_once, true);
                if again {
                    // A new process of a known server: its keys stay, their state is gone.
                    let moves = st.placements.restarted(&entry.id);
                    if !moves.is_empty() {
                        tracing::info!(server = %entry.id, keys = moves.len(), "server is back as a new process: its keys are re-joined there");
                    }
                }
            }
            None => {
                return Err(RemoteError::new(
                    404,
                    format!("server `{}` is not managed by this master", entry.id),
                ));
            }
        }
        m.publish(&mut st);
        tracing::info!(server = %entry.id, port = entry.port, client_port = entry.client_port, "server registered");
        if st.all_registered_at.is_none() && Master::all_registered(&st) {
            st.all_registered_at = Some(st.version);
        }
        m.announce_ready_when_views_complete(&st);
        Ok((**m.snap.borrow()).clone())
    }

    async fn watch(&self, args: WatchArgs) -> Result<Snapshot, RemoteError> {
        if !self.0.ready.load(Ordering::SeqCst) {
            let mut st = lock(&self.0.state);
            let v = st.applied.entry(args.server_id.clone()).or_default();
            *v = (*v).max(args.version);
            self.0.announce_ready_when_views_complete(&st);
        }
        let mut rx = self.0.snap.subscribe();
        if rx.borrow_and_update().version == args.version {
            let _ = tokio::time::timeout(WATCH_HOLD, rx.changed()).await;
        }
        Ok((**rx.borrow()).clone())
    }

    async fn report(&self, r: StatsReport) -> Result<(), RemoteError> {
        if let Some(m) = lock(&self.0.state).servers.get_mut(&r.server_id) {
            m.connections = r.connections;
        }
        Ok(())
    }

    async fn list(&self, (): ()) -> Result<ListReply, RemoteError> {
        let st = lock(&self.0.state);
        let rows = st
            .servers
            .values()
            .map(|m| ListRow {
                id: m.cfg.id.clone(),
                server_type: m.cfg.server_type.clone(),
                pid: m.pid,
                uptime_secs: if m.pid == 0 {
                    0
                } else {
                    m.started.map_or(0, |s| s.elapsed().as_secs())
                },
                rss_bytes: if m.pid == 0 {
                    0
                } else {
                    crate::procfs::rss_bytes(m.pid).unwrap_or(0)
                },
                connections: m.connections,
                host: m.cfg.host.clone(),
                port: m.entry.as_ref().map_or(0, |e| e.port),
                client_port: m.entry.as_ref().map_or(0, |e| e.client_port),
                state: m.state.to_string(),
                restarts: m.restarts,
            })
            .collect();
        Ok(ListReply {
            master_pid: std::process::id(),
            rows,
        })
    }

    async fn stop(&self, (): ()) -> Result<(), RemoteError> {
        tokio::spawn(self.0.clone().stop_all());
        Ok(())
    }

    async fn kill(&self, (): ()) -> Result<(), RemoteError> {
        tokio::spawn(self.0.clone().kill_all());
        Ok(())
    }

    async fn add(&self, args: AddArgs) -> Result<AddReply, RemoteError> {
        if self.0.stopping.load(Ordering::SeqCst) {
            return Err(RemoteError::new(503, "the cluster is stopping"));
        }
        let id = self
            .0
            .add_server(args)
            .map_err(|e| RemoteError::new(400, e))?;
        tracing::info!(server = %id, "server added at runtime");
        Ok(AddReply { id })
    }

    async fn claim(&self, c: Claim) -> Result<(), RemoteError> {
        let m = &self.0;
        let old = {
            let mut st = lock(&m.state);
            let old = st.uids.get(&c.uid).cloned();
            match (m.policy, &old) {
                (_, None) => {}
                (_, Some((f, s))) if *f == c.frontend_id && *s == c.session_id => return Ok(()),
                (DuplicateLogin::RefuseNew, Some((f, _))) => {
                    return Err(RemoteError::new(
                        409,
                        format!("uid `{}` is already logged in on `{f}`", c.uid),
                    ));
                }
                _ => {}
            }
            st.uids
                .insert(c.uid.clone(), (c.frontend_id.clone(), c.session_id));
            old
        };
        if let (DuplicateLogin::KickOld, Some((fid, session_id))) = (m.policy, old) {
            tracing::info!(uid = %c.uid, old = %fid, new = %c.frontend_id, "duplicate login: kicking the old session");
            let args = KickArgs {
                session_id,
                uid: String::new(),
                reason: "logged in elsewhere".into(),
            };
            if let Err(e) = session_remote::Client::new(&m.rpc)
                .kick(Target::server(&fid), args)
                .await
            {
                tracing::warn!(uid = %c.uid, frontend = %fid, cause = %e, "could not kick the old session");
            }
        }
        Ok(())
    }

    async fn release(&self, c: Claim) -> Result<(), RemoteError> {
        let mut st = lock(&self.0.state);
        if st.uids.get(&c.uid) == Some(&(c.frontend_id.clone(), c.session_id)) {
            st.uids.remove(&c.uid);
        }
        Ok(())
    }

    async fn kick_uid(&self, k: KickUid) -> Result<Count, RemoteError> {
        let m = &self.0;
        let frontends: Vec<String> = {
            let mut st = lock(&m.state);
            st.uids.remove(&k.uid);
            st.servers
                .values()
                .filter(|s| s.cfg.frontend && s.entry.is_some())
                .map(|s| s.cfg.id.clone())
                .collect()
        };
        let stub = session_remote::Client::new(&m.rpc);
        let mut n = 0;
        for fid in frontends {
            let args = KickArgs {
                session_id: 0,
                uid: k.uid.clone(),
                reason: k.reason.clone(),
            };
            match stub.kick(Target::server(&fid), args).await {
                Ok(c) => n += c.n,
                Err(e) => tracing::warn!(frontend = %fid, cause = %e, "kick_uid failed there"),
            }
        }
        Ok(Count { n })
    }

    async fn place(&self, a: PlaceArgs) -> Result<PlaceReply, RemoteError> {
        let mut st = lock(&self.0.state);
        let live: Vec<String> = st
            .servers
            .values()
            .filter(|s| s.cfg.server_type == a.server_type && s.entry.is_some())
            .map(|s| s.cfg.id.clone())
            .collect();
        let live: Vec<&str> = live.iter().map(String::as_str).collect();
        let generation = st.placements.generation();
        let placed = if a.lookup_only {
            st.placements.get(&a.server_type, &a.key).map(str::to_owned)
        } else {
            st.placements.place(&a.server_type, &a.key, &live)
        };
        match placed {
            Some(server_id) => Ok(PlaceReply {
                server_id,
                generation,
            }),
            None => Err(RemoteError::new(
                503,
                format!("no live `{}` server to place a key on", a.server_type),
            )),
        }
    }

    async fn moves(&self, a: MovesArgs) -> Result<MovesReply, RemoteError> {
        Ok(lock(&self.0.state).placements.moves_since(a.since))
    }

    async fn reconcile(&self, set: ClaimSet) -> Result<(), RemoteError> {
        let mut st = lock(&self.0.state);
        let before = st.uids.len();
        st.uids.retain(|_, (fid, _)| *fid != set.frontend_id);
        let dropped = before - st.uids.len();
        let mut kept = 0usize;
        for c in set.claims {
            if c.frontend_id != set.frontend_id {
                continue;
            }
            // A claim another frontend took meanwhile wins: that session is the live one.
            if let std::collections::hash_map::Entry::Vacant(v) = st.uids.entry(c.uid) {
                v.insert((c.frontend_id, c.session_id));
                kept += 1;
            }
        }
        tracing::debug!(frontend = %set.frontend_id, dropped, kept, "uid claims reconciled");
        Ok(())
    }
}

/// Runs the master until the cluster is stopped or killed.
pub(crate) async fn run_master(
    cluster: ClusterConfig,
    config_dir: PathBuf,
    policy: DuplicateLogin,
    exit_with_parent: bool,
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
    });
    {
        let mut st = lock(&master.state);
        for s in &cluster.servers {
            st.servers.insert(
                s.id.clone(),
                Managed {
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
    // Let the CLI's last call get its reply before the port closes.
    rpc_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    match lock(&master.start_failure).take() {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Whether every server in `live` has applied a view of version `at` or later.
fn views_complete<'a>(
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
