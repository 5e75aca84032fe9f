//! The chat across hosts (issue 15): 3 hosts as network namespaces of the test's own
//! (test-support `Hosts`: veth + bridge, private addresses, torn down at the end), one
//! JetStream nats-server per host clustered together, and one `shaddock-chat --host-id hN`
//! launcher per host running that host's servers: the gate on h0, one connector and one chat
//! server on each host. Users on the three hosts' connectors share rooms under a steady,
//! bounded chat load.
//!
//! Scenario: every process of h2 is killed (its NATS node too). The users of h0 and h1 keep
//! chatting without a disconnect (rooms on survivors see no error at all), h2's rooms come
//! back on survivors with their members (the listeners hear every acknowledged message), and
//! h2's users come back in through the gate. The time it took to heal is printed, not
//! asserted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{STEP, tmp_dir};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, Event, PushStream, Transport, query_entry};
use shaddock_server::cluster::{ClusterBackend, ClusterConfig, NatsBackend};
use shaddock_test_support::nats::NatsCluster;
use shaddock_test_support::netns::Hosts;
use tokio::time::timeout;

const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";
const HOSTS: usize = 3;

/// Starts host `i`'s launcher inside its namespace and waits for its ready line.
fn launch(hosts: &Hosts, i: usize, dir: &std::path::Path, secret: &str) -> Value {
    let log = dir.join(format!("launcher-h{i}.log"));
    let mut cmd = hosts.command(i, env!("CARGO_BIN_EXE_shaddock-chat"));
    cmd.arg("--config")
        .arg(dir)
        .arg("--host-id")
        .arg(format!("h{i}"))
        .arg("--page-port")
        .arg("0")
        .arg("--admin-port")
        .arg("0")
        .env(
            "RUST_LOG",
            std::env::var("CHAT_TEST_RUST_LOG").unwrap_or("info".into()),
        )
        .env("SHADDOCK_RPC_SECRET", secret)
        .env_remove("SHADDOCK_ENV")
        .env_remove("SHADDOCK_CHAT_PAGE_PORT")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let pid = hosts.spawn(i, cmd).expect("spawn a launcher");
    let mut child = hosts.take_child(pid).expect("the launcher");
    let out = child.stdout.take().expect("stdout");
    // Given back to the hosts' teardown (which kills it with its namespace).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("SHADDOCK_CHAT_READY ") {
                let _ = tx.send(json.to_owned());
            }
        }
        let _ = child.wait();
    });
    match rx.recv_timeout(common::START_TIMEOUT) {
        Ok(json) => serde_json::from_str(&json).expect("ready JSON"),
        Err(_) => panic!(
            "launcher h{i} not ready; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    }
}

fn client_config() -> ClientConfig {
    ClientConfig::default().with_request_timeout(STEP)
}

struct User {
    name: String,
    client: Client,
    chat: PushStream,
    /// Set when the connection drops.
    dropped: Arc<AtomicBool>,
}

/// [`enter`], tried again (bounded) while the room still holds the name for a member of a
/// frontend that its chat server has not judged lost yet.
async fn enter_again(addr: &str, name: &str, room: &str, within: Duration) -> User {
    let deadline = Instant::now() + within;
    loop {
        match try_enter(addr, name, room).await {
            Ok(u) => return u,
            Err(r) if Instant::now() < deadline => {
                let _ = r;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(r) => panic!("enter {name} in {room} again: {r}"),
        }
    }
}

async fn enter(addr: &str, name: &str, room: &str) -> User {
    match try_enter(addr, name, room).await {
        Ok(u) => u,
        Err(r) => panic!("enter {name} in {room}: {r}"),
    }
}

async fn try_enter(addr: &str, name: &str, room: &str) -> Result<User, Value> {
    let (client, mut events) =
        timeout(STEP, Client::connect(addr, Transport::Tcp, client_config()))
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
    if !r["users"].is_array() {
        return Err(r);
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::Disconnected(_) | Event::ConnectionLost { .. }) {
                flag.store(true, Ordering::SeqCst);
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    Ok(User {
        name: name.to_owned(),
        client,
        chat,
        dropped,
    })
}

/// Sends from `client` every 50 ms until `stop` (at most 2,000); acknowledged texts in order.
fn steady_load(
    client: Client,
    tag: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..2000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let text = format!("{tag}-{i}");
            match timeout(
                STEP,
                client.request(SEND, &json!({"content": text, "target": "*"})),
            )
            .await
            {
                Ok(Ok(r)) if r == json!({}) => {
                    ok.fetch_add(1, Ordering::SeqCst);
                    acked.push(text);
                }
                _ => {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked
    })
}

async fn reaches(count: &AtomicUsize, at_least: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} in {within:?}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every onChat text `u` has received until `want` of them or a quiet STEP.
async fn heard(u: &mut User, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        match timeout(STEP, u.chat.recv()).await {
            Ok(Some(p)) => got.push(
                p.value().expect("body")["msg"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => break,
        }
    }
    got
}

struct Room {
    name: String,
    on: String,
    talker: User,
    listeners: Vec<User>,
    ok: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
    load: Option<tokio::task::JoinHandle<Vec<String>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_one_killed_its_rooms_and_users_come_back_on_the_others() {
    let hosts = Hosts::create(HOSTS).expect("3 hosts (needs root and iproute2)");
    let nats = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    let app = format!("multihost{}", std::process::id());
    let dir = tmp_dir();
    let addr = |i: usize| hosts.host(i).addr.to_string();
    let per_host = |kind: &str, frontend: bool| -> Vec<Value> {
        (0..HOSTS)
            .map(|i| {
                let mut v = json!({"id": format!("{kind}-server-{}", i + 1), "host": addr(i),
                    "hostId": format!("h{i}"), "port": 0});
                if frontend {
                    v["clientPort"] = json!(0);
                    v["frontend"] = json!(true);
                } else {
                    v["restart"] = json!(false);
                }
                v
            })
            .collect()
    };
    let servers = json!({"development": {
        "gate": [{"id": "gate-server-1", "host": addr(0), "hostId": "h0", "clientPort": 0, "frontend": true}],
        "connector": per_host("connector", true),
        "chat": per_host("chat", false),
    }});
    let master = json!({"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 0,
        "cluster": {"nats": nats.urls(), "app": app}}});
    std::fs::write(dir.join("servers.json"), servers.to_string()).unwrap();
    std::fs::write(dir.join("master.json"), master.to_string()).unwrap();
    std::fs::write(
        dir.join("page.json"),
        json!({"development": {"host": "127.0.0.1", "port": 0}}).to_string(),
    )
    .unwrap();
    let secret = shaddock_rpc::ClusterSecret::generate()
        .expect("secret")
        .to_hex();
    let infos: Vec<Value> = (0..HOSTS)
        .map(|i| launch(&hosts, i, &dir, &secret))
        .collect();
    let gate = infos[0]["gate"]
        .as_str()
        .expect("the gate on h0")
        .to_owned();
    let connector = |i: usize| {
        infos[i]["connectors"][0]
            .as_str()
            .expect("a connector on each host")
            .to_owned()
    };
    let view = NatsBackend::connect(&ClusterConfig::new(nats.urls(), &app), "test")
        .await
        .expect("the test's backend");
    let deadline = Instant::now() + Duration::from_secs(20);
    while view.servers().len() < 1 + 2 * HOSTS {
        assert!(Instant::now() < deadline, "registry: {:?}", view.servers());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rooms until every chat server holds one (at most 30 tried): a talker on h0's
    // connector, a listener on each host's.
    let mut rooms: Vec<Room> = Vec::new();
    for n in 0..30 {
        let name = format!("r{n}");
        let talker = enter(&connector(0), &format!("t-{name}"), &name).await;
        let mut listeners = Vec::new();
        for i in 0..HOSTS {
            listeners.push(enter(&connector(i), &format!("l{i}-{name}"), &name).await);
        }
        let on = view
            .placement("chat", name.as_bytes())
            .await
            .expect("placement")
            .expect("placed");
        if rooms.iter().any(|r| r.on == on) {
            continue;
        }
        rooms.push(Room {
            name,
            on,
            talker,
            listeners,
            ok: Arc::default(),
            errors: Arc::default(),
            load: None,
        });
        if rooms.len() == HOSTS {
            break;
        }
    }
    assert_eq!(rooms.len(), HOSTS, "rooms did not reach every chat server");
    let stop = Arc::new(AtomicBool::new(false));
    for r in &mut rooms {
        r.load = Some(steady_load(
            r.talker.client.clone(),
            r.name.clone(),
            stop.clone(),
            r.ok.clone(),
            r.errors.clone(),
        ));
    }
    for r in &rooms {
        reaches(
            &r.ok,
            10,
            Duration::from_secs(30),
            &format!("{} before the kill", r.name),
        )
        .await;
    }

    // h2 dies: every process of it, its NATS node included.
    let victim_chat = "chat-server-3";
    let hit = rooms
        .iter()
        .position(|r| r.on == victim_chat)
        .expect("a room on h2's chat server");
    let killed_at = Instant::now();
    let killed = hosts.kill_host(2);
    assert!(killed >= 3, "h2's processes killed: {killed}");
    reaches(
        &rooms[hit].errors,
        1,
        Duration::from_secs(30),
        "errors in h2's room",
    )
    .await;
    let ok_at_error = rooms[hit].ok.load(Ordering::SeqCst);
    reaches(
        &rooms[hit].ok,
        ok_at_error + 1,
        Duration::from_secs(60),
        "h2's room served again",
    )
    .await;
    let healed = killed_at.elapsed();
    // h2's users come back in through the gate, to a connector of a live host.
    let back_at = Instant::now();
    let mut returned = Vec::new();
    for r in &rooms {
        let name = format!("l2-{}", r.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        let entry = loop {
            let e = timeout(
                STEP,
                query_entry(&gate, Transport::Tcp, &name, &client_config()),
            )
            .await
            .expect("queryEntry in time")
            .expect("queryEntry");
            if e.addr() != connector(2) || Instant::now() > deadline {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_ne!(
            entry.addr(),
            connector(2),
            "the gate still sends users to dead h2"
        );
        returned.push(enter_again(&entry.addr(), &name, &r.name, Duration::from_secs(15)).await);
    }
    let users_back = back_at.elapsed();
    for r in &rooms {
        reaches(
            &r.ok,
            r.ok.load(Ordering::SeqCst) + 20,
            Duration::from_secs(45),
            &format!("{} after", r.name),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);

    let now_on = view
        .placement("chat", rooms[hit].name.as_bytes())
        .await
        .expect("placement")
        .expect("placed");
    assert_ne!(now_on, victim_chat, "h2's room moved to a survivor");
    for (i, r) in rooms.iter_mut().enumerate() {
        let acked = timeout(STEP * 4, r.load.take().expect("load"))
            .await
            .expect("load ended")
            .expect("load");
        let errors = r.errors.load(Ordering::SeqCst);
        assert!(
            !r.talker.dropped.load(Ordering::SeqCst),
            "{}'s talker (h0) disconnected",
            r.name
        );
        if i != hit {
            assert_eq!(errors, 0, "room {} on {} was disturbed", r.name, r.on);
        }
        // The listeners of h0 and h1 stayed and heard every acknowledged message.
        for l in r.listeners.iter_mut().take(2) {
            assert!(!l.dropped.load(Ordering::SeqCst), "{} disconnected", l.name);
            let got = heard(l, acked.len()).await;
            let missing: Vec<&String> = acked.iter().filter(|m| !got.contains(m)).collect();
            assert!(
                missing.is_empty(),
                "{} ({}) missed acknowledged messages: {missing:?}",
                l.name,
                r.name
            );
        }
        eprintln!(
            "room {} on {}: {} acked, {errors} errors",
            r.name,
            r.on,
            acked.len()
        );
    }
    // h2's returning users hear their rooms again.
    for u in &mut returned {
        assert!(
            !heard(u, 1).await.is_empty(),
            "{} hears its room again",
            u.name
        );
    }
    eprintln!(
        "host h2 killed: its room {} back on {now_on} after {healed:?}; its users back through \
         the gate {users_back:?} after that",
        rooms[hit].name
    );
    drop(rooms);
    drop(returned);
    drop(view);
    drop(nats);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}
