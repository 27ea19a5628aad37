//! The two-level cache across several daemons sharing one real Redis.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use shoal_client::proto::{ErrorCode, Source};
use shoal_tests::{test_config, Daemon, RedisServer};

async fn fleet(redis: &RedisServer, dir: &std::path::Path, n: usize) -> Result<Vec<Daemon>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Daemon::start_ready(test_config(redis, dir, &format!("d{i}"))).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn two_daemons_share_l2_and_each_fills_its_own_l1() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = fleet(&redis, dir.path(), 2).await?;
    let (a, b) = (d[0].client().await?, d[1].client().await?);
    a.set_raw(
        "user:1",
        Bytes::from_static(b"alice"),
        Some(Duration::from_secs(60)),
    )
    .await?;

    // B has never seen the key: first read from L2, then from its own L1.
    let r = b.get_full("user:1", false).await?;
    assert_eq!(
        (r.hit, r.from, r.value.as_deref()),
        (true, Some(Source::L2), Some(&b"alice"[..]))
    );
    let ttl = r.ttl_ms.expect("ttl");
    assert!(ttl > 50_000 && ttl <= 60_000, "ttl {ttl}");
    let r = b.get_full("user:1", false).await?;
    assert_eq!((r.hit, r.from), (true, Some(Source::L1)));
    // A wrote it, so A serves it from L1 at once.
    let r = a.get_full("user:1", false).await?;
    assert_eq!(r.from, Some(Source::L1));
    assert_eq!(d[1].stat("l2_hits"), 1);
    assert_eq!(d[1].stat("l1_hits"), 1);

    // A miss is a miss everywhere.
    let r = b.get_full("nobody", false).await?;
    assert!(!r.hit && r.value.is_none() && r.from.is_none());
    Ok(())
}

#[tokio::test]
async fn invalidation_from_one_daemon_evicts_the_others_l1() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = fleet(&redis, dir.path(), 3).await?;
    let clients = [
        d[0].client().await?,
        d[1].client().await?,
        d[2].client().await?,
    ];
    clients[0]
        .set_raw("row:7", Bytes::from_static(b"v1"), None)
        .await?;
    for c in &clients[1..] {
        c.get_full("row:7", false).await?; // fill L1
        assert_eq!(c.get_full("row:7", false).await?.from, Some(Source::L1));
    }
    let seq = clients[0].invalidate(&["row:7"]).await?;
    // The writer serves the new state at once.
    assert!(!clients[0].get_full("row:7", false).await?.hit);
    // Every other daemon, once it has applied the change, no longer serves it.
    for (i, daemon) in d.iter().enumerate().skip(1) {
        daemon.wait_applied(&seq, Duration::from_secs(5)).await?;
        assert!(
            !clients[i].get_full("row:7", false).await?.hit,
            "daemon {i} served a stale value"
        );
    }
    // Sets on two daemons: every daemon converges on the last one.
    clients[1].get_full("row:8", false).await?;
    clients[0]
        .set_raw("row:8", Bytes::from_static(b"new"), None)
        .await?;
    clients[2]
        .set_raw("row:8", Bytes::from_static(b"newer"), None)
        .await?;
    let last = redis.last_log_id().await?;
    for (i, daemon) in d.iter().enumerate() {
        daemon.wait_applied(&last, Duration::from_secs(5)).await?;
        assert_eq!(
            clients[i].get_raw("row:8").await?.as_deref(),
            Some(&b"newer"[..]),
            "daemon {i}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn mget_fetches_all_misses_in_one_round_trip() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = fleet(&redis, dir.path(), 2).await?;
    let (a, b) = (d[0].client().await?, d[1].client().await?);
    for i in 0..16 {
        a.set_raw(&format!("m{i}"), Bytes::from(format!("v{i}")), None)
            .await?;
    }
    b.get_full("m3", false).await?; // one key already in B's L1
    b.mget_raw(["warm-up"]).await?; // loads the script, so the count below is exact
    let mut conn = redis.conn().await?;
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let keys: Vec<String> = (0..16)
        .map(|i| format!("m{i}"))
        .chain(["absent".to_string()])
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let r = b.mget_full(&refs).await?;
    assert_eq!(r.len(), 17);
    for (i, g) in r.iter().take(16).enumerate() {
        assert_eq!(g.value.as_deref(), Some(format!("v{i}").as_bytes()));
        let want = if i == 3 { Source::L1 } else { Source::L2 };
        assert_eq!(g.from, Some(want), "key m{i}");
    }
    assert!(!r[16].hit);
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        evalsha_calls(&after) - evalsha_calls(&before),
        1,
        "one script call for all misses"
    );
    Ok(())
}

fn evalsha_calls(info: &str) -> u64 {
    let calls = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    calls("cmdstat_evalsha:") + calls("cmdstat_eval:")
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_redis_call() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = shoal_tests::proxy::FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "sf");
    config.redis.url = proxy.url();
    config.redis.timeout = Duration::from_secs(5);
    config.cache.heartbeat = Duration::from_secs(2);
    config.cache.max_staleness = Duration::from_secs(10);
    let d = Daemon::start_ready(config).await?;
    let mut conn = redis.conn().await?;
    redis::cmd("SET")
        .arg("shoal:c:hot")
        .arg("x")
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("PEXPIRE")
        .arg("shoal:c:hot")
        .arg(60_000)
        .query_async::<()>(&mut conn)
        .await?;
    let c = d.client().await?;
    c.get_raw("warm-up").await?; // loads the script, so the count below is exact
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    // Hold Redis's replies so every read is in flight at the same time.
    proxy.hold_replies();
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_raw("hot").await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.stat("singleflight_joined") < 49 {
        assert!(
            std::time::Instant::now() < deadline,
            "joined {}",
            d.stat("singleflight_joined")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.release();
    for r in reads {
        assert_eq!(r.await??.as_deref(), Some(&b"x"[..]));
    }
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        evalsha_calls(&after) - evalsha_calls(&before),
        1,
        "fifty callers, one Redis read"
    );
    assert_eq!(d.stat("l2_hits"), 50, "and fifty answers");
    Ok(())
}

#[tokio::test]
async fn l1_stays_within_its_byte_bound_under_large_values() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "bound");
    config.cache.l1_max_bytes = bytesize::ByteSize::mib(2);
    let d = Daemon::start_ready(config).await?;
    let c = d.client().await?;
    let value = Bytes::from(vec![1u8; 200 * 1024]); // under 1/8 of the bound: admitted
    for i in 0..100 {
        c.set_raw(&format!("big{i}"), value.clone(), None).await?;
        c.get_raw(&format!("big{i}")).await?;
    }
    let l1 = d.ctx.cache.l1();
    l1.run_pending_tasks().await;
    let used = l1.weighted_size();
    assert!(
        used <= 2 * 1024 * 1024 * 105 / 100,
        "L1 holds {used} bytes, bound is 2 MiB"
    );
    assert!(used > 1024 * 1024, "L1 should be mostly full, holds {used}");
    // A value larger than an eighth of the bound is served but never kept in L1.
    let huge = Bytes::from(vec![2u8; 600 * 1024]);
    c.set_raw("huge", huge.clone(), None).await?;
    assert_eq!(c.get_full("huge", false).await?.from, Some(Source::L2));
    assert_eq!(c.get_full("huge", false).await?.from, Some(Source::L2));
    Ok(())
}

#[tokio::test]
async fn redis_unreachable_fails_fast_with_unavailable_then_recovers() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "outage")).await?;
    let c = d.client().await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    redis.stop();
    d.wait_unready(Duration::from_secs(5)).await?;
    let started = std::time::Instant::now();
    let e = c.get_raw("k").await.expect_err("redis is down");
    let took = started.elapsed();
    assert!(e.is_retryable(), "{e}");
    assert!(
        matches!(
            e.code(),
            Some(ErrorCode::Unavailable) | Some(ErrorCode::Timeout)
        ),
        "{e}"
    );
    assert!(
        took < Duration::from_secs(2),
        "answered in {took:?}, must not hang"
    );
    // ping needs no Redis and still answers.
    c.ping().await?;
    redis.restart().await?;
    d.wait_ready(Duration::from_secs(10)).await?;
    // Redis came back empty: the daemon flushed, so the old value is gone.
    assert!(c.get_raw("k").await?.is_none());
    c.set_raw("k", Bytes::from_static(b"v2"), None).await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v2"[..]));
    assert!(d.stat("l1_flushes_redis_identity") >= 1);
    Ok(())
}

#[tokio::test]
async fn redis_url_with_an_acl_user_and_password() -> Result<()> {
    let redis = RedisServer::start_with_acl_user("shoal-app", "s3cret-pw").await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "acl")).await?;
    let c = d.client().await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v"[..]));
    // Without credentials Redis refuses: the daemon would answer errors, not data.
    let anon = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port()))?;
    let mut conn = anon.get_multiplexed_async_connection().await?;
    let refused: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg("shoal:c:k")
        .query_async(&mut conn)
        .await;
    assert!(refused.is_err());
    Ok(())
}
