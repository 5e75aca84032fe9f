//! One push message: the encoded package once, and the uids it is for.
//!
//! ```text
//! byte 0      0x53 ('S')        magic
//! byte 1      0x01 | 0x02       1: for the uids listed, 2: for every session (broadcast)
//! bytes 2..6  u32 BE            uid count (0 for a broadcast)
//! per uid     u16 BE length, then the uid's UTF-8 bytes
//! rest        the encoded package, as the frontend writes it to each session
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::ClusterError;

const MAGIC: u8 = 0x53;
const KIND_UIDS: u8 = 1;
const KIND_ALL: u8 = 2;
const HEADER: usize = 6;

/// A push as a frontend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The encoded package, to write as is to each session.
    pub package: Bytes,
    /// The uids it is for; `None`: every session of the frontend (a broadcast).
    pub uids: Option<Vec<String>>,
}

/// The messages that carry `package` to `uids`, each at most `max_payload` bytes.
pub(crate) fn encode_split(
    package: &Bytes,
    uids: &[String],
    max_payload: usize,
) -> Result<Vec<Bytes>, ClusterError> {
    let fixed = HEADER + package.len();
    let mut out = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let mut size = fixed;
    for uid in uids {
        let need = 2 + uid.len();
        if uid.len() > u16::MAX as usize || fixed + need > max_payload {
            return Err(ClusterError::PushTooLarge {
                package: package.len(),
                uid: uid.clone(),
                max_payload,
            });
        }
        if size + need > max_payload {
            out.push(encode(KIND_UIDS, &chunk, package, size));
            chunk.clear();
            size = fixed;
        }
        chunk.push(uid);
        size += need;
    }
    if !chunk.is_empty() {
        out.push(encode(KIND_UIDS, &chunk, package, size));
    }
    Ok(out)
}

/// The one message of a broadcast.
pub(crate) fn encode_all(package: &Bytes, max_payload: usize) -> Result<Bytes, ClusterError> {
    let size = HEADER + package.len();
    if size > max_payload {
        return Err(ClusterError::PushTooLarge {
            package: package.len(),
            uid: String::new(),
            max_payload,
        });
    }
    Ok(encode(KIND_ALL, &[], package, size))
}

fn encode(kind: u8, uids: &[&str], package: &Bytes, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u8(MAGIC);
    b.put_u8(kind);
    b.put_u32(uids.len() as u32);
    for uid in uids {
        b.put_u16(uid.len() as u16);
        b.put_slice(uid.as_bytes());
    }
    b.put_slice(package);
    b.freeze()
}

/// Decodes one message; the error says what is wrong with it.
pub(crate) fn decode(msg: &Bytes) -> Result<Push, String> {
    if msg.len() < HEADER {
        return Err(format!(
            "{} bytes, shorter than the 6-byte header",
            msg.len()
        ));
    }
    if msg[0] != MAGIC {
        return Err(format!("magic byte {:#04x}, not 0x53", msg[0]));
    }
    let kind = msg[1];
    let count = u32::from_be_bytes([msg[2], msg[3], msg[4], msg[5]]) as usize;
    let mut at = HEADER;
    let uids = match kind {
        KIND_ALL if count == 0 => None,
        KIND_ALL => return Err(format!("a broadcast with {count} uids")),
        KIND_UIDS => {
            // Each uid takes at least 2 bytes: a count beyond that is a lie; refuse it before
            // allocating.
            if count > (msg.len() - HEADER) / 2 {
                return Err(format!("{count} uids in {} bytes", msg.len()));
            }
            let mut uids = Vec::with_capacity(count);
            for i in 0..count {
                let Some(len) = msg.get(at..at + 2) else {
                    return Err(format!("uid {i} of {count}: length cut off at byte {at}"));
                };
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                at += 2;
                let Some(raw) = msg.get(at..at + len) else {
                    return Err(format!(
                        "uid {i} of {count}: {len} bytes cut off at byte {at}"
                    ));
                };
                let uid = std::str::from_utf8(raw)
                    .map_err(|e| format!("uid {i} of {count}: not UTF-8: {e}"))?;
                uids.push(uid.to_owned());
                at += len;
            }
            Some(uids)
        }
        other => return Err(format!("kind byte {other}, not 1 or 2")),
    };
    Ok(Push {
        package: msg.slice(at..),
        uids,
    })
}

/// The pushes for one frontend ([`super::ClusterBackend::subscribe_pushes`]). Messages that do
/// not decode are dropped, logged and counted ([`super::ClusterStats::bad_pushes`]).
pub struct PushStream {
    inner: BoxStream<'static, Bytes>,
    frontend: String,
    bad: Arc<AtomicU64>,
}

impl std::fmt::Debug for PushStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushStream")
            .field("frontend", &self.frontend)
            .finish_non_exhaustive()
    }
}

impl PushStream {
    pub(crate) fn new(
        inner: BoxStream<'static, Bytes>,
        frontend: String,
        bad: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            frontend,
            bad,
        }
    }

    /// The next push; `None` when the subscription ended (the backend handle is gone).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Push> {
        loop {
            let msg = self.inner.next().await?;
            match decode(&msg) {
                Ok(p) => return Some(p),
                Err(e) => {
                    self.bad.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(frontend = %self.frontend, "dropped a bad push message: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn split_keeps_every_uid_once_and_every_message_under_the_limit() {
        let package = Bytes::from(vec![7u8; 300]);
        let all = uids(500);
        for max in [320usize, 400, 1000, 4096, 1 << 20] {
            let msgs = encode_split(&package, &all, max).unwrap();
            let mut seen = Vec::new();
            for m in &msgs {
                assert!(m.len() <= max, "{} > {max}", m.len());
                let p = decode(m).unwrap();
                assert_eq!(p.package, package);
                seen.extend(p.uids.unwrap());
            }
            assert_eq!(seen, all, "max {max}");
        }
        assert_eq!(encode_split(&package, &all, 1 << 20).unwrap().len(), 1);
        assert!(encode_split(&package, &all, 1000).unwrap().len() > 1);
        assert!(encode_split(&package, &[], 1000).unwrap().is_empty());
    }

    #[test]
    fn too_large_is_an_error_naming_the_sizes() {
        let package = Bytes::from(vec![0u8; 100]);
        let e = encode_split(&package, &uids(1), 100).unwrap_err();
        assert!(e.to_string().contains("100 bytes"), "{e}");
        assert!(encode_all(&package, 105).is_err());
        let m = encode_all(&package, 106).unwrap();
        assert_eq!(
            decode(&m).unwrap(),
            Push {
                package,
                uids: None
            }
        );
    }

    #[test]
    fn bad_messages_are_errors_never_panics() {
        let good = encode_split(&Bytes::from_static(b"pkg"), &uids(3), 1000).unwrap()[0].clone();
        for cut in 0..good.len() {
            let _ = decode(&good.slice(..cut));
        }
        assert!(decode(&Bytes::from_static(b"X\x01\0\0\0\0")).is_err());
        assert!(decode(&Bytes::from_static(b"S\x09\0\0\0\0")).is_err());
        assert!(decode(&Bytes::from_static(b"S\x01\xff\xff\xff\xff")).is_err());
        assert!(decode(&Bytes::from_static(b"S\x02\0\0\0\x01")).is_err());
        assert!(decode(&Bytes::from_static(b"S\x01\0\0\0\x01\0\x02\xff\xfe")).is_err());
        // Every byte flipped: no panic.
        for i in 0..good.len() {
            let mut b = good.to_vec();
            b[i] ^= 0xff;
            let _ = decode(&Bytes::from(b));
        }
    }
}
