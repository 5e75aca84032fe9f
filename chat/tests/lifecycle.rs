//! The chat's processes start and end together: a server that cannot start fails the launch at
//! once with its cause as the launcher's last line, and a SIGKILLed launcher leaves no master
//! or server behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, alive, signal};
use serde_json::{Value, json};

/// Waits (bounded) until none of `pids` is alive; the ones still alive after `within`.
fn still_alive_after(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_gate_that_cannot_listen_fails_the_launch_at_once_and_says_why() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = common::tmp_dir();
    common::write_config(&dir);
    let file = dir.join("servers.json");
    let mut servers: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    servers["development"]["gate"][0]["clientPort"] = json!(port);
    std::fs::write(&file, servers.to_string()).expect("write");

    let out = std::fs::File::create(dir.join("out.log")).expect("log");
    let err = out.try_clone().expect("log");
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
        .arg("--config")
        .arg(&dir)
        .args(["--start-timeout", "300"])
        // The master's supervision at debug: which server, if any, is slow to stop (this
        // test once took 40 s, STOP_WAIT twice, with nothing in a warn-level log to say why).
        .env("RUST_LOG", "warn,shaddock_server::master=debug")
        .env_remove("SHADDOCK_ENV")
        .env_remove("SHADDOCK_CHAT_PAGE_PORT")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start shaddock-chat");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    // Not the 300 s start timeout: a bound that only says it did not wait for it.
    let status = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(s) => s.expect("wait"),
        Err(_) => {
            signal(pid, "KILL");
            panic!(
                "the launcher still ran after 60 s: {}",
                std::fs::read_to_string(dir.join("out.log")).unwrap_or_default()
            );
        }
    };
    let took = t0.elapsed();
    let output = std::fs::read_to_string(dir.join("out.log")).expect("output");
    assert!(!status.success(), "{status}: {output}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {output}");
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    for want in [
        "shaddock-chat: gate-server-1 could not start: cannot bind client port",
        &format!("127.0.0.1:{port}"),
        "in use",
    ] {
        assert!(
            last.contains(want),
            "`{want}` not in the last line `{last}`:\n{output}"
        );
    }
    assert!(!output.contains("SHADDOCK_CHAT_READY"), "{output}");
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigkilled_launcher_leaves_no_master_and_no_server() {
    let cluster = Cluster::start();
    let pids = cluster.cluster_pids();
    // The master and 7 servers.
    assert_eq!(pids.len(), 8, "{:?}", cluster.info);
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    signal(cluster.pid(), "KILL");
    let left = still_alive_after(&pids, Duration::from_secs(60));
    // Do not leave them behind if the test fails.
    for pid in &left {
        signal(*pid, "KILL");
    }
    assert!(
        left.is_empty(),
        "left running after the launcher was killed: {left:?}\n{}",
        cluster.log()
    );
}

/// `start` refuses, before any server starts, a route whose server type servers.json does
/// not have, naming the route and the file.
#[test]
fn start_refuses_a_route_whose_server_type_is_not_in_servers_json() {
    let dir = common::tmp_dir();
    common::write_config(&dir);
    let file = dir.join("servers.json");
    let mut servers: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    servers["development"]
        .as_object_mut()
        .expect("development")
        .remove("chat");
    std::fs::write(&file, servers.to_string()).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
        .arg("start")
        .arg("--config")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env_remove("SHADDOCK_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shaddock-chat");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("`start` still ran after 60 s");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}{stderr}");
    for want in ["chat.chatHandler.send", "`chat`", "servers.json"] {
        assert!(stderr.contains(want), "`{want}` not in: {stderr}");
    }
    // Nothing was started: the master never listened.
    assert!(!stdout.contains("SHADDOCK_MASTER_LISTENING"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
