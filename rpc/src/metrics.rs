//! [`RpcMetrics`]: Prometheus counters and latency histograms of RPC calls (prometheus-client).
//!
//! Registered into a [`prometheus_client::registry::Registry`] the caller owns (the server's
//! `/metrics` endpoint encodes it) and handed to the client and server through
//! [`crate::RpcConfig::metrics`]. Without it nothing is counted.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `shaddock_rpc_client_calls_total` | `peer` | calls sent to a peer (server id), whatever their outcome |
//! | `shaddock_rpc_client_errors_total` | `peer`, `error` | calls that failed, by [`crate::RpcError::label`] (`peer` is empty when no server could be chosen) |
//! | `shaddock_rpc_client_latency_seconds` | `peer` | time from the call to its reply or error, in seconds |
//! | `shaddock_rpc_server_calls_total` | `service`, `method` | requests served (dispatched to a handler) |
//! | `shaddock_rpc_server_errors_total` | `service`, `method`, `error` | requests answered with an error, by kind (`handler`, `unknown_service`, `unknown_method`, `bad_payload`, `internal`) |
//! | `shaddock_rpc_server_latency_seconds` | `service`, `method` | time the handler took, in seconds |
//!
//! Notifies (one-way calls) are not counted. Label sets are made once per peer (kept with the
//! peer's link) and once per served method, so a counted call costs a few atomic adds and, on
//! the server, one read-locked map lookup.

use crate::frame::{ErrorKind, Name};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds: 100 µs to 10 s (the default call timeout).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerErrorLabels {
    peer: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodErrorLabels {
    service: String,
    method: String,
    error: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The RPC metrics of one process (see the module docs). Cheap to clone (one `Arc`); clones
/// count into the same metrics.
#[derive(Clone, Debug)]
pub struct RpcMetrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    client_calls: Family<PeerLabels, Counter>,
    client_errors: Family<PeerErrorLabels, Counter>,
    client_latency: HistogramFamily<PeerLabels>,
    server_calls: Family<MethodLabels, Counter>,
    server_errors: Family<MethodErrorLabels, Counter>,
    server_latency: HistogramFamily<MethodLabels>,
    methods: RwLock<HashMap<(Name, Name), MethodMetrics>>,
}

impl RpcMetrics {
    /// Creates the metrics and registers them in `registry` (names prefixed `shaddock_rpc_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Families {
            client_calls: Family::default(),
            client_errors: Family::default(),
            client_latency: Family::new_with_constructor(latency_histogram),
            server_calls: Family::default(),
            server_errors: Family::default(),
            server_latency: Family::new_with_constructor(latency_histogram),
            methods: RwLock::default(),
        };
        let r = registry.sub_registry_with_prefix("shaddock_rpc");
        r.register(
            "client_calls",
            "RPC calls sent, by peer server id",
            m.client_calls.clone(),
        );
        r.register(
            "client_errors",
            "RPC calls that failed, by peer server id and error",
            m.client_errors.clone(),
        );
        r.register_with_unit(
            "client_latency",
            "RPC call latency as the caller sees it, by peer server id",
            prometheus_client::registry::Unit::Seconds,
            m.client_latency.clone(),
        );
        r.register(
            "server_calls",
            "RPC requests served, by service and method",
            m.server_calls.clone(),
        );
        r.register(
            "server_errors",
            "RPC requests answered with an error, by service, method and error kind",
            m.server_errors.clone(),
        );
        r.register_with_unit(
            "server_latency",
            "RPC handler latency, by service and method",
            prometheus_client::registry::Unit::Seconds,
            m.server_latency.clone(),
        );
        Self(Arc::new(m))
    }

    /// The per-peer handles of a client link to `peer`.
    pub(crate) fn peer(&self, peer: &str) -> PeerMetrics {
        let labels = PeerLabels {
            peer: peer.to_owned(),
        };
        PeerMetrics {
            peer: Arc::from(peer),
            calls: self.0.client_calls.get_or_create_owned(&labels),
            latency: self.0.client_latency.get_or_create_owned(&labels),
            errors: self.0.client_errors.clone(),
        }
    }

    /// Counts a call that failed before a peer was chosen (no server, unknown peer).
    pub(crate) fn unresolved(&self, err: &crate::RpcError) {
        self.0
            .client_errors
            .get_or_create(&PeerErrorLabels {
                peer: String::new(),
                error: err.label().to_owned(),
            })
            .inc();
    }

    /// The handles of one served method.
    pub(crate) fn method(&self, service: &Name, method: &Name) -> MethodMetrics {
        let key = (service.clone(), method.clone());
        if let Some(m) = self
            .0
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return m.clone();
        }
        let labels = MethodLabels {
            service: service.to_string(),
            method: method.to_string(),
        };
        let m = MethodMetrics {
            labels: Arc::new(labels.clone()),
            calls: self.0.server_calls.get_or_create_owned(&labels),
            latency: self.0.server_latency.get_or_create_owned(&labels),
            errors: self.0.server_errors.clone(),
        };
        self.0
            .methods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(m)
            .clone()
    }
}

/// What a client link counts into (see [`RpcMetrics::peer`]).
#[derive(Clone, Debug)]
pub(crate) struct PeerMetrics {
    peer: Arc<str>,
    calls: Counter,
    latency: Histogram,
    errors: Family<PeerErrorLabels, Counter>,
}

impl PeerMetrics {
    /// Counts one finished call.
    pub(crate) fn call(&self, took: Duration, err: Option<&crate::RpcError>) {
        self.calls.inc();
        self.latency.observe(took.as_secs_f64());
        if let Some(e) = err {
            self.errors
                .get_or_create(&PeerErrorLabels {
                    peer: self.peer.to_string(),
                    error: e.label().to_owned(),
                })
                .inc();
        }
    }
}

/// What a served method counts into (see [`RpcMetrics::method`]).
#[derive(Clone, Debug)]
pub(crate) struct MethodMetrics {
    labels: Arc<MethodLabels>,
    calls: Counter,
    latency: Histogram,
    errors: Family<MethodErrorLabels, Counter>,
}

impl MethodMetrics {
    /// Counts one served request.
    pub(crate) fn call(&self, took: Duration, err: Option<ErrorKind>) {
        self.calls.inc();
        self.latency.observe(took.as_secs_f64());
        if let Some(kind) = err {
            let error = match kind {
                ErrorKind::Handler => "handler",
                ErrorKind::UnknownService => "unknown_service",
                ErrorKind::UnknownMethod => "unknown_method",
                ErrorKind::BadPayload => "bad_payload",
                ErrorKind::Internal => "internal",
            };
            self.errors
                .get_or_create(&MethodErrorLabels {
                    service: self.labels.service.clone(),
                    method: self.labels.method.clone(),
                    error: error.to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_encoded_per_peer_and_method() {
        let mut reg = Registry::default();
        let m = RpcMetrics::register(&mut reg);
        let p = m.peer("chat-1");
        p.call(Duration::from_millis(2), None);
        p.call(
            Duration::from_millis(3),
            Some(&crate::RpcError::ConnectionLost {
                server_id: "chat-1".into(),
            }),
        );
        let (s, me) = (
            Name::from_static("chatRemote").unwrap(),
            Name::from_static("add").unwrap(),
        );
        m.method(&s, &me).call(Duration::from_micros(50), None);
        m.method(&s, &me)
            .call(Duration::from_micros(50), Some(ErrorKind::Handler));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "shaddock_rpc_client_calls_total{peer=\"chat-1\"} 2",
            "shaddock_rpc_client_errors_total{peer=\"chat-1\",error=\"connection_lost\"} 1",
            "shaddock_rpc_client_latency_seconds_count{peer=\"chat-1\"} 2",
            "shaddock_rpc_server_calls_total{service=\"chatRemote\",method=\"add\"} 2",
            "shaddock_rpc_server_errors_total{service=\"chatRemote\",method=\"add\",error=\"handler\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
