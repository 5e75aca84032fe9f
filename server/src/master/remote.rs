//! The `master` remote: registration, the long-poll watch, stats, admin calls, the uid
//! registry and placements.

use super::*;

pub(super) struct MasterRemote(pub(super) Arc<Master>);

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
        if entry.frontend {
            // A new frontend process holds no sessions: nothing of it to re-join.
            let generation = st.placements.generation();
            st.rejoined.insert(entry.id.clone(), generation);
        }
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
        tracing::debug!(server = %entry.id, port = entry.port, client_port = entry.client_port, "server registered");
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
            m.degraded = r.degraded;
        }
        Ok(())
    }

    async fn list(&self, (): ()) -> Result<ListReply, RemoteError> {
        Ok(self.0.list_reply())
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
        if !a.lookup_only {
            self.0.await_rejoins(&a.server_type, &a.key).await;
        }
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

    async fn rejoined(&self, r: Rejoined) -> Result<(), RemoteError> {
        let mut st = lock(&self.0.state);
        let acked = st.rejoined.entry(r.server_id).or_default();
        if r.generation > *acked {
            *acked = r.generation;
            // Wakes the `place` calls waiting for this frontend (and the watchers: harmless).
            self.0.publish(&mut st);
        }
        Ok(())
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

impl Master {
    /// Every server of this master with pid, uptime, RSS, connections and state: `list`'s
    /// answer, over RPC and (in a cluster on NATS) over the admin subject.
    pub(super) fn list_reply(&self) -> ListReply {
        let st = lock(&self.state);
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
                // Running, but its cluster backend said degraded at its last report.
                state: if m.state == ServerState::Running && !m.degraded.is_empty() {
                    "degraded".to_owned()
                } else {
                    m.state.to_string()
                },
                restarts: m.restarts,
                metrics_url: match &m.entry {
                    Some(e) if e.metrics_port != 0 => {
                        format!("http://{}:{}/metrics", e.host, e.metrics_port)
                    }
                    _ => String::new(),
                },
            })
            .collect();
        ListReply {
            master_pid: std::process::id(),
            rows,
            master_metrics_url: self.metrics_url.clone(),
        }
    }
}
