//! Golden vectors from the real pomelo / pinus JavaScript codecs, checked byte for byte.
//!
//! Reads the directory named by `SHADDOCK_VECTORS` (default: the repository's copy,
//! `vectors/` at the top of the checkout), so the same tests run on any vector set of the same
//! format. Every `*.json` file in the directory must be covered by some test (see
//! `every_vector_file_is_covered`), and every field and kind of step in them too
//! (`every_field_and_step_kind_is_covered`, table in `vectors/coverage.rs`).
//!
//! Besides the codec vectors: the live transcripts are replayed through our server side
//! (`vectors/replay.rs`), the stock JS client's session is walked as our client would read it,
//! the steps where the JS client threw included (`vectors/browser.rs`), and the `js_observed`
//! outputs of the JS codecs are checked against what the README says they do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use shaddock_protocol::connection::{
    ConnectionConfig, Event as ConnEvent, ServerConnection, State as ConnState,
};
use shaddock_protocol::dictionary::version_hash;
use shaddock_protocol::handshake::{HandshakeCode, HandshakeProtos, handshake_error_body};
use shaddock_protocol::message::RouteName;
use shaddock_protocol::package::{FramePackages, MAX_BODY_LEN};
use shaddock_protocol::{
    ClientHandshake, Error, Flavor, HandshakeRequest, HandshakeResponse, Kick, Message,
    MessageRoute, MessageType, Package, PackageDecoder, PackageType, RouteDictionary,
    ServerHandshake, json,
};

#[path = "vectors/browser.rs"]
mod browser;
#[path = "vectors/coverage.rs"]
mod coverage;
#[path = "vectors/replay.rs"]
mod replay;

/// The `error` vocabulary of the vector README (one `Error` variant each).
const ERROR_VOCABULARY: &[&str] = &[
    "invalid_package_type",
    "truncated_header",
    "truncated_body",
    "body_too_large",
    "empty_message",
    "invalid_message_type",
    "truncated_id",
    "id_too_long",
    "id_overflow",
    "id_out_of_range",
    "truncated_route_code",
    "truncated_route",
    "invalid_route_utf8",
    "route_too_long",
    "route_code_out_of_range",
    "invalid_json",
];

/// `direction` of handshake.json vectors, wire.json frames and pinus-session frames.
const DIRECTIONS: &[&str] = &["client->server", "server->client"];

/// handshake.json `then`: what the server does after its reply (`handshake_replies` drives a
/// `ServerConnection` to the same state).
const HANDSHAKE_THEN: &[&str] = &["waits for HANDSHAKE_ACK", "server disconnects"];

/// handshake.json `version_hashes[].algorithm`.
const HASH_ALGORITHMS: &[&str] = &[
    "base64(md5(utf8(JSON.stringify(dict))))",
    "base64(md5(utf8(JSON.stringify(parsedClientProtos) + JSON.stringify(parsedServerProtos))))",
];

/// protobuf.json `quirk`s; protocol/tests/protobuf.rs has one branch for each (and fails on
/// any other).
const PROTOBUF_QUIRKS: &[&str] = &[
    "js_parseint_coercion",
    "value_exceeds_32_bits",
    "unresolved_nested_type",
    "js_encode_buffer_heuristic",
];

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
            if let Some(type_name) = p.get("type_name").and_then(Value::as_str) {
                assert_eq!(kind.name(), type_name, "type_name of type {}", kind as u8);
            }
            Package::new(kind, unhex(str_field(p, "body_hex")))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What one JS function did (`js_observed` entry): `{"returns": …}` or `{"throws": "…"}`,
/// plus the `console` lines it printed.
#[derive(Debug)]
enum Js<'a> {
    Returns(&'a Value),
    Throws(#[allow(dead_code, reason = "shown in failure messages")] &'a str),
}

/// The `js_observed` entries of a vector, checked for shape (README: "`{"returns": …}` or
/// `{"throws": "…"}` (plus `console` lines it printed)").
fn js_observed<'a>(v: &'a Value, ctx: &str) -> Vec<(String, Js<'a>)> {
    let Some(observed) = v.get("js_observed") else {
        return Vec::new();
    };
    let observed = observed
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: js_observed is not an object"));
    observed
        .iter()
        .map(|(function, o)| {
            let o = o
                .as_object()
                .unwrap_or_else(|| panic!("{ctx}: js_observed {function}"));
            for line in o
                .get("console")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                assert!(line.is_string(), "{ctx}: {function} console line {line}");
            }
            for key in o.keys() {
                assert!(
                    ["returns", "throws", "console"].contains(&key.as_str()),
                    "{ctx}: js_observed {function}: `{key}` is not an outcome the tests know"
                );
            }
            let outcome = match (o.get("returns"), o.get("throws")) {
                (Some(r), None) => Js::Returns(r),
                (None, Some(t)) => {
                    Js::Throws(t.as_str().unwrap_or_else(|| panic!("{ctx}: throws")))
                }
                _ => panic!("{ctx}: js_observed {function} must return or throw"),
            };
            (function.clone(), outcome)
        })
        .collect()
}

/// A JS buffer as the vectors record it (`{hex}` or, over 4 KiB, `{hex_prefix, length,
/// sha256}`) matches `bytes`.
fn js_buffer_matches(b: &Value, bytes: &[u8]) -> bool {
    if let Some(hex) = b.get("hex").and_then(Value::as_str) {
        return hex == hex::encode(bytes);
    }
    let prefix = str_field(b, "hex_prefix");
    hex::encode(&bytes[..(prefix.len() / 2).min(bytes.len())]) == prefix
        && u64_field(b, "length") == bytes.len() as u64
        && str_field(b, "sha256") == sha256_hex(bytes)
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
            assert_eq!(
                sha256_hex(&out),
                str_field(v, "expected_sha256"),
                "{ctx}: sha256"
            );
        }
        if let Some(text) = v.get("body_utf8").and_then(Value::as_str) {
            assert_eq!(text.as_bytes(), &package.body[..], "{ctx}: body_utf8");
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
        // What the JS codecs did instead (README: "writing a wrapped length or an invalid
        // type byte"): the type byte as given, the low 24 bits of the length, the body.
        let body = match v.get("body_fill") {
            Some(fill) => {
                vec![unhex(str_field(fill, "byte_hex"))[0]; u64_field(fill, "length") as usize]
            }
            None => unhex(str_field(v, "body_hex")),
        };
        let len = body.len() as u32 & 0x00ff_ffff;
        let mut js_would = vec![
            u64_field(v, "type") as u8,
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
        ];
        js_would.extend_from_slice(&body);
        for (function, outcome) in js_observed(v, &ctx) {
            match outcome {
                Js::Throws(_) => {}
                Js::Returns(r) => {
                    let ok = match r.get("bytes_hex").and_then(Value::as_str) {
                        Some(hex) => hex == hex::encode(&js_would),
                        None => {
                            str_field(r, "bytes_prefix_hex")
                                == hex::encode(
                                    &js_would[..str_field(r, "bytes_prefix_hex").len() / 2],
                                )
                                && u64_field(r, "bytes_length") == js_would.len() as u64
                                && str_field(r, "bytes_sha256") == sha256_hex(&js_would)
                        }
                    };
                    assert!(
                        ok,
                        "{ctx}: {function} wrote something else than the README says"
                    );
                }
            }
        }
    }
}

/// `js_observed` of packages.json `decode[]`: where the input is whole packages the JS
/// decoders return exactly ours; where we refuse it, they return what PROTOCOL.md §3 says
/// they do — the packages before, then for a truncated body the body padded with zeros
/// (pinus: only `{type}` when the length exceeds the whole buffer), for a cut header a
/// package of length 0, for an invalid type byte that type (pomelo passes the body on,
/// pinus stops at `{type}`).
#[test]
fn packages_decode_js_observed() {
    let file = load("packages.json");
    let mut checked = 0;
    for v in arr(&file, "decode") {
        let ctx = name(v);
        let input = unhex(str_field(v, "input_hex"));
        let frame = field(v, "expected_frame");
        let ok = field(frame, "ok").as_bool().unwrap();
        let before = expected_packages(arr(
            frame,
            if ok {
                "packages"
            } else {
                "packages_before_error"
            },
        ));
        for (function, outcome) in js_observed(v, &ctx) {
            let ctx = format!("{ctx} {function}");
            let Js::Returns(r) = outcome else {
                assert!(!ok, "{ctx}: JS threw on whole packages");
                continue;
            };
            // one package is returned bare, several as a list
            let list: Vec<&Value> = match r {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            let same = |js: &Value, p: &Package| {
                u64_field(js, "type") == p.kind as u64
                    && match js.get("body") {
                        Some(Value::Null) => p.body.is_empty(),
                        Some(b) => js_buffer_matches(b, &p.body),
                        None => false,
                    }
            };
            if ok {
                assert_eq!(list.len(), before.len(), "{ctx}: package count");
                for (js, p) in list.iter().zip(&before) {
                    assert!(same(js, p), "{ctx}: {js} vs {p:?}");
                }
                checked += 1;
                continue;
            }
            let error = str_field(frame, "error");
            let at: usize = before.iter().map(|p| 4 + p.body.len()).sum();
            // pinus "stops and returns only {type}" (dropping what came before)
            if let [only] = list[..]
                && only.get("body").is_none()
            {
                assert_eq!(
                    u64_field(only, "type"),
                    u64::from(input[at]),
                    "{ctx}: type byte"
                );
                let rest = &input[at..];
                match error {
                    "invalid_package_type" => {}
                    "truncated_body" => {
                        let declared = (usize::from(rest[1]) << 16)
                            | (usize::from(rest[2]) << 8)
                            | usize::from(rest[3]);
                        assert!(
                            declared > input.len(),
                            "{ctx}: pinus stops only when the length exceeds the buffer"
                        );
                    }
                    other => panic!("{ctx}: pinus stopped on `{other}`"),
                }
                checked += 1;
                continue;
            }
            for (js, p) in list.iter().zip(&before) {
                assert!(same(js, p), "{ctx}: {js} before the error");
            }
            let Some(failed) = list.get(before.len()) else {
                continue;
            };
            assert_eq!(
                list.len(),
                before.len() + 1,
                "{ctx}: nothing after the bad package"
            );
            assert_eq!(
                u64_field(failed, "type"),
                u64::from(input[at]),
                "{ctx}: type byte"
            );
            let rest = &input[at..];
            match (error, failed.get("body")) {
                ("truncated_header", body) => {
                    assert!(
                        body.is_none_or(Value::is_null),
                        "{ctx}: a cut header is a length-0 package"
                    )
                }
                ("truncated_body", Some(body)) => {
                    let declared = (usize::from(rest[1]) << 16)
                        | (usize::from(rest[2]) << 8)
                        | usize::from(rest[3]);
                    let mut padded = rest[4..].to_vec();
                    padded.resize(declared, 0);
                    assert!(js_buffer_matches(body, &padded), "{ctx}: zero-padded body");
                }
                // pinus: "only {type} for a length greater than the whole buffer"
                ("invalid_package_type", Some(_)) => {}
                (other, _) => {
                    panic!("{ctx}: JS output for a `{other}` input is not a kind the test knows")
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
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
        if let Some(varint) = v.get("varint_hex").and_then(Value::as_str) {
            let mut out = Vec::new();
            shaddock_protocol::varint::encode_u32(msg.id, &mut out);
            assert_eq!(hex::encode(&out), varint, "{ctx}: id varint");
            assert_eq!(
                shaddock_protocol::varint::decode_u32(&out).unwrap(),
                (msg.id, out.len()),
                "{ctx}: id varint back"
            );
        }
        // README: "`js_differs` lists JS outputs that differ (ids ≥ 2^31, 4-byte UTF-8 routes
        // in browser mode)": each differs from ours, for one of those reasons.
        for (codec, js) in v
            .get("js_differs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let js = js
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: js_differs {codec}"));
            assert_ne!(js, expected, "{ctx}: {codec} is listed as differing");
            let big_id = msg.id >= 1 << 31;
            let non_bmp = msg
                .route
                .as_str()
                .is_some_and(|r| r.chars().any(|c| c > '\u{ffff}'));
            assert!(
                big_id || (non_bmp && codec.contains("browser")),
                "{ctx}: {codec} differs for no documented reason"
            );
            if big_id {
                // the JS buffer is 4 bytes short: our bytes, cut
                assert!(
                    expected.starts_with(js) && js.len() + 8 == expected.len(),
                    "{ctx}: {codec}"
                );
            }
        }
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
        // the JS encoders threw, or (README) wrote what they should have refused: either way
        // we refuse with the typed error above
        let _ = js_observed(v, &ctx);
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
        // Where JS threw or read garbage, we give the documented result (checked above).
        // Where we accept, the JS decoders read the same fields, except what PROTOCOL.md §12
        // documents: ids ≥ 2^31 decode wrongly in JS, and the browser build misreads
        // non-BMP route characters.
        for (function, outcome) in js_observed(v, &ctx) {
            let (Js::Returns(js), Ok(msg)) = (outcome, Message::decode(Bytes::from(input.clone())))
            else {
                continue;
            };
            let ctx = format!("{ctx} {function}");
            assert_eq!(u64_field(js, "type"), msg.kind as u64, "{ctx}: type");
            assert_eq!(
                u64_field(js, "compressRoute"),
                u64::from(msg.compress_route()),
                "{ctx}"
            );
            assert_eq!(
                u64_field(js, "compressGzip"),
                u64::from(msg.gzip),
                "{ctx}: gzip"
            );
            assert_eq!(
                str_field(field(js, "body"), "hex"),
                hex::encode(&msg.body),
                "{ctx}: body"
            );
            if msg.id < 1 << 31 {
                assert_eq!(u64_field(js, "id"), u64::from(msg.id), "{ctx}: id");
            }
            match (&msg.route, field(js, "route")) {
                (MessageRoute::None, r) => assert!(r.is_null(), "{ctx}: route {r}"),
                (MessageRoute::Code(code), r) => {
                    assert_eq!(r.as_u64(), Some(u64::from(*code)), "{ctx}")
                }
                (MessageRoute::Name(name), r) => {
                    if !(function.contains("browser") && name.chars().any(|c| c > '\u{ffff}')) {
                        assert_eq!(r.as_str(), Some(name.as_str()), "{ctx}: route");
                    }
                }
            }
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
        // the stock JS client's split of the same bytes
        if let Some(split) = v.get("js_client_split") {
            let returns = split
                .get("returns")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("{ctx}: js_client_split must return a list"));
            assert_eq!(returns.len(), packages.len(), "{ctx}: JS split");
            for (js, p) in returns.iter().zip(&packages) {
                assert_eq!(u64_field(js, "type"), p.kind as u64, "{ctx}: JS split type");
                match field(js, "body") {
                    Value::Null => assert!(p.body.is_empty(), "{ctx}"),
                    b => assert!(js_buffer_matches(b, &p.body), "{ctx}: JS split body"),
                }
            }
        }
        // who sends it: clients send requests and notifies, servers responses and pushes
        let direction = str_field(v, "direction");
        for p in packages.iter().filter(|p| p.kind == PackageType::Data) {
            let kind = Message::decode(p.body.clone()).unwrap().kind;
            let client = matches!(kind, MessageType::Request | MessageType::Notify);
            match direction {
                "client->server" => assert!(client, "{ctx}: a client sends no {}", kind.name()),
                "server->client" => assert!(!client, "{ctx}: a server sends no {}", kind.name()),
                other => panic!("{ctx}: direction {other:?} is not a kind the tests know"),
            }
        }
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
        // what the live servers computed
        for server in ["observed_pomelo", "observed_pinus"] {
            if let Some(observed) = v.get(server) {
                assert_eq!(
                    observed.as_str(),
                    Some(str_field(v, "expected")),
                    "{ctx}: {server}"
                );
            }
        }
        // the algorithm says over what text the hash runs; we build that text
        match str_field(v, "algorithm") {
            a if a == HASH_ALGORITHMS[0] => {
                let dict = setup.dictionary.as_ref().expect("dictionary configured");
                assert_eq!(dict.dict_json(), input, "{ctx}: JSON.stringify(dict)");
                assert_eq!(dict.version(), str_field(v, "expected"), "{ctx}");
            }
            a if a == HASH_ALGORITHMS[1] => {
                let protos = setup.protos.as_ref().expect("protobuf configured");
                let mut text = json::to_vec(&protos.client);
                text.extend(json::to_vec(&protos.server));
                assert_eq!(String::from_utf8(text).unwrap(), input, "{ctx}");
                assert_eq!(protos.version, str_field(v, "expected"), "{ctx}");
            }
            other => panic!("{ctx}: hash algorithm {other:?} is not one the tests know"),
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
        let direction = str_field(v, "direction");
        assert!(
            DIRECTIONS.contains(&direction),
            "{ctx}: direction {direction:?}"
        );
        let source = str_field(v, "source");
        if direction == "client->server" {
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
        // `source`: the server that produced the reply
        let flavor = if source.starts_with("pinus") {
            Flavor::Pinus
        } else {
            assert!(source.starts_with("pomelo"), "{ctx}: source {source:?}");
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
        // `then`: what the server does next, as our connection state machine does it
        let now = std::time::Instant::now();
        let mut conn = ServerConnection::new(ConnectionConfig::default(), now);
        conn.handle_package(request[0].clone(), now);
        assert!(
            matches!(conn.poll_event(), Some(ConnEvent::HandshakeRequest(_))),
            "{ctx}"
        );
        if parsed.code == 200 {
            conn.accept_handshake(reply.clone());
        } else {
            conn.reject_handshake(parsed.code, reply.clone());
        }
        assert_eq!(
            conn.poll_transmit().map(|p| p.body),
            Some(reply.clone()),
            "{ctx}"
        );
        match str_field(v, "then") {
            t if t == HANDSHAKE_THEN[0] => assert_eq!(conn.state(), ConnState::WaitingAck, "{ctx}"),
            t if t == HANDSHAKE_THEN[1] => assert!(conn.is_closed(), "{ctx}: {t}"),
            other => panic!("{ctx}: `then` {other:?} is not a kind the tests know"),
        }
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
        // and the whole conversation through our server side
        replay::scenario(file_name, config, &setup, scenario);
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

/// Every step, the ones where the JS client threw included (see `browser`).
#[test]
fn browser_client() {
    browser::walk(&load("browser_client.json"));
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
    // prose and provenance
    for key in ["description", "captured_at"] {
        assert!(field(&file, key).is_string(), "{key}");
    }
    for note in arr(&file, "notes") {
        assert!(note.is_string());
    }
    for (package, version) in field(&file, "versions").as_object().unwrap() {
        assert!(version.is_string(), "version of {package}");
    }
    let mut checked = 0;
    let mut replies = Vec::new();
    for session in sessions {
        // TCP: one stream per connection and direction
        let mut streams: HashMap<(String, String), (Vec<u8>, Vec<Value>)> = HashMap::new();
        let mut routes_by_id: HashMap<(String, u64), String> = HashMap::new();
        let mut last: Option<(u64, u64)> = None;
        let transport = str_field(session, "transport");
        // The dictionary each connection got, and the route of each request id (TCP streams
        // are checked per direction, so collect both first).
        let mut dicts: HashMap<String, RouteDictionary> = HashMap::new();
        for frame in arr(session, "frames") {
            let conn = str_field(frame, "conn").to_owned();
            for d in arr(frame, "decoded") {
                if let Some(dict) = d
                    .get("json")
                    .and_then(|j| j.get("sys"))
                    .and_then(|s| s.get("dict"))
                {
                    dicts.insert(
                        conn.clone(),
                        RouteDictionary::from_handshake(dict.as_object().unwrap(), None).unwrap(),
                    );
                }
                if let Some(m) = d.get("message").filter(|m| m["type"] == "request") {
                    let route = m
                        .get("route_name")
                        .or_else(|| m.get("route"))
                        .and_then(Value::as_str);
                    routes_by_id.insert(
                        (conn.clone(), u64_field(m, "id")),
                        route.unwrap_or("").to_owned(),
                    );
                }
            }
        }
        for frame in arr(session, "frames") {
            let ctx = format!(
                "pinus-session seq {}",
                frame.get("seq").unwrap_or(&Value::Null)
            );
            // frames in capture order
            let at = (u64_field(frame, "seq"), u64_field(frame, "t_ms"));
            if let Some((seq, t)) = last {
                assert!(at.0 > seq && at.1 >= t, "{ctx}: out of order");
            }
            last = Some(at);
            assert_eq!(str_field(frame, "transport"), transport, "{ctx}");
            assert!(DIRECTIONS.contains(&str_field(frame, "direction")), "{ctx}");
            for decoded in arr(frame, "decoded") {
                if decoded["package"] == "handshake" && decoded["json"].get("code").is_some() {
                    replies.push(decoded["json"].clone());
                }
            }
            let bytes = unhex(str_field(frame, "hex"));
            let decoded = arr(frame, "decoded").to_vec();
            if str_field(frame, "transport") == "ws" {
                let (packages, err) = frame_decode(&bytes);
                assert!(err.is_none(), "{ctx}: {err:?}");
                check_pinus_packages(&packages, &decoded, &routes_by_id, &dicts, frame, &ctx);
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
            check_pinus_packages(&packages, &decoded, &routes_by_id, &dicts, &frame, &ctx);
            checked += packages.len();
        }
        // the gate's answer is one of the session's responses
        if let Some(answer) = session.get("gate_answer") {
            let responses: Vec<&Value> = arr(session, "frames")
                .iter()
                .flat_map(|f| arr(f, "decoded"))
                .filter_map(|d| d.get("message"))
                .filter(|m| m["type"] == "response")
                .filter_map(|m| m.get("body_json"))
                .collect();
            assert!(
                responses.contains(&answer),
                "gate_answer {answer} is no response of the session"
            );
        }
    }
    assert!(checked > 0);
    // server_config: every handshake answer comes from one of the configured servers
    let config = field(&file, "server_config");
    let servers: Vec<&Value> = config
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v.get("connector").is_some())
        .collect();
    for reply in &replies {
        let sys = &reply["sys"];
        let from_a_server = servers.iter().any(|server| {
            let heartbeat_ok = match server.get("heartbeat").and_then(Value::as_f64) {
                Some(h) => sys.get("heartbeat").and_then(Value::as_f64) == Some(h),
                None => sys.get("heartbeat").is_none(),
            };
            heartbeat_ok
                && server["useDict"].as_bool().unwrap_or(false) == sys.get("dict").is_some()
                && server["useProtobuf"].as_bool().unwrap_or(false) == sys.get("protos").is_some()
        });
        assert!(
            from_a_server,
            "handshake answer {reply} matches no server_config entry"
        );
        if let Some(dict) = sys.get("dict") {
            for route in arr(config, "dictionary_json") {
                assert!(
                    dict.get(route.as_str().unwrap()).is_some(),
                    "dictionary.json route {route}"
                );
            }
        }
    }
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
    routes_by_id: &HashMap<(String, u64), String>,
    dicts: &HashMap<String, RouteDictionary>,
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
        if let Some(code) = msg.route.as_code() {
            // route_name: the code through the dictionary this connection got
            let dict = dicts
                .get(&conn)
                .unwrap_or_else(|| panic!("{ctx}: code without a dictionary"));
            assert_eq!(
                dict.route(code).map(RouteName::as_str),
                m.get("route_name").and_then(Value::as_str),
                "{ctx}: route_name"
            );
        }
        if msg.kind == MessageType::Response {
            // response_to: the route of the request with this id on this connection
            assert_eq!(
                routes_by_id
                    .get(&(conn.clone(), u64::from(msg.id)))
                    .map(String::as_str),
                m.get("response_to").and_then(Value::as_str),
                "{ctx}: response_to"
            );
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

/// `extra_observations`: JS calls that did not finish (`terminated: false`). The only kind
/// of input the tests know is `Message.encode(id=…, type=…)`: our message ids are `u32`, so
/// an id outside 0..=2^32-1 cannot be given to our encoder at all, and every id it can be
/// given encodes at once.
#[test]
fn manifest_extra_observations() {
    let manifest = load("manifest.json");
    for o in arr(&manifest, "extra_observations") {
        let input = str_field(o, "input");
        assert!(field(o, "terminated").is_boolean(), "{input}");
        let args = input
            .strip_prefix("Message.encode(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("extra observation {input:?} is not a kind the tests know"));
        let mut id = None;
        let mut kind = None;
        for arg in args.split(", ") {
            match arg.split_once('=') {
                Some(("id", v)) => id = Some(v.parse::<i128>().unwrap()),
                Some(("type", v)) => {
                    kind = [
                        MessageType::Request,
                        MessageType::Notify,
                        MessageType::Response,
                        MessageType::Push,
                    ]
                    .into_iter()
                    .find(|k| k.name() == v)
                }
                _ => panic!("{input}: argument {arg:?}"),
            }
        }
        let (Some(id), Some(kind)) = (id, kind) else {
            panic!("{input}: id and type");
        };
        match u32::try_from(id) {
            Err(_) => {} // unrepresentable: refused by the type
            Ok(id) => {
                let msg = Message {
                    kind,
                    id,
                    route: if kind.has_route() {
                        MessageRoute::name("a.b.c")
                    } else {
                        MessageRoute::None
                    },
                    gzip: false,
                    error: false,
                    response_route_bit: false,
                    body: Bytes::new(),
                };
                let mut out = BytesMut::new();
                msg.encode(&mut out).unwrap();
                assert_eq!(Message::decode(out.freeze()).unwrap().id, id, "{input}");
            }
        }
    }
}

/// Every field of every vector file is read by some test, and every kind of step (event
/// direction, transport, handshake outcome, observation, quirk...) is one the tests walk
/// (see `coverage`).
#[test]
fn every_field_and_step_kind_is_covered() {
    let mut problems = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(vectors_dir()).expect("vector directory") {
        let file_name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !file_name.ends_with(".json") {
            continue;
        }
        files += 1;
        problems.extend(coverage::uncovered(&file_name, &load(&file_name)));
    }
    assert!(files > 0);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
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
