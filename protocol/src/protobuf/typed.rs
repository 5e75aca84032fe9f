//! The typed face: bodies as hand-written `#[derive(prost::Message)]` structs.
//!
//! pomelo-protobuf bytes and standard protobuf agree for scalars, strings, nested messages and
//! repeated strings/messages, provided `int32` and `sInt32` are declared `sint32` on the prost
//! side (pomelo zig-zags both) — §11.6. They disagree for repeated numeric fields (pomelo
//! writes an element count, not packed bytes) and for browser-encoded tags (wire type 2 on
//! varints), so bodies from browser clients must go through the schema codec
//! ([`Schema::decode`](super::Schema::decode)).
//!
//! ```
//! use bytes::BytesMut;
//! use shaddock_protocol::protobuf::{decode_message, encode_message};
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! struct Entry {
//!     #[prost(string, required, tag = "1")]
//!     uid: String,
//!     #[prost(uint32, optional, tag = "2")]
//!     rid: Option<u32>,
//! }
//!
//! let mut buf = BytesMut::new();
//! encode_message(&Entry { uid: "alice".into(), rid: Some(1001) }, &mut buf).unwrap();
//! assert_eq!(&buf[..], b"\x0a\x05alice\x10\xe9\x07");
//! let back: Entry = decode_message(&buf).unwrap();
//! assert_eq!(back.rid, Some(1001));
//! ```

use bytes::BytesMut;

use super::error::ProtobufError;

/// Append the standard protobuf encoding of `msg` to `dst`.
///
/// # Errors
/// `EncodeFailed` if prost reports insufficient capacity (cannot happen with `BytesMut`,
/// which grows).
pub fn encode_message<M: prost::Message>(msg: &M, dst: &mut BytesMut) -> Result<(), ProtobufError> {
    dst.reserve(msg.encoded_len());
    msg.encode(dst)
        .map_err(|source| ProtobufError::EncodeFailed {
            type_name: std::any::type_name::<M>(),
            source,
        })
}

/// Decode a body into `M`.
///
/// # Errors
/// `InvalidMessage` when the bytes are not a valid `M` (truncated, bad wire type, missing
/// required field, invalid UTF-8, …).
pub fn decode_message<M: prost::Message + Default>(body: &[u8]) -> Result<M, ProtobufError> {
    M::decode(body).map_err(|source| ProtobufError::InvalidMessage {
        type_name: std::any::type_name::<M>(),
        source,
    })
}
