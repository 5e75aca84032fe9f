//! pomelo-protobuf bodies against the golden vectors (`protobuf.json`, `handshake.json`), the
//! prost cross-check, property tests and the fuzz seeds.
//!
//! Vectors are read from `$SHADDOCK_VECTORS` (default: the repository's copy, `<repo>/vectors`);
//! the tests read whatever the files contain and hard-code no vector values.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use shaddock_protocol::protobuf::{
    ProtobufError, Protos, Schema, SchemaError, decode_message, encode_message, fuzz_decode,
    parsed_form, protos_version,
};

fn vectors_dir() -> PathBuf {
    match std::env::var_os("SHADDOCK_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vectors"),
    }
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn hex_field(v: &Value, key: &str) -> Option<Vec<u8>> {
    v.get(key)
        .and_then(Value::as_str)
        .map(|h| hex::decode(h).unwrap_or_else(|e| panic!("bad hex in `{key}`: {e}")))
}

/// `JSON.stringify` of both sides must be the same text: numbers print as JavaScript prints
/// the double it read (the vectors hold the JS generator's text, parsed exactly).
fn assert_same_json_text(ours: &Value, want: &Value, ctx: &str) {
    assert_eq!(
        shaddock_protocol::json::to_string(ours),
        shaddock_protocol::json::to_string(want),
        "{ctx}: JSON.stringify"
    );
}

fn quirk(v: &Value) -> &str {
    v.get("quirk").and_then(Value::as_str).unwrap_or("")
}

/// JSON equality where numbers compare by value (`-2` == `-2.0`), as JavaScript sees them.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Load the vector schema. Routes whose vectors carry the `unresolved_nested_type` quirk
/// must be refused at load time; they are removed one by one (each refusal must name one of
/// them) and the rest loads. Returns the schema and the removed routes.
fn load_vector_schema(pb: &Value) -> (Schema, BTreeSet<String>) {
    let quirky: BTreeSet<String> = arr(pb, "vectors")
        .iter()
        .filter(|v| quirk(v) == "unresolved_nested_type")
        .map(|v| v["route"].as_str().unwrap().to_owned())
        .collect();
    let mut file = pb["schema_json"].clone();
    let mut removed = BTreeSet::new();
    let limit = file.as_object().map_or(0, Map::len) + 1;
    for _ in 0..limit {
        match Schema::from_file_json(&file) {
            Ok(schema) => {
                assert_eq!(
                    removed, quirky,
                    "exactly the routes with unresolved nested types are refused"
                );
                return (schema, removed);
            }
            Err(SchemaError::UnresolvedType { message, .. }) => {
                let routes = file.as_object_mut().unwrap();
                let route = routes
                    .keys()
                    .filter(|r| message == **r || message.starts_with(&format!("{r}.")))
                    .max_by_key(|r| r.len())
                    .cloned()
                    .unwrap_or_else(|| panic!("error names no route: {message}"));
                assert!(
                    quirky.contains(&route),
                    "route {route} refused unexpectedly"
                );
                routes.shift_remove(&route);
                removed.insert(route);
            }
            Err(e) => panic!("vector schema refused: {e}"),
        }
    }
    panic!("schema never loaded");
}

#[test]
fn parsed_form_is_byte_exact() {
    let pb = load("protobuf.json");
    let ours = parsed_form(&pb["schema_json"]);
    assert_eq!(ours.to_string(), pb["schema_parsed"].to_string());

    // The live servers' files load, and their parsed form is what they sent.
    let hs = load("handshake.json");
    let cfg = &hs["server_config"];
    for file in [&cfg["clientProtos_json"], &cfg["serverProtos_json"]] {
        let schema = Schema::from_file_json(file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(schema.parsed(), &parsed_form(file));
    }
}

#[test]
fn unresolved_nested_types_are_refused() {
    let pb = load("protobuf.json");
    let (schema, removed) = load_vector_schema(&pb);
    for route in &removed {
        assert!(!schema.has_route(route));
    }
    // Every other route of the file loads.
    for route in pb["schema_json"].as_object().unwrap().keys() {
        assert_eq!(schema.has_route(route), !removed.contains(route), "{route}");
    }
}

#[test]
fn vectors_encode_and_decode() {
    let pb = load("protobuf.json");
    let (schema, removed) = load_vector_schema(&pb);
    let mut checked = 0;
    for v in arr(&pb, "vectors") {
        let route = v["route"].as_str().unwrap();
        if removed.contains(route) {
            continue;
        }
        let name = format!("{route} {} ({})", v["message"], quirk(v));
        let expected = hex_field(v, "expected_hex").unwrap();
        let encoded = schema.encode(route, &v["message"]);
        let decoded = schema.decode(route, &expected);
        match quirk(v) {
            // JS coerced a numeric string / truncated a fraction: we refuse the value; the
            // bytes JS wrote are still valid and decode.
            "js_parseint_coercion" => {
                let err = encoded.expect_err(&name);
                assert_eq!(err.code(), "value_type_mismatch", "{name}: {err}");
                let decoded = decoded.unwrap();
                assert!(json_eq(&decoded, &v["decoded"]), "{name}");
                assert_same_json_text(&decoded, &v["decoded"], &name);
            }
            // A "32-bit" field with a larger value: refused both ways.
            "value_exceeds_32_bits" => {
                let err = encoded.expect_err(&name);
                assert_eq!(err.code(), "value_out_of_range", "{name}: {err}");
                let err = decoded.expect_err(&name);
                assert_eq!(err.code(), "value_out_of_range", "{name}: {err}");
            }
            // no quirk; or JS's buffer heuristic failed where ours encodes (expected_hex is
            // pinus' output with a big buffer)
            "" | "js_encode_buffer_heuristic" => {
                let encoded = encoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(hex::encode(&encoded), hex::encode(&expected), "{name}");
                let decoded = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(
                    json_eq(&decoded, &v["decoded"]),
                    "{name}: decoded {decoded}, expected {}",
                    v["decoded"]
                );
                assert_same_json_text(&decoded, &v["decoded"], &name);
                // Decoded keys keep the order of the bytes (= the input's key order).
                let keys: Vec<&String> = decoded.as_object().unwrap().keys().collect();
                let want: Vec<&String> = v["decoded"].as_object().unwrap().keys().collect();
                assert_eq!(keys, want, "{name}");
            }
            other => panic!("{name}: quirk {other:?} is not one the tests know"),
        }
        check_js_columns(&schema, v, &name);
        checked += 1;
    }
    assert!(checked > 0, "no vectors checked");
}

/// What one JS function did: `{"returns": …}` or `{"throws": "…"}`, plus `console` lines.
fn js_observed(v: &Value, ctx: &str) -> Vec<(String, Result<Value, String>)> {
    let Some(observed) = v.get("js_observed") else {
        return Vec::new();
    };
    observed
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: js_observed"))
        .iter()
        .map(|(function, o)| {
            for key in o.as_object().unwrap().keys() {
                assert!(
                    ["returns", "throws", "console"].contains(&key.as_str()),
                    "{ctx}: js_observed {function}: `{key}`"
                );
            }
            for line in o
                .get("console")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                assert!(line.is_string(), "{ctx}: console");
            }
            let outcome = match (o.get("returns"), o.get("throws").and_then(Value::as_str)) {
                (Some(r), None) => Ok(r.clone()),
                (None, Some(t)) => Err(t.to_owned()),
                _ => panic!("{ctx}: js_observed {function} must return or throw"),
            };
            (function.clone(), outcome)
        })
        .collect()
}

/// The columns of a `vectors[]` entry beside `expected_hex` / `decoded`: the other JS
/// encoders and decoders and the protobufjs cross-check (README, protobuf.json).
fn check_js_columns(schema: &Schema, v: &Value, name: &str) {
    let route = v["route"].as_str().unwrap();
    let expected = v["expected_hex"].as_str().unwrap();
    let q = quirk(v);
    // pinus-protobuf writes what pomelo-protobuf writes
    if let Some(pinus) = v.get("pinus_protobuf_hex").and_then(Value::as_str) {
        assert_eq!(pinus, expected, "{name}: pinus-protobuf");
    }
    if let Some(browser) = v.get("browser_encoder_hex").and_then(Value::as_str) {
        assert_eq!(
            v["browser_encoder_matches"].as_bool(),
            Some(browser == expected),
            "{name}: browser_encoder_matches"
        );
    }
    // The browser decoder reading the server's bytes: what we read, except where §11.7 says
    // it cannot (4-byte UTF-8) or the vector has a quirk.
    if let Some(browser) = v
        .get("browser_decoder_reads_expected_as")
        .filter(|b| !b.is_null())
    {
        let four_byte_utf8 = hex::decode(expected).unwrap().iter().any(|&b| b >= 0xf0);
        if q.is_empty() && !four_byte_utf8 {
            assert!(
                json_eq(browser, &v["decoded"]),
                "{name}: browser decoder read {browser}"
            );
        }
    }
    // protobufjs, a standard decoder: where it reads the bytes, it reads our values (§11.6);
    // where it fails, the bytes use pomelo's own encodings, which we read.
    if let Some(pbjs) = v.get("protobufjs_decode").filter(|p| !p.is_null()) {
        assert!(
            pbjs["equal_to_input"].is_boolean() || pbjs["ok"] == false,
            "{name}"
        );
        match pbjs["ok"].as_bool() {
            Some(true) if !["value_exceeds_32_bits", "unresolved_nested_type"].contains(&q) => {
                let ours = schema
                    .decode(route, &hex::decode(expected).unwrap())
                    .unwrap();
                assert!(
                    json_eq(&ours, &pbjs["value"]),
                    "{name}: protobufjs read {}",
                    pbjs["value"]
                );
            }
            Some(true) => {}
            Some(false) => assert!(pbjs["error"].is_string(), "{name}: protobufjs error"),
            None => panic!("{name}: protobufjs_decode.ok"),
        }
    }
    // expected_source: only where the JS encoders could not produce the bytes
    if let Some(source) = v.get("expected_source") {
        assert!(source.is_string(), "{name}");
        assert_eq!(
            q, "js_encode_buffer_heuristic",
            "{name}: expected_source without the quirk"
        );
    }
    // js_encode_buffer_heuristic: the JS encoders throw, or (browser build) silently cut
    // the output short; ours encodes all of it
    for (function, outcome) in js_observed(v, name) {
        match outcome {
            Err(_) => {}
            Ok(r) => {
                let hex = r
                    .get("hex")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{name}: {function}"));
                assert!(
                    q == "js_encode_buffer_heuristic"
                        && expected.starts_with(hex)
                        && hex.len() < expected.len(),
                    "{name}: {function} returned {hex}"
                );
                let cut = schema.decode(route, &hex::decode(hex).unwrap());
                assert!(
                    cut.is_err() || !json_eq(&cut.unwrap(), &v["decoded"]),
                    "{name}: the cut bytes are not the value"
                );
            }
        }
    }
}

/// manifest.json counts protobuf.json's vectors like the other files'.
#[test]
fn manifest_counts_protobuf_vectors() {
    let pb = load("protobuf.json");
    let manifest = load("manifest.json");
    let total = ["vectors", "encode_failures", "decode_malformed"]
        .iter()
        .map(|k| arr(&pb, k).len() as u64)
        .sum::<u64>();
    assert_eq!(manifest["files"]["protobuf.json"].as_u64(), Some(total));
}

#[test]
fn proto2_equivalent_names_every_route() {
    let pb = load("protobuf.json");
    let text = pb["proto2_equivalent"].as_str().expect("proto2_equivalent");
    assert!(text.starts_with("syntax = \"proto2\";"), "{text:.40}");
    for route in pb["schema_json"].as_object().unwrap().keys() {
        let message = match route.strip_prefix("message ") {
            Some(top_level) => format!("message {top_level} {{"),
            None => format!("message M_{} {{", route.replace('.', "_")),
        };
        assert!(text.contains(&message), "{route}: {message}");
    }
}

/// Whether `bytes` hold a CESU-8 surrogate (`ed a0..bf`), which we decode to the real
/// character where Node produces U+FFFD.
fn has_cesu_surrogate(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .any(|w| w[0] == 0xed && (0xa0..=0xbf).contains(&w[1]))
}

#[test]
fn browser_encoder_bytes_decode() {
    let pb = load("protobuf.json");
    let (schema, removed) = load_vector_schema(&pb);
    let mut checked = 0;
    for v in arr(&pb, "vectors") {
        let route = v["route"].as_str().unwrap();
        let Some(bytes) = hex_field(v, "browser_encoder_hex") else {
            continue;
        };
        if removed.contains(route) {
            continue;
        }
        let name = format!("{route} browser {}", hex::encode(&bytes));
        let result = schema.decode(route, &bytes);
        // Without a recorded server reading, or when the browser build truncated its output
        // (buffer heuristic), there is nothing to compare: it only must not panic.
        if v.get("server_decodes_browser_bytes_to").is_none()
            || quirk(v) == "js_encode_buffer_heuristic"
        {
            continue;
        }
        if quirk(v) == "value_exceeds_32_bits" {
            assert_eq!(result.expect_err(&name).code(), "value_out_of_range");
            continue;
        }
        let value = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        // Node turns CESU-8 surrogates into U+FFFD; we join them (what the browser meant).
        let want = if has_cesu_surrogate(&bytes) {
            &v["decoded"]
        } else {
            &v["server_decodes_browser_bytes_to"]
        };
        assert!(json_eq(&value, want), "{name}: got {value}, want {want}");
        assert_same_json_text(&value, want, &name);
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn encode_failures() {
    let pb = load("protobuf.json");
    let (schema, _) = load_vector_schema(&pb);
    for v in arr(&pb, "encode_failures") {
        let route = v["route"].as_str().unwrap();
        let want = v["expected"]["error"].as_str().unwrap();
        let err = schema
            .encode(route, &v["message"])
            .expect_err(&format!("{route} {} must fail", v["message"]));
        assert_eq!(err.code(), want, "{route}: {err}");
        let text = err.to_string();
        assert!(text.contains(route), "error names the route: {text}");
        // the JS encoders gave nothing (null) or threw: no bytes either way
        for (function, outcome) in js_observed(v, route) {
            if let Ok(r) = outcome {
                assert!(r.is_null(), "{route}: {function} returned {r}");
            }
        }
    }
}

#[test]
fn decode_malformed() {
    let pb = load("protobuf.json");
    let (schema, _) = load_vector_schema(&pb);
    for v in arr(&pb, "decode_malformed") {
        let route = v["route"].as_str().unwrap();
        let input = hex_field(v, "input_hex").unwrap();
        let name = format!("{route} {}", hex::encode(&input));
        let result = schema.decode(route, &input);
        let expected = &v["expected"];
        // What the JS decoders did: where we refuse they throw or read garbage; where we
        // accept, what they return is the accepted value.
        for (function, outcome) in js_observed(v, &name) {
            if let (Ok(r), Some(value)) = (outcome, expected.get("value")) {
                assert!(json_eq(&r, value), "{name}: {function} read {r}");
            }
        }
        if let Some(want) = expected.get("error").and_then(Value::as_str) {
            let err = result.expect_err(&name);
            assert_eq!(err.code(), want, "{name}: {err}");
            assert!(err.to_string().contains(route), "{err}");
        } else {
            let value = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(json_eq(&value, &expected["value"]), "{name}: {value}");
            assert_same_json_text(&value, &expected["value"], &name);
        }
    }
}

#[test]
fn errors_name_the_field_path() {
    let schema = Schema::from_file_json(&json!({
        "r": {
            "message M": {"required uInt32 id": 1, "optional string s": 2},
            "repeated M ms": 1
        }
    }))
    .unwrap();
    let err = schema
        .encode("r", &json!({"ms": [{"id": 1}, {"s": "x"}]}))
        .unwrap_err();
    assert!(matches!(err, ProtobufError::MissingRequiredField { .. }));
    assert_eq!(err.field(), Some("ms[1].id"));
    assert_eq!(err.route(), Some("r"));
    let err = schema
        .encode("r", &json!({"ms": [{"id": "7"}]}))
        .unwrap_err();
    assert_eq!(err.code(), "value_type_mismatch");
    assert_eq!(err.field(), Some("ms[0].id"));
    // Unknown tag 3 inside the second element.
    let err = schema
        .decode("r", &[0x0a, 0x02, 0x08, 0x01, 0x0a, 0x02, 0x18, 0x01])
        .unwrap_err();
    assert_eq!(err.code(), "unknown_field");
    assert_eq!(err.field(), Some("ms[1]"));
}

#[test]
fn encode_into_leaves_buffer_untouched_on_error() {
    let schema =
        Schema::from_file_json(&json!({"r": {"required uInt32 a": 1, "required string b": 2}}))
            .unwrap();
    let mut buf = BytesMut::from(&b"head"[..]);
    schema
        .encode_into("r", &json!({"a": 1, "b": 5}), &mut buf)
        .unwrap_err();
    assert_eq!(&buf[..], b"head");
    schema
        .encode_into("r", &json!({"a": 1, "b": "x"}), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"head\x08\x01\x12\x01x");
}

#[test]
fn long_nested_message_gets_wide_length_prefix() {
    let schema = Schema::from_file_json(&json!({
        "r": {"message M": {"required string s": 1}, "required M m": 1, "required uInt32 after": 2}
    }))
    .unwrap();
    let s = "x".repeat(300);
    let bytes = schema
        .encode("r", &json!({"m": {"s": s}, "after": 9}))
        .unwrap();
    // 0a, len(303) = af 02, then 0a ac 02 + 300 bytes, then 10 09.
    assert_eq!(&bytes[..6], &[0x0a, 0xaf, 0x02, 0x0a, 0xac, 0x02]);
    assert_eq!(&bytes[bytes.len() - 2..], &[0x10, 0x09]);
    assert_eq!(
        schema.decode("r", &bytes).unwrap(),
        json!({"m": {"s": s}, "after": 9})
    );
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let schema = Schema::from_file_json(&json!({
        "message N": {"optional N n": 1},
        "r": {"optional N n": 1}
    }))
    .unwrap();
    // 200 nested empty messages: 0a len(0a len(...)).
    let mut body = Vec::new();
    for _ in 0..200 {
        let mut outer = vec![0x0a];
        let mut len = Vec::new();
        let mut n = body.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                len.push(b);
                break;
            }
            len.push(b | 0x80);
        }
        outer.extend(len);
        outer.extend(body);
        body = outer;
    }
    let err = schema.decode("r", &body).unwrap_err();
    assert_eq!(err.code(), "nesting_too_deep");
    let mut v = json!({});
    for _ in 0..200 {
        v = json!({"n": v});
    }
    assert_eq!(
        schema.encode("r", &v).unwrap_err().code(),
        "nesting_too_deep"
    );
}

#[test]
fn pinus_types_round_trip() {
    let schema = Schema::from_file_json(&json!({
        "r": {"optional bool b": 1, "optional uInt64 u": 2, "optional sInt64 s": 3, "repeated bool bs": 4}
    }))
    .unwrap();
    let v = json!({"b": true, "u": u64::MAX, "s": i64::MIN, "bs": [true, false]});
    let bytes = schema.encode("r", &v).unwrap();
    assert_eq!(&bytes[..2], &[0x08, 0x01]);
    assert_eq!(schema.decode("r", &bytes).unwrap(), v);
    assert_eq!(
        schema.encode("r", &json!({"b": 1})).unwrap_err().code(),
        "value_type_mismatch"
    );
}

#[test]
fn handshake_version_and_json_match_pomelo() {
    let hs = load("handshake.json");
    let cfg = &hs["server_config"];
    let protos = Protos::from_files(&cfg["serverProtos_json"], &cfg["clientProtos_json"]).unwrap();
    assert_eq!(protos.version(), cfg["protos_version"].as_str().unwrap());
    for h in arr(&hs, "version_hashes") {
        if h["name"] == "protos_version" {
            let text = format!("{}{}", protos.client().parsed(), protos.server().parsed());
            assert_eq!(text, h["input_utf8"].as_str().unwrap());
            assert_eq!(protos.version(), h["expected"].as_str().unwrap());
        }
    }
    for route in cfg["clientProtos_json"].as_object().unwrap().keys() {
        assert!(protos.has_client_route(route));
        assert!(!protos.has_server_route(route) || cfg["serverProtos_json"].get(route).is_some());
    }
    for route in cfg["serverProtos_json"].as_object().unwrap().keys() {
        assert!(protos.has_server_route(route));
    }

    // Every server reply that carries sys.protos carries exactly our handshake_json text.
    let mut seen = 0;
    for v in arr(&hs, "vectors") {
        let Some(body) = v.get("body_utf8").and_then(Value::as_str) else {
            continue;
        };
        let Ok(parsed) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        let Some(sent) = parsed.get("sys").and_then(|s| s.get("protos")) else {
            continue;
        };
        assert_eq!(
            protos.handshake_json().to_string(),
            sent.to_string(),
            "{}",
            v["name"]
        );
        assert!(body.contains(&protos.handshake_json().to_string()));
        // A client loads what it received and gets the same schemas and version.
        let client_side = Protos::from_handshake(sent).unwrap();
        assert_eq!(client_side.version(), protos.version());
        assert_eq!(
            protos_version(client_side.client().parsed(), client_side.server().parsed()),
            protos.version()
        );
        seen += 1;
    }
    assert!(seen > 0, "no handshake reply with protos");
}

#[test]
fn from_handshake_rejects_bad_shapes() {
    assert!(matches!(
        Protos::from_handshake(&json!({"server": {}})),
        Err(SchemaError::InvalidHandshake { .. })
    ));
    assert!(matches!(
        Protos::from_handshake(&json!({"server": {}, "client": {}, "version": 5})),
        Err(SchemaError::InvalidHandshake { .. })
    ));
    let p = Protos::from_handshake(&json!({"server": {}, "client": {}})).unwrap();
    assert_eq!(p.version(), Protos::default().version());
}

// ---- floats as JavaScript has them ----------------------------------------------------------

/// `(input, float (hex, decoded), double hex, double decoded)`.
type JsFloat = (
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

/// What pinus-protobuf 1.7.4 (node v20) does with these JSON numbers in a `float` and in a
/// `double` field: the bytes it writes (Float32 / Float64 little endian: the nearest f32 /
/// f64 of the parsed number) and `JSON.stringify` of what its decoder reads back (the f32
/// widened to a double). `None`: JS writes Infinity for a `float`, which we refuse.
/// Several inputs are parsed one ulp off by serde_json's fast float parser.
const JS_FLOATS: &[JsFloat] = &[
    (
        "3.4e38",
        Some(("9ec97f7f", "3.3999999521443642e+38")),
        "addf8cc733f9ef47",
        "3.4e+38",
    ),
    (
        "1e21",
        Some(("27d75862", "1.0000000200408773e+21")),
        "50efe2d6e41a4b44",
        "1e+21",
    ),
    (
        "-1e21",
        Some(("27d758e2", "-1.0000000200408773e+21")),
        "50efe2d6e41a4bc4",
        "-1e+21",
    ),
    (
        "1e20",
        Some(("ec78ad60", "100000002004087730000")),
        "408cb5781daf1544",
        "100000000000000000000",
    ),
    (
        "1e-7",
        Some(("95bfd633", "1.0000000116860974e-7")),
        "48afbc9af2d77a3e",
        "1e-7",
    ),
    (
        "1.5e-7",
        Some(("b00f2134", "1.500000053056283e-7")),
        "76830df4f521843e",
        "1.5e-7",
    ),
    (
        "1e-6",
        Some(("bd378635", "9.999999974752427e-7")),
        "8dedb5a0f7c6b03e",
        "0.000001",
    ),
    (
        "0.1",
        Some(("cdcccc3d", "0.10000000149011612")),
        "9a9999999999b93f",
        "0.1",
    ),
    (
        "0.30000000000000004",
        Some(("9a99993e", "0.30000001192092896")),
        "343333333333d33f",
        "0.30000000000000004",
    ),
    (
        "5e-324",
        Some(("00000000", "0")),
        "0100000000000000",
        "5e-324",
    ),
    (
        "1.7976931348623157e308",
        None,
        "ffffffffffffef7f",
        "1.7976931348623157e+308",
    ),
    ("-0", Some(("00000080", "0")), "0000000000000080", "0"),
    ("100", Some(("0000c842", "100")), "0000000000005940", "100"),
    ("2.5", Some(("00002040", "2.5")), "0000000000000440", "2.5"),
    (
        "123456789012345680000",
        Some(("d429d660", "123456789557014430000")),
        "dabc047e3ac51a44",
        "123456789012345680000",
    ),
    (
        "2.2250738585072011e-308",
        Some(("00000000", "0")),
        "ffffffffffff0f00",
        "2.225073858507201e-308",
    ),
    (
        "9007199254740993",
        Some(("0000005a", "9007199254740992")),
        "0000000000004043",
        "9007199254740992",
    ),
    (
        "15.655247211456299",
        Some(("e47b7a41", "15.65524673461914")),
        "000000907c4f2f40",
        "15.655247211456299",
    ),
    (
        "4.685853588089302e-32",
        Some(("ae4d730b", "4.685853735026096e-32")),
        "000000b0b5696e39",
        "4.685853588089302e-32",
    ),
    (
        "1.0920605041889695e34",
        Some(("5a9b0678", "1.0920604422919675e+34")),
        "000000506bd30047",
        "1.0920605041889695e+34",
    ),
    (
        "3.3999999521443642e38",
        Some(("9ec97f7f", "3.3999999521443642e+38")),
        "000000c033f9ef47",
        "3.3999999521443642e+38",
    ),
];

#[test]
fn floats_like_javascript() {
    let schema = Schema::from_file_json(&json!({
        "scalars.float": {"required float v": 1},
        "scalars.double": {"required double v": 1}
    }))
    .unwrap();
    for &(input, float, double_hex, double_text) in JS_FLOATS {
        // The body arrives as JSON text, as from a client or a handler.
        let body = shaddock_protocol::json::from_slice(format!("{{\"v\":{input}}}").as_bytes())
            .unwrap_or_else(|e| panic!("{input}: {e}"));
        let bytes = schema.encode("scalars.double", &body).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            format!("09{double_hex}"),
            "double {input}"
        );
        let back = schema.decode("scalars.double", &bytes).unwrap();
        assert_eq!(
            shaddock_protocol::json::to_string(&back),
            format!("{{\"v\":{double_text}}}"),
            "double {input}"
        );
        match float {
            Some((float_hex, float_text)) => {
                let bytes = schema.encode("scalars.float", &body).unwrap();
                assert_eq!(
                    hex::encode(&bytes),
                    format!("0d{float_hex}"),
                    "float {input}"
                );
                let back = schema.decode("scalars.float", &bytes).unwrap();
                assert_eq!(
                    shaddock_protocol::json::to_string(&back),
                    format!("{{\"v\":{float_text}}}"),
                    "float {input}"
                );
            }
            None => {
                let err = schema.encode("scalars.float", &body).unwrap_err();
                assert_eq!(err.code(), "value_out_of_range", "float {input}: {err}");
            }
        }
    }
}

// ---- prost cross-check (§11.6) -------------------------------------------------------------

const PROST_SCHEMA: &str = r#"{
  "onChat": {"required string from": 1, "required string msg": 2, "optional sInt32 delta": 3,
             "optional double ts": 4, "optional float ratio": 5, "optional int32 level": 6},
  "message Vec": {"required float x": 1, "required float y": 2},
  "onMove": {"required uInt32 eid": 1, "required Vec to": 2, "repeated string tags": 3}
}"#;

#[derive(Clone, PartialEq, prost::Message)]
struct Chat {
    #[prost(string, required, tag = "1")]
    from: String,
    #[prost(string, required, tag = "2")]
    msg: String,
    #[prost(sint32, optional, tag = "3")]
    delta: Option<i32>,
    #[prost(double, optional, tag = "4")]
    ts: Option<f64>,
    #[prost(float, optional, tag = "5")]
    ratio: Option<f32>,
    /// pomelo `int32` is zig-zagged: `sint32` on the prost side.
    #[prost(sint32, optional, tag = "6")]
    level: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Vec2 {
    #[prost(float, required, tag = "1")]
    x: f32,
    #[prost(float, required, tag = "2")]
    y: f32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Move {
    #[prost(uint32, required, tag = "1")]
    eid: u32,
    #[prost(message, optional, tag = "2")]
    to: Option<Vec2>,
    #[prost(string, repeated, tag = "3")]
    tags: Vec<String>,
}

#[test]
fn prost_reads_pomelo_bytes_and_back() {
    let schema = Schema::from_file_json(&serde_json::from_str(PROST_SCHEMA).unwrap()).unwrap();

    let chat = json!({"msg": "héllo 世界", "from": "bob", "delta": -3, "ts": 1.7e9, "ratio": 0.5, "level": -2});
    let pomelo = schema.encode("onChat", &chat).unwrap();
    let typed: Chat = decode_message(&pomelo).unwrap();
    assert_eq!(
        typed,
        Chat {
            from: "bob".into(),
            msg: "héllo 世界".into(),
            delta: Some(-3),
            ts: Some(1.7e9),
            ratio: Some(0.5),
            level: Some(-2),
        }
    );
    let mut buf = BytesMut::new();
    encode_message(&typed, &mut buf).unwrap();
    // prost writes tag order, pomelo wrote key order: same fields, different bytes.
    assert_ne!(&buf[..], &pomelo[..]);
    assert!(json_eq(&schema.decode("onChat", &buf).unwrap(), &chat));

    let mv = json!({"eid": 42, "to": {"x": 1.5, "y": -0.25}, "tags": ["a", ""]});
    let pomelo = schema.encode("onMove", &mv).unwrap();
    let typed: Move = decode_message(&pomelo).unwrap();
    assert_eq!(typed.eid, 42);
    assert_eq!(typed.to, Some(Vec2 { x: 1.5, y: -0.25 }));
    assert_eq!(typed.tags, vec!["a".to_owned(), String::new()]);
    let mut buf = BytesMut::new();
    encode_message(&typed, &mut buf).unwrap();
    assert_eq!(&buf[..], &pomelo[..], "same order here: identical bytes");
    assert!(json_eq(&schema.decode("onMove", &buf).unwrap(), &mv));

    // prost refuses garbage with a typed error.
    let err = decode_message::<Move>(&[0x0a, 0x05]).unwrap_err();
    assert_eq!(err.code(), "invalid_message");
}

// ---- properties ------------------------------------------------------------------------------

const PROP_SCHEMA: &str = r#"{
  "r": {
    "message Inner": {"required sInt32 a": 1, "optional string s": 2, "repeated float fs": 3},
    "required uInt32 u": 1, "optional sInt32 s32": 2, "optional int32 i32": 3,
    "optional double d": 4, "optional float f": 5, "optional string st": 6,
    "repeated uInt32 us": 7, "repeated Inner inners": 8, "optional Inner one": 9,
    "optional bool b": 10, "optional uInt64 u64": 11, "optional sInt64 i64": 12,
    "repeated string ss": 13, "repeated double ds": 14, "repeated sInt32 zs": 15
  }
}"#;

fn prop_schema() -> Schema {
    Schema::from_file_json(&serde_json::from_str(PROP_SCHEMA).unwrap()).unwrap()
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

fn f32_value() -> impl Strategy<Value = Value> {
    any::<f32>()
        .prop_filter("finite", |f| f.is_finite())
        .prop_map(|f| json!(f64::from(f)))
}

fn inner() -> impl Strategy<Value = Value> {
    (
        any::<i32>(),
        proptest::option::of(".{0,8}"),
        proptest::collection::vec(f32_value(), 0..4),
    )
        .prop_map(|(a, s, fs)| {
            let mut m = Map::new();
            m.insert("a".into(), json!(a));
            if let Some(s) = s {
                m.insert("s".into(), json!(s));
            }
            if !fs.is_empty() {
                m.insert("fs".into(), Value::Array(fs));
            }
            Value::Object(m)
        })
}

/// A body for route `r` with random optional fields and random key order. Arrays are never
/// empty (an empty array writes nothing, so it cannot come back).
fn body() -> impl Strategy<Value = Value> {
    let entries = (
        (
            any::<u32>().prop_map(|v| ("u", json!(v))),
            proptest::option::of(any::<i32>().prop_map(|v| ("s32", json!(v)))),
            proptest::option::of(any::<i32>().prop_map(|v| ("i32", json!(v)))),
            proptest::option::of(finite_f64().prop_map(|v| ("d", json!(v)))),
            proptest::option::of(f32_value().prop_map(|v| ("f", v))),
            proptest::option::of("\\PC{0,12}".prop_map(|v| ("st", json!(v)))),
            proptest::option::of(
                proptest::collection::vec(any::<u32>(), 1..5).prop_map(|v| ("us", json!(v))),
            ),
            proptest::option::of(
                proptest::collection::vec(inner(), 1..3).prop_map(|v| ("inners", Value::Array(v))),
            ),
        ),
        (
            proptest::option::of(inner().prop_map(|v| ("one", v))),
            proptest::option::of(any::<bool>().prop_map(|v| ("b", json!(v)))),
            proptest::option::of(any::<u64>().prop_map(|v| ("u64", json!(v)))),
            proptest::option::of(any::<i64>().prop_map(|v| ("i64", json!(v)))),
            proptest::option::of(
                proptest::collection::vec(".{0,5}", 1..4).prop_map(|v| ("ss", json!(v))),
            ),
            proptest::option::of(
                proptest::collection::vec(finite_f64(), 1..4).prop_map(|v| ("ds", json!(v))),
            ),
            proptest::option::of(
                proptest::collection::vec(any::<i32>(), 1..4).prop_map(|v| ("zs", json!(v))),
            ),
        ),
    );
    entries
        .prop_map(|((u, a, b, c, d, e, f, g), (h, i, j, k, l, m, n))| {
            let mut all = vec![u];
            all.extend(
                [a, b, c, d, e, f, g, h, i, j, k, l, m, n]
                    .into_iter()
                    .flatten(),
            );
            all
        })
        .prop_shuffle()
        .prop_map(|entries| {
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_encode_round_trip(v in body()) {
        let schema = prop_schema();
        let bytes = schema.encode("r", &v).unwrap();
        let back = schema.decode("r", &bytes).unwrap();
        prop_assert!(json_eq(&back, &v), "{} != {}", back, v);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        let want: Vec<&String> = v.as_object().unwrap().keys().collect();
        prop_assert_eq!(keys, want);
        prop_assert_eq!(schema.encode("r", &back).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let schema = prop_schema();
        let _ = schema.decode("r", &data);
        fuzz_decode(&data);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(v in body(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let schema = prop_schema();
        let mut bytes = schema.encode("r", &v).unwrap().to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = schema.decode("r", &bytes);
        let _ = schema.decode("r", &bytes[..i]);
    }
}

// ---- fuzz seeds ------------------------------------------------------------------------------

#[test]
fn fuzz_body_runs_over_seed_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protobuf");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        fuzz_decode(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty seed corpus");
}
