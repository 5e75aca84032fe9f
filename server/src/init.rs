//! `init NAME`: writes a new app with pomelo's conventional layout, ready to build and test.
//!
//! ```text
//! NAME/Cargo.toml            depends on shaddock-server of this checkout (a relative path)
//! NAME/Cargo.lock            this checkout's, so the app builds with the same versions (offline)
//! NAME/src/main.rs           a gate, a connector and a chat backend
//! NAME/tests/cluster.rs      starts the cluster on free ports and chats with the Rust client
//! NAME/config/servers.json   development and production
//! NAME/config/master.json
//! NAME/README.md             how to run it and how a client connects
//! ```
//!
//! The app depends on the checkout's crates by a path *relative to the app's folder*, so the
//! app keeps building when the checkout and the app move together.

use std::path::{Component, Path, PathBuf};

/// The checkout `init` was built from: the parent of this crate's folder.
fn checkout() -> Result<PathBuf, String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.parent().unwrap_or(here);
    for krate in ["server", "client-sdk"] {
        if !root.join(krate).join("Cargo.toml").is_file() {
            return Err(format!(
                "init needs the Shaddock checkout it was built from (the app depends on its \
                 crates): {} has no {krate}/Cargo.toml",
                root.display()
            ));
        }
    }
    root.canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))
}

/// The path from directory `from` to `to` (both absolute and canonical), with `..` as needed.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component<'_>> = from.components().collect();
    let t: Vec<Component<'_>> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..f.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c);
    }
    if p.as_os_str().is_empty() {
        p.push(".");
    }
    p
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes the app into `dir` (which must not exist yet).
///
/// # Errors
/// The directory exists, the name is not a valid package name, the checkout is not found,
/// or a write failed.
pub(crate) fn init(dir: &Path, name: &str) -> Result<(), String> {
    let pkg = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name)
        .to_owned();
    if !pkg.starts_with(|c: char| c.is_ascii_alphabetic())
        || !pkg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{pkg}` is not a valid app name (a letter, then letters, digits, - and _)"
        ));
    }
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let root = checkout()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let app_dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let rel = |krate: &str| -> Result<String, String> {
        let p = relative_path(&app_dir, &root.join(krate));
        p.to_str()
            .map(toml_string)
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))
    };
    let files = [
        (
            "Cargo.toml",
            cargo_toml(&pkg, &rel("server")?, &rel("client-sdk")?),
        ),
        ("src/main.rs", MAIN_RS.to_owned()),
        ("tests/cluster.rs", TEST_RS.replace("{pkg}", &pkg)),
        ("config/servers.json", SERVERS_JSON.to_owned()),
        ("config/master.json", MASTER_JSON.to_owned()),
        ("README.md", readme(&pkg)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    // The checkout's lock file: the app resolves to the versions the framework is built and
    // tested with, and builds without asking a registry (`cargo build --offline`).
    let lock = root.join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .map_err(|e| format!("{}: {e}", lock.display()))?;
    }
    println!("created app `{pkg}` in {}", dir.display());
    Ok(())
}

fn cargo_toml(pkg: &str, server: &str, client: &str) -> String {
    format!(
        r#"[package]
name = "{pkg}"
version = "0.1.0"
edition = "2024"
publish = false

# A standalone app, not a member of an enclosing workspace.
[workspace]

# The Shaddock crates, by a path relative to this folder: move the app and the checkout
# together, or edit these paths.
[dependencies]
shaddock-server = {{ path = {server} }}
serde = {{ version = "1.0", features = ["derive"] }}
serde_json = "1.0"

[dev-dependencies]
shaddock-client = {{ path = {client} }}
tokio = {{ version = "1", features = ["macros", "rt-multi-thread", "time"] }}
"#
    )
}

fn readme(pkg: &str) -> String {
    format!(
        r#"# {pkg}

A Shaddock app: a gate, a connector and a chat backend, speaking pomelo's client protocol.

    cargo run -- start                 # master + every server in config/servers.json
    cargo run -- list                  # id, type, pid, uptime, RSS, connections, state
    cargo run -- add id=chat-server-2 serverType=chat host=127.0.0.1 port=0
    cargo run -- stop                  # graceful
    cargo run -- start -e production -D
    cargo test                         # starts the cluster on free ports and chats with it

Layout: `src/main.rs` declares the routes, each a plain async fn whose arguments are
extractors (the session, `ServerContext`, `Json<T>` for a typed body, `State<T>`);
`config/servers.json` lists the servers per environment, `config/master.json` the master (and
its `restart` policy for crashed servers).

## How a client connects

Any pomelo client (raw TCP or WebSocket) works; with the `development` config:

1. Connect to the gate, `127.0.0.1:3014`; request `gate.gateHandler.queryEntry`
   `{{"uid": "alice"}}`. The answer names a connector: `{{"code": 200, "host": "127.0.0.1",
   "port": 3050}}`. Close that connection.
2. Connect to the connector; request `connector.entryHandler.enter` `{{"uid": "alice"}}` →
   `{{"code": 200}}`.
3. Request `chat.chatHandler.send` `{{"msg": "hello"}}` → `{{"code": 200}}`; whoever has sent to
   the lobby gets the push `onChat` `{{"from": "alice", "msg": "hello"}}`.

A wrong request (no `uid`, an empty `msg`, a send before `enter`) is answered with
`{{"code": 500, "msg": "..."}}` saying what is wrong, e.g. `field `msg` is required`.

With the Rust client (`shaddock-client`), as `tests/cluster.rs` does:

```rust
use shaddock_client::{{ClientConfig, Transport, connect_via_gate}};
let (client, _events, _entry) =
    connect_via_gate("127.0.0.1:3014", Transport::Tcp, "alice", ClientConfig::default()).await?;
let mut chat = client.on("onChat");
client.request("connector.entryHandler.enter", &serde_json::json!({{"uid": "alice"}})).await?;
client.request("chat.chatHandler.send", &serde_json::json!({{"msg": "hello"}})).await?;
```

The Shaddock crates are found by a path relative to this folder (see `Cargo.toml`); the
`Cargo.lock` came from the checkout, so `cargo build --offline` works where the checkout built.
"#
    )
}

const MAIN_RS: &str = r#"//! A Shaddock app: a gate, a connector and a chat backend.
//!
//! Each route's handler is a plain async fn; its arguments are extractors: the session
//! (`Session` on a frontend, `BackendSession` on a backend), the server's `ServerContext`,
//! `Json<T>` for a typed body (a body that does not fit is answered with code 500 and a
//! message naming the field), `State<T>` for what `App::with_state` gave.

use std::process::ExitCode;

use serde::Deserialize;
use serde_json::{Value, json};
use shaddock_server::{
    App, BackendSession, HandlerError, Json, ServerContext, Session, State, run,
};

/// The room everybody chats in: the app's state (`App::with_state`), extracted with `State`.
#[derive(Debug, Clone)]
struct Lobby(&'static str);

/// A string that is not empty once trimmed (kept trimmed).
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Text(String);

impl TryFrom<String> for Text {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.trim() {
            "" => Err("must not be empty"),
            t => Ok(Self(t.to_owned())),
        }
    }
}

/// `gate.gateHandler.queryEntry`'s body.
#[derive(Debug, Deserialize)]
struct QueryEntry {
    #[allow(dead_code)] // required, not used: one connector serves everybody
    uid: Text,
}

/// `connector.entryHandler.enter`'s body.
#[derive(Debug, Deserialize)]
struct Enter {
    uid: Text,
}

/// `chat.chatHandler.send`'s body.
#[derive(Debug, Deserialize)]
struct Send {
    msg: Text,
}

/// The gate: which connector to use.
async fn query_entry(
    ctx: ServerContext,
    Json(_q): Json<QueryEntry>,
) -> Result<Value, HandlerError> {
    let conns = ctx.servers_of_type("connector");
    let c = conns
        .first()
        .ok_or_else(|| HandlerError::new(500, "no connector is up; try again"))?;
    Ok(json!({"code": 200, "host": c.host, "port": c.client_port}))
}

/// The connector: log in as `uid` (cluster-wide).
async fn enter(ctx: ServerContext, s: Session, Json(e): Json<Enter>) -> Result<Value, HandlerError> {
    ctx.bind(&s, &e.uid.0)
        .await
        .map_err(|e| HandlerError::new(500, e.to_string()))?;
    Ok(json!({"code": 200}))
}

/// The chat backend: `onChat` to everybody in the lobby.
async fn send(
    State(Lobby(lobby)): State<Lobby>,
    s: BackendSession,
    Json(m): Json<Send>,
) -> Result<Value, HandlerError> {
    let uid = s
        .uid()
        .ok_or_else(|| HandlerError::new(500, "enter first (connector.entryHandler.enter)"))?;
    let room = s.ctx().channels().get_or_create(lobby);
    room.add(&uid, s.frontend_id());
    room.push("onChat", &json!({"from": uid, "msg": m.msg.0}))
        .await
        .map_err(|e| HandlerError::new(500, e.to_string()))?;
    Ok(json!({"code": 200}))
}

fn app() -> App {
    App::new(env!("CARGO_PKG_NAME"))
        .with_state(Lobby("lobby"))
        .frontend_handler("gate.gateHandler.queryEntry", query_entry)
        .frontend_handler("connector.entryHandler.enter", enter)
        .handler("chat.chatHandler.send", send)
}

fn main() -> ExitCode {
    run(app())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaddock_server::{FromRequest, Request, RequestInfo};

    /// What a client gets for `body` on a route taking `T`.
    fn decode<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, HandlerError> {
        let req = Request::new(RequestInfo::forwarded("chat.chatHandler.send", 1), (), body);
        <Json<T> as FromRequest<()>>::from_request(&req).map(|Json(t)| t)
    }

    #[test]
    fn requests_without_their_field_get_an_error() {
        assert_eq!(decode::<Send>(json!({"msg": " hi "})).unwrap().msg.0, "hi");
        for body in [json!({}), json!({"msg": ""}), json!({"msg": 7}), json!([])] {
            let e = decode::<Send>(body.clone()).unwrap_err();
            assert_eq!(e.code, 500);
            assert!(e.message.contains("`msg`") || e.message.contains("object"), "{body}: {}", e.message);
        }
    }

    #[test]
    fn the_app_is_valid() {
        app().validate().unwrap();
    }
}
"#;

/// `{pkg}` is replaced by the package name.
const TEST_RS: &str = r#"//! Starts this app's cluster on free ports (the `start` command) and talks to it as a client
//! does, with the Rust client SDK: gate, connector, a chat message and its push.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Transport, connect_via_gate};
use tokio::time::timeout;

const EXE: &str = env!("CARGO_BIN_EXE_{pkg}");
const STEP: Duration = Duration::from_secs(20);

/// The master; killed on drop (its servers stop when it is gone).
struct Master {
    child: Child,
    dir: PathBuf,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the cluster on a port-0 copy of the config; returns it and the master's address.
fn start() -> (Master, String) {
    let dir = std::env::temp_dir().join(format!("{pkg}-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let servers = json!({"development": {
        "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 0, "frontend": true}],
        "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": 0, "clientPort": 0, "frontend": true}],
        "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "port": 0}],
    }});
    let master = json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0}});
    std::fs::write(dir.join("servers.json"), servers.to_string()).unwrap();
    std::fs::write(dir.join("master.json"), master.to_string()).unwrap();
    let mut child = Command::new(EXE)
        .args(["start", "--config"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the master");
    let out = child.stdout.take().unwrap();
    let master = Master { child, dir };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the cluster came up");
        if let Some(a) = line.strip_prefix("SHADDOCK_MASTER_LISTENING ") {
            addr = Some(a.trim().to_owned());
        }
        assert!(!line.starts_with("SHADDOCK_CLUSTER_FAILED"), "{line}");
        if line == "SHADDOCK_CLUSTER_READY" {
            return (master, addr.expect("listening line"));
        }
    }
}

/// The gate's client port, from `list`.
fn gate_port(master: &str) -> u16 {
    let out = Command::new(EXE).args(["list", "--master", master]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("gate-server-1 "))
        .unwrap_or_else(|| panic!("no gate in:\n{text}"));
    row.split_whitespace().nth(7).unwrap().parse().unwrap()
}

async fn request(c: &Client, route: &str, body: Value) -> Value {
    timeout(STEP, c.request(route, &body)).await.expect("answered in time").expect(route)
}

#[tokio::test]
async fn a_client_enters_and_chats_and_wrong_requests_get_errors() {
    let (_master, addr) = start();
    let gate = format!("127.0.0.1:{}", gate_port(&addr));
    let config = ClientConfig::default().with_request_timeout(STEP);

    let (probe, _events) = timeout(STEP, Client::connect(&gate, Transport::Tcp, config.clone()))
        .await
        .unwrap()
        .unwrap();
    let r = request(&probe, "gate.gateHandler.queryEntry", json!({})).await;
    assert_eq!(r["code"], 500, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("uid"), "{r}");

    let (client, _events, _entry) =
        timeout(STEP, connect_via_gate(&gate, Transport::Tcp, "alice", config))
            .await
            .unwrap()
            .unwrap();
    let mut chat = client.on("onChat");
    let r = request(&client, "chat.chatHandler.send", json!({"msg": "too early"})).await;
    assert_eq!(r["code"], 500, "{r}");
    let r = request(&client, "connector.entryHandler.enter", json!({"uid": "alice"})).await;
    assert_eq!(r, json!({"code": 200}));
    let r = request(&client, "chat.chatHandler.send", json!({})).await;
    assert_eq!(r["code"], 500, "{r}");
    let r = request(&client, "chat.chatHandler.send", json!({"msg": "hello"})).await;
    assert_eq!(r, json!({"code": 200}));
    let push = timeout(STEP, chat.recv()).await.unwrap().expect("onChat");
    assert_eq!(push.value().unwrap(), json!({"from": "alice", "msg": "hello"}));

    let out = Command::new(EXE).args(["stop", "--master", &addr]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}
"#;

const SERVERS_JSON: &str = r#"{
  "development": {
    "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 3014, "frontend": true}],
    "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": 4050, "clientPort": 3050, "frontend": true}],
    "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "port": 6050}]
  },
  "production": {
    "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 3014, "frontend": true}],
    "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": 4050, "clientPort": 3050, "frontend": true}],
    "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "port": 6050}]
  }
}
"#;

const MASTER_JSON: &str = r#"{
  "development": {"id": "master-server-1", "host": "127.0.0.1", "port": 3005},
  "production": {"id": "master-server-1", "host": "127.0.0.1", "port": 3005,
                 "restart": {"enabled": true, "backoffMs": 500, "maxBackoffMs": 10000,
                             "crashLoop": {"max": 5, "windowSecs": 60}}}
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_app_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("shaddock-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let app = dir.join("myapp");
        init(&app, "myapp").unwrap();
        for env in ["development", "production"] {
            let c = crate::config::ClusterConfig::load(&app.join("config"), env).unwrap();
            assert_eq!(c.servers.len(), 3);
        }
        let toml = std::fs::read_to_string(app.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"myapp\""));
        assert!(toml.contains("\n[workspace]\n"), "{toml}");
        // No absolute path: relative to the app's folder.
        assert!(!toml.contains("path = \"/"), "{toml}");
        let test = std::fs::read_to_string(app.join("tests/cluster.rs")).unwrap();
        assert!(test.contains("env!(\"CARGO_BIN_EXE_myapp\")"));
        assert!(app.join("Cargo.lock").is_file());
        assert!(init(&app, "myapp").unwrap_err().contains("already exists"));
        assert!(init(&dir.join("bad name"), "bad name").is_err());
        assert!(init(&dir.join("9lives"), "9lives").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            relative_path(&p("/w/t/app"), &p("/w/server")),
            p("../../server")
        );
        assert_eq!(relative_path(&p("/w"), &p("/w/server")), p("server"));
        assert_eq!(relative_path(&p("/a/b"), &p("/c")), p("../../c"));
        assert_eq!(relative_path(&p("/a"), &p("/a")), p("."));
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
