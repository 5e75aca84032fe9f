//! The framework's own (`sys`) remotes and their prost messages.
//!
//! - `master` (on the master): registration, the long-poll cluster watch, stats reports, the
//!   admin calls of the CLI and the cluster-wide uid registry.
//! - `server` (on every server): `stop`.
//! - `sessionRemote` (on frontends) and `msgRemote` (on backends) are the connector's
//!   ([`shaddock_connector::remote`], re-exported here): what a backend does to a client's
//!   session (bind, settings, push by id or uid with pre-encoded packages, kick) and a client
//!   request forwarded by a frontend.
//!
//! JSON values (settings, bodies, extra keys) travel as JSON text in `bytes`/`string` fields.

#![allow(missing_docs)]

use shaddock_rpc::remote;

pub use shaddock_connector::remote::{msg_remote, session_remote};

/// One server as the cluster knows it: its config plus the ports it actually bound.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerEntry {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub server_type: String,
    #[prost(string, tag = "3")]
    pub host: String,
    /// The RPC port actually bound.
    #[prost(uint32, tag = "4")]
    pub port: u32,
    /// The client port actually bound (0: not a frontend).
    #[prost(uint32, tag = "5")]
    pub client_port: u32,
    #[prost(bool, tag = "6")]
    pub frontend: bool,
    #[prost(uint32, tag = "7")]
    pub pid: u32,
    /// The config's extra keys, as a JSON object.
    #[prost(string, tag = "8")]
    pub extra_json: String,
}

/// The live servers, with a version that grows on every change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, repeated, tag = "2")]
    pub servers: Vec<ServerEntry>,
    /// Grows whenever placed keys move (their server was lost past the grace period, or came
    /// back as a new process): cached placements are dropped and frontends re-join their
    /// sessions (see `master.moves`).
    #[prost(uint64, tag = "3")]
    pub placement_generation: u64,
}

/// `master.place`: the server a key of a placed server type lives on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceArgs {
    #[prost(string, tag = "1")]
    pub server_type: String,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// Only look the key up: a key never placed is an error instead of being placed now.
    #[prost(bool, tag = "3")]
    pub lookup_only: bool,
}

/// `master.place` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceReply {
    #[prost(string, tag = "1")]
    pub server_id: String,
    /// The placement generation the answer belongs to.
    #[prost(uint64, tag = "2")]
    pub generation: u64,
}

/// `master.moves`: the keys moved after generation `since`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MovesArgs {
    #[prost(uint64, tag = "1")]
    pub since: u64,
}

/// One key placed again (on another server, or on its own server's new process).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Moved {
    #[prost(string, tag = "1")]
    pub server_type: String,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    #[prost(string, tag = "3")]
    pub server_id: String,
}

/// `master.moves` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MovesReply {
    /// The generation these moves bring the caller to.
    #[prost(uint64, tag = "1")]
    pub generation: u64,
    #[prost(message, repeated, tag = "2")]
    pub moves: Vec<Moved>,
    /// False when `since` is older than the moves the master keeps: the caller must treat
    /// every key as possibly moved.
    #[prost(bool, tag = "3")]
    pub complete: bool,
}

/// `master.reconcile`: every uid a frontend's sessions hold now (sent when it registers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimSet {
    #[prost(string, tag = "1")]
    pub frontend_id: String,
    #[prost(message, repeated, tag = "2")]
    pub claims: Vec<Claim>,
}

/// `master.watch`: wait for a version other than this one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchArgs {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(string, tag = "2")]
    pub server_id: String,
}

/// `master.report`: a server's periodic stats.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsReport {
    #[prost(string, tag = "1")]
    pub server_id: String,
    #[prost(uint64, tag = "2")]
    pub connections: u64,
}

/// One row of `list`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRow {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub server_type: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(uint64, tag = "4")]
    pub uptime_secs: u64,
    #[prost(uint64, tag = "5")]
    pub rss_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub connections: u64,
    #[prost(string, tag = "7")]
    pub host: String,
    #[prost(uint32, tag = "8")]
    pub port: u32,
    #[prost(uint32, tag = "9")]
    pub client_port: u32,
    /// `starting`, `running`, `restarting`, `stopped`, `exited` (ended on its own, restart
    /// off), `crash-loop` (crashed too often, not restarted again), `failed`.
    #[prost(string, tag = "10")]
    pub state: String,
    #[prost(uint32, tag = "11")]
    pub restarts: u32,
}

/// `master.list` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListReply {
    #[prost(uint32, tag = "1")]
    pub master_pid: u32,
    #[prost(message, repeated, tag = "2")]
    pub rows: Vec<ListRow>,
}

/// A `key=value` argument of `add`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `master.add`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddArgs {
    #[prost(message, repeated, tag = "1")]
    pub pairs: Vec<KeyValue>,
}

/// `master.add` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddReply {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `master.claim` / `master.release`: a uid bound on a frontend session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Claim {
    #[prost(string, tag = "1")]
    pub uid: String,
    #[prost(string, tag = "2")]
    pub frontend_id: String,
    #[prost(uint64, tag = "3")]
    pub session_id: u64,
}

/// `master.kickUid`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KickUid {
    #[prost(string, tag = "1")]
    pub uid: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// A count (kicked sessions, pushed sessions).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Count {
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

/// `server.stop`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StopArgs {
    #[prost(string, tag = "1")]
    pub reason: String,
}

remote! {
    /// The master's remote.
    pub mod master_remote: sys "master" {
        /// A server announces itself (with its actual ports); returns the cluster.
        fn register(ServerEntry) -> Snapshot;
        /// Long poll: returns when the cluster differs from `version` (or after a while).
        fn watch(WatchArgs) -> Snapshot;
        /// Periodic stats.
        fn report(StatsReport) -> ();
        /// Every server with pid, uptime, RSS and connections.
        fn list(()) -> ListReply;
        /// Graceful stop of the whole cluster.
        fn stop(()) -> ();
        /// SIGKILL every server, then the master exits.
        fn kill(()) -> ();
        /// Starts a server at runtime.
        fn add(AddArgs) -> AddReply;
        /// A frontend binds a uid (duplicate-login policy applies).
        fn claim(Claim) -> ();
        /// A frontend session bound to a uid closed.
        fn release(Claim) -> ();
        /// Kicks a uid wherever it is connected.
        fn kick_uid(KickUid) -> Count;
        /// The server a key of a placed type lives on (placed now if it is new).
        fn place(PlaceArgs) -> PlaceReply;
        /// The keys placed again since a generation.
        fn moves(MovesArgs) -> MovesReply;
        /// A frontend's uid claims as its sessions hold them: the master's claims of that
        /// frontend become exactly these.
        fn reconcile(ClaimSet) -> ();
    }
}

remote! {
    /// Every server's remote.
    pub mod server_remote: sys "server" {
        /// Graceful stop.
        fn stop(StopArgs) -> ();
    }
}
