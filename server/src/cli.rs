//! The command line, modelled on pomelo's: `start [-e ENV] [-D]`, `list`, `stop`, `kill`,
//! `add k=v...`, `init NAME`; and the hidden mode the master starts each server in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shaddock_rpc::{RpcError, Target};

use crate::app::App;
use crate::cluster::admin::{AdminReply, AdminRequest, all_subject, host_subject};
use crate::config::{ClusterConfig, choose_env};
use crate::proto::{AddArgs, KeyValue, ListReply, master_remote};

/// Shaddock application command line.
#[derive(Debug, Parser)]
#[command(version, about = "A Shaddock (pomelo-compatible) application")]
struct Cli {
    /// Environment (servers.json/master.json section); else $SHADDOCK_ENV, else development.
    #[arg(short = 'e', long = "env", global = true)]
    env: Option<String>,
    /// The config directory holding servers.json and master.json.
    #[arg(long, global = true, default_value = "config")]
    config: PathBuf,
    /// The master's `host:port` (default: from master.json).
    #[arg(long, global = true)]
    master: Option<String>,
    /// In a cluster on NATS (master.json's `cluster`): the host this launcher runs the
    /// servers of (their servers.json `hostId`, else their `host`).
    #[arg(long, global = true)]
    host_id: Option<String>,
    /// (internal) run as this server, started by the master.
    #[arg(long, hide = true)]
    server_id: Option<String>,
    /// (internal) the master's id.
    #[arg(long, hide = true)]
    master_id: Option<String>,
    /// (internal) the server's definition, for servers added at runtime.
    #[arg(long, hide = true)]
    server_def: Option<String>,
    /// (internal) tokio worker threads of this process, from the server's `worker-threads`
    /// in servers.json. Default 1: a single-threaded runtime, like a pomelo process; a
    /// cluster runs several processes per machine, and one thread per process saves the
    /// cross-thread wake-ups of a multi-threaded runtime (BENCHMARKS.md).
    #[arg(long, hide = true)]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Starts the master, which starts every server.
    Start {
        /// Detach: run in the background, log to a file, write a pid file.
        #[arg(short = 'D', long)]
        daemon: bool,
        /// Log file of a daemon.
        #[arg(long, default_value = "shaddock-master.log")]
        log: PathBuf,
        /// Pid file of a daemon.
        #[arg(long, default_value = "shaddock-master.pid")]
        pid_file: PathBuf,
        /// Stop the cluster and exit when standard input reaches end of file: for a parent
        /// process that holds a pipe to it (the chat's launcher), so the cluster ends with
        /// its parent however the parent dies.
        #[arg(long, conflicts_with = "daemon")]
        exit_with_parent: bool,
    },
    /// Lists the servers: id, type, pid, uptime, RSS, connections.
    List {
        /// One JSON object instead of the table: the master (pid, metrics URL) and every
        /// server (its row and its metrics URL).
        #[arg(long)]
        json: bool,
    },
    /// Stops the cluster gracefully (frontends drain and kick their clients, then backends).
    Stop,
    /// Kills every server at once (SIGKILL), then the master.
    Kill,
    /// Adds a server at runtime: `add id=chat-3 serverType=chat host=127.0.0.1 port=0`.
    Add {
        /// `key=value` pairs (id, serverType, host, port, clientPort, frontend, ...).
        pairs: Vec<String>,
    },
    /// Writes a new app with the conventional layout into directory NAME.
    Init {
        /// The app's name (and directory).
        name: String,
    },
}

/// Parses the command line and runs the command; the app's `main` calls this.
pub fn run(app: App) -> ExitCode {
    let cli = Cli::parse();
    // The admin commands print their output alone: their log shows warnings and errors
    // only, unless RUST_LOG asks for more. Servers and the master log at INFO.
    let admin_command = cli.server_id.is_none()
        && matches!(
            cli.cmd,
            Some(Cmd::List { .. } | Cmd::Stop | Cmd::Kill | Cmd::Add { .. } | Cmd::Init { .. })
        );
    crate::init_logging_with_default(if admin_command { "warn" } else { "info" });
    if let Err(e) = app.validate() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(Cmd::Init { name }) = &cli.cmd {
        return report(crate::init::init(Path::new(name), name));
    }
    if let Some(Cmd::Start {
        daemon: true,
        log,
        pid_file,
        ..
    }) = &cli.cmd
    {
        return report(daemonize(log, pid_file));
    }
    let threads = cli.worker_threads.unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(dispatch(app, cli));
    // Only the blocking stdin reader of a server can be left; do not wait for it long.
    rt.shutdown_timeout(Duration::from_millis(250));
    report(r)
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<ClusterConfig, String> {
    let env = choose_env(cli.env.as_deref());
    ClusterConfig::load(&cli.config, &env).map_err(|e| e.to_string())
}

async fn dispatch(app: App, cli: Cli) -> Result<(), String> {
    if let Some(id) = cli.server_id.clone() {
        let r = run_server_mode(app, &cli, &id).await;
        if let Err(e) = &r {
            // For the master (our stdout is its pipe): why this server ends. Without the
            // `server `id`: ` the errors start with, since the master names the server.
            use std::io::Write;
            let prefix = format!("server `{id}`: ");
            let cause = e.strip_prefix(&prefix).unwrap_or(e);
            let mut out = std::io::stdout().lock();
            let _ =
                writeln!(out, "{} {cause}", crate::process::FAILED_LINE).and_then(|()| out.flush());
        }
        return r;
    }
    match cli.cmd {
        None | Some(Cmd::Start { .. }) => {
            let mut cluster = load(&cli)?;
            // Every route must have servers of its kind, and the dictionary must build:
            // refused here, before any server starts.
            app.check_routes(&cluster.servers, &cli.config.join("servers.json"))
                .map_err(|e| e.to_string())?;
            app.route_dictionary().map_err(|e| e.to_string())?;
            if cluster.master.cluster.is_some() {
                one_host(&mut cluster, &cli)?;
            }
            let exit_with_parent = matches!(
                cli.cmd,
                Some(Cmd::Start {
                    exit_with_parent: true,
                    ..
                })
            );
            crate::master::run_master(
                cluster,
                cli.config.clone(),
                app.duplicate_login,
                exit_with_parent,
                cli.host_id.clone(),
            )
            .await
        }
        Some(Cmd::List { json }) if nats_mode(&cli) => {
            let list = list_registry(&cli).await?;
            if json {
                println!("{}", list_json(&list));
            } else {
                print!("{}", format_list(&list));
            }
            Ok(())
        }
        Some(Cmd::List { json }) => {
            let list = admin(&cli)
                .await?
                .list(target(), ())
                .await
                .map_err(rpc_err)?;
            if json {
                println!("{}", list_json(&list));
            } else {
                print!("{}", format_list(&list));
            }
            Ok(())
        }
        Some(Cmd::Stop) if nats_mode(&cli) => stop_cluster_on_nats(&cli, AdminRequest::Stop).await,
        Some(Cmd::Kill) if nats_mode(&cli) => stop_cluster_on_nats(&cli, AdminRequest::Kill).await,
        Some(Cmd::Add { ref pairs }) if nats_mode(&cli) => add_on_nats(&cli, pairs).await,
        Some(Cmd::Stop) => {
            let stub = admin(&cli).await?;
            // The master leaves after this on purpose: not a connection to reconnect.
            stub.rpc().expect_departure(MASTER);
            stub.stop(target(), ()).await.map_err(rpc_err)?;
            println!("stopping the cluster");
            wait_gone(&master_addr(&cli)?).await
        }
        Some(Cmd::Kill) => {
            let stub = admin(&cli).await?;
            // The master leaves after this on purpose: not a connection to reconnect.
            stub.rpc().expect_departure(MASTER);
            stub.kill(target(), ()).await.map_err(rpc_err)?;
            println!("killing the cluster");
            wait_gone(&master_addr(&cli)?).await
        }
        Some(Cmd::Add { ref pairs }) => {
            let mut args = AddArgs::default();
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("`{p}` is not key=value"))?;
                args.pairs.push(KeyValue {
                    key: k.to_owned(),
                    value: v.to_owned(),
                });
            }
            let reply = admin(&cli)
                .await?
                .add(target(), args)
                .await
                .map_err(rpc_err)?;
            println!("added {}", reply.id);
            Ok(())
        }
        Some(Cmd::Init { .. }) => Ok(()),
    }
}

/// The hidden mode the master starts each server in (`--server-id ID --master HOST:PORT`).
async fn run_server_mode(app: App, cli: &Cli, id: &str) -> Result<(), String> {
    let cluster = load(cli)?;
    let me = match &cli.server_def {
        Some(def) => {
            let v = serde_json::from_str(def).map_err(|e| format!("--server-def: {e}"))?;
            crate::config::parse_server_def(v, None).map_err(|e| format!("--server-def: {e}"))?
        }
        None => cluster
            .server(id)
            .cloned()
            .ok_or_else(|| format!("no server `{id}` in {}", cli.config.display()))?,
    };
    let master = cli
        .master
        .clone()
        .ok_or("--master is required with --server-id")?;
    let master_id = cli.master_id.clone().unwrap_or(cluster.master.id.clone());
    crate::process::run_server(
        app,
        cluster.env,
        me,
        cluster.servers,
        master_id,
        master,
        cluster.master.clone(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// A cluster on NATS: this launcher's master runs only the servers of `--host-id` (without
/// it: the servers whose `host` is an address of this machine), listens on
/// `--master` when given (several launchers on one machine), and the RPC secret must be the
/// same on every host (it cannot be a random one of each master).
fn one_host(cluster: &mut ClusterConfig, cli: &Cli) -> Result<(), String> {
    if cluster.master.random_rpc_secret && crate::process::rpc_secret_from_env()?.is_none() {
        return Err(format!(
            "a cluster on NATS spans hosts: set ${} to one secret (hex, 16 bytes or more) on \
             every host, or \"rpcSecret\": \"none\" in master.json",
            crate::process::RPC_SECRET_ENV
        ));
    }
    let all = cluster.servers.len();
    let host = match &cli.host_id {
        Some(h) => {
            cluster.servers.retain(|s| s.host_id() == h);
            h.clone()
        }
        None => {
            cluster.servers.retain(|s| is_local_address(&s.host));
            if cluster.servers.is_empty() {
                return Err(
                    "master.json has a `cluster` section (a cluster on NATS) and no server of \
                     servers.json has a `host` of this machine: give --host-id ID (the \
                     servers' `hostId`, else `host`)"
                        .into(),
                );
            }
            "(this machine's addresses)".to_owned()
        }
    };
    if let Some(addr) = &cli.master {
        let (h, p) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
            .ok_or_else(|| format!("--master {addr}: want host:port"))?;
        cluster.master.host = h;
        cluster.master.port = p;
    }
    tracing::info!(host_id = %host, servers = cluster.servers.len(), of = all, "cluster on NATS: this launcher runs its host's servers");
    Ok(())
}

/// Whether `host` (an address or a name) is an address of this machine: one a socket can be
/// bound to here.
fn is_local_address(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| crate::cluster::is_local_ip(a.ip())))
        .unwrap_or(false)
}

/// Whether master.json has a `cluster` section: the admin verbs then go through NATS.
fn nats_mode(cli: &Cli) -> bool {
    load(cli).is_ok_and(|c| c.master.cluster.is_some())
}

/// How long each host's launcher has to acknowledge `stop` / `kill`.
const ADMIN_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long a host's launcher has to finish `stop` / `kill` once it acknowledged.
const ADMIN_DONE_WAIT: Duration = Duration::from_secs(90);

/// The host ids of servers.json, each once, sorted.
fn expected_hosts(c: &ClusterConfig) -> Vec<String> {
    let mut hosts: Vec<String> = c.servers.iter().map(|s| s.host_id().to_owned()).collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Whether one of the launchers that answered (each names its host ids comma-separated) runs
/// host `h`.
fn answered_for<'a>(answered: impl IntoIterator<Item = &'a String>, h: &str) -> bool {
    answered.into_iter().any(|k| k.split(',').any(|x| x == h))
}

/// Sends `req` to every host's launcher on the cluster-wide admin subject; their
/// [`AdminReply`] lines come on the returned subscription (kept alive with its client).
async fn ask_every_launcher(
    nats: &crate::cluster::ClusterConfig,
    name: &str,
    req: &AdminRequest,
) -> Result<(async_nats::Client, async_nats::Subscriber), String> {
    let client = crate::cluster::nats::admin_connection(nats, name)
        .await
        .map_err(|e| e.to_string())?;
    let inbox = client.new_inbox();
    let replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("NATS: subscribe to {inbox}: {e}"))?;
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    client
        .publish_with_reply(all_subject(&nats.app), inbox, body.into())
        .await
        .map_err(|e| format!("NATS: {e}"))?;
    client.flush().await.map_err(|e| format!("NATS: {e}"))?;
    Ok((client, replies))
}

/// `stop` / `kill` in a cluster on NATS, from any host: asks every host's launcher on the
/// cluster-wide subject, prints a line per host as it answers, waits until each that
/// answered has ended, and fails naming every host of servers.json that did not answer.
async fn stop_cluster_on_nats(cli: &Cli, req: AdminRequest) -> Result<(), String> {
    use futures_util::StreamExt as _;
    let c = load(cli)?;
    let Some(nats) = &c.master.cluster else {
        return Err("no `cluster` section in master.json".into());
    };
    let expected = expected_hosts(&c);
    let (_client, mut replies) = ask_every_launcher(nats, "admin-cli", &req).await?;
    let verb = if matches!(req, AdminRequest::Stop) {
        "stop"
    } else {
        "kill"
    };
    // Host (as its launcher names itself) -> whether it is done.
    let mut answered: std::collections::BTreeMap<String, bool> = Default::default();
    let covers = |answered: &std::collections::BTreeMap<String, bool>, h: &str| {
        answered_for(answered.keys(), h)
    };
    let ack_deadline = tokio::time::Instant::now() + ADMIN_ACK_WAIT;
    let done_deadline = ack_deadline + ADMIN_DONE_WAIT;
    loop {
        let all_acked = expected.iter().all(|h| covers(&answered, h));
        let all_done = answered.values().all(|&d| d);
        if all_acked && all_done && !answered.is_empty() {
            break;
        }
        // Waiting for acknowledgements until ADMIN_ACK_WAIT; after that only for the
        // hosts that acknowledged to finish.
        let deadline = if all_acked || tokio::time::Instant::now() >= ack_deadline {
            if all_done {
                break;
            }
            done_deadline
        } else {
            ack_deadline
        };
        let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("NATS: the reply subscription ended".into()),
            Err(_) if deadline == ack_deadline => continue,
            Err(_) => break,
        };
        let r: AdminReply = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "an admin reply that is not one");
                continue;
            }
        };
        println!("host {}: {}", r.host, r.message);
        if !r.ok {
            answered.insert(r.host, true);
            continue;
        }
        answered.insert(r.host, r.done);
    }
    let silent: Vec<&str> = expected
        .iter()
        .filter(|h| !covers(&answered, h))
        .map(String::as_str)
        .collect();
    let unfinished: Vec<&str> = answered
        .iter()
        .filter(|(_, d)| !**d)
        .map(|(h, _)| h.as_str())
        .collect();
    let mut problems = Vec::new();
    if !silent.is_empty() {
        problems.push(format!(
            "no launcher answered `{verb}` within {ADMIN_ACK_WAIT:?} for host(s) {} (not \
             running, or not on this NATS)",
            silent.join(", ")
        ));
    }
    if !unfinished.is_empty() {
        problems.push(format!(
            "host(s) {} did not finish `{verb}` within {ADMIN_DONE_WAIT:?}",
            unfinished.join(", ")
        ));
    }
    if problems.is_empty() {
        println!(
            "cluster {}",
            if verb == "stop" { "stopped" } else { "killed" }
        );
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `add` in a cluster on NATS, from any host: the launcher of the new server's host
/// (`hostId=`, else `host=`) adds it; refused when none is up.
async fn add_on_nats(cli: &Cli, pairs: &[String]) -> Result<(), String> {
    let c = load(cli)?;
    let Some(nats) = &c.master.cluster else {
        return Err("no `cluster` section in master.json".into());
    };
    let mut kv = Vec::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("`{p}` is not key=value"))?;
        kv.push((k.to_owned(), v.to_owned()));
    }
    let find = |key: &str| kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let host = find("hostId")
        .filter(|h| !h.is_empty())
        .or_else(|| find("host"))
        .ok_or("in a cluster on NATS `add` needs the server's host: hostId=ID or host=ADDR")?;
    let client = crate::cluster::nats::admin_connection(nats, "admin-cli")
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&AdminRequest::Add { pairs: kv }).map_err(|e| e.to_string())?;
    let subject = host_subject(&nats.app, &host);
    let msg = match tokio::time::timeout(ADMIN_ACK_WAIT, client.request(subject, body.into())).await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            return Err(format!(
                "no launcher of host `{host}` is up (none listens on NATS): start one there \
                 with --host-id {host}"
            ));
        }
        Ok(Err(e)) => return Err(format!("add on host `{host}`: {e}")),
        Err(_) => {
            return Err(format!(
                "no launcher of host `{host}` answered within {ADMIN_ACK_WAIT:?}"
            ));
        }
    };
    let r: AdminReply = serde_json::from_slice(&msg.payload)
        .map_err(|e| format!("host `{host}` answered something else: {e}"))?;
    if r.ok {
        println!("host {}: {}", r.host, r.message);
        Ok(())
    } else {
        Err(format!("host {}: {}", r.host, r.message))
    }
}

/// `list` in a cluster on NATS: every live server of the registry, from any host.
async fn list_registry(cli: &Cli) -> Result<ListReply, String> {
    let c = load(cli)?;
    let Some(nats) = &c.master.cluster else {
        return Err("no `cluster` section in master.json".into());
    };
    // Not the whole connect timeout: a host whose NATS node has no quorum (cut off) cannot
    // read the registry at all, and the launchers can answer instead.
    let mut quick = nats.clone();
    quick.connect_timeout = quick.connect_timeout.min(LIST_REGISTRY_WAIT);
    let backend = match crate::cluster::NatsBackend::connect(&quick, "admin-list").await {
        Ok(b) => b,
        Err(e) => return list_from_launchers(&c, nats, &e.to_string()).await,
    };
    use crate::cluster::ClusterBackend as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // What the registry says as seen by this tool's own handle: degraded here (no quorum,
    // say) means the rows are the cache's, not news.
    if let crate::cluster::Health::Degraded(reason) = &*backend.health().borrow() {
        eprintln!("warning: the cluster registry is degraded ({reason}): the list may be stale");
    }
    let rows = backend
        .servers_refreshed()
        .await
        .into_iter()
        .map(|(r, fresh)| crate::proto::ListRow {
            uptime_secs: now.saturating_sub(r.start_time) / 1000,
            metrics_url: r
                .metrics_port
                .map(|p| format!("http://{}:{p}/metrics", r.host))
                .unwrap_or_default(),
            // Not refreshed within a TTL: lost (its record not yet expired). A server whose own
            // backend was degraded at its last refresh says so.
            state: if !fresh {
                "lost".into()
            } else if r.degraded.is_some() {
                "degraded".into()
            } else {
                "running".into()
            },
            id: r.id,
            server_type: r.server_type,
            pid: r.pid,
            rss_bytes: r.rss_bytes,
            connections: r.connections,
            host: r.host,
            port: u32::from(r.port),
            client_port: u32::from(r.client_port.unwrap_or(0)),
            restarts: r.restarts,
        })
        .collect();
    Ok(ListReply {
        master_pid: 0,
        rows,
        master_metrics_url: String::new(),
    })
}

/// How long `list` on NATS tries to read the registry before it asks the launchers.
const LIST_REGISTRY_WAIT: Duration = Duration::from_secs(5);

/// `list` when the registry (JetStream) cannot be read from this host, e.g. its NATS node is
/// cut off from the others and has no quorum: asks every launcher over core NATS, which still
/// works between the nodes this host reaches, and lists the servers of those that answer
/// within [`ADMIN_ACK_WAIT`] (or until every host of servers.json did), as their masters
/// supervise them (`degraded`: running, with its cluster backend degraded). Says so on stderr.
async fn list_from_launchers(
    c: &ClusterConfig,
    nats: &crate::cluster::ClusterConfig,
    registry_error: &str,
) -> Result<ListReply, String> {
    use base64::Engine as _;
    use futures_util::StreamExt as _;
    use prost::Message as _;
    let unreadable = format!("the cluster registry cannot be read from here: {registry_error}");
    let (_client, mut replies) = ask_every_launcher(nats, "admin-list", &AdminRequest::List)
        .await
        .map_err(|e| format!("{unreadable}; {e}"))?;
    let expected = expected_hosts(c);
    let mut hosts: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let deadline = tokio::time::Instant::now() + ADMIN_ACK_WAIT;
    while !expected.iter().all(|h| answered_for(&hosts, h)) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let Ok(r) = serde_json::from_slice::<AdminReply>(&msg.payload) else {
            tracing::warn!("an admin reply that is not one, skipped");
            continue;
        };
        let list = r
            .list
            .as_deref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| ListReply::decode(b.as_slice()).ok());
        match list {
            Some(l) => {
                rows.extend(l.rows);
                hosts.push(r.host);
            }
            None => {
                tracing::warn!(host = %r.host, message = %r.message, "a launcher's list reply without its list, skipped")
            }
        }
    }
    if hosts.is_empty() {
        return Err(format!(
            "{unreadable}; and no launcher answered over NATS within {ADMIN_ACK_WAIT:?}"
        ));
    }
    eprintln!(
        "warning: {unreadable}. Listed what the launchers that answered over NATS report: {}",
        hosts.join(", ")
    );
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ListReply {
        master_pid: 0,
        rows,
        master_metrics_url: String::new(),
    })
}

const MASTER: &str = "master";

fn target() -> Target<'static> {
    Target::server(MASTER)
}

fn rpc_err(e: RpcError) -> String {
    match e {
        RpcError::Remote { message, .. } => message,
        other => format!("master: {other}"),
    }
}

fn master_addr(cli: &Cli) -> Result<String, String> {
    match &cli.master {
        Some(a) => Ok(a.clone()),
        None => {
            let c = load(cli)?;
            Ok(format!("{}:{}", c.master.host, c.master.port))
        }
    }
}

async fn admin(cli: &Cli) -> Result<master_remote::Client, String> {
    let addr = master_addr(cli)?;
    // The cluster secret: $SHADDOCK_RPC_SECRET, else the master's secret file on this machine.
    let mut cfg = crate::secret::admin_rpc_config(&addr)?;
    // TLS with the cluster CA when master.json has `rpcTls` (a `--master` without a config
    // directory talks plain TCP).
    if let Ok(c) = load(cli) {
        cfg.tls = crate::secret::cluster_tls(&c.master)?;
    }
    crate::process::master_client(MASTER, &addr, cfg)
        .ok_or_else(|| format!("bad master address `{addr}` (want host:port)"))
}

/// Waits (at most a minute) until the master's port is closed.
async fn wait_gone(addr: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            println!("cluster stopped");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("the master is still up after 60 s".into())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1}M", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{}K", n >> 10)
    }
}

fn human_secs(s: u64) -> String {
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `list --json`: `{"master": {"pid", "metricsUrl"}, "servers": [{"id", "serverType", "pid",
/// "uptimeSecs", "rssBytes", "connections", "host", "port", "clientPort", "state",
/// "restarts", "metricsUrl"}]}` (a `metricsUrl` is `null` without a `metricsPort`).
pub(crate) fn list_json(list: &ListReply) -> serde_json::Value {
    let url = |u: &str| (!u.is_empty()).then(|| u.to_owned());
    let servers: Vec<serde_json::Value> = list
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "serverType": r.server_type,
                "pid": r.pid,
                "uptimeSecs": r.uptime_secs,
                "rssBytes": r.rss_bytes,
                "connections": r.connections,
                "host": r.host,
                "port": r.port,
                "clientPort": r.client_port,
                "state": r.state,
                "restarts": r.restarts,
                "metricsUrl": url(&r.metrics_url),
            })
        })
        .collect();
    serde_json::json!({
        "master": {"pid": list.master_pid, "metricsUrl": url(&list.master_metrics_url)},
        "servers": servers,
    })
}

/// The `list` table.
pub(crate) fn format_list(list: &ListReply) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:>8} {:>10} {:>9} {:>7} {:<22} {:>6} {:<10}\n",
        "ID", "TYPE", "PID", "UPTIME", "RSS", "CONNS", "RPC", "CLIENT", "STATE"
    );
    for r in &list.rows {
        out.push_str(&format!(
            "{:<24} {:<12} {:>8} {:>10} {:>9} {:>7} {:<22} {:>6} {:<10}\n",
            r.id,
            r.server_type,
            r.pid,
            human_secs(r.uptime_secs),
            human_bytes(r.rss_bytes),
            r.connections,
            format!("{}:{}", r.host, r.port),
            r.client_port,
            r.state,
        ));
    }
    out
}

/// Starts the master again in the background (its own process group, stdin from /dev/null,
/// output to `log`), writes its pid to `pid_file` and returns.
fn daemonize(log: &Path, pid_file: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-D" && a != "--daemon")
        .collect();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the master: {e}"))?;
    std::fs::write(pid_file, format!("{}\n", child.id()))
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    println!(
        "master started in the background, pid {} (log {})",
        child.id(),
        log.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ListRow;

    #[test]
    fn list_table_has_one_row_per_server() {
        let list = ListReply {
            master_pid: 1,
            rows: vec![ListRow {
                id: "chat-server-1".into(),
                server_type: "chat".into(),
                pid: 42,
                uptime_secs: 3725,
                rss_bytes: 3 << 20,
                connections: 7,
                host: "127.0.0.1".into(),
                port: 5000,
                client_port: 0,
                state: "running".into(),
                restarts: 0,
                metrics_url: "http://127.0.0.1:9100/metrics".into(),
            }],
            master_metrics_url: String::new(),
        };
        let j = list_json(&list);
        assert_eq!(
            j["servers"][0]["metricsUrl"],
            "http://127.0.0.1:9100/metrics"
        );
        assert!(j["master"]["metricsUrl"].is_null(), "{j}");
        let t = format_list(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "chat-server-1",
                "chat",
                "42",
                "1:02:05",
                "3.0M",
                "7",
                "127.0.0.1:5000",
                "0",
                "running"
            ]
        );
    }

    #[test]
    fn local_addresses_are_the_bindable_ones() {
        assert!(is_local_address("127.0.0.1"));
        assert!(is_local_address("localhost"));
        // TEST-NET-3 (RFC 5737): never an address of this machine.
        assert!(!is_local_address("203.0.113.7"));
    }

    #[test]
    fn cli_parses_pomelo_style_commands() {
        let c = Cli::try_parse_from(["app", "start", "-e", "production", "-D"]).unwrap();
        assert_eq!(c.env.as_deref(), Some("production"));
        assert!(matches!(c.cmd, Some(Cmd::Start { daemon: true, .. })));
        let c = Cli::try_parse_from(["app", "start", "--exit-with-parent"]).unwrap();
        assert!(matches!(
            c.cmd,
            Some(Cmd::Start {
                exit_with_parent: true,
                daemon: false,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["app", "start", "-D", "--exit-with-parent"]).is_err());
        let c = Cli::try_parse_from(["app", "add", "id=x", "serverType=chat"]).unwrap();
        assert!(matches!(c.cmd, Some(Cmd::Add { ref pairs }) if pairs.len() == 2));
        let c = Cli::try_parse_from(["app", "--server-id", "s1", "--master", "h:1"]).unwrap();
        assert_eq!(c.server_id.as_deref(), Some("s1"));
    }
}
