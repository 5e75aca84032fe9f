//! Reconnecting against scripted fake servers that accept several connections: a server that
//! closes, a silent server (heartbeat timeout), a kick, a resolver that names another server,
//! a failing hook, a server that is gone for good (give up), requests made while
//! reconnecting (wait or fail fast), and close during a reconnect.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use shaddock_client::{
    Client, ClientConfig, DisconnectReason, Error, Event, Events, ReconnectPolicy, Transport,
    WhileReconnecting,
};
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageType};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const HS: &str = r#"{"code":200,"sys":{}}"#;

/// Short backoff without jitter, so the delays are known.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(40))
        .with_jitter(0.0)
        .with_max_attempts(Some(5))
}

fn config(policy: ReconnectPolicy) -> ClientConfig {
    ClientConfig::default()
        .with_handshake_timeout(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(5))
        .with_reconnect(policy)
}

async fn next_event(events: &mut Events) -> Event {
    within(events.recv()).await.expect("events ended")
}

/// The next request the peer gets: its id, route and JSON body.
async fn next_request(peer: &mut Peer) -> (u32, String, Value) {
    let m = peer.recv_message().await;
    assert_eq!(m.kind, MessageType::Request, "{m:?}");
    let route = m.route.as_str().expect("route name").to_owned();
    (m.id, route, serde_json::from_slice(&m.body).unwrap())
}

async fn answer(peer: &mut Peer, id: u32, body: Value) {
    peer.send_message(&Message::response(id, body.to_string().into_bytes()))
        .await;
}

async fn push(peer: &mut Peer, route: &str, body: Value) {
    peer.send_message(&Message::push(
        MessageRoute::name(route),
        body.to_string().into_bytes(),
    ))
    .await;
}

/// A hook that enters again (`a.enter {again: true}`) and counts its runs.
fn entering_hook(policy: ReconnectPolicy, runs: Arc<AtomicUsize>) -> ReconnectPolicy {
    policy.on_reconnect(move |client: Client| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let reply = client.request("a.enter", &json!({"again": true})).await?;
            assert_eq!(reply, json!({"entered": 2}));
            Ok(())
        }
    })
}

async fn server_closes(transport: Transport) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        // Connection 1: enter, a push, then a request that is never answered: the server
        // closes under it.
        let mut peer = accept_peer(&listener, transport).await;
        let first = peer
            .handshake(r#"{"code":200,"sys":{},"user":{"n":1}}"#)
            .await;
        let (id, route, body) = next_request(&mut peer).await;
        assert_eq!((route.as_str(), body), ("a.enter", json!({"name": "bob"})));
        answer(&mut peer, id, json!({"entered": 1})).await;
        push(&mut peer, "onChat", json!({"n": 1})).await;
        let (_, route, _) = next_request(&mut peer).await;
        assert_eq!(route, "a.slow");
        drop(peer);
        // Connection 2: the handshake again (same user data), then the hook's enter first.
        let mut peer = accept_peer(&listener, transport).await;
        let second = peer
            .handshake(r#"{"code":200,"sys":{},"user":{"n":2}}"#)
            .await;
        assert_eq!(first["user"], second["user"], "same handshake user data");
        let (id, route, body) = next_request(&mut peer).await;
        assert_eq!((route.as_str(), body), ("a.enter", json!({"again": true})));
        answer(&mut peer, id, json!({"entered": 2})).await;
        push(&mut peer, "onChat", json!({"n": 2})).await;
        let (id, route, _) = next_request(&mut peer).await;
        assert_eq!(route, "a.after");
        answer(&mut peer, id, json!({"ok": true})).await;
        peer.drain().await;
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let cfg = config(entering_hook(policy(), runs.clone())).with_user(json!({"token": "t"}));
    let (client, mut events) = within(Client::connect(&addr, transport, cfg))
        .await
        .unwrap();
    assert_eq!(client.handshake().unwrap().user, Some(json!({"n": 1})));
    let mut chat = client.on("onChat");
    let reply = within(client.request("a.enter", &json!({"name": "bob"})))
        .await
        .unwrap();
    assert_eq!(reply, json!({"entered": 1}));
    assert_eq!(within(chat.recv()).await.unwrap().value().unwrap()["n"], 1);
    // In flight at the drop: a typed error, not a hang. (TCP sees an end of stream; a
    // WebSocket without a close handshake, a reset.)
    let lost = match within(client.request("a.slow", &json!({}))).await {
        Err(Error::Disconnected(
            reason @ (DisconnectReason::ServerClosed | DisconnectReason::Io { .. }),
        )) => reason,
        other => panic!("in-flight request: {other:?}"),
    };
    match next_event(&mut events).await {
        Event::ConnectionLost { reason } => assert_eq!(reason, lost),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::ReconnectAttempt { attempt, delay } => {
            assert_eq!((attempt, delay), (1, Duration::from_millis(10)));
        }
        other => panic!("expected ReconnectAttempt, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Reconnected { attempt, peer } => assert_eq!((attempt, peer), (1, addr.clone())),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the hook ran once");
    assert!(!client.is_closed() && !client.is_reconnecting());
    assert_eq!(client.handshake().unwrap().user, Some(json!({"n": 2})));
    // The subscription made before the drop gets the new connection's pushes.
    assert_eq!(within(chat.recv()).await.unwrap().value().unwrap()["n"], 2);
    let reply = within(client.request("a.after", &json!({}))).await.unwrap();
    assert_eq!(reply, json!({"ok": true}));
    within(client.close()).await;
    match next_event(&mut events).await {
        Event::Disconnected(reason) => assert_eq!(reason, DisconnectReason::Closed),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(within(events.recv()).await.is_none(), "events end");
    assert!(within(chat.recv()).await.is_none(), "pushes end on close");
    within(server).await.unwrap();
}

#[tokio::test]
async fn tcp_server_close_reconnects_with_handshake_and_hook() {
    server_closes(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_server_close_reconnects_with_handshake_and_hook() {
    server_closes(Transport::WebSocket).await;
}

#[tokio::test]
async fn a_silent_server_is_left_for_a_new_connection() {
    // The network "drops" without a close: the server stops answering, the client notices
    // through its heartbeat timeout and reconnects.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut silent = accept_peer(&listener, Transport::Tcp).await;
        silent
            .handshake(r#"{"code":200,"sys":{"heartbeat":0.1}}"#)
            .await;
        // Keep the socket open and never answer.
        let mut peer = accept_peer(&listener, Transport::Tcp).await;
        peer.handshake(HS).await;
        let (id, route, _) = next_request(&mut peer).await;
        assert_eq!(route, "a.b");
        answer(&mut peer, id, json!({"second": true})).await;
        peer.drain().await;
        drop(silent);
    });
    let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, config(policy())))
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::HeartbeatTimeout { .. }
    ));
    match next_event(&mut events).await {
        Event::ConnectionLost { reason } => assert!(
            matches!(reason, DisconnectReason::HeartbeatTimeout { .. }),
            "{reason:?}"
        ),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::ReconnectAttempt { attempt: 1, .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Reconnected { attempt: 1, .. }
    ));
    let reply = within(client.request("a.b", &json!({}))).await.unwrap();
    assert_eq!(reply, json!({"second": true}));
    within(client.close()).await;
    within(server).await.unwrap();
}

#[tokio::test]
async fn a_kick_does_not_reconnect_unless_the_policy_says_so() {
    for on_kick in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut peer = accept_peer(&listener, Transport::Tcp).await;
            peer.handshake(HS).await;
            peer.send(&Package::new(
                PackageType::Kick,
                &b"{\"reason\":\"go away\"}"[..],
            ))
            .await;
            peer.drain().await;
            if on_kick {
                let mut peer = accept_peer(&listener, Transport::Tcp).await;
                peer.handshake(HS).await;
                peer.drain().await;
            }
        });
        let cfg = config(policy().with_on_kick(on_kick));
        let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
            .await
            .unwrap();
        let kicked = DisconnectReason::Kicked {
            reason: "go away".into(),
        };
        assert!(matches!(
            next_event(&mut events).await,
            Event::Kicked { .. }
        ));
        match next_event(&mut events).await {
            Event::Disconnected(reason) if !on_kick => {
                assert_eq!(reason, kicked);
                assert!(within(events.recv()).await.is_none());
                assert!(client.is_closed());
                assert_eq!(within(client.closed()).await, kicked);
                assert!(matches!(
                    within(client.request("a.b", &json!({}))).await,
                    Err(Error::Disconnected(r)) if r == kicked
                ));
            }
            Event::ConnectionLost { reason } if on_kick => {
                assert_eq!(reason, kicked);
                assert!(matches!(
                    next_event(&mut events).await,
                    Event::ReconnectAttempt { attempt: 1, .. }
                ));
                assert!(matches!(
                    next_event(&mut events).await,
                    Event::Reconnected { attempt: 1, .. }
                ));
                within(client.close()).await;
            }
            other => panic!("on_kick {on_kick}: {other:?}"),
        }
        within(server).await.unwrap();
    }
}

#[tokio::test]
async fn the_resolver_names_another_server_and_a_failed_hook_is_retried() {
    // Server A closes at once after the handshake; the resolver then names server B, whose
    // first connection refuses the hook's enter and whose second accepts it.
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = a.local_addr().unwrap().to_string();
    let b_addr = b.local_addr().unwrap().to_string();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let server_a = tokio::spawn(async move {
        let mut peer = accept_peer(&a, Transport::Tcp).await;
        peer.handshake(HS).await;
        let _ = closed_rx.await;
    });
    let server_b = tokio::spawn(async move {
        let mut peer = accept_peer(&b, Transport::Tcp).await;
        peer.handshake(HS).await;
        let (id, _, _) = next_request(&mut peer).await;
        answer(&mut peer, id, json!({"code": 500})).await;
        // The failed attempt's connection is closed by the client.
        peer.drain().await;
        let mut peer = accept_peer(&b, Transport::Tcp).await;
        peer.handshake(HS).await;
        let (id, _, _) = next_request(&mut peer).await;
        answer(&mut peer, id, json!({"code": 200})).await;
        let (id, route, _) = next_request(&mut peer).await;
        answer(&mut peer, id, json!({"on": "b", "route": route})).await;
        peer.drain().await;
    });
    let resolved = Arc::new(AtomicUsize::new(0));
    let policy = {
        let (resolved, b_addr) = (resolved.clone(), b_addr.clone());
        policy()
            .resolve_with(move |attempt| {
                resolved.fetch_add(1, Ordering::SeqCst);
                let b_addr = b_addr.clone();
                async move {
                    assert!(attempt >= 1);
                    Ok(b_addr)
                }
            })
            .on_reconnect(|client: Client| async move {
                let r = client.request("a.enter", &json!({})).await?;
                if r["code"] == 200 {
                    Ok(())
                } else {
                    Err(Error::hook(format!(
                        "{} refused the enter: {r}",
                        client.peer()
                    )))
                }
            })
    };
    let (client, mut events) = within(Client::connect(&a_addr, Transport::Tcp, config(policy)))
        .await
        .unwrap();
    assert_eq!(client.peer(), a_addr);
    closed_tx.send(()).unwrap();
    let mut seen = Vec::new();
    loop {
        let e = next_event(&mut events).await;
        let done = matches!(e, Event::Reconnected { .. });
        seen.push(e);
        if done {
            break;
        }
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|e| match e {
            Event::ConnectionLost { .. } => "lost".to_owned(),
            Event::ReconnectAttempt { attempt, delay } => format!("attempt {attempt} {delay:?}"),
            Event::ReconnectFailed { attempt, error } => {
                assert!(matches!(error, Error::Hook { .. }), "{error:?}");
                assert!(error.to_string().contains("500"), "{error}");
                format!("failed {attempt}")
            }
            Event::Reconnected { attempt, peer } => format!("reconnected {attempt} {peer}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "lost".to_owned(),
            "attempt 1 10ms".to_owned(),
            "failed 1".to_owned(),
            "attempt 2 20ms".to_owned(),
            format!("reconnected 2 {b_addr}"),
        ]
    );
    assert_eq!(resolved.load(Ordering::SeqCst), 2);
    assert_eq!(client.peer(), b_addr);
    let r = within(client.request("a.where", &json!({}))).await.unwrap();
    assert_eq!(r, json!({"on": "b", "route": "a.where"}));
    within(client.close()).await;
    within(server_a).await.unwrap();
    within(server_b).await.unwrap();
}

#[tokio::test]
async fn a_server_gone_for_good_makes_the_client_give_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut peer = accept_peer(&listener, Transport::Tcp).await;
        peer.handshake(HS).await;
        // The listener goes with the connection: every reconnect is refused.
    });
    let cfg = config(policy().with_max_attempts(Some(3)));
    let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
        .await
        .unwrap();
    within(server).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::ConnectionLost { .. }
    ));
    for n in 1..=3 {
        match next_event(&mut events).await {
            Event::ReconnectAttempt { attempt, .. } => assert_eq!(attempt, n),
            other => panic!("expected attempt {n}, got {other:?}"),
        }
        match next_event(&mut events).await {
            Event::ReconnectFailed { attempt, error } => {
                assert_eq!(attempt, n);
                assert!(matches!(error, Error::Io { .. }), "{error:?}");
            }
            other => panic!("expected failure {n}, got {other:?}"),
        }
    }
    match next_event(&mut events).await {
        Event::ReconnectGaveUp { attempts, .. } => assert_eq!(attempts, 3),
        other => panic!("expected ReconnectGaveUp, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Disconnected(reason) => assert_eq!(reason, DisconnectReason::ServerClosed),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(within(events.recv()).await.is_none());
    assert!(client.is_closed());
    assert_eq!(
        within(client.closed()).await,
        DisconnectReason::ServerClosed
    );
    assert!(matches!(
        within(client.request("a.b", &json!({}))).await,
        Err(Error::Disconnected(DisconnectReason::ServerClosed))
    ));
}

#[tokio::test]
async fn a_time_limit_also_makes_the_client_give_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut peer = accept_peer(&listener, Transport::Tcp).await;
        peer.handshake(HS).await;
    });
    // 10 + 20 + 40 ms fit in 100 ms; the fourth delay (40 ms) would not.
    let cfg = config(
        policy()
            .with_max_attempts(None)
            .with_max_elapsed(Some(Duration::from_millis(100))),
    );
    let (_client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
        .await
        .unwrap();
    within(server).await.unwrap();
    let mut attempts = 0;
    loop {
        match next_event(&mut events).await {
            Event::ReconnectAttempt { .. } => attempts += 1,
            Event::ReconnectGaveUp {
                attempts: n,
                elapsed,
            } => {
                assert_eq!(n, attempts);
                assert!(elapsed <= Duration::from_millis(100) + T, "{elapsed:?}");
                break;
            }
            Event::ConnectionLost { .. } | Event::ReconnectFailed { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!((1..=3).contains(&attempts), "{attempts} attempts");
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected(_)
    ));
}

/// A server whose first connection closes when told, and whose second connection waits for
/// `open_second` before answering the handshake; then answers every request with its route.
async fn slow_second_server(
    close_first: oneshot::Receiver<()>,
    open_second: oneshot::Receiver<()>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut peer = accept_peer(&listener, Transport::Tcp).await;
        peer.handshake(HS).await;
        let _ = close_first.await;
        drop(peer);
        let mut peer = accept_peer(&listener, Transport::Tcp).await;
        let _ = open_second.await;
        peer.handshake(HS).await;
        loop {
            let Some(p) = peer.recv_no_heartbeat().await else {
                break;
            };
            let m = Message::decode(p.body).unwrap();
            if m.kind == MessageType::Request {
                let route = m.route.as_str().unwrap().to_owned();
                answer(&mut peer, m.id, json!({ "route": route })).await;
            }
        }
    });
    (addr, server)
}

#[tokio::test]
async fn requests_made_while_reconnecting_wait_or_fail_fast() {
    for mode in [WhileReconnecting::Wait, WhileReconnecting::FailFast] {
        let (close_tx, close_rx) = oneshot::channel();
        let (open_tx, open_rx) = oneshot::channel();
        let (addr, server) = slow_second_server(close_rx, open_rx).await;
        let cfg = config(policy().with_while_reconnecting(mode));
        let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
            .await
            .unwrap();
        close_tx.send(()).unwrap();
        assert!(matches!(
            next_event(&mut events).await,
            Event::ConnectionLost { .. }
        ));
        assert!(client.is_reconnecting());
        // The attempt is connected but its handshake is held by the server.
        assert!(matches!(
            next_event(&mut events).await,
            Event::ReconnectAttempt { attempt: 1, .. }
        ));
        match mode {
            WhileReconnecting::Wait => {
                let waiting = {
                    let client = client.clone();
                    tokio::spawn(async move { client.request("a.waited", &json!({})).await })
                };
                let notified = {
                    let client = client.clone();
                    tokio::spawn(async move { client.notify("a.note", &json!({})).await })
                };
                // A request with a short timeout gives up with a timeout, not a hang.
                let short = client.with_timeout(Duration::from_millis(20));
                assert!(matches!(
                    within(short.request("a.short", &json!({}))).await,
                    Err(Error::Timeout { .. })
                ));
                open_tx.send(()).unwrap();
                assert!(matches!(
                    next_event(&mut events).await,
                    Event::Reconnected { attempt: 1, .. }
                ));
                assert_eq!(
                    within(waiting).await.unwrap().unwrap(),
                    json!({"route": "a.waited"})
                );
                within(notified).await.unwrap().unwrap();
            }
            _ => {
                match within(client.request("a.fast", &json!({}))).await {
                    Err(e @ Error::Reconnecting(DisconnectReason::ServerClosed)) => {
                        assert!(e.is_reconnecting() && e.is_disconnected());
                    }
                    other => panic!("fail fast: {other:?}"),
                }
                assert!(matches!(
                    within(client.notify("a.fast", &json!({}))).await,
                    Err(Error::Reconnecting(_))
                ));
                open_tx.send(()).unwrap();
                assert!(matches!(
                    next_event(&mut events).await,
                    Event::Reconnected { attempt: 1, .. }
                ));
                assert_eq!(
                    within(client.request("a.later", &json!({}))).await.unwrap(),
                    json!({"route": "a.later"})
                );
            }
        }
        within(client.close()).await;
        within(server).await.unwrap();
    }
}

#[tokio::test]
async fn close_during_a_reconnect_stops_it() {
    let (close_tx, close_rx) = oneshot::channel();
    let (_open_tx, open_rx) = oneshot::channel::<()>();
    let (addr, server) = slow_second_server(close_rx, open_rx).await;
    // A long backoff: the close comes while the client waits for its first attempt.
    let cfg = config(policy().with_backoff(Duration::from_secs(60), Duration::from_secs(60)));
    let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
        .await
        .unwrap();
    close_tx.send(()).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::ConnectionLost { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        Event::ReconnectAttempt { attempt: 1, .. }
    ));
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.request("a.b", &json!({})).await })
    };
    within(client.close()).await;
    match next_event(&mut events).await {
        Event::Disconnected(reason) => assert_eq!(reason, DisconnectReason::Closed),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(
        within(waiting).await.unwrap(),
        Err(Error::Disconnected(DisconnectReason::Closed))
    ));
    server.abort();
}

#[tokio::test]
async fn dropping_every_handle_while_reconnecting_ends_the_session() {
    let (close_tx, close_rx) = oneshot::channel();
    let (_open_tx, open_rx) = oneshot::channel::<()>();
    let (addr, server) = slow_second_server(close_rx, open_rx).await;
    let cfg = config(policy().with_backoff(Duration::from_secs(60), Duration::from_secs(60)));
    let (client, mut events) = within(Client::connect(&addr, Transport::Tcp, cfg))
        .await
        .unwrap();
    close_tx.send(()).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::ConnectionLost { .. }
    ));
    drop(client);
    loop {
        match next_event(&mut events).await {
            Event::Disconnected(reason) => {
                assert_eq!(reason, DisconnectReason::Closed);
                break;
            }
            Event::ReconnectAttempt { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(within(events.recv()).await.is_none());
    server.abort();
}
