//! pomelo-protobuf compatible bodies: a JSON schema (the `protos` object of the handshake)
//! drives the encoding and decoding of `serde_json::Value` bodies.
//!
//! pomelo-protobuf is protobuf-*like*, not protobuf: `int32` is zig-zagged, repeated numeric
//! fields carry an element **count**, fields are written in the JSON object's key order and
//! browser clients put wire type 2 on varints. See PROTOCOL.md §11.
//!
//! # Layout
//! - `schema`: [`parsed_form`] (pomelo's parser, byte-exact parsed form) and the validated
//!   [`Schema`].
//! - `encode` / `decode`: [`Schema::encode`], [`Schema::encode_into`], [`Schema::decode`].
//! - `typed`: [`encode_message`] / [`decode_message`] for `#[derive(prost::Message)]` bodies.
//! - `error`: [`ProtobufError`] (one body) and [`SchemaError`] (load time).
//! - [`Protos`]: the server and client schemas plus their version, as the handshake needs them.
//!
//! # Use
//! ```
//! use serde_json::json;
//! use shaddock_protocol::protobuf::Protos;
//!
//! let protos = Protos::from_files(
//!     &json!({"onChat": {"required string msg": 1}}),            // serverProtos.json
//!     &json!({"chat.chatHandler.send": {"required string content": 1}}), // clientProtos.json
//! )?;
//! // The server encodes with the server schema and decodes with the client schema.
//! let bytes = protos.server().encode("onChat", &json!({"msg": "hi"}))?;
//! assert_eq!(&bytes[..], b"\x0a\x02hi");
//! let body = protos.client().decode("chat.chatHandler.send", b"\x0a\x02yo")?;
//! assert_eq!(body, json!({"content": "yo"}));
//! // What goes into the handshake reply as `sys.protos`:
//! let _ = protos.handshake_json();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Deviations from pomelo-protobuf (all on input pomelo mishandles)
//! - Schemas with a type pomelo cannot resolve, pinus `map`/`obj` rules, invalid or duplicate
//!   tags are refused at load time ([`SchemaError`]).
//! - Encoding refuses values that do not fit the type (negative `uInt32`, numeric strings,
//!   fractions for integers, more than 32 bits) instead of writing them.
//! - Decoding refuses unknown tags, truncated input and 32-bit fields with larger values.
//! - No buffer-size heuristic: any body encodes.
//! - pinus' `bool`, `uInt64`, `sInt64` are supported (64-bit values exactly, not rounded to
//!   doubles); pinus' `map`/`obj` rules and `decodeCheckMsg` are not.

mod decode;
mod encode;
mod error;
mod schema;
mod typed;
mod wire;

use serde_json::{Map, Value};

pub use error::{ProtobufError, SchemaError};
pub use schema::{Schema, parsed_form};
pub use typed::{decode_message, encode_message};

/// Deepest nesting of messages accepted in schemas and bodies; bounds recursion (and the
/// stack) on hostile input.
pub const MAX_DEPTH: usize = 64;

/// The protobuf schemas of an application: `server` (serverProtos.json: bodies the server
/// sends, keyed by push route or request route) and `client` (clientProtos.json: bodies
/// clients send), with their version hash.
///
/// Built once at startup and passed to whoever needs it (wrap it in an `Arc`); never global.
#[derive(Debug, Clone)]
pub struct Protos {
    server: Schema,
    client: Schema,
    version: String,
}

impl Default for Protos {
    /// No protobuf routes at all (every body is JSON).
    fn default() -> Self {
        Self::new(Schema::empty(), Schema::empty())
    }
}

impl Protos {
    /// Combine two loaded schemas; the version is computed as pomelo does
    /// ([`protos_version`]).
    pub fn new(server: Schema, client: Schema) -> Self {
        let version = protos_version(client.parsed(), server.parsed());
        Self {
            server,
            client,
            version,
        }
    }

    /// Load from the content of `serverProtos.json` and `clientProtos.json`.
    ///
    /// # Errors
    /// [`SchemaError`] from [`Schema::from_file_json`] for either file.
    pub fn from_files(server_protos: &Value, client_protos: &Value) -> Result<Self, SchemaError> {
        Ok(Self::new(
            Schema::from_file_json(server_protos)?,
            Schema::from_file_json(client_protos)?,
        ))
    }

    /// Load the `sys.protos` object of a handshake reply (`{"server", "client", "version"}`),
    /// as a client does. The version is kept as sent (a client presents it back on its next
    /// connection); when absent it is computed.
    ///
    /// # Errors
    /// `InvalidHandshake` when `server`/`client` is missing or `version` is not a string;
    /// otherwise as [`Schema::from_parsed`].
    pub fn from_handshake(protos: &Value) -> Result<Self, SchemaError> {
        let part = |name: &str| {
            protos
                .get(name)
                .cloned()
                .ok_or_else(|| SchemaError::InvalidHandshake {
                    reason: format!("`{name}` is missing"),
                })
        };
        let server = Schema::from_parsed(part("server")?)?;
        let client = Schema::from_parsed(part("client")?)?;
        let version = match protos.get("version") {
            None => protos_version(client.parsed(), server.parsed()),
            Some(Value::String(v)) => v.clone(),
            Some(_) => {
                return Err(SchemaError::InvalidHandshake {
                    reason: "`version` is not a string".to_owned(),
                });
            }
        };
        Ok(Self {
            server,
            client,
            version,
        })
    }

    /// The schema of bodies the server sends (encode on the server, decode on a client).
    pub fn server(&self) -> &Schema {
        &self.server
    }

    /// The schema of bodies clients send (decode on the server, encode on a client).
    pub fn client(&self) -> &Schema {
        &self.client
    }

    /// `protos.version`: base64(MD5(JSON(client) + JSON(server))), e.g.
    /// `P/yHqRlxnuvqIDuPrgKEuQ==`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether bodies clients send on `route` are protobuf.
    pub fn has_client_route(&self, route: &str) -> bool {
        self.client.has_route(route)
    }

    /// Whether bodies the server sends on `route` (push route, or request route for a
    /// response) are protobuf.
    pub fn has_server_route(&self, route: &str) -> bool {
        self.server.has_route(route)
    }

    /// The `sys.protos` object of the handshake reply: `{"server", "client", "version"}`, in
    /// pomelo's key order.
    pub fn handshake_json(&self) -> Value {
        let mut m = Map::with_capacity(3);
        m.insert("server".to_owned(), self.server.parsed().clone());
        m.insert("client".to_owned(), self.client.parsed().clone());
        m.insert("version".to_owned(), Value::from(self.version.as_str()));
        Value::Object(m)
    }
}

/// pomelo's `protos.version`: base64 of the MD5 of
/// `JSON.stringify(parsedClient) + JSON.stringify(parsedServer)`.
pub fn protos_version(parsed_client: &Value, parsed_server: &Value) -> String {
    // `crate::json` writes exactly what JSON.stringify writes (key order, escapes, numbers).
    let mut text = crate::json::to_vec(parsed_client);
    crate::json::write(parsed_server, &mut text);
    crate::dictionary::version_hash(&text)
}

/// The fixed schema of the fuzz target (a copy of the shared vector schema, without its
/// unresolvable route, plus the pinus types).
const FUZZ_SCHEMA: &str = r#"{
  "connector.entryHandler.entry": {"required string uid": 1, "optional uInt32 rid": 2},
  "onChat": {"required string from": 1, "required string msg": 2, "optional sInt32 delta": 3,
             "optional double ts": 4, "optional float ratio": 5, "optional int32 level": 6},
  "area.playerHandler.move": {"message Pos": {"required sInt32 x": 1, "required sInt32 y": 2},
                              "required Pos pos": 1, "repeated uInt32 path": 2},
  "onAdd": {"message Member": {"message Item": {"required uInt32 id": 1, "optional uInt32 count": 2},
                               "required uInt32 id": 1, "optional string name": 2, "repeated Item items": 3},
            "repeated Member members": 1, "repeated string tags": 2, "repeated sInt32 deltas": 3,
            "repeated double weights": 4, "repeated float fs": 5},
  "message Vec": {"required float x": 1, "required float y": 2},
  "onMove": {"required uInt32 eid": 1, "required Vec to": 2},
  "message Node": {"required uInt32 v": 1, "optional Node next": 2, "repeated Node kids": 3},
  "tree": {"optional Node root": 1, "repeated bool flags": 2, "optional uInt64 big": 3,
           "optional sInt64 neg": 4, "optional bool on": 5}
}"#;

/// The routes of the fuzz schema; the first input byte picks one (modulo the count).
#[doc(hidden)]
pub const FUZZ_ROUTES: &[&str] = &[
    "connector.entryHandler.entry",
    "onChat",
    "area.playerHandler.move",
    "onAdd",
    "message Vec",
    "onMove",
    "tree",
];

/// Fuzz body (fuzz target `protobuf` and its seed test): the first byte selects a route of a
/// fixed schema, the rest is decoded; a body that decodes and re-encodes must be stable:
/// `encode(decode(encode(v))) == encode(v)`.
///
/// # Panics
/// When that invariant is broken, or the fixed schema does not load — both are bugs.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        let file: Value = serde_json::from_str(FUZZ_SCHEMA).expect("fuzz schema is JSON");
        Schema::from_file_json(&file).expect("fuzz schema loads")
    });
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let route = FUZZ_ROUTES[usize::from(sel) % FUZZ_ROUTES.len()];
    let Ok(value) = schema.decode(route, body) else {
        return;
    };
    // Re-encoding may fail (decoding does not require `required` fields).
    let Ok(first) = schema.encode(route, &value) else {
        return;
    };
    let again = schema
        .decode(route, &first)
        .expect("a body we encoded decodes");
    let second = schema
        .encode(route, &again)
        .expect("a decoded body re-encodes");
    assert_eq!(first, second, "encoding is not stable for route {route}");
}
