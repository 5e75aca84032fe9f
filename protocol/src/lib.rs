//! The pomelo / pinus client wire protocol, sans-IO.
//!
//! Pure encode/decode over `bytes`: no tokio, no sockets. See `../shared/spec/PROTOCOL.md`.
//!
//! # Layout
//! - [`protobuf`]: pomelo-protobuf compatible bodies driven by a JSON schema.
//! - [`connection`]: the server side of one client connection as a state machine
//!   (handshake, ack, heartbeat, kick), driven by packages and `now`.

pub mod connection;
pub mod protobuf;
