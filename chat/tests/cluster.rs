//! The chat cluster end to end: the real binary (launcher, master, gate, 3 connectors, 3 chat
//! servers, page) on port-0 config, driven with the Rust client over TCP and WebSocket.

mod common;

use std::time::Duration;

use common::{Cluster, STEP, alive};
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, PushStream, Transport, query_entry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const ENTER: &str = "connector.entryHandler.enter";
const SEND: &str = "chat.chatHandler.send";
const QUERY: &str = "gate.gateHandler.queryEntry";

fn config() -> ClientConfig {
    ClientConfig::default().with_request_timeout(STEP)
}

/// A user: its connection and its push streams.
struct User {
    name: String,
    port: u16,
    client: Client,
    chat: PushStream,
    add: PushStream,
    leave: PushStream,
}

async fn connect(gate: &str, name: &str, transport: Transport) -> User {
    let entry = timeout(STEP, query_entry(gate, transport, name, &config()))
        .await
        .expect("queryEntry in time")
        .expect("queryEntry");
    let (client, _events) = timeout(STEP, Client::connect(&entry.addr(), transport, config()))
        .await
        .expect("connect in time")
        .expect("connect");
    User {
        name: name.to_owned(),
        port: entry.port,
        chat: client.on("onChat"),
        add: client.on("onAdd"),
        leave: client.on("onLeave"),
        client,
    }
}

async fn request(c: &Client, route: &str, body: Value) -> Value {
    timeout(STEP, c.request(route, &body))
        .await
        .unwrap_or_else(|_| panic!("{route} answered in time"))
        .unwrap_or_else(|e| panic!("{route}: {e}"))
}

async fn next(stream: &mut PushStream, what: &str) -> Value {
    let push = timeout(STEP, stream.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no push in time"))
        .unwrap_or_else(|| panic!("{what}: stream ended"));
    push.value().expect("push body")
}

fn assert_refused(reply: &Value, needle: &str) {
    assert_eq!(reply["code"], 500, "{reply}");
    assert_eq!(reply["error"], true, "{reply}");
    let msg = reply["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "`{msg}` should say `{needle}`");
}

/// Names the gate sends to pairwise different connectors (as many as asked).
async fn names_on_different_connectors(gate: &str, count: usize) -> Vec<String> {
    let mut picked = Vec::new();
    let mut ports = std::collections::HashSet::new();
    for i in 0..64 {
        let name = format!("user{i}");
        let e = timeout(STEP, query_entry(gate, Transport::Tcp, &name, &config()))
            .await
            .expect("queryEntry in time")
            .expect("queryEntry");
        if ports.insert(e.port) {
            picked.push(name);
            if picked.len() == count {
                return picked;
            }
        }
    }
    panic!("64 names landed on fewer than {count} connectors");
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("page connect in time")
        .expect("page connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    timeout(STEP, s.write_all(req.as_bytes()))
        .await
        .expect("write in time")
        .expect("write");
    let mut out = Vec::new();
    timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("read in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_cluster_end_to_end() {
    let mut cluster = Cluster::start();
    let gate = cluster.gate();
    assert_eq!(cluster.connectors().len(), 3);

    // The gate answers the live ports, by crc32 over the connectors sorted by id.
    let names = names_on_different_connectors(&gate, 3).await;
    let room = "lobby";
    let mut a = connect(&gate, &names[0], Transport::Tcp).await;
    let mut b = connect(&gate, &names[1], Transport::WebSocket).await;
    assert_ne!(a.port, b.port, "a and b must be on different connectors");
    for u in [&a, &b] {
        assert!(
            cluster
                .connectors()
                .contains(&format!("127.0.0.1:{}", u.port)),
            "{} not a connector",
            u.port
        );
    }

    // A send before enter is refused, and the connection stays usable.
    let early = request(&a.client, SEND, json!({"content": "hi", "target": "*"})).await;
    assert_refused(&early, "enter a room first");

    // Enter: the user list; the first member hears onAdd.
    let r = request(&a.client, ENTER, json!({"username": a.name, "rid": room})).await;
    assert_eq!(r, json!({"users": [a.name]}));
    let r = request(&b.client, ENTER, json!({"username": b.name, "rid": room})).await;
    let mut users: Vec<String> = serde_json::from_value(r["users"].clone()).unwrap();
    users.sort();
    let mut want = vec![a.name.clone(), b.name.clone()];
    want.sort();
    assert_eq!(users, want);
    assert_eq!(
        next(&mut a.add, "a hears b join").await,
        json!({"user": b.name})
    );

    // A room message reaches everyone, the sender included.
    let r = request(
        &a.client,
        SEND,
        json!({"rid": room, "from": a.name, "content": "héllo ✓", "target": "*"}),
    )
    .await;
    assert_eq!(r, json!({}));
    let want = json!({"msg": "héllo ✓", "from": a.name, "target": "*"});
    assert_eq!(next(&mut a.chat, "a gets its room message").await, want);
    assert_eq!(next(&mut b.chat, "b gets a's room message").await, want);

    // A third user on the remaining connector; both hear onAdd.
    let mut c = connect(&gate, &names[2], Transport::Tcp).await;
    let r = request(&c.client, ENTER, json!({"username": c.name, "rid": room})).await;
    assert_eq!(r["users"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(next(&mut a.add, "a hears c").await, json!({"user": c.name}));
    assert_eq!(next(&mut b.add, "b hears c").await, json!({"user": c.name}));

    // A private message reaches only its target: b -> a, then a room message as a barrier.
    let r = request(
        &b.client,
        SEND,
        json!({"content": "psst", "target": a.name}),
    )
    .await;
    assert_eq!(r, json!({}));
    assert_eq!(
        next(&mut a.chat, "a gets the whisper").await,
        json!({"msg": "psst", "from": b.name, "target": a.name})
    );
    request(&b.client, SEND, json!({"content": "after", "target": "*"})).await;
    for (u, who) in [(&mut c, "c"), (&mut b, "b"), (&mut a, "a")] {
        let m = next(&mut u.chat, who).await;
        assert_eq!(m["msg"], "after", "{who} got {m} before the room message");
    }

    // The same name in the same room is refused (on any transport); in another room it is fine.
    let dup = connect(&gate, &a.name, Transport::WebSocket).await;
    let r = request(&dup.client, ENTER, json!({"username": a.name, "rid": room})).await;
    assert_refused(&r, "already taken");
    let r = request(
        &dup.client,
        ENTER,
        json!({"username": a.name, "rid": "elsewhere"}),
    )
    .await;
    assert_eq!(r, json!({"users": [a.name]}));

    // Bad input: clear errors, and nothing breaks.
    let fresh = connect(&gate, "fresh", Transport::Tcp).await;
    let long_name = "n".repeat(33);
    for (body, needle) in [
        (json!({"rid": room}), "`username` is required"),
        (json!({"username": "x"}), "`rid` is required"),
        (json!({"username": "", "rid": room}), "must not be empty"),
        (
            json!({"username": long_name, "rid": room}),
            "the limit is 32",
        ),
        (json!({"username": "a*b", "rid": room}), "`*`"),
        (
            json!({"username": "x", "rid": "r".repeat(40)}),
            "the limit is 32",
        ),
        (json!({"username": 5, "rid": room}), "must be a string"),
        (json!([1, 2]), "JSON object"),
    ] {
        let r = request(&fresh.client, ENTER, body.clone()).await;
        assert_refused(&r, needle);
    }
    for (body, needle) in [
        (json!({"target": "*"}), "`content` is required"),
        (json!({"content": "", "target": "*"}), "must not be empty"),
        (
            json!({"content": "x".repeat(1025), "target": "*"}),
            "the limit is 1024",
        ),
        (json!({"content": "x"}), "`target` is required"),
        (
            json!({"content": "x", "target": "nobody"}),
            "\"nobody\" is not in room",
        ),
    ] {
        let r = request(&a.client, SEND, body).await;
        assert_refused(&r, needle);
    }
    let r = request(&a.client, ENTER, json!({"username": "again", "rid": room})).await;
    assert_refused(&r, "already entered");
    for body in [json!({}), json!({"uid": ""}), json!({"uid": [1]})] {
        let r = request(&fresh.client, QUERY, body).await; // a connector has no gate route
        assert_eq!(r["code"], 500, "{r}");
    }
    let (gc, _e) = timeout(STEP, Client::connect(&gate, Transport::Tcp, config()))
        .await
        .unwrap()
        .unwrap();
    assert_refused(&request(&gc, QUERY, json!({})).await, "`uid` is required");
    assert_refused(
        &request(&gc, QUERY, json!({"uid": "u".repeat(200)})).await,
        "the limit is 128",
    );
    gc.close().await;
    // Still chatting after all that.
    request(
        &a.client,
        SEND,
        json!({"content": "still here", "target": "*"}),
    )
    .await;
    assert_eq!(
        next(&mut b.chat, "b after bad input").await["msg"],
        "still here"
    );

    // A disconnect removes the user: onLeave to the others, and the name is free again.
    c.client.close().await;
    assert_eq!(
        next(&mut a.leave, "a hears c leave").await,
        json!({"user": c.name})
    );
    assert_eq!(
        next(&mut b.leave, "b hears c leave").await,
        json!({"user": c.name})
    );
    let r = request(&a.client, SEND, json!({"content": "x", "target": c.name})).await;
    assert_refused(&r, "is not in room");
    let c2 = connect(&gate, &c.name, Transport::WebSocket).await;
    let r = request(&c2.client, ENTER, json!({"username": c.name, "rid": room})).await;
    assert_eq!(r["users"].as_array().map(Vec::len), Some(3), "{r}");

    // The page: the files, with the gate's real port filled in; nothing else.
    let page = cluster.page();
    let addr = page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let gate_port = gate.rsplit_once(':').unwrap().1;
    let index = http_get(&addr, "/?gate=x").await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(
        index.contains(&format!(
            r#"<meta name="shaddock-gate-port" content="{gate_port}">"#
        )),
        "{index}"
    );
    assert!(
        http_get(&addr, "/pomelo-client.js")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(&addr, "/Cargo.toml")
            .await
            .starts_with("HTTP/1.1 404")
    );

    for u in [&a, &b, &c2] {
        u.client.close().await;
    }
    dup.client.close().await;
    fresh.client.close().await;

    // SIGTERM stops every process, through the master, and the launcher exits 0.
    let pids = cluster.cluster_pids();
    assert_eq!(pids.len(), 8, "master + 7 servers: {pids:?}");
    let status = cluster
        .stop(Duration::from_secs(60))
        .expect("the launcher stopped in time");
    assert!(status.success(), "exit {status}; log:\n{}", cluster.log());
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
}
