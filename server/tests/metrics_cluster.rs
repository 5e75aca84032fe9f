//! A running cluster of the demo app (separate processes, real sockets) with RPC TLS
//! (`rpcTls`, certificates of a test CA) and a metrics port on every server and the master:
//! `list --json` names every endpoint; each one is scraped over HTTP and parsed with
//! prometheus-parse after real client requests. A server started without the cluster's CA
//! cannot join it.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value as PValue};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Transport};
use shaddock_test_support::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXE: &str = env!("CARGO_BIN_EXE_shaddock-demo");
const T: Duration = Duration::from_secs(30);
/// A fixed cluster secret (hex, 16 bytes): the hand-started server below gets it too, so
/// only TLS can keep it out.
const SECRET: &str = "00112233445566778899aabbccddeeff";

const SERVERS: &str = r#"{"development":{
  "gate":[{"id":"gate-server-1","host":"127.0.0.1","clientPort":0,"frontend":true,"metricsPort":0}],
  "connector":[
    {"id":"connector-server-1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true,"metricsPort":0},
    {"id":"connector-server-2","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true,"metricsPort":0}],
  "chat":[{"id":"chat-server-1","host":"127.0.0.1","port":0,"metricsPort":0}]}}"#;
const MASTER: &str = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0,
  "metricsPort":0,"rpcTls":{"ca":"tls/ca.crt","cert":"tls/server.crt","key":"tls/server.key"}}}"#;

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The master (our child) and the servers it listed; all killed on drop.
struct Cluster {
    master: Child,
    dir: PathBuf,
    addr: String,
    pids: Vec<u32>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
        shaddock_test_support::process::kill9_all(&self.pids);
        if std::thread::panicking() {
            eprintln!("cluster files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config_dir(name: &str, master: &str, ca: Option<&TestCa>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shaddock-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("servers.json"), SERVERS).unwrap();
    std::fs::write(dir.join("master.json"), master).unwrap();
    if let Some(ca) = ca {
        ca.write_ca(&dir.join("tls"));
        ca.write_leaf(&dir.join("tls"));
    }
    dir
}

impl Cluster {
    fn start(dir: PathBuf) -> Self {
        let log = std::fs::File::create(dir.join("master.log")).unwrap();
        let mut master = Command::new(EXE)
            .args(["start", "--config"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .env("SHADDOCK_RPC_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
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
            master,
            dir,
            addr: String::new(),
            pids: Vec::new(),
        };
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "cluster not ready ({e}); master log:\n{}",
                    std::fs::read_to_string(c.dir.join("master.log")).unwrap_or_default()
                )
            });
            if let Some(a) = line.strip_prefix("SHADDOCK_MASTER_LISTENING ") {
                c.addr = a.trim().to_owned();
            }
            if line == "SHADDOCK_CLUSTER_READY" {
                break;
            }
        }
        // Keep draining its output so the master never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        c
    }

    /// `list --json` through the CLI (which reads `rpcTls` from the config directory).
    fn list_json(&mut self) -> Value {
        let out = Command::new(EXE)
            .args(["list", "--json", "--master", &self.addr, "--config"])
            .arg(&self.dir)
            .env("RUST_LOG", "error")
            .env("SHADDOCK_RPC_SECRET", SECRET)
            .stdin(Stdio::null())
            .output()
            .expect("run list");
        assert!(out.status.success(), "list --json failed: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {out:?}"));
        for s in v["servers"].as_array().unwrap() {
            if let Some(pid) = s["pid"].as_u64().filter(|&p| p != 0) {
                let pid = pid as u32;
                if !self.pids.contains(&pid) {
                    self.pids.push(pid);
                }
            }
        }
        v
    }
}

/// One `GET` over HTTP/1.1 on `url` (`http://host:port/path`); the body of a 200.
async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (hostport, path) = rest.split_once('/').unwrap();
    let mut s = within("metrics connect", tokio::net::TcpStream::connect(hostport))
        .await
        .unwrap();
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    within("metrics write", s.write_all(req.as_bytes()))
        .await
        .unwrap();
    let mut raw = Vec::new();
    within("metrics read", s.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{url}: {head}");
    body.to_owned()
}

async fn scrape(url: &str) -> Scrape {
    let body = http_get(url).await;
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The sum of the samples of `metric` whose labels include `labels`.
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
            PValue::Histogram(b) => b
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

fn server<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {list}"))
}

async fn connect(port: u64) -> Client {
    let (c, _events) = within(
        "client connect",
        Client::connect(
            &format!("127.0.0.1:{port}"),
            Transport::Tcp,
            ClientConfig::default(),
        ),
    )
    .await
    .unwrap();
    c
}

#[tokio::test]
async fn a_tls_cluster_serves_metrics_on_every_server_and_lists_their_urls() {
    let ca = TestCa::new("metrics-cluster");
    let mut cl = Cluster::start(config_dir("tls", MASTER, Some(&ca)));

    // `list` over TLS (the CLI reads rpcTls) names every endpoint, the master's too.
    let list = cl.list_json();
    let servers = list["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 4, "{list}");
    for s in servers {
        assert_eq!(s["state"], "running", "{list}");
        let url = s["metricsUrl"].as_str().unwrap_or_else(|| panic!("{s}"));
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
            "{url}"
        );
    }
    let master_url = list["master"]["metricsUrl"].as_str().unwrap().to_owned();

    // Real client requests: the gate, two connectors, a room on the chat server, a push.
    let gate = connect(
        server(&list, "gate-server-1")["clientPort"]
            .as_u64()
            .unwrap(),
    )
    .await;
    let entry = within(
        "queryEntry",
        gate.request("gate.gateHandler.queryEntry", &json!({"uid": "alice"})),
    )
    .await
    .unwrap();
    assert_eq!(entry["code"], 200, "{entry}");
    let c1 = server(&list, "connector-server-1")["clientPort"]
        .as_u64()
        .unwrap();
    let alice = connect(c1).await;
    let mut pushes = alice.on("onChat");
    for (route, body) in [
        (
            "connector.entryHandler.enter",
            json!({"uid": "alice", "rid": "r1"}),
        ),
        ("chat.chatHandler.join", json!({})),
        ("chat.chatHandler.send", json!({"msg": "hello"})),
    ] {
        let r = within(route, alice.request(route, &body)).await.unwrap();
        assert_eq!(r["code"], 200, "{route}: {r}");
    }
    let push = within("the push", pushes.recv()).await;
    assert!(push.is_some(), "no onChat push");
    // A route no server has: counted, bounded, under "(unknown)".
    let _ = within(
        "a bad route",
        alice.request("connector.nope.nothing", &json!({})),
    )
    .await;

    // Connector 1 counted every route it handled or forwarded, its connection, the push.
    let url = server(&list, "connector-server-1")["metricsUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = scrape(&url).await;
    for route in [
        "connector.entryHandler.enter",
        "chat.chatHandler.join",
        "chat.chatHandler.send",
    ] {
        let labels = [("route", route), ("kind", "request")];
        assert_eq!(
            sum(&s, "shaddock_frontend_messages_total", &labels),
            1.0,
            "{route}"
        );
        assert_eq!(
            sum(&s, "shaddock_frontend_message_latency_seconds", &labels),
            1.0,
            "{route}"
        );
    }
    let unknown = [("route", "(unknown)"), ("kind", "request")];
    assert_eq!(sum(&s, "shaddock_frontend_messages_total", &unknown), 1.0);
    assert_eq!(
        sum(&s, "shaddock_frontend_message_errors_total", &unknown),
        1.0
    );
    assert_eq!(sum(&s, "shaddock_connector_connections_active", &[]), 1.0);
    assert!(sum(&s, "shaddock_connector_connections_accepted_total", &[]) >= 1.0);
    assert_eq!(
        sum(
            &s,
            "shaddock_connector_handshakes_total",
            &[("outcome", "accepted")]
        ),
        1.0
    );
    assert!(sum(&s, "shaddock_connector_pushes_total", &[]) >= 1.0);
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric == "shaddock_connector_queued_messages")
    );
    // alice entered (her session is bound): one user online on connector 1.
    assert_eq!(sum(&s, "shaddock_connector_users_online", &[]), 1.0);
    // Kicks by reason and rate-limited connections are exported even while zero.
    for reason in ["slow_consumer", "rate_limit", "other"] {
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == "shaddock_connector_kicks_total"
                    && x.labels.get("reason") == Some(reason)),
            "no kicks_total{{reason={reason}}}"
        );
    }
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric == "shaddock_connector_rate_limited_total")
    );
    // The forwards went over RPC (TLS) to the chat server: counted per peer.
    assert!(
        sum(
            &s,
            "shaddock_rpc_client_calls_total",
            &[("peer", "chat-server-1")]
        ) >= 2.0
    );
    assert!(
        sum(
            &s,
            "shaddock_rpc_client_latency_seconds",
            &[("peer", "chat-server-1")]
        ) >= 2.0
    );

    // The gate counted its route; every endpoint (the master's too) shows its process.
    let gate_url = server(&list, "gate-server-1")["metricsUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = scrape(&gate_url).await;
    assert_eq!(
        sum(
            &g,
            "shaddock_frontend_messages_total",
            &[("route", "gate.gateHandler.queryEntry")]
        ),
        1.0
    );
    let mut urls: Vec<String> = servers
        .iter()
        .map(|s| s["metricsUrl"].as_str().unwrap().to_owned())
        .collect();
    urls.push(master_url);
    for url in &urls {
        let s = scrape(url).await;
        assert!(
            sum(&s, "process_resident_memory_bytes", &[]) > 0.0,
            "{url}: no RSS"
        );
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == "process_cpu_seconds_total"),
            "{url}: no CPU"
        );
    }
    // The chat server served the forwarded messages (RPC server side).
    let chat_url = server(&list, "chat-server-1")["metricsUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = scrape(&chat_url).await;
    assert!(sum(&c, "shaddock_rpc_server_calls_total", &[]) >= 2.0);

    alice.close().await;
    gate.close().await;
}

/// Runs one server by hand in the hidden server mode against `master` (`host:port`) with
/// the config in `dir`; its output once it exits (bounded by `limit`).
fn run_server_by_hand(dir: &Path, master: &str, limit: Duration) -> (bool, String) {
    let mut child = Command::new(EXE)
        .args([
            "--server-id",
            "chat-server-1",
            "--master",
            master,
            "--config",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env("SHADDOCK_RPC_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a server by hand");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hand-started server neither joined nor failed within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_server_without_the_cluster_ca_cannot_join() {
    let ca = TestCa::new("metrics-join");
    let mut cl = Cluster::start(config_dir("join", MASTER, Some(&ca)));
    let before = cl.list_json();

    // The same servers.json, no rpcTls: plain TCP to a TLS master.
    let plain = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0}}"#;
    let plain_dir = config_dir("join-plain", plain, None);
    // rpcTls with another CA: its certificate is not the cluster's.
    let other = TestCa::new("metrics-other");
    let other_dir = config_dir("join-other", MASTER, Some(&other));
    let addr = cl.addr.clone();
    let (a, b) = (plain_dir.clone(), other_dir.clone());
    let (t1, t2) = (
        std::thread::spawn({
            let addr = addr.clone();
            move || run_server_by_hand(&a, &addr, Duration::from_secs(40))
        }),
        std::thread::spawn(move || run_server_by_hand(&b, &addr, Duration::from_secs(40))),
    );
    for (what, (ok, out)) in [
        ("plain", t1.join().unwrap()),
        ("other CA", t2.join().unwrap()),
    ] {
        assert!(!ok, "{what}: the server joined: {out}");
        assert!(
            out.contains("SHADDOCK_SERVER_FAILED") && out.contains("cannot register with master"),
            "{what}: {out}"
        );
    }
    // The cluster did not change: the same servers, the same pids.
    let after = cl.list_json();
    let pids = |v: &Value| -> HashMap<String, Value> {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_owned(), s["pid"].clone()))
            .collect()
    };
    assert_eq!(pids(&before), pids(&after));
    let _ = std::fs::remove_dir_all(plain_dir);
    let _ = std::fs::remove_dir_all(other_dir);
}
