//! Multi-process cluster tests: the demo app's master is started from a temporary config
//! (port 0 everywhere) with a gate, 2 connectors and 2 chat backends, and driven with a
//! minimal pomelo client over raw TCP and the app's own CLI.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageDecoder, PackageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EXE: &str = env!("CARGO_BIN_EXE_shaddock-demo");
const T: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The master process; kills it and every server it listed on drop.
struct Cluster {
    /// The master as our child (foreground `start`); `None` for a daemon.
    master: Option<Child>,
    master_pid: u32,
    addr: String,
    dir: PathBuf,
    lines: Option<mpsc::Receiver<String>>,
    pids: Vec<u32>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(m) = &mut self.master {
            let _ = m.kill();
            let _ = m.wait();
        }
        shaddock_test_support::process::kill9_all(
            std::iter::once(&self.master_pid).chain(&self.pids),
        );
        if std::thread::panicking() {
            eprintln!("cluster files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    server_type: String,
    pid: u32,
    rss: String,
    connections: u64,
    client_port: u16,
    state: String,
}

/// servers.json of most tests: a gate, 2 connectors, 2 chat servers that restart.
const SERVERS: &str = r#"{"development":{
              "gate":[{"id":"gate-server-1","host":"127.0.0.1","clientPort":0,"frontend":true}],
              "connector":[
                {"id":"connector-server-1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true},
                {"id":"connector-server-2","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true}],
              "chat":[
                {"id":"chat-server-1","host":"127.0.0.1","port":0,"restart":true},
                {"id":"chat-server-2","host":"127.0.0.1","port":0,"restart":true}]}}"#;
/// master.json of most tests.
const MASTER: &str = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0}}"#;

impl Cluster {
    fn config_dir(name: &str) -> PathBuf {
        Self::config_dir_with(name, SERVERS, MASTER)
    }

    fn config_dir_with(name: &str, servers: &str, master: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shaddock-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("servers.json"), servers).unwrap();
        std::fs::write(dir.join("master.json"), master).unwrap();
        std::fs::create_dir_all(dir.join("life")).unwrap();
        dir
    }

    /// Starts the master in the foreground, as our child.
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(Self::config_dir(name), env, Stdio::inherit())
    }

    /// Starts the master in the foreground on this config, its log (stderr) in `master.log`
    /// of the config dir (see [`Cluster::log`]).
    fn start_with(name: &str, servers: &str, master: &str, env: &[(&str, &str)]) -> Self {
        let dir = Self::config_dir_with(name, servers, master);
        let log = std::fs::File::create(dir.join("master.log")).unwrap();
        Self::start_in(dir, env, Stdio::from(log))
    }

    /// The master's log, when it was started with [`Cluster::start_with`].
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }

    fn start_in(dir: PathBuf, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut master = Command::new(EXE)
            .args(["start", "--config"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .env("SHADDOCK_DEMO_LIFECYCLE_DIR", dir.join("life"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start master");
        let stdout = master.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = Self {
            master_pid: master.id(),
            master: Some(master),
            addr: String::new(),
            dir,
            lines: Some(lines),
            pids: Vec::new(),
        };
        let l = c.line_starting("SHADDOCK_MASTER_LISTENING");
        c.addr = l.split_whitespace().nth(1).unwrap().to_owned();
        c.line_starting("SHADDOCK_CLUSTER_READY");
        c
    }

    /// Starts the master with `start -D` (detached, logging to a file, writing a pid file).
    fn start_daemon(name: &str, env: &[(&str, &str)]) -> Self {
        let dir = Self::config_dir(name);
        let (log, pid_file) = (dir.join("master.log"), dir.join("master.pid"));
        let out = Command::new(EXE)
            .args(["start", "-D", "--config"])
            .arg(&dir)
            .arg("--log")
            .arg(&log)
            .arg("--pid-file")
            .arg(&pid_file)
            .env("RUST_LOG", "warn")
            .env("SHADDOCK_DEMO_LIFECYCLE_DIR", dir.join("life"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("start -D");
        assert!(out.status.success(), "{out:?}");
        let master_pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut c = Self {
            master: None,
            master_pid,
            addr: String::new(),
            dir,
            lines: None,
            pids: Vec::new(),
        };
        // No pipe to a daemon: poll its log file (bounded).
        let deadline = Instant::now() + T;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text
                .lines()
                .find(|l| l.starts_with("SHADDOCK_MASTER_LISTENING"))
            {
                c.addr = l.split_whitespace().nth(1).unwrap().to_owned();
            }
            if !c.addr.is_empty() && text.lines().any(|l| l == "SHADDOCK_CLUSTER_READY") {
                return c;
            }
            assert!(Instant::now() < deadline, "daemon not ready: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lifecycle events the demo's component recorded for `server`.
    fn lifecycle(&self, server: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("life").join(server))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .as_ref()
                .unwrap()
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `{prefix}` line from the master: {e}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Runs the CLI against this master: (success, stdout, stderr).
    fn cli_full(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(EXE)
            .args(args)
            .args(["--master", &self.addr])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .expect("run cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let (ok, out, err) = self.cli_full(args);
        (ok, out + &err)
    }

    fn list(&mut self) -> HashMap<String, Row> {
        let (ok, text, err) = self.cli_full(&["list"]);
        assert!(ok, "list failed: {text} {err}");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "ID", "TYPE", "PID", "UPTIME", "RSS", "CONNS", "RPC", "CLIENT", "STATE"
            ]
        );
        let mut rows = HashMap::new();
        for l in lines {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 9, "{l}");
            let row = Row {
                server_type: c[1].into(),
                pid: c[2].parse().unwrap(),
                rss: c[4].into(),
                connections: c[5].parse().unwrap(),
                client_port: c[7].parse().unwrap(),
                state: c[8].into(),
            };
            if row.pid != 0 && !self.pids.contains(&row.pid) {
                self.pids.push(row.pid);
            }
            rows.insert(c[0].to_owned(), row);
        }
        rows
    }

    /// Polls `list` until `ok` holds (bounded).
    async fn until(
        &mut self,
        what: &str,
        ok: impl Fn(&HashMap<String, Row>) -> bool,
    ) -> HashMap<String, Row> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = self.list();
            if ok(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A minimal pomelo client over raw TCP.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    dec: PackageDecoder,
    next_id: u32,
    pushes: VecDeque<(String, Value)>,
    responses: HashMap<u32, Value>,
    kick: Option<String>,
}

impl Client {
    async fn connect(port: u16) -> Self {
        let stream = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap();
        let mut c = Self {
            stream,
            buf: BytesMut::new(),
            dec: PackageDecoder::new(1 << 20),
            next_id: 1,
            pushes: VecDeque::new(),
            responses: HashMap::new(),
            kick: None,
        };
        let hs = br#"{"sys":{"type":"rust-test","version":"0.1.0"},"user":{}}"#;
        c.send(Package::new(PackageType::Handshake, Bytes::from_static(hs)))
            .await;
        let p = c.package().await.expect("handshake reply");
        assert_eq!(p.kind, PackageType::Handshake);
        let reply: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(reply["code"], 200, "{reply}");
        c.send(Package::empty(PackageType::HandshakeAck)).await;
        c
    }

    async fn send(&mut self, p: Package) {
        let b = p.to_bytes().unwrap();
        within("write", self.stream.write_all(&b)).await.unwrap();
    }

    /// The next package that is not a heartbeat (heartbeats are answered); None on close.
    async fn package(&mut self) -> Option<Package> {
        within("read", async {
            loop {
                if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                    if p.kind == PackageType::Heartbeat {
                        let hb = Package::empty(PackageType::Heartbeat).to_bytes().unwrap();
                        let _ = self.stream.write_all(&hb).await;
                        continue;
                    }
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads one package into the queues; false when the connection closed.
    async fn pump(&mut self) -> bool {
        let Some(p) = self.package().await else {
            return false;
        };
        match p.kind {
            PackageType::Data => {
                let m = Message::decode(p.body).unwrap();
                let body: Value = serde_json::from_slice(&m.body).unwrap();
                match m.kind {
                    MessageType::Response => {
                        self.responses.insert(m.id, body);
                    }
                    MessageType::Push => {
                        let route = m.route.as_str().unwrap_or_default().to_owned();
                        self.pushes.push_back((route, body));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            PackageType::Kick => {
                let v: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
                self.kick = Some(v["reason"].as_str().unwrap_or_default().to_owned());
            }
            other => panic!("unexpected package {other:?}"),
        }
        true
    }

    async fn send_request(&mut self, route: &str, body: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let m = Message::request(
            id,
            MessageRoute::name(route),
            serde_json::to_vec(&body).unwrap(),
        );
        self.send(m.to_package().unwrap()).await;
        id
    }

    async fn response(&mut self, id: u32) -> Value {
        loop {
            if let Some(v) = self.responses.remove(&id) {
                return v;
            }
            assert!(
                self.pump().await,
                "closed before response {id} (kick: {:?})",
                self.kick
            );
        }
    }

    async fn request(&mut self, route: &str, body: Value) -> Value {
        let id = self.send_request(route, body).await;
        self.response(id).await
    }

    async fn push(&mut self) -> (String, Value) {
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return p;
            }
            assert!(self.pump().await, "closed before a push");
        }
    }

    /// Reads until the server kicks and closes; returns the kick reason.
    async fn kicked(&mut self) -> Option<String> {
        while self.kick.is_none() {
            if !self.pump().await {
                break;
            }
        }
        self.kick.clone()
    }
}

/// Finds a room name the default crc32 router sends to `want` among `n` servers.
fn rid_for(index: usize, n: usize) -> String {
    (0..10_000)
        .map(|i| format!("room-{i}"))
        .find(|r| crc32fast::hash(r.as_bytes()) as usize % n == index)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_broadcasts_restarts_adds_and_stops() {
    let mut cl = Cluster::start("e2e", &[]);

    eprintln!("STEP 1: `list`: every configured server runs in ");
    // `list`: every configured server runs in its own process.
    let rows = cl.list();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.values().all(|r| r.state == "running" && r.pid != 0),
        "{rows:?}"
    );
    assert!(rows.values().all(|r| r.rss != "0K"), "{rows:?}");
    let mut pids: Vec<u32> = rows.values().map(|r| r.pid).collect();
    pids.dedup();
    assert_eq!(pids.len(), 5);
    assert_eq!(rows["chat-server-1"].server_type, "chat");
    let c1 = rows["connector-server-1"].client_port;
    let c2 = rows["connector-server-2"].client_port;

    eprintln!("STEP 2: The gate hands out a live connector.");
    // Connection counts reach `list` (reported every second).
    let gate_port = rows["gate-server-1"].client_port;
    let _watcher = Client::connect(gate_port).await;
    cl.until("the gate's connection counted", |r| {
        r["gate-server-1"].connections >= 1
    })
    .await;

    // The gate hands out a live connector.
    let mut gate = Client::connect(rows["gate-server-1"].client_port).await;
    let entry = gate
        .request("gate.gateHandler.queryEntry", json!({"uid": "alice"}))
        .await;
    assert_eq!(entry["code"], 200, "{entry}");
    let port = entry["port"].as_u64().unwrap() as u16;
    assert!(port == c1 || port == c2, "{entry}");

    eprintln!("STEP 3: Two users on two connectors in one room;");
    // Two users on two connectors in one room; a routed request and a channel push.
    let room = rid_for(0, 2);
    let mut alice = Client::connect(c1).await;
    let mut bob = Client::connect(c2).await;
    for (c, uid) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        let r = c
            .request(
                "connector.entryHandler.enter",
                json!({"uid": uid, "rid": room}),
            )
            .await;
        assert_eq!(r["code"], 200, "{r}");
        let r = c.request("chat.chatHandler.join", json!({})).await;
        assert_eq!(r["code"], 200, "{r}");
    }
    let who = bob.request("chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["server"], "chat-server-1", "{who}");
    assert_eq!(who["uid"], "bob");
    assert_eq!(who["frontend"], "connector-server-2");
    assert_eq!(who["rid"], json!(room));
    let sent = alice
        .request("chat.chatHandler.send", json!({"msg": "hello"}))
        .await;
    assert_eq!(sent["rpcs"], 2, "one rpc per connector: {sent}");
    assert_eq!(sent["sent"], 2, "{sent}");
    for c in [&mut alice, &mut bob] {
        let (route, body) = c.push().await;
        assert_eq!(route, "onChat");
        assert_eq!(body, json!({"from": "alice", "msg": "hello"}));
    }

    eprintln!("STEP 4: Duplicate login on the other connector k");
    // Duplicate login on the other connector kicks the old session.
    let mut alice2 = Client::connect(c2).await;
    let r = alice2
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "alice", "rid": room}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(alice.kicked().await.as_deref(), Some("logged in elsewhere"));

    eprintln!("STEP 5: A crashed backend is restarted by the ma");
    // A crashed backend is restarted by the master and serves the room again.
    let old = cl.list()["chat-server-1"].pid;
    let st = Command::new("kill")
        .args(["-9", &old.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    cl.until("chat-server-1 restarted", |r| {
        let s = &r["chat-server-1"];
        s.state == "running" && s.pid != 0 && s.pid != old
    })
    .await;
    let who = bob.request("chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["server"], "chat-server-1", "{who}");

    eprintln!("STEP 6: A server added at runtime becomes routab");
    // A server added at runtime becomes routable without restarting anyone.
    let (ok, out) = cl.cli(&[
        "add",
        "id=chat-server-3",
        "serverType=chat",
        "host=127.0.0.1",
        "port=0",
    ]);
    assert!(ok, "{out}");
    cl.until("chat-server-3 running", |r| {
        r.get("chat-server-3").is_some_and(|s| s.state == "running")
    })
    .await;
    let room3 = rid_for(2, 3);
    let mut dave = Client::connect(c1).await;
    let r = dave
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "dave", "rid": room3}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let who = dave.request("chat.chatHandler.whoami", json!({})).await;
        if who["server"] == "chat-server-3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chat-server-3 never routed to: {who}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = cl.cli(&["add", "id=chat-server-3", "serverType=chat", "port=0"]);
    assert!(!ok && out.contains("already exists"), "{out}");

    eprintln!("STEP 7: Graceful stop: a request in flight is an");
    // Graceful stop: a request in flight is answered, then the client is kicked.
    let id = bob
        .send_request("chat.chatHandler.slow", json!({"ms": 1500}))
        .await;
    // The backend has the request once it pushed `onSlow`.
    let (route, _) = bob.push().await;
    assert_eq!(route, "onSlow");
    let addr = cl.addr.clone();
    let stop = tokio::task::spawn_blocking(move || {
        Command::new(EXE)
            .args(["stop", "--master", &addr])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    });
    let r = bob.response(id).await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["slept"], 1500);
    assert_eq!(bob.kicked().await.as_deref(), Some("server stopping"));
    let out = within("stop cli", stop).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = cl.master.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "master did not exit after stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    for id in [
        "gate-server-1",
        "connector-server-1",
        "connector-server-2",
        "chat-server-2",
        "chat-server-3",
    ] {
        assert_eq!(
            cl.lifecycle(id),
            ["start", "after_start", "before_stop", "stop"],
            "{id}"
        );
    }
    // chat-server-1 was killed once and restarted: its first life never reached `stop`.
    assert_eq!(
        cl.lifecycle("chat-server-1"),
        [
            "start",
            "after_start",
            "start",
            "after_start",
            "before_stop",
            "stop"
        ]
    );
}

#[test]
fn a_bad_config_is_reported_with_file_and_field() {
    let dir = Cluster::config_dir("bad");
    std::fs::write(
        dir.join("servers.json"),
        r#"{"development":{"chat":[{"id":"chat-server-1","host":"127.0.0.1"}]}}"#,
    )
    .unwrap();
    let out = Command::new(EXE)
        .args(["start", "--config"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("servers.json"), "{err}");
    assert!(err.contains("chat/chat-server-1, field `port`"), "{err}");
    let out = Command::new(EXE)
        .args(["start", "-e", "staging", "--config"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no environment `staging`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_cluster_refuses_duplicates_kicks_uids_and_is_killed() {
    let mut cl = Cluster::start_daemon("daemon", &[("SHADDOCK_DEMO_DUPLICATE", "refuse")]);
    assert!(alive(cl.master_pid));
    let rows = cl.list();
    assert_eq!(rows.len(), 5, "{rows:?}");
    let (c1, c2) = (
        rows["connector-server-1"].client_port,
        rows["connector-server-2"].client_port,
    );
    for id in rows.keys() {
        assert_eq!(cl.lifecycle(id), ["start", "after_start"], "{id}");
    }

    // RefuseNew: a second login of a uid on another connector is refused, the first stays.
    let mut alice = Client::connect(c1).await;
    let r = alice
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "alice", "rid": "r"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let mut again = Client::connect(c2).await;
    let r = again
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "alice", "rid": "r"}),
        )
        .await;
    assert_eq!(r["code"], 500, "{r}");
    assert!(
        r["msg"].as_str().unwrap().contains("already logged in"),
        "{r}"
    );

    // A broadcast reaches every session of every connector (bound or not), one RPC each
    // (on one machine: nothing published on NATS).
    let r = alice
        .request("chat.chatHandler.broadcast", json!({"news": 1}))
        .await;
    assert_eq!(
        r,
        json!({"code": 200, "rpcs": 2, "sent": 2, "published": 0})
    );
    for c in [&mut alice, &mut again] {
        assert_eq!(
            c.push().await,
            ("onBroadcast".to_owned(), json!({"news": 1}))
        );
    }

    // Backend session settings reach the frontend session when the handler returns.
    let who = alice.request("chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["seen"], Value::Null, "{who}");
    let who = alice.request("chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["seen"], true, "{who}");

    // A backend filter refuses a request with its own code.
    let r = alice
        .request("chat.chatHandler.whoami", json!({"forbidden": true}))
        .await;
    assert_eq!(r, json!({"code": 403, "msg": "forbidden by filter"}));

    // kick_uid reaches the uid on the other connector.
    let mut carol = Client::connect(c2).await;
    let r = carol
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "carol", "rid": "r"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = alice
        .request("chat.chatHandler.kickUser", json!({"uid": "carol"}))
        .await;
    assert_eq!(r["kicked"], 1, "{r}");
    assert_eq!(carol.kicked().await.as_deref(), Some("kicked by admin"));
    // Her uid is free again: a new login of carol is accepted.
    let mut carol2 = Client::connect(c1).await;
    let r = carol2
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "carol", "rid": "r"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");

    // A login abandoned during its bind (the client left) does not hold the uid: the master
    // granted the claim, the closed session could not take it, and the claim is released.
    let mut gone = Client::connect(c1).await;
    gone.send_request(
        "connector.entryHandler.enterWhenClosed",
        json!({"uid": "dave"}),
    )
    .await;
    drop(gone);
    let deadline = Instant::now() + T;
    let late = loop {
        if let Some(l) = cl
            .lifecycle("connector-server-1")
            .into_iter()
            .find(|l| l.starts_with("late-bind dave"))
        {
            break l;
        }
        assert!(Instant::now() < deadline, "the late bind did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        late.contains("is closed"),
        "the claim was not granted first: {late}"
    );
    let mut dave = Client::connect(c2).await;
    let r = dave
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "dave", "rid": "r"}),
        )
        .await;
    assert_eq!(
        r["code"], 200,
        "an abandoned login locked the name out: {r}"
    );
    // An unbound uid is free at once, while its old session is still connected.
    let r = dave
        .request("connector.entryHandler.leave", json!({"uid": "dave"}))
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let mut dave2 = Client::connect(c1).await;
    let r = dave2
        .request(
            "connector.entryHandler.enter",
            json!({"uid": "dave", "rid": "r"}),
        )
        .await;
    assert_eq!(r["code"], 200, "an unbound uid stayed claimed: {r}");

    // `kill`: every server and then the master are gone.
    let pids: Vec<u32> = rows.values().map(|r| r.pid).collect();
    let (ok, out) = cl.cli(&["kill"]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::iter::once(&cl.master_pid)
        .chain(&pids)
        .any(|p| alive(*p))
    {
        assert!(Instant::now() < deadline, "processes survived kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alice.kicked().await, None, "killed servers send no kick");
}

/// With no `restart` in servers.json, a crashed server comes back (master.json's
/// `restart.enabled` defaults to true); one with `"restart": false` stays down; one that fails
/// at once on every start after its first is restarted `crashLoop.max` times and then left
/// down as `crash-loop`, with an ERROR naming it, the count and its last exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_servers_restart_by_default_and_a_crash_loop_stays_down() {
    let servers = r#"{"development":{
      "connector":[{"id":"connector-server-1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true}],
      "chat":[
        {"id":"chat-server-1","host":"127.0.0.1","port":0},
        {"id":"chat-server-2","host":"127.0.0.1","port":0},
        {"id":"chat-server-3","host":"127.0.0.1","port":0,"restart":false}]}}"#;
    let master = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0,
      "restart":{"backoffMs":50,"maxBackoffMs":200,"crashLoop":{"max":3,"windowSecs":60}}}}"#;
    let mut cl = Cluster::start_with(
        "restart",
        servers,
        master,
        &[("SHADDOCK_DEMO_FAIL_AGAIN", "chat-server-2")],
    );
    let rows = cl.list();
    assert!(rows.values().all(|r| r.state == "running"), "{rows:?}");
    let kill9 = |pid: u32| {
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };

    // Restarted by default.
    let old = rows["chat-server-1"].pid;
    kill9(old);
    cl.until("chat-server-1 restarted", |r| {
        let s = &r["chat-server-1"];
        s.state == "running" && s.pid != 0 && s.pid != old
    })
    .await;

    // Its own "restart": false wins.
    kill9(rows["chat-server-3"].pid);
    cl.until("chat-server-3 exited", |r| {
        r["chat-server-3"].state == "exited" && r["chat-server-3"].pid == 0
    })
    .await;

    // Every restart fails at once: after max (3) restarts, the 4th crash within the window
    // leaves it down.
    kill9(rows["chat-server-2"].pid);
    let rows = cl
        .until("chat-server-2 in crash-loop", |r| {
            r["chat-server-2"].state == "crash-loop"
        })
        .await;
    assert_eq!(rows["chat-server-2"].pid, 0);
    assert_eq!(
        cl.lifecycle("chat-server-2"),
        ["start", "after_start", "refused", "refused", "refused"]
    );
    let log = cl.log();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("crash-loop"))
        .unwrap_or_else(|| panic!("no crash-loop ERROR in the log:\n{log}"));
    for want in [
        "server=chat-server-2",
        "crashes=4",
        "last_status=exit status: 1",
    ] {
        assert!(line.contains(want), "`{want}` not in: {line}");
    }
    // It stays down, and chat-server-3 stays exited (the other two are untouched).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = cl.list();
    assert_eq!(rows["chat-server-2"].state, "crash-loop");
    assert_eq!(rows["chat-server-3"].state, "exited");
    assert_eq!(rows["connector-server-1"].state, "running");
    assert_eq!(cl.lifecycle("chat-server-2").len(), 5);

    // `stop` still stops the cluster cleanly.
    let (ok, out) = cl.cli(&["stop"]);
    assert!(ok, "{out}");
    let status = tokio::task::block_in_place(|| cl.master.as_mut().unwrap().wait()).unwrap();
    assert!(status.success(), "{status}");
}

/// Runs `cmd` (stdout and stderr captured) and waits at most `within`; SIGKILL after that.
fn output_within(mut cmd: Command, within: Duration) -> Option<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => Some(out.expect("output")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            None
        }
    }
}

/// The pids the master logged for `server process started` (a DEBUG line of its supervisor).
fn started_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("server process started"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// A server that exits while the cluster starts (here: the gate's client port is taken)
/// fails the start at once: the master says which server and why, stops what it started and
/// exits 1 with that cause as its last line, instead of running on without it.
#[test]
fn a_server_that_cannot_start_fails_the_cluster_start_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let servers = format!(
        r#"{{"development":{{
          "gate":[{{"id":"gate-server-1","host":"127.0.0.1","clientPort":{port},"frontend":true}}],
          "connector":[{{"id":"connector-server-1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true}}],
          "chat":[{{"id":"chat-server-1","host":"127.0.0.1","port":0}}]}}}}"#
    );
    let dir = Cluster::config_dir_with("taken", &servers, MASTER);
    let mut cmd = Command::new(EXE);
    cmd.args(["start", "--config"])
        .arg(&dir)
        .env(
            "RUST_LOG",
            "info,shaddock_server::master::supervise=debug,shaddock_rpc=warn",
        )
        .env("SHADDOCK_DEMO_LIFECYCLE_DIR", dir.join("life"));
    let t0 = Instant::now();
    // Without the fix the master runs on (the gate just "exited"): this bound ends it.
    let out = output_within(cmd, Duration::from_secs(60)).expect("the master did not exit");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    for want in [
        "error: gate-server-1 could not start: cannot bind client port",
        &format!("127.0.0.1:{port}"),
        "in use",
    ] {
        assert!(
            last.contains(want),
            "`{want}` not in the last line: {last}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("SHADDOCK_CLUSTER_FAILED gate-server-1 could not start: cannot bind"),
        "{stdout}"
    );
    assert!(!stdout.contains("SHADDOCK_CLUSTER_READY"), "{stdout}");
    // Every server process it started is gone.
    let pids = started_pids(&stderr);
    assert!(pids.len() >= 3, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "servers left running: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (bounded) until none of `pids` is alive.
fn all_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A SIGKILLed master leaves no server behind: each reads end of file on the stdin pipe the
/// master held and stops gracefully (its components' `stop` runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_stop_when_their_master_is_sigkilled() {
    let mut cl = Cluster::start("orphans", &[]);
    let rows = cl.list();
    let pids: Vec<u32> = rows.values().map(|r| r.pid).collect();
    assert_eq!(pids.len(), 5, "{rows:?}");
    let st = Command::new("kill")
        .args(["-9", &cl.master_pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = cl.master.as_mut().unwrap().wait();
    let left: Vec<u32> = pids.clone();
    assert!(
        tokio::task::block_in_place(|| all_gone(&left, Duration::from_secs(30))),
        "servers outlived their master: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    for id in rows.keys() {
        assert_eq!(
            cl.lifecycle(id),
            ["start", "after_start", "before_stop", "stop"],
            "{id}"
        );
    }
}

/// `start --exit-with-parent`: when the master's stdin closes (its parent died), it stops
/// the cluster gracefully and exits 0.
#[test]
fn exit_with_parent_stops_the_cluster_when_stdin_closes() {
    let dir = Cluster::config_dir("parent");
    let mut master = Command::new(EXE)
        .args(["start", "--exit-with-parent", "--config"])
        .arg(&dir)
        .env(
            "RUST_LOG",
            "info,shaddock_server::master::supervise=debug,shaddock_rpc=warn",
        )
        .env("SHADDOCK_DEMO_LIFECYCLE_DIR", dir.join("life"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("master.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let pipe = master.stdin.take().unwrap();
    let lines = std::io::BufReader::new(master.stdout.take().unwrap()).lines();
    let mut ready = false;
    for line in lines {
        if line.unwrap() == "SHADDOCK_CLUSTER_READY" {
            ready = true;
            break;
        }
    }
    assert!(ready, "no ready line");
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    let pids = started_pids(&log);
    assert_eq!(pids.len(), 5, "{log}");
    drop(pipe);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(master.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the master did not exit when its stdin closed")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(all_gone(&pids, Duration::from_secs(10)), "{pids:?}");
    for id in ["gate-server-1", "connector-server-1", "chat-server-2"] {
        let life = std::fs::read_to_string(dir.join("life").join(id)).unwrap_or_default();
        assert_eq!(life.lines().last(), Some("stop"), "{id}: {life}");
    }
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(log.contains("the parent went away"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `init` writes an app that builds and passes its own tests (a unit test of its handlers and
/// a cluster test that chats through the Rust client): built offline from the checkout's
/// Cargo.lock, in this workspace's target dir so the dependencies are reused.
#[test]
fn init_writes_an_app_that_builds_and_passes_its_own_tests() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target_dir = tmp.parent().expect("target dir").to_owned();
    let dir = tmp.join(format!("init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("hello-app");
    let out = Command::new(EXE)
        .arg("init")
        .arg(&app)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let toml = std::fs::read_to_string(app.join("Cargo.toml")).unwrap();
    // Relative paths only: the app keeps building when it moves with the checkout.
    let paths: Vec<&str> = toml
        .lines()
        .filter_map(|l| l.split("path = \"").nth(1)?.split('"').next())
        .collect();
    // shaddock-server (which re-exports what handlers need) and, for the test, shaddock-client.
    assert_eq!(paths.len(), 2, "{toml}");
    assert!(paths.iter().all(|p| p.starts_with("..")), "{toml}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [&["build", "--offline"][..], &["test", "--offline"]] {
        let mut cmd = Command::new(&cargo);
        cmd.args(args)
            .current_dir(&app)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUST_LOG", "error");
        let out = output_within(cmd, Duration::from_secs(600))
            .unwrap_or_else(|| panic!("cargo {args:?} took over 10 minutes"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cargo {args:?} in {}:\n{text}",
            app.display()
        );
        if args[0] == "test" {
            for t in [
                "requests_without_their_field_get_an_error ... ok",
                "a_client_enters_and_chats_and_wrong_requests_get_errors ... ok",
            ] {
                assert!(text.contains(t), "`{t}` not in:\n{text}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the CLI against `addr` with `env`: (success, stdout + stderr).
fn cli_with_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(EXE)
        .args(args)
        .args(["--master", addr])
        .env("RUST_LOG", "error")
        .env_remove("SHADDOCK_RPC_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A call through a raw RPC client (`secret` or none) to a remote the server does not have:
/// `UnknownService` proves the call got past authentication, `AuthFailed` that it did not.
async fn probe(port: u16, secret: Option<&shaddock_rpc::ClusterSecret>) -> shaddock_rpc::RpcError {
    let mut cfg = shaddock_rpc::RpcConfig::default();
    cfg.secret = secret.cloned();
    cfg.reconnect_max_attempts = 1;
    let rpc = shaddock_rpc::RpcClient::new(cfg);
    rpc.directory().add(shaddock_rpc::ServerInfo::new(
        "probe-target",
        "chat",
        "127.0.0.1",
        port,
    ));
    within(
        "probe call",
        rpc.call_raw(
            shaddock_rpc::Target::server("probe-target"),
            shaddock_rpc::Namespace::User,
            shaddock_rpc::Name::from_static("noSuchRemote").unwrap(),
            shaddock_rpc::Name::from_static("x").unwrap(),
            Bytes::new(),
        ),
    )
    .await
    .expect_err("the probe remote does not exist")
}

/// With a cluster secret every server of the cluster (and the master) serves only callers
/// that know it. Given to the master in `SHADDOCK_RPC_SECRET`: the servers it starts get it
/// through their environment (never on their command line) and register with it; a raw RPC
/// client without it gets `AuthFailed` from a running chat server and from the master, and
/// the admin CLI works only with the variable set. By default the master makes one up (see
/// below); `"rpcSecret": "none"` turns authentication off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_ports_require_the_cluster_secret() {
    let secret = shaddock_rpc::ClusterSecret::generate().unwrap();
    let hex = secret.to_hex();
    let env = [("SHADDOCK_RPC_SECRET", hex.as_str())];
    let mut cl = Cluster::start_with("secret", SERVERS, MASTER, &env);
    let (ok, text) = cli_with_env(&cl.addr, &["list"], &env);
    assert!(ok, "list with the secret failed: {text}");
    let mut chat_port = None;
    for l in text.lines().skip(1) {
        let c: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(c.len(), 9, "{l}");
        let pid: u32 = c[2].parse().unwrap();
        cl.pids.push(pid);
        assert_eq!(c[8], "running", "{l}");
        // Not on any server's command line.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&hex),
            "the secret is on the command line of {l}"
        );
        if c[0] == "chat-server-1" {
            chat_port = Some(c[6].rsplit_once(':').unwrap().1.parse::<u16>().unwrap());
        }
    }
    let chat_port = chat_port.expect("chat-server-1 in the list");
    let master_port: u16 = cl.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    for (what, port) in [("chat-server-1", chat_port), ("the master", master_port)] {
        let err = probe(port, None).await;
        assert!(
            matches!(err, shaddock_rpc::RpcError::AuthFailed { .. }),
            "{what} without the secret: {err:?}"
        );
        let wrong = shaddock_rpc::ClusterSecret::generate().unwrap();
        let err = probe(port, Some(&wrong)).await;
        assert!(
            matches!(err, shaddock_rpc::RpcError::AuthFailed { .. }),
            "{what} with a wrong secret: {err:?}"
        );
        let err = probe(port, Some(&secret)).await;
        assert!(
            matches!(err, shaddock_rpc::RpcError::UnknownService { .. }),
            "{what} with the secret: {err:?}"
        );
    }
    let (ok, text) = cli_with_env(&cl.addr, &["list"], &[]);
    assert!(
        !ok && text.contains("authentication"),
        "list without the secret: {text}"
    );
    assert!(
        !cl.log().contains(&hex),
        "the secret is in the master's log"
    );
    drop(cl);

    // Without rpcSecret (the default, "random") the master makes one up: the cluster starts
    // (its servers registered with it), nothing outside it gets in, and admin commands of
    // this user on this machine find it in the master's secret file (0600), which goes when
    // the master does.
    let cl = Cluster::start_with("secret-random", SERVERS, MASTER, &[]);
    let file = shaddock_server::secret::secret_file(&cl.addr);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    let (ok, text) = cli_with_env(&cl.addr, &["list"], &[]);
    assert!(
        ok && text.contains("running"),
        "list on the master's machine: {text}"
    );
    let master_port: u16 = cl.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let err = probe(master_port, None).await;
    assert!(
        matches!(err, shaddock_rpc::RpcError::AuthFailed { .. }),
        "the master without the secret: {err:?}"
    );
    let from_file = shaddock_server::secret::read_secret_file(&cl.addr)
        .unwrap()
        .expect("the secret file");
    let err = probe(master_port, Some(&from_file)).await;
    assert!(
        matches!(err, shaddock_rpc::RpcError::UnknownService { .. }),
        "the master with the file's secret: {err:?}"
    );
    let (ok, text) = cli_with_env(&cl.addr, &["stop"], &[]);
    assert!(ok, "stop: {text}");
    let mut cl = cl;
    let master = cl.master.as_mut().expect("the master process");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while master.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the master did not exit after stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cl);
    assert!(
        !file.exists(),
        "{} left after the master stopped",
        file.display()
    );

    // "rpcSecret": "none" turns it off: the ports serve anyone.
    let none = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0,"rpcSecret":"none"}}"#;
    let cl = Cluster::start_with("secret-none", SERVERS, none, &[]);
    let master_port: u16 = cl.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let err = probe(master_port, None).await;
    assert!(
        matches!(err, shaddock_rpc::RpcError::UnknownService { .. }),
        "the master with rpcSecret none: {err:?}"
    );
}
