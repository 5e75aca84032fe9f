//! Base-128 varints for message ids (and, as `u64`, the pomelo-protobuf writer): least
//! significant 7-bit group first, high bit set on every byte except the last (the protobuf
//! scheme), at most 5 bytes for a `u32`.
//!
//! ```text
//!   1 -> 01          127 -> 7f          128 -> 80 01
//!   16383 -> ff 7f   16384 -> 80 80 01  2^32-1 -> ff ff ff ff 0f
//! ```
//!
//! PROTOCOL.md §4.2: "Ids are unsigned 32-bit; at most 5 bytes. A decoder SHOULD reject a
//! sixth byte and a 5-byte value above 2^32 − 1."

use bytes::BufMut;

use crate::Error;

/// The longest varint a `u32` needs.
pub const MAX_VARINT_LEN: usize = 5;

/// Number of bytes [`encode_u32`] writes for `value` (1..=5).
#[inline]
pub fn encoded_len_u32(value: u32) -> usize {
    encoded_len_u64(u64::from(value))
}

/// Append `value` as a varint.
#[inline]
pub fn encode_u32(value: u32, dst: &mut impl BufMut) {
    encode_u64(u64::from(value), dst);
}

/// Number of bytes [`encode_u64`] writes for `value` (1..=10).
#[inline]
pub(crate) fn encoded_len_u64(value: u64) -> usize {
    // bits needed, rounded up to groups of 7; 0 still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Append `value` as a varint (also the pomelo-protobuf varint writer).
#[inline]
pub(crate) fn encode_u64(mut value: u64, dst: &mut impl BufMut) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Read a varint from the start of `src`: the value and the number of bytes it took.
///
/// # Errors
/// [`Error::TruncatedId`] when `src` ends on a byte with the high bit set (or is empty),
/// [`Error::IdTooLong`] when the first 5 bytes all have the high bit set,
/// [`Error::IdOverflow`] when a 5-byte varint holds more than 32 bits.
#[inline]
pub fn decode_u32(src: &[u8]) -> Result<(u32, usize), Error> {
    let mut value: u32 = 0;
    for (i, &byte) in src.iter().enumerate() {
        if i == MAX_VARINT_LEN {
            return Err(Error::IdTooLong);
        }
        let group = u32::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && (byte & 0x80 == 0) && group > 0x0f {
            // the fifth group may only hold the top 4 bits of a u32
            return Err(Error::IdOverflow);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if src.len() >= MAX_VARINT_LEN {
        Err(Error::IdTooLong)
    } else {
        Err(Error::TruncatedId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        let table: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (1 << 28, &[0x80, 0x80, 0x80, 0x80, 0x01]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in table {
            let mut out = Vec::new();
            encode_u32(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(encoded_len_u32(value), bytes.len(), "len {value}");
            assert_eq!(
                decode_u32(bytes).unwrap(),
                (value, bytes.len()),
                "decode {value}"
            );
        }
    }

    #[test]
    fn errors() {
        assert_eq!(decode_u32(&[]).unwrap_err().kind(), "truncated_id");
        assert_eq!(decode_u32(&[0x80]).unwrap_err().kind(), "truncated_id");
        assert_eq!(decode_u32(&[0xff; 4]).unwrap_err().kind(), "truncated_id");
        assert_eq!(decode_u32(&[0xff; 5]).unwrap_err().kind(), "id_too_long");
        assert_eq!(
            decode_u32(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
                .unwrap_err()
                .kind(),
            "id_too_long"
        );
        assert_eq!(
            decode_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f])
                .unwrap_err()
                .kind(),
            "id_overflow"
        );
        assert_eq!(
            decode_u32(&[0x80, 0x80, 0x80, 0x80, 0x10])
                .unwrap_err()
                .kind(),
            "id_overflow"
        );
    }

    #[test]
    fn round_trip_powers() {
        for shift in 0..32 {
            for v in [1u32 << shift, (1u32 << shift).wrapping_sub(1)] {
                let mut out = Vec::new();
                encode_u32(v, &mut out);
                assert_eq!(out.len(), encoded_len_u32(v));
                assert_eq!(decode_u32(&out).unwrap(), (v, out.len()));
            }
        }
    }
}
