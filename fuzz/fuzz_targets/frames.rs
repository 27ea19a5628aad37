//! libFuzzer target: arbitrary bytes as a socket stream into the frame decoder,
//! the request parser and the response decoder. The body is shared with the stable
//! test `client/tests/fuzz_stable.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_client::proto::fuzz::fuzz_frames(data);
});
