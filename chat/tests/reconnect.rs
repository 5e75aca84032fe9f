//! The client SDK's reconnect against the real chat cluster (launcher → master → gate,
//! 3 connectors, 3 chat servers), with the Rust client and its `ReconnectPolicy`:
//! - `kill -9` of the connector serving a client (its pid from the master's `list`): the
//!   client comes back through the gate to a live connector, its hook re-enters the room,
//!   and it both sends and receives chat again; its events came in order;
//! - a network that goes silent under a client (a TCP proxy in the test stops forwarding,
//!   no server dies): the client's heartbeat timeout notices, and it reconnects the same way.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, STEP, alive, signal};
use serde_json::{Value, json};
use shaddock_client::{
    Client, ClientConfig, DisconnectReason, Error, Event, Events, PushStream, ReconnectPolicy,
    Transport, connect_via_gate, query_entry,
};
use shaddock_rpc::Target;
use shaddock_server::proto::ListReply;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";
/// How long a client may take to come back (the gate may still name the dead connector, the
/// cluster may still hold the user's old session or room member for a while).
const COME_BACK: Duration = Duration::from_secs(60);

/// Names the gate places on connector `index` (0-based, by id) while all three are up.
fn names_on(prefix: &str, index: usize, count: usize) -> Vec<String> {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|n| shaddock_chat::app::pick_index(n, 3) == Some(index))
        .take(count)
        .collect()
}

fn config() -> ClientConfig {
    ClientConfig::default().with_request_timeout(STEP)
}

/// Enter `room` as `name`; an error (the server's refusal included) fails a reconnect attempt.
async fn enter(client: &Client, name: &str, room: &str) -> Result<Value, Error> {
    let reply = client
        .request(ENTER, &json!({"username": name, "rid": room}))
        .await?;
    if reply["users"].is_array() {
        Ok(reply["users"].clone())
    } else {
        Err(Error::hook(format!(
            "enter {name} in {room} refused: {reply}"
        )))
    }
}

/// A policy whose hook re-enters `room` as `name` and records each run's connector.
fn reentering(name: &str, room: &str, entered: Arc<Mutex<Vec<String>>>) -> ReconnectPolicy {
    let (name, room) = (name.to_owned(), room.to_owned());
    ReconnectPolicy::default()
        .with_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .with_max_attempts(None)
        .with_max_elapsed(Some(COME_BACK))
        .on_reconnect(move |client: Client| {
            let (name, room, entered) = (name.clone(), room.clone(), entered.clone());
            async move {
                enter(&client, &name, &room).await?;
                entered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client.peer());
                Ok(())
            }
        })
}

struct User {
    name: String,
    client: Client,
    chat: PushStream,
    events: Events,
}

async fn join(gate: &str, name: &str, room: &str, config: ClientConfig) -> User {
    let (client, events, _entry) =
        timeout(STEP, connect_via_gate(gate, Transport::Tcp, name, config))
            .await
            .expect("connect in time")
            .expect("connect via the gate");
    let chat = client.on("onChat");
    timeout(STEP, enter(&client, name, room))
        .await
        .expect("enter in time")
        .expect("enter");
    User {
        name: name.to_owned(),
        client,
        chat,
        events,
    }
}

async fn send(from: &User, content: &str, target: &str) {
    let r = timeout(
        STEP,
        from.client
            .request(SEND, &json!({"content": content, "target": target})),
    )
    .await
    .expect("send in time")
    .unwrap_or_else(|e| panic!("{} sends {content:?}: {e}", from.name));
    assert_eq!(r, json!({}), "{} sends {content:?}", from.name);
}

/// Waits (bounded by STEP) for the onChat push saying `msg`; earlier ones are skipped.
async fn hears(user: &mut User, msg: &str) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let push = timeout(deadline - Instant::now(), user.chat.recv())
            .await
            .unwrap_or_else(|_| panic!("{} did not hear {msg:?}", user.name))
            .unwrap_or_else(|| panic!("{}'s pushes ended", user.name));
        let v = push.value().expect("onChat body");
        if v["msg"] == msg {
            return v;
        }
    }
}

/// The events from the loss to `Reconnected`, checked to come in order: `ConnectionLost`,
/// then attempts 1, 2, … each followed by its failure, the last one by `Reconnected`.
/// Returns the lost reason, the events as text and the new peer.
async fn comes_back(
    events: &mut Events,
    also_allowed: fn(&Event) -> bool,
) -> (DisconnectReason, Vec<String>, String) {
    let deadline = Instant::now() + COME_BACK + STEP;
    let mut seen = Vec::new();
    let mut lost = None;
    let mut attempt = 0;
    let mut in_attempt = false;
    loop {
        let event = timeout(deadline - Instant::now(), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no reconnect in time; events so far: {seen:?}"))
            .unwrap_or_else(|| panic!("events ended; so far: {seen:?}"));
        seen.push(format!("{event:?}"));
        match event {
            Event::ConnectionLost { reason } => {
                assert!(lost.is_none() && attempt == 0, "lost twice: {seen:?}");
                lost = Some(reason);
            }
            Event::ReconnectAttempt { attempt: n, .. } => {
                assert!(lost.is_some() && !in_attempt, "out of order: {seen:?}");
                assert_eq!(n, attempt + 1, "attempts numbered in order: {seen:?}");
                attempt = n;
                in_attempt = true;
            }
            Event::ReconnectFailed { attempt: n, .. } => {
                assert!(in_attempt && n == attempt, "out of order: {seen:?}");
                in_attempt = false;
            }
            Event::Reconnected { attempt: n, peer } => {
                assert!(in_attempt && n == attempt, "out of order: {seen:?}");
                return (lost.expect("lost first"), seen, peer);
            }
            ref other if also_allowed(other) => {}
            other => panic!("unexpected event {other:?}; so far: {seen:?}"),
        }
    }
}

async fn list(cluster: &Cluster) -> ListReply {
    let m = common::master_at(&cluster.master_addr());
    timeout(STEP, m.list(Target::server("master"), ()))
        .await
        .expect("list in time")
        .expect("list")
}

fn port_of(addr: &str) -> u32 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_comes_back_through_the_gate_after_kill_9_of_its_connector() {
    let cluster = Cluster::start();
    let gate = cluster.gate();
    let room = "comeback";
    let alice_name = names_on("alice", 0, 1).remove(0);
    let bob_name = names_on("bob", 1, 1).remove(0);
    let entered = Arc::new(Mutex::new(Vec::new()));
    let policy = reentering(&alice_name, room, entered.clone());
    let mut alice = join(&gate, &alice_name, room, config().with_reconnect(policy)).await;
    let mut bob = join(&gate, &bob_name, room, config()).await;
    let dead = alice.client.peer();
    assert_ne!(dead, bob.client.peer(), "alice and bob on one connector");
    send(&alice, "before", "*").await;
    hears(&mut bob, "before").await;

    // The connector serving alice, by its client port in the master's list.
    let before = list(&cluster).await;
    let victim = before
        .rows
        .iter()
        .find(|r| r.server_type == "connector" && r.client_port == port_of(&dead))
        .unwrap_or_else(|| panic!("no connector with client port {dead}: {before:?}"))
        .clone();
    assert!(victim.pid != 0 && alive(victim.pid));
    signal(victim.pid, "KILL");

    let (lost, seen, peer) = comes_back(&mut alice.events, |_| false).await;
    eprintln!(
        "alice after kill -9 of {} ({}): {seen:#?}",
        victim.id, victim.pid
    );
    assert!(
        matches!(
            lost,
            DisconnectReason::ServerClosed | DisconnectReason::Io { .. }
        ),
        "{lost:?}"
    );
    assert_ne!(peer, dead, "came back to the dead connector's address");
    assert_eq!(alice.client.peer(), peer);
    assert_eq!(
        *entered.lock().unwrap(),
        [peer.as_str()],
        "the hook re-entered once, on the new connector"
    );
    // Alice sends and receives again (on the subscription made before the kill), to the
    // room and privately.
    send(&alice, "back again", "*").await;
    assert_eq!(
        hears(&mut bob, "back again").await["from"],
        alice_name.as_str()
    );
    send(&bob, "welcome back", "*").await;
    assert_eq!(
        hears(&mut alice, "welcome back").await["from"],
        bob_name.as_str()
    );
    send(&bob, "just you", &alice_name).await;
    assert_eq!(
        hears(&mut alice, "just you").await["target"],
        alice_name.as_str()
    );
    assert!(!alice.client.is_closed() && !bob.client.is_closed());
    alice.client.close().await;
    bob.client.close().await;
}

/// A TCP proxy that can go silent: after [`Proxy::stall`], the connections made before it
/// forward nothing more either way but stay open (a dropped network, not a closed socket);
/// connections made after it forward again. Each connection goes to the `upstream` of the
/// moment it was accepted. Its tasks end when it is dropped.
struct Proxy {
    addr: String,
    upstream: Arc<Mutex<String>>,
    stalls: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let upstream = Arc::new(Mutex::new(String::new()));
        let (stalls, _) = watch::channel(0u64);
        let accept = {
            let (upstream, stalls) = (upstream.clone(), stalls.clone());
            tokio::spawn(async move {
                let mut pairs = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let to = upstream.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let stall = stalls.subscribe();
                    pairs.spawn(pump(client, to, stall));
                }
            })
        };
        Self {
            addr,
            upstream,
            stalls,
            accept,
        }
    }

    fn set_upstream(&self, to: &str) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = to.to_owned();
    }

    fn stall(&self) {
        self.stalls.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts every pair.
        self.accept.abort();
    }
}

/// Forward between `client` and `to` until either side ends or the proxy stalls; after a
/// stall, hold both sockets open, forwarding nothing, until aborted.
async fn pump(mut client: TcpStream, to: String, mut stall: watch::Receiver<u64>) {
    let stalled_at = *stall.borrow_and_update();
    let Ok(mut server) = TcpStream::connect(&to).await else {
        let _ = client.shutdown().await;
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let forward = async {
        tokio::select! {
            _ = tokio::io::copy(&mut cr, &mut sw) => {}
            _ = tokio::io::copy(&mut sr, &mut cw) => {}
        }
    };
    let stalled = async {
        let _ = stall.wait_for(|n| *n > stalled_at).await.is_ok();
    };
    tokio::select! {
        () = forward => {}
        () = stalled => std::future::pending::<()>().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_makes_the_client_reconnect() {
    // Heartbeats every second on the connectors: the client's heartbeat timeout (2 s) then
    // notices a silent network quickly.
    let cluster = Cluster::start_with(&|servers, _master| {
        for c in servers["connector"].as_array_mut().expect("connectors") {
            c["heartbeat"] = json!(1);
        }
    });
    let gate = cluster.gate();
    let room = "silence";
    let alice_name = names_on("carol", 0, 1).remove(0);
    let bob_name = names_on("dave", 1, 1).remove(0);
    let proxy = Arc::new(Proxy::start().await);
    // Alice reaches her connector through the proxy: the resolver asks the gate and points
    // the proxy there.
    let entry = timeout(
        STEP,
        query_entry(&gate, Transport::Tcp, &alice_name, &config()),
    )
    .await
    .expect("queryEntry in time")
    .expect("queryEntry");
    proxy.set_upstream(&entry.addr());
    let entered = Arc::new(Mutex::new(Vec::new()));
    let policy = {
        let (gate, name, proxy) = (gate.clone(), alice_name.clone(), proxy.clone());
        reentering(&alice_name, room, entered.clone()).resolve_with(move |_attempt| {
            let (gate, name, proxy) = (gate.clone(), name.clone(), proxy.clone());
            async move {
                let entry = query_entry(&gate, Transport::Tcp, &name, &config()).await?;
                proxy.set_upstream(&entry.addr());
                Ok(proxy.addr.clone())
            }
        })
    };
    let (client, events) = timeout(
        STEP,
        Client::connect(&proxy.addr, Transport::Tcp, config().with_reconnect(policy)),
    )
    .await
    .expect("connect in time")
    .expect("connect through the proxy");
    assert_eq!(client.heartbeat_interval(), Some(Duration::from_secs(1)));
    let chat = client.on("onChat");
    enter(&client, &alice_name, room).await.expect("enter");
    let mut alice = User {
        name: alice_name.clone(),
        client,
        chat,
        events,
    };
    let mut bob = join(&gate, &bob_name, room, config()).await;
    send(&alice, "through the proxy", "*").await;
    hears(&mut bob, "through the proxy").await;
    let before = list(&cluster).await;

    proxy.stall();
    let (lost, seen, peer) = comes_back(&mut alice.events, |e| {
        matches!(e, Event::HeartbeatTimeout { .. })
    })
    .await;
    eprintln!("alice after the network went silent: {seen:#?}");
    assert!(
        matches!(lost, DisconnectReason::HeartbeatTimeout { .. }),
        "{lost:?}"
    );
    assert!(
        seen[0].starts_with("HeartbeatTimeout"),
        "the heartbeat timeout came first: {seen:?}"
    );
    assert_eq!(peer, proxy.addr);
    assert_eq!(entered.lock().unwrap().len(), 1, "the hook re-entered once");
    send(&alice, "after the silence", "*").await;
    assert_eq!(
        hears(&mut bob, "after the silence").await["from"],
        alice_name.as_str()
    );
    send(&bob, "heard you", "*").await;
    hears(&mut alice, "heard you").await;
    // No server died or restarted: it was the network.
    let after = list(&cluster).await;
    for r in &before.rows {
        let now = after
            .rows
            .iter()
            .find(|a| a.id == r.id)
            .expect("server listed");
        assert_eq!(now.pid, r.pid, "{} restarted", r.id);
    }
    alice.client.close().await;
    bob.client.close().await;
}
