//! The chat [`App`]: the gate and connector handlers, the chat handler, the chat remote, the
//! route key that keeps a room on one chat server, and the hook that leaves the room when a
//! client's connection ends.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shaddock_protocol::RouteDictionary;
use shaddock_rpc::{RpcError, Target};
use shaddock_server::app::BoxFuture;
use shaddock_server::{
    App, BackendSession, BindError, Component, ComponentError, DuplicateLogin, HandlerError, Json,
    LiveServer, Rejoin, RequestInfo, ServerContext, Session, State,
};

use crate::remote::{CODE_NAME_TAKEN, ChatRemote, Member, Rooms, chat_remote};
pub use crate::validate::MAX_GATE_UID_CHARS;
use crate::validate::{self, Content, GateUid, Name, Room, name_of};

/// The gate's route: `{uid}` → `{code: 200, host, port}`.
pub const QUERY_ENTRY: &str = "gate.gateHandler.queryEntry";
/// The connector's route: `{username, rid}` → `{users}`.
pub const ENTER: &str = "connector.entryHandler.enter";
/// A connector method of the pinus chat (called there when a client leaves), hence in its
/// route dictionary; here it answers a client with an error (leaving is closing).
pub const ON_USER_LEAVE: &str = "connector.entryHandler.onUserLeave";
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

const NOT_ENTERED: &str = "enter a room first (connector.entryHandler.enter)";

fn refuse(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(CODE_ERROR, e.to_string())
}

/// The response body of a refused request: `{code, error: true, msg}` (pomelo's chat answers
/// `{code: 500, error: true}`; `msg` says why).
pub fn error_body(_info: &RequestInfo, _session: &Session, e: &HandlerError) -> Value {
    json!({"code": e.code, "error": true, "msg": e.message})
}

/// The route dictionary the app announces: built by the framework as pinus builds it, from
/// the registered routes sorted (the tutorial's `onUserLeave` is a handler method, hence a
/// route) then the push routes (`config/dictionary.json`: `onChat`). Identical to the recorded
/// pinus session.
///
/// # Errors
/// The dictionary could not be built (never, for these routes).
pub fn dictionary() -> Result<RouteDictionary, shaddock_server::AppError> {
    app()
        .route_dictionary()?
        .map(|d| (*d).clone())
        .ok_or_else(|| shaddock_server::AppError::Dictionary("the chat uses a dictionary".into()))
}

/// `gate.gateHandler.queryEntry`'s body.
#[derive(Debug, Deserialize)]
pub struct QueryEntry {
    /// Who asks (a string or a number).
    pub uid: GateUid,
}

/// `gate.gateHandler.queryEntry`'s answer: the connector to use.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// 200.
    pub code: u16,
    /// The connector's host.
    pub host: String,
    /// Its client port, as it actually bound it.
    pub port: Option<u16>,
}

/// `connector.entryHandler.enter`'s body.
#[derive(Debug, Deserialize)]
pub struct Enter {
    /// The user's name in the room.
    pub username: Name,
    /// The room.
    pub rid: Room,
}

/// `connector.entryHandler.enter`'s answer: who is in the room, the newcomer included.
#[derive(Debug, Serialize)]
pub struct Users {
    /// The user names.
    pub users: Vec<String>,
}

/// `chat.chatHandler.send`'s body (`rid` and `from`, which pomelo's client also sends, are
/// ignored: the session knows both).
#[derive(Debug, Deserialize)]
pub struct Send {
    /// The message.
    pub content: Content,
    /// `"*"` or a user name.
    pub target: validate::Target,
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
                    frontend_id: s.frontend_id().to_owned(),
                    rid: r.key.clone(),
                })
            })
            .collect();
        if members.is_empty() {
            return;
        }
        let n = members.len();
        let stub = chat_remote::Client::new(ctx.rpc());
        match stub.rejoin(Target::server(&r.server_id), members).await {
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
async fn query_entry(
    ctx: ServerContext,
    Json(q): Json<QueryEntry>,
) -> Result<Json<Entry>, HandlerError> {
    let uid = q.uid.0;
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
    Ok(Json(Entry {
        code: 200,
        host: c.host.clone(),
        port: c.client_port,
    }))
}

/// Tells the room's chat server that `m` left (the session closed).
fn spawn_kick(ctx: ServerContext, m: Member) {
    tokio::spawn(async move {
        let stub = chat_remote::Client::new(ctx.rpc());
        let to = Target::route("chat", &m.rid);
        if let Err(e) = stub
            .kick(to, m.uid.clone(), m.frontend_id.clone(), m.rid.clone())
            .await
        {
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
    for frontend_id in connectors {
        let to = Target::route("chat", &m.rid);
        if let Err(e) = stub
            .kick(to, m.uid.clone(), frontend_id, m.rid.clone())
            .await
        {
            tracing::warn!(uid = %m.uid, room = %m.rid, cause = %e, "ghost removal failed");
            ok = false;
        }
    }
    ok
}

/// `chatRemote.add` of `m` on its room's chat server.
async fn add(stub: &chat_remote::Client, m: &Member) -> Result<Vec<String>, RpcError> {
    let to = Target::route("chat", &m.rid);
    stub.add(to, m.uid.clone(), m.frontend_id.clone(), m.rid.clone())
        .await
}

/// `connector.entryHandler.enter`: binds `username*rid` (refused cluster-wide if that name is
/// in the room), joins the room on its chat server, answers the room's user names.
async fn enter(
    ctx: ServerContext,
    s: Session,
    Json(e): Json<Enter>,
) -> Result<Json<Users>, HandlerError> {
    let (Name(username), Room(rid)) = (e.username, e.rid);
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
        frontend_id: s.frontend_id().to_owned(),
        rid: rid.clone(),
    };
    let stub = chat_remote::Client::new(ctx.rpc());
    let mut added = add(&stub, &member).await;
    if let Err(RpcError::Remote {
        code: CODE_NAME_TAKEN,
        ..
    }) = &added
    {
        // The master granted the uid, so no live session holds it: the room's member of
        // that name is a ghost of a connector that died (kill -9, crash) before it could
        // leave. Remove it wherever it was, then join.
        if remove_ghost(&ctx, &stub, &member).await {
            added = add(&stub, &member).await;
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
            Ok(Json(Users { users }))
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
async fn send(
    State(rooms): State<Rooms>,
    s: BackendSession,
    Json(m): Json<Send>,
) -> Result<(), HandlerError> {
    let uid = s.uid().ok_or_else(|| refuse(NOT_ENTERED))?;
    let Some(Value::String(rid)) = s.get("rid") else {
        return Err(refuse(NOT_ENTERED));
    };
    let (Content(content), target) = (m.content, m.target);
    let channels = rooms.channels();
    let channel = channels
        .get(&rid)
        .filter(|c| c.has_member(&uid))
        .ok_or_else(|| refuse(format!("you are not in room \"{rid}\"")))?;
    let from = name_of(&uid);
    // As pinus's chat: the pushes are sent, their answers not waited for, so the answer to
    // this request follows them at once.
    let summary = match target {
        validate::Target::Room => {
            channel
                .push_json_text_detached(ON_CHAT, on_chat_to_room(&content, from))
                .await
        }
        validate::Target::User(name) => {
            let tuid = validate::uid(&name, &rid);
            let fid = channel
                .member(&tuid)
                .ok_or_else(|| refuse(format!("user \"{name}\" is not in room \"{rid}\"")))?;
            let push = json!({"msg": content, "from": from, "target": name});
            channels
                .push_to_uids_detached(ON_CHAT, &push, &[(tuid, fid)])
                .await
        }
    };
    match summary {
        Ok(sum) if !sum.failed.is_empty() => {
            tracing::warn!(room = %rid, failed = ?sum.failed, "onChat not delivered everywhere");
        }
        Ok(_) => {}
        Err(e) => return Err(refuse(format!("message not sent: {e}"))),
    }
    Ok(())
}

/// The JSON text of `onChat {msg, from, target: "*"}`, written directly (no `Value`): the
/// bytes `shaddock_protocol::json::to_vec` writes for `json!({"msg", "from", "target"})`.
fn on_chat_to_room(msg: &str, from: &str) -> bytes::Bytes {
    use shaddock_protocol::json::write_str;
    let mut out = Vec::with_capacity(msg.len() + from.len() + 36);
    out.extend_from_slice(b"{\"msg\":");
    write_str(msg, &mut out);
    out.extend_from_slice(b",\"from\":");
    write_str(from, &mut out);
    out.extend_from_slice(b",\"target\":\"*\"}");
    out.into()
}

/// `connector.entryHandler.onUserLeave`: a route of pinus's chat (its connector calls it when
/// a client leaves) kept so the dictionary matches; a client calling it gets an error.
async fn on_user_leave() -> Result<(), HandlerError> {
    Err(refuse(
        "onUserLeave is not a request: close the connection to leave the room",
    ))
}

/// On each connector: when a session in a room closes, `chatRemote.kick` it from the room.
struct LeaveOnClose;

impl Component for LeaveOnClose {
    fn name(&self) -> &str {
        "leave-room-on-close"
    }

    async fn after_start(&self, ctx: &ServerContext) -> Result<(), ComponentError> {
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
                    frontend_id: s.frontend_id().to_owned(),
                    rid,
                };
                spawn_kick(ctx.clone(), member);
            });
        }
        Ok(())
    }
}

/// The whole chat app, for [`shaddock_server::run`].
pub fn app() -> App {
    App::new("shaddock-chat")
        // A name already in the room is refused, wherever the first one connected.
        .duplicate_login(DuplicateLogin::RefuseNew)
        .error_handler(error_body)
        .frontend_handler(QUERY_ENTRY, query_entry)
        .frontend_handler(ENTER, enter)
        .frontend_handler(ON_USER_LEAVE, on_user_leave)
        .handler(SEND, send)
        // Requests for `chat` go to the chat server of the session's room.
        .route_key("chat", |s| {
            s.settings
                .get("rid")
                .and_then(Value::as_str)
                .map_or_else(|| s.id.to_string(), str::to_owned)
        })
        // A room stays on the chat server that first got it; only a lost server's rooms
        // move, with their members.
        .placement("chat")
        .rejoin("chat", rejoin_room)
        // Each server's rooms, for the send handler and the remote alike.
        .with_state_from(Rooms::new)
        .remotes("chat", |ctx, registry| {
            registry
                .add(chat_remote::Server::new(ChatRemote::new(Rooms::new(ctx))))
                .map(drop)
        })
        .component(LeaveOnClose)
        // The dictionary: every route above, then the push routes of pinus's dictionary.json.
        .use_dictionary()
        .push_routes([ON_CHAT])
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
            (ON_USER_LEAVE, 3),
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
    fn on_chat_to_room_is_the_json_of_the_value() {
        for (msg, from) in [
            ("hello", "alice"),
            ("", ""),
            (
                "quote \" backslash \\ nl \n ctl \u{1} \u{7f} é 漢 \u{2028} 😀",
                "bob*x",
            ),
        ] {
            assert_eq!(
                &on_chat_to_room(msg, from)[..],
                &shaddock_protocol::json::to_vec(&json!({"msg": msg, "from": from, "target": "*"}))
                    [..],
                "{msg:?}"
            );
        }
    }

    #[test]
    fn app_declarations_are_valid() {
        assert!(app().validate().is_ok());
    }
}
