//! Requests that reach a backend, and the frontend's side of them.
//!
//! - The frontend's connector [`RpcForwarder`](shaddock_connector::RpcForwarder) sends a
//!   client request for another server type over `msgRemote.forward_message` with a snapshot
//!   of the session; the type's route key ([`crate::App::route_key`]) and router pick the
//!   server.
//! - The backend runs the handler with a [`BackendSession`]; its `bind/set/push/kick` reach
//!   the frontend session through the connector's `sessionRemote`, and settings changed with
//!   [`BackendSession::set`] are applied to the frontend session when the handler returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Map, Value};
use shaddock_connector::remote::{
    BindArgs, ForwardMessage, ForwardReply, KickArgs, PushArgs, SessionSnapshot, SettingsArgs,
    msg_remote, session_remote,
};
use shaddock_connector::{HandlerError, RpcForwarder, Session, SessionRemote};
use shaddock_rpc::{RemoteError, RpcError, Target};

use crate::app::{BackendFilter, BackendRequest, ErasedBackend, RouteKey, TypeDef};
use crate::channel::{PushError, encode_push};
use crate::context::ServerContext;

/// A frontend session as a backend (or a route key function) sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session id (unique in the cluster).
    pub id: u64,
    /// The bound uid.
    pub uid: Option<String>,
    /// The frontend holding the connection.
    pub frontend_id: String,
    /// The session's settings.
    pub settings: Map<String, Value>,
}

impl SessionInfo {
    fn from_snapshot(s: SessionSnapshot) -> Self {
        let settings = match shaddock_protocol::json::from_slice(&s.settings_json) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Self {
            id: s.id,
            uid: Some(s.uid).filter(|u| !u.is_empty()),
            frontend_id: s.frontend_id,
            settings,
        }
    }

    pub(crate) fn of(session: &Session) -> Self {
        Self {
            id: session.id(),
            uid: session.uid(),
            frontend_id: session.frontend_id().to_owned(),
            settings: session.settings(),
        }
    }
}

fn json_bytes(settings: Map<String, Value>) -> Bytes {
    Bytes::from(shaddock_protocol::json::to_vec(&Value::Object(settings)))
}

struct BsInner {
    id: u64,
    frontend_id: String,
    uid: Mutex<Option<String>>,
    settings: Mutex<Map<String, Value>>,
    ctx: ServerContext,
}

/// The session of a request on a backend (pomelo's `BackendSession`). Cheap to clone.
#[derive(Clone)]
pub struct BackendSession {
    inner: Arc<BsInner>,
}

impl std::fmt::Debug for BackendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSession")
            .field("id", &self.inner.id)
            .field("uid", &self.uid())
            .field("frontend_id", &self.inner.frontend_id)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BackendSession {
    pub(crate) fn new(info: SessionInfo, ctx: ServerContext) -> Self {
        Self {
            inner: Arc::new(BsInner {
                id: info.id,
                frontend_id: info.frontend_id,
                uid: Mutex::new(info.uid),
                settings: Mutex::new(info.settings),
                ctx,
            }),
        }
    }

    /// The session id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The bound uid.
    pub fn uid(&self) -> Option<String> {
        lock(&self.inner.uid).clone()
    }

    /// The frontend holding the client's connection.
    pub fn frontend_id(&self) -> &str {
        &self.inner.frontend_id
    }

    /// The server this handler runs on.
    pub fn ctx(&self) -> &ServerContext {
        &self.inner.ctx
    }

    /// A setting.
    pub fn get(&self, key: &str) -> Option<Value> {
        lock(&self.inner.settings).get(key).cloned()
    }

    /// Sets a setting here; it reaches the frontend session when the handler returns (or at
    /// once with [`BackendSession::push_settings`]).
    pub fn set(&self, key: impl Into<String>, value: Value) {
        lock(&self.inner.settings).insert(key.into(), value);
    }

    /// Every setting.
    pub fn settings(&self) -> Map<String, Value> {
        lock(&self.inner.settings).clone()
    }

    /// Sends the settings to the frontend session now (pomelo's `session.push`).
    ///
    /// # Errors
    /// The RPC failed (frontend gone, session closed).
    pub async fn push_settings(&self) -> Result<(), RpcError> {
        let args = SettingsArgs {
            sid: self.inner.id,
            settings_json: json_bytes(self.settings()),
        };
        self.stub()
            .push_settings(Target::server(&self.inner.frontend_id), args)
            .await
    }

    /// Binds the frontend session to `uid` (cluster-wide duplicate-login policy applies).
    ///
    /// # Errors
    /// The RPC failed, or the frontend refused the bind ([`RpcError::Remote`]).
    pub async fn bind(&self, uid: &str) -> Result<(), RpcError> {
        let args = BindArgs {
            sid: self.inner.id,
            uid: uid.to_owned(),
        };
        self.stub()
            .bind(Target::server(&self.inner.frontend_id), args)
            .await?;
        *lock(&self.inner.uid) = Some(uid.to_owned());
        Ok(())
    }

    /// Pushes `body` on `route` to this client.
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push(&self, route: &str, body: &Value) -> Result<(), PushError> {
        let package = encode_push(self.inner.ctx.codec(), route, body)?;
        let args = PushArgs {
            package,
            sids: vec![self.inner.id],
            ..PushArgs::default()
        };
        self.stub()
            .push(Target::server(&self.inner.frontend_id), args)
            .await
            .map(drop)
            .map_err(|source| PushError::Rpc {
                frontend_id: self.inner.frontend_id.clone(),
                source,
            })
    }

    /// Kicks this client with `reason`.
    ///
    /// # Errors
    /// The RPC failed.
    pub async fn kick(&self, reason: &str) -> Result<(), RpcError> {
        let args = KickArgs {
            sid: self.inner.id,
            uid: String::new(),
            reason: reason.to_owned(),
        };
        self.stub()
            .kick(Target::server(&self.inner.frontend_id), args)
            .await
            .map(drop)
    }

    fn stub(&self) -> session_remote::Client {
        session_remote::Client::new(self.inner.ctx.rpc())
    }
}

fn remote_error(e: HandlerError) -> RemoteError {
    RemoteError::new(u32::try_from(e.code).unwrap_or(500), e.message)
}

/// `msgRemote` on a backend: runs forwarded requests.
pub(crate) struct MsgRemote {
    pub(crate) ctx: ServerContext,
    pub(crate) handlers: HashMap<String, Arc<ErasedBackend>>,
    pub(crate) before: Vec<BackendFilter>,
}

impl MsgRemote {
    pub(crate) fn new(ctx: ServerContext, def: &TypeDef) -> Self {
        Self {
            ctx,
            handlers: def.handlers.clone(),
            before: def.before.clone(),
        }
    }
}

impl msg_remote::Remote for MsgRemote {
    async fn forward_message(&self, args: ForwardMessage) -> Result<ForwardReply, RemoteError> {
        let Some(handler) = self.handlers.get(&args.route).cloned() else {
            tracing::warn!(route = %args.route, "no backend handler for route");
            return Err(RemoteError::new(
                500,
                format!("unknown route `{}`", args.route),
            ));
        };
        let body = shaddock_protocol::json::from_slice(&args.body_json)
            .map_err(|e| RemoteError::new(500, format!("invalid request body: {e}")))?;
        let info = SessionInfo::from_snapshot(args.session.unwrap_or_default());
        let session = BackendSession::new(info, self.ctx.clone());
        let req = BackendRequest {
            route: args.route.clone(),
            id: args.id,
        };
        for f in &self.before {
            f(&req, &body, &session).map_err(remote_error)?;
        }
        let reply = handler
            .call(session.clone(), body)
            .await
            .map_err(remote_error)?;
        Ok(ForwardReply {
            body_json: shaddock_protocol::json::to_vec(&reply).into(),
            settings_json: json_bytes(session.settings()),
        })
    }
}

/// The frontend's forwarder: the connector's [`RpcForwarder`] over this server's RPC client,
/// with the app's route keys.
pub(crate) fn forwarder(ctx: &ServerContext, keys: HashMap<String, RouteKey>) -> RpcForwarder {
    let forwarder = RpcForwarder::new(ctx.rpc().clone());
    for (server_type, key) in keys {
        forwarder.route_key(server_type, move |s: &Session, _route: &str| {
            key(&SessionInfo::of(s)).into_bytes()
        });
    }
    forwarder
}

/// The frontend's `sessionRemote`: the connector's, binding uids cluster-wide through the
/// master ([`ServerContext::bind`]).
pub(crate) fn session_remote(
    ctx: &ServerContext,
    frontend: &shaddock_connector::Frontend,
) -> session_remote::Server<SessionRemote> {
    let ctx = ctx.clone();
    SessionRemote::new(frontend.clone())
        .bind_with(move |session, uid| {
            let ctx = ctx.clone();
            Box::pin(async move {
                ctx.bind(&session, &uid)
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))
            })
        })
        .into_server()
}
