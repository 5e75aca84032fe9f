//! [`Payload`]: how call arguments and replies become bytes.

use bytes::Bytes;

/// A payload that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload decode error: {message}")]
pub struct PayloadError {
    /// The decoder's message.
    pub message: String,
}

/// A type that travels as an RPC argument or reply.
///
/// Every prost message is a payload (encoded with prost; `()` is the empty message). Use
/// [`Raw`] to pass pre-encoded bytes through untouched and uncopied.
pub trait Payload: Sized + Send + 'static {
    /// Encodes `self`.
    fn into_payload(self) -> Bytes;
    /// Decodes a payload.
    ///
    /// # Errors
    /// [`PayloadError`] if the bytes are not a valid encoding.
    fn from_payload(bytes: Bytes) -> Result<Self, PayloadError>;
}

impl<M: prost::Message + Default + 'static> Payload for M {
    fn into_payload(self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    fn from_payload(bytes: Bytes) -> Result<Self, PayloadError> {
        M::decode(bytes).map_err(|e| PayloadError {
            message: e.to_string(),
        })
    }
}

/// Opaque bytes passed as they are: a forwarded client request, a pre-encoded push.
/// Neither encoding nor decoding copies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raw(pub Bytes);

impl Payload for Raw {
    fn into_payload(self) -> Bytes {
        self.0
    }

    fn from_payload(bytes: Bytes) -> Result<Self, PayloadError> {
        Ok(Self(bytes))
    }
}

impl From<Bytes> for Raw {
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}
