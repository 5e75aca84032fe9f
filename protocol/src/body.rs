//! Bodies and messages as a Shaddock server writes and reads them: JSON or pomelo-protobuf by
//! route, routes compressed with the dictionary (PROTOCOL.md §8.2, §8.3).
//!
//! [`BodyCodec`] is pure (no IO): the frontend uses it to decode requests and encode
//! responses and pushes, a backend the same value to encode a channel push once, so both
//! write identical bytes. Failures are logged (`tracing`) naming the route.

use std::sync::Arc;

use crate::RouteDictionary;
use crate::json;
use crate::message::{Message, MessageRoute};
use crate::protobuf::Protos;
use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// How a Shaddock server writes bodies and PUSH packages for clients: the app's route dictionary
/// and pomelo-protobuf schemas. The frontend uses one; a backend builds the same value to encode
/// a channel push once, so both write identical bytes. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BodyCodec {
    dictionary: Option<Arc<RouteDictionary>>,
    protos: Option<Arc<Protos>>,
}

impl BodyCodec {
    /// A codec with this dictionary (routes compressed when they have a code) and these
    /// schemas (bodies of serverProtos routes written as protobuf).
    pub fn new(dictionary: Option<Arc<RouteDictionary>>, protos: Option<Arc<Protos>>) -> Self {
        Self { dictionary, protos }
    }

    /// The route dictionary, if any.
    pub fn dictionary(&self) -> Option<&Arc<RouteDictionary>> {
        self.dictionary.as_ref()
    }

    /// The pomelo-protobuf schemas, if any.
    pub fn protos(&self) -> Option<&Arc<Protos>> {
        self.protos.as_ref()
    }

    /// Whether request bodies on `route` are protobuf (clientProtos has the route).
    pub fn is_protobuf_request(&self, route: &str) -> bool {
        self.protos
            .as_ref()
            .is_some_and(|p| p.has_client_route(route))
    }

    /// Decodes a client body on `route`: protobuf when clientProtos has the route, else JSON.
    ///
    /// # Errors
    /// The client's message (what is wrong, no server internals); the decoder's own error
    /// is logged at debug level.
    pub fn decode(&self, route: &str, body: &[u8]) -> Result<Value, String> {
        match &self.protos {
            Some(p) if p.has_client_route(route) => p.client().decode(route, body).map_err(|e| {
                tracing::debug!(route, cause = %e, "request body does not decode as protobuf");
                format!(
                    "the request body does not decode with the protobuf schema of route `{route}`"
                )
            }),
            _ => json::from_slice(body).map_err(|e| {
                tracing::debug!(route, cause = %e, "request body is not JSON");
                match e {
                    // serde_json's syntax message: what and where ("expected value at line 1
                    // column 2"), no server internals.
                    crate::Error::InvalidJson { reason } => {
                        format!("the request body is not valid JSON: {reason}")
                    }
                    _ => "the request body is not valid JSON".to_owned(),
                }
            }),
        }
    }

    /// Encodes a body the server sends on `route` (push route, or request route for a
    /// response): protobuf when serverProtos has it — an empty body if that fails, as pomelo
    /// does (§8.3) — else JSON.
    pub fn encode(&self, route: &str, body: &Value) -> Bytes {
        match &self.protos {
            Some(p) if p.has_server_route(route) => match p.server().encode(route, body) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(route, cause = %e, "protobuf encoding failed, sending an empty body");
                    Bytes::new()
                }
            },
            _ => Bytes::from(json::to_vec(body)),
        }
    }

    /// A whole DATA package holding a PUSH, encoded once: the route as its dictionary code when
    /// it has one, the body as protobuf when serverProtos has the route, else JSON.
    ///
    /// # Errors
    /// A route over 255 bytes or a package over the size limit.
    pub fn push_package(&self, route: &str, body: &Value) -> Result<Bytes, crate::Error> {
        let wire_route = match self.dictionary.as_ref().and_then(|d| d.code(route)) {
            Some(code) => MessageRoute::Code(code),
            None => MessageRoute::name(route.to_owned()),
        };
        package_bytes(&Message::push(wire_route, self.encode(route, body)))
    }

    /// A whole DATA package holding the RESPONSE to request `id` on `route`.
    ///
    /// # Errors
    /// A package over the size limit.
    pub fn response_package(
        &self,
        id: u32,
        route: &str,
        body: &Value,
    ) -> Result<Bytes, crate::Error> {
        package_bytes(&Message::response(id, self.encode(route, body)))
    }
}

/// `msg` as a whole DATA package (4-byte package header included), in one exact allocation.
fn package_bytes(msg: &Message) -> Result<Bytes, crate::Error> {
    let mut dst = BytesMut::with_capacity(msg.encoded_len() + 4);
    msg.encode_package(&mut dst)?;
    Ok(dst.freeze())
}
