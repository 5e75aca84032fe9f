//! Golden vectors from the real pomelo / pinus JavaScript codecs, checked byte for byte.
//!
//! Reads the directory named by `SHADDOCK_VECTORS` (default: the repository's copy,
//! `vectors/` at the top of the checkout), so the same tests run on any vector set of the same
//! format. Every `*.json` file in the directory must be covered by some test (see
//! `every_vector_file_is_covered`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use shaddock_protocol::dictionary::version_hash;
use shaddock_protocol::handshake::{HandshakeCode, HandshakeProtos, handshake_error_body};
use shaddock_protocol::message::RouteName;
use shaddock_protocol::package::{FramePackages, MAX_BODY_LEN};
use shaddock_protocol::{
    ClientHandshake, Error, Flavor, HandshakeRequest, HandshakeResponse, Kick, Message,
    MessageRoute, MessageType, Package, PackageDecoder, PackageType, RouteDictionary,
    ServerHandshake, json,
};

// ---------------------------------------------------------------------------------------
// helpers

/// The repository's copy of the golden vectors (`<repo>/vectors`).
fn repo_vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

/// `$SHADDOCK_VECTORS` when set (another vector set), else [`repo_vectors_dir`].
fn vectors_dir() -> PathBuf {
    match std::env::var_os("SHADDOCK_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => repo_vectors_dir(),
    }
}

fn load(file: &str) -> Value {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{file} is not JSON: {err}"))
}

/// Load a file that a vector set may leave out (it comes from another generator).
fn load_optional(file: &str) -> Option<Value> {
    vectors_dir().join(file).exists().then(|| load(file))
}

fn unhex(hex: &str) -> Vec<u8> {
    hex::decode(hex).unwrap_or_else(|err| panic!("bad hex {hex:.40}: {err}"))
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("missing `{key}` in {:.300}", v.to_string()))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    field(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` not a string"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    field(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` not a number"))
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name(v: &Value) -> String {
    v.get("name")
        .or_else(|| v.get("step"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// Deterministic xorshift for random splits (no RNG dependency, reproducible failures).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Result of stream-decoding: packages, then either the remainder or the error.
type StreamResult = (Vec<Package>, Result<Vec<u8>, &'static str>);

/// Feed `input` to a fresh [`PackageDecoder`] in the given chunks, draining after each.
fn stream_decode(input: &[u8], cuts: &[usize]) -> StreamResult {
    let mut decoder = PackageDecoder::new(MAX_BODY_LEN);
    let mut src = BytesMut::new();
    let mut packages = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        src.extend_from_slice(&input[start..end]);
        start = end;
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(p)) => packages.push(p),
                Ok(None) => break,
                Err(err) => return (packages, Err(err.kind())),
            }
        }
    }
    (packages, Ok(src.to_vec()))
}

/// The same input split every way we test: whole, byte by byte, random splits.
fn stream_decode_all_splits(input: &[u8], seed: u64) -> StreamResult {
    let whole = stream_decode(input, &[]);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(stream_decode(input, &bytewise), whole, "byte by byte");
    let mut rng = Rng(seed | 1);
    for _ in 0..8 {
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(input.len() + 1))
            .collect();
        cuts.sort_unstable();
        assert_eq!(stream_decode(input, &cuts), whole, "random split {cuts:?}");
    }
    whole
}

fn frame_decode(input: &[u8]) -> (Vec<Package>, Option<Error>) {
    let mut packages = Vec::new();
    for item in FramePackages::new(Bytes::copy_from_slice(input), MAX_BODY_LEN) {
        match item {
            Ok(p) => packages.push(p),
            Err(err) => return (packages, Some(err)),
        }
    }
    (packages, None)
}

/// `[{type, body_hex}]` from the vectors.
fn expected_packages(list: &[Value]) -> Vec<Package> {
    list.iter()
        .map(|p| {
            let kind = PackageType::try_from(u64_field(p, "type") as u8).expect("valid type");
            Package::new(kind, unhex(str_field(p, "body_hex")))
        })
        .collect()
}

/// Check a decoded message against the vectors' field set
/// (`type, id, compress_route, route, route_code, gzip, error_flag, body_hex`).
fn check_message_fields(msg: &Message, want: &Value, ctx: &str) {
    assert_eq!(msg.kind as u64, u64_field(want, "type"), "{ctx}: type");
    if let Some(type_name) = want.get("type_name").and_then(Value::as_str) {
        assert_eq!(msg.kind.name(), type_name, "{ctx}: type_name");
    }
    match want.get("id") {
        Some(Value::Null) | None => assert_eq!(msg.id, 0, "{ctx}: id"),
        Some(id) => assert_eq!(Some(u64::from(msg.id)), id.as_u64(), "{ctx}: id"),
    }
    assert_eq!(
        msg.compress_route(),
        field(want, "compress_route").as_bool().unwrap(),
        "{ctx}: compress_route"
    );
    let route = want.get("route").and_then(Value::as_str);
    assert_eq!(msg.route.as_str(), route, "{ctx}: route");
    let code = want.get("route_code").and_then(Value::as_u64);
    assert_eq!(
        msg.route.as_code().map(u64::from),
        code,
        "{ctx}: route_code"
    );
    if let Some(gzip) = want.get("gzip").and_then(Value::as_bool) {
        assert_eq!(msg.gzip, gzip, "{ctx}: gzip");
    }
    if let Some(error) = want.get("error_flag").and_then(Value::as_bool) {
        assert_eq!(msg.error, error, "{ctx}: error_flag");
    }
    if let Some(body) = want.get("body_hex").and_then(Value::as_str) {
        assert_eq!(hex::encode(&msg.body), body, "{ctx}: body");
    }
}

/// Build the message a vector describes; the first refusal is returned as an error kind.
fn message_from_vector(v: &Value) -> Result<Message, Error> {
    let kind = MessageType::try_from(u8::try_from(u64_field(v, "type")).unwrap_or(u8::MAX))?;
    let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
    let route = if !kind.has_route() {
        MessageRoute::None
    } else if field(v, "compress_route").as_bool().unwrap() {
        MessageRoute::code(u64_field(v, "route_code"))?
    } else {
        MessageRoute::name(str_field(v, "route"))
    };
    Ok(Message {
        kind,
        id: u32::try_from(id).expect("vector id fits u32"),
        route,
        gzip: v.get("gzip").and_then(Value::as_bool).unwrap_or(false),
        error: v
            .get("error_flag")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        response_route_bit: false,
        body: Bytes::from(unhex(
            v.get("body_hex").and_then(Value::as_str).unwrap_or(""),
        )),
    })
}

/// Parse a body and check that our JSON.stringify writes exactly the same bytes.
fn check_stringify(body: &[u8], ctx: &str) -> Value {
    let value = json::from_slice(body).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&json::to_vec(&value)),
        String::from_utf8_lossy(body),
        "{ctx}: JSON.stringify"
    );
    value
}

/// The handler routes of a `server_config.handler_routes` object
/// (`{serverType: {handler: [method, ...]}}`).
fn handler_routes(config: &Value) -> Vec<String> {
    let mut routes = Vec::new();
    if let Some(types) = config.get("handler_routes").and_then(Value::as_object) {
        for (server_type, handlers) in types {
            for (handler, methods) in handlers.as_object().into_iter().flatten() {
                for method in methods.as_array().into_iter().flatten() {
                    routes.push(format!(
                        "{server_type}.{handler}.{}",
                        method.as_str().unwrap()
                    ));
                }
            }
        }
    }
    routes
}

/// The dictionary and protos a `server_config` describes (`None` when disabled).
struct ServerSetup {
    heartbeat: Option<Duration>,
    dictionary: Option<RouteDictionary>,
    protos: Option<HandshakeProtos>,
}

fn server_setup(config: &Value) -> ServerSetup {
    let options = field(config, "connector_options");
    let heartbeat = options
        .get("heartbeat")
        .and_then(Value::as_f64)
        .map(Duration::from_secs_f64);
    let use_dict = options
        .get("useDict")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let dictionary = use_dict.then(|| {
        let user: Vec<String> = arr(config, "dictionary_json")
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        RouteDictionary::new(handler_routes(config), user).expect("dictionary builds")
    });
    let use_proto = options
        .get("useProtobuf")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let protos = use_proto.then(|| {
        // The schema parser belongs to the protobuf module; we take its output as given.
        let server = shaddock_protocol::protobuf::parsed_form(field(config, "serverProtos_json"));
        let client = shaddock_protocol::protobuf::parsed_form(field(config, "clientProtos_json"));
        HandshakeProtos::new(server, client)
    });
    ServerSetup {
        heartbeat,
        dictionary,
        protos,
    }
}

impl ServerSetup {
    fn handshake(&self, flavor: Flavor) -> ServerHandshake {
        ServerHandshake::new(
            self.heartbeat,
            self.dictionary.as_ref(),
            self.protos.as_ref(),
            flavor,
        )
    }
}

/// pomelo's handshake command: the hooks' outcomes are given by the caller.
fn server_reply(
    server: &ServerHandshake,
    request_body: &[u8],
    check_client_ok: bool,
    user_hook: Result<Option<&Value>, ()>,
) -> Bytes {
    let request = HandshakeRequest::parse(request_body);
    if !request.has_sys() {
        return handshake_error_body(HandshakeCode::UseError);
    }
    if !check_client_ok {
        return handshake_error_body(HandshakeCode::OldClient);
    }
    match user_hook {
        Err(()) => handshake_error_body(HandshakeCode::UseError),
        Ok(user) => server.accept(&request, user),
    }
}

fn package_bytes(kind: PackageType, body: Bytes) -> Vec<u8> {
    Package::new(kind, body).to_bytes().unwrap().to_vec()
}

fn client_handshake_from_json(v: &Value) -> ClientHandshake {
    let sys = field(v, "sys");
    ClientHandshake {
        client_type: str_field(sys, "type").to_owned(),
        version: str_field(sys, "version").to_owned(),
        rsa: sys.get("rsa").cloned(),
        dict_version: sys
            .get("dictVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        proto_version: sys.get("protoVersion").cloned(),
        user: v.get("user").cloned(),
    }
}

/// Check every package of a server→client byte string: handshake and kick bodies parse
/// and re-stringify exactly; DATA messages decode and re-encode exactly.
fn check_server_package(p: &Package, ctx: &str) {
    match p.kind {
        PackageType::Handshake => {
            check_stringify(&p.body, ctx);
            let reply = HandshakeResponse::parse(&p.body).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            if let (Some(dict), Some(version)) = (reply.dictionary().unwrap(), &reply.dict_version)
            {
                assert_eq!(dict.version(), version, "{ctx}: dictVersion");
            }
        }
        PackageType::Kick => {
            check_stringify(&p.body, ctx);
            let kick = Kick::parse(&p.body);
            assert_eq!(kick.to_body(), p.body, "{ctx}: kick body");
        }
        PackageType::Data => {
            let msg = Message::decode(p.body.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let mut out = BytesMut::new();
            msg.encode(&mut out).unwrap();
            assert_eq!(out, p.body, "{ctx}: message re-encode");
        }
        PackageType::Heartbeat | PackageType::HandshakeAck => {
            assert!(p.body.is_empty(), "{ctx}: empty body")
        }
    }
}

// ---------------------------------------------------------------------------------------
// packages.json

#[test]
fn packages_encode() {
    let file = load("packages.json");
    let vectors = arr(&file, "encode");
    assert!(!vectors.is_empty());
    for v in vectors {
        let ctx = name(v);
        let body = match v.get("body_fill") {
            Some(fill) => {
                let byte = unhex(str_field(fill, "byte_hex"))[0];
                vec![byte; u64_field(fill, "length") as usize]
            }
            None => unhex(str_field(v, "body_hex")),
        };
        let kind = PackageType::try_from(u64_field(v, "type") as u8).unwrap();
        assert_eq!(kind.name(), str_field(v, "type_name"), "{ctx}");
        let package = Package::new(kind, body);
        let mut out = BytesMut::new();
        package.encode(&mut out).unwrap();
        assert_eq!(out.len(), package.encoded_len(), "{ctx}: encoded_len");
        assert_eq!(
            hex::encode(&out[..4]),
            str_field(v, "expected_header_hex"),
            "{ctx}"
        );
        if let Some(expected) = v.get("expected_hex").and_then(Value::as_str) {
            assert_eq!(hex::encode(&out), expected, "{ctx}");
        } else {
            let prefix = str_field(v, "expected_prefix_hex");
            assert_eq!(
                hex::encode(&out[..prefix.len() / 2]),
                prefix,
                "{ctx}: prefix"
            );
            assert_eq!(
                out.len() as u64,
                u64_field(v, "expected_length"),
                "{ctx}: length"
            );
        }
        // the encoding is one WebSocket message with exactly this package
        let (packages, err) = frame_decode(&out);
        assert!(err.is_none(), "{ctx}: {err:?}");
        assert_eq!(packages, vec![package], "{ctx}: frame decode");
    }
}

#[test]
fn packages_encode_errors() {
    let file = load("packages.json");
    for v in arr(&file, "encode_errors") {
        let ctx = name(v);
        let want = str_field(field(v, "expected"), "error");
        let err = match PackageType::try_from(u64_field(v, "type") as u8) {
            Err(err) => err,
            Ok(kind) => {
                let body = match v.get("body_fill") {
                    Some(fill) => {
                        let byte = unhex(str_field(fill, "byte_hex"))[0];
                        vec![byte; u64_field(fill, "length") as usize]
                    }
                    None => unhex(str_field(v, "body_hex")),
                };
                let mut out = BytesMut::new();
                let err = Package::new(kind, body).encode(&mut out).unwrap_err();
                assert!(out.is_empty(), "{ctx}: nothing written");
                err
            }
        };
        assert_eq!(err.kind(), want, "{ctx}");
    }
}

#[test]
fn packages_decode_stream_and_frame() {
    let file = load("packages.json");
    let vectors = arr(&file, "decode");
    assert!(!vectors.is_empty());
    for (i, v) in vectors.iter().enumerate() {
        let ctx = name(v);
        let input = unhex(str_field(v, "input_hex"));

        let stream = field(v, "expected_stream");
        let (packages, outcome) = stream_decode_all_splits(&input, i as u64 + 7);
        if field(stream, "ok").as_bool().unwrap() {
            assert_eq!(
                packages,
                expected_packages(arr(stream, "packages")),
                "{ctx}: stream"
            );
            let remainder = outcome.unwrap_or_else(|e| panic!("{ctx}: stream error {e}"));
            assert_eq!(
                hex::encode(remainder),
                str_field(stream, "remainder_hex"),
                "{ctx}"
            );
        } else {
            let before = expected_packages(arr(stream, "packages_before_error"));
            assert_eq!(packages, before, "{ctx}: stream before error");
            assert_eq!(
                outcome,
                Err(str_field(stream, "error")),
                "{ctx}: stream error"
            );
        }

        let frame = field(v, "expected_frame");
        let (packages, err) = frame_decode(&input);
        if field(frame, "ok").as_bool().unwrap() {
            assert!(err.is_none(), "{ctx}: frame error {err:?}");
            assert_eq!(
                packages,
                expected_packages(arr(frame, "packages")),
                "{ctx}: frame"
            );
        } else {
            let before = expected_packages(arr(frame, "packages_before_error"));
            assert_eq!(packages, before, "{ctx}: frame before error");
            assert_eq!(
                err.map(|e| e.kind()),
                Some(str_field(frame, "error")),
                "{ctx}"
            );
        }
    }
}

/// All decode inputs back to back: the stream decoder must give the concatenation of the
/// whole packages of each input, as long as each input ends on a package boundary.
#[test]
fn packages_concatenated_stream() {
    let file = load("packages.json");
    let mut input = Vec::new();
    let mut want = Vec::new();
    for v in arr(&file, "decode") {
        let stream = field(v, "expected_stream");
        let complete =
            field(stream, "ok").as_bool().unwrap() && str_field(stream, "remainder_hex").is_empty();
        if complete {
            input.extend(unhex(str_field(v, "input_hex")));
            want.extend(expected_packages(arr(stream, "packages")));
        }
    }
    for v in arr(&file, "encode") {
        if let Some(hex) = v.get("expected_hex").and_then(Value::as_str) {
            input.extend(unhex(hex));
            let kind = PackageType::try_from(u64_field(v, "type") as u8).unwrap();
            want.push(Package::new(kind, unhex(hex)[4..].to_vec()));
        }
    }
    let (packages, rest) = stream_decode_all_splits(&input, 99);
    assert_eq!(packages, want);
    assert_eq!(rest, Ok(Vec::new()));
    let (framed, err) = frame_decode(&input);
    assert!(err.is_none());
    assert_eq!(framed, want);
}

// ---------------------------------------------------------------------------------------
// messages.json

#[test]
fn messages_encode_and_decode_back() {
    let file = load("messages.json");
    let vectors = arr(&file, "encode");
    assert!(!vectors.is_empty());
    for v in vectors {
        let ctx = name(v);
        let msg = message_from_vector(v).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = str_field(v, "expected_hex");
        let mut out = BytesMut::new();
        msg.encode(&mut out)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(hex::encode(&out), expected, "{ctx}: encode");
        assert_eq!(out.len(), msg.encoded_len(), "{ctx}: encoded_len");
        if let Some(route_len) = v.get("route_utf8_length").and_then(Value::as_u64) {
            assert_eq!(
                msg.route.as_str().map(|r| r.len() as u64),
                Some(route_len),
                "{ctx}"
            );
        }
        if let Some(body_json) = v.get("body_json") {
            assert_eq!(json::to_vec(body_json), msg.body, "{ctx}: JSON.stringify");
        }
        let decoded = Message::decode(out.freeze()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        check_message_fields(&decoded, v, &ctx);
        assert_eq!(decoded, msg, "{ctx}: round trip");
        // and as a whole DATA package
        let mut package = BytesMut::new();
        msg.encode_package(&mut package).unwrap();
        assert_eq!(
            hex::encode(&package[4..]),
            expected,
            "{ctx}: encode_package"
        );
    }
}

#[test]
fn messages_encode_errors() {
    let file = load("messages.json");
    let vectors = arr(&file, "encode_errors");
    assert!(!vectors.is_empty());
    for v in vectors {
        let ctx = name(v);
        let want = str_field(field(v, "expected"), "error");
        let err = match message_from_vector(v) {
            Err(err) => err,
            Ok(msg) => {
                let mut out = BytesMut::new();
                let err = msg.encode(&mut out).expect_err(&ctx);
                assert!(out.is_empty(), "{ctx}: nothing written");
                err
            }
        };
        assert_eq!(err.kind(), want, "{ctx}: {err}");
    }
}

#[test]
fn messages_decode() {
    let file = load("messages.json");
    let vectors = arr(&file, "decode");
    assert!(!vectors.is_empty());
    for v in vectors {
        let ctx = name(v);
        let input = unhex(str_field(v, "input_hex"));
        let want = field(v, "expected");
        let result = Message::decode(Bytes::from(input.clone()));
        if field(want, "ok").as_bool().unwrap() {
            let msg = result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            check_message_fields(&msg, want, &ctx);
            // re-encodes to the input, except the ignored bits 6-7
            let mut out = BytesMut::new();
            msg.encode(&mut out).unwrap();
            assert_eq!(out[0], input[0] & 0x3f, "{ctx}: flag");
            assert_eq!(&out[1..], &input[1..], "{ctx}: re-encode");
        } else {
            let err = result.expect_err(&ctx);
            assert_eq!(err.kind(), str_field(want, "error"), "{ctx}: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// wire.json

#[test]
fn wire_frames() {
    let file = load("wire.json");
    let frames = arr(&file, "frames");
    assert!(!frames.is_empty());
    for v in frames {
        let ctx = name(v);
        let package_hex = unhex(str_field(v, "package_hex"));
        let (packages, err) = frame_decode(&package_hex);
        assert!(err.is_none(), "{ctx}: {err:?}");
        let (streamed, rest) = stream_decode_all_splits(&package_hex, 3);
        assert_eq!(streamed, packages, "{ctx}: stream = frame");
        assert_eq!(rest, Ok(Vec::new()), "{ctx}");
        if let Some(parts) = v.get("parts_hex").and_then(Value::as_array) {
            assert_eq!(packages.len(), parts.len(), "{ctx}: batch split");
            for (p, part) in packages.iter().zip(parts) {
                assert_eq!(
                    hex::encode(p.to_bytes().unwrap()),
                    part.as_str().unwrap(),
                    "{ctx}"
                );
                check_server_package(p, &ctx);
            }
            continue;
        }
        assert_eq!(packages.len(), 1, "{ctx}");
        let package = &packages[0];
        assert_eq!(package.kind, PackageType::Data, "{ctx}");
        assert_eq!(
            hex::encode(&package.body),
            str_field(v, "message_hex"),
            "{ctx}"
        );
        let msg = Message::decode(package.body.clone()).unwrap();
        let want = field(v, "message");
        check_message_fields(&msg, want, &ctx);
        assert_eq!(
            hex::encode(&msg.body),
            str_field(v, "body_hex"),
            "{ctx}: body"
        );
        let body_json = field(v, "body_json");
        assert_eq!(json::to_vec(body_json), msg.body, "{ctx}: JSON.stringify");
        assert_eq!(
            &json::from_slice(&msg.body).unwrap(),
            body_json,
            "{ctx}: JSON parse"
        );
        // re-encode the whole package from the message in one go
        let rebuilt = message_from_vector(&{
            let mut m = want.clone();
            m["body_hex"] = Value::from(str_field(v, "body_hex"));
            m
        })
        .unwrap();
        let mut out = BytesMut::new();
        rebuilt.encode_package(&mut out).unwrap();
        assert_eq!(
            hex::encode(&out),
            str_field(v, "package_hex"),
            "{ctx}: encode_package"
        );
        if let Some(dict) = v.get("dict").and_then(Value::as_object) {
            let dict = RouteDictionary::from_handshake(dict, None).unwrap();
            if let Some(code) = msg.route.as_code() {
                let route = dict
                    .route(code)
                    .unwrap_or_else(|| panic!("{ctx}: code {code}"));
                assert_eq!(dict.compress(route.as_str()), msg.route, "{ctx}: dict");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// handshake.json

#[test]
fn handshake_dictionary_and_versions() {
    let file = load("handshake.json");
    let config = field(&file, "server_config");
    let setup = server_setup(config);
    if let Some(dict) = &setup.dictionary {
        let built = field(config, "dictionary_built");
        assert_eq!(dict.dict_json(), json::to_string(built), "dictionary_built");
        assert_eq!(Value::Object(dict.dict().clone()), *built);
        assert_eq!(dict.version(), str_field(config, "dict_version"));
        for (route, code) in built.as_object().unwrap() {
            assert_eq!(dict.code(route).map(u64::from), code.as_u64(), "{route}");
            assert_eq!(
                dict.route(code.as_u64().unwrap() as u16),
                Some(&RouteName::from(&route[..]))
            );
        }
    }
    if let (Some(protos), Some(version)) = (&setup.protos, config.get("protos_version")) {
        assert_eq!(
            Some(protos.version.as_str()),
            version.as_str(),
            "protos_version"
        );
    }
    let hashes = arr(&file, "version_hashes");
    assert!(!hashes.is_empty());
    for v in hashes {
        let ctx = name(v);
        let input = str_field(v, "input_utf8");
        assert_eq!(
            version_hash(input.as_bytes()),
            str_field(v, "expected"),
            "{ctx}"
        );
        match ctx.as_str() {
            "dict_version" => {
                let dict = setup.dictionary.as_ref().expect("dictionary configured");
                assert_eq!(dict.dict_json(), input, "{ctx}: JSON.stringify(dict)");
            }
            "protos_version" => {
                let protos = setup.protos.as_ref().expect("protobuf configured");
                let mut text = json::to_vec(&protos.client);
                text.extend(json::to_vec(&protos.server));
                assert_eq!(String::from_utf8(text).unwrap(), input, "{ctx}");
            }
            _ => {}
        }
    }
}

#[test]
fn handshake_replies() {
    let file = load("handshake.json");
    let config = field(&file, "server_config");
    let setup = server_setup(config);
    let plain = ServerSetup {
        heartbeat: None,
        dictionary: None,
        protos: None,
    };
    let vectors = arr(&file, "vectors");
    assert!(!vectors.is_empty());
    let mut replies = 0;
    for v in vectors {
        let ctx = name(v);
        let package_hex = str_field(v, "package_hex");
        let (packages, err) = frame_decode(&unhex(package_hex));
        assert!(err.is_none() && packages.len() == 1, "{ctx}");
        let body = &packages[0].body;
        assert_eq!(packages[0].kind, PackageType::Handshake, "{ctx}");
        if let Some(body_json) = v.get("body_json") {
            assert_eq!(
                json::to_vec(body_json),
                *body,
                "{ctx}: JSON.stringify(body_json)"
            );
        }
        if v.get("direction").and_then(Value::as_str) == Some("client->server") {
            let client = client_handshake_from_json(field(v, "body_json"));
            assert_eq!(
                hex::encode(package_bytes(PackageType::Handshake, client.to_body())),
                package_hex,
                "{ctx}: client request"
            );
            assert!(HandshakeRequest::parse(body).has_sys(), "{ctx}");
            continue;
        }
        replies += 1;
        let flavor = if ctx.starts_with("pinus") {
            Flavor::Pinus
        } else {
            Flavor::Pomelo
        };
        let server = if ctx.ends_with("plain_server") {
            &plain
        } else {
            &setup
        }
        .handshake(flavor);
        let request = unhex(str_field(v, "request_package_hex"));
        let (request, err) = frame_decode(&request);
        assert!(err.is_none() && request.len() == 1, "{ctx}: request");
        let want_body = field(v, "body_json");
        // The application hooks are outside the protocol: the vector's name says how they
        // answered; the user data is what the hook returned.
        let check_client_ok = !ctx.ends_with("check_client_501");
        let user_hook = if ctx.ends_with("user_hook_error_500") {
            Err(())
        } else {
            Ok(want_body.get("user"))
        };
        let reply = server_reply(&server, &request[0].body, check_client_ok, user_hook);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            str_field(v, "body_utf8"),
            "{ctx}: reply body"
        );
        assert_eq!(
            hex::encode(package_bytes(PackageType::Handshake, reply.clone())),
            package_hex,
            "{ctx}"
        );
        // client side reading of the same reply
        let parsed = HandshakeResponse::parse(&reply).unwrap();
        assert_eq!(
            u64::from(parsed.code),
            u64_field(want_body, "code"),
            "{ctx}"
        );
        if let Some(dict) = parsed.dictionary().unwrap() {
            let ours = setup.dictionary.as_ref().unwrap();
            assert_eq!(dict.dict_json(), ours.dict_json(), "{ctx}");
            assert_eq!(dict.version(), ours.version(), "{ctx}");
            for code in 0..=u16::try_from(ours.len() + 1).unwrap() {
                assert_eq!(dict.route(code), ours.route(code), "{ctx}: code {code}");
            }
        }
    }
    assert!(replies > 0);
}

// ---------------------------------------------------------------------------------------
// transcripts_pomelo.json, transcripts_pinus.json

fn check_transcripts(file_name: &str) {
    let file = load(file_name);
    let config = field(&file, "server_config");
    let setup = server_setup(config);
    let scenarios = arr(&file, "scenarios");
    assert!(!scenarios.is_empty());
    for (n, scenario) in scenarios.iter().enumerate() {
        let ctx = format!(
            "{file_name} {}/{}",
            name(scenario),
            str_field(scenario, "transport")
        );
        let tcp = str_field(scenario, "transport") == "tcp";
        // server -> client: the package split must be exactly the recorded one
        let mut server_bytes = Vec::new();
        let mut server_packages = Vec::new();
        let mut last_request: Option<Bytes> = None;
        let mut client_bytes = Vec::new();
        for (i, event) in arr(scenario, "events").iter().enumerate() {
            let dir = str_field(event, "dir");
            let Some(hex) = event.get("hex").and_then(Value::as_str) else {
                continue;
            };
            let bytes = unhex(hex);
            let ectx = format!("{ctx} event {i}");
            if dir == "client->server" {
                client_bytes.extend_from_slice(&bytes);
                let (packages, _) = frame_decode(&bytes);
                if let Some(hs) = packages.iter().find(|p| p.kind == PackageType::Handshake) {
                    last_request = Some(hs.body.clone());
                }
                continue;
            }
            let want = expected_packages(arr(event, "packages"));
            if tcp {
                server_bytes.extend_from_slice(&bytes);
                server_packages.extend(want.iter().cloned());
            } else {
                let (packages, err) = frame_decode(&bytes);
                assert!(err.is_none(), "{ectx}: {err:?}");
                assert_eq!(packages, want, "{ectx}: split");
            }
            for (p, recorded) in want.iter().zip(arr(event, "packages")) {
                check_server_package(p, &ectx);
                if let Some(body_json) = recorded.get("body_json") {
                    assert_eq!(&json::from_slice(&p.body).unwrap(), body_json, "{ectx}");
                }
                if p.kind == PackageType::Handshake {
                    check_reproduced_reply(&setup, p, last_request.as_deref(), &ectx);
                }
            }
        }
        if tcp {
            let (packages, rest) = stream_decode_all_splits(&server_bytes, n as u64 + 1);
            assert_eq!(packages, server_packages, "{ctx}: server stream split");
            assert_eq!(rest, Ok(Vec::new()), "{ctx}: server stream remainder");
            // client bytes: whatever they hold, splits must agree and nothing panics
            let _ = stream_decode_all_splits(&client_bytes, n as u64 + 5);
        }
    }
}

/// Reproduce a 200 handshake reply from the file's server configuration and the client
/// request that preceded it (user data taken from the reply, as the hook's answer).
fn check_reproduced_reply(setup: &ServerSetup, p: &Package, request: Option<&[u8]>, ctx: &str) {
    let reply = json::from_slice(&p.body).unwrap();
    let (Some(request), Some(sys)) = (request, reply.get("sys").and_then(Value::as_object)) else {
        return;
    };
    let flavor = if reply.get("sys").and_then(|s| s.get("dict")).is_some()
        && reply
            .get("sys")
            .and_then(|s| s.get("routeToCode"))
            .is_none()
    {
        Flavor::Pinus
    } else {
        Flavor::Pomelo
    };
    let server = if sys.is_empty() {
        ServerHandshake::new(None, None, None, flavor)
    } else if sys.contains_key("heartbeat") {
        setup.handshake(flavor)
    } else {
        return;
    };
    let ours = server_reply(&server, request, true, Ok(reply.get("user")));
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&p.body),
        "{ctx}: reproduced handshake reply"
    );
}

#[test]
fn transcripts_pomelo() {
    check_transcripts("transcripts_pomelo.json");
}

#[test]
fn transcripts_pinus() {
    check_transcripts("transcripts_pinus.json");
}

/// Specific recorded behaviours that our decoders must classify the same way.
#[test]
fn transcripts_client_faults_are_errors() {
    for file_name in ["transcripts_pomelo.json", "transcripts_pinus.json"] {
        let file = load(file_name);
        for scenario in arr(&file, "scenarios") {
            let scenario_name = name(scenario);
            let ws = str_field(scenario, "transport") == "ws";
            let events = arr(scenario, "events");
            // the last client message before the server closed the connection
            let closed = events
                .iter()
                .any(|e| str_field(e, "dir") == "closed_by_server");
            let Some(last) = events
                .iter()
                .rev()
                .find(|e| str_field(e, "dir") == "client->server")
            else {
                continue;
            };
            let bytes = unhex(str_field(last, "hex"));
            if scenario_name.starts_with("invalid_package_type") {
                let err = if ws {
                    frame_decode(&bytes).1
                } else {
                    let mut src = BytesMut::from(&bytes[..]);
                    PackageDecoder::new(MAX_BODY_LEN).decode(&mut src).err()
                };
                assert_eq!(
                    err.map(|e| e.kind()),
                    Some("invalid_package_type"),
                    "{scenario_name}"
                );
                assert!(closed, "{scenario_name}");
            }
            if scenario_name == "ws_truncated_package" {
                assert_eq!(
                    frame_decode(&bytes).1.map(|e| e.kind()),
                    Some("truncated_body")
                );
            }
            if scenario_name.starts_with("ws_two_") {
                let (packages, err) = frame_decode(&bytes);
                assert!(err.is_none() && packages.len() == 2, "{scenario_name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// browser_client.json

#[test]
fn browser_client() {
    let file = load("browser_client.json");
    let steps = arr(&file, "steps");
    assert!(!steps.is_empty());
    let mut checked_handshake = false;
    let mut check_sent = |step: &Value, ctx: &str| {
        for sent in arr(step, "sent_hex") {
            let bytes = unhex(sent.as_str().unwrap());
            let (packages, err) = frame_decode(&bytes);
            assert!(
                err.is_none() && packages.len() == 1,
                "{ctx}: one package per message"
            );
            let p = &packages[0];
            match p.kind {
                PackageType::Handshake => {
                    let hs = field(step, "handshake_json");
                    let client = client_handshake_from_json(hs);
                    assert_eq!(
                        package_bytes(PackageType::Handshake, client.to_body()),
                        bytes,
                        "{ctx}: client handshake"
                    );
                    assert!(HandshakeRequest::parse(&p.body).has_sys());
                    checked_handshake = true;
                }
                PackageType::Data => {
                    let msg = Message::decode(p.body.clone()).unwrap();
                    assert!(matches!(
                        msg.kind,
                        MessageType::Request | MessageType::Notify
                    ));
                    // JSON bodies from the browser (protobuf ones are not JSON)
                    let _ = json::from_slice(&msg.body);
                    let mut out = BytesMut::new();
                    msg.encode_package(&mut out).unwrap();
                    assert_eq!(out.to_vec(), bytes, "{ctx}: re-encode");
                }
                _ => assert!(p.body.is_empty(), "{ctx}"),
            }
        }
    };
    for step in steps {
        let ctx = name(step);
        check_sent(step, &ctx);
        if let Some(received) = step.get("received_hex").and_then(Value::as_str) {
            let (packages, err) = frame_decode(&unhex(received));
            assert!(err.is_none(), "{ctx}: {err:?}");
            for p in &packages {
                if p.kind == PackageType::Kick && p.body.is_empty() {
                    // the JS client throws on it; we accept it: a kick without a reason
                    assert_eq!(Kick::parse(&p.body), Kick::new(""));
                } else {
                    check_server_package(p, &ctx);
                }
            }
        }
    }
    if let Some(reconnect) = file.get("reconnect_with_cached_protos") {
        check_sent(reconnect, "reconnect_with_cached_protos");
    }
    assert!(checked_handshake);
}

// ---------------------------------------------------------------------------------------
// pinus-session.json (another generator: frames with `decoded` package lists)

#[test]
fn pinus_session() {
    let Some(file) = load_optional("pinus-session.json") else {
        eprintln!("pinus-session.json absent from this vector set");
        return;
    };
    let sessions = arr(&file, "sessions");
    assert!(!sessions.is_empty());
    let mut checked = 0;
    for session in sessions {
        // TCP: one stream per connection and direction
        let mut streams: HashMap<(String, String), (Vec<u8>, Vec<Value>)> = HashMap::new();
        let mut routes_by_id: HashMap<(String, u64), String> = HashMap::new();
        for frame in arr(session, "frames") {
            let ctx = format!(
                "pinus-session seq {}",
                frame.get("seq").unwrap_or(&Value::Null)
            );
            let bytes = unhex(str_field(frame, "hex"));
            let decoded = arr(frame, "decoded").to_vec();
            if str_field(frame, "transport") == "ws" {
                let (packages, err) = frame_decode(&bytes);
                assert!(err.is_none(), "{ctx}: {err:?}");
                check_pinus_packages(&packages, &decoded, &mut routes_by_id, frame, &ctx);
                checked += packages.len();
            } else {
                let key = (
                    str_field(frame, "conn").to_owned(),
                    str_field(frame, "direction").to_owned(),
                );
                let entry = streams.entry(key).or_default();
                entry.0.extend_from_slice(&bytes);
                entry.1.extend(decoded);
            }
        }
        for ((conn, dir), (bytes, decoded)) in streams {
            let ctx = format!("pinus-session tcp {conn} {dir}");
            let (packages, rest) = stream_decode_all_splits(&bytes, bytes.len() as u64);
            assert_eq!(rest, Ok(Vec::new()), "{ctx}");
            let frame = serde_json::json!({"conn": conn});
            check_pinus_packages(&packages, &decoded, &mut routes_by_id, &frame, &ctx);
            checked += packages.len();
        }
    }
    assert!(checked > 0);
    if let Some(reply) = file.get("connector_handshake_response") {
        // the dictVersion is the MD5 of JSON.stringify(dict), whatever generated it
        let sys = field(reply, "sys");
        if let (Some(dict), Some(version)) = (sys.get("dict"), sys.get("dictVersion")) {
            let dict = RouteDictionary::from_handshake(dict.as_object().unwrap(), None).unwrap();
            assert_eq!(
                Some(dict.version()),
                version.as_str(),
                "connector dictVersion"
            );
        }
    }
}

fn check_pinus_packages(
    packages: &[Package],
    decoded: &[Value],
    routes_by_id: &mut HashMap<(String, u64), String>,
    frame: &Value,
    ctx: &str,
) {
    assert_eq!(packages.len(), decoded.len(), "{ctx}: package count");
    let conn = frame
        .get("conn")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    for (p, want) in packages.iter().zip(decoded) {
        assert_eq!(
            u64::from(p.kind as u8),
            u64_field(want, "package_type"),
            "{ctx}"
        );
        assert_eq!(p.kind.name(), str_field(want, "package"), "{ctx}");
        assert_eq!(p.body.len() as u64, u64_field(want, "body_length"), "{ctx}");
        if let Some(body_json) = want.get("json") {
            let value = check_stringify(&p.body, ctx);
            assert_eq!(&value, body_json, "{ctx}");
            if p.kind == PackageType::Handshake && value.get("code").is_none() {
                let client = client_handshake_from_json(body_json);
                assert_eq!(client.to_body(), p.body, "{ctx}: client handshake");
            }
        }
        let Some(m) = want.get("message") else {
            continue;
        };
        let msg = Message::decode(p.body.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(msg.kind.name(), str_field(m, "type"), "{ctx}");
        assert_eq!(
            u64::from(msg.kind as u8),
            u64_field(m, "type_code"),
            "{ctx}"
        );
        assert_eq!(
            msg.compress_route(),
            field(m, "compress_route").as_bool().unwrap(),
            "{ctx}"
        );
        match field(m, "id") {
            Value::Null => assert_eq!(msg.id, 0, "{ctx}"),
            id => assert_eq!(Some(u64::from(msg.id)), id.as_u64(), "{ctx}"),
        }
        match field(m, "route") {
            Value::Null => assert_eq!(msg.route, MessageRoute::None, "{ctx}"),
            Value::Number(code) => {
                assert_eq!(msg.route.as_code().map(u64::from), code.as_u64(), "{ctx}")
            }
            Value::String(route) => assert_eq!(msg.route.as_str(), Some(route.as_str()), "{ctx}"),
            other => panic!("{ctx}: route {other}"),
        }
        if msg.kind == MessageType::Request {
            let route = m
                .get("route_name")
                .or_else(|| m.get("route"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            routes_by_id.insert((conn.clone(), u64::from(msg.id)), route);
        }
        if let Some(body_json) = m.get("body_json") {
            let value = check_stringify(&msg.body, ctx);
            assert_eq!(&value, body_json, "{ctx}: body");
        }
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        assert_eq!(out, p.body, "{ctx}: message re-encode");
    }
}

// ---------------------------------------------------------------------------------------
// numbers: every number the JS generator wrote reads back to the same double and prints the
// same way (`JSON.stringify` / `Number#toString`)

/// The number literals of a JSON text (outside strings), in order.
fn number_literals(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&text[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn every_number_in_the_vectors_prints_back_as_written() {
    let mut checked = 0;
    for entry in std::fs::read_dir(vectors_dir()).expect("vector directory") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for literal in number_literals(&text) {
            let value = json::from_slice(literal.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {literal}: {e}", path.display()));
            assert_eq!(
                json::to_string(&value),
                literal,
                "{}: the number {literal} as JSON.stringify writes it",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

// ---------------------------------------------------------------------------------------
// manifest.json and coverage

/// Which top-level arrays of each file are the "vectors" that manifest.json counts.
const COUNTED: &[(&str, &[&str])] = &[
    ("packages.json", &["encode", "encode_errors", "decode"]),
    ("messages.json", &["encode", "encode_errors", "decode"]),
    ("wire.json", &["frames"]),
    ("handshake.json", &["vectors", "version_hashes"]),
    ("transcripts_pomelo.json", &["scenarios"]),
    ("transcripts_pinus.json", &["scenarios"]),
    ("browser_client.json", &["steps"]),
];

#[test]
fn manifest_counts_match() {
    let manifest = load("manifest.json");
    let files = field(&manifest, "files").as_object().unwrap();
    assert!(!files.is_empty());
    for (file_name, count) in files {
        let Some((_, arrays)) = COUNTED.iter().find(|(f, _)| f == file_name) else {
            // protobuf.json: counted by the protobuf tests
            continue;
        };
        let file = load(file_name);
        let total: usize = arrays.iter().map(|a| arr(&file, a).len()).sum();
        assert_eq!(
            Some(total as u64),
            count.as_u64(),
            "{file_name}: vector count"
        );
    }
}

/// Which vector set this run reads: `$SHADDOCK_VECTORS`, or the repository's copy — never a
/// folder outside the checkout by default (a fresh clone tests itself).
#[test]
fn vectors_come_from_the_repository_unless_told_otherwise() {
    let dir = vectors_dir();
    eprintln!("golden vectors read from {}", dir.display());
    match std::env::var_os("SHADDOCK_VECTORS") {
        Some(set) => assert_eq!(dir, PathBuf::from(set)),
        None => {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate sits in the repository")
                .canonicalize()
                .unwrap();
            let dir = dir.canonicalize().expect("the repository has vectors/");
            assert_eq!(dir, repo.join("vectors"), "default vector folder");
        }
    }
    assert!(dir.join("manifest.json").is_file(), "{}", dir.display());
}

/// Every `*.json` file of the vector directory must be read by some test.
#[test]
fn every_vector_file_is_covered() {
    let covered_here = [
        "packages.json",
        "messages.json",
        "wire.json",
        "handshake.json",
        "transcripts_pomelo.json",
        "transcripts_pinus.json",
        "browser_client.json",
        "pinus-session.json",
        "manifest.json",
    ];
    let tests_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut seen = 0;
    for entry in std::fs::read_dir(vectors_dir()).expect("vector directory") {
        let file_name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !file_name.ends_with(".json") {
            continue;
        }
        seen += 1;
        if covered_here.contains(&file_name.as_str()) {
            continue;
        }
        if file_name == "protobuf.json" {
            // covered by protocol/tests/protobuf*.rs (the protobuf module's own tests)
            let has_protobuf_tests = std::fs::read_dir(&tests_dir)
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("protobuf"));
            assert!(
                has_protobuf_tests,
                "protobuf.json needs protocol/tests/protobuf*.rs"
            );
            continue;
        }
        panic!("vector file {file_name} is not covered by any test");
    }
    assert!(
        seen > 0,
        "no vector files found in {}",
        vectors_dir().display()
    );
}
