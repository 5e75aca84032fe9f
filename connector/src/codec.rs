//! Bodies and messages as this frontend writes and reads them: JSON or pomelo-protobuf by
//! route, routes compressed with the dictionary (PROTOCOL.md §8.2, §8.3).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use shaddock_protocol::RouteDictionary;
use shaddock_protocol::json;
use shaddock_protocol::message::{Message, MessageRoute};
use shaddock_protocol::protobuf::Protos;

/// How a Shaddock server writes bodies and PUSH packages for clients: the app's route dictionary
/// and pomelo-protobuf schemas. The frontend uses one; a backend builds the same value to encode
/// a channel push once, so both write identical bytes. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BodyCodec {
    pub(crate) dictionary: Option<Arc<RouteDictionary>>,
    pub(crate) protos: Option<Arc<Protos>>,
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

    /// Decodes a client body on `route`: protobuf when clientProtos has the route, else JSON.
    /// The error is the client's message; the decoder's own is logged at debug level.
    pub(crate) fn decode(&self, route: &str, body: &[u8]) -> Result<Value, String> {
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
                    shaddock_protocol::Error::InvalidJson { reason } => {
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
    pub(crate) fn encode(&self, route: &str, body: &Value) -> Bytes {
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
    pub fn push_package(
        &self,
        route: &str,
        body: &Value,
    ) -> Result<Bytes, shaddock_protocol::Error> {
        let wire_route = match self.dictionary.as_ref().and_then(|d| d.code(route)) {
            Some(code) => MessageRoute::Code(code),
            None => MessageRoute::name(route.to_owned()),
        };
        package_bytes(&Message::push(wire_route, self.encode(route, body)))
    }

    /// A whole DATA package holding the RESPONSE to request `id` on `route`.
    pub(crate) fn response_package(
        &self,
        id: u32,
        route: &str,
        body: &Value,
    ) -> Result<Bytes, shaddock_protocol::Error> {
        package_bytes(&Message::response(id, self.encode(route, body)))
    }
}

/// `msg` as a whole DATA package (4-byte package header included), in one exact allocation.
fn package_bytes(msg: &Message) -> Result<Bytes, shaddock_protocol::Error> {
    let mut dst = BytesMut::with_capacity(msg.encoded_len() + 4);
    msg.encode_package(&mut dst)?;
    Ok(dst.freeze())
}
