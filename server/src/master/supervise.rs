//! Starting, watching, restarting and stopping the server processes.

use super::*;

impl Master {
    /// Holds a `place` of a key that moved (its server was lost or restarted) until every live
    /// frontend has re-joined its sessions' moved keys, at most [`REJOIN_WAIT`]: otherwise a
    /// member re-joined by one frontend could send to the room before the members of another
    /// frontend are back in it, and those would miss an acknowledged message.
    pub(super) async fn await_rejoins(&self, server_type: &str, key: &[u8]) {
        let deadline = tokio::time::Instant::now() + REJOIN_WAIT;
        let mut changes = self.snap.subscribe();
        loop {
            let pending = lock(&self.state).rejoin_pending(server_type, key);
            if pending.is_empty() {
                return;
            }
            let woke = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                tracing::warn!(
                    server_type,
                    key = %String::from_utf8_lossy(key),
                    frontends = ?pending,
                    waited_ms = REJOIN_WAIT.as_millis() as u64,
                    "a moved key is served before these frontends re-joined their sessions to it: their members may miss messages until they do"
                );
                return;
            }
        }
    }

    pub(super) fn publish(&self, st: &mut State) {
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

    pub(super) fn spawn_supervisor(self: &Arc<Self>, id: String) {
        let m = self.clone();
        tokio::spawn(async move { m.supervise(id).await });
    }

    pub(super) async fn supervise(self: Arc<Self>, id: String) {
        let policy = self.restart.clone();
        let mut backoff = policy.backoff;
        let mut crashes = CrashLog {
            at: VecDeque::new(),
        };
        loop {
            let (cfg, def_json, kill, restarts) = {
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
                (
                    m.cfg.clone(),
                    m.def_json.clone(),
                    m.kill.clone(),
                    m.restarts,
                )
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
            cmd.env(crate::process::RESTARTS_ENV, restarts.to_string());
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
            tracing::debug!(server = %id, pid = child.id().unwrap_or(0), "server process started");
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
                m.degraded.clear();
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
                    tracing::debug!(server = %id, %status, "server stopped");
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
    pub(super) fn move_keys_after_grace(self: &Arc<Self>, id: String, epoch: u64) {
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

    pub(super) fn all_registered(st: &State) -> bool {
        st.servers.values().all(|m| m.entry.is_some())
    }

    /// Prints the ready line once every configured server has registered *and* every
    /// registered one has applied a view holding them all (its next `watch` says so): from
    /// then on any server can route to any other, so a placement over the configured servers
    /// (e.g. the chat's rooms) works for the first client.
    pub(super) fn announce_ready_when_views_complete(&self, st: &State) {
        let Some(at) = st.all_registered_at else {
            return;
        };
        let live = st
            .servers
            .values()
            .filter_map(|m| m.entry.as_ref().map(|e| e.id.as_str()));
        if views_complete(at, live, &st.applied) && !self.ready.swap(true, Ordering::SeqCst) {
            say(READY_LINE);
            let frontends = st.servers.values().filter(|m| m.cfg.frontend).count();
            tracing::info!(
                servers = st.servers.len(),
                frontends,
                backends = st.servers.len() - frontends,
                "cluster ready: every configured server is up and knows the others"
            );
        }
    }

    /// A server ended before the cluster was up: say why, stop what was started, and make
    /// the master exit with that error (once, for the first server that failed).
    pub(super) fn start_failed(self: &Arc<Self>, id: &str, cause: &str) {
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

    /// Tells every registered server that the cluster is stopping, so that each expects its
    /// peers to leave (no reconnect, no warning when their connections end). Best effort and
    /// bounded: a server that does not answer is stopped all the same.
    async fn announce_stop(&self) {
        let ids: Vec<String> = {
            let st = lock(&self.state);
            st.servers
                .values()
                .filter(|m| m.entry.is_some())
                .map(|m| m.cfg.id.clone())
                .collect()
        };
        let stub = server_remote::Client::new(&self.rpc);
        let notices = ids.iter().map(|id| {
            let stub = stub.clone();
            async move {
                let notice = stub.stop(
                    Target::server(id),
                    StopArgs {
                        reason: "cluster stopping".into(),
                        notice_only: true,
                    },
                );
                match tokio::time::timeout(Duration::from_secs(2), notice).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(server = %id, cause = %e, "stop notice failed"),
                    Err(_) => tracing::debug!(server = %id, "stop notice not answered in 2 s"),
                }
            }
        });
        futures_util::future::join_all(notices).await;
    }

    /// Stops a group of servers over RPC and waits for their processes to end.
    pub(super) async fn stop_group(&self, frontend: bool) {
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
            // It leaves on purpose: its connection's end is not a loss to reconnect after.
            self.rpc.expect_departure(id);
            let sent = *registered
                && stub
                    .stop(
                        Target::server(id),
                        StopArgs {
                            reason: "cluster stop".into(),
                            notice_only: false,
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

    pub(super) fn kill_one(&self, id: &str) {
        let mut st = lock(&self.state);
        if let Some(m) = st.servers.get_mut(id) {
            m.stopping = true;
            m.kill.cancel();
        }
    }

    /// Waits until none of `ids` has a running process; false on timeout.
    pub(super) async fn wait_exited(&self, ids: &[String], within: Duration) -> bool {
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

    pub(super) async fn stop_all(self: Arc<Self>) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("stopping the cluster: frontends first");
        self.announce_stop().await;
        self.stop_group(true).await;
        self.stop_group(false).await;
        tracing::info!("every server stopped; master exits");
        self.exit.cancel();
    }

    pub(super) async fn kill_all(self: Arc<Self>) {
        self.stopping.store(true, Ordering::SeqCst);
        let ids: Vec<String> = lock(&self.state).servers.keys().cloned().collect();
        for id in &ids {
            self.kill_one(id);
        }
        self.wait_exited(&ids, STOP_WAIT).await;
        self.exit.cancel();
    }

    pub(super) fn add_server(self: &Arc<Self>, args: AddArgs) -> Result<String, String> {
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
                degraded: String::new(),
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
