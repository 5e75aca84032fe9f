//! Deciding, from the first bytes of a connection, whether it is a raw TCP pomelo client or an
//! HTTP request (a WebSocket upgrade).
//!
//! pomelo's hybrid connector compares the first 4 (pinus: 5) bytes of the first read with HTTP
//! method names and carries a FIXME about reads shorter than that. Here the decision is a pure
//! function over whatever has been read so far, and it answers [`Sniff::NeedMore`] instead of
//! guessing when the bytes are still a prefix of an HTTP method (PROTOCOL.md §2.1).

/// What the first bytes of a connection say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sniff {
    /// Not enough bytes to decide: read more and ask again.
    NeedMore,
    /// A raw TCP pomelo client: the bytes are packages (a valid one starts with `01`, HANDSHAKE).
    Tcp,
    /// An HTTP request line (`GET `, `POST ` ...): hand the connection to the WebSocket server.
    WebSocket,
    /// A TLS handshake record (first byte `0x16`, a ClientHello): TLS clients, when the port
    /// has TLS configured. A port without TLS treats it as [`Sniff::Tcp`] (and the package
    /// decoder refuses type `0x16`).
    Tls,
}

/// First byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// HTTP request methods, each with the space that ends it in a request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// The longest method prefix [`sniff`] may need to see.
pub const MAX_SNIFF_LEN: usize = 8;

/// Classifies a connection from the bytes read from it so far.
///
/// A first byte of `0x16` is a TLS ClientHello ([`Sniff::Tls`]; never a pomelo package, whose
/// type is 1..=5, nor an HTTP method).
/// A method name followed by a space means HTTP; bytes that are still a prefix of such a method
/// (`"G"`, `"GE"`, `"DELE"`) need more input; anything else is a raw TCP client, whose first
/// package header is validated by the package decoder (an invalid type byte closes the
/// connection there, PROTOCOL.md §12).
#[must_use]
pub fn sniff(first: &[u8]) -> Sniff {
    if first.is_empty() {
        return Sniff::NeedMore;
    }
    if first[0] == TLS_HANDSHAKE {
        return Sniff::Tls;
    }
    let mut prefix_of_some = false;
    for method in METHODS {
        if first.starts_with(method) {
            return Sniff::WebSocket;
        }
        if method.starts_with(first) {
            prefix_of_some = true;
        }
    }
    if prefix_of_some {
        Sniff::NeedMore
    } else {
        Sniff::Tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&[u8], Sniff)] = &[
            (b"", Sniff::NeedMore),
            (b"\x01", Sniff::Tcp),
            (b"\x01\x00\x00\x10{", Sniff::Tcp),
            (b"\x02\x00\x00\x00", Sniff::Tcp),
            (b"\x00", Sniff::Tcp),
            (b"G", Sniff::NeedMore),
            (b"GE", Sniff::NeedMore),
            (b"GET", Sniff::NeedMore),
            (b"GET ", Sniff::WebSocket),
            (b"GET / HTTP/1.1\r\n", Sniff::WebSocket),
            (b"GEX", Sniff::Tcp),
            (b"GET/", Sniff::Tcp),
            (b"P", Sniff::NeedMore),
            (b"PO", Sniff::NeedMore),
            (b"PU", Sniff::NeedMore),
            (b"PUT /", Sniff::WebSocket),
            (b"POST /x", Sniff::WebSocket),
            (b"DELETE", Sniff::NeedMore),
            (b"DELETE /", Sniff::WebSocket),
            (b"HEAD /", Sniff::WebSocket),
            (b"get /", Sniff::Tcp),
            (b"X", Sniff::Tcp),
            (b"\x16", Sniff::Tls),
            (b"\x16\x03\x01\x02\x00", Sniff::Tls),
        ];
        for (input, want) in cases {
            assert_eq!(sniff(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn need_more_never_past_max_len() {
        // Any input of MAX_SNIFF_LEN bytes is decided.
        for method in METHODS {
            let mut buf = method.to_vec();
            buf.resize(MAX_SNIFF_LEN, b'x');
            assert_ne!(sniff(&buf), Sniff::NeedMore);
        }
        assert_ne!(sniff(b"OPTIONSx"), Sniff::NeedMore);
        assert_ne!(sniff(b"CONNECTx"), Sniff::NeedMore);
    }

    #[test]
    fn every_byte_pair_decides_or_needs_more_without_panic() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let r = sniff(&[a, b]);
                if a == TLS_HANDSHAKE {
                    assert_eq!(r, Sniff::Tls);
                } else if !a.is_ascii_uppercase() {
                    assert_eq!(r, Sniff::Tcp);
                }
            }
        }
    }
}
