//! `remote!` methods with several named arguments (JSON array on the wire, as pomelo's remotes
//! send theirs) and camelCase wire names, beside one-payload methods, over a real server and
//! client; and RPC filters around incoming calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shaddock_rpc::{
    Namespace, Raw, Registry, RemoteError, RpcCall, RpcClient, RpcConfig, RpcError, RpcFilter,
    RpcServer, ServerInfo, Target, WireError, remote,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

async fn t<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// A number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    /// The number.
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

remote! {
    /// A chat-like remote.
    pub mod room_remote: user "roomRemote" {
        /// Adds `uid` (on frontend `frontend_id`) to `rid`; the members after.
        fn add_member(uid: String, frontend_id: String, rid: String) -> Vec<String>;
        /// No arguments, no reply.
        fn ping() -> ();
        /// One prost payload, as before.
        fn double_it(Num) -> Num;
        /// Raw bytes.
        fn echo(Raw) -> Raw;
    }
}

#[derive(Default)]
struct Rooms {
    members: Mutex<Vec<String>>,
}

impl room_remote::Remote for Rooms {
    async fn add_member(
        &self,
        uid: String,
        frontend_id: String,
        rid: String,
    ) -> Result<Vec<String>, RemoteError> {
        if uid.is_empty() {
            return Err(RemoteError::new(409, "empty uid"));
        }
        let mut m = self.members.lock().unwrap();
        m.push(format!("{uid}@{frontend_id}/{rid}"));
        Ok(m.clone())
    }

    async fn ping(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    async fn double_it(&self, args: Num) -> Result<Num, RemoteError> {
        Ok(Num { n: args.n * 2 })
    }

    async fn echo(&self, args: Raw) -> Result<Raw, RemoteError> {
        Ok(args)
    }
}

/// Refuses `echo`, records every call's method and outcome.
#[derive(Clone, Default)]
struct Audit {
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

impl RpcFilter for Audit {
    async fn before(&self, call: &RpcCall) -> Result<(), RemoteError> {
        if call.method == "echo" {
            return Err(RemoteError::new(403, "echo is closed"));
        }
        Ok(())
    }

    async fn after(&self, call: &RpcCall, outcome: &Result<Bytes, WireError>) {
        self.seen
            .lock()
            .unwrap()
            .push((call.method.clone(), outcome.is_ok()));
    }
}

#[test]
fn wire_names_are_camel_case() {
    assert_eq!(
        room_remote::METHODS,
        ["addMember", "ping", "doubleIt", "echo"]
    );
    assert_eq!(room_remote::NAMESPACE, Namespace::User);
}

#[tokio::test]
async fn several_arguments_round_trip_and_filters_see_every_call() {
    let audit = Audit::default();
    let mut registry = Registry::new();
    registry
        .add(room_remote::Server::new(Rooms::default()))
        .unwrap();
    registry.filter(audit.clone());
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        RpcServer::new(registry, RpcConfig::default()).serve(listener, shutdown.clone()),
    );

    let rpc = RpcClient::new(RpcConfig::default());
    rpc.directory()
        .add(ServerInfo::new("room-1", "room", "127.0.0.1", port));
    let stub = room_remote::Client::new(&rpc);
    let to = Target::server("room-1");
    let m = t(stub.add_member(to, "ann".into(), "connector-1".into(), "lobby".into()))
        .await
        .unwrap();
    assert_eq!(m, ["ann@connector-1/lobby"]);
    let m = t(stub.add_member(to, "bob".into(), "connector-2".into(), "lobby".into()))
        .await
        .unwrap();
    assert_eq!(m, ["ann@connector-1/lobby", "bob@connector-2/lobby"]);
    match t(stub.add_member(to, String::new(), "c".into(), "r".into())).await {
        Err(RpcError::Remote { code: 409, message }) => assert_eq!(message, "empty uid"),
        other => panic!("{other:?}"),
    }
    t(stub.ping(to)).await.unwrap();
    assert_eq!(
        t(stub.double_it(to, Num { n: 21 })).await.unwrap(),
        Num { n: 42 }
    );
    match t(stub.echo(to, Raw(Bytes::from_static(b"x")))).await {
        Err(RpcError::Remote { code: 403, message }) => assert_eq!(message, "echo is closed"),
        other => panic!("{other:?}"),
    }
    // A call by the snake_case name is an unknown method now.
    let r =
        t(rpc.call::<Num, Num>(to, Namespace::User, "roomRemote", "double_it", Num { n: 1 })).await;
    assert!(matches!(r, Err(RpcError::UnknownMethod { .. })), "{r:?}");
    // A notify with named arguments arrives too (the filter sees it).
    t(stub
        .notify()
        .add_member(to, "cy".into(), "c".into(), "r".into()))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let seen = audit.seen.lock().unwrap().clone();
        if seen.len() == 8 {
            assert_eq!(
                seen,
                [
                    ("addMember".to_owned(), true),
                    ("addMember".to_owned(), true),
                    ("addMember".to_owned(), false),
                    ("ping".to_owned(), true),
                    ("doubleIt".to_owned(), true),
                    ("echo".to_owned(), false),
                    ("double_it".to_owned(), false),
                    ("addMember".to_owned(), true),
                ]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "filter saw {seen:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    let _ = t(task).await;
}

/// A service written by hand, listing no methods (`Service::methods` left at its default).
struct Upper;

impl shaddock_rpc::Service for Upper {
    fn namespace(&self) -> Namespace {
        Namespace::User
    }

    fn name(&self) -> &'static str {
        "upperRemote"
    }

    fn call(&self, method: &str, payload: Bytes) -> shaddock_rpc::BoxCall {
        let method = method.to_owned();
        Box::pin(async move {
            match method.as_str() {
                "upper" => Ok(Bytes::from(payload.to_ascii_uppercase())),
                other => Err(WireError {
                    kind: shaddock_rpc::ErrorKind::UnknownMethod,
                    code: 0,
                    message: format!("no method {other}"),
                }),
            }
        })
    }
}

#[tokio::test]
async fn a_hand_written_service_that_lists_no_methods_gets_the_wire_s_method_name() {
    let mut registry = Registry::new();
    registry.add(Upper).unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        RpcServer::new(registry, RpcConfig::default()).serve(listener, shutdown.clone()),
    );
    let rpc = RpcClient::new(RpcConfig::default());
    rpc.directory()
        .add(ServerInfo::new("up-1", "up", "127.0.0.1", port));
    let to = Target::server("up-1");
    let r = t(rpc.call::<Raw, Raw>(
        to,
        Namespace::User,
        "upperRemote",
        "upper",
        Raw(Bytes::from_static(b"abc")),
    ))
    .await
    .unwrap();
    assert_eq!(r.0, Bytes::from_static(b"ABC"));
    let r =
        t(rpc.call::<Raw, Raw>(to, Namespace::User, "upperRemote", "lower", Raw::default())).await;
    assert!(
        matches!(&r, Err(RpcError::UnknownMethod { message }) if message == "no method lower"),
        "{r:?}"
    );
    let r =
        t(rpc.call::<Raw, Raw>(to, Namespace::User, "lowerRemote", "upper", Raw::default())).await;
    assert!(matches!(&r, Err(RpcError::UnknownService { .. })), "{r:?}");
    shutdown.cancel();
    let _ = t(task).await;
}

remote! {
    /// A remote whose calls the server polls inline first.
    pub mod gate_remote: user "gateRemote" {
        /// Waits until `open` is called.
        fn wait() -> ();
        /// Opens the gate.
        fn open() -> ();
        /// Panics.
        fn boom() -> ();
    }
}

/// The gate, and a signal that a `wait` has started (shared with the test).
#[derive(Default)]
struct Gate(tokio::sync::Notify, Arc<tokio::sync::Notify>);

impl gate_remote::Remote for Gate {
    async fn wait(&self) -> Result<(), RemoteError> {
        self.1.notify_one();
        self.0.notified().await;
        Ok(())
    }

    async fn open(&self) -> Result<(), RemoteError> {
        self.0.notify_one();
        Ok(())
    }

    async fn boom(&self) -> Result<(), RemoteError> {
        panic!("boom")
    }
}

#[tokio::test]
async fn inline_calls_that_wait_go_on_in_a_task_and_a_panic_is_answered() {
    let started = Arc::new(tokio::sync::Notify::new());
    let mut registry = Registry::new();
    registry
        .add(
            gate_remote::Server::new(Gate(tokio::sync::Notify::new(), Arc::clone(&started)))
                .inline_calls(),
        )
        .unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        RpcServer::new(registry, RpcConfig::default()).serve(listener, shutdown.clone()),
    );
    let rpc = RpcClient::new(RpcConfig::default());
    rpc.directory()
        .add(ServerInfo::new("gate-1", "gate", "127.0.0.1", port));
    let stub = gate_remote::Client::new(&rpc);
    let to = Target::server("gate-1");
    // First polled on the read loop (pending there), then woken in its own task by a
    // later call on the same connection.
    let waiting = tokio::spawn({
        let stub = stub.clone();
        async move { stub.wait(Target::server("gate-1")).await }
    });
    t(started.notified()).await;
    t(stub.open(to)).await.unwrap();
    t(waiting).await.unwrap().unwrap();
    match t(stub.boom(to)).await {
        Err(RpcError::RemoteInternal { message }) => {
            assert_eq!(message, "rpc handler panicked");
        }
        other => panic!("{other:?}"),
    }
    // The connection still serves.
    t(stub.open(to)).await.unwrap();
    shutdown.cancel();
    let _ = t(task).await;
}
