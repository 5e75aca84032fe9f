//! The cluster backend: where an app's servers find each other, who holds a uid, where a routed
//! key lives, and how app-wide pushes reach every frontend (issue 15).
//!
//! [`ClusterBackend`] is what the master, the registry and the frontends need from "the
//! cluster"; two implementations share one set of rules (the logic lives once, in `core`, over
//! a small key-value + pub/sub store):
//!
//! - [`Embedded`] (from an [`EmbeddedCluster`]): in memory, for the single-machine mode: needs
//!   nothing installed. The master holds the [`EmbeddedCluster`]; each handle plays the part of
//!   one server's connection.
//! - [`NatsBackend`]: NATS JetStream KV (buckets `<app>-servers`, `<app>-uids`,
//!   `<app>-placements`) and core NATS subjects for pushes, for several hosts.
//!
//! # The rules
//! - **Registry.** [`ClusterBackend::register`] writes a [`ServerRecord`] and refreshes it every
//!   TTL/3 until [`ClusterBackend::deregister`] or until the handle is dropped (a crash). A
//!   record not refreshed for the TTL is lost, and every handle's [`ClusterBackend::watch`]
//!   sees it removed: a lost server is known as lost within **TTL + 2 s** (default TTL 3 s, so
//!   within 5 s). Each handle judges it from the refreshes and the beats it sees: every handle
//!   also sends a beat each TTL/3 on plain pub/sub (core NATS, not JetStream) naming the runs
//!   it refreshes. The TTL is counted only while this handle sees progress (its own heartbeat
//!   or beat coming back), so that a store that cannot deliver for a while loses nobody; and
//!   because beats do not need the store, a server that dies while JetStream cannot write (a
//!   leader election, 4-9 s after the node that led a bucket died) is still judged lost one
//!   TTL after its last beat. A judged run whose record is written again (a late write) is
//!   listed again only once it beats again. The store itself drops a record after 5 TTLs without
//!   refresh (NATS: the bucket's `max_age` with limit markers, which nats-server ≥ 2.11 turns
//!   into a delete marker that watchers receive). [`ClusterBackend::servers`] answers from the
//!   handle's cache, also while the cluster is degraded.
//! - **Uid claims.** [`ClusterBackend::claim_uid`] takes a uid with compare-and-set; a claim
//!   held by a live frontend is refused ([`ClaimPolicy::RefuseNew`]) or taken over
//!   ([`ClaimPolicy::KickOld`], which returns the old claim so that its session is kicked). A
//!   claim whose frontend's record is gone (expired, deregistered, or the same id started
//!   again) counts as free: nobody has to clean it up first.
//! - **Placements.** [`ClusterBackend::place`] gives the server of a routed key, placing a new
//!   key on the least loaded live server of its type (compare-and-set: two placers racing agree
//!   on one). A key on a live server never moves; a key on a lost server is placed again on a
//!   survivor, by the first `place` that meets it or by [`ClusterBackend::reassign_lost`]
//!   (which the master calls when the watch reports the loss). A lost server that comes back
//!   keeps nothing that moved meanwhile.
//! - **Pushes.** [`ClusterBackend::push`] sends the encoded package once per frontend with the
//!   uids it is for, split in as many messages as the store's max payload needs;
//!   [`ClusterBackend::broadcast`] is one message for every session of every frontend of a
//!   type (each frontend's channel service publishes its app-wide broadcasts so). A
//!   frontend reads both with [`ClusterBackend::subscribe_pushes`] (NATS: its own connection,
//!   apart from the control traffic; slow-consumer drops are counted in [`ClusterStats`]).
//! - **Health.** [`ClusterBackend::health`] is [`Health::Ok`] or [`Health::Degraded`] with the
//!   reason (NATS unreachable, JetStream without quorum, refreshes failing). A degraded backend
//!   keeps serving what its caches hold and recovers by itself; it never exits the process.
//!
//! # Using it (the master, the servers)
//! - Make one handle per process: [`NatsBackend::connect`] with the master.json `cluster`
//!   section ([`ClusterConfig::from_master_env`]), or [`EmbeddedCluster::connect`] in the
//!   single-machine master. Hold it as `Arc<dyn ClusterBackend>`.
//! - A server registers its own [`ServerRecord`] once it serves, updates
//!   [`ClusterBackend::set_connections`] as sessions come and go, deregisters when told to
//!   stop. Routing follows [`ClusterBackend::servers`] and [`ClusterBackend::watch`]; a
//!   [`ServerEvent::Removed`] is the moment calls to that server fail fast, and (on the master,
//!   or on every server: the compare-and-set makes it safe) the moment to call
//!   [`ClusterBackend::reassign_lost`] and tell frontends to re-join the moved keys.
//! - A frontend claims a uid on bind ([`ClusterBackend::claim_uid`] with the app's duplicate
//!   login policy; kick the returned `replaced` session through its frontend), releases it on
//!   unbind and close; `kick_uid` asks [`ClusterBackend::uid_owner`] where the session is.
//! - A frontend reads [`ClusterBackend::subscribe_pushes`] for its id and type and writes each
//!   [`Push`]'s package to the sessions of its uids (all sessions when `uids` is `None`).
//! - [`ClusterBackend::health`] goes to the admin `list` and the logs; nothing exits on it.
//!
//! Load on the store: every handle writes a heartbeat to two buckets and every registered
//! record is rewritten once per refresh period (TTL/3, 1 s by default); every handle also
//! publishes one beat per period, which every handle receives (n² small messages a period for
//! n handles, as for the records' refreshes through the watch).
//!
//! # Layout
//! - [`config`]: the `cluster` section of master.json ([`ClusterConfig`]).
//! - `push`: the wire format of a push message and its split under the max payload.
//! - `core`: the rules above over the store trait.
//! - [`embedded`], [`nats`]: the two stores and their handles.

pub mod admin;
pub mod config;
mod core;
pub mod embedded;
pub mod nats;
mod push;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use config::{ClusterConfig, ClusterConfigError, TlsFiles};
pub use embedded::{Embedded, EmbeddedCluster};
pub use nats::NatsBackend;
pub use push::{Push, PushStream};

/// A boxed future, so that [`ClusterBackend`] is object-safe (`Arc<dyn ClusterBackend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default record TTL: a lost server is known within TTL + 2 s = 5 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// Unread messages a push subscription holds before newer ones are dropped (and counted as
/// slow-consumer events).
pub const PUSH_SUBSCRIPTION_CAPACITY: usize = 16_384;

/// The shortest TTL accepted (nats-server's limit markers need at least 1 s).
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// One server as the registry holds it (pomelo's server info plus what liveness needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRecord {
    /// Its id, unique in the app (`connector-server-1`).
    pub id: String,
    /// Its type (`connector`, `chat`).
    pub server_type: String,
    /// The host its RPC port listens on, as other hosts reach it.
    pub host: String,
    /// Its RPC port.
    pub port: u16,
    /// Its client port (frontends), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    /// Whether it is a frontend (holds client sessions).
    #[serde(default)]
    pub frontend: bool,
    /// Its process id on its host.
    pub pid: u32,
    /// When it started, milliseconds since the Unix epoch: with the id, what tells one run of a
    /// server from the next (a uid claim belongs to one run).
    pub start_time: u64,
    /// Client connections it holds (refreshed with the record).
    #[serde(default)]
    pub connections: u64,
    /// Its resident set size in bytes (refreshed with the record; 0: not known, as in
    /// records of earlier versions).
    #[serde(default)]
    pub rss_bytes: u64,
    /// How many times its launcher restarted it (0: never, or not known).
    #[serde(default)]
    pub restarts: u32,
    /// Its Prometheus endpoint's port (`metricsPort`), if it serves one, on `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
    /// Why its cluster backend is degraded, as of its last refresh ([`Health::Degraded`]);
    /// `None`: it was healthy. Filled in by the refresher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// Whether `ip` is an address of this machine: loopback, or one a socket can be bound to
/// here (which hosts of servers.json a launcher runs; which NATS nodes a server tries first).
pub(crate) fn is_local_ip(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// A change of the registry, as [`ServerWatch::next`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A server appeared (or started again under the same id: then `Removed` of the old run
    /// comes first).
    Added(ServerRecord),
    /// A server's record is gone: deregistered, or expired (lost).
    Removed(ServerRecord),
    /// This watcher fell behind and missed this many events: re-read
    /// [`ClusterBackend::servers`].
    Lagged(u64),
}

/// The registry's changes, from the moment [`ClusterBackend::watch`] was called. Changes
/// already in [`ClusterBackend::servers`] at that time are not repeated.
#[derive(Debug)]
pub struct ServerWatch {
    rx: tokio::sync::broadcast::Receiver<ServerEvent>,
}

impl ServerWatch {
    /// The next change; `None` once the backend handle is gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        use tokio::sync::broadcast::error::RecvError;
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(RecvError::Lagged(n)) => Some(ServerEvent::Lagged(n)),
            Err(RecvError::Closed) => None,
        }
    }
}

/// Who holds a uid: one session on one run of one frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UidClaim {
    /// The frontend's server id.
    pub frontend: String,
    /// The frontend's [`ServerRecord::start_time`] (the claim dies with that run).
    pub frontend_start: u64,
    /// The session id on that frontend.
    pub session: u64,
}

/// What to do when a uid is claimed while a live session holds it (pomelo's duplicate login).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimPolicy {
    /// Take the claim over; the caller kicks the old session.
    #[default]
    KickOld,
    /// Refuse the new claim; the old session stays.
    RefuseNew,
}

/// The answer of [`ClusterBackend::claim_uid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claim is ours. `replaced`: the live claim it took over (KickOld), whose session the
    /// caller must kick; `None` when the uid was free, stale, or already ours.
    Claimed {
        /// The live claim taken over, if any.
        replaced: Option<UidClaim>,
    },
    /// RefuseNew and a live session holds the uid.
    Refused {
        /// The claim that stays.
        owner: UidClaim,
    },
}

/// One key placed again because its server was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The key's server type.
    pub server_type: String,
    /// The routed key.
    pub key: Vec<u8>,
    /// The lost server.
    pub from: String,
    /// The survivor that holds it now.
    pub to: String,
}

/// Whether the backend can do everything it should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything works.
    Ok,
    /// Something does not (the reason says what); cached reads are still served and the
    /// backend keeps trying.
    Degraded(String),
}

/// Counters of one backend handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Slow-consumer events: messages the client dropped because a subscription was not read
    /// fast enough.
    pub slow_consumers: u64,
    /// Push messages that could not be decoded (dropped, logged).
    pub bad_pushes: u64,
    /// Registry or placement entries that could not be decoded (skipped, logged).
    pub bad_entries: u64,
    /// Reconnections to the store after a lost connection.
    pub reconnects: u64,
}

/// What can go wrong in a backend call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The store cannot be reached or cannot do it now (no NATS server, no JetStream quorum,
    /// a timeout). Not fatal: the backend keeps trying; the same call may work later.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot work (an invalid app name, bad credentials file, ...). Fatal.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// An id, type or uid that the backend cannot hold (empty). The call fails; fix the input.
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// `server id`, `uid`, ...
        what: &'static str,
        /// The value refused.
        value: String,
    },
    /// Compare-and-set kept losing to other writers. Not fatal: retry later.
    #[error("{what} `{key}`: too much contention (compare-and-set lost {attempts} times)")]
    Contention {
        /// `uid`, `placement`.
        what: &'static str,
        /// The key fought over.
        key: String,
        /// How many tries.
        attempts: u32,
    },
    /// A push cannot fit the store's max payload even with a single uid (the package is too
    /// large for one message). The push is not sent.
    #[error(
        "push of {package} bytes (uid `{uid}`) does not fit the max payload of {max_payload} bytes"
    )]
    PushTooLarge {
        /// The encoded package's size.
        package: usize,
        /// The uid that did not fit (empty for a broadcast).
        uid: String,
        /// The store's max payload.
        max_payload: usize,
    },
    /// [`ClusterBackend::set_connections`] or similar on a server this handle does not
    /// register.
    #[error("server `{0}` is not registered through this handle")]
    NotRegistered(String),
}

/// What the master, the registry and the frontends need from the cluster; see the
/// [module docs](self) for the rules every implementation keeps.
///
/// Object-safe: hold it as `Arc<dyn ClusterBackend>`. Dropping the implementation stops its
/// refreshes without deregistering (as a crash would: the records expire).
pub trait ClusterBackend: Send + Sync + 'static {
    /// Writes `record` and keeps refreshing it every TTL/3 (with the latest
    /// [`Self::set_connections`] count) until [`Self::deregister`] or until this handle is
    /// dropped. Registering an id again replaces the record and its refresher.
    fn register(&self, record: ServerRecord) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Sets the connection count the next refreshes of `server_id` carry.
    ///
    /// # Errors
    /// [`ClusterError::NotRegistered`] when this handle does not register `server_id`.
    fn set_connections(&self, server_id: &str, connections: u64) -> Result<(), ClusterError>;

    /// Sets the resident set size the next refreshes of `server_id` carry.
    ///
    /// # Errors
    /// [`ClusterError::NotRegistered`] when this handle does not register `server_id`.
    fn set_rss(&self, server_id: &str, rss_bytes: u64) -> Result<(), ClusterError>;

    /// Stops refreshing `server_id` and deletes its record (every watcher sees it removed).
    fn deregister<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// The live servers as this handle's cache holds them (served while degraded too), sorted
    /// by id.
    fn servers(&self) -> Vec<ServerRecord>;

    /// The registry's changes from now on.
    fn watch(&self) -> ServerWatch;

    /// Claims `uid` for `claim` under `policy` (compare-and-set; see the module docs).
    fn claim_uid<'a>(
        &'a self,
        uid: &'a str,
        claim: UidClaim,
        policy: ClaimPolicy,
    ) -> BoxFuture<'a, Result<ClaimOutcome, ClusterError>>;

    /// Releases `uid` if `claim` still holds it (unbind, session closed). `false`: somebody
    /// else holds it now (or nobody), nothing was changed.
    fn release_uid<'a>(
        &'a self,
        uid: &'a str,
        claim: &'a UidClaim,
    ) -> BoxFuture<'a, Result<bool, ClusterError>>;

    /// The live claim on `uid` (a claim of a lost frontend is `None`): what `kick_uid` needs.
    fn uid_owner<'a>(
        &'a self,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UidClaim>, ClusterError>>;

    /// Where `key` of `server_type` is placed, if it is (cache first; lost servers included:
    /// no re-placement here).
    fn placement<'a>(
        &'a self,
        server_type: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<String>, ClusterError>>;

    /// Where `key` of `server_type` lives, placing it if new or if its server is lost. `None`:
    /// a new key and no live server of the type. A key of a lost server with no survivor stays
    /// where it is (calls to it fail until a server of the type is back).
    fn place<'a>(
        &'a self,
        server_type: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<String>, ClusterError>>;

    /// Forgets the placement of `key` (a room that no longer exists).
    fn unplace<'a>(
        &'a self,
        server_type: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// The keys placed on `server_id` as this handle's cache holds them: (server type, key),
    /// sorted.
    fn placements_of(&self, server_id: &str) -> Vec<(String, Vec<u8>)>;

    /// Places every key of `lost` again on survivors of its type, if `lost` is not live (a
    /// live server's keys never move: then nothing happens). Several callers at once agree
    /// (compare-and-set). Returns what this call moved.
    fn reassign_lost<'a>(
        &'a self,
        lost: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Moved>, ClusterError>>;

    /// Pushes `package` (encoded once) to the sessions of `uids` on `frontend`: one message,
    /// or several when the uid list does not fit the max payload. Returns the messages sent.
    fn push<'a>(
        &'a self,
        frontend: &'a str,
        package: Bytes,
        uids: &'a [String],
    ) -> BoxFuture<'a, Result<usize, ClusterError>>;

    /// Pushes `package` to every session of every frontend of `frontend_type` (pomelo's
    /// `channelService.broadcast(frontendType, ...)`): one message, whatever the number of
    /// frontends.
    ///
    /// # Errors
    /// [`ClusterError::PushTooLarge`] when the package does not fit the max payload (nothing is
    /// sent); [`ClusterError::Invalid`] for an empty type; [`ClusterError::Unavailable`].
    fn broadcast<'a>(
        &'a self,
        frontend_type: &'a str,
        package: Bytes,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// The pushes for `frontend` and the broadcasts to its type `frontend_type`, from now on:
    /// pushes in the order they were sent, broadcasts too, but a push and a broadcast in no
    /// particular order between them.
    fn subscribe_pushes<'a>(
        &'a self,
        frontend: &'a str,
        frontend_type: &'a str,
    ) -> BoxFuture<'a, Result<PushStream, ClusterError>>;

    /// The current health and its changes.
    fn health(&self) -> tokio::sync::watch::Receiver<Health>;

    /// How many times this handle has loaded the placements bucket's whole state (its watch
    /// started, or started again after an outage: each time its cache matches the bucket
    /// again). A frontend that was cut off compares its routing with the placements then.
    fn placements_reloaded(&self) -> tokio::sync::watch::Receiver<u64>;

    /// This handle's counters.
    fn stats(&self) -> ClusterStats;

    /// The largest message the store takes (pushes are split under it).
    fn max_payload(&self) -> usize;
}
