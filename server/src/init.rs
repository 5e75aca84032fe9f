//! `init NAME`: writes a new app with pomelo's conventional layout.
//!
//! ```text
//! NAME/Cargo.toml            depends on shaddock-server and shaddock-connector
//! NAME/src/main.rs           a gate, a connector and a chat backend
//! NAME/config/servers.json   development and production
//! NAME/config/master.json
//! NAME/README.md
//! ```

use std::path::Path;

/// Writes the app into `dir` (which must not exist yet).
///
/// # Errors
/// The directory exists, the name is not a valid package name, or a write failed.
pub(crate) fn init(dir: &Path, name: &str) -> Result<(), String> {
    let pkg = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name)
        .to_owned();
    if pkg.is_empty()
        || !pkg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{pkg}` is not a valid app name (letters, digits, - and _)"
        ));
    }
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = here.display().to_string();
    let connector = here
        .parent()
        .map(|p| p.join("connector").display().to_string())
        .unwrap_or_default();
    let files = [
        ("Cargo.toml", cargo_toml(&pkg, &server, &connector)),
        ("src/main.rs", MAIN_RS.to_owned()),
        ("config/servers.json", SERVERS_JSON.to_owned()),
        ("config/master.json", MASTER_JSON.to_owned()),
        ("README.md", readme(&pkg)),
    ];
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    println!("created app `{pkg}` in {}", dir.display());
    Ok(())
}

fn cargo_toml(pkg: &str, server: &str, connector: &str) -> String {
    format!(
        r#"[package]
name = "{pkg}"
version = "0.1.0"
edition = "2024"

# A standalone app, not part of an enclosing workspace.
[workspace]

[dependencies]
shaddock-server = {{ path = "{server}" }}
shaddock-connector = {{ path = "{connector}" }}
serde_json = "1.0"
"#
    )
}

fn readme(pkg: &str) -> String {
    format!(
        r#"# {pkg}

A Shaddock app (pomelo-compatible client protocol).

    cargo run -- start                 # master + every server in config/servers.json
    cargo run -- list                  # id, type, pid, uptime, RSS, connections
    cargo run -- add id=chat-server-2 serverType=chat host=127.0.0.1 port=0
    cargo run -- stop                  # graceful
    cargo run -- start -e production -D

Layout: `src/main.rs` declares the server types (handlers, remotes, routers, filters);
`config/servers.json` lists the servers per environment, `config/master.json` the master.
"#
    )
}

const MAIN_RS: &str = r#"//! A Shaddock app: a gate, a connector and a chat backend.

use std::process::ExitCode;

use serde_json::{Value, json};
use shaddock_connector::HandlerError;
use shaddock_server::{App, BackendSession, run};

fn main() -> ExitCode {
    let app = App::new(env!("CARGO_PKG_NAME"))
        .frontend("gate", |ctx, b| {
            let ctx = ctx.clone();
            b.handler("gate.gateHandler.queryEntry", move |_s, _body: Value| {
                let ctx = ctx.clone();
                async move {
                    let conns = ctx.servers_of_type("connector");
                    let c = conns.first().ok_or_else(|| HandlerError::new(500, "no connector"))?;
                    Ok::<_, HandlerError>(json!({"code": 200, "host": c.host, "port": c.client_port}))
                }
            })
        })
        .frontend("connector", |ctx, b| {
            let ctx = ctx.clone();
            b.handler("connector.entryHandler.enter", move |s: shaddock_connector::Session, body: Value| {
                let ctx = ctx.clone();
                async move {
                    let uid = body["uid"].as_str().unwrap_or_default().to_owned();
                    ctx.bind(&s, &uid).await.map_err(|e| HandlerError::new(500, e.to_string()))?;
                    Ok::<_, HandlerError>(json!({"code": 200}))
                }
            })
        })
        .handler("chat.chatHandler.send", |s: BackendSession, body: Value| async move {
            let room = s.ctx().channels().get_or_create("lobby");
            if let Some(uid) = s.uid() {
                room.add(&uid, s.frontend_id());
            }
            room.push("onChat", &body).await.map_err(|e| HandlerError::new(500, e.to_string()))?;
            Ok::<_, HandlerError>(json!({"code": 200}))
        });
    run(app)
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
  "production": {"id": "master-server-1", "host": "127.0.0.1", "port": 3005}
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
        let c = crate::config::ClusterConfig::load(&app.join("config"), "production").unwrap();
        assert_eq!(c.servers.len(), 3);
        let toml = std::fs::read_to_string(app.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"myapp\""));
        assert!(
            std::fs::read_to_string(app.join("src/main.rs"))
                .unwrap()
                .contains("run(app)")
        );
        assert!(init(&app, "myapp").unwrap_err().contains("already exists"));
        assert!(init(&dir.join("bad name"), "bad name").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
