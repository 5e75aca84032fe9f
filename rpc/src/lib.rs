//! Framed, multiplexed TCP RPC between Shaddock servers — pomelo's `app.rpc`, typed.
//!
//! In pomelo a frontend reaches a backend (and servers reach each other) with
//! `app.rpc.chat.chatRemote.add(session, uid, sid, cb)`: no IDL, no generated stubs. Here a
//! remote is declared once with [`remote!`]; the server implements the generated trait and
//! registers it, callers get a typed stub.
//!
//! # Layout
//! - [`frame`]: the wire format (sans-IO) and its `tokio_util` codec.
//! - [`service`]: the [`Service`] trait, the [`Registry`], and the [`remote!`] macro.
//! - [`server`]: [`RpcServer`], which accepts connections and dispatches calls.
//! - [`client`]: [`RpcClient`], one multiplexed connection per peer, reconnect, timeouts.
//! - [`directory`]: [`ServerInfo`], the live [`PeerDirectory`], [`Router`]s, [`Target`]s.
//! - [`payload`]: [`Payload`] (prost messages, `()`, [`Raw`] bytes).
//! - [`error`], [`config`]: [`RpcError`], [`RemoteError`], [`RpcConfig`].
//! - [`tls`]: [`RpcTls`], mutual TLS between the cluster's servers with a cluster CA.
//! - [`metrics`]: [`RpcMetrics`], Prometheus counters and latency histograms of calls.
//!
//! # The wire
//! Frames over TCP, each behind a 4-byte big-endian length:
//!
//! ```text
//! +----------+------+---------------------------------------------------------+
//! | len u32BE| kind | ...                                                     |
//! +----------+------+---------------------------------------------------------+
//! request   0x01 | id u32BE | ns u8 | slen u8 | service | mlen u8 | method | payload
//! notify    0x02 | ns u8 | slen u8 | service | mlen u8 | method | payload
//! ok        0x03 | id u32BE | payload
//! error     0x04 | id u32BE | ekind u8 | code u32BE | msglen u16BE | message
//! ping      0x05 | (client heartbeat)
//! pong      0x06 | (the server's answer)
//! challenge 0x07 | nonce (32 bytes)            (only with a cluster secret)
//! auth      0x08 | mac (32 bytes) | info ..    (HMAC-SHA256(secret, nonce || info))
//! auth-ok   0x09 |
//! ```
//!
//! `ns` is 0 for `sys` (the framework's own remotes) and 1 for `user` (the app's). Payloads
//! are prost-encoded messages or raw bytes. See [`frame`] for every rule.
//!
//! # Use
//! ```no_run
//! use shaddock_rpc::{remote, RemoteError, Registry, RpcClient, RpcConfig, RpcServer, ServerInfo, Target};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! pub struct Echo {
//!     #[prost(string, tag = "1")]
//!     pub text: String,
//! }
//!
//! remote! {
//!     /// An echo remote.
//!     pub mod echo_remote: user "echoRemote" {
//!         /// Returns its argument.
//!         fn echo(Echo) -> Echo;
//!     }
//! }
//!
//! struct Impl;
//! impl echo_remote::Remote for Impl {
//!     async fn echo(&self, e: Echo) -> Result<Echo, RemoteError> { Ok(e) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Server (port from servers.json).
//!     let mut registry = Registry::new();
//!     registry.add(echo_remote::Server::new(Impl))?;
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let port = listener.local_addr()?.port();
//!     let shutdown = CancellationToken::new();
//!     let server = RpcServer::new(registry, RpcConfig::default());
//!     tokio::spawn(server.serve(listener, shutdown.clone()));
//!
//!     // Client.
//!     let rpc = RpcClient::new(RpcConfig::default());
//!     rpc.directory().add(ServerInfo::new("echo-1", "echo", "127.0.0.1", port));
//!     let stub = echo_remote::Client::new(&rpc);
//!     let hi = Echo { text: "hi".into() };
//!     let reply = stub.echo(Target::route("echo", "some-uid"), hi).await?;
//!     assert_eq!(reply.text, "hi");
//!     shutdown.cancel();
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees and limits
//! - Every call ends: with its reply, a typed [`RpcError`], or [`RpcError::Timeout`] after
//!   `call_timeout` (per handle: [`RpcClient::with_call_timeout`]). Calls in flight when a
//!   connection drops fail at once with [`RpcError::ConnectionLost`].
//! - Queues are bounded ([`RpcConfig`]); a full queue makes callers (or replying handlers)
//!   wait, it never drops a frame. The server stops reading a connection whose
//!   `max_in_flight_per_connection` handlers are all busy.
//! - A bad frame closes that connection only, logged with the peer and the reason.
//! - Heartbeat: a client link pings every `heartbeat_interval` (default 1 s); a peer that stops
//!   answering with its socket open (frozen process, power-off, partition) is declared dead
//!   between `heartbeat_timeout` and `heartbeat_timeout + heartbeat_interval` (default 3-4 s)
//!   after the last frame it sent. Its calls in flight fail at once with
//!   [`RpcError::PeerUnresponsive`] and new calls fail fast with [`RpcError::PeerDown`] while
//!   the client reconnects (a connection counts as up once the peer answered a ping).
//! - The server serves at most `max_connections` peers (further ones wait in the listen
//!   backlog), closes a connection silent for `idle_timeout` (default 60 s), and a read buffer
//!   grows with the bytes that arrive, never by a declared frame length at once.
//! - With [`RpcConfig::secret`] set, a server reads no call from a peer before it answered an
//!   HMAC-SHA256 challenge with the cluster secret; a client refused (or asked for a secret it
//!   lacks) gets [`RpcError::AuthFailed`]. Without it the port trusts any peer.
//! - With [`RpcConfig::tls`] set, the port speaks TLS only and both sides prove a certificate
//!   of the cluster CA; a refused handshake is [`RpcError::TlsFailed`] on the client and a
//!   `warn!` naming the peer and the reason on the server. The secret is checked inside TLS.
//! - [`RpcServer::serve`] waits for running handlers at shutdown; a handler that never
//!   finishes keeps it waiting (bound it with a timeout around `serve` if needed).
//!
//! # Logging
//! Through `tracing`: spans `rpc_server{local}`, `rpc_conn{peer}` on the server and
//! `rpc_peer{server_id, addr}` on the client; a closed connection is logged with its reason.

pub mod auth;
pub mod client;
pub mod config;
pub mod directory;
pub mod error;
pub mod frame;
pub mod hash;
mod io;
pub mod metrics;
pub mod payload;
pub mod server;
pub mod service;
pub mod tls;

pub use auth::{ClusterSecret, SecretError};
pub use client::{PeerState, RpcClient};
pub use config::RpcConfig;
pub use directory::{
    Crc32Router, PeerDirectory, PlaceFuture, Router, ServerId, ServerInfo, Target,
};
pub use error::{RemoteError, RpcError};
pub use frame::{ErrorKind, Frame, FrameCodec, FrameError, Name, Namespace, WireError};
pub use metrics::RpcMetrics;
pub use payload::{Payload, PayloadError, Raw};
pub use server::RpcServer;
pub use service::{BoxCall, DynRpcFilter, Registry, RegistryError, RpcCall, RpcFilter, Service};
pub use tls::{RpcTls, TlsError};

/// Re-exported: [`RpcServer::serve`] stops when this token is cancelled.
pub use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub use bytes as __bytes;
