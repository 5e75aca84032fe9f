//! One test per error variant: malformed input gives the typed error, with a message that
//! names the thing, and never a panic.

use bytes::{Bytes, BytesMut};
use shaddock_protocol::package::{MAX_BODY_LEN, decode_frame};
use shaddock_protocol::{
    Error, HandshakeResponse, Kick, Message, MessageRoute, MessageType, Package, PackageDecoder,
    PackageType, Route, RouteDictionary, json,
};

fn stream_err(bytes: &[u8], max: usize) -> Error {
    let mut decoder = PackageDecoder::new(max);
    let mut src = BytesMut::from(bytes);
    loop {
        match decoder.decode(&mut src) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {bytes:02x?}"),
            Err(err) => return err,
        }
    }
}

fn frame_err(bytes: &'static [u8]) -> Error {
    decode_frame(Bytes::from_static(bytes), MAX_BODY_LEN).unwrap_err()
}

fn msg_err(bytes: &'static [u8]) -> Error {
    Message::decode(Bytes::from_static(bytes)).unwrap_err()
}

#[test]
fn invalid_package_type() {
    for byte in [0x00u8, 0x06, 0x09, 0xff] {
        let err = stream_err(&[byte, 0, 0, 0], MAX_BODY_LEN);
        assert_eq!(err.kind(), "invalid_package_type");
        assert!(err.is_fatal());
        assert!(err.to_string().contains(&format!("{byte:#04x}")), "{err}");
        // rejected from the first byte, without waiting for the header
        assert_eq!(
            stream_err(&[byte], MAX_BODY_LEN).kind(),
            "invalid_package_type"
        );
        assert_eq!(
            PackageType::try_from(byte).unwrap_err().kind(),
            "invalid_package_type"
        );
    }
    assert_eq!(
        frame_err(&[0x06, 0, 0, 1, 0xff]).kind(),
        "invalid_package_type"
    );
    // after a valid package, in the same read
    assert_eq!(
        stream_err(&[3, 0, 0, 0, 9, 0, 0, 0], 10).kind(),
        "invalid_package_type"
    );
}

#[test]
fn truncated_header_and_body_in_a_frame() {
    let err = frame_err(&[0x04, 0x00]);
    assert_eq!(err.kind(), "truncated_header");
    assert!(err.to_string().contains("2 of 4"), "{err}");
    let err = frame_err(&[0x04, 0, 0, 5, b'a', b'b']);
    assert_eq!(err.kind(), "truncated_body");
    assert!(
        err.to_string().contains('5') && err.to_string().contains('2'),
        "{err}"
    );
    assert!(err.is_fatal());
    // the same bytes are only "more needed" on a stream
    let mut src = BytesMut::from(&[0x04, 0, 0, 5, b'a', b'b'][..]);
    assert!(PackageDecoder::new(100).decode(&mut src).unwrap().is_none());
    assert_eq!(src.len(), 6);
}

#[test]
fn body_too_large() {
    let err = stream_err(&[0x04, 0x01, 0x00, 0x00], 65_535);
    assert_eq!(err.kind(), "body_too_large");
    assert!(
        err.to_string().contains("65536") && err.to_string().contains("65535"),
        "{err}"
    );
    assert_eq!(
        decode_frame(Bytes::from_static(&[0x04, 0, 0, 3, 1, 2, 3]), 2)
            .unwrap_err()
            .kind(),
        "body_too_large"
    );
    let mut dst = BytesMut::new();
    let err = Package::new(PackageType::Data, vec![0u8; MAX_BODY_LEN + 1])
        .encode(&mut dst)
        .unwrap_err();
    assert_eq!(err.kind(), "body_too_large");
    assert!(dst.is_empty());
    // a message whose package would be too large
    let msg = Message::response(1, vec![0u8; MAX_BODY_LEN]);
    assert_eq!(
        msg.encode_package(&mut dst).unwrap_err().kind(),
        "body_too_large"
    );
    assert_eq!(msg.to_package().unwrap_err().kind(), "body_too_large");
    assert!(dst.is_empty());
}

#[test]
fn message_errors() {
    let table: &[(&'static [u8], &str)] = &[
        (b"", "empty_message"),
        (&[0x08, 1, 2], "invalid_message_type"),
        (&[0x0e], "invalid_message_type"),
        (&[0xfe], "invalid_message_type"),
        (&[0x00], "truncated_id"),
        (&[0x04, 0x80, 0x80], "truncated_id"),
        (&[0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], "id_too_long"),
        (&[0x04, 0xff, 0xff, 0xff, 0xff, 0x10], "id_overflow"),
        (&[0x01, 0x05], "truncated_route_code"),
        (&[0x01, 0x05, 0x00], "truncated_route_code"),
        (&[0x07], "truncated_route_code"),
        (&[0x02], "truncated_route"),
        (&[0x00, 0x01], "truncated_route"),
        (&[0x06, 0x03, b'a', b'b'], "truncated_route"),
        (&[0x02, 0x01, 0xff], "invalid_route_utf8"),
        (&[0x06, 0x03, 0xed, 0xa0, 0xbd], "invalid_route_utf8"),
    ];
    for &(bytes, kind) in table {
        let err = msg_err(bytes);
        assert_eq!(err.kind(), kind, "{bytes:02x?}: {err}");
        assert!(!err.is_fatal(), "{kind} concerns one message");
    }
    assert!(msg_err(&[0x0e]).to_string().contains("0x0e"));
    assert!(msg_err(&[0x02, 0x01, 0xff]).to_string().contains("ff"));
}

#[test]
fn encode_errors() {
    let mut dst = BytesMut::new();
    let long = "r".repeat(256);
    let err = Message::notify(MessageRoute::name(long.as_str()), Bytes::new())
        .encode(&mut dst)
        .unwrap_err();
    assert_eq!(err.kind(), "route_too_long");
    assert!(err.to_string().contains("256"), "{err}");
    // 255 bytes is fine
    Message::notify(MessageRoute::name(&long[..255]), Bytes::new())
        .encode(&mut dst)
        .unwrap();
    dst.clear();

    let err = MessageRoute::code(65_536).unwrap_err();
    assert_eq!(err.kind(), "route_code_out_of_range");
    assert!(err.to_string().contains("65536"));
    assert_eq!(
        MessageRoute::code(65_535).unwrap(),
        MessageRoute::Code(65_535)
    );

    assert_eq!(
        MessageType::try_from(4).unwrap_err().kind(),
        "invalid_message_type"
    );

    let err = Message::request(1, MessageRoute::None, Bytes::new())
        .encode(&mut dst)
        .unwrap_err();
    assert_eq!(err.kind(), "route_mismatch");
    assert!(err.to_string().contains("needs a route"), "{err}");
    let mut response = Message::response(1, Bytes::new());
    response.route = MessageRoute::name("a.b.c");
    let err = response.encode(&mut dst).unwrap_err();
    assert!(err.to_string().contains("must not carry"), "{err}");
    assert!(dst.is_empty(), "nothing written on error");
}

#[test]
fn invalid_route() {
    let err = Route::parse("onChat").unwrap_err();
    assert_eq!(err.kind(), "invalid_route");
    assert!(err.to_string().contains("onChat"));
}

#[test]
fn invalid_json_and_bodies() {
    assert_eq!(
        json::from_slice(b"{\"a\":").unwrap_err().kind(),
        "invalid_json"
    );
    // pitaya's empty kick body is a kick without a reason, not an error
    assert_eq!(Kick::parse(b"").reason, "");
    for body in [
        &b"[]"[..],
        b"{}",
        b"{\"code\":\"200\"}",
        b"{\"code\":200,\"sys\":{\"heartbeat\":\"x\"}}",
    ] {
        let err = HandshakeResponse::parse(body).unwrap_err();
        assert_eq!(err.kind(), "invalid_body", "{body:?}");
        assert!(err.to_string().contains("handshake response"));
    }
    let reply =
        HandshakeResponse::parse(br#"{"code":200,"sys":{"dict":{"a.b.c":70000}}}"#).unwrap();
    assert_eq!(reply.dictionary().unwrap_err().kind(), "invalid_body");
}

#[test]
fn dictionary_full() {
    let routes: Vec<String> = (0..65_535).map(|i| format!("s.h.m{i}")).collect();
    // 65 535 codes fit (1..=65535); one more does not
    assert!(RouteDictionary::new(routes.clone(), Vec::<String>::new()).is_ok());
    let err = RouteDictionary::new(routes, ["onChat"]).unwrap_err();
    assert_eq!(err.kind(), "dictionary_full");
    assert!(err.to_string().contains("onChat") && err.to_string().contains("65536"));
}

#[test]
fn io_error_is_fatal() {
    let err = Error::from(std::io::Error::other("reset"));
    assert_eq!(err.kind(), "io");
    assert!(err.is_fatal());
}
