//! The framework's own (`sys`) remotes and every message they carry: the one definition both
//! sides use, frontends and backends alike.
//!
//! | remote | served by | for |
//! |---|---|---|
//! | [`msg_remote`] (`msgRemote`) | backends | a client request or notify forwarded by a frontend |
//! | [`session_remote`] (`sessionRemote`) | frontends | what a backend does to a client's session: bind, settings, push (pre-encoded packages), kick |
//! | [`master_remote`] (`master`) | the master | registration, the long-poll cluster watch, stats, admin calls, the cluster-wide uid registry, placements |
//! | [`server_remote`] (`server`) | every server | `stop` |
//!
//! Naming: `frontend_id` is the id of the frontend server holding a connection;
//! `session_id` (`session_ids`) a session's id on it. JSON values (settings, bodies, extra
//! keys) travel as JSON text in `bytes`/`string` fields.

// The master's messages' fields say what they are by their names.
#![allow(missing_docs)]

use bytes::Bytes;
use shaddock_rpc::remote;

/// A snapshot of a frontend session, sent with each forwarded message (pomelo's
/// `BackendSession` data).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionSnapshot {
    /// Session id (unique across the cluster).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The frontend server holding the connection.
    #[prost(string, tag = "2")]
    pub frontend_id: String,
    /// Bound uid; empty when unbound.
    #[prost(string, tag = "3")]
    pub uid: String,
    /// The settings as a JSON object text.
    #[prost(bytes = "bytes", tag = "4")]
    pub settings_json: Bytes,
}

/// A client request or notify forwarded to a backend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardMessage {
    /// The full route `serverType.handler.method`.
    #[prost(string, tag = "1")]
    pub route: String,
    /// The request id; 0 for a notify (the reply is then ignored).
    #[prost(uint32, tag = "2")]
    pub id: u32,
    /// The body as JSON text.
    #[prost(bytes = "bytes", tag = "3")]
    pub body_json: Bytes,
    /// The client's session.
    #[prost(message, optional, tag = "4")]
    pub session: Option<SessionSnapshot>,
    /// The body as the client sent it, when it is protobuf (the route is in clientProtos);
    /// empty for JSON bodies. `body_json` holds its schema-decoded JSON either way.
    #[prost(bytes = "bytes", tag = "5")]
    pub body_protobuf: Bytes,
}

/// A [`ForwardMessage`] by reference: the fields a frontend has at hand when it forwards,
/// encoded without first copying them into the owned message (its route, frontend id and
/// uid would be three `String`s per forwarded request).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardMessageRef<'a> {
    /// [`ForwardMessage::route`].
    pub route: &'a str,
    /// [`ForwardMessage::id`].
    pub id: u32,
    /// [`ForwardMessage::body_json`].
    pub body_json: &'a [u8],
    /// [`SessionSnapshot::id`].
    pub session_id: u64,
    /// [`SessionSnapshot::frontend_id`].
    pub frontend_id: &'a str,
    /// [`SessionSnapshot::uid`] (empty when unbound).
    pub uid: &'a str,
    /// [`SessionSnapshot::settings_json`].
    pub settings_json: &'a [u8],
    /// [`ForwardMessage::body_protobuf`].
    pub body_protobuf: &'a [u8],
}

impl ForwardMessageRef<'_> {
    /// The bytes prost encodes for the owned [`ForwardMessage`] with these fields and
    /// `session: Some(..)` (fields in tag order, default values left out, the snapshot
    /// always present), built in one buffer of the exact size.
    pub fn encode(&self) -> Bytes {
        use prost::encoding::{encoded_len_varint, key_len};
        // Tags 1..=5: every key is one byte, `tag << 3 | wire type`. prost's generic
        // `encode_key`/`encode_varint` cost ~50 instructions a call through `BufMut`.
        const VARINT: u8 = 0;
        const LEN: u8 = 2;
        fn varint(mut v: u64, buf: &mut Vec<u8>) {
            while v >= 0x80 {
                buf.push((v as u8) | 0x80);
                v >>= 7;
            }
            buf.push(v as u8);
        }
        fn field_len(tag: u32, len: usize) -> usize {
            if len == 0 {
                0
            } else {
                key_len(tag) + encoded_len_varint(len as u64) + len
            }
        }
        fn put(tag: u8, bytes: &[u8], buf: &mut Vec<u8>) {
            if !bytes.is_empty() {
                buf.push(tag << 3 | LEN);
                varint(bytes.len() as u64, buf);
                buf.extend_from_slice(bytes);
            }
        }
        let session_len = if self.session_id == 0 {
            0
        } else {
            key_len(1) + encoded_len_varint(self.session_id)
        } + field_len(2, self.frontend_id.len())
            + field_len(3, self.uid.len())
            + field_len(4, self.settings_json.len());
        let id_len = if self.id == 0 {
            0
        } else {
            key_len(2) + encoded_len_varint(u64::from(self.id))
        };
        let len = field_len(1, self.route.len())
            + id_len
            + field_len(3, self.body_json.len())
            + key_len(4)
            + encoded_len_varint(session_len as u64)
            + session_len
            + field_len(5, self.body_protobuf.len());
        let mut buf = Vec::with_capacity(len);
        put(1, self.route.as_bytes(), &mut buf);
        if self.id != 0 {
            buf.push(2 << 3 | VARINT);
            varint(u64::from(self.id), &mut buf);
        }
        put(3, self.body_json, &mut buf);
        buf.push(4 << 3 | LEN);
        varint(session_len as u64, &mut buf);
        if self.session_id != 0 {
            buf.push(1 << 3 | VARINT);
            varint(self.session_id, &mut buf);
        }
        put(2, self.frontend_id.as_bytes(), &mut buf);
        put(3, self.uid.as_bytes(), &mut buf);
        put(4, self.settings_json, &mut buf);
        put(5, self.body_protobuf, &mut buf);
        debug_assert_eq!(buf.len(), len);
        Bytes::from(buf)
    }
}

/// The backend's answer: the response body as JSON text, and the settings the handler
/// changed.
///
/// Only the changed keys travel (pomelo's `session.set` + `session.push(key)`): the
/// frontend sets the keys of `settings_json` and removes those of `removed_settings`, and
/// leaves every other key as it is, so a key set on the frontend, or by a concurrent
/// request, while this one was on the backend keeps its new value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardReply {
    /// Response body JSON text (`{}` when empty).
    #[prost(bytes = "bytes", tag = "1")]
    pub body_json: Bytes,
    /// The settings the handler set, as a JSON object text (only those keys); set on the
    /// frontend session before the response goes out. Empty (or `{}`): none set.
    #[prost(bytes = "bytes", tag = "2")]
    pub settings_json: Bytes,
    /// The settings the handler removed; removed from the frontend session before the
    /// response goes out. Empty: none removed.
    #[prost(string, repeated, tag = "3")]
    pub removed_settings: Vec<String>,
}

/// A push to sessions of this frontend: by session id and by uid (`push`), or to every
/// session (`broadcast`, which ignores the targets).
///
/// The message is `package` when it is not empty (a whole encoded PUSH package, sent as is:
/// the caller encoded it once for every frontend), else `body_json` on `route`, encoded here
/// once (route compressed with the dictionary, body with protobuf when configured).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushArgs {
    /// Target session ids.
    #[prost(uint64, repeated, tag = "1")]
    pub session_ids: Vec<u64>,
    /// Push route (compressed with the dictionary when possible); unused with `package`.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body JSON text; unused with `package`.
    #[prost(bytes = "bytes", tag = "3")]
    pub body_json: Bytes,
    /// Target uids: every session bound to each.
    #[prost(string, repeated, tag = "4")]
    pub uids: Vec<String>,
    /// A whole encoded PUSH package (header included), sent as is when not empty.
    #[prost(bytes = "bytes", tag = "5")]
    pub package: Bytes,
    /// More target uids, packed: each followed by a NUL byte. One buffer instead of a string
    /// per uid, so a channel can keep it between membership changes and neither side
    /// allocates per member on each push.
    #[prost(bytes = "bytes", tag = "6")]
    pub uid_list: Bytes,
}

/// How a push went.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushResult {
    /// Sessions it was queued for.
    #[prost(uint32, tag = "1")]
    pub sent: u32,
    /// Sessions not found or closed (a uid with no session counts one).
    #[prost(uint32, tag = "2")]
    pub missing: u32,
    /// Sessions whose queue was full (kicked as slow consumers).
    #[prost(uint32, tag = "3")]
    pub full: u32,
}

/// Bind or unbind `uid` on session `session_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BindArgs {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub session_id: u64,
    /// The uid.
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// Change settings of session `session_id` (pomelo `BackendSession.push`): set the keys of
/// `settings_json`, remove those of `removed`; every other key keeps its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SettingsArgs {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub session_id: u64,
    /// A JSON object text whose keys are set on the session (empty: none).
    #[prost(bytes = "bytes", tag = "2")]
    pub settings_json: Bytes,
    /// Keys removed from the session.
    #[prost(string, repeated, tag = "3")]
    pub removed: Vec<String>,
}

/// Kick by uid (`uid`, when not empty: all its sessions) or else by session id
/// (`session_id`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KickArgs {
    /// Session id (used when `uid` is empty).
    #[prost(uint64, tag = "1")]
    pub session_id: u64,
    /// Uid: kick all its sessions.
    #[prost(string, tag = "2")]
    pub uid: String,
    /// Kick reason sent to the client.
    #[prost(string, tag = "3")]
    pub reason: String,
}

remote! {
    /// Served by backends: handle a client message forwarded by a frontend.
    pub mod msg_remote: sys "msgRemote" {
        /// Runs the handler of `route` on a backend; replies with the response body.
        fn forward_message(ForwardMessage) -> ForwardReply;
    }
}

remote! {
    /// Served by frontends: reach the sessions they hold.
    pub mod session_remote: sys "sessionRemote" {
        /// Pushes to the listed sessions and uids (encoded once, or pre-encoded).
        fn push(PushArgs) -> PushResult;
        /// Pushes to every session of this frontend (encoded once).
        fn broadcast(PushArgs) -> PushResult;
        /// Binds a uid to a session.
        fn bind(BindArgs) -> ();
        /// Unbinds a uid from a session.
        fn unbind(BindArgs) -> ();
        /// Sets and removes settings of a session (only the keys named).
        fn push_settings(SettingsArgs) -> ();
        /// Kicks a session, or every session of a uid.
        fn kick(KickArgs) -> Count;
    }
}

// ---- the master and every server ----

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
    /// The port of its Prometheus endpoint actually bound (0: none).
    #[prost(uint32, tag = "9")]
    pub metrics_port: u32,
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

/// `master.rejoined`: a frontend has re-joined its sessions' keys that moved up to
/// `generation` (or had none to re-join).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rejoined {
    #[prost(string, tag = "1")]
    pub server_id: String,
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
    /// In a cluster on NATS: why its cluster backend is degraded (no quorum, NATS not
    /// reached), empty when it is healthy. `list` shows such a running server as `degraded`.
    #[prost(string, tag = "3")]
    pub degraded: String,
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
    /// `http://host:port/metrics` of its Prometheus endpoint, empty when it has none.
    #[prost(string, tag = "12")]
    pub metrics_url: String,
}

/// `master.list` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListReply {
    #[prost(uint32, tag = "1")]
    pub master_pid: u32,
    #[prost(message, repeated, tag = "2")]
    pub rows: Vec<ListRow>,
    /// The master's own Prometheus endpoint (master.json `metricsPort`), empty without one.
    #[prost(string, tag = "3")]
    pub master_metrics_url: String,
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

/// A count (kicked sessions).
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
    /// Only a notice, sent to every server before an orderly cluster stop: do not stop yet,
    /// but expect every peer to leave (their connections ending is not a fault).
    #[prost(bool, tag = "2")]
    pub notice_only: bool,
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
        /// A frontend re-joined its sessions' moved keys up to a generation: a moved key is
        /// served again (`place` answers for it) once every live frontend has.
        fn rejoined(Rejoined) -> ();
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn owned(r: &ForwardMessageRef<'_>) -> ForwardMessage {
        ForwardMessage {
            route: r.route.to_owned(),
            id: r.id,
            body_json: Bytes::copy_from_slice(r.body_json),
            session: Some(SessionSnapshot {
                id: r.session_id,
                frontend_id: r.frontend_id.to_owned(),
                uid: r.uid.to_owned(),
                settings_json: Bytes::copy_from_slice(r.settings_json),
            }),
            body_protobuf: Bytes::copy_from_slice(r.body_protobuf),
        }
    }

    #[test]
    fn the_borrowed_forward_message_encodes_to_prost_s_bytes() {
        let long = "x".repeat(300);
        let full = ForwardMessageRef {
            route: "chat.chatHandler.send",
            id: 7,
            body_json: br#"{"content":"hello"}"#,
            session_id: 42,
            frontend_id: "connector-server-1",
            uid: "alice",
            settings_json: br#"{"rid":"r1"}"#,
            body_protobuf: b"\x0a\x05hello",
        };
        let cases = [
            full,
            // A notify (id 0), an unbound session (no uid), no settings, JSON body.
            ForwardMessageRef {
                id: 0,
                uid: "",
                settings_json: b"",
                body_protobuf: b"",
                ..full
            },
            // Every field at its default: the snapshot is still there (an empty message).
            ForwardMessageRef::default(),
            // Lengths and values past one varint byte.
            ForwardMessageRef {
                route: &long,
                id: u32::MAX,
                body_json: long.as_bytes(),
                session_id: u64::MAX,
                uid: &long,
                ..full
            },
        ];
        for r in &cases {
            let want = owned(r).encode_to_vec();
            assert_eq!(r.encode().as_ref(), want.as_slice(), "{r:?}");
            assert_eq!(ForwardMessage::decode(r.encode()).ok(), Some(owned(r)));
        }
    }
}
