//! The chat on NATS (issue 15), two launchers on this machine: a 3-node JetStream nats-server
//! cluster (test-support, one node per network namespace), and two `shaddock-chat` launchers
//! in the test's own namespace on 127.0.0.1, `--host-id a` and `--host-id b`, each running
//! only its host's servers (a: gate, connector-server-1, chat-server-1; b: connector-server-2,
//! chat-server-2). A user on each connector talks in one room; the chat server holding the
//! room is killed with SIGKILL (and not restarted): the room comes back on the other chat
//! server with both members, and messages flow again, every acknowledged one delivered.
//!
//! Where a room lives is read from the registry itself (a `NatsBackend` of the test's own).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{STEP, alive, signal, tmp_dir};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, PushStream, Transport};
use shaddock_server::cluster::{ClusterBackend, ClusterConfig, NatsBackend};
use shaddock_test_support::nats::NatsCluster;
use shaddock_test_support::netns::Hosts;
use tokio::time::timeout;

const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";

/// One launcher (`--host-id`), killed with its process group's master on drop.
struct Launcher {
    child: Option<Child>,
    info: Value,
    log: std::path::PathBuf,
}

impl Launcher {
    fn start(dir: &std::path::Path, host: &str, secret: &str) -> Self {
        let log = dir.join(format!("launcher-{host}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
            .arg("--config")
            .arg(dir)
            .arg("--host-id")
            .arg(host)
            .arg("--page-port")
            .arg("0")
            .arg("--admin-port")
            .arg("0")
            .env(
                "RUST_LOG",
                std::env::var("CHAT_TEST_RUST_LOG").unwrap_or("info".into()),
            )
            .env("SHADDOCK_RPC_SECRET", secret)
            .env_remove("SHADDOCK_ENV")
            .env_remove("SHADDOCK_CHAT_PAGE_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start shaddock-chat");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("SHADDOCK_CHAT_READY ") {
                    let _ = tx.send(json.to_owned());
                }
            }
        });
        let mut l = Self {
            child: Some(child),
            info: Value::Null,
            log,
        };
        match rx.recv_timeout(common::START_TIMEOUT) {
            Ok(json) => l.info = serde_json::from_str(&json).expect("ready JSON"),
            Err(_) => panic!(
                "launcher {host} not ready within {:?}; log:\n{}",
                common::START_TIMEOUT,
                l.log()
            ),
        }
        l
    }

    /// Waits (bounded) for the launcher to end on its own and returns how it ended.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("the launcher's process");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().expect("wait for the launcher") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the launcher did not end within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every pid it started: its servers' and its master's.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.info["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default();
        pids.extend(self.info["master_pid"].as_u64().map(|p| p as u32));
        pids
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connector(&self) -> String {
        self.info["connectors"][0]
            .as_str()
            .expect("a connector on this host")
            .to_owned()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.info["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default();
        let master = self.info["master_pid"].as_u64().map(|p| p as u32);
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in pids.into_iter().chain(master) {
            if alive(pid) {
                signal(pid, "KILL");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- launcher log {} ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

struct User {
    client: Client,
    chat: PushStream,
}

async fn enter(addr: &str, name: &str, room: &str) -> (User, Value) {
    let mut cfg = ClientConfig::default().with_request_timeout(STEP);
    // The listener is read when the load ends; the SDK drops pushes past this many unread
    // ones (a bounded queue, by design), and the default 256 is within reach of a slow heal.
    cfg.push_capacity = 4096;
    let (client, _events) = timeout(STEP, Client::connect(addr, Transport::Tcp, cfg))
        .await
        .expect("connect in time")
        .expect("connect");
    let chat = client.on("onChat");
    let r = timeout(
        STEP,
        client.request(ENTER, &json!({"username": name, "rid": room})),
    )
    .await
    .expect("enter in time")
    .expect("enter");
    (User { client, chat }, r)
}

/// A bounded stream of sends from `client`; acknowledged texts in order.
fn steady_load(
    client: Client,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..3000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let text = format!("m-{i}");
            let r = timeout(
                STEP,
                client.request(SEND, &json!({"content": text, "target": "*"})),
            )
            .await
            .expect("a request hung past 15 s")
            .expect("the connection failed");
            if r == json!({}) {
                ok.fetch_add(1, Ordering::SeqCst);
                acked.push(text);
            } else {
                errors.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    })
}

async fn reaches(count: &AtomicUsize, at_least: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} in {within:?}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_launchers_on_nats_a_killed_chat_server_s_room_comes_back_on_the_other() {
    let _one = SERIAL.lock().await;
    killed_chat_server(false).await;
}

/// The same with restarts on (the default): the killed chat server comes back under its id
/// and its room's members are re-joined there or on the other one, messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_launchers_on_nats_a_killed_and_restarted_chat_server_s_room_comes_back() {
    let _one = SERIAL.lock().await;
    killed_chat_server(true).await;
}

/// servers.json, master.json and page.json of the two hosts: a (gate, connector-server-1,
/// chat-server-1) and b (connector-server-2, chat-server-2), all on 127.0.0.1.
fn write_config(dir: &std::path::Path, nats: &NatsCluster, app: &str, restart: bool) {
    let server = |id: &str, host: &str, frontend: bool| {
        let mut v = json!({"id": id, "host": "127.0.0.1", "hostId": host, "port": 0});
        if frontend {
            v["clientPort"] = json!(0);
            v["frontend"] = json!(true);
        } else {
            v["restart"] = json!(restart);
        }
        v
    };
    let servers = json!({"development": {
        "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "hostId": "a", "clientPort": 0, "frontend": true}],
        "connector": [server("connector-server-1", "a", true), server("connector-server-2", "b", true)],
        "chat": [server("chat-server-1", "a", false), server("chat-server-2", "b", false)],
    }});
    let master = json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0,
        "cluster": {"nats": nats.urls(), "app": app}}});
    std::fs::write(dir.join("servers.json"), servers.to_string()).unwrap();
    std::fs::write(dir.join("master.json"), master.to_string()).unwrap();
    std::fs::write(
        dir.join("page.json"),
        json!({"development": {"host": "127.0.0.1", "port": 0}}).to_string(),
    )
    .unwrap();
}

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn killed_chat_server(restart: bool) {
    let hosts = Hosts::create(3).expect("3 hosts for the NATS nodes (needs root and iproute2)");
    let nats = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    let app = format!("chattest{}", std::process::id());
    let dir = tmp_dir();
    write_config(&dir, &nats, &app, restart);
    let secret = shaddock_rpc::ClusterSecret::generate()
        .expect("secret")
        .to_hex();

    let a = Launcher::start(&dir, "a", &secret);
    let b = Launcher::start(&dir, "b", &secret);
    let ca = a.connector();
    let cb = b.connector();
    assert_ne!(ca, cb);

    // The test's own view of the registry.
    let view = NatsBackend::connect(&ClusterConfig::new(nats.urls(), &app), "test")
        .await
        .expect("the test's backend");
    let deadline = Instant::now() + Duration::from_secs(20);
    while view.servers().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "not every server in the registry: {:?}",
            view.servers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `list` from either host reads the registry: every server of both launchers.
    let out = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
        .arg("--config")
        .arg(&dir)
        .arg("list")
        .env_remove("SHADDOCK_ENV")
        .output()
        .expect("run list");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "list: {table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [
        "gate-server-1",
        "connector-server-1",
        "connector-server-2",
        "chat-server-1",
        "chat-server-2",
    ] {
        assert!(table.contains(id), "list shows {id}: {table}");
    }
    // `list --json` from the registry carries what the embedded one does: RSS (refreshed
    // with the record every second: wait for it), restarts, state, and the metrics URL
    // (none here: no metricsPort in this servers.json).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = admin_cmd(&dir, &["list", "--json"]);
        assert!(ok, "list --json: {out} {err}");
        let v: Value = serde_json::from_str(&out).expect("list --json is JSON");
        let rows = v["servers"].as_array().expect("servers").clone();
        assert_eq!(rows.len(), 5, "{v}");
        for r in &rows {
            assert_eq!(r["state"], "running", "{r}");
            assert_eq!(r["restarts"], 0, "{r}");
            assert!(r["metricsUrl"].is_null(), "{r}");
            assert!(r["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
        }
        if rows
            .iter()
            .all(|r| r["rssBytes"].as_u64().is_some_and(|b| b > 1 << 20))
        {
            break;
        }
        assert!(Instant::now() < deadline, "RSS of every server: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let room = "lobby";
    let (talker, _) = enter(&ca, "talker", room).await;
    let (mut listener, r) = enter(&cb, "listener", room).await;
    let users: Vec<&str> = r["users"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        users.contains(&"talker") && users.contains(&"listener"),
        "both users in {room} across hosts: {r}"
    );
    let on = view
        .placement("chat", room.as_bytes())
        .await
        .expect("placement read")
        .expect("the room is placed");
    let victim = view
        .servers()
        .into_iter()
        .find(|s| s.id == on)
        .expect("the room's server in the registry");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let load = steady_load(
        talker.client.clone(),
        stop.clone(),
        ok.clone(),
        errors.clone(),
    );
    reaches(&ok, 20, Duration::from_secs(30), "messages before the kill").await;
    let ok_at_kill = ok.load(Ordering::SeqCst);
    let killed_at = Instant::now();
    signal(victim.pid, "KILL");
    reaches(&errors, 1, Duration::from_secs(30), "errors in the room").await;
    let ok_at_error = ok.load(Ordering::SeqCst);
    reaches(
        &ok,
        ok_at_error + 1,
        Duration::from_secs(45),
        "the room back",
    )
    .await;
    let healed = killed_at.elapsed();
    reaches(
        &ok,
        ok_at_kill + 50,
        Duration::from_secs(45),
        "the room served again",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = timeout(STEP * 4, load)
        .await
        .expect("load ended")
        .expect("load");
    let now_on = view
        .placement("chat", room.as_bytes())
        .await
        .expect("placement read")
        .expect("still placed");
    if !restart {
        assert_ne!(now_on, on, "the room moved off the killed server");
    }
    assert!(!alive(victim.pid), "the killed process is gone");
    // `list` on NATS: restarted, the server's row says so (its launcher passes the count);
    // not restarted, it is gone or shown lost, never running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = admin_cmd(&dir, &["list", "--json"]);
        assert!(ok, "list --json: {out} {err}");
        let v: Value = serde_json::from_str(&out).expect("list --json is JSON");
        let row = v["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == victim.id))
            .cloned();
        let done = match (&row, restart) {
            (Some(r), true) => r["restarts"] == 1 && r["state"] == "running",
            (Some(r), false) => r["state"] == "lost",
            (None, restart) => !restart,
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} after its kill (restart {restart}): {v}",
            victim.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The listener (other host, other connector) hears every acknowledged message.
    let mut got = Vec::new();
    while got.len() < acked.len() {
        match timeout(STEP, listener.chat.recv()).await {
            Ok(Some(p)) => got.push(
                p.value().expect("body")["msg"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => break,
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|m| !got.contains(m)).collect();
    eprintln!(
        "room {room}: {on} killed (restart {restart}), back on {now_on} after {healed:?}; {} \
         acked, {} delivered, {} errors while it was down",
        acked.len(),
        got.len(),
        errors.load(Ordering::SeqCst)
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered to the listener: {missing:?}"
    );
    drop(talker);
    drop(listener);
    drop(b);
    drop(a);
    drop(nats);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shaddock-chat --config DIR ARGS...` run to its end.
fn admin_cmd(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
        .arg("--config")
        .arg(dir)
        .args(args)
        .env_remove("SHADDOCK_ENV")
        .stdin(Stdio::null())
        .output()
        .expect("run shaddock-chat");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two launchers up (a and b) with every server in the registry.
async fn two_hosts(
    name: &str,
) -> (
    Hosts,
    NatsCluster,
    std::path::PathBuf,
    NatsBackend,
    Launcher,
    Launcher,
) {
    let hosts = Hosts::create(3).expect("3 hosts for the NATS nodes (needs root and iproute2)");
    let nats = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    let app = format!("{name}{}", std::process::id());
    let dir = tmp_dir();
    write_config(&dir, &nats, &app, true);
    let secret = shaddock_rpc::ClusterSecret::generate()
        .expect("secret")
        .to_hex();
    let a = Launcher::start(&dir, "a", &secret);
    let b = Launcher::start(&dir, "b", &secret);
    let view = NatsBackend::connect(&ClusterConfig::new(nats.urls(), &app), "test")
        .await
        .expect("the test's backend");
    let deadline = Instant::now() + Duration::from_secs(20);
    while view.servers().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "not every server in the registry: {:?}",
            view.servers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (hosts, nats, dir, view, a, b)
}

/// `add` from host a of a chat server of host b starts it on b's launcher: it is in `list`
/// and takes a new room; `add` for a host with no launcher is refused; `stop` from host a
/// ends both launchers cleanly (exit 0, every process gone); a second `stop` names the hosts
/// that no longer answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_from_one_host_runs_on_the_other_and_stop_from_one_host_ends_both() {
    let _one = SERIAL.lock().await;
    let (hosts, nats, dir, view, mut a, mut b) = two_hosts("admintest").await;

    let (ok, out, err) = admin_cmd(
        &dir,
        &[
            "--host-id",
            "a",
            "add",
            "id=chat-server-3",
            "serverType=chat",
            "host=127.0.0.1",
            "hostId=b",
            "port=0",
        ],
    );
    assert!(ok, "add: {out} {err}");
    assert!(out.contains("host b: added chat-server-3"), "add: {out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let added = loop {
        if let Some(r) = view.servers().into_iter().find(|s| s.id == "chat-server-3") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "chat-server-3 not in the registry: {:?}",
            view.servers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ok, table, err) = admin_cmd(&dir, &["list"]);
    assert!(ok && table.contains("chat-server-3"), "list: {table} {err}");
    // b's master started it: its parent is b's master process.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", added.pid)).expect("its stat");
    let ppid: u32 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("its parent pid");
    assert_eq!(
        Some(u64::from(ppid)),
        b.info["master_pid"].as_u64(),
        "chat-server-3 runs under b's master"
    );

    // New rooms: one of them lands on chat-server-3 and is served there.
    let mut users = Vec::new();
    let mut on_new = None;
    for i in 0..30 {
        let room = format!("new-{i}");
        let (user, _) = enter(&a.connector(), &format!("u{i}"), &room).await;
        let on = view
            .placement("chat", room.as_bytes())
            .await
            .expect("placement read")
            .expect("the room is placed");
        users.push(user);
        if on == "chat-server-3" {
            on_new = Some(users.len() - 1);
            break;
        }
    }
    let i = on_new.expect("a new room placed on chat-server-3 within 30 rooms");
    let r = timeout(
        STEP,
        users[i]
            .client
            .request(SEND, &json!({"content": "hello 3", "target": "*"})),
    )
    .await
    .expect("send in time")
    .expect("send");
    assert_eq!(r, json!({}), "send in the room on chat-server-3");
    let p = timeout(STEP, users[i].chat.recv())
        .await
        .expect("the message in time")
        .expect("the message");
    assert_eq!(p.value().expect("body")["msg"], "hello 3");

    // No launcher of host c: refused, naming it.
    let (ok, out, err) = admin_cmd(
        &dir,
        &[
            "add",
            "id=chat-server-9",
            "serverType=chat",
            "host=127.0.0.1",
            "hostId=c",
        ],
    );
    assert!(!ok, "add on a host with no launcher: {out}");
    assert!(err.contains("no launcher of host `c` is up"), "{err}");
    drop(users);

    let mut pids = a.pids();
    pids.extend(b.pids());
    pids.push(added.pid);
    let (ok, out, err) = admin_cmd(&dir, &["--host-id", "a", "stop"]);
    assert!(ok, "stop: {out} {err}");
    for line in [
        "host a: stopping",
        "host b: stopping",
        "host a: ",
        "host b: ",
        "cluster stopped",
    ] {
        assert!(out.contains(line), "stop prints {line:?}: {out}");
    }
    assert!(out.contains("host b: 3 servers stopped"), "{out}");
    let sa = a.wait_exit(Duration::from_secs(60));
    let sb = b.wait_exit(Duration::from_secs(60));
    assert!(
        sa.success() && sb.success(),
        "launchers ended with {sa} and {sb}"
    );
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} is gone after stop");
    }

    // Nobody answers any more: the command fails naming both hosts.
    let (ok, out, err) = admin_cmd(&dir, &["stop"]);
    assert!(!ok, "stop with no launcher up: {out}");
    assert!(err.contains("host(s) a, b"), "{err}");

    drop(b);
    drop(a);
    drop(view);
    drop(nats);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill` from one host kills every process of both launchers, which then end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_from_one_host_ends_both_launchers() {
    let _one = SERIAL.lock().await;
    let (hosts, nats, dir, view, mut a, mut b) = two_hosts("killtest").await;
    let mut pids = a.pids();
    pids.extend(b.pids());
    let (ok, out, err) = admin_cmd(&dir, &["--host-id", "b", "kill"]);
    assert!(ok, "kill: {out} {err}");
    for line in [
        "host a: killing 3 servers",
        "host b: killing 2 servers",
        "cluster killed",
    ] {
        assert!(out.contains(line), "kill prints {line:?}: {out}");
    }
    let sa = a.wait_exit(Duration::from_secs(60));
    let sb = b.wait_exit(Duration::from_secs(60));
    assert!(
        sa.success() && sb.success(),
        "launchers ended with {sa} and {sb}"
    );
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} is gone after kill");
    }
    drop(b);
    drop(a);
    drop(view);
    drop(nats);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}
