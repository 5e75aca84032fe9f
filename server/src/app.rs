//! The application builder: server types with their handlers, remotes, routers, filters and
//! components — pomelo's `app.configure`/`app.route`/`app.filter`/`app.load`, declared once in
//! the app's binary and used by every process (master and servers) started from it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
pub use shaddock_core::BoxFuture;
use shaddock_core::{
    DynFilter, ErasedHandler, Filter, FromRequest, Handler, HandlerError, Request, RequestInfo,
    StateMap, erase,
};
// The frontend-running side: a frontend's session and builder.
use shaddock_connector::{FrontendBuilder, Session};
use shaddock_protocol::protobuf::Protos;
use shaddock_protocol::{Route, RouteDictionary};
use shaddock_rpc::{Registry, RegistryError, Router};

use crate::backend::BackendSession;
use crate::context::ServerContext;

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

/// Why a component's hook failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ComponentError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ComponentError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error saying `message`, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A lifecycle component (pomelo's `app.load(component)`), loaded on every server (it may
/// check `ctx.server_type()`). Its hooks run in this order, each awaited, components in
/// load order:
///
/// 1. `start`: before the server serves anything; an error aborts the server's start.
/// 2. `after_start`: once the server is registered and serving (the frontend, if any, is in
///    `ctx.frontend()`); an error stops the server.
/// 3. `before_stop`: when the server is told to stop, before clients are drained (the
///    frontend still serves); an error is logged and the stop goes on.
/// 4. `stop`: after clients are drained and before RPC stops; an error is logged.
///
/// ```
/// use shaddock_server::{Component, ComponentError, ServerContext};
///
/// struct Greeter;
///
/// impl Component for Greeter {
///     fn name(&self) -> &str {
///         "greeter"
///     }
///
///     async fn start(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
///         tracing::info!(server = ctx.server_id(), "hello");
///         Ok(())
///     }
/// }
/// ```
pub trait Component: Send + Sync + 'static {
    /// Its name, for logs and errors.
    fn name(&self) -> &str;

    /// Runs before the server serves anything.
    fn start(
        &self,
        ctx: &ServerContext,
    ) -> impl Future<Output = Result<(), ComponentError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs once the server is registered and serving.
    fn after_start(
        &self,
        ctx: &ServerContext,
    ) -> impl Future<Output = Result<(), ComponentError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs when the server is told to stop, before its clients are drained.
    fn before_stop(
        &self,
        ctx: &ServerContext,
    ) -> impl Future<Output = Result<(), ComponentError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs after clients are drained, before RPC stops.
    fn stop(&self, ctx: &ServerContext) -> impl Future<Output = Result<(), ComponentError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

/// Which hook of a [`Component`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Start,
    AfterStart,
    BeforeStop,
    Stop,
}

/// A [`Component`] behind a pointer.
pub(crate) trait DynComponent: Send + Sync {
    fn name(&self) -> &str;
    fn run<'a>(
        &'a self,
        hook: Hook,
        ctx: &'a ServerContext,
    ) -> BoxFuture<'a, Result<(), ComponentError>>;
}

impl<C: Component> DynComponent for C {
    fn name(&self) -> &str {
        Component::name(self)
    }

    fn run<'a>(
        &'a self,
        hook: Hook,
        ctx: &'a ServerContext,
    ) -> BoxFuture<'a, Result<(), ComponentError>> {
        match hook {
            Hook::Start => Box::pin(self.start(ctx)),
            Hook::AfterStart => Box::pin(self.after_start(ctx)),
            Hook::BeforeStop => Box::pin(self.before_stop(ctx)),
            Hook::Stop => Box::pin(self.stop(ctx)),
        }
    }
}

/// What a backend filter learns about a request (the same as a frontend's).
pub type BackendRequest = RequestInfo;

/// The backend's session is an extractor: a backend handler taking a [`BackendSession`]
/// gets the client's.
impl FromRequest<Self> for BackendSession {
    fn from_request(req: &Request<Self>) -> Result<Self, HandlerError> {
        Ok(req.session().clone())
    }
}

/// Every handler can take the server's [`ServerContext`] (frontends and backends alike).
impl<S> FromRequest<S> for ServerContext {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        req.state().get::<Self>().cloned().ok_or_else(|| {
            tracing::error!(
                route = req.route(),
                "no server context in the request state"
            );
            HandlerError::internal(format!(
                "route `{}` cannot be handled here: the server is misconfigured",
                req.route()
            ))
        })
    }
}

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

/// Adds to a frontend's builder (filters, error handler, handlers with closures).
pub type FrontendSetup =
    Arc<dyn Fn(&ServerContext, FrontendBuilder) -> FrontendBuilder + Send + Sync>;

/// Registers a server type's user remotes.
pub type RemoteSetup =
    Arc<dyn Fn(&ServerContext, &mut Registry) -> Result<(), RegistryError> + Send + Sync>;

/// A backend handler: an async fn of extractors ([`BackendSession`], `Json<T>`,
/// `State<T>`, [`ServerContext`], ...) — `shaddock_core`'s [`Handler`] for backend sessions.
pub trait BackendHandler<A>: Handler<A, BackendSession> {}

impl<H: Handler<A, BackendSession>, A> BackendHandler<A> for H {}

/// A frontend handler: the same, with the frontend's [`Session`].
pub trait FrontendHandler<A>: Handler<A, Session> {}

impl<H: Handler<A, Session>, A> FrontendHandler<A> for H {}

/// Adds per-process state to a server's [`StateMap`] (see [`App::with_state_from`]).
pub(crate) type StateFactory = Arc<dyn Fn(&ServerContext, &mut StateMap) + Send + Sync>;

/// A backend handler with its argument types erased.
pub(crate) type ErasedBackend = dyn ErasedHandler<BackendSession>;

/// A backend filter behind a pointer.
pub(crate) type BackendFilter = Arc<dyn DynFilter<BackendSession>>;

/// Everything one server type declares.
#[derive(Default, Clone)]
pub(crate) struct TypeDef {
    pub(crate) handlers: HashMap<String, Arc<ErasedBackend>>,
    pub(crate) frontend_handlers: HashMap<String, Arc<dyn ErasedHandler<Session>>>,
    pub(crate) before: Vec<BackendFilter>,
    pub(crate) frontend_filters: Vec<Arc<dyn DynFilter<Session>>>,
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
    /// The route dictionary cannot be built.
    #[error("route dictionary: {0}")]
    Dictionary(String),
    /// A route's server type is not in servers.json, or is of the wrong kind (a frontend
    /// handler on a backend type, or the other way round).
    #[error("route `{route}`: {reason} (in {file})")]
    RouteServerType {
        /// The route.
        route: String,
        /// What is wrong.
        reason: String,
        /// The servers.json file checked.
        file: String,
    },
}

/// The application: declared once in `main`, then given to [`crate::run`].
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
/// use shaddock_server::{App, BackendSession, HandlerError, Json, State};
///
/// #[derive(Clone)]
/// struct Motd(&'static str);
///
/// #[derive(Deserialize)]
/// struct Send {
///     content: String,
/// }
///
/// #[derive(Serialize)]
/// struct Sent {
///     uid: Option<String>,
///     motd: &'static str,
/// }
///
/// async fn send(
///     State(motd): State<Motd>,
///     s: BackendSession,
///     Json(m): Json<Send>,
/// ) -> Result<Json<Sent>, HandlerError> {
///     tracing::info!(content = %m.content, "send");
///     Ok(Json(Sent { uid: s.uid(), motd: motd.0 }))
/// }
///
/// let app = App::new("demo")
///     .with_state(Motd("hello"))
///     .handler("chat.chatHandler.send", send);
/// std::process::exit(match shaddock_server::run(app) {
///     std::process::ExitCode::SUCCESS => 0,
///     _ => 1,
/// });
/// ```
#[derive(Clone, Default)]
pub struct App {
    pub(crate) name: String,
    pub(crate) types: HashMap<String, TypeDef>,
    pub(crate) components: Vec<Arc<dyn DynComponent>>,
    pub(crate) dictionary: Option<Arc<RouteDictionary>>,
    /// Build the dictionary from the routes ([`App::use_dictionary`]).
    pub(crate) use_dictionary: bool,
    pub(crate) push_routes: Vec<String>,
    pub(crate) state: StateMap,
    /// Per-process state, made once the server's context exists ([`App::with_state_from`]).
    pub(crate) state_factories: Vec<StateFactory>,
    pub(crate) error_handler: Option<shaddock_connector::handler::ErrorHandler>,
    pub(crate) rpc_filters: Vec<Arc<dyn shaddock_rpc::DynRpcFilter>>,
    /// Routes of server types absent from servers.json are only warned about.
    pub(crate) allow_missing_types: bool,
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

    fn check_route(&mut self, route: &str) -> Option<String> {
        match Route::parse(route) {
            Err(e) => {
                self.errors.push(AppError::InvalidRoute {
                    route: route.to_owned(),
                    reason: e.to_string(),
                });
                None
            }
            Ok(r) => {
                let server_type = r.server_type.to_owned();
                let def = self.ty(&server_type);
                if def.handlers.contains_key(route) || def.frontend_handlers.contains_key(route) {
                    self.errors.push(AppError::DuplicateRoute(route.to_owned()));
                    return None;
                }
                Some(server_type)
            }
        }
    }

    /// Registers a backend handler for `route` (`serverType.handler.method`): an async fn
    /// of extractors. Requests the frontends forward on that route run it on a server of
    /// that type (a backend type of servers.json, checked at start).
    #[must_use]
    pub fn handler<H, A>(mut self, route: &str, handler: H) -> Self
    where
        H: BackendHandler<A>,
        A: 'static,
    {
        if let Some(t) = self.check_route(route) {
            let erased: Arc<ErasedBackend> = erase::<H, A, BackendSession>(handler);
            self.ty(&t).handlers.insert(route.to_owned(), erased);
        }
        self
    }

    /// Registers a frontend handler for `route`: an async fn of extractors with the
    /// frontend's [`Session`]; it runs on the frontend servers of the route's type (a
    /// frontend type of servers.json, checked at start) where the client is connected.
    #[must_use]
    pub fn frontend_handler<H, A>(mut self, route: &str, handler: H) -> Self
    where
        H: FrontendHandler<A>,
        A: 'static,
    {
        if let Some(t) = self.check_route(route) {
            let erased = erase::<H, A, Session>(handler);
            self.ty(&t)
                .frontend_handlers
                .insert(route.to_owned(), erased);
        }
        self
    }

    /// Adds `value` to the state every handler can extract with `State<T>` (one value per
    /// type; `T` is cloned per request, so keep it cheap: `Arc` inside).
    #[must_use]
    pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Adds state made by `make` on each server once its [`ServerContext`] exists (a value
    /// built on what the server runs: its channels, its RPC client), extracted like
    /// [`App::with_state`]'s with `State<T>`.
    #[must_use]
    pub fn with_state_from<T: Clone + Send + Sync + 'static>(
        mut self,
        make: impl Fn(&ServerContext) -> T + Send + Sync + 'static,
    ) -> Self {
        self.state_factories
            .push(Arc::new(move |ctx, state| state.insert(make(ctx))));
        self
    }

    /// The state handlers of the server `ctx` extract: [`App::with_state`]'s, the context
    /// itself, and [`App::with_state_from`]'s.
    pub(crate) fn server_state(&self, ctx: &ServerContext) -> StateMap {
        let mut state = self.state.clone();
        state.insert(ctx.clone());
        for make in &self.state_factories {
            make(ctx, &mut state);
        }
        state
    }

    /// Adds a filter for the backend handlers of `server_type` (its `before` and `after`
    /// run around each forwarded request, in registration order).
    #[must_use]
    pub fn filter(mut self, server_type: &str, filter: impl Filter<BackendSession>) -> Self {
        self.ty(server_type).before.push(Arc::new(filter));
        self
    }

    /// Adds a filter on the frontends of `server_type`: around every client message, local
    /// or forwarded.
    #[must_use]
    pub fn frontend_filter(mut self, server_type: &str, filter: impl Filter<Session>) -> Self {
        self.ty(server_type).frontend_filters.push(Arc::new(filter));
        self
    }

    /// Adds a filter around every RPC call a server of this app receives (user and sys
    /// remotes), on the RPC server side.
    #[must_use]
    pub fn rpc_filter(mut self, filter: impl shaddock_rpc::RpcFilter) -> Self {
        self.rpc_filters.push(Arc::new(filter));
        self
    }

    /// Builds the response body of every failed request on every frontend (pomelo's
    /// `errorHandler`; default `{code, msg}`).
    #[must_use]
    pub fn error_handler(
        mut self,
        f: impl Fn(&RequestInfo, &Session, &HandlerError) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(f));
        self
    }

    /// Adds a before filter from a synchronous closure for the backend handlers of
    /// `server_type` (see [`App::filter`]).
    #[must_use]
    pub fn before(
        self,
        server_type: &str,
        filter: impl Fn(&Request<BackendSession>) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.filter(server_type, shaddock_core::BeforeFn(filter))
    }

    /// Configures the client port of the frontends of `server_type` by hand (anything the
    /// builder offers; [`App::frontend_handler`] and [`App::frontend_filter`] cover the usual
    /// needs). Called once per frontend process.
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

    /// Uses a route dictionary (pomelo's `useDict`) built as pinus builds it: every
    /// registered route (backend and frontend handlers), sorted, then the push routes of
    /// [`App::push_routes`] in order.
    #[must_use]
    pub fn use_dictionary(mut self) -> Self {
        self.use_dictionary = true;
        self
    }

    /// Adds routes the servers push on (pomelo's `config/dictionary.json`), given codes in
    /// the dictionary after the handler routes, in this order.
    #[must_use]
    pub fn push_routes<I, R>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.push_routes.extend(routes.into_iter().map(Into::into));
        self
    }

    /// The route dictionary the app's frontends announce: the one given with
    /// [`App::dictionary`], else the one [`App::use_dictionary`] builds, else none.
    ///
    /// # Errors
    /// The dictionary cannot be built (over 65 535 routes).
    pub fn route_dictionary(&self) -> Result<Option<Arc<RouteDictionary>>, AppError> {
        if let Some(d) = &self.dictionary {
            return Ok(Some(d.clone()));
        }
        if !self.use_dictionary {
            return Ok(None);
        }
        let handlers: Vec<&str> = self
            .types
            .values()
            .flat_map(|d| d.handlers.keys().chain(d.frontend_handlers.keys()))
            .map(String::as_str)
            .collect();
        RouteDictionary::new(handlers, self.push_routes.iter().map(String::as_str))
            .map(|d| Some(Arc::new(d)))
            .map_err(|e| AppError::Dictionary(e.to_string()))
    }

    /// The route dictionary used by frontends and for channel pushes (given by hand; see
    /// [`App::use_dictionary`] to build it from the routes).
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

    /// Lets routes of server types that servers.json does not list pass the start-up check
    /// (logged as a warning instead): for an app deployed in parts, or a test fixture that
    /// starts only some of its types. A route on servers of the wrong kind is still an error.
    #[must_use]
    pub fn allow_missing_server_types(mut self) -> Self {
        self.allow_missing_types = true;
        self
    }

    /// Checks every registered route against the servers of `servers.json` (`file`, for the
    /// message): its server type must be there (unless
    /// [`App::allow_missing_server_types`]), a backend handler's on backend servers, a
    /// frontend handler's on frontends.
    ///
    /// # Errors
    /// [`AppError::RouteServerType`] naming the first bad route (in route order) and the file.
    pub fn check_routes(
        &self,
        servers: &[crate::config::ServerConfig],
        file: &std::path::Path,
    ) -> Result<(), AppError> {
        let mut kinds: HashMap<&str, bool> = HashMap::new();
        for s in servers {
            kinds.insert(s.server_type.as_str(), s.frontend);
        }
        let mut routes: Vec<(&str, &str, bool)> = self
            .types
            .iter()
            .flat_map(|(t, d)| {
                let backend = d
                    .handlers
                    .keys()
                    .map(move |r| (r.as_str(), t.as_str(), false));
                let frontend = d
                    .frontend_handlers
                    .keys()
                    .map(move |r| (r.as_str(), t.as_str(), true));
                backend.chain(frontend)
            })
            .collect();
        routes.sort_unstable();
        for (route, server_type, wants_frontend) in routes {
            let reason = match (kinds.get(server_type), wants_frontend) {
                (None, _) if self.allow_missing_types => {
                    tracing::warn!(route, server_type, file = %file.display(), "route of a server type with no servers");
                    continue;
                }
                (None, _) => format!("server type `{server_type}` has no servers"),
                (Some(false), true) => format!(
                    "a frontend handler, but the `{server_type}` servers are not frontends \
                     (register it with App::handler, or mark them \"frontend\": true)"
                ),
                (Some(true), false) => format!(
                    "a backend handler, but the `{server_type}` servers are frontends \
                     (register it with App::frontend_handler)"
                ),
                _ => continue,
            };
            return Err(AppError::RouteServerType {
                route: route.to_owned(),
                reason,
                file: file.display().to_string(),
            });
        }
        Ok(())
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

    fn server(id: &str, server_type: &str, frontend: bool) -> crate::config::ServerConfig {
        crate::config::ServerConfig {
            id: id.into(),
            server_type: server_type.into(),
            host: "127.0.0.1".into(),
            port: Some(0),
            client_port: frontend.then_some(0),
            frontend,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn routes_are_checked_against_the_servers_of_servers_json() {
        let b = |_s: BackendSession| async { Ok::<_, HandlerError>(()) };
        let f = |_s: Session| async { Ok::<_, HandlerError>(()) };
        let servers = [
            server("gate-1", "gate", true),
            server("chat-1", "chat", false),
        ];
        let file = std::path::Path::new("config/servers.json");
        let ok = App::new("t")
            .frontend_handler("gate.h.q", f)
            .handler("chat.h.send", b);
        assert_eq!(ok.check_routes(&servers, file), Ok(()));
        let e = App::new("t")
            .handler("chat.h.send", b)
            .handler("area.h.move", b)
            .check_routes(&servers, file)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route `area.h.move`: server type `area` has no servers (in config/servers.json)"
        );
        let e = App::new("t")
            .handler("gate.h.q", b)
            .check_routes(&servers, file);
        assert!(
            matches!(e, Err(AppError::RouteServerType { ref route, .. }) if route == "gate.h.q"),
            "{e:?}"
        );
        let e = App::new("t")
            .frontend_handler("chat.h.x", f)
            .check_routes(&servers, file);
        assert!(e.unwrap_err().to_string().contains("not frontends"));
        // A route registered twice, once per kind, is a duplicate.
        let app = App::new("t")
            .handler("chat.h.x", b)
            .frontend_handler("chat.h.x", f);
        assert_eq!(
            app.validate(),
            Err(AppError::DuplicateRoute("chat.h.x".into()))
        );
    }

    #[test]
    fn the_dictionary_is_built_from_the_routes_and_push_routes() {
        let b = |_s: BackendSession| async { Ok::<_, HandlerError>(()) };
        let f = |_s: Session| async { Ok::<_, HandlerError>(()) };
        let app = App::new("t")
            .handler("chat.h.send", b)
            .frontend_handler("connector.h.enter", f)
            .frontend_handler("gate.h.query", f)
            .push_routes(["onChat", "onAdd"]);
        assert!(
            matches!(app.route_dictionary(), Ok(None)),
            "only with use_dictionary"
        );
        let d = app.use_dictionary().route_dictionary().unwrap().unwrap();
        let expected = RouteDictionary::new(
            ["chat.h.send", "connector.h.enter", "gate.h.query"],
            ["onChat", "onAdd"],
        )
        .unwrap();
        assert_eq!(d.dict_json(), expected.dict_json());
        assert_eq!(d.code("onAdd"), Some(5));
    }
}
