//! Memory per half-sent frame on the RPC port. Alone in its test binary: it measures this
//! process's address space, which tests running alongside (their threads and malloc arenas)
//! would grow too.

use bytes::{BufMut, Bytes, BytesMut};
use shaddock_rpc::{
    Raw, Registry, RemoteError, RpcClient, RpcConfig, RpcServer, ServerInfo, Target, remote,
};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

/// Every await goes through this, so a bug fails instead of hanging.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

remote! {
    /// The remote served.
    pub mod echo: user "echoRemote" {
        /// Returns its argument.
        fn echo(Raw) -> Raw;
    }
}

struct EchoImpl;

impl echo::Remote for EchoImpl {
    async fn echo(&self, a: Raw) -> Result<Raw, RemoteError> {
        Ok(a)
    }
}

async fn start() -> (
    SocketAddr,
    CancellationToken,
    JoinHandle<std::io::Result<()>>,
) {
    let mut registry = Registry::new();
    registry.add(echo::Server::new(EchoImpl)).unwrap();
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        RpcServer::new(registry, RpcConfig::default()).serve(listener, shutdown.clone()),
    );
    (addr, shutdown, server)
}

fn client(addr: SocketAddr) -> RpcClient {
    let rpc = RpcClient::new(RpcConfig::default());
    rpc.directory()
        .add(ServerInfo::new("echo-1", "echo", "127.0.0.1", addr.port()));
    rpc
}

async fn echo_call(rpc: &RpcClient, n: u8) -> Result<Raw, shaddock_rpc::RpcError> {
    echo::Client::new(rpc)
        .echo(Target::server("echo-1"), Raw(Bytes::from(vec![n; 3])))
        .await
}

/// This process's virtual memory size in bytes (`/proc/self/statm`, first field, in pages).
fn vm_size() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().next().unwrap().parse().unwrap();
    pages * 4096
}

/// 200 sockets each declare an 8 MiB frame and send 3 bytes of it. Before the fix every one
/// reserved the declared 8 MiB at once (1.6 GiB of address space); now each costs one chunk.
/// Virtual size is measured (reserved but untouched pages are not resident, so RSS would not
/// show it).
#[tokio::test(flavor = "current_thread")]
async fn half_sent_huge_frames_do_not_reserve_their_declared_length() {
    const SOCKETS: usize = 200;
    const DECLARED: u32 = 8 * 1024 * 1024;
    let (addr, shutdown, server) = start().await;
    let rpc = client(addr);
    t(echo_call(&rpc, 1)).await.unwrap();
    let before = vm_size();
    let mut socks = Vec::new();
    for _ in 0..SOCKETS {
        let mut s = t(TcpStream::connect(addr)).await.unwrap();
        let mut hdr = BytesMut::new();
        hdr.put_u32(DECLARED);
        hdr.put_slice(b"\x01\x00\x00");
        t(s.write_all(&hdr)).await.unwrap();
        socks.push(s);
    }
    // The server has accepted and read them all once a call on a connection opened after them
    // is answered (one runtime thread: the earlier connections' reads ran before). A little
    // polling on top gives stragglers their turn.
    let late = client(addr);
    t(echo_call(&late, 2)).await.unwrap();
    let mut grown = 0;
    for _ in 0..20 {
        grown = vm_size().saturating_sub(before);
        if grown > 400 * 1024 * 1024 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        grown < 400 * 1024 * 1024,
        "{SOCKETS} half-sent frames grew the address space by {} MiB",
        grown / (1024 * 1024)
    );
    // They are still open, waiting for their bodies; the server still serves.
    t(echo_call(&rpc, 3)).await.unwrap();
    drop(socks);
    shutdown.cancel();
    t(server).await.unwrap().unwrap();
}
