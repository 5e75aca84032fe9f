//! pomelo-protobuf compatible bodies: a JSON schema (the `protos` object of the handshake)
//! drives the encoding and decoding of `serde_json::Value` bodies.
