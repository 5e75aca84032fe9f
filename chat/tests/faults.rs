//! Faults in a real chat cluster (launcher → master → gate, 3 connectors, 3 chat servers) on
//! port-0 config with no `restart` setting (the master restarts crashed servers by default):
//! `kill -9` of a chat server under steady load, `kill -9` of a connector, a graceful `stop`
//! under load, and a slow consumer in a room that gets 10,000 pushes.
//!
//! Only PIDs this test started are signalled: the servers' PIDs come from the master's `list`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Event, Events, PushStream, Transport, query_entry};
use shaddock_rpc::Target;
use shaddock_server::proto::{ListReply, master_remote};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use tokio::time::timeout;

/// Every network step.
const STEP: Duration = Duration::from_secs(15);
const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";
/// The RPC call timeout of the servers (`RpcConfig::default()`): no request may take longer
/// than this to get its answer, whatever happens to a backend (plus scheduling slack).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// `kill -SIG pid` (the `kill` command: no unsafe code for signals).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this pid exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The chat binary on a temporary port-0 config with no `restart` anywhere (so crashed
/// servers come back by master.json's default);
/// stopped with SIGTERM (then SIGKILL of the launcher and the PIDs it reported) on drop.
struct FaultCluster {
    child: Option<Child>,
    dir: std::path::PathBuf,
    info: Value,
}

impl FaultCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "shaddock-faults-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let server = |id: String, frontend: bool| {
            let mut v = json!({"id": id, "host": "127.0.0.1", "port": 0});
            if frontend {
                v["clientPort"] = json!(0);
                v["frontend"] = json!(true);
            }
            v
        };
        let servers = json!({"development": {
            "gate": [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 0, "frontend": true}],
            "connector": (1..=3).map(|i| server(format!("connector-server-{i}"), true)).collect::<Vec<_>>(),
            "chat": (1..=3).map(|i| server(format!("chat-server-{i}"), false)).collect::<Vec<_>>(),
        }});
        let master =
            json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0}});
        let page = json!({"development": {"host": "127.0.0.1", "port": 0}});
        for (name, v) in [
            ("servers.json", servers),
            ("master.json", master),
            ("page.json", page),
        ] {
            std::fs::write(dir.join(name), v.to_string()).expect("write config");
        }
        let log = std::fs::File::create(dir.join("cluster.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
            .arg("--config")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .env_remove("SHADDOCK_ENV")
            .env_remove("SHADDOCK_CHAT_PAGE_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start shaddock-chat");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("SHADDOCK_CHAT_READY ") {
                    let _ = tx.send(json.to_owned());
                }
            }
        });
        let mut me = Self {
            child: Some(child),
            dir,
            info: Value::Null,
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(json) => me.info = serde_json::from_str(&json).expect("ready JSON"),
            Err(_) => panic!("no ready line in 120 s"),
        }
        me
    }

    fn gate(&self) -> String {
        self.info["gate"].as_str().expect("gate").to_owned()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let t0 = Instant::now();
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                eprintln!("cluster stopped in {:?}", t0.elapsed());
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let mut pids: Vec<u64> = self.info["pids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        pids.extend(self.info["master_pid"].as_u64());
        for pid in pids {
            let pid = pid as u32;
            if alive(pid) {
                signal(pid, "KILL");
            }
        }
        eprintln!("cluster files kept in {}", self.dir.display());
    }
}

fn config() -> ClientConfig {
    let mut c = ClientConfig::default().with_request_timeout(STEP);
    // Listeners are read when the load ends; the SDK drops pushes past this many unread
    // ones (a bounded queue, by design), and the default 256 is within reach of a slow heal.
    c.push_capacity = 4096;
    c
}

/// The master's admin stub (address from the ready line).
fn master(cluster: &FaultCluster) -> master_remote::Client {
    common::master_at(cluster.info["master"].as_str().expect("master addr"))
}

async fn list(m: &master_remote::Client) -> ListReply {
    timeout(STEP, m.list(Target::server("master"), ()))
        .await
        .expect("list in time")
        .expect("list")
}

fn row<'a>(l: &'a ListReply, id: &str) -> &'a shaddock_server::proto::ListRow {
    l.rows.iter().find(|r| r.id == id).expect("server in list")
}

/// Room names, distinct for distinct `index`es (those crc32 would put on server `index` of
/// three). The master places each new room on the chat server with the fewest rooms, so in a
/// fresh cluster rooms of three indexes land on three different servers.
fn rooms_on(index: usize, count: usize) -> Vec<String> {
    (0..1000)
        .map(|i| format!("room{i}"))
        .filter(|r| shaddock_chat::app::pick_index(r, 3) == Some(index))
        .take(count)
        .collect()
}

struct User {
    client: Client,
    chat: PushStream,
    events: Events,
    /// The client port of the connector it entered through.
    port: u16,
}

async fn join(gate: &str, name: &str, room: &str) -> User {
    let entry = timeout(STEP, query_entry(gate, Transport::Tcp, name, &config()))
        .await
        .expect("queryEntry in time")
        .expect("queryEntry");
    let (client, events) = timeout(
        STEP,
        Client::connect(&entry.addr(), Transport::Tcp, config()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let chat = client.on("onChat");
    let r = timeout(
        STEP,
        client.request(ENTER, &json!({"username": name, "rid": room})),
    )
    .await
    .expect("enter in time")
    .expect("enter");
    assert!(r["users"].is_array(), "enter {name} in {room}: {r}");
    User {
        client,
        chat,
        events,
        port: entry.port,
    }
}

/// One request's outcome under load.
#[derive(Debug, Clone)]
struct Outcome {
    ok: bool,
    took: Duration,
    /// The message sent.
    text: String,
}

/// How far a [`steady_load`] got: requests answered, and answered with success.
#[derive(Default)]
struct Progress {
    answered: AtomicUsize,
    ok: AtomicUsize,
}

impl Progress {
    /// Waits (at most 45 s) until `ok` reaches `at_least`: a signal, not a sleep.
    async fn ok_reaches(&self, at_least: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(45);
        while self.ok.load(Ordering::SeqCst) < at_least {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {at_least} requests succeeded in 45 s",
                self.ok.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends a room message every 20 ms until `stop`, at most `max` times; records outcomes and
/// counts them in `progress` as they come. A request that gets no answer at all within STEP
/// (15 s) fails the task.
fn steady_load(
    client: Client,
    stop: Arc<AtomicBool>,
    max: usize,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 0..max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let text = format!("m{i}");
            let r = timeout(
                STEP,
                client.request(SEND, &json!({"content": text, "target": "*"})),
            )
            .await
            .expect("a request hung past 15 s")
            .expect("the connection failed");
            let ok = r == json!({});
            progress.answered.fetch_add(1, Ordering::SeqCst);
            if ok {
                progress.ok.fetch_add(1, Ordering::SeqCst);
            }
            out.push(Outcome {
                ok,
                took: t0.elapsed(),
                text,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

fn connector_pids(l: &ListReply) -> Vec<u32> {
    l.rows
        .iter()
        .filter(|r| r.server_type == "connector" || r.server_type == "gate")
        .map(|r| r.pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_chat_server_under_load() {
    let cluster = FaultCluster::start();
    let gate = cluster.gate();
    let m = master(&cluster);
    let before = list(&m).await;
    let victim = row(&before, "chat-server-1").clone();
    assert_ne!(victim.pid, 0);
    let frontends = connector_pids(&before);

    // A room on each chat server (as the master placed them), two users in each; the
    // victim's room first.
    let placements = master(&cluster);
    let mut rooms: Vec<(String, String)> = Vec::new();
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..30 {
        let room = format!("room{i}");
        let s = join(&gate, &format!("s-{room}"), &room).await;
        let l = join(&gate, &format!("l-{room}"), &room).await;
        let on = common::server_of(&placements, &room).await;
        if rooms.iter().any(|(_, o)| *o == on) {
            continue;
        }
        let at = if on == "chat-server-1" {
            0
        } else {
            rooms.len()
        };
        rooms.insert(at, (room, on));
        senders.insert(at, s);
        listeners.insert(at, l);
        if rooms.len() == 3 {
            break;
        }
    }
    assert_eq!(rooms.len(), 3, "rooms did not reach every chat server");
    assert_eq!(rooms[0].1, "chat-server-1");
    let hit = rooms[0].0.clone();
    let spared: Vec<String> = rooms[1..].iter().map(|(r, _)| r.clone()).collect();

    // Steady load in every room, running before the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<Progress>> = senders.iter().map(|_| Arc::default()).collect();
    let loads: Vec<_> = senders
        .iter()
        .zip(&progress)
        .map(|(u, p)| steady_load(u.client.clone(), stop.clone(), 3000, p.clone()))
        .collect();
    for (p, room) in progress.iter().zip(std::iter::once(&hit).chain(&spared)) {
        p.ok_reaches(10, &format!("room {room} before the kill"))
            .await;
    }

    // kill -9 the chat server of `hit`, then wait (bounded) until the master restarted it.
    signal(victim.pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let l = list(&m).await;
        let r = row(&l, "chat-server-1");
        if r.pid != 0 && r.pid != victim.pid && r.state == "running" {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "chat-server-1 not restarted in 30 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(restarted.restarts >= 1);
    // The restarted server lost the room's members; the connectors re-join them, so the
    // same sender gets through again without entering again.
    let ok_at_restart = progress[0].ok.load(Ordering::SeqCst);
    progress[0]
        .ok_reaches(ok_at_restart + 20, "the hit room after the restart")
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for l in loads {
        results.push(
            timeout(STEP * 4, l)
                .await
                .expect("load ended")
                .expect("load task"),
        );
    }

    // Every request got an answer, none later than the RPC timeout.
    for (room, outcomes) in std::iter::once(&hit).chain(spared.iter()).zip(&results) {
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        assert!(
            slowest <= RPC_TIMEOUT + Duration::from_secs(2),
            "room {room}: a request took {slowest:?}"
        );
        assert!(!outcomes.is_empty());
    }
    // The victim's room saw errors (its members are gone with the process); the other
    // rooms carried on.
    let hit_errors = results[0].iter().filter(|o| !o.ok).count();
    assert!(hit_errors > 0, "no request to the killed server failed");
    for (room, outcomes) in spared.iter().zip(&results[1..]) {
        let errors = outcomes.iter().filter(|o| !o.ok).count();
        eprintln!(
            "room {room}: {} requests, {errors} errors during the kill",
            outcomes.len()
        );
    }
    // Every listener received every message acknowledged in its room, in order (the hit
    // room's listener too: it was re-joined with the sender). A message whose sender got an
    // error may still have been delivered (the server pushed it, then died before replying):
    // such extras are allowed, messages never sent are not.
    for (i, room) in std::iter::once(&hit).chain(&spared).enumerate() {
        let l = &mut listeners[i];
        let acked: Vec<&str> = results[i]
            .iter()
            .filter(|o| o.ok)
            .map(|o| o.text.as_str())
            .collect();
        let sent: std::collections::HashSet<&str> =
            results[i].iter().map(|o| o.text.as_str()).collect();
        let mut got: Vec<String> = Vec::new();
        let mut matched = 0;
        while matched < acked.len() {
            match timeout(STEP, l.chat.recv()).await {
                Ok(Some(p)) => {
                    let msg = p.value().expect("body")["msg"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    assert!(
                        sent.contains(msg.as_str()),
                        "room {room}: listener got {msg:?}, which was never sent"
                    );
                    if msg == acked[matched] {
                        matched += 1;
                    }
                    got.push(msg);
                }
                _ => break,
            }
        }
        assert_eq!(
            matched,
            acked.len(),
            "room {room}: listener missed acknowledged messages (or got them out of order): \
             acknowledged {acked:?}, received {got:?}"
        );
        if i > 0 {
            assert_eq!(
                got.len(),
                acked.len(),
                "room {room}: a spared room delivered unacknowledged messages"
            );
        }
    }

    // Once restarted, the room works again for users who (re-)enter it.
    let mut a = join(&gate, "after-a", &hit).await;
    let b = join(&gate, "after-b", &hit).await;
    let r = timeout(
        STEP,
        b.client
            .request(SEND, &json!({"content": "back", "target": "*"})),
    )
    .await
    .expect("send in time")
    .expect("send");
    assert_eq!(r, json!({}));
    let push = timeout(STEP, a.chat.recv())
        .await
        .expect("push in time")
        .expect("push");
    assert_eq!(push.value().expect("body")["msg"], "back");

    // No frontend crashed.
    let after = list(&m).await;
    assert_eq!(connector_pids(&after), frontends, "a frontend restarted");
    for pid in frontends {
        assert!(alive(pid), "frontend {pid} died");
    }
    eprintln!(
        "kill -9 chat-server-1: {} errors in its room, restarted as pid {} after {} restarts",
        hit_errors, restarted.pid, restarted.restarts
    );
    // Checked last, so everything above is verified even while this fails.
    let spared_errors: usize = results[1..]
        .iter()
        .map(|o| o.iter().filter(|o| !o.ok).count())
        .sum();
    assert_eq!(
        spared_errors, 0,
        "rooms on other chat servers were disturbed"
    );
}

/// Names that the gate places on connector `index` (0-based, sorted by id) with all three up.
fn names_on(prefix: &str, index: usize, count: usize) -> Vec<String> {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|n| shaddock_chat::app::pick_index(n, 3) == Some(index))
        .take(count)
        .collect()
}

/// Waits (bounded by STEP) for the connection's `Disconnected` event.
async fn disconnected(events: &mut Events) -> shaddock_client::DisconnectReason {
    loop {
        match timeout(STEP, events.recv()).await {
            Ok(Some(Event::Disconnected(reason))) => return reason,
            Ok(Some(_)) => {}
            Ok(None) => panic!("events ended without Disconnected"),
            Err(_) => panic!("no Disconnected within {STEP:?}"),
        }
    }
}

/// Whether a `Disconnected` event is already queued (without waiting).
async fn saw_disconnect(events: &mut Events) -> bool {
    for _ in 0..1000 {
        match timeout(Duration::from_millis(1), events.recv()).await {
            Ok(Some(Event::Disconnected(_))) | Ok(None) => return true,
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

/// What a client does after its connector died: ask the gate again, connect, re-enter under
/// the same name; retried (every 100 ms, at most 30 s) while the gate still hands out the dead
/// connector or the cluster has not caught up. Returns the user and the attempts it took.
async fn come_back(gate: &str, name: &str, room: &str) -> (User, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tried = async {
            let entry = timeout(STEP, query_entry(gate, Transport::Tcp, name, &config()))
                .await
                .map_err(|_| "queryEntry timed out".to_owned())?
                .map_err(|e| format!("queryEntry: {e}"))?;
            let (client, events) = timeout(
                STEP,
                Client::connect(&entry.addr(), Transport::Tcp, config()),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect {}: {e}", entry.addr()))?;
            let chat = client.on("onChat");
            let r = timeout(
                STEP,
                client.request(ENTER, &json!({"username": name, "rid": room})),
            )
            .await
            .map_err(|_| "enter timed out".to_owned())?
            .map_err(|e| format!("enter: {e}"))?;
            if !r["users"].is_array() {
                return Err(format!("enter refused: {r}"));
            }
            Ok::<_, String>(User {
                client,
                chat,
                events,
                port: entry.port,
            })
        }
        .await;
        match tried {
            Ok(u) => return (u, attempts),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{name} could not come back in 30 s ({attempts} attempts): {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_connector() {
    let cluster = FaultCluster::start();
    let gate = cluster.gate();
    let m = master(&cluster);
    let before = list(&m).await;
    let victim = row(&before, "connector-server-1").clone();
    assert_ne!(victim.pid, 0);
    let spared_pids: Vec<(String, u32)> = before
        .rows
        .iter()
        .filter(|r| r.id != victim.id)
        .map(|r| (r.id.clone(), r.pid))
        .collect();

    // One room; two users on the victim connector, a sender and a listener on the others.
    let room = "kroom";
    let victims = names_on("v", 0, 2);
    let sender_name = names_on("s", 1, 1).remove(0);
    let listener_name = names_on("l", 2, 1).remove(0);
    let mut gone = Vec::new();
    for n in &victims {
        let u = join(&gate, n, room).await;
        assert_eq!(
            u32::from(u.port),
            victim.client_port,
            "{n} not on the victim"
        );
        gone.push(u);
    }
    let mut sender = join(&gate, &sender_name, room).await;
    let mut listener = join(&gate, &listener_name, room).await;
    assert_ne!(u32::from(sender.port), victim.client_port);
    assert_ne!(u32::from(listener.port), victim.client_port);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        sender.client.clone(),
        stop.clone(),
        3000,
        Arc::new(Progress::default()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(victim.pid, "KILL");
    // Its clients see the disconnect.
    for u in &mut gone {
        let reason = disconnected(&mut u.events).await;
        eprintln!("victim client disconnected: {reason:?}");
    }
    // They come back through the gate under the same names and re-enter the room.
    let mut back = Vec::new();
    for n in &victims {
        let (u, attempts) = come_back(&gate, n, room).await;
        eprintln!("{n} back on port {} after {attempts} attempt(s)", u.port);
        back.push(u);
    }
    // The listener hears a comeback's message.
    let r = timeout(
        STEP,
        back[0]
            .client
            .request(SEND, &json!({"content": "back again", "target": "*"})),
    )
    .await
    .expect("send in time")
    .expect("send");
    assert_eq!(r, json!({}));
    // The master restarts the connector; the gate hands it out again and it serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let l = list(&m).await;
        let r = row(&l, "connector-server-1");
        if r.pid != 0 && r.pid != victim.pid && r.state == "running" {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "connector-server-1 not restarted in 30 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let newcomer_name = names_on("n", 0, 1).remove(0);
    let (newcomer, attempts) = come_back(&gate, &newcomer_name, room).await;
    assert_eq!(
        u32::from(newcomer.port),
        restarted.client_port,
        "the gate did not hand out the restarted connector"
    );
    let r = timeout(
        STEP,
        newcomer.client.request(
            SEND,
            &json!({"content": "via the restarted one", "target": "*"}),
        ),
    )
    .await
    .expect("send in time")
    .expect("send");
    assert_eq!(r, json!({}), "{newcomer_name} after {attempts} attempt(s)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = timeout(STEP * 4, load)
        .await
        .expect("load ended")
        .expect("load task");

    // The sender on another connector was never disturbed: every request answered with {}.
    let errors = outcomes.iter().filter(|o| !o.ok).count();
    assert!(!outcomes.is_empty());
    assert_eq!(errors, 0, "the sender on a healthy connector got errors");
    // The listener got every acknowledged message, and the comeback's.
    let mut from_sender = 0;
    let mut heard_back = false;
    let mut heard_newcomer = false;
    while from_sender < outcomes.len() || !heard_back || !heard_newcomer {
        let p = timeout(STEP, listener.chat.recv())
            .await
            .expect("listener missed pushes")
            .expect("listener's connection ended");
        let v = p.value().expect("push body");
        if v["from"] == sender_name.as_str() {
            from_sender += 1;
        } else if v["msg"] == "back again" {
            heard_back = true;
        } else if v["msg"] == "via the restarted one" {
            heard_newcomer = true;
        }
    }
    assert_eq!(from_sender, outcomes.len());
    // Clients on the other connectors saw no disconnect.
    assert!(
        !saw_disconnect(&mut sender.events).await,
        "sender disconnected"
    );
    assert!(
        !saw_disconnect(&mut listener.events).await,
        "listener disconnected"
    );
    assert!(!sender.client.is_closed() && !listener.client.is_closed());
    // No other server restarted or died.
    let after = list(&m).await;
    for (id, pid) in &spared_pids {
        assert_eq!(row(&after, id).pid, *pid, "{id} restarted");
        assert!(alive(*pid), "{id} ({pid}) died");
    }
    eprintln!(
        "kill -9 connector-server-1: sender {} requests, 0 errors; connector-server-1 now pid {} ({} restarts, {})",
        outcomes.len(),
        restarted.pid,
        restarted.restarts,
        restarted.state
    );
}

impl FaultCluster {
    /// Waits (bounded) for the launcher to exit by itself; its status.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// What became of one request while the cluster was stopping.
#[derive(Debug)]
enum Sent {
    /// Answered `{}`: the message was acknowledged.
    Acked(String),
    /// Answered with an error response.
    Refused,
    /// The connection ended before an answer (the request was not acknowledged).
    Closed,
}

/// Sends room messages `tag-i` every 10 ms until the connection ends (at most `max`, at most
/// 60 s); no request may go unanswered past STEP.
fn load_until_closed(
    client: Client,
    tag: String,
    max: usize,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..max {
            if Instant::now() > deadline {
                break;
            }
            let content = format!("{tag}-{i}");
            let r = timeout(
                STEP,
                client.request(SEND, &json!({"content": content, "target": "*"})),
            )
            .await
            .expect("a request hung past 15 s while stopping");
            match r {
                Ok(v) if v == json!({}) => out.push(Sent::Acked(content)),
                Ok(_) => out.push(Sent::Refused),
                Err(_) => {
                    out.push(Sent::Closed);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out
    })
}

/// Collects the `msg` of every `onChat` until the connection ends (at most 60 s).
fn collect_until_closed(mut chat: PushStream) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match timeout(STEP, chat.recv()).await {
                Ok(Some(p)) => {
                    if let Some(m) = p
                        .value()
                        .ok()
                        .and_then(|v| v["msg"].as_str().map(str::to_owned))
                    {
                        got.push(m);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_answers_everything_and_loses_nothing() {
    let mut cluster = FaultCluster::start();
    let gate = cluster.gate();
    let m = master(&cluster);
    let pids: Vec<u32> = list(&m).await.rows.iter().map(|r| r.pid).collect();

    // Three rooms, one per chat server; each room's sender and listener on one connector
    // (room k on connector k), so each connector drains a whole conversation.
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    let mut rooms = Vec::new();
    for k in 0..3 {
        let room = rooms_on(k, 1).remove(0);
        let names = names_on(&format!("g{k}-"), k, 2);
        let s = join(&gate, &names[0], &room).await;
        let l = join(&gate, &names[1], &room).await;
        assert_eq!(
            s.port, l.port,
            "room {room}: sender and listener on one connector"
        );
        senders.push(load_until_closed(s.client.clone(), room.clone(), 5000));
        listeners.push((collect_until_closed(l.chat), l.client, s.client));
        rooms.push(room);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // `shaddock-chat stop` through the binary, as an operator would.
    let dir = cluster.dir.clone();
    let master_addr = cluster.info["master"].as_str().expect("master").to_owned();
    let stop = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_shaddock-chat"))
            .arg("--config")
            .arg(&dir)
            .args(["--master", &master_addr, "stop"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
    });
    let out = timeout(Duration::from_secs(90), stop)
        .await
        .expect("stop returned in time")
        .expect("stop task")
        .expect("run stop");
    assert!(out.status.success(), "stop failed: {out:?}");

    let mut totals = (0, 0, 0);
    for ((load, (collect, _l, _s)), room) in senders.into_iter().zip(listeners).zip(&rooms) {
        let sent = timeout(STEP * 5, load)
            .await
            .expect("sender ended")
            .expect("sender task");
        let got = timeout(STEP * 5, collect)
            .await
            .expect("listener ended")
            .expect("listener task");
        let acked: Vec<&String> = sent
            .iter()
            .filter_map(|s| match s {
                Sent::Acked(c) => Some(c),
                _ => None,
            })
            .collect();
        let refused = sent.iter().filter(|s| matches!(s, Sent::Refused)).count();
        let closed = sent.iter().filter(|s| matches!(s, Sent::Closed)).count();
        assert!(!acked.is_empty(), "room {room}: nothing acknowledged");
        let got: std::collections::HashSet<&String> = got.iter().collect();
        let lost: Vec<&&String> = acked.iter().filter(|c| !got.contains(**c)).collect();
        assert!(
            lost.is_empty(),
            "room {room}: {} acknowledged messages never reached the listener: {lost:?}",
            lost.len()
        );
        eprintln!(
            "room {room}: {} acknowledged (all delivered), {refused} refused, {closed} ended by the close",
            acked.len()
        );
        totals.0 += acked.len();
        totals.1 += refused;
        totals.2 += closed;
    }
    // The whole cluster is gone: the launcher exits by itself, every server process ended.
    let status = cluster.wait_exit(Duration::from_secs(60));
    assert!(status.is_some(), "the launcher did not exit after stop");
    for pid in pids {
        assert!(!alive(pid), "server {pid} still running after stop");
    }
    eprintln!(
        "graceful stop: {} acknowledged and delivered, {} refused, {} ended by the close, 0 lost",
        totals.0, totals.1, totals.2
    );
}

/// A TCP stream whose reads stop for good once `paused` is set (a client that stops reading:
/// the kernel buffers fill, then the connector's queue for it).
struct StopsReading {
    inner: tokio::net::TcpStream,
    paused: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for StopsReading {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::SeqCst) {
            // Never woken: this reader is done for good.
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StopsReading {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// VmRSS of a process, in bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    shaddock_server::procfs::rss_bytes(pid).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_kicked_and_the_room_keeps_receiving() {
    const PUSHES: usize = 10_000;
    const SENDERS: usize = 4;
    const IN_FLIGHT: usize = 10; // divides PUSHES / SENDERS
    let cluster = FaultCluster::start();
    let gate = cluster.gate();
    let m = master(&cluster);
    let room = rooms_on(1, 1).remove(0);

    // The slow one: enters normally, then never reads again (4 KiB receive buffer).
    let slow_name = names_on("slow", 0, 1).remove(0);
    let entry = timeout(
        STEP,
        query_entry(&gate, Transport::Tcp, &slow_name, &config()),
    )
    .await
    .expect("queryEntry in time")
    .expect("queryEntry");
    let l = list(&m).await;
    let conn_row = l
        .rows
        .iter()
        .find(|r| r.client_port == u32::from(entry.port))
        .expect("the slow one's connector")
        .clone();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = timeout(
        STEP,
        socket.connect(entry.addr().parse().expect("socket addr")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let paused = Arc::new(AtomicBool::new(false));
    let io = StopsReading {
        inner: stream,
        paused: paused.clone(),
    };
    let (slow, _slow_events) = timeout(
        STEP,
        Client::connect_io(io, Transport::Tcp, &entry.addr(), config()),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let r = timeout(
        STEP,
        slow.request(ENTER, &json!({"username": slow_name, "rid": room})),
    )
    .await
    .expect("enter in time")
    .expect("enter");
    assert!(r["users"].is_array(), "{r}");
    paused.store(true, Ordering::SeqCst);

    // Two listeners that read everything, and the senders.
    let mut big = config();
    big.push_capacity = PUSHES + 1000;
    let mut listeners = Vec::new();
    let mut leaves = Vec::new();
    for k in 0..2 {
        let name = format!("listener{k}");
        let entry = timeout(STEP, query_entry(&gate, Transport::Tcp, &name, &big))
            .await
            .expect("queryEntry in time")
            .expect("queryEntry");
        let (c, _ev) = timeout(
            STEP,
            Client::connect(&entry.addr(), Transport::Tcp, big.clone()),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let chat = c.on("onChat");
        leaves.push(c.on("onLeave"));
        let r = timeout(
            STEP,
            c.request(ENTER, &json!({"username": name, "rid": room})),
        )
        .await
        .expect("enter in time")
        .expect("enter");
        assert!(r["users"].is_array(), "{r}");
        listeners.push((collect_until_closed(chat), c));
    }
    let mut senders = Vec::new();
    for k in 0..SENDERS {
        senders.push(join(&gate, &format!("sender{k}"), &room).await);
    }
    let rss_before = rss(conn_row.pid);
    assert!(rss_before > 0, "no VmRSS for {}", conn_row.pid);

    // RSS sampled while the pushes go out.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = conn_row.pid;
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..1200 {
                peak = peak.max(rss(pid));
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let body = "x".repeat(500);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, s) in senders.iter().enumerate() {
        let client = s.client.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let mut acked = 0;
            let per = PUSHES / SENDERS;
            for chunk in 0..per / IN_FLIGHT {
                let mut batch = tokio::task::JoinSet::new();
                for j in 0..IN_FLIGHT {
                    let client = client.clone();
                    let content = format!("{k}-{}-{body}", chunk * IN_FLIGHT + j);
                    batch.spawn(async move {
                        timeout(
                            STEP,
                            client.request(SEND, &json!({"content": content, "target": "*"})),
                        )
                        .await
                    });
                }
                while let Some(r) = batch.join_next().await {
                    let r = r.expect("request task").expect("a send hung past 15 s");
                    assert_eq!(r.expect("send"), json!({}), "a send was refused");
                    acked += 1;
                }
            }
            acked
        });
    }
    let mut acked = 0;
    while let Some(r) = timeout(Duration::from_secs(120), tasks.join_next())
        .await
        .expect("senders finished in 120 s")
    {
        acked += r.expect("sender task");
    }
    assert_eq!(acked, PUSHES);
    let sent_at = Instant::now();

    // The slow one was kicked: the room heard it leave (the connector closed its session).
    let mut left = false;
    for leave in &mut leaves {
        while let Ok(Some(p)) = timeout(STEP, leave.recv()).await {
            if p.value().expect("onLeave body")["user"] == slow_name.as_str() {
                left = true;
                break;
            }
        }
    }
    assert!(left, "the slow consumer was never kicked");
    let kicked_after = sent_at.elapsed();
    let log = std::fs::read_to_string(cluster.dir.join("cluster.log")).unwrap_or_default();
    let reason = log
        .lines()
        .find(|l| l.contains("queue full") || l.contains("write timed out"))
        .unwrap_or("(no kick line in the log)")
        .to_owned();
    done.store(true, Ordering::Relaxed);
    let peak = timeout(STEP * 5, sampler)
        .await
        .expect("sampler")
        .expect("sampler task");
    // The others received every push (their collectors end when their connections do).
    for (collect, c) in listeners {
        c.close().await;
        let got = timeout(STEP * 5, collect)
            .await
            .expect("listener")
            .expect("listener task");
        assert_eq!(got.len(), PUSHES, "a listener missed pushes");
    }
    // The kick came from the queue bound (1,024 packages, about 0.6 MB of these pushes), not
    // from a write timeout, and the connector held about that much: an unbounded queue would
    // have kept all 10,000 pushes (about 5.5 MB) for the slow one.
    assert!(
        reason.contains("queue full"),
        "the slow consumer was not kicked by the queue bound: {reason}"
    );
    let growth = peak.saturating_sub(rss_before);
    assert!(
        growth < 3 << 20,
        "connector {} RSS grew by {} KiB while one client did not read: more than its queue bound",
        conn_row.id,
        growth >> 10
    );
    let after = list(&m).await;
    assert_eq!(
        row(&after, &conn_row.id).pid,
        conn_row.pid,
        "the connector restarted"
    );
    assert!(alive(conn_row.pid));
    drop(slow);
    eprintln!(
        "slow consumer on {}: kicked ({kicked_after:?} after the last ack): {reason}; {PUSHES} pushes acknowledged, every listener got all; connector RSS {} MiB before, peak {} MiB (+{} KiB)",
        conn_row.id,
        rss_before >> 20,
        peak >> 20,
        growth >> 10
    );
}
