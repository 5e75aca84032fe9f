//! A hook for per-route metrics of a frontend's requests and notifies.
//!
//! The connector counts connections, handshakes, pushes and kicks itself, in plain atomics
//! ([`crate::ConnectorStats`]); what needs labels (the route) goes through this hook, which
//! the application (the server crate's Prometheus endpoint) implements. Without a hook
//! ([`crate::FrontendBuilder::route_metrics`] not called) nothing is timed.
//!
//! The hook is called once per message, on the connection's task, after the after-filters
//! ran: keep it cheap (a map lookup and a few atomic adds).

use std::time::Duration;

/// Whether a handled message was a request (with a response) or a notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request: the client waits for a response.
    Request,
    /// A notify: no response.
    Notify,
}

/// Receives one call per handled request or notify.
pub trait RouteMetrics: Send + Sync + 'static {
    /// One message handled. `route` is the route as resolved (by name, or from the
    /// dictionary for a compressed one); empty when a route code is not in the dictionary.
    /// The implementation must bound its labels (a client can send any route name).
    /// `failed`: the handler, a filter or the decoder answered an error.
    fn handled(&self, route: &str, kind: MessageKind, took: Duration, failed: bool);
}
