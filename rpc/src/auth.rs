//! The cluster secret: only servers that know it may call in (see [`ClusterSecret`]).
//!
//! When [`crate::RpcConfig::secret`] is set, a server sends a `challenge` frame with a random
//! 32-byte nonce as soon as it accepts; the client answers with an `auth` frame carrying
//! `HMAC-SHA256(secret, nonce || info)` and `info` (32 random bytes of its own choosing); the
//! server checks the MAC in constant time and answers `auth-ok` with its own proof,
//! `HMAC-SHA256(secret, "shaddock-rpc-server" || info || nonce)`, which the client checks before
//! it sends a call (so a peer that merely accepts connections cannot pose as a cluster server);
//! only then are calls read.
//! Anything else first (a request, a wrong MAC, silence for `connect_timeout`) closes the
//! connection with a `warn!` naming the peer; no handler runs.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;

/// Bytes of a challenge nonce, of the client's `info`, and of a MAC.
pub const AUTH_LEN: usize = 32;

/// A shared secret of the cluster's servers. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

/// A cluster secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Fewer than 16 bytes.
    #[error("rpc cluster secret of {len} bytes is too short (at least 16)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Hex text with an odd length or a character that is not a hex digit.
    #[error("rpc cluster secret is not hex")]
    NotHex,
    /// The OS random source failed.
    #[error("no randomness for an rpc cluster secret: {0}")]
    Random(String),
}

impl ClusterSecret {
    /// Least length accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A secret from its bytes.
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`ClusterSecret::MIN_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// 32 fresh random bytes from the OS.
    ///
    /// # Errors
    /// [`SecretError::Random`] if the OS has no randomness to give.
    pub fn generate() -> Result<Self, SecretError> {
        let mut b = vec![0u8; 32];
        getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
        Self::new(b)
    }

    /// Parses lowercase or uppercase hex (as [`ClusterSecret::to_hex`] writes it).
    ///
    /// # Errors
    /// [`SecretError::NotHex`], or [`SecretError::TooShort`].
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) {
            return Err(SecretError::NotHex);
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let bytes = text
            .as_bytes()
            .chunks(2)
            .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or(SecretError::NotHex)?;
        Self::new(bytes)
    }

    /// The secret as lowercase hex, e.g. to hand it to a child process through its
    /// environment. Never log it.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in self.0.iter() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The HMAC of the concatenation of `parts`, keyed with the secret.
    fn mac_of(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in parts {
            m.update(part);
        }
        m
    }

    /// `HMAC-SHA256(secret, nonce || info)`: the client's answer to a challenge.
    pub(crate) fn answer(&self, nonce: &[u8], info: &[u8]) -> [u8; AUTH_LEN] {
        self.mac_of(&[nonce, info]).finalize().into_bytes().into()
    }

    /// Whether `mac` answers `nonce` with `info`; compares in constant time.
    pub(crate) fn verify(&self, nonce: &[u8], info: &[u8], mac: &[u8]) -> bool {
        self.mac_of(&[nonce, info]).verify_slice(mac).is_ok()
    }

    /// The server's proof for the client that sent `info` to the challenge `nonce`; a distinct
    /// prefix keeps it from ever equalling a client answer.
    pub(crate) fn server_proof(&self, nonce: &[u8], info: &[u8]) -> [u8; AUTH_LEN] {
        self.mac_of(&[SERVER_PROOF_PREFIX, info, nonce])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the server's proof for `nonce` and `info`; constant time.
    pub(crate) fn verify_server_proof(&self, nonce: &[u8], info: &[u8], proof: &[u8]) -> bool {
        self.mac_of(&[SERVER_PROOF_PREFIX, info, nonce])
            .verify_slice(proof)
            .is_ok()
    }
}

const SERVER_PROOF_PREFIX: &[u8] = b"shaddock-rpc-server";

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// `AUTH_LEN` fresh random bytes (a nonce or the client's `info`).
pub(crate) fn random_bytes() -> Result<[u8; AUTH_LEN], String> {
    let mut b = [0u8; AUTH_LEN];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness for an rpc nonce: {e}"))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_redacted_debug() {
        let s = ClusterSecret::generate().unwrap();
        let hex = s.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(ClusterSecret::from_hex(&hex).unwrap(), s);
        assert_eq!(format!("{s:?}"), "ClusterSecret(<redacted>)");
        assert_eq!(ClusterSecret::from_hex("abc"), Err(SecretError::NotHex));
        assert_eq!(ClusterSecret::from_hex("zz"), Err(SecretError::NotHex));
        assert_eq!(
            ClusterSecret::new(b"short".to_vec()),
            Err(SecretError::TooShort { len: 5 })
        );
    }

    #[test]
    fn the_mac_is_hmac_sha256_of_nonce_then_info() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" (split in two).
        let key = ClusterSecret(Arc::from(&b"Jefe"[..]));
        let mac = key.answer(b"what do ya want ", b"for nothing?");
        let want: [u8; 32] = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
            0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(mac, want);
        assert!(key.verify(b"what do ya want ", b"for nothing?", &want));
        assert!(!key.verify(b"what do ya want ", b"for nothing!", &want));
        assert!(!key.verify(b"what do ya want ", b"for nothing?", &want[..31]));
    }
}
