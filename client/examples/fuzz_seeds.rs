//! Writes the fuzz seed corpus (`fuzz/corpus/frames/`): one valid frame stream per
//! op, so the fuzzer starts from requests the parser accepts.
//! Run: `cargo run -p shoal-client --example fuzz_seeds -- fuzz/corpus/frames`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use shoal_client::proto::{encode_frame_header, Op, Request, RevokeTarget};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/frames".into());
    std::fs::create_dir_all(&dir)?;
    let ops = vec![
        Op::Hello {
            version: 1,
            client: Some("seed/1".into()),
        },
        Op::Ping,
        Op::Stats,
        Op::CacheGet {
            key: "user:1".into(),
            lease: true,
        },
        Op::CacheMget {
            keys: vec!["a".into(), "b".into()],
        },
        Op::CacheSet {
            key: "user:1".into(),
            value: Bytes::from_static(b"\x82\xa4name\xa5alice\xa3age\x1f"),
            ttl_ms: Some(60_000),
            lease: Some("tok".into()),
            tags: vec!["t1".into()],
        },
        Op::CacheInvalidate {
            keys: vec!["user:1".into()],
        },
        Op::CacheInvalidateTags {
            tags: vec!["t1".into()],
        },
        Op::SessionCreate {
            user: "u".into(),
            data: Bytes::from_static(b"d"),
            idle_ttl_ms: Some(1000),
            absolute_ttl_ms: Some(5000),
        },
        Op::SessionGet {
            token: "x".repeat(43),
            touch: false,
        },
        Op::SessionRevoke {
            target: RevokeTarget::SessionId("sid".into()),
        },
        Op::RatelimitCheck {
            policy: "api".into(),
            key: "k".into(),
            cost: 2,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let name = op.name().replace('.', "_");
        let body = Request {
            id: i as u64 + 1,
            trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            op,
        }
        .encode();
        let mut f = encode_frame_header(body.len()).to_vec();
        f.extend_from_slice(&body);
        std::fs::write(format!("{dir}/{i:02}_{name}"), &f)?;
    }
    Ok(())
}
