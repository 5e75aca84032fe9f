//! 8,000 concurrent connections (both ends in this process: ~16,000 file descriptors).

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use serde_json::Value;
use shaddock_connector::{Frontend, HandlerError, Session};

const CONNECTIONS: usize = 8_000;
const BATCH: usize = 500;

/// Reads the soft and hard `RLIMIT_NOFILE` from /proc (no `unsafe`: the workspace forbids it).
fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

/// Raises the soft limit to the hard limit when it is too low for the test. `setrlimit` needs
/// `unsafe`, which the workspace forbids, so `prlimit(1)` does it on our pid.
fn ensure_fd_limit(needed: u64) {
    let Some((soft, hard)) = nofile_limits() else {
        return;
    };
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "hard RLIMIT_NOFILE {hard} < {needed} needed for this test"
    );
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
    let (soft, _) = nofile_limits().expect("limits");
    assert!(soft >= needed, "soft RLIMIT_NOFILE still {soft}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_thousand_concurrent_connections() {
    ensure_fd_limit(2 * CONNECTIONS as u64 + 500);
    let mut cfg = test_config();
    cfg.max_connections = CONNECTIONS + 100;
    cfg.heartbeat_interval = Some(Duration::from_secs(30));
    cfg.handshake_timeout = Duration::from_secs(30);
    let builder = Frontend::builder(cfg).handler(
        "connector.entryHandler.ping",
        |_s: Session, v: Value| async move { Ok::<_, HandlerError>(v) },
    );
    let server = start(builder).await;
    let addr = server.addr;

    let started = std::time::Instant::now();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for batch in 0..CONNECTIONS / BATCH {
        let handshakes = (0..BATCH).map(|i| {
            tokio::spawn(async move {
                // Every fourth client over WebSocket.
                let mut c = Client::connect(i % 4 == 0, addr).await;
                let reply = c.handshake().await;
                assert_eq!(reply["code"], 200);
                c
            })
        });
        let done = tokio::time::timeout(Duration::from_secs(60), join_all(handshakes))
            .await
            .unwrap_or_else(|_| panic!("batch {batch} did not finish"));
        for c in done {
            clients.push(c.expect("client task"));
        }
    }
    assert_eq!(clients.len(), CONNECTIONS);
    // Every connection is held open at once; the server sees them all.
    within(async {
        while server.frontend.sessions().count() != CONNECTIONS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stats = server.frontend.stats();
    assert_eq!(stats.active, CONNECTIONS as u64);
    assert_eq!(stats.refused, 0);
    // One round trip on a sample proves they are live, not just open.
    for c in clients.iter_mut().step_by(997) {
        let r = c
            .call(
                1,
                "connector.entryHandler.ping",
                &serde_json::json!({"p": 1}),
            )
            .await;
        assert_eq!(r["p"], 1);
    }
    eprintln!(
        "{CONNECTIONS} connections handshaken in {:?}",
        started.elapsed()
    );
    drop(clients);
    within(async {
        while server.frontend.sessions().count() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop().await;
}
