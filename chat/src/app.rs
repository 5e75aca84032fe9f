//! The chat [`App`]: the gate and connector handlers, the chat handler, the chat remote, the
//! route key that keeps a room on one chat server, and the hook that leaves the room when a
//! client's connection ends.

use std::sync::Arc;

use serde_json::{Value, json};
use shaddock_connector::{HandlerError, RequestInfo, Session};
use shaddock_protocol::RouteDictionary;
use shaddock_rpc::{RpcError, Target};
use shaddock_server::app::BoxFuture;
use shaddock_server::{
    App, BackendSession, BindError, Component, DuplicateLogin, LiveServer, Rejoin, ServerContext,
};

use crate::remote::{CODE_NAME_TAKEN, ChatRemote, Member, Members, chat_remote};
use crate::validate::{self, name_of};

/// The gate's route: `{uid}` → `{code: 200, host, port}`.
pub const QUERY_ENTRY: &str = "gate.gateHandler.queryEntry";
/// The connector's route: `{username, rid}` → `{users}`.
pub const ENTER: &str = "connector.entryHandler.enter";
/// The chat server's route: `{content, target}` → `{}`.
pub const SEND: &str = "chat.chatHandler.send";
/// A message to a room or a user: `{msg, from, target}`.
pub const ON_CHAT: &str = "onChat";
/// Someone joined the room: `{user}`.
pub const ON_ADD: &str = "onAdd";
/// Someone left the room: `{user}`.
pub const ON_LEAVE: &str = "onLeave";

/// The error code of every refused request (pomelo's chat uses 500 throughout).
pub const CODE_ERROR: i64 = 500;

/// Longest uid the gate accepts, in characters (a name, `*` and a room, with room to spare).
pub const MAX_GATE_UID_CHARS: usize = 128;

const NOT_ENTERED: &str = "enter a room first (connector.entryHandler.enter)";

fn refuse(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(CODE_ERROR, e.to_string())
}

/// The response body of a refused request: `{code, error: true, msg}` (pomelo's chat answers
/// `{code: 500, error: true}`; `msg` says why).
pub fn error_body(_info: &RequestInfo, _session: &Session, e: &HandlerError) -> Value {
    json!({"code": e.code, "error": true, "msg": e.message})
}

/// The route dictionary, as pinus builds it for the same app: the handler routes sorted (the
/// tutorial's `connector.entryHandler.onUserLeave` is a handler method, hence listed), then
/// `config/dictionary.json` (`onChat`). Identical to the recorded pinus session.
///
/// # Errors
/// The dictionary could not be built (never, for these routes).
pub fn dictionary() -> Result<RouteDictionary, shaddock_protocol::Error> {
    RouteDictionary::new(
        [
            SEND,
            ENTER,
            "connector.entryHandler.onUserLeave",
            QUERY_ENTRY,
        ],
        [ON_CHAT],
    )
}

/// `crc32(key) % n`: which of `n` servers sorted by id serves `key`, the gate's rule for
/// handing a uid a connector (pomelo's chat does the same). `None` when `n` is 0.
pub fn pick_index(key: impl AsRef<[u8]>, n: usize) -> Option<usize> {
    (n > 0).then(|| crc32fast::hash(key.as_ref()) as usize % n)
}

/// On each connector, for its sessions in a room that was placed again (its chat server was
/// lost past the grace period, or came back as a new process with no rooms): re-join them on
/// the room's server now, without telling the room (they never left it).
fn rejoin_room(ctx: ServerContext, r: Rejoin) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let members: Vec<Member> = r
            .sessions
            .iter()
            .filter_map(|s| {
                Some(Member {
                    uid: s.uid()?,
                    sid: s.frontend_id().to_owned(),
                    rid: r.key.clone(),
                })
            })
            .collect();
        if members.is_empty() {
            return;
        }
        let n = members.len();
        let stub = chat_remote::Client::new(ctx.rpc());
        match stub
            .rejoin(Target::server(&r.server_id), Members { members })
            .await
        {
            Ok(()) => {
                tracing::info!(room = %r.key, server = %r.server_id, members = n, "room members re-joined");
            }
            Err(e) => {
                tracing::warn!(room = %r.key, server = %r.server_id, cause = %e, "room members not re-joined");
            }
        }
    })
}

/// `gate.gateHandler.queryEntry`: the connector for `uid`, with the client port it actually
/// bound (from the live cluster view).
async fn query_entry(ctx: ServerContext, body: Value) -> Result<Value, HandlerError> {
    let uid = validate::gate_uid(&body, "uid", MAX_GATE_UID_CHARS).map_err(refuse)?;
    let mut connectors: Vec<LiveServer> = ctx
        .servers_of_type("connector")
        .into_iter()
        .filter(|s| s.client_port.is_some())
        .collect();
    connectors.sort_by(|a, b| a.id.cmp(&b.id));
    let Some(c) = pick_index(&uid, connectors.len()).and_then(|i| connectors.get(i)) else {
        tracing::warn!("queryEntry: no connector is up");
        return Err(refuse("no connector is available"));
    };
    Ok(json!({"code": 200, "host": c.host, "port": c.client_port}))
}

/// Tells the room's chat server that `m` left (the session closed).
fn spawn_kick(ctx: ServerContext, m: Member) {
    tokio::spawn(async move {
        let stub = chat_remote::Client::new(ctx.rpc());
        if let Err(e) = stub.kick(Target::route("chat", &m.rid), m.clone()).await {
            tracing::warn!(uid = %m.uid, room = %m.rid, cause = %e, "chatRemote.kick failed");
        }
    });
}

/// Kicks `m.uid` from its room on every connector id (configured or live, this one included:
/// a connector restarted under its id leaves ghosts under it); `true` if every kick was answered.
async fn remove_ghost(ctx: &ServerContext, stub: &chat_remote::Client, m: &Member) -> bool {
    let mut connectors: Vec<String> = ctx
        .configured_servers()
        .iter()
        .filter(|s| s.server_type == "connector")
        .map(|s| s.id.clone())
        .chain(ctx.servers_of_type("connector").into_iter().map(|s| s.id))
        .collect();
    connectors.sort();
    connectors.dedup();
    tracing::info!(uid = %m.uid, room = %m.rid, "name held by a ghost member (its connector died); removing it");
    let mut ok = true;
    for sid in connectors {
        let ghost = Member { sid, ..m.clone() };
        if let Err(e) = stub.kick(Target::route("chat", &m.rid), ghost).await {
            tracing::warn!(uid = %m.uid, room = %m.rid, cause = %e, "ghost removal failed");
            ok = false;
        }
    }
    ok
}

/// `connector.entryHandler.enter`: binds `username*rid` (refused cluster-wide if that name is
/// in the room), joins the room on its chat server, answers the room's user names.
async fn enter(ctx: ServerContext, s: Session, body: Value) -> Result<Value, HandlerError> {
    let username = validate::username(&body, "username").map_err(refuse)?;
    let rid = validate::room(&body, "rid").map_err(refuse)?;
    if let Some(current) = s.uid() {
        return Err(refuse(format!(
            "this connection already entered as \"{}\"; open another connection for another room",
            name_of(&current)
        )));
    }
    let uid = validate::uid(&username, &rid);
    let taken = || {
        refuse(format!(
            "the name \"{username}\" is already taken in room \"{rid}\""
        ))
    };
    match ctx.bind(&s, &uid).await {
        Ok(()) => {}
        Err(BindError::Refused { .. }) => return Err(taken()),
        Err(e) => {
            tracing::warn!(%uid, cause = %e, "enter: bind failed");
            return Err(refuse(format!("cannot log in: {e}")));
        }
    }
    let member = Member {
        uid: uid.clone(),
        sid: s.frontend_id().to_owned(),
        rid: rid.clone(),
    };
    let stub = chat_remote::Client::new(ctx.rpc());
    let mut added = stub.add(Target::route("chat", &rid), member.clone()).await;
    if let Err(RpcError::Remote {
        code: CODE_NAME_TAKEN,
        ..
    }) = &added
    {
        // The master granted the uid, so no live session holds it: the room's member of
        // that name is a ghost of a connector that died (kill -9, crash) before it could
        // leave. Remove it wherever it was, then join.
        if remove_ghost(&ctx, &stub, &member).await {
            added = stub.add(Target::route("chat", &rid), member.clone()).await;
        }
    }
    match added {
        Ok(users) => {
            s.set("rid", Value::String(rid));
            // The connection may have ended while we were joining: the close hook saw no
            // room then, so leave here.
            if s.is_closed() {
                spawn_kick(ctx, member);
            }
            Ok(json!({"users": users.names}))
        }
        Err(e) => {
            // Not in the room: free the name on this session so a retry can bind again.
            let _ = s.unbind(&uid);
            match e {
                RpcError::Remote {
                    code: CODE_NAME_TAKEN,
                    ..
                } => Err(taken()),
                e => {
                    tracing::warn!(%uid, cause = %e, "enter: chatRemote.add failed");
                    Err(refuse(format!("cannot join room \"{}\": {e}", member.rid)))
                }
            }
        }
    }
}

/// `chat.chatHandler.send`: `onChat {msg, from, target}` to the session's room or to one user
/// in it. Answers `{}`.
async fn send(s: BackendSession, body: Value) -> Result<Value, HandlerError> {
    let uid = s.uid().ok_or_else(|| refuse(NOT_ENTERED))?;
    let Some(Value::String(rid)) = s.get("rid") else {
        return Err(refuse(NOT_ENTERED));
    };
    let content = validate::content(&body, "content").map_err(refuse)?;
    let target = validate::target(&body, "target").map_err(refuse)?;
    let channels = s.ctx().channels();
    let channel = channels
        .get(&rid)
        .filter(|c| c.member(&uid).is_some())
        .ok_or_else(|| refuse(format!("you are not in room \"{rid}\"")))?;
    let from = name_of(&uid);
    let summary = match target {
        validate::Target::Room => {
            let push = json!({"msg": content, "from": from, "target": "*"});
            channel.push(ON_CHAT, &push).await
        }
        validate::Target::User(name) => {
            let tuid = validate::uid(&name, &rid);
            let fid = channel
                .member(&tuid)
                .ok_or_else(|| refuse(format!("user \"{name}\" is not in room \"{rid}\"")))?;
            let push = json!({"msg": content, "from": from, "target": name});
            channels.push_to_uids(ON_CHAT, &push, &[(tuid, fid)]).await
        }
    };
    match summary {
        Ok(sum) if !sum.failed.is_empty() => {
            tracing::warn!(room = %rid, failed = ?sum.failed, "onChat not delivered everywhere");
        }
        Ok(_) => {}
        Err(e) => return Err(refuse(format!("message not sent: {e}"))),
    }
    Ok(json!({}))
}

/// On each connector: when a session in a room closes, `chatRemote.kick` it from the room.
struct LeaveOnClose;

impl Component for LeaveOnClose {
    fn name(&self) -> &str {
        "leave-room-on-close"
    }

    fn after_start(&self, ctx: &ServerContext) -> BoxFuture<'static, ()> {
        if ctx.server_type() == "connector"
            && let Some(frontend) = ctx.frontend()
        {
            let ctx = ctx.clone();
            frontend.sessions().on_closed(move |s, _reason| {
                let (Some(uid), Some(Value::String(rid))) = (s.uid(), s.get("rid")) else {
                    return;
                };
                let member = Member {
                    uid,
                    sid: s.frontend_id().to_owned(),
                    rid,
                };
                spawn_kick(ctx.clone(), member);
            });
        }
        Box::pin(async {})
    }
}

/// The whole chat app, for [`shaddock_server::run`].
pub fn app() -> App {
    let mut app = App::new("shaddock-chat")
        // A name already in the room is refused, wherever the first one connected.
        .duplicate_login(DuplicateLogin::RefuseNew)
        .frontend("gate", |ctx, b| {
            let ctx = ctx.clone();
            b.error_handler(error_body)
                .handler(QUERY_ENTRY, move |_s: Session, body: Value| {
                    query_entry(ctx.clone(), body)
                })
        })
        .frontend("connector", |ctx, b| {
            let ctx = ctx.clone();
            b.error_handler(error_body)
                .handler(ENTER, move |s: Session, body: Value| {
                    enter(ctx.clone(), s, body)
                })
        })
        // Requests for `chat` go to the chat server of the session's room.
        .route_key("chat", |s| {
            s.settings
                .get("rid")
                .and_then(Value::as_str)
                .map_or_else(|| s.id.to_string(), str::to_owned)
        })
        .handler(SEND, send)
        // A room stays on the chat server that first got it; only a lost server's rooms
        // move, with their members.
        .placement("chat")
        .rejoin("chat", rejoin_room)
        .remotes("chat", |ctx, registry| {
            registry
                .add(chat_remote::Server::new(ChatRemote::new(ctx.clone())))
                .map(drop)
        })
        .component(LeaveOnClose);
    match dictionary() {
        Ok(d) => app = app.dictionary(Arc::new(d)),
        Err(e) => tracing::error!(cause = %e, "route dictionary not built; routes go uncompressed"),
    }
    app
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_matches_the_recorded_pinus_session() {
        let d = dictionary().unwrap();
        for (route, code) in [
            (SEND, 1),
            (ENTER, 2),
            ("connector.entryHandler.onUserLeave", 3),
            (QUERY_ENTRY, 4),
            (ON_CHAT, 5),
        ] {
            assert_eq!(d.code(route), Some(code), "{route}");
        }
        assert_eq!(d.code(ON_ADD), None);
    }

    #[test]
    fn placement_is_crc32_modulo() {
        assert_eq!(pick_index("anything", 0), None);
        // CRC-32/IEEE, as pinus-chat's crc32.js: "alice" = 0x278ebc47, "bob" = 0xf5cbb140.
        assert_eq!(pick_index("alice", 3), Some(2));
        assert_eq!(pick_index("bob", 3), Some(2));
        assert_eq!(pick_index("alice", 1), Some(0));
    }

    #[test]
    fn app_declarations_are_valid() {
        assert!(app().validate().is_ok());
    }
}
