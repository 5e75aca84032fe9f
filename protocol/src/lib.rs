//! The pomelo / pinus client wire protocol, sans-IO.
//!
//! Pure encode/decode over `bytes`: no tokio, no sockets. See `../shared/spec/PROTOCOL.md`.
//!
//! # Layout
//! - [`protobuf`]: pomelo-protobuf compatible bodies driven by a JSON schema.

pub mod protobuf;
