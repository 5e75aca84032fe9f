//! Starts the real chat (launcher → master → 7 servers + page) as child processes from a
//! temporary config with port 0 everywhere, and stops it (SIGTERM, then SIGKILL) on drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shaddock_rpc::{RpcClient, ServerInfo, Target};
use shaddock_server::proto::{PlaceArgs, master_remote};

/// How long the cluster may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Every await on the network in the tests.
pub const STEP: Duration = Duration::from_secs(15);

/// A running chat cluster.
pub struct Cluster {
    child: Option<Child>,
    pub dir: PathBuf,
    /// The ready line's JSON.
    pub info: Value,
    /// Lines printed after the ready line.
    lines: mpsc::Receiver<String>,
}

/// A fresh temporary directory for one cluster.
pub fn tmp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "shaddock-chat-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Edits the generated `servers.json` and `master.json` (the `development` sections' roots)
/// before the cluster starts.
pub type ConfigEdit<'a> = &'a dyn Fn(&mut Value, &mut Value);

/// Writes the port-0 config (servers.json, master.json, page.json) of the test cluster.
pub fn write_config(dir: &std::path::Path) {
    write_config_with(dir, &|_, _| {});
}

/// [`write_config`], changed by `edit`.
pub fn write_config_with(dir: &std::path::Path, edit: ConfigEdit<'_>) {
    let conns: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("connector-server-{i}"), "host": "127.0.0.1", "port": 0, "clientPort": 0, "frontend": true}))
        .collect();
    let chats: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("chat-server-{i}"), "host": "127.0.0.1", "port": 0}))
        .collect();
    let mut servers = json!({"development": {
        "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 0, "frontend": true}],
        "connector": conns,
        "chat": chats,
    }});
    let mut master =
        json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0}});
    edit(&mut servers["development"], &mut master["development"]);
    let page = json!({"development": {"host": "127.0.0.1", "port": 0}});
    for (name, v) in [
        ("servers.json", servers),
        ("master.json", master),
        ("page.json", page),
    ] {
        std::fs::write(dir.join(name), v.to_string()).expect("write config");
    }
}

/// `kill -SIG pid` (the `kill` command: no unsafe code for signals here).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits for `child` at most `within`, without polling: a thread waits, we wait on it.
fn wait_within(child: Child, within: Duration) -> Result<ExitStatus, Child> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let mut child = child;
    std::thread::spawn(move || {
        let r = child.wait();
        let _ = tx.send((r, child));
    });
    match rx.recv_timeout(within) {
        Ok((Ok(status), _)) => Ok(status),
        Ok((Err(_), child)) => Err(child),
        Err(_) => {
            signal(pid, "KILL");
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((_, child)) => Err(child),
                Err(_) => panic!("process {pid} survived SIGKILL"),
            }
        }
    }
}

impl Cluster {
    /// Starts the chat and waits for its ready line.
    pub fn start() -> Self {
        Self::start_with(&|_, _| {})
    }

    /// Starts the chat on a config changed by `edit` and waits for its ready line.
    pub fn start_with(edit: ConfigEdit<'_>) -> Self {
        let dir = tmp_dir();
        write_config_with(&dir, edit);
        let log = std::fs::File::create(dir.join("cluster.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
            .arg("--config")
            .arg(&dir)
            .env(
                "RUST_LOG",
                std::env::var("CHAT_TEST_RUST_LOG").unwrap_or("warn".into()),
            )
            .env_remove("SHADDOCK_ENV")
            .env_remove("SHADDOCK_CHAT_PAGE_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start shaddock-chat");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Self {
            child: Some(child),
            dir,
            info: Value::Null,
            lines: rx,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cluster.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(json) = line.strip_prefix("SHADDOCK_CHAT_READY ") {
                        cluster.info = serde_json::from_str(json).expect("ready JSON");
                        return cluster;
                    }
                }
                Err(_) => panic!(
                    "the chat did not print its ready line within {START_TIMEOUT:?}; log: {}",
                    cluster.log()
                ),
            }
        }
    }

    /// The cluster's log (stderr of every process).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cluster.log")).unwrap_or_default()
    }

    fn str(&self, key: &str) -> String {
        self.info[key].as_str().expect(key).to_owned()
    }

    /// The gate's `host:port`.
    pub fn gate(&self) -> String {
        self.str("gate")
    }

    /// The page URL.
    pub fn page(&self) -> String {
        self.str("page")
    }

    /// The connectors' `host:port`s.
    pub fn connectors(&self) -> Vec<String> {
        self.info["connectors"]
            .as_array()
            .expect("connectors")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// The master's RPC `host:port`.
    pub fn master_addr(&self) -> String {
        self.str("master")
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Every pid of the cluster but the launcher's: the master and the servers.
    pub fn cluster_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.info["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = self.info["master_pid"].as_u64() {
            v.push(m as u32);
        }
        v
    }

    /// The first stdout line after the ready line that starts with `prefix`, waiting at most
    /// `within` (`None`: not printed in time, or stdout ended).
    pub fn line_starting(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits at most `within` for the launcher to exit on its own (no signal); its status,
    /// or `None` if it was still running (it is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.take()?;
        wait_within(child, within).ok()
    }

    /// SIGTERM to the launcher; its exit status (SIGKILL after `within`: then `None`).
    pub fn stop(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.take()?;
        signal(child.id(), "TERM");
        wait_within(child, within).ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pids = self.cluster_pids();
        if self.child.is_some() && self.stop(Duration::from_secs(30)).is_none() {
            // The launcher had to be killed: its master (own process group) may be left.
            for pid in pids {
                if alive(pid) {
                    signal(pid, "KILL");
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster files kept in {}", self.dir.display());
        }
    }
}

/// A stub for the master at `addr` (`host:port`), as server id `master`.
pub fn master_at(addr: &str) -> master_remote::Client {
    let (host, port) = addr.rsplit_once(':').expect("master host:port");
    let cfg = shaddock_server::secret::admin_rpc_config(addr).expect("cluster secret");
    let rpc = RpcClient::new(cfg);
    rpc.directory().add(ServerInfo::new(
        "master",
        "__master",
        host,
        port.parse::<u16>().expect("port"),
    ));
    master_remote::Client::new(&rpc)
}

/// The chat server that holds `room` now, from the master's placement table.
pub async fn server_of(m: &master_remote::Client, room: &str) -> String {
    let args = PlaceArgs {
        server_type: "chat".into(),
        key: room.as_bytes().to_vec(),
        lookup_only: true,
    };
    tokio::time::timeout(STEP, m.place(Target::server("master"), args))
        .await
        .expect("place in time")
        .unwrap_or_else(|e| panic!("room {room} is not placed: {e}"))
        .server_id
}
