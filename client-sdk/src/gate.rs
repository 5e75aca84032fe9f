//! The gate helper: ask a gate server which connector to use, then connect to it.
//!
//! pomelo's classic layout puts a *gate* in front of the connectors: the client connects to
//! the gate, calls `gate.gateHandler.queryEntry {uid}`, gets `{code: 200, host, port}`, closes
//! that connection and connects to the connector it names.

use serde_json::{Value, json};
use tracing::instrument;

use crate::{Client, ClientConfig, Error, Events, Transport};

/// The gate route of pomelo's chat and of most pomelo apps.
pub const QUERY_ENTRY_ROUTE: &str = "gate.gateHandler.queryEntry";

/// A connector named by the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateEntry {
    /// The connector's host (as the gate announces it).
    pub host: String,
    /// The connector's client port.
    pub port: u16,
}

impl GateEntry {
    /// `host:port`, ready for [`Client::connect`].
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Read a `queryEntry` reply: `code` 200 and a `host` string and `port` (number or numeric
    /// string).
    pub fn from_reply(reply: &Value) -> Option<Self> {
        if reply.get("code").and_then(Value::as_u64) != Some(200) {
            return None;
        }
        let host = reply.get("host")?.as_str()?.to_owned();
        let port = match reply.get("port")? {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
            Value::String(s) => s.parse().ok()?,
            _ => return None,
        };
        Some(Self { host, port })
    }
}

/// Connect to the gate at `gate` (`host:port`), call [`QUERY_ENTRY_ROUTE`] with `{uid}`, close
/// the gate connection and return the connector it named. `config.reconnect` is not used for
/// the gate connection.
///
/// # Errors
/// Connection and request errors as [`Client::connect`] / [`Client::request`];
/// [`Error::Gate`] when the reply does not name a connector.
#[instrument(skip(config))]
pub async fn query_entry(
    gate: &str,
    transport: Transport,
    uid: &str,
    config: &ClientConfig,
) -> Result<GateEntry, Error> {
    let mut config = config.clone();
    config.reconnect = None;
    let (client, _events) = Client::connect(gate, transport, config).await?;
    let reply = client
        .request(QUERY_ENTRY_ROUTE, &json!({ "uid": uid }))
        .await;
    client.close().await;
    let reply = reply?;
    GateEntry::from_reply(&reply).ok_or_else(|| Error::Gate {
        gate: gate.to_owned(),
        reply: shaddock_protocol::json::to_string(&reply),
    })
}

/// [`query_entry`], then [`Client::connect`] to the connector it names (same transport and
/// config). With a [`ReconnectPolicy`](crate::ReconnectPolicy) that has no resolver of its
/// own, each reconnect attempt asks the gate again (the gate knows which connectors are up).
///
/// # Errors
/// As [`query_entry`] and [`Client::connect`].
#[instrument(skip(config))]
pub async fn connect_via_gate(
    gate: &str,
    transport: Transport,
    uid: &str,
    mut config: ClientConfig,
) -> Result<(Client, Events, GateEntry), Error> {
    let entry = query_entry(gate, transport, uid, &config).await?;
    if let Some(policy) = config.reconnect.take() {
        config.reconnect = Some(if policy.resolver.is_none() {
            let (gate, uid, gate_config) = (gate.to_owned(), uid.to_owned(), config.clone());
            policy.resolve_with(move |_attempt| {
                let (gate, uid, config) = (gate.clone(), uid.clone(), gate_config.clone());
                async move {
                    let entry = query_entry(&gate, transport, &uid, &config).await?;
                    Ok(entry.addr())
                }
            })
        } else {
            policy
        });
    }
    let (client, events) = Client::connect(&entry.addr(), transport, config).await?;
    Ok((client, events, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_from_reply() {
        let e = GateEntry::from_reply(&json!({"code":200,"host":"127.0.0.1","port":3051})).unwrap();
        assert_eq!(e.addr(), "127.0.0.1:3051");
        let e = GateEntry::from_reply(&json!({"code":200,"host":"::1","port":"7"})).unwrap();
        assert_eq!(e.addr(), "[::1]:7");
        for bad in [
            json!({"code":500}),
            json!({"code":200,"host":"h"}),
            json!({"code":200,"host":"h","port":70000}),
            json!({"code":200,"host":1,"port":1}),
            json!([]),
        ] {
            assert_eq!(GateEntry::from_reply(&bad), None, "{bad}");
        }
    }
}
