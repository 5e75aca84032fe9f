//! RPC round trips over loopback: calls/s with 1, 16 and 256 calls in flight (criterion), then
//! a p50/p99 latency report over a fixed number of calls per level.
//!
//! Client and server run in this one process on a 2-worker tokio runtime, talking over one
//! TCP connection on 127.0.0.1. Run:
//! `cargo bench -p shaddock-benches --bench rpc -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, Throughput};
use shaddock_rpc::{
    CancellationToken, Registry, RemoteError, RpcClient, RpcConfig, RpcServer, ServerInfo, Target,
    remote,
};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The bench argument and reply: a small prost message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    /// The number.
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

remote! {
    /// The benched remote.
    pub mod bench_remote: user "benchRemote" {
        /// Returns n + 1.
        fn incr(Num) -> Num;
    }
}

struct Impl;

impl bench_remote::Remote for Impl {
    async fn incr(&self, a: Num) -> Result<Num, RemoteError> {
        Ok(Num { n: a.n + 1 })
    }
}

const IN_FLIGHT: [usize; 3] = [1, 16, 256];

fn setup(rt: &Runtime) -> (bench_remote::Client, CancellationToken) {
    rt.block_on(async {
        let mut registry = Registry::new();
        registry
            .add(bench_remote::Server::new(Impl))
            .expect("one service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let shutdown = CancellationToken::new();
        tokio::spawn(
            RpcServer::new(registry, RpcConfig::default()).serve(listener, shutdown.clone()),
        );
        let rpc = RpcClient::new(RpcConfig::default());
        rpc.directory()
            .add(ServerInfo::new("bench-1", "bench", "127.0.0.1", port));
        let stub = bench_remote::Client::new(&rpc);
        // Connect before measuring.
        stub.incr(Target::server("bench-1"), Num { n: 0 })
            .await
            .expect("first call");
        (stub, shutdown)
    })
}

/// Makes `total` calls from `in_flight` tasks; returns the wall time and, if asked, every
/// call's latency.
async fn run(
    stub: &bench_remote::Client,
    in_flight: usize,
    total: u64,
    record: bool,
) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for t in 0..in_flight as u64 {
        let stub = stub.clone();
        // Spread `total` calls over the tasks exactly.
        let calls = total / in_flight as u64 + u64::from(t < total % in_flight as u64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(if record { calls as usize } else { 0 });
            for i in 0..calls {
                let t0 = Instant::now();
                let r = stub
                    .incr(Target::server("bench-1"), Num { n: i })
                    .await
                    .expect("bench call");
                black_box(r);
                if record {
                    lat.push(t0.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (start.elapsed(), all)
}

fn bench_round_trips(c: &mut Criterion, rt: &Runtime, stub: &bench_remote::Client) {
    let mut group = c.benchmark_group("rpc round trip over loopback");
    group.throughput(Throughput::Elements(1));
    for k in IN_FLIGHT {
        group.bench_function(format!("{k} calls in flight"), |b| {
            b.iter_custom(|iters| rt.block_on(run(stub, k, iters, false)).0)
        });
    }
    group.finish();
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux; 100 Hz
/// ticks). `None` elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn latency_report(rt: &Runtime, stub: &bench_remote::Client) {
    println!("\nrpc latency report (small prost payload, one loopback connection)");
    println!(
        "{:>10} {:>9} {:>12} {:>10} {:>10} {:>14}",
        "in flight", "calls", "calls/s", "p50 us", "p99 us", "calls/cpu-s"
    );
    for k in IN_FLIGHT {
        let total = if k == 1 { 50_000 } else { 200_000 };
        let cpu0 = cpu_time();
        let (elapsed, mut lat) = rt.block_on(run(stub, k, total, true));
        let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let per_cpu = cpu
            .filter(|c| !c.is_zero())
            .map(|c| format!("{:.0}", total as f64 / c.as_secs_f64()))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{:>10} {:>9} {:>12.0} {:>10.1} {:>10.1} {:>14}",
            k,
            total,
            total as f64 / elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            per_cpu,
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (stub, shutdown) = setup(&rt);
    let mut c = Criterion::default().configure_from_args();
    bench_round_trips(&mut c, &rt, &stub);
    c.final_summary();
    // `cargo bench -- --list` / filters: only report latency on a real run.
    if !std::env::args().any(|a| a == "--list") {
        latency_report(&rt, &stub);
    }
    shutdown.cancel();
}
