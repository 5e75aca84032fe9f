//! Fuzz the RPC frame decoder; the body lives in `shaddock_rpc::frame::fuzz_decode` (decode a
//! stream of frames, re-encode what decodes, check it decodes the same).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shaddock_rpc::frame::fuzz_decode(data);
});
