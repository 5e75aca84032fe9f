//! What `shaddock-chat` with no subcommand runs (and so `cargo run --release -p shaddock-chat`):
//! the cluster's master as a child process (`shaddock-chat start`, which starts every server of
//! `servers.json`), the web page, and a clean stop on Ctrl-C / SIGTERM.
//!
//! 1. Loads `servers.json`/`master.json` (and the optional `page.json`) from `--config`
//!    (default: the crate's `config/`), environment `-e` / `$SHADDOCK_ENV` / `development`.
//! 2. Binds the page port (`--page-port`, else `page.json`, else 3001), then starts the master
//!    and relays its standard output.
//! 3. When the master says every server is up, asks it for the live ports, serves the page
//!    with the gate's real port, prints the URL and one machine-readable line:
//!    `SHADDOCK_CHAT_READY {"page": ..., "gate": ..., "master": ..., "master_pid": ...,
//!    "pids": [...], "connectors": [...]}`.
//!    If a server cannot start, the master says why, stops what it started and exits; the
//!    launcher then exits 1 with that cause as its last line (`shaddock-chat: gate-server-1
//!    could not start: cannot bind client port 127.0.0.1:3014: Address already in use`).
//!    The master runs with `--exit-with-parent` on a pipe from the launcher: if the launcher
//!    dies (even by SIGKILL), the master stops the cluster and exits, leaving no process.
//! 4. On SIGINT or SIGTERM asks the master to stop the cluster (frontends first, then the
//!    chat servers), waits for it, and exits 0. If the master ends on its own (`shaddock-chat
//!    stop`), so does the launcher.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use shaddock_rpc::Target;
use shaddock_server::config::{ClusterConfig, choose_env};
use shaddock_server::master::{LISTENING_LINE, READY_LINE, START_FAILED_LINE};
use shaddock_server::process::master_client;
use shaddock_server::proto::{ListReply, master_remote};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::page::{self, Page};

/// The line printed once the cluster and the page are up, followed by a JSON object.
pub const CHAT_READY_LINE: &str = "SHADDOCK_CHAT_READY";
/// The page port when neither `--page-port` nor `page.json` names one.
pub const DEFAULT_PAGE_PORT: u16 = 3001;
/// How long the master gets to stop the cluster before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The config directory used when `--config` is not given: the crate's `config/`.
pub fn default_config_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
}

/// Command line of the launcher.
#[derive(Debug, Parser)]
#[command(
    name = "shaddock-chat",
    version,
    about = "Pomelo's distributed chat on Shaddock: starts the cluster (master, gate, connectors, \
             chat servers) and the web page; Ctrl-C stops everything.",
    after_help = "The server commands work on the same binary: `shaddock-chat start [-D]` (the \
                  cluster without the page), `list`, `stop`, `kill`, `add id=.. serverType=..`, \
                  `init NAME`; see `shaddock-chat start --help`."
)]
pub struct LaunchArgs {
    /// Directory with servers.json, master.json and (optional) page.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Environment (section of the config files); else $SHADDOCK_ENV, else development.
    #[arg(short = 'e', long = "env")]
    pub env: Option<String>,
    /// Port of the web page (0: any free port); else page.json, else 3001.
    #[arg(long, env = "SHADDOCK_CHAT_PAGE_PORT")]
    pub page_port: Option<u16>,
    /// Address the web page listens on; else page.json, else 127.0.0.1.
    #[arg(long)]
    pub page_host: Option<String>,
    /// Port of the admin page (0: any free port); else the page port + 1 (any free port when
    /// the page's is 0). The address and the token are printed at start.
    #[arg(long, env = "SHADDOCK_CHAT_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// In a cluster on NATS (master.json's `cluster`): the host whose servers this launcher
    /// runs (their servers.json `hostId`, else `host`); one launcher per host.
    #[arg(long)]
    pub host_id: Option<String>,
    /// Where this launcher's master listens (`host:port`), instead of master.json's address:
    /// for several launchers of a cluster on NATS on one machine.
    #[arg(long)]
    pub master: Option<String>,
    /// Seconds to wait for every server to come up.
    #[arg(long, default_value_t = 120)]
    pub start_timeout: u64,
}

/// Where the page listens, from `page.json` (`{"<env>": {"host", "port"}}`, optional).
fn page_config(dir: &Path, env: &str) -> Result<(String, u16), String> {
    let file = dir.join("page.json");
    let mut host = "127.0.0.1".to_owned();
    let mut port = DEFAULT_PAGE_PORT;
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((host, port)),
        Err(e) => return Err(format!("{}: cannot read: {e}", file.display())),
    };
    let root: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let Some(section) = root.get(env) else {
        return Ok((host, port));
    };
    if let Some(h) = section.get("host") {
        host = h
            .as_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                format!(
                    "{}: environment `{env}`, field `host`: must be a non-empty string",
                    file.display()
                )
            })?
            .to_owned();
    }
    if let Some(p) = section.get("port") {
        port = p
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                format!(
                    "{}: environment `{env}`, field `port`: must be a port number from 0 to 65535",
                    file.display()
                )
            })?;
    }
    Ok((host, port))
}

/// Parses the launcher's arguments (without the program name) and runs it.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = LaunchArgs::parse_from(std::iter::once(OsString::from("shaddock-chat")).chain(args));
    shaddock_server::init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shaddock-chat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shaddock-chat: {e}");
            ExitCode::FAILURE
        }
    }
}

enum MasterEvent {
    Listening(String),
    Ready,
    /// A server could not start: `<id> could not start: <cause>`.
    Failed(String),
}

/// Relays the master's standard output and reports its signal lines.
fn relay(stdout: tokio::process::ChildStdout, tx: mpsc::UnboundedSender<MasterEvent>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
            if let Some(addr) = line.strip_prefix(LISTENING_LINE) {
                let _ = tx.send(MasterEvent::Listening(addr.trim().to_owned()));
            } else if line.trim() == READY_LINE {
                let _ = tx.send(MasterEvent::Ready);
            } else if let Some(why) = line.strip_prefix(START_FAILED_LINE) {
                let _ = tx.send(MasterEvent::Failed(why.trim().to_owned()));
            }
        }
    });
}

/// SIGINT or SIGTERM.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::warn!("cannot watch signals; only Ctrl-C stops the chat");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn master_stub(
    addr: &str,
    master: &shaddock_server::config::MasterConfig,
) -> Result<master_remote::Client, String> {
    let mut cfg = shaddock_server::secret::admin_rpc_config(addr)?;
    cfg.tls = shaddock_server::secret::cluster_tls(master)?;
    cfg.reconnect_max_attempts = 1;
    master_client("master", addr, cfg)
        .ok_or_else(|| format!("the master printed a bad address `{addr}`"))
}

/// Asks the master to stop the cluster and waits for it (killing it after [`STOP_TIMEOUT`]).
async fn stop_cluster(stub: Option<&master_remote::Client>, child: &mut Child) -> ExitStatus {
    if let Some(stub) = stub {
        // The master leaves once the cluster has stopped: not a lost connection.
        stub.rpc().expect_departure("master");
        match tokio::time::timeout(
            Duration::from_secs(5),
            stub.stop(Target::server("master"), ()),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!("cluster stopping"),
            // Ctrl-C in a terminal reaches the master too: it may be stopping or gone already.
            Ok(Err(e)) => tracing::debug!(cause = %e, "stop request not answered"),
            Err(_) => tracing::warn!("the master did not answer the stop request"),
        }
    } else if let Some(pid) = child.id() {
        // Not listening yet: SIGINT makes it stop what it started.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            tracing::warn!(cause = %e, "cannot wait for the master");
            ExitStatus::default()
        }
        Err(_) => {
            tracing::warn!("the master did not stop in time; killing it");
            let _ = child.start_kill();
            child.wait().await.unwrap_or_default()
        }
    }
}

/// The gate's `host:port`, its port, and the JSON facts of the ready line.
fn live_ports(list: &ListReply) -> (Option<String>, Option<u16>, Value) {
    let mut rows: Vec<_> = list.rows.iter().collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let gate = rows
        .iter()
        .find(|r| r.server_type == "gate" && r.client_port != 0);
    let gate_addr = gate.map(|g| format!("{}:{}", g.host, g.client_port));
    let gate_port = gate.and_then(|g| u16::try_from(g.client_port).ok());
    let connectors: Vec<String> = rows
        .iter()
        .filter(|r| r.server_type == "connector" && r.client_port != 0)
        .map(|r| format!("{}:{}", r.host, r.client_port))
        .collect();
    let pids: Vec<u32> = rows.iter().map(|r| r.pid).filter(|&p| p != 0).collect();
    (
        gate_addr,
        gate_port,
        json!({"connectors": connectors, "pids": pids, "master_pid": list.master_pid}),
    )
}

async fn run(cli: LaunchArgs) -> Result<(), String> {
    let config_dir = cli.config.clone().unwrap_or_else(default_config_dir);
    let config_dir = std::path::absolute(&config_dir).unwrap_or(config_dir);
    let env = choose_env(cli.env.as_deref());
    let cluster = ClusterConfig::load(&config_dir, &env).map_err(|e| e.to_string())?;
    let (mut page_host, mut page_port) = page_config(&config_dir, &env)?;
    if let Some(h) = cli.page_host {
        page_host = h;
    }
    if let Some(p) = cli.page_port {
        page_port = p;
    }
    let listener = tokio::net::TcpListener::bind((page_host.as_str(), page_port))
        .await
        .map_err(|e| {
            format!("cannot serve the chat page on {page_host}:{page_port}: {e} (choose another with --page-port)")
        })?;
    let page_bound = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_port = cli.admin_port.unwrap_or(if page_port == 0 {
        0
    } else {
        page_port.saturating_add(1)
    });
    let admin_listener = tokio::net::TcpListener::bind((page_host.as_str(), admin_port))
        .await
        .map_err(|e| {
            format!("cannot serve the admin page on {page_host}:{admin_port}: {e} (choose another with --admin-port)")
        })?;
    let admin_bound = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut command = Command::new(exe);
    command.arg("--config").arg(&config_dir).arg("-e").arg(&env);
    if let Some(h) = &cli.host_id {
        command.arg("--host-id").arg(h);
    }
    if let Some(m) = &cli.master {
        command.arg("--master").arg(m);
    }
    let mut child = command
        .arg("start")
        // The master stops the cluster when this pipe closes: when we exit, however we die
        // (SIGKILL included), it and its servers go too.
        .arg("--exit-with-parent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its own process group: a Ctrl-C in the terminal (or a signal to our group) reaches
        // only this launcher, which stops the cluster through the master, frontends first.
        // (The master itself stops gracefully only on SIGINT.)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the master: {e}"))?;
    // Held (never written) until we return: its end of file is the master's signal to stop.
    let _parent_pipe = child.stdin.take();
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        relay(out, tx);
    }
    tracing::info!(config = %config_dir.display(), %env, servers = cluster.servers.len(), "starting the chat cluster");

    // Wait until every server is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.start_timeout);
    let signal = stop_signal();
    tokio::pin!(signal);
    let mut stub = None;
    let mut master_addr = String::new();
    let mut ready = false;
    // Why the cluster could not start, once the master said so (it then stops what it
    // started and exits: we wait for that, then repeat the cause as our last line).
    let mut failure: Option<String> = None;
    let not_up = |failure: Option<String>, status: ExitStatus| {
        failure.unwrap_or_else(|| format!("the master exited before the cluster was up ({status})"))
    };
    while !ready {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(MasterEvent::Listening(addr)) => {
                    stub = Some(master_stub(&addr, &cluster.master)?);
                    master_addr = addr;
                }
                Some(MasterEvent::Ready) => ready = true,
                Some(MasterEvent::Failed(why)) => {
                    tracing::error!(cause = %why, "the cluster could not start; the master stops it");
                    failure.get_or_insert(why);
                }
                None => {
                    let status = child.wait().await.map_err(|e| e.to_string())?;
                    return Err(not_up(failure, status));
                }
            },
            status = child.wait() => {
                let status = status.map_err(|e| e.to_string())?;
                // Its last lines may still be in the pipe: read them (bounded).
                let drain = async {
                    while let Some(ev) = rx.recv().await {
                        if let MasterEvent::Failed(why) = ev {
                            failure.get_or_insert(why);
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                return Err(not_up(failure, status));
            }
            () = tokio::time::sleep_until(deadline) => {
                stop_cluster(stub.as_ref(), &mut child).await;
                return Err(failure.unwrap_or_else(|| format!("the cluster was not up after {} s", cli.start_timeout)));
            }
            name = &mut signal => {
                tracing::info!(signal = name, "stopping before the cluster was up");
                stop_cluster(stub.as_ref(), &mut child).await;
                return Ok(());
            }
        }
    }
    let Some(master) = stub else {
        stop_cluster(None, &mut child).await;
        return Err("the master said it was ready but never where it listens".into());
    };
    let list = match tokio::time::timeout(
        Duration::from_secs(10),
        master.list(Target::server("master"), ()),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            stop_cluster(Some(&master), &mut child).await;
            return Err(format!("cannot list the servers: {e}"));
        }
        Err(_) => {
            stop_cluster(Some(&master), &mut child).await;
            return Err("the master did not answer `list`".into());
        }
    };
    // From here the launcher watches the master process itself: when the master ends (a
    // `stop` from elsewhere), its connection closing is not news to log or reconnect after.
    master.rpc().expect_departure("master");
    let (gate, gate_port, mut info) = live_ports(&list);

    let page_stop = CancellationToken::new();
    let page_task = tokio::spawn(page::serve(
        listener,
        Page::new(gate_port),
        page_stop.clone(),
    ));
    let url_host = match page_bound.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{url_host}:{}/", page_bound.port());
    let admin_url = format!("http://{url_host}:{}/admin", admin_bound.port());
    let token = crate::admin::Token::from_env_or_random(admin_bound.port())?;
    let admin_rpc = {
        let mut cfg = shaddock_server::secret::admin_rpc_config(&master_addr)?;
        cfg.tls = shaddock_server::secret::cluster_tls(&cluster.master)?;
        cfg
    };
    let token_note = match &token.file {
        Some(f) => format!("token {} (also in {})", token.reveal(), f.display()),
        None => format!("token from ${}", crate::admin::TOKEN_ENV),
    };
    let token_file = token.file.clone();
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        std::sync::Arc::new(crate::admin::Admin::new(master.clone(), admin_rpc, token)),
        page_stop.clone(),
    ));
    if let Value::Object(m) = &mut info {
        m.insert("page".into(), url.clone().into());
        m.insert("gate".into(), gate.clone().into());
        m.insert("master".into(), master_addr.clone().into());
        m.insert("admin".into(), admin_url.clone().into());
        m.insert(
            "admin_token_file".into(),
            token_file.map(|f| f.display().to_string()).into(),
        );
    }
    // The machine-readable marker first; the human line is the last one a person sees.
    println!("{CHAT_READY_LINE} {info}");
    println!("shaddock-chat: admin page {admin_url} ({token_note})");
    println!(
        "shaddock-chat: the chat is up: open {url} (gate {}; {} servers). Ctrl-C stops it.",
        gate.as_deref().unwrap_or("none"),
        list.rows.len()
    );

    let status = tokio::select! {
        name = &mut signal => {
            tracing::info!(signal = name, "stopping the chat");
            stop_cluster(Some(&master), &mut child).await
        }
        status = child.wait() => status.unwrap_or_default(),
    };
    page_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), page_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    if status.success() {
        println!("shaddock-chat: stopped");
        Ok(())
    } else {
        Err(format!("the master ended with {status}"))
    }
}
