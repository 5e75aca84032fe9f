//! The live transcripts replayed through our server side: every client→server event is fed
//! to a [`ServerConnection`] (through the stream decoder for TCP, one WebSocket message at a
//! time for WebSocket) with the handshake answered by [`ServerHandshake`]; every package the
//! recorded server sent is matched:
//!
//! - HANDSHAKE and HEARTBEAT (the protocol's own replies) must be exactly what our connection
//!   queued, in order, and nothing more;
//! - KICK (the application kicked) is repeated through [`ServerConnection::kick`] and must
//!   give the same bytes;
//! - DATA (application replies) must decode: responses answer a request we decoded, bodies
//!   are protobuf for the routes of the server schema (re-encoding gives the same bytes) and
//!   JSON otherwise (re-stringified byte for byte);
//! - `closed_by_server`: our connection is closed there too (after its timer, for timeouts);
//! - every observation of the scenario is checked against what our side did
//!   ([`check_observation`]; an unknown observation fails).
//!
//! Where PROTOCOL.md §12 tells the Rust server to differ from pomelo — several packages in
//! one WebSocket message are processed in order (pomelo closes); a WebSocket message shorter
//! than its header is `truncated_body` and closes (pomelo zero-pads) — the replay checks that
//! we do exactly that and stops comparing the rest of that recording, which shows pomelo's
//! other path.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use shaddock_protocol::connection::{
    CloseReason, ConnectionConfig, Event, ServerConnection, State,
};
use shaddock_protocol::package::{FramePackages, MAX_BODY_LEN};
use shaddock_protocol::protobuf::Protos;
use shaddock_protocol::{
    Flavor, HandshakeResponse, Kick, Message, MessageRoute, MessageType, Package, PackageDecoder,
    PackageType, Route, RouteDictionary, json,
};

use super::{ServerSetup, arr, check_stringify, field, name, server_reply, str_field, unhex};

/// `scenarios[].transport`.
pub(super) const TRANSPORTS: &[&str] = &["tcp", "ws"];
/// `scenarios[].events[].dir`.
pub(super) const EVENT_DIRS: &[&str] = &["client->server", "server->client", "closed_by_server"];
/// `scenarios[].events[].ws_frame`: pomelo clients send binary messages only (a text message
/// would close the connection, PROTOCOL.md §2.3).
pub(super) const WS_FRAMES: &[&str] = &["binary"];

/// Faults on which we close where pomelo carries on (PROTOCOL.md §12, "Rust server SHOULD").
const CLOSES_WHERE_POMELO_DOES_NOT: &[&str] = &["truncated_body"];

/// Bodies as the scenario's server has them: its dictionary and protobuf schemas.
pub(super) struct Bodies {
    pub(super) dict: Option<RouteDictionary>,
    pub(super) protos: Option<Protos>,
}

impl Bodies {
    pub(super) fn from_config(config: &Value, setup: &ServerSetup) -> Self {
        let protos = setup.protos.as_ref().map(|_| {
            Protos::from_files(
                field(config, "serverProtos_json"),
                field(config, "clientProtos_json"),
            )
            .expect("the server's protobuf files load")
        });
        Self {
            dict: setup.dictionary.clone(),
            protos,
        }
    }

    /// The route name of a message route (codes through the dictionary).
    pub(super) fn route_name(&self, route: &MessageRoute) -> Option<String> {
        match route {
            MessageRoute::Name(name) => Some(name.as_str().to_owned()),
            MessageRoute::Code(code) => self
                .dict
                .as_ref()
                .and_then(|d| d.route(*code))
                .map(|r| r.as_str().to_owned()),
            MessageRoute::None => None,
        }
    }

    /// A body the server sent on `route`: protobuf when the server schema has the route
    /// (pomelo's encoder is byte-identical to ours: re-encoding gives the same bytes), JSON
    /// otherwise (re-stringified byte for byte). An empty body is what pomelo sends when its
    /// encoder gave nothing.
    pub(super) fn server_body(&self, route: &str, body: &[u8], ctx: &str) -> Value {
        self.try_server_body(route, body, ctx)
            .unwrap_or_else(|kind| panic!("{ctx}: body of {route}: {kind}"))
    }

    /// [`Bodies::server_body`], with a body that does not decode as the error kind.
    pub(super) fn try_server_body(
        &self,
        route: &str,
        body: &[u8],
        ctx: &str,
    ) -> Result<Value, String> {
        if let Some(protos) = self.protos.as_ref().filter(|p| p.has_server_route(route)) {
            let value = protos
                .server()
                .decode(route, body)
                .map_err(|e| e.code().to_owned())?;
            if !body.is_empty() {
                let again = protos.server().encode(route, &value).unwrap();
                assert_eq!(
                    hex::encode(&again),
                    hex::encode(body),
                    "{ctx}: {route} re-encoded"
                );
            }
            Ok(value)
        } else if body.is_empty() {
            Ok(Value::Null)
        } else {
            json::from_slice(body).map_err(|e| e.kind().to_owned())?;
            Ok(check_stringify(body, ctx))
        }
    }

    /// A body a client sent on `route`, as the server reads it: protobuf with the client
    /// schema, or JSON; `Err` (the error kind) when it does not decode (pomelo then hands the
    /// handler `{}`).
    pub(super) fn client_body(&self, route: &str, body: &[u8]) -> Result<Value, String> {
        if let Some(protos) = self.protos.as_ref().filter(|p| p.has_client_route(route)) {
            protos
                .client()
                .decode(route, body)
                .map_err(|e| e.code().to_owned())
        } else {
            json::from_slice(body).map_err(|e| e.kind().to_owned())
        }
    }
}

/// What happened to one client package.
struct Fed {
    kind: PackageType,
    before: State,
    sent: Vec<Package>,
}

/// How our server classified one client message.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Message::decode refused it, or its route code is not in the dictionary.
    Dropped,
    /// Decoded, but the route is not `server.handler.method`.
    InvalidRoute,
    /// Would reach a handler.
    Handled(String),
}

struct ClientMessage {
    msg: Option<Message>,
    outcome: Outcome,
    body_ok: bool,
}

struct Replay<'a> {
    ctx: String,
    flavor: Flavor,
    setup: &'a ServerSetup,
    bodies: &'a Bodies,
    conn: ServerConnection,
    now: Instant,
    decoder: PackageDecoder,
    src: BytesMut,
    /// Protocol packages we queued that the recording has not shown yet.
    ours: VecDeque<Package>,
    fed: Vec<Fed>,
    /// Our handshake replies.
    replies: Vec<Bytes>,
    messages: Vec<ClientMessage>,
    /// Our equivalent of pomelo's server log (observation `server_log`).
    log: Vec<Value>,
    /// id → route of the requests that reach a handler.
    requests: HashMap<u32, String>,
    /// Ids of the recorded responses.
    responses: Vec<u32>,
    /// The typed error that made us close on the client's bytes.
    fault: Option<String>,
    /// We followed PROTOCOL.md §12 where pomelo does something else: the rest of the
    /// recording is not ours to compare.
    diverged: Option<String>,
    closed: Option<CloseReason>,
    ack_at: Option<Instant>,
    closed_at: Option<Instant>,
    kicked: bool,
    /// Packages sent in answer to the last client event.
    last_event_sent: Vec<Package>,
}

impl Replay<'_> {
    /// Drain the connection's events and transmits after one input.
    fn settle(&mut self, recorded_reply: Option<&Value>) -> Vec<Package> {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::HandshakeRequest(body) => self.answer_handshake(&body, recorded_reply),
                Event::Established => self.ack_at = Some(self.now),
                Event::Data(body) => self.client_message(body),
                Event::Closed(reason) => {
                    self.closed = Some(reason);
                    self.closed_at = Some(self.now);
                }
                other => panic!("{}: unexpected event {other:?}", self.ctx),
            }
        }
        let sent: Vec<Package> = std::iter::from_fn(|| self.conn.poll_transmit()).collect();
        self.ours.extend(sent.iter().cloned());
        sent
    }

    /// pomelo's handshake command. The application hooks are outside the protocol: the
    /// recorded reply says how they answered (501: `checkClient` refused; 500 to a request
    /// with `sys`: the user hook failed; `user`: what the hook returned).
    fn answer_handshake(&mut self, request: &[u8], recorded: Option<&Value>) {
        let code = recorded.and_then(|r| r.get("code")).and_then(Value::as_u64);
        let server = self.setup.handshake(self.flavor);
        let hook_failed =
            code == Some(500) && shaddock_protocol::HandshakeRequest::parse(request).has_sys();
        let user = if hook_failed {
            Err(())
        } else {
            Ok(recorded.and_then(|r| r.get("user")))
        };
        let reply = server_reply(&server, request, code != Some(501), user);
        let parsed = HandshakeResponse::parse(&reply).unwrap();
        if parsed.code == 200 {
            self.conn.accept_handshake(reply.clone());
        } else {
            self.conn.reject_handshake(parsed.code, reply.clone());
        }
        self.replies.push(reply);
    }

    /// A DATA body in the working state, classified as pomelo's connector does (§8.2).
    fn client_message(&mut self, body: Bytes) {
        let Ok(msg) = Message::decode(body) else {
            self.log
                .push(json!({"event": "message_dropped_by_decoder"}));
            self.messages.push(ClientMessage {
                msg: None,
                outcome: Outcome::Dropped,
                body_ok: false,
            });
            return;
        };
        assert!(
            matches!(msg.kind, MessageType::Request | MessageType::Notify),
            "{}: a client sent a {} message: not a kind of step the replay knows",
            self.ctx,
            msg.kind.name()
        );
        let Some(route) = self.bodies.route_name(&msg.route) else {
            self.log
                .push(json!({"event": "message_dropped_by_decoder"}));
            self.messages.push(ClientMessage {
                msg: Some(msg),
                outcome: Outcome::Dropped,
                body_ok: false,
            });
            return;
        };
        let body = self.bodies.client_body(&route, &msg.body);
        let body_ok = body.is_ok();
        self.log.push(json!({
            "event": "message",
            "id": msg.id,
            "type": msg.kind as u8,
            "route": route,
            "compressRoute": u8::from(msg.compress_route()),
            // pomelo hands the handler `{}` for a body it cannot read
            "body": body.unwrap_or_else(|_| json!({})),
        }));
        let outcome = if Route::parse(&route).is_ok() {
            // "REQUEST with id 0: treated as notify" (§12)
            if msg.kind == MessageType::Request && msg.id != 0 {
                self.requests.insert(msg.id, route.clone());
            }
            Outcome::Handled(route)
        } else {
            self.log.push(json!({"event": "dropped_invalid_route"}));
            Outcome::InvalidRoute
        };
        self.messages.push(ClientMessage {
            msg: Some(msg),
            outcome,
            body_ok,
        });
    }

    fn feed(&mut self, p: Package, recorded_reply: Option<&Value>) {
        let before = self.conn.state();
        let kind = p.kind;
        self.conn.handle_package(p, self.now);
        let sent = self.settle(recorded_reply);
        self.last_event_sent.extend(sent.iter().cloned());
        self.fed.push(Fed { kind, before, sent });
    }

    fn fail(&mut self, kind: String) {
        self.conn.close_local();
        self.settle(None);
        self.fault = Some(kind.clone());
        self.diverged.get_or_insert(format!("closed on {kind}"));
    }

    fn client_event(&mut self, event: &Value, recorded_reply: Option<&Value>, tcp: bool) {
        self.last_event_sent.clear();
        let bytes = unhex(str_field(event, "hex"));
        if tcp {
            self.src.extend_from_slice(&bytes);
            loop {
                match self.decoder.decode(&mut self.src) {
                    Ok(Some(p)) => self.feed(p, recorded_reply),
                    Ok(None) => break,
                    Err(e) => return self.fail(e.kind().to_owned()),
                }
            }
            return;
        }
        let frame = event.get("ws_frame").and_then(Value::as_str);
        assert!(
            frame.is_none_or(|f| WS_FRAMES.contains(&f)),
            "{}: WebSocket frame kind {frame:?} is not a step the replay knows",
            self.ctx
        );
        if bytes.is_empty() {
            // "an empty message also closes the connection" (§2.3, §12)
            return self.fail("empty_websocket_message".to_owned());
        }
        let packages: Result<Vec<Package>, _> =
            FramePackages::new(Bytes::from(bytes), MAX_BODY_LEN).collect();
        match packages {
            Err(e) => self.fail(e.kind().to_owned()),
            Ok(packages) => {
                let several = packages.len() > 1;
                for p in packages {
                    self.feed(p, recorded_reply);
                }
                if several {
                    // §12: "accept and process in order (harmless superset)"; pomelo closes.
                    self.diverged
                        .get_or_insert("several packages in one WebSocket message".to_owned());
                }
            }
        }
    }

    fn server_package(&mut self, p: &Package, ctx: &str) {
        match p.kind {
            PackageType::Handshake | PackageType::Heartbeat => {
                if self.diverged.is_some() {
                    return;
                }
                let ours = self.ours.pop_front().unwrap_or_else(|| {
                    panic!("{ctx}: the server sent a {} we did not", p.kind.name())
                });
                assert_eq!(
                    (ours.kind, hex::encode(&ours.body)),
                    (p.kind, hex::encode(&p.body)),
                    "{ctx}: our {} vs the recorded one",
                    ours.kind.name()
                );
            }
            PackageType::Kick => {
                // The application kicked: do the same.
                let reason = Kick::parse(&p.body).reason;
                if self.diverged.is_some() {
                    return;
                }
                self.conn.kick(&reason);
                self.settle(None);
                self.kicked = true;
                let ours = self.ours.pop_front().expect("our kick package");
                assert_eq!(ours, *p, "{ctx}: our kick");
            }
            PackageType::Data => {
                let msg = Message::decode(p.body.clone())
                    .unwrap_or_else(|e| panic!("{ctx}: server message: {e}"));
                let route = match msg.kind {
                    MessageType::Response => {
                        self.responses.push(msg.id);
                        match self.requests.get(&msg.id) {
                            Some(route) => route.clone(),
                            // pomelo answered a message we refused (§12 deviation)
                            None if self.diverged.is_some() => return,
                            None => panic!(
                                "{ctx}: response to id {} that no request of ours has",
                                msg.id
                            ),
                        }
                    }
                    MessageType::Push => self
                        .bodies
                        .route_name(&msg.route)
                        .unwrap_or_else(|| panic!("{ctx}: push route {:?} unknown", msg.route)),
                    other => panic!("{ctx}: the server sent a {}", other.name()),
                };
                self.bodies.server_body(&route, &msg.body, ctx);
            }
            PackageType::HandshakeAck => panic!("{ctx}: the server sent a handshake ack"),
        }
    }

    fn closed_by_server(&mut self, ctx: &str) {
        if self.diverged.is_some() {
            return;
        }
        if self.closed.is_none()
            && let Some(deadline) = self.conn.poll_timeout()
        {
            self.now = self.now.max(deadline);
            self.conn.handle_timeout(self.now);
            self.settle(None);
        }
        assert!(
            self.conn.is_closed(),
            "{ctx}: the server closed the connection, ours is still {:?}",
            self.conn.state()
        );
    }
}

/// The first HANDSHAKE body the server sent after event `from`.
fn next_recorded_reply(events: &[Value], from: usize) -> Option<Value> {
    events[from..]
        .iter()
        .filter(|e| str_field(e, "dir") == "server->client")
        .flat_map(|e| arr(e, "packages"))
        .find(|p| p.get("type").and_then(Value::as_u64) == Some(PackageType::Handshake as u64))
        .map(|p| json::from_slice(&unhex(str_field(p, "body_hex"))).unwrap())
}

fn plain() -> ServerSetup {
    ServerSetup {
        heartbeat: None,
        dictionary: None,
        protos: None,
    }
}

/// Replay one scenario of a transcript file.
pub(super) fn scenario(file_name: &str, config: &Value, setup: &ServerSetup, scenario: &Value) {
    let transport = str_field(scenario, "transport");
    let ctx = format!("{file_name} {}/{transport}", name(scenario));
    assert!(TRANSPORTS.contains(&transport), "{ctx}: transport");
    let tcp = transport == "tcp";
    let flavor = if file_name.contains("pinus") {
        Flavor::Pinus
    } else {
        Flavor::Pomelo
    };
    let events = arr(scenario, "events");
    // A server without dictionary, protobuf and heartbeat answers a bare `"sys":{}`.
    let plain_setup = plain();
    let plain_server = next_recorded_reply(events, 0).is_some_and(|r| {
        r["code"] == 200
            && r.get("sys")
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
    });
    let setup = if plain_server { &plain_setup } else { setup };
    let bodies = Bodies::from_config(config, setup);
    let start = Instant::now();
    let mut r = Replay {
        ctx: ctx.clone(),
        flavor,
        setup,
        bodies: &bodies,
        conn: ServerConnection::new(
            ConnectionConfig {
                heartbeat_interval: setup.heartbeat,
                // pomelo's default timeout, 2 × heartbeat; pomelo has no handshake timeout
                heartbeat_timeout: None,
                handshake_timeout: None,
                close_on_early_data: false,
            },
            start,
        ),
        now: start,
        decoder: PackageDecoder::new(MAX_BODY_LEN),
        src: BytesMut::new(),
        ours: VecDeque::new(),
        fed: Vec::new(),
        replies: Vec::new(),
        messages: Vec::new(),
        log: Vec::new(),
        requests: HashMap::new(),
        responses: Vec::new(),
        fault: None,
        diverged: None,
        closed: None,
        ack_at: None,
        closed_at: None,
        kicked: false,
        last_event_sent: Vec::new(),
    };
    for (i, event) in events.iter().enumerate() {
        let ectx = format!("{ctx} event {i}");
        // Events carry no times: 1 ms apart, far below any heartbeat.
        r.now += Duration::from_millis(1);
        let dir = str_field(event, "dir");
        match dir {
            "client->server" => {
                if r.fault.is_some() {
                    continue;
                }
                let reply = next_recorded_reply(events, i);
                r.client_event(event, reply.as_ref(), tcp);
            }
            "server->client" => {
                let packages = super::expected_packages(arr(event, "packages"));
                for p in &packages {
                    r.server_package(p, &ectx);
                }
            }
            "closed_by_server" => r.closed_by_server(&ectx),
            other => panic!("{ectx}: event direction {other:?} is not a step the replay knows"),
        }
    }
    if r.diverged.is_none() {
        assert!(
            r.ours.is_empty(),
            "{ctx}: we sent {:?} that the server did not",
            r.ours.iter().map(|p| p.kind).collect::<Vec<_>>()
        );
    }
    if let Some(fault) = &r.fault {
        // our only way to refuse bytes is a typed error (or §2.3's empty message)
        assert!(
            super::ERROR_VOCABULARY.contains(&fault.as_str()) || fault == "empty_websocket_message",
            "{ctx}: closed on {fault}"
        );
    }
    let observations = field(scenario, "observations")
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: observations"));
    for (key, value) in observations {
        check_observation(&r, events, key, value, &format!("{ctx} observation {key}"));
    }
}

fn kinds(packages: &[Package]) -> Vec<&'static str> {
    packages.iter().map(|p| p.kind.name()).collect()
}

fn bytes_of(packages: &[Package]) -> u64 {
    packages.iter().map(|p| p.encoded_len() as u64).sum()
}

/// The recorded response ids answering the messages picked by `pick`.
fn replies_to(r: &Replay<'_>, pick: impl Fn(&ClientMessage) -> bool, ctx: &str) -> u64 {
    let picked: Vec<&ClientMessage> = r.messages.iter().filter(|m| pick(m)).collect();
    assert!(
        !picked.is_empty(),
        "{ctx}: no such client message in the scenario"
    );
    picked
        .iter()
        .filter_map(|m| m.msg.as_ref())
        .map(|m| r.responses.iter().filter(|&&id| id == m.id).count() as u64)
        .sum()
}

/// The recorded server event with these bytes, as a response to the message picked.
fn reply_hex(
    r: &Replay<'_>,
    events: &[Value],
    value: &Value,
    pick: impl Fn(&ClientMessage) -> bool,
    ctx: &str,
) {
    let hex = value.as_str().unwrap_or_else(|| panic!("{ctx}: hex"));
    let bytes = unhex(hex);
    // the value is a DATA body (message) or a whole package
    let recorded = events.iter().any(|e| {
        str_field(e, "dir") == "server->client"
            && arr(e, "packages")
                .iter()
                .any(|p| p.get("body_hex").and_then(Value::as_str) == Some(hex))
    });
    assert!(recorded, "{ctx}: {hex} is not among the recorded replies");
    let reply = Message::decode(Bytes::from(bytes)).unwrap();
    assert_eq!(reply.kind, MessageType::Response, "{ctx}");
    let m = r
        .messages
        .iter()
        .find(|m| pick(m))
        .unwrap_or_else(|| panic!("{ctx}: no such client message"));
    let msg = m.msg.as_ref().unwrap();
    assert_eq!(reply.id, msg.id, "{ctx}: the reply answers that request");
    let Outcome::Handled(route) = &m.outcome else {
        panic!("{ctx}: we dropped the request pomelo answered");
    };
    r.bodies.server_body(route, &reply.body, ctx);
}

/// One observation of a scenario against what our side did.
fn check_observation(r: &Replay<'_>, events: &[Value], key: &str, v: &Value, ctx: &str) {
    let closed = r.conn.is_closed() || r.fault.is_some();
    let fed_sent = |f: &dyn Fn(&Fed) -> bool| -> Vec<Package> {
        r.fed
            .iter()
            .filter(|x| f(x))
            .flat_map(|x| x.sent.iter().cloned())
            .collect()
    };
    let our_reply = || -> Value {
        let reply = r
            .replies
            .first()
            .unwrap_or_else(|| panic!("{ctx}: we sent no handshake reply"));
        json::from_slice(reply).unwrap()
    };
    match key {
        "handshake_response" => {
            assert_eq!(json::to_string(&our_reply()), json::to_string(v), "{ctx}");
        }
        "handshake_response_keys" => {
            let reply = our_reply();
            let keys: Vec<&str> = reply["sys"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let want: Vec<&str> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            assert_eq!(keys, want, "{ctx}");
        }
        "handshake_code" => assert_eq!(Some(&our_reply()["code"]), Some(v), "{ctx}"),
        "after_ack" => {
            let acks: Vec<&Fed> = r
                .fed
                .iter()
                .filter(|f| f.kind == PackageType::HandshakeAck && f.before == State::WaitingAck)
                .collect();
            assert!(!acks.is_empty(), "{ctx}: no ack");
            for ack in acks {
                assert_eq!(kinds(&ack.sent).first().copied(), v.as_str(), "{ctx}");
            }
        }
        "after_client_heartbeat" => {
            let beats: Vec<&Fed> = r
                .fed
                .iter()
                .filter(|f| f.kind == PackageType::Heartbeat && f.before == State::Working)
                .collect();
            assert!(!beats.is_empty(), "{ctx}: no client heartbeat");
            for beat in beats {
                assert_eq!(kinds(&beat.sent), vec![v.as_str().unwrap()], "{ctx}");
            }
        }
        "heartbeats_answered" => {
            let answered = r
                .fed
                .iter()
                .filter(|f| f.kind == PackageType::Heartbeat && f.before == State::Working)
                .filter(|f| kinds(&f.sent) == ["heartbeat"])
                .count();
            assert_eq!(Some(answered as u64), v.as_u64(), "{ctx}");
        }
        "closed" => {
            let want = v.as_bool().unwrap();
            match (&r.fault, &r.diverged) {
                (Some(fault), _) if !want => assert!(
                    CLOSES_WHERE_POMELO_DOES_NOT.contains(&fault.as_str()),
                    "{ctx}: we closed on {fault}, pomelo did not"
                ),
                // several packages in one WebSocket message: processed, not closed (§12)
                (None, Some(_)) => assert!(!closed, "{ctx}: we should have processed them"),
                _ => assert_eq!(closed, want, "{ctx}"),
            }
        }
        "closed_after_kick" => {
            assert!(r.kicked, "{ctx}: no kick");
            assert_eq!(r.conn.is_closed(), v.as_bool().unwrap(), "{ctx}");
            assert!(
                matches!(r.closed, Some(CloseReason::Kicked(_))),
                "{ctx}: {:?}",
                r.closed
            );
        }
        "bytes_received_before_handshake" => {
            let first = r
                .fed
                .iter()
                .position(|f| f.kind == PackageType::Handshake)
                .expect("a handshake");
            let sent: Vec<Package> = r.fed[..first]
                .iter()
                .flat_map(|f| f.sent.iter().cloned())
                .collect();
            assert!(first > 0, "{ctx}: nothing came before the handshake");
            assert_eq!(Some(bytes_of(&sent)), v.as_u64(), "{ctx}");
        }
        "packages_after_data_before_ack" => {
            assert!(
                r.fed
                    .iter()
                    .any(|f| f.kind == PackageType::Data && f.before == State::WaitingAck),
                "{ctx}: no such data"
            );
            let sent = fed_sent(&|f| f.kind == PackageType::Data && f.before == State::WaitingAck);
            assert_eq!(Some(sent.len() as u64), v.as_u64(), "{ctx}");
        }
        "replies_to_second_handshake" => {
            let later = |f: &Fed| f.kind == PackageType::Handshake && f.before != State::Initial;
            assert!(r.fed.iter().any(later), "{ctx}: no second handshake");
            assert_eq!(Some(fed_sent(&later).len() as u64), v.as_u64(), "{ctx}");
        }
        "bytes_after_ack" => {
            let ack = r
                .fed
                .iter()
                .position(|f| f.kind == PackageType::HandshakeAck)
                .expect("an ack");
            let sent: Vec<Package> = r.fed[ack..]
                .iter()
                .flat_map(|f| f.sent.iter().cloned())
                .collect();
            assert_eq!(Some(bytes_of(&sent)), v.as_u64(), "{ctx}");
        }
        "packages_received" => {
            let want: Vec<&str> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            assert_eq!(
                kinds(&r.last_event_sent),
                want,
                "{ctx}: after the last client event"
            );
        }
        "received_after" | "bytes_after" => {
            // What the server sent after the client's last event: the recording says it...
            let last = events
                .iter()
                .rposition(|e| str_field(e, "dir") == "client->server")
                .unwrap();
            let recorded: String = events[last..]
                .iter()
                .filter(|e| str_field(e, "dir") == "server->client")
                .map(|e| str_field(e, "hex"))
                .collect();
            assert_eq!(Some(recorded.as_str()), v.as_str(), "{ctx}: the recording");
            // ...and we: nothing after refusing the bytes; whatever the protocol answers
            // after processing several packages of one message (§12).
            if r.fault.is_some() {
                assert!(r.last_event_sent.is_empty(), "{ctx}: we sent after closing");
            } else if r.diverged.is_none() {
                let ours: String = r
                    .last_event_sent
                    .iter()
                    .map(|p| hex::encode(p.to_bytes().unwrap()))
                    .collect();
                assert_eq!(ours, recorded, "{ctx}: ours");
            }
        }
        "server_log" => {
            if let Some(fault) = &r.fault {
                assert!(
                    CLOSES_WHERE_POMELO_DOES_NOT.contains(&fault.as_str()),
                    "{ctx}: we closed on {fault}"
                );
                // pomelo logged the message it zero-padded; we refused it
                return;
            }
            let ours = Value::Array(r.log.clone());
            assert_eq!(json::to_string(&ours), json::to_string(v), "{ctx}");
        }
        "reply_to_unknown_code" | "reply_to_compressed_route" => {
            let n = replies_to(
                r,
                |m| {
                    m.outcome == Outcome::Dropped
                        && m.msg.as_ref().is_some_and(Message::compress_route)
                },
                ctx,
            );
            assert_eq!(Some(n), v.as_u64(), "{ctx}");
            assert_eq!(n, 0, "{ctx}: we drop it: nothing may answer it");
        }
        "reply_to_route_without_dot" => {
            let n = replies_to(r, |m| m.outcome == Outcome::InvalidRoute, ctx);
            assert_eq!(Some(n), v.as_u64(), "{ctx}");
            assert_eq!(n, 0, "{ctx}: we drop it: nothing may answer it");
        }
        "reply_to_request_with_id_0" => {
            let n = replies_to(
                r,
                |m| {
                    m.msg
                        .as_ref()
                        .is_some_and(|m| m.kind == MessageType::Request && m.id == 0)
                },
                ctx,
            );
            assert_eq!(Some(n), v.as_u64(), "{ctx}");
            assert!(
                !r.requests.contains_key(&0),
                "{ctx}: id 0 is a notify for us"
            );
        }
        "reply_to_bad_json_hex" => reply_hex(
            r,
            events,
            v,
            |m| matches!(m.outcome, Outcome::Handled(_)) && !m.body_ok,
            ctx,
        ),
        "reply_to_gzip_flag_hex" => reply_hex(
            r,
            events,
            v,
            |m| m.msg.as_ref().is_some_and(|m| m.gzip),
            ctx,
        ),
        "requests_answered" => {
            assert_eq!(Some(r.responses.len() as u64), v.as_u64(), "{ctx}");
            for id in &r.responses {
                assert!(r.requests.contains_key(id), "{ctx}: response {id}");
            }
        }
        "close_after_ack_ms_rounded_to_250" => {
            assert_eq!(r.closed, Some(CloseReason::HeartbeatTimeout), "{ctx}");
            let after = r.closed_at.unwrap() - r.ack_at.expect("ack");
            let rounded = ((after.as_millis() + 125) / 250) * 250;
            assert_eq!(Some(rounded as u64), v.as_u64(), "{ctx}: {after:?}");
        }
        other => panic!("{ctx}: observation `{other}` is not a kind of step the replay checks"),
    }
}
