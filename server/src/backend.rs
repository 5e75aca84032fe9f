//! Requests that reach a backend, and the frontend's side of them.
//!
//! - The frontend's [`RpcForwarder`] (a connector `Forwarder`) sends a client request for
//!   another server type over `msgRemote.forward` with a snapshot of the session; the type's
//!   route key and router pick the server.
//! - The backend runs the handler with a [`BackendSession`]; its `bind/set/push/kick` reach
//!   the frontend session through `sessionRemote`, and settings changed with
//!   [`BackendSession::set`] are applied to the frontend session when the handler returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use shaddock_connector::{ForwardRequest, Forwarder, HandlerError, Session};
use shaddock_rpc::{RemoteError, RpcError, Target};

use crate::app::{BackendFilter, BackendRequest, BoxFuture, ErasedBackend, RouteKey, TypeDef};
use crate::channel::{PushError, encode_push};
use crate::context::{ServerContext, json_map};
use crate::proto::{
    BindArgs, Count, ForwardArgs, ForwardReply, KickArgs, PushArgs, SessionSnap, SetArgs,
    msg_remote, session_remote,
};

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
    fn from_snap(s: SessionSnap) -> Self {
        Self {
            id: s.id,
            uid: Some(s.uid).filter(|u| !u.is_empty()),
            frontend_id: s.frontend_id,
            settings: json_map(&s.settings_json),
        }
    }

    fn of(session: &Session) -> Self {
        Self {
            id: session.id(),
            uid: session.uid(),
            frontend_id: session.frontend_id().to_owned(),
            settings: session.settings(),
        }
    }

    fn to_snap(&self) -> SessionSnap {
        SessionSnap {
            id: self.id,
            uid: self.uid.clone().unwrap_or_default(),
            frontend_id: self.frontend_id.clone(),
            settings_json: Value::Object(self.settings.clone()).to_string(),
        }
    }
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
        let args = SetArgs {
            session_id: self.inner.id,
            settings_json: Value::Object(self.settings()).to_string(),
        };
        self.stub()
            .set(Target::server(&self.inner.frontend_id), args)
            .await
    }

    /// Binds the frontend session to `uid` (cluster-wide duplicate-login policy applies).
    ///
    /// # Errors
    /// The RPC failed, or the frontend refused the bind ([`RpcError::Remote`]).
    pub async fn bind(&self, uid: &str) -> Result<(), RpcError> {
        let args = BindArgs {
            session_id: self.inner.id,
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
        let package = encode_push(self.inner.ctx.dictionary().map(|d| &**d), route, body)?;
        let args = PushArgs {
            package,
            session_ids: vec![self.inner.id],
            uids: Vec::new(),
            all: false,
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
            session_id: self.inner.id,
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
    pub(crate) handlers: HashMap<String, Arc<dyn ErasedBackend>>,
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
    async fn forward(&self, args: ForwardArgs) -> Result<ForwardReply, RemoteError> {
        let Some(handler) = self.handlers.get(&args.route).cloned() else {
            tracing::warn!(route = %args.route, "no backend handler for route");
            return Err(RemoteError::new(
                500,
                format!("unknown route `{}`", args.route),
            ));
        };
        let body = shaddock_protocol::json::from_slice(&args.body)
            .map_err(|e| RemoteError::new(500, format!("invalid request body: {e}")))?;
        let info = SessionInfo::from_snap(args.session.unwrap_or_default());
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
            body: shaddock_protocol::json::to_vec(&reply).into(),
            settings_json: Value::Object(session.settings()).to_string(),
        })
    }
}

/// The frontend's forwarder: client requests for other server types go over RPC.
pub(crate) struct RpcForwarder {
    pub(crate) ctx: ServerContext,
    pub(crate) keys: HashMap<String, RouteKey>,
}

impl Forwarder for RpcForwarder {
    fn forward(&self, request: ForwardRequest) -> BoxFuture<'static, Result<Value, HandlerError>> {
        let ctx = self.ctx.clone();
        let info = SessionInfo::of(&request.session);
        let key = match self.keys.get(&request.server_type) {
            Some(f) => f(&info),
            None => info.uid.clone().unwrap_or_else(|| info.id.to_string()),
        };
        Box::pin(async move {
            let args = ForwardArgs {
                route: request.info.route.clone(),
                body: shaddock_protocol::json::to_vec(&request.body).into(),
                session: Some(info.to_snap()),
                id: request.info.id,
            };
            let stub = msg_remote::Client::new(ctx.rpc());
            match stub
                .forward(Target::route(&request.server_type, &key), args)
                .await
            {
                Ok(reply) => {
                    let settings = json_map(&reply.settings_json);
                    if !settings.is_empty() {
                        request.session.merge_settings(settings);
                    }
                    shaddock_protocol::json::from_slice(&reply.body)
                        .map_err(|e| HandlerError::internal(format!("bad backend reply: {e}")))
                }
                Err(RpcError::Remote { code, message }) => {
                    Err(HandlerError::new(i64::from(code), message))
                }
                Err(e) => {
                    tracing::warn!(route = %request.info.route, cause = %e, "forward failed");
                    Err(HandlerError::internal(e.to_string()))
                }
            }
        })
    }
}

/// `sessionRemote` on a frontend.
pub(crate) struct SessionRemote {
    pub(crate) ctx: ServerContext,
}

impl SessionRemote {
    fn session(&self, id: u64) -> Result<Session, RemoteError> {
        self.ctx
            .frontend()
            .and_then(|f| f.sessions().get(id))
            .ok_or_else(|| {
                RemoteError::new(404, format!("no session {id} on {}", self.ctx.server_id()))
            })
    }
}

impl session_remote::Remote for SessionRemote {
    async fn bind(&self, args: BindArgs) -> Result<(), RemoteError> {
        let s = self.session(args.session_id)?;
        self.ctx
            .bind(&s, &args.uid)
            .await
            .map_err(|e| RemoteError::new(500, e.to_string()))
    }

    async fn set(&self, args: SetArgs) -> Result<(), RemoteError> {
        let s = self.session(args.session_id)?;
        s.merge_settings(json_map(&args.settings_json));
        Ok(())
    }

    async fn kick(&self, args: KickArgs) -> Result<Count, RemoteError> {
        let Some(f) = self.ctx.frontend() else {
            return Ok(Count { n: 0 });
        };
        let n = if args.session_id != 0 {
            u64::from(f.sessions().kick_by_id(args.session_id, &args.reason))
        } else {
            f.sessions().kick_by_uid(&args.uid, &args.reason) as u64
        };
        Ok(Count { n })
    }

    async fn push(&self, args: PushArgs) -> Result<Count, RemoteError> {
        let Some(f) = self.ctx.frontend() else {
            return Ok(Count { n: 0 });
        };
        let mut n = 0u64;
        if args.all {
            for s in f.sessions().all() {
                n += u64::from(s.send_encoded(args.package.clone()).is_ok());
            }
        } else {
            n += f.push_encoded(&args.session_ids, &args.package).sent as u64;
            for uid in &args.uids {
                for s in f.sessions().get_by_uid(uid) {
                    n += u64::from(s.send_encoded(args.package.clone()).is_ok());
                }
            }
        }
        Ok(Count { n })
    }
}
