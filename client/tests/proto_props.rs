//! Property tests of the wire codec: any sequence of valid frames, split at random
//! byte boundaries, decodes to exactly the same requests; arbitrary bytes never
//! panic the decoder or the parser; every request survives encode -> parse.
#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shoal_client::proto::{
    encode_frame_header, parse_request, FrameCodec, FrameError, Limits, Op, ParseError, Request,
    RevokeTarget,
};

fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:_\\-é✓]{1,40}"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Ping),
        Just(Op::Stats),
        (1u64..5, proptest::option::of("[a-z/0-9.]{1,20}"))
            .prop_map(|(version, client)| Op::Hello { version, client }),
        (key(), any::<bool>()).prop_map(|(key, lease)| Op::CacheGet { key, lease }),
        proptest::collection::vec(key(), 1..8).prop_map(|keys| Op::CacheMget { keys }),
        (
            key(),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of(1u64..1_000_000),
            proptest::option::of("[a-zA-Z0-9_-]{1,30}"),
            proptest::collection::vec(key(), 0..3)
        )
            .prop_map(|(key, v, ttl_ms, lease, tags)| Op::CacheSet {
                key,
                value: Bytes::from(v),
                ttl_ms,
                lease,
                tags
            }),
        proptest::collection::vec(key(), 1..8).prop_map(|keys| Op::CacheInvalidate { keys }),
        proptest::collection::vec(key(), 1..4).prop_map(|tags| Op::CacheInvalidateTags { tags }),
        (key(), proptest::collection::vec(any::<u8>(), 0..50)).prop_map(|(user, d)| {
            Op::SessionCreate {
                user,
                data: Bytes::from(d),
                idle_ttl_ms: Some(1000),
                absolute_ttl_ms: None,
            }
        }),
        (key(), any::<bool>()).prop_map(|(token, touch)| Op::SessionGet { token, touch }),
        key().prop_map(|s| Op::SessionRevoke {
            target: RevokeTarget::SessionId(s)
        }),
        (key(), key(), 1u64..100).prop_map(|(policy, key, cost)| Op::RatelimitCheck {
            policy,
            key,
            cost
        }),
        (key(), key(), 1u64..100, 1u64..100_000).prop_map(|(policy, key, cost, max_wait_ms)| {
            Op::RatelimitReserve {
                policy,
                key,
                cost,
                max_wait_ms,
            }
        }),
        (key(), key(), proptest::option::of(1u64..100_000)).prop_map(|(policy, key, lease_ms)| {
            Op::RatelimitAcquireConcurrent {
                policy,
                key,
                lease_ms,
            }
        }),
        (key(), key(), key()).prop_map(|(policy, key, lease)| Op::RatelimitRelease {
            policy,
            key,
            lease
        }),
        (
            key(),
            key(),
            1u64..1_000_000,
            proptest::option::of(1u64..1_000_000)
        )
            .prop_map(|(policy, key, limit, burst)| Op::RatelimitSetOverride {
                policy,
                key,
                limit,
                burst,
            }),
        (key(), key()).prop_map(|(policy, key)| Op::RatelimitClearOverride { policy, key }),
        (key(), key(), 1..u64::MAX).prop_map(|(policy, key, points)| Op::RatelimitPenalty {
            policy,
            key,
            points
        }),
        (key(), key(), 1..u64::MAX).prop_map(|(policy, key, points)| Op::RatelimitReward {
            policy,
            key,
            points
        }),
        (
            key(),
            proptest::option::of("[a-z:]{0,10}"),
            proptest::option::of(1u64..10_000)
        )
            .prop_map(|(policy, prefix, max_keys)| Op::QuotaUsage {
                policy,
                prefix,
                max_keys,
            }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        any::<u64>(),
        proptest::option::of("00-[0-9a-f]{32}-[0-9a-f]{16}-01"),
        op(),
    )
        .prop_map(|(id, trace, op)| Request { id, trace, op })
}

fn framed(reqs: &[Request]) -> Vec<u8> {
    let mut wire = Vec::new();
    for r in reqs {
        let body = r.encode();
        wire.extend_from_slice(&encode_frame_header(body.len()));
        wire.extend_from_slice(&body);
    }
    wire
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_split_anywhere_decode_identically(
        reqs in proptest::collection::vec(request(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let wire = framed(&reqs);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&wire[w[0]..w[1]]);
            while let Some(body) = codec.decode_frame(&mut buf).expect("valid frames") {
                got.push(parse_request(&body, &Limits::default()).expect("valid request"));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = FrameCodec::new(256);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(body)) = codec.decode_frame(&mut buf) {
            let _ = parse_request(&body, &Limits::default());
        }
        // The parser alone, on raw bytes.
        let _ = parse_request(&bytes, &Limits::default());
    }

    #[test]
    fn mutated_valid_requests_are_either_parsed_or_classified(
        req in request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = req.encode();
        for (i, b) in flips {
            let at = i.index(body.len());
            body[at] = b;
        }
        match parse_request(&body, &Limits::default()) {
            Ok(_) | Err(ParseError::Unusable(_)) | Err(ParseError::Invalid { .. }) => {}
        }
    }

    #[test]
    fn announced_lengths_are_checked_before_buffering(len in 257u32..) {
        let codec = FrameCodec::new(256);
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        prop_assert_eq!(
            codec.decode_frame(&mut buf),
            Err(FrameError::TooLarge { len: len as usize, max: 256 })
        );
    }
}
