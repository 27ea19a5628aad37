//! The fuzz target body, shared by the cargo-fuzz target (`fuzz/`, libFuzzer, needs
//! nightly) and a stable test that runs it over the seed corpus plus a bounded
//! randomized run, so CI exercises the same code without nightly.
//!
//! Oracles beyond "does not panic": a request that parses re-encodes to a request
//! that parses to the same value, and the frame decoder never returns a body longer
//! than its limit.

use bytes::BytesMut;

use super::{decode_response, decode_response_id, parse_request, FrameCodec, Limits};

/// Largest frame the fuzz target accepts (small, so the fuzzer explores the limit).
pub const FUZZ_MAX_FRAME: usize = 64 * 1024;

/// Feeds `data` as a byte stream to the frame decoder and every decoded body to the
/// request parser and the response decoder. Panics only on a broken invariant.
pub fn fuzz_frames(data: &[u8]) {
    let codec = FrameCodec::new(FUZZ_MAX_FRAME);
    // Split the input in two reads at a data-dependent point, as a socket would.
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut buf = BytesMut::new();
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        while let Ok(Some(body)) = codec.decode_frame(&mut buf) {
            assert!(
                body.len() <= FUZZ_MAX_FRAME,
                "decoder returned an oversized body"
            );
            fuzz_body(&body);
        }
    }
    // The whole input as one body, too.
    fuzz_body(data);
}

/// One frame body through every decoder.
pub fn fuzz_body(body: &[u8]) {
    let limits = Limits::default();
    if let Ok(req) = parse_request(body, &limits) {
        let again = parse_request(&req.encode(), &limits);
        assert_eq!(again.as_ref(), Ok(&req), "re-encoding changed the request");
    }
    let _ = decode_response_id(body);
    let _ = decode_response::<rmpv::Value>(body);
}
