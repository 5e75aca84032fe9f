//! [`FrontendBuilder`]: handlers, filters, dictionary, forwarder; validates and builds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::connection::ConnectionConfig;
use shaddock_protocol::handshake::{Flavor, HandshakeProtos, ServerHandshake};
use shaddock_protocol::message::Route;
use shaddock_protocol::protobuf::Protos;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use shaddock_protocol::BodyCodec;

use super::{Error, Forwarder, Frontend, Inner};
use crate::config::ConnectorConfig;
use crate::handler::{
    AfterFn, BeforeFn, DynFilter, ErasedHandler, ErrorHandler, Filter, Handler, HandlerError,
    Outcome, Request, RequestInfo, StateMap,
};
use crate::handshake::{self, HandshakeConfig};
use crate::session::{Session, SessionConfig, SessionService};
use crate::stats::ConnectorStats;

/// Builds a [`Frontend`]: handlers, filters, state, dictionary, forwarder.
pub struct FrontendBuilder {
    config: ConnectorConfig,
    session_config: SessionConfig,
    handlers: HashMap<String, Arc<dyn ErasedHandler<Session>>>,
    errors: Vec<Error>,
    filters: Vec<Arc<dyn DynFilter<Session>>>,
    state: StateMap,
    error_handler: Option<ErrorHandler>,
    dictionary: Option<Arc<RouteDictionary>>,
    protos: Option<Arc<Protos>>,
    forwarder: Option<Arc<dyn Forwarder>>,
    route_metrics: Option<Arc<dyn crate::metrics::RouteMetrics>>,
}

impl std::fmt::Debug for FrontendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendBuilder")
            .field("config", &self.config)
            .field("routes", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FrontendBuilder {
    /// Times every request and notify into `metrics` (see [`crate::metrics`]).
    #[must_use]
    pub fn route_metrics(mut self, metrics: Arc<dyn crate::metrics::RouteMetrics>) -> Self {
        self.route_metrics = Some(metrics);
        self
    }

    /// Registers a local handler for `route` (`"<this server type>.handler.method"`): an
    /// async fn of extractors ([`Session`], `Json<T>`, `State<T>`, ...).
    /// Malformed, foreign or duplicate routes make [`FrontendBuilder::build`] fail.
    #[must_use]
    pub fn handler<H, A>(self, route: &str, handler: H) -> Self
    where
        H: Handler<A, Session>,
        A: 'static,
    {
        self.erased_handler(route, crate::handler::erase::<H, A, Session>(handler))
    }

    /// Registers a handler already erased (as an app declares them, see
    /// [`crate::handler::erase`]); the same checks as [`FrontendBuilder::handler`].
    #[must_use]
    pub fn erased_handler(mut self, route: &str, handler: Arc<dyn ErasedHandler<Session>>) -> Self {
        match Route::parse(route) {
            Err(e) => self.errors.push(Error::InvalidRoute {
                route: route.to_owned(),
                reason: e.to_string(),
            }),
            Ok(r) if r.server_type != self.config.server_type => {
                self.errors.push(Error::InvalidRoute {
                    route: route.to_owned(),
                    reason: format!(
                        "server type `{}` is not this frontend's type `{}`",
                        r.server_type, self.config.server_type
                    ),
                });
            }
            Ok(_) => {
                if self.handlers.insert(route.to_owned(), handler).is_some() {
                    self.errors.push(Error::DuplicateRoute(route.to_owned()));
                }
            }
        }
        self
    }

    /// Adds a shared filter (see [`FrontendBuilder::filter`]).
    #[must_use]
    pub fn dyn_filter(mut self, filter: Arc<dyn DynFilter<Session>>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Adds a filter (its `before` and `after` run in registration order), around local
    /// and forwarded messages alike.
    #[must_use]
    pub fn filter(mut self, filter: impl Filter<Session>) -> Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// Adds a filter from a synchronous before closure (see [`FrontendBuilder::filter`]).
    #[must_use]
    pub fn before(
        self,
        f: impl Fn(&Request<Session>) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.filter(BeforeFn(f))
    }

    /// Adds a filter from a synchronous after closure (see [`FrontendBuilder::filter`]).
    #[must_use]
    pub fn after(self, f: impl Fn(&Request<Session>, &Outcome) + Send + Sync + 'static) -> Self {
        self.filter(AfterFn(f))
    }

    /// Adds `value` to the state handlers extract with `State<T>`.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Adds every value of `state` (an app's) to the handlers' state.
    #[must_use]
    pub fn state_map(mut self, state: &StateMap) -> Self {
        self.state.extend(state);
        self
    }

    /// Sets the error handler that builds the response body of a failed request.
    #[must_use]
    pub fn error_handler(
        mut self,
        f: impl Fn(&RequestInfo, &Session, &HandlerError) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(f));
        self
    }

    /// Uses a route dictionary (`useDict`): sent in the handshake, used to expand compressed
    /// routes from clients and to compress pushes.
    #[must_use]
    pub fn dictionary(mut self, dictionary: Arc<RouteDictionary>) -> Self {
        self.dictionary = Some(dictionary);
        self
    }

    /// Uses pomelo-protobuf schemas (`useProtobuf`): announced in the handshake, used for
    /// bodies of the routes they list (clientProtos to decode, serverProtos to encode).
    #[must_use]
    pub fn protos(mut self, protos: Arc<Protos>) -> Self {
        self.protos = Some(protos);
        self
    }

    /// Sets the forwarder for routes of other server types.
    #[must_use]
    pub fn forwarder(mut self, forwarder: Arc<dyn Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Sets the session policy.
    #[must_use]
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.session_config = config;
        self
    }

    /// The routes registered so far (for building the dictionary).
    pub fn routes(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// Builds the frontend.
    ///
    /// # Errors
    /// The first bad handler route or config value.
    pub fn build(mut self) -> Result<Frontend, Error> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        let c = &self.config;
        if c.queue_capacity == 0
            || c.max_connections == 0
            || c.max_package_size == 0
            || c.max_in_flight == 0
        {
            return Err(Error::InvalidConfig(
                "queue_capacity, max_connections, max_package_size and max_in_flight must be > 0"
                    .into(),
            ));
        }
        if let Some(f) = c.push_flush_interval
            && (f.is_zero() || f > Duration::from_secs(60))
        {
            return Err(Error::InvalidConfig(format!(
                "push_flush_interval {f:?} must be > 0 and at most 60 s"
            )));
        }
        if let Some(h) = c.heartbeat_interval
            && (h.as_secs() == 0 || h.subsec_nanos() != 0)
        {
            return Err(Error::InvalidConfig(format!(
                "heartbeat_interval {h:?} must be a whole number of seconds ≥ 1"
            )));
        }
        let stats = Arc::new(ConnectorStats::default());
        let codec = BodyCodec::new(self.dictionary.clone(), self.protos.clone());
        let sessions = SessionService::new(
            &c.frontend_id,
            self.session_config,
            stats.clone(),
            codec.clone(),
        );
        let handshake_protos = self.protos.as_ref().map(|p| {
            let parsed = p.handshake_json();
            HandshakeProtos::with_version(
                parsed["server"].clone(),
                parsed["client"].clone(),
                p.version(),
            )
        });
        let handshake = HandshakeConfig {
            server: ServerHandshake::new(
                c.heartbeat_interval,
                self.dictionary.as_deref(),
                handshake_protos.as_ref(),
                Flavor::Pomelo,
            ),
            min_client_version: c
                .min_client_version
                .as_deref()
                .map(handshake::parse_version),
        };
        Ok(Frontend {
            inner: Arc::new(Inner {
                connection: ConnectionConfig {
                    heartbeat_interval: c.heartbeat_interval,
                    heartbeat_timeout: c.heartbeat_timeout,
                    handshake_timeout: Some(c.handshake_timeout),
                    close_on_early_data: c.close_on_early_data,
                },
                config: self.config,
                stats,
                sessions,
                handshake,
                handlers: self.handlers,
                filters: self.filters,
                state: self.state,
                error_handler: self.error_handler,
                codec,
                forwarder: self.forwarder,
                route_metrics: self.route_metrics,
                tracker: TaskTracker::new(),
                requests: TaskTracker::new(),
                stop_accepting: CancellationToken::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                give_up: CancellationToken::new(),
                listening: tokio::sync::watch::Sender::new(false),
            }),
        })
    }
}

impl Frontend {
    /// Starts building a frontend with `config`.
    pub fn builder(config: ConnectorConfig) -> FrontendBuilder {
        FrontendBuilder {
            config,
            session_config: SessionConfig::default(),
            handlers: HashMap::new(),
            errors: Vec::new(),
            filters: Vec::new(),
            state: StateMap::new(),
            error_handler: None,
            dictionary: None,
            protos: None,
            forwarder: None,
            route_metrics: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let c = ConnectorConfig {
            heartbeat_interval: Some(Duration::from_millis(1500)),
            ..ConnectorConfig::default()
        };
        assert!(matches!(
            Frontend::builder(c).build(),
            Err(Error::InvalidConfig(_))
        ));
        let c = ConnectorConfig {
            queue_capacity: 0,
            ..ConnectorConfig::default()
        };
        assert!(Frontend::builder(c).build().is_err());
    }
}
