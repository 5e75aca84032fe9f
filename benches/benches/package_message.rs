//! Package and message codec micro-benches: encode and decode of one REQUEST with a
//! dictionary route and with a string route, 64-byte body, on in-memory buffers.
//!
//! Run: `cargo bench -p shaddock-benches --bench package_message`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shaddock_protocol::package::MAX_BODY_LEN;
use shaddock_protocol::{Message, MessageRoute, PackageDecoder};

/// A fixed 64-byte JSON body.
const BODY: &[u8; 64] = br#"{"content":"hello everyone in the lobby","target":"*","n":12345}"#;

fn requests() -> [(&'static str, Message); 2] {
    [
        (
            "dictionary route",
            Message::request(1234, MessageRoute::Code(3), Bytes::from_static(BODY)),
        ),
        (
            "string route",
            Message::request(
                1234,
                MessageRoute::name("chat.chatHandler.send"),
                Bytes::from_static(BODY),
            ),
        ),
    ]
}

fn message(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    group.throughput(Throughput::Elements(1));
    for (name, msg) in requests() {
        // encode into a buffer that is reused: only the output bytes are written
        let mut dst = BytesMut::with_capacity(256);
        group.bench_function(format!("encode request, {name}, 64-byte body"), |b| {
            b.iter(|| {
                dst.clear();
                black_box(&msg).encode(&mut dst).unwrap();
                black_box(dst.len())
            })
        });
        let mut encoded = BytesMut::new();
        msg.encode(&mut encoded).unwrap();
        let encoded = encoded.freeze();
        group.bench_function(format!("decode request, {name}, 64-byte body"), |b| {
            b.iter(|| Message::decode(black_box(encoded.clone())).unwrap())
        });
    }
    group.finish();
}

fn package(c: &mut Criterion) {
    let mut group = c.benchmark_group("package");
    group.throughput(Throughput::Elements(1));
    for (name, msg) in requests() {
        let mut dst = BytesMut::with_capacity(256);
        group.bench_function(format!("encode DATA package + request, {name}"), |b| {
            b.iter(|| {
                dst.clear();
                black_box(&msg).encode_package(&mut dst).unwrap();
                black_box(dst.len())
            })
        });
        let mut wire = BytesMut::new();
        msg.encode_package(&mut wire).unwrap();
        let wire = wire.freeze();
        let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
        let mut src = BytesMut::with_capacity(256);
        group.bench_function(
            format!("stream-decode DATA package + request, {name}"),
            |b| {
                b.iter(|| {
                    src.extend_from_slice(black_box(&wire));
                    let package = decoder.decode(&mut src).unwrap().unwrap();
                    Message::decode(package.body).unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, message, package);
criterion_main!(benches);
