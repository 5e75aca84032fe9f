//! Property tests: round trips, `encoded_len`, any split of a valid stream, arbitrary bytes
//! never panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde_json::Value;
use shaddock_protocol::package::{FramePackages, MAX_BODY_LEN, decode_frame};
use shaddock_protocol::{
    HandshakeRequest, HandshakeResponse, Kick, Message, MessageRoute, MessageType, Package,
    PackageDecoder, PackageType, json, varint,
};

fn package_type() -> impl Strategy<Value = PackageType> {
    prop_oneof![
        Just(PackageType::Handshake),
        Just(PackageType::HandshakeAck),
        Just(PackageType::Heartbeat),
        Just(PackageType::Data),
        Just(PackageType::Kick),
    ]
}

fn package() -> impl Strategy<Value = Package> {
    (
        package_type(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(kind, body)| Package::new(kind, body))
}

/// A route string of at most 255 UTF-8 bytes, ASCII or not.
fn route_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z.]{0,40}", "\\PC{0,40}", "[x]{250,255}",]
        .prop_filter("fits one length byte", |s| s.len() <= 255)
}

fn message() -> impl Strategy<Value = Message> {
    let kind = prop_oneof![
        Just(MessageType::Request),
        Just(MessageType::Notify),
        Just(MessageType::Response),
        Just(MessageType::Push),
    ];
    let route = prop_oneof![
        any::<u16>().prop_map(MessageRoute::Code),
        route_name().prop_map(MessageRoute::name),
    ];
    (
        kind,
        any::<u32>(),
        route,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..100),
    )
        .prop_map(|(kind, id, route, gzip, error, bit, body)| Message {
            kind,
            id: if kind.has_id() { id } else { 0 },
            route: if kind.has_route() {
                route
            } else {
                MessageRoute::None
            },
            gzip,
            error,
            response_route_bit: kind == MessageType::Response && bit,
            body: Bytes::from(body),
        })
}

fn decode_stream(input: &[u8], cuts: &[usize]) -> (Vec<Package>, usize) {
    let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let end = end.clamp(start, input.len());
        src.extend_from_slice(&input[start..end]);
        start = end;
        while let Some(p) = decoder.decode(&mut src).expect("valid stream") {
            out.push(p);
        }
    }
    (out, src.len())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[\\x00-\\x1f\"\\\\]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("[a-z0-9]{0,6}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trip(msg in message()) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        prop_assert_eq!(out.len(), msg.encoded_len());
        let decoded = Message::decode(out.clone().freeze()).unwrap();
        prop_assert_eq!(&decoded, &msg);

        let mut package = BytesMut::new();
        msg.encode_package(&mut package).unwrap();
        prop_assert_eq!(&package[4..], &out[..]);
        let packages = decode_frame(package.freeze(), MAX_BODY_LEN).unwrap();
        prop_assert_eq!(packages.len(), 1);
        prop_assert_eq!(&packages[0].body[..], &out[..]);
        prop_assert_eq!(msg.to_package().unwrap(), packages[0].clone());
    }

    #[test]
    fn package_round_trip(p in package()) {
        let mut out = BytesMut::new();
        p.encode(&mut out).unwrap();
        prop_assert_eq!(out.len(), p.encoded_len());
        let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
        prop_assert_eq!(decoder.decode(&mut out).unwrap(), Some(p));
        prop_assert!(out.is_empty());
    }

    #[test]
    fn any_split_of_a_valid_stream(
        packages in proptest::collection::vec(package(), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for p in &packages {
            p.encode(&mut wire).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (decoded, rest) = decode_stream(&wire, &cuts);
        prop_assert_eq!(&decoded, &packages);
        prop_assert_eq!(rest, 0);
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        prop_assert_eq!(&decode_stream(&wire, &bytewise).0, &packages);
        let framed = decode_frame(wire.freeze(), MAX_BODY_LEN).unwrap();
        prop_assert_eq!(framed, packages);
    }

    #[test]
    fn varint_round_trip(v in any::<u32>()) {
        let mut out = Vec::new();
        varint::encode_u32(v, &mut out);
        prop_assert_eq!(out.len(), varint::encoded_len_u32(v));
        prop_assert_eq!(varint::decode_u32(&out).unwrap(), (v, out.len()));
    }

    #[test]
    fn json_stringify_parses_back(v in json_value()) {
        let text = json::to_vec(&v);
        let back = json::from_slice(&text).unwrap();
        // same value; key order is JS order, so compare with a re-stringify too
        prop_assert_eq!(json::to_vec(&back), text.clone());
        let compact = serde_json::to_vec(&v).unwrap();
        let via_serde: Value = serde_json::from_slice(&compact).unwrap();
        prop_assert_eq!(json::to_vec(&via_serde), text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        max in 0usize..400,
    ) {
        let mut decoder = PackageDecoder::new(max);
        let mut src = BytesMut::from(&data[..]);
        for _ in 0..data.len() + 1 {
            match decoder.decode(&mut src) {
                Ok(Some(p)) => prop_assert!(p.body.len() <= max),
                Ok(None) | Err(_) => break,
            }
        }
        for item in FramePackages::new(Bytes::from(data.clone()), max) {
            if item.is_err() {
                break;
            }
        }
        let _ = Message::decode(Bytes::from(data.clone()));
        let _ = HandshakeRequest::parse(&data).has_sys();
        let _ = HandshakeResponse::parse(&data);
        let _ = Kick::parse(&data).reason;
        let _ = json::from_slice(&data);
        shaddock_protocol::fuzzing::package(&data);
        shaddock_protocol::fuzzing::message(&data);
        shaddock_protocol::fuzzing::handshake(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        let mut bytes = out.to_vec();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        shaddock_protocol::fuzzing::message(&bytes);
    }
}
