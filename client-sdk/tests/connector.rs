//! The client against Shaddock's own connector (`shaddock-connector`) over raw TCP and
//! WebSocket: handshake with user data, heartbeats keeping the connection alive, requests
//! (JSON values and serde types), notifies, pushes with dictionary compression, handler
//! errors, a kick, close.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, DisconnectReason, Error, Event, Transport};
use shaddock_connector::{ConnectorConfig, Frontend, HandlerError, Session};
use shaddock_protocol::RouteDictionary;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Serialize)]
struct Echo<'a> {
    text: &'a str,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
struct EchoReply {
    code: u32,
    text: String,
}

struct Server {
    addr: String,
    frontend: Frontend,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    dict: Arc<RouteDictionary>,
    closed: mpsc::UnboundedReceiver<(Option<String>, String)>,
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.unwrap().unwrap();
    }
}

async fn start() -> Server {
    let mut config = ConnectorConfig::default();
    config.frontend_id = "connector-1".into();
    config.heartbeat_interval = Some(Duration::from_secs(1));
    let dict = Arc::new(
        RouteDictionary::new(
            [
                "connector.entryHandler.echo",
                "connector.entryHandler.enter",
                "connector.entryHandler.pushMe",
            ],
            ["onChat"],
        )
        .unwrap(),
    );
    let frontend = Frontend::builder(config)
        .dictionary(dict.clone())
        .handler(
            "connector.entryHandler.echo",
            |_s: Session, req: Value| async move {
                Ok::<_, HandlerError>(json!({"code": 200, "text": req["text"]}))
            },
        )
        .handler(
            "connector.entryHandler.enter",
            |s: Session, req: Value| async move {
                let uid = req["uid"].as_str().unwrap_or_default().to_owned();
                s.bind(&uid)
                    .map_err(|e| HandlerError::new(501, e.to_string()))?;
                Ok::<_, HandlerError>(json!({"code": 200, "sid": s.id()}))
            },
        )
        .handler(
            "connector.entryHandler.pushMe",
            |s: Session, req: Value| async move {
                s.push("onPush", &json!({"got": req}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(())
            },
        )
        .handler(
            "connector.entryHandler.fail",
            |_s: Session, _req: Value| async move { Err::<(), _>(HandlerError::new(503, "nope")) },
        )
        .build()
        .expect("build");
    let (closed_tx, closed) = mpsc::unbounded_channel();
    frontend.sessions().on_closed(move |s, reason| {
        let _ = closed_tx.send((s.uid(), reason.to_owned()));
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let task = {
        let (f, s) = (frontend.clone(), shutdown.clone());
        tokio::spawn(async move { f.serve(listener, s).await })
    };
    Server {
        addr,
        frontend,
        shutdown,
        task,
        dict,
        closed,
    }
}

fn config() -> ClientConfig {
    ClientConfig::default()
        .with_user(json!({"name": "alice"}))
        .with_request_timeout(Duration::from_secs(5))
}

async fn full_flow(transport: Transport) {
    let mut server = start().await;
    let (client, mut events) = within(Client::connect(&server.addr, transport, config()))
        .await
        .unwrap();
    assert_eq!(client.heartbeat_interval(), Some(Duration::from_secs(1)));
    let dict = client
        .dictionary()
        .expect("the connector sends its dictionary");
    assert_eq!(dict.version(), server.dict.version());
    assert_eq!(dict.code("onChat"), server.dict.code("onChat"));

    // Requests: a JSON value and serde types (routes go out compressed).
    let r = within(client.request("connector.entryHandler.echo", &json!({"text": "hi Ω"})))
        .await
        .unwrap();
    assert_eq!(r, json!({"code": 200, "text": "hi Ω"}));
    let r: EchoReply =
        within(client.request_as("connector.entryHandler.echo", &Echo { text: "typed" }))
            .await
            .unwrap();
    assert_eq!(
        r,
        EchoReply {
            code: 200,
            text: "typed".into()
        }
    );
    // A handler error is a normal response carrying the code.
    let r = within(client.request("connector.entryHandler.fail", &json!({})))
        .await
        .unwrap();
    assert_eq!(r["code"], 503);
    // An unknown route: an error response, the connection stays.
    let r = within(client.request("connector.nope.nope", &json!({})))
        .await
        .unwrap();
    assert_eq!(r["code"], 500);

    let r = within(client.request("connector.entryHandler.enter", &json!({"uid": "alice"})))
        .await
        .unwrap();
    assert_eq!(r["code"], 200);

    // Notify → the handler pushes (string route).
    let mut on_push = client.on("onPush");
    within(client.notify("connector.entryHandler.pushMe", &json!({"n": 1})))
        .await
        .unwrap();
    let p = within(on_push.recv()).await.unwrap();
    assert_eq!(p.value().unwrap(), json!({"got": {"n": 1}}));
    assert_eq!(p.code, None, "onPush is not in the dictionary");

    // Server-side push on a dictionary route arrives compressed and is expanded.
    let mut on_chat = client.on("onChat");
    let sid = server.frontend.sessions().get_by_uid("alice")[0].id();
    server
        .frontend
        .push(sid, "onChat", &json!({"msg": "hello"}))
        .unwrap();
    let p = within(on_chat.recv()).await.unwrap();
    assert_eq!(&*p.route, "onChat");
    assert_eq!(p.code, server.dict.code("onChat"));
    assert_eq!(p.decode::<Value>().unwrap()["msg"], "hello");

    // Our heartbeats keep the connection open well past the server's 2 s timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), client.closed())
            .await
            .is_err(),
        "the connection should stay open while heartbeats flow"
    );
    assert_eq!(client.pending_requests(), 0);

    // Kick: an event with the reason, then the connection ends.
    let waiting = {
        let c = client.clone();
        tokio::spawn(async move { c.on("never").recv().await })
    };
    assert_eq!(
        server.frontend.sessions().kick_by_uid("alice", "bye now"),
        1
    );
    match within(events.recv()).await.unwrap() {
        Event::Kicked { reason } => assert_eq!(reason, "bye now"),
        other => panic!("expected Kicked, got {other:?}"),
    }
    let kicked = DisconnectReason::Kicked {
        reason: "bye now".into(),
    };
    match within(events.recv()).await.unwrap() {
        Event::Disconnected(reason) => assert_eq!(reason, kicked),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(within(client.closed()).await, kicked);
    assert!(within(waiting).await.unwrap().is_none(), "push streams end");
    match within(client.request("connector.entryHandler.echo", &json!({}))).await {
        Err(Error::Disconnected(reason)) => assert_eq!(reason, kicked),
        other => panic!("requests after a kick fail: {other:?}"),
    }
    let (uid, reason) = within(server.closed.recv()).await.unwrap();
    assert_eq!(uid.as_deref(), Some("alice"));
    assert!(reason.contains("bye now"), "{reason}");
    server.stop().await;
}

#[tokio::test]
async fn tcp_against_the_connector() {
    full_flow(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_against_the_connector() {
    full_flow(Transport::WebSocket).await;
}

#[tokio::test]
async fn close_and_drop_end_the_server_session() {
    for transport in TRANSPORTS {
        let mut server = start().await;
        let (client, _events) = within(Client::connect(&server.addr, transport, config()))
            .await
            .unwrap();
        within(client.request("connector.entryHandler.enter", &json!({"uid": "bob"})))
            .await
            .unwrap();
        client.close().await;
        assert_eq!(within(client.closed()).await, DisconnectReason::Closed);
        let (uid, _) = within(server.closed.recv()).await.unwrap();
        assert_eq!(uid.as_deref(), Some("bob"));

        // Dropping every handle ends the connection too.
        let (client, _events) = within(Client::connect(&server.addr, transport, config()))
            .await
            .unwrap();
        within(client.request("connector.entryHandler.enter", &json!({"uid": "carol"})))
            .await
            .unwrap();
        drop(client);
        let (uid, _) = within(server.closed.recv()).await.unwrap();
        assert_eq!(uid.as_deref(), Some("carol"));
        server.stop().await;
    }
}

#[tokio::test]
async fn server_shutdown_is_reported() {
    for transport in TRANSPORTS {
        let server = start().await;
        let (client, _events) = within(Client::connect(&server.addr, transport, config()))
            .await
            .unwrap();
        server.stop().await;
        let reason = within(client.closed()).await;
        assert!(
            matches!(
                reason,
                DisconnectReason::ServerClosed
                    | DisconnectReason::Kicked { .. }
                    | DisconnectReason::Io { .. }
            ),
            "{reason:?}"
        );
    }
}
