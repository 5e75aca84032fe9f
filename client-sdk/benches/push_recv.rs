//! Receive path of the client: pushes per second through [`Client::on`] from a real TCP
//! server on 127.0.0.1 that writes several pushes per write (as a coalescing connector does).
//!
//! The server is a plain thread with blocking writes, so its CPU can be told apart from the
//! client's: after each bench the client CPU per push is printed, measured from
//! `/proc/thread-self/schedstat` (ns of CPU per thread) — all threads of the process minus the
//! server thread. The kernel updates these figures when a thread is descheduled (or at a tick),
//! so they are read only before and after each whole bench, while the server thread and the
//! runtime workers are parked.
//!
//! Cases: route as a dictionary code or as a string; a current-thread runtime (driver and
//! subscriber on one thread) and a two-worker runtime (as the load generator runs); the
//! subscriber reads with `recv` (one `tokio::time::timeout` per push, as a typical consumer
//! would), or with `recv_many` in bursts of up to 256.
//!
//! Run: `cargo bench -p shaddock-client --bench push_recv -- --warm-up-time 1
//! --measurement-time 3`

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shaddock_client::{Client, ClientConfig, Transport};
use shaddock_protocol::message::{Message, MessageRoute};

/// Pushes per criterion iteration.
const PER_ITER: u64 = 16384;
/// Pushes per server write (what one connector flush would hold).
const PER_WRITE: usize = 32;
const ROUTE: &str = "onChat";
const CODE: u16 = 7;
const BODY: &[u8] = br#"{"msg":"hello everyone, anyone up for a raid tonight? run=bench-0001 t=1700000000123456","from":"user-00042","target":"*"}"#;

/// CPU time (ns) of every thread of this process.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| schedstat(&format!("{}/schedstat", t.path().display())))
        .sum()
}

fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The fake server: one connection, handshake, then on each command write `n` pushes,
/// `PER_WRITE` to a write, then report `n` back when written.
struct Server {
    addr: String,
    commands: std_mpsc::Sender<u64>,
    done: std_mpsc::Receiver<u64>,
    /// `/proc/self/task/<tid>/schedstat` of the server thread.
    schedstat: String,
}

fn push_chunk(compressed: bool) -> Vec<u8> {
    let route = if compressed {
        MessageRoute::Code(CODE)
    } else {
        MessageRoute::name(ROUTE)
    };
    let mut chunk = BytesMut::new();
    for _ in 0..PER_WRITE {
        Message::push(route.clone(), BODY)
            .encode_package(&mut chunk)
            .expect("push encodes");
    }
    chunk.to_vec()
}

fn read_package(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

fn package(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len();
    let mut out = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    out.extend_from_slice(body);
    out
}

fn start_server(compressed: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (commands, rx) = std_mpsc::channel::<u64>();
    let (done_tx, done) = std_mpsc::channel::<u64>();
    let (tid_tx, tid_rx) = std_mpsc::channel::<String>();
    std::thread::spawn(move || -> std::io::Result<()> {
        // "/proc/thread-self" links to "<pid>/task/<tid>".
        let me = std::fs::read_link("/proc/thread-self")?;
        let _ = tid_tx.send(format!("/proc/{}/schedstat", me.display()));
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let (kind, _) = read_package(&mut stream)?;
        assert_eq!(kind, 1, "handshake first");
        let reply = if compressed {
            format!(r#"{{"code":200,"sys":{{"dict":{{"{ROUTE}":{CODE}}},"useDict":true}}}}"#)
        } else {
            r#"{"code":200,"sys":{}}"#.to_owned()
        };
        stream.write_all(&package(1, reply.as_bytes()))?;
        let (kind, _) = read_package(&mut stream)?;
        assert_eq!(kind, 2, "handshake ack");
        let chunk = push_chunk(compressed);
        while let Ok(n) = rx.recv() {
            for _ in 0..n.div_ceil(PER_WRITE as u64) {
                stream.write_all(&chunk)?;
            }
            if done_tx.send(n).is_err() {
                break;
            }
        }
        Ok(())
    });
    Server {
        addr,
        commands,
        done,
        schedstat: tid_rx.recv().expect("server thread started"),
    }
}

/// `many`: read with `PushStream::recv_many` (bursts) instead of `recv` (one by one).
fn bench_case(c: &mut Criterion, name: &str, compressed: bool, workers: usize, many: bool) {
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("runtime");
    let server = start_server(compressed);
    let mut config = ClientConfig::default();
    config.push_capacity = 2 * PER_ITER as usize;
    let (client, _events) = rt
        .block_on(Client::connect(&server.addr, Transport::Tcp, config))
        .expect("connect");
    let mut chat = client.on(ROUTE);
    let per_iter = PER_ITER.div_ceil(PER_WRITE as u64) * PER_WRITE as u64;
    let mut pushes = 0u64;
    let (cpu0, server0) = (process_cpu_ns(), schedstat(&server.schedstat));
    let mut group = c.benchmark_group("push_recv");
    group.throughput(Throughput::Elements(per_iter));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                server.commands.send(per_iter).expect("server alive");
                rt.block_on(async {
                    if many {
                        let (mut got, mut batch) = (0, Vec::with_capacity(256));
                        while got < per_iter {
                            let n = tokio::time::timeout(
                                Duration::from_secs(10),
                                chat.recv_many(&mut batch, 256),
                            )
                            .await
                            .expect("pushes within 10 s");
                            assert!(n > 0, "stream open");
                            got += n as u64;
                            for push in batch.drain(..) {
                                black_box(&push.body);
                            }
                        }
                        return;
                    }
                    for _ in 0..per_iter {
                        let push = tokio::time::timeout(Duration::from_secs(10), chat.recv())
                            .await
                            .expect("push within 10 s")
                            .expect("stream open");
                        black_box(&push.body);
                    }
                });
                elapsed += start.elapsed();
                server.done.recv().expect("server alive");
                pushes += per_iter;
            }
            elapsed
        });
    });
    group.finish();
    // The workers park once the last push is read; give them a moment to get there.
    std::thread::sleep(Duration::from_millis(50));
    let server_cpu = schedstat(&server.schedstat) - server0;
    let client_cpu = process_cpu_ns().saturating_sub(cpu0 + server_cpu);
    assert_eq!(chat.dropped(), 0, "the bench subscriber keeps up");
    if pushes > 0 {
        println!(
            "push_recv/{name}: client CPU {:.0} ns/push over {pushes} pushes",
            client_cpu as f64 / pushes as f64
        );
    }
    drop(chat);
    rt.block_on(client.close());
}

fn push_recv(c: &mut Criterion) {
    bench_case(c, "code_current_thread", true, 0, false);
    bench_case(c, "name_current_thread", false, 0, false);
    bench_case(c, "code_2_workers", true, 2, false);
    bench_case(c, "name_2_workers", false, 2, false);
    bench_case(c, "code_2_workers_recv_many", true, 2, true);
}

criterion_group!(benches, push_recv);
criterion_main!(benches);
