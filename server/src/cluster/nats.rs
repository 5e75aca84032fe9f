//! The cluster on NATS JetStream (async-nats 0.51; nats-server 2.11 or later).
//!
//! - **Buckets** (created or updated at connect, `replicas` copies each, file storage, one
//!   value per key): `<app>-servers`, `<app>-uids`, `<app>-placements`. A lost server is
//!   judged by every handle from the refreshes it sees (TTL counted only while the registry
//!   makes progress, so that a JetStream leader election, 4-9 s, loses nobody; see
//!   `core::Liveness`). The servers bucket also has `max_age` = 5 × TTL with limit markers, the
//!   backstop that removes records nobody refreshes: an expired record becomes a delete marker
//!   every watcher receives (nats-server ≥ 2.11: `allow_msg_ttl` +
//!   `subject_delete_marker_ttl`; without them an expiry is silent).
//! - **Subjects**: `shaddock.<app>.push.<frontend, base64url>` and
//!   `shaddock.<app>.broadcast.<frontend type, base64url>`,
//!   core NATS (at most once: a push to a frontend that is gone is gone too).
//! - **Two connections**: one for control (KV, watches), one for pushes, so that a burst of
//!   pushes never delays a refresh or a claim, and a slow push reader never makes the server
//!   drop control traffic.
//! - **Liveness of NATS itself**: the client pings every second (a dead NATS node noticed in
//!   about 2-3 s, then the client reconnects to another URL of the list); JetStream requests
//!   time out after 2 s. The first connect is retried (`connectTimeoutMs`, default 30 s)
//!   before [`NatsBackend::connect`] fails. A server entering lame-duck mode makes both
//!   connections move to another node at once. Slow-consumer events are counted
//!   ([`super::ClusterStats::slow_consumers`]) and logged.
//! - **No quorum** (JetStream cannot write): [`super::Health::Degraded`], refreshes and claims
//!   fail with [`super::ClusterError::Unavailable`], cached reads go on; everything resumes
//!   when the quorum is back (records refresh again; a record that expired meanwhile comes
//!   back with the next refresh, seen by watchers as removed then added).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::config::{ClusterConfig, valid_app};
use super::core::{
    BACKSTOP_TTLS, BEAT_SUBJECT, Bucket, Cas, Core, KvEntry, Store, Watch, WatchItem, impl_backend,
};
use super::{BoxFuture, ClusterError, ClusterStats, MIN_TTL, PUSH_SUBSCRIPTION_CAPACITY};

/// How long the delete markers of expired records stay in the registry bucket.
const MARKER_TTL: Duration = Duration::from_secs(60);
/// Client ping interval. async-nats drops a connection when a third ping goes out with two
/// still unanswered, so a dead link is noticed 2-3 intervals after it died: 0.8-1.2 s here.
/// With 1 s it took up to 3 s, and with the last refresh up to a period (1 s) before the cut,
/// a server on the cut node went unrefreshed for longer than the 3 s TTL before its backend
/// was on another node: its watchers judged a live server lost (seen in
/// `nats_cut_link_is_noticed_by_pings`).
const PING_INTERVAL: Duration = Duration::from_millis(400);
/// Timeout of one JetStream request.
const JS_TIMEOUT: Duration = Duration::from_secs(2);
/// Used until the push connection has told its server's max payload.
const FALLBACK_MAX_PAYLOAD: usize = 1 << 20;

#[derive(Default)]
struct Counters {
    slow_consumers: AtomicU64,
    reconnects: AtomicU64,
}

/// A backend handle on NATS; implements [`super::ClusterBackend`]. Dropping it stops its
/// refreshers and watches and closes its connections.
pub struct NatsBackend {
    core: Core<NatsStore>,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("app", &self.core.store().app)
            .finish_non_exhaustive()
    }
}

impl_backend!(NatsBackend, core);

impl NatsBackend {
    /// Connects (retrying the first connect for `config.connect_timeout`), creates or updates
    /// the app's buckets, and loads the caches. `name` names the connections (the server id,
    /// or `master`) in NATS and in logs.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for a config that cannot work (app name, TTL, credentials
    /// file); [`ClusterError::Unavailable`] when NATS or JetStream does not answer in time.
    pub async fn connect(config: &ClusterConfig, name: &str) -> Result<Self, ClusterError> {
        if !valid_app(&config.app) {
            return Err(ClusterError::Config(format!(
                "app name {:?}: only letters, digits, `-` and `_`",
                config.app
            )));
        }
        if config.ttl < MIN_TTL {
            return Err(ClusterError::Config(format!(
                "ttl {:?} is under the minimum of {MIN_TTL:?}",
                config.ttl
            )));
        }
        let counters = Arc::new(Counters::default());
        let control = connect_one(config, &format!("{name}/control"), &counters).await?;
        let pushes = connect_one(config, &format!("{name}/pushes"), &counters).await?;
        let mut js = jetstream::new(control.clone());
        js.set_timeout(JS_TIMEOUT);
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let buckets = loop {
            match create_buckets(&js, config).await {
                Ok(b) => break b,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(app = %config.app, backend = name, urls = ?config.nats, "cluster buckets not ready, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(ClusterError::Unavailable(format!(
                        "NATS {:?}: buckets of app `{}` not ready within {:?}: {e}",
                        config.nats, config.app, config.connect_timeout
                    )));
                }
            }
        };
        while pushes.connection_state() != async_nats::connection::State::Connected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = NatsStore {
            app: config.app.clone(),
            prefix: format!("shaddock.{}.", config.app),
            control,
            pushes,
            buckets,
            counters,
        };
        let core = Core::start(
            store,
            format!("{}@{name}", config.app),
            config.ttl,
            Duration::from_secs(5),
        )
        .await;
        tracing::info!(app = %config.app, backend = name, urls = ?config.nats, "cluster backend on NATS ready");
        Ok(Self { core })
    }

    /// The live servers, each with whether this handle has seen its record refreshed since it
    /// loaded it: waits until every record is refreshed or one TTL has passed. A fresh handle
    /// (a `list` tool) cannot tell a live record from one whose server died a moment ago
    /// until the TTL has passed without a refresh (`false`: not refreshed within the TTL, the
    /// server is most likely lost; its record expires within the bound).
    pub async fn servers_refreshed(&self) -> Vec<(super::ServerRecord, bool)> {
        use super::ClusterBackend as _;
        let since = tokio::time::Instant::now();
        let deadline = since + self.core.ttl();
        let fresh = |id: &str| self.core.last_seen(id).is_some_and(|at| at > since);
        loop {
            let all = self.servers();
            let done = all.iter().all(|r| fresh(&r.id));
            if done || tokio::time::Instant::now() >= deadline {
                return all
                    .into_iter()
                    .map(|r| {
                        let f = fresh(&r.id);
                        (r, f)
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `server_name` of the NATS node the control connection is on now.
    pub fn connected_server(&self) -> Option<String> {
        let c = &self.core.store().control;
        (c.connection_state() == async_nats::connection::State::Connected)
            .then(|| c.server_info().server_name)
    }
}

/// One connection with the config's credentials and TLS, pinging every second, reconnecting
/// forever, with events counted and logged.
async fn connect_one(
    config: &ClusterConfig,
    name: &str,
    counters: &Arc<Counters>,
) -> Result<Client, ClusterError> {
    let mut opts = ConnectOptions::new();
    if let Some(path) = &config.creds_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            ClusterError::Config(format!("credentials file {}: {e}", path.display()))
        })?;
    }
    if let Some((u, p)) = &config.user_password {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &config.token {
        opts = opts.token(t.clone());
    }
    if let Some(tls) = &config.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let me: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let cb_me = me.clone();
    let cb_counters = counters.clone();
    let cb_name = format!("{}@{name}", config.app);
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    opts = opts
        .name(format!("shaddock-{}-{name}", config.app))
        .ping_interval(PING_INTERVAL)
        .subscription_capacity(PUSH_SUBSCRIPTION_CAPACITY)
        // A node on a host that is cut off does not refuse: the attempt waits for this. After
        // a cut that took 2 s of a 3 s TTL, and the servers it kept from NATS were judged lost.
        .connection_timeout(CONNECT_TIMEOUT)
        .retain_servers_order()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * attempt as u64).min(2000))
        })
        .event_callback(move |event| {
            let me = cb_me.clone();
            let counters = cb_counters.clone();
            let name = cb_name.clone();
            let first = first.clone();
            async move {
                match event {
                    Event::Connected => {
                        if first.swap(false, Ordering::Relaxed) {
                            tracing::info!(connection = %name, "connected to NATS");
                        } else {
                            counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(connection = %name, "reconnected to NATS");
                        }
                    }
                    Event::Disconnected => {
                        tracing::warn!(connection = %name, "disconnected from NATS, reconnecting");
                    }
                    Event::LameDuckMode => {
                        tracing::warn!(connection = %name, "NATS node in lame-duck mode: moving to another node");
                        if let Some(c) = me.get().cloned() {
                            tokio::spawn(async move {
                                if let Err(e) = c.force_reconnect().await {
                                    tracing::warn!(connection = %name, "reconnect after lame-duck mode failed: {e}");
                                }
                            });
                        }
                    }
                    Event::SlowConsumer(sid) => {
                        // One event per dropped message: log the first and then at powers of two.
                        let n = counters.slow_consumers.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(connection = %name, subscription = sid, total = n, "slow consumer: NATS messages dropped");
                        }
                    }
                    Event::ServerError(e) => {
                        tracing::warn!(connection = %name, "NATS server error: {e}");
                    }
                    Event::ClientError(e) => {
                        tracing::warn!(connection = %name, "NATS client error: {e}");
                    }
                    Event::Draining | Event::Closed => {
                        tracing::debug!(connection = %name, "NATS connection {event}");
                    }
                }
            }
        });
    let client = opts
        .connect(ordered_urls(&config.nats).as_slice())
        .await
        .map_err(|e| ClusterError::Unavailable(format!("NATS {:?}: {e}", config.nats)))?;
    let _ = me.set(client.clone());
    Ok(client)
}

/// How long one attempt to reach a NATS node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(750);

/// The NATS URLs in the order this process tries them (the client keeps the order): the
/// nodes on this machine first, then the others, each group rotated by the process id so
/// that the processes of a host spread over the nodes. A process on its own host's node is
/// not cut off from NATS when another host's link is: with a random order, a cut of one of
/// three hosts took the other hosts' servers on its node with it, and those servers, alive
/// and serving, were judged lost and their pushes refused (multihost, cut link).
fn ordered_urls(urls: &[String]) -> Vec<String> {
    let (mut local, mut other): (Vec<String>, Vec<String>) =
        urls.iter().cloned().partition(|u| url_is_local(u));
    let turn = std::process::id() as usize;
    for group in [&mut local, &mut other] {
        if !group.is_empty() {
            let n = turn % group.len();
            group.rotate_left(n);
        }
    }
    local.extend(other);
    local
}

/// Whether a `nats://` / `tls://` URL names an IP address of this machine (loopback, or one
/// a socket can be bound to here). Host names are not resolved: they count as remote.
fn url_is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
    };
    host.parse::<std::net::IpAddr>()
        .is_ok_and(super::is_local_ip)
}

struct Buckets {
    servers: kv::Store,
    uids: kv::Store,
    placements: kv::Store,
}

/// A key no record uses (keys are base64url; `_` never starts one): read once per bucket at
/// connect to check the bucket answers.
const READY_PROBE_KEY: &str = "_ready";

async fn create_buckets(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<Buckets, String> {
    let make = |b: Bucket| {
        let mut c = kv::Config {
            bucket: format!("{}-{}", config.app, b.suffix()),
            description: format!("shaddock app `{}`: {}", config.app, b.suffix()),
            history: 1,
            num_replicas: config.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        if b == Bucket::Servers {
            c.max_age = config.ttl * BACKSTOP_TTLS;
            c.limit_markers = Some(MARKER_TTL);
        }
        c
    };
    let mut out = Vec::new();
    for b in [Bucket::Servers, Bucket::Uids, Bucket::Placements] {
        let cfg = make(b);
        let name = cfg.bucket.clone();
        let store = js
            .create_or_update_key_value(cfg)
            .await
            .map_err(|e| format!("bucket {name}: {e}"))?;
        // A bucket just created (or whose stream is electing a leader) can answer its first
        // reads with "no responders"; it is ready once a read of a key that never exists
        // gets an answer. Without this the first place/claim after start could fail.
        store
            .entry(READY_PROBE_KEY)
            .await
            .map_err(|e| format!("bucket {name} not answering reads yet: {e}"))?;
        out.push(store);
    }
    let placements = out.pop().ok_or("no bucket")?;
    let uids = out.pop().ok_or("no bucket")?;
    let servers = out.pop().ok_or("no bucket")?;
    Ok(Buckets {
        servers,
        uids,
        placements,
    })
}

struct NatsStore {
    app: String,
    /// Subject prefix `shaddock.<app>.`.
    prefix: String,
    control: Client,
    pushes: Client,
    buckets: Buckets,
    counters: Arc<Counters>,
}

impl NatsStore {
    fn kv(&self, b: Bucket) -> &kv::Store {
        match b {
            Bucket::Servers => &self.buckets.servers,
            Bucket::Uids => &self.buckets.uids,
            Bucket::Placements => &self.buckets.placements,
        }
    }

    fn unavailable(
        &self,
        b: Bucket,
        op: &str,
        key: &str,
        e: impl std::fmt::Display,
    ) -> ClusterError {
        ClusterError::Unavailable(format!("{}-{}: {op} `{key}`: {e}", self.app, b.suffix()))
    }
}

/// Whether a write failed because the key's revision was not the expected one (a lost
/// compare-and-set). async-nats names only JetStream's error 10071 so; a create or update of a
/// key whose last revision is 0 or a marker fails with 10164 ("wrong last sequence", constant
/// form), which it reports as `Other`: look for both along the error's sources.
fn lost_cas(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(js) = err.downcast_ref::<jetstream::Error>() {
            let code = js.error_code();
            if code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn removed(op: kv::Operation) -> bool {
    !matches!(op, kv::Operation::Put)
}

/// Whether a bucket's stream message is a delete, a purge or an expiry marker rather than a
/// value (the headers async-nats reads for `Entry::operation`).
fn raw_removed(headers: &async_nats::HeaderMap) -> bool {
    headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() != "PUT")
        || headers
            .get(async_nats::header::NATS_MARKER_REASON)
            .is_some()
}

impl Store for NatsStore {
    fn get(&self, b: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, ClusterError>> {
        let key = key.to_owned();
        Box::pin(async move {
            // From the stream's leader (JetStream's STREAM.MSG.GET), not `Store::entry`: KV
            // buckets allow direct gets, which any replica answers, and a follower can answer
            // with a value older than one this server has already read or seen in its watch.
            // nats_backend caught it: a server record read as the new run, then as the old one
            // again, so a uid claim of the old run was judged live and a login refused.
            let kv = self.kv(b);
            let subject = format!("{}{key}", kv.prefix);
            match kv.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) if !raw_removed(&m.headers) => Ok(Some(KvEntry {
                    key,
                    value: m.payload,
                    revision: m.sequence,
                    removed: false,
                })),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(self.unavailable(b, "get", &key, e)),
            }
        })
    }

    fn put(&self, b: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, ClusterError>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.kv(b)
                .put(&key, value)
                .await
                .map_err(|e| self.unavailable(b, "put", &key, e))
        })
    }

    fn create(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>> {
        let key = key.to_owned();
        Box::pin(async move {
            match self.kv(b).create(&key, value).await {
                Ok(rev) => Ok(Cas::Done(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || lost_cas(&e) => {
                    Ok(Cas::Conflict)
                }
                Err(e) => Err(self.unavailable(b, "create", &key, e)),
            }
        })
    }

    fn update(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>> {
        let key = key.to_owned();
        Box::pin(async move {
            match self.kv(b).update(&key, value, revision).await {
                Ok(rev) => Ok(Cas::Done(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || lost_cas(&e) => {
                    Ok(Cas::Conflict)
                }
                Err(e) => Err(self.unavailable(b, "update", &key, e)),
            }
        })
    }

    fn delete(
        &self,
        b: Bucket,
        key: &str,
        revision: Option<u64>,
    ) -> BoxFuture<'_, Result<Cas<()>, ClusterError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let r = match revision {
                Some(rev) => self.kv(b).delete_expect_revision(&key, Some(rev)).await,
                None => self.kv(b).delete(&key).await,
            };
            match r {
                Ok(()) => Ok(Cas::Done(())),
                Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision || lost_cas(&e) => {
                    Ok(Cas::Conflict)
                }
                Err(e) => Err(self.unavailable(b, "delete", &key, e)),
            }
        })
    }

    fn watch(&self, b: Bucket, from: Option<u64>) -> BoxFuture<'_, Result<Watch, ClusterError>> {
        Box::pin(async move {
            let kv = self.kv(b);
            // An empty bucket delivers nothing: then the snapshot is complete at once.
            let empty = match from {
                Some(_) => false,
                None => {
                    let mut kv = kv.clone();
                    let status = kv
                        .stream
                        .info()
                        .await
                        .map_err(|e| self.unavailable(b, "watch", ">", e))?;
                    status.state.messages == 0
                }
            };
            let w = match from {
                Some(rev) => kv.watch_all_from_revision(rev).await,
                // The last value of every key, then every change (`watch_all` gives only changes).
                None => kv.watch_with_history(">").await,
            }
            .map_err(|e| self.unavailable(b, "watch", ">", e))?;
            let bucket = format!("{}-{}", self.app, b.suffix());
            let head = futures_util::stream::iter(empty.then_some(Ok(WatchItem::Current)));
            let mut current = empty;
            let tail = w.flat_map(move |item| {
                let out: Vec<Result<WatchItem, ClusterError>> = match item {
                    Ok(e) => {
                        let last = e.delta == 0;
                        let mut v = vec![Ok(WatchItem::Entry(KvEntry {
                            key: e.key,
                            value: e.value,
                            revision: e.revision,
                            removed: removed(e.operation),
                        }))];
                        if last && !current {
                            current = true;
                            v.push(Ok(WatchItem::Current));
                        }
                        v
                    }
                    Err(e) => vec![Err(ClusterError::Unavailable(format!(
                        "{bucket}: watch: {e}"
                    )))],
                };
                futures_util::stream::iter(out)
            });
            Ok(head.chain(tail).boxed())
        })
    }

    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(publish_on(
            &self.pushes,
            format!("{}{subject}", self.prefix),
            payload,
        ))
    }

    fn subscribe(
        &self,
        subject: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>> {
        Box::pin(subscribe_on(
            &self.pushes,
            format!("{}{subject}", self.prefix),
        ))
    }

    fn beat(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(publish_on(
            &self.control,
            format!("{}{BEAT_SUBJECT}", self.prefix),
            payload,
        ))
    }

    fn beats(&self) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>> {
        Box::pin(subscribe_on(
            &self.control,
            format!("{}{BEAT_SUBJECT}", self.prefix),
        ))
    }

    fn max_payload(&self) -> usize {
        match self.pushes.max_payload() {
            0 => FALLBACK_MAX_PAYLOAD,
            n => n,
        }
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.control.connection_state() != async_nats::connection::State::Connected {
                return Err("not connected to NATS".to_owned());
            }
            Ok(())
        })
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats {
            slow_consumers: self.counters.slow_consumers.load(Ordering::Relaxed),
            reconnects: self.counters.reconnects.load(Ordering::Relaxed),
            ..ClusterStats::default()
        }
    }
}

/// One core NATS message on `subject` (the app's prefix included) through `client`.
async fn publish_on(client: &Client, subject: String, payload: Bytes) -> Result<(), ClusterError> {
    client
        .publish(subject.clone(), payload)
        .await
        .map_err(|e| ClusterError::Unavailable(format!("publish on {subject}: {e}")))
}

/// The payloads of `subject` (the app's prefix included) through `client`, from now on.
async fn subscribe_on(
    client: &Client,
    subject: String,
) -> Result<BoxStream<'static, Bytes>, ClusterError> {
    let sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Unavailable(format!("subscribe to {subject}: {e}")))?;
    Ok(sub.map(|m| m.payload).boxed())
}

/// A plain NATS connection with the config's credentials, TLS and pings, for the admin verbs
/// (request / reply on the app's admin subjects, [`super::admin`]).
pub(crate) async fn admin_connection(
    config: &ClusterConfig,
    name: &str,
) -> Result<Client, ClusterError> {
    connect_one(config, name, &Arc::new(Counters::default())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_s_nodes_are_tried_first() {
        assert!(url_is_local("nats://127.0.0.1:4222"));
        assert!(url_is_local("nats://user:secret@127.0.0.1:4222"));
        assert!(url_is_local("tls://[::1]:4222"));
        // TEST-NET-1: no machine has it; a name is not resolved.
        assert!(!url_is_local("nats://192.0.2.7:4222"));
        assert!(!url_is_local("nats://nats.example:4222"));
        let urls: Vec<String> = [
            "nats://192.0.2.7:4222",
            "nats://127.0.0.1:4222",
            "nats://192.0.2.8:4222",
        ]
        .map(String::from)
        .into();
        let ordered = ordered_urls(&urls);
        assert_eq!(ordered[0], "nats://127.0.0.1:4222");
        let mut rest = ordered[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["nats://192.0.2.7:4222", "nats://192.0.2.8:4222"]);
    }
}
