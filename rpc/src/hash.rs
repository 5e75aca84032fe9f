//! A fast hasher for the hot maps whose keys no client chooses: call ids, session ids, server
//! ids and types, service names. std's default (SipHash-1-3, keyed per map) resists keys
//! picked to collide, which those maps do not need, and costs several times more per lookup.
//! Maps keyed by what a client sends (a uid, a route) keep std's.
//!
//! The mixing is FxHash's (as rustc uses): per 8-byte word, `h = (h.rotl(5) ^ word) * K`.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastBuildHasher>;

/// Builds [`FastHasher`]s (unkeyed: every map hashes alike).
pub type FastBuildHasher = BuildHasherDefault<FastHasher>;

/// FxHash-style hasher; see the [module docs](self).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            // The length too, so "a" and "a\0" differ.
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7: the
        // multiply leaves the best-mixed bits at the top, so bring some of them down.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn maps_work_and_keys_spread() {
        let mut m: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        let mut s: FastMap<String, usize> = FastMap::default();
        for i in 0..1_000 {
            s.insert(format!("chat-server-{i}"), i);
        }
        assert!((0..1_000).all(|i| s.get(&format!("chat-server-{i}")) == Some(&i)));
        // Sequential ids land in distinct low-bit buckets (no clustering on a 1024-slot table).
        let b = FastBuildHasher::default();
        let buckets: std::collections::HashSet<u64> =
            (0u64..1024).map(|i| b.hash_one(i) & 1023).collect();
        assert!(buckets.len() > 600, "{}", buckets.len());
        assert_ne!(b.hash_one("a"), b.hash_one("a\0"));
    }
}
