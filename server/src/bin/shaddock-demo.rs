//! The demo app the cluster tests run: a gate, connectors and chat backends.
//!
//! - `gate.gateHandler.queryEntry` → `{code, host, port}` of a connector (crc32 of the uid).
//! - `connector.entryHandler.enter {uid, rid}` binds the uid cluster-wide and sets `rid`;
//!   `leave {uid}` unbinds it; `enterWhenClosed {uid}` binds only once the client is gone and
//!   notes the outcome (`late-bind <uid>: ...`) in the lifecycle file.
//! - `chat.chatHandler.join` adds the user to channel `rid`; `send {msg}` pushes `onChat` to
//!   the channel; `whoami` answers which chat server ran it; `slow {ms}` pushes `onSlow`, then answers after `ms`.
//!
//! - `broadcast {..}` pushes `onBroadcast` to every session of every connector (`pad: n`
//!   adds n bytes to the body; answers
//!   `rpcs`, `sent`, and `published`: 1 in a cluster on NATS, where it is one NATS message);
//!   `kickUser {uid}` kicks a uid wherever it is; a body with `"forbidden": true` is refused
//!   by a backend filter; a `Lifecycle` component records start/after_start/before_stop/stop per server
//!   in `$SHADDOCK_DEMO_LIFECYCLE_DIR`; `SHADDOCK_DEMO_DUPLICATE=refuse` refuses duplicate
//!   logins instead of kicking the old session; `SHADDOCK_DEMO_FAIL_AGAIN=<server id>` makes
//!   that server's every start after its first fail at once (it records `refused`), to test
//!   crash loops.
//!
//! Chat requests are routed by the session's `rid`, so a room lives on one chat server.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use shaddock_server::{
    App, BackendSession, Component, ComponentError, DuplicateLogin, HandlerError, ServerContext,
    Session, run,
};

/// Appends `start`, `after_start`, `before_stop` and `stop` to `$SHADDOCK_DEMO_LIFECYCLE_DIR/<server id>`.
struct Lifecycle(Option<std::path::PathBuf>);

impl Lifecycle {
    fn note(&self, ctx: &ServerContext, what: &str) {
        use std::io::Write;
        let Some(dir) = &self.0 else { return };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(ctx.server_id()));
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{what}");
        }
    }
}

impl Component for Lifecycle {
    fn name(&self) -> &str {
        "lifecycle"
    }
    async fn start(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
        let started_before = self.0.as_ref().is_some_and(|d| {
            std::fs::read_to_string(d.join(ctx.server_id()))
                .is_ok_and(|t| t.lines().any(|l| l == "start"))
        });
        let fail = std::env::var("SHADDOCK_DEMO_FAIL_AGAIN").is_ok_and(|id| id == ctx.server_id());
        if fail && started_before {
            self.note(ctx, "refused");
            return Err(ComponentError::new(
                "SHADDOCK_DEMO_FAIL_AGAIN: refusing to start again",
            ));
        }
        self.note(ctx, "start");
        Ok(())
    }
    async fn after_start(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
        self.note(ctx, "after_start");
        Ok(())
    }
    async fn before_stop(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
        self.note(ctx, "before_stop");
        Ok(())
    }
    async fn stop(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
        self.note(ctx, "stop");
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(500, e.to_string())
}

fn room(s: &BackendSession) -> String {
    s.get("rid")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `cargo run -p shaddock-server -- list` from the checkout runs this demo binary, which has
/// no `config/` there: for an admin verb without `--config` or `--master`, say what to run
/// instead of failing on the missing file.
fn admin_without_config() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verb = args
        .iter()
        .find(|a| ["list", "stop", "kill", "add"].contains(&a.as_str()))?;
    let located = args
        .iter()
        .any(|a| a.starts_with("--config") || a.starts_with("--master"));
    if located || std::path::Path::new("config/servers.json").exists() {
        return None;
    }
    Some(format!(
        "error: no config/servers.json here, so no master to ask.\n\
         - the example chat: cargo run -p shaddock-chat -- {verb}\n\
         - your own app: run `{verb}` from its directory, or pass --config DIR (the folder \
         holding servers.json and master.json) or --master HOST:PORT"
    ))
}

fn main() -> ExitCode {
    if let Some(hint) = admin_without_config() {
        eprintln!("{hint}");
        return ExitCode::from(2);
    }
    let policy = match std::env::var("SHADDOCK_DEMO_DUPLICATE").as_deref() {
        Ok("refuse") => DuplicateLogin::RefuseNew,
        _ => DuplicateLogin::KickOld,
    };
    let lifecycle = Lifecycle(std::env::var_os("SHADDOCK_DEMO_LIFECYCLE_DIR").map(Into::into));
    let app = App::new("shaddock-demo")
        // The tests start only the types each needs.
        .allow_missing_server_types()
        .duplicate_login(policy)
        .component(lifecycle)
        .before("chat", |req| {
            if req.body()["forbidden"] == json!(true) {
                return Err(HandlerError::new(403, "forbidden by filter"));
            }
            Ok(())
        })
        .handler(
            "chat.chatHandler.broadcast",
            |s: BackendSession, mut b: Value| async move {
                // `{"pad": n}`: a body of n bytes more (larger than a client may send).
                if let Some(n) = b["pad"].as_u64() {
                    b["pad"] = json!("x".repeat(n.min(8 << 20) as usize));
                }
                let sum = s
                    .ctx()
                    .channels()
                    .broadcast("connector", "onBroadcast", &b)
                    .await
                    .map_err(err)?;
                Ok::<_, HandlerError>(json!({
                    "code": 200,
                    "rpcs": sum.rpcs,
                    "sent": sum.sent,
                    "published": sum.published,
                }))
            },
        )
        .handler(
            "chat.chatHandler.kickUser",
            |s: BackendSession, b: Value| async move {
                let uid = b["uid"].as_str().unwrap_or_default();
                let n = s
                    .ctx()
                    .kick_uid(uid, "kicked by admin")
                    .await
                    .map_err(err)?;
                Ok::<_, HandlerError>(json!({"code": 200, "kicked": n}))
            },
        )
        .frontend_handler(
            "gate.gateHandler.queryEntry",
            |ctx: ServerContext, body: Value| async move {
                let conns = ctx.servers_of_type("connector");
                if conns.is_empty() {
                    return Err(HandlerError::new(500, "no connector"));
                }
                let uid = body["uid"].as_str().unwrap_or_default();
                let c = &conns[crc32fast::hash(uid.as_bytes()) as usize % conns.len()];
                Ok(json!({"code": 200, "host": c.host, "port": c.client_port, "id": c.id}))
            },
        )
        .frontend_handler(
            "connector.entryHandler.enter",
            |ctx: ServerContext, s: Session, body: Value| async move {
                let uid = body["uid"].as_str().unwrap_or_default().to_owned();
                if uid.is_empty() {
                    return Err(HandlerError::new(500, "uid is required"));
                }
                s.set("rid", body["rid"].clone());
                ctx.bind(&s, &uid).await.map_err(err)?;
                Ok(json!({"code": 200, "server": ctx.server_id()}))
            },
        )
        .frontend_handler(
            "connector.entryHandler.leave",
            |s: Session, body: Value| async move {
                let uid = body["uid"].as_str().unwrap_or_default();
                s.unbind(uid).map_err(err)?;
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
        .frontend_handler(
            "connector.entryHandler.enterWhenClosed",
            |ctx: ServerContext, s: Session, body: Value| async move {
                // A login whose client is gone before the bind completes: the master grants
                // the claim, the closed session cannot take it.
                let uid = body["uid"].as_str().unwrap_or_default().to_owned();
                let _ = tokio::time::timeout(Duration::from_secs(10), s.closed()).await;
                let outcome = match ctx.bind(&s, &uid).await {
                    Ok(()) => "bound".to_owned(),
                    Err(e) => e.to_string(),
                };
                Lifecycle(std::env::var_os("SHADDOCK_DEMO_LIFECYCLE_DIR").map(Into::into))
                    .note(&ctx, &format!("late-bind {uid}: {outcome}"));
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
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
                // `seen` reaches the frontend session when this returns: the next call sees it.
                let seen = s.get("seen");
                s.set("seen", json!(true));
                Ok::<_, HandlerError>(json!({
                    "code": 200,
                    "server": s.ctx().server_id(),
                    "uid": s.uid(),
                    "frontend": s.frontend_id(),
                    "rid": s.get("rid"),
                "seen": seen,
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
