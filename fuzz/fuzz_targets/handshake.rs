//! Fuzz the handshake decoding path; the body lives in `shaddock_protocol::fuzzing::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shaddock_protocol::fuzzing::handshake(data);
});
