//! Wire compatibility with the real pinus server (npm `pinus` 1.7.4, pinned in
//! `benches/pinus-chat/package-lock.json`): starts the reference chat cluster
//! (`benches/pinus-chat/start.js`: gate + 3 connectors + 3 chat servers) on free 127.0.0.1
//! ports, then over raw TCP and over WebSocket: queryEntry at the gate, connect to the named
//! connector, two users enter a room, chat (room and private), onAdd / onChat / onLeave, the
//! route dictionary and its compression. The cluster is stopped (SIGTERM to its PID) by a guard.
//!
//! Needs `node` and the npm packages: run `scripts/install-js-deps` once. Without them the
//! test fails and says so.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, PushStream, Transport, connect_via_gate, query_entry};

/// The pinus-chat route dictionary and its version, as recorded in
/// `vectors/pinus-session.json`.
const DICT_VERSION: &str = "dUjEYvQGKXFbhvPxAzG8Qw==";
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The running cluster; SIGTERM (then SIGKILL) to start.js on drop.
struct Cluster {
    child: Child,
    info: Value,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!("pinus-chat (pid {pid}) ignored SIGTERM for 15 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinus_chat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/pinus-chat")
}

/// Distinct free ports: all bound at once, then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// How many times the cluster is started on fresh ports before the test gives up. The ports come
/// from binding 127.0.0.1:0 and letting go, so another process may take one before pinus binds it
/// (its master then exits at once); a fresh set of ports is the remedy, not a longer wait.
const START_ATTEMPTS: usize = 3;

fn start_cluster() -> Cluster {
    let dir = pinus_chat_dir();
    assert!(
        dir.join("node_modules/pinus/package.json").is_file(),
        "{}/node_modules is missing: run scripts/install-js-deps (from the repository root) first",
        dir.display()
    );
    let mut failures = Vec::new();
    for attempt in 1..=START_ATTEMPTS {
        match try_start_cluster(&dir) {
            Ok(cluster) => return cluster,
            Err(why) => failures.push(format!("attempt {attempt}: {why}")),
        }
    }
    panic!(
        "pinus-chat did not start in {START_ATTEMPTS} attempts:\n{}",
        failures.join("\n")
    );
}

/// Starts pinus-chat once on fresh ports; `Err` (with its stderr) when it does not print its ready
/// line in time or exits first. The child is killed by `Cluster`'s `Drop` on failure.
fn try_start_cluster(dir: &std::path::Path) -> Result<Cluster, String> {
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let ports = free_ports(11);
    let mut child = Command::new("node")
        .arg("start.js")
        .current_dir(dir)
        .env("PINUS_CHAT_MASTER_PORT", ports[0].to_string())
        .env("PINUS_CHAT_GATE_PORT", ports[1].to_string())
        .env("PINUS_CHAT_CONNECTOR_CLIENT_PORTS", join(&ports[2..5]))
        .env("PINUS_CHAT_CONNECTOR_PORTS", join(&ports[5..8]))
        .env("PINUS_CHAT_CHAT_PORTS", join(&ports[8..11]))
        .env(
            "PINUS_CHAT_START_TIMEOUT_MS",
            START_TIMEOUT.as_millis().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install node, then run scripts/install-js-deps")
        });
    // stderr: keep the tail for the failure message.
    let stderr_tail = Arc::new(Mutex::new(String::new()));
    if let Some(mut stderr) = child.stderr.take() {
        let tail = stderr_tail.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap();
                t.push_str(&String::from_utf8_lossy(&chunk[..n]));
                if t.len() > 8192 {
                    let cut = t.len() - 8192;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                    t.drain(..cut);
                }
            }
        });
    }
    // stdout: wait for the ready line.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("pinus-chat ready ") {
                let _ = tx.send(json.to_owned());
            }
        }
    });
    let mut cluster = Cluster {
        child,
        info: Value::Null,
    };
    // The reader thread drops `tx` when stdout closes, so an early exit ends the wait at once.
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(json) => cluster.info = serde_json::from_str(&json).expect("ready line JSON"),
        Err(_) => {
            return Err(format!(
                "no ready line within {START_TIMEOUT:?}; stderr:\n{}",
                stderr_tail.lock().unwrap()
            ));
        }
    }
    assert_eq!(
        cluster.info["pid"].as_u64(),
        Some(u64::from(cluster.child.id())),
        "the ready line names start.js"
    );
    Ok(cluster)
}

fn config() -> ClientConfig {
    ClientConfig::default()
        .with_request_timeout(Duration::from_secs(10))
        .with_handshake_timeout(Duration::from_secs(10))
}

/// The next push of `stream` whose body satisfies `pred` (others skipped).
async fn next_push(stream: &mut PushStream, pred: impl Fn(&Value) -> bool) -> Value {
    within(async {
        loop {
            let push = stream.recv().await.expect("connection ended");
            let body = push.value().expect("push body is JSON");
            if pred(&body) {
                return body;
            }
        }
    })
    .await
}

async fn chat_over(cluster: &Cluster, transport: Transport) {
    let host = cluster.info["host"].as_str().unwrap().to_owned();
    let gate = format!("{host}:{}", cluster.info["gate"]);
    let connectors: Vec<u64> = cluster.info["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let rid = format!("room-{transport}");

    // alice: the gate names a connector, then connect to it.
    let entry = within(query_entry(&gate, transport, "alice", &config()))
        .await
        .unwrap();
    assert_eq!(entry.host, host);
    assert!(connectors.contains(&u64::from(entry.port)), "{entry:?}");
    let (alice, _alice_events) = within(Client::connect(&entry.addr(), transport, config()))
        .await
        .unwrap();
    assert_eq!(alice.heartbeat_interval(), Some(Duration::from_secs(3)));
    let dict = alice
        .dictionary()
        .expect("pinus sends its route dictionary");
    assert_eq!(dict.version(), DICT_VERSION);
    assert_eq!(dict.code("chat.chatHandler.send"), Some(1));
    assert_eq!(dict.code("connector.entryHandler.enter"), Some(2));
    assert_eq!(dict.code("onChat"), Some(5));
    let mut alice_add = alice.on("onAdd");
    let mut alice_chat = alice.on("onChat");
    let mut alice_leave = alice.on("onLeave");
    // Requests on dictionary routes go out as 2-byte codes; pinus must understand them.
    let r = within(alice.request(
        "connector.entryHandler.enter",
        &json!({"username": "alice", "rid": rid}),
    ))
    .await
    .unwrap();
    assert_eq!(r, json!({"users": ["alice"]}));

    // bob through the gate helper.
    let (bob, _bob_events, bob_entry) = within(connect_via_gate(&gate, transport, "bob", config()))
        .await
        .unwrap();
    assert!(connectors.contains(&u64::from(bob_entry.port)));
    let mut bob_chat = bob.on("onChat");
    let r = within(bob.request(
        "connector.entryHandler.enter",
        &json!({"username": "bob", "rid": rid}),
    ))
    .await
    .unwrap();
    let mut users: Vec<String> = serde_json::from_value(r["users"].clone()).unwrap();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(
        next_push(&mut alice_add, |b| b["user"] == "bob").await,
        json!({"user": "bob"})
    );
    // A name already in the room is refused.
    let (dup, _dup_events) = within(Client::connect(&bob_entry.addr(), transport, config()))
        .await
        .unwrap();
    let r = within(dup.request(
        "connector.entryHandler.enter",
        &json!({"username": "bob", "rid": rid}),
    ))
    .await
    .unwrap();
    assert_eq!(r, json!({"code": 500, "error": true}));
    dup.close().await;

    // Room chat: everyone gets onChat, compressed on the wire (code 5).
    let r = within(bob.request(
        "chat.chatHandler.send",
        &json!({"rid": rid, "content": "hello room", "from": "bob", "target": "*"}),
    ))
    .await
    .unwrap();
    assert_eq!(r, json!({}));
    let expected = json!({"msg": "hello room", "from": "bob", "target": "*"});
    for stream in [&mut alice_chat, &mut bob_chat] {
        let push = within(stream.recv()).await.unwrap();
        assert_eq!(&*push.route, "onChat");
        assert_eq!(push.code, Some(5), "onChat comes compressed");
        assert_eq!(push.value().unwrap(), expected);
    }
    // Private message: only bob gets it.
    within(alice.request(
        "chat.chatHandler.send",
        &json!({"rid": rid, "content": "psst", "from": "alice", "target": "bob"}),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_push(&mut bob_chat, |_| true).await,
        json!({"msg": "psst", "from": "alice", "target": "bob"})
    );
    // Unknown target: {code: 500}.
    let r = within(alice.request(
        "chat.chatHandler.send",
        &json!({"rid": rid, "content": "?", "from": "alice", "target": "nobody"}),
    ))
    .await
    .unwrap();
    assert_eq!(r, json!({"code": 500}));

    // bob leaves: alice gets onLeave (string route: not in the dictionary).
    bob.close().await;
    let body = next_push(&mut alice_leave, |b| b["user"] == "bob").await;
    assert_eq!(body, json!({"user": "bob"}));
    assert!(alice_chat.dropped() == 0 && !alice.is_closed());
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_against_real_pinus_over_tcp_and_websocket() {
    let cluster = tokio::task::spawn_blocking(start_cluster).await.unwrap();
    chat_over(&cluster, Transport::Tcp).await;
    chat_over(&cluster, Transport::WebSocket).await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
