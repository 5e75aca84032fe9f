//! A router that places unknown keys ([`Router::place`]): the call waits for the placement
//! and goes to the server it names; a failed placement is the call's error.

use shaddock_rpc::{
    PlaceFuture, Registry, RemoteError, Router, RpcClient, RpcConfig, RpcError, RpcServer,
    ServerId, ServerInfo, Target, remote,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The server's id as the reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Text {
    /// The text.
    #[prost(string, tag = "1")]
    pub s: String,
}

remote! {
    /// Answers who it is.
    pub mod who: user "whoRemote" {
        /// The server id.
        fn whoami(()) -> Text;
    }
}

struct Who(String);

impl who::Remote for Who {
    async fn whoami(&self, (): ()) -> Result<Text, RemoteError> {
        Ok(Text { s: self.0.clone() })
    }
}

/// Knows nothing until told; places `good*` keys on `chat-2` (remembering them) and fails
/// the others.
#[derive(Default)]
struct Table {
    known: Arc<Mutex<Vec<Vec<u8>>>>,
    placed: Arc<AtomicUsize>,
}

impl Router for Table {
    fn route(&self, key: &[u8], _servers: &[ServerInfo]) -> Option<ServerId> {
        let known = self.known.lock().unwrap();
        known
            .iter()
            .any(|k| k == key)
            .then(|| ServerId::from("chat-2"))
    }

    fn place(&self, key: &[u8]) -> Option<PlaceFuture> {
        let key = key.to_vec();
        let known = self.known.clone();
        let placed = self.placed.clone();
        Some(Box::pin(async move {
            placed.fetch_add(1, Ordering::SeqCst);
            if key.starts_with(b"good") {
                known.lock().unwrap().push(key);
                Ok(ServerId::from("chat-2"))
            } else {
                Err(RpcError::NoServer {
                    server_type: "chat".into(),
                })
            }
        }))
    }
}

async fn serve(id: &str, stop: &CancellationToken) -> u16 {
    let mut registry = Registry::new();
    registry.add(who::Server::new(Who(id.to_owned()))).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(RpcServer::new(registry, RpcConfig::default()).serve(listener, stop.clone()));
    port
}

#[tokio::test]
async fn an_unknown_key_is_placed_once_then_routed_from_the_router() {
    let stop = CancellationToken::new();
    let rpc = RpcClient::new(RpcConfig::default());
    for id in ["chat-1", "chat-2", "chat-3"] {
        let port = serve(id, &stop).await;
        rpc.directory()
            .add(ServerInfo::new(id, "chat", "127.0.0.1", port));
    }
    let table = Table::default();
    let placed = table.placed.clone();
    rpc.set_router("chat", Arc::new(table));
    let stub = who::Client::new(&rpc);
    let call = |key: &'static str| {
        let stub = stub.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                stub.whoami(Target::route("chat", key), ()),
            )
            .await
            .expect("call timed out")
        }
    };
    // Placed on first use (crc32 over three servers would pick another one for some of
    // these keys: the placement decides, not the hash).
    for key in ["good-a", "good-b", "good-c", "good-a", "good-b"] {
        assert_eq!(call(key).await.unwrap().s, "chat-2", "{key}");
    }
    // Asked once per new key; known keys are routed without asking again.
    assert_eq!(placed.load(Ordering::SeqCst), 3);
    // A placement that fails is the call's error.
    match call("bad").await {
        Err(RpcError::NoServer { server_type }) => assert_eq!(server_type, "chat"),
        other => panic!("expected NoServer, got {other:?}"),
    }
    // A type whose router cannot place (the default) has no server for an empty type.
    match stub.whoami(Target::route("gate", "x"), ()).await {
        Err(RpcError::NoServer { server_type }) => assert_eq!(server_type, "gate"),
        other => panic!("expected NoServer, got {other:?}"),
    }
    stop.cancel();
}
