//! The rules of the [module docs](super), once, over a small key-value + pub/sub [`Store`]:
//! what [`super::Embedded`] and [`super::NatsBackend`] share.
//!
//! Keys: the registry keys a record by its server id, the uid bucket by the uid, the placement
//! bucket by `<type>.<key>`; every part is base64url (no padding) so that any id, uid or routed
//! key is a valid KV key, with a one-letter prefix so that no part is empty.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::push::{self, PushStream};
use super::{
    BoxFuture, ClaimOutcome, ClaimPolicy, ClusterError, ClusterStats, Health, Moved, ServerEvent,
    ServerRecord, ServerWatch, UidClaim,
};

/// How many times a compare-and-set is tried before [`ClusterError::Contention`].
const CAS_ATTEMPTS: u32 = 16;
/// Capacity of the registry's event channel per watcher.
const EVENTS: usize = 4096;
/// Pause before a failed bucket watch is started again.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// Pause before a failed refresh is tried again.
const REFRESH_RETRY: Duration = Duration::from_millis(250);
/// The store's own expiry of a record (the bucket's `max_age`) is this many TTLs: a backstop
/// for records nobody judges; see [`Liveness`].
pub(crate) const BACKSTOP_TTLS: u32 = 5;

/// How this handle judges a server lost.
///
/// A record is lost when it has not been refreshed for the TTL *while the registry was seen
/// making progress*. Progress is this handle's own heartbeat (a key `h…` of the servers bucket
/// it writes every refresh period) coming back through its watch: that proves the store took a
/// write and that the watch has delivered everything up to it, so a record whose refresh has
/// not arrived by then really was not refreshed. The TTL is counted from the later of the
/// record's last refresh and the start of the current unbroken run of progress (a run breaks
/// when no heartbeat came back for two refresh periods). So a store that cannot write for a
/// while (a JetStream leader election takes 4-9 s after its node dies), or a watch being
/// started again, makes no server lost: every record gets a full TTL again once both work.
/// Judgments are made at progress events only. The bucket's own expiry (`BACKSTOP_TTLS` ×
/// TTL) removes what nobody refreshes for good.
///
/// **Beats.** Every handle also sends a beat each refresh period on plain pub/sub (NATS core,
/// no JetStream): its heartbeat key and the servers it refreshes ([`Beat`]). A beat counts as
/// a refresh of those records, and a handle's own beat coming back counts as progress. So
/// liveness does not wait for the store: while a JetStream bucket elects a new leader (4-9 s
/// when its leader's node died), the servers that still beat stay live and the ones that
/// stopped are judged lost one TTL after their last beat, instead of one TTL after the store
/// takes writes again. A record's refreshes still count as before: a server is live while
/// either reaches this handle. A handle's own beat is progress only while it also hears the
/// beats of at least half the servers it lists: a host cut off from the others (its NATS node
/// alone, beats going round locally) judges nobody, as before; only the side that still hears
/// most of the cluster judges the rest lost.
struct Liveness {
    /// Server id → when its latest refresh was delivered, and its revision.
    seen: HashMap<String, (Instant, u64)>,
    /// Server id → how this handle judged it lost.
    judged: HashMap<String, Judged>,
    /// Server id → when its latest beat was delivered.
    beats: HashMap<String, Instant>,
    last_progress: Instant,
    progress_since: Instant,
}

/// A server this handle judged lost.
struct Judged {
    /// The revision of its record at that moment.
    revision: u64,
    /// Its run (start time, pid), once known.
    run: Option<(u64, u32)>,
    /// The same run's record written again since (a refresh that reached the store late, for
    /// instance committed when a JetStream quorum came back after the process had died): held
    /// here, not listed, until the run beats again ([`apply_beat`]).
    revivable: Option<(ServerRecord, u64)>,
}

/// The three buckets of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    /// `<app>-servers`: records, with the TTL.
    Servers,
    /// `<app>-uids`: claims.
    Uids,
    /// `<app>-placements`: routed keys.
    Placements,
}

impl Bucket {
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Self::Servers => "servers",
            Self::Uids => "uids",
            Self::Placements => "placements",
        }
    }
}

/// One value of a bucket, or its removal.
#[derive(Debug, Clone)]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) revision: u64,
    /// Deleted, purged or expired.
    pub(crate) removed: bool,
}

/// What a watch yields.
#[derive(Debug, Clone)]
pub(crate) enum WatchItem {
    Entry(KvEntry),
    /// Everything that was in the bucket when the watch started has been delivered.
    Current,
}

/// The answer of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cas<T> {
    Done(T),
    /// Another writer came first (or the key is not as expected).
    Conflict,
}

pub(crate) type Watch = BoxStream<'static, Result<WatchItem, ClusterError>>;

/// What the rules need from a store.
pub(crate) trait Store: Send + Sync + 'static {
    /// The latest value of `key`; `None` when absent or removed.
    fn get(&self, b: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, ClusterError>>;
    /// Writes `value`, whatever is there.
    fn put(&self, b: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, ClusterError>>;
    /// Writes `value` if `key` is absent or removed.
    fn create(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>>;
    /// Writes `value` if `key`'s latest revision is `revision`.
    fn update(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>>;
    /// Removes `key` (if its latest revision is `revision`, when given).
    fn delete(
        &self,
        b: Bucket,
        key: &str,
        revision: Option<u64>,
    ) -> BoxFuture<'_, Result<Cas<()>, ClusterError>>;
    /// Every current value then every change; from `from` (a revision) on, when given.
    fn watch(&self, b: Bucket, from: Option<u64>) -> BoxFuture<'_, Result<Watch, ClusterError>>;
    /// Sends one message on `subject` (a plain name; the store adds its prefix).
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// The messages of `subject` from now on.
    fn subscribe(
        &self,
        subject: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>>;
    /// Sends a liveness beat to every handle of the app: plain pub/sub on the control
    /// connection, never through the key-value store (see [`Liveness`]).
    fn beat(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Every handle's beats from now on.
    fn beats(&self) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>>;
    /// The largest message `publish` takes.
    fn max_payload(&self) -> usize;
    /// `Ok` when the store is reachable (cheap, no request); the error says why not.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;
    /// The store's own counters (slow consumers, reconnects).
    fn stats(&self) -> ClusterStats;
}

/// The value of a placement.
#[derive(Debug, Serialize, Deserialize)]
struct PlacementValue {
    server: String,
}

/// What a handle sends each refresh period on [`Store::beat`] (see [`Liveness`]).
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    /// The sender's heartbeat key: its own beat coming back is progress.
    #[serde(rename = "h")]
    handle: String,
    /// The runs it refreshes: (server id, start time, pid).
    #[serde(rename = "s")]
    servers: Vec<(String, u64, u32)>,
}

pub(crate) fn server_key(id: &str) -> Result<String, ClusterError> {
    if id.is_empty() {
        return Err(ClusterError::Invalid {
            what: "server id",
            value: String::new(),
        });
    }
    Ok(format!("s{}", B64.encode(id)))
}

/// A heartbeat key unique to one handle: its name, the process and the time it started.
fn heartbeat_key(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let unique = format!(
        "{name}/{}/{nanos}/{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    format!("h{}", B64.encode(unique))
}

fn uid_key(uid: &str) -> Result<String, ClusterError> {
    if uid.is_empty() {
        return Err(ClusterError::Invalid {
            what: "uid",
            value: String::new(),
        });
    }
    Ok(format!("u{}", B64.encode(uid)))
}

fn placement_key(server_type: &str, key: &[u8]) -> Result<String, ClusterError> {
    if server_type.is_empty() {
        return Err(ClusterError::Invalid {
            what: "server type",
            value: String::new(),
        });
    }
    Ok(format!("t{}.k{}", B64.encode(server_type), B64.encode(key)))
}

fn parse_placement_key(k: &str) -> Option<(String, Vec<u8>)> {
    let (t, key) = k.split_once('.')?;
    let t = B64.decode(t.strip_prefix('t')?).ok()?;
    let key = B64.decode(key.strip_prefix('k')?).ok()?;
    Some((String::from_utf8(t).ok()?, key))
}

/// Subject of the liveness beats ([`Store::beat`]). NATS sends them on the control connection,
/// apart from the pushes, so that a flood of pushes cannot delay or drop them.
pub(crate) const BEAT_SUBJECT: &str = "alive";

/// Subject of the pushes for one frontend.
pub(crate) fn push_subject(frontend: &str) -> String {
    format!("push.{}", B64.encode(frontend))
}

/// Subject of the broadcasts to the frontends of one type.
pub(crate) fn broadcast_subject(frontend_type: &str) -> String {
    format!("broadcast.{}", B64.encode(frontend_type))
}

/// A server registered through this handle, and its refresher.
struct Registered {
    record: Arc<Mutex<ServerRecord>>,
    task: AbortHandle,
}

struct Inner<S> {
    store: S,
    /// Who this handle is, for logs.
    name: String,
    ttl: Duration,
    servers: RwLock<HashMap<String, ServerRecord>>,
    liveness: Mutex<Liveness>,
    /// This handle's heartbeat key in the servers bucket.
    heartbeat_key: String,
    /// (type, key) → server id.
    placements: RwLock<HashMap<(String, Vec<u8>), String>>,
    events: broadcast::Sender<ServerEvent>,
    health: watch::Sender<Health>,
    registered: Mutex<HashMap<String, Registered>>,
    refresh_failing: AtomicBool,
    /// Per bucket watched: the watch works (`false` while it is being started again).
    watch_ok: [AtomicBool; 2],
    /// Per bucket watched: when this handle's heartbeat last came back through the watch.
    last_beat: [Mutex<Instant>; 2],
    /// Per bucket watched: the health task's order to start a stalled watch again.
    restart: [tokio::sync::Notify; 2],
    ready: [watch::Sender<bool>; 2],
    /// Times the placements watch delivered the bucket's whole state.
    placements_reloaded: watch::Sender<u64>,
    bad_pushes: Arc<AtomicU64>,
    bad_entries: AtomicU64,
}

/// The rules over a store; the handle of [`super::Embedded`] and [`super::NatsBackend`].
/// Dropping it stops its tasks (refreshers, watchers, health), deregistering nothing.
pub(crate) struct Core<S: Store> {
    inner: Arc<Inner<S>>,
    tasks: Vec<AbortHandle>,
}

impl<S: Store> Drop for Core<S> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, r) in lock(&self.inner.registered).drain() {
            r.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watch_index(b: Bucket) -> usize {
    match b {
        Bucket::Servers => 0,
        _ => 1,
    }
}

impl<S: Store> Core<S> {
    /// Starts the watchers and the health task, and waits (at most `ready_within`) until both
    /// caches hold what the buckets held. Needs a tokio runtime.
    pub(crate) async fn start(
        store: S,
        name: String,
        ttl: Duration,
        ready_within: Duration,
    ) -> Self {
        let hb_name = name.clone();
        let inner = Arc::new(Inner {
            store,
            name,
            ttl,
            servers: RwLock::new(HashMap::new()),
            heartbeat_key: heartbeat_key(&hb_name),
            liveness: Mutex::new(Liveness {
                seen: HashMap::new(),
                judged: HashMap::new(),
                beats: HashMap::new(),
                last_progress: Instant::now(),
                progress_since: Instant::now(),
            }),
            placements: RwLock::new(HashMap::new()),
            events: broadcast::channel(EVENTS).0,
            health: watch::channel(Health::Ok).0,
            registered: Mutex::new(HashMap::new()),
            refresh_failing: AtomicBool::new(false),
            watch_ok: [AtomicBool::new(false), AtomicBool::new(false)],
            last_beat: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            restart: [tokio::sync::Notify::new(), tokio::sync::Notify::new()],
            ready: [watch::channel(false).0, watch::channel(false).0],
            placements_reloaded: watch::channel(0).0,
            bad_pushes: Arc::new(AtomicU64::new(0)),
            bad_entries: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for b in [Bucket::Servers, Bucket::Placements] {
            tasks.push(tokio::spawn(run_watch(inner.clone(), b)).abort_handle());
        }
        tasks.push(tokio::spawn(run_health(inner.clone())).abort_handle());
        tasks.push(tokio::spawn(run_beats(inner.clone())).abort_handle());
        tasks.push(tokio::spawn(run_beat_watch(inner.clone())).abort_handle());
        // Built before the wait, so that the tasks stop if this future is dropped.
        let core = Self { inner, tasks };
        let inner = &core.inner;
        let mut r0 = inner.ready[0].subscribe();
        let mut r1 = inner.ready[1].subscribe();
        let ready = async {
            let _ = r0.wait_for(|r| *r).await;
            let _ = r1.wait_for(|r| *r).await;
        };
        if tokio::time::timeout(ready_within, ready).await.is_err() {
            tracing::warn!(
                backend = %inner.name,
                "cluster caches not loaded within {ready_within:?}: starting with what is there"
            );
        }
        core
    }

    pub(crate) fn store(&self) -> &S {
        &self.inner.store
    }

    /// When this handle last saw `id`'s record written (loaded or refreshed).
    pub(crate) fn last_seen(&self, id: &str) -> Option<Instant> {
        lock(&self.inner.liveness).seen.get(id).map(|&(at, _)| at)
    }

    /// The record TTL.
    pub(crate) fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub(crate) async fn register(&self, record: ServerRecord) -> Result<(), ClusterError> {
        let key = server_key(&record.id)?;
        let value = to_json(&record);
        // The old refresher of this id, if any, stops first; one of its writes still on the way
        // cannot overwrite this record: refreshes are compare-and-set (see `run_refresh`).
        if let Some(old) = lock(&self.inner.registered).remove(&record.id) {
            old.task.abort();
        }
        let revision = self.inner.store.put(Bucket::Servers, &key, value).await?;
        let id = record.id.clone();
        let shared = Arc::new(Mutex::new(record));
        let task = tokio::spawn(run_refresh(
            self.inner.clone(),
            key,
            shared.clone(),
            revision,
        ))
        .abort_handle();
        if let Some(old) = lock(&self.inner.registered).insert(
            id,
            Registered {
                record: shared,
                task,
            },
        ) {
            old.task.abort();
        }
        Ok(())
    }

    pub(crate) fn set_connections(&self, id: &str, n: u64) -> Result<(), ClusterError> {
        self.update_record(id, |r| r.connections = n)
    }

    pub(crate) fn set_rss(&self, id: &str, rss_bytes: u64) -> Result<(), ClusterError> {
        self.update_record(id, |r| r.rss_bytes = rss_bytes)
    }

    fn update_record(
        &self,
        id: &str,
        f: impl FnOnce(&mut ServerRecord),
    ) -> Result<(), ClusterError> {
        let reg = lock(&self.inner.registered);
        let r = reg
            .get(id)
            .ok_or_else(|| ClusterError::NotRegistered(id.to_owned()))?;
        f(&mut lock(&r.record));
        Ok(())
    }

    pub(crate) async fn deregister(&self, id: &str) -> Result<(), ClusterError> {
        let key = server_key(id)?;
        if let Some(r) = lock(&self.inner.registered).remove(id) {
            r.task.abort();
        }
        self.inner
            .store
            .delete(Bucket::Servers, &key, None)
            .await
            .map(|_| ())
    }

    pub(crate) fn servers(&self) -> Vec<ServerRecord> {
        let mut v: Vec<_> = read(&self.inner.servers).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub(crate) fn watch(&self) -> ServerWatch {
        ServerWatch {
            rx: self.inner.events.subscribe(),
        }
    }

    /// Whether `id` is live (in the run `start`, when given): the cache first, then the
    /// registry itself (a record this handle's watch has not delivered yet).
    async fn is_live(&self, id: &str, start: Option<u64>) -> Result<bool, ClusterError> {
        let fits = |r: &ServerRecord| start.is_none_or(|s| r.start_time == s);
        if read(&self.inner.servers).get(id).is_some_and(fits) {
            return Ok(true);
        }
        // Judged lost here (that run, or any when `start` is not given) and not beating since:
        // lost, without asking the store. Right after a host was lost the store may be
        // electing new leaders for seconds (when the lost node led the registry's bucket),
        // and this answer is what re-placing the lost server's keys waits for.
        if lock(&self.inner.liveness).judged.get(id).is_some_and(|j| {
            start.is_none_or(|s| j.run.is_none_or(|(run_start, _)| run_start == s))
        }) {
            return Ok(false);
        }
        let Some(e) = self
            .inner
            .store
            .get(Bucket::Servers, &server_key(id)?)
            .await?
        else {
            return Ok(false);
        };
        // (A judged run's record, still in the store, is not `start`'s run: checked above.)
        Ok(serde_json::from_slice::<ServerRecord>(&e.value).is_ok_and(|r| fits(&r)))
    }

    pub(crate) async fn claim_uid(
        &self,
        uid: &str,
        claim: UidClaim,
        policy: ClaimPolicy,
    ) -> Result<ClaimOutcome, ClusterError> {
        let key = uid_key(uid)?;
        let value = to_json(&claim);
        let store = &self.inner.store;
        for _ in 0..CAS_ATTEMPTS {
            let Some(e) = store.get(Bucket::Uids, &key).await? else {
                match store.create(Bucket::Uids, &key, value.clone()).await? {
                    Cas::Done(_) => return Ok(ClaimOutcome::Claimed { replaced: None }),
                    Cas::Conflict => continue,
                }
            };
            let current: Option<UidClaim> = match serde_json::from_slice(&e.value) {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(backend = %self.inner.name, uid, "unreadable uid claim, taken over: {err}");
                    None
                }
            };
            let replaced = match current {
                Some(c) if c == claim => return Ok(ClaimOutcome::Claimed { replaced: None }),
                Some(c) if self.is_live(&c.frontend, Some(c.frontend_start)).await? => match policy
                {
                    ClaimPolicy::RefuseNew => return Ok(ClaimOutcome::Refused { owner: c }),
                    ClaimPolicy::KickOld => Some(c),
                },
                // Free: the owner's run is gone.
                _ => None,
            };
            match store
                .update(Bucket::Uids, &key, value.clone(), e.revision)
                .await?
            {
                Cas::Done(_) => return Ok(ClaimOutcome::Claimed { replaced }),
                Cas::Conflict => continue,
            }
        }
        Err(ClusterError::Contention {
            what: "uid",
            key: uid.to_owned(),
            attempts: CAS_ATTEMPTS,
        })
    }

    pub(crate) async fn release_uid(
        &self,
        uid: &str,
        claim: &UidClaim,
    ) -> Result<bool, ClusterError> {
        let key = uid_key(uid)?;
        let store = &self.inner.store;
        let Some(e) = store.get(Bucket::Uids, &key).await? else {
            return Ok(false);
        };
        if serde_json::from_slice::<UidClaim>(&e.value).ok().as_ref() != Some(claim) {
            return Ok(false);
        }
        Ok(matches!(
            store.delete(Bucket::Uids, &key, Some(e.revision)).await?,
            Cas::Done(())
        ))
    }

    pub(crate) async fn uid_owner(&self, uid: &str) -> Result<Option<UidClaim>, ClusterError> {
        let key = uid_key(uid)?;
        let Some(e) = self.inner.store.get(Bucket::Uids, &key).await? else {
            return Ok(None);
        };
        let Ok(c) = serde_json::from_slice::<UidClaim>(&e.value) else {
            return Ok(None);
        };
        Ok(self
            .is_live(&c.frontend, Some(c.frontend_start))
            .await?
            .then_some(c))
    }

    pub(crate) async fn placement(
        &self,
        server_type: &str,
        key: &[u8],
    ) -> Result<Option<String>, ClusterError> {
        let pk = placement_key(server_type, key)?;
        if let Some(s) = read(&self.inner.placements).get(&(server_type.to_owned(), key.to_vec())) {
            return Ok(Some(s.clone()));
        }
        let Some(e) = self.inner.store.get(Bucket::Placements, &pk).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<PlacementValue>(&e.value)
            .ok()
            .map(|v| v.server))
    }

    /// Of the live servers of `server_type` other than `exclude`, the one holding the fewest
    /// keys (by this handle's cache); ties broken by the key's crc32 so placers spread evenly.
    fn choose(&self, server_type: &str, key: &[u8], exclude: Option<&str>) -> Option<String> {
        let mut candidates: Vec<String> = read(&self.inner.servers)
            .values()
            .filter(|r| r.server_type == server_type && Some(r.id.as_str()) != exclude)
            .map(|r| r.id.clone())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut load: HashMap<&str, usize> = HashMap::new();
        let placements = read(&self.inner.placements);
        for ((t, _), s) in placements.iter() {
            if t == server_type {
                *load.entry(s.as_str()).or_default() += 1;
            }
        }
        let load_of = |id: &String| load.get(id.as_str()).copied().unwrap_or(0);
        let min = candidates.iter().map(load_of).min()?;
        candidates.retain(|id| load_of(id) == min);
        candidates.sort_unstable();
        let i = crc32fast::hash(key) as usize % candidates.len();
        Some(candidates.swap_remove(i))
    }

    pub(crate) async fn place(
        &self,
        server_type: &str,
        key: &[u8],
    ) -> Result<Option<String>, ClusterError> {
        let cached = read(&self.inner.placements)
            .get(&(server_type.to_owned(), key.to_vec()))
            .cloned();
        if let Some(s) = cached
            && read(&self.inner.servers).contains_key(&s)
        {
            return Ok(Some(s));
        }
        self.place_checked(server_type, key, None)
            .await
            .map(|(s, _)| s)
    }

    /// `place` without the cache fast path; `known_lost`: a server already known not to be
    /// live. Also returns whether this call moved the key (from where).
    async fn place_checked(
        &self,
        server_type: &str,
        key: &[u8],
        known_lost: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), ClusterError> {
        let pk = placement_key(server_type, key)?;
        let store = &self.inner.store;
        for _ in 0..CAS_ATTEMPTS {
            let entry = store.get(Bucket::Placements, &pk).await?;
            let current = entry.as_ref().and_then(|e| {
                serde_json::from_slice::<PlacementValue>(&e.value)
                    .ok()
                    .map(|v| v.server)
            });
            let (revision, outcome) = match (&entry, current) {
                (Some(e), Some(cur)) => {
                    let lost =
                        known_lost == Some(cur.as_str()) || !self.is_live(&cur, None).await?;
                    if !lost {
                        return Ok((Some(cur), None));
                    }
                    let Some(to) = self.choose(server_type, key, Some(&cur)) else {
                        // No survivor: the key stays where it is.
                        return Ok((Some(cur), None));
                    };
                    (Some(e.revision), (to, Some(cur)))
                }
                (e, _) => {
                    let Some(to) = self.choose(server_type, key, known_lost) else {
                        return Ok((None, None));
                    };
                    (e.as_ref().map(|e| e.revision), (to, None))
                }
            };
            let value = to_json(&PlacementValue {
                server: outcome.0.clone(),
            });
            let cas = match revision {
                Some(rev) => store.update(Bucket::Placements, &pk, value, rev).await?,
                None => store.create(Bucket::Placements, &pk, value).await?,
            };
            if let Cas::Done(_) = cas {
                // Our own cache learns it through the watch; until then, keep it here too so
                // the next choice counts it.
                write(&self.inner.placements)
                    .insert((server_type.to_owned(), key.to_vec()), outcome.0.clone());
                return Ok((Some(outcome.0), outcome.1));
            }
        }
        Err(ClusterError::Contention {
            what: "placement",
            key: format!("{server_type}/{}", String::from_utf8_lossy(key)),
            attempts: CAS_ATTEMPTS,
        })
    }

    pub(crate) async fn unplace(&self, server_type: &str, key: &[u8]) -> Result<(), ClusterError> {
        let pk = placement_key(server_type, key)?;
        self.inner
            .store
            .delete(Bucket::Placements, &pk, None)
            .await?;
        write(&self.inner.placements).remove(&(server_type.to_owned(), key.to_vec()));
        Ok(())
    }

    pub(crate) fn placements_of(&self, id: &str) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = read(&self.inner.placements)
            .iter()
            .filter(|(_, s)| s.as_str() == id)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    pub(crate) async fn reassign_lost(&self, lost: &str) -> Result<Vec<Moved>, ClusterError> {
        if self.is_live(lost, None).await? {
            return Ok(Vec::new());
        }
        let mut moved = Vec::new();
        for (server_type, key) in self.placements_of(lost) {
            if let (Some(to), Some(from)) =
                self.place_checked(&server_type, &key, Some(lost)).await?
            {
                tracing::info!(
                    backend = %self.inner.name,
                    server_type, key = %String::from_utf8_lossy(&key), from, to,
                    "placed a lost server's key again"
                );
                moved.push(Moved {
                    server_type,
                    key,
                    from,
                    to,
                });
            }
        }
        Ok(moved)
    }

    pub(crate) async fn push(
        &self,
        frontend: &str,
        package: Bytes,
        uids: &[String],
    ) -> Result<usize, ClusterError> {
        let msgs = push::encode_split(&package, uids, self.inner.store.max_payload())?;
        let n = msgs.len();
        let subject = push_subject(frontend);
        for m in msgs {
            self.inner.store.publish(subject.clone(), m).await?;
        }
        Ok(n)
    }

    pub(crate) async fn broadcast(
        &self,
        frontend_type: &str,
        package: Bytes,
    ) -> Result<(), ClusterError> {
        if frontend_type.is_empty() {
            return Err(ClusterError::Invalid {
                what: "frontend type",
                value: String::new(),
            });
        }
        let m = push::encode_all(&package, self.inner.store.max_payload())?;
        self.inner
            .store
            .publish(broadcast_subject(frontend_type), m)
            .await
    }

    pub(crate) async fn subscribe_pushes(
        &self,
        frontend: &str,
        frontend_type: &str,
    ) -> Result<PushStream, ClusterError> {
        let own = self.inner.store.subscribe(push_subject(frontend)).await?;
        let all = self
            .inner
            .store
            .subscribe(broadcast_subject(frontend_type))
            .await?;
        Ok(PushStream::new(
            futures_util::stream::select(own, all).boxed(),
            frontend.to_owned(),
            self.inner.bad_pushes.clone(),
        ))
    }

    pub(crate) fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    pub(crate) fn placements_reloaded(&self) -> watch::Receiver<u64> {
        self.inner.placements_reloaded.subscribe()
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        let mut s = self.inner.store.stats();
        s.bad_pushes = self.inner.bad_pushes.load(Ordering::Relaxed);
        s.bad_entries = self.inner.bad_entries.load(Ordering::Relaxed);
        s
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.inner.store.max_payload()
    }
}

fn to_json<T: Serialize>(v: &T) -> Bytes {
    // Serialising our own plain structs cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Re-writes one record every TTL/3 until aborted; a failed write (given at most one period)
/// is tried again soon.
///
/// Each write is a compare-and-set on the revision this refresher wrote last, so that a stale
/// writer never overwrites a newer run's record (a refresher replaced by a new `register`, or
/// a process cut off while its id was started elsewhere). On a conflict it reads the record:
/// its own (a write whose answer was lost) → it carries on from there; gone (expired after a
/// long outage, deleted) → it writes it again; another run's → it stops, logged.
async fn run_refresh<S: Store>(
    inner: Arc<Inner<S>>,
    key: String,
    record: Arc<Mutex<ServerRecord>>,
    mut revision: u64,
) {
    let period = inner.ttl / 3;
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let degraded = match &*inner.health.borrow() {
            Health::Ok => None,
            Health::Degraded(reason) => Some(reason.clone()),
        };
        let (value, id, start, pid) = {
            let mut r = lock(&record);
            r.degraded = degraded;
            (to_json(&*r), r.id.clone(), r.start_time, r.pid)
        };
        let attempt = async {
            match inner
                .store
                .update(Bucket::Servers, &key, value.clone(), revision)
                .await?
            {
                Cas::Done(rev) => Ok(Some(rev)),
                Cas::Conflict => match inner.store.get(Bucket::Servers, &key).await? {
                    None => match inner.store.create(Bucket::Servers, &key, value).await? {
                        Cas::Done(rev) => Ok(Some(rev)),
                        Cas::Conflict => Ok(Some(revision)), // raced; the next round sorts it
                    },
                    Some(e) => {
                        let theirs = serde_json::from_slice::<ServerRecord>(&e.value).ok();
                        if theirs.is_some_and(|r| r.start_time == start && r.pid == pid) {
                            Ok(Some(e.revision))
                        } else {
                            Ok(None)
                        }
                    }
                },
            }
        };
        let r = tokio::time::timeout(period, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(ClusterError::Unavailable(format!(
                    "no answer within {period:?}"
                )))
            });
        match r {
            Ok(Some(rev)) => {
                revision = rev;
                next = started + period;
                if inner.refresh_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(backend = %inner.name, server = %id, "record refreshed again");
                }
            }
            Ok(None) => {
                tracing::warn!(backend = %inner.name, server = %id, "another run of this server holds its record now: no more refreshes from this one");
                inner.refresh_failing.store(false, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                next = Instant::now() + REFRESH_RETRY;
                if !inner.refresh_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(backend = %inner.name, server = %id, "cannot refresh the record: {e}");
                }
            }
        }
    }
}

/// A progress event at `now` (see [`Liveness`]): extends or restarts the run of progress, then
/// judges the records not refreshed for the TTL within it.
fn progress<S: Store>(inner: &Inner<S>, now: Instant) {
    let period = inner.ttl / 3;
    let lost: Vec<String> = {
        let mut l = lock(&inner.liveness);
        if now.saturating_duration_since(l.last_progress) > 2 * period {
            l.progress_since = now;
        }
        l.last_progress = now;
        let since = l.progress_since;
        let lost: Vec<(String, u64)> = l
            .seen
            .iter()
            .filter(|(_, (t, _))| now.saturating_duration_since((*t).max(since)) > inner.ttl)
            .map(|(id, (_, rev))| (id.clone(), *rev))
            .collect();
        for (id, rev) in &lost {
            l.seen.remove(id);
            l.beats.remove(id);
            l.judged.insert(
                id.clone(),
                Judged {
                    revision: *rev,
                    run: None,
                    revivable: None,
                },
            );
        }
        lost.into_iter().map(|(id, _)| id).collect()
    };
    for id in lost {
        let old = write(&inner.servers).remove(&id);
        if let Some(old) = old {
            if let Some(j) = lock(&inner.liveness).judged.get_mut(&id) {
                j.run = Some((old.start_time, old.pid));
            }
            tracing::warn!(backend = %inner.name, server = %id, host = %old.host, port = old.port,
                "server lost: neither its record nor its beat came for {:?}", inner.ttl);
            let _ = inner.events.send(ServerEvent::Removed(old));
        }
    }
}

/// Keeps one bucket's cache. Every (re)start of the watch reads the bucket's whole current
/// state; once it is delivered, cached entries it did not contain are dropped (removals missed
/// while the watch was down), so no delete marker has to outlive an outage.
async fn run_watch<S: Store>(inner: Arc<Inner<S>>, b: Bucket) {
    let i = watch_index(b);
    loop {
        match inner.store.watch(b, None).await {
            Ok(mut w) => {
                inner.watch_ok[i].store(true, Ordering::Relaxed);
                let mut seen: Option<HashSet<String>> = Some(HashSet::new());
                loop {
                    let item = tokio::select! {
                        item = w.next() => item,
                        () = inner.restart[i].notified() => {
                            tracing::warn!(backend = %inner.name, bucket = b.suffix(), "watch stalled (this handle's heartbeat did not come back), starting it again");
                            break;
                        }
                    };
                    match item {
                        Some(Ok(WatchItem::Entry(e))) => {
                            if let Some(seen) = &mut seen
                                && !e.removed
                            {
                                seen.insert(e.key.clone());
                            }
                            apply(&inner, b, e);
                        }
                        Some(Ok(WatchItem::Current)) => {
                            if let Some(seen) = seen.take() {
                                reconcile(&inner, b, &seen);
                                if b == Bucket::Placements {
                                    inner.placements_reloaded.send_modify(|n| *n += 1);
                                }
                            }
                            inner.ready[i].send_replace(true);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(backend = %inner.name, bucket = b.suffix(), "watch failed, starting it again: {e}");
                            break;
                        }
                        None => {
                            tracing::warn!(backend = %inner.name, bucket = b.suffix(), "watch ended, starting it again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(backend = %inner.name, bucket = b.suffix(), "cannot watch: {e}");
            }
        }
        inner.watch_ok[i].store(false, Ordering::Relaxed);
        tokio::time::sleep(WATCH_RETRY).await;
        // The new watch gets its time before it counts as stalled.
        *lock(&inner.last_beat[i]) = Instant::now();
    }
}

/// Drops the cached entries of `b` whose store keys are not in `present`.
fn reconcile<S: Store>(inner: &Inner<S>, b: Bucket, present: &HashSet<String>) {
    match b {
        Bucket::Servers => {
            let gone: Vec<ServerRecord> = {
                let mut servers = write(&inner.servers);
                let ids: Vec<String> = servers
                    .keys()
                    .filter(|id| server_key(id).is_ok_and(|k| !present.contains(&k)))
                    .cloned()
                    .collect();
                ids.iter().filter_map(|id| servers.remove(id)).collect()
            };
            {
                let mut l = lock(&inner.liveness);
                for r in &gone {
                    l.seen.remove(&r.id);
                }
            }
            for r in gone {
                tracing::info!(backend = %inner.name, server = %r.id, "server gone from the registry while the watch was down");
                let _ = inner.events.send(ServerEvent::Removed(r));
            }
        }
        Bucket::Placements => {
            write(&inner.placements)
                .retain(|(t, k), _| placement_key(t, k).is_ok_and(|pk| present.contains(&pk)));
        }
        Bucket::Uids => {}
    }
}

fn apply<S: Store>(inner: &Inner<S>, b: Bucket, e: KvEntry) {
    if e.key.starts_with('h') {
        // A heartbeat: ours shows the watch current (and, in the registry, progress); others'
        // are nothing to us.
        if e.key == inner.heartbeat_key && !e.removed {
            *lock(&inner.last_beat[watch_index(b)]) = Instant::now();
            if b == Bucket::Servers {
                progress(inner, Instant::now());
            }
        }
        return;
    }
    match b {
        Bucket::Servers => apply_server(inner, e),
        Bucket::Placements => apply_placement(inner, e),
        Bucket::Uids => {}
    }
}

fn apply_server<S: Store>(inner: &Inner<S>, e: KvEntry) {
    let id = e
        .key
        .strip_prefix('s')
        .and_then(|k| B64.decode(k).ok())
        .and_then(|k| String::from_utf8(k).ok());
    let Some(id) = id else {
        inner.bad_entries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %inner.name, key = %e.key, "servers bucket: a key that is no server id, skipped");
        return;
    };
    if e.removed {
        {
            let mut l = lock(&inner.liveness);
            l.seen.remove(&id);
            l.beats.remove(&id);
            l.judged.remove(&id);
        }
        let old = write(&inner.servers).remove(&id);
        if let Some(old) = old {
            tracing::info!(backend = %inner.name, server = %id, "server removed from the registry");
            let _ = inner.events.send(ServerEvent::Removed(old));
        }
        return;
    }
    let record: ServerRecord = match serde_json::from_slice(&e.value) {
        Ok(r) => r,
        Err(err) => {
            inner.bad_entries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backend = %inner.name, server = %id, "servers bucket: unreadable record, skipped: {err}");
            return;
        }
    };
    if record.id != id {
        inner.bad_entries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %inner.name, server = %id, "servers bucket: record of `{}` under this id, skipped", record.id);
        return;
    }
    let now = Instant::now();
    {
        let mut l = lock(&inner.liveness);
        if let Some(j) = l.judged.get_mut(&id) {
            if e.revision <= j.revision {
                // The refresh it was judged lost on, delivered again (a watch restarted).
                return;
            }
            if j.run == Some((record.start_time, record.pid)) {
                // The judged run written again: it comes back only when it beats again, so
                // that a late write of a dead process does not list it.
                j.revivable = Some((record, e.revision));
                return;
            }
            // Another run of this id (a restart): a new server.
        }
        l.judged.remove(&id);
        if l.seen.get(&id).is_some_and(|&(_, rev)| rev == e.revision) {
            // Delivered again, not refreshed: no news.
            return;
        }
        l.seen.insert(id.clone(), (now, e.revision));
    }
    let old = write(&inner.servers).insert(id.clone(), record.clone());
    match old {
        Some(old) if old.start_time == record.start_time && old.pid == record.pid => {}
        Some(old) => {
            tracing::info!(backend = %inner.name, server = %id, "server started again");
            let _ = inner.events.send(ServerEvent::Removed(old));
            let _ = inner.events.send(ServerEvent::Added(record));
        }
        None => {
            tracing::info!(backend = %inner.name, server = %id, host = %record.host, port = record.port, "server added to the registry");
            let _ = inner.events.send(ServerEvent::Added(record));
        }
    }
}

fn apply_placement<S: Store>(inner: &Inner<S>, e: KvEntry) {
    let Some(k) = parse_placement_key(&e.key) else {
        inner.bad_entries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %inner.name, key = %e.key, "placements bucket: unreadable key, skipped");
        return;
    };
    if e.removed {
        write(&inner.placements).remove(&k);
        return;
    }
    match serde_json::from_slice::<PlacementValue>(&e.value) {
        Ok(v) => {
            write(&inner.placements).insert(k, v.server);
        }
        Err(err) => {
            inner.bad_entries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backend = %inner.name, key = %e.key, "placements bucket: unreadable value, skipped: {err}");
        }
    }
}

/// Sends this handle's [`Beat`] every refresh period: its heartbeat key and the runs whose
/// refreshers still run. A failed send is logged once until one succeeds again.
async fn run_beats<S: Store>(inner: Arc<Inner<S>>) {
    let period = inner.ttl / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let servers = lock(&inner.registered)
            .values()
            .filter(|r| !r.task.is_finished())
            .map(|r| {
                let r = lock(&r.record);
                (r.id.clone(), r.start_time, r.pid)
            })
            .collect();
        let beat = to_json(&Beat {
            handle: inner.heartbeat_key.clone(),
            servers,
        });
        match tokio::time::timeout(period, inner.store.beat(beat)).await {
            Ok(Ok(())) if failing => {
                failing = false;
                tracing::info!(backend = %inner.name, "liveness beats sent again");
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(backend = %inner.name, "cannot send the liveness beat: {e}");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!(backend = %inner.name, "liveness beat not sent within {period:?}");
            }
            _ => {}
        }
    }
}

/// Reads every handle's beats (see [`Liveness`]); the subscription is made again if it ends.
async fn run_beat_watch<S: Store>(inner: Arc<Inner<S>>) {
    loop {
        match inner.store.beats().await {
            Ok(mut beats) => {
                while let Some(b) = beats.next().await {
                    apply_beat(&inner, &b);
                }
                tracing::warn!(backend = %inner.name, "liveness beat subscription ended, subscribing again");
            }
            Err(e) => {
                tracing::warn!(backend = %inner.name, "cannot subscribe to liveness beats: {e}");
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// One beat: a refresh of the runs it names that this handle holds as live (a run it does not
/// know yet, or judged lost, waits for its record), and progress if it is this handle's own.
fn apply_beat<S: Store>(inner: &Inner<S>, payload: &[u8]) {
    let beat: Beat = match serde_json::from_slice(payload) {
        Ok(b) => b,
        Err(e) => {
            inner.bad_entries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(backend = %inner.name, "unreadable liveness beat, skipped: {e}");
            return;
        }
    };
    let now = Instant::now();
    let known: Vec<&str> = {
        let servers = read(&inner.servers);
        beat.servers
            .iter()
            .filter(|(id, start, pid)| {
                servers
                    .get(id)
                    .is_some_and(|r| r.start_time == *start && r.pid == *pid)
            })
            .map(|(id, _, _)| id.as_str())
            .collect()
    };
    let revived: Vec<ServerRecord> = {
        let mut l = lock(&inner.liveness);
        for &id in &known {
            if let Some((at, _)) = l.seen.get_mut(id) {
                *at = now;
            }
            l.beats.insert(id.to_owned(), now);
        }
        let mut revived = Vec::new();
        for (id, start, pid) in &beat.servers {
            let back = l
                .judged
                .get(id)
                .is_some_and(|j| j.run == Some((*start, *pid)) && j.revivable.is_some());
            if back
                && let Some(Judged {
                    revivable: Some((record, revision)),
                    ..
                }) = l.judged.remove(id)
            {
                l.seen.insert(id.clone(), (now, revision));
                revived.push(record);
            }
        }
        revived
    };
    for record in revived {
        tracing::info!(backend = %inner.name, server = %record.id, "server back: it beats again and its record was refreshed");
        write(&inner.servers).insert(record.id.clone(), record.clone());
        let _ = inner.events.send(ServerEvent::Added(record));
    }
    if beat.handle == inner.heartbeat_key && hears_most(inner, now) {
        progress(inner, now);
    }
}

/// Whether the beats of at least half the servers this handle lists came within the TTL
/// (see [`Liveness`]).
fn hears_most<S: Store>(inner: &Inner<S>, now: Instant) -> bool {
    let ids: Vec<String> = read(&inner.servers).keys().cloned().collect();
    let l = lock(&inner.liveness);
    let heard = ids
        .iter()
        .filter(|id| {
            l.beats
                .get(*id)
                .is_some_and(|t| now.saturating_duration_since(*t) <= inner.ttl)
        })
        .count();
    heard * 2 >= ids.len()
}

/// Recomputes the health every TTL/3 (and logs its changes).
async fn run_health<S: Store>(inner: Arc<Inner<S>>) {
    let period = (inner.ttl / 3).max(Duration::from_millis(200));
    // The first look after one period: the watches are being started meanwhile.
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connected = inner.store.probe().await;
        let beat = Bytes::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
        );
        let write = |b: Bucket| {
            tokio::time::timeout(
                period,
                inner.store.put(b, &inner.heartbeat_key, beat.clone()),
            )
        };
        let (wrote, wrote_p) = tokio::join!(write(Bucket::Servers), write(Bucket::Placements));
        // A watch whose heartbeat has not come back for three periods although the store takes
        // writes is stalled: start it again.
        let mut behind = false;
        for (i, ok) in [
            (0, matches!(wrote, Ok(Ok(_)))),
            (1, matches!(wrote_p, Ok(Ok(_)))),
        ] {
            let late =
                Instant::now().saturating_duration_since(*lock(&inner.last_beat[i])) > 3 * period;
            if late && ok {
                inner.restart[i].notify_one();
                *lock(&inner.last_beat[i]) = Instant::now();
            }
            behind |= late;
        }
        let h = match (connected, wrote) {
            (Err(reason), _) => Health::Degraded(reason),
            (Ok(()), Err(_)) => {
                Health::Degraded(format!("the registry takes no write within {period:?}"))
            }
            (Ok(()), Ok(Err(e))) => Health::Degraded(format!("the registry takes no write: {e}")),
            _ if inner.refresh_failing.load(Ordering::Relaxed) => {
                Health::Degraded("records cannot be refreshed".to_owned())
            }
            _ if !inner.watch_ok.iter().all(|w| w.load(Ordering::Relaxed)) => {
                Health::Degraded("a bucket watch is being started again".to_owned())
            }
            _ if behind => Health::Degraded("the registry watch is behind".to_owned()),
            _ => Health::Ok,
        };
        let changed = inner.health.send_if_modified(|cur| {
            if *cur == h {
                false
            } else {
                *cur = h.clone();
                true
            }
        });
        if changed {
            match &h {
                Health::Ok => {
                    tracing::info!(backend = %inner.name, "cluster backend healthy again")
                }
                Health::Degraded(r) => {
                    tracing::warn!(backend = %inner.name, "cluster backend degraded: {r}");
                }
            }
        }
    }
}

/// Implements [`super::ClusterBackend`] for a handle type that derefs to a `Core` field.
macro_rules! impl_backend {
    ($ty:ty, $field:ident) => {
        impl $crate::cluster::ClusterBackend for $ty {
            fn register(
                &self,
                record: $crate::cluster::ServerRecord,
            ) -> $crate::cluster::BoxFuture<'_, Result<(), $crate::cluster::ClusterError>> {
                Box::pin(self.$field.register(record))
            }
            fn set_connections(
                &self,
                server_id: &str,
                connections: u64,
            ) -> Result<(), $crate::cluster::ClusterError> {
                self.$field.set_connections(server_id, connections)
            }
            fn set_rss(
                &self,
                server_id: &str,
                rss_bytes: u64,
            ) -> Result<(), $crate::cluster::ClusterError> {
                self.$field.set_rss(server_id, rss_bytes)
            }
            fn deregister<'a>(
                &'a self,
                server_id: &'a str,
            ) -> $crate::cluster::BoxFuture<'a, Result<(), $crate::cluster::ClusterError>> {
                Box::pin(self.$field.deregister(server_id))
            }
            fn servers(&self) -> Vec<$crate::cluster::ServerRecord> {
                self.$field.servers()
            }
            fn watch(&self) -> $crate::cluster::ServerWatch {
                self.$field.watch()
            }
            fn claim_uid<'a>(
                &'a self,
                uid: &'a str,
                claim: $crate::cluster::UidClaim,
                policy: $crate::cluster::ClaimPolicy,
            ) -> $crate::cluster::BoxFuture<
                'a,
                Result<$crate::cluster::ClaimOutcome, $crate::cluster::ClusterError>,
            > {
                Box::pin(self.$field.claim_uid(uid, claim, policy))
            }
            fn release_uid<'a>(
                &'a self,
                uid: &'a str,
                claim: &'a $crate::cluster::UidClaim,
            ) -> $crate::cluster::BoxFuture<'a, Result<bool, $crate::cluster::ClusterError>> {
                Box::pin(self.$field.release_uid(uid, claim))
            }
            fn uid_owner<'a>(
                &'a self,
                uid: &'a str,
            ) -> $crate::cluster::BoxFuture<
                'a,
                Result<Option<$crate::cluster::UidClaim>, $crate::cluster::ClusterError>,
            > {
                Box::pin(self.$field.uid_owner(uid))
            }
            fn placement<'a>(
                &'a self,
                server_type: &'a str,
                key: &'a [u8],
            ) -> $crate::cluster::BoxFuture<'a, Result<Option<String>, $crate::cluster::ClusterError>>
            {
                Box::pin(self.$field.placement(server_type, key))
            }
            fn place<'a>(
                &'a self,
                server_type: &'a str,
                key: &'a [u8],
            ) -> $crate::cluster::BoxFuture<'a, Result<Option<String>, $crate::cluster::ClusterError>>
            {
                Box::pin(self.$field.place(server_type, key))
            }
            fn unplace<'a>(
                &'a self,
                server_type: &'a str,
                key: &'a [u8],
            ) -> $crate::cluster::BoxFuture<'a, Result<(), $crate::cluster::ClusterError>> {
                Box::pin(self.$field.unplace(server_type, key))
            }
            fn placements_of(&self, server_id: &str) -> Vec<(String, Vec<u8>)> {
                self.$field.placements_of(server_id)
            }
            fn reassign_lost<'a>(
                &'a self,
                lost: &'a str,
            ) -> $crate::cluster::BoxFuture<
                'a,
                Result<Vec<$crate::cluster::Moved>, $crate::cluster::ClusterError>,
            > {
                Box::pin(self.$field.reassign_lost(lost))
            }
            fn push<'a>(
                &'a self,
                frontend: &'a str,
                package: bytes::Bytes,
                uids: &'a [String],
            ) -> $crate::cluster::BoxFuture<'a, Result<usize, $crate::cluster::ClusterError>> {
                Box::pin(self.$field.push(frontend, package, uids))
            }
            fn broadcast<'a>(
                &'a self,
                frontend_type: &'a str,
                package: bytes::Bytes,
            ) -> $crate::cluster::BoxFuture<'a, Result<(), $crate::cluster::ClusterError>> {
                Box::pin(self.$field.broadcast(frontend_type, package))
            }
            fn subscribe_pushes<'a>(
                &'a self,
                frontend: &'a str,
                frontend_type: &'a str,
            ) -> $crate::cluster::BoxFuture<
                'a,
                Result<$crate::cluster::PushStream, $crate::cluster::ClusterError>,
            > {
                Box::pin(self.$field.subscribe_pushes(frontend, frontend_type))
            }
            fn health(&self) -> tokio::sync::watch::Receiver<$crate::cluster::Health> {
                self.$field.health()
            }
            fn placements_reloaded(&self) -> tokio::sync::watch::Receiver<u64> {
                self.$field.placements_reloaded()
            }
            fn stats(&self) -> $crate::cluster::ClusterStats {
                self.$field.stats()
            }
            fn max_payload(&self) -> usize {
                self.$field.max_payload()
            }
        }
    };
}
pub(crate) use impl_backend;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_placement_keys_round_trip() {
        let valid = |k: &str| {
            !k.is_empty()
                && !k.starts_with('.')
                && !k.ends_with('.')
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-/_=.".contains(&c))
        };
        for (t, k) in [
            ("chat", &b""[..]),
            ("a.b c*>", b"room 1.\xff"),
            ("x", b".."),
        ] {
            let pk = placement_key(t, k).unwrap();
            assert!(valid(&pk), "{pk}");
            assert_eq!(parse_placement_key(&pk), Some((t.to_owned(), k.to_vec())));
        }
        assert!(valid(&server_key("connector server.1 *").unwrap()));
        assert!(valid(&uid_key("ü ser").unwrap()));
        assert!(
            server_key("").is_err() && uid_key("").is_err() && placement_key("", b"k").is_err()
        );
        assert_eq!(parse_placement_key("tYQ.kzz!"), None);
        assert_eq!(parse_placement_key("nodot"), None);
    }
}
