//! The chat is quiet when all is well, at the default log level (no RUST_LOG): start-up prints
//! a few INFO lines and the human line last, after the machine-readable markers; `list` prints
//! its table and nothing else; an orderly `stop` (with users chatting, so servers hold RPC
//! links to each other) logs no WARN or ERROR in any process: launcher, master, servers, or
//! the admin command.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{STEP, alive, signal};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Transport, query_entry};
use tokio::time::timeout;

const HUMAN: &str = "shaddock-chat: the chat is up:";
const MARKER: &str = "SHADDOCK_CHAT_READY ";
/// A bound, not an exact count: launcher start, master listening, cluster ready, and room for
/// a few more process-level lines; per-server routine events (7 servers) are DEBUG.
const MAX_START_INFO: usize = 8;

/// The launcher with its stdout and stderr in files; SIGKILLs what is left on drop.
struct Launcher {
    child: Option<Child>,
    dir: std::path::PathBuf,
    pids: Vec<u32>,
}

impl Launcher {
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Polls (bounded) until `pred` holds on stdout; the stdout then.
    fn stdout_until(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.stdout();
            if pred(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not within {within:?}; stdout:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin command `verb` through the binary, as an operator runs it.
    fn admin(&self, master: &str, verb: &str) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"));
        cmd.arg("--config")
            .arg(&self.dir)
            .args(["--master", master, verb])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("run the admin command");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(out) => out.expect("admin output"),
            Err(_) => {
                signal(pid, "KILL");
                panic!("`{verb}` did not end within 90 s");
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
        for &pid in &self.pids {
            if alive(pid) {
                signal(pid, "KILL");
            }
        }
        if std::thread::panicking() {
            eprintln!("launcher files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn level_lines<'a>(text: &'a str, level: &str) -> Vec<&'a str> {
    let tag = format!(" {level} ");
    text.lines().filter(|l| l.contains(&tag)).collect()
}

fn warnings(text: &str) -> Vec<&str> {
    let mut v = level_lines(text, "WARN");
    v.extend(level_lines(text, "ERROR"));
    v
}

/// Two users in one room who exchange a message: connectors and chat servers then hold RPC
/// links both ways (requests one way, pushes the other).
async fn chat_a_little(gate: &str) -> Vec<Client> {
    let cfg = ClientConfig::default().with_request_timeout(STEP);
    let mut users = Vec::new();
    for name in ["quiet-ann", "quiet-bob"] {
        let entry = timeout(STEP, query_entry(gate, Transport::Tcp, name, &cfg))
            .await
            .expect("queryEntry in time")
            .expect("queryEntry");
        let (client, _events) = timeout(
            STEP,
            Client::connect(&entry.addr(), Transport::Tcp, cfg.clone()),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let r = timeout(
            STEP,
            client.request(
                "connector.entryHandler.enter",
                &json!({"username": name, "rid": "quiet-room"}),
            ),
        )
        .await
        .expect("enter in time")
        .expect("enter");
        assert!(r["users"].is_array(), "enter {name}: {r}");
        users.push(client);
    }
    let mut heard = users[1].on("onChat");
    timeout(
        STEP,
        users[0].request(
            "chat.chatHandler.send",
            &json!({"content": "hello", "target": "*"}),
        ),
    )
    .await
    .expect("send in time")
    .expect("send");
    let push = timeout(STEP, heard.recv())
        .await
        .expect("push in time")
        .expect("a push");
    let body = push.value().expect("push body");
    assert_eq!(body["msg"], json!("hello"), "{body}");
    users
}

#[test]
fn start_list_and_stop_are_quiet_at_the_default_level() {
    let dir = common::tmp_dir();
    common::write_config(&dir);
    let out = std::fs::File::create(dir.join("stdout.log")).expect("stdout file");
    let err = std::fs::File::create(dir.join("stderr.log")).expect("stderr file");
    let child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
        .arg("--config")
        .arg(&dir)
        .env_remove("RUST_LOG")
        .env_remove("SHADDOCK_ENV")
        .env_remove("SHADDOCK_CHAT_PAGE_PORT")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start shaddock-chat");
    let mut launcher = Launcher {
        child: Some(child),
        dir,
        pids: Vec::new(),
    };

    // Start: the human line comes last, after every marker.
    let stdout = launcher.stdout_until("the human ready line", common::START_TIMEOUT, |o| {
        o.lines().any(|l| l.starts_with(HUMAN))
    });
    let lines: Vec<&str> = stdout.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.starts_with(MARKER))
        .unwrap_or_else(|| panic!("no {MARKER} line:\n{stdout}"));
    let info: Value = serde_json::from_str(&lines[marker][MARKER.len()..]).expect("ready JSON");
    launcher.pids = info["pids"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&info["master_pid"]))
        .filter_map(|p| p.as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect();
    assert!(
        lines.last().is_some_and(|l| l.starts_with(HUMAN)),
        "the human line is not the last stdout line:\n{stdout}"
    );
    let start_err = launcher.stderr();
    let infos = level_lines(&start_err, "INFO");
    assert!(
        !infos.is_empty() && infos.len() <= MAX_START_INFO,
        "{} INFO lines at start (want 1..={MAX_START_INFO}):\n{start_err}",
        infos.len()
    );
    assert!(
        warnings(&start_err).is_empty(),
        "warnings at start:\n{start_err}"
    );

    let master = info["master"].as_str().expect("master").to_owned();
    let gate = info["gate"].as_str().expect("gate").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let users = rt.block_on(chat_a_little(&gate));

    // `list`: the table first, nothing on stderr.
    let list = launcher.admin(&master, "list");
    let table = String::from_utf8_lossy(&list.stdout);
    let list_err = String::from_utf8_lossy(&list.stderr);
    assert!(list.status.success(), "list failed: {list_err}");
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.split_whitespace().take(3).eq(["ID", "TYPE", "PID"]),
        "list's first line is not the table header:\n{table}"
    );
    assert_eq!(table.lines().count(), 1 + 7, "header + 7 servers:\n{table}");
    assert!(list_err.is_empty(), "list wrote to stderr:\n{list_err}");
    // Nothing printed after the human line meanwhile.
    assert!(
        launcher
            .stdout()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(HUMAN)),
        "stdout after the human line:\n{}",
        launcher.stdout()
    );

    // `stop`: an orderly stop warns nowhere.
    let stop = launcher.admin(&master, "stop");
    let stop_out = String::from_utf8_lossy(&stop.stdout);
    let stop_err = String::from_utf8_lossy(&stop.stderr);
    assert!(stop.status.success(), "stop failed: {stop_out}{stop_err}");
    assert!(
        stop_out.contains("cluster stopped"),
        "stop's output:\n{stop_out}"
    );
    assert!(
        warnings(&stop_err).is_empty() && warnings(&stop_out).is_empty(),
        "the stop command warned:\n{stop_out}{stop_err}"
    );
    let mut child = launcher.child.take().expect("launcher");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the launcher did not end after stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(users);
    let all_err = launcher.stderr();
    let all_out = launcher.stdout();
    assert!(status.success(), "launcher ended with {status}:\n{all_err}");
    let warned: Vec<&str> = warnings(&all_err)
        .into_iter()
        .chain(warnings(&all_out))
        .collect();
    assert!(
        warned.is_empty(),
        "an orderly stop logged warnings:\n{}",
        warned.join("\n")
    );
    assert!(
        all_out.lines().last() == Some("shaddock-chat: stopped"),
        "launcher stdout:\n{all_out}"
    );
}
