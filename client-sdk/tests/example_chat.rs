//! The example chat client (`examples/chat.rs`) as a user runs it, against a scripted fake
//! connector: it confirms a private message to its sender (or prints the server's refusal),
//! and exits with a clear line when the server kicks it or closes the connection, while its
//! standard input is still open.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use shaddock_client::Transport;
use shaddock_protocol::message::{Message, MessageType};
use shaddock_protocol::package::{Package, PackageType};

/// Builds the example (a no-op when it is up to date) and gives the path of its binary.
fn example_binary() -> String {
    let mut cargo = Command::new(env!("CARGO"));
    // The variables cargo set for this test (CARGO_PKG_*, CARGO_MANIFEST_*, ...) would make the
    // nested build look different from the outer one and rebuild the crates every time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cargo.env_remove(&*key);
        }
    }
    let out = cargo
        // `--workspace`, not `-p shaddock-client`: the dependencies' features are then unified
        // as in `cargo test --workspace`, which has built this example already, so the build is
        // a no-op. With `-p` it built some twenty crates again (a minute, 200 MB of target/).
        .args([
            "build",
            "--workspace",
            "--example",
            "chat",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build --example chat");
    assert!(out.status.success(), "cargo build --example chat failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["reason"] == "compiler-artifact"
                && v["target"]["name"] == "chat"
                && v["manifest_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("client-sdk/Cargo.toml"))
        })
        .find_map(|v| v["executable"].as_str().map(str::to_owned))
        .expect("the example's executable in cargo's output")
}

/// The example running: its stdin, and its stdout lines on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(binary: &str, connector: &str) -> Self {
        let mut child = Command::new(binary)
            .args(["--connector", connector, "--name", "bob", "--room", "r1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the example");
        stdin.flush().expect("flush");
    }

    /// Waits (bounded) for a stdout line starting with `prefix`.
    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {prefix:?}; printed: {:#?}", self.seen),
            }
        }
    }

    /// Waits (bounded, polling) for the process to exit; its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit; printed: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Answer the example's enter, then private messages: `alice` is in the room, anyone else
/// is refused as the chat refuses; then end the connection with `end`.
async fn connector(mut peer: Peer, end: Option<Package>) {
    peer.handshake(r#"{"code":200,"sys":{}}"#).await;
    for _ in 0..3 {
        let m = peer.recv_message().await;
        assert_eq!(m.kind, MessageType::Request);
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        let reply = match m.route.as_str() {
            Some("connector.entryHandler.enter") => json!({"users": ["bob"]}),
            Some("chat.chatHandler.send") if body["target"] == "alice" => json!({}),
            Some("chat.chatHandler.send") => json!({
                "code": 500, "error": true,
                "msg": format!("user \"{}\" is not in room \"r1\"", body["target"].as_str().unwrap_or("?")),
            }),
            other => panic!("unexpected route {other:?}"),
        };
        peer.send_message(&Message::response(m.id, reply.to_string().into_bytes()))
            .await;
    }
    if let Some(end) = end {
        peer.send(&end).await;
        peer.drain().await;
    }
    // Without `end`, dropping the peer closes the connection.
}

fn run(end: Option<Package>) -> (Vec<String>, Option<i32>) {
    // Built before the fake server starts listening (its accept is bounded).
    let binary = example_binary();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, server) = rt.block_on(fake_server(Transport::Tcp, move |peer| {
        connector(peer, end)
    }));
    let mut example = Running::start(&binary, &addr.to_string());
    example.expect_line("* joined r1 over tcp as bob");
    example.type_line("/to alice hello there");
    assert_eq!(example.expect_line("(to alice)"), "(to alice) hello there");
    example.type_line("/to zed hi");
    assert_eq!(
        example.expect_line("! not sent to zed"),
        "! not sent to zed: user \"zed\" is not in room \"r1\""
    );
    // The server ends the connection; stdin stays open, the example exits on its own.
    let last = example.expect_line("* disconnected:");
    assert!(last.ends_with("; exiting"), "{last}");
    let code = example.exit_code();
    rt.block_on(async { within(server).await.unwrap() });
    (example.seen.clone(), code)
}

#[test]
fn the_example_confirms_private_messages_and_exits_when_kicked() {
    let kick = Package::new(PackageType::Kick, &b"{\"reason\":\"banned\"}"[..]);
    let (seen, code) = run(Some(kick));
    assert!(
        seen.iter().any(|l| l == "* kicked by the server: banned"),
        "{seen:#?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("* disconnected: kicked by the server: banned; exiting")
    );
    assert_eq!(code, Some(1));
}

#[test]
fn the_example_exits_when_the_server_closes_the_connection() {
    let (seen, code) = run(None);
    assert_eq!(
        seen.last().map(String::as_str),
        Some("* disconnected: the server closed the connection; exiting")
    );
    assert_eq!(code, Some(1));
}
