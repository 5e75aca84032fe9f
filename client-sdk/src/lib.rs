//! A Rust client for pomelo / pinus protocol servers (Shaddock, pomelo, pinus) over raw TCP or
//! WebSocket, built on the sans-IO `shaddock-protocol` crate.
//!
//! It speaks what the stock pomelo clients speak: the handshake (with user data) and its ack,
//! heartbeats at the interval the server announces with dead-server detection, the route
//! dictionary and pomelo-protobuf schemas the server sends, requests with ids, notifies,
//! pushes and kicks.
//!
//! # Layout
//! - [`config`]: [`ClientConfig`], every knob with its default.
//! - [`client`]: [`Client`], the cloneable handle: connect, `request*`, `notify*`, `on`,
//!   `close`; and the session task that closes or reconnects when a connection ends.
//! - `driver`: the connection task (one per connection) that owns the socket and `select!`s
//!   over reads, the bounded outbound queue, the heartbeat timers and close.
//! - [`transport`]: [`Transport`] (raw TCP or WebSocket) behind one package interface.
//! - [`push`]: [`Push`] and [`PushStream`] subscriptions (bounded; slow subscribers lose
//!   pushes, never memory).
//! - [`event`]: [`Event`]s (kick, heartbeat timeout, protocol error, reconnect steps, disconnect) on
//!   [`Events`].
//! - [`tls`]: [`ClientTls`], TLS + TCP and `wss://` with a configurable root store.
//! - [`gate`]: query a gate, then connect to the connector it names.
//! - [`reconnect`]: [`ReconnectPolicy`], coming back on its own after a lost connection.
//! - [`error`]: [`Error`] and [`DisconnectReason`].
//!
//! # Use
//! ```no_run
//! # async fn demo() -> Result<(), shaddock_client::Error> {
//! use serde_json::json;
//! use shaddock_client::{ClientConfig, Event, Transport, gate};
//!
//! let (client, mut events, _entry) =
//!     gate::connect_via_gate("127.0.0.1:3014", Transport::Tcp, "bob", ClientConfig::default())
//!         .await?;
//! let mut chat = client.on("onChat");
//! client
//!     .request("connector.entryHandler.enter", &json!({"username": "bob", "rid": "lobby"}))
//!     .await?;
//! client
//!     .request("chat.chatHandler.send",
//!              &json!({"rid": "lobby", "content": "hi", "from": "bob", "target": "*"}))
//!     .await?;
//! tokio::select! {
//!     Some(push) = chat.recv() => println!("{}: {}", push.route, push.value()?),
//!     Some(Event::Kicked { reason }) = events.recv() => println!("kicked: {reason}"),
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # Reconnect
//! Off by default: when the connection ends, the client ends ([`Event::Disconnected`], and
//! every call fails with [`Error::Disconnected`]). With a [`ReconnectPolicy`] in
//! [`ClientConfig::reconnect`], a lost connection (the server closed it or died, the network
//! went silent past the heartbeat timeout, a transport or framing error) is made again, with
//! exponential backoff and jitter, up to a number of attempts or a time. Each attempt asks a
//! resolver for the address (by default the last one; [`connect_via_gate`] asks the gate
//! again), repeats the handshake and runs a hook to re-enter (log in, join a room) before the
//! other handles may use the new connection. Subscriptions and the [`Events`] stream carry on.
//! A kick ([`Event::Kicked`]) means "go away" and is not reconnected unless
//! [`ReconnectPolicy::on_kick`]; [`Client::close`] is never.
//!
//! - Requests in flight when the connection drops fail at once with [`Error::Disconnected`]
//!   (the server may or may not have handled them; retry only what is safe to repeat).
//! - Requests and notifies made while reconnecting wait for the new connection, up to their
//!   timeout ([`WhileReconnecting::Wait`], the default), or fail at once with
//!   [`Error::Reconnecting`] ([`WhileReconnecting::FailFast`]).
//! - Events for each step: [`Event::ConnectionLost`], then per attempt
//!   [`Event::ReconnectAttempt`] (number, delay) and [`Event::ReconnectFailed`], then
//!   [`Event::Reconnected`] — or [`Event::ReconnectGaveUp`] and the final
//!   [`Event::Disconnected`]. Events are dropped when the queue is full
//!   ([`ClientConfig::event_capacity`]); the state is also in [`Client::is_reconnecting`]
//!   and [`Client::closed`].
//! - The first connection is not retried: [`Client::connect`] returns its error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shaddock_client::Error> {
//! use serde_json::json;
//! use shaddock_client::{ClientConfig, Error, ReconnectPolicy, Transport, gate};
//!
//! let enter = json!({"username": "bob", "rid": "lobby"});
//! let policy = {
//!     let enter = enter.clone();
//!     ReconnectPolicy::default().on_reconnect(move |client| {
//!         let enter = enter.clone();
//!         async move {
//!             let reply = client.request("connector.entryHandler.enter", &enter).await?;
//!             if reply.get("error").is_some() {
//!                 return Err(Error::hook(format!("enter refused: {reply}")));
//!             }
//!             Ok(())
//!         }
//!     })
//! };
//! let config = ClientConfig::default().with_reconnect(policy);
//! // Each reconnect asks the gate again, then runs the hook on the new connector.
//! let (client, _events, _entry) =
//!     gate::connect_via_gate("127.0.0.1:3014", Transport::Tcp, "bob", config).await?;
//! client.request("connector.entryHandler.enter", &enter).await?;
//! # Ok(()) }
//! ```
//!
//! # Bodies
//! [`Client::request`] / [`Client::notify`] take and give `serde_json::Value`s; the `_as`
//! variants any serde type; the `_prost` variants prost messages; the `_raw` variants bytes.
//! JSON is written as `JSON.stringify` writes it (`shaddock_protocol::json`). When the server's
//! handshake carries pomelo-protobuf schemas, the JSON and serde variants encode requests
//! with the client schema of the route and decode responses and pushes with the server schema
//! of the route (the request's route for a response), as the pomelo JS client does.
//!
//! # Cancel safety
//! [`Client::closed`], [`Events::recv`], [`PushStream::recv`] and [`PushStream::recv_many`]
//! are cancel safe. Dropping a request future forgets the request (its waiter is removed).

pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod event;
pub mod gate;
pub mod push;
pub mod reconnect;
pub mod tls;
pub mod transport;

pub use client::Client;
pub use config::ClientConfig;
pub use error::{DisconnectReason, Error};
pub use event::{Event, Events};
pub use gate::{GateEntry, connect_via_gate, query_entry};
pub use push::{Push, PushStream};
pub use reconnect::{ReconnectPolicy, WhileReconnecting};
pub use tls::{ClientTls, TlsConfigError};
pub use transport::Transport;
