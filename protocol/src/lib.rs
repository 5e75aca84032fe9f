//! The pomelo / pinus client wire protocol, sans-IO.
//!
//! Pure encode/decode over `bytes`: no tokio, no sockets. See `../shared/spec/PROTOCOL.md`.
//! Byte-compatible with the NetEase pomelo and pinus JavaScript codecs (checked against
//! their golden vectors in `tests/vectors.rs`).
//!
//! ```text
//!  transport   raw TCP byte stream | WebSocket binary messages
//!  package     [type:1][length:3][body]      -> package::{Package, PackageDecoder}
//!  message     [flag][id?][route?][body]      -> message::Message (DATA bodies)
//!  body        JSON or pomelo-protobuf        -> json, protobuf
//! ```
//!
//! # Layout
//! - [`package`]: package types, the incremental stream decoder, WebSocket frame splitting.
//! - [`message`]: messages (request, notify, response, push), routes, [`Route`] parsing.
//! - [`varint`]: the message id varint.
//! - [`dictionary`]: the route dictionary built as pomelo builds it, and its version hash.
//! - [`handshake`]: handshake request/reply and kick bodies, server and client side.
//! - [`body`]: [`BodyCodec`], JSON or protobuf bodies by route, whole response and push
//!   packages.
//! - [`json`]: JSON bodies written as `JSON.stringify` writes them, read leniently.
//! - [`error`]: the crate's [`Error`].
//! - [`protobuf`]: pomelo-protobuf compatible bodies driven by a JSON schema.
//! - [`connection`]: the server side of one client connection as a state machine
//!   (handshake, ack, heartbeat, kick), driven by packages and `now`.
//! - `codec` (feature `codec`): tokio-util `Decoder`/`Encoder` adapters for packages.
//!
//! # Use
//! A connector feeds socket bytes to a [`PackageDecoder`] (TCP) or each WebSocket message to
//! [`package::decode_frame`], answers HANDSHAKE packages with [`handshake`], decodes DATA
//! bodies with [`Message::decode`], and writes replies with [`Message::encode_package`].

pub mod body;
pub mod connection;
pub mod protobuf;

#[cfg(feature = "codec")]
pub mod codec;
pub mod dictionary;
pub mod error;
pub mod handshake;
pub mod json;
pub mod message;
pub mod package;
pub mod varint;

#[doc(hidden)]
pub mod fuzzing;

pub use body::BodyCodec;
#[cfg(feature = "codec")]
pub use codec::PackageCodec;
pub use dictionary::RouteDictionary;
pub use error::Error;
pub use handshake::{
    ClientHandshake, Flavor, HandshakeCode, HandshakeProtos, HandshakeRequest, HandshakeResponse,
    Kick, ServerHandshake,
};
pub use message::{Message, MessageRoute, MessageType, Route, RouteName};
pub use package::{Package, PackageDecoder, PackageType};
