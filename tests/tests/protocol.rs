//! Every rule of PROTOCOL.md, spoken byte by byte through a raw socket against a
//! real daemon and a real Redis, including each kind of bad input. After each bad
//! peer, another connection must still be served and its data intact.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Result;
use rmpv::Value;
use shoal_tests::raw::{err_code, field, frame, id_of, req, RawConn};
use shoal_tests::{test_config, Daemon, RedisServer};

struct Setup {
    _redis: RedisServer,
    _dir: tempfile::TempDir,
    daemon: Daemon,
}

async fn setup() -> Result<Setup> {
    setup_with(|_| {}).await
}

async fn setup_with(f: impl FnOnce(&mut shoald::Config)) -> Result<Setup> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "p1");
    f(&mut config);
    let daemon = Daemon::start_ready(config).await?;
    Ok(Setup {
        _redis: redis,
        _dir: dir,
        daemon,
    })
}

fn bin(b: &[u8]) -> Value {
    Value::Binary(b.to_vec())
}

/// Another, well-behaved connection can still write and read.
async fn still_serves(s: &Setup) -> Result<()> {
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    c.send(&req(&[
        ("id", 1.into()),
        ("op", "cache.set".into()),
        ("key", "canary".into()),
        ("value", bin(b"alive")),
    ]))
    .await?;
    let r = c.recv().await?;
    assert!(field(&r, "ok").is_some(), "set failed: {r}");
    c.send(&req(&[
        ("id", 2.into()),
        ("op", "cache.get".into()),
        ("key", "canary".into()),
    ]))
    .await?;
    let r = c.recv().await?;
    let ok = field(&r, "ok").expect("get ok");
    assert_eq!(
        field(ok, "value").and_then(|v| v.as_slice()),
        Some(&b"alive"[..])
    );
    Ok(())
}

#[tokio::test]
async fn hello_reply_carries_version_node_and_max_frame() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::connect(&s.daemon.socket).await?;
    c.send(&req(&[
        ("op", "hello".into()),
        ("id", 0.into()),
        ("version", 1.into()),
        ("client", "raw-test/1".into()),
    ]))
    .await?;
    let r = c.recv().await?;
    assert_eq!(id_of(&r), Some(0));
    let ok = field(&r, "ok").expect("ok");
    assert_eq!(field(ok, "version").and_then(Value::as_u64), Some(1));
    assert_eq!(field(ok, "node").and_then(Value::as_str), Some("p1"));
    assert_eq!(
        field(ok, "max_frame").and_then(Value::as_u64),
        Some(16 * 1024 * 1024)
    );
    assert!(field(ok, "server")
        .and_then(Value::as_str)
        .unwrap_or("")
        .starts_with("shoald/"));
    // ping answers "pong"; a second hello is refused but the connection stays.
    c.send(&req(&[("id", 5.into()), ("op", "ping".into())]))
        .await?;
    let r = c.recv().await?;
    assert_eq!(field(&r, "ok").and_then(Value::as_str), Some("pong"));
    c.send(&req(&[
        ("op", "hello".into()),
        ("id", 6.into()),
        ("version", 1.into()),
    ]))
    .await?;
    let r = c.recv().await?;
    assert_eq!(
        (id_of(&r), err_code(&r).as_deref()),
        (Some(6), Some("bad_request"))
    );
    c.send(&req(&[("id", 7.into()), ("op", "ping".into())]))
        .await?;
    assert_eq!(
        field(&c.recv().await?, "ok").and_then(Value::as_str),
        Some("pong")
    );
    Ok(())
}

#[tokio::test]
async fn op_before_hello_is_refused_and_closed() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::connect(&s.daemon.socket).await?;
    c.send(&req(&[("id", 42.into()), ("op", "ping".into())]))
        .await?;
    let r = c.recv().await?;
    assert_eq!(
        (id_of(&r), err_code(&r).as_deref()),
        (Some(42), Some("bad_request"))
    );
    assert!(c.closed().await);
    still_serves(&s).await
}

#[tokio::test]
async fn unsupported_version_is_refused_and_closed() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::connect(&s.daemon.socket).await?;
    c.send(&req(&[
        ("op", "hello".into()),
        ("id", 0.into()),
        ("version", 2.into()),
    ]))
    .await?;
    let r = c.recv().await?;
    assert_eq!(err_code(&r).as_deref(), Some("unsupported_version"));
    assert!(c.closed().await);
    still_serves(&s).await
}

#[tokio::test]
async fn zero_length_frame_is_bad_request_id_0_and_closed() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    c.send_bytes(&[0, 0, 0, 0]).await?;
    let r = c.recv().await?;
    assert_eq!(
        (id_of(&r), err_code(&r).as_deref()),
        (Some(0), Some("bad_request"))
    );
    assert!(c.closed().await);
    still_serves(&s).await
}

#[tokio::test]
async fn oversized_length_is_frame_too_large_and_closed_without_buffering() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    // Announce 4 GiB and send nothing more: the answer must come at once.
    c.send_bytes(&[0xff, 0xff, 0xff, 0xff]).await?;
    let r = c.recv().await?;
    assert_eq!(
        (id_of(&r), err_code(&r).as_deref()),
        (Some(0), Some("frame_too_large"))
    );
    assert!(c.closed().await);
    still_serves(&s).await
}

#[tokio::test]
async fn unusable_frames_are_bad_request_id_0_and_closed() -> Result<()> {
    let s = setup().await?;
    let garbage: Vec<Vec<u8>> = vec![
        frame(&[0xc1, 0xc1, 0xc1]), // not MessagePack
        frame(&shoal_tests::raw::body(&Value::from("a string"))), // not a map
        frame(&shoal_tests::raw::body(&req(&[("op", "ping".into())]))), // no id
        frame(&shoal_tests::raw::body(&req(&[
            ("id", (-3).into()),
            ("op", "ping".into()),
        ]))),
        frame(&shoal_tests::raw::body(&req(&[
            ("id", "1".into()),
            ("op", "ping".into()),
        ]))),
        frame(b"\x81\xa2id"), // truncated map
    ];
    for g in garbage {
        let mut c = RawConn::greeted(&s.daemon.socket).await?;
        c.send_bytes(&g).await?;
        let r = c.recv().await?;
        assert_eq!(
            (id_of(&r), err_code(&r).as_deref()),
            (Some(0), Some("bad_request")),
            "{g:?}"
        );
        assert!(c.closed().await, "connection must close after {g:?}");
    }
    still_serves(&s).await
}

#[tokio::test]
async fn wrong_requests_get_an_error_for_their_id_and_keep_the_connection() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    let long_key = "k".repeat(5 * 1024);
    let cases: Vec<(Value, &str)> = vec![
        (
            req(&[("id", 10.into()), ("op", "cache.teleport".into())]),
            "unknown_op",
        ),
        (req(&[("id", 11.into())]), "bad_request"), // op missing
        (req(&[("id", 12.into()), ("op", 5.into())]), "bad_request"),
        (
            req(&[("id", 13.into()), ("op", "cache.get".into())]),
            "bad_request",
        ), // key missing
        (
            req(&[
                ("id", 14.into()),
                ("op", "cache.get".into()),
                ("key", 9.into()),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 15.into()),
                ("op", "cache.set".into()),
                ("key", "k".into()),
                ("value", "str".into()),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 16.into()),
                ("op", "cache.set".into()),
                ("key", "k".into()),
                ("value", bin(b"v")),
                ("ttl_ms", 0.into()),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 17.into()),
                ("op", "cache.get".into()),
                ("key", long_key.as_str().into()),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 18.into()),
                ("op", "cache.mget".into()),
                ("keys", "notarray".into()),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 19.into()),
                ("op", "cache.invalidate".into()),
                ("keys", Value::Array(vec![])),
            ]),
            "bad_request",
        ),
        (
            req(&[
                ("id", 20.into()),
                ("op", "cache.get".into()),
                ("key", "k".into()),
                ("lease", "yes".into()),
            ]),
            "bad_request",
        ),
    ];
    for (r, code) in cases {
        let want = id_of(&r);
        c.send(&r).await?;
        let resp = c.recv().await?;
        assert_eq!(id_of(&resp), want, "{resp}");
        assert_eq!(
            err_code(&resp).as_deref(),
            Some(code),
            "request {r} got {resp}"
        );
        let msg = field(field(&resp, "err").expect("err"), "msg").and_then(Value::as_str);
        assert!(msg.is_some_and(|m| !m.is_empty()), "errors carry a message");
    }
    c.send(&req(&[("id", 99.into()), ("op", "ping".into())]))
        .await?;
    assert_eq!(
        field(&c.recv().await?, "ok").and_then(Value::as_str),
        Some("pong")
    );
    Ok(())
}

#[tokio::test]
async fn peer_disconnecting_mid_frame_harms_nobody() -> Result<()> {
    let s = setup().await?;
    still_serves(&s).await?;
    for cut in [1usize, 3, 4, 10] {
        let mut c = RawConn::greeted(&s.daemon.socket).await?;
        let f = frame(&shoal_tests::raw::body(&req(&[
            ("id", 1.into()),
            ("op", "cache.set".into()),
            ("key", "canary".into()),
            ("value", bin(b"overwritten by a half frame")),
        ])));
        c.send_bytes(&f[..cut]).await?;
        drop(c);
    }
    // The half-sent writes never happened, and the daemon still serves.
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    c.send(&req(&[
        ("id", 2.into()),
        ("op", "cache.get".into()),
        ("key", "canary".into()),
    ]))
    .await?;
    let r = c.recv().await?;
    let ok = field(&r, "ok").expect("ok");
    assert_eq!(
        field(ok, "value").and_then(|v| v.as_slice()),
        Some(&b"alive"[..])
    );
    Ok(())
}

#[tokio::test]
async fn one_mebibyte_value_roundtrips() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.send(&req(&[
        ("id", 1.into()),
        ("op", "cache.set".into()),
        ("key", "big".into()),
        ("value", bin(&big)),
    ]))
    .await?;
    assert!(field(&c.recv().await?, "ok").is_some());
    c.send(&req(&[
        ("id", 2.into()),
        ("op", "cache.get".into()),
        ("key", "big".into()),
    ]))
    .await?;
    let r = c.recv().await?;
    let ok = field(&r, "ok").expect("ok");
    assert_eq!(
        field(ok, "value").and_then(|v| v.as_slice()),
        Some(&big[..])
    );
    still_serves(&s).await
}

#[tokio::test]
async fn result_larger_than_max_frame_is_refused_for_its_id_only() -> Result<()> {
    let s = setup_with(|c| c.socket.max_frame = bytesize_kib(64)).await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    let v = vec![7u8; 40 * 1024];
    c.send(&req(&[
        ("id", 1.into()),
        ("op", "cache.set".into()),
        ("key", "a".into()),
        ("value", bin(&v)),
    ]))
    .await?;
    assert!(field(&c.recv().await?, "ok").is_some());
    // Two copies of a 40 KiB value do not fit in a 64 KiB frame.
    c.send(&req(&[
        ("id", 2.into()),
        ("op", "cache.mget".into()),
        ("keys", Value::Array(vec!["a".into(), "a".into()])),
    ]))
    .await?;
    let r = c.recv().await?;
    assert_eq!(
        (id_of(&r), err_code(&r).as_deref()),
        (Some(2), Some("frame_too_large"))
    );
    c.send(&req(&[("id", 3.into()), ("op", "ping".into())]))
        .await?;
    assert_eq!(
        field(&c.recv().await?, "ok").and_then(Value::as_str),
        Some("pong")
    );
    Ok(())
}

fn bytesize_kib(n: u64) -> bytesize::ByteSize {
    bytesize::ByteSize::kib(n)
}

#[tokio::test]
async fn pipelined_requests_are_matched_by_id() -> Result<()> {
    let s = setup().await?;
    let mut c = RawConn::greeted(&s.daemon.socket).await?;
    let mut batch = Vec::new();
    for i in 1..=200u64 {
        let r = if i % 2 == 0 {
            req(&[("id", i.into()), ("op", "ping".into())])
        } else {
            req(&[
                ("id", i.into()),
                ("op", "cache.set".into()),
                ("key", format!("k{i}").into()),
                ("value", bin(&i.to_be_bytes())),
            ])
        };
        batch.extend(frame(&shoal_tests::raw::body(&r)));
    }
    c.send_bytes(&batch).await?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = c.recv().await?;
        assert!(field(&r, "ok").is_some(), "{r}");
        assert!(seen.insert(id_of(&r).expect("id")));
    }
    assert_eq!(seen.len(), 200);
    Ok(())
}

#[tokio::test]
async fn a_slow_redis_call_does_not_block_an_l1_hit_on_the_same_connection() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = shoal_tests::proxy::FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "slow");
    config.redis.url = proxy.url();
    config.redis.timeout = Duration::from_secs(5);
    config.cache.heartbeat = Duration::from_secs(2);
    config.cache.max_staleness = Duration::from_secs(10);
    let daemon = Daemon::start_ready(config).await?;
    let mut c = RawConn::greeted(&daemon.socket).await?;
    // "hot" is in this daemon's L1 after its own set; "cold" only in Redis.
    c.send(&req(&[
        ("id", 1.into()),
        ("op", "cache.set".into()),
        ("key", "hot".into()),
        ("value", bin(b"h")),
    ]))
    .await?;
    assert!(field(&c.recv().await?, "ok").is_some());
    let mut direct = redis.conn().await?;
    redis::cmd("SET")
        .arg("shoal:c:cold")
        .arg("c")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut direct)
        .await?;
    proxy.hold_replies();
    c.send(&req(&[
        ("id", 2.into()),
        ("op", "cache.get".into()),
        ("key", "cold".into()),
    ]))
    .await?;
    c.send(&req(&[
        ("id", 3.into()),
        ("op", "cache.get".into()),
        ("key", "hot".into()),
    ]))
    .await?;
    let first = c.recv().await?;
    assert_eq!(
        id_of(&first),
        Some(3),
        "the L1 hit must not wait for Redis: {first}"
    );
    let ok = field(&first, "ok").expect("ok");
    assert_eq!(field(ok, "from").and_then(Value::as_str), Some("l1"));
    proxy.release();
    let second = c.recv().await?;
    assert_eq!(id_of(&second), Some(2));
    let ok = field(&second, "ok").expect("ok");
    assert_eq!(field(ok, "from").and_then(Value::as_str), Some("l2"));
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_others_are_not() -> Result<()> {
    let s = setup_with(|c| c.socket.idle_timeout = Duration::from_millis(300)).await?;
    let mut idle = RawConn::greeted(&s.daemon.socket).await?;
    let mut busy = RawConn::greeted(&s.daemon.socket).await?;
    let started = std::time::Instant::now();
    // The busy one keeps talking; the idle one says nothing and is closed.
    let keep_busy = async {
        for i in 0..12u64 {
            busy.send(&req(&[("id", i.into()), ("op", "ping".into())]))
                .await?;
            assert!(field(&busy.recv().await?, "ok").is_some());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (closed, busy_ok) = tokio::join!(idle.closed(), keep_busy);
    busy_ok?;
    assert!(closed, "the idle connection must be closed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    busy.send(&req(&[("id", 99.into()), ("op", "ping".into())]))
        .await?;
    assert!(
        field(&busy.recv().await?, "ok").is_some(),
        "the busy one stays open"
    );
    Ok(())
}
