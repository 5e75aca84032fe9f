//! Errors of the pomelo-protobuf body codec ([`ProtobufError`]) and of schema loading
//! ([`SchemaError`]).
//!
//! Codec errors concern one body only: the caller answers that request with an error (or drops
//! that push) and keeps the connection. Schema errors happen at startup (or when a client loads
//! the `protos` of a handshake) and mean the schema must not be used.

/// A body that could not be encoded or decoded with a pomelo-protobuf schema.
///
/// Never fatal for the connection: only the one message is affected. [`ProtobufError::code`]
/// gives the snake-case name used in the golden vectors (`vectors/protobuf.json` at the top of the repository).
///
/// `field` is the path of the offending field inside the body, e.g. `members[1].items[0].id`;
/// it is empty when the problem is the body itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtobufError {
    /// The schema has no message for this route. Whoever chose protobuf for the route made a
    /// mistake; the body cannot be encoded or decoded (`no_schema_for_route`).
    #[error("no protobuf schema for route `{route}`")]
    NoSchemaForRoute {
        /// The route that was asked for.
        route: String,
    },
    /// Decoding met a tag that the message does not declare (`unknown_field`). The value cannot
    /// be skipped safely because pomelo clients write unreliable wire types (browser build).
    #[error("route `{route}`: unknown tag {tag} in {}", display_field(field))]
    UnknownField {
        /// The route of the body.
        route: String,
        /// Path of the message in which the tag appeared (empty: the body itself).
        field: String,
        /// The tag number read from the wire.
        tag: u64,
    },
    /// The input ends inside a tag, length or value (`truncated`).
    #[error(
        "route `{route}`: body truncated while reading {} (needed {needed} more bytes at offset {offset})",
        display_field(field)
    )]
    Truncated {
        /// The route of the body.
        route: String,
        /// Path of the field being read.
        field: String,
        /// Offset (within the innermost message) where the read started.
        offset: usize,
        /// How many bytes were missing (at least; 1 for an unfinished varint).
        needed: usize,
    },
    /// A value does not fit the declared type: a negative or too large integer, a float beyond
    /// `f32`, a varint longer than 10 bytes, a non-finite float on the wire
    /// (`value_out_of_range`).
    #[error(
        "route `{route}`: value of {} out of range for {ty}: {detail}",
        display_field(field)
    )]
    ValueOutOfRange {
        /// The route of the body.
        route: String,
        /// Path of the field.
        field: String,
        /// The declared schema type (`uInt32`, `float`, …).
        ty: &'static str,
        /// The value or a description of it.
        detail: String,
    },
    /// A `required` field is absent from the value to encode, checked recursively in nested
    /// and repeated messages (`missing_required_field`).
    #[error("route `{route}`: required field {} is missing", display_field(field))]
    MissingRequiredField {
        /// The route of the body.
        route: String,
        /// Path of the missing field.
        field: String,
    },
    /// A JSON value of the wrong kind for its schema type: a string for `uInt32`, a fraction
    /// for an integer type, an array for a message, … (`value_type_mismatch`).
    #[error(
        "route `{route}`: {} expects {expected}, found {found}",
        display_field(field)
    )]
    ValueTypeMismatch {
        /// The route of the body.
        route: String,
        /// Path of the field.
        field: String,
        /// What the schema wants.
        expected: &'static str,
        /// What the value was.
        found: &'static str,
    },
    /// Messages nested deeper than [`MAX_DEPTH`](super::MAX_DEPTH) levels (`nesting_too_deep`);
    /// refused to bound the stack.
    #[error(
        "route `{route}`: messages nested deeper than {limit} levels at {}",
        display_field(field)
    )]
    NestingTooDeep {
        /// The route of the body.
        route: String,
        /// Path where the limit was reached.
        field: String,
        /// The limit.
        limit: usize,
    },
    /// A typed (prost) body did not decode (`invalid_message`).
    #[error("body is not a valid `{type_name}` protobuf message: {source}")]
    InvalidMessage {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What prost reported.
        source: prost::DecodeError,
    },
    /// A typed (prost) body did not encode (`encode_failed`); with a growable buffer this does
    /// not happen in practice.
    #[error("could not encode `{type_name}`: {source}")]
    EncodeFailed {
        /// The Rust type being encoded.
        type_name: &'static str,
        /// What prost reported.
        source: prost::EncodeError,
    },
}

fn display_field(field: &str) -> String {
    if field.is_empty() {
        "the body".to_owned()
    } else {
        format!("field `{field}`")
    }
}

impl ProtobufError {
    /// The snake-case error name of the golden vectors (`unknown_field`, `truncated`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSchemaForRoute { .. } => "no_schema_for_route",
            Self::UnknownField { .. } => "unknown_field",
            Self::Truncated { .. } => "truncated",
            Self::ValueOutOfRange { .. } => "value_out_of_range",
            Self::MissingRequiredField { .. } => "missing_required_field",
            Self::ValueTypeMismatch { .. } => "value_type_mismatch",
            Self::NestingTooDeep { .. } => "nesting_too_deep",
            Self::InvalidMessage { .. } => "invalid_message",
            Self::EncodeFailed { .. } => "encode_failed",
        }
    }

    /// The route named by the error, if any.
    pub fn route(&self) -> Option<&str> {
        match self {
            Self::NoSchemaForRoute { route }
            | Self::UnknownField { route, .. }
            | Self::Truncated { route, .. }
            | Self::ValueOutOfRange { route, .. }
            | Self::MissingRequiredField { route, .. }
            | Self::ValueTypeMismatch { route, .. }
            | Self::NestingTooDeep { route, .. } => Some(route),
            Self::InvalidMessage { .. } | Self::EncodeFailed { .. } => None,
        }
    }

    /// The path of the offending field inside the body, if any (empty: the body itself).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::UnknownField { field, .. }
            | Self::Truncated { field, .. }
            | Self::ValueOutOfRange { field, .. }
            | Self::MissingRequiredField { field, .. }
            | Self::ValueTypeMismatch { field, .. }
            | Self::NestingTooDeep { field, .. } => Some(field),
            Self::NoSchemaForRoute { .. }
            | Self::InvalidMessage { .. }
            | Self::EncodeFailed { .. } => None,
        }
    }

    fn parts_mut(&mut self) -> Option<(&mut String, &mut String)> {
        match self {
            Self::UnknownField { route, field, .. }
            | Self::Truncated { route, field, .. }
            | Self::ValueOutOfRange { route, field, .. }
            | Self::MissingRequiredField { route, field, .. }
            | Self::ValueTypeMismatch { route, field, .. }
            | Self::NestingTooDeep { route, field, .. } => Some((route, field)),
            Self::NoSchemaForRoute { .. }
            | Self::InvalidMessage { .. }
            | Self::EncodeFailed { .. } => None,
        }
    }

    /// Prefix the field path with the enclosing field (`name` or `name[index]`); used while an
    /// error travels out of nested messages, so the happy path builds no strings.
    pub(super) fn within(mut self, name: &str, index: Option<usize>) -> Self {
        if let Some((_, field)) = self.parts_mut() {
            let mut path = match index {
                Some(i) => format!("{name}[{i}]"),
                None => name.to_owned(),
            };
            if !field.is_empty() {
                if !field.starts_with('[') {
                    path.push('.');
                }
                path.push_str(field);
            }
            *field = path;
        }
        self
    }

    /// Set the route once the error reaches the entry point.
    pub(super) fn on_route(mut self, r: &str) -> Self {
        if let Some((route, _)) = self.parts_mut() {
            r.clone_into(route);
        }
        self
    }
}

/// A pomelo-protobuf schema (raw `clientProtos.json`/`serverProtos.json` content or the parsed
/// form of a handshake) that cannot be used. Raised once, at load time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The schema, a message definition or `__messages` is not a JSON object.
    #[error("protobuf schema: {what} must be a JSON object")]
    NotAnObject {
        /// Which part (`the schema`, `message onChat`, …).
        what: String,
    },
    /// A field entry of the parsed form is not `{"option", "type", "tag"}` with the right
    /// kinds.
    #[error("protobuf schema: message `{message}`, field `{field}`: {reason}")]
    InvalidField {
        /// Path of the message (`onAdd.Member`).
        message: String,
        /// The field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule this codec does not implement (pinus `map` / `obj`); refusing is better than
    /// silently dropping the field as pomelo's parser does.
    #[error(
        "protobuf schema: message `{message}`, field `{field}`: rule `{rule}` is not supported"
    )]
    UnsupportedRule {
        /// Path of the message.
        message: String,
        /// The field name.
        field: String,
        /// The rule (`map`, `obj`, …).
        rule: String,
    },
    /// A tag number outside 0..=2^28-1 or not an integer.
    #[error("protobuf schema: message `{message}`, field `{field}`: invalid tag {tag}")]
    InvalidTag {
        /// Path of the message.
        message: String,
        /// The field name.
        field: String,
        /// The tag as written.
        tag: String,
    },
    /// Two fields of one message share a tag number.
    #[error(
        "protobuf schema: message `{message}`: tag {tag} used by both `{first}` and `{second}`"
    )]
    DuplicateTag {
        /// Path of the message.
        message: String,
        /// The tag.
        tag: u32,
        /// The first field with it.
        first: String,
        /// The second field with it.
        second: String,
    },
    /// A field type is neither a builtin type, nor declared in the field's own message, nor a
    /// top-level `"message <Name>"`. pomelo-protobuf silently writes corrupt bodies for such
    /// fields (vector quirk `unresolved_nested_type`), so the schema is refused.
    #[error(
        "protobuf schema: message `{message}`, field `{field}`: type `{type_name}` is not declared in `{message}` nor as a top-level \"message {type_name}\" (types of outer messages are not visible)"
    )]
    UnresolvedType {
        /// Path of the message holding the field.
        message: String,
        /// The field name.
        field: String,
        /// The type it names.
        type_name: String,
    },
    /// Message definitions nested deeper than [`MAX_DEPTH`](super::MAX_DEPTH).
    #[error("protobuf schema: message `{message}` nested deeper than {limit} levels")]
    TooDeep {
        /// Path of the message.
        message: String,
        /// The limit.
        limit: usize,
    },
    /// The handshake's `protos` object lacks `server`/`client` or has a non-string `version`.
    #[error("handshake protos: {reason}")]
    InvalidHandshake {
        /// What is wrong.
        reason: String,
    },
}
