//! The frontend's RPC side: forwarding client messages of other server types to backends,
//! and the `sys sessionRemote` a frontend serves so backends can reach sessions. The remotes
//! and their messages are defined once, in [`shaddock_core::sys`] (re-exported here).
//!
//! # Forwarding
//! A route `chat.chatHandler.send` on a `connector` frontend goes to a `chat` server over
//! `sys msgRemote.forwardMessage`: [`RpcForwarder`] picks the server with the RPC client's
//! router for that type (pomelo's default: CRC-32 of the routing key over the live servers
//! of the type, sorted by id; replace it per type with [`RpcClient::set_router`]) from a
//! routing key that defaults to the session's uid (its id in decimal while unbound) and can be
//! chosen per type with [`RpcForwarder::route_key`] (e.g. the room in the session settings).
//! Backends implement [`msg_remote::Remote`]; the message carries a [`SessionSnapshot`], the
//! body travels as the JSON text the client sent, the reply as the JSON text of the response
//! body plus the settings the handler changed — only those keys, set or removed on the
//! frontend session before the response is sent; keys the handler did not touch keep the
//! frontend's value (see [`ForwardReply`](shaddock_core::sys::ForwardReply)). Any failure — no server of the type, backend down,
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

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::Value;
use shaddock_core::sys::{
    BindArgs, Count, ForwardMessageRef, ForwardReply, KickArgs, PushArgs, PushResult,
    SessionSnapshot, SettingsArgs,
};
pub use shaddock_core::sys::{msg_remote, session_remote};
use shaddock_rpc::{Raw, RemoteError, RpcClient, RpcError, Target};

use crate::frontend::{Forwarder, Frontend};
use crate::handler::{BoxFuture, HandlerError, Outcome, Request};
use crate::session::{Session, SessionError};

/// Builds the snapshot of `session` sent with forwarded messages.
pub fn snapshot(session: &Session) -> SessionSnapshot {
    SessionSnapshot {
        id: session.id(),
        frontend_id: session.frontend_id().to_owned(),
        uid: session.uid().unwrap_or_default(),
        settings_json: session.settings_json(),
    }
}

/// Chooses the routing key of a forwarded message.
pub type RouteKeyFn = Arc<dyn Fn(&Session, &str) -> Vec<u8> + Send + Sync>;

/// Forwards messages of other server types over RPC (see the [module docs](self)).
#[derive(Clone)]
pub struct RpcForwarder {
    rpc: RpcClient,
    /// By server type (the app's config, not a client's choice: the fast hash).
    keys: Arc<RwLock<shaddock_rpc::hash::FastMap<String, RouteKeyFn>>>,
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

    /// The routing key; `uid` is the session's (read once by the caller, which also
    /// encodes it), moved into the default key.
    fn key_for(
        &self,
        server_type: &str,
        session: &Session,
        route: &str,
        uid: Option<String>,
    ) -> Vec<u8> {
        let custom = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server_type)
            .cloned();
        match custom {
            Some(f) => f(session, route),
            None => uid.unwrap_or_else(|| session.id().to_string()).into_bytes(),
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

/// The wire name of [`msg_remote`]'s `forward_message` (checked against its `METHODS` in a
/// test): the forwarder calls it with a payload it encoded itself.
const FORWARD_MESSAGE: &str = "forwardMessage";

impl Forwarder for RpcForwarder {
    fn forward(
        &self,
        server_type: &str,
        request: &Request<Session>,
    ) -> BoxFuture<'static, Outcome> {
        let rpc = self.rpc.clone();
        let session = request.session().clone();
        let route = request.route().to_owned();
        // The server type is the route's first part when the caller passes that (the
        // dispatch does): kept as a length into `route` then, not a second `String`.
        let type_len = (route.len() > server_type.len()
            && route.starts_with(server_type)
            && route.as_bytes()[server_type.len()] == b'.')
            .then_some(server_type.len());
        let other_type = match type_len {
            Some(_) => String::new(),
            None => server_type.to_owned(),
        };
        let uid = session.uid();
        // The message encoded here, from borrowed fields (the owned `ForwardMessage` would
        // copy the route, frontend id and uid into `String`s first); the same bytes.
        let payload = {
            // The client's text when it was kept (valid JSON whose value re-encoding would
            // not change, see `shaddock_protocol::json::passthrough`), else the value encoded.
            let encoded;
            let body_json: &[u8] = match request.json_text() {
                Some(text) => text,
                None => {
                    encoded = shaddock_protocol::json::to_vec(request.body());
                    &encoded
                }
            };
            let settings_json = session.settings_json();
            ForwardMessageRef {
                route: &route,
                id: request.info().id,
                body_json,
                session_id: session.id(),
                frontend_id: session.frontend_id(),
                uid: uid.as_deref().unwrap_or_default(),
                settings_json: &settings_json,
                body_protobuf: request.protobuf().map_or(&[][..], |b| &b[..]),
            }
            .encode()
        };
        let key = self.key_for(server_type, &session, &route, uid);
        Box::pin(async move {
            let server_type = match type_len {
                Some(n) => &route[..n],
                None => &other_type,
            };
            let target = Target::route(server_type, &key);
            let reply = rpc
                .call::<Raw, ForwardReply>(
                    target,
                    msg_remote::NAMESPACE,
                    msg_remote::NAME,
                    FORWARD_MESSAGE,
                    Raw(payload),
                )
                .await
                .map_err(|e| rpc_error_to_handler(&route, &e))?;
            match settings_object(&reply.settings_json) {
                Ok(set) => session.apply_settings(set, &reply.removed_settings),
                Err(()) => tracing::warn!(
                    route = %route,
                    "backend reply settings are not a JSON object; ignored"
                ),
            }
            // Empty, or `{}` (the reply of every handler that answers nothing): the empty
            // object without a parse.
            if reply.body_json.is_empty() || reply.body_json[..] == *b"{}" {
                return Ok(Value::Object(serde_json::Map::new()));
            }
            shaddock_protocol::json::from_slice(&reply.body_json).map_err(|e| {
                tracing::warn!(route = %route, cause = %e, "backend reply body is not JSON");
                HandlerError::internal(format!(
                    "the `{server_type}` server sent an invalid response to route `{route}`"
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

    /// The RPC service to register. Its calls are polled once on the RPC connection's read
    /// loop before they get a task ([`session_remote::Server::inline_calls`]): a push, a
    /// settings change or a kick finishes at once (no wait) and then costs no task spawn; a
    /// bind through a hook that waits (a cluster's uid claim) goes on in its own task.
    pub fn into_server(self) -> session_remote::Server<Self> {
        session_remote::Server::new(self).inline_calls()
    }

    fn session(&self, session_id: u64) -> Result<Session, RemoteError> {
        self.frontend.sessions().get(session_id).ok_or_else(|| {
            RemoteError::new(
                404,
                format!(
                    "no session {session_id} on frontend `{}`",
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
        let mut r = self.frontend.push_encoded(&args.session_ids, &package);
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
        let s = self.session(args.session_id)?;
        match &self.bind {
            Some(hook) => hook(s, args.uid).await,
            None => s.bind(&args.uid).map_err(|e| remote_err(&e)),
        }
    }

    async fn unbind(&self, args: BindArgs) -> Result<(), RemoteError> {
        let s = self.session(args.session_id)?;
        s.unbind(&args.uid).map_err(|e| remote_err(&e))
    }

    async fn push_settings(&self, args: SettingsArgs) -> Result<(), RemoteError> {
        let s = self.session(args.session_id)?;
        let set = settings_object(&args.settings_json).map_err(|()| {
            RemoteError::new(
                500,
                format!(
                    "settings for session {} must be a JSON object",
                    args.session_id
                ),
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
            usize::from(self.frontend.sessions().kick_by_id(args.session_id, reason))
        } else {
            self.frontend.sessions().kick_by_uid(&args.uid, reason)
        };
        Ok(Count { n: n as u64 })
    }
}

impl Frontend {
    /// The `sys sessionRemote` service of this frontend, to register on its RPC server
    /// (binds with [`Session::bind`]; see [`SessionRemote::bind_with`] for a hook).
    pub fn session_remote(&self) -> session_remote::Server<SessionRemote> {
        SessionRemote::new(self.clone()).into_server()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarder_calls_msg_remote_s_forward_message() {
        assert!(msg_remote::METHODS.contains(&FORWARD_MESSAGE));
    }
}
