//! Body codecs: JSON (`shaddock_protocol::json`, JSON.stringify-exact writer and lenient
//! reader) against pomelo-protobuf (`shaddock_protocol::protobuf::Schema`) and a hand-written
//! prost type, for a typical chat message and a game-style move message.
//!
//! Run: `cargo bench -p shaddock-benches --bench body -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use shaddock_protocol::json;
use shaddock_protocol::protobuf::{Schema, decode_message, encode_message};

const SCHEMA: &str = r#"{
  "onChat": {"required string from": 1, "required string target": 2, "required string msg": 3,
             "optional uInt32 ts": 4},
  "message Vec": {"required float x": 1, "required float y": 2},
  "area.playerHandler.move": {"required uInt32 eid": 1, "required Vec to": 2,
                              "repeated sInt32 path": 3, "optional float speed": 4}
}"#;

fn chat() -> Value {
    json!({
        "from": "alice",
        "target": "*",
        "msg": "hello everyone, anyone up for a raid tonight? 🙂",
        "ts": 1_700_000_000u32
    })
}

fn game_move() -> Value {
    json!({
        "eid": 40_213,
        "to": {"x": 1024.5, "y": -37.25},
        "path": [12, -3, 40, 41, -7, 0, 5, 300],
        "speed": 3.5
    })
}

#[derive(Clone, PartialEq, prost::Message)]
struct Vec2 {
    #[prost(float, required, tag = "1")]
    x: f32,
    #[prost(float, required, tag = "2")]
    y: f32,
}

/// The move without its repeated numeric field (prost cannot read pomelo's count-prefixed
/// repeated numerics), so the typed comparison covers eid + to + speed.
#[derive(Clone, PartialEq, prost::Message)]
struct Move {
    #[prost(uint32, required, tag = "1")]
    eid: u32,
    #[prost(message, optional, tag = "2")]
    to: Option<Vec2>,
    #[prost(float, optional, tag = "4")]
    speed: Option<f32>,
}

fn bench_body(c: &mut Criterion, name: &str, route: &str, body: &Value, schema: &Schema) {
    let json_bytes = json::to_vec(body);
    let pb_bytes = schema.encode(route, body).expect("bench body encodes");
    let mut group = c.benchmark_group(format!("body/{name}"));

    group.throughput(Throughput::Bytes(json_bytes.len() as u64));
    group.bench_function(format!("json encode ({} B)", json_bytes.len()), |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            json::write(black_box(body), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function(format!("json decode ({} B)", json_bytes.len()), |b| {
        b.iter(|| json::from_slice(black_box(&json_bytes)).expect("valid JSON"))
    });

    group.throughput(Throughput::Bytes(pb_bytes.len() as u64));
    group.bench_function(format!("protobuf encode ({} B)", pb_bytes.len()), |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            schema
                .encode_into(route, black_box(body), &mut out)
                .expect("encodes");
            black_box(out.len())
        })
    });
    group.bench_function(format!("protobuf decode ({} B)", pb_bytes.len()), |b| {
        b.iter(|| schema.decode(route, black_box(&pb_bytes)).expect("decodes"))
    });
    group.finish();
}

fn bodies(c: &mut Criterion) {
    let schema = Schema::from_file_json(&serde_json::from_str(SCHEMA).expect("schema JSON"))
        .expect("schema loads");
    bench_body(c, "chat", "onChat", &chat(), &schema);
    bench_body(c, "move", "area.playerHandler.move", &game_move(), &schema);

    let typed = Move {
        eid: 40_213,
        to: Some(Vec2 {
            x: 1024.5,
            y: -37.25,
        }),
        speed: Some(3.5),
    };
    let mut bytes = BytesMut::new();
    encode_message(&typed, &mut bytes).expect("prost encodes");
    let mut group = c.benchmark_group("body/move-typed");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function(format!("prost encode ({} B)", bytes.len()), |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            encode_message(black_box(&typed), &mut out).expect("encodes");
            black_box(out.len())
        })
    });
    group.bench_function(format!("prost decode ({} B)", bytes.len()), |b| {
        b.iter(|| decode_message::<Move>(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
