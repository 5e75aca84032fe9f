//! The package layer: every byte on a pomelo connection belongs to a package.
//!
//! ```text
//!  byte 0    bytes 1..3                   bytes 4 ..
//! +--------+----------------------------+---------------------+
//! |  type  | body length, 24-bit, BE    | body (length bytes) |
//! +--------+----------------------------+---------------------+
//! ```
//!
//! - Raw TCP: packages follow each other with no separator and reads split them anywhere;
//!   [`PackageDecoder`] reassembles them incrementally.
//! - WebSocket: each binary message must hold only whole packages; [`decode_frame`] /
//!   [`FramePackages`] split one message.
//!
//! ```
//! use bytes::BytesMut;
//! use shaddock_protocol::package::{Package, PackageDecoder, PackageType};
//!
//! let mut wire = BytesMut::new();
//! Package::new(PackageType::Heartbeat, bytes::Bytes::new()).encode(&mut wire)?;
//! assert_eq!(&wire[..], &[0x03, 0, 0, 0]);
//!
//! let mut decoder = PackageDecoder::new(64 * 1024);
//! let package = decoder.decode(&mut wire)?.expect("a whole package");
//! assert_eq!(package.kind, PackageType::Heartbeat);
//! # Ok::<(), shaddock_protocol::Error>(())
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Error;

/// Length of a package header: 1 type byte + 3 length bytes.
pub const HEADER_LEN: usize = 4;

/// The largest body the 3-byte length field can describe: 2^24 − 1 bytes.
///
/// PROTOCOL.md §3: "Maximum body: 16 777 215 (2^24 − 1). The JS encoders do not check this
/// [...] An encoder MUST refuse both."
pub const MAX_BODY_LEN: usize = 0x00ff_ffff;

/// The package type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PackageType {
    /// `01`: client handshake request / server handshake response, JSON body.
    Handshake = 1,
    /// `02`: the client's acknowledgement of a 200 handshake reply, empty body.
    HandshakeAck = 2,
    /// `03`: heartbeat, both directions, empty body.
    Heartbeat = 3,
    /// `04`: a message (request, notify, response, push).
    Data = 4,
    /// `05`: server kicks the client, body `{"reason": ...}`.
    Kick = 5,
}

impl PackageType {
    /// The pomelo name of the type (`handshake`, `handshake_ack`, `heartbeat`, `data`, `kick`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::HandshakeAck => "handshake_ack",
            Self::Heartbeat => "heartbeat",
            Self::Data => "data",
            Self::Kick => "kick",
        }
    }
}

impl TryFrom<u8> for PackageType {
    type Error = Error;

    /// # Errors
    /// [`Error::InvalidPackageType`] for bytes outside 1..=5.
    #[inline]
    fn try_from(byte: u8) -> Result<Self, Error> {
        Ok(match byte {
            1 => Self::Handshake,
            2 => Self::HandshakeAck,
            3 => Self::Heartbeat,
            4 => Self::Data,
            5 => Self::Kick,
            _ => return Err(Error::InvalidPackageType { byte }),
        })
    }
}

/// One package: a type and its body (which may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The type byte.
    pub kind: PackageType,
    /// The body; for DATA a message, for HANDSHAKE and KICK JSON text.
    pub body: Bytes,
}

impl Package {
    /// A package of `kind` with `body`.
    pub fn new(kind: PackageType, body: impl Into<Bytes>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }

    /// A package with an empty body (HANDSHAKE_ACK, HEARTBEAT).
    pub fn empty(kind: PackageType) -> Self {
        Self {
            kind,
            body: Bytes::new(),
        }
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Append the header and body to `dst`.
    ///
    /// # Errors
    /// [`Error::BodyTooLarge`] for a body over [`MAX_BODY_LEN`]; `dst` is then unchanged.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        encode_header(self.kind, self.body.len(), dst)?;
        dst.extend_from_slice(&self.body);
        Ok(())
    }

    /// The encoded package as one buffer.
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn to_bytes(&self) -> Result<Bytes, Error> {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }
}

/// Append a package header for a body of `body_len` bytes; the caller appends the body.
/// Used to write a DATA header and a message in one go (see
/// [`Message::encode_package`](crate::message::Message::encode_package)).
///
/// # Errors
/// [`Error::BodyTooLarge`] when `body_len` > [`MAX_BODY_LEN`]; nothing is written.
#[inline]
pub fn encode_header(kind: PackageType, body_len: usize, dst: &mut BytesMut) -> Result<(), Error> {
    check_body_len(body_len, MAX_BODY_LEN)?;
    dst.reserve(HEADER_LEN + body_len);
    // type byte then the 24-bit big-endian length: one u32 write.
    dst.put_u32(((kind as u32) << 24) | body_len as u32);
    Ok(())
}

/// Read and check a 4-byte header: type and declared length against `max_body_len`.
#[inline]
fn parse_header(header: [u8; 4], max_body_len: usize) -> Result<(PackageType, usize), Error> {
    let kind = PackageType::try_from(header[0])?;
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    check_body_len(len, max_body_len)?;
    Ok((kind, len))
}

/// The one body length check of encoders and decoders: [`Error::BodyTooLarge`] when `len`
/// exceeds `max`.
#[inline]
pub(crate) fn check_body_len(len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::BodyTooLarge { len, max });
    }
    Ok(())
}

/// Incremental package decoder for a byte stream (raw TCP).
///
/// Feed it whatever was read; it returns whole packages and keeps partial input buffered in
/// `src`. The header is checked as soon as its 4 bytes are present (the type byte as soon as
/// it arrives), before any body byte is buffered: an unknown type or a declared length over
/// the configured maximum is an error, and the connection should be closed.
///
/// After an error the stream is desynchronised: do not keep decoding.
#[derive(Debug, Clone)]
pub struct PackageDecoder {
    /// Largest body accepted; at most [`MAX_BODY_LEN`].
    max_body_len: usize,
    /// The header of the package being received, once checked, so that each read of a
    /// large body does not re-check and re-reserve.
    pending: Option<(PackageType, usize)>,
}

impl PackageDecoder {
    /// A decoder refusing bodies longer than `max_body_len` (clamped to [`MAX_BODY_LEN`]).
    pub fn new(max_body_len: usize) -> Self {
        Self {
            max_body_len: max_body_len.min(MAX_BODY_LEN),
            pending: None,
        }
    }

    /// The configured maximum body length.
    pub fn max_body_len(&self) -> usize {
        self.max_body_len
    }

    /// Take the next whole package from the front of `src`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the partial package stays in `src`
    /// (and `src` has been reserved for the whole body). The body is split off `src`
    /// without copying.
    ///
    /// # Errors
    /// [`Error::InvalidPackageType`], [`Error::BodyTooLarge`]: both fatal.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Package>, Error> {
        let (kind, len) = match self.pending {
            Some(pending) => pending,
            None => {
                if src.len() < HEADER_LEN {
                    // Reject an unknown type byte without waiting for the rest of the header.
                    if let Some(&byte) = src.first() {
                        PackageType::try_from(byte)?;
                    }
                    return Ok(None);
                }
                let header = [src[0], src[1], src[2], src[3]];
                let pending = parse_header(header, self.max_body_len)?;
                // Decoder docs: reserve what the rest of the frame needs.
                src.reserve((HEADER_LEN + pending.1).saturating_sub(src.len()));
                self.pending = Some(pending);
                pending
            }
        };
        if src.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.pending = None;
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Package { kind, body }))
    }
}

/// Split one WebSocket message into its packages; every package must be whole.
///
/// # Errors
/// The first error of [`FramePackages`]: [`Error::InvalidPackageType`],
/// [`Error::TruncatedHeader`], [`Error::TruncatedBody`], [`Error::BodyTooLarge`].
pub fn decode_frame(msg: Bytes, max_body_len: usize) -> Result<Vec<Package>, Error> {
    FramePackages::new(msg, max_body_len).collect()
}

/// Iterator over the packages of one WebSocket message (no allocation beyond the package
/// bodies, which share the message's buffer). Yields at most one error, then ends.
#[derive(Debug, Clone)]
pub struct FramePackages {
    rest: Bytes,
    max_body_len: usize,
    failed: bool,
}

impl FramePackages {
    /// Iterate over the packages of `msg`, refusing bodies over `max_body_len` (clamped to
    /// [`MAX_BODY_LEN`]).
    pub fn new(msg: Bytes, max_body_len: usize) -> Self {
        Self {
            rest: msg,
            max_body_len: max_body_len.min(MAX_BODY_LEN),
            failed: false,
        }
    }

    fn next_package(&mut self) -> Result<Package, Error> {
        let available = self.rest.len();
        if available < HEADER_LEN {
            if let Some(&byte) = self.rest.first() {
                PackageType::try_from(byte)?;
            }
            return Err(Error::TruncatedHeader { available });
        }
        let header = [self.rest[0], self.rest[1], self.rest[2], self.rest[3]];
        let (kind, len) = parse_header(header, self.max_body_len)?;
        if available - HEADER_LEN < len {
            return Err(Error::TruncatedBody {
                declared: len,
                available: available - HEADER_LEN,
            });
        }
        self.rest.advance(HEADER_LEN);
        let body = self.rest.split_to(len);
        Ok(Package { kind, body })
    }
}

impl Iterator for FramePackages {
    type Item = Result<Package, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let item = self.next_package();
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checked_before_body_arrives() {
        let mut decoder = PackageDecoder::new(10);
        let mut src = BytesMut::from(&[0x04, 0x00, 0x00, 0x0b][..]);
        let err = decoder.decode(&mut src).unwrap_err();
        assert_eq!(err.kind(), "body_too_large");
        assert!(err.to_string().contains("11") && err.to_string().contains("10"));

        let mut decoder = PackageDecoder::new(10);
        let mut src = BytesMut::from(&[0x07][..]);
        let err = decoder.decode(&mut src).unwrap_err();
        assert_eq!(err.kind(), "invalid_package_type");
        assert!(err.to_string().contains("0x07"), "{err}");
    }

    #[test]
    fn partial_body_is_kept_and_reserved() {
        let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
        let mut src = BytesMut::from(&[0x04, 0x00, 0x01, 0x00, 0xaa][..]);
        assert!(decoder.decode(&mut src).unwrap().is_none());
        assert_eq!(src.len(), 5);
        assert!(src.capacity() >= 4 + 256);
        src.extend_from_slice(&[0xbb; 255]);
        let package = decoder.decode(&mut src).unwrap().unwrap();
        assert_eq!(package.kind, PackageType::Data);
        assert_eq!(package.body.len(), 256);
        assert_eq!(package.body[0], 0xaa);
        assert!(src.is_empty());
        assert!(decoder.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn encode_refuses_too_large() {
        let package = Package::new(PackageType::Data, vec![0u8; MAX_BODY_LEN + 1]);
        let mut dst = BytesMut::new();
        assert_eq!(
            package.encode(&mut dst).unwrap_err().kind(),
            "body_too_large"
        );
        assert!(dst.is_empty());
    }

    #[test]
    fn frame_stops_after_error() {
        let msg = Bytes::from_static(&[0x03, 0, 0, 0, 0x09, 0, 0, 0, 0x03, 0, 0, 0]);
        let items: Vec<_> = FramePackages::new(msg, 100).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().unwrap_err().kind(),
            "invalid_package_type"
        );
    }
}
