//! Soak: room pushes and join/leave churn against the real chat cluster for a while, with the
//! connectors' and chat servers' memory sampled throughout (pomelo leaked on pushes: pomelo
//! issues #681, #754) and every push counted at its receivers.
//!
//! `SHADDOCK_SOAK_SECS` sets the duration (default 60). The documented long run
//! (RELIABILITY.md, "Soak"):
//!
//! ```sh
//! SHADDOCK_SOAK_SECS=1800 cargo test --release -p shaddock-chat --test soak -- --nocapture
//! ```
//!
//! Load: one room per chat server, each with `STABLE` members that stay for the whole run
//! (spread over the three connectors; member 0 sends a room message every `SEND_EVERY`,
//! waiting for each answer), and `CHURN_WORKERS` clients that keep connecting, entering a
//! room, staying `CHURN_STAY`, and closing: every other time one of those rooms (whose
//! members then hear `onAdd` and `onLeave`), else a room of its own that the join creates and
//! the leave removes.
//!
//! Checks, at the end:
//! - no loss: each stable member received exactly one `onChat` per acknowledged message of
//!   its room, in the order sent, one `onAdd` per join after its own, one `onLeave` per churn
//!   leave; no request failed; the rooms hold exactly their stable members again;
//! - flat memory: VmRSS of every connector and chat server is sampled every
//!   `duration / 20` (1..=60 s); after a warm-up of 20 % of the run, the largest sample minus
//!   the first post-warm-up sample stays within `max(8 MiB, 10 %)` of that first sample.

mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, STEP};
use serde_json::json;
use shaddock_chat::app::{ENTER, ON_ADD, ON_CHAT, ON_LEAVE, SEND, pick_index};
use shaddock_client::{Client, ClientConfig, Push, PushStream, Transport};
use support::{Rpc, ids_of, mib, pids_of, rss_kib};
use tokio::time::timeout;

/// Default duration in seconds (env `SHADDOCK_SOAK_SECS`).
const DEFAULT_SECS: u64 = 60;
/// Members of each room that stay for the whole run.
const STABLE: usize = 6;
/// A room message from each room's sender this often.
const SEND_EVERY: Duration = Duration::from_millis(10);
/// Clients that keep entering and leaving.
const CHURN_WORKERS: usize = 4;
/// How long a churn client stays in its room.
const CHURN_STAY: Duration = Duration::from_millis(20);
/// After the run, every receiver must have caught up within this.
const DRAIN: Duration = Duration::from_secs(30);
/// The flatness bound: the larger of this and 10 % of the first post-warm-up sample.
const FLAT_MIN_KIB: u64 = 8 * 1024;

fn config() -> ClientConfig {
    ClientConfig::default().with_request_timeout(STEP)
}

/// What one stable member received, updated as pushes arrive.
#[derive(Default)]
struct Received {
    chat: AtomicU64,
    add: AtomicU64,
    leave: AtomicU64,
    /// `onChat` out of order (not the next index of its sender's sequence) or malformed.
    out_of_order: AtomicU64,
}

/// Counts `onChat` (content `"<room>:<index>"`, indexes 0, 1, 2, … from the room's one
/// sender), `onAdd` and `onLeave` of one member until its connection ends.
fn count(
    mut chat: PushStream,
    mut add: PushStream,
    mut leave: PushStream,
    room: String,
    got: Arc<Received>,
) -> tokio::task::JoinHandle<(u64, u64, u64)> {
    tokio::spawn(async move {
        let mut buf: Vec<Push> = Vec::with_capacity(64);
        let (mut chat_open, mut add_open, mut leave_open) = (true, true, true);
        while chat_open || add_open || leave_open {
            tokio::select! {
                n = chat.recv_many(&mut buf, 64), if chat_open => {
                    if n == 0 {
                        chat_open = false;
                    }
                    let prefix = format!("{room}:");
                    for p in buf.drain(..) {
                        let next = got.chat.load(Ordering::Relaxed);
                        let index = p.value().ok().and_then(|v| {
                            v["msg"].as_str()?.strip_prefix(&prefix)?.parse::<u64>().ok()
                        });
                        if index != Some(next) {
                            got.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        got.chat.fetch_add(1, Ordering::Relaxed);
                    }
                }
                p = add.recv(), if add_open => match p {
                    Some(_) => { got.add.fetch_add(1, Ordering::Relaxed); }
                    None => add_open = false,
                },
                p = leave.recv(), if leave_open => match p {
                    Some(_) => { got.leave.fetch_add(1, Ordering::Relaxed); }
                    None => leave_open = false,
                },
            }
        }
        (chat.dropped(), add.dropped(), leave.dropped())
    })
}

struct Member {
    room: usize,
    /// Stable members of its room that joined after it.
    joined_after: u64,
    client: Client,
    got: Arc<Received>,
    counter: tokio::task::JoinHandle<(u64, u64, u64)>,
}

async fn enter(addr: &str, name: &str, room: &str) -> Result<Client, String> {
    let (c, _events) = timeout(STEP, Client::connect(addr, Transport::Tcp, config()))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let r = timeout(
        STEP,
        c.request(ENTER, &json!({"username": name, "rid": room})),
    )
    .await
    .map_err(|_| "enter timed out".to_owned())?
    .map_err(|e| format!("enter: {e}"))?;
    if r["users"].is_array() {
        Ok(c)
    } else {
        Err(format!("enter {name} in {room}: {r}"))
    }
}

/// One VmRSS sample of every watched process.
struct Sample {
    at: Duration,
    kib: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_pushes_and_churn_keep_memory_flat_and_lose_nothing() {
    let secs = std::env::var("SHADDOCK_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS)
        .max(5);
    let run = Duration::from_secs(secs);
    let every = Duration::from_secs((secs / 20).clamp(1, 60));
    let warm_up = run / 5;

    let cluster = Cluster::start();
    let rpc = Rpc::new(&cluster);
    let rows = rpc.learn().await;
    let chat_ids = ids_of(&rows, "chat");
    assert_eq!(chat_ids.len(), 3);
    let mut watched = pids_of(&rows, "connector");
    watched.extend(pids_of(&rows, "chat"));
    let connectors = cluster.connectors();

    // One room per chat server.
    let rooms: Vec<String> = (0..3)
        .map(|k| {
            (0..1000)
                .map(|i| format!("soak{i}"))
                .find(|r| pick_index(r, 3) == Some(k))
                .expect("a room for each chat server")
        })
        .collect();

    // The stable members, round-robin over the connectors.
    let mut members = Vec::new();
    for (j, room) in rooms.iter().enumerate() {
        for k in 0..STABLE {
            let addr = &connectors[(j + k) % connectors.len()];
            let c = enter(addr, &format!("m{k}"), room)
                .await
                .expect("stable member");
            let got = Arc::new(Received::default());
            let counter = count(
                c.on(ON_CHAT),
                c.on(ON_ADD),
                c.on(ON_LEAVE),
                room.clone(),
                got.clone(),
            );
            members.push(Member {
                room: j,
                joined_after: (STABLE - 1 - k) as u64,
                client: c,
                got,
                counter,
            });
        }
    }
    // `on` subscribes after the enter answered: an onAdd pushed before that (for a member
    // that joined later) is only missed if it raced ahead of the subscription, which cannot
    // happen as the later member's enter came after this one's subscription.

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let joins: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let leaves: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let cycles = Arc::new(AtomicU64::new(0));
    let max_sends = secs * 1000 / SEND_EVERY.as_millis() as u64 + 1;
    let max_cycles = secs * 1000 / CHURN_STAY.as_millis() as u64 + 1;

    // Senders: member 0 of each room.
    let mut load = tokio::task::JoinSet::new();
    for (j, room) in rooms.iter().enumerate() {
        let sender = members
            .iter()
            .find(|m| m.room == j && m.joined_after == (STABLE - 1) as u64)
            .expect("sender")
            .client
            .clone();
        let (stop, errors, acked, room) =
            (stop.clone(), errors.clone(), acked.clone(), room.clone());
        load.spawn(async move {
            for i in 0..max_sends {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"content": format!("{room}:{i}"), "target": "*"});
                match timeout(STEP, sender.request(SEND, &body)).await {
                    Ok(Ok(r)) if r == json!({}) => {
                        acked[j].fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("send {room}:{i} failed: {other:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        // The sequence is broken for the receivers: stop this room.
                        break;
                    }
                }
                tokio::time::sleep(SEND_EVERY).await;
            }
        });
    }
    // Churn.
    for w in 0..CHURN_WORKERS {
        let (stop, errors, joins, leaves, cycles) = (
            stop.clone(),
            errors.clone(),
            joins.clone(),
            leaves.clone(),
            cycles.clone(),
        );
        let (rooms, connectors) = (rooms.clone(), connectors.clone());
        load.spawn(async move {
            for i in 0..max_cycles {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Even cycles: one of the stable rooms (its members hear onAdd and onLeave);
                // odd ones: a room of its own, created by the join and removed by the leave.
                let j = (w + i as usize / 2) % rooms.len();
                let own = format!("churn-{w}-{i}");
                let room = if i % 2 == 0 { &rooms[j] } else { &own };
                let addr = &connectors[(w + i as usize) % connectors.len()];
                match enter(addr, &format!("c{w}-{i}"), room).await {
                    Ok(c) => {
                        if i % 2 == 0 {
                            joins[j].fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(CHURN_STAY).await;
                        timeout(STEP, c.close()).await.expect("close in time");
                        if i % 2 == 0 {
                            leaves[j].fetch_add(1, Ordering::Relaxed);
                        }
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("churn c{w}-{i}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    // Sample until the end of the run.
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let at = t0.elapsed();
        samples.push(Sample {
            at,
            kib: watched.iter().map(|(_, pid)| rss_kib(*pid)).collect(),
        });
        if at >= run {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let load_end = timeout(STEP * 2, async {
        while let Some(r) = load.join_next().await {
            r.expect("load task");
        }
    })
    .await;
    assert!(load_end.is_ok(), "the load did not stop");

    // Everything sent or joined must arrive; wait (bounded) for the last pushes and kicks.
    let expected = |m: &Member| {
        (
            acked[m.room].load(Ordering::Relaxed),
            m.joined_after + joins[m.room].load(Ordering::Relaxed),
            leaves[m.room].load(Ordering::Relaxed),
        )
    };
    let got = |m: &Member| {
        (
            m.got.chat.load(Ordering::Relaxed),
            m.got.add.load(Ordering::Relaxed),
            m.got.leave.load(Ordering::Relaxed),
        )
    };
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline && members.iter().any(|m| got(m) < expected(m)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last churn clients' kicks (rooms of their own send no push to wait for).
    let mut held = rpc.rooms(&chat_ids).await;
    while Instant::now() < deadline && (held.rooms, held.members) != (3, (3 * STABLE) as u64) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = rpc.rooms(&chat_ids).await;
    }
    // What each member received, before closing them (each close is an onLeave to the rest).
    let received: Vec<(u64, u64, u64)> = members.iter().map(got).collect();
    // Close the stable members; their counters end with the connections and say whether the
    // test's client dropped a push (its per-route queue full: a loss on the test's side).
    let mut dropped = Vec::new();
    for m in &mut members {
        m.client.close().await;
        let counter = std::mem::replace(&mut m.counter, tokio::spawn(async { (0, 0, 0) }));
        dropped.push(
            timeout(STEP, counter)
                .await
                .expect("counter ends")
                .expect("counter"),
        );
    }

    // Report.
    let names: Vec<&str> = watched.iter().map(|(id, _)| id.as_str()).collect();
    eprintln!("VmRSS MiB every {every:?} (warm-up {warm_up:?}):");
    eprintln!("  {:>7}  {}", "t", names.join("  "));
    for s in &samples {
        let row: Vec<String> = s
            .kib
            .iter()
            .zip(&names)
            .map(|(k, n)| format!("{:>w$}", mib(*k), w = n.len()))
            .collect();
        eprintln!("  {:>6.0}s  {}", s.at.as_secs_f64(), row.join("  "));
    }
    let sent: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let cycles = cycles.load(Ordering::Relaxed);
    for (j, room) in rooms.iter().enumerate() {
        let of_room: Vec<String> = members
            .iter()
            .zip(&received)
            .filter(|(m, _)| m.room == j)
            .map(|(_, r)| format!("{r:?}"))
            .collect();
        eprintln!(
            "{room}: {} acknowledged, {} churn joins, {} churn leaves; (onChat, onAdd, onLeave) per member: {}",
            acked[j].load(Ordering::Relaxed),
            joins[j].load(Ordering::Relaxed),
            leaves[j].load(Ordering::Relaxed),
            of_room.join(" ")
        );
    }
    let delivered: u64 = received.iter().map(|r| r.0).sum();
    eprintln!(
        "{secs} s: {sent} room messages acknowledged, {delivered} onChat delivered to {} stable members; \
         {cycles} churn cycles (enter, stay, close; half in a room of their own); rooms/members held at the end {}/{}; errors {}",
        members.len(),
        held.rooms,
        held.members,
        errors.load(Ordering::Relaxed)
    );

    // No loss.
    assert_eq!(errors.load(Ordering::Relaxed), 0, "requests failed");
    assert!(
        dropped.iter().all(|d| *d == (0, 0, 0)),
        "pushes dropped by the test's client: {dropped:?}"
    );
    assert!(sent > 0 && cycles > 0, "no load ran");
    for (m, r) in members.iter().zip(&received) {
        assert_eq!(
            *r,
            expected(m),
            "{}: (onChat, onAdd, onLeave) received vs expected",
            rooms[m.room]
        );
        assert_eq!(
            m.got.out_of_order.load(Ordering::Relaxed),
            0,
            "onChat out of order"
        );
    }
    assert_eq!(
        (held.rooms, held.members),
        (3, (3 * STABLE) as u64),
        "the rooms hold exactly their stable members again"
    );

    // Flat memory after the warm-up.
    let post: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    assert!(post.len() >= 2, "too few samples after the warm-up");
    for (i, (id, _)) in watched.iter().enumerate() {
        let first = post[0].kib[i];
        let max = post.iter().map(|s| s.kib[i]).max().unwrap_or(0);
        let bound = FLAT_MIN_KIB.max(first / 10);
        assert!(first > 0, "no VmRSS for {id}");
        eprintln!(
            "{id}: first after warm-up {} MiB, max {} MiB (+{} KiB, bound +{} KiB)",
            mib(first),
            mib(max),
            max - first,
            bound
        );
        assert!(max - first <= bound, "{id} grew after the warm-up");
    }
}
