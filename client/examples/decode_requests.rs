//! Decodes typical request frames N times each, for counting the instructions a
//! request decode costs (`valgrind --tool=callgrind`; run with two N and divide
//! the difference, so start-up cancels out).
//!
//!     cargo build --release -p shoal-client --example decode_requests
//!     valgrind --tool=callgrind target/release/examples/decode_requests 10000

use bytes::Bytes;
use shoal_client::proto::{parse_request, Limits, Op, Request};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let ops = [
        Op::CacheGet {
            key: "user:42:profile".into(),
            lease: false,
        },
        Op::CacheSet {
            key: "user:42:profile".into(),
            value: Bytes::from(vec![7u8; 100]),
            ttl_ms: Some(60_000),
            lease: None,
            tags: vec!["user:42".into()],
        },
        Op::RatelimitCheck {
            policy: "api".into(),
            key: "tenant:9".into(),
            cost: 1,
        },
        Op::CacheMget {
            keys: (0..10).map(|i| format!("item:{i}")).collect(),
        },
    ];
    let frames: Vec<Vec<u8>> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            Request {
                id: i as u64 + 1,
                trace: None,
                op,
            }
            .encode()
        })
        .collect();
    let limits = Limits::default();
    let mut ok = 0usize;
    for _ in 0..n {
        for f in &frames {
            if parse_request(std::hint::black_box(f), &limits).is_ok() {
                ok += 1;
            }
        }
    }
    assert_eq!(ok, n * frames.len());
    println!("decoded {ok} requests ({} kinds)", frames.len());
}
