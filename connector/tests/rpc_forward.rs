//! Forwarding to backends over RPC and the frontend's `sys` remotes, over real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use serde_json::{Value, json};
use shaddock_connector::{Frontend, HandlerError, RpcForwarder, Session};
use shaddock_core::sys::{
    BindArgs, ForwardMessage, ForwardReply, KickArgs, PushArgs, SettingsArgs, msg_remote,
    session_remote,
};
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::PackageType;
use shaddock_rpc::{
    Crc32Router, Registry, RemoteError, Router, RpcClient, RpcConfig, RpcServer, ServerId,
    ServerInfo, Target,
};
use shaddock_test_support::logs::capture_logs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A `chat` backend: answers forwarded messages and calls back into the frontend.
struct Backend {
    id: String,
    /// To reach frontends (their `sys sessionRemote`).
    rpc: RpcClient,
}

impl msg_remote::Remote for Backend {
    async fn forward_message(&self, m: ForwardMessage) -> Result<ForwardReply, RemoteError> {
        let session = m.session.unwrap_or_default();
        let body: Value = serde_json::from_slice(&m.body_json).unwrap_or(Value::Null);
        let reply = match m.route.as_str() {
            "chat.chatHandler.whoami" => json!({
                "server": self.id,
                "uid": session.uid,
                "sid": session.id,
                "frontend": session.frontend_id,
                "settings": serde_json::from_slice::<Value>(&session.settings_json).unwrap_or(Value::Null),
                "body": body,
            }),
            "chat.chatHandler.send" => {
                let stub = session_remote::Client::new(&self.rpc);
                let target = Target::server(&session.frontend_id);
                stub.push_settings(
                    target,
                    SettingsArgs {
                        session_id: session.id,
                        settings_json: Bytes::from(r#"{"rid":"room-9"}"#),
                        removed: Vec::new(),
                    },
                )
                .await
                .map_err(|e| RemoteError::new(500, e.to_string()))?;
                let pushed = stub
                    .push(
                        target,
                        PushArgs {
                            session_ids: vec![session.id],
                            route: "onChat".into(),
                            body_json: Bytes::from(
                                json!({"msg": body["content"], "from": session.uid}).to_string(),
                            ),
                            ..PushArgs::default()
                        },
                    )
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                json!({"code": 200, "sent": pushed.sent})
            }
            "chat.chatHandler.rebind" => {
                let stub = session_remote::Client::new(&self.rpc);
                let target = Target::server(&session.frontend_id);
                let args = BindArgs {
                    session_id: session.id,
                    uid: session.uid.clone(),
                };
                stub.unbind(target, args.clone())
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                stub.bind(
                    target,
                    BindArgs {
                        session_id: session.id,
                        uid: "renamed".into(),
                    },
                )
                .await
                .map_err(|e| RemoteError::new(500, e.to_string()))?;
                json!({"code": 200})
            }
            "chat.chatHandler.kickMe" => {
                let n = session_remote::Client::new(&self.rpc)
                    .kick(
                        Target::server(&session.frontend_id),
                        KickArgs {
                            session_id: 0,
                            uid: session.uid.clone(),
                            reason: "kicked by backend".into(),
                        },
                    )
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                json!({"code": 200, "n": n.n})
            }
            "chat.chatHandler.shout" => {
                let r = session_remote::Client::new(&self.rpc)
                    .broadcast(
                        Target::server(&session.frontend_id),
                        PushArgs {
                            session_ids: vec![],
                            route: "onShout".into(),
                            body_json: Bytes::from(body.to_string()),
                            ..PushArgs::default()
                        },
                    )
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                json!({"code": 200, "sent": r.sent})
            }
            "chat.chatHandler.tag" => {
                // A package encoded once here (as a channel does for many frontends), sent
                // by uid; the new setting comes back with the reply.
                let msg = Message::push(
                    MessageRoute::name("onTag".to_owned()),
                    json!({"tag": body["tag"]}).to_string().into_bytes(),
                );
                let mut package = BytesMut::new();
                msg.encode_package(&mut package)
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                let r = session_remote::Client::new(&self.rpc)
                    .push(
                        Target::server(&session.frontend_id),
                        PushArgs {
                            uids: vec![session.uid.clone(), "nobody".into()],
                            package: package.freeze(),
                            ..PushArgs::default()
                        },
                    )
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                // Only the changed key travels back.
                return Ok(ForwardReply {
                    body_json: Bytes::from(
                        json!({"code": 200, "sent": r.sent, "missing": r.missing}).to_string(),
                    ),
                    settings_json: Bytes::from(json!({"tag": body["tag"]}).to_string()),
                    removed_settings: Vec::new(),
                });
            }
            "chat.chatHandler.untag" => {
                // Removes `rid` at once, and `tag` with the reply; nothing else changes.
                session_remote::Client::new(&self.rpc)
                    .push_settings(
                        Target::server(&session.frontend_id),
                        SettingsArgs {
                            session_id: session.id,
                            settings_json: Bytes::new(),
                            removed: vec!["rid".into()],
                        },
                    )
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))?;
                return Ok(ForwardReply {
                    body_json: Bytes::from(json!({"code": 200}).to_string()),
                    settings_json: Bytes::new(),
                    removed_settings: vec!["tag".into()],
                });
            }
            "chat.chatHandler.slow" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                json!({"code": 200})
            }
            "chat.chatHandler.fail" => return Err(RemoteError::new(503, "backend says no")),
            other => return Err(RemoteError::new(404, format!("no handler {other}"))),
        };
        Ok(ForwardReply {
            body_json: Bytes::from(reply.to_string()),
            settings_json: Bytes::new(),
            removed_settings: Vec::new(),
        })
    }
}

struct Cluster {
    server: Server,
    rpc: RpcClient,
    forwarder: RpcForwarder,
    shutdown: CancellationToken,
}

async fn rpc_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

async fn cluster() -> Cluster {
    let shutdown = CancellationToken::new();
    let mut rpc_cfg = RpcConfig::default();
    rpc_cfg.call_timeout = Duration::from_secs(2);
    rpc_cfg.connect_timeout = Duration::from_millis(500);
    let rpc = RpcClient::new(rpc_cfg.clone());
    let forwarder = RpcForwarder::new(rpc.clone());
    let mut config = test_config();
    // The test client sends no heartbeats; the slow-backend case waits 2 s.
    config.heartbeat_interval = Some(Duration::from_secs(30));
    let builder = Frontend::builder(config)
        .handler(
            "connector.entryHandler.enter",
            |s: Session, req: Value| async move {
                let uid = req["uid"].as_str().unwrap_or_default().to_owned();
                s.bind(&uid)
                    .map_err(|e| HandlerError::new(500, e.to_string()))?;
                s.set("rid", json!(req["rid"]));
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
        .handler(
            "connector.entryHandler.set",
            |s: Session, req: Value| async move {
                for (k, v) in req.as_object().cloned().unwrap_or_default() {
                    s.set(k, v);
                }
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
        .forwarder(Arc::new(forwarder.clone()));
    let server = start(builder).await;

    // The frontend's own RPC server, serving sys sessionRemote.
    let (fl, fport) = rpc_listener().await;
    let mut registry = Registry::new();
    registry.add(server.frontend.session_remote()).unwrap();
    tokio::spawn(RpcServer::new(registry, rpc_cfg.clone()).serve(fl, shutdown.clone()));

    // Two chat backends.
    for id in ["chat-1", "chat-2"] {
        let (bl, bport) = rpc_listener().await;
        let backend_rpc = RpcClient::new(rpc_cfg.clone());
        backend_rpc.directory().add(ServerInfo::new(
            "connector-1",
            "connector",
            "127.0.0.1",
            fport,
        ));
        let mut registry = Registry::new();
        registry
            .add(msg_remote::Server::new(Backend {
                id: id.to_owned(),
                rpc: backend_rpc,
            }))
            .unwrap();
        tokio::spawn(RpcServer::new(registry, rpc_cfg.clone()).serve(bl, shutdown.clone()));
        rpc.directory()
            .add(ServerInfo::new(id, "chat", "127.0.0.1", bport));
    }
    Cluster {
        server,
        rpc,
        forwarder,
        shutdown,
    }
}

impl Cluster {
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.stop().await;
    }
}

async fn entered(c: &Cluster, ws: bool, uid: &str) -> Client {
    let mut client = Client::connect(ws, c.server.addr).await;
    client.handshake().await;
    let r = client
        .call(
            1,
            "connector.entryHandler.enter",
            &json!({"uid": uid, "rid": "room-1"}),
        )
        .await;
    assert_eq!(r["code"], 200);
    client
}

#[tokio::test]
async fn requests_go_to_the_backend_the_router_picks() {
    let c = cluster().await;
    let servers = c.rpc.directory().servers_of_type("chat");
    for (i, uid) in ["alice", "bob", "carol", "dave"].into_iter().enumerate() {
        let mut client = entered(&c, i % 2 == 0, uid).await;
        let r = client
            .call(2, "chat.chatHandler.whoami", &json!({"x": i}))
            .await;
        let expected = Crc32Router.route(uid.as_bytes(), &servers).unwrap();
        assert_eq!(r["server"], expected.as_str(), "uid {uid}");
        assert_eq!(r["uid"], uid);
        assert_eq!(r["frontend"], "connector-1");
        assert_eq!(r["settings"], json!({"rid": "room-1"}));
        assert_eq!(r["body"], json!({"x": i}));
    }
    c.stop().await;
}

struct LastServer;
impl Router for LastServer {
    fn route(&self, _key: &[u8], servers: &[ServerInfo]) -> Option<ServerId> {
        servers.last().map(|s| s.id.clone())
    }
}

#[tokio::test]
async fn custom_router_and_route_key_per_type() {
    let c = cluster().await;
    c.rpc.set_router("chat", Arc::new(LastServer));
    let mut client = entered(&c, false, "alice").await;
    let r = client.call(2, "chat.chatHandler.whoami", &json!({})).await;
    assert_eq!(r["server"], "chat-2");
    // Back to crc32, keyed by the room in the session settings instead of the uid.
    c.rpc.set_router("chat", Arc::new(Crc32Router));
    c.forwarder.route_key("chat", |s: &Session, _route: &str| {
        s.get("rid")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
            .into_bytes()
    });
    let servers = c.rpc.directory().servers_of_type("chat");
    let expected = Crc32Router.route(b"room-1", &servers).unwrap();
    let r = client.call(3, "chat.chatHandler.whoami", &json!({})).await;
    assert_eq!(r["server"], expected.as_str());
    c.stop().await;
}

#[tokio::test]
async fn backend_pushes_settings_bind_and_kick_through_sys_remotes() {
    let c = cluster().await;
    for ws in [false, true] {
        let uid = if ws { "wsuser" } else { "tcpuser" };
        let mut client = entered(&c, ws, uid).await;
        // A notify forwarded to the backend, which pushes back through the frontend.
        client
            .notify("chat.chatHandler.send", &json!({"content": "hello"}))
            .await;
        let m = client.recv_message().await;
        assert_eq!(m.route.as_str(), Some("onChat"));
        assert_eq!(
            serde_json::from_slice::<Value>(&m.body).unwrap(),
            json!({"msg": "hello", "from": uid})
        );
        // The settings pushed by the backend are on the session now.
        let r = client.call(2, "chat.chatHandler.whoami", &json!({})).await;
        assert_eq!(r["settings"]["rid"], "room-9");
        // Unbind + bind from the backend.
        let r = client.call(3, "chat.chatHandler.rebind", &json!({})).await;
        assert_eq!(r["code"], 200);
        let r = client.call(4, "chat.chatHandler.whoami", &json!({})).await;
        assert_eq!(r["uid"], "renamed");
        // Kick by uid from the backend (the response may or may not beat the kick).
        client
            .request(5, "chat.chatHandler.kickMe", &json!({}))
            .await;
        let kick = loop {
            let p = client.recv_no_heartbeat().await.expect("kick");
            if p.kind == PackageType::Kick {
                break p;
            }
        };
        assert_eq!(&kick.body[..], br#"{"reason":"kicked by backend"}"#);
        client.expect_closed().await;
    }
    c.stop().await;
}

#[tokio::test]
async fn backend_errors_missing_types_down_and_slow_backends_answer_500() {
    let (logs, _g) = capture_logs();
    let c = cluster().await;
    // An `area` server that is registered but not running.
    let (l, port) = rpc_listener().await;
    drop(l);
    c.rpc
        .directory()
        .add(ServerInfo::new("area-1", "area", "127.0.0.1", port));
    // A gate: a frontend, whose RPC server has no `msgRemote` (it takes no forwarded requests).
    let (gl, gport) = rpc_listener().await;
    let gate = Frontend::builder(test_config()).build().unwrap();
    let mut registry = Registry::new();
    registry.add(gate.session_remote()).unwrap();
    tokio::spawn(RpcServer::new(registry, RpcConfig::default()).serve(gl, c.shutdown.clone()));
    c.rpc
        .directory()
        .add(ServerInfo::new("gate-1", "gate", "127.0.0.1", gport));
    for ws in [false, true] {
        let mut client = entered(&c, ws, if ws { "w" } else { "t" }).await;
        // The backend's own error code travels back.
        let r = client.call(2, "chat.chatHandler.fail", &json!({})).await;
        assert_eq!(r, json!({"code": 503, "msg": "backend says no"}));
        // No server of the type at all.
        let r = client
            .call(3, "nothere.playerHandler.move", &json!({}))
            .await;
        let msg = assert_client_error(&r, 500);
        assert!(msg.contains("`nothere`"), "{msg}");
        // A route of a frontend type, sent to a connector: the gate does not take forwarded
        // requests. The client learns where to send it, not which RPC service was missing.
        let r = client
            .call(4, "gate.gateHandler.queryEntry", &json!({}))
            .await;
        let msg = assert_client_error(&r, 500);
        assert_eq!(
            msg,
            "route `gate.gateHandler.queryEntry` is not served here: send it to a gate server"
        );
        // ... and the server's log has the detail: the route and the RPC error (logged before
        // the response is written).
        let text = logs.text();
        assert!(
            text.lines().any(|l| l.contains("forwarding failed")
                && l.contains("route=\"gate.gateHandler.queryEntry\"")
                && l.contains("msgRemote")),
            "{text}"
        );
        // Backend down.
        let r = client.call(5, "area.playerHandler.move", &json!({})).await;
        let msg = assert_client_error(&r, 500);
        assert_eq!(msg, "server type `area` is unavailable, try again later");
        // Backend too slow (call timeout 2 s).
        let r = client.call(6, "chat.chatHandler.slow", &json!({})).await;
        let msg = assert_client_error(&r, 500);
        assert!(msg.contains("did not answer in time"), "{msg}");
        // Still connected and served.
        let r = client.call(7, "chat.chatHandler.whoami", &json!({})).await;
        assert!(r["server"].as_str().unwrap().starts_with("chat-"));
    }
    c.stop().await;
}

#[tokio::test]
async fn backend_broadcasts_to_every_session_of_the_frontend() {
    let c = cluster().await;
    let mut a = entered(&c, false, "a").await;
    let mut b = entered(&c, true, "b").await;
    a.request(2, "chat.chatHandler.shout", &json!({"text": "all"}))
        .await;
    // For `a`, the push and the response may come in either order.
    let mut response = None;
    let mut pushes = 0;
    while response.is_none() || pushes == 0 {
        let m = a.recv_message().await;
        match m.kind {
            MessageType::Response => {
                response = Some(serde_json::from_slice::<Value>(&m.body).unwrap());
            }
            _ => {
                assert_eq!(m.route.as_str(), Some("onShout"));
                assert_eq!(&m.body[..], br#"{"text":"all"}"#);
                pushes += 1;
            }
        }
    }
    assert_eq!(response, Some(json!({"code": 200, "sent": 2})));
    let m = b.recv_message().await;
    assert_eq!(m.route.as_str(), Some("onShout"));
    assert_eq!(&m.body[..], br#"{"text":"all"}"#);
    c.stop().await;
}

#[tokio::test]
async fn backend_pushes_a_pre_encoded_package_by_uid_and_returns_settings() {
    let c = cluster().await;
    for ws in [false, true] {
        let uid = if ws { "wsuser" } else { "tcpuser" };
        let mut client = entered(&c, ws, uid).await;
        client
            .request(2, "chat.chatHandler.tag", &json!({"tag": "blue"}))
            .await;
        let (mut response, mut push) = (None, None);
        while response.is_none() || push.is_none() {
            let m = client.recv_message().await;
            let body = serde_json::from_slice::<Value>(&m.body).unwrap();
            match m.kind {
                MessageType::Response => response = Some(body),
                _ => {
                    assert_eq!(m.route.as_str(), Some("onTag"));
                    push = Some(body);
                }
            }
        }
        // Sent to the uid's one session; the uid with no session counts as missing.
        assert_eq!(
            response,
            Some(json!({"code": 200, "sent": 1, "missing": 1}))
        );
        assert_eq!(push, Some(json!({"tag": "blue"})));
        // The settings in the reply were merged into the frontend session.
        let r = client.call(3, "chat.chatHandler.whoami", &json!({})).await;
        assert_eq!(r["settings"], json!({"rid": "room-1", "tag": "blue"}));
        // Removals travel by name (push_settings and the reply); other keys stay.
        client
            .call(4, "connector.entryHandler.set", &json!({"kept": true}))
            .await;
        let r = client.call(5, "chat.chatHandler.untag", &json!({})).await;
        assert_eq!(r["code"], 200);
        let r = client.call(6, "chat.chatHandler.whoami", &json!({})).await;
        assert_eq!(r["settings"], json!({"kept": true}));
    }
    c.stop().await;
}
