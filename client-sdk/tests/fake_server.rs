//! The client against scripted fake servers: silent server (heartbeat timeout), malformed
//! packages, handshake refusal and timeout, request timeouts, split and batched input,
//! pomelo-protobuf and prost bodies, bursts of pushes in one read.

mod common;

use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use serde_json::json;
use shaddock_client::{Client, ClientConfig, DisconnectReason, Error, Event, Transport};
use shaddock_protocol::message::{Message, MessageRoute, MessageType};
use shaddock_protocol::package::{Package, PackageType};
use shaddock_protocol::protobuf::Protos;

fn config() -> ClientConfig {
    ClientConfig::default()
        .with_handshake_timeout(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(5))
}

async fn next_event(events: &mut shaddock_client::Events) -> Event {
    within(events.recv()).await.expect("events ended")
}

async fn silent_server(transport: Transport) {
    let (addr, server) = fake_server(transport, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{"heartbeat":0.2}}"#)
            .await;
        // Never answer anything; count the client's heartbeats until it gives up.
        peer.drain().await
    })
    .await;
    let (client, mut events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    assert_eq!(
        client.heartbeat_interval(),
        Some(Duration::from_millis(200))
    );
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.request("a.b.c", &json!({})).await })
    };
    let timeout = DisconnectReason::HeartbeatTimeout {
        after: Duration::from_millis(400),
    };
    assert!(matches!(
        next_event(&mut events).await,
        Event::HeartbeatTimeout { after } if after == Duration::from_millis(400)
    ));
    match next_event(&mut events).await {
        Event::Disconnected(reason) => assert_eq!(reason, timeout),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(within(events.recv()).await.is_none(), "events end");
    assert_eq!(within(client.closed()).await, timeout);
    match within(waiting).await.unwrap() {
        Err(Error::Disconnected(reason)) => assert_eq!(reason, timeout),
        other => panic!("the waiting request should fail: {other:?}"),
    }
    assert!(matches!(
        within(client.request("a.b.c", &json!({}))).await,
        Err(Error::Disconnected(_))
    ));
    let heartbeats = within(server).await.unwrap();
    assert!(
        heartbeats >= 1,
        "the client sent heartbeats at the announced interval"
    );
}

#[tokio::test]
async fn tcp_server_that_never_answers_heartbeats() {
    silent_server(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_server_that_never_answers_heartbeats() {
    silent_server(Transport::WebSocket).await;
}

async fn malformed(transport: Transport) {
    let (addr, server) = fake_server(transport, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        // Wait until the client has subscribed (it sends a notify), then misbehave.
        let m = peer.recv_message().await;
        assert_eq!(m.kind, MessageType::Notify);
        // A response whose id varint is cut short: one bad message, not fatal.
        peer.send_raw(&[0x04, 0x00, 0x00, 0x02, 0x04, 0xff]).await;
        peer.send_message(&Message::push(
            MessageRoute::name("onAfter"),
            &b"{\"n\":1}"[..],
        ))
        .await;
        // Package type 0x09 does not exist: fatal.
        peer.send_raw(&[0x09, 0x00, 0x00, 0x00]).await;
        peer.drain().await
    })
    .await;
    let (client, mut events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    let mut pushes = client.on_any();
    client.notify("a.b.ready", &json!({})).await.unwrap();
    match next_event(&mut events).await {
        Event::ProtocolError { error, fatal } => {
            assert!(!fatal);
            assert_eq!(error.kind(), "truncated_id");
        }
        other => panic!("expected a non-fatal protocol error, got {other:?}"),
    }
    let push = within(pushes.recv())
        .await
        .expect("push after the bad message");
    assert_eq!(&*push.route, "onAfter");
    assert_eq!(push.value().unwrap(), json!({"n": 1}));
    match next_event(&mut events).await {
        Event::ProtocolError { error, fatal } => {
            assert!(fatal);
            assert_eq!(error.kind(), "invalid_package_type");
            assert!(error.to_string().contains("0x09"), "{error}");
        }
        other => panic!("expected a fatal protocol error, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Disconnected(DisconnectReason::Protocol { error }) => {
            assert!(error.contains("0x09"), "{error}")
        }
        other => panic!("expected Disconnected(Protocol), got {other:?}"),
    }
    assert!(within(pushes.recv()).await.is_none(), "push streams end");
    within(server).await.unwrap();
}

#[tokio::test]
async fn tcp_malformed_packages_are_reported_not_panicked_on() {
    malformed(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_malformed_packages_are_reported_not_panicked_on() {
    malformed(Transport::WebSocket).await;
}

#[tokio::test]
async fn ws_truncated_package_ends_the_connection() {
    // A package whose header declares more than the WebSocket message holds.
    let (addr, server) = fake_server(Transport::WebSocket, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        peer.send_raw(&[0x04, 0x00, 0x00, 0x09, 0x06]).await;
        peer.drain().await
    })
    .await;
    let (client, mut events) = within(Client::connect(
        &addr.to_string(),
        Transport::WebSocket,
        config(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::ProtocolError { fatal: true, ref error } if error.kind() == "truncated_body"
    ));
    assert!(matches!(
        within(client.closed()).await,
        DisconnectReason::Protocol { .. }
    ));
    within(server).await.unwrap();
}

#[tokio::test]
async fn handshake_refused_and_silent_server() {
    for transport in TRANSPORTS {
        let (addr, _server) = fake_server(transport, |mut peer| async move {
            let p = peer.recv().await.unwrap();
            assert_eq!(p.kind, PackageType::Handshake);
            peer.send(&Package::new(
                PackageType::Handshake,
                &b"{\"code\":501}"[..],
            ))
            .await;
            peer.drain().await
        })
        .await;
        match within(Client::connect(&addr.to_string(), transport, config())).await {
            Err(Error::HandshakeRejected { code, peer }) => {
                assert_eq!(code, 501);
                assert_eq!(peer, addr.to_string());
            }
            other => panic!("expected HandshakeRejected, got {other:?}"),
        }

        let (addr, _server) =
            fake_server(transport, |mut peer| async move { peer.drain().await }).await;
        let cfg = config().with_handshake_timeout(Duration::from_millis(300));
        assert!(matches!(
            within(Client::connect(&addr.to_string(), transport, cfg)).await,
            Err(Error::HandshakeTimeout { .. })
        ));
    }
}

#[tokio::test]
async fn request_timeout_removes_the_waiter_and_late_responses_are_ignored() {
    let (addr, server) = fake_server(Transport::Tcp, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        let first = peer.recv_message().await;
        assert_eq!((first.id, first.route.as_str()), (1, Some("a.b.slow")));
        let second = peer.recv_message().await;
        assert_eq!(second.id, 2);
        peer.send_message(&Message::response(2, &b"{\"n\":2}"[..]))
            .await;
        peer.send_message(&Message::response(1, &b"{\"n\":1}"[..]))
            .await;
        let third = peer.recv_message().await;
        assert_eq!(third.id, 3);
        peer.send_message(&Message::response(3, &b"{\"n\":3}"[..]))
            .await;
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), Transport::Tcp, config()))
        .await
        .unwrap();
    let err = within(
        client
            .with_timeout(Duration::from_millis(200))
            .request("a.b.slow", &json!({})),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("a.b.slow"), "{err}");
    assert_eq!(
        client.pending_requests(),
        0,
        "a timed-out waiter is removed"
    );
    assert_eq!(
        within(client.request("a.b.two", &json!({}))).await.unwrap(),
        json!({"n": 2})
    );
    assert_eq!(
        within(client.request("a.b.three", &json!({})))
            .await
            .unwrap(),
        json!({"n": 3})
    );
    assert_eq!(client.pending_requests(), 0);
    client.close().await;
    assert_eq!(within(client.closed()).await, DisconnectReason::Closed);
    within(server).await.unwrap();
}

/// Request timeouts are swept by the connection task with one timer per connection: a
/// request with a shorter timeout than the ones already waiting still fails at its own
/// deadline, and the longer one still gets its answer.
#[tokio::test]
async fn a_shorter_timeout_than_the_waiting_ones_still_fires() {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = fake_server(Transport::Tcp, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        let long = peer.recv_message().await;
        assert_eq!(long.route.as_str(), Some("a.b.long"));
        let short = peer.recv_message().await;
        assert_eq!(short.route.as_str(), Some("a.b.short"));
        // Answer the long one only once the short one has timed out.
        let _ = release_rx.await;
        peer.send_message(&Message::response(long.id, &b"{\"n\":1}"[..]))
            .await;
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), Transport::Tcp, config()))
        .await
        .unwrap();
    let long = {
        let client = client.clone();
        tokio::spawn(async move { client.request("a.b.long", &json!({})).await })
    };
    // The long request is registered first (its 5 s deadline is the planned sweep).
    while client.pending_requests() == 0 {
        tokio::task::yield_now().await;
    }
    let err = within(
        client
            .with_timeout(Duration::from_millis(100))
            .request("a.b.short", &json!({})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { route, after, .. }
            if route == "a.b.short" && *after == Duration::from_millis(100)),
        "{err}"
    );
    assert_eq!(client.pending_requests(), 1, "the long one still waits");
    release_tx.send(()).unwrap();
    assert_eq!(within(long).await.unwrap().unwrap(), json!({"n": 1}));
    assert_eq!(client.pending_requests(), 0);
    client.close().await;
    within(server).await.unwrap();
}

/// While the connection task waits for a write (a server that does not read, a send queue
/// of 24 MiB of notifies), a request still times out at its own deadline, not at the write
/// timeout's.
async fn timeout_while_a_write_is_stuck(transport: Transport) {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = fake_server(transport, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        // Read nothing more until the test is done.
        let _ = release_rx.await;
        drop(peer);
    })
    .await;
    let mut config = config();
    config.write_timeout = Duration::from_secs(60);
    let (client, _events) = within(Client::connect(&addr.to_string(), transport, config))
        .await
        .unwrap();
    let body = bytes::Bytes::from(vec![b'x'; 8 << 20]);
    for _ in 0..3 {
        within(client.notify_raw("a.b.big", body.clone()))
            .await
            .unwrap();
    }
    let err = within(
        client
            .with_timeout(Duration::from_millis(200))
            .request("a.b.stuck", &json!({})),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(client.pending_requests(), 0);
    release_tx.send(()).unwrap();
    within(server).await.unwrap();
    drop(client);
}

#[tokio::test]
async fn tcp_request_times_out_while_a_write_is_stuck() {
    timeout_while_a_write_is_stuck(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_request_times_out_while_a_write_is_stuck() {
    timeout_while_a_write_is_stuck(Transport::WebSocket).await;
}

#[tokio::test]
async fn dropped_request_future_forgets_its_waiter() {
    let (addr, server) = fake_server(Transport::Tcp, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        let m = peer.recv_message().await;
        assert_eq!(m.id, 1);
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), Transport::Tcp, config()))
        .await
        .unwrap();
    let body = json!({});
    let request = client.request("a.b.c", &body);
    // Poll it until the request is registered, then drop it.
    tokio::select! {
        biased;
        _ = request => panic!("no response is ever sent"),
        () = async {
            while client.pending_requests() == 0 {
                tokio::task::yield_now().await;
            }
        } => {}
    }
    assert_eq!(client.pending_requests(), 0);
    client.close().await;
    within(server).await.unwrap();
}

async fn split_and_batched(transport: Transport) {
    let (addr, server) = fake_server(transport, |mut peer| async move {
        let p = peer.recv().await.unwrap();
        assert_eq!(p.kind, PackageType::Handshake);
        let reply = Package::new(PackageType::Handshake, &b"{\"code\":200,\"sys\":{}}"[..])
            .to_bytes()
            .unwrap();
        if matches!(peer, Peer::Tcp { .. }) {
            // One byte per write.
            for b in reply.iter() {
                peer.send_raw(&[*b]).await;
            }
        } else {
            peer.send_raw(&reply).await;
        }
        assert_eq!(peer.recv().await.unwrap().kind, PackageType::HandshakeAck);
        let m = peer.recv_message().await;
        // Response, heartbeat and two pushes in one write / one WebSocket message.
        let mut batch = Vec::new();
        batch.extend_from_slice(
            &Message::response(m.id, &b"{\"ok\":true}"[..])
                .to_package()
                .unwrap()
                .to_bytes()
                .unwrap(),
        );
        batch.extend_from_slice(&[0x03, 0, 0, 0]);
        for n in 0..2 {
            batch.extend_from_slice(
                &Message::push(MessageRoute::name("onN"), format!("{{\"n\":{n}}}"))
                    .to_package()
                    .unwrap()
                    .to_bytes()
                    .unwrap(),
            );
        }
        peer.send_raw(&batch).await;
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    let mut pushes = client.on("onN");
    assert_eq!(
        within(client.request("a.b.c", &json!({}))).await.unwrap(),
        json!({"ok": true})
    );
    for n in 0..2 {
        let p = within(pushes.recv()).await.unwrap();
        assert_eq!(p.value().unwrap(), json!({ "n": n }));
        assert_eq!(p.code, None);
    }
    client.close().await;
    within(server).await.unwrap();
}

/// Messages larger than the client's read buffers (the WebSocket path reads the socket 4 KiB
/// at a time and hands tungstenite 512 bytes at a time): a 200 KiB push alone, then in one
/// write / one WebSocket message a response and pushes of 3 KiB each; every byte arrives.
async fn larger_than_the_read_buffers(transport: Transport) {
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let mid = |n: u8| vec![n; 3 * 1024];
    let expected = big.clone();
    let (addr, server) = fake_server(transport, move |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        let m = peer.recv_message().await;
        let package = |m: Message| m.to_package().unwrap().to_bytes().unwrap();
        peer.send_raw(&package(Message::push(MessageRoute::name("onBig"), big)))
            .await;
        let mut batch = Vec::new();
        for n in 0..3 {
            batch.extend_from_slice(&package(Message::push(MessageRoute::name("onMid"), mid(n))));
        }
        batch.extend_from_slice(&package(Message::response(m.id, &b"{}"[..])));
        peer.send_raw(&batch).await;
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    let mut pushes = client.on_any();
    within(client.request("a.b.c", &json!({}))).await.unwrap();
    let first = within(pushes.recv()).await.unwrap();
    assert_eq!(&*first.route, "onBig");
    assert!(first.body[..] == expected[..], "the 200 KiB body is intact");
    for n in 0..3 {
        let p = within(pushes.recv()).await.unwrap();
        assert_eq!(&*p.route, "onMid");
        assert_eq!(p.body[..], mid(n)[..]);
    }
    client.close().await;
    within(server).await.unwrap();
}

#[tokio::test]
async fn tcp_messages_larger_than_the_read_buffers() {
    larger_than_the_read_buffers(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_messages_larger_than_the_read_buffers() {
    larger_than_the_read_buffers(Transport::WebSocket).await;
}

#[tokio::test]
async fn tcp_split_and_coalesced_packages() {
    split_and_batched(Transport::Tcp).await;
}

#[tokio::test]
async fn ws_several_packages_per_message() {
    split_and_batched(Transport::WebSocket).await;
}

/// Many pushes in one write (as a coalescing connector sends them), an unknown route code
/// among them and the response after them: every push reaches every subscriber in order, and
/// the pushes sent before the response are queued by the time the request returns.
async fn burst_in_one_read(transport: Transport) {
    const N: u8 = 40;
    let (addr, server) = fake_server(transport, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{"dict":{"onA":3},"useDict":true}}"#)
            .await;
        let m = peer.recv_message().await;
        let mut batch = Vec::new();
        let mut add = |m: Message| {
            batch.extend_from_slice(&m.to_package().unwrap().to_bytes().unwrap());
        };
        for n in 0..N {
            let route = match n % 3 {
                0 => MessageRoute::Code(3),
                1 => MessageRoute::name("onA"),
                _ => MessageRoute::name("onB"),
            };
            add(Message::push(route, vec![n]));
            if n == N / 2 {
                add(Message::push(MessageRoute::Code(9), &b"{}"[..]));
            }
        }
        add(Message::response(m.id, &b"{}"[..]));
        peer.send_raw(&batch).await;
        peer.drain().await
    })
    .await;
    let (client, mut events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    let mut a = client.on("onA");
    let mut any = client.on_any();
    within(client.request("a.b.c", &json!({}))).await.unwrap();
    let mut got = Vec::new();
    let n = any.recv_many(&mut got, 1000).now_or_never();
    assert_eq!(
        n,
        Some(usize::from(N)),
        "queued before the response completed"
    );
    let bodies: Vec<u8> = got.iter().map(|p| p.body[0]).collect();
    assert_eq!(bodies, (0..N).collect::<Vec<_>>());
    for p in &got {
        let (route, code) = match p.body[0] % 3 {
            0 => ("onA", Some(3)),
            1 => ("onA", None),
            _ => ("onB", None),
        };
        assert_eq!((&*p.route, p.code), (route, code));
    }
    // The same Arc for every push of a route.
    assert!(std::sync::Arc::ptr_eq(&got[0].route, &got[3].route));
    let mut only_a = Vec::new();
    while let Some(Some(p)) = a.recv().now_or_never() {
        only_a.push(p.body[0]);
    }
    let expected: Vec<u8> = (0..N).filter(|n| n % 3 != 2).collect();
    assert_eq!(only_a, expected);
    assert!(matches!(
        within(events.recv()).await,
        Some(Event::UnknownRouteCode { code: 9 })
    ));
    assert_eq!((a.dropped(), any.dropped()), (0, 0));
    client.close().await;
    assert!(
        within(any.recv()).await.is_none(),
        "the stream ends with the connection"
    );
    within(server).await.unwrap();
}

// Two workers: the requester can run while the connection task still handles the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_burst_of_pushes_in_one_read() {
    burst_in_one_read(Transport::Tcp).await;
}

// Two workers: the requester can run while the connection task still handles the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_burst_of_pushes_in_one_message() {
    burst_in_one_read(Transport::WebSocket).await;
}

/// What came in the same read as the handshake reply is handled at once, without waiting for
/// more input: here a kick, after which the server says nothing.
#[tokio::test]
async fn kick_in_the_handshake_read() {
    let (addr, server) = fake_server(Transport::Tcp, |mut peer| async move {
        assert_eq!(peer.recv().await.unwrap().kind, PackageType::Handshake);
        let mut both = Package::new(PackageType::Handshake, &b"{\"code\":200,\"sys\":{}}"[..])
            .to_bytes()
            .unwrap()
            .to_vec();
        both.extend_from_slice(
            &Package::new(PackageType::Kick, &b"{\"reason\":\"full\"}"[..])
                .to_bytes()
                .unwrap(),
        );
        peer.send_raw(&both).await;
        peer.drain().await
    })
    .await;
    let (client, _events) = within(Client::connect(&addr.to_string(), Transport::Tcp, config()))
        .await
        .unwrap();
    assert_eq!(
        within(client.closed()).await,
        DisconnectReason::Kicked {
            reason: "full".to_owned()
        }
    );
    within(server).await.unwrap();
}

/// A kick whose body is not pomelo's JSON: empty (pitaya) or plain text (other servers).
/// The client reports it as a kick with no reason / the text as the reason, then closes the
/// connection itself (the server sees the close) and reports nothing else.
async fn kick_body_not_json(transport: Transport, body: &'static [u8], reason: &'static str) {
    let (addr, server) = fake_server(transport, move |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{}}"#).await;
        // Wait until the client is up (it sends a notify), then kick it.
        assert_eq!(peer.recv_message().await.kind, MessageType::Notify);
        peer.send(&Package::new(PackageType::Kick, body)).await;
        // The client closes the connection: `drain` ends (bounded by `within`).
        peer.drain().await
    })
    .await;
    let (client, mut events) = within(Client::connect(&addr.to_string(), transport, config()))
        .await
        .unwrap();
    client.notify("a.b.ready", &json!({})).await.unwrap();
    let kicked = DisconnectReason::Kicked {
        reason: reason.to_owned(),
    };
    match next_event(&mut events).await {
        Event::Kicked { reason: got } => assert_eq!(got, reason, "{body:?}"),
        other => panic!("{body:?}: expected Kicked, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Disconnected(got) => assert_eq!(got, kicked, "{body:?}"),
        other => panic!("{body:?}: expected Disconnected, got {other:?}"),
    }
    assert!(within(events.recv()).await.is_none(), "events end");
    assert_eq!(within(client.closed()).await, kicked);
    assert!(matches!(
        within(client.request("a.b.c", &json!({}))).await,
        Err(Error::Disconnected(r)) if r == kicked
    ));
    within(server).await.unwrap();
}

#[tokio::test]
async fn tcp_empty_kick_body_is_a_kick_without_reason() {
    kick_body_not_json(Transport::Tcp, b"", "").await;
}

#[tokio::test]
async fn ws_empty_kick_body_is_a_kick_without_reason() {
    kick_body_not_json(Transport::WebSocket, b"", "").await;
}

#[tokio::test]
async fn tcp_plain_text_kick_body_is_the_reason() {
    kick_body_not_json(
        Transport::Tcp,
        b"server full, try later",
        "server full, try later",
    )
    .await;
}

#[tokio::test]
async fn ws_plain_text_kick_body_is_the_reason() {
    kick_body_not_json(
        Transport::WebSocket,
        b"server full, try later",
        "server full, try later",
    )
    .await;
}

#[tokio::test]
async fn ws_json_string_kick_body_is_the_reason() {
    kick_body_not_json(Transport::WebSocket, br#""maintenance""#, "maintenance").await;
}

/// The same bodies arriving before the handshake reply: the connect fails with the kick.
async fn kick_before_the_handshake_reply(body: &'static [u8], reason: &'static str) {
    let (addr, server) = fake_server(Transport::Tcp, move |mut peer| async move {
        assert_eq!(peer.recv().await.unwrap().kind, PackageType::Handshake);
        peer.send(&Package::new(PackageType::Kick, body)).await;
        peer.drain().await
    })
    .await;
    match within(Client::connect(&addr.to_string(), Transport::Tcp, config())).await {
        Err(Error::HandshakeClosed { reason: got, .. }) => assert_eq!(
            got,
            DisconnectReason::Kicked {
                reason: reason.to_owned()
            },
            "{body:?}"
        ),
        other => panic!("{body:?}: expected the kick, got {other:?}"),
    }
    within(server).await.unwrap();
}

#[tokio::test]
async fn kick_before_the_handshake_reply_empty_or_text() {
    kick_before_the_handshake_reply(b"", "").await;
    kick_before_the_handshake_reply(b"maintenance", "maintenance").await;
    kick_before_the_handshake_reply(br#"{"reason":"full"}"#, "full").await;
}

#[derive(Clone, PartialEq, prost::Message)]
struct Move {
    #[prost(string, required, tag = "1")]
    who: String,
    #[prost(uint32, optional, tag = "2")]
    steps: Option<u32>,
}

#[derive(serde::Serialize)]
struct Hello<'a> {
    name: &'a str,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct Welcome {
    code: u32,
    greeting: String,
}

#[tokio::test]
async fn protobuf_schemas_from_the_handshake_and_prost_bodies() {
    let protos = Protos::from_files(
        &json!({
            "area.playerHandler.move": {"required string who": 1, "optional uInt32 steps": 2},
            "area.playerHandler.hello": {"required uInt32 code": 1, "required string greeting": 2},
            "onMove": {"required string who": 1, "optional uInt32 steps": 2}
        }),
        &json!({
            "area.playerHandler.move": {"required string who": 1, "optional uInt32 steps": 2},
            "area.playerHandler.hello": {"required string name": 1}
        }),
    )
    .unwrap();
    let reply = format!(
        r#"{{"code":200,"sys":{{"useProto":true,"protos":{}}},"user":{{"motd":"hi"}}}}"#,
        shaddock_protocol::json::to_string(&protos.handshake_json())
    );
    let server_protos = protos.clone();
    let (addr, server) = fake_server(Transport::Tcp, move |mut peer| async move {
        let protos = server_protos;
        let request = peer.handshake(&reply).await;
        assert_eq!(request["sys"]["type"], "shaddock-rust");
        assert_eq!(request["sys"]["protoVersion"], 0);
        assert_eq!(request["user"], json!({"token": "t-1"}));
        // 1: JSON value through the schema.
        let m = peer.recv_message().await;
        let route = m.route.as_str().unwrap().to_owned();
        assert_eq!(route, "area.playerHandler.move");
        let body = protos.client().decode(&route, &m.body).unwrap();
        assert_eq!(body, json!({"who": "ann", "steps": 3}));
        let out = protos
            .server()
            .encode(&route, &json!({"who": "ann", "steps": 4}))
            .unwrap();
        peer.send_message(&Message::response(m.id, out)).await;
        // 2: serde types through the schema.
        let m = peer.recv_message().await;
        let body = protos
            .client()
            .decode("area.playerHandler.hello", &m.body)
            .unwrap();
        assert_eq!(body, json!({"name": "ann"}));
        let out = protos
            .server()
            .encode(
                "area.playerHandler.hello",
                &json!({"code": 200, "greeting": "hello ann"}),
            )
            .unwrap();
        peer.send_message(&Message::response(m.id, out)).await;
        // 3: prost types; the pomelo-protobuf schema reads the same bytes.
        let m = peer.recv_message().await;
        let body = protos
            .client()
            .decode("area.playerHandler.move", &m.body)
            .unwrap();
        assert_eq!(body, json!({"who": "bob", "steps": 7}));
        let out = protos
            .server()
            .encode(
                "area.playerHandler.move",
                &json!({"who": "bob", "steps": 8}),
            )
            .unwrap();
        peer.send_message(&Message::response(m.id, out)).await;
        // A protobuf push.
        let out = protos
            .server()
            .encode("onMove", &json!({"who": "cat", "steps": 1}))
            .unwrap();
        peer.send_message(&Message::push(MessageRoute::name("onMove"), out))
            .await;
        peer.drain().await
    })
    .await;
    let cfg = config().with_user(json!({"token": "t-1"}));
    let (client, _events) = within(Client::connect(&addr.to_string(), Transport::Tcp, cfg))
        .await
        .unwrap();
    assert_eq!(
        client.handshake().unwrap().user,
        Some(json!({"motd": "hi"}))
    );
    assert_eq!(client.protos().unwrap().version(), protos.version());
    let mut moves = client.on("onMove");
    let r = within(client.request(
        "area.playerHandler.move",
        &json!({"who": "ann", "steps": 3}),
    ))
    .await
    .unwrap();
    assert_eq!(r, json!({"who": "ann", "steps": 4}));
    let w: Welcome = within(client.request_as("area.playerHandler.hello", &Hello { name: "ann" }))
        .await
        .unwrap();
    assert_eq!(
        w,
        Welcome {
            code: 200,
            greeting: "hello ann".into()
        }
    );
    let m: Move = within(client.request_prost(
        "area.playerHandler.move",
        &Move {
            who: "bob".into(),
            steps: Some(7),
        },
    ))
    .await
    .unwrap();
    assert_eq!(m.steps, Some(8));
    let push = within(moves.recv()).await.unwrap();
    assert!(push.is_protobuf());
    assert_eq!(push.value().unwrap(), json!({"who": "cat", "steps": 1}));
    assert_eq!(push.decode_prost::<Move>().unwrap().who, "cat");
    // A body that does not fit the schema is a typed error, and the connection lives on.
    let err = within(client.request("area.playerHandler.move", &json!({"steps": 1})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protobuf(_)), "{err}");
    assert!(!client.is_closed());
    client.close().await;
    within(server).await.unwrap();
}

#[tokio::test]
async fn close_writes_what_was_queued_then_closes() {
    for transport in TRANSPORTS {
        let (addr, server) = fake_server(transport, |mut peer| async move {
            peer.handshake(r#"{"code":200,"sys":{}}"#).await;
            let mut routes = Vec::new();
            while let Some(p) = peer.recv_no_heartbeat().await {
                let m = Message::decode(p.body).unwrap();
                routes.push(m.route.as_str().unwrap().to_owned());
            }
            routes
        })
        .await;
        let (client, mut events) = within(Client::connect(&addr.to_string(), transport, config()))
            .await
            .unwrap();
        for n in 0..3 {
            client
                .notify(&format!("a.b.n{n}"), &json!({}))
                .await
                .unwrap();
        }
        client.close().await;
        client.close().await;
        assert!(client.is_closed());
        assert!(matches!(
            next_event(&mut events).await,
            Event::Disconnected(DisconnectReason::Closed)
        ));
        assert!(matches!(
            client.notify("a.b.late", &json!({})).await,
            Err(Error::Disconnected(DisconnectReason::Closed))
        ));
        assert_eq!(
            within(server).await.unwrap(),
            ["a.b.n0", "a.b.n1", "a.b.n2"]
        );
    }
}

#[tokio::test]
async fn slow_subscriber_loses_pushes_and_unknown_codes_are_reported() {
    let (addr, server) = fake_server(Transport::Tcp, |mut peer| async move {
        peer.handshake(r#"{"code":200,"sys":{"dict":{"onN":7},"useDict":true}}"#)
            .await;
        let m = peer.recv_message().await;
        assert_eq!(m.kind, MessageType::Notify);
        assert_eq!(
            m.route,
            MessageRoute::Code(7),
            "dictionary routes go out compressed"
        );
        for n in 0..3 {
            let body = format!("{{\"n\":{n}}}");
            peer.send_message(&Message::push(MessageRoute::Code(7), body))
                .await;
        }
        peer.send_message(&Message::push(MessageRoute::Code(99), &b"{}"[..]))
            .await;
        peer.send_message(&Message::push(MessageRoute::name("onEnd"), &b"{}"[..]))
            .await;
        peer.drain().await
    })
    .await;
    let mut cfg = config();
    cfg.push_capacity = 1;
    let (client, mut events) = within(Client::connect(&addr.to_string(), Transport::Tcp, cfg))
        .await
        .unwrap();
    let mut slow = client.on("onN");
    let mut end = client.on("onEnd");
    client.notify("onN", &json!({})).await.unwrap();
    for _ in 0..2 {
        match next_event(&mut events).await {
            Event::PushDropped { route } => assert_eq!(route, "onN"),
            other => panic!("expected PushDropped, got {other:?}"),
        }
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::UnknownRouteCode { code: 99 }
    ));
    // The connection went on: the last push arrived, and the slow stream kept its first push.
    assert_eq!(&*within(end.recv()).await.unwrap().route, "onEnd");
    assert_eq!(slow.dropped(), 2);
    let first = within(slow.recv()).await.unwrap();
    assert_eq!(
        (first.code, first.value().unwrap()),
        (Some(7), json!({"n": 0}))
    );
    client.close().await;
    within(server).await.unwrap();
}
