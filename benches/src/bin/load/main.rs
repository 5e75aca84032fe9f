//! `load`: the load generator for pomelo-protocol chat clusters (the Shaddock chat and the
//! pinus reference chat in `benches/pinus-chat/`), built on `shaddock-client`.
//!
//! ```text
//! cargo run --release -p shaddock-benches --bin load -- [--gate 127.0.0.1:3014] [--stack NAME] SCENARIO ...
//!   connect   --clients N                      gate → connector → enter; connections/s, RSS/conn
//!   request   --clients C --duration S         closed loop on chat.chatHandler.send, rooms of one
//!   broadcast --room-size K --senders S --rate R --duration S
//!                                              pushes delivered/s, delivery latency, loss
//!   idle      --clients N --hold T             idle connections with heartbeats; RSS/conn
//!   floor     --server-pid P --requests N --clients C -- COMMAND ...
//!                                              CPU per request of P and of COMMAND (redis floor)
//!   report    --results FILE [--header FILE] [--write BENCHMARKS.md]
//! ```
//!
//! Every run is bounded: a measured phase by `--duration`/`--hold` and a request or message
//! cap, and the whole run by `--deadline` (seconds). Each run prints **one JSON line** of
//! figures on stdout; progress goes to stderr.
//!
//! # Processes
//! The parent process samples the CPU time (`utime + stime` of `/proc/<pid>/stat`) of itself,
//! its workers and every process of the cluster (the process tree of `--stack-pid`, by kind:
//! gate, connector, chat, master, ...) at the start and end of the measured phase (for
//! `connect`: of the setup), and reports CPU per unit of work per kind (`cpu` in the result
//! line: per request, per delivered push, per connection, per connection-second of idle).
//! It measures the connectors' RSS (found by `--connector-pids`, by
//! `--connector-ports`, or by asking the gate for a few uids and looking up who listens on the
//! ports it names) and re-executes itself as `--workers` worker processes (`--worker i/n`),
//! each driving every n-th client, so that no process needs more than the per-process
//! open-files limit. Clients use `--sources` source addresses 127.0.0.1..=127.0.0.k in
//! turn; those on 127.0.0.1 connect unbound (the kernel picks the port per destination at
//! connect time, cheaply), the others are bound to their address first. A worker talks to the parent in JSON
//! lines: `ready` after its clients are in, then (on `go` from the parent on stdin) the
//! measured phase and `result`, then it waits for `stop` (or end of stdin) and exits. The
//! parent aggregates the lines into the run's figures.
//!
//! Network use is limited to 127.0.0.0/8: the gate and every connector the gate names must be
//! loopback addresses, or inside a private network given with `--allow-net` (10/8,
//! 172.16/12 or 192.168/16 only; the multi-host runner `benches/src/bin/multihost.rs` passes
//! the bridge of its network-namespace hosts). Clients on such a network connect unbound
//! (source addresses other than 127.0.0.1 cannot reach it), so `--sources` stays 1 there.

mod parent;
mod worker;

/// The allocator of the chat's processes (`chat/src/main.rs`): the generator's own CPU per
/// request is part of what a run measures, and glibc's malloc is slower on the client's
/// per-request blocks (tokio's oneshot, the encoded package, the read buffers' shares).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use shaddock_client::Transport;

/// The chat's send route.
pub(crate) const SEND_ROUTE: &str = "chat.chatHandler.send";
/// The chat's enter route.
pub(crate) const ENTER_ROUTE: &str = "connector.entryHandler.enter";
/// The chat's push of room messages.
pub(crate) const ON_CHAT: &str = "onChat";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "load",
    about = "Load generator for pomelo-protocol chat clusters (Shaddock chat, pinus chat)"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The gate, `HOST:PORT` (a loopback address).
    #[arg(long, global = true, default_value = "127.0.0.1:3014")]
    pub(crate) gate: String,
    /// Client transport.
    #[arg(long, global = true, value_enum, default_value_t = TransportArg::Tcp)]
    pub(crate) transport: TransportArg,
    /// Name of the stack under load, copied into the result line (`shaddock`, `pinus`).
    #[arg(long, global = true, default_value = "unknown")]
    pub(crate) stack: String,
    /// Worker processes (default: 1, or enough to stay under the open-files limit).
    #[arg(long, global = true)]
    pub(crate) workers: Option<usize>,
    /// Source addresses 127.0.0.1..=127.0.0.k for client sockets (default: one per 60,000
    /// clients).
    #[arg(long, global = true)]
    pub(crate) sources: Option<u8>,
    /// Client setups (gate, connect, enter) in flight per worker.
    #[arg(long, global = true, default_value_t = 128)]
    pub(crate) concurrency: usize,
    /// Client setups started per second, all workers together (default: no pacing, only
    /// `--concurrency`). Pacing keeps a big setup from starving the heartbeats of the
    /// clients already in.
    #[arg(long, global = true)]
    pub(crate) connect_rate: Option<f64>,
    /// Hard limit on the whole run, seconds; workers are killed past it.
    #[arg(long, global = true, default_value_t = 600)]
    pub(crate) deadline: u64,
    /// Connector pids for RSS (comma list); overrides discovery.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) connector_pids: Vec<u32>,
    /// Connector client ports whose listening processes are the connectors (comma list);
    /// default: the ports the gate names for a few probe uids.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) connector_ports: Vec<u16>,
    /// Root pids of the cluster under test (comma list: its launcher or master; one launcher
    /// and one nats-server per host on several hosts): every process in their process trees
    /// is sampled for CPU (`utime + stime`) at the start and end of the measured phase and
    /// reported per process kind. Without it only the connectors are. Without
    /// `--connector-pids` and `--connector-ports`, the connectors are the `connector`
    /// processes of these trees.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) stack_pid: Vec<u32>,
    /// A private IPv4 network (`10.1.2.0/24`; inside 10/8, 172.16/12 or 192.168/16) the gate
    /// and the connectors may be on besides 127.0.0.0/8 (repeat or comma list).
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) allow_net: Vec<Ipv4Net>,
    /// Handshake and request timeout of each client, seconds.
    #[arg(long, global = true, default_value_t = 30)]
    pub(crate) timeout: u64,
    /// Internal: run as worker `i/n`.
    #[arg(long, global = true, hide = true)]
    pub(crate) worker: Option<WorkerId>,
    /// Internal: the run's id, shared by the workers (names users and rooms).
    #[arg(long, global = true, hide = true)]
    pub(crate) run_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    /// Raw TCP.
    Tcp,
    /// WebSocket.
    Ws,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Tcp => Self::Tcp,
            TransportArg::Ws => Self::WebSocket,
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Scenario {
    /// N clients through gate → connector → enter: connections/s, time until all are in,
    /// connector RSS per connection.
    Connect {
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Users per room.
        #[arg(long, default_value_t = 1)]
        room_size: usize,
    },
    /// C clients in a closed loop on chat.chatHandler.send, each in a room of one:
    /// requests/s and latency percentiles.
    Request {
        /// Clients (each keeps one request in flight).
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Measured phase, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Most requests in the run (all clients together).
        #[arg(long, default_value_t = 50_000_000)]
        max_requests: u64,
    },
    /// Rooms of K users with S senders each sending at a set rate: pushes delivered/s,
    /// delivery latency, loss.
    Broadcast {
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Users per room.
        #[arg(long, default_value_t = 1000)]
        room_size: usize,
        /// Senders per room (the first members).
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages per second per sender.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Sending phase, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Most messages in the run (all senders together).
        #[arg(long, default_value_t = 10_000_000)]
        max_messages: u64,
        /// Most time to wait for the last pushes after sending stops, seconds.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
        /// Requests in flight per sender; a tick with none free is skipped and counted.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
    },
    /// N idle clients (heartbeats only) held for T seconds: connector RSS per connection.
    Idle {
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Hold time, seconds.
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
        /// Users per room.
        #[arg(long, default_value_t = 1)]
        room_size: usize,
    },
    /// The one-hop floor: runs COMMAND (a benchmark client such as `redis-benchmark -n N`)
    /// to its end and prints a result line with the CPU of `--server-pid` and of COMMAND
    /// (its `cutime + cstime`) per request.
    Floor {
        /// The server process under the command's load.
        #[arg(long)]
        server_pid: u32,
        /// Requests the command makes (for CPU per request).
        #[arg(long)]
        requests: u64,
        /// Clients the command uses (copied into the result line).
        #[arg(long)]
        clients: u64,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Render the Shaddock-vs-pinus table from result lines, optionally rewriting the
    /// generated block of BENCHMARKS.md's load section.
    Report {
        /// File of JSON result lines (the last line per scenario and stack is used).
        #[arg(long)]
        results: PathBuf,
        /// Markdown put above the tables (machine, versions, commands).
        #[arg(long)]
        header: Option<PathBuf>,
        /// BENCHMARKS.md to rewrite; without it the table goes to stdout.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

impl Scenario {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Request { .. } => "request",
            Self::Broadcast { .. } => "broadcast",
            Self::Idle { .. } => "idle",
            Self::Report { .. } => "report",
            Self::Floor { .. } => "floor",
        }
    }

    /// Total clients of the run.
    pub(crate) fn clients(&self) -> usize {
        match self {
            Self::Connect { clients, .. }
            | Self::Request { clients, .. }
            | Self::Idle { clients, .. } => *clients,
            Self::Broadcast {
                rooms, room_size, ..
            } => rooms * room_size,
            Self::Report { .. } | Self::Floor { .. } => 0,
        }
    }

    /// Users per room (1 for `request`).
    pub(crate) fn room_size(&self) -> usize {
        match self {
            Self::Connect { room_size, .. }
            | Self::Idle { room_size, .. }
            | Self::Broadcast { room_size, .. } => (*room_size).max(1),
            Self::Request { .. } | Self::Report { .. } | Self::Floor { .. } => 1,
        }
    }

    /// Check the numbers before anything starts.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number, got {v}"))
            }
        };
        match self {
            Self::Connect { clients, .. } | Self::Idle { clients, .. } if *clients == 0 => {
                Err("--clients must be at least 1".to_owned())
            }
            Self::Idle { hold, .. } => positive("hold", *hold),
            Self::Request {
                clients, duration, ..
            } => {
                if *clients == 0 {
                    return Err("--clients must be at least 1".to_owned());
                }
                positive("duration", *duration)
            }
            Self::Broadcast {
                rooms,
                room_size,
                senders,
                rate,
                duration,
                drain,
                in_flight,
                ..
            } => {
                if *rooms == 0 || *room_size == 0 {
                    return Err("--rooms and --room-size must be at least 1".to_owned());
                }
                if *senders == 0 || senders > room_size {
                    return Err(format!(
                        "--senders must be between 1 and --room-size ({room_size}), got {senders}"
                    ));
                }
                if *in_flight == 0 {
                    return Err("--in-flight must be at least 1".to_owned());
                }
                positive("rate", *rate)?;
                positive("duration", *duration)?;
                positive("drain", *drain)
            }
            _ => Ok(()),
        }
    }
}

/// `i/n`: this process is worker `i` (0-based) of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerId {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl FromStr for WorkerId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("worker `{s}`: expected INDEX/COUNT"))?;
        let index: usize = i.parse().map_err(|e| format!("worker `{s}`: index: {e}"))?;
        let count: usize = n.parse().map_err(|e| format!("worker `{s}`: count: {e}"))?;
        if count == 0 || index >= count {
            return Err(format!("worker `{s}`: need INDEX < COUNT and COUNT > 0"));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A private IPv4 network, `A.B.C.D/N`, that `--allow-net` lets the generator load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = Self::mask(self.prefix);
        u32::from(ip) & m == u32::from(self.addr) & m
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("network `{s}`: expected A.B.C.D/N"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|e| format!("network `{s}`: address: {e}"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("network `{s}`: prefix must be 0 to 32"))?;
        // Only inside the private ranges: the generator never loads a public address.
        let private = [
            (Ipv4Addr::new(10, 0, 0, 0), 8),
            (Ipv4Addr::new(172, 16, 0, 0), 12),
            (Ipv4Addr::new(192, 168, 0, 0), 16),
        ]
        .iter()
        .any(|&(base, len)| {
            prefix >= len
                && Self {
                    addr: base,
                    prefix: len,
                }
                .contains(addr)
        });
        if !private {
            return Err(format!(
                "network `{s}` is not inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
            ));
        }
        Ok(Self { addr, prefix })
    }
}

/// Resolve `addr` (`host:port`) to an IPv4 socket address on 127.0.0.0/8 or in one of
/// `allowed`, refusing anything else.
pub(crate) fn target_v4(addr: &str, allowed: &[Ipv4Net]) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("address `{addr}`: {e}"))?
        .collect();
    addrs
        .iter()
        .copied()
        .find(|a| match a.ip() {
            IpAddr::V4(ip) => ip.is_loopback() || allowed.iter().any(|n| n.contains(ip)),
            IpAddr::V6(_) => false,
        })
        .ok_or_else(|| {
            format!(
                "address `{addr}` ({addrs:?}) is not on 127.0.0.0/8 nor in --allow-net \
                 {allowed:?}: this generator only loads loopback and the networks it is given"
            )
        })
}

/// Microseconds since the Unix epoch (shared by all processes of the machine).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Report {
        results,
        header,
        write,
    } = &cli.scenario
    {
        return match parent::report(results, header.as_deref(), write.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("load report: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Scenario::Floor {
        server_pid,
        requests,
        clients,
        command,
    } = &cli.scenario
    {
        return match parent::floor(&cli.common, *server_pid, *requests, *clients, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("load floor: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = cli.scenario.validate() {
        eprintln!("load: {e}");
        return ExitCode::from(2);
    }
    // A worker process is single-threaded (run more workers to use more cores): on a machine
    // shared with the cluster under test, a multi-threaded generator spends its CPU on
    // cross-thread wake-ups that the stack under test then lacks.
    let mut builder = if cli.common.worker.is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.common.worker {
        Some(id) => runtime.block_on(worker::run(cli.clone(), id)),
        None => runtime.block_on(parent::run(cli.clone())),
    };
    // Client connection tasks may still be closing; do not wait for them.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match cli.common.worker {
                Some(id) => eprintln!("load worker {id}: {e}"),
                None => eprintln!("load: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids() {
        assert_eq!(
            "2/5".parse::<WorkerId>(),
            Ok(WorkerId { index: 2, count: 5 })
        );
        for bad in ["5/5", "1/0", "x/2", "3", "-1/2"] {
            assert!(bad.parse::<WorkerId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_parse_with_globals_anywhere() {
        let cli = Cli::try_parse_from([
            "load",
            "--gate",
            "127.0.0.1:4014",
            "broadcast",
            "--room-size",
            "10",
            "--senders",
            "2",
            "--stack",
            "pinus",
            "--worker",
            "1/3",
            "--connector-ports",
            "1,2,3",
        ])
        .unwrap();
        assert_eq!(cli.common.gate, "127.0.0.1:4014");
        assert_eq!(cli.common.stack, "pinus");
        assert_eq!(cli.common.worker, Some(WorkerId { index: 1, count: 3 }));
        assert_eq!(cli.common.connector_ports, vec![1, 2, 3]);
        assert_eq!(cli.scenario.clients(), 10);
        assert_eq!(cli.scenario.name(), "broadcast");
        assert!(cli.scenario.validate().is_ok());

        let cli = Cli::try_parse_from(["load", "broadcast", "--room-size", "3", "--senders", "4"])
            .unwrap();
        assert!(cli.scenario.validate().is_err());
        let cli = Cli::try_parse_from(["load", "request", "--duration", "0"]).unwrap();
        assert!(cli.scenario.validate().is_err());
        assert!(Cli::try_parse_from(["load", "request", "--transport", "udp"]).is_err());
    }

    #[test]
    fn only_loopback_and_allowed_private_networks() {
        assert_eq!(
            target_v4("127.0.0.3:80", &[]).unwrap(),
            "127.0.0.3:80".parse().unwrap()
        );
        assert!(target_v4("10.0.0.1:80", &[]).is_err());
        assert!(target_v4("no-port", &[]).is_err());
        let net: Ipv4Net = "10.100.7.0/24".parse().unwrap();
        assert_eq!(
            target_v4("10.100.7.1:4222", &[net]).unwrap(),
            "10.100.7.1:4222".parse().unwrap()
        );
        assert!(target_v4("10.100.8.1:4222", &[net]).is_err());
        assert!("192.168.1.0/24".parse::<Ipv4Net>().is_ok());
        assert!("172.20.0.0/16".parse::<Ipv4Net>().is_ok());
        for bad in ["8.8.8.0/24", "10.0.0.0/7", "10.0.0.0", "10.0.0.0/33", "x/8"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "load",
            "--allow-net",
            "10.1.2.0/24",
            "--stack-pid",
            "10,20",
            "request",
        ])
        .unwrap();
        assert_eq!(cli.common.stack_pid, vec![10, 20]);
        assert_eq!(cli.common.allow_net, vec!["10.1.2.0/24".parse().unwrap()]);
    }
}
