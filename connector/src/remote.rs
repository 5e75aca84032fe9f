//! The frontend's RPC side: forwarding client messages of other server types to backends,
//! and the `sys` remotes a frontend serves so backends can reach sessions. This is the one
//! definition of these remotes: the server crate registers and calls these same ones.
//!
//! # Forwarding
//! A route `chat.chatHandler.send` on a `connector` frontend goes to a `chat` server over
//! `sys msgRemote.forward_message`: [`RpcForwarder`] picks the server with the RPC client's
//! router for that type (pomelo's default: CRC-32 of the routing key over the live servers
//! of the type, sorted by id; replace it per type with [`RpcClient::set_router`]) from a
//! routing key that defaults to the session's uid (its id in decimal while unbound) and can be
//! chosen per type with [`RpcForwarder::route_key`] (e.g. the room in the session settings).
//! Backends implement [`msg_remote::Remote`]; the message carries a [`SessionSnapshot`], the
//! body travels as the JSON text the client sent, the reply as the JSON text of the response
//! body plus the settings the handler changed — only those keys, set or removed on the
//! frontend session before the response is sent; keys the handler did not touch keep the
//! frontend's value (see [`ForwardReply`]). Any failure — no server of the type, backend down,
//! timeout, backend error — becomes a `{"code":500,"msg":…}` response (or the backend's own
//! code and message) whose message tells the client's developer what to do, never RPC
//! internals (see [`rpc_error_to_handler`]); the client stays connected.
//!
//! # The frontend's `sys` remotes
//! [`session_remote`]: push to sessions by id and by uid, or to everyone — either a
//! pre-encoded PUSH package (encoded once by the caller for every frontend) or a route and
//! JSON body encoded here once; bind/unbind a uid, push settings, kick by session id or uid.
//! Register [`Frontend::session_remote`] (or a [`SessionRemote`] with a bind hook, as a
//! cluster does to claim uids cluster-wide) on the frontend's [`shaddock_rpc::RpcServer`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::Value;
use shaddock_rpc::{RemoteError, RpcClient, RpcError, Target, remote};

use crate::frontend::{ForwardRequest, Forwarder, Frontend};
use crate::handler::{BoxFuture, HandlerError};
use crate::session::{Session, SessionError};

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
    pub sids: Vec<u64>,
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

/// Bind or unbind `uid` on session `sid`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BindArgs {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// The uid.
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// Change settings of session `sid` (pomelo `BackendSession.push`): set the keys of
/// `settings_json`, remove those of `removed`; every other key keeps its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SettingsArgs {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// A JSON object text whose keys are set on the session (empty: none).
    #[prost(bytes = "bytes", tag = "2")]
    pub settings_json: Bytes,
    /// Keys removed from the session.
    #[prost(string, repeated, tag = "3")]
    pub removed: Vec<String>,
}

/// Kick by uid (`uid`, when not empty: all its sessions) or else by session id (`sid`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KickArgs {
    /// Session id (used when `uid` is empty).
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// Uid: kick all its sessions.
    #[prost(string, tag = "2")]
    pub uid: String,
    /// Kick reason sent to the client.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// A count (sessions kicked).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Count {
    /// The count.
    #[prost(uint32, tag = "1")]
    pub n: u32,
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

/// Builds the snapshot of `session` sent with forwarded messages.
pub fn snapshot(session: &Session) -> SessionSnapshot {
    SessionSnapshot {
        id: session.id(),
        frontend_id: session.frontend_id().to_owned(),
        uid: session.uid().unwrap_or_default(),
        settings_json: Bytes::from(shaddock_protocol::json::to_vec(&Value::Object(
            session.settings(),
        ))),
    }
}

/// Chooses the routing key of a forwarded message.
pub type RouteKeyFn = Arc<dyn Fn(&Session, &str) -> Vec<u8> + Send + Sync>;

/// Forwards messages of other server types over RPC (see the [module docs](self)).
#[derive(Clone)]
pub struct RpcForwarder {
    rpc: RpcClient,
    keys: Arc<RwLock<HashMap<String, RouteKeyFn>>>,
}

impl std::fmt::Debug for RpcForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcForwarder").finish_non_exhaustive()
    }
}

impl RpcForwarder {
    /// A forwarder calling through `rpc` (its directory and routers pick the backend).
    pub fn new(rpc: RpcClient) -> Self {
        Self {
            rpc,
            keys: Arc::default(),
        }
    }

    /// Uses `key` to compute the routing key for `server_type` (default: the uid, or the
    /// session id in decimal while unbound). `key` gets the session and the route.
    pub fn route_key(
        &self,
        server_type: impl Into<String>,
        key: impl Fn(&Session, &str) -> Vec<u8> + Send + Sync + 'static,
    ) {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(server_type.into(), Arc::new(key));
    }

    fn key_for(&self, server_type: &str, session: &Session, route: &str) -> Vec<u8> {
        let custom = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server_type)
            .cloned();
        match custom {
            Some(f) => f(session, route),
            None => session
                .uid()
                .unwrap_or_else(|| session.id().to_string())
                .into_bytes(),
        }
    }
}

/// Maps an RPC failure of forwarding `route` to the client's error response.
///
/// A backend handler's own error ([`RpcError::Remote`]) is passed on as it is (its code and
/// message are the app's). Every other failure is answered with a sentence for the client's
/// developer — which server type, and what to do — and never with RPC service, method or
/// server names; the RPC error itself is logged (`warn`) with the route.
pub fn rpc_error_to_handler(route: &str, e: &RpcError) -> HandlerError {
    if let RpcError::Remote { code, message } = e {
        return HandlerError::new(i64::from(*code), message.clone());
    }
    let server_type = route.split('.').next().unwrap_or(route);
    tracing::warn!(route, server_type, cause = %e, "forwarding failed");
    let message = match e {
        // The servers of the type do not take forwarded requests: they are frontends (a gate
        // or connector), which clients must connect to themselves.
        RpcError::UnknownService { .. } | RpcError::UnknownMethod { .. } => {
            format!("route `{route}` is not served here: send it to a {server_type} server")
        }
        RpcError::NoServer { .. } => format!(
            "no `{server_type}` server is available: check the route's server type, or try \
             again later"
        ),
        RpcError::UnknownPeer { .. } | RpcError::PeerDown { .. } => {
            format!("server type `{server_type}` is unavailable, try again later")
        }
        RpcError::ConnectionLost { .. } => format!(
            "the `{server_type}` server went away while handling the request (it may have \
             been handled), try again later"
        ),
        RpcError::Timeout { .. } => format!(
            "the `{server_type}` server did not answer in time (the request may still be \
             handled), try again later"
        ),
        RpcError::FrameTooLarge { .. } => {
            format!("the request is too large to forward to a `{server_type}` server")
        }
        _ => format!("the `{server_type}` server could not handle route `{route}`"),
    };
    HandlerError::new(i64::from(e.pomelo_code()), message)
}

impl Forwarder for RpcForwarder {
    fn forward(&self, request: ForwardRequest) -> BoxFuture<'static, Result<Value, HandlerError>> {
        let this = self.clone();
        Box::pin(async move {
            let key = this.key_for(&request.server_type, &request.session, &request.info.route);
            let msg = ForwardMessage {
                route: request.info.route.clone(),
                id: request.info.id,
                body_json: Bytes::from(shaddock_protocol::json::to_vec(&request.body)),
                session: Some(snapshot(&request.session)),
            };
            let stub = msg_remote::Client::new(&this.rpc);
            let target = Target::route(&request.server_type, &key);
            let reply = stub
                .forward_message(target, msg)
                .await
                .map_err(|e| rpc_error_to_handler(&request.info.route, &e))?;
            match settings_object(&reply.settings_json) {
                Ok(set) => request.session.apply_settings(set, &reply.removed_settings),
                Err(()) => tracing::warn!(
                    route = %request.info.route,
                    "backend reply settings are not a JSON object; ignored"
                ),
            }
            if reply.body_json.is_empty() {
                return Ok(Value::Object(serde_json::Map::new()));
            }
            shaddock_protocol::json::from_slice(&reply.body_json).map_err(|e| {
                tracing::warn!(route = %request.info.route, cause = %e, "backend reply body is not JSON");
                HandlerError::internal(format!(
                    "the `{}` server sent an invalid response to route `{}`",
                    request.server_type, request.info.route
                ))
            })
        })
    }
}

/// The settings object of a reply or `push_settings` (empty bytes: no keys).
fn settings_object(json: &[u8]) -> Result<serde_json::Map<String, Value>, ()> {
    if json.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match shaddock_protocol::json::from_slice(json) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(()),
    }
}

fn remote_err(e: &SessionError) -> RemoteError {
    RemoteError::new(500, e.to_string())
}

fn parse_json(what: &str, bytes: &[u8]) -> Result<Value, RemoteError> {
    shaddock_protocol::json::from_slice(bytes)
        .map_err(|e| RemoteError::new(500, format!("{what} is not JSON: {e}")))
}

fn report(r: crate::frontend::PushReport) -> PushResult {
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    PushResult {
        sent: n(r.sent),
        missing: n(r.missing),
        full: n(r.full),
    }
}

/// Binds a uid on a session for `sessionRemote.bind` (see [`SessionRemote::bind_with`]).
pub type BindHook =
    Arc<dyn Fn(Session, String) -> BoxFuture<'static, Result<(), RemoteError>> + Send + Sync>;

/// The frontend's implementation of [`session_remote`].
#[derive(Clone)]
pub struct SessionRemote {
    frontend: Frontend,
    bind: Option<BindHook>,
}

impl std::fmt::Debug for SessionRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRemote")
            .field("frontend", &self.frontend)
            .field("bind_hook", &self.bind.is_some())
            .finish()
    }
}

impl SessionRemote {
    /// The remote of `frontend`; `bind` calls [`Session::bind`].
    pub fn new(frontend: Frontend) -> Self {
        Self {
            frontend,
            bind: None,
        }
    }

    /// Binds through `hook` instead of [`Session::bind`] (a cluster claims the uid with its
    /// master first, applying its duplicate-login policy). The hook gets the session and the
    /// uid; its error goes back to the caller.
    #[must_use]
    pub fn bind_with(
        mut self,
        hook: impl Fn(Session, String) -> BoxFuture<'static, Result<(), RemoteError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.bind = Some(Arc::new(hook));
        self
    }

    /// The RPC service to register.
    pub fn into_server(self) -> session_remote::Server<Self> {
        session_remote::Server::new(self)
    }

    fn session(&self, sid: u64) -> Result<Session, RemoteError> {
        self.frontend.sessions().get(sid).ok_or_else(|| {
            RemoteError::new(
                404,
                format!(
                    "no session {sid} on frontend `{}`",
                    self.frontend.config().frontend_id
                ),
            )
        })
    }

    /// The package to send: `args.package`, or `args.body_json` on `args.route` encoded once.
    fn package(&self, args: &PushArgs) -> Result<Bytes, RemoteError> {
        if !args.package.is_empty() {
            return Ok(args.package.clone());
        }
        let body = parse_json("push body", &args.body_json)?;
        self.frontend
            .encode_push(&args.route, &body)
            .map_err(|e| RemoteError::new(500, format!("push on `{}`: {e}", args.route)))
    }
}

impl session_remote::Remote for SessionRemote {
    async fn push(&self, args: PushArgs) -> Result<PushResult, RemoteError> {
        let package = self.package(&args)?;
        let mut r = self.frontend.push_encoded(&args.sids, &package);
        if !args.uids.is_empty() {
            r += self.frontend.push_encoded_to_uids(&args.uids, &package);
        }
        if !args.uid_list.is_empty() {
            r += self
                .frontend
                .push_encoded_to_uid_list(&args.uid_list, &package);
        }
        Ok(report(r))
    }

    async fn broadcast(&self, args: PushArgs) -> Result<PushResult, RemoteError> {
        let package = self.package(&args)?;
        Ok(report(self.frontend.broadcast_encoded(&package)))
    }

    async fn bind(&self, args: BindArgs) -> Result<(), RemoteError> {
        let s = self.session(args.sid)?;
        match &self.bind {
            Some(hook) => hook(s, args.uid).await,
            None => s.bind(&args.uid).map_err(|e| remote_err(&e)),
        }
    }

    async fn unbind(&self, args: BindArgs) -> Result<(), RemoteError> {
        let s = self.session(args.sid)?;
        s.unbind(&args.uid).map_err(|e| remote_err(&e))
    }

    async fn push_settings(&self, args: SettingsArgs) -> Result<(), RemoteError> {
        let s = self.session(args.sid)?;
        let set = settings_object(&args.settings_json).map_err(|()| {
            RemoteError::new(
                500,
                format!("settings for session {} must be a JSON object", args.sid),
            )
        })?;
        s.apply_settings(set, &args.removed);
        Ok(())
    }

    async fn kick(&self, args: KickArgs) -> Result<Count, RemoteError> {
        let reason = if args.reason.is_empty() {
            "kick"
        } else {
            &args.reason
        };
        let n = if args.uid.is_empty() {
            usize::from(self.frontend.sessions().kick_by_id(args.sid, reason))
        } else {
            self.frontend.sessions().kick_by_uid(&args.uid, reason)
        };
        Ok(Count {
            n: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }
}

impl Frontend {
    /// The `sys sessionRemote` service of this frontend, to register on its RPC server
    /// (binds with [`Session::bind`]; see [`SessionRemote::bind_with`] for a hook).
    pub fn session_remote(&self) -> session_remote::Server<SessionRemote> {
        SessionRemote::new(self.clone()).into_server()
    }
}
