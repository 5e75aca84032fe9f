//! Fuzz the hybrid port's TCP-or-WebSocket decision (`shaddock_connector::sniff`) over every
//! prefix of the input; the body is `sniff_body.rs`, shared with a stable test.
#![no_main]

include!("sniff_body.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sniff_body(data);
});
