//! TLS on a frontend's client port in a real cluster (the demo app's master and its server
//! processes): the gate's servers.json entry has `ssl` with paths relative to the config
//! directory; the Rust client does a request over TLS; after the certificate files are
//! rewritten and the gate process gets a real SIGHUP, the open TLS connection still works and
//! new handshakes get the new certificate (certificates of two CAs made at test time).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use shaddock_client::{Client, ClientConfig, ClientTls, Error, Transport};

const EXE: &str = env!("CARGO_BIN_EXE_shaddock-demo");
const T: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

use shaddock_test_support::tls::TestCa as Ca;

/// Client settings that trust `ca`.
fn config(ca: &Ca) -> ClientConfig {
    ClientConfig::default()
        .with_request_timeout(Duration::from_secs(5))
        .with_tls(ClientTls::from_ca_pem(ca.pem.as_bytes()).unwrap())
}

/// The master (our child) and the server pids `list` showed; all killed on drop.
struct Cluster {
    master: Child,
    addr: String,
    dir: PathBuf,
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

impl Cluster {
    fn start(dir: PathBuf) -> Self {
        let mut master = Command::new(EXE)
            .args(["start", "--config"])
            .arg(&dir)
            .env("RUST_LOG", "info,shaddock_rpc=warn")
            .env("SHADDOCK_DEMO_LIFECYCLE_DIR", dir.join("life"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("master.log")).unwrap(),
            ))
            .spawn()
            .expect("start master");
        let stdout = master.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
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
            addr: String::new(),
            dir,
            pids: Vec::new(),
        };
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!("no ready line from the master ({e}); log:\n{}", c.log())
            });
            if let Some(rest) = line.strip_prefix("SHADDOCK_MASTER_LISTENING") {
                c.addr = rest.split_whitespace().next().unwrap().to_owned();
            }
            if line.starts_with("SHADDOCK_CLUSTER_READY") {
                break;
            }
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }

    /// `list`: (pid, client port) of `id`; remembers every pid for the cleanup.
    fn server(&mut self, id: &str) -> (u32, u16) {
        let out = Command::new(EXE)
            .args(["list", "--master", &self.addr])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .expect("run list");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "list failed: {text}");
        let mut found = None;
        // ID TYPE PID UPTIME RSS CONNS RPC CLIENT STATE
        for l in text.lines().skip(1) {
            let c: Vec<&str> = l.split_whitespace().collect();
            let pid: u32 = c[2].parse().unwrap();
            if pid != 0 && !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
            if c[0] == id {
                found = Some((pid, c[7].parse().unwrap()));
            }
        }
        found.unwrap_or_else(|| panic!("{id} not in `list`: {text}"))
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_stay() {
    let dir = std::env::temp_dir().join(format!("shaddock-tls-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::create_dir_all(dir.join("life")).unwrap();
    let old = Ca::new("old");
    let new = Ca::new("new");
    old.write_leaf(&tls_dir);
    std::fs::write(
        dir.join("servers.json"),
        r#"{"development":{
            "gate":[{"id":"gate-server-1","host":"127.0.0.1","clientPort":0,"frontend":true,
                     "ssl":{"cert":"tls/server.crt","key":"tls/server.key","mode":"required"}}],
            "connector":[{"id":"connector-server-1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true}],
            "chat":[{"id":"chat-server-1","host":"127.0.0.1","port":0}]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("master.json"),
        r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":0}}"#,
    )
    .unwrap();
    let mut cl = Cluster::start(dir);
    let (gate_pid, gate_port) = cl.server("gate-server-1");
    let gate = format!("127.0.0.1:{gate_port}");
    let query = json!({"uid": "alice"});

    let (open, _events) = within(
        "TLS connect",
        Client::connect(&gate, Transport::Tcp, config(&old)),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS connect to the gate: {e}\n{}", cl.log()));
    let r = within("query", open.request("gate.gateHandler.queryEntry", &query))
        .await
        .unwrap();
    assert_eq!(r["code"], 200, "{r}");
    // "required": a plain client is refused.
    let plain = within(
        "plain",
        Client::connect(&gate, Transport::Tcp, ClientConfig::default()),
    )
    .await;
    assert!(plain.is_err(), "a plain client on a TLS-required port");

    new.write_leaf(&cl.dir.join("tls"));
    let status = Command::new("kill")
        .args(["-HUP", &gate_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // New handshakes get the new certificate once the gate has handled the signal.
    let deadline = Instant::now() + T;
    let (fresh, _e) = loop {
        match within(
            "TLS connect",
            Client::connect(&gate, Transport::WebSocket, config(&new)),
        )
        .await
        {
            Ok(c) => break c,
            Err(Error::Tls { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no connection with the new certificate: {e}\n{}", cl.log()),
        }
    };
    let r = within(
        "query",
        fresh.request("gate.gateHandler.queryEntry", &query),
    )
    .await
    .unwrap();
    assert_eq!(r["code"], 200, "{r}");
    // The connection opened before the reload still works: the process did not die of SIGHUP.
    let r = within("query", open.request("gate.gateHandler.queryEntry", &query))
        .await
        .unwrap_or_else(|e| panic!("the open connection after SIGHUP: {e}\n{}", cl.log()));
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(
        cl.server("gate-server-1").0,
        gate_pid,
        "the gate was not restarted"
    );
    let refused = within(
        "old CA",
        Client::connect(&gate, Transport::Tcp, config(&old)),
    )
    .await;
    assert!(
        matches!(refused, Err(Error::Tls { .. })),
        "the old certificate after SIGHUP"
    );
    assert!(
        cl.log().contains("TLS certificate reloaded"),
        "{}",
        cl.log()
    );
    fresh.close().await;
    open.close().await;
}
