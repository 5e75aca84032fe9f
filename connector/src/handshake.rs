//! Answering a client's HANDSHAKE (PROTOCOL.md §5.2): codes 200, 500 and 501.

use bytes::Bytes;
use serde_json::{Map, Value};
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::json;

/// What the frontend tells a client in the handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandshakeConfig {
    /// `sys.heartbeat` in whole seconds; `None` = no heartbeat key.
    pub(crate) heartbeat_secs: Option<u64>,
    /// The route dictionary, if `useDict`.
    pub(crate) dictionary: Option<std::sync::Arc<RouteDictionary>>,
    /// Clients whose `sys.version` is below this get 501.
    pub(crate) min_client_version: Option<Vec<u64>>,
}

/// Parses a dotted version ("0.3.1") into numbers; non-numeric parts count as 0.
pub(crate) fn parse_version(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|p| p.trim().parse::<u64>().unwrap_or(0))
        .collect()
}

fn version_below(client: &[u64], min: &[u64]) -> bool {
    let n = client.len().max(min.len());
    for i in 0..n {
        let c = client.get(i).copied().unwrap_or(0);
        let m = min.get(i).copied().unwrap_or(0);
        if c != m {
            return c < m;
        }
    }
    false
}

fn code_only(code: u16) -> Bytes {
    Bytes::from(format!("{{\"code\":{code}}}"))
}

/// Builds the reply to a HANDSHAKE body: `(code, reply body)`.
pub(crate) fn respond(cfg: &HandshakeConfig, body: &[u8]) -> (u16, Bytes) {
    // "Any failure — invalid JSON, empty body, null ... — is handled as if the client had sent
    // {}" (§5.2 step 1), and "No truthy sys → reply {"code":500}" (step 2).
    let request = json::from_slice(body).unwrap_or(Value::Object(Map::new()));
    let Some(sys) = request.get("sys").filter(|s| json::is_truthy(s)) else {
        return (500, code_only(500));
    };
    if let Some(min) = &cfg.min_client_version {
        let version = match sys.get("version") {
            Some(Value::String(s)) => parse_version(s),
            Some(Value::Number(n)) => parse_version(&n.to_string()),
            _ => Vec::new(),
        };
        if version_below(&version, min) {
            return (501, code_only(501));
        }
    }
    let mut out_sys = Map::new();
    if let Some(h) = cfg.heartbeat_secs {
        out_sys.insert("heartbeat".into(), Value::from(h));
    }
    if let Some(dict) = &cfg.dictionary {
        let client_version = sys.get("dictVersion").and_then(Value::as_str);
        if client_version != Some(dict.version()) {
            out_sys.insert("dict".into(), Value::Object(dict.dict().clone()));
            out_sys.insert("routeToCode".into(), Value::Object(dict.dict().clone()));
            out_sys.insert(
                "codeToRoute".into(),
                Value::Object(dict.code_to_route().clone()),
            );
            out_sys.insert("dictVersion".into(), Value::from(dict.version()));
        }
        out_sys.insert("useDict".into(), Value::Bool(true));
    }
    let mut reply = Map::new();
    reply.insert("code".into(), Value::from(200));
    reply.insert("sys".into(), Value::Object(out_sys));
    (200, Bytes::from(json::to_vec(&Value::Object(reply))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_server_answers_exactly_pomelos_bytes() {
        let (code, body) = respond(
            &HandshakeConfig::default(),
            br#"{"sys":{"type":"js-websocket","version":"0.0.1"}}"#,
        );
        assert_eq!(code, 200);
        assert_eq!(&body[..], br#"{"code":200,"sys":{}}"#);
    }

    #[test]
    fn no_sys_or_garbage_is_500() {
        for input in [&b""[..], b"not json", b"null", b"{}", br#"{"sys":null}"#] {
            let (code, body) = respond(&HandshakeConfig::default(), input);
            assert_eq!(code, 500);
            assert_eq!(&body[..], br#"{"code":500}"#);
        }
    }

    #[test]
    fn old_client_is_501() {
        let cfg = HandshakeConfig {
            min_client_version: Some(parse_version("0.3.0")),
            ..HandshakeConfig::default()
        };
        let (code, body) = respond(&cfg, br#"{"sys":{"version":"0.2.9"}}"#);
        assert_eq!((code, &body[..]), (501, &br#"{"code":501}"#[..]));
        let (code, _) = respond(&cfg, br#"{"sys":{"version":"0.3.0"}}"#);
        assert_eq!(code, 200);
        let (code, _) = respond(&cfg, br#"{"sys":{"version":"1.0"}}"#);
        assert_eq!(code, 200);
    }

    #[test]
    fn heartbeat_and_dictionary_keys_in_pomelo_order() {
        let dict = RouteDictionary::new(["chat.chatHandler.send"], ["onChat"]).unwrap();
        let cfg = HandshakeConfig {
            heartbeat_secs: Some(3),
            dictionary: Some(std::sync::Arc::new(dict.clone())),
            min_client_version: None,
        };
        let (code, body) = respond(&cfg, br#"{"sys":{}}"#);
        assert_eq!(code, 200);
        let text = std::str::from_utf8(&body).unwrap();
        let expected = format!(
            r#"{{"code":200,"sys":{{"heartbeat":3,"dict":{d},"routeToCode":{d},"codeToRoute":{c},"dictVersion":"{v}","useDict":true}}}}"#,
            d = dict.dict_json(),
            c = dict.code_to_route_json(),
            v = dict.version()
        );
        assert_eq!(text, expected);
        // A client with the current version gets no tables.
        let req = format!(r#"{{"sys":{{"dictVersion":"{}"}}}}"#, dict.version());
        let (_, body) = respond(&cfg, req.as_bytes());
        assert_eq!(
            &body[..],
            br#"{"code":200,"sys":{"heartbeat":3,"useDict":true}}"#
        );
    }
}
