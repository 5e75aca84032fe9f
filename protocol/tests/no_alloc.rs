//! The hot codec paths allocate nothing beyond the caller's output buffer: encoding writes into a
//! reused `BytesMut`, decoding slices the input `Bytes`. Counted with a counting global allocator
//! (the `allocation-counter` crate) around the very operations the package/message bench times.

use bytes::{Bytes, BytesMut};
use shaddock_protocol::package::MAX_BODY_LEN;
use shaddock_protocol::{Message, MessageRoute, PackageDecoder};

const BODY: &[u8; 64] = br#"{"content":"hello everyone in the lobby","target":"*","n":12345}"#;

fn requests() -> Vec<Message> {
    vec![
        Message::request(1234, MessageRoute::Code(3), Bytes::from_static(BODY)),
        Message::request(
            1234,
            MessageRoute::name("chat.chatHandler.send"),
            Bytes::from_static(BODY),
        ),
    ]
}

/// Allocations made by `f`, run 100 times (so a per-call allocation cannot hide).
fn allocations(mut f: impl FnMut()) -> u64 {
    allocation_counter::measure(|| {
        for _ in 0..100 {
            f();
        }
    })
    .count_total
}

#[test]
fn the_counter_sees_allocations() {
    // Guard against a counter that counts nothing: a fresh Vec per call must show up.
    let n = allocations(|| {
        std::hint::black_box(vec![1u8; 64]);
    });
    assert!(
        n >= 100,
        "counter saw {n} allocations for 100 Vec allocations"
    );
}

#[test]
fn message_encode_and_decode_allocate_nothing() {
    for msg in requests() {
        let mut dst = BytesMut::with_capacity(256);
        let n = allocations(|| {
            dst.clear();
            msg.encode(&mut dst).unwrap();
        });
        assert_eq!(n, 0, "encode of {:?}", msg.route);

        let wire = dst.clone().freeze();
        // `bytes` promotes a Vec-backed buffer to a shared one (one allocation) at its first clone;
        // do that outside the measurement, as a connection's read buffer has long done it.
        drop(wire.clone());
        let n = allocations(|| {
            let decoded = Message::decode(wire.clone()).unwrap();
            std::hint::black_box(decoded);
        });
        assert_eq!(n, 0, "decode of {:?}", msg.route);
    }
}

#[test]
fn package_encode_and_stream_decode_allocate_nothing() {
    for msg in requests() {
        let mut dst = BytesMut::with_capacity(256);
        let n = allocations(|| {
            dst.clear();
            msg.encode_package(&mut dst).unwrap();
        });
        assert_eq!(n, 0, "encode_package of {:?}", msg.route);

        let wire = dst.clone();
        let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
        // The read buffer is the caller's and reused; refilling it is a copy, not an allocation.
        let mut src = BytesMut::with_capacity(4096);
        // Warm-up outside the measurement: the first split of the read buffer promotes it to a
        // shared buffer (one allocation), as happens once per connection.
        src.extend_from_slice(&wire);
        drop(decoder.decode(&mut src).unwrap());
        let n = allocations(|| {
            src.clear();
            src.extend_from_slice(&wire);
            let package = decoder.decode(&mut src).unwrap().unwrap();
            let decoded = Message::decode(package.body).unwrap();
            std::hint::black_box(decoded);
        });
        assert_eq!(n, 0, "stream decode of {:?}", msg.route);
    }
}
