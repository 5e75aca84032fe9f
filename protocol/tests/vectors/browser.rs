//! browser_client.json: the stock JS client's session, walked as a client built on this
//! crate would read it.
//!
//! Every step is walked, including the steps where the JS client threw (`error`): there we
//! must give the documented result instead — accept what the JS client could not read (its
//! browser build lacks `protobuf.decodeStr`; it throws on an empty kick body, which
//! `Kick::parse` reads as a kick without a reason), or refuse it with a typed error from the
//! README's vocabulary. Steps where it did not throw must read without error, and what it
//! reported — `callbacks_received`, `events_emitted` — must be exactly what we read from
//! those steps. Sent bytes are checked against our encoders, the heartbeat timers against
//! the interval the server announced, the cached protos against the handshake.

use std::collections::HashMap;

use bytes::BytesMut;
use serde_json::{Value, json};
use shaddock_protocol::protobuf::Protos;
use shaddock_protocol::{
    HandshakeRequest, HandshakeResponse, Kick, Message, MessageRoute, MessageType, Package,
    PackageType, json,
};

use super::replay::Bodies;
use super::{
    ERROR_VOCABULARY, arr, client_handshake_from_json, field, frame_decode, name, package_bytes,
    unhex,
};

/// Protobuf error codes (protobuf.json's vocabulary).
const PROTOBUF_ERRORS: &[&str] = &[
    "unknown_field",
    "truncated",
    "value_out_of_range",
    "missing_required_field",
    "value_type_mismatch",
    "no_schema_for_route",
    "nesting_too_deep",
];

/// Text as the browser build of pomelo-protocol decodes it (`Protocol.strdecode`): one UTF-16
/// unit per 1-, 2- or 3-byte sequence, so 4-byte UTF-8 is misread (PROTOCOL.md §10: "hi 😀"
/// arrives as "hi ߘ") while CESU-8 surrogate pairs come out right. Used to tell what the JS
/// client reports from what the bytes mean; our own reading is the correct one.
fn browser_text(bytes: &[u8]) -> String {
    let at = |i: usize| u16::from(bytes.get(i).copied().unwrap_or(0));
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = at(i);
        if b < 0x80 {
            units.push(b);
            i += 1;
        } else if b < 0xe0 {
            units.push(((b & 0x3f) << 6) + (at(i + 1) & 0x3f));
            i += 2;
        } else {
            units.push(((b & 0x0f) << 12) + ((at(i + 1) & 0x3f) << 6) + (at(i + 2) & 0x3f));
            i += 3;
        }
    }
    String::from_utf16_lossy(&units)
}

/// A JSON body as the JS client reports it: `JSON.parse(strdecode(bytes))`.
fn as_js_reads(bytes: &[u8]) -> Option<Value> {
    serde_json::from_str(&browser_text(bytes)).ok()
}

/// The client side: what the handshake gave, the requests in flight, what was reported.
struct Client {
    bodies: Bodies,
    /// `sys.protos` of the handshake reply (what the JS client caches in localStorage).
    protos_json: Option<Value>,
    heartbeat_ms: Option<u64>,
    pending: HashMap<u32, String>,
    handshakes_sent: usize,
}

impl Client {
    /// The bytes the client sent in one step: one package per WebSocket message.
    fn sent(&mut self, step: &Value, ctx: &str) {
        for sent in arr(step, "sent_hex") {
            let bytes = unhex(sent.as_str().unwrap());
            let (packages, err) = frame_decode(&bytes);
            assert!(
                err.is_none() && packages.len() == 1,
                "{ctx}: one package per message"
            );
            let p = &packages[0];
            match p.kind {
                PackageType::Handshake => {
                    let client = client_handshake_from_json(field(step, "handshake_json"));
                    assert_eq!(
                        package_bytes(PackageType::Handshake, client.to_body()),
                        bytes,
                        "{ctx}: client handshake"
                    );
                    assert!(HandshakeRequest::parse(&p.body).has_sys(), "{ctx}");
                    self.handshakes_sent += 1;
                }
                PackageType::Data => self.sent_message(p, &bytes, ctx),
                PackageType::Heartbeat | PackageType::HandshakeAck => {
                    assert!(p.body.is_empty(), "{ctx}: {} body", p.kind.name())
                }
                PackageType::Kick => panic!("{ctx}: the client sent a kick"),
            }
        }
    }

    fn sent_message(&mut self, p: &Package, bytes: &[u8], ctx: &str) {
        let msg = Message::decode(p.body.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let mut out = BytesMut::new();
        msg.encode_package(&mut out).unwrap();
        assert_eq!(out.to_vec(), bytes, "{ctx}: re-encode");
        let route = match &msg.route {
            MessageRoute::Name(route) => {
                // the JS client compresses every route of the dictionary
                if let Some(dict) = &self.bodies.dict {
                    assert_eq!(
                        dict.code(route.as_str()),
                        None,
                        "{ctx}: {route} is in the dictionary"
                    );
                }
                route.as_str().to_owned()
            }
            MessageRoute::Code(_) => self
                .bodies
                .route_name(&msg.route)
                .unwrap_or_else(|| panic!("{ctx}: code {:?} not in the dictionary", msg.route)),
            MessageRoute::None => panic!("{ctx}: a client message without route"),
        };
        match msg.kind {
            MessageType::Request => {
                self.pending.insert(msg.id, route.clone());
            }
            MessageType::Notify => {}
            other => panic!("{ctx}: the client sent a {}", other.name()),
        }
        // what the server reads: the browser encoder's protobuf (wire type 2 on varints,
        // CESU-8 strings), or JSON.stringify's text
        let body = self
            .bodies
            .client_body(&route, &msg.body)
            .unwrap_or_else(|kind| panic!("{ctx}: body of {route}: {kind}"));
        if !self
            .bodies
            .protos
            .as_ref()
            .is_some_and(|p| p.has_client_route(&route))
        {
            assert_eq!(json::to_vec(&body), msg.body, "{ctx}: JSON.stringify");
        }
    }

    /// One package from the server; `Ok` with what the JS client reports for it
    /// (`("callback", {id, body})` or `("event", {event, arg})`), or the error kind.
    fn received(
        &mut self,
        p: &Package,
        ctx: &str,
    ) -> Result<Option<(&'static str, Value)>, String> {
        match p.kind {
            PackageType::Handshake => {
                let reply = HandshakeResponse::parse(&p.body).map_err(|e| e.kind().to_owned())?;
                assert_eq!(
                    reply.code, 200,
                    "{ctx}: a handshake refusal is not a step this walk knows"
                );
                self.bodies.dict = reply.dictionary().map_err(|e| e.kind().to_owned())?;
                self.protos_json = reply.protos.clone();
                self.bodies.protos = reply
                    .protos
                    .as_ref()
                    .map(|p| Protos::from_handshake(p).expect("sys.protos loads"));
                self.heartbeat_ms = reply.heartbeat.map(|h| h.as_millis() as u64);
                Ok(Some(("event", json!({"event": "init callback"}))))
            }
            PackageType::Heartbeat | PackageType::HandshakeAck => {
                assert!(p.body.is_empty(), "{ctx}");
                Ok(None)
            }
            PackageType::Kick => {
                // ours: always a kick (Kick::parse); the JS client emits the parsed JSON
                let kick = Kick::parse(&p.body);
                let arg = match json::from_slice(&p.body) {
                    Ok(value) => {
                        assert_eq!(kick.to_body(), p.body, "{ctx}: kick body");
                        assert_eq!(
                            value["reason"].as_str(),
                            Some(kick.reason.as_str()),
                            "{ctx}"
                        );
                        as_js_reads(&p.body).unwrap_or(value)
                    }
                    Err(_) => json!({"reason": kick.reason}),
                };
                Ok(Some(("event", json!({"event": "onKick", "arg": arg}))))
            }
            PackageType::Data => {
                let msg = Message::decode(p.body.clone()).map_err(|e| e.kind().to_owned())?;
                match msg.kind {
                    MessageType::Response => {
                        let route = self
                            .pending
                            .remove(&msg.id)
                            .unwrap_or_else(|| panic!("{ctx}: response {} to no request", msg.id));
                        let body = self.reported_body(&route, &msg.body, ctx)?;
                        Ok(Some(("callback", json!({"id": msg.id, "body": body}))))
                    }
                    MessageType::Push => {
                        let route = self
                            .bodies
                            .route_name(&msg.route)
                            .ok_or_else(|| "unknown_route_code".to_owned())?;
                        let body = self.reported_body(&route, &msg.body, ctx)?;
                        Ok(Some(("event", json!({"event": route, "arg": body}))))
                    }
                    other => panic!("{ctx}: the server sent a {}", other.name()),
                }
            }
        }
    }
}

impl Client {
    /// Read a server body our way (protobuf re-encodes to the same bytes, JSON re-stringifies
    /// to the same text), then give what the JS client reports for it: for JSON, the browser's
    /// text decoding of the same bytes.
    fn reported_body(&self, route: &str, body: &[u8], ctx: &str) -> Result<Value, String> {
        let ours = self.bodies.try_server_body(route, body, ctx)?;
        let protobuf = self
            .bodies
            .protos
            .as_ref()
            .is_some_and(|p| p.has_server_route(route));
        if protobuf || body.is_empty() {
            return Ok(ours);
        }
        Ok(as_js_reads(body).unwrap_or(ours))
    }
}

pub(super) fn walk(file: &Value) {
    assert!(field(file, "client").is_string());
    let steps = arr(file, "steps");
    assert!(!steps.is_empty());
    let mut client = Client {
        bodies: Bodies {
            dict: None,
            protos: None,
        },
        protos_json: None,
        heartbeat_ms: None,
        pending: HashMap::new(),
        handshakes_sent: 0,
    };
    // what the JS client reported, from the steps where it did not throw
    let mut callbacks = Vec::new();
    let mut events = Vec::new();
    let mut js_threw = 0;
    for step in steps {
        let ctx = format!("browser_client step {:?}", name(step));
        client.sent(step, &ctx);
        let error = match step.get("error") {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) => Some(e.as_str()),
            Some(other) => panic!("{ctx}: error {other}"),
        };
        if let Some(received) = step.get("received_hex") {
            let received = received.as_str().unwrap();
            let (packages, err) = frame_decode(&unhex(received));
            let mut results: Vec<Result<Option<(&str, Value)>, String>> =
                packages.iter().map(|p| client.received(p, &ctx)).collect();
            if let Some(err) = err {
                results.push(Err(err.kind().to_owned()));
            }
            for result in results {
                match (result, error) {
                    (Ok(report), None) => match report {
                        Some(("callback", v)) => callbacks.push(v),
                        Some((_, v)) => events.push(v),
                        None => {}
                    },
                    (Err(kind), None) => panic!("{ctx}: the JS client read it, we refused: {kind}"),
                    // The JS client threw: we accept (and report nothing the JS client
                    // reported) or refuse with a typed error.
                    (Ok(_), Some(_)) => {}
                    (Err(kind), Some(js)) => assert!(
                        ERROR_VOCABULARY.contains(&kind.as_str())
                            || PROTOBUF_ERRORS.contains(&kind.as_str()),
                        "{ctx}: JS threw {js:?}; ours {kind:?} is not a typed error"
                    ),
                }
            }
        } else {
            assert!(error.is_none(), "{ctx}: an error without received bytes");
        }
        if error.is_some() {
            js_threw += 1;
        }
        // The JS client's timers: heartbeat H after a received heartbeat, timeout 2H.
        for timer in arr(step, "timers_scheduled_ms") {
            let h = client
                .heartbeat_ms
                .expect("timers need the announced heartbeat");
            let t = timer.as_u64().unwrap();
            assert!(
                t == h || t == 2 * h,
                "{ctx}: timer {t} ms, heartbeat {h} ms"
            );
        }
    }
    eprintln!("browser_client: {js_threw} steps where the JS client threw, walked");
    let js_callbacks = Value::Array(arr(file, "callbacks_received").to_vec());
    assert_eq!(
        json::to_string(&Value::Array(callbacks)),
        json::to_string(&js_callbacks),
        "callbacks_received"
    );
    let js_events = Value::Array(arr(file, "events_emitted").to_vec());
    assert_eq!(
        json::to_string(&Value::Array(events)),
        json::to_string(&js_events),
        "events_emitted"
    );
    assert!(client.handshakes_sent > 0);
    if let Some(cached) = file.get("localStorage_protos_after_handshake") {
        let sent = client
            .protos_json
            .as_ref()
            .expect("the handshake carried protos");
        assert_eq!(
            json::to_string(cached),
            json::to_string(sent),
            "localStorage protos"
        );
        let loaded = Protos::from_handshake(cached).unwrap();
        assert_eq!(
            json::to_string(&loaded.handshake_json()),
            json::to_string(cached)
        );
        if let Some(reconnect) = file.get("reconnect_with_cached_protos") {
            client.sent(reconnect, "reconnect_with_cached_protos");
            assert_eq!(
                reconnect["handshake_json"]["sys"]["protoVersion"].as_str(),
                Some(loaded.version()),
                "the client presents the cached version"
            );
        }
    }
    // What the JS client printed: informational, but it must be text.
    for line in arr(file, "console_output") {
        assert!(line.is_string(), "console_output {line}");
    }
}

#[test]
fn browser_text_misreads_4_byte_utf8_as_documented() {
    // PROTOCOL.md §10: "hi 😀" (4-byte UTF-8) arrives as "hi ߘ"; CESU-8 pairs read fine.
    assert_eq!(browser_text("\"hi 😀\"".as_bytes()), "\"hi \u{7d8}\"");
    assert_eq!(browser_text(b"\xed\xa0\xbd\xed\xb8\x80"), "😀");
    assert_eq!(browser_text("héllo 世界".as_bytes()), "héllo 世界");
}
