//! The admin verbs of a cluster on NATS: `stop`, `kill`, `add` and `list` from any host.
//!
//! Each launcher's master subscribes to `shaddock.<app>.admin.all` (the cluster-wide verbs)
//! and to `shaddock.<app>.admin.host.<host>` for each host id it runs (`add` of a server of
//! that host). A request is one JSON [`AdminRequest`]; every master that acts answers on the
//! request's reply subject with [`AdminReply`] lines: for `stop` and `kill` first an
//! acknowledgement (`done: false`), then `done: true` once its servers are gone, just before
//! it exits; for `add` and `list` one reply. `list` over core NATS is what the tool falls back
//! to when the registry (JetStream) cannot be read from its host: each launcher that hears it
//! answers with its own servers.

use serde::{Deserialize, Serialize};

/// What an admin request asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "camelCase")]
pub enum AdminRequest {
    /// Stop every server of the host gracefully, then its master.
    Stop,
    /// Kill every server of the host, then its master.
    Kill,
    /// Add a server (`key=value` pairs as `add` takes them).
    Add {
        /// The pairs, in order.
        pairs: Vec<(String, String)>,
    },
    /// The launcher's servers, as its master supervises them.
    List,
}

/// One answer of one host's master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminReply {
    /// The host id(s) of the answering launcher (comma-separated when it runs several).
    pub host: String,
    /// Whether it did (or is doing) what was asked.
    pub ok: bool,
    /// What it did, or why not.
    pub message: String,
    /// `stop` / `kill`: its servers are gone and its master exits now.
    #[serde(default)]
    pub done: bool,
    /// `list`: the master's `ListReply` (protobuf, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

/// The subject of the cluster-wide verbs.
pub fn all_subject(app: &str) -> String {
    format!("shaddock.{app}.admin.all")
}

/// The subject of one host's launcher. A host id that is not one plain subject token (an
/// address such as `10.0.0.1` has dots) is written in hex.
pub fn host_subject(app: &str, host: &str) -> String {
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        format!("shaddock.{app}.admin.host.{host}")
    } else {
        let hex: String = host.bytes().map(|b| format!("{b:02x}")).collect();
        format!("shaddock.{app}.admin.host.x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_single_tokens_per_host() {
        assert_eq!(host_subject("chat", "b"), "shaddock.chat.admin.host.b");
        assert_eq!(
            host_subject("chat", "10.0.0.1"),
            "shaddock.chat.admin.host.x31302e302e302e31"
        );
        assert_ne!(host_subject("chat", "x"), host_subject("chat", "*"));
        assert_eq!(all_subject("chat"), "shaddock.chat.admin.all");
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = AdminRequest::Add {
            pairs: vec![("id".into(), "chat-3".into())],
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AdminRequest>(&j).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<AdminRequest>(r#"{"verb":"stop"}"#).unwrap(),
            AdminRequest::Stop
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"verb":"rm"}"#).is_err());
    }
}
