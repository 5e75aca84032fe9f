//! Fuzz the pomelo-protobuf body decoder: the first byte picks a route of a fixed schema, the
//! rest is the body; whatever decodes must re-encode stably (see `fuzz_decode`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shaddock_protocol::protobuf::fuzz_decode(data);
});
