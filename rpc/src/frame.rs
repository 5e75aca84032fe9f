//! RPC frames: the sans-IO wire format between Shaddock servers.
//!
//! Every frame is length-delimited: a 4-byte big-endian length counts the bytes that follow it
//! (the body), and the body starts with a one-byte kind.
//!
//! ```text
//!  0      4      5
//! +------+------+------------------------------------------------------------+
//! | len  | kind | fields per kind                                            |
//! | u32BE| u8   |                                                            |
//! +------+------+------------------------------------------------------------+
//!
//! kind 0x01 request   | id u32BE | ns u8 | slen u8 | service | mlen u8 | method | payload .. |
//! kind 0x02 notify    | ns u8 | slen u8 | service | mlen u8 | method | payload ..           |
//! kind 0x03 ok        | id u32BE | payload ..                                             |
//! kind 0x04 error     | id u32BE | ekind u8 | code u32BE | msglen u16BE | message           |
//! kind 0x05 ping      | (nothing)                                                      |
//! kind 0x06 pong      | (nothing)                                                      |
//! kind 0x07 challenge | nonce (32 bytes)                                               |
//! kind 0x08 auth      | mac (32 bytes) | info ..                                       |
//! kind 0x09 auth-ok   | proof (32 bytes)                                               |
//! ```
//!
//! - `len` excludes itself; `1 <= len <= max_frame_size` or the connection is closed.
//! - `ns` is the [`Namespace`]: `0` = `sys` (framework calls), `1` = `user` (the app's remotes).
//! - `service` and `method` are UTF-8, 1..=255 bytes each.
//! - `payload` runs to the end of the frame: a prost-encoded message, or raw bytes passed
//!   through untouched ([`crate::Raw`]). Decoding slices the read buffer, so payloads are
//!   never copied on the way in.
//! - `ekind` is the [`ErrorKind`] of a failed call; `code` is the handler's own code for
//!   [`ErrorKind::Handler`] (0 otherwise); `message` is UTF-8 (invalid bytes are replaced).
//!
//! A request is answered by exactly one `ok` or `error` with the same `id`; a notify is never
//! answered. Responses may come back in any order.
//!
//! A client sends `ping` right after connecting (the link is up only once the `pong` is back)
//! and then every `heartbeat_interval`; the server answers each with one `pong`. Both are the
//! kind byte alone (`len` = 1). Frames of kinds 0x01..=0x04 are byte-identical to the
//! format before heartbeats existed.
//!
//! With a cluster secret ([`crate::ClusterSecret`]) the server opens with `challenge`, the
//! client answers `auth` (`mac` = HMAC-SHA256(secret, nonce || info)), the server answers
//! `auth-ok`; then the client's first `ping` follows. See [`crate::auth`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;
/// Longest service or method name, in bytes (its length travels in one byte).
pub const MAX_NAME_LEN: usize = 255;

const KIND_REQUEST: u8 = 0x01;
const KIND_NOTIFY: u8 = 0x02;
const KIND_OK: u8 = 0x03;
const KIND_ERROR: u8 = 0x04;
const KIND_PING: u8 = 0x05;
const KIND_PONG: u8 = 0x06;
const KIND_CHALLENGE: u8 = 0x07;
const KIND_AUTH: u8 = 0x08;
const KIND_AUTH_OK: u8 = 0x09;
/// Most bytes [`Frame::decode`] reserves ahead of data that has not arrived yet.
pub const RESERVE_CHUNK: usize = 64 * 1024;
/// Frames up to this many bytes are copied out of the read buffer when decoded (see
/// [`Frame::decode`]); larger ones are sliced from it.
const COPY_BELOW: usize = 1024;

/// Which family of remotes a call addresses (pomelo's `sys` and `user` RPC namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// The framework's own remotes: forward a client request to a backend, push to sessions on
    /// a frontend, read or change a session.
    Sys = 0,
    /// The application's remotes.
    User = 1,
}

impl Namespace {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parses the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Sys),
            1 => Some(Self::User),
            _ => None,
        }
    }

    /// `"sys"` or `"user"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sys => "sys",
            Self::User => "user",
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service or method name: validated UTF-8 of 1..=255 bytes, held as `Bytes` so that
/// names from static strings and names sliced out of a read buffer cost no allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Bytes);

impl Name {
    /// A name from a static string.
    ///
    /// # Errors
    /// [`FrameError::BadName`] if it is empty or longer than [`MAX_NAME_LEN`].
    pub fn from_static(s: &'static str) -> Result<Self, FrameError> {
        check_name_len(s.len())?;
        Ok(Self(Bytes::from_static(s.as_bytes())))
    }

    /// A name from an owned string.
    ///
    /// # Errors
    /// [`FrameError::BadName`] if it is empty or longer than [`MAX_NAME_LEN`].
    pub fn new(s: impl Into<String>) -> Result<Self, FrameError> {
        let s = s.into();
        check_name_len(s.len())?;
        Ok(Self(Bytes::from(s)))
    }

    fn from_wire(b: Bytes) -> Result<Self, FrameError> {
        check_name_len(b.len())?;
        // Names are ASCII in practice (`remote!` names are): that check is a fraction of
        // the full UTF-8 validation's cost on a short name; only other names take it.
        if !b.is_ascii() {
            std::str::from_utf8(&b).map_err(|_| FrameError::Malformed {
                reason: "service or method name is not UTF-8",
            })?;
        }
        Ok(Self(b))
    }

    /// The name's bytes (its UTF-8 text).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Validated as UTF-8 in every constructor; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

fn check_name_len(len: usize) -> Result<(), FrameError> {
    if len == 0 || len > MAX_NAME_LEN {
        return Err(FrameError::BadName { len });
    }
    Ok(())
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed on the remote side; the `ekind` byte of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The handler ran and returned an error; `code` and `message` are its own.
    Handler = 1,
    /// No service of that name is registered in that namespace on the remote server.
    UnknownService = 2,
    /// The service exists but has no method of that name.
    UnknownMethod = 3,
    /// The remote could not decode the request payload into the method's argument type.
    BadPayload = 4,
    /// The handler panicked or its reply could not be sent (e.g. too large).
    Internal = 5,
}

impl ErrorKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Handler,
            2 => Self::UnknownService,
            3 => Self::UnknownMethod,
            4 => Self::BadPayload,
            5 => Self::Internal,
            _ => return None,
        })
    }
}

/// The body of an error frame: a failed call as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The handler's code for [`ErrorKind::Handler`], 0 otherwise.
    pub code: u32,
    /// Human-readable detail; truncated to 65535 bytes on the wire.
    pub message: String,
}

/// One RPC frame (see the module docs for the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A call that expects exactly one response with the same `id`.
    Request {
        /// Chosen by the caller, unique among its calls in flight on this connection.
        id: u32,
        /// `sys` or `user`.
        namespace: Namespace,
        /// The remote's name, e.g. `chatRemote`.
        service: Name,
        /// The method's name, e.g. `add`.
        method: Name,
        /// The encoded argument.
        payload: Bytes,
    },
    /// A one-way call: run the method, send nothing back.
    Notify {
        /// `sys` or `user`.
        namespace: Namespace,
        /// The remote's name.
        service: Name,
        /// The method's name.
        method: Name,
        /// The encoded argument.
        payload: Bytes,
    },
    /// The answer to the request with this `id`.
    Response {
        /// The request's id.
        id: u32,
        /// The encoded reply, or why the call failed.
        result: Result<Bytes, WireError>,
    },
    /// A heartbeat from a client; the server answers [`Frame::Pong`].
    Ping,
    /// The server's answer to a [`Frame::Ping`].
    Pong,
    /// The server's first frame when it requires the cluster secret.
    Challenge {
        /// 32 random bytes.
        nonce: Bytes,
    },
    /// The client's answer to a [`Frame::Challenge`].
    Auth {
        /// `HMAC-SHA256(secret, nonce || info)`, 32 bytes.
        mac: Bytes,
        /// Bytes of the client's choosing (the rest of the frame).
        info: Bytes,
    },
    /// The server accepted the [`Frame::Auth`]; calls may follow. Carries the server's own
    /// proof that it knows the secret (the client checks it: authentication is mutual).
    AuthOk {
        /// `HMAC-SHA256(secret, "shaddock-rpc-server" || info || nonce)`, 32 bytes.
        proof: Bytes,
    },
}

/// A frame that breaks the format. Every variant is fatal for the connection it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared frame length is over the configured limit (checked before buffering).
    #[error("rpc frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured `max_frame_size`.
        max: usize,
    },
    /// The frame kind byte is none of the kinds in the module docs.
    #[error("unknown rpc frame kind byte 0x{kind:02x}")]
    UnknownKind {
        /// The byte found.
        kind: u8,
    },
    /// The namespace byte is neither `sys` (0) nor `user` (1).
    #[error("unknown rpc namespace byte 0x{ns:02x}")]
    UnknownNamespace {
        /// The byte found.
        ns: u8,
    },
    /// The error kind byte of an error frame is unknown.
    #[error("unknown rpc error kind byte 0x{ekind:02x}")]
    UnknownErrorKind {
        /// The byte found.
        ekind: u8,
    },
    /// A service or method name is empty or longer than 255 bytes.
    #[error("rpc service/method name of {len} bytes (must be 1..=255)")]
    BadName {
        /// Its length.
        len: usize,
    },
    /// Fields run past the end of the frame, or are otherwise inconsistent.
    #[error("malformed rpc frame: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Body length (length prefix excluded) of a request frame with these names and payload size:
/// kind, id, namespace, service length + service, method length + method, payload. The client
/// checks it against `max_frame_size` before it has an id to build the frame with.
pub(crate) fn request_body_len(service: &Name, method: &Name, payload_len: usize) -> usize {
    1 + 4 + 1 + 1 + service.0.len() + 1 + method.0.len() + payload_len
}

/// Body length (length prefix excluded) of an `ok` response carrying `payload_len` bytes: kind,
/// id, payload. The server checks a reply against `max_frame_size` with it before framing it.
pub(crate) fn ok_response_body_len(payload_len: usize) -> usize {
    1 + 4 + payload_len
}

impl Frame {
    /// The frame's kind for log lines, e.g. `"a request"` (never its contents).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Request { .. } => "a request",
            Self::Notify { .. } => "a notify",
            Self::Response { .. } => "a response",
            Self::Ping => "a ping",
            Self::Pong => "a pong",
            Self::Challenge { .. } => "a challenge",
            Self::Auth { .. } => "an auth frame",
            Self::AuthOk { .. } => "an auth-ok",
        }
    }

    /// Bytes this frame occupies on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX + self.body_len()
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Request {
                service,
                method,
                payload,
                ..
            } => request_body_len(service, method, payload.len()),
            Self::Notify {
                service,
                method,
                payload,
                ..
            } => 1 + 1 + 1 + service.0.len() + 1 + method.0.len() + payload.len(),
            Self::Response { result: Ok(p), .. } => ok_response_body_len(p.len()),
            Self::Response { result: Err(e), .. } => {
                1 + 4 + 1 + 4 + 2 + e.message.len().min(u16::MAX as usize)
            }
            Self::Ping | Self::Pong => 1,
            Self::Challenge { nonce } => 1 + nonce.len(),
            Self::AuthOk { proof } => 1 + proof.len(),
            Self::Auth { mac, info } => 1 + mac.len() + info.len(),
        }
    }

    /// Appends the frame (length prefix included) to `dst`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if the frame would exceed `max_frame_size`; `dst` is then
    /// left untouched.
    pub fn encode(&self, dst: &mut BytesMut, max_frame_size: usize) -> Result<(), FrameError> {
        let body = self.body_len();
        if body > max_frame_size || body > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                len: body,
                max: max_frame_size,
            });
        }
        dst.reserve(LEN_PREFIX + body);
        // `body` fits in u32: checked above.
        dst.put_u32(body as u32);
        match self {
            Self::Request {
                id,
                namespace,
                service,
                method,
                payload,
            } => {
                dst.put_u8(KIND_REQUEST);
                dst.put_u32(*id);
                put_call(dst, *namespace, service, method, payload);
            }
            Self::Notify {
                namespace,
                service,
                method,
                payload,
            } => {
                dst.put_u8(KIND_NOTIFY);
                put_call(dst, *namespace, service, method, payload);
            }
            Self::Response { id, result: Ok(p) } => {
                dst.put_u8(KIND_OK);
                dst.put_u32(*id);
                dst.put_slice(p);
            }
            Self::Response { id, result: Err(e) } => {
                dst.put_u8(KIND_ERROR);
                dst.put_u32(*id);
                dst.put_u8(e.kind as u8);
                dst.put_u32(e.code);
                let msg = truncate_utf8(&e.message, u16::MAX as usize);
                // `msg.len()` <= u16::MAX by construction.
                dst.put_u16(msg.len() as u16);
                dst.put_slice(msg.as_bytes());
            }
            Self::Ping => dst.put_u8(KIND_PING),
            Self::Pong => dst.put_u8(KIND_PONG),
            Self::AuthOk { proof } => {
                dst.put_u8(KIND_AUTH_OK);
                dst.put_slice(proof);
            }
            Self::Challenge { nonce } => {
                dst.put_u8(KIND_CHALLENGE);
                dst.put_slice(nonce);
            }
            Self::Auth { mac, info } => {
                dst.put_u8(KIND_AUTH);
                dst.put_slice(mac);
                dst.put_slice(info);
            }
        }
        Ok(())
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame (and reserves room for
    /// the next [`RESERVE_CHUNK`] bytes of it at most, so a declared length costs memory only
    /// as its bytes arrive); the length is checked against `max_frame_size` as soon as the prefix is in, before
    /// any body is buffered. On success the frame's bytes are split off `src`; payloads and
    /// names are slices of them, not copies.
    ///
    /// # Errors
    /// Any [`FrameError`]; the stream cannot be resynchronised after one.
    pub fn decode(src: &mut BytesMut, max_frame_size: usize) -> Result<Option<Self>, FrameError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > max_frame_size {
            return Err(FrameError::TooLarge {
                len,
                max: max_frame_size,
            });
        }
        if len == 0 {
            return Err(FrameError::Malformed {
                reason: "empty frame (length 0)",
            });
        }
        if src.len() < LEN_PREFIX + len {
            // Room for the next chunk only, not the whole declared frame: a peer that sends a
            // 4-byte header declaring 8 MiB must not cost 8 MiB. The buffer grows (doubling)
            // as the bytes actually arrive.
            src.reserve((LEN_PREFIX + len - src.len()).min(RESERVE_CHUNK));
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let body = if len <= COPY_BELOW {
            // A small frame is copied out, so the read buffer is not shared and is reused
            // in place: slicing every frame out of it made each read allocate a fresh
            // buffer, whose malloc/free (glibc's fastbin consolidation) showed as ~10% of a
            // chat server's CPU in perf. A large frame is sliced (no copy).
            let body = Bytes::copy_from_slice(&src[..len]);
            src.advance(len);
            body
        } else {
            src.split_to(len).freeze()
        };
        Self::decode_body(body).map(Some)
    }

    /// Decodes a frame body (everything after the length prefix).
    ///
    /// # Errors
    /// Any [`FrameError`] but [`FrameError::TooLarge`].
    pub fn decode_body(mut body: Bytes) -> Result<Self, FrameError> {
        let kind = take_u8(&mut body, "missing kind byte")?;
        match kind {
            KIND_REQUEST => {
                let id = take_u32(&mut body, "request shorter than its id")?;
                let (namespace, service, method) = take_call(&mut body)?;
                Ok(Self::Request {
                    id,
                    namespace,
                    service,
                    method,
                    payload: body,
                })
            }
            KIND_NOTIFY => {
                let (namespace, service, method) = take_call(&mut body)?;
                Ok(Self::Notify {
                    namespace,
                    service,
                    method,
                    payload: body,
                })
            }
            KIND_OK => {
                let id = take_u32(&mut body, "response shorter than its id")?;
                Ok(Self::Response {
                    id,
                    result: Ok(body),
                })
            }
            KIND_ERROR => {
                let id = take_u32(&mut body, "error response shorter than its id")?;
                let ekind = take_u8(&mut body, "error response without error kind")?;
                let kind =
                    ErrorKind::from_u8(ekind).ok_or(FrameError::UnknownErrorKind { ekind })?;
                let code = take_u32(&mut body, "error response without code")?;
                let mlen = take_u16(&mut body, "error response without message length")? as usize;
                if body.len() != mlen {
                    return Err(FrameError::Malformed {
                        reason: "error message length does not match the frame length",
                    });
                }
                let message = String::from_utf8_lossy(&body).into_owned();
                Ok(Self::Response {
                    id,
                    result: Err(WireError {
                        kind,
                        code,
                        message,
                    }),
                })
            }
            KIND_PING | KIND_PONG => {
                if !body.is_empty() {
                    return Err(FrameError::Malformed {
                        reason: "ping or pong frame with a body",
                    });
                }
                Ok(if kind == KIND_PING {
                    Self::Ping
                } else {
                    Self::Pong
                })
            }
            KIND_AUTH_OK => {
                if body.len() != crate::auth::AUTH_LEN {
                    return Err(FrameError::Malformed {
                        reason: "auth-ok proof is not 32 bytes",
                    });
                }
                Ok(Self::AuthOk { proof: body })
            }
            KIND_CHALLENGE => {
                if body.len() != crate::auth::AUTH_LEN {
                    return Err(FrameError::Malformed {
                        reason: "challenge nonce is not 32 bytes",
                    });
                }
                Ok(Self::Challenge { nonce: body })
            }
            KIND_AUTH => {
                if body.len() < crate::auth::AUTH_LEN {
                    return Err(FrameError::Malformed {
                        reason: "auth frame shorter than its mac",
                    });
                }
                let mac = body.split_to(crate::auth::AUTH_LEN);
                Ok(Self::Auth { mac, info: body })
            }
            kind => Err(FrameError::UnknownKind { kind }),
        }
    }
}

fn put_call(dst: &mut BytesMut, ns: Namespace, service: &Name, method: &Name, payload: &Bytes) {
    dst.put_u8(ns.as_u8());
    // Name lengths are 1..=255 by construction.
    dst.put_u8(service.0.len() as u8);
    dst.put_slice(&service.0);
    dst.put_u8(method.0.len() as u8);
    dst.put_slice(&method.0);
    dst.put_slice(payload);
}

fn take_call(body: &mut Bytes) -> Result<(Namespace, Name, Name), FrameError> {
    let ns = take_u8(body, "call without namespace")?;
    let namespace = Namespace::from_u8(ns).ok_or(FrameError::UnknownNamespace { ns })?;
    let service = take_name(body)?;
    let method = take_name(body)?;
    Ok((namespace, service, method))
}

fn take_name(body: &mut Bytes) -> Result<Name, FrameError> {
    let len = take_u8(body, "call without name length")? as usize;
    if body.len() < len {
        return Err(FrameError::Malformed {
            reason: "name runs past the end of the frame",
        });
    }
    Name::from_wire(body.split_to(len))
}

fn take_u8(b: &mut Bytes, reason: &'static str) -> Result<u8, FrameError> {
    if b.is_empty() {
        return Err(FrameError::Malformed { reason });
    }
    Ok(b.get_u8())
}

fn take_u16(b: &mut Bytes, reason: &'static str) -> Result<u16, FrameError> {
    if b.len() < 2 {
        return Err(FrameError::Malformed { reason });
    }
    Ok(b.get_u16())
}

fn take_u32(b: &mut Bytes, reason: &'static str) -> Result<u32, FrameError> {
    if b.len() < 4 {
        return Err(FrameError::Malformed { reason });
    }
    Ok(b.get_u32())
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A `tokio_util` codec for [`Frame`]s with a size limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec that refuses frames whose body exceeds `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Self { max_frame_size }
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(Frame::decode(src, self.max_frame_size)?)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst, self.max_frame_size)?)
    }
}

/// Error of [`FrameCodec`]: a bad frame or a socket error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent a frame that breaks the format; fatal for the connection.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Reading from or writing to the socket failed; fatal for the connection.
    #[error("rpc socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes every frame in `data` until it runs out or hits an error; never panics.
///
/// This is the body of the `rpc_frame` fuzz target, public so that an ordinary test can run it
/// over the seed corpus. Frames that decode are re-encoded and decoded again, and must match.
pub fn fuzz_decode(data: &[u8]) {
    const MAX: usize = 64 * 1024;
    let mut src = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::decode(&mut src, MAX) {
        let mut again = BytesMut::new();
        if frame.encode(&mut again, MAX).is_ok() {
            let round = Frame::decode(&mut again, MAX);
            assert_eq!(
                round,
                Ok(Some(frame)),
                "re-encoded frame decodes differently"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> Name {
        Name::from_static(s).unwrap()
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Request {
                id: 7,
                namespace: Namespace::User,
                service: name("chatRemote"),
                method: name("add"),
                payload: Bytes::from_static(b"\x0a\x03bob"),
            },
            Frame::Notify {
                namespace: Namespace::Sys,
                service: name("channelRemote"),
                method: name("pushMessage"),
                payload: Bytes::new(),
            },
            Frame::Response {
                id: u32::MAX,
                result: Ok(Bytes::from_static(b"reply")),
            },
            Frame::Response {
                id: 1,
                result: Err(WireError {
                    kind: ErrorKind::Handler,
                    code: 501,
                    message: "no such room".into(),
                }),
            },
        ]
    }

    #[test]
    fn small_frames_are_copied_out_and_large_ones_sliced() {
        let small = Frame::Notify {
            namespace: Namespace::User,
            service: name("s"),
            method: name("m"),
            payload: Bytes::from_static(b"tiny"),
        };
        let large = Frame::Notify {
            namespace: Namespace::User,
            service: name("s"),
            method: name("m"),
            payload: Bytes::from(vec![7u8; 4 * COPY_BELOW]),
        };
        let mut src = BytesMut::new();
        small.encode(&mut src, 1 << 20).unwrap();
        large.encode(&mut src, 1 << 20).unwrap();
        let range = src.as_ptr_range();
        let within = |b: &Bytes| range.contains(&b.as_ptr());
        let payload = |f: Frame| match f {
            Frame::Notify { payload, .. } => payload,
            other => panic!("not a notify: {other:?}"),
        };
        let a = payload(Frame::decode(&mut src, 1 << 20).unwrap().unwrap());
        assert_eq!(&a[..], b"tiny");
        assert!(!within(&a), "a small frame does not keep the read buffer");
        let b = payload(Frame::decode(&mut src, 1 << 20).unwrap().unwrap());
        assert_eq!(b.len(), 4 * COPY_BELOW);
        assert!(within(&b), "a large frame is a slice of the read buffer");
        assert!(src.is_empty());
    }

    #[test]
    fn a_declared_length_reserves_only_a_chunk_until_the_bytes_arrive() {
        const BIG: usize = 8 * 1024 * 1024;
        let mut src = BytesMut::new();
        src.put_u32(BIG as u32);
        src.put_slice(b"\x02\x01");
        assert_eq!(Frame::decode(&mut src, BIG), Ok(None));
        assert!(
            src.capacity() <= 2 * RESERVE_CHUNK,
            "a header declaring {BIG} bytes reserved {} bytes",
            src.capacity()
        );
        // As the body arrives the buffer grows with it (at most doubling what is in).
        let mut frame = BytesMut::new();
        Frame::Notify {
            namespace: Namespace::User,
            service: name("s"),
            method: name("m"),
            payload: Bytes::from(vec![9u8; 3 * 1024 * 1024]),
        }
        .encode(&mut frame, BIG)
        .unwrap();
        let mut src = BytesMut::new();
        let mut got = None;
        for chunk in frame.chunks(16 * 1024) {
            src.extend_from_slice(chunk);
            if let Some(f) = Frame::decode(&mut src, BIG).unwrap() {
                got = Some(f);
            } else {
                assert!(
                    src.capacity() <= 2 * src.len() + 2 * RESERVE_CHUNK,
                    "{} bytes in, {} reserved",
                    src.len(),
                    src.capacity()
                );
            }
        }
        assert!(
            matches!(got, Some(Frame::Notify { payload, .. }) if payload.len() == 3 * 1024 * 1024)
        );
    }

    #[test]
    fn request_bytes_match_the_documented_layout() {
        let mut buf = BytesMut::new();
        samples()[0].encode(&mut buf, 1024).unwrap();
        let expected: &[u8] =
            b"\x00\x00\x00\x1a\x01\x00\x00\x00\x07\x01\x0achatRemote\x03add\x0a\x03bob";
        assert_eq!(&buf[..], expected);
        assert_eq!(samples()[0].encoded_len(), expected.len());
    }

    #[test]
    fn ping_and_pong_are_one_kind_byte() {
        for (f, kind) in [(Frame::Ping, 5u8), (Frame::Pong, 6u8)] {
            let mut buf = BytesMut::new();
            f.encode(&mut buf, 1024).unwrap();
            assert_eq!(&buf[..], &[0, 0, 0, 1, kind]);
            assert_eq!(Frame::decode(&mut buf, 1024), Ok(Some(f)));
        }
        let mut bad = BytesMut::from(&b"\x00\x00\x00\x02\x05\x00"[..]);
        assert!(matches!(
            Frame::decode(&mut bad, 1024),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn error_response_bytes_match_the_documented_layout() {
        let mut buf = BytesMut::new();
        samples()[3].encode(&mut buf, 1024).unwrap();
        let expected: &[u8] =
            b"\x00\x00\x00\x18\x04\x00\x00\x00\x01\x01\x00\x00\x01\xf5\x00\x0cno such room";
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn round_trip_whole_and_byte_by_byte() {
        let mut wire = BytesMut::new();
        for f in samples() {
            let before = wire.len();
            f.encode(&mut wire, 1024).unwrap();
            assert_eq!(wire.len() - before, f.encoded_len());
        }
        // Whole buffer.
        let mut src = wire.clone();
        let mut got = Vec::new();
        while let Some(f) = Frame::decode(&mut src, 1024).unwrap() {
            got.push(f);
        }
        assert_eq!(got, samples());
        assert!(src.is_empty());
        // One byte at a time.
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            src.put_u8(*b);
            while let Some(f) = Frame::decode(&mut src, 1024).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut src = BytesMut::from(&b"\x00\x10\x00\x00\x01"[..]);
        assert_eq!(
            Frame::decode(&mut src, 1024),
            Err(FrameError::TooLarge {
                len: 0x0010_0000,
                max: 1024
            })
        );
        let big = Frame::Response {
            id: 1,
            result: Ok(Bytes::from(vec![0u8; 2000])),
        };
        let mut dst = BytesMut::new();
        assert!(matches!(
            big.encode(&mut dst, 1024),
            Err(FrameError::TooLarge {
                len: 2005,
                max: 1024
            })
        ));
        assert!(dst.is_empty());
    }

    #[test]
    fn a_non_ascii_utf8_name_decodes_and_a_broken_one_after_ascii_does_not() {
        let f = Frame::Request {
            id: 1,
            namespace: Namespace::User,
            service: Name::new("räume").unwrap(),
            method: Name::new("añadir").unwrap(),
            payload: Bytes::new(),
        };
        let mut buf = BytesMut::new();
        f.encode(&mut buf, 1024).unwrap();
        assert_eq!(Frame::decode(&mut buf, 1024).unwrap(), Some(f));
        // ASCII, then a lone continuation byte.
        let mut src = BytesMut::from(&b"\x00\x00\x00\x08\x02\x01\x03ab\x80\x01a"[..]);
        assert_eq!(
            Frame::decode(&mut src, 1024),
            Err(FrameError::Malformed {
                reason: "service or method name is not UTF-8",
            })
        );
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let cases: &[(&[u8], FrameError)] = &[
            (
                b"\x00\x00\x00\x00",
                FrameError::Malformed {
                    reason: "empty frame (length 0)",
                },
            ),
            (
                b"\x00\x00\x00\x01\x7f",
                FrameError::UnknownKind { kind: 0x7f },
            ),
            (
                b"\x00\x00\x00\x03\x01\x00\x00",
                FrameError::Malformed {
                    reason: "request shorter than its id",
                },
            ),
            (
                b"\x00\x00\x00\x02\x02\x07",
                FrameError::UnknownNamespace { ns: 7 },
            ),
            (
                b"\x00\x00\x00\x04\x02\x01\x05ab",
                FrameError::Malformed {
                    reason: "name runs past the end of the frame",
                },
            ),
            (
                b"\x00\x00\x00\x04\x02\x01\x00\x01",
                FrameError::BadName { len: 0 },
            ),
            (
                b"\x00\x00\x00\x06\x02\x01\x01\xff\x01a",
                FrameError::Malformed {
                    reason: "service or method name is not UTF-8",
                },
            ),
            (
                b"\x00\x00\x00\x06\x04\x00\x00\x00\x01\x09",
                FrameError::UnknownErrorKind { ekind: 9 },
            ),
        ];
        for (bytes, want) in cases {
            let mut src = BytesMut::from(*bytes);
            assert_eq!(
                Frame::decode(&mut src, 1024).as_ref(),
                Err(want),
                "{bytes:?}"
            );
        }
    }

    fn arb_name() -> impl proptest::strategy::Strategy<Value = Name> {
        use proptest::prelude::*;
        "[a-zA-Z0-9_.]{1,40}".prop_map(|s| Name::new(s).unwrap())
    }

    fn arb_frame() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let ns = prop_oneof![Just(Namespace::Sys), Just(Namespace::User)];
        let payload = proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
        let kind = prop_oneof![
            Just(ErrorKind::Handler),
            Just(ErrorKind::UnknownService),
            Just(ErrorKind::UnknownMethod),
            Just(ErrorKind::BadPayload),
            Just(ErrorKind::Internal),
        ];
        prop_oneof![
            (
                any::<u32>(),
                ns.clone(),
                arb_name(),
                arb_name(),
                payload.clone()
            )
                .prop_map(|(id, namespace, service, method, payload)| Frame::Request {
                    id,
                    namespace,
                    service,
                    method,
                    payload
                }),
            (ns, arb_name(), arb_name(), payload.clone()).prop_map(
                |(namespace, service, method, payload)| Frame::Notify {
                    namespace,
                    service,
                    method,
                    payload
                }
            ),
            (any::<u32>(), payload).prop_map(|(id, p)| Frame::Response { id, result: Ok(p) }),
            Just(Frame::Ping),
            Just(Frame::Pong),
            proptest::collection::vec(any::<u8>(), 32).prop_map(|p| Frame::AuthOk {
                proof: Bytes::from(p)
            }),
            proptest::collection::vec(any::<u8>(), 32).prop_map(|n| Frame::Challenge {
                nonce: Bytes::from(n)
            }),
            (
                proptest::collection::vec(any::<u8>(), 32),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(m, i)| Frame::Auth {
                    mac: Bytes::from(m),
                    info: Bytes::from(i)
                }),
            (any::<u32>(), kind, any::<u32>(), ".{0,60}").prop_map(|(id, kind, code, message)| {
                Frame::Response {
                    id,
                    result: Err(WireError {
                        kind,
                        code,
                        message,
                    }),
                }
            }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_encoded_frames_decodes_to_the_same_frames(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                let before = wire.len();
                f.encode(&mut wire, 1 << 16).unwrap();
                proptest::prop_assert_eq!(wire.len() - before, f.encoded_len());
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts {
                src.extend_from_slice(&wire[at..cut]);
                at = cut;
                while let Some(f) = Frame::decode(&mut src, 1 << 16).unwrap() {
                    got.push(f);
                }
            }
            proptest::prop_assert_eq!(got, frames);
            proptest::prop_assert!(src.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            fuzz_decode(&data);
        }
    }

    #[test]
    fn fuzz_body_survives_garbage() {
        let mut seed = 0x1234_5678u32;
        for len in 0..300usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8 % 8
                })
                .collect();
            fuzz_decode(&data);
        }
    }
}
