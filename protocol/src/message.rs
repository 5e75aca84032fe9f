//! The message layer: the body of every DATA package is one message.
//!
//! ```text
//! +------+---------------------+-------------------------------+-----------+
//! | flag | id (varint, 1-5 B)  | route: 2-byte code | len + UTF-8 | body ...  |
//! +------+---------------------+-------------------------------+-----------+
//!           request/response       request/notify/push only
//!
//! flag: bit 0 (0x01) route compressed, bits 1-3 (0x0e) type, bit 4 (0x10) "gzip",
//!       bit 5 (0x20) error (pitaya), bits 6-7 ignored
//! ```
//!
//! | type | name | id | route | sent by |
//! |---|---|---|---|---|
//! | 0 | [`MessageType::Request`] | yes | yes | client |
//! | 1 | [`MessageType::Notify`] | no | yes | client |
//! | 2 | [`MessageType::Response`] | yes | no | server |
//! | 3 | [`MessageType::Push`] | no | yes | server |
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use shaddock_protocol::message::{Message, MessageRoute};
//!
//! let request = Message::request(2, MessageRoute::Code(2), Bytes::from_static(b"{}"));
//! let mut wire = BytesMut::new();
//! request.encode(&mut wire)?;
//! assert_eq!(&wire[..], &[0x01, 0x02, 0x00, 0x02, b'{', b'}']);
//! assert_eq!(Message::decode(wire.freeze())?, request);
//! # Ok::<(), shaddock_protocol::Error>(())
//! ```

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::clip;
use crate::package::{self, PackageType};
use crate::{Error, Package, varint};

/// Flag bit 0: the route is a 2-byte dictionary code.
pub const FLAG_ROUTE_COMPRESSED: u8 = 0x01;
/// Flag bits 1-3: the message type, `(flag >> 1) & 7`.
pub const FLAG_TYPE_MASK: u8 = 0x0e;
/// Flag bit 4: the "gzip" bit. pomelo/pinus never set it and ignore it on receipt; pitaya
/// uses it for a zlib-compressed body. Reported, never acted on here.
pub const FLAG_GZIP: u8 = 0x10;
/// Flag bit 5: pitaya's error bit (the response body is an error object). pomelo ignores it.
pub const FLAG_ERROR: u8 = 0x20;

/// Longest uncompressed route: its length is one byte.
pub const MAX_ROUTE_LEN: usize = 255;

/// The message type (flag bits 1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum MessageType {
    /// 0: client request; has an id (0 = no response wanted) and a route.
    #[default]
    Request = 0,
    /// 1: client notify; route, no id, never answered.
    Notify = 1,
    /// 2: server response; echoes the request id, no route.
    Response = 2,
    /// 3: server push; route, no id.
    Push = 3,
}

impl MessageType {
    /// Whether this type carries an id varint.
    #[inline]
    pub fn has_id(self) -> bool {
        matches!(self, Self::Request | Self::Response)
    }

    /// Whether this type carries a route.
    #[inline]
    pub fn has_route(self) -> bool {
        !matches!(self, Self::Response)
    }

    /// The pomelo name: `request`, `notify`, `response`, `push`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Notify => "notify",
            Self::Response => "response",
            Self::Push => "push",
        }
    }
}

impl TryFrom<u8> for MessageType {
    type Error = Error;

    /// From the type number 0..=3 (not the flag byte).
    ///
    /// # Errors
    /// [`Error::InvalidMessageType`] for 4 and above.
    #[inline]
    fn try_from(bits: u8) -> Result<Self, Error> {
        Ok(match bits {
            0 => Self::Request,
            1 => Self::Notify,
            2 => Self::Response,
            3 => Self::Push,
            _ => {
                return Err(Error::InvalidMessageType {
                    flag: bits.wrapping_shl(1),
                    bits,
                });
            }
        })
    }
}

/// A route string known to be valid UTF-8, sharing the buffer it was decoded from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RouteName(Bytes);

impl RouteName {
    /// A route from a static string, without copying.
    pub const fn from_static(route: &'static str) -> Self {
        Self(Bytes::from_static(route.as_bytes()))
    }

    /// The route text.
    pub fn as_str(&self) -> &str {
        // The bytes were UTF-8 checked on construction; this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the route is the empty string (legal on the wire).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for RouteName {
    fn from(route: String) -> Self {
        Self(Bytes::from(route))
    }
}

impl From<&str> for RouteName {
    fn from(route: &str) -> Self {
        Self(Bytes::copy_from_slice(route.as_bytes()))
    }
}

impl TryFrom<Bytes> for RouteName {
    type Error = Error;

    /// # Errors
    /// [`Error::InvalidRouteUtf8`] when the bytes are not UTF-8.
    fn try_from(bytes: Bytes) -> Result<Self, Error> {
        if std::str::from_utf8(&bytes).is_err() {
            return Err(Error::InvalidRouteUtf8 {
                hex: bytes.iter().take(32).map(|b| format!("{b:02x}")).collect(),
            });
        }
        Ok(Self(bytes))
    }
}

impl std::ops::Deref for RouteName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for RouteName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for RouteName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The route of a message as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum MessageRoute {
    /// No route: responses.
    #[default]
    None,
    /// A dictionary code (flag bit 0 set); see [`RouteDictionary`](crate::RouteDictionary).
    Code(u16),
    /// A route string (flag bit 0 clear), at most 255 UTF-8 bytes.
    Name(RouteName),
}

impl MessageRoute {
    /// A compressed route from a code that must fit 16 bits.
    ///
    /// # Errors
    /// [`Error::RouteCodeOutOfRange`] for codes above 65 535.
    pub fn code(code: u64) -> Result<Self, Error> {
        u16::try_from(code)
            .map(Self::Code)
            .map_err(|_| Error::RouteCodeOutOfRange { code })
    }

    /// An uncompressed route.
    pub fn name(route: impl Into<RouteName>) -> Self {
        Self::Name(route.into())
    }

    /// The route string, when not compressed.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Name(name) => Some(name.as_str()),
            _ => None,
        }
    }

    /// The dictionary code, when compressed.
    pub fn as_code(&self) -> Option<u16> {
        match self {
            Self::Code(code) => Some(*code),
            _ => None,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Code(_) => 2,
            Self::Name(name) => 1 + name.len(),
        }
    }
}

/// One message: the body of a DATA package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Request, notify, response or push.
    pub kind: MessageType,
    /// Request/response id; 0 for notifies and pushes (not on the wire). A request with id
    /// 0 wants no response.
    pub id: u32,
    /// Code or string for requests, notifies and pushes; [`MessageRoute::None`] for responses.
    pub route: MessageRoute,
    /// Flag bit 4 (0x10), reported as read and written as given; the body is never
    /// (de)compressed here.
    pub gzip: bool,
    /// Flag bit 5 (0x20), pitaya's error bit; reported and written as given.
    pub error: bool,
    /// Flag bit 0 as read on a response, where it means nothing (responses carry no route).
    /// Kept so that such a message re-encodes to the same bytes; leave `false` otherwise.
    pub response_route_bit: bool,
    /// Everything after the route (or after the id for responses); JSON or protobuf, chosen
    /// by route.
    pub body: Bytes,
}

impl Message {
    /// A REQUEST.
    pub fn request(id: u32, route: MessageRoute, body: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageType::Request,
            id,
            route,
            body: body.into(),
            ..Self::default()
        }
    }

    /// A NOTIFY.
    pub fn notify(route: MessageRoute, body: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageType::Notify,
            route,
            body: body.into(),
            ..Self::default()
        }
    }

    /// A RESPONSE to request `id`.
    pub fn response(id: u32, body: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageType::Response,
            id,
            body: body.into(),
            ..Self::default()
        }
    }

    /// A PUSH.
    pub fn push(route: MessageRoute, body: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageType::Push,
            route,
            body: body.into(),
            ..Self::default()
        }
    }

    /// Whether flag bit 0 is (or will be) set: the route is a code, or a response carried
    /// the meaningless bit.
    pub fn compress_route(&self) -> bool {
        match self.kind {
            MessageType::Response => self.response_route_bit,
            _ => matches!(self.route, MessageRoute::Code(_)),
        }
    }

    /// The flag byte this message encodes to.
    pub fn flag(&self) -> u8 {
        ((self.kind as u8) << 1)
            | u8::from(self.compress_route())
            | if self.gzip { FLAG_GZIP } else { 0 }
            | if self.error { FLAG_ERROR } else { 0 }
    }

    /// Bytes [`encode`](Self::encode) writes when it succeeds.
    pub fn encoded_len(&self) -> usize {
        let id_len = if self.kind.has_id() {
            varint::encoded_len_u32(self.id)
        } else {
            0
        };
        1 + id_len + self.route.encoded_len() + self.body.len()
    }

    /// Check what [`encode`](Self::encode) would refuse.
    fn validate(&self) -> Result<(), Error> {
        let has_route = !matches!(self.route, MessageRoute::None);
        if has_route != self.kind.has_route() {
            return Err(Error::RouteMismatch {
                kind: self.kind,
                has_route,
            });
        }
        if let MessageRoute::Name(name) = &self.route {
            // PROTOCOL §4.3: "Routes longer than 255 bytes MUST be refused by an encoder."
            if name.len() > MAX_ROUTE_LEN {
                return Err(Error::RouteTooLong {
                    len: name.len(),
                    route: clip(name.as_str(), 64),
                });
            }
        }
        Ok(())
    }

    /// Append the message to `dst`. The id is written only for requests and responses.
    ///
    /// # Errors
    /// [`Error::RouteTooLong`], [`Error::RouteMismatch`]; `dst` is then unchanged.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        self.validate()?;
        dst.reserve(self.encoded_len());
        self.write(dst);
        Ok(())
    }

    /// Write after validation.
    #[inline]
    fn write(&self, dst: &mut BytesMut) {
        dst.put_u8(self.flag());
        if self.kind.has_id() {
            varint::encode_u32(self.id, dst);
        }
        match &self.route {
            MessageRoute::None => {}
            MessageRoute::Code(code) => dst.put_u16(*code),
            MessageRoute::Name(name) => {
                // validate() checked len <= 255
                dst.put_u8(name.len() as u8);
                dst.extend_from_slice(name.as_bytes());
            }
        }
        dst.extend_from_slice(&self.body);
    }

    /// Append a whole DATA package holding this message (header + message) to `dst` in one
    /// go: encode a push once and send the same bytes to every member of a channel.
    ///
    /// # Errors
    /// As [`encode`](Self::encode), plus [`Error::BodyTooLarge`]; `dst` is then unchanged.
    pub fn encode_package(&self, dst: &mut BytesMut) -> Result<(), Error> {
        self.validate()?;
        package::encode_header(PackageType::Data, self.encoded_len(), dst)?;
        self.write(dst);
        Ok(())
    }

    /// This message as a DATA [`Package`].
    ///
    /// # Errors
    /// As [`encode_package`](Self::encode_package).
    pub fn to_package(&self) -> Result<Package, Error> {
        self.validate()?;
        let len = self.encoded_len();
        package::check_body_len(len, package::MAX_BODY_LEN)?;
        let mut body = BytesMut::with_capacity(len);
        self.write(&mut body);
        Ok(Package::new(PackageType::Data, body.freeze()))
    }

    /// Decode a message from a DATA package body. The route (when a string) and the body
    /// share `src`'s buffer: no copy.
    ///
    /// # Errors
    /// [`Error::EmptyMessage`], [`Error::InvalidMessageType`], [`Error::TruncatedId`],
    /// [`Error::IdTooLong`], [`Error::IdOverflow`], [`Error::TruncatedRouteCode`],
    /// [`Error::TruncatedRoute`], [`Error::InvalidRouteUtf8`]. All concern this message only.
    pub fn decode(mut src: Bytes) -> Result<Self, Error> {
        let flag = *src.first().ok_or(Error::EmptyMessage)?;
        let bits = (flag & FLAG_TYPE_MASK) >> 1;
        // PROTOCOL §4.1: types 4-7 "The JS decoders accept them; an implementation MUST
        // reject them."
        let kind =
            MessageType::try_from(bits).map_err(|_| Error::InvalidMessageType { flag, bits })?;
        let compressed = flag & FLAG_ROUTE_COMPRESSED != 0;
        let mut pos = 1;
        let id = if kind.has_id() {
            let (id, len) = varint::decode_u32(&src[pos..])?;
            pos += len;
            id
        } else {
            0
        };
        let route = if !kind.has_route() {
            // "RESPONSE carries no route, whatever bit 0 says"
            MessageRoute::None
        } else if compressed {
            let available = src.len() - pos;
            if available < 2 {
                return Err(Error::TruncatedRouteCode { available });
            }
            let code = u16::from_be_bytes([src[pos], src[pos + 1]]);
            pos += 2;
            MessageRoute::Code(code)
        } else {
            let Some(&len) = src.get(pos) else {
                return Err(Error::TruncatedRoute {
                    declared: 0,
                    available: 0,
                });
            };
            let len = usize::from(len);
            pos += 1;
            let available = src.len() - pos;
            if available < len {
                return Err(Error::TruncatedRoute {
                    declared: len,
                    available,
                });
            }
            let name = RouteName::try_from(src.slice(pos..pos + len))?;
            pos += len;
            MessageRoute::Name(name)
        };
        src.advance(pos);
        Ok(Self {
            kind,
            id,
            route,
            gzip: flag & FLAG_GZIP != 0,
            error: flag & FLAG_ERROR != 0,
            response_route_bit: kind == MessageType::Response && compressed,
            body: src,
        })
    }
}

/// A parsed handler route `serverType.handler.method`, borrowing the route string.
///
/// ```
/// use shaddock_protocol::message::Route;
///
/// let route = Route::parse("chat.chatHandler.send")?;
/// assert_eq!((route.server_type, route.handler, route.method), ("chat", "chatHandler", "send"));
/// assert!(Route::parse("onChat").is_err());
/// # Ok::<(), shaddock_protocol::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route<'a> {
    /// The server type that handles the route (`chat`, `connector`...).
    pub server_type: &'a str,
    /// The handler file name on that server (`chatHandler`).
    pub handler: &'a str,
    /// The handler method (`send`).
    pub method: &'a str,
}

impl<'a> Route<'a> {
    /// Split `route` into its three parts.
    ///
    /// pomelo splits on `.` and wants exactly three parts; we also refuse empty parts.
    ///
    /// # Errors
    /// [`Error::InvalidRoute`] when the route does not have exactly three non-empty,
    /// dot-separated parts.
    pub fn parse(route: &'a str) -> Result<Self, Error> {
        let mut parts = route.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(server_type), Some(handler), Some(method), None)
                if !server_type.is_empty() && !handler.is_empty() && !method.is_empty() =>
            {
                Ok(Self {
                    server_type,
                    handler,
                    method,
                })
            }
            _ => Err(Error::InvalidRoute {
                route: clip(route, 64),
            }),
        }
    }
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.server_type, self.handler, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn route_table() {
        let ok = [
            ("chat.chatHandler.send", ("chat", "chatHandler", "send")),
            (
                "connector.entryHandler.entry",
                ("connector", "entryHandler", "entry"),
            ),
            ("a.b.c", ("a", "b", "c")),
            ("聊天.处理.发送", ("聊天", "处理", "发送")),
        ];
        for (input, (s, h, m)) in ok {
            let route = Route::parse(input).unwrap();
            assert_eq!((route.server_type, route.handler, route.method), (s, h, m));
            assert_eq!(route.to_string(), input);
        }
        for bad in [
            "", "onChat", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b.", "...", ".",
        ] {
            let err = Route::parse(bad).unwrap_err();
            assert_eq!(err.kind(), "invalid_route", "{bad:?}");
        }
    }

    #[test]
    fn route_mismatch_refused() {
        let mut dst = BytesMut::new();
        let bad = Message {
            kind: MessageType::Response,
            route: MessageRoute::Code(1),
            ..Message::default()
        };
        assert_eq!(bad.encode(&mut dst).unwrap_err().kind(), "route_mismatch");
        let bad = Message::notify(MessageRoute::None, Bytes::new());
        assert_eq!(bad.encode(&mut dst).unwrap_err().kind(), "route_mismatch");
        assert!(dst.is_empty());
    }

    #[test]
    fn encode_package_writes_header() {
        let msg = Message::push(MessageRoute::name("onChat"), Bytes::from_static(b"{}"));
        let mut dst = BytesMut::new();
        msg.encode_package(&mut dst).unwrap();
        assert_eq!(&dst[..4], &[0x04, 0x00, 0x00, 0x0a]);
        assert_eq!(Message::decode(dst.split_off(4).freeze()).unwrap(), msg);
        assert_eq!(msg.to_package().unwrap().body.len(), msg.encoded_len());
    }

    proptest! {
        #[test]
        fn route_parse_never_panics(s in ".{0,40}") {
            if let Ok(route) = Route::parse(&s) {
                prop_assert_eq!(route.to_string(), s);
            }
        }

        #[test]
        fn route_parse_dotted(a in "[a-zA-Z]{1,8}", b in "[a-zA-Z]{1,8}", c in "[a-zA-Z]{1,8}") {
            let s = format!("{a}.{b}.{c}");
            let route = Route::parse(&s).unwrap();
            prop_assert_eq!((route.server_type, route.handler, route.method), (&a[..], &b[..], &c[..]));
        }
    }
}
