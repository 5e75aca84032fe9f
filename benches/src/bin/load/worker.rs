//! A worker process: sets up its share of the clients (every n-th), reports `ready`, runs the
//! measured phase on `go`, reports `result`, and exits on `stop` or when stdin ends.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use shaddock_benches::hist::AtomicHistogram;
use shaddock_client::gate::QUERY_ENTRY_ROUTE;
use shaddock_client::{Client, ClientConfig, GateEntry, PushStream, Transport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{Cli, ENTER_ROUTE, ON_CHAT, SEND_ROUTE, Scenario, WorkerId, now_us, target_v4};

/// What every client setup needs.
struct Ctx {
    gate: SocketAddr,
    gate_name: String,
    transport: Transport,
    sources: u8,
    run: String,
    room_size: usize,
    config: ClientConfig,
    subscribe: bool,
    /// Networks the connectors may be on besides loopback (`--allow-net`).
    allow_net: Vec<crate::Ipv4Net>,
}

impl Ctx {
    fn source(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(self.sources)) as u8)
    }
}

/// One client that is in its room.
struct Member {
    index: usize,
    room: usize,
    uid: String,
    rid: String,
    client: Client,
    chat: Option<PushStream>,
}

/// Remembers the first of many errors (the one worth printing) and counts them all.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn note(&self, e: impl FnOnce() -> String) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0
            && let Ok(mut first) = self.first.lock()
        {
            *first = Some(e());
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn first(&self) -> Value {
        self.first
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .map_or(Value::Null, Value::String)
    }
}

/// Whether a chat reply is an error (`code` other than 200, or `error: true`).
pub(crate) fn is_error_reply(v: &Value) -> bool {
    v.get("error").and_then(Value::as_bool) == Some(true)
        || v.get("code")
            .and_then(Value::as_u64)
            .is_some_and(|c| c != 200)
}

/// A raw JSON reply of the chat: `Ok` for a success (`{}` without parsing, else any JSON
/// that [`is_error_reply`] accepts), else the reply as text.
pub(crate) fn reply_verdict(reply: &[u8]) -> Result<(), String> {
    if reply == b"{}" {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(reply) {
        Ok(v) if !is_error_reply(&v) => Ok(()),
        Ok(v) => Err(v.to_string()),
        Err(e) => Err(format!(
            "{} (not JSON: {e})",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        )),
    }
}

/// The marker a broadcast message carries: `~RUN~` then the send time in µs and `~`.
fn marker_needle(run: &str) -> Vec<u8> {
    format!("~{run}~").into_bytes()
}

/// The send time in a push body carrying `needle` + digits + `~`, if any.
pub(crate) fn parse_marker(body: &[u8], needle: &[u8]) -> Option<u64> {
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let digits = &body[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || digits[end] != b'~' {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// This worker's share of `total`: `total / n`, one more for the first `total % n`.
pub(crate) fn share(total: u64, id: WorkerId) -> u64 {
    let n = id.count as u64;
    total / n + u64::from((id.index as u64) < total % n)
}

/// One JSON line to the parent; a parent that is gone (a closed pipe) is not an error here:
/// the worker notices it on stdin and ends.
fn emit(v: &Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}").and_then(|()| out.flush());
}

async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // 127.0.0.1 is what the kernel picks for a loopback destination anyway. Binding it
    // explicitly would make the kernel search for a free port at bind time, without knowing
    // the destination: with tens of thousands of sockets open or in TIME_WAIT that search
    // cost the generator ~4 ms of system CPU per connection. Unbound, the port is chosen at
    // connect time per destination.
    if src != Ipv4Addr::LOCALHOST {
        socket.bind(SocketAddr::new(src.into(), 0))?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn setup_one(ctx: &Ctx, index: usize) -> Result<Member, String> {
    let src = ctx.source(index);
    let uid = format!("u{index}");
    let room = index / ctx.room_size;
    let rid = format!("{}-r{room}", ctx.run);

    let io = connect_from(src, ctx.gate)
        .await
        .map_err(|e| format!("gate {}: connect from {src}: {e}", ctx.gate_name))?;
    let (gate, _events) = Client::connect_io(io, ctx.transport, &ctx.gate_name, ctx.config.clone())
        .await
        .map_err(|e| format!("gate {}: {e}", ctx.gate_name))?;
    let reply = gate
        .request(QUERY_ENTRY_ROUTE, &json!({ "uid": uid }))
        .await;
    gate.close().await;
    let reply = reply.map_err(|e| format!("gate {}: {QUERY_ENTRY_ROUTE}: {e}", ctx.gate_name))?;
    let entry = GateEntry::from_reply(&reply).ok_or_else(|| {
        format!(
            "gate {}: {QUERY_ENTRY_ROUTE} answered {reply}",
            ctx.gate_name
        )
    })?;
    let name = entry.addr();
    let dst = target_v4(&name, &ctx.allow_net)?;

    let io = connect_from(src, dst)
        .await
        .map_err(|e| format!("connector {name}: connect from {src}: {e}"))?;
    let (client, _events) = Client::connect_io(io, ctx.transport, &name, ctx.config.clone())
        .await
        .map_err(|e| format!("connector {name}: {e}"))?;
    let chat = ctx.subscribe.then(|| client.on(ON_CHAT));
    let reply = client
        .request(ENTER_ROUTE, &json!({ "username": uid, "rid": rid }))
        .await
        .map_err(|e| format!("connector {name}: {ENTER_ROUTE} as {uid} in {rid}: {e}"))?;
    if is_error_reply(&reply) {
        return Err(format!(
            "connector {name}: {ENTER_ROUTE} as {uid} in {rid} answered {reply}"
        ));
    }
    Ok(Member {
        index,
        room,
        uid,
        rid,
        client,
        chat,
    })
}

/// Lines from the parent on stdin, forwarded to a channel (closed at end of input).
fn control_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line.trim().to_owned()).await.is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_for(control: &mut mpsc::Receiver<String>, word: &str) -> Result<(), String> {
    loop {
        match control.recv().await {
            Some(line) if line == word => return Ok(()),
            Some(line) if line == "stop" => return Err(format!("stopped before `{word}`")),
            Some(_) => {}
            None => return Err(format!("the parent went away before `{word}`")),
        }
    }
}

/// The worker's whole life, bounded by `--deadline`.
pub(crate) async fn run(cli: Cli, id: WorkerId) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(cli.common.deadline);
    match tokio::time::timeout_at(deadline, run_inner(cli, id)).await {
        Ok(r) => r,
        Err(_) => {
            emit(&json!({"event": "error", "worker": id.index, "error": "deadline reached"}));
            Err("deadline reached".to_owned())
        }
    }
}

async fn run_inner(cli: Cli, id: WorkerId) -> Result<(), String> {
    let mut control = control_lines();
    let scenario = cli.scenario.clone();
    let total = scenario.clients();
    let run = cli.common.run_id.clone().ok_or("a worker needs --run-id")?;
    let plan = crate::parent::Plan::new(&cli);
    let timeout = Duration::from_secs(cli.common.timeout.max(1));
    let mut config = ClientConfig::default()
        .with_handshake_timeout(timeout)
        .with_request_timeout(timeout);
    if matches!(scenario, Scenario::Broadcast { .. }) {
        // Receivers keep up at 1,000 pushes/s each; a roomy queue keeps short stalls of the
        // generator from counting as loss (SDK-side drops are still reported).
        config.push_capacity = 8192;
    }
    let ctx = Arc::new(Ctx {
        gate: target_v4(&cli.common.gate, &cli.common.allow_net)?,
        allow_net: cli.common.allow_net.clone(),
        gate_name: cli.common.gate.clone(),
        transport: cli.common.transport.into(),
        sources: plan.sources,
        run: run.clone(),
        room_size: scenario.room_size(),
        config,
        subscribe: matches!(scenario, Scenario::Broadcast { .. }),
    });

    // Setup: gate, connector, enter, `concurrency` at a time.
    let setup_hist = Arc::new(AtomicHistogram::new());
    let errors = Arc::new(Errors::default());
    let permits = Arc::new(Semaphore::new(cli.common.concurrency.max(1)));
    let setup_start = now_us();
    let mut set = JoinSet::new();
    let mut pacer = cli
        .common
        .connect_rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| {
            let mut iv = tokio::time::interval(Duration::from_secs_f64(id.count as f64 / r));
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            iv
        });
    for index in (id.index..total).step_by(id.count) {
        if let Some(pacer) = &mut pacer {
            pacer.tick().await;
        }
        let (ctx, permits, hist, errors) = (
            ctx.clone(),
            permits.clone(),
            setup_hist.clone(),
            errors.clone(),
        );
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let t0 = Instant::now();
            match setup_one(&ctx, index).await {
                Ok(m) => {
                    hist.record(t0.elapsed().as_micros() as u64);
                    Some(m)
                }
                Err(e) => {
                    errors.note(|| e);
                    None
                }
            }
        });
    }
    let mut members = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(Some(m)) = joined {
            members.push(m);
        }
    }
    let setup_end = now_us();
    members.sort_by_key(|m| m.index);
    let mut by_room: BTreeMap<String, u64> = BTreeMap::new();
    for m in &members {
        *by_room.entry(m.room.to_string()).or_default() += 1;
    }
    emit(&json!({
        "event": "ready",
        "worker": id.index,
        "connected": members.len(),
        "failed": errors.count(),
        "first_error": errors.first(),
        "setup_start_us": setup_start,
        "setup_end_us": setup_end,
        "setup_hist": setup_hist.snapshot(),
        "members_by_room": by_room,
    }));

    wait_for(&mut control, "go").await?;
    let mut result = match &scenario {
        Scenario::Connect { .. } | Scenario::Report { .. } | Scenario::Floor { .. } => json!({}),
        Scenario::Request {
            duration,
            max_requests,
            ..
        } => {
            request_phase(
                &members,
                Duration::from_secs_f64(*duration),
                share(*max_requests, id),
            )
            .await
        }
        Scenario::Broadcast {
            senders,
            rate,
            duration,
            max_messages,
            drain,
            in_flight,
            rooms,
            ..
        } => {
            let total_senders = (rooms * senders) as u64;
            let per_sender = max_messages.div_ceil(total_senders.max(1));
            broadcast_phase(
                &mut members,
                &run,
                BroadcastPlan {
                    senders: *senders,
                    room_size: scenario.room_size(),
                    period: Duration::from_secs_f64(1.0 / rate),
                    duration: Duration::from_secs_f64(*duration),
                    per_sender,
                    drain: Duration::from_secs_f64(*drain),
                    in_flight: *in_flight,
                },
            )
            .await
        }
        Scenario::Idle { hold, .. } => idle_phase(&members, Duration::from_secs_f64(*hold)).await,
    };
    if let Value::Object(map) = &mut result {
        map.insert("event".to_owned(), json!("result"));
        map.insert("worker".to_owned(), json!(id.index));
    }
    emit(&result);

    // Hold the connections until the parent has measured what it needs.
    // Either `stop` or the end of stdin ends the hold; both mean the parent is done.
    let _ = wait_for(&mut control, "stop").await;
    drop(members);
    Ok(())
}

async fn request_phase(members: &[Member], duration: Duration, cap: u64) -> Value {
    let hist = Arc::new(AtomicHistogram::new());
    let issued = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let stop_at = start + duration;
    let mut set = JoinSet::new();
    for m in members {
        let (client, hist, issued, ok, errors) = (
            m.client.clone(),
            hist.clone(),
            issued.clone(),
            ok.clone(),
            errors.clone(),
        );
        let body = json!({"content": "hello", "target": "*", "rid": m.rid, "from": m.uid});
        // The body is encoded once and the reply looked at as bytes (`{}` is the usual
        // answer; anything else is parsed): the generator's own CPU per request is part of
        // what the run measures. With a protobuf schema for the route, the JSON path is used.
        let raw = m
            .client
            .protos()
            .is_none()
            .then(|| Bytes::from(shaddock_protocol::json::to_vec(&body)));
        set.spawn(async move {
            // One clock read per request: the end of one is the start of the next.
            let mut now = Instant::now();
            while now < stop_at && issued.fetch_add(1, Ordering::Relaxed) < cap {
                let t0 = now;
                let reply = match &raw {
                    Some(raw) => client
                        .request_raw(SEND_ROUTE, raw.clone())
                        .await
                        .map(|reply| reply_verdict(&reply)),
                    None => client.request(SEND_ROUTE, &body).await.map(|v| {
                        if is_error_reply(&v) {
                            Err(v.to_string())
                        } else {
                            Ok(())
                        }
                    }),
                };
                now = Instant::now();
                let us = now.duration_since(t0).as_micros() as u64;
                match reply {
                    Ok(Ok(())) => {
                        hist.record(us);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(v)) => errors.note(|| format!("{SEND_ROUTE} answered {v}")),
                    Err(e) => {
                        let gone = e.is_disconnected();
                        errors.note(|| format!("{SEND_ROUTE}: {e}"));
                        if gone {
                            break;
                        }
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    json!({
        "ok": ok.load(Ordering::Relaxed),
        "errors": errors.count(),
        "first_error": errors.first(),
        "elapsed_us": start.elapsed().as_micros() as u64,
        "hist": hist.snapshot(),
    })
}

/// Most pushes a broadcast receiver takes from its stream at once.
const RECV_BATCH: usize = 256;

struct BroadcastPlan {
    senders: usize,
    room_size: usize,
    period: Duration,
    duration: Duration,
    per_sender: u64,
    drain: Duration,
    in_flight: usize,
}

async fn broadcast_phase(members: &mut [Member], run: &str, plan: BroadcastPlan) -> Value {
    let needle: Arc<[u8]> = marker_needle(run).into();
    let hist = Arc::new(AtomicHistogram::new());
    let received = Arc::new(AtomicU64::new(0));
    let last_recv = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Receivers: every member counts the pushes of this run and their delivery latency.
    let mut receivers = JoinSet::new();
    for m in members.iter_mut() {
        let Some(mut chat) = m.chat.take() else {
            continue;
        };
        let (needle, hist, received, last_recv, mut stop) = (
            needle.clone(),
            hist.clone(),
            received.clone(),
            last_recv.clone(),
            stop_rx.clone(),
        );
        receivers.spawn(async move {
            // Take pushes in bursts (one wake-up, one clock read and one update of the
            // shared counters per burst): the client hands over a socket read's worth at once.
            let mut batch = Vec::with_capacity(RECV_BATCH);
            loop {
                tokio::select! {
                    n = chat.recv_many(&mut batch, RECV_BATCH) => {
                        if n == 0 {
                            break;
                        }
                        let now = now_us();
                        let mut got = 0;
                        for push in batch.drain(..) {
                            if let Some(sent) = parse_marker(&push.body, &needle) {
                                hist.record(now.saturating_sub(sent));
                                got += 1;
                            }
                        }
                        if got > 0 {
                            received.fetch_add(got, Ordering::Relaxed);
                            last_recv.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            chat.dropped()
        });
    }

    // Senders: the first `senders` members of each room, each at its own rate.
    let errors = Arc::new(Errors::default());
    let skipped = Arc::new(AtomicU64::new(0));
    let first_send = Arc::new(AtomicU64::new(u64::MAX));
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + plan.duration;
    let mut senders = JoinSet::new();
    for m in members
        .iter()
        .filter(|m| m.index % plan.room_size < plan.senders)
    {
        let client = m.client.clone();
        let (rid, uid, room) = (m.rid.clone(), m.uid.clone(), m.room.to_string());
        let run = run.to_owned();
        let (errors, skipped, first_send, acked, sent) = (
            errors.clone(),
            skipped.clone(),
            first_send.clone(),
            acked.clone(),
            sent.clone(),
        );
        let (period, cap, in_flight) = (plan.period, plan.per_sender, plan.in_flight);
        senders.spawn(async move {
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut tick = tokio::time::interval(period);
            // Open loop at the set rate: a tick the sender was late for is sent at once
            // (catch-up), so a busy generator does not quietly offer less than asked; only
            // a tick that finds `in_flight` requests unanswered is skipped, and counted.
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut mine = 0_u64;
            let mut requests = JoinSet::new();
            loop {
                tick.tick().await;
                if Instant::now() >= stop_at || mine >= cap || client.is_closed() {
                    break;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                mine += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let t = now_us();
                first_send.fetch_min(t, Ordering::Relaxed);
                let body = json!({
                    "content": format!("~{run}~{t}~"),
                    "target": "*",
                    "rid": rid,
                    "from": uid,
                });
                let (client, errors, acked, room) =
                    (client.clone(), errors.clone(), acked.clone(), room.clone());
                requests.spawn(async move {
                    match client.request(SEND_ROUTE, &body).await {
                        Ok(v) if !is_error_reply(&v) => {
                            if let Ok(mut a) = acked.lock() {
                                *a.entry(room).or_default() += 1;
                            }
                        }
                        Ok(v) => errors.note(|| format!("{SEND_ROUTE} answered {v}")),
                        Err(e) => errors.note(|| format!("{SEND_ROUTE}: {e}")),
                    }
                    drop(permit);
                });
            }
            while requests.join_next().await.is_some() {}
        });
    }
    while senders.join_next().await.is_some() {}
    let send_end = Instant::now();

    // Drain: until no push arrived for 500 ms, at most `drain`.
    let drain_until = Instant::now() + plan.drain;
    let mut last_seen = received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last_seen {
            last_seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut dropped = 0;
    while let Some(d) = receivers.join_next().await {
        dropped += d.unwrap_or(0);
    }
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    json!({
        "sent": sent.load(Ordering::Relaxed),
        "acked_by_room": acked,
        "errors": errors.count(),
        "first_error": errors.first(),
        "skipped_ticks": skipped.load(Ordering::Relaxed),
        "received": received.load(Ordering::Relaxed),
        "client_dropped": dropped,
        "first_send_us": first_send.load(Ordering::Relaxed),
        "last_recv_us": last_recv.load(Ordering::Relaxed),
        "send_secs": send_end.duration_since(start).as_secs_f64(),
        "hist": hist.snapshot(),
    })
}

async fn idle_phase(members: &[Member], hold: Duration) -> Value {
    tokio::time::sleep(hold).await;
    let closed: Vec<&Member> = members.iter().filter(|m| m.client.is_closed()).collect();
    let first_reason = match closed.first() {
        Some(m) => Value::String(m.client.closed().await.to_string()),
        None => Value::Null,
    };
    json!({
        "alive": members.len() - closed.len(),
        "closed": closed.len(),
        "first_close_reason": first_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let needle = marker_needle("ab12");
        let body = br#"{"msg":"~ab12~1700000000123456~","from":"u3","target":"*"}"#;
        assert_eq!(parse_marker(body, &needle), Some(1_700_000_000_123_456));
        assert_eq!(parse_marker(br#"{"msg":"~zz~12~"}"#, &needle), None);
        assert_eq!(parse_marker(br#"{"msg":"~ab12~~"}"#, &needle), None);
        assert_eq!(parse_marker(br#"{"msg":"~ab12~12"}"#, &needle), None);
        assert_eq!(parse_marker(b"~ab12~", &needle), None);
    }

    #[test]
    fn shares_add_up() {
        for total in [0_u64, 1, 7, 100, 50_000_001] {
            for count in 1..6 {
                let sum: u64 = (0..count)
                    .map(|index| share(total, WorkerId { index, count }))
                    .sum();
                assert_eq!(sum, total, "{total} over {count}");
            }
        }
    }

    #[test]
    fn raw_replies() {
        assert_eq!(reply_verdict(b"{}"), Ok(()));
        assert_eq!(reply_verdict(br#"{"users":["a"]}"#), Ok(()));
        assert_eq!(
            reply_verdict(br#"{"code":500,"error":true}"#),
            Err(r#"{"code":500,"error":true}"#.to_owned())
        );
        assert!(reply_verdict(b"\x00zz").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn error_replies() {
        assert!(!is_error_reply(&json!({})));
        assert!(!is_error_reply(&json!({"code": 200, "host": "h"})));
        assert!(!is_error_reply(&json!({"users": ["a"]})));
        assert!(is_error_reply(&json!({"code": 500})));
        assert!(is_error_reply(&json!({"code": 500, "error": true})));
        assert!(is_error_reply(&json!({"error": true})));
    }
}
