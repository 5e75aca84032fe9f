//! Handshake bodies (package type 01) and the kick body (package type 05).
//!
//! Server side (PROTOCOL.md §5.2), the order pomelo follows:
//! 1. [`HandshakeRequest::parse`] the client body — leniently: anything unreadable counts as
//!    `{}`;
//! 2. no truthy `sys` → reply [`HandshakeCode::UseError`] (500) and disconnect;
//! 3. an application `checkClient(type, version)` hook refuses → [`HandshakeCode::OldClient`]
//!    (501) and disconnect;
//! 4. an application handshake hook fails → 500 and disconnect, or returns user data;
//! 5. [`ServerHandshake::accept`] builds the 200 reply: `{"code":200,"sys":{..},"user":..}`
//!    with pomelo's exact key order, omitting `dict`/`protos` when the client presented the
//!    current versions.
//!
//! Error replies are [`handshake_error_body`]: just `{"code":500}` / `{"code":501}`.
//!
//! Client side: [`ClientHandshake`] writes the request as the stock JS client does;
//! [`HandshakeResponse::parse`] reads the server's reply.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::dictionary::RouteDictionary;
use crate::protobuf::protos_version;
use crate::{Error, json};

/// The `code` of a handshake reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum HandshakeCode {
    /// 200: accepted; the server waits for HANDSHAKE_ACK, the client stores dict/protos and
    /// acks.
    Ok = 200,
    /// 500: the request had no truthy `sys`, was not JSON, or the application's handshake
    /// hook failed; the server disconnects.
    UseError = 500,
    /// 501: the application's `checkClient(type, version)` refused the client ("client
    /// version not fullfill" in the JS client); the server disconnects.
    OldClient = 501,
}

impl HandshakeCode {
    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one of pomelo's.
    pub fn from_u16(code: u16) -> Option<Self> {
        match code {
            200 => Some(Self::Ok),
            500 => Some(Self::UseError),
            501 => Some(Self::OldClient),
            _ => None,
        }
    }
}

/// The body of an error reply: exactly `{"code":<code>}`.
pub fn handshake_error_body(code: HandshakeCode) -> Bytes {
    Bytes::from(format!("{{\"code\":{}}}", code.as_u16()))
}

/// A client's handshake request as the server sees it, parsed leniently.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HandshakeRequest {
    /// The whole parsed body; `{}` when the body was not JSON.
    pub raw: Value,
}

impl HandshakeRequest {
    /// Parse a request body the way pomelo does: invalid JSON, an empty body or anything
    /// else unreadable is treated as `{}` (which then fails the `sys` check).
    pub fn parse(body: &[u8]) -> Self {
        let raw = json::from_slice(body).unwrap_or_else(|_| Value::Object(Map::new()));
        Self { raw }
    }

    /// `msg.sys` when truthy (pomelo's `if (!msg.sys)` check).
    pub fn sys(&self) -> Option<&Value> {
        self.raw.get("sys").filter(|sys| json::is_truthy(sys))
    }

    /// Whether the request passes pomelo's first check; if not, reply 500.
    pub fn has_sys(&self) -> bool {
        self.sys().is_some()
    }

    fn sys_field(&self, key: &str) -> Option<&Value> {
        self.sys().and_then(|sys| sys.get(key))
    }

    /// `sys.type`, the client kind (`js-websocket`, `unity-socket`, ...), for `checkClient`.
    pub fn client_type(&self) -> Option<&Value> {
        self.sys_field("type")
    }

    /// `sys.version`, the client library version, for `checkClient`.
    pub fn version(&self) -> Option<&Value> {
        self.sys_field("version")
    }

    /// `sys.protoVersion`: the version of the protobuf schemas the client has cached (the
    /// JS client sends `0` when it has none).
    pub fn proto_version(&self) -> Option<&Value> {
        self.sys_field("protoVersion")
    }

    /// `sys.dictVersion`: the version of the cached route dictionary (libpomelo2).
    pub fn dict_version(&self) -> Option<&Value> {
        self.sys_field("dictVersion")
    }

    /// `sys.rsa`: `{rsa_n, rsa_e}` when the client signs its messages.
    pub fn rsa(&self) -> Option<&Value> {
        self.sys_field("rsa")
    }

    /// `user`: free application data for the handshake hook.
    pub fn user(&self) -> Option<&Value> {
        self.raw.get("user")
    }
}

/// The pomelo-protobuf schemas announced in the handshake: the parsed `server` and
/// `client` objects and their `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeProtos {
    /// Parsed serverProtos (what the server encodes with).
    pub server: Value,
    /// Parsed clientProtos (what the server decodes with).
    pub client: Value,
    /// `protos.version`.
    pub version: String,
}

impl HandshakeProtos {
    /// HandshakeProtos with pomelo's version: base64 MD5 of
    /// `JSON.stringify(client) + JSON.stringify(server)`.
    pub fn new(server: Value, client: Value) -> Self {
        let version = protos_version(&client, &server);
        Self {
            server,
            client,
            version,
        }
    }

    /// HandshakeProtos with a version computed elsewhere.
    pub fn with_version(server: Value, client: Value, version: impl Into<String>) -> Self {
        Self {
            server,
            client,
            version: version.into(),
        }
    }
}

/// Which reference server's reply to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// pomelo 2.x: `dict`, `routeToCode`, `codeToRoute`, `dictVersion` (the superset
    /// libpomelo2 needs; recommended).
    #[default]
    Pomelo,
    /// pinus: `dict` and `dictVersion` only.
    Pinus,
}

/// The server's handshake settings, with the JSON fragments of its reply prepared once.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    /// `"heartbeat":<secs>` or empty.
    heartbeat: String,
    /// `"dict":..,"routeToCode":..,"codeToRoute":..,"dictVersion":".."` or empty.
    dict_part: String,
    /// The dictionary version to compare with the client's `sys.dictVersion`; `None` when
    /// the dictionary is disabled.
    dict_version: Option<String>,
    /// `"protos":{"server":..,"client":..,"version":".."}` or empty.
    protos_part: String,
    /// The protos version to compare with `sys.protoVersion`; `None` when protobuf is off.
    proto_version: Option<String>,
}

impl ServerHandshake {
    /// Settings for a connector: heartbeat interval (announced in seconds; `None` = no
    /// heartbeat), route dictionary (`useDict`), protobuf schemas (`useProtobuf`).
    pub fn new(
        heartbeat: Option<Duration>,
        dictionary: Option<&RouteDictionary>,
        protos: Option<&HandshakeProtos>,
        flavor: Flavor,
    ) -> Self {
        let heartbeat = heartbeat
            .map(|interval| {
                let mut out = b"\"heartbeat\":".to_vec();
                json::write_f64(interval.as_secs_f64(), &mut out);
                String::from_utf8(out).unwrap_or_default()
            })
            .unwrap_or_default();
        let dict_part = dictionary
            .map(|dict| {
                let mut out = format!("\"dict\":{}", dict.dict_json());
                if flavor == Flavor::Pomelo {
                    out.push_str(",\"routeToCode\":");
                    out.push_str(dict.dict_json());
                    out.push_str(",\"codeToRoute\":");
                    out.push_str(dict.code_to_route_json());
                }
                out.push_str(",\"dictVersion\":");
                out.push_str(&json::to_string(&Value::from(dict.version())));
                out
            })
            .unwrap_or_default();
        let protos_part = protos
            .map(|protos| {
                let mut out = b"\"protos\":{\"server\":".to_vec();
                json::write(&protos.server, &mut out);
                out.extend_from_slice(b",\"client\":");
                json::write(&protos.client, &mut out);
                out.extend_from_slice(b",\"version\":");
                json::write_str(&protos.version, &mut out);
                out.push(b'}');
                String::from_utf8(out).unwrap_or_default()
            })
            .unwrap_or_default();
        Self {
            heartbeat,
            dict_part,
            dict_version: dictionary.map(|d| d.version().to_owned()),
            protos_part,
            proto_version: protos.map(|p| p.version.clone()),
        }
    }

    /// The 200 reply for `request` (which must have passed [`HandshakeRequest::has_sys`]
    /// and the application hooks). `user` is what the application's handshake hook
    /// returned; it is written only when truthy, as pomelo does.
    pub fn accept(&self, request: &HandshakeRequest, user: Option<&Value>) -> Bytes {
        let mut out = Vec::with_capacity(
            48 + self.heartbeat.len() + self.dict_part.len() + self.protos_part.len(),
        );
        out.extend_from_slice(b"{\"code\":200,\"sys\":{");
        let mut first = true;
        let mut part = |text: &str, out: &mut Vec<u8>| {
            if text.is_empty() {
                return;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(text.as_bytes());
        };
        part(&self.heartbeat, &mut out);
        if let Some(version) = &self.dict_version {
            // pomelo: `if (!msg.sys.dictVersion || msg.sys.dictVersion !== version)` → send
            if !same_version(request.dict_version(), version) {
                part(&self.dict_part, &mut out);
            }
            part("\"useDict\":true", &mut out);
        }
        if let Some(version) = &self.proto_version {
            if !same_version(request.proto_version(), version) {
                part(&self.protos_part, &mut out);
            }
            part("\"useProto\":true", &mut out);
        }
        out.push(b'}');
        if let Some(user) = user.filter(|u| json::is_truthy(u)) {
            out.extend_from_slice(b",\"user\":");
            json::write(user, &mut out);
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// JS strict equality of the client's version with ours (a string).
fn same_version(client: Option<&Value>, ours: &str) -> bool {
    matches!(client, Some(Value::String(v)) if v == ours)
}

/// The handshake request a client sends (client side).
///
/// Keys are written in the order `sys` {`type`, `version`, `rsa`, `dictVersion`,
/// `protoVersion`}, `user`; absent fields are omitted. The stock JS client sends
/// `{"sys":{"type":"js-websocket","version":"0.0.1","rsa":{},"protoVersion":0},"user":{..}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientHandshake {
    /// `sys.type`.
    pub client_type: String,
    /// `sys.version`.
    pub version: String,
    /// `sys.rsa`; the JS client always sends `{}`.
    pub rsa: Option<Value>,
    /// `sys.dictVersion` of a cached dictionary.
    pub dict_version: Option<String>,
    /// `sys.protoVersion`: the cached protos' version, or `0` when none (JS client).
    pub proto_version: Option<Value>,
    /// `user` data for the server's handshake hook.
    pub user: Option<Value>,
}

impl Default for ClientHandshake {
    /// What the stock JS websocket client sends with no cache and no user data.
    fn default() -> Self {
        Self {
            client_type: "js-websocket".to_owned(),
            version: "0.0.1".to_owned(),
            rsa: Some(Value::Object(Map::new())),
            dict_version: None,
            proto_version: Some(Value::from(0)),
            user: None,
        }
    }
}

impl ClientHandshake {
    /// The request body (JSON text).
    pub fn to_body(&self) -> Bytes {
        let mut out = b"{\"sys\":{\"type\":".to_vec();
        json::write_str(&self.client_type, &mut out);
        out.extend_from_slice(b",\"version\":");
        json::write_str(&self.version, &mut out);
        if let Some(rsa) = &self.rsa {
            out.extend_from_slice(b",\"rsa\":");
            json::write(rsa, &mut out);
        }
        if let Some(dict_version) = &self.dict_version {
            out.extend_from_slice(b",\"dictVersion\":");
            json::write_str(dict_version, &mut out);
        }
        if let Some(proto_version) = &self.proto_version {
            out.extend_from_slice(b",\"protoVersion\":");
            json::write(proto_version, &mut out);
        }
        out.push(b'}');
        if let Some(user) = &self.user {
            out.extend_from_slice(b",\"user\":");
            json::write(user, &mut out);
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// A server's handshake reply as the client reads it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HandshakeResponse {
    /// `code` (200, 500, 501; pitaya 400). See [`HandshakeCode::from_u16`].
    pub code: u16,
    /// `sys.heartbeat` (seconds) as a duration; `None` when absent (no heartbeat).
    pub heartbeat: Option<Duration>,
    /// `sys.dict` (route → code).
    pub dict: Option<Map<String, Value>>,
    /// `sys.codeToRoute` (pomelo only).
    pub code_to_route: Option<Map<String, Value>>,
    /// `sys.dictVersion`.
    pub dict_version: Option<String>,
    /// `sys.useDict`.
    pub use_dict: bool,
    /// `sys.protos` {server, client, version}.
    pub protos: Option<Value>,
    /// `sys.useProto`.
    pub use_proto: bool,
    /// `user`.
    pub user: Option<Value>,
}

impl HandshakeResponse {
    /// Parse a reply body.
    ///
    /// # Errors
    /// [`Error::InvalidJson`] for non-JSON; [`Error::InvalidBody`] when `code` is missing or
    /// not a number, or a `sys` field has the wrong type.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidBody {
            what: "handshake response",
            reason: reason.to_owned(),
        };
        let value = json::from_slice(body)?;
        let obj = value.as_object().ok_or_else(|| bad("not an object"))?;
        let code = obj
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .ok_or_else(|| bad("`code` missing or not a number"))?;
        let mut out = Self {
            code,
            user: obj.get("user").cloned(),
            ..Self::default()
        };
        let Some(sys) = obj.get("sys") else {
            return Ok(out);
        };
        let sys = sys
            .as_object()
            .ok_or_else(|| bad("`sys` is not an object"))?;
        if let Some(hb) = sys.get("heartbeat") {
            let secs = hb
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                .ok_or_else(|| bad("`sys.heartbeat` is not a number of seconds"))?;
            out.heartbeat = Some(Duration::from_secs_f64(secs));
        }
        let object = |key: &str| -> Result<Option<Map<String, Value>>, Error> {
            match sys.get(key) {
                None => Ok(None),
                Some(Value::Object(map)) => Ok(Some(map.clone())),
                Some(_) => Err(bad(&format!("`sys.{key}` is not an object"))),
            }
        };
        out.dict = object("dict")?;
        out.code_to_route = object("codeToRoute")?;
        out.dict_version = sys
            .get("dictVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.use_dict = sys.get("useDict").is_some_and(json::is_truthy);
        out.protos = sys.get("protos").cloned();
        out.use_proto = sys.get("useProto").is_some_and(json::is_truthy);
        Ok(out)
    }

    /// The code as one of pomelo's, if it is.
    pub fn handshake_code(&self) -> Option<HandshakeCode> {
        HandshakeCode::from_u16(self.code)
    }

    /// The route dictionary the reply carries, if any.
    ///
    /// # Errors
    /// As [`RouteDictionary::from_handshake`].
    pub fn dictionary(&self) -> Result<Option<RouteDictionary>, Error> {
        self.dict
            .as_ref()
            .map(|dict| RouteDictionary::from_handshake(dict, self.code_to_route.as_ref()))
            .transpose()
    }
}

/// The body of a KICK package: `{"reason": ...}` from pomelo and pinus, empty from pitaya,
/// plain text from some others (see [`Kick::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    /// Why the server closes the connection (`kick` by default in pomelo).
    pub reason: String,
}

impl Kick {
    /// A kick with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// `{"reason":"<reason>"}`.
    pub fn to_body(&self) -> Bytes {
        let mut out = b"{\"reason\":".to_vec();
        json::write_str(&self.reason, &mut out);
        out.push(b'}');
        Bytes::from(out)
    }

    /// Read a kick body (client side). Every body is a kick — the package type says so, and
    /// the connection ends either way; only the reason depends on the body:
    ///
    /// | body | reason |
    /// |---|---|
    /// | empty or blank (pitaya sends an empty body) | none: `""` |
    /// | a JSON object (pomelo, pinus) | its `reason` if that is a string, else `""` |
    /// | a JSON string | that string |
    /// | anything else: plain text (some servers), other JSON | the text itself, decoded as [`json::decode_text`] |
    ///
    /// (The stock JS client throws on an empty or non-JSON kick body and never reports the
    /// kick; a client built on this reports it.)
    pub fn parse(body: &[u8]) -> Self {
        let text = json::decode_text(body);
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        if trimmed.is_empty() {
            return Self::new("");
        }
        let reason = match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(map)) => map
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Ok(Value::String(reason)) => reason,
            _ => text.into_owned(),
        };
        Self { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_request() {
        for body in [
            &b""[..],
            b"{\"sys\":",
            b"null",
            b"[1]",
            b"\"s\"",
            b"{\"sys\":0}",
        ] {
            assert!(!HandshakeRequest::parse(body).has_sys(), "{body:?}");
        }
        let req =
            HandshakeRequest::parse(br#"{"sys":{"type":"t","version":"1","protoVersion":0}}"#);
        assert!(req.has_sys());
        assert_eq!(req.client_type(), Some(&json!("t")));
        assert_eq!(req.proto_version(), Some(&json!(0)));
        assert_eq!(req.user(), None);
        // a string sys is truthy in JS: accepted, with no fields
        assert!(HandshakeRequest::parse(br#"{"sys":"x"}"#).has_sys());
    }

    #[test]
    fn plain_server_reply() {
        let server = ServerHandshake::new(None, None, None, Flavor::Pomelo);
        let req = HandshakeRequest::parse(br#"{"sys":{}}"#);
        assert_eq!(&server.accept(&req, None)[..], br#"{"code":200,"sys":{}}"#);
        assert_eq!(
            &server.accept(&req, Some(&json!({"a":1})))[..],
            br#"{"code":200,"sys":{},"user":{"a":1}}"#
        );
        assert_eq!(
            &server.accept(&req, Some(&json!(0)))[..],
            br#"{"code":200,"sys":{}}"#
        );
        assert_eq!(
            &handshake_error_body(HandshakeCode::OldClient)[..],
            br#"{"code":501}"#
        );
    }

    #[test]
    fn fractional_heartbeat() {
        let server =
            ServerHandshake::new(Some(Duration::from_millis(1500)), None, None, Flavor::Pinus);
        let req = HandshakeRequest::parse(br#"{"sys":{}}"#);
        assert_eq!(
            &server.accept(&req, None)[..],
            br#"{"code":200,"sys":{"heartbeat":1.5}}"#
        );
    }

    #[test]
    fn client_side_round_trip() {
        let dict = RouteDictionary::new(["a.b.c"], ["onX"]).unwrap();
        let server = ServerHandshake::new(
            Some(Duration::from_secs(3)),
            Some(&dict),
            None,
            Flavor::Pomelo,
        );
        let body = ClientHandshake::default().to_body();
        assert_eq!(
            &body[..],
            br#"{"sys":{"type":"js-websocket","version":"0.0.1","rsa":{},"protoVersion":0}}"#
        );
        let reply = server.accept(&HandshakeRequest::parse(&body), None);
        let parsed = HandshakeResponse::parse(&reply).unwrap();
        assert_eq!(parsed.handshake_code(), Some(HandshakeCode::Ok));
        assert_eq!(parsed.heartbeat, Some(Duration::from_secs(3)));
        assert!(parsed.use_dict && !parsed.use_proto);
        assert_eq!(parsed.dict_version.as_deref(), Some(dict.version()));
        let client_dict = parsed.dictionary().unwrap().unwrap();
        assert_eq!(client_dict.code("onX"), Some(2));
        assert!(HandshakeResponse::parse(b"{}").is_err());
        assert!(HandshakeResponse::parse(b"{\"code\":200,\"sys\":1}").is_err());
    }

    #[test]
    fn kick_body() {
        let kick = Kick::new("kick");
        assert_eq!(&kick.to_body()[..], br#"{"reason":"kick"}"#);
        assert_eq!(Kick::parse(&kick.to_body()), kick);
    }

    /// pitaya kicks with an empty body, other servers with plain text: both are kicks.
    #[test]
    fn kick_bodies_that_are_not_pomelo_json() {
        let table: &[(&[u8], &str)] = &[
            // pitaya: no body, no reason
            (b"", ""),
            (b" \r\n\t", ""),
            // plain text: the text is the reason (read as Node reads text)
            (b"server shutting down", "server shutting down"),
            (b"bye \xff", "bye \u{fffd}"),
            (b"{\"reason\":", "{\"reason\":"),
            (b"42", "42"),
            (b"null", "null"),
            // JSON
            (br#"{"reason":"full"}"#, "full"),
            (br#"{"reason":"caf\u00e9"}"#, "café"),
            (br#"{}"#, ""),
            (br#"{"reason":5}"#, ""),
            (br#""maintenance""#, "maintenance"),
        ];
        for &(body, reason) in table {
            assert_eq!(Kick::parse(body), Kick::new(reason), "{body:?}");
        }
    }
}
