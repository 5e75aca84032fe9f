//! The demo app in a cluster on NATS (issue 15): app-wide broadcasts as one NATS message, and
//! uid control across connectors.
//!
//! A 3-node JetStream nats-server cluster (test-support, one node per network namespace), and
//! one `shaddock-demo start --host-id a` launcher on 127.0.0.1 with a gate, two connectors and
//! a chat server, every one serving `/metrics`. Clients are the Rust SDK over TCP, straight to
//! the connectors' client ports as `list --json` reads them from the registry.
//!
//! - `broadcast_is_one_nats_publish_and_uid_control_works_across_connectors` (duplicate login
//!   KickOld): a broadcast reaches users on both connectors as one publish (the chat server's
//!   `shaddock_cluster_broadcasts_published_total` +1, each connector's
//!   `shaddock_cluster_broadcasts_received_total` +1, no `sessionRemote.broadcast` RPC served,
//!   nothing at the gate); a broadcast over the NATS max payload is a clean error; the same uid
//!   logging in on the other connector kicks the old session; `kick_uid` from the chat server
//!   reaches a session on the other connector.
//! - `refuse_new_claims_are_released_on_close_and_unbind_and_freed_with_a_killed_frontend`
//!   (RefuseNew): the second login of a uid on the other connector is refused with an error
//!   naming where it is; closing or unbinding releases the claim (the uid logs in elsewhere
//!   without waiting for a TTL); a connector killed with SIGKILL (not restarted) frees its
//!   uids once its record expires.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value as PValue};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Event, Events, PushStream, Transport};
use shaddock_test_support::nats::NatsCluster;
use shaddock_test_support::netns::Hosts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const EXE: &str = env!("CARGO_BIN_EXE_shaddock-demo");
/// Bound of one step (a request, a push, a start).
const STEP: Duration = Duration::from_secs(20);
const ENTER: &str = "connector.entryHandler.enter";

/// One test at a time: each runs its own NATS cluster and launcher on this 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// servers.json and master.json in a fresh directory: gate-server-1, connector-server-1 and
/// -2, chat-server-1, all on host `a` (127.0.0.1), all with a metrics port. `restart` applies to
/// connector-server-2.
fn config(nats: &NatsCluster, app: &str, restart_connector_2: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shaddock-natspush-{app}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fe = |id: &str| {
        json!({"id": id, "host": "127.0.0.1", "hostId": "a", "port": 0, "clientPort": 0,
               "frontend": true, "metricsPort": 0})
    };
    let mut c2 = fe("connector-server-2");
    c2["restart"] = json!(restart_connector_2);
    let servers = json!({"development": {
        "gate": [fe("gate-server-1")],
        "connector": [fe("connector-server-1"), c2],
        "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "hostId": "a", "port": 0,
                  "metricsPort": 0}],
    }});
    let master = json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0,
        "cluster": {"nats": nats.urls(), "app": app}}});
    std::fs::write(dir.join("servers.json"), servers.to_string()).unwrap();
    std::fs::write(dir.join("master.json"), master.to_string()).unwrap();
    dir
}

/// The launcher (`start --host-id a`), killed with every server it listed on drop.
struct Launcher {
    child: Child,
    dir: PathBuf,
    secret: String,
    pids: Vec<u32>,
}

impl Launcher {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let secret = shaddock_rpc::ClusterSecret::generate()
            .expect("secret")
            .to_hex();
        let log = std::fs::File::create(dir.join("launcher.log")).unwrap();
        let mut child = Command::new(EXE)
            .args(["start", "--host-id", "a", "--config"])
            .arg(dir)
            .env("RUST_LOG", "info")
            .env("SHADDOCK_RPC_SECRET", &secret)
            .env_remove("SHADDOCK_ENV")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the demo launcher");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line == "SHADDOCK_CLUSTER_READY" {
                    let _ = tx.send(());
                }
            }
        });
        let mut l = Self {
            child,
            dir: dir.to_owned(),
            secret,
            pids: Vec::new(),
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("the launcher is not ready within 60 s; log:\n{}", l.log());
        }
        // Every server in the registry, with its ports.
        let deadline = Instant::now() + STEP;
        loop {
            let v = l.list();
            let n = v["servers"].as_array().map_or(0, Vec::len);
            if n == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "4 servers not listed: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
        l
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("launcher.log")).unwrap_or_default()
    }

    /// `list --json` (from the registry), remembering the pids for the cleanup.
    fn list(&mut self) -> Value {
        let out = Command::new(EXE)
            .args(["list", "--json", "--config"])
            .arg(&self.dir)
            .env("SHADDOCK_RPC_SECRET", &self.secret)
            .env_remove("SHADDOCK_ENV")
            .stdin(Stdio::null())
            .output()
            .expect("run list");
        assert!(out.status.success(), "list --json: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {out:?}"));
        for s in v["servers"].as_array().into_iter().flatten() {
            if let Some(pid) = s["pid"].as_u64().filter(|&p| p != 0)
                && !self.pids.contains(&(pid as u32))
            {
                self.pids.push(pid as u32);
            }
        }
        v
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        shaddock_test_support::process::kill9_all(&self.pids);
        if std::thread::panicking() {
            eprintln!("--- launcher log ---\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn server<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

fn client_addr(list: &Value, id: &str) -> String {
    let s = server(list, id);
    format!("{}:{}", s["host"].as_str().unwrap(), s["clientPort"])
}

fn metrics_url(list: &Value, id: &str) -> String {
    server(list, id)["metricsUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no metricsUrl in list --json: {list}"))
        .to_owned()
}

/// One `GET` over HTTP/1.1 on `url`; the body of a 200.
async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (hostport, path) = rest.split_once('/').unwrap();
    let mut s = timeout(STEP, tokio::net::TcpStream::connect(hostport))
        .await
        .expect("metrics connect in time")
        .expect("metrics connect");
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(STEP, s.read_to_end(&mut raw))
        .await
        .expect("metrics read in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{url}: {head}");
    body.to_owned()
}

/// Whether `url` serves a sample of `name`.
async fn has_metric(url: &str, name: &str) -> bool {
    let body = http_get(url).await;
    let s = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    s.samples.iter().any(|x| x.metric == name)
}

/// The sum of the samples of `metric` on `url` whose labels include `labels` (0: none).
async fn metric(url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = http_get(url).await;
    let s = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

struct User {
    client: Client,
    events: Events,
}

async fn connect(addr: &str) -> User {
    let cfg = ClientConfig::default().with_request_timeout(STEP);
    let (client, events) = timeout(STEP, Client::connect(addr, Transport::Tcp, cfg))
        .await
        .expect("connect in time")
        .expect("connect");
    User { client, events }
}

async fn request(u: &User, route: &str, body: Value) -> Value {
    timeout(STEP, u.client.request(route, &body))
        .await
        .unwrap_or_else(|_| panic!("{route} answered in time"))
        .unwrap_or_else(|e| panic!("{route}: {e}"))
}

/// Connects to `addr` and enters as `uid`; the answer of the enter.
async fn enter(addr: &str, uid: &str) -> (User, Value) {
    let u = connect(addr).await;
    let r = request(&u, ENTER, json!({"uid": uid, "rid": "r1"})).await;
    (u, r)
}

/// Enters `uid` (room r1) as `u` again every `pause` until it is let in; panics saying
/// "`uid` not free `what`" after `within`. How many enters were refused before.
async fn enter_when_free(
    u: &User,
    uid: &str,
    within: Duration,
    pause: Duration,
    what: &str,
) -> usize {
    let deadline = Instant::now() + within;
    let mut refusals = 0;
    loop {
        let r = request(u, ENTER, json!({"uid": uid, "rid": "r1"})).await;
        if r["code"] == 200 {
            return refusals;
        }
        refusals += 1;
        assert!(Instant::now() < deadline, "{uid} not free {what}: {r}");
        tokio::time::sleep(pause).await;
    }
}

/// Waits (bounded) for the KICK of `u`; its reason.
async fn kicked(u: &mut User) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, u.events.recv()).await {
            Ok(Some(Event::Kicked { reason })) => return reason,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the connection ended without a KICK"),
            Err(_) => panic!("no KICK within {STEP:?}"),
        }
    }
}

async fn next_push(s: &mut PushStream, within: Duration) -> Option<Value> {
    timeout(within, s.recv())
        .await
        .ok()
        .flatten()
        .map(|p| p.value().expect("a JSON push body"))
}

fn nats() -> (Hosts, NatsCluster) {
    let hosts = Hosts::create(3).expect("3 hosts for the NATS nodes (needs root and iproute2)");
    let nats = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    (hosts, nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_is_one_nats_publish_and_uid_control_works_across_connectors() {
    let _one = SERIAL.lock().await;
    let (hosts, nats) = nats();
    let app = format!("pushtest{}", std::process::id());
    let dir = config(&nats, &app, true);
    let mut l = Launcher::start(&dir, &[]);
    let list = l.list();
    let (c1, c2) = (
        client_addr(&list, "connector-server-1"),
        client_addr(&list, "connector-server-2"),
    );
    let m_chat = metrics_url(&list, "chat-server-1");
    let m_c1 = metrics_url(&list, "connector-server-1");
    let m_c2 = metrics_url(&list, "connector-server-2");
    let m_gate = metrics_url(&list, "gate-server-1");

    // --- A broadcast: users on both connectors, a session at the gate.
    let (u1, r) = enter(&c1, "u1").await;
    assert_eq!(r["server"], "connector-server-1", "{r}");
    let (u2, r) = enter(&c2, "u2").await;
    assert_eq!(r["server"], "connector-server-2", "{r}");
    let gate = connect(&client_addr(&list, "gate-server-1")).await;
    let mut gate_hears = gate.client.on("onBroadcast");
    let mut hear1 = u1.client.on("onBroadcast");
    let mut hear2 = u2.client.on("onBroadcast");
    // Subscriptions reach the other NATS nodes asynchronously: broadcast (bounded) until both
    // connectors' users hear one; then count from there.
    let deadline = Instant::now() + STEP;
    let mut heard = (false, false);
    let mut probes = 0;
    while !(heard.0 && heard.1) {
        assert!(
            Instant::now() < deadline,
            "probe broadcasts not heard within {STEP:?}: {heard:?}"
        );
        probes += 1;
        let r = request(&u1, "chat.chatHandler.broadcast", json!({"probe": probes})).await;
        assert_eq!(r["code"], 200, "{r}");
        let wait = Duration::from_millis(300);
        heard.0 |= next_push(&mut hear1, wait).await.is_some();
        heard.1 |= next_push(&mut hear2, wait).await.is_some();
    }
    // Drain the probes still on the way (each user hears each probe at most once).
    while next_push(&mut hear1, Duration::from_millis(300))
        .await
        .is_some()
    {}
    while next_push(&mut hear2, Duration::from_millis(300))
        .await
        .is_some()
    {}
    let published = "shaddock_cluster_broadcasts_published_total";
    let received = "shaddock_cluster_broadcasts_received_total";
    let before = (
        metric(&m_chat, published, &[]).await,
        metric(&m_c1, received, &[]).await,
        metric(&m_c2, received, &[]).await,
    );
    assert!(before.0 >= f64::from(probes), "{before:?} after {probes}");

    let r = request(&u1, "chat.chatHandler.broadcast", json!({"news": "one"})).await;
    assert_eq!(
        (&r["code"], &r["published"], &r["rpcs"]),
        (&json!(200), &json!(1), &json!(0)),
        "one publish, no RPC: {r}"
    );
    for (who, s) in [("u1", &mut hear1), ("u2", &mut hear2)] {
        let p = next_push(s, STEP)
            .await
            .unwrap_or_else(|| panic!("{who} got no broadcast"));
        assert_eq!(p["news"], "one", "{who}: {p}");
    }
    let after = (
        metric(&m_chat, published, &[]).await,
        metric(&m_c1, received, &[]).await,
        metric(&m_c2, received, &[]).await,
    );
    assert_eq!(
        after,
        (before.0 + 1.0, before.1 + 1.0, before.2 + 1.0),
        "1 publish, received once by each of the 2 connectors"
    );
    // The backend's own counters are exported too (issue 15: slow-consumer drops counted,
    // logged and exported); none dropped in this quiet run.
    for url in [&m_chat, &m_c1, &m_c2] {
        for name in [
            "shaddock_cluster_slow_consumers_total",
            "shaddock_cluster_reconnects_total",
            "shaddock_cluster_bad_pushes_total",
        ] {
            assert!(has_metric(url, name).await, "{url}: no {name}");
        }
        assert_eq!(
            metric(url, "shaddock_cluster_slow_consumers_total", &[]).await,
            0.0,
            "{url}"
        );
    }
    let rpc_broadcasts = [("service", "sessionRemote"), ("method", "broadcast")];
    for url in [&m_c1, &m_c2] {
        assert_eq!(
            metric(url, "shaddock_rpc_server_calls_total", &rpc_broadcasts).await,
            0.0,
            "no sessionRemote.broadcast RPC served at {url}"
        );
    }
    assert_eq!(
        metric(&m_gate, received, &[]).await,
        0.0,
        "the gate (another frontend type) received none"
    );
    assert!(
        next_push(&mut gate_hears, Duration::from_millis(200))
            .await
            .is_none(),
        "no broadcast to connectors at a gate session"
    );

    // Over the NATS max payload (1 MiB by default): a clean error naming the limit, counted;
    // the server goes on.
    let r = request(
        &u1,
        "chat.chatHandler.broadcast",
        json!({"pad": 2 * 1024 * 1024}),
    )
    .await;
    assert_eq!(r["code"], 500, "{r}");
    let msg = r["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("max payload"), "{r}");
    assert_eq!(
        metric(&m_chat, "shaddock_cluster_broadcast_errors_total", &[]).await,
        1.0
    );
    let r = request(&u2, "chat.chatHandler.broadcast", json!({"news": "two"})).await;
    assert_eq!(r["published"], 1, "{r}");
    assert_eq!(next_push(&mut hear1, STEP).await.unwrap()["news"], "two");
    assert!(
        l.log().contains("broadcast not published on NATS"),
        "the refused broadcast is logged"
    );

    // --- Duplicate login, KickOld: alice on connector 1, then on connector 2.
    let (mut old, r) = enter(&c1, "alice").await;
    assert_eq!(r["code"], 200, "{r}");
    let (new, r) = enter(&c2, "alice").await;
    assert_eq!(r["code"], 200, "the new login works: {r}");
    let reason = kicked(&mut old).await;
    assert!(reason.contains("logged in elsewhere"), "{reason}");
    let who = request(&new, "chat.chatHandler.whoami", json!({})).await;
    assert_eq!(
        (&who["uid"], &who["frontend"]),
        (&json!("alice"), &json!("connector-server-2")),
        "{who}"
    );

    // --- kick_uid from the chat server, asked through connector 1, reaches connector 2.
    let (mut bob, _) = enter(&c2, "bob").await;
    let r = request(&u1, "chat.chatHandler.kickUser", json!({"uid": "bob"})).await;
    assert_eq!((&r["code"], &r["kicked"]), (&json!(200), &json!(1)), "{r}");
    assert_eq!(kicked(&mut bob).await, "kicked by admin");

    drop((u1, u2, gate, old, new, bob));
    drop(l);
    drop(nats);
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_claims_are_released_on_close_and_unbind_and_freed_with_a_killed_frontend() {
    let _one = SERIAL.lock().await;
    let (hosts, nats) = nats();
    let app = format!("refusetest{}", std::process::id());
    // connector-server-2 is not restarted: its record must expire.
    let dir = config(&nats, &app, false);
    let mut l = Launcher::start(&dir, &[("SHADDOCK_DEMO_DUPLICATE", "refuse")]);
    let list = l.list();
    let (c1, c2) = (
        client_addr(&list, "connector-server-1"),
        client_addr(&list, "connector-server-2"),
    );

    // RefuseNew: the second login is refused with an error naming where the uid is; the
    // first stays.
    let (first, r) = enter(&c1, "carol").await;
    assert_eq!(r["code"], 200, "{r}");
    let (second, r) = enter(&c2, "carol").await;
    assert_eq!(r["code"], 500, "{r}");
    let msg = r["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("refused") && msg.contains("connector-server-1"),
        "the refusal says where carol is: {r}"
    );
    let who = request(&first, "chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["uid"], "carol", "the first session stays: {who}");

    // Close releases: carol on connector 2 succeeds without waiting for any TTL (connector 1
    // is alive: nothing but the release can free the claim).
    drop(first);
    let took = Instant::now();
    let pause = Duration::from_millis(50);
    enter_when_free(&second, "carol", STEP, pause, "after her session closed").await;
    eprintln!(
        "claim released on close: carol back in after {:?}",
        took.elapsed()
    );

    // Unbind releases: carol leaves (unbind) on connector 2 and logs in on connector 1.
    let r = request(
        &second,
        "connector.entryHandler.leave",
        json!({"uid": "carol"}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let third = connect(&c1).await;
    enter_when_free(&third, "carol", STEP, pause, "after the unbind").await;

    // A frontend killed with SIGKILL (not restarted): its uid is refused while its record
    // lives, and free once it expired (TTL 3 s + 2 s bound), with no clean-up by anyone.
    let (_dora, r) = enter(&c2, "dora").await;
    assert_eq!(r["code"], 200, "{r}");
    let victim = server(&list, "connector-server-2")["pid"].as_u64().unwrap() as u32;
    let killed = Instant::now();
    assert!(shaddock_test_support::process::kill9(victim));
    let again = connect(&c1).await;
    let refusals = enter_when_free(
        &again,
        "dora",
        Duration::from_secs(30),
        Duration::from_millis(100),
        "30 s after her connector was killed",
    )
    .await;
    eprintln!(
        "claim of a SIGKILLed frontend freed after {:?} ({refusals} refused logins before)",
        killed.elapsed()
    );
    let who = request(&again, "chat.chatHandler.whoami", json!({})).await;
    assert_eq!(who["uid"], "dora", "{who}");
    // `list` from a fresh handle: the killed connector is gone or shown as lost (a record not
    // refreshed within the TTL), never as running.
    let list = l.list();
    let gone = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "connector-server-2");
    assert!(
        gone.is_none_or(|s| s["state"] == "lost"),
        "the killed connector is not listed as running: {list}"
    );
    let alive = server(&list, "connector-server-1");
    assert_eq!(alive["state"], "running", "{list}");

    drop((second, third, again));
    drop(l);
    drop(nats);
    drop(hosts);
}
