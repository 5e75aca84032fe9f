//! Answering a client's HANDSHAKE (PROTOCOL.md §5.2): codes 200, 500 and 501. The 200 reply
//! is built by `shaddock_protocol::handshake::ServerHandshake` (pomelo's bytes and key order).

use bytes::Bytes;
use serde_json::Value;
use shaddock_protocol::handshake::{
    HandshakeCode, HandshakeRequest, ServerHandshake, handshake_error_body,
};

/// What the frontend tells a client in the handshake.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeConfig {
    /// Heartbeat, dictionary and protos, prepared once.
    pub(crate) server: ServerHandshake,
    /// Clients whose `sys.version` is below this get 501 (pomelo's `checkClient`).
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

/// Builds the reply to a HANDSHAKE body: `(code, reply body)`.
pub(crate) fn respond(cfg: &HandshakeConfig, body: &[u8]) -> (u16, Bytes) {
    // "Any failure — invalid JSON, empty body, null ... — is handled as if the client had sent
    // {}" (§5.2 step 1), and "No truthy sys → reply {"code":500}" (step 2).
    let request = HandshakeRequest::parse(body);
    if !request.has_sys() {
        let code = HandshakeCode::UseError;
        return (code.as_u16(), handshake_error_body(code));
    }
    if let Some(min) = &cfg.min_client_version {
        let version = match request.version() {
            Some(Value::String(s)) => parse_version(s),
            Some(Value::Number(n)) => parse_version(&n.to_string()),
            _ => Vec::new(),
        };
        if version_below(&version, min) {
            let code = HandshakeCode::OldClient;
            return (code.as_u16(), handshake_error_body(code));
        }
    }
    (200, cfg.server.accept(&request, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaddock_protocol::RouteDictionary;
    use shaddock_protocol::handshake::Flavor;
    use std::time::Duration;

    fn plain() -> HandshakeConfig {
        HandshakeConfig {
            server: ServerHandshake::new(None, None, None, Flavor::Pomelo),
            min_client_version: None,
        }
    }

    #[test]
    fn plain_server_answers_exactly_pomelos_bytes() {
        let (code, body) = respond(
            &plain(),
            br#"{"sys":{"type":"js-websocket","version":"0.0.1"}}"#,
        );
        assert_eq!(code, 200);
        assert_eq!(&body[..], br#"{"code":200,"sys":{}}"#);
    }

    #[test]
    fn no_sys_or_garbage_is_500() {
        for input in [&b""[..], b"not json", b"null", b"{}", br#"{"sys":null}"#] {
            let (code, body) = respond(&plain(), input);
            assert_eq!(code, 500);
            assert_eq!(&body[..], br#"{"code":500}"#);
        }
    }

    #[test]
    fn old_client_is_501() {
        let cfg = HandshakeConfig {
            min_client_version: Some(parse_version("0.3.0")),
            ..plain()
        };
        let (code, body) = respond(&cfg, br#"{"sys":{"version":"0.2.9"}}"#);
        assert_eq!((code, &body[..]), (501, &br#"{"code":501}"#[..]));
        let (code, _) = respond(&cfg, br#"{"sys":{"version":"0.3.0"}}"#);
        assert_eq!(code, 200);
        let (code, _) = respond(&cfg, br#"{"sys":{"version":"1.0"}}"#);
        assert_eq!(code, 200);
        let (code, _) = respond(&cfg, br#"{"sys":{}}"#);
        assert_eq!(code, 501, "no version counts as below");
    }

    #[test]
    fn heartbeat_and_dictionary_keys_in_pomelo_order() {
        let dict = RouteDictionary::new(["chat.chatHandler.send"], ["onChat"]).unwrap();
        let cfg = HandshakeConfig {
            server: ServerHandshake::new(
                Some(Duration::from_secs(3)),
                Some(&dict),
                None,
                Flavor::Pomelo,
            ),
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
