//! The connector over real sockets: raw TCP and WebSocket clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shaddock_connector::{
    Frontend, FrontendBuilder, GAVE_UP_MESSAGE, HandlerError, Json, RateLimit, Request,
    RequestInfo, STOPPING_MESSAGE, Session,
};
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageType};

#[derive(Deserialize)]
struct Echo {
    text: String,
}

#[derive(Serialize)]
struct EchoReply {
    code: u32,
    text: String,
}

fn app(config: shaddock_connector::ConnectorConfig) -> FrontendBuilder {
    Frontend::builder(config)
        .handler(
            "connector.entryHandler.echo",
            |_s: Session, Json(req): Json<Echo>| async move {
                Ok::<_, HandlerError>(EchoReply {
                    code: 200,
                    text: req.text,
                })
            },
        )
        .handler(
            "connector.entryHandler.enter",
            |s: Session, req: Value| async move {
                let uid = req["uid"].as_str().unwrap_or_default().to_owned();
                s.bind(&uid)
                    .map_err(|e| HandlerError::new(501, e.to_string()))?;
                s.set("rid", json!("room"));
                Ok::<_, HandlerError>(json!({"code": 200, "sid": s.id()}))
            },
        )
        .handler(
            "connector.entryHandler.pushMe",
            |s: Session, req: Value| async move {
                // A notify whose handler pushes back.
                s.push("onPush", &json!({"got": req}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(())
            },
        )
        .handler(
            "connector.entryHandler.fail",
            |_s: Session, _req: Value| async move { Err::<(), _>(HandlerError::new(503, "nope")) },
        )
        .handler(
            "connector.entryHandler.nothing",
            |_s: Session, _req: Value| async move { Ok::<_, HandlerError>(()) },
        )
}

async fn basic_flow(ws: bool) {
    let server = start(app(test_config())).await;
    let mut c = Client::connect(ws, server.addr).await;
    let reply = c.handshake().await;
    assert_eq!(reply, json!({"code": 200, "sys": {"heartbeat": 1}}));
    // The server sends a HEARTBEAT right after the ack.
    let hb = c.recv().await.expect("heartbeat after ack");
    assert_eq!(hb.kind, PackageType::Heartbeat);

    // Request → response with the same id.
    let r = c
        .call(7, "connector.entryHandler.echo", &json!({"text": "hi Ω"}))
        .await;
    assert_eq!(r, json!({"code": 200, "text": "hi Ω"}));

    // A handler returning nothing answers {}.
    let r = c
        .call(8, "connector.entryHandler.nothing", &json!({}))
        .await;
    assert_eq!(r, json!({}));

    // Bind a uid, then notify → the handler pushes; the notify itself gets no response.
    let r = c
        .call(9, "connector.entryHandler.enter", &json!({"uid": "alice"}))
        .await;
    assert_eq!(r["code"], 200);
    c.notify("connector.entryHandler.pushMe", &json!({"n": 1}))
        .await;
    let m = c.recv_message().await;
    assert_eq!(m.kind, MessageType::Push);
    assert_eq!(m.route.as_str(), Some("onPush"));
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!({"got": {"n": 1}})
    );

    // Push from local code, by uid, to one and to all.
    let sessions = server.frontend.sessions().get_by_uid("alice");
    assert_eq!(sessions.len(), 1);
    let sid = sessions[0].id();
    assert_eq!(sessions[0].get("rid"), Some(json!("room")));
    let report = server
        .frontend
        .push(sid, "onChat", &json!({"msg": "hello"}))
        .unwrap();
    assert_eq!(report.sent, 1);
    let m = c.recv_message().await;
    assert_eq!(m.route.as_str(), Some("onChat"));
    let report = server.frontend.broadcast("onAll", &json!({})).unwrap();
    assert_eq!(report.sent, 1);
    assert_eq!(c.recv_message().await.route.as_str(), Some("onAll"));

    // Heartbeat echo.
    c.send(Package::empty(PackageType::Heartbeat)).await;
    let hb = c.recv().await.unwrap();
    assert_eq!(hb.kind, PackageType::Heartbeat);

    // Kick with a reason: KICK {"reason":…} then close.
    assert_eq!(
        server.frontend.sessions().kick_by_uid("alice", "bye now"),
        1
    );
    let k = c.recv_no_heartbeat().await.expect("kick package");
    assert_eq!(k.kind, PackageType::Kick);
    assert_eq!(&k.body[..], br#"{"reason":"bye now"}"#);
    c.expect_closed().await;
    assert_eq!(server.frontend.stats().kicked, 1);
    server.stop().await;
}

#[tokio::test]
async fn tcp_handshake_request_notify_push_heartbeat_kick() {
    basic_flow(false).await;
}

#[tokio::test]
async fn ws_handshake_request_notify_push_heartbeat_kick() {
    basic_flow(true).await;
}

async fn errors_keep_connection(ws: bool) {
    let server = start(app(test_config())).await;
    let mut c = Client::connect(ws, server.addr).await;
    c.handshake().await;
    // Unknown route of our own type.
    let r = c
        .call(1, "connector.entryHandler.missing", &json!({}))
        .await;
    let msg = assert_client_error(&r, 500);
    assert!(msg.contains("connector.entryHandler.missing"), "{msg}");
    // Another server type with no forwarder: no server of that type.
    let r = c.call(2, "chat.chatHandler.send", &json!({})).await;
    let msg = assert_client_error(&r, 500);
    assert!(msg.contains("`chat`"), "{msg}");
    // Not serverType.handler.method.
    let r = c.call(3, "onlyonepart", &json!({})).await;
    assert_client_error(&r, 500);
    // Body that does not decode into the handler's type: a missing field is named ...
    let r = c
        .call(4, "connector.entryHandler.echo", &json!({"wrong": 1}))
        .await;
    let msg = assert_client_error(&r, 500);
    assert!(msg.contains("`text`"), "{msg}");
    // ... and a body of the wrong shape does not name the handler's Rust type (serde says
    // "expected struct Echo").
    let r = c
        .call(40, "connector.entryHandler.echo", &json!("not an object"))
        .await;
    let msg = assert_client_error(&r, 500);
    assert!(!msg.contains("Echo"), "{msg}");
    // Body that is not JSON.
    c.send_message(Message::request(
        5,
        MessageRoute::name("connector.entryHandler.echo"),
        Bytes::from_static(b"{not json"),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.id, 5);
    let msg = assert_client_error(&serde_json::from_slice::<Value>(&m.body).unwrap(), 500);
    assert!(msg.contains("not valid JSON"), "{msg}");
    // Handler error with its own code.
    let r = c.call(6, "connector.entryHandler.fail", &json!({})).await;
    assert_eq!(r, json!({"code": 503, "msg": "nope"}));
    // Compressed route without a dictionary: error response.
    c.send_message(Message::request(
        7,
        MessageRoute::Code(3),
        Bytes::from_static(b"{}"),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.id, 7);
    let msg = assert_client_error(&serde_json::from_slice::<Value>(&m.body).unwrap(), 500);
    assert!(msg.contains("route code 3"), "{msg}");
    // Still connected.
    let r = c
        .call(8, "connector.entryHandler.echo", &json!({"text": "ok"}))
        .await;
    assert_eq!(r["text"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn tcp_error_responses_keep_the_connection() {
    errors_keep_connection(false).await;
}

#[tokio::test]
async fn ws_error_responses_keep_the_connection() {
    errors_keep_connection(true).await;
}

#[tokio::test]
async fn dictionary_routes_both_ways() {
    let dict = Arc::new(
        RouteDictionary::new(
            [
                "connector.entryHandler.echo",
                "connector.entryHandler.pushMe",
            ],
            ["onPush"],
        )
        .unwrap(),
    );
    let server = start(app(test_config()).dictionary(dict.clone())).await;
    let mut c = Client::tcp(server.addr).await;
    let reply = c.handshake().await;
    assert_eq!(reply["sys"]["useDict"], true);
    assert_eq!(reply["sys"]["dictVersion"], dict.version());
    let code = dict.code("connector.entryHandler.echo").unwrap();
    c.send_message(Message::request(
        1,
        MessageRoute::Code(code),
        Bytes::from_static(br#"{"text":"coded"}"#),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.id, 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap()["text"],
        "coded"
    );
    // Pushes on a route in the dictionary go out compressed.
    let code = dict.code("connector.entryHandler.pushMe").unwrap();
    c.send_message(Message::notify(
        MessageRoute::Code(code),
        Bytes::from_static(b"{}"),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.route, MessageRoute::Code(dict.code("onPush").unwrap()));
    // Unknown code: error response, still connected.
    c.send_message(Message::request(
        2,
        MessageRoute::Code(999),
        Bytes::from_static(b"{}"),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.id, 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap()["code"],
        500
    );
    server.stop().await;
}

#[tokio::test]
async fn filters_and_error_handler() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, bool)>::new()));
    let seen2 = seen.clone();
    let builder = app(test_config())
        .before(|req: &Request<Session>| {
            if req.body().get("blocked").is_some() {
                Err(HandlerError::new(403, format!("blocked on {}", req.route())))
            } else {
                Ok(())
            }
        })
        .after(
            move |req: &Request<Session>, outcome: &Result<Value, HandlerError>| {
                seen2
                    .lock()
                    .unwrap()
                    .push((req.route().to_owned(), outcome.is_ok()));
            },
        )
        .error_handler(|_info: &RequestInfo, _s: &Session, e: &HandlerError| {
            json!({"code": e.code, "error": true})
        });
    let server = start(builder).await;
    let mut c = Client::ws(server.addr).await;
    c.handshake().await;
    let r = c
        .call(
            1,
            "connector.entryHandler.echo",
            &json!({"text": "x", "blocked": 1}),
        )
        .await;
    assert_eq!(r, json!({"code": 403, "error": true}));
    let r = c
        .call(2, "connector.entryHandler.echo", &json!({"text": "y"}))
        .await;
    assert_eq!(r["text"], "y");
    // A route code this server does not know is answered in the app's error shape too.
    c.send_message(Message::request(
        3,
        MessageRoute::Code(9),
        Bytes::from_static(b"{}"),
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(m.id, 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!({"code": 500, "error": true})
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("connector.entryHandler.echo".to_owned(), false),
            ("connector.entryHandler.echo".to_owned(), true)
        ]
    );
    server.stop().await;
}

#[test]
fn build_rejects_bad_and_duplicate_routes() {
    let h = |_s: Session, _v: Value| async move { Ok::<_, HandlerError>(()) };
    let cfg = test_config;
    assert!(Frontend::builder(cfg()).handler("bad", h).build().is_err());
    assert!(
        Frontend::builder(cfg())
            .handler("chat.chatHandler.send", h)
            .build()
            .is_err()
    );
    assert!(
        Frontend::builder(cfg())
            .handler("connector.a.b", h)
            .handler("connector.a.b", h)
            .build()
            .is_err()
    );
    assert!(
        Frontend::builder(cfg())
            .handler("connector.a.b", h)
            .build()
            .is_ok()
    );
}

async fn heartbeat_timeout(ws: bool) {
    let mut cfg = test_config();
    cfg.heartbeat_timeout = Some(Duration::from_millis(1500));
    let server = start(app(cfg)).await;
    let mut c = Client::connect(ws, server.addr).await;
    c.handshake().await;
    // Requests do not count as heartbeats; never send one: the server closes, without a kick.
    let r = c
        .call(1, "connector.entryHandler.echo", &json!({"text": "a"}))
        .await;
    assert_eq!(r["text"], "a");
    loop {
        match c.recv().await {
            None => break,
            Some(p) => assert_eq!(p.kind, PackageType::Heartbeat, "no kick on timeout"),
        }
    }
    assert_eq!(server.frontend.stats().heartbeat_timeouts, 1);
    // The closed hook ran and the session is gone.
    within(async {
        while server.frontend.sessions().count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn tcp_heartbeat_timeout_closes() {
    heartbeat_timeout(false).await;
}

#[tokio::test]
async fn ws_heartbeat_timeout_closes() {
    heartbeat_timeout(true).await;
}

#[tokio::test]
async fn handshake_timeout_closes_silent_and_unacked_clients() {
    let mut cfg = test_config();
    cfg.handshake_timeout = Duration::from_millis(1000);
    let server = start(app(cfg)).await;
    // Sends nothing at all.
    let mut silent = Client::tcp(server.addr).await;
    // Handshakes but never acks.
    let mut unacked = Client::ws(server.addr).await;
    unacked.handshake_only(r#"{"sys":{}}"#).await;
    silent.expect_closed().await;
    unacked.expect_closed().await;
    assert_eq!(server.frontend.stats().handshake_timeouts, 2);
    server.stop().await;
}

#[tokio::test]
async fn handshake_500_and_501() {
    let mut cfg = test_config();
    cfg.min_client_version = Some("0.3.0".into());
    let server = start(app(cfg)).await;
    for ws in [false, true] {
        let mut c = Client::connect(ws, server.addr).await;
        let r = c.handshake_only("not json").await;
        assert_eq!(r, json!({"code": 500}));
        c.expect_closed().await;
        let mut c = Client::connect(ws, server.addr).await;
        let r = c.handshake_only(r#"{"sys":{"version":"0.2.0"}}"#).await;
        assert_eq!(r, json!({"code": 501}));
        c.expect_closed().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn data_before_handshake_is_ignored_then_handshake_works() {
    let server = start(app(test_config())).await;
    let mut c = Client::tcp(server.addr).await;
    c.request(1, "connector.entryHandler.echo", &json!({"text": "early"}))
        .await;
    c.send(Package::empty(PackageType::Heartbeat)).await;
    c.handshake().await;
    let r = c
        .call(2, "connector.entryHandler.echo", &json!({"text": "late"}))
        .await;
    assert_eq!(r["text"], "late");
    server.stop().await;
}

#[tokio::test]
async fn malformed_input_ends_in_a_clean_close() {
    let server = start(app(test_config())).await;
    let cases: Vec<(bool, Vec<u8>)> = vec![
        // Invalid package type byte first.
        (false, vec![0x06, 0, 0, 0]),
        (false, vec![0x00, 0, 0, 1, 0]),
        // Declared length over max_package_size.
        (false, vec![0x01, 0xff, 0xff, 0xff]),
        // WebSocket: empty message, truncated package, bad type.
        (true, vec![]),
        (true, vec![0x01, 0, 0, 9, b'{']),
        (true, vec![0x07, 0, 0, 0]),
    ];
    for (ws, bytes) in cases {
        let mut c = Client::connect(ws, server.addr).await;
        c.send_raw(&bytes).await;
        c.expect_closed().await;
    }
    // After the handshake: a message of type 4-7, and a truncated message, and a client KICK.
    let bad_messages: Vec<Vec<u8>> = vec![vec![0x08, 0x01], vec![0x00, 0x81], vec![0x00]];
    for (i, body) in bad_messages.into_iter().enumerate() {
        let mut c = Client::connect(i % 2 == 0, server.addr).await;
        c.handshake().await;
        c.send(Package::new(PackageType::Data, body)).await;
        c.expect_closed().await;
    }
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    c.send(Package::empty(PackageType::Kick)).await;
    c.expect_closed().await;
    // WebSocket text message.
    let mut c = Client::ws(server.addr).await;
    c.handshake().await;
    if let Client::Ws { ws, .. } = &mut c {
        use futures_util::SinkExt;
        within(ws.send(tokio_tungstenite::tungstenite::Message::text("hello")))
            .await
            .unwrap();
    }
    c.expect_closed().await;
    assert!(server.frontend.stats().protocol_errors >= 10);
    // The server still serves others.
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    let r = c
        .call(1, "connector.entryHandler.echo", &json!({"text": "alive"}))
        .await;
    assert_eq!(r["text"], "alive");
    server.stop().await;
}

#[tokio::test]
async fn package_split_byte_by_byte_and_coalesced() {
    let server = start(app(test_config())).await;
    let mut c = Client::tcp(server.addr).await;
    let hs = Package::new(PackageType::Handshake, Bytes::from_static(br#"{"sys":{}}"#))
        .to_bytes()
        .unwrap();
    for b in hs.iter() {
        c.send_raw(&[*b]).await;
    }
    let p = c.recv().await.unwrap();
    assert_eq!(p.kind, PackageType::Handshake);
    // Ack + two requests in one write.
    let mut all = Package::empty(PackageType::HandshakeAck)
        .to_bytes()
        .unwrap()
        .to_vec();
    for id in [1u32, 2] {
        let m = Message::request(
            id,
            MessageRoute::name("connector.entryHandler.echo"),
            Bytes::from(format!(r#"{{"text":"{id}"}}"#)),
        );
        all.extend_from_slice(&m.to_package().unwrap().to_bytes().unwrap());
    }
    c.send_raw(&all).await;
    let mut ids = vec![c.recv_message().await.id, c.recv_message().await.id];
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    server.stop().await;
}

fn handshake_package() -> Vec<u8> {
    Package::new(
        PackageType::Handshake,
        Bytes::from_static(br#"{"sys":{"type":"rust-test","version":"0.1.0"}}"#),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

fn echo_request(id: u32, text: &str) -> Vec<u8> {
    Message::request(
        id,
        MessageRoute::name("connector.entryHandler.echo"),
        Bytes::from(format!(r#"{{"text":"{text}"}}"#)),
    )
    .to_package()
    .unwrap()
    .to_bytes()
    .unwrap()
    .to_vec()
}

/// Handshake, ack and a request in one write (one WebSocket message): the client gets the
/// handshake reply, the heartbeat the ack starts, and the response, in that order.
async fn handshake_ack_and_request_in_one_read(ws: bool) {
    let server = start(app(test_config())).await;
    let mut c = Client::connect(ws, server.addr).await;
    let mut all = handshake_package();
    all.extend_from_slice(
        &Package::empty(PackageType::HandshakeAck)
            .to_bytes()
            .unwrap(),
    );
    all.extend_from_slice(&echo_request(1, "first"));
    c.send_raw(&all).await;
    let p = c.recv().await.expect("handshake reply");
    assert_eq!(p.kind, PackageType::Handshake, "{p:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.body).unwrap()["code"],
        200
    );
    let p = c.recv().await.expect("heartbeat after the ack");
    assert_eq!(p.kind, PackageType::Heartbeat, "{p:?}");
    let m = c.recv_message().await;
    assert_eq!((m.kind, m.id), (MessageType::Response, 1));
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!({"code": 200, "text": "first"})
    );
    // Established: the next request is served too.
    let r = c
        .call(2, "connector.entryHandler.echo", &json!({"text": "second"}))
        .await;
    assert_eq!(r["text"], "second");
    server.stop().await;
}

#[tokio::test]
async fn tcp_handshake_ack_and_request_in_one_write_are_all_handled() {
    handshake_ack_and_request_in_one_read(false).await;
}

#[tokio::test]
async fn ws_handshake_ack_and_request_in_one_message_are_all_handled() {
    handshake_ack_and_request_in_one_read(true).await;
}

/// After a separate handshake, the ack and a request in one write (one WebSocket message).
#[tokio::test]
async fn ack_and_request_in_one_read_after_the_handshake_are_both_handled() {
    let server = start(app(test_config())).await;
    for ws in [false, true] {
        let mut c = Client::connect(ws, server.addr).await;
        let reply = c.handshake_only(r#"{"sys":{"type":"rust-test"}}"#).await;
        assert_eq!(reply["code"], 200);
        let mut all = Package::empty(PackageType::HandshakeAck)
            .to_bytes()
            .unwrap()
            .to_vec();
        all.extend_from_slice(&echo_request(1, "after ack"));
        c.send_raw(&all).await;
        let p = c.recv().await.expect("heartbeat after the ack");
        assert_eq!(p.kind, PackageType::Heartbeat, "ws={ws}: {p:?}");
        let m = c.recv_message().await;
        assert_eq!((m.kind, m.id), (MessageType::Response, 1), "ws={ws}");
        assert_eq!(
            serde_json::from_slice::<Value>(&m.body).unwrap()["text"],
            "after ack"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_and_counts() {
    let mut cfg = test_config();
    cfg.max_connections = 2;
    let server = start(app(cfg)).await;
    let mut a = Client::tcp(server.addr).await;
    a.handshake().await;
    let mut b = Client::ws(server.addr).await;
    b.handshake().await;
    let mut c = Client::tcp(server.addr).await;
    c.expect_closed().await;
    assert_eq!(server.frontend.stats().refused, 1);
    // a and b still work.
    let r = a
        .call(1, "connector.entryHandler.echo", &json!({"text": "a"}))
        .await;
    assert_eq!(r["text"], "a");
    let r = b
        .call(1, "connector.entryHandler.echo", &json!({"text": "b"}))
        .await;
    assert_eq!(r["text"], "b");
    // Freeing a slot lets a new client in.
    drop(a);
    within(async {
        while server.frontend.stats().active != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut d = Client::tcp(server.addr).await;
    d.handshake().await;
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_kicks_and_counts() {
    let mut cfg = test_config();
    cfg.rate_limit = Some(RateLimit {
        per_second: 1,
        burst: 5,
    });
    let server = start(app(cfg)).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await; // 2 packages
    for id in 1..=10 {
        c.notify("connector.entryHandler.nothing", &json!({"i": id}))
            .await;
    }
    let k = c.recv_no_heartbeat().await;
    let k = k.expect("kick");
    assert_eq!(k.kind, PackageType::Kick);
    assert_eq!(&k.body[..], br#"{"reason":"rate limit exceeded"}"#);
    c.expect_closed().await;
    let st = server.frontend.stats();
    assert_eq!(st.rate_limited, 1);
    assert_eq!(st.kicked, 1);
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_kicked_and_memory_stays_bounded() {
    let mut cfg = test_config();
    cfg.queue_capacity = 8;
    cfg.heartbeat_interval = None;
    cfg.write_timeout = Duration::from_millis(500);
    let server = start(app(cfg)).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    // Bind so we can find the session.
    let r = c
        .call(1, "connector.entryHandler.enter", &json!({"uid": "slow"}))
        .await;
    assert_eq!(r["code"], 200);
    let sid = server.frontend.sessions().get_by_uid("slow")[0].id();
    // The client never reads again; push far more than socket buffers + queue can hold.
    let big = json!({"pad": "x".repeat(60_000)});
    let encoded = server.frontend.encode_push("onBig", &big).unwrap();
    let mut full = 0;
    for _ in 0..2_000 {
        let rep = server.frontend.push_encoded(&[sid], &encoded);
        full += rep.full + rep.missing;
        if full > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(full > 0, "the queue never filled");
    assert_eq!(server.frontend.stats().slow_consumers, 1);
    // The connection ends (kick or write timeout), and the session is removed.
    within(async {
        while server.frontend.sessions().get(sid).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn push_to_many_shares_one_buffer() {
    let server = start(app(test_config())).await;
    let mut clients = Vec::new();
    let mut sids = Vec::new();
    for i in 0..4u32 {
        let mut c = Client::connect(i % 2 == 0, server.addr).await;
        c.handshake().await;
        let r = c
            .call(
                1,
                "connector.entryHandler.enter",
                &json!({"uid": format!("u{i}")}),
            )
            .await;
        sids.push(r["sid"].as_u64().unwrap());
        clients.push(c);
    }
    let report = server
        .frontend
        .push_many(&sids, "onChat", &json!({"msg": "to all four"}))
        .unwrap();
    assert_eq!(report.sent, 4);
    let missing = server
        .frontend
        .push_many(&[12345], "onChat", &json!({}))
        .unwrap();
    assert_eq!(missing.missing, 1);
    for c in &mut clients {
        let m = c.recv_message().await;
        assert_eq!(m.route.as_str(), Some("onChat"));
        assert_eq!(&m.body[..], br#"{"msg":"to all four"}"#);
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let server = start(app(test_config())).await;
    let mut c = Client::ws(server.addr).await;
    c.handshake().await;
    let mut t = Client::tcp(server.addr).await;
    t.handshake().await;
    server.stop().await;
    c.expect_closed().await;
    t.expect_closed().await;
}

#[tokio::test]
async fn closed_hook_and_uid_lookup() {
    let server = start(app(test_config())).await;
    let closed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let closed2 = closed.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    server.frontend.sessions().on_closed(move |s, reason| {
        closed2.lock().unwrap().push((s.uid(), reason.to_owned()));
        let _ = tx.try_send(());
    });
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    c.call(1, "connector.entryHandler.enter", &json!({"uid": "bob"}))
        .await;
    // Binding the same session to another uid fails (documented policy).
    let r = c
        .call(2, "connector.entryHandler.enter", &json!({"uid": "carol"}))
        .await;
    assert_eq!(r["code"], 501);
    assert_eq!(server.frontend.sessions().count(), 1);
    let s = &server.frontend.sessions().get_by_uid("bob")[0];
    assert!(server.frontend.sessions().kick_by_id(s.id(), "kick"));
    within(rx.recv()).await.unwrap();
    let closed = closed.lock().unwrap().clone();
    assert_eq!(
        closed,
        vec![(Some("bob".to_owned()), "kicked: kick".to_owned())]
    );
    assert_eq!(server.frontend.sessions().count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn many_pushes_are_coalesced_into_few_writes() {
    let mut cfg = test_config();
    cfg.heartbeat_interval = None;
    let server = start(app(cfg)).await;
    let mut c = Client::ws(server.addr).await;
    let reply = c.handshake().await;
    assert_eq!(reply, json!({"code": 200, "sys": {}}));
    let r = c
        .call(1, "connector.entryHandler.enter", &json!({"uid": "co"}))
        .await;
    let sid = r["sid"].as_u64().unwrap();
    // This test runs on a current-thread runtime: all 50 pushes are queued before the
    // connection task runs again, so they leave in one write (one WebSocket message).
    let encoded = server.frontend.encode_push("onTick", &json!({})).unwrap();
    for _ in 0..50 {
        assert_eq!(server.frontend.push_encoded(&[sid], &encoded).sent, 1);
    }
    let mut seen = 0;
    let mut messages = 0;
    while seen < 50 {
        let packages = c.recv_ws_message().await;
        messages += 1;
        for p in packages {
            assert_eq!(p.body, encoded.slice(4..));
            seen += 1;
        }
    }
    assert_eq!(seen, 50);
    assert_eq!(messages, 1, "50 pushes in {messages} writes");
    server.stop().await;
}

/// A server from `builder`, a WebSocket client that has shaken hands and entered as `uid`,
/// and its session id.
async fn entered_ws(builder: FrontendBuilder, uid: &str) -> (Server, Client, u64) {
    let server = start(builder).await;
    let mut c = Client::ws(server.addr).await;
    c.handshake().await;
    let r = c
        .call(1, "connector.entryHandler.enter", &json!({ "uid": uid }))
        .await;
    let sid = r["sid"].as_u64().unwrap();
    (server, c, sid)
}

/// Buffered pushes (`push_flush_interval`): pushes queued within one interval leave in one
/// write, even on a multi-thread runtime where the connection task could run between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_pushes_leave_together_when_the_interval_ends() {
    let mut cfg = test_config();
    cfg.heartbeat_interval = None;
    cfg.push_flush_interval = Some(Duration::from_millis(300));
    let (server, mut c, sid) = entered_ws(app(cfg), "buf").await;
    for round in 0..2 {
        let encoded: Vec<Bytes> = (0..5)
            .map(|i| {
                server
                    .frontend
                    .encode_push("onTick", &json!({"round": round, "i": i}))
                    .unwrap()
            })
            .collect();
        for e in &encoded {
            assert_eq!(server.frontend.push_encoded(&[sid], e).sent, 1);
        }
        let packages = c.recv_ws_message().await;
        let bodies: Vec<Bytes> = packages.into_iter().map(|p| p.body).collect();
        let want: Vec<Bytes> = encoded.iter().map(|e| e.slice(4..)).collect();
        assert_eq!(
            bodies, want,
            "round {round}: the 5 pushes in one write, in order"
        );
    }
    server.stop().await;
}

/// A response is not held back by the push flush interval: it goes out at once, after the
/// pushes queued before it and in the same write. The interval is a minute, so a response
/// that waited for it would time the test out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_flushes_buffered_pushes_at_once() {
    let mut cfg = test_config();
    cfg.heartbeat_interval = None;
    cfg.push_flush_interval = Some(Duration::from_secs(60));
    // The response to `enter` itself is not delayed.
    let (server, mut c, sid) = entered_ws(app(cfg), "buf2").await;
    let encoded = server.frontend.encode_push("onTick", &json!({})).unwrap();
    for _ in 0..3 {
        assert_eq!(server.frontend.push_encoded(&[sid], &encoded).sent, 1);
    }
    c.request(2, "connector.entryHandler.echo", &json!({"text": "now"}))
        .await;
    let packages = c.recv_ws_message().await;
    assert_eq!(packages.len(), 4, "3 pushes and the response in one write");
    for p in &packages[..3] {
        assert_eq!(p.body, encoded.slice(4..));
    }
    let m = Message::decode(packages[3].body.clone()).unwrap();
    assert_eq!((m.kind, m.id), (MessageType::Response, 2));
    server.stop().await;
}

/// `push_linger`: a push queued while a request is being handled waits for its response and
/// leaves in the same write; a push made by a notify leaves when the notify has been handled;
/// with nothing being handled a push is not held. The linger is a minute, so a push held
/// without reason would time the test out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_made_while_handling_a_request_leaves_with_its_response() {
    let mut cfg = test_config();
    cfg.heartbeat_interval = None;
    cfg.push_linger = Duration::from_secs(60);
    let builder = app(cfg)
        .handler(
            "connector.entryHandler.pushThenReply",
            |s: Session, _req: Value| async move {
                s.push("onEcho", &json!({"first": true}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                // The push is queued before the reply exists.
                tokio::task::yield_now().await;
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
        .handler(
            "connector.entryHandler.pushThenWork",
            |s: Session, _req: Value| async move {
                s.push("onEcho", &json!({"early": true}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                // Work after the push: the connection task sees the push while the message
                // is still being handled.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, HandlerError>(())
            },
        );
    let (server, mut c, sid) = entered_ws(builder, "linger").await;
    for id in 2..5 {
        c.request(id, "connector.entryHandler.pushThenReply", &json!({}))
            .await;
        let packages = c.recv_ws_message().await;
        let kinds: Vec<(MessageType, u32)> = packages
            .iter()
            .map(|p| {
                let m = Message::decode(p.body.clone()).unwrap();
                (m.kind, m.id)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![(MessageType::Push, 0), (MessageType::Response, id)],
            "push and response in one write"
        );
    }
    // A notify whose handler pushes: no response will flush the push, so it goes out when
    // the handling ends, not after the linger.
    c.notify("connector.entryHandler.pushThenWork", &json!({"n": 1}))
        .await;
    let packages = c.recv_ws_message().await;
    assert_eq!(packages.len(), 1);
    let m = Message::decode(packages[0].body.clone()).unwrap();
    assert_eq!(m.kind, MessageType::Push);
    // Nothing being handled: a push goes out alone, at once.
    let encoded = server.frontend.encode_push("onTick", &json!({})).unwrap();
    assert_eq!(server.frontend.push_encoded(&[sid], &encoded).sent, 1);
    let packages = c.recv_ws_message().await;
    assert_eq!(packages.len(), 1);
    assert_eq!(packages[0].body, encoded.slice(4..));
    server.stop().await;
}

#[test]
fn push_flush_interval_is_validated() {
    for bad in [Duration::ZERO, Duration::from_secs(61)] {
        let mut cfg = test_config();
        cfg.push_flush_interval = Some(bad);
        assert!(app(cfg).build().is_err(), "{bad:?} accepted");
    }
}

#[tokio::test]
async fn protobuf_routes_in_handshake_bodies_and_pushes() {
    use shaddock_protocol::protobuf::{Protos, Schema};
    let client_protos = json!({
        "connector.entryHandler.echo": {"required string text": 1}
    });
    let server_protos = json!({
        "connector.entryHandler.echo": {"required uInt32 code": 1, "required string text": 2},
        "onPush": {"required string got": 1}
    });
    let protos = Arc::new(Protos::new(
        Schema::from_file_json(&server_protos).unwrap(),
        Schema::from_file_json(&client_protos).unwrap(),
    ));
    let builder = Frontend::builder(test_config())
        .handler(
            "connector.entryHandler.echo",
            |s: Session, Json(req): Json<Echo>| async move {
                s.push("onPush", &json!({"got": req.text.clone()}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(EchoReply {
                    code: 200,
                    text: req.text,
                })
            },
        )
        .protos(protos.clone());
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    let reply = c.handshake().await;
    assert_eq!(reply["sys"]["useProto"], true);
    assert_eq!(reply["sys"]["protos"]["version"], protos.version());
    // Request body in protobuf (clientProtos), response in protobuf (serverProtos).
    let body = protos
        .client()
        .encode("connector.entryHandler.echo", &json!({"text": "pb"}))
        .unwrap();
    c.send_message(Message::request(
        1,
        MessageRoute::name("connector.entryHandler.echo"),
        body,
    ))
    .await;
    let mut got_response = false;
    let mut got_push = false;
    for _ in 0..2 {
        let m = c.recv_message().await;
        match m.kind {
            MessageType::Response => {
                let v = protos
                    .server()
                    .decode("connector.entryHandler.echo", &m.body)
                    .unwrap();
                assert_eq!(v, json!({"code": 200, "text": "pb"}));
                got_response = true;
            }
            MessageType::Push => {
                let v = protos.server().decode("onPush", &m.body).unwrap();
                assert_eq!(v, json!({"got": "pb"}));
                got_push = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_response && got_push);
    server.stop().await;
}

/// The body of `connector.entryHandler.echo` as a prost message: the pomelo-protobuf
/// encoding of its clientProtos schema is protobuf's.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoPb {
    #[prost(string, tag = "1")]
    text: String,
}

#[tokio::test]
async fn a_proto_extractor_gets_the_protobuf_body_and_refuses_a_json_one() {
    use shaddock_connector::Proto;
    use shaddock_protocol::protobuf::{Protos, Schema};
    let client_protos = json!({"connector.entryHandler.echo": {"required string text": 1}});
    let protos = Arc::new(Protos::new(
        Schema::from_file_json(&json!({})).unwrap(),
        Schema::from_file_json(&client_protos).unwrap(),
    ));
    let echo = |Proto(req): Proto<EchoPb>| async move {
        Ok::<_, HandlerError>(json!({"code": 200, "text": req.text}))
    };
    let builder = Frontend::builder(test_config())
        .handler("connector.entryHandler.echo", echo)
        .handler("connector.entryHandler.pbOnly", echo)
        .protos(protos.clone());
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    let body = protos
        .client()
        .encode("connector.entryHandler.echo", &json!({"text": "pb"}))
        .unwrap();
    c.send_message(Message::request(
        1,
        MessageRoute::name("connector.entryHandler.echo"),
        body,
    ))
    .await;
    let m = c.recv_message().await;
    assert_eq!(
        serde_json::from_slice::<Value>(&m.body).unwrap(),
        json!({"code": 200, "text": "pb"})
    );
    // A JSON route (not in clientProtos) has no protobuf body to give.
    let r = c
        .call(2, "connector.entryHandler.pbOnly", &json!({"text": "json"}))
        .await;
    assert_eq!(r["code"], 500, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("protobuf"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn in_flight_limit_parks_messages_without_losing_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut cfg = test_config();
    cfg.max_in_flight = 2;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (g, r, p) = (gate.clone(), running.clone(), peak.clone());
    let builder = app(cfg).handler(
        "connector.entryHandler.wait",
        move |_s: Session, v: Value| {
            let (g, r, p) = (g.clone(), r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Blocks until the test opens the gate.
                let permit = g.acquire().await;
                r.fetch_sub(1, Ordering::SeqCst);
                permit
                    .map_err(|e| HandlerError::internal(e.to_string()))?
                    .forget();
                Ok::<_, HandlerError>(v)
            }
        },
    );
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    for id in 1..=6u32 {
        c.request(id, "connector.entryHandler.wait", &json!({"id": id}))
            .await;
    }
    // Two handlers start; the other four wait for a slot.
    within(async {
        while running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.add_permits(6);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(c.recv_message().await.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "more handlers ran at once than max_in_flight"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_handlers_at_most_the_drain_timeout() {
    let mut cfg = test_config();
    cfg.drain_timeout = Duration::from_millis(200);
    let builder = app(cfg).handler(
        "connector.entryHandler.forever",
        |_s: Session, _v: Value| async move {
            std::future::pending::<()>().await;
            Ok::<_, HandlerError>(())
        },
    );
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    c.request(1, "connector.entryHandler.forever", &json!({}))
        .await;
    // The request is in flight (a round trip on the same connection proves it was read).
    let r = c
        .call(2, "connector.entryHandler.echo", &json!({"text": "x"}))
        .await;
    assert_eq!(r["text"], "x");
    // stop() wraps the wait in a 10 s timeout: a hang fails the test.
    server.stop().await;
    c.expect_closed().await;
}

#[tokio::test]
async fn data_before_handshake_closes_when_configured() {
    let mut cfg = test_config();
    cfg.close_on_early_data = true;
    let server = start(app(cfg)).await;
    for ws in [false, true] {
        let mut c = Client::connect(ws, server.addr).await;
        c.request(1, "connector.entryHandler.echo", &json!({"text": "early"}))
            .await;
        c.expect_closed().await;
    }
    assert_eq!(server.frontend.stats().protocol_errors, 2);
    server.stop().await;
}

/// Messages queued before a kick are written before the KICK package. The handler's pushes
/// and its kick land in the connection task's queue and kick slot at the same time; the
/// driver used to pick either first, losing the pushes about half the time, so each
/// transport is tried over several connections.
#[tokio::test]
async fn messages_queued_before_a_kick_are_written_before_it() {
    let builder = app(test_config()).handler(
        "connector.entryHandler.pushThenKick",
        |s: Session, _v: Value| async move {
            for i in 0..5 {
                s.push("onPush", &json!({"i": i}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
            }
            s.kick("bye");
            Ok::<_, HandlerError>(())
        },
    );
    let server = start(builder).await;
    for round in 0..16 {
        let ws = round % 2 == 1;
        let mut c = Client::connect(ws, server.addr).await;
        c.handshake().await;
        c.notify("connector.entryHandler.pushThenKick", &json!({}))
            .await;
        let mut pushed = Vec::new();
        let kick = loop {
            let p = c
                .recv_no_heartbeat()
                .await
                .expect("a KICK before the close");
            match p.kind {
                PackageType::Kick => break p,
                PackageType::Data => {
                    let m = Message::decode(p.body).unwrap();
                    assert_eq!(m.route.as_str(), Some("onPush"));
                    pushed.push(serde_json::from_slice::<Value>(&m.body).unwrap()["i"].clone());
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(&kick.body[..], br#"{"reason":"bye"}"#);
        assert_eq!(
            pushed,
            (0..5).map(|i| json!(i)).collect::<Vec<_>>(),
            "ws={ws}"
        );
        c.expect_closed().await;
    }
    server.stop().await;
}

/// The graceful stop: stop accepting (a connect is refused), drain the request in flight
/// (its response arrives), then kick the client with a reason; `serve` returns on cancel.
#[tokio::test]
async fn graceful_stop_refuses_new_connections_and_answers_requests_in_flight() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let builder = app(test_config()).handler(
        "connector.entryHandler.held",
        move |_s: Session, v: Value| {
            let (entered_tx, gate) = (entered_tx.clone(), gate.clone());
            async move {
                let _ = entered_tx.send(()).await;
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(json!({"code": 200, "echo": v}))
            }
        },
    );
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    c.request(7, "connector.entryHandler.held", &json!({"n": 1}))
        .await;
    within(entered.recv()).await.expect("handler entered");

    within(server.frontend.stop_accepting()).await;
    let refused = within(tokio::net::TcpStream::connect(server.addr)).await;
    assert!(
        refused.is_err(),
        "a connect after stop_accepting was accepted"
    );

    let drain = tokio::spawn({
        let frontend = server.frontend.clone();
        async move {
            frontend
                .drain_and_kick("server stopping", Duration::from_secs(5))
                .await
        }
    });
    // The drain waits for the handler: let it run; nothing may be kicked yet (a kick now
    // would also lose the response checked below).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!drain.is_finished());
    assert_eq!(server.frontend.sessions().count(), 1);
    release.add_permits(1);

    let mut response = None;
    let kick = loop {
        let p = c.recv_no_heartbeat().await.expect("response, then KICK");
        match p.kind {
            PackageType::Kick => break p,
            PackageType::Data => {
                let m = Message::decode(p.body).unwrap();
                assert_eq!((m.kind, m.id), (MessageType::Response, 7));
                response = Some(serde_json::from_slice::<Value>(&m.body).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(response, Some(json!({"code": 200, "echo": {"n": 1}})));
    assert_eq!(&kick.body[..], br#"{"reason":"server stopping"}"#);
    c.expect_closed().await;
    let report = within(drain).await.unwrap();
    assert_eq!(
        (
            report.unfinished_requests,
            report.kicked,
            report.still_connected
        ),
        (0, 1, 0)
    );
    server.stop().await;
}

/// Packages up to the KICK, as (response id, body) for responses; panics on anything else
/// and on a close without a KICK.
async fn responses_then_kick(c: &mut Client) -> (Vec<(u32, Value)>, Bytes) {
    let mut responses = Vec::new();
    loop {
        let p = within(c.recv_no_heartbeat())
            .await
            .expect("responses, then a KICK, before the close");
        match p.kind {
            PackageType::Kick => return (responses, p.body),
            PackageType::Data => {
                let m = Message::decode(p.body).unwrap();
                assert_eq!(m.kind, MessageType::Response, "{m:?}");
                responses.push((m.id, serde_json::from_slice::<Value>(&m.body).unwrap()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A frontend whose `held` handler signals `entered` and waits for a `release` permit, and
/// whose `count` handler counts its calls.
fn stopping_app(
    config: shaddock_connector::ConnectorConfig,
) -> (
    FrontendBuilder,
    tokio::sync::mpsc::Receiver<()>,
    Arc<tokio::sync::Semaphore>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (entered_tx, entered) = tokio::sync::mpsc::channel::<()>(4);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (gate, count) = (release.clone(), counted.clone());
    let builder = app(config)
        .handler(
            "connector.entryHandler.held",
            move |_s: Session, v: Value| {
                let (entered_tx, gate) = (entered_tx.clone(), gate.clone());
                async move {
                    let _ = entered_tx.send(()).await;
                    let _permit = gate
                        .acquire()
                        .await
                        .map_err(|e| HandlerError::internal(e.to_string()))?;
                    Ok::<_, HandlerError>(json!({"code": 200, "echo": v}))
                }
            },
        )
        .handler(
            "connector.entryHandler.count",
            move |_s: Session, _v: Value| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, HandlerError>(json!({"code": 200}))
                }
            },
        );
    (builder, entered, release, counted)
}

/// During a graceful stop, a request that arrives is not handled: it is answered at once
/// with code 500 and the "reconnect" message (while the request already in flight is still
/// running), a notify is dropped, and the request in flight gets its real response; all
/// before the KICK.
#[tokio::test]
async fn a_request_during_a_graceful_stop_is_answered_with_an_error_before_the_kick() {
    let (builder, mut entered, release, counted) = stopping_app(test_config());
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    c.request(7, "connector.entryHandler.held", &json!({"n": 1}))
        .await;
    within(entered.recv()).await.expect("handler entered");

    within(server.frontend.stop_accepting()).await;
    assert!(!server.frontend.is_stopping());
    let drain = tokio::spawn({
        let frontend = server.frontend.clone();
        async move {
            frontend
                .drain_and_kick("server stopping", Duration::from_secs(5))
                .await
        }
    });
    within(async {
        while !server.frontend.is_stopping() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Sent after the stop began: refused, not handled. The answer comes while request 7
    // is still held (the drain cannot have ended, so this is not the kick's doing).
    c.notify("connector.entryHandler.count", &json!({})).await;
    c.request(8, "connector.entryHandler.count", &json!({}))
        .await;
    let m = within(c.recv_message()).await;
    assert_eq!((m.kind, m.id), (MessageType::Response, 8));
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    let msg = assert_client_error(&body, 500);
    assert_eq!(msg, STOPPING_MESSAGE);
    assert!(msg.contains("reconnect"), "{msg}");
    assert!(!drain.is_finished());
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a message sent during the stop was handled"
    );

    release.add_permits(1);
    let (responses, kick) = responses_then_kick(&mut c).await;
    assert_eq!(
        responses,
        [(7, json!({"code": 200, "echo": {"n": 1}}))],
        "the request in flight lost its response"
    );
    assert_eq!(&kick[..], br#"{"reason":"server stopping"}"#);
    c.expect_closed().await;
    let report = within(drain).await.unwrap();
    assert_eq!(
        (
            report.unfinished_requests,
            report.kicked,
            report.still_connected
        ),
        (0, 1, 0)
    );
    assert_eq!(counted.load(std::sync::atomic::Ordering::SeqCst), 0);
    server.stop().await;
}

/// A request still running when the drain gives up, and one parked behind it for a handler
/// slot, are both answered with code 500 before the KICK (they used to be cut off by it
/// with no answer at all).
#[tokio::test]
async fn requests_the_drain_gives_up_on_are_answered_with_an_error_before_the_kick() {
    let mut config = test_config();
    config.max_in_flight = 1;
    let (builder, mut entered, release, counted) = stopping_app(config);
    let server = start(builder).await;
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    // 7 is held until the end; 8, in the same write (so read with it), is parked for 7's
    // handler slot.
    let mut both = Vec::new();
    for (id, route) in [
        (7, "connector.entryHandler.held"),
        (8, "connector.entryHandler.count"),
    ] {
        let m = Message::request(id, MessageRoute::name(route.to_owned()), b"{}".to_vec());
        both.extend_from_slice(&m.to_package().unwrap().to_bytes().unwrap());
    }
    c.send_raw(&both).await;
    within(entered.recv()).await.expect("handler entered");

    within(server.frontend.stop_accepting()).await;
    let report = within(
        server
            .frontend
            .drain_and_kick("server stopping", Duration::from_millis(300)),
    )
    .await;
    let (responses, kick) = responses_then_kick(&mut c).await;
    let mut ids: Vec<u32> = responses.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [7, 8], "{responses:?}");
    for (id, body) in &responses {
        let expected = if *id == 7 {
            GAVE_UP_MESSAGE
        } else {
            STOPPING_MESSAGE
        };
        assert_eq!(assert_client_error(body, 500), expected, "request {id}");
    }
    assert_eq!(&kick[..], br#"{"reason":"server stopping"}"#);
    c.expect_closed().await;
    assert_eq!(
        (
            report.unfinished_requests,
            report.kicked,
            report.still_connected
        ),
        (1, 1, 0)
    );
    assert_eq!(counted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The handler given up on runs on; let it end so the shutdown does not wait for it.
    release.add_permits(1);
    server.stop().await;
}

/// A message many times the connection's read buffer (the WebSocket one is 2 KiB) arrives
/// whole over several reads, and the connection goes on with small ones after it.
async fn large_request_then_small(ws: bool) {
    let mut cfg = test_config();
    cfg.heartbeat_interval = None;
    let server = start(app(cfg)).await;
    let mut c = if ws {
        Client::ws(server.addr).await
    } else {
        Client::tcp(server.addr).await
    };
    c.handshake().await;
    let text = "ω".repeat(25_000);
    let r = c
        .call(1, "connector.entryHandler.echo", &json!({ "text": text }))
        .await;
    assert_eq!(r["code"], 200);
    assert_eq!(r["text"].as_str().map(str::len), Some(text.len()));
    assert_eq!(r["text"], text.as_str());
    let r = c
        .call(2, "connector.entryHandler.echo", &json!({"text": "small"}))
        .await;
    assert_eq!(r, json!({"code": 200, "text": "small"}));
    server.stop().await;
}

#[tokio::test]
async fn ws_large_request_then_small() {
    large_request_then_small(true).await;
}

#[tokio::test]
async fn tcp_large_request_then_small() {
    large_request_then_small(false).await;
}
