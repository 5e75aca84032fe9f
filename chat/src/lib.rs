//! Pomelo's distributed chat (the tutorial's `chatofpomelo-websocket`) on Shaddock.
//!
//! `cargo run --release -p shaddock-chat` starts the whole cluster of `config/servers.json`
//! (a gate, three connectors, three chat servers, and the master that runs them) plus the web
//! page on <http://127.0.0.1:3001>; Ctrl-C or SIGTERM stops everything through the master.
//!
//! # Routes (the same shapes as pomelo's chat demo)
//! | route | request | answer / effect |
//! |---|---|---|
//! | `gate.gateHandler.queryEntry` | `{uid}` | `{code: 200, host, port}` of connector `crc32(uid) % n` (connectors sorted by id, ports as actually bound) |
//! | `connector.entryHandler.enter` | `{username, rid}` | binds uid `username*rid`, sets session `rid`, `chat.chatRemote.add`; `{users: [names]}` |
//! | `chat.chatHandler.send` | `{content, target}` (`rid`, `from` ignored) | `{}`; pushes `onChat {msg, from, target}` to the room (`target` `"*"`) or to the one user |
//! | `connector.entryHandler.onUserLeave` | | an error: a route of pinus's chat (so the dictionary matches), not a request |
//! | (disconnect) | | `chat.chatRemote.kick` → `onLeave {user}` to the room |
//! | (join) | | `onAdd {user}` to the members already in the room |
//!
//! A room lives on one chat server, placed by the cluster ([`App::placement`]): the first
//! time anybody routes to it, the master puts it on the chat server with the fewest rooms, and
//! every server routes there from then on, forwarded requests and remotes alike. Adding a chat
//! server moves no room (it takes new ones). A chat server that dies is restarted by the master;
//! its rooms fail fast meanwhile, and when it is back (or, if it stays down past master.json's
//! `placementGraceMs`, default 5 s, once its rooms are placed on the survivors) the connectors
//! re-join the rooms' members there (`chatRemote.rejoin`), so they chat on without entering
//! again. No other room moves.
//!
//! [`App::placement`]: shaddock_server::App::placement
//!
//! # Limits and errors
//! Names are 1..=[`MAX_NAME_CHARS`] characters after trimming, without `*` or control
//! characters; rooms 1..=[`MAX_ROOM_CHARS`]; messages 1..=[`MAX_CONTENT_CHARS`]. A bad or
//! missing field, a name already in the room, a send before `enter`, an unknown target: the
//! answer is `{code: 500, error: true, msg: "..."}` saying what is wrong. Nothing a client
//! sends can crash a server.
//!
//! # Layout
//! - [`app`](mod@app): the [`App`](shaddock_server::App): each route a plain async fn of
//!   extractors with a typed body (`Json<Enter>`, `Json<Send>`), the chat remote, routing; the
//!   example to copy for a new app.
//! - [`remote`]: `chatRemote` (`add(uid, frontend_id, rid)`, `kick`, `rejoin`, `rooms`); a
//!   room is removed with its last member.
//! - [`validate`]: the input rules, as field types ([`validate::Name`], ...) that only
//!   deserialize from valid input.
//! - [`page`]: the web page server (files of `chat/web`, embedded in the binary).
//! - [`launcher`]: what the bare command runs: the master as a child, the page, signals.

pub mod admin;
pub mod app;
pub mod launcher;
pub mod page;
pub mod remote;
pub mod validate;

pub use app::app;
pub use validate::{InputError, MAX_CONTENT_CHARS, MAX_NAME_CHARS, MAX_ROOM_CHARS};
