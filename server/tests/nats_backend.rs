//! The cluster backend's rules, on both stores: the in-memory one of the single-machine mode
//! and a real 3-node JetStream cluster (nats-server 2.15 from `scripts/install-nats`, one node
//! per network namespace: test-support's `Hosts` + `NatsCluster`, torn down at the end).
//!
//! Every semantic case runs on [`Embedded`] (one `#[tokio::test]` each) and on NATS (one test
//! that runs them all in turn, each under its own app name, on one cluster). The NATS-only
//! tests break the cluster: one node killed, the quorum lost and regained, lame-duck mode.
//!
//! Needs root (network namespaces) and `scripts/install-nats`; without the binary the NATS
//! tests fail with a message naming it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use shaddock_server::cluster::{
    ClaimOutcome, ClaimPolicy, ClusterBackend, ClusterConfig, ClusterError, DEFAULT_TTL,
    EmbeddedCluster, Health, NatsBackend, Push, PushStream, ServerEvent, ServerRecord, ServerWatch,
    UidClaim,
};
use shaddock_test_support::nats::{NatsCluster, nats_server_bin};
use shaddock_test_support::netns::Hosts;
use tokio::time::Instant;

type Backend = Box<dyn ClusterBackend>;

/// Where a case's backends come from.
enum Fx {
    Embedded(EmbeddedCluster),
    Nats(Box<ClusterConfig>),
}

/// TTL of the embedded cases (short: they run often); the NATS cases use the default.
const EMBEDDED_TTL: Duration = Duration::from_secs(1);

impl Fx {
    fn embedded() -> Self {
        Self::Embedded(EmbeddedCluster::new(EMBEDDED_TTL, 1 << 20))
    }

    fn nats(urls: &[String], app: &str) -> Self {
        Self::Nats(Box::new(ClusterConfig::new(urls.to_vec(), app)))
    }

    async fn connect(&self, name: &str) -> Backend {
        match self {
            Self::Embedded(c) => Box::new(c.connect(name).await),
            Self::Nats(cfg) => Box::new(
                NatsBackend::connect(cfg, name)
                    .await
                    .unwrap_or_else(|e| panic!("connect {name} to NATS: {e}")),
            ),
        }
    }

    fn ttl(&self) -> Duration {
        match self {
            Self::Embedded(_) => EMBEDDED_TTL,
            Self::Nats(cfg) => cfg.ttl,
        }
    }

    /// The documented bound: a lost server is known within TTL + 2 s.
    fn lost_within(&self) -> Duration {
        self.ttl() + Duration::from_secs(2)
    }
}

static NEXT_START: AtomicU64 = AtomicU64::new(0);

/// A record with a start time no other record of this process has.
fn rec(id: &str, server_type: &str, frontend: bool) -> ServerRecord {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ServerRecord {
        id: id.to_owned(),
        server_type: server_type.to_owned(),
        host: "10.0.0.1".to_owned(),
        port: 4000,
        client_port: frontend.then_some(3010),
        frontend,
        pid: std::process::id(),
        start_time: ms * 1000 + NEXT_START.fetch_add(1, Ordering::Relaxed),
        connections: 0,
        rss_bytes: 0,
        restarts: 0,
        metrics_port: None,
        degraded: None,
    }
}

fn claim(r: &ServerRecord, session: u64) -> UidClaim {
    UidClaim {
        frontend: r.id.clone(),
        frontend_start: r.start_time,
        session,
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `within`.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the first event that `pred` accepts; panics naming `what` after `within`.
async fn expect_event(
    w: &mut ServerWatch,
    within: Duration,
    what: &str,
    pred: impl Fn(&ServerEvent) -> bool,
) -> ServerEvent {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("watch ended while waiting for {what}"),
            Err(_) => panic!("not within {within:?}: {what}"),
        }
    }
}

/// Every event within `period` (to show that something does not happen).
async fn events_during(w: &mut ServerWatch, period: Duration) -> Vec<ServerEvent> {
    let deadline = Instant::now() + period;
    let mut v = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, w.next()).await {
        v.push(e);
    }
    v
}

fn removed(id: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Removed(r) if r.id == id)
}

fn added(id: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Added(r) if r.id == id)
}

/// A boxed backend or a `NatsBackend`, for the helpers.
trait AsBackend {
    fn backend(&self) -> &dyn ClusterBackend;
}
impl AsBackend for Backend {
    fn backend(&self) -> &dyn ClusterBackend {
        &**self
    }
}
impl AsBackend for NatsBackend {
    fn backend(&self) -> &dyn ClusterBackend {
        self
    }
}

fn has(b: &impl AsBackend, id: &str) -> bool {
    b.backend().servers().iter().any(|r| r.id == id)
}

/// Registers `r` on `reg` and waits until every one of `seen_by` lists it.
async fn register_seen(fx: &Fx, reg: &Backend, r: &ServerRecord, seen_by: &[&Backend]) {
    reg.register(r.clone()).await.unwrap();
    for b in seen_by {
        until(fx.lost_within(), &format!("{} listed", r.id), || {
            has(*b, &r.id)
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// The semantic cases, for both stores.

/// Register, refresh, watch, deregister, and a crashed server lost within the bound.
async fn case_registry(fx: &Fx) {
    let a = fx.connect("a").await;
    let w = fx.connect("w").await;
    let mut watch = w.watch();
    let r1 = rec("chat-1", "chat", false);
    a.register(r1.clone()).await.unwrap();
    let e = expect_event(
        &mut watch,
        fx.lost_within(),
        "chat-1 added",
        added("chat-1"),
    )
    .await;
    assert_eq!(e, ServerEvent::Added(r1.clone()));
    assert_eq!(w.servers(), vec![r1.clone()]);

    a.set_connections("chat-1", 7).unwrap();
    until(fx.ttl() * 2, "chat-1's connection count refreshed", || {
        w.servers()
            .iter()
            .any(|r| r.id == "chat-1" && r.connections == 7)
    })
    .await;
    assert!(matches!(
        a.set_connections("nobody", 1),
        Err(ClusterError::NotRegistered(id)) if id == "nobody"
    ));

    // A refreshed record stays: nothing removed over two TTLs.
    let quiet = events_during(&mut watch, fx.ttl() * 2).await;
    assert!(
        !quiet.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
        "{quiet:?}"
    );

    let r2 = rec("chat-2", "chat", false);
    a.register(r2.clone()).await.unwrap();
    expect_event(
        &mut watch,
        fx.lost_within(),
        "chat-2 added",
        added("chat-2"),
    )
    .await;
    a.deregister("chat-2").await.unwrap();
    expect_event(
        &mut watch,
        fx.lost_within(),
        "chat-2 removed",
        removed("chat-2"),
    )
    .await;

    // A crash: the handle goes, nobody deregisters.
    let crashed = Instant::now();
    drop(a);
    let e = expect_event(
        &mut watch,
        fx.lost_within(),
        "crashed chat-1 removed within the bound",
        removed("chat-1"),
    )
    .await;
    eprintln!("chat-1 known lost {:?} after the crash", crashed.elapsed());
    assert!(matches!(e, ServerEvent::Removed(r) if r.start_time == r1.start_time));
    assert!(w.servers().is_empty(), "{:?}", w.servers());

    // A handle that connects later does not take the lost record for a live one either.
    let late = fx.connect("late").await;
    until(fx.lost_within(), "late joiner lists no lost server", || {
        late.servers().is_empty()
    })
    .await;
    assert!(matches!(
        late.register(rec("", "chat", false)).await,
        Err(ClusterError::Invalid { .. })
    ));
}

/// Claims under both policies, release, and racing claimers.
async fn case_claims(fx: &Fx) {
    let f1 = fx.connect("f1").await;
    let f2 = fx.connect("f2").await;
    let c1r = rec("conn-1", "connector", true);
    let c2r = rec("conn-2", "connector", true);
    register_seen(fx, &f1, &c1r, &[&f1, &f2]).await;
    register_seen(fx, &f2, &c2r, &[&f1, &f2]).await;
    let (c1, c2) = (claim(&c1r, 1), claim(&c2r, 2));

    let free = ClaimOutcome::Claimed { replaced: None };
    assert_eq!(
        f1.claim_uid("u1", c1.clone(), ClaimPolicy::KickOld)
            .await
            .unwrap(),
        free
    );
    assert_eq!(
        f1.claim_uid("u1", c1.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        free
    );
    assert_eq!(
        f2.claim_uid("u1", c2.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Refused { owner: c1.clone() }
    );
    assert_eq!(f1.uid_owner("u1").await.unwrap(), Some(c1.clone()));
    assert_eq!(
        f2.claim_uid("u1", c2.clone(), ClaimPolicy::KickOld)
            .await
            .unwrap(),
        ClaimOutcome::Claimed {
            replaced: Some(c1.clone())
        }
    );
    assert_eq!(f1.uid_owner("u1").await.unwrap(), Some(c2.clone()));
    assert!(
        !f1.release_uid("u1", &c1).await.unwrap(),
        "not c1's any more"
    );
    assert!(f2.release_uid("u1", &c2).await.unwrap());
    assert!(
        !f2.release_uid("u1", &c2).await.unwrap(),
        "already released"
    );
    assert_eq!(f1.uid_owner("u1").await.unwrap(), None);
    assert!(matches!(
        f1.claim_uid("", c1.clone(), ClaimPolicy::KickOld).await,
        Err(ClusterError::Invalid { what: "uid", .. })
    ));

    // Two frontends racing for the same uids: RefuseNew lets exactly one win each.
    let uids: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let outcomes = join_all(uids.iter().map(|u| async {
        tokio::join!(
            f1.claim_uid(u, c1.clone(), ClaimPolicy::RefuseNew),
            f2.claim_uid(u, c2.clone(), ClaimPolicy::RefuseNew)
        )
    }))
    .await;
    for (u, (a, b)) in uids.iter().zip(outcomes) {
        let (a, b) = (a.unwrap(), b.unwrap());
        let owner = f1.uid_owner(u).await.unwrap().expect("someone holds it");
        match (&a, &b) {
            (ClaimOutcome::Claimed { replaced: None }, ClaimOutcome::Refused { owner: o }) => {
                assert_eq!((&owner, o), (&c1, &c1), "{u}");
            }
            (ClaimOutcome::Refused { owner: o }, ClaimOutcome::Claimed { replaced: None }) => {
                assert_eq!((&owner, o), (&c2, &c2), "{u}");
            }
            other => panic!("{u}: not exactly one winner: {other:?}"),
        }
    }

    // KickOld racing: both succeed, in some order; the later one replaced the earlier, and
    // holds the uid.
    let outcomes = join_all(uids.iter().map(|u| async {
        tokio::join!(
            f1.claim_uid(u, claim(&c1r, 11), ClaimPolicy::KickOld),
            f2.claim_uid(u, claim(&c2r, 22), ClaimPolicy::KickOld)
        )
    }))
    .await;
    for (u, (a, b)) in uids.iter().zip(outcomes) {
        let (a, b) = (a.unwrap(), b.unwrap());
        let owner = f2.uid_owner(u).await.unwrap().expect("someone holds it");
        let (winner, loser_outcome) = if owner.session == 11 { (a, b) } else { (b, a) };
        let ClaimOutcome::Claimed {
            replaced: Some(old),
        } = winner
        else {
            panic!("{u}: the holder replaced nobody: {winner:?}");
        };
        assert_ne!(old.session, owner.session, "{u}");
        assert!(
            matches!(loser_outcome, ClaimOutcome::Claimed { .. }),
            "{u}: {loser_outcome:?}"
        );
    }
}

/// A claim dies with its frontend's run: freed when the record is lost, and when the same id
/// starts again.
async fn case_claim_freed(fx: &Fx) {
    let f1 = fx.connect("f1").await;
    let f2 = fx.connect("f2").await;
    let mut watch = f2.watch();
    let c1r = rec("conn-1", "connector", true);
    let c2r = rec("conn-2", "connector", true);
    register_seen(fx, &f1, &c1r, &[&f2]).await;
    register_seen(fx, &f2, &c2r, &[&f2]).await;
    let (c1, c2) = (claim(&c1r, 1), claim(&c2r, 2));
    assert!(matches!(
        f1.claim_uid("u3", c1.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
    drop(f1); // conn-1 crashes
    // Still live until it is known lost.
    assert_eq!(
        f2.claim_uid("u3", c2.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Refused { owner: c1.clone() }
    );
    expect_event(
        &mut watch,
        fx.lost_within(),
        "conn-1 lost",
        removed("conn-1"),
    )
    .await;
    assert_eq!(
        f2.uid_owner("u3").await.unwrap(),
        None,
        "a lost frontend holds nothing"
    );
    assert_eq!(
        f2.claim_uid("u3", c2.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { replaced: None }
    );

    // conn-2's run holds u4; conn-2 starts again (new run, same id): the old claim is stale.
    assert!(matches!(
        f2.claim_uid("u4", c2.clone(), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
    let again = rec("conn-2", "connector", true);
    f2.register(again.clone()).await.unwrap();
    expect_event(
        &mut watch,
        fx.lost_within(),
        "conn-2's new run",
        |e| matches!(e, ServerEvent::Added(r) if r.start_time == again.start_time),
    )
    .await;
    assert_eq!(f2.uid_owner("u4").await.unwrap(), None);
    assert_eq!(
        f2.claim_uid("u4", claim(&again, 9), ClaimPolicy::RefuseNew)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { replaced: None }
    );
}

/// Two placers racing for the same new keys agree on every one.
async fn case_placement_race(fx: &Fx) {
    let reg = fx.connect("reg").await;
    let p1 = fx.connect("p1").await;
    let p2 = fx.connect("p2").await;
    for i in 1..=3 {
        register_seen(
            fx,
            &reg,
            &rec(&format!("chat-{i}"), "chat", false),
            &[&p1, &p2],
        )
        .await;
    }
    assert_eq!(
        p1.place("gate", b"nobody").await.unwrap(),
        None,
        "no server of the type"
    );
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("room-{i}").into_bytes()).collect();
    let got = join_all(
        keys.iter()
            .map(|k| async { tokio::join!(p1.place("chat", k), p2.place("chat", k)) }),
    )
    .await;
    for (k, (a, b)) in keys.iter().zip(got) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_some(), "{k:?} placed");
        assert_eq!(a, b, "placers disagree on {:?}", String::from_utf8_lossy(k));
        assert_eq!(p1.placement("chat", k).await.unwrap(), a);
        assert_eq!(p2.placement("chat", k).await.unwrap(), a);
    }
    until(
        fx.lost_within(),
        "both caches hold the 40 placements",
        || {
            (1..=3)
                .map(|i| p1.placements_of(&format!("chat-{i}")).len())
                .sum::<usize>()
                == 40
                && (1..=3)
                    .map(|i| p2.placements_of(&format!("chat-{i}")).len())
                    .sum::<usize>()
                    == 40
        },
    )
    .await;
    for i in 1..=3 {
        let n = p1.placements_of(&format!("chat-{i}")).len();
        assert!(n > 0, "chat-{i} got no key (least loaded first)");
    }
    // Placing again changes nothing.
    for k in &keys {
        assert_eq!(
            p2.place("chat", k).await.unwrap(),
            p1.placement("chat", k).await.unwrap()
        );
    }
    p1.unplace("chat", &keys[0]).await.unwrap();
    assert_eq!(p1.placement("chat", &keys[0]).await.unwrap(), None);
}

/// A lost server's keys go to survivors (two reassigners agree); keys on live servers never
/// move, also when the lost server comes back; new keys may go to it.
async fn case_lost_server_keys(fx: &Fx) {
    let ra = fx.connect("ra").await;
    let rb = fx.connect("rb").await;
    let rc = fx.connect("rc").await;
    let p = fx.connect("p").await;
    let q = fx.connect("q").await;
    let mut watch = p.watch();
    for (r, id) in [(&ra, "chat-a"), (&rb, "chat-b"), (&rc, "chat-c")] {
        register_seen(fx, r, &rec(id, "chat", false), &[&p, &q]).await;
    }
    let keys: Vec<Vec<u8>> = (0..30).map(|i| format!("room-{i}").into_bytes()).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(p.place("chat", k).await.unwrap().unwrap());
    }
    let on_c = before.iter().filter(|s| *s == "chat-c").count();
    assert!(on_c > 0, "chat-c holds keys: {before:?}");
    until(fx.lost_within(), "q's cache holds chat-c's keys", || {
        q.placements_of("chat-c").len() == on_c
    })
    .await;
    assert!(
        p.reassign_lost("chat-a").await.unwrap().is_empty(),
        "chat-a is live"
    );

    drop(rc); // chat-c crashes
    expect_event(
        &mut watch,
        fx.lost_within(),
        "chat-c lost",
        removed("chat-c"),
    )
    .await;
    until(fx.lost_within(), "q knows chat-c lost", || {
        !has(&q, "chat-c")
    })
    .await;
    let (mp, mq) = tokio::join!(p.reassign_lost("chat-c"), q.reassign_lost("chat-c"));
    let (mp, mq) = (mp.unwrap(), mq.unwrap());
    assert_eq!(
        mp.len() + mq.len(),
        on_c,
        "each key moved once: {mp:?} {mq:?}"
    );
    let mut after = Vec::new();
    for (k, was) in keys.iter().zip(&before) {
        let now = p.place("chat", k).await.unwrap().unwrap();
        assert_eq!(q.place("chat", k).await.unwrap().as_ref(), Some(&now));
        if was == "chat-c" {
            assert_ne!(now, "chat-c");
            let m = mp
                .iter()
                .chain(&mq)
                .find(|m| &m.key == k)
                .expect("reported");
            assert_eq!((m.from.as_str(), &m.to), ("chat-c", &now));
        } else {
            assert_eq!(&now, was, "a key on a live server moved");
        }
        after.push(now);
    }

    // chat-c comes back (a new run): nothing moves back, nothing else moves.
    let rc2 = fx.connect("rc2").await;
    let back = rec("chat-c", "chat", false);
    rc2.register(back.clone()).await.unwrap();
    expect_event(&mut watch, fx.lost_within(), "chat-c back", added("chat-c")).await;
    assert!(p.reassign_lost("chat-c").await.unwrap().is_empty());
    for (k, was) in keys.iter().zip(&after) {
        assert_eq!(&p.place("chat", k).await.unwrap().unwrap(), was);
        assert_eq!(&q.place("chat", k).await.unwrap().unwrap(), was);
    }
    // It holds nothing now, so the next new key goes there.
    assert_eq!(
        p.place("chat", b"new-room").await.unwrap().as_deref(),
        Some("chat-c")
    );
}

/// Pushes: one message per frontend, split under the max payload; broadcasts reach every
/// frontend once; a package too large is refused; a reader that does not keep up loses
/// messages, counted.
async fn case_pushes(fx: &Fx) {
    let f1 = fx.connect("f1").await;
    let f2 = fx.connect("f2").await;
    let s = fx.connect("s").await;
    let mut in1 = f1.subscribe_pushes("conn-1", "connector").await.unwrap();
    let mut in2 = f2.subscribe_pushes("conn-2", "connector").await.unwrap();

    // Subscriptions reach the other NATS nodes asynchronously: broadcast until both hear.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0u32;
    let mut heard = (false, false);
    while !(heard.0 && heard.1) {
        assert!(
            Instant::now() < deadline,
            "broadcasts not heard within 10 s: {heard:?}"
        );
        n += 1;
        s.broadcast("connector", Bytes::from(format!("probe-{n}")))
            .await
            .unwrap();
        let wait = Duration::from_millis(200);
        if !heard.0 {
            heard.0 = tokio::time::timeout(wait, in1.next()).await.is_ok();
        }
        if !heard.1 {
            heard.1 = tokio::time::timeout(wait, in2.next()).await.is_ok();
        }
    }
    drain(&mut in1).await;
    drain(&mut in2).await;

    let max = s.max_payload();
    assert!(max >= 64 * 1024, "max payload {max}");
    let package = Bytes::from(vec![0xab; max - 20_000]);
    let uids: Vec<String> = (0..3000).map(|i| format!("user-{i:05}")).collect();
    let sent = s.push("conn-1", package.clone(), &uids).await.unwrap();
    assert!(
        sent >= 2,
        "{} uids of 12 bytes do not fit 20000 bytes: split",
        uids.len()
    );
    let mut got = Vec::new();
    for _ in 0..sent {
        let p = tokio::time::timeout(Duration::from_secs(10), in1.next())
            .await
            .expect("push arrives")
            .expect("stream open");
        assert_eq!(p.package, package, "the package, whole, in every message");
        got.extend(p.uids.expect("a uid list"));
    }
    assert_eq!(got, uids, "every uid once, in order");
    // A small push fits one message.
    assert_eq!(
        s.push("conn-2", Bytes::from_static(b"hi"), &uids[..3])
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        s.push("conn-1", Bytes::from(vec![0; max]), &uids[..1])
            .await,
        Err(ClusterError::PushTooLarge { .. })
    ));
    assert!(matches!(
        s.broadcast("connector", Bytes::from(vec![0; max])).await,
        Err(ClusterError::PushTooLarge { .. })
    ));
    s.broadcast("connector", Bytes::from_static(b"to all"))
        .await
        .unwrap();
    // A broadcast to another frontend type reaches neither.
    s.broadcast("gate", Bytes::from_static(b"to gates"))
        .await
        .unwrap();
    let all = Push {
        package: Bytes::from_static(b"to all"),
        uids: None,
    };
    // Pushes and broadcasts come on two subscriptions: in order within each, not between them.
    let two = [next(&mut in2).await.unwrap(), next(&mut in2).await.unwrap()];
    let hi = Push {
        package: Bytes::from_static(b"hi"),
        uids: Some(uids[..3].to_vec()),
    };
    assert!(
        two.contains(&hi) && two.contains(&all),
        "conn-2 got its own push and the broadcast, nothing of conn-1's: {two:?}"
    );
    assert_eq!(
        next(&mut in1).await.unwrap(),
        all,
        "conn-1 got the broadcast"
    );
    // The broadcast to the gates, published after the one to the connectors on the same
    // subscription order, reached no connector.
    s.broadcast("connector", Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut in1).await.unwrap().package,
        Bytes::from_static(b"after"),
        "conn-1's next broadcast is the next one to its type, not the one to the gates"
    );

    // A reader that does not keep up: the overflow is dropped and counted, not buffered
    // without bound.
    let flood = shaddock_server::cluster::PUSH_SUBSCRIPTION_CAPACITY + 4000;
    for i in 0..flood {
        s.push("conn-2", Bytes::from(format!("m{i}")), &uids[..1])
            .await
            .unwrap();
    }
    until(
        Duration::from_secs(20),
        "slow-consumer drops counted",
        || f2.stats().slow_consumers > 0,
    )
    .await;
    let mut read = 0usize;
    while tokio::time::timeout(Duration::from_millis(500), in2.next())
        .await
        .is_ok_and(|p| p.is_some())
    {
        read += 1;
    }
    assert!(read < flood, "read {read} of {flood}: some were dropped");
    assert!(f1.stats().bad_pushes == 0 && f2.stats().bad_pushes == 0);
}

async fn next(s: &mut PushStream) -> Option<Push> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .ok()
        .flatten()
}

async fn drain(s: &mut PushStream) {
    while tokio::time::timeout(Duration::from_millis(300), s.next())
        .await
        .is_ok()
    {}
}

// ---------------------------------------------------------------------------------------------
// Embedded: one test per case.

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_registry() {
    init_logs();
    case_registry(&Fx::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_claims() {
    init_logs();
    case_claims(&Fx::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_claim_freed_with_its_frontend() {
    init_logs();
    case_claim_freed(&Fx::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_placement_race() {
    init_logs();
    case_placement_race(&Fx::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lost_server_keys() {
    init_logs();
    case_lost_server_keys(&Fx::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pushes() {
    init_logs();
    case_pushes(&Fx::embedded()).await;
}

// ---------------------------------------------------------------------------------------------
// NATS.

/// Three hosts with one JetStream node each. Dropped in reverse order: the cluster's files,
/// then the hosts (which kills the nodes and deletes the namespaces).
fn nats_cluster() -> (Hosts, NatsCluster) {
    let _ = nats_server_bin(); // fails naming scripts/install-nats when missing
    let hosts = Hosts::create(3).expect("3 network namespaces (needs root and iproute2)");
    let cluster = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    (hosts, cluster)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn nats_semantics() {
    init_logs();
    let (_hosts, cluster) = nats_cluster();
    let urls = cluster.urls();
    runtime().block_on(async {
        eprintln!("case: registry");
        case_registry(&Fx::nats(&urls, "registry")).await;
        eprintln!("case: claims");
        case_claims(&Fx::nats(&urls, "claims")).await;
        eprintln!("case: claim freed");
        case_claim_freed(&Fx::nats(&urls, "freed")).await;
        eprintln!("case: placement race");
        case_placement_race(&Fx::nats(&urls, "race")).await;
        eprintln!("case: lost server keys");
        case_lost_server_keys(&Fx::nats(&urls, "lost")).await;
        eprintln!("case: pushes");
        case_pushes(&Fx::nats(&urls, "pushes")).await;
        eprintln!("case: bad input in the buckets and subjects");
        nats_bad_input(&urls).await;
    });
}

/// Garbage written straight into the app's buckets and push subject (another program, an
/// older version): skipped, logged and counted; the backend goes on working.
async fn nats_bad_input(urls: &[String]) {
    let fx = Fx::nats(urls, "badin");
    let b = fx.connect("b").await;
    let mut pushes = b.subscribe_pushes("conn-1", "connector").await.unwrap();
    let raw = async_nats::connect(urls[0].as_str()).await.unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    let servers = js.get_key_value("badin-servers").await.unwrap();
    let placements = js.get_key_value("badin-placements").await.unwrap();
    servers
        .put("sZ2FyYmFnZQ", Bytes::from_static(b"not json"))
        .await
        .unwrap();
    servers
        .put("s=bad=", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    placements
        .put("tY2hhdA.kcm9vbQ", Bytes::from_static(b"[1,2]"))
        .await
        .unwrap();
    until(Duration::from_secs(10), "three bad entries counted", || {
        b.stats().bad_entries >= 3
    })
    .await;
    assert!(b.servers().is_empty(), "{:?}", b.servers());
    assert_eq!(b.placements_of(""), Vec::<(String, Vec<u8>)>::new());
    // A push subject gets garbage between good pushes: the garbage is dropped and counted
    // (when the stream is read), the good ones come through.
    let subject = "shaddock.badin.push.Y29ubi0x"; // base64url("conn-1")
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut good = 0;
    while good == 0 || b.stats().bad_pushes == 0 {
        assert!(
            Instant::now() < deadline,
            "not within 10 s: {good} good pushes, {:?}",
            b.stats()
        );
        raw.publish(subject, Bytes::from_static(b"\x00garbage"))
            .await
            .unwrap();
        raw.flush().await.unwrap();
        b.push("conn-1", Bytes::from_static(b"ok"), &["u".to_owned()])
            .await
            .unwrap();
        while let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(300), pushes.next()).await
        {
            assert_eq!(p.package, Bytes::from_static(b"ok"));
            good += 1;
        }
    }
    // Still works.
    register_seen(&fx, &b, &rec("chat-1", "chat", false), &[&b]).await;
    assert_eq!(
        b.place("chat", b"room").await.unwrap().as_deref(),
        Some("chat-1")
    );
    healthy(&b, Duration::from_secs(10), "after bad input").await;
}

/// The node leading the JetStream stream of `bucket` (from `/jsz`), if one is known.
fn stream_leader(cluster: &NatsCluster, bucket: &str) -> Option<usize> {
    for node in cluster.nodes() {
        let Ok(body) = cluster.monitor(node, "/jsz?streams=true") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for acc in v["account_details"].as_array().into_iter().flatten() {
            for s in acc["stream_detail"].as_array().into_iter().flatten() {
                if s["name"] == format!("KV_{bucket}")
                    && let Some(leader) = s["cluster"]["leader"].as_str()
                {
                    return cluster.nodes().iter().position(|n| n.name == leader);
                }
            }
        }
    }
    None
}

async fn healthy(b: &impl AsBackend, within: Duration, what: &str) {
    let mut h = b.backend().health();
    let ok = tokio::time::timeout(within, h.wait_for(|h| *h == Health::Ok))
        .await
        .is_ok();
    assert!(
        ok,
        "{what}: not healthy within {within:?}: {:?}",
        *h.borrow()
    );
}

/// Kills nodes 1 and 2 of 3 (no JetStream quorum left) and waits until `w` says degraded.
async fn lose_quorum(hosts: &Hosts, cluster: &mut NatsCluster, w: &Backend) {
    cluster.kill(hosts, 1).unwrap();
    cluster.kill(hosts, 2).unwrap();
    let mut h = w.health();
    let degraded = tokio::time::timeout(
        Duration::from_secs(15),
        h.wait_for(|h| matches!(h, Health::Degraded(_))),
    )
    .await
    .is_ok();
    assert!(degraded, "not degraded within 15 s");
    eprintln!("degraded: {:?}", *h.borrow());
}

/// Starts nodes 1 and 2 again and waits until the cluster and every one of `backends` are
/// healthy.
async fn regain_quorum(hosts: &Hosts, cluster: &mut NatsCluster, backends: &[(&str, &Backend)]) {
    cluster.restart(hosts, 1).unwrap();
    cluster.restart(hosts, 2).unwrap();
    tokio::task::block_in_place(|| cluster.wait_healthy(&[0, 1, 2], Duration::from_secs(60)))
        .unwrap();
    for (name, b) in backends {
        healthy(
            *b,
            Duration::from_secs(60),
            &format!("{name} after the quorum came back"),
        )
        .await;
    }
}

/// Killing the node that leads the registry's stream (the worst one: a JetStream election
/// follows) changes nothing: no server is lost, claims and placements keep working, the keys
/// stay where they were.
#[test]
fn nats_one_node_of_three_killed_changes_nothing() {
    init_logs();
    let (hosts, cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "onekill");
    runtime().block_on(async {
        let ra = fx.connect("ra").await;
        let rb = fx.connect("rb").await;
        let w = fx.connect("w").await;
        let chat1 = rec("chat-1", "chat", false);
        let conn1 = rec("conn-1", "connector", true);
        register_seen(&fx, &ra, &chat1, &[&w]).await;
        register_seen(&fx, &ra, &conn1, &[&w]).await;
        register_seen(&fx, &rb, &rec("chat-2", "chat", false), &[&w]).await;
        let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("room-{i}").into_bytes()).collect();
        let mut before = Vec::new();
        for k in &keys {
            before.push(w.place("chat", k).await.unwrap());
        }
        assert!(matches!(
            ra.claim_uid("alice", claim(&conn1, 1), ClaimPolicy::RefuseNew)
                .await
                .unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
        let mut watch = w.watch();

        let victim = stream_leader(&cluster, "onekill-servers").unwrap_or(0);
        eprintln!(
            "killing {} (registry stream leader)",
            cluster.nodes()[victim].name
        );
        cluster.kill(&hosts, victim).unwrap();

        // Long enough for the election (4-9 s), the reconnects and several TTLs.
        let during = events_during(&mut watch, fx.ttl() * 3 + Duration::from_secs(9)).await;
        assert!(
            !during.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
            "a server was lost because one NATS node died: {during:?}"
        );
        for (name, b) in [("ra", &ra), ("rb", &rb), ("w", &w)] {
            healthy(
                b,
                Duration::from_secs(20),
                &format!("{name} after one node died"),
            )
            .await;
        }
        let ids: Vec<String> = w.servers().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["chat-1", "chat-2", "conn-1"]);
        for (k, was) in keys.iter().zip(&before) {
            assert_eq!(&w.place("chat", k).await.unwrap(), was);
        }
        assert!(w.place("chat", b"new-room").await.unwrap().is_some());
        assert_eq!(
            rb.claim_uid("alice", claim(&conn1, 5), ClaimPolicy::RefuseNew)
                .await
                .unwrap(),
            ClaimOutcome::Refused {
                owner: claim(&conn1, 1)
            }
        );
        assert!(matches!(
            rb.claim_uid("bob", claim(&conn1, 2), ClaimPolicy::RefuseNew)
                .await
                .unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
        ra.set_connections("chat-1", 42).unwrap();
        until(fx.ttl() * 2, "refreshes flow after the failover", || {
            w.servers()
                .iter()
                .any(|r| r.id == "chat-1" && r.connections == 42)
        })
        .await;
    });
}

/// Two nodes of three gone: no quorum. The backend reports degraded, serves its caches, does
/// not lose servers, fails writes with a typed error (no hang), and recovers by itself when
/// the nodes return.
#[test]
fn nats_quorum_lost_degrades_and_recovers() {
    init_logs();
    let (hosts, mut cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "quorum");
    runtime().block_on(async {
        let r = fx.connect("r").await;
        let w = fx.connect("w").await;
        let chat1 = rec("chat-1", "chat", false);
        let conn1 = rec("conn-1", "connector", true);
        register_seen(&fx, &r, &chat1, &[&w]).await;
        register_seen(&fx, &r, &conn1, &[&w]).await;
        let placed = w.place("chat", b"room-1").await.unwrap();
        assert_eq!(placed.as_deref(), Some("chat-1"));
        healthy(&w, Duration::from_secs(10), "before").await;
        let mut watch = w.watch();

        lose_quorum(&hosts, &mut cluster, &w).await;

        // Cached reads go on; writes fail with a typed error, in bounded time.
        let ids: Vec<String> = w.servers().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["chat-1", "conn-1"]);
        assert_eq!(w.placement("chat", b"room-1").await.unwrap(), placed);
        assert_eq!(w.place("chat", b"room-1").await.unwrap(), placed);
        let c = tokio::time::timeout(
            Duration::from_secs(15),
            w.claim_uid("carol", claim(&conn1, 3), ClaimPolicy::KickOld),
        )
        .await
        .expect("a claim without quorum answers");
        assert!(matches!(c, Err(ClusterError::Unavailable(_))), "{c:?}");
        let quiet = events_during(&mut watch, fx.ttl() * 2).await;
        assert!(
            !quiet.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
            "no server is lost while the registry cannot progress: {quiet:?}"
        );

        regain_quorum(&hosts, &mut cluster, &[("r", &r), ("w", &w)]).await;
        until(Duration::from_secs(20), "both records listed again", || {
            has(&w, "chat-1") && has(&w, "conn-1")
        })
        .await;
        let c = w
            .claim_uid("carol", claim(&conn1, 3), ClaimPolicy::KickOld)
            .await
            .unwrap();
        assert!(matches!(c, ClaimOutcome::Claimed { .. }), "{c:?}");
        assert_eq!(w.place("chat", b"room-1").await.unwrap(), placed);
    });
}

/// A server that dies while JetStream cannot write (no quorum) is still judged lost, within
/// the bound: liveness is judged from the beats on core NATS, not from the store's refreshes
/// (which a JetStream election or a lost quorum stop for everyone). Servers that still beat
/// are not lost meanwhile, and the dead one stays lost when the quorum is back.
#[test]
fn nats_a_server_that_dies_while_the_store_cannot_write_is_judged_lost() {
    init_logs();
    let (hosts, mut cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "nostore");
    runtime().block_on(async {
        let dying = fx.connect("dying").await;
        let stays = fx.connect("stays").await;
        let w = fx.connect("w").await;
        let chat1 = rec("chat-1", "chat", false);
        let chat2 = rec("chat-2", "chat", false);
        register_seen(&fx, &dying, &chat1, &[&w]).await;
        register_seen(&fx, &stays, &chat2, &[&w]).await;
        let mut watch = w.watch();

        lose_quorum(&hosts, &mut cluster, &w).await;
        // Every handle is back on the one node left, beating: nobody is lost.
        let quiet = events_during(&mut watch, fx.ttl() * 2).await;
        assert!(
            !quiet.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
            "a beating server was lost while the store could not write: {quiet:?}"
        );

        let died = Instant::now();
        drop(dying);
        let within = fx.lost_within() * 2;
        let mut others = Vec::new();
        let deadline = died + within;
        loop {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(ServerEvent::Removed(r))) if r.id == "chat-1" => break,
                Ok(Some(e)) => others.push(e),
                Ok(None) => panic!("watch ended"),
                Err(_) => panic!(
                    "chat-1 not judged lost within {within:?} while the store could not write"
                ),
            }
        }
        eprintln!(
            "FIGURE a server dead while JetStream had no quorum: judged lost {:?} after",
            died.elapsed()
        );
        assert!(
            !others.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
            "another server was lost meanwhile: {others:?}"
        );
        assert!(has(&w, "chat-2") && !has(&w, "chat-1"));

        regain_quorum(&hosts, &mut cluster, &[("w", &w), ("stays", &stays)]).await;
        // A full refresh round with the store writing again: chat-2 is refreshed, chat-1 (its
        // record still in the bucket until the store's own expiry) is not back.
        stays.set_connections("chat-2", 7).unwrap();
        until(
            fx.ttl() * 3,
            "chat-2 refreshed after the quorum came back",
            || {
                w.servers()
                    .iter()
                    .any(|r| r.id == "chat-2" && r.connections == 7)
            },
        )
        .await;
        assert!(
            !has(&w, "chat-1"),
            "the dead server came back in the registry"
        );
    });
}

/// A dead run's record written again without the run beating (a refresh that reached the store
/// late: a JetStream proposal committed when the quorum came back, after the process died)
/// does not bring the server back: it is not listed, and its uid claims stay free. The same
/// run beating again does bring it back.
#[test]
fn nats_a_dead_run_s_late_record_write_does_not_bring_it_back() {
    use base64::Engine as _;
    init_logs();
    let (_hosts, cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "zombie");
    runtime().block_on(async {
        let dying = fx.connect("dying").await;
        let w = fx.connect("w").await;
        let conn1 = rec("conn-1", "connector", true);
        let conn2 = rec("conn-2", "connector", true);
        register_seen(&fx, &dying, &conn1, &[&w]).await;
        register_seen(&fx, &w, &conn2, &[&w]).await;
        let held = w
            .claim_uid("alice", claim(&conn1, 1), ClaimPolicy::RefuseNew)
            .await
            .unwrap();
        assert!(matches!(held, ClaimOutcome::Claimed { .. }), "{held:?}");
        let mut watch = w.watch();
        drop(dying);
        expect_event(
            &mut watch,
            fx.lost_within(),
            "conn-1 lost",
            removed("conn-1"),
        )
        .await;

        // The late write, straight into the bucket as a refresher writes it.
        let raw = async_nats::connect(cluster.urls()[0].as_str())
            .await
            .unwrap();
        let kv = async_nats::jetstream::new(raw)
            .get_key_value("zombie-servers")
            .await
            .unwrap();
        let key = format!(
            "s{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("conn-1")
        );
        kv.put(&key, serde_json::to_vec(&conn1).unwrap().into())
            .await
            .unwrap();
        let after = events_during(&mut watch, fx.ttl() * 2).await;
        assert!(
            !after.iter().any(added("conn-1")),
            "a late write brought a dead run back: {after:?}"
        );
        assert!(!has(&w, "conn-1"));
        let c = w
            .claim_uid("alice", claim(&conn2, 2), ClaimPolicy::RefuseNew)
            .await
            .unwrap();
        assert!(
            matches!(c, ClaimOutcome::Claimed { .. }),
            "the dead run's claim is still held: {c:?}"
        );

        // The same run beating again (its process was only cut off) is back.
        let back = fx.connect("back").await;
        back.register(conn1.clone()).await.unwrap();
        expect_event(&mut watch, fx.lost_within(), "conn-1 back", added("conn-1")).await;
        assert!(has(&w, "conn-1"));
    });
}

/// A node in lame-duck mode (SIGUSR2): the backend's connections move to another node at once
/// (well before the node's 20 s grace period would evict them), and it stays healthy.
#[test]
fn nats_lame_duck_node_is_left_at_once() {
    init_logs();
    let (hosts, cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "ldm");
    runtime().block_on(async {
        let Fx::Nats(cfg) = &fx else { unreachable!() };
        let b = NatsBackend::connect(cfg, "b").await.unwrap();
        let on = b.connected_server().expect("connected");
        let node = cluster
            .nodes()
            .iter()
            .find(|n| n.name == on)
            .expect("one of ours")
            .clone();
        b.register(rec("chat-1", "chat", false)).await.unwrap();
        hosts.signal(node.pid, "USR2").unwrap();
        let left = Instant::now();
        until(
            Duration::from_secs(10),
            "moved off the lame-duck node",
            || b.connected_server().is_some_and(|s| s != on),
        )
        .await;
        eprintln!(
            "left {on} for {:?} after {:?}",
            b.connected_server(),
            left.elapsed()
        );
        assert!(b.stats().reconnects >= 1);
        healthy(
            &b,
            Duration::from_secs(15),
            "after leaving the lame-duck node",
        )
        .await;
        assert!(has(&b, "chat-1"));
    });
}

#[test]
fn nats_connect_gives_up_with_a_typed_error() {
    init_logs();
    runtime().block_on(async {
        // Nothing listens there: the first connect is retried, then a typed error.
        let mut cfg = ClusterConfig::new(vec!["nats://127.0.0.1:1".into()], "none");
        cfg.connect_timeout = Duration::from_secs(2);
        let e = NatsBackend::connect(&cfg, "x").await.unwrap_err();
        assert!(matches!(e, ClusterError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        let mut bad = cfg.clone();
        bad.app = "a.b".into();
        assert!(matches!(
            NatsBackend::connect(&bad, "x").await,
            Err(ClusterError::Config(_))
        ));
        assert_eq!(DEFAULT_TTL, Duration::from_secs(3));
    });
}

/// The link to the node a backend is on is cut (no FIN, no RST: only pings can tell): the
/// backend notices within seconds, moves to another node, and no server is lost.
#[test]
fn nats_cut_link_is_noticed_by_pings() {
    init_logs();
    let (hosts, cluster) = nats_cluster();
    let fx = Fx::nats(&cluster.urls(), "cut");
    runtime().block_on(async {
        let Fx::Nats(cfg) = &fx else { unreachable!() };
        let b = NatsBackend::connect(cfg, "b").await.unwrap();
        let on = b.connected_server().expect("connected");
        let node = cluster
            .nodes()
            .iter()
            .find(|n| n.name == on)
            .expect("one of ours")
            .clone();
        let w = fx.connect("w").await;
        b.register(rec("chat-1", "chat", false)).await.unwrap();
        until(fx.lost_within(), "chat-1 listed", || has(&w, "chat-1")).await;
        let mut watch = w.watch();
        hosts.cut_link(node.host).unwrap();
        let cut = Instant::now();
        let mut h = b.health();
        let noticed = tokio::time::timeout(
            Duration::from_secs(10),
            h.wait_for(|h| matches!(h, Health::Degraded(_))),
        )
        .await
        .is_ok();
        assert!(noticed, "the dead link is not noticed within 10 s");
        eprintln!("noticed after {:?}: {:?}", cut.elapsed(), *h.borrow());
        healthy(&b, Duration::from_secs(30), "b after the cut").await;
        let now_on = b.connected_server();
        assert!(
            now_on.is_some() && now_on.as_deref() != Some(on.as_str()),
            "{now_on:?}"
        );
        healthy(&w, Duration::from_secs(30), "w").await;
        let during = events_during(&mut watch, fx.ttl()).await;
        assert!(
            !during.iter().any(|e| matches!(e, ServerEvent::Removed(_))),
            "{during:?}"
        );
        assert!(has(&w, "chat-1") && has(&b, "chat-1"));
        hosts.restore_link(node.host).unwrap();
    });
}
