//! One test per coherence hole of issue 12, each a fault the old code served a
//! stale value through: a subscriber lost during a long reconnect backoff, a log
//! trimmed between two replay batches, a flight abandoned by its caller, data lost
//! while subscribed, a bogus id on the channel, and a mis-called script. Each test
//! reads as a user would after the bound Δ (`cache.max_staleness`) has passed.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use shoal_client::proto::Source;
use shoal_tests::proxy::FaultProxy;
use shoal_tests::{test_config, Daemon, RedisServer};

/// Waits until `t + Δ`: the guarantee is a time bound, so the test reads at it.
async fn wait_past_bound(d: &Daemon, since: Instant) {
    let bound = d.ctx.config.cache.max_staleness;
    tokio::time::sleep_until((since + bound).into()).await;
}

/// Polls `f` until it holds (for conditions no channel announces).
async fn until<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) -> Result<()> {
    let end = Instant::now() + within;
    while !f() {
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Hole 1: after a loss, L1 stayed trusted through the whole reconnect backoff
/// (hundreds of ms after earlier drops) and served values changed meanwhile.
#[tokio::test]
async fn a_lost_subscriber_untrusts_l1_at_once_not_after_its_backoff() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "b")).await?;
    // Earlier drops grow B's backoff (20, 40, 80, 160, 320 ms, then 640 ms).
    for _ in 0..5 {
        redis.kill_pubsub_clients().await?;
        b.wait_unready(Duration::from_secs(5)).await?;
        b.wait_ready(Duration::from_secs(10)).await?;
    }
    a.wait_ready(Duration::from_secs(10)).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("k", Bytes::from_static(b"v1"), None).await?;
    cb.get_raw("k").await?;
    assert_eq!(cb.get_full("k", false).await?.from, Some(Source::L1));

    let killed = Instant::now();
    redis.kill_pubsub_clients().await?;
    // B's subscriber hears nothing now; the change reaches B only by replay.
    ca.set_raw("k", Bytes::from_static(b"v2"), None).await?;
    let written = Instant::now();
    b.wait_unready(Duration::from_millis(200))
        .await
        .context("L1 must be untrusted as soon as the loss is seen, before the backoff")?;
    assert!(killed.elapsed() < Duration::from_millis(200));
    wait_past_bound(&b, written).await;
    let got = cb.get_raw("k").await?;
    assert_eq!(got.as_deref(), Some(&b"v2"[..]), "stale read after Δ");
    Ok(())
}

/// Hole 2: the log trimmed between two replay batches; `XRANGE (after +` returned
/// what survived and the daemon skipped the entries in between.
#[tokio::test]
async fn a_trim_between_replay_batches_flushes_instead_of_skipping() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let mut cfg = test_config(&redis, dir.path(), "b");
    cfg.redis.url = proxy.url();
    // Long enough that the held replay batch does not time out.
    cfg.redis.timeout = Duration::from_secs(10);
    let b = Daemon::start_ready(cfg).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("k", Bytes::from_static(b"v1"), None).await?;
    cb.get_raw("k").await?;
    assert_eq!(cb.get_full("k", false).await?.from, Some(Source::L1));

    proxy.block();
    b.wait_unready(Duration::from_secs(5)).await?;
    // While B is away: a first replay batch (1000 entries, the first one marked),
    // then the change of k, then more.
    ca.invalidate(["hole2-marker"]).await?;
    for i in 0..999 {
        ca.invalidate([format!("fill-a{i}").as_str()]).await?;
    }
    ca.set_raw("k", Bytes::from_static(b"v2"), None).await?;
    for i in 0..1000 {
        ca.invalidate([format!("fill-b{i}").as_str()]).await?;
    }
    // B's first batch is held in flight; the log is trimmed under it.
    proxy.hold_replies_matching(b"hole2-marker");
    proxy.unblock();
    proxy.wait_held(1, Duration::from_secs(10)).await?;
    let mut direct = redis.conn().await?;
    let _: u64 = redis::cmd("XTRIM")
        .arg("shoal:log")
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut direct)
        .await?;
    proxy.release();
    b.wait_ready(Duration::from_secs(10)).await?;
    let got = cb.get_raw("k").await?;
    assert_eq!(
        got.as_deref(),
        Some(&b"v2"[..]),
        "B skipped the trimmed entries and kept k's old value"
    );
    assert!(b.stat("l1_flushes_log_trimmed") >= 1);
    Ok(())
}

/// Hole 3: a read whose caller was dropped stayed in the single-flight table, and a
/// later caller joined it and received its long-outdated value.
#[tokio::test]
async fn a_later_caller_never_joins_an_abandoned_read() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(&redis, dir.path(), "b");
    cfg.redis.url = proxy.url();
    cfg.redis.timeout = Duration::from_secs(10);
    let b = Daemon::start_ready(cfg).await?;
    let mut direct = redis.conn().await?;
    // Written straight to L2 so B's L1 does not hold it: B must read it.
    let _: () = redis::cmd("SET")
        .arg("shoal:c:k")
        .arg("hole3-old-value")
        .arg("PX")
        .arg(300)
        .query_async(&mut direct)
        .await?;
    proxy.hold_replies_matching(b"hole3-old-value");
    let cache = b.ctx.cache.clone();
    let abandoned = tokio::spawn(async move { cache.get_l2("k", false).await });
    proxy.wait_held(1, Duration::from_secs(5)).await?;
    // The caller goes away (a cancelled request); its reply arrives later.
    abandoned.abort();
    let _ = abandoned.await;
    proxy.release();
    // The value expires in Redis; a new caller must not be handed the old read.
    let mut gone = false;
    for _ in 0..200 {
        let exists: u64 = redis::cmd("EXISTS")
            .arg("shoal:c:k")
            .query_async(&mut direct)
            .await?;
        if exists == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the value did not expire");
    let got = b.client().await?.get_full("k", false).await?;
    assert!(
        !got.hit,
        "a caller received a read abandoned by another: {:?}",
        got.value
    );
    Ok(())
}

/// Hole 4: `FLUSHALL` while subscribed went unnoticed; L1 kept serving what Redis
/// no longer had.
#[tokio::test]
async fn data_lost_while_subscribed_is_detected_within_the_bound() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "b")).await?;
    let cb = b.client().await?;
    cb.set_raw("k", Bytes::from_static(b"v1"), None).await?;
    assert_eq!(cb.get_full("k", false).await?.from, Some(Source::L1));
    let mut direct = redis.conn().await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut direct).await?;
    let lost = Instant::now();
    wait_past_bound(&b, lost).await;
    let got = cb.get_full("k", false).await?;
    assert!(
        !got.hit,
        "served {:?} from {:?} after Redis lost it",
        got.value, got.from
    );
    b.wait_ready(Duration::from_secs(10)).await?;
    assert!(b.stat("l1_flushes_redis_identity") >= 1);
    Ok(())
}

/// Hole 5: a message whose id lay beyond the log's end moved the applied position
/// past the log, so the next replay skipped real changes.
#[tokio::test]
async fn a_bogus_id_on_the_channel_is_treated_as_a_gap() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let mut cfg = test_config(&redis, dir.path(), "b");
    cfg.redis.url = proxy.url();
    let b = Daemon::start_ready(cfg).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("k", Bytes::from_static(b"v1"), None).await?;
    cb.get_raw("k").await?;
    assert_eq!(cb.get_full("k", false).await?.from, Some(Source::L1));

    let heard = b.stat("invalidation_messages");
    let mut direct = redis.conn().await?;
    let _: u64 = redis::cmd("PUBLISH")
        .arg("shoal:inv")
        .arg(r#"{"id":"99999999999999-0","node":"intruder","keys":["other"]}"#)
        .query_async(&mut direct)
        .await?;
    until(
        "B to hear the bogus message",
        Duration::from_secs(5),
        || b.stat("invalidation_messages") > heard,
    )
    .await?;
    // B misses a real change while away, then returns.
    proxy.block();
    b.wait_unready(Duration::from_secs(5)).await?;
    ca.set_raw("k", Bytes::from_static(b"v2"), None).await?;
    proxy.unblock();
    b.wait_ready(Duration::from_secs(10)).await?;
    let got = cb.get_raw("k").await?;
    assert_eq!(got.as_deref(), Some(&b"v2"[..]), "replay skipped a change");
    Ok(())
}

/// Hole 6: a documented script called with KEYS and ARGV that do not belong
/// together changed L2 while telling no daemon about the key it changed.
#[tokio::test]
async fn a_mis_called_script_fails_loudly_and_changes_nothing() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "b")).await?;
    let cb = b.client().await?;
    cb.set_raw("k1", Bytes::from_static(b"v1"), None).await?;
    let lua = |name: &str| {
        std::fs::read_to_string(format!("{}/../lua/{name}", env!("CARGO_MANIFEST_DIR")))
    };
    let mut direct = redis.conn().await?;
    // Value key of k1, but the message would name k2.
    let r: redis::RedisResult<String> = redis::cmd("EVAL")
        .arg(lua("cache_invalidate.lua")?)
        .arg(3)
        .arg("shoal:log")
        .arg("shoal:c:k1")
        .arg("shoal:l:k1")
        .arg(100_000)
        .arg("shoal:inv")
        .arg("writer")
        .arg("k2")
        .query_async(&mut direct)
        .await;
    let err = r.expect_err("mismatched invalidate must fail");
    assert!(err.to_string().contains("cache_invalidate"), "{err}");
    // A set under another prefix than its log and channel.
    let r: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
        .arg(lua("cache_set.lua")?)
        .arg(3)
        .arg("other:c:k1")
        .arg("other:l:k1")
        .arg("shoal:log")
        .arg("v9")
        .arg(60_000)
        .arg("")
        .arg(100_000)
        .arg("shoal:inv")
        .arg("writer")
        .arg("k1")
        .query_async(&mut direct)
        .await;
    let err = r.expect_err("mismatched set must fail");
    assert!(err.to_string().contains("cache_set"), "{err}");
    let v: Option<String> = redis::cmd("GET")
        .arg("shoal:c:k1")
        .query_async(&mut direct)
        .await?;
    assert_eq!(v.as_deref(), Some("v1"), "L2 changed by a failed script");
    let other: Option<String> = redis::cmd("GET")
        .arg("other:c:k1")
        .query_async(&mut direct)
        .await?;
    assert_eq!(other, None);
    assert_eq!(cb.get_raw("k1").await?.as_deref(), Some(&b"v1"[..]));
    Ok(())
}
