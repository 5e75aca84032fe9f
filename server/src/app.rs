//! The application builder: server types with their handlers, remotes, routers, filters and
//! components — pomelo's `app.configure`/`app.route`/`app.filter`/`app.load`, declared once in
//! the app's binary and used by every process (master and servers) started from it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use shaddock_connector::handler::{ErasedHandler, Handler, erase};
use shaddock_connector::{FrontendBuilder, HandlerError};
use shaddock_protocol::protobuf::Protos;
use shaddock_protocol::{Route, RouteDictionary};
use shaddock_rpc::{Registry, RegistryError, Router};

use crate::backend::BackendSession;
use crate::context::ServerContext;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the master does when a uid that is logged in on one frontend binds on another (or on
/// the same one, in another session). Pomelo's `singleSession` only covers one connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DuplicateLogin {
    /// Kick the old session (reason `"logged in elsewhere"`), accept the new one. The default.
    #[default]
    KickOld,
    /// Refuse the new bind; the old session stays.
    RefuseNew,
    /// Allow any number of sessions per uid (pomelo's default within one connector).
    Allow,
}

/// A lifecycle component (pomelo's `app.load(component)`): started before the server
/// registers with the master, told after it has, and stopped when the server stops.
pub trait Component: Send + Sync + 'static {
    /// Its name, for logs.
    fn name(&self) -> &str;
    /// Runs before the server serves anything. An error aborts the server's start.
    fn start(&self, _ctx: &ServerContext) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// Runs once the server is registered and serving.
    fn after_start(&self, _ctx: &ServerContext) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// Runs when the server stops, after clients are drained and before RPC stops.
    fn stop(&self, _ctx: &ServerContext) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What a backend filter learns about a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendRequest {
    /// `serverType.handler.method`.
    pub route: String,
    /// The client's request id (0 for a notify).
    pub id: u32,
}

/// Runs before a backend handler; `Err` refuses the request (the error is the response).
pub type BackendFilter =
    Arc<dyn Fn(&BackendRequest, &Value, &BackendSession) -> Result<(), HandlerError> + Send + Sync>;

/// Computes the routing key of a forwarded request from the client's session (pomelo's
/// `app.route(serverType, fn)`); the type's [`Router`] then picks a server from it.
pub type RouteKey = Arc<dyn Fn(&crate::backend::SessionInfo) -> String + Send + Sync>;

/// Re-joins sessions whose key moved (see [`App::rejoin`]).
pub type RejoinHook = Arc<dyn Fn(ServerContext, Rejoin) -> BoxFuture<'static, ()> + Send + Sync>;

/// Sessions of one frontend whose routing key was placed again: their server (a new one, or
/// the same one as a new process) has lost whatever it held for them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rejoin {
    /// The placed server type, e.g. `chat`.
    pub server_type: String,
    /// The routing key (a room).
    pub key: String,
    /// The server that holds the key now.
    pub server_id: String,
    /// This frontend's sessions whose route key is `key`.
    pub sessions: Vec<shaddock_connector::Session>,
}

/// Adds a frontend's local handlers and filters.
pub type FrontendSetup =
    Arc<dyn Fn(&ServerContext, FrontendBuilder) -> FrontendBuilder + Send + Sync>;

/// Registers a server type's user remotes.
pub type RemoteSetup =
    Arc<dyn Fn(&ServerContext, &mut Registry) -> Result<(), RegistryError> + Send + Sync>;

/// A typed backend handler: `async fn(BackendSession, T) -> Result<R, E>` — the connector's
/// [`Handler`] with a [`BackendSession`], so both erase the argument type the same way.
pub trait BackendHandler<T>: Handler<T, BackendSession> {}

impl<H: Handler<T, BackendSession>, T> BackendHandler<T> for H {}

/// A backend handler with its argument type erased.
pub(crate) type ErasedBackend = dyn ErasedHandler<BackendSession>;

/// Everything one server type declares.
#[derive(Default, Clone)]
pub(crate) struct TypeDef {
    pub(crate) handlers: HashMap<String, Arc<ErasedBackend>>,
    pub(crate) before: Vec<BackendFilter>,
    pub(crate) frontend: Vec<FrontendSetup>,
    pub(crate) remotes: Vec<RemoteSetup>,
    pub(crate) router: Option<Arc<dyn Router>>,
    pub(crate) route_key: Option<RouteKey>,
    /// Keys are placed by the cluster's placement table ([`App::placement`]).
    pub(crate) placed: bool,
    pub(crate) rejoin: Option<RejoinHook>,
}

/// Errors of declaring an app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// A handler route is not `serverType.handler.method`.
    #[error("invalid handler route `{route}`: {reason}")]
    InvalidRoute {
        /// The route as given.
        route: String,
        /// What is wrong.
        reason: String,
    },
    /// Two handlers for one route.
    #[error("duplicate handler route `{0}`")]
    DuplicateRoute(String),
}

/// The application: declared once in `main`, then given to [`crate::run`].
///
/// ```no_run
/// use shaddock_server::{App, BackendSession};
/// use shaddock_connector::HandlerError;
///
/// let app = App::new("demo").handler(
///     "chat.chatHandler.send",
///     |s: BackendSession, msg: serde_json::Value| async move {
///         Ok::<_, HandlerError>(serde_json::json!({"code": 200, "uid": s.uid()}))
///     },
/// );
/// std::process::exit(match shaddock_server::run(app) {
///     std::process::ExitCode::SUCCESS => 0,
///     _ => 1,
/// });
/// ```
#[derive(Clone, Default)]
pub struct App {
    pub(crate) name: String,
    pub(crate) types: HashMap<String, TypeDef>,
    pub(crate) components: Vec<Arc<dyn Component>>,
    pub(crate) dictionary: Option<Arc<RouteDictionary>>,
    pub(crate) protos: Option<Arc<Protos>>,
    pub(crate) duplicate_login: DuplicateLogin,
    pub(crate) errors: Vec<AppError>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<_> = self.types.keys().collect();
        types.sort();
        f.debug_struct("App")
            .field("name", &self.name)
            .field("types", &types)
            .field("duplicate_login", &self.duplicate_login)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app named `name` (used in logs and by `init`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ty(&mut self, server_type: &str) -> &mut TypeDef {
        self.types.entry(server_type.to_owned()).or_default()
    }

    /// Registers a backend handler for `route` (`serverType.handler.method`); requests the
    /// frontends forward on that route run it on a server of that type.
    #[must_use]
    pub fn handler<H, T>(mut self, route: &str, handler: H) -> Self
    where
        H: BackendHandler<T>,
        T: 'static,
    {
        match Route::parse(route) {
            Err(e) => self.errors.push(AppError::InvalidRoute {
                route: route.to_owned(),
                reason: e.to_string(),
            }),
            Ok(r) => {
                let erased: Arc<ErasedBackend> = erase::<H, T, BackendSession>(handler);
                let server_type = r.server_type.to_owned();
                if self
                    .ty(&server_type)
                    .handlers
                    .insert(route.to_owned(), erased)
                    .is_some()
                {
                    self.errors.push(AppError::DuplicateRoute(route.to_owned()));
                }
            }
        }
        self
    }

    /// Adds a before filter for the backend handlers of `server_type` (registration order).
    #[must_use]
    pub fn before(
        mut self,
        server_type: &str,
        filter: impl Fn(&BackendRequest, &Value, &BackendSession) -> Result<(), HandlerError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.ty(server_type).before.push(Arc::new(filter));
        self
    }

    /// Configures the client port of the frontends of `server_type`: local handlers
    /// (`builder.handler(...)`) and frontend filters. Called once per frontend process.
    #[must_use]
    pub fn frontend(
        mut self,
        server_type: &str,
        setup: impl Fn(&ServerContext, FrontendBuilder) -> FrontendBuilder + Send + Sync + 'static,
    ) -> Self {
        self.ty(server_type).frontend.push(Arc::new(setup));
        self
    }

    /// Registers user remotes on the servers of `server_type`.
    #[must_use]
    pub fn remotes(
        mut self,
        server_type: &str,
        setup: impl Fn(&ServerContext, &mut Registry) -> Result<(), RegistryError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.ty(server_type).remotes.push(Arc::new(setup));
        self
    }

    /// Uses `router` to pick a server of `server_type` (default: pomelo's crc32 modulo).
    #[must_use]
    pub fn router(mut self, server_type: &str, router: Arc<dyn Router>) -> Self {
        self.ty(server_type).router = Some(router);
        self
    }

    /// Places the keys of `server_type` (its route key: a room) with the cluster's placement
    /// table instead of a hash: a key stays on the server that first got it while that server
    /// lives, also when servers are added; a server added later takes new keys; the keys of a
    /// server lost for longer than master.json's `placementGraceMs` move to survivors, and
    /// frontends then run the type's [`App::rejoin`] hook. Replaces any [`App::router`].
    #[must_use]
    pub fn placement(mut self, server_type: &str) -> Self {
        self.ty(server_type).placed = true;
        self
    }

    /// Runs on each frontend for its sessions whose `server_type` key was placed again (see
    /// [`App::placement`]): re-create there what the lost server held for them (the chat
    /// re-joins the room's members).
    #[must_use]
    pub fn rejoin(
        mut self,
        server_type: &str,
        hook: impl Fn(ServerContext, Rejoin) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.ty(server_type).rejoin = Some(Arc::new(hook));
        self
    }

    /// How frontends compute the routing key of a request for `server_type` from the
    /// session (default: the uid, or the session id when unbound).
    #[must_use]
    pub fn route_key(
        mut self,
        server_type: &str,
        key: impl Fn(&crate::backend::SessionInfo) -> String + Send + Sync + 'static,
    ) -> Self {
        self.ty(server_type).route_key = Some(Arc::new(key));
        self
    }

    /// Loads a component on every server (it may check `ctx.server_type()`).
    #[must_use]
    pub fn component(mut self, component: impl Component) -> Self {
        self.components.push(Arc::new(component));
        self
    }

    /// The route dictionary used by frontends and for channel pushes.
    #[must_use]
    pub fn dictionary(mut self, dictionary: Arc<RouteDictionary>) -> Self {
        self.dictionary = Some(dictionary);
        self
    }

    /// The pomelo-protobuf schemas (`useProtobuf`): announced by every frontend's handshake,
    /// used for the bodies of the routes they list, on frontends and for channel and backend
    /// pushes alike.
    #[must_use]
    pub fn protos(mut self, protos: Arc<Protos>) -> Self {
        self.protos = Some(protos);
        self
    }

    /// The cluster-wide duplicate-login policy applied by the master.
    #[must_use]
    pub fn duplicate_login(mut self, policy: DuplicateLogin) -> Self {
        self.duplicate_login = policy;
        self
    }

    /// Checks the declarations.
    ///
    /// # Errors
    /// The first bad or duplicate route.
    pub fn validate(&self) -> Result<(), AppError> {
        match self.errors.first() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn type_def(&self, server_type: &str) -> TypeDef {
        self.types.get(server_type).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_duplicate_routes_are_reported() {
        let h = |_s: BackendSession, _v: Value| async { Ok::<_, HandlerError>(Value::Null) };
        let app = App::new("t").handler("chat.x.y", h).handler("chat.x.y", h);
        assert_eq!(
            app.validate(),
            Err(AppError::DuplicateRoute("chat.x.y".into()))
        );
        let app = App::new("t").handler("nodots", h);
        assert!(matches!(app.validate(), Err(AppError::InvalidRoute { .. })));
        let app = App::new("t").handler("chat.a.b", h).handler("area.a.b", h);
        assert!(app.validate().is_ok());
        assert_eq!(app.type_def("chat").handlers.len(), 1);
        assert!(app.type_def("gate").handlers.is_empty());
    }
}
