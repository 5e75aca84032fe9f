//! What the master knows of each server: its [`ServerState`], process, restarts and crash
//! history, and the cluster-wide uid registry.

use super::*;

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

pub(super) struct Managed {
    pub(super) cfg: ServerConfig,
    /// The server's definition, passed to the child when it was added at runtime.
    pub(super) def_json: Option<String>,
    pub(super) pid: u32,
    pub(super) started: Option<Instant>,
    pub(super) state: ServerState,
    pub(super) restarts: u32,
    pub(super) connections: u64,
    /// Its latest stats report's cluster-backend degradation (empty: healthy).
    pub(super) degraded: String,
    pub(super) entry: Option<ServerEntry>,
    /// Told to stop or be killed: never restarted.
    pub(super) stopping: bool,
    pub(super) kill: CancellationToken,
    /// Grows each time its process ends (a grace timer moves its keys only if it is unchanged).
    pub(super) down_epoch: u64,
    /// It registered before: its next registration is a new process whose state is gone.
    pub(super) registered_once: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) servers: BTreeMap<String, Managed>,
    pub(super) version: u64,
    /// uid -> (frontend id, session id).
    pub(super) uids: HashMap<String, (String, u64)>,
    /// The view version at which every configured server had first registered.
    pub(super) all_registered_at: Option<u64>,
    /// Server id -> the latest view version it has applied (from its `watch` calls).
    pub(super) applied: HashMap<String, u64>,
    /// Where the keys of placed server types live.
    pub(super) placements: PlacementTable,
    /// Frontend id -> the placement generation up to which it has re-joined its sessions'
    /// moved keys (`master.rejoined`; a new frontend process starts up to date).
    pub(super) rejoined: HashMap<String, u64>,
}

impl State {
    /// The live frontends that have not re-joined the sessions of `key` yet: while any is
    /// left, the key's room on its new server misses members, and a message sent there now
    /// would not reach them. Empty when the key did not move lately.
    pub(super) fn rejoin_pending(&self, server_type: &str, key: &[u8]) -> Vec<String> {
        let generation = self.placements.generation();
        let live_frontends = || {
            self.servers
                .values()
                .filter(|s| s.cfg.frontend && s.entry.is_some())
        };
        let behind = |id: &str| self.rejoined.get(id).copied().unwrap_or(0);
        if live_frontends().all(|s| behind(&s.cfg.id) >= generation) {
            return Vec::new();
        }
        let Some(moved) = self.placements.moved_at(server_type, key) else {
            return Vec::new();
        };
        live_frontends()
            .filter(|s| behind(&s.cfg.id) < moved)
            .map(|s| s.cfg.id.clone())
            .collect()
    }
}

pub(crate) struct Master {
    pub(super) state: Mutex<State>,
    pub(super) snap: watch::Sender<Arc<Snapshot>>,
    pub(super) rpc: RpcClient,
    pub(super) exe: PathBuf,
    pub(super) env: String,
    pub(super) config_dir: PathBuf,
    pub(super) master_id: String,
    pub(super) addr: Mutex<String>,
    pub(super) policy: DuplicateLogin,
    /// How long a lost server's placed keys wait for it before they move.
    pub(super) placement_grace: Duration,
    pub(super) restart: RestartPolicy,
    /// Cancelled when the master should exit.
    pub(super) exit: CancellationToken,
    pub(super) ready: AtomicBool,
    pub(super) stopping: AtomicBool,
    /// Set when a server could not start: the cluster start failed (`run_master`'s error).
    pub(super) start_failure: Mutex<Option<String>>,
    /// The cluster secret handed to every server started (environment only, never logged).
    pub(super) rpc_secret: Option<shaddock_rpc::ClusterSecret>,
    /// The master's own Prometheus endpoint (`metricsPort` in master.json), empty without.
    pub(super) metrics_url: String,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the master restarts `cfg`'s server when it exits on its own: its own setting in
/// servers.json, else master.json's `restart.enabled`.
pub(super) fn restart_enabled(cfg: &ServerConfig, policy: &RestartPolicy) -> bool {
    cfg.restart().unwrap_or(policy.enabled)
}

/// The crashes of one server within the crash-loop window.
pub(super) struct CrashLog {
    pub(super) at: VecDeque<Instant>,
}

impl CrashLog {
    /// Notes a crash at `now`; true if the server crashed more than `policy.crash_loop_max`
    /// times within `policy.crash_loop_window` (a crash loop: do not restart it again).
    pub(super) fn crashed(&mut self, now: Instant, policy: &RestartPolicy) -> bool {
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

    pub(super) fn count(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(id: &str, server_type: &str, frontend: bool, registered: bool) -> Managed {
        let mut def = serde_json::json!({
            "id": id, "serverType": server_type, "host": "127.0.0.1", "port": 0,
            "frontend": frontend,
        });
        if frontend {
            def["clientPort"] = 0.into();
        }
        let cfg = parse_server_def(def, None).expect("server def");
        Managed {
            degraded: String::new(),
            cfg,
            def_json: None,
            pid: 1,
            started: None,
            state: ServerState::Running,
            restarts: 0,
            connections: 0,
            entry: registered.then(|| ServerEntry {
                id: id.to_owned(),
                server_type: server_type.to_owned(),
                frontend,
                ..ServerEntry::default()
            }),
            stopping: false,
            kill: CancellationToken::new(),
            down_epoch: 0,
            registered_once: true,
        }
    }

    #[test]
    fn a_moved_key_waits_for_every_live_frontend_to_rejoin() {
        let mut st = State::default();
        for m in [
            managed("connector-1", "connector", true, true),
            managed("connector-2", "connector", true, true),
            managed("connector-3", "connector", true, false),
            managed("chat-1", "chat", false, true),
            managed("chat-2", "chat", false, true),
        ] {
            st.servers.insert(m.cfg.id.clone(), m);
        }
        st.placements.place("chat", b"room1", &["chat-1"]);
        st.placements.place("chat", b"room2", &["chat-2"]);
        // Nothing moved: nothing waits.
        assert!(st.rejoin_pending("chat", b"room1").is_empty());

        // chat-1 restarted: its room's members are gone until every frontend re-joins.
        assert_eq!(st.placements.restarted("chat-1").len(), 1);
        assert_eq!(
            st.rejoin_pending("chat", b"room1"),
            ["connector-1", "connector-2"],
            "a frontend that is not registered (connector-3) is not waited for"
        );
        assert!(
            st.rejoin_pending("chat", b"room2").is_empty(),
            "room2 did not move"
        );

        st.rejoined.insert("connector-1".into(), 1);
        assert_eq!(st.rejoin_pending("chat", b"room1"), ["connector-2"]);
        st.rejoined.insert("connector-2".into(), 1);
        assert!(st.rejoin_pending("chat", b"room1").is_empty());

        // A later move of another key: the earlier key is not held again.
        st.placements.move_from("chat", "chat-2", &["chat-1"]);
        assert!(st.rejoin_pending("chat", b"room1").is_empty());
        assert_eq!(
            st.rejoin_pending("chat", b"room2"),
            ["connector-1", "connector-2"]
        );
    }
}
