//! The demo app the cluster tests run: a gate, connectors and chat backends.
//!
//! - `gate.gateHandler.queryEntry` → `{code, host, port}` of a connector (crc32 of the uid).
//! - `connector.entryHandler.enter {uid, rid}` binds the uid cluster-wide and sets `rid`.
//! - `chat.chatHandler.join` adds the user to channel `rid`; `send {msg}` pushes `onChat` to
//!   the channel; `whoami` answers which chat server ran it; `slow {ms}` pushes `onSlow`, then answers after `ms`.
//!
//! Chat requests are routed by the session's `rid`, so a room lives on one chat server.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use shaddock_connector::HandlerError;
use shaddock_server::{App, BackendSession, run};

fn err(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(500, e.to_string())
}

fn room(s: &BackendSession) -> String {
    s.get("rid")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let app = App::new("shaddock-demo")
        .frontend("gate", |ctx, b| {
            let ctx = ctx.clone();
            b.handler(
                "gate.gateHandler.queryEntry",
                move |_s: shaddock_connector::Session, body: Value| {
                    let ctx = ctx.clone();
                    async move {
                        let conns = ctx.servers_of_type("connector");
                        if conns.is_empty() {
                            return Err(HandlerError::new(500, "no connector"));
                        }
                        let uid = body["uid"].as_str().unwrap_or_default();
                        let c = &conns[crc32fast::hash(uid.as_bytes()) as usize % conns.len()];
                        Ok(json!({"code": 200, "host": c.host, "port": c.client_port, "id": c.id}))
                    }
                },
            )
        })
        .frontend("connector", |ctx, b| {
            let ctx = ctx.clone();
            b.handler(
                "connector.entryHandler.enter",
                move |s: shaddock_connector::Session, body: Value| {
                    let ctx = ctx.clone();
                    async move {
                        let uid = body["uid"].as_str().unwrap_or_default().to_owned();
                        if uid.is_empty() {
                            return Err(HandlerError::new(500, "uid is required"));
                        }
                        s.set("rid", body["rid"].clone());
                        ctx.bind(&s, &uid).await.map_err(err)?;
                        Ok(json!({"code": 200, "server": ctx.server_id()}))
                    }
                },
            )
        })
        .route_key("chat", |s| {
            s.settings
                .get("rid")
                .and_then(Value::as_str)
                .map_or_else(|| s.id.to_string(), str::to_owned)
        })
        .handler(
            "chat.chatHandler.join",
            |s: BackendSession, _b: Value| async move {
                let uid = s
                    .uid()
                    .ok_or_else(|| HandlerError::new(500, "not logged in"))?;
                let ch = s.ctx().channels().get_or_create(&room(&s));
                ch.add(&uid, s.frontend_id());
                Ok::<_, HandlerError>(json!({"code": 200, "users": ch.uids()}))
            },
        )
        .handler(
            "chat.chatHandler.send",
            |s: BackendSession, b: Value| async move {
                let ch = s
                    .ctx()
                    .channels()
                    .get(&room(&s))
                    .ok_or_else(|| HandlerError::new(500, "no such room"))?;
                let sum = ch
                    .push("onChat", &json!({"from": s.uid(), "msg": b["msg"]}))
                    .await
                    .map_err(err)?;
                Ok::<_, HandlerError>(json!({"code": 200, "rpcs": sum.rpcs, "sent": sum.sent}))
            },
        )
        .handler(
            "chat.chatHandler.whoami",
            |s: BackendSession, _b: Value| async move {
                s.set("seen", json!(true));
                Ok::<_, HandlerError>(json!({
                    "code": 200,
                    "server": s.ctx().server_id(),
                    "uid": s.uid(),
                    "frontend": s.frontend_id(),
                    "rid": s.get("rid"),
                }))
            },
        )
        .handler(
            "chat.chatHandler.slow",
            |s: BackendSession, b: Value| async move {
                let ms = b["ms"].as_u64().unwrap_or(100).min(10_000);
                // Tells the client the request has reached the backend.
                s.push("onSlow", &json!({"ms": ms})).await.map_err(err)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, HandlerError>(
                    json!({"code": 200, "slept": ms, "server": s.ctx().server_id()}),
                )
            },
        );
    run(app)
}
