//! Bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`), kept in the library so an
//! ordinary `#[test]` can run them over the seed corpus on stable. Each one must never
//! panic on any input; the assertions inside check round-trip invariants.

use bytes::{Bytes, BytesMut};

use crate::handshake::{HandshakeRequest, HandshakeResponse, Kick, ServerHandshake};
use crate::package::{FramePackages, MAX_BODY_LEN, PackageDecoder};
use crate::{Message, RouteDictionary};

/// Package layer: the stream decoder fed in two splits must agree with the frame decoder,
/// and every decoded package must re-encode to the bytes it came from.
pub fn package(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
    let mut src = BytesMut::from(&data[..split]);
    let mut streamed = Vec::new();
    let mut failed = false;
    for chunk in [&data[..0], &data[split..]] {
        src.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(package)) => streamed.push(package),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    let mut framed = Vec::new();
    for item in FramePackages::new(Bytes::copy_from_slice(data), MAX_BODY_LEN) {
        match item {
            Ok(package) => framed.push(package),
            Err(_) => break,
        }
    }
    assert_eq!(streamed, framed, "stream and frame decoders disagree");
    let mut reencoded = BytesMut::new();
    for package in &framed {
        package
            .encode(&mut reencoded)
            .expect("decoded package re-encodes");
    }
    assert_eq!(&reencoded[..], &data[..reencoded.len()]);
}

/// Message layer: decode, and a decoded message re-encodes to exactly the input except
/// for the ignored flag bits 6-7.
pub fn message(data: &[u8]) {
    let Ok(message) = Message::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut out = BytesMut::new();
    message
        .encode(&mut out)
        .expect("decoded message re-encodes");
    assert_eq!(out.len(), message.encoded_len());
    assert_eq!(out[0], data[0] & 0x3f);
    // The input may spell the id with an overlong varint (`80 00` for 0), which decoders
    // accept as JS and protobuf do; our encoding is the canonical one, so compare values
    // and require equal bytes only when no shorter spelling was used.
    assert!(out.len() <= data.len());
    assert_eq!(
        Message::decode(out.clone().freeze()).ok().as_ref(),
        Some(&message)
    );
    if out.len() == data.len() {
        assert_eq!(&out[1..], &data[1..]);
    }
    if let Ok(mut package) = message.to_package().map(|p| p.body) {
        assert_eq!(Message::decode(package.split_off(0)).ok(), Some(message));
    }
}

/// Handshake and kick bodies: lenient server-side parse and reply, client-side parse.
pub fn handshake(data: &[u8]) {
    let request = HandshakeRequest::parse(data);
    if request.has_sys() {
        let dict =
            RouteDictionary::new(["chat.chatHandler.send"], ["onChat"]).expect("tiny dictionary");
        let server = ServerHandshake::new(None, Some(&dict), None, Default::default());
        let reply = server.accept(&request, request.user());
        let parsed = HandshakeResponse::parse(&reply).expect("our reply parses");
        assert_eq!(parsed.code, 200);
    }
    let _ = HandshakeResponse::parse(data).map(|r| r.dictionary());
    let _ = Kick::parse(data).reason;
}
