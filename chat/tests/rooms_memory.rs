//! 100,000 rooms, each entered and left, give the chat servers' memory back: a room is removed
//! with its last member (before, every room ever used stayed in its chat server's memory).
//!
//! The real chat cluster (launcher → master → gate, 3 connectors, 3 chat servers). Rooms are
//! driven two ways, both the calls the chat really makes:
//! - through real clients: connect to a connector, `connector.entryHandler.enter` a room of
//!   its own, close (the connector then sends `chatRemote.kick`), a few dozen connections at
//!   a time;
//! - as a connector does: `chatRemote.add` then `chatRemote.kick` straight to the room's chat
//!   server (the test is an RPC peer of the cluster), which is what makes 100,000 rooms fit in
//!   the test's time on a debug build.
//!
//! Measured: VmRSS of the three chat servers (`/proc/<pid>/status`) after a warm-up and after
//! the run; the rooms and members they hold (`chatRemote.rooms`).

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{Cluster, STEP};
use serde_json::json;
use shaddock_chat::app::{ENTER, pick_index};
use shaddock_chat::remote::{Member, chat_remote};
use shaddock_client::{Client, ClientConfig, Transport};
use shaddock_rpc::Target;
use support::{Rpc, ids_of, mib, pids_of, rss_kib};
use tokio::time::timeout;

/// Rooms entered and left after the warm-up, in all (env `SHADDOCK_ROOMS` to change).
const ROOMS: usize = 100_000;
/// Of which through real clients (env `SHADDOCK_CLIENT_ROOMS`); the rest through chatRemote.
/// A client cycle costs about 1 ms of the machine's CPU in debug builds, a chatRemote one a
/// fraction of that: all 100,000 through clients take about 2 minutes here.
const CLIENT_ROOMS: usize = 20_000;
/// Rooms of each kind used before the first RSS reading (allocator, RPC links, sessions).
const WARM_UP: usize = 2_000;
/// RPC calls in flight at once.
const RPC_WORKERS: usize = 32;
/// Client connections open at once.
const CLIENT_WORKERS: usize = 24;
/// The whole drive must end within this (it is a bound, not a measured timing).
const DRIVE_LIMIT: Duration = Duration::from_secs(300);
/// Allowed growth of each chat server's RSS over its warm-up figure: 10 %, at least 4 MiB.
/// Before the fix 100,000 kept rooms grew them by far more (see RELIABILITY.md).
fn slack_kib(warm_kib: u64) -> u64 {
    (warm_kib / 10).max(4 * 1024)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> ClientConfig {
    ClientConfig::default().with_request_timeout(STEP)
}

/// Rooms `range` through `chatRemote.add` + `chatRemote.kick`, `RPC_WORKERS` at a time,
/// each room on the chat server the chat's placement gives it (crc32 over the sorted ids).
async fn by_rpc(stub: &chat_remote::Client, chat_ids: &[String], from: usize, to: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..RPC_WORKERS {
        let stub = stub.clone();
        let chat_ids = chat_ids.to_vec();
        tasks.spawn(async move {
            for i in (from + w..to).step_by(RPC_WORKERS) {
                let rid = format!("rpc-room-{i}");
                let m = Member {
                    uid: format!("u{i}*{rid}"),
                    frontend_id: "connector-server-1".to_owned(),
                    rid: rid.clone(),
                };
                let id = &chat_ids[pick_index(&rid, chat_ids.len()).expect("chat servers")];
                let to = Target::server(id);
                let users = timeout(
                    STEP,
                    stub.add(to, m.uid.clone(), m.frontend_id.clone(), m.rid.clone()),
                )
                .await
                .expect("add in time")
                .expect("add");
                assert_eq!(users, [format!("u{i}")], "room {rid}");
                timeout(STEP, stub.kick(to, m.uid, m.frontend_id, m.rid))
                    .await
                    .expect("kick in time")
                    .expect("kick");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("rpc worker");
    }
}

/// Rooms `range` through real clients: connect, enter a room of its own, close.
async fn by_clients(connectors: &[String], from: usize, to: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CLIENT_WORKERS {
        let connectors = connectors.to_vec();
        tasks.spawn(async move {
            for i in (from + w..to).step_by(CLIENT_WORKERS) {
                let addr = &connectors[i % connectors.len()];
                let (c, _events) = timeout(STEP, Client::connect(addr, Transport::Tcp, config()))
                    .await
                    .expect("connect in time")
                    .expect("connect");
                let rid = format!("client-room-{i}");
                let r = timeout(
                    STEP,
                    c.request(ENTER, &json!({"username": format!("u{i}"), "rid": rid})),
                )
                .await
                .expect("enter in time")
                .expect("enter");
                assert_eq!(r, json!({"users": [format!("u{i}")]}), "room {rid}");
                timeout(STEP, c.close()).await.expect("close in time");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client worker");
    }
}

fn rss_of(pids: &[(String, u32)]) -> Vec<u64> {
    pids.iter().map(|(_, pid)| rss_kib(*pid)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_entered_and_left_give_the_chat_servers_memory_back() {
    let rooms = env_count("SHADDOCK_ROOMS", ROOMS);
    let client_rooms = env_count("SHADDOCK_CLIENT_ROOMS", CLIENT_ROOMS).min(rooms);
    let rpc_rooms = rooms - client_rooms;
    let cluster = Cluster::start();
    let rpc = Rpc::new(&cluster);
    let rows = rpc.learn().await;
    let chat_ids = ids_of(&rows, "chat");
    let chat_pids = pids_of(&rows, "chat");
    let connector_pids = pids_of(&rows, "connector");
    assert_eq!(chat_ids.len(), 3);
    let connectors = cluster.connectors();

    // The count counts: a room with a member is one room, and goes with its member.
    let m = Member {
        uid: "probe*probe-room".into(),
        frontend_id: "connector-server-1".into(),
        rid: "probe-room".into(),
    };
    let id = &chat_ids[pick_index(&m.rid, 3).unwrap()];
    let to = Target::server(id);
    timeout(
        STEP,
        rpc.chat
            .add(to, m.uid.clone(), m.frontend_id.clone(), m.rid.clone()),
    )
    .await
    .unwrap()
    .unwrap();
    let c = rpc.rooms(&chat_ids).await;
    assert_eq!((c.rooms, c.members), (1, 1));
    timeout(STEP, rpc.chat.kick(to, m.uid, m.frontend_id, m.rid))
        .await
        .unwrap()
        .unwrap();

    let t0 = Instant::now();
    // Warm-up: both paths, then the baseline.
    by_rpc(&rpc.chat, &chat_ids, 0, WARM_UP).await;
    by_clients(&connectors, 0, WARM_UP).await;
    let warm_count = rpc.until_no_room(&chat_ids, Duration::from_secs(30)).await;
    let warm = rss_of(&chat_pids);
    let warm_connectors = rss_of(&connector_pids);
    let warm_up_took = t0.elapsed();

    // The run.
    let t1 = Instant::now();
    let (_, ()) = tokio::join!(
        async {
            let r = timeout(
                DRIVE_LIMIT,
                by_rpc(&rpc.chat, &chat_ids, WARM_UP, WARM_UP + rpc_rooms),
            )
            .await;
            r.expect("the rpc drive ended within its bound");
        },
        async {
            let r = timeout(
                DRIVE_LIMIT,
                by_clients(&connectors, WARM_UP, WARM_UP + client_rooms),
            )
            .await;
            r.expect("the client drive ended within its bound");
        },
    );
    let drive_took = t1.elapsed();
    let after_count = rpc.until_no_room(&chat_ids, Duration::from_secs(30)).await;
    let after = rss_of(&chat_pids);
    let after_connectors = rss_of(&connector_pids);

    let mut report = Vec::new();
    for (((id, _), w), a) in chat_pids.iter().zip(&warm).zip(&after) {
        report.push(format!(
            "{id}: {} -> {} MiB ({:+} KiB, allowed +{} KiB)",
            mib(*w),
            mib(*a),
            *a as i64 - *w as i64,
            slack_kib(*w)
        ));
    }
    eprintln!(
        "{rooms} rooms ({rpc_rooms} by chatRemote, {client_rooms} by clients) in {drive_took:?} (warm-up {warm_up_took:?}); \
         rooms/members held after warm-up {}/{}, after the run {}/{}; VmRSS {}; connectors (not asserted) {}",
        warm_count.rooms,
        warm_count.members,
        after_count.rooms,
        after_count.members,
        report.join("; "),
        connector_pids
            .iter()
            .zip(warm_connectors.iter().zip(&after_connectors))
            .map(|((id, _), (w, a))| format!("{id}: {} -> {} MiB", mib(*w), mib(*a)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Functional: every room went with its last member.
    assert_eq!(
        (after_count.rooms, after_count.members),
        (0, 0),
        "rooms left on the chat servers"
    );
    // Memory: back to near the warm-up figure.
    for (((id, _), w), a) in chat_pids.iter().zip(&warm).zip(&after) {
        assert!(*w > 0 && *a > 0, "no VmRSS for {id}");
        assert!(
            a.saturating_sub(*w) <= slack_kib(*w),
            "{id} grew from {} to {} MiB over {rooms} rooms entered and left",
            mib(*w),
            mib(*a)
        );
    }
}
