//! Varints, zig-zag and a bounds-checked reader for the pomelo-protobuf codec.
//!
//! Varints are base-128, least significant group first, high bit = "more bytes follow"
//! (1 → `01`, 300 → `ac 02`); at most 10 bytes for 64 bits. They are written by
//! [`crate::varint::encode_u64`], the writer of message ids too; the reader is here (its
//! 10-byte limit and errors differ from the message id's).

/// Zig-zag (pomelo `encodeSInt32`): n ≥ 0 → 2n, n < 0 → −2n − 1.
pub(super) fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

pub(super) fn unzigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

pub(super) fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub(super) fn unzigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Why a read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadError {
    /// The input ended; at least this many more bytes were needed.
    Truncated(usize),
    /// A varint longer than 10 bytes or above `u64::MAX`.
    VarintOverflow,
}

/// A cursor over one message's bytes.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(super) fn varint(&mut self) -> Result<u64, ReadError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.data.get(self.pos + i) else {
                return Err(ReadError::Truncated(1));
            };
            let low = u64::from(b & 0x7f);
            if i == 9 && low > 1 {
                return Err(ReadError::VarintOverflow);
            }
            value |= low << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(ReadError::VarintOverflow)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let rest = self.remaining();
        if n > rest {
            return Err(ReadError::Truncated(n - rest));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::varint;

    #[test]
    fn varint_examples() {
        for (v, hex) in [
            (0u64, "00"),
            (1, "01"),
            (127, "7f"),
            (128, "8001"),
            (300, "ac02"),
            (u64::from(u32::MAX), "ffffffff0f"),
            (u64::MAX, "ffffffffffffffffff01"),
        ] {
            let mut out = Vec::new();
            varint::encode_u64(v, &mut out);
            assert_eq!(hex::encode(&out), hex);
            assert_eq!(varint::encoded_len_u64(v), out.len());
            assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
    }

    #[test]
    fn varint_errors() {
        assert_eq!(Reader::new(&[0x80]).varint(), Err(ReadError::Truncated(1)));
        assert_eq!(
            Reader::new(&[0xff; 9].iter().copied().chain([0x02]).collect::<Vec<_>>()).varint(),
            Err(ReadError::VarintOverflow)
        );
        assert_eq!(
            Reader::new(&[0x80; 11]).varint(),
            Err(ReadError::VarintOverflow)
        );
    }

    #[test]
    fn zigzag_examples() {
        for (n, z) in [
            (0, 0),
            (-1, 1),
            (1, 2),
            (-64, 127),
            (i32::MAX, u32::MAX - 1),
            (i32::MIN, u32::MAX),
        ] {
            assert_eq!(zigzag32(n), z);
            assert_eq!(unzigzag32(z), n);
            assert_eq!(unzigzag64(zigzag64(i64::from(n))), i64::from(n));
        }
        assert_eq!(unzigzag64(zigzag64(i64::MIN)), i64::MIN);
    }
}
