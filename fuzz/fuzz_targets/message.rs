//! Fuzz the message decoding path; the body lives in `shaddock_protocol::fuzzing::message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shaddock_protocol::fuzzing::message(data);
});
