//! Which fields and step kinds of the vector format the tests walk.
//!
//! [`FIELDS`] lists, per file, every key path some test reads (`x[]` = the array under key
//! `x`, `*` = any one key, `**` = a subtree compared as a whole); [`KINDS`] lists the values
//! of the fields that select how a step is checked (event directions, transports, handshake
//! outcomes...). `every_field_and_step_kind_is_covered` walks every file of the vector set and
//! fails on a key path or a kind value missing here, so a vector set that grows a new kind
//! of step fails until a test walks it. Each entry names the test that reads it.

use serde_json::Value;

/// Header fields every file has (checked by `every_field_and_step_kind_is_covered`: `file`
/// is the file's name, the versions are an object; the rest is prose).
const HEADER: &[&str] = &[
    "file",
    "set",
    "description",
    "generated_by",
    "packages/**",
    "hex",
];

/// Keys holding prose, anywhere in a file.
const PROSE: &[&str] = &["note", "description", "label"];

/// `server_config` of handshake.json and the transcripts (`server_setup`).
const SERVER_CONFIG: &[&str] = &[
    "server_config/connector_options/heartbeat",
    "server_config/connector_options/useDict",
    "server_config/connector_options/useProtobuf",
    "server_config/handler_routes/**",
    "server_config/dictionary_json[]",
    "server_config/clientProtos_json/**",
    "server_config/serverProtos_json/**",
    "server_config/dictionary_built/**",
    "server_config/dict_version",
    "server_config/protos_version",
];

/// The transcripts (`check_transcripts`, `replay::scenario`).
const TRANSCRIPT: &[&str] = &[
    "scenarios[]/name",
    "scenarios[]/transport",
    "scenarios[]/events[]/dir",
    "scenarios[]/events[]/hex",
    "scenarios[]/events[]/ws_frame",
    "scenarios[]/events[]/packages[]/type",
    "scenarios[]/events[]/packages[]/type_name",
    "scenarios[]/events[]/packages[]/body_hex",
    "scenarios[]/events[]/packages[]/body_json/**",
    // one entry per observation kind: replay::check_observation
    "scenarios[]/observations/handshake_response/**",
    "scenarios[]/observations/handshake_response_keys[]",
    "scenarios[]/observations/handshake_code",
    "scenarios[]/observations/after_ack",
    "scenarios[]/observations/after_client_heartbeat",
    "scenarios[]/observations/closed",
    "scenarios[]/observations/closed_after_kick",
    "scenarios[]/observations/bytes_received_before_handshake",
    "scenarios[]/observations/packages_after_data_before_ack",
    "scenarios[]/observations/replies_to_second_handshake",
    "scenarios[]/observations/received_after",
    "scenarios[]/observations/bytes_after",
    "scenarios[]/observations/bytes_after_ack",
    "scenarios[]/observations/packages_received[]",
    "scenarios[]/observations/server_log[]/event",
    "scenarios[]/observations/server_log[]/id",
    "scenarios[]/observations/server_log[]/type",
    "scenarios[]/observations/server_log[]/route",
    "scenarios[]/observations/server_log[]/compressRoute",
    "scenarios[]/observations/server_log[]/body/**",
    "scenarios[]/observations/reply_to_unknown_code",
    "scenarios[]/observations/reply_to_route_without_dot",
    "scenarios[]/observations/reply_to_request_with_id_0",
    "scenarios[]/observations/reply_to_compressed_route",
    "scenarios[]/observations/reply_to_bad_json_hex",
    "scenarios[]/observations/reply_to_gzip_flag_hex",
    "scenarios[]/observations/requests_answered",
    "scenarios[]/observations/heartbeats_answered",
    "scenarios[]/observations/close_after_ack_ms_rounded_to_250",
];

/// Key paths per file (besides [`HEADER`]).
pub(super) const FIELDS: &[(&str, &[&[&str]])] = &[
    (
        "packages.json",
        &[&[
            // packages_encode
            "encode[]/name",
            "encode[]/type",
            "encode[]/type_name",
            "encode[]/body_hex",
            "encode[]/body_utf8",
            "encode[]/body_fill/byte_hex",
            "encode[]/body_fill/length",
            "encode[]/expected_header_hex",
            "encode[]/expected_hex",
            "encode[]/expected_prefix_hex",
            "encode[]/expected_length",
            "encode[]/expected_sha256",
            // packages_encode_errors (+ what the JS codecs wrote instead)
            "encode_errors[]/name",
            "encode_errors[]/type",
            "encode_errors[]/body_hex",
            "encode_errors[]/body_fill/byte_hex",
            "encode_errors[]/body_fill/length",
            "encode_errors[]/expected/error",
            "encode_errors[]/note",
            "encode_errors[]/js_observed/*/returns/bytes_hex",
            "encode_errors[]/js_observed/*/returns/bytes_prefix_hex",
            "encode_errors[]/js_observed/*/returns/bytes_length",
            "encode_errors[]/js_observed/*/returns/bytes_sha256",
            "encode_errors[]/js_observed/*/throws",
            // packages_decode_stream_and_frame, packages_decode_js_observed
            "decode[]/name",
            "decode[]/input_hex",
            "decode[]/expected_stream/ok",
            "decode[]/expected_stream/packages[]/type",
            "decode[]/expected_stream/packages[]/type_name",
            "decode[]/expected_stream/packages[]/body_hex",
            "decode[]/expected_stream/remainder_hex",
            "decode[]/expected_stream/error",
            "decode[]/expected_stream/packages_before_error[]/type",
            "decode[]/expected_stream/packages_before_error[]/type_name",
            "decode[]/expected_stream/packages_before_error[]/body_hex",
            "decode[]/expected_stream/packages_before_error[]",
            "decode[]/expected_frame/ok",
            "decode[]/expected_frame/packages[]/type",
            "decode[]/expected_frame/packages[]/type_name",
            "decode[]/expected_frame/packages[]/body_hex",
            "decode[]/expected_frame/packages[]",
            "decode[]/expected_frame/error",
            "decode[]/expected_frame/packages_before_error[]/type",
            "decode[]/expected_frame/packages_before_error[]/type_name",
            "decode[]/expected_frame/packages_before_error[]/body_hex",
            "decode[]/expected_frame/packages_before_error[]",
            "decode[]/expected_stream/packages[]",
            "decode[]/js_observed/*/returns/**",
            "decode[]/js_observed/*/returns[]/**",
            "decode[]/js_observed/*/throws",
        ]],
    ),
    (
        "messages.json",
        &[&[
            // messages_encode_and_decode_back
            "encode[]/name",
            "encode[]/type",
            "encode[]/type_name",
            "encode[]/id",
            "encode[]/compress_route",
            "encode[]/route",
            "encode[]/route_code",
            "encode[]/gzip",
            "encode[]/error_flag",
            "encode[]/body_hex",
            "encode[]/body_json/**",
            "encode[]/expected_hex",
            "encode[]/route_utf8_length",
            "encode[]/varint_hex",
            "encode[]/note",
            "encode[]/js_differs/*",
            // messages_encode_errors
            "encode_errors[]/name",
            "encode_errors[]/type",
            "encode_errors[]/id",
            "encode_errors[]/compress_route",
            "encode_errors[]/route",
            "encode_errors[]/route_code",
            "encode_errors[]/route_utf8_length",
            "encode_errors[]/gzip",
            "encode_errors[]/error_flag",
            "encode_errors[]/body_hex",
            "encode_errors[]/note",
            "encode_errors[]/expected/error",
            "encode_errors[]/js_observed/*/throws",
            "encode_errors[]/js_observed/*/returns/**",
            // messages_decode
            "decode[]/name",
            "decode[]/input_hex",
            "decode[]/expected/ok",
            "decode[]/expected/error",
            "decode[]/expected/type",
            "decode[]/expected/type_name",
            "decode[]/expected/id",
            "decode[]/expected/compress_route",
            "decode[]/expected/route",
            "decode[]/expected/route_code",
            "decode[]/expected/gzip",
            "decode[]/expected/error_flag",
            "decode[]/expected/body_hex",
            "decode[]/js_observed/*/returns/id",
            "decode[]/js_observed/*/returns/type",
            "decode[]/js_observed/*/returns/compressRoute",
            "decode[]/js_observed/*/returns/route",
            "decode[]/js_observed/*/returns/body/hex",
            "decode[]/js_observed/*/returns/compressGzip",
            "decode[]/js_observed/*/throws",
        ]],
    ),
    (
        "wire.json",
        &[&[
            // wire_frames
            "frames[]/name",
            "frames[]/direction",
            "frames[]/note",
            "frames[]/message/type",
            "frames[]/message/type_name",
            "frames[]/message/id",
            "frames[]/message/compress_route",
            "frames[]/message/route",
            "frames[]/message/route_code",
            "frames[]/body_json/**",
            "frames[]/body_hex",
            "frames[]/message_hex",
            "frames[]/package_hex",
            "frames[]/dict/**",
            "frames[]/parts_hex[]",
            "frames[]/js_client_split/returns[]/type",
            "frames[]/js_client_split/returns[]/body/hex",
            "frames[]/js_client_split/returns[]/body",
        ]],
    ),
    (
        "handshake.json",
        &[
            SERVER_CONFIG,
            &[
                // handshake_replies
                "vectors[]/name",
                "vectors[]/direction",
                "vectors[]/source",
                "vectors[]/package_hex",
                "vectors[]/request_package_hex",
                "vectors[]/body_json/**",
                "vectors[]/body_utf8",
                "vectors[]/then",
                // handshake_dictionary_and_versions
                "version_hashes[]/name",
                "version_hashes[]/input_utf8",
                "version_hashes[]/algorithm",
                "version_hashes[]/expected",
                "version_hashes[]/observed_pomelo",
                "version_hashes[]/observed_pinus",
            ],
        ],
    ),
    ("transcripts_pomelo.json", &[SERVER_CONFIG, TRANSCRIPT]),
    ("transcripts_pinus.json", &[SERVER_CONFIG, TRANSCRIPT]),
    (
        "browser_client.json",
        &[&[
            // browser::walk
            "client",
            "steps[]/step",
            "steps[]/note",
            "steps[]/sent_hex[]",
            "steps[]/handshake_json/**",
            "steps[]/received_hex",
            "steps[]/error",
            "steps[]/timers_scheduled_ms[]",
            "callbacks_received[]/id",
            "callbacks_received[]/body/**",
            "events_emitted[]/event",
            "events_emitted[]/arg/**",
            "localStorage_protos_after_handshake/**",
            "reconnect_with_cached_protos/sent_hex[]",
            "reconnect_with_cached_protos/handshake_json/**",
            "console_output[]",
        ]],
    ),
    (
        "manifest.json",
        &[&[
            // manifest_counts_match, manifest_extra_observations
            "files/*",
            "extra_observations[]/input",
            "extra_observations[]/terminated",
            "extra_observations[]/note",
        ]],
    ),
    (
        "protobuf.json",
        &[&[
            // protocol/tests/protobuf.rs
            "schema_json/**",
            "schema_parsed/**",
            "proto2_equivalent",
            "vectors[]/route",
            "vectors[]/message/**",
            "vectors[]/note",
            "vectors[]/quirk",
            "vectors[]/expected_hex",
            "vectors[]/expected_source",
            "vectors[]/decoded/**",
            "vectors[]/pinus_protobuf_hex",
            "vectors[]/browser_encoder_hex",
            "vectors[]/browser_encoder_matches",
            "vectors[]/server_decodes_browser_bytes_to/**",
            "vectors[]/browser_decoder_reads_expected_as/**",
            "vectors[]/protobufjs_decode/ok",
            "vectors[]/protobufjs_decode/equal_to_input",
            "vectors[]/protobufjs_decode/value/**",
            "vectors[]/protobufjs_decode/error",
            "vectors[]/protobufjs_decode",
            "vectors[]/js_observed/*/returns/**",
            "vectors[]/js_observed/*/throws",
            "vectors[]/js_observed/*/console[]",
            "encode_failures[]/route",
            "encode_failures[]/message/**",
            "encode_failures[]/note",
            "encode_failures[]/expected/error",
            "encode_failures[]/js_observed/*/returns/**",
            "encode_failures[]/js_observed/*/throws",
            "encode_failures[]/js_observed/*/console[]",
            "decode_malformed[]/route",
            "decode_malformed[]/input_hex",
            "decode_malformed[]/note",
            "decode_malformed[]/expected/ok",
            "decode_malformed[]/expected/error",
            "decode_malformed[]/expected/value/**",
            "decode_malformed[]/js_observed/*/returns/**",
            "decode_malformed[]/js_observed/*/throws",
            "decode_malformed[]/js_observed/*/console[]",
        ]],
    ),
    (
        // Another generator, no common header.
        "pinus-session.json",
        &[&[
            // pinus_session
            "description",
            "captured_at",
            "versions/**",
            "notes[]",
            "server_config/connector/connector",
            "server_config/connector/heartbeat",
            "server_config/connector/useDict",
            "server_config/connector/useProtobuf",
            "server_config/gate/connector",
            "server_config/gate/heartbeat",
            "server_config/gate/useDict",
            "server_config/gate/useProtobuf",
            // a TCP socket option: nothing of it is on the wire
            "server_config/connector/setNoDelay",
            "server_config/dictionary_json[]",
            "connector_handshake_response/**",
            "sessions[]/transport",
            "sessions[]/gate_answer/**",
            "sessions[]/frames[]/seq",
            "sessions[]/frames[]/t_ms",
            "sessions[]/frames[]/transport",
            "sessions[]/frames[]/conn",
            "sessions[]/frames[]/direction",
            "sessions[]/frames[]/hex",
            "sessions[]/frames[]/decoded[]/package",
            "sessions[]/frames[]/decoded[]/package_type",
            "sessions[]/frames[]/decoded[]/body_length",
            "sessions[]/frames[]/decoded[]/json/**",
            "sessions[]/frames[]/decoded[]/message/type",
            "sessions[]/frames[]/decoded[]/message/type_code",
            "sessions[]/frames[]/decoded[]/message/id",
            "sessions[]/frames[]/decoded[]/message/compress_route",
            "sessions[]/frames[]/decoded[]/message/route",
            "sessions[]/frames[]/decoded[]/message/route_name",
            "sessions[]/frames[]/decoded[]/message/response_to",
            "sessions[]/frames[]/decoded[]/message/body_json/**",
        ]],
    ),
];

/// Values of the fields that pick how a step is checked, per file pattern (`*` in a file
/// name: any text). A new value means a new kind of step: it must be walked before it is
/// listed here.
pub(super) const KINDS: &[(&str, &str, &[&str])] = &[
    (
        "transcripts_*.json",
        "scenarios[]/transport",
        super::replay::TRANSPORTS,
    ),
    (
        "transcripts_*.json",
        "scenarios[]/events[]/dir",
        super::replay::EVENT_DIRS,
    ),
    (
        "transcripts_*.json",
        "scenarios[]/events[]/ws_frame",
        super::replay::WS_FRAMES,
    ),
    ("handshake.json", "vectors[]/direction", super::DIRECTIONS),
    ("handshake.json", "vectors[]/then", super::HANDSHAKE_THEN),
    (
        "handshake.json",
        "version_hashes[]/algorithm",
        super::HASH_ALGORITHMS,
    ),
    ("wire.json", "frames[]/direction", super::DIRECTIONS),
    (
        "pinus-session.json",
        "sessions[]/frames[]/direction",
        super::DIRECTIONS,
    ),
    (
        "pinus-session.json",
        "sessions[]/frames[]/transport",
        super::replay::TRANSPORTS,
    ),
    ("protobuf.json", "vectors[]/quirk", super::PROTOBUF_QUIRKS),
];

/// `pattern` (`/`-separated, `*` one segment, `**` the rest) matches `path`.
fn matches(pattern: &str, path: &[String]) -> bool {
    let mut segments = pattern.split('/');
    let mut at = 0;
    loop {
        match segments.next() {
            None => return at == path.len(),
            Some("**") => return true,
            Some(seg) => {
                let Some(actual) = path.get(at) else {
                    return false;
                };
                if seg != "*" && seg != actual {
                    return false;
                }
                at += 1;
            }
        }
    }
}

/// Every leaf key path of `v` (arrays mark their key with `[]`; empty objects and arrays are
/// leaves), with the leaf value.
fn leaf_paths<'a>(v: &'a Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, x) in map {
                path.push(k.clone());
                walk_value(x, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), v)),
    }
}

fn walk_value<'a>(v: &'a Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
    match v {
        Value::Array(items) if !items.is_empty() => {
            if let Some(last) = path.last_mut() {
                last.push_str("[]");
            }
            for item in items {
                leaf_paths(item, path, out);
            }
            if let Some(last) = path.last_mut() {
                last.truncate(last.len() - 2);
            }
        }
        Value::Array(_) => {
            if let Some(last) = path.last_mut() {
                last.push_str("[]");
            }
            out.push((path.clone(), v));
            if let Some(last) = path.last_mut() {
                last.truncate(last.len() - 2);
            }
        }
        _ => leaf_paths(v, path, out),
    }
}

fn file_matches(pattern: &str, file: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            file.len() >= head.len() + tail.len() && file.starts_with(head) && file.ends_with(tail)
        }
        None => pattern == file,
    }
}

/// The problems of one vector file: key paths no test reads, kind values no test walks.
pub(super) fn uncovered(file_name: &str, file: &Value) -> Vec<String> {
    let Some((_, groups)) = FIELDS.iter().find(|(f, _)| *f == file_name) else {
        return vec![format!("{file_name}: no field list (add it to FIELDS)")];
    };
    let with_header = file_name != "pinus-session.json";
    let patterns: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.iter().copied())
        .chain(with_header.then_some(HEADER).into_iter().flatten().copied())
        .collect();
    let mut leaves = Vec::new();
    leaf_paths(file, &mut Vec::new(), &mut leaves);
    let mut problems: Vec<String> = Vec::new();
    for (path, value) in &leaves {
        // Prose for the reader (README: "a `note` or `quirk` says why"; scenario
        // descriptions, event labels), wherever it appears; it must be text.
        if path.last().is_some_and(|k| PROSE.contains(&k.as_str())) {
            if !value.is_string() {
                problems.push(format!("{file_name}: {} is not text", path.join("/")));
            }
            continue;
        }
        if !patterns.iter().any(|p| matches(p, path)) {
            let text = format!(
                "{file_name}: field {} is not walked by any test",
                path.join("/")
            );
            if !problems.contains(&text) {
                problems.push(text);
            }
            continue;
        }
        for (files, pattern, allowed) in KINDS {
            if file_matches(files, file_name) && matches(pattern, path) {
                let ok = value.is_null() || value.as_str().is_some_and(|s| allowed.contains(&s));
                if !ok {
                    let text = format!(
                        "{file_name}: {pattern} = {value} is a kind of step no test walks (known: {allowed:?})"
                    );
                    if !problems.contains(&text) {
                        problems.push(text);
                    }
                }
            }
        }
    }
    if with_header {
        if file.get("file").and_then(Value::as_str) != Some(file_name) {
            problems.push(format!("{file_name}: header `file` does not name the file"));
        }
        if !file.get("packages").is_some_and(Value::is_object) {
            problems.push(format!("{file_name}: header `packages` (versions) missing"));
        }
    }
    problems
}

#[test]
fn patterns_match_as_documented() {
    let p = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
    assert!(matches("a[]/b", &p("a[]/b")));
    assert!(!matches("a[]/b", &p("a[]/b/c")));
    assert!(matches("a[]/**", &p("a[]/b/c")));
    assert!(matches(
        "x/*/returns/**",
        &p("x/pomelo Package.decode/returns/type")
    ));
    assert!(matches("x/*", &p("x/list[]")));
    assert!(!matches("x/*", &p("x/a/b")));
    assert!(file_matches("transcripts_*.json", "transcripts_pinus.json"));
    assert!(!file_matches("transcripts_*.json", "wire.json"));
}
