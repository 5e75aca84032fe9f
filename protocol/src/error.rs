//! The codec errors of this crate: one variant per broken wire rule.
//!
//! Every variant documents whether it is *fatal* (the byte stream can no longer be trusted,
//! close the connection) or *per message* (drop or answer that one message, keep the
//! connection). [`Error::kind`] gives the snake-case name used by the golden vectors'
//! `error` fields (`vectors/README.md` at the top of the repository), so tests can compare with them.
//!
//! The pomelo-protobuf body codec has its own error type in [`crate::protobuf`].

use crate::message::MessageType;

/// A broken rule of the pomelo wire protocol, found while encoding or decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The package type byte is not 1..=5 (HANDSHAKE .. KICK). Fatal: pomelo closes the
    /// socket at once.
    #[error("invalid package type byte `{byte:#04x}` (expected 1..=5)")]
    InvalidPackageType {
        /// The byte found in the type position.
        byte: u8,
    },
    /// Fewer than 4 bytes for a package header where a whole package was required (the end
    /// of a WebSocket message). Fatal.
    #[error("truncated package header: {available} of 4 bytes")]
    TruncatedHeader {
        /// Bytes present.
        available: usize,
    },
    /// A package's declared body length runs past the end of a WebSocket message. Fatal
    /// (pomelo zero-pads the body; we refuse it).
    #[error("truncated package body: header declares {declared} bytes, {available} present")]
    TruncatedBody {
        /// Body length from the header.
        declared: usize,
        /// Body bytes present in the message.
        available: usize,
    },
    /// A package body longer than the limit: 16 777 215 bytes (the 3-byte length field) when
    /// encoding, or the decoder's configured maximum. Fatal on decode; on encode nothing
    /// was written.
    #[error("package body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// The body length (declared in the header, or of the body to encode).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A DATA package with an empty body: no message flag byte. Per message.
    #[error("empty message: DATA package body has no flag byte")]
    EmptyMessage,
    /// Message type bits (flag bits 1-3) are 4..=7. Per message (the references drop it;
    /// closing is also reasonable).
    #[error("invalid message type {bits} in flag byte `{flag:#04x}` (expected 0..=3)")]
    InvalidMessageType {
        /// The flag byte.
        flag: u8,
        /// `(flag >> 1) & 7`.
        bits: u8,
    },
    /// The message id varint ends before a byte below 0x80. Per message.
    #[error("truncated message id varint")]
    TruncatedId,
    /// The message id varint is longer than 5 bytes. Per message.
    #[error("message id varint longer than 5 bytes")]
    IdTooLong,
    /// A 5-byte id varint whose value exceeds 2^32 - 1. Per message.
    #[error("message id varint exceeds 2^32 - 1")]
    IdOverflow,
    /// A compressed route needs 2 bytes; fewer are present. Per message.
    #[error("truncated route code: {available} of 2 bytes")]
    TruncatedRouteCode {
        /// Bytes present after the id.
        available: usize,
    },
    /// The route length byte is missing or the route runs past the end of the message.
    /// Per message.
    #[error("truncated route: {declared} bytes declared, {available} present")]
    TruncatedRoute {
        /// Declared route length (0 when the length byte itself is missing).
        declared: usize,
        /// Bytes present after the length byte.
        available: usize,
    },
    /// The route bytes are not valid UTF-8 (CESU-8 surrogates included). Per message.
    #[error("route is not valid UTF-8 (bytes {hex})")]
    InvalidRouteUtf8 {
        /// The route bytes, hex, at most the first 32.
        hex: String,
    },
    /// (encode) The route is longer than 255 UTF-8 bytes. Nothing was written.
    #[error("route of {len} UTF-8 bytes is longer than 255: `{route}`")]
    RouteTooLong {
        /// Length of the route in bytes.
        len: usize,
        /// The route (cut to 64 characters).
        route: String,
    },
    /// (encode) A route code above 65 535. Nothing was written.
    #[error("route code {code} is out of range (0..=65535)")]
    RouteCodeOutOfRange {
        /// The code asked for.
        code: u64,
    },
    /// (encode) The route does not fit the message type: requests, notifies and pushes need
    /// one, responses must not carry one. Nothing was written.
    #[error("a {kind:?} message {}", if *has_route { "must not carry a route" } else { "needs a route" })]
    RouteMismatch {
        /// The message type.
        kind: MessageType,
        /// Whether a route was given.
        has_route: bool,
    },
    /// A route string is not `serverType.handler.method` (three non-empty parts). Per
    /// message: pomelo drops such a request.
    #[error("route `{route}` is not `serverType.handler.method`")]
    InvalidRoute {
        /// The route (cut to 64 characters).
        route: String,
    },
    /// A body is not JSON (after the lenient UTF-8 decode). Per message: the caller decides
    /// whether to use `{}` as pomelo does.
    #[error("body is not valid JSON: {reason}")]
    InvalidJson {
        /// What serde_json reported.
        reason: String,
    },
    /// A handshake or kick body does not have the expected shape (client side parsing of
    /// a server reply). Fatal for the handshake.
    #[error("invalid {what}: {reason}")]
    InvalidBody {
        /// Which body: `handshake response`, `kick`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The route dictionary would need a code above 65 535. Fatal at startup.
    #[error("route dictionary too large: route `{route}` would get code {code}")]
    DictionaryFull {
        /// The route that did not fit.
        route: String,
        /// The code it would have had.
        code: u64,
    },
    /// An I/O error from the transport (only through the `codec` adapters). Fatal.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The snake-case name of the rule, as used in the golden vectors' `error` fields
    /// (`invalid_package_type`, `truncated_id`, ...). Variants with no vector name use their
    /// own snake-case name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidPackageType { .. } => "invalid_package_type",
            Self::TruncatedHeader { .. } => "truncated_header",
            Self::TruncatedBody { .. } => "truncated_body",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::EmptyMessage => "empty_message",
            Self::InvalidMessageType { .. } => "invalid_message_type",
            Self::TruncatedId => "truncated_id",
            Self::IdTooLong => "id_too_long",
            Self::IdOverflow => "id_overflow",
            Self::TruncatedRouteCode { .. } => "truncated_route_code",
            Self::TruncatedRoute { .. } => "truncated_route",
            Self::InvalidRouteUtf8 { .. } => "invalid_route_utf8",
            Self::RouteTooLong { .. } => "route_too_long",
            Self::RouteCodeOutOfRange { .. } => "route_code_out_of_range",
            Self::RouteMismatch { .. } => "route_mismatch",
            Self::InvalidRoute { .. } => "invalid_route",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidBody { .. } => "invalid_body",
            Self::DictionaryFull { .. } => "dictionary_full",
            Self::Io(_) => "io",
        }
    }

    /// Whether the error means the byte stream (or WebSocket framing) can no longer be
    /// trusted and the connection should be closed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::InvalidPackageType { .. }
                | Self::TruncatedHeader { .. }
                | Self::TruncatedBody { .. }
                | Self::BodyTooLarge { .. }
                | Self::Io(_)
        )
    }
}

/// Cut a string to at most `max` characters for an error message.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
