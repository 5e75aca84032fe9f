//! The parent process: plans workers and source addresses, finds the connectors and reads
//! their RSS, starts the workers, steps them through their phases, and prints the run's JSON
//! line. Also `load report`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use shaddock_benches::hist::Histogram;
use shaddock_benches::{procfs, report};
use shaddock_client::{ClientConfig, query_entry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Cli, Scenario, now_us, target_v4};

/// Clients per source address: each client holds one connector port and, for a minute after
/// the gate query, a TIME_WAIT port; Linux gives ~28,000 ephemeral ports per address.
/// Clients per source address by default. Clients on 127.0.0.1 connect unbound, so the kernel
/// picks their port per destination (28,000 ephemeral ports to each connector; gate
/// connections in TIME_WAIT are reused on loopback, `net.ipv4.tcp_tw_reuse = 2`): one source
/// holds 50,000 clients on 3 connectors (measured).
const CLIENTS_PER_SOURCE: usize = 60_000;
/// File descriptors a worker keeps for itself beyond its clients.
const FD_SPARE: u64 = 512;

/// How a run is spread over processes and source addresses. Computed the same way by the
/// parent and by every worker, so nothing but `--worker` and `--run-id` is passed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) workers: usize,
    pub(crate) sources: u8,
}

impl Plan {
    pub(crate) fn new(cli: &Cli) -> Self {
        let soft = procfs::open_files_limit().map_or(1024, |(soft, _)| soft);
        Self::with_limit(cli, soft)
    }

    /// The plan for a per-process open-files limit of `soft`.
    pub(crate) fn with_limit(cli: &Cli, soft: u64) -> Self {
        let clients = cli.scenario.clients();
        let per_process = soft.saturating_sub(FD_SPARE).max(64) as usize;
        let workers = cli
            .common
            .worker
            .map(|w| w.count)
            .or(cli.common.workers)
            .unwrap_or_else(|| clients.div_ceil(per_process))
            .clamp(1, clients.max(1));
        let sources = cli
            .common
            .sources
            .unwrap_or_else(|| clients.div_ceil(CLIENTS_PER_SOURCE).clamp(1, 250) as u8)
            .max(1);
        Self { workers, sources }
    }
}

/// The connectors: pids and how they were found.
async fn find_connectors(cli: &Cli, run: &str) -> (Vec<u32>, String) {
    if !cli.common.connector_pids.is_empty() {
        return (
            cli.common.connector_pids.clone(),
            "--connector-pids".to_owned(),
        );
    }
    if cli.common.connector_ports.is_empty() && !cli.common.stack_pid.is_empty() {
        // The cluster's own connector processes: on hosts of their own (network namespaces)
        // their ports are not in this namespace's /proc/net/tcp, but their pids are in /proc.
        let pids = cluster_processes(&cli.common.stack_pid)
            .into_iter()
            .filter(|(_, kind)| kind == "connector")
            .map(|(pid, _)| pid)
            .collect();
        return (pids, "connector processes of --stack-pid".to_owned());
    }
    let (ports, how) = if cli.common.connector_ports.is_empty() {
        let config = ClientConfig::default()
            .with_handshake_timeout(Duration::from_secs(5))
            .with_request_timeout(Duration::from_secs(5));
        let mut ports = BTreeSet::new();
        for k in 0..24 {
            match query_entry(
                &cli.common.gate,
                cli.common.transport.into(),
                &format!("probe-{run}-{k}"),
                &config,
            )
            .await
            {
                Ok(entry) => {
                    ports.insert(entry.port);
                }
                Err(e) => {
                    eprintln!("load: probing the gate for connector ports: {e}");
                    break;
                }
            }
        }
        (ports, "ports named by the gate")
    } else {
        (
            cli.common.connector_ports.iter().copied().collect(),
            "--connector-ports",
        )
    };
    let mut pids = BTreeSet::new();
    for port in &ports {
        match procfs::listening_pids(*port) {
            Ok(found) => pids.extend(found),
            Err(e) => eprintln!("load: finding who listens on port {port}: {e}"),
        }
    }
    (
        pids.into_iter().collect(),
        format!("listening on {ports:?} ({how})"),
    )
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        match procfs::rss_bytes(*pid) {
            Ok(b) => sum += b,
            Err(e) => {
                eprintln!("load: RSS of connector pid {pid}: {e}");
                return None;
            }
        }
    }
    Some(sum)
}

/// Every process of the process trees of `roots`, each with its kind (from its command line).
fn cluster_processes(roots: &[u32]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for &root in roots {
        match procfs::process_tree(root) {
            Ok(tree) => {
                for pid in tree {
                    let kind = procfs::cmdline(pid)
                        .map_or_else(|_| "unknown".to_owned(), |a| procfs::process_kind(&a));
                    out.push((pid, kind));
                }
            }
            Err(e) => eprintln!("load: reading the process tree of --stack-pid {root}: {e}"),
        }
    }
    out
}

/// The processes whose CPU a run measures, each with its kind (`generator` for this process
/// and its workers; the cluster's kinds from their command lines).
#[derive(Debug, Clone, Default)]
struct CpuProbe {
    procs: Vec<(u32, String)>,
}

/// CPU time so far (µs) of each probed process that could be read, and when.
struct CpuSample {
    at: Instant,
    cpu: BTreeMap<u32, u64>,
}

impl CpuProbe {
    /// This process, the cluster's process trees (of the `stack_pids`) and the connectors (in
    /// case they are not in a tree).
    fn new(stack_pids: &[u32], connectors: &[u32]) -> Self {
        let mut procs = vec![(std::process::id(), "generator".to_owned())];
        for (pid, kind) in cluster_processes(stack_pids) {
            if !procs.iter().any(|(p, _)| *p == pid) {
                procs.push((pid, kind));
            }
        }
        for pid in connectors {
            if !procs.iter().any(|(p, _)| p == pid) {
                procs.push((*pid, "connector".to_owned()));
            }
        }
        Self { procs }
    }

    fn add(&mut self, pid: u32, kind: &str) {
        self.procs.push((pid, kind.to_owned()));
    }

    fn sample(&self) -> CpuSample {
        let at = Instant::now();
        let cpu = self
            .procs
            .iter()
            .filter_map(|(pid, _)| Some((*pid, procfs::stat(*pid).ok()?.cpu_us())))
            .collect();
        CpuSample { at, cpu }
    }

    /// CPU between two samples per kind, as the result line's `cpu` object: per kind the
    /// processes, their CPU (µs), the share of a core over the window, and CPU per `unit`;
    /// then the cluster's total (every kind but `generator`) and everything together.
    /// A process missing from `start` (a worker started after it) counts from 0; one missing
    /// from `end` (it exited) is left out and named in `missing`.
    fn report(
        &self,
        window: &str,
        start: &CpuSample,
        end: &CpuSample,
        unit: &str,
        units: u64,
    ) -> Value {
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut missing = Vec::new();
        for (pid, kind) in &self.procs {
            let Some(e) = end.cpu.get(pid) else {
                missing.push(json!({"pid": pid, "kind": kind}));
                continue;
            };
            let s = start.cpu.get(pid).copied().unwrap_or(0);
            let k = kinds.entry(kind.as_str()).or_default();
            k.0 += 1;
            k.1 += e.saturating_sub(s);
        }
        let per_unit = |us: u64| {
            if units > 0 {
                json!(us as f64 / units as f64)
            } else {
                Value::Null
            }
        };
        let cores = |us: u64| {
            if wall > 0.0 {
                json!(us as f64 / 1e6 / wall)
            } else {
                Value::Null
            }
        };
        let mut by_kind = Map::new();
        let (mut server, mut all) = (0, 0);
        for (kind, (n, us)) in &kinds {
            by_kind.insert(
                (*kind).to_owned(),
                json!({"processes": n, "cpu_us": us, "cores": cores(*us), "us_per_unit": per_unit(*us)}),
            );
            all += us;
            if *kind != "generator" {
                server += us;
            }
        }
        json!({
            "window": window,
            "wall_s": wall,
            "unit": unit,
            "units": units,
            "by_kind": by_kind,
            "server_cpu_us": server,
            "server_us_per_unit": per_unit(server),
            "total_us_per_unit": per_unit(all),
            "missing": missing,
        })
    }
}

struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Workers {
    fn spawn(count: usize, run: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let (tx, lines) = mpsc::channel(64);
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for w in 0..count {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker")
                .arg(format!("{w}/{count}"))
                .arg("--run-id")
                .arg(run)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting worker {w}/{count}: {e}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(format!("worker {w}/{count}: no stdin/stdout pipe"));
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send((w, line)).await.is_err() {
                        break;
                    }
                }
            });
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Self {
            children,
            stdins,
            lines,
        })
    }

    /// The workers' pids.
    fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// One `event` line from every worker, in worker order.
    async fn collect(&mut self, event: &str, deadline: Instant) -> Result<Vec<Value>, String> {
        let n = self.children.len();
        let mut got: Vec<Option<Value>> = vec![None; n];
        while got.iter().any(Option::is_none) {
            let (w, line) = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => return Err(format!("deadline reached waiting for `{event}` lines")),
                Ok(None) => {
                    return Err(format!(
                        "workers exited before every `{event}` line arrived (see their errors above)"
                    ));
                }
                Ok(Some(x)) => x,
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("load: worker {w}: {line}");
                continue;
            };
            match v.get("event").and_then(Value::as_str) {
                Some(e) if e == event => got[w] = Some(v),
                Some("error") => return Err(format!("worker {w}: {}", v["error"])),
                _ => eprintln!("load: worker {w}: unexpected line {line}"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    async fn tell(&mut self, word: &str) {
        for (w, stdin) in self.stdins.iter_mut().enumerate() {
            if let Err(e) = stdin.write_all(format!("{word}\n").as_bytes()).await {
                eprintln!("load: telling worker {w} `{word}`: {e}");
            }
        }
    }

    /// Tell the workers to stop and wait for them (killing those that take over 20 s).
    async fn stop(mut self) {
        self.tell("stop").await;
        self.stdins.clear();
        let until = Instant::now() + Duration::from_secs(20);
        for (w, child) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout_at(until, child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    eprintln!("load: worker {w} exited with {status}");
                }
                Ok(_) => {}
                Err(_) => {
                    eprintln!("load: worker {w} did not exit within 20 s; killing it");
                    let _ = child.start_kill();
                }
            }
        }
    }
}

fn sum(lines: &[Value], key: &str) -> u64 {
    lines.iter().filter_map(|v| v.get(key)?.as_u64()).sum()
}

fn merged(lines: &[Value], key: &str) -> Histogram {
    let mut h = Histogram::new();
    for v in lines {
        if let Some(x) = v.get(key)
            && let Ok(x) = serde_json::from_value::<Histogram>(x.clone())
        {
            h.merge(&x);
        }
    }
    h
}

fn percentiles(h: &Histogram) -> Value {
    json!({
        "p50": h.quantile(0.5),
        "p90": h.quantile(0.9),
        "p99": h.quantile(0.99),
        "max": h.max(),
        "count": h.count(),
    })
}

fn first_error(lines: &[Value]) -> Value {
    lines
        .iter()
        .filter_map(|v| v.get("first_error"))
        .find(|e| !e.is_null())
        .cloned()
        .unwrap_or(Value::Null)
}

fn room_counts(lines: &[Value], key: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in lines {
        if let Some(Value::Object(m)) = v.get(key) {
            for (room, n) in m {
                *out.entry(room.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    out
}

fn per_connection(after: Option<u64>, before: Option<u64>, n: u64) -> Value {
    match (after, before) {
        (Some(a), Some(b)) if n > 0 => json!((a as f64 - b as f64) / n as f64),
        _ => Value::Null,
    }
}

/// The whole run as the parent sees it.
pub(crate) async fn run(cli: Cli) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(cli.common.deadline);
    let plan = Plan::new(&cli);
    let scenario = &cli.scenario;
    let clients = scenario.clients();
    target_v4(&cli.common.gate, &cli.common.allow_net)?;
    let run = format!(
        "{:x}{:04x}",
        now_us() & 0xff_ffff_ffff,
        std::process::id() & 0xffff
    );
    if let Some((soft, hard)) = procfs::open_files_limit() {
        let per_worker = clients.div_ceil(plan.workers) as u64;
        if per_worker + FD_SPARE > soft {
            eprintln!(
                "load: warning: {per_worker} clients per worker but the open-files limit is {soft} \
                 (hard {hard}); raise it with `ulimit -n {hard}` or use more --workers"
            );
        }
    }
    let (pids, found_how) = find_connectors(&cli, &run).await;
    if pids.is_empty() {
        eprintln!("load: no connector process found ({found_how}); RSS figures will be null");
    }
    let rss_before = total_rss(&pids);
    let loadavg_start = procfs::load_average();
    eprintln!(
        "load: {} against {} ({}): {clients} clients, {} workers, {} source addresses, connectors {pids:?}",
        scenario.name(),
        cli.common.gate,
        cli.common.stack,
        plan.workers,
        plan.sources
    );

    let mut probe = CpuProbe::new(&cli.common.stack_pid, &pids);
    let cpu_before_setup = probe.sample();
    let mut workers = Workers::spawn(plan.workers, &run)?;
    for pid in workers.pids() {
        probe.add(pid, "generator");
    }
    let outcome = phases(&mut workers, &cli, &pids, &probe, deadline).await;
    workers.stop().await;
    let Phases {
        ready,
        result,
        rss_after_setup,
        rss_after_phase,
        cpu_after_setup,
        cpu_after_phase,
    } = outcome?;

    let connected = sum(&ready, "connected");
    let setup_start = ready
        .iter()
        .filter_map(|v| v["setup_start_us"].as_u64())
        .min()
        .unwrap_or(0);
    let setup_end = ready
        .iter()
        .filter_map(|v| v["setup_end_us"].as_u64())
        .max()
        .unwrap_or(0);
    let setup_secs = setup_end.saturating_sub(setup_start) as f64 / 1e6;

    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("scenario", json!(scenario.name()));
    put("stack", json!(cli.common.stack));
    put("gate", json!(cli.common.gate));
    put(
        "transport",
        json!(format!("{:?}", cli.common.transport).to_lowercase()),
    );
    put("run_id", json!(run));
    put("started_unix", json!(setup_start / 1_000_000));
    put("workers", json!(plan.workers));
    put("sources", json!(plan.sources));
    put("clients", json!(clients));
    put("connected", json!(connected));
    put("setup_failed", json!(sum(&ready, "failed")));
    put("setup_first_error", first_error(&ready));
    put("setup_secs", json!(setup_secs));
    put(
        "setup_latency_us",
        percentiles(&merged(&ready, "setup_hist")),
    );
    put("connector_pids", json!(pids));
    put(
        "processes",
        Value::Array(
            probe
                .procs
                .iter()
                .map(|(pid, kind)| json!({"pid": pid, "kind": kind}))
                .collect(),
        ),
    );
    put("connector_found_by", json!(found_how));
    put("connector_rss_before", json!(rss_before));
    put("connector_rss_after_setup", json!(rss_after_setup));
    put("connector_rss_after_phase", json!(rss_after_phase));
    put("loadavg_start", json!(loadavg_start));
    put("loadavg_end", json!(procfs::load_average()));
    match scenario {
        Scenario::Connect { room_size, .. } => {
            put("room_size", json!(room_size));
            put("connect_secs", json!(setup_secs));
            put(
                "connections_per_s",
                json!(if setup_secs > 0.0 {
                    connected as f64 / setup_secs
                } else {
                    0.0
                }),
            );
            put(
                "bytes_per_connection",
                per_connection(rss_after_setup, rss_before, connected),
            );
            put(
                "cpu",
                probe.report(
                    "setup",
                    &cpu_before_setup,
                    &cpu_after_setup,
                    "connection",
                    connected,
                ),
            );
        }
        Scenario::Request {
            duration,
            max_requests,
            ..
        } => {
            let ok = sum(&result, "ok");
            let elapsed = result
                .iter()
                .filter_map(|v| v["elapsed_us"].as_u64())
                .max()
                .unwrap_or(0) as f64
                / 1e6;
            put("duration_s", json!(duration));
            put("max_requests", json!(max_requests));
            put("requests", json!(ok));
            put("errors", json!(sum(&result, "errors")));
            put("first_error", first_error(&result));
            put("elapsed_s", json!(elapsed));
            put(
                "requests_per_s",
                json!(if elapsed > 0.0 {
                    ok as f64 / elapsed
                } else {
                    0.0
                }),
            );
            put("latency_us", percentiles(&merged(&result, "hist")));
            put(
                "cpu",
                probe.report("phase", &cpu_after_setup, &cpu_after_phase, "request", ok),
            );
        }
        Scenario::Broadcast {
            rooms,
            room_size,
            senders,
            rate,
            duration,
            max_messages,
            ..
        } => {
            let members = room_counts(&ready, "members_by_room");
            let acked = room_counts(&result, "acked_by_room");
            let expected: u64 = acked
                .iter()
                .map(|(room, n)| n * members.get(room).copied().unwrap_or(0))
                .sum();
            let received = sum(&result, "received");
            let first_send = result
                .iter()
                .filter_map(|v| v["first_send_us"].as_u64())
                .min()
                .unwrap_or(0);
            let last_recv = result
                .iter()
                .filter_map(|v| v["last_recv_us"].as_u64())
                .max()
                .unwrap_or(0);
            let span = last_recv.saturating_sub(first_send) as f64 / 1e6;
            let lost = expected.saturating_sub(received);
            put("rooms", json!(rooms));
            put("room_size", json!(room_size));
            put("senders", json!(senders));
            put("rate", json!(rate));
            put("duration_s", json!(duration));
            put("max_messages", json!(max_messages));
            // What the senders were asked to send: ticks the generator could not keep up
            // with (it skips missed ticks) show as `sent` below `intended`.
            let intended = ((*rooms * *senders) as f64 * rate * duration).floor() as u64;
            put("intended", json!(intended.min(*max_messages)));
            put("sent", json!(sum(&result, "sent")));
            put("acked", json!(acked.values().sum::<u64>()));
            put("errors", json!(sum(&result, "errors")));
            put("first_error", first_error(&result));
            put("skipped_ticks", json!(sum(&result, "skipped_ticks")));
            put("expected", json!(expected));
            put("received", json!(received));
            put("lost", json!(lost));
            put(
                "loss_ratio",
                json!(if expected > 0 {
                    lost as f64 / expected as f64
                } else {
                    0.0
                }),
            );
            put("client_dropped", json!(sum(&result, "client_dropped")));
            put("delivery_span_s", json!(span));
            put(
                "pushes_per_s",
                json!(if span > 0.0 {
                    received as f64 / span
                } else {
                    0.0
                }),
            );
            put("latency_us", percentiles(&merged(&result, "hist")));
            put(
                "cpu",
                probe.report(
                    "phase",
                    &cpu_after_setup,
                    &cpu_after_phase,
                    "push",
                    received,
                ),
            );
        }
        Scenario::Idle {
            hold, room_size, ..
        } => {
            put("hold_s", json!(hold));
            put("room_size", json!(room_size));
            put("alive", json!(sum(&result, "alive")));
            put("closed", json!(sum(&result, "closed")));
            put(
                "first_close_reason",
                result
                    .iter()
                    .map(|v| &v["first_close_reason"])
                    .find(|r| !r.is_null())
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            put(
                "bytes_per_connection",
                per_connection(rss_after_phase, rss_before, connected),
            );
            put(
                "rss_per_connection_total",
                match rss_after_phase {
                    Some(a) if connected > 0 => json!(a as f64 / connected as f64),
                    _ => Value::Null,
                },
            );
            put(
                "cpu",
                probe.report(
                    "phase",
                    &cpu_after_setup,
                    &cpu_after_phase,
                    "connection_second",
                    (connected as f64 * hold).round() as u64,
                ),
            );
        }
        Scenario::Report { .. } | Scenario::Floor { .. } => {}
    }
    println!("{}", Value::Object(out));
    if connected == 0 {
        return Err(format!(
            "no client got in; first error: {}",
            first_error(&ready)
        ));
    }
    Ok(())
}

/// What the workers reported and what was measured at the end of setup and of the phase.
struct Phases {
    ready: Vec<Value>,
    result: Vec<Value>,
    rss_after_setup: Option<u64>,
    rss_after_phase: Option<u64>,
    cpu_after_setup: CpuSample,
    cpu_after_phase: CpuSample,
}

async fn phases(
    workers: &mut Workers,
    cli: &Cli,
    pids: &[u32],
    probe: &CpuProbe,
    deadline: Instant,
) -> Result<Phases, String> {
    let ready = workers.collect("ready", deadline).await?;
    let cpu_after_setup = probe.sample();
    let rss_after_setup = total_rss(pids);
    eprintln!(
        "load: {} clients in ({} failed); running the {} phase",
        sum(&ready, "connected"),
        sum(&ready, "failed"),
        cli.scenario.name()
    );
    workers.tell("go").await;
    let result = workers.collect("result", deadline).await?;
    let cpu_after_phase = probe.sample();
    let rss_after_phase = total_rss(pids);
    Ok(Phases {
        ready,
        result,
        rss_after_setup,
        rss_after_phase,
        cpu_after_setup,
        cpu_after_phase,
    })
}

/// `load floor`: run `command` to its end and print the CPU of `server_pid` and of the
/// command per request, as a result line (`scenario` `floor`, `stack` = `--stack`).
pub(crate) fn floor(
    common: &crate::Common,
    server_pid: u32,
    requests: u64,
    clients: u64,
    command: &[String],
) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("no command given")?;
    let me = std::process::id();
    let read = |pid: u32| procfs::stat(pid).map_err(|e| format!("/proc/{pid}/stat: {e}"));
    let server_before = read(server_pid)?.cpu_us();
    let children_before = read(me)?.children_cpu_us();
    let start = std::time::Instant::now();
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = read(server_pid)?.cpu_us().saturating_sub(server_before);
    let client_cpu = read(me)?.children_cpu_us().saturating_sub(children_before);
    if !output.status.success() {
        return Err(format!("{program} exited with {}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The summary: redis-benchmark -q redraws a progress line with `\r`; keep the last.
    let summary = stdout
        .trim()
        .rsplit(['\r', '\n'])
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    eprintln!("{summary}");
    let per = |us: u64| us as f64 / requests.max(1) as f64;
    let line = json!({
        "scenario": "floor",
        "stack": common.stack,
        "transport": "tcp",
        "clients": clients,
        "requests": requests,
        "elapsed_s": elapsed,
        "requests_per_s": requests as f64 / elapsed.max(1e-9),
        "command": command.join(" "),
        "command_output": summary,
        "loadavg_end": procfs::load_average(),
        "cpu": {
            "window": "command",
            "wall_s": elapsed,
            "unit": "request",
            "units": requests,
            "by_kind": {
                "server": {"processes": 1, "cpu_us": server_cpu, "cores": server_cpu as f64 / 1e6 / elapsed.max(1e-9), "us_per_unit": per(server_cpu)},
                "generator": {"processes": 1, "cpu_us": client_cpu, "cores": client_cpu as f64 / 1e6 / elapsed.max(1e-9), "us_per_unit": per(client_cpu)},
            },
            "server_cpu_us": server_cpu,
            "server_us_per_unit": per(server_cpu),
            "total_us_per_unit": per(server_cpu + client_cpu),
        },
    });
    println!("{line}");
    Ok(())
}

/// `load report`: the table from a results file, to stdout or into BENCHMARKS.md.
pub(crate) fn report(
    results: &Path,
    header: Option<&Path>,
    write: Option<&Path>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| format!("reading {}: {e}", results.display()))?;
    let header = match header {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        None => String::new(),
    };
    let md = report::render(&report::latest_results(&text), &header);
    match write {
        None => print!("{md}"),
        Some(doc_path) => {
            let doc = match std::fs::read_to_string(doc_path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(format!("reading {}: {e}", doc_path.display())),
            };
            let new = report::rewrite_section(&doc, &md);
            std::fs::write(doc_path, new)
                .map_err(|e| format!("writing {}: {e}", doc_path.display()))?;
            print!("{md}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn plans() {
        let cli = Cli::try_parse_from(["load", "idle", "--clients", "50000"]).unwrap();
        assert_eq!(
            Plan::with_limit(&cli, 20_000),
            Plan {
                workers: 3,
                sources: 1
            }
        );
        let cli = Cli::try_parse_from(["load", "request", "--clients", "50"]).unwrap();
        assert_eq!(
            Plan::with_limit(&cli, 20_000),
            Plan {
                workers: 1,
                sources: 1
            }
        );
        let cli = Cli::try_parse_from([
            "load",
            "connect",
            "--clients",
            "10",
            "--workers",
            "4",
            "--sources",
            "2",
        ])
        .unwrap();
        assert_eq!(
            Plan::with_limit(&cli, 1024),
            Plan {
                workers: 4,
                sources: 2
            }
        );
        // A worker uses the count it was given, whatever the limit says.
        let cli =
            Cli::try_parse_from(["load", "connect", "--clients", "10", "--worker", "0/2"]).unwrap();
        assert_eq!(Plan::with_limit(&cli, 1).workers, 2);
    }

    #[test]
    fn rss_per_connection() {
        assert_eq!(per_connection(Some(3_000), Some(1_000), 4), json!(500.0));
        assert_eq!(per_connection(None, Some(1), 4), Value::Null);
        assert_eq!(per_connection(Some(1), Some(1), 0), Value::Null);
    }
}
