//! `inproc`: the whole chat request path in one process, over real loopback sockets, for a
//! figure that is stable on a shared machine (instructions under callgrind; CPU per thread).
//!
//! ```text
//! cargo build --release -p shaddock-benches --bin inproc
//! target/release/inproc [--requests N] [--warmup W] [--clients K] [--transport tcp|ws]
//! benches/scripts/callgrind.sh         # Ir per request and the top functions, per role
//! ```
//!
//! Three roles, each on its own OS thread with its own single-threaded tokio runtime (as each
//! server process of the cluster runs one), created in this order:
//! 1. **connector**: a [`Frontend`] (raw TCP + WebSocket on one port) with the chat's enter
//!    handler, an [`RpcForwarder`] for `chat.*` routes, and its RPC server (`sessionRemote`);
//! 2. **backend**: a chat server: an [`RpcServer`] serving the chat app's own `chat` type
//!    ([`shaddock_chat::app`]: its `msgRemote` running the real `chat.chatHandler.send` with
//!    a [`BackendSession`](shaddock_server::BackendSession), its rooms as channels, its
//!    `chatRemote`; built with `shaddock_server::backend::standalone_backend`), with RPC
//!    metrics as in a chat process, and every client's room of one joined at set-up; the
//!    handler pushes `onChat` through the room's channel (`sessionRemote.push` by uid list)
//!    and answers `{}`;
//! 3. **client**: `--clients` [`shaddock_client`] clients, entered in rooms of one, in a
//!    closed loop: request `chat.chatHandler.send`, wait for the answer and for the push.
//!
//! The measured phase is `--requests` requests after `--warmup` (all clients together). The
//! program prints one JSON line: requests, wall time, and per role the thread's CPU
//! (`utime + stime` of `/proc/self/task/TID/stat`) per request. Under callgrind
//! (`--separate-threads=yes`) valgrind numbers the threads 1 (main) to 4 in the order above;
//! running two request counts and subtracting cancels setup and teardown (the script does).
//! Everything is bounded: the run stops with an error after `--deadline` seconds.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Transport};
use shaddock_connector::{
    BodyCodec, ConnectorConfig, Frontend, HandlerError, RpcForwarder, Session,
};
use shaddock_rpc::{Registry, RpcClient, RpcConfig, RpcServer, ServerInfo};
use shaddock_server::config::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The allocator of the chat's processes (`chat/src/main.rs`), so that the figures are theirs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEND_ROUTE: &str = "chat.chatHandler.send";
const ENTER_ROUTE: &str = "connector.entryHandler.enter";
const ON_CHAT: &str = "onChat";
const FRONTEND_ID: &str = "connector-server-1";
const BACKEND_ID: &str = "chat-server-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Tcp,
    Ws,
}

#[derive(Debug, Parser)]
#[command(
    name = "inproc",
    about = "The chat request path in one process (connector, RPC, backend, client)"
)]
struct Args {
    /// Measured requests, all clients together.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests before the measured phase.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Clients, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Client transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
}

/// The thread id of the calling thread (`/proc/thread-self` links to `PID/task/TID`).
fn thread_id() -> Result<u32, String> {
    let link = std::fs::read_link("/proc/thread-self")
        .map_err(|e| format!("reading /proc/thread-self: {e}"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("/proc/thread-self -> {}: no thread id", link.display()))
}

/// CPU time (µs) of thread `tid` of this process so far.
fn thread_cpu_us(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| shaddock_benches::procfs::parse_stat(&s))
        .map_or(0, |s| s.cpu_us())
}

/// Runs `f` on a new thread named `name` with its own single-threaded runtime; the thread
/// sends its id and `f`'s setup value (e.g. a port) once `f` has set up (waited for until
/// `deadline`), then keeps serving until `stop` is cancelled.
fn role<T, F, Fut>(
    name: &str,
    stop: CancellationToken,
    deadline: Instant,
    f: F,
) -> Result<(u32, T, std::thread::JoinHandle<()>), String>
where
    T: Send + 'static,
    F: FnOnce(std_mpsc::Sender<Result<T, String>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std_mpsc::channel();
    let (tid_tx, tid_rx) = std_mpsc::channel();
    let thread_name = name.to_owned();
    let handle = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let _ = tid_tx.send(thread_id());
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("{thread_name}: runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                f(tx).await;
                stop.cancelled().await;
            });
        })
        .map_err(|e| format!("starting the {name} thread: {e}"))?;
    let tid = tid_rx
        .recv()
        .map_err(|_| format!("the {name} thread ended early"))??;
    let value = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| format!("the {name} thread did not set up before the deadline"))??;
    Ok((tid, value, handle))
}

async fn listener() -> Result<(TcpListener, u16), String> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    Ok((l, port))
}

fn rpc_config() -> RpcConfig {
    let mut c = RpcConfig::default();
    c.call_timeout = Duration::from_secs(30);
    c
}

/// The connector role; sends (client port, RPC port, its RPC client, whose directory the
/// backend is added to once it is up).
async fn connector(
    ready: std_mpsc::Sender<Result<(u16, u16, RpcClient), String>>,
    stop: CancellationToken,
) {
    let setup = async {
        let rpc = RpcClient::new(rpc_config());
        let mut config = ConnectorConfig::default();
        config.frontend_id = FRONTEND_ID.to_owned();
        config.heartbeat_interval = Some(Duration::from_secs(30));
        config.heartbeat_timeout = Some(Duration::from_secs(120));
        let frontend = Frontend::builder(config)
            .handler(ENTER_ROUTE, |s: Session, req: Value| async move {
                // The chat's uid: `name*room` (`shaddock_chat::validate::uid`).
                let uid = shaddock_chat::validate::uid(
                    req["username"].as_str().unwrap_or_default(),
                    req["rid"].as_str().unwrap_or_default(),
                );
                s.bind(&uid)
                    .map_err(|e| HandlerError::new(500, e.to_string()))?;
                s.set("rid", req["rid"].clone());
                Ok::<_, HandlerError>(json!({"users": [uid]}))
            })
            .forwarder(Arc::new(RpcForwarder::new(rpc.clone())))
            .build()
            .map_err(|e| format!("connector: {e}"))?;
        let (client_l, client_port) = listener().await?;
        let (rpc_l, rpc_port) = listener().await?;
        let mut registry = Registry::new();
        registry
            .add(frontend.session_remote())
            .map_err(|e| format!("connector: registry: {e}"))?;
        tokio::spawn(RpcServer::new(registry, rpc_config()).serve(rpc_l, stop.clone()));
        let f = frontend.clone();
        let s = stop.clone();
        tokio::spawn(async move { f.serve(client_l, s).await });
        Ok::<_, String>((rpc, client_port, rpc_port))
    };
    let _ = ready.send(
        setup
            .await
            .map(|(rpc, client_port, rpc_port)| (client_port, rpc_port, rpc)),
    );
}

/// The uid and room of client `i` (the chat's `name*room`).
fn member(i: usize) -> (String, String) {
    let rid = format!("r{i}");
    (shaddock_chat::validate::uid(&format!("u{i}"), &rid), rid)
}

/// The backend role (a chat server with the clients' rooms of one); sends its RPC port.
async fn backend(
    ready: std_mpsc::Sender<Result<u16, String>>,
    frontend_rpc_port: u16,
    clients: usize,
    stop: CancellationToken,
) {
    let setup = async {
        // RPC metrics as a chat process has them (`process.rs`): counted on every call.
        let mut config = rpc_config();
        config.metrics = Some(shaddock_server::metrics::MetricsBuilder::new().rpc());
        let rpc = RpcClient::new(config.clone());
        rpc.directory().add(ServerInfo::new(
            FRONTEND_ID,
            "connector",
            "127.0.0.1",
            frontend_rpc_port,
        ));
        let server = ServerConfig {
            id: BACKEND_ID.to_owned(),
            server_type: "chat".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: Some(0),
            client_port: None,
            frontend: false,
            extra: serde_json::Map::new(),
        };
        let (ctx, registry) = shaddock_server::backend::standalone_backend(
            &shaddock_chat::app(),
            server,
            rpc,
            BodyCodec::new(None, None),
        )
        .map_err(|e| format!("backend: registry: {e}"))?;
        // Each client's room of one, as `chatRemote.add` makes it on `enter`.
        for i in 0..clients {
            let (uid, rid) = member(i);
            ctx.channels().join(&rid, &uid, FRONTEND_ID);
        }
        let (l, port) = listener().await?;
        tokio::spawn(RpcServer::new(registry, config).serve(l, stop.clone()));
        Ok::<_, String>(port)
    };
    let _ = ready.send(setup.await);
}

/// One client: connected, entered in its own room, subscribed to onChat.
async fn client(
    port: u16,
    transport: Transport,
    i: usize,
) -> Result<(Client, shaddock_client::PushStream), String> {
    let io = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("client {i}: connect: {e}"))?;
    io.set_nodelay(true).map_err(|e| e.to_string())?;
    let config = ClientConfig::default()
        .with_handshake_timeout(Duration::from_secs(30))
        .with_request_timeout(Duration::from_secs(30));
    let name = format!("127.0.0.1:{port}");
    let (c, _events) = Client::connect_io(io, transport, &name, config)
        .await
        .map_err(|e| format!("client {i}: {e}"))?;
    let pushes = c.on(ON_CHAT);
    let uid = format!("u{i}");
    c.request(
        ENTER_ROUTE,
        &json!({"username": uid, "rid": format!("r{i}")}),
    )
    .await
    .map_err(|e| format!("client {i}: {ENTER_ROUTE}: {e}"))?;
    Ok((c, pushes))
}

/// A client, its onChat subscription and its encoded send body.
type Driven = (Client, shaddock_client::PushStream, Bytes);

/// `count` requests over the clients (closed loop: request, answer, push); the clients come
/// back in their order.
async fn drive(clients: Vec<Driven>, count: u64) -> Result<Vec<Driven>, String> {
    let n = clients.len() as u64;
    let mut set = tokio::task::JoinSet::new();
    for (i, (c, mut stream, body)) in clients.into_iter().enumerate() {
        let mine = count / n + u64::from((i as u64) < count % n);
        set.spawn(async move {
            for _ in 0..mine {
                let reply = c
                    .request_raw(SEND_ROUTE, body.clone())
                    .await
                    .map_err(|e| format!("{SEND_ROUTE}: {e}"))?;
                if &reply[..] != b"{}" {
                    return Err(format!(
                        "{SEND_ROUTE} answered {}",
                        String::from_utf8_lossy(&reply)
                    ));
                }
                if stream.recv().await.is_none() {
                    return Err("the push stream ended".to_owned());
                }
            }
            Ok::<_, String>((i, (c, stream, body)))
        });
    }
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        back.push(r.map_err(|e| format!("client task: {e}"))??);
    }
    back.sort_by_key(|(i, _)| *i);
    Ok(back.into_iter().map(|(_, d)| d).collect())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inproc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Value, String> {
    if args.clients == 0 || args.requests == 0 {
        return Err("--clients and --requests must be at least 1".to_owned());
    }
    let stop = CancellationToken::new();
    let deadline = Instant::now() + Duration::from_secs(args.deadline);
    let (connector_tid, (client_port, frontend_rpc_port, connector_rpc), connector_thread) =
        role("connector", stop.clone(), deadline, {
            let stop = stop.clone();
            move |ready| connector(ready, stop)
        })?;
    let clients = args.clients;
    let (backend_tid, backend_port, backend_thread) = role("backend", stop.clone(), deadline, {
        let stop = stop.clone();
        move |ready| backend(ready, frontend_rpc_port, clients, stop)
    })?;
    connector_rpc.directory().add(ServerInfo::new(
        BACKEND_ID,
        "chat",
        "127.0.0.1",
        backend_port,
    ));

    let transport = match args.transport {
        TransportArg::Tcp => Transport::Tcp,
        TransportArg::Ws => Transport::WebSocket,
    };
    let (clients_n, warmup, requests) = (args.clients, args.warmup, args.requests);
    let (phase_tx, phase_rx) = std_mpsc::channel::<&'static str>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (client_tid, (), client_thread) = role(
        "client",
        stop.clone(),
        deadline,
        move |ready| async move {
            let outcome = async {
            let mut clients = Vec::new();
            for i in 0..clients_n {
                let (c, pushes) = client(client_port, transport, i).await?;
                let body = Bytes::from(
                    json!({"content": "hello", "target": "*", "rid": format!("r{i}"), "from": format!("u{i}")})
                        .to_string(),
                );
                clients.push((c, pushes, body));
            }
            drive(clients, warmup).await
        }
        .await;
            match outcome {
                Ok(clients) => {
                    let _ = ready.send(Ok(()));
                    // Wait for the main thread's first CPU sample, then run the measured phase.
                    let _ = go_rx.await;
                    match drive(clients, requests).await {
                        Ok(clients) => {
                            let _ = phase_tx.send("done");
                            for (c, _, _) in &clients {
                                c.close().await;
                            }
                        }
                        Err(e) => {
                            eprintln!("inproc: {e}");
                            let _ = phase_tx.send("failed");
                        }
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        },
    )?;

    let tids = [
        ("connector", connector_tid),
        ("backend", backend_tid),
        ("client", client_tid),
    ];
    let before: Vec<u64> = tids.iter().map(|(_, t)| thread_cpu_us(*t)).collect();
    let t0 = Instant::now();
    let _ = go_tx.send(());
    let left = deadline.saturating_duration_since(Instant::now());
    let phase = phase_rx.recv_timeout(left);
    let wall = t0.elapsed().as_secs_f64();
    let after: Vec<u64> = tids.iter().map(|(_, t)| thread_cpu_us(*t)).collect();
    stop.cancel();
    match phase {
        Ok("done") => {}
        Ok(_) => return Err("the measured phase failed (see above)".to_owned()),
        Err(_) => return Err(format!("deadline of {} s reached", args.deadline)),
    }
    for t in [client_thread, backend_thread, connector_thread] {
        let _ = t.join();
    }
    let mut roles = serde_json::Map::new();
    let mut total = 0;
    for (((name, _), b), a) in tids.iter().zip(&before).zip(&after) {
        let us = a.saturating_sub(*b);
        total += us;
        roles.insert(
            (*name).to_owned(),
            json!({"cpu_us": us, "us_per_request": us as f64 / requests as f64}),
        );
    }
    Ok(json!({
        "bench": "inproc",
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "clients": clients_n,
        "warmup": warmup,
        "requests": requests,
        "wall_s": wall,
        "requests_per_s": requests as f64 / wall,
        "threads": {"1": "main", "2": "connector", "3": "backend", "4": "client"},
        "cpu": roles,
        "cpu_us_per_request": total as f64 / requests as f64,
    }))
}
