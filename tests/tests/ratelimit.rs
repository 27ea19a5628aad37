//! Rate limits and quotas end to end: three in-process daemons against one real
//! redis-server, through the real client.
//!
//! Time: Redis TIME cannot be paused, so most tests freeze the scripts' clock with
//! the test-only `RateLimits::set_test_now` (feature `test-clock`) and move it by
//! hand; rollover, refill and retry-after are then exact to the millisecond. A few
//! tests run on Redis TIME on purpose (exactness with real time, `acquire`
//! spacing) and assert only lower bounds there, never on sleeps as synchronisation.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmpv::Value;
use shoal_client::proto::ErrorCode;
use shoal_client::ratelimit::{Acquired, RateLimitLayer};
use shoal_client::{Client, Decision};
use shoal_tests::raw::{err_code, field, req, RawConn};
use shoal_tests::shoald::config::{Algorithm, FailMode, PolicyConfig, PolicyOverride};
use shoal_tests::{hammer, test_config, Daemon, RedisServer};

/// A test epoch, a multiple of every window used here.
const T0: u64 = 1_800_000_000_000;

use shoal_tests::policy as pol;

fn with_burst(mut p: PolicyConfig, burst: u64) -> PolicyConfig {
    p.burst = Some(burst);
    p
}

fn failing(mut p: PolicyConfig, mode: FailMode, expected_nodes: u64) -> PolicyConfig {
    p.on_unavailable = mode;
    p.expected_nodes = expected_nodes;
    p
}

struct Fleet {
    daemons: Vec<Daemon>,
    clients: Vec<Client>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(
        redis: &RedisServer,
        policies: &[(&str, PolicyConfig)],
        n: usize,
    ) -> Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let mut daemons = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            let mut c = test_config(redis, dir.path(), &format!("d{i}"));
            for (name, p) in policies {
                c.ratelimit.policies.insert(name.to_string(), p.clone());
            }
            c.ratelimit.override_refresh = Duration::from_millis(100);
            let d = Daemon::start_ready(c).await?;
            clients.push(d.client().await?);
            daemons.push(d);
        }
        Ok(Fleet {
            daemons,
            clients,
            _dir: dir,
        })
    }

    /// Freezes every daemon's rate-limit clock at `ms` (None: back to Redis TIME).
    fn set_now(&self, ms: Option<u64>) {
        for d in &self.daemons {
            d.ctx.ratelimits.set_test_now(ms);
        }
    }

    fn c(&self, i: usize) -> &Client {
        &self.clients[i % self.clients.len()]
    }

    /// A `ratelimit_*` counter of daemon `i`.
    fn rl(&self, i: usize, name: &str) -> u64 {
        let mut m = BTreeMap::new();
        self.daemons[i].ctx.ratelimits.stats_into(&mut m);
        m.get(name).copied().unwrap_or(0)
    }
}

fn code(e: &shoal_client::Error) -> Option<ErrorCode> {
    e.code()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency_across_three_daemons() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("fw", pol(Algorithm::FixedWindow, 50, 60_000)),
        ("sl", pol(Algorithm::SlidingLog, 50, 60_000)),
        ("sc", pol(Algorithm::SlidingCounter, 50, 60_000)),
        ("tb", pol(Algorithm::TokenBucket, 50, 60_000)),
        ("gcra", pol(Algorithm::Gcra, 50, 60_000)),
        // Real Redis TIME below: windows long enough that nothing refills.
        ("sl_real", pol(Algorithm::SlidingLog, 50, 3_600_000)),
        ("tb_real", pol(Algorithm::TokenBucket, 50, 3_600_000)),
    ];
    let f = Fleet::start(&redis, &policies, 3).await?;

    f.set_now(Some(T0 + 1_234));
    for name in ["fw", "sl", "sc", "tb", "gcra"] {
        let allowed = hammer(&f.clients, name, "hot", 24, 10).await?;
        assert_eq!(allowed, 50, "{name}: 240 attempts from 3 daemons");
        let p = f.c(0).peek(name, "hot").await?;
        assert!(!p.allowed && p.remaining == 0, "{name}: {p:?}");
    }
    // Denials were answered from the deny caches too, and that changed nothing.
    let local: u64 = (0..3).map(|i| f.rl(i, "ratelimit_denied_local")).sum();
    assert!(local > 0, "repeated denials are answered locally");

    f.set_now(None);
    for name in ["sl_real", "tb_real"] {
        let allowed = hammer(&f.clients, name, "hot", 24, 10).await?;
        assert_eq!(allowed, 50, "{name} on Redis TIME");
    }
    Ok(())
}

/// Waits exactly `retry_after` after a denial: one ms earlier is denied, at it
/// the request passes (retry-after rounds up, never down).
async fn retry_after_is_exact(f: &Fleet, policy: &str, key: &str, now: u64) -> Result<u64> {
    f.set_now(Some(now));
    let d = f.c(1).check(policy, key).await?;
    assert!(!d.allowed, "{policy}: expected a denial at {now}");
    let r = ms(d.retry_after);
    assert!(r > 0);
    // Ask another daemon (no deny cache there) one ms early: still denied.
    f.set_now(Some(now + r - 1));
    let early = f.c(2).check(policy, key).await?;
    assert!(!early.allowed, "{policy}: allowed 1 ms before retry_after");
    assert_eq!(ms(early.retry_after), 1, "{policy}");
    f.set_now(Some(now + r));
    assert!(
        f.c(1).check(policy, key).await?.allowed,
        "{policy}: at retry_after"
    );
    Ok(now + r)
}

#[tokio::test]
async fn rollover_and_refill_on_the_test_clock() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("fw", pol(Algorithm::FixedWindow, 3, 10_000)),
        ("sl", pol(Algorithm::SlidingLog, 3, 10_000)),
        ("tb", with_burst(pol(Algorithm::TokenBucket, 10, 1_000), 5)),
        ("gcra", with_burst(pol(Algorithm::Gcra, 10, 1_000), 5)),
    ];
    let f = Fleet::start(&redis, &policies, 3).await?;

    // Fixed window: 3 per aligned 10 s window.
    f.set_now(Some(T0 + 1_000));
    for left in [2, 1, 0] {
        let d = f.c(0).check("fw", "k").await?;
        assert!(d.allowed);
        assert_eq!((d.remaining, ms(d.reset_after)), (left, 9_000));
    }
    let d = f.c(0).check("fw", "k").await?;
    assert!(!d.allowed);
    assert_eq!(
        (ms(d.retry_after), ms(d.reset_after), d.remaining),
        (9_000, 9_000, 0)
    );
    // reset_after is stable across consecutive denials (it only counts down).
    let again = f.c(0).check("fw", "k").await?;
    assert_eq!(ms(again.reset_after), 9_000);
    f.set_now(Some(T0 + 9_999));
    assert_eq!(ms(f.c(0).check("fw", "k").await?.retry_after), 1);
    f.set_now(Some(T0 + 10_000));
    let d = f.c(0).check("fw", "k").await?;
    assert!(d.allowed, "a new window");
    assert_eq!(d.remaining, 2);
    f.set_now(Some(T0 + 10_000));
    f.c(0).check("fw", "k").await?;
    f.c(0).check("fw", "k").await?;
    retry_after_is_exact(&f, "fw", "k", T0 + 15_000).await?;

    // Sliding log: exact sliding window.
    for (t, i) in [(0, 0), (2_000, 1), (4_000, 2)] {
        f.set_now(Some(T0 + t));
        assert!(f.c(i).check("sl", "k").await?.allowed);
    }
    f.set_now(Some(T0 + 5_000));
    let d = f.c(0).check("sl", "k").await?;
    assert!(!d.allowed);
    // The entry of T0 leaves at T0 + 10 s; the last one at T0 + 14 s.
    assert_eq!((ms(d.retry_after), ms(d.reset_after)), (5_000, 9_000));
    f.set_now(Some(T0 + 10_000));
    assert!(f.c(0).check("sl", "k").await?.allowed);
    f.set_now(Some(T0 + 10_001));
    let d = f.c(1).check("sl", "k").await?;
    assert_eq!(ms(d.retry_after), 1_999, "the entry of T0 + 2 s is next");
    retry_after_is_exact(&f, "sl", "k", T0 + 11_000).await?;

    // Token bucket and GCRA: burst 5, then one every 100 ms.
    for name in ["tb", "gcra"] {
        f.set_now(Some(T0 + 100_000));
        for left in (0..5).rev() {
            let d = f.c(0).check(name, "k").await?;
            assert!(d.allowed, "{name}");
            assert_eq!(d.remaining, left, "{name}");
        }
        let d = f.c(0).check(name, "k").await?;
        assert!(!d.allowed);
        assert_eq!(
            (ms(d.retry_after), ms(d.reset_after), d.limit),
            (100, 500, 5),
            "{name}"
        );
        f.set_now(Some(T0 + 100_099));
        assert_eq!(ms(f.c(1).check(name, "k").await?.retry_after), 1, "{name}");
        f.set_now(Some(T0 + 100_100));
        assert!(
            f.c(1).check(name, "k").await?.allowed,
            "{name}: refilled one"
        );
        // 150 ms later: one and a half tokens; one passes, then 50 ms to the next.
        f.set_now(Some(T0 + 100_250));
        assert!(f.c(2).check(name, "k").await?.allowed, "{name}");
        let d = f.c(2).check(name, "k").await?;
        assert_eq!(ms(d.retry_after), 50, "{name}");
        retry_after_is_exact(&f, name, "k", T0 + 100_260).await?;
        // Full again after a long pause: burst available, no state left behind.
        f.set_now(Some(T0 + 200_000));
        assert_eq!(f.c(0).peek(name, "k").await?.remaining, 5, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn sliding_counter_weights_the_previous_window_within_its_bound() -> Result<()> {
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("sc", pol(Algorithm::SlidingCounter, 100, 10_000))],
        2,
    )
    .await?;

    // The whole previous window's traffic at its very end: the worst case.
    f.set_now(Some(T0 + 9_999));
    for _ in 0..10 {
        assert!(f.c(0).check_cost("sc", "k", 10).await?.allowed);
    }
    assert!(!f.c(0).check("sc", "k").await?.allowed);

    // 2.5 s into the next window, 75 % of the previous 100 still counts: 25 pass.
    f.set_now(Some(T0 + 12_500));
    let allowed = hammer(&f.clients, "sc", "k", 6, 5).await?;
    assert_eq!(allowed, 25, "estimate 100 * 0.75 + n <= 100");
    let d = f.c(0).check("sc", "k").await?;
    assert!(!d.allowed);
    // Next pass when 100 * (10000 - x) / 10000 + 26 <= 100, i.e. x = 2600.
    assert_eq!(ms(d.retry_after), 100);
    retry_after_is_exact(&f, "sc", "k", T0 + 12_500).await?;

    // Sweep the rest of the window admitting all it can: within one aligned
    // window at most `limit` pass, and any sliding window of 10 s holds fewer
    // than 2 * limit (the documented bound of the approximation).
    let mut admitted: Vec<u64> = vec![T0 + 9_999; 100];
    admitted.extend(std::iter::repeat_n(T0 + 12_500, 25));
    admitted.push(T0 + 12_600);
    for x in (13_000..20_000).step_by(250) {
        f.set_now(Some(T0 + x));
        while f.c(1).check("sc", "k").await?.allowed {
            admitted.push(T0 + x);
        }
    }
    let in_window = admitted.iter().filter(|t| **t >= T0 + 10_000).count();
    assert!(in_window <= 100, "{in_window} in one aligned window");
    for end in (T0 + 10_000..T0 + 20_000).step_by(250) {
        let n = admitted
            .iter()
            .filter(|t| **t > end - 10_000 && **t <= end)
            .count();
        assert!(n < 200, "{n} in the sliding window ending at {end}");
    }
    Ok(())
}

#[tokio::test]
async fn weighted_costs() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("fw", pol(Algorithm::FixedWindow, 10, 60_000)),
        ("sl", pol(Algorithm::SlidingLog, 10, 60_000)),
        ("tb", pol(Algorithm::TokenBucket, 10, 1_000)),
    ];
    let f = Fleet::start(&redis, &policies, 2).await?;
    f.set_now(Some(T0));

    let c = f.c(0);
    assert_eq!(c.check_cost("fw", "k", 4).await?.remaining, 6);
    assert_eq!(c.check_cost("fw", "k", 4).await?.remaining, 2);
    let d = c.check_cost("fw", "k", 4).await?;
    assert!(!d.allowed, "a denied request consumes nothing");
    assert_eq!(d.remaining, 2);
    assert_eq!(c.check_cost("fw", "k", 2).await?.remaining, 0);

    for (t, cost) in [(0, 3), (1_000, 3), (2_000, 3)] {
        f.set_now(Some(T0 + t));
        assert!(c.check_cost("sl", "k", cost).await?.allowed);
    }
    f.set_now(Some(T0 + 3_000));
    let d = c.check_cost("sl", "k", 3).await?;
    assert!(!d.allowed);
    assert_eq!((d.remaining, ms(d.retry_after)), (1, 57_000));
    // Cost 5 needs two entries gone: the one of T0 + 1 s leaves at 61 s.
    assert_eq!(ms(c.check_cost("sl", "k", 5).await?.retry_after), 58_000);
    assert!(c.check_cost("sl", "k", 1).await?.allowed);

    f.set_now(Some(T0));
    assert!(c.check_cost("tb", "k", 10).await?.allowed);
    let d = f.c(1).check_cost("tb", "k", 3).await?;
    assert_eq!(ms(d.retry_after), 300, "three tokens at 10 per second");
    Ok(())
}

#[tokio::test]
async fn overrides_from_config_and_at_runtime() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut tiered = pol(Algorithm::FixedWindow, 2, 60_000);
    tiered.overrides.insert(
        "gold".into(),
        PolicyOverride {
            limit: 5,
            burst: None,
        },
    );
    let f = Fleet::start(&redis, &[("tiered", tiered.clone())], 2).await?;
    f.set_now(Some(T0));

    // Config override: a tenant on a bigger plan.
    assert_eq!(hammer(&f.clients, "tiered", "basic", 2, 5).await?, 2);
    assert_eq!(hammer(&f.clients, "tiered", "gold", 2, 5).await?, 5);
    assert_eq!(f.c(0).peek("tiered", "gold").await?.limit, 5);

    // d1 now holds a cached denial of "basic" until the window ends.
    assert!(!f.c(1).check("tiered", "basic").await?.allowed);

    // Runtime override through d0: d0 applies it at once...
    assert!(!f.c(0).set_override("tiered", "basic", 4, None).await?);
    assert!(f.c(0).check("tiered", "basic").await?.allowed, "3rd of 4");
    // ...d1 at its next refresh, which also drops its cached denials.
    wait_for_limit(f.c(1), "tiered", "basic", 4).await?;
    assert!(f.c(1).check("tiered", "basic").await?.allowed, "4th of 4");
    assert!(!f.c(1).check("tiered", "basic").await?.allowed);

    // It lives in Redis: a daemon started later sees it from the start.
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(&redis, dir.path(), "late");
    cfg.ratelimit.policies.insert("tiered".into(), tiered);
    let late = Daemon::start_ready(cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !late.ctx.ratelimits.ready() {
        anyhow::ensure!(Instant::now() < deadline, "overrides never loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    late.ctx.ratelimits.set_test_now(Some(T0));
    assert_eq!(late.client().await?.peek("tiered", "basic").await?.limit, 4);

    // Replace, clear, and back to the config's numbers everywhere.
    assert!(!f.c(1).set_override("tiered", "gold", 1, None).await?);
    assert!(f.c(1).set_override("tiered", "basic", 3, None).await?);
    assert!(f.c(0).clear_override("tiered", "basic").await?);
    assert!(!f.c(0).clear_override("tiered", "basic").await?);
    wait_for_limit(f.c(1), "tiered", "basic", 2).await?;
    wait_for_limit(f.c(0), "tiered", "gold", 1).await?;

    // Bad overrides are refused.
    let e = f.c(0).set_override("nope", "k", 1, None).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));
    let e = f
        .c(0)
        .set_override("tiered", "k", 1 << 50, None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    Ok(())
}

async fn wait_for_limit(c: &Client, policy: &str, key: &str, limit: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = c.peek(policy, key).await?.limit;
        if got == limit {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "limit of {key} stayed {got}, wanted {limit}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn peek_consumes_nothing_and_reset_forgets() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("sl", pol(Algorithm::SlidingLog, 3, 60_000)),
        ("gcra", with_burst(pol(Algorithm::Gcra, 3, 60_000), 3)),
    ];
    let f = Fleet::start(&redis, &policies, 2).await?;
    f.set_now(Some(T0));
    for name in ["sl", "gcra"] {
        assert!(
            !f.c(0).reset_limit(name, "k").await?,
            "{name}: no state yet"
        );
        for _ in 0..5 {
            let p = f.c(0).peek(name, "k").await?;
            assert!(p.allowed && p.remaining == 3, "{name}: {p:?}");
        }
        assert_eq!(hammer(&f.clients, name, "k", 2, 3).await?, 3, "{name}");
        let p = f.c(1).peek(name, "k").await?;
        assert!(!p.allowed && p.remaining == 0 && p.retry_after > Duration::ZERO);
        // Both daemons have cached the denial; the one that resets drops it.
        assert!(
            f.c(1).reset_limit(name, "k").await?,
            "{name}: state existed"
        );
        assert!(!f.c(1).reset_limit(name, "k").await?);
        let d = f.c(1).check(name, "k").await?;
        assert!(d.allowed && d.remaining == 2, "{name}: {d:?}");
    }
    let e = f.c(0).reset_limit("nope", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));
    Ok(())
}

#[tokio::test]
async fn deny_cache_answers_without_redis_until_t() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let f = Fleet::start(&redis, &[("fw", pol(Algorithm::FixedWindow, 2, 60_000))], 1).await?;
    f.set_now(Some(T0 + 1_000));
    let c = f.c(0);
    assert!(c.check("fw", "k").await?.allowed);
    assert!(c.check("fw", "k").await?.allowed);
    let d = c.check("fw", "k").await?;
    assert!(!d.allowed);
    assert_eq!(ms(d.retry_after), 59_000);
    let calls = f.rl(0, "ratelimit_redis_calls");
    assert_eq!(calls, 3);

    let again = c.check("fw", "k").await?;
    assert_eq!(again, d, "the same answer, from the cache");
    assert_eq!(f.rl(0, "ratelimit_redis_calls"), calls, "no Redis call");
    assert_eq!(f.rl(0, "ratelimit_denied_local"), 1);
    // Another cost has another T: it goes to Redis.
    assert!(!c.check_cost("fw", "k", 2).await?.allowed);
    assert_eq!(f.rl(0, "ratelimit_redis_calls"), calls + 1);

    // Redis gone: the cached denial still answers, with the time left.
    redis.stop();
    f.set_now(Some(T0 + 31_000));
    let d = c.check("fw", "k").await?;
    assert!(!d.allowed && d.fallback.is_none(), "{d:?}");
    assert_eq!(ms(d.retry_after), 29_000);
    assert_eq!(f.rl(0, "ratelimit_denied_local"), 2);

    // At T the cache lets go; Redis is down, so the fail mode (closed) decides.
    f.set_now(Some(T0 + 60_000));
    let d = c.check("fw", "k").await?;
    assert!(!d.allowed);
    assert_eq!(d.fallback.as_deref(), Some("closed"));
    Ok(())
}

#[tokio::test]
async fn fail_modes_with_redis_down() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let policies = [
        (
            "open",
            failing(pol(Algorithm::FixedWindow, 2, 60_000), FailMode::Open, 1),
        ),
        (
            "closed",
            failing(pol(Algorithm::FixedWindow, 2, 60_000), FailMode::Closed, 1),
        ),
        (
            "local",
            failing(pol(Algorithm::SlidingLog, 10, 60_000), FailMode::Local, 2),
        ),
        (
            "local_tb",
            failing(
                with_burst(pol(Algorithm::TokenBucket, 30, 3_000), 9),
                FailMode::Local,
                3,
            ),
        ),
        (
            "cc",
            failing(pol(Algorithm::Concurrency, 4, 60_000), FailMode::Local, 2),
        ),
    ];
    let f = Fleet::start(&redis, &policies, 1).await?;
    f.set_now(Some(T0 + 1_000));
    let c = f.c(0);
    let d = c.check("open", "k").await?;
    assert!(
        d.allowed && d.fallback.is_none(),
        "Redis decides while it is up"
    );

    redis.stop();
    let started = Instant::now();
    for _ in 0..5 {
        let d = c.check("open", "k").await?;
        assert!(d.allowed, "open allows: {d:?}");
        assert_eq!(d.fallback.as_deref(), Some("open"));
    }
    let d = c.check("closed", "k").await?;
    assert!(!d.allowed);
    assert_eq!(
        (d.fallback.as_deref(), ms(d.retry_after)),
        (Some("closed"), 1_000)
    );
    // local: this daemon's share, 10 / 2 = 5 in its own window.
    let mut allowed = 0;
    for _ in 0..8 {
        let d = c.check("local", "k").await?;
        assert_eq!(d.fallback.as_deref(), Some("local"));
        allowed += u64::from(d.allowed);
    }
    assert_eq!(allowed, 5);
    let d = c.check("local", "k").await?;
    assert_eq!(ms(d.retry_after), 59_000, "until the local window ends");
    // Token bucket share: burst 9 / 3 = 3, refill 30 / 3 = 10 per 3 s.
    let mut allowed = 0;
    for _ in 0..5 {
        allowed += u64::from(c.check("local_tb", "k").await?.allowed);
    }
    assert_eq!(allowed, 3);
    assert_eq!(ms(c.check("local_tb", "k").await?.retry_after), 300);
    // Concurrency share: 4 / 2 = 2 local leases; they release locally.
    let a = c.acquire_concurrent("cc", "k", None).await?;
    let b = c.acquire_concurrent("cc", "k", None).await?;
    assert!(a.acquired && b.acquired);
    assert!(!c.acquire_concurrent("cc", "k", None).await?.acquired);
    assert!(
        c.release("cc", "k", a.lease.as_deref().context("lease")?)
            .await?
    );
    assert!(c.acquire_concurrent("cc", "k", None).await?.acquired);
    // While Redis is known down, requests do not each wait for its deadline.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fail modes took {:?}",
        started.elapsed()
    );
    assert!(f.rl(0, "ratelimit_fallback_open") >= 5);
    assert!(f.rl(0, "ratelimit_fallback_closed") >= 1);
    assert!(f.rl(0, "ratelimit_fallback_local") >= 13);

    // Redis back (empty): decisions come from it again.
    redis.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = c.check("closed", "k").await?;
        if d.fallback.is_none() {
            assert!(d.allowed, "fresh state in the restarted Redis");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "still failing over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn reserve_books_slots_at_the_policy_rate() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("gcra", with_burst(pol(Algorithm::Gcra, 10, 1_000), 1)),
        ("tb", with_burst(pol(Algorithm::TokenBucket, 10, 1_000), 1)),
        ("fw", pol(Algorithm::FixedWindow, 2, 1_000)),
        ("sl", pol(Algorithm::SlidingLog, 2, 1_000)),
        ("sc", pol(Algorithm::SlidingCounter, 2, 1_000)),
    ];
    let f = Fleet::start(&redis, &policies, 3).await?;
    let long = Duration::from_secs(10);

    for name in ["gcra", "tb"] {
        f.set_now(Some(T0));
        let mut waits = Vec::new();
        for i in 0..5 {
            let r = f.c(i).reserve(name, "vendor", 1, long).await?;
            assert!(r.granted, "{name}");
            waits.push(ms(r.wait));
        }
        assert_eq!(waits, [0, 100, 200, 300, 400], "{name}: one per 100 ms");
        // Too far: refused, and nothing booked.
        let r = f
            .c(0)
            .reserve(name, "vendor", 1, Duration::from_millis(450))
            .await?;
        assert!(!r.granted);
        assert_eq!(ms(r.wait), 500, "{name}");
        assert_eq!(ms(f.c(1).reserve(name, "vendor", 1, long).await?.wait), 500);
        // Checks respect the bookings.
        assert_eq!(
            ms(f.c(2).check(name, "vendor").await?.retry_after),
            600,
            "{name}"
        );
    }

    f.set_now(Some(T0 + 100));
    let mut waits = Vec::new();
    for i in 0..5 {
        waits.push(ms(f.c(i).reserve("fw", "vendor", 1, long).await?.wait));
    }
    assert_eq!(waits, [0, 0, 900, 900, 1_900], "two per aligned window");
    let r = f
        .c(0)
        .reserve("fw", "vendor", 1, Duration::from_millis(1_000))
        .await?;
    assert!(!r.granted && ms(r.wait) == 1_900);

    f.set_now(Some(T0));
    let mut waits = Vec::new();
    for i in 0..5 {
        waits.push(ms(f.c(i).reserve("sl", "vendor", 1, long).await?.wait));
    }
    assert_eq!(waits, [0, 0, 1_000, 1_000, 2_000], "two per sliding second");

    let e = f.c(0).reserve("sc", "vendor", 1, long).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    let e = f.c(0).reserve("gcra", "vendor", 2, long).await.unwrap_err();
    assert_eq!(
        code(&e),
        Some(ErrorCode::BadRequest),
        "cost above the burst"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_waits_for_its_slot_on_redis_time() -> Result<()> {
    let redis = RedisServer::start().await?;
    // 20 per second, burst 1: one every 50 ms, shared by the three daemons.
    let f = Fleet::start(
        &redis,
        &[("vendor", with_burst(pol(Algorithm::Gcra, 20, 1_000), 1))],
        3,
    )
    .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = f.c(i).clone();
        tasks.push(tokio::spawn(async move {
            let a = c.acquire("vendor", "meta-app").await?;
            Ok::<_, shoal_client::Error>((a, started.elapsed()))
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        let (a, at) = t.await??;
        assert!(matches!(a, Acquired::Ready { .. }), "{a:?}");
        done.push(at);
    }
    done.sort();
    // Six slots 50 ms apart: the last cannot come before 250 ms after the first
    // booking, which was after `started`.
    let last = *done.last().context("no acquire")?;
    assert!(last >= Duration::from_millis(250), "last slot at {last:?}");
    assert!(last < Duration::from_secs(3), "last slot at {last:?}");

    // A slot further than the allowed wait: nothing booked, told how far.
    let r = f
        .c(0)
        .acquire_with("vendor", "busy", 3, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(code(&r), Some(ErrorCode::BadRequest), "cost 3 > burst 1");
    for _ in 0..3 {
        let _ = f
            .c(0)
            .reserve("vendor", "busy", 1, Duration::from_secs(10))
            .await?;
    }
    match f
        .c(1)
        .acquire_with("vendor", "busy", 1, Duration::from_millis(20))
        .await?
    {
        Acquired::TooFar { next_in } => assert!(next_in > Duration::from_millis(20)),
        other => anyhow::bail!("expected TooFar, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn concurrency_leases_expire_if_never_released() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("cc", pol(Algorithm::Concurrency, 2, 5_000)),
        ("fw", pol(Algorithm::FixedWindow, 2, 5_000)),
    ];
    let f = Fleet::start(&redis, &policies, 3).await?;
    f.set_now(Some(T0));
    let a = f.c(0).acquire_concurrent("cc", "k", None).await?;
    let b = f.c(1).acquire_concurrent("cc", "k", None).await?;
    assert!(a.acquired && b.acquired);
    assert_eq!((a.remaining, b.remaining), (1, 0));
    assert_eq!(ms(a.lease_ttl), 5_000, "default lease: the policy's window");
    let c = f.c(2).acquire_concurrent("cc", "k", None).await?;
    assert!(!c.acquired && c.lease.is_none());
    assert_eq!(ms(c.retry_after), 5_000, "until the oldest lease expires");
    assert!(!f.c(2).peek("cc", "k").await?.allowed);

    let lease_a = a.lease.context("lease")?;
    assert!(f.c(2).release("cc", "k", &lease_a).await?);
    assert!(
        !f.c(2).release("cc", "k", &lease_a).await?,
        "released twice"
    );
    let c = f
        .c(2)
        .acquire_concurrent("cc", "k", Some(Duration::from_millis(10_000)))
        .await?;
    assert!(c.acquired && ms(c.lease_ttl) == 10_000);

    // b's holder "died": at its expiry its slot frees by itself.
    f.set_now(Some(T0 + 4_999));
    assert!(!f.c(0).acquire_concurrent("cc", "k", None).await?.acquired);
    f.set_now(Some(T0 + 5_000));
    assert!(f.c(0).acquire_concurrent("cc", "k", None).await?.acquired);
    assert!(
        !f.c(0).acquire_concurrent("cc", "k", None).await?.acquired,
        "c still holds one"
    );
    assert!(
        !f.c(1)
            .release("cc", "k", &b.lease.context("lease")?)
            .await?,
        "an expired lease is not released"
    );

    // The two kinds of policy are not mixed up.
    let e = f.c(0).check("cc", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    let e = f
        .c(0)
        .acquire_concurrent("fw", "k", None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    Ok(())
}

#[tokio::test]
async fn quota_usage_lists_keys_for_operators() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut fw = pol(Algorithm::FixedWindow, 10, 60_000);
    fw.overrides.insert(
        "tenant:big".into(),
        PolicyOverride {
            limit: 100,
            burst: None,
        },
    );
    let policies = [
        ("fw", fw),
        ("sl", pol(Algorithm::SlidingLog, 10, 60_000)),
        ("cc", pol(Algorithm::Concurrency, 3, 60_000)),
    ];
    let f = Fleet::start(&redis, &policies, 2).await?;
    f.set_now(Some(T0));
    f.c(0).check_cost("fw", "tenant:1", 3).await?;
    f.c(1).check_cost("fw", "tenant:2", 1).await?;
    f.c(0).check_cost("fw", "tenant:big", 40).await?;
    f.c(1).check_cost("fw", "other:1", 2).await?;
    f.c(1).check_cost("fw", "we*ird", 1).await?;
    f.c(0).check_cost("sl", "tenant:1", 4).await?;
    f.c(0).acquire_concurrent("cc", "tenant:1", None).await?;

    let u = f.c(1).quota_usage("fw", Some("tenant:"), None).await?;
    assert_eq!(
        (u.policy.as_str(), u.algorithm.as_str()),
        ("fw", "fixed_window")
    );
    assert_eq!((u.limit, u.window_ms, u.truncated), (10, 60_000, false));
    let rows: Vec<(&str, u64, u64, u64)> = u
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.used, k.limit, k.remaining))
        .collect();
    assert_eq!(
        rows,
        [
            ("tenant:1", 3, 10, 7),
            ("tenant:2", 1, 10, 9),
            ("tenant:big", 40, 100, 60)
        ]
    );
    assert!(u
        .keys
        .iter()
        .all(|k| ms(Duration::from_millis(k.reset_after_ms)) == 60_000));

    let all = f.c(0).quota_usage("fw", None, Some(2)).await?;
    assert_eq!(all.keys.len(), 2);
    assert!(all.truncated);
    // Glob characters in a prefix match themselves only.
    let odd = f.c(0).quota_usage("fw", Some("we*"), None).await?;
    assert_eq!(odd.keys.len(), 1);
    assert_eq!(odd.keys[0].key, "we*ird");
    let none = f.c(0).quota_usage("fw", Some("w*"), None).await?;
    assert!(none.keys.is_empty());

    // A sliding log's companion key is not listed as a key of its own.
    let sl = f.c(0).quota_usage("sl", None, None).await?;
    assert_eq!(sl.keys.len(), 1);
    assert_eq!((sl.keys[0].key.as_str(), sl.keys[0].used), ("tenant:1", 4));
    let cc = f.c(0).quota_usage("cc", None, None).await?;
    assert_eq!(
        (cc.keys[0].used, cc.keys[0].limit),
        (1, 3),
        "leases in flight"
    );

    let e = f.c(0).quota_usage("nope", None, None).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_clear_errors() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("fw", pol(Algorithm::FixedWindow, 10, 60_000)),
        ("tb", with_burst(pol(Algorithm::TokenBucket, 10, 1_000), 4)),
        ("cc", pol(Algorithm::Concurrency, 2, 1_000)),
    ];
    let f = Fleet::start(&redis, &policies, 1).await?;
    let c = f.c(0);
    let e = c.check_cost("fw", "k", 11).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    assert!(e.to_string().contains("cost 11"), "{e}");
    let e = c.check_cost("tb", "k", 5).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "above the burst");
    let e = c.check("nope", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));
    assert!(e.to_string().contains("nope"), "{e}");
    let e = c.peek("nope", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));

    let mut raw = RawConn::greeted(&f.daemons[0].socket).await?;
    let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
                ("cost", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
                ("cost", (-1).into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
                ("cost", "3".into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", 5.into()),
                ("key", "k".into()),
            ],
            "bad_request",
        ),
        (
            vec![("op", "ratelimit.check".into()), ("key", "k".into())],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", "fw".into()),
                ("key", "".into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.check".into()),
                ("policy", "zz".into()),
                ("key", "k".into()),
            ],
            "unknown_policy",
        ),
        (
            vec![
                ("op", "ratelimit.reserve".into()),
                ("policy", "tb".into()),
                ("key", "k".into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.reserve".into()),
                ("policy", "tb".into()),
                ("key", "k".into()),
                ("max_wait_ms", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.reserve".into()),
                ("policy", "tb".into()),
                ("key", "k".into()),
                ("max_wait_ms", (-5).into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.acquire_concurrent".into()),
                ("policy", "cc".into()),
                ("key", "k".into()),
                ("lease_ms", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.release".into()),
                ("policy", "cc".into()),
                ("key", "k".into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.set_override".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
                ("limit", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.set_override".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "ratelimit.set_override".into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
                ("limit", 5.into()),
                ("burst", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "quota.usage".into()),
                ("policy", "fw".into()),
                ("max_keys", 0.into()),
            ],
            "bad_request",
        ),
        (
            vec![
                ("op", "quota.usage".into()),
                ("policy", "fw".into()),
                ("prefix", 7.into()),
            ],
            "bad_request",
        ),
    ];
    for (i, (fields, want)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        let mut fields = fields;
        fields.push(("id", id.into()));
        raw.send(&req(&fields)).await?;
        let r = raw.recv().await?;
        assert_eq!(field(&r, "id").and_then(Value::as_u64), Some(id));
        assert_eq!(err_code(&r).as_deref(), Some(want), "case {i}: {r}");
    }
    // The connection stays open after wrong requests.
    raw.send(&req(&[("op", "ping".into()), ("id", 1.into())]))
        .await?;
    assert_eq!(
        field(&raw.recv().await?, "ok").and_then(Value::as_str),
        Some("pong")
    );
    Ok(())
}

#[tokio::test]
async fn tower_layer_answers_429_through_a_real_daemon() -> Result<()> {
    use tower::{Layer, ServiceExt};
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("web", pol(Algorithm::FixedWindow, 2, 60_000))],
        1,
    )
    .await?;
    f.set_now(Some(T0 + 30_000));
    let inner = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_string()))
    });
    let key_fn = |req: &http::Request<()>| {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|k| format!("key:{k}"))
    };
    let svc = RateLimitLayer::new(f.c(0).clone(), "web", key_fn).layer(inner);
    let request = || -> Result<http::Request<()>> {
        Ok(http::Request::builder()
            .header("x-api-key", "abc")
            .body(())?)
    };
    for left in ["1", "0"] {
        let r = svc.clone().oneshot(request()?).await?;
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-remaining"], left);
        assert_eq!(r.headers()["ratelimit-policy"], "\"web\";q=2;w=60");
    }
    let r = svc.clone().oneshot(request()?).await?;
    assert_eq!(r.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(r.headers()["ratelimit"], "\"web\";r=0;t=30");
    Ok(())
}

#[tokio::test]
async fn decision_headers_from_a_real_answer() -> Result<()> {
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("api", with_burst(pol(Algorithm::TokenBucket, 1, 2_500), 1))],
        1,
    )
    .await?;
    f.set_now(Some(T0));
    assert!(f.c(0).check("api", "k").await?.allowed);
    let d: Decision = f.c(0).check("api", "k").await?;
    let h: BTreeMap<&str, String> = d.headers().into_iter().collect();
    // 2500 ms to the next token: Retry-After rounds up to 3 s.
    assert_eq!(h["retry-after"], "3");
    assert_eq!(h["ratelimit"], "\"api\";r=0;t=3");
    assert_eq!(h["ratelimit-policy"], "\"api\";q=1;w=3");
    assert_eq!(h["x-ratelimit-limit"], "1");
    Ok(())
}

// ---- issue 13 §2: fleet-wide state changes reach every daemon ----

/// Polls `check` on `c` until it is allowed (the deny cache let go).
async fn wait_allowed(c: &Client, policy: &str, key: &str, within: Duration) -> Result<Decision> {
    let deadline = Instant::now() + within;
    loop {
        let d = c.check(policy, key).await?;
        if d.allowed {
            return Ok(d);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{key} still denied after {within:?}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reset_through_one_daemon_clears_every_deny_cache() -> Result<()> {
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("daily", pol(Algorithm::FixedWindow, 2, 86_400_000))],
        3,
    )
    .await?;
    f.set_now(Some(T0 + 1_000));
    assert!(f.c(0).check("daily", "k").await?.allowed);
    assert!(f.c(0).check("daily", "k").await?.allowed);
    // Every daemon has Redis's denial (until midnight) in its deny cache.
    for i in 0..3 {
        let d = f.c(i).check("daily", "k").await?;
        assert!(!d.allowed, "{d:?}");
        let again = f.c(i).check("daily", "k").await?;
        assert_eq!(again, d);
    }
    assert!(f.rl(1, "ratelimit_denied_local") >= 1);
    assert!(f.c(0).reset_limit("daily", "k").await?);
    // The others let go within their refresh (100 ms here), not at midnight.
    wait_allowed(f.c(1), "daily", "k", Duration::from_secs(3)).await?;
    wait_allowed(f.c(2), "daily", "k", Duration::from_secs(3)).await?;
    Ok(())
}

#[tokio::test]
async fn runtime_override_versions_survive_redis_data_loss() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let tiered = pol(Algorithm::FixedWindow, 2, 60_000);
    let mut daemons = Vec::new();
    // A refreshes often, B rarely: B must not miss that Redis lost its data
    // even when it never looks while the override hash is gone.
    for (node, refresh) in [("a", 50), ("b", 1_500)] {
        let mut c = test_config(&redis, dir.path(), node);
        c.ratelimit.policies.insert("tiered".into(), tiered.clone());
        c.ratelimit.override_refresh = Duration::from_millis(refresh);
        daemons.push(Daemon::start_ready(c).await?);
    }
    let (a, b) = (daemons[0].client().await?, daemons[1].client().await?);
    for d in &daemons {
        d.ctx.ratelimits.set_test_now(Some(T0));
    }
    a.set_override("tiered", "t", 5, None).await?;
    wait_for_limit(&b, "tiered", "t", 5).await?;
    // Right after B loaded it: Redis loses everything, and the same number of
    // override writes happens again with other numbers.
    let mut conn = redis.conn().await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    a.set_override("tiered", "t", 50, None).await?;
    wait_for_limit(&a, "tiered", "t", 50).await?;
    wait_for_limit(&b, "tiered", "t", 50).await?;
    Ok(())
}

// ---- issue 13 §3: bounded in every input ----

#[tokio::test]
async fn reservations_stop_at_the_policy_horizon() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut gcra = with_burst(pol(Algorithm::Gcra, 10, 1_000), 1);
    gcra.max_reserve_ahead = Some(Duration::from_secs(1));
    let policies = [
        // Default horizon: three windows.
        ("sl", pol(Algorithm::SlidingLog, 2, 1_000)),
        ("tb", with_burst(pol(Algorithm::TokenBucket, 10, 1_000), 1)),
        ("gcra", gcra),
    ];
    let f = Fleet::start(&redis, &policies, 1).await?;
    f.set_now(Some(T0));
    let ten_years = Duration::from_secs(10 * 365 * 86_400);
    for (name, horizon_ms, most) in [("sl", 3_000, 8), ("tb", 3_000, 31), ("gcra", 1_000, 11)] {
        let mut granted = 0;
        let mut longest = 0;
        for _ in 0..60 {
            let r = f.c(0).reserve(name, "loop", 1, ten_years).await?;
            if r.granted {
                granted += 1;
                longest = longest.max(ms(r.wait));
            } else {
                assert!(
                    ms(r.wait) > horizon_ms,
                    "{name}: refused only past the horizon"
                );
            }
        }
        assert!(
            granted <= most && longest <= horizon_ms,
            "{name}: {granted} reservations granted, the last {longest} ms ahead"
        );
    }
    // The sliding log holds what the horizon allows, not one entry per call.
    let mut conn = redis.conn().await?;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("shoal:rl.*sl:loop*")
        .query_async(&mut conn)
        .await?;
    keys.retain(|k| !k.ends_with(":n"));
    let log = keys.first().context("the sliding log key")?;
    let n: u64 = redis::cmd("ZCARD").arg(log).query_async(&mut conn).await?;
    assert!(n <= 8, "{n} entries in {log}");
    Ok(())
}

#[tokio::test]
async fn deny_cache_and_local_state_evict_instead_of_refusing() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut c = test_config(&redis, dir.path(), "bounded");
    c.ratelimit
        .policies
        .insert("one".into(), pol(Algorithm::FixedWindow, 1, 60_000));
    c.ratelimit.policies.insert(
        "loc".into(),
        failing(pol(Algorithm::FixedWindow, 5, 60_000), FailMode::Local, 1),
    );
    c.ratelimit.deny_cache_entries = 8;
    c.ratelimit.local_max_entries = 8;
    let d = Daemon::start_ready(c).await?;
    d.ctx.ratelimits.set_test_now(Some(T0));
    let client = d.client().await?;
    let stat = |name: &str| {
        let mut m = BTreeMap::new();
        d.ctx.ratelimits.stats_into(&mut m);
        m.get(name).copied().unwrap_or(0)
    };
    // Forty keys denied in turn: the cache keeps the recent ones, so a key
    // denied just now is answered without Redis however many came before.
    for i in 0..40 {
        let key = format!("k{i}");
        assert!(client.check("one", &key).await?.allowed);
        assert!(!client.check("one", &key).await?.allowed);
        let calls = stat("ratelimit_redis_calls");
        assert!(!client.check("one", &key).await?.allowed);
        assert_eq!(
            stat("ratelimit_redis_calls"),
            calls,
            "key {i}: a fresh denial must be cached even when the cache is full"
        );
    }
    assert!(stat("ratelimit_deny_cache_entries") <= 8);
    // Local fail-mode state: bounded too, however many keys an outage sees.
    redis.stop();
    for i in 0..200 {
        let d = client.check("loc", &format!("t{i}")).await?;
        assert_eq!(d.fallback.as_deref(), Some("local"));
    }
    let n = stat("ratelimit_local_entries");
    assert!(n <= 8, "{n} keys of local state");
    Ok(())
}

/// `calls` of one command in Redis's INFO commandstats.
async fn command_calls(redis: &RedisServer, cmd: &str) -> Result<u64> {
    let mut conn = redis.conn().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let want = format!("cmdstat_{cmd}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

#[tokio::test]
async fn quota_page_refreshes_do_not_each_scan_the_keyspace() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut c = test_config(&redis, dir.path(), "q");
    c.admin.listen = "127.0.0.1:0".into();
    // On a loaded machine a short deadline would turn checks into fallback
    // decisions that write no state: every tenant must reach Redis.
    c.redis.timeout = Duration::from_secs(5);
    c.ratelimit
        .policies
        .insert("api".into(), pol(Algorithm::FixedWindow, 10, 60_000));
    let d = Daemon::start_ready(c).await?;
    let client = d.client().await?;
    // Tenants, and a keyspace full of cache entries the scan must wade through.
    for i in 0..50 {
        let decision = client.check("api", &format!("tenant-{i}")).await?;
        anyhow::ensure!(decision.fallback.is_none(), "tenant-{i}: {decision:?}");
    }
    let mut conn = redis.conn().await?;
    for chunk in 0..10 {
        let mut mset = redis::cmd("MSET");
        for i in 0..1000 {
            mset.arg(format!("shoal:c:row-{chunk}-{i}")).arg("v");
        }
        mset.query_async::<()>(&mut conn).await?;
    }
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    let before = command_calls(&redis, "scan").await?;
    let t = Instant::now();
    let first = shoal_tests::http_get(addr, "/quotas?format=json", &[]).await?;
    let one = t.elapsed();
    anyhow::ensure!(first.status == 200);
    let scans_one = command_calls(&redis, "scan").await? - before;
    // Five viewers refreshing at once, then again: one scan answers them all.
    let views = (0..5).map(|_| shoal_tests::http_get(addr, "/quotas?format=json", &[]));
    for r in futures::future::join_all(views).await {
        let r = r?;
        anyhow::ensure!(r.status == 200);
        let keys = r.json()?["policies"][0]["keys"]
            .as_array()
            .map_or(0, Vec::len);
        anyhow::ensure!(keys == 50, "{keys} tenants on the page");
    }
    let scans_all = command_calls(&redis, "scan").await? - before;
    println!("one /quotas over 10k keys: {one:?}, {scans_one} SCAN calls; six views: {scans_all}");
    anyhow::ensure!(
        scans_all == scans_one,
        "six page views cost {scans_all} SCAN calls, one costs {scans_one}"
    );
    Ok(())
}

// ---- issue 13 §4: what users of express-rate-limit expect ----

#[tokio::test]
async fn header_style_per_policy_matches_express_rate_limit() -> Result<()> {
    use shoal_tests::shoald::config::HeaderStyle;
    let redis = RedisServer::start().await?;
    let styled = |style: Option<HeaderStyle>| {
        let mut p = pol(Algorithm::FixedWindow, 100, 60_000);
        p.headers = style;
        p
    };
    let policies = [
        ("d7", styled(Some(HeaderStyle::Draft7))),
        ("d8", styled(Some(HeaderStyle::Draft8))),
        ("old", styled(Some(HeaderStyle::Legacy))),
    ];
    let f = Fleet::start(&redis, &policies, 1).await?;
    f.set_now(Some(T0 + 20_000));
    let c = f.c(0);
    let names = |h: &[(&'static str, String)]| h.iter().map(|(n, _)| *n).collect::<Vec<_>>();

    // express-rate-limit standardHeaders: 'draft-7'.
    let h = c.check("d7", "k").await?.headers();
    assert_eq!(
        h,
        vec![
            ("ratelimit-policy", "100;w=60".to_string()),
            ("ratelimit", "limit=100, remaining=99, reset=40".to_string()),
        ]
    );
    // 'draft-8'.
    let h = c.check("d8", "k").await?.headers();
    assert_eq!(
        h,
        vec![
            ("ratelimit-policy", "\"d8\";q=100;w=60".to_string()),
            ("ratelimit", "\"d8\";r=99;t=40".to_string()),
        ]
    );
    // legacyHeaders: X-RateLimit-Reset is a Unix time in seconds.
    let h = c.check("old", "k").await?.headers();
    assert_eq!(
        names(&h),
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset"
        ]
    );
    assert_eq!((h[0].1.as_str(), h[1].1.as_str()), ("100", "99"));
    let reset: u64 = h[2].1.parse()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    assert!(
        (now + 39..=now + 41).contains(&reset),
        "reset {reset}, now {now}"
    );
    // Denied: Retry-After in every style.
    for name in ["d7", "d8", "old"] {
        c.check_cost(name, "full", 100).await?;
        let h = c.check(name, "full").await?.headers();
        assert!(names(&h).contains(&"retry-after"), "{name}: {h:?}");
    }
    Ok(())
}

// ---- issue 13 §6: metrics that add up ----

#[tokio::test]
async fn decision_metrics_count_each_decision_once() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut c = test_config(&redis, dir.path(), "m");
    c.admin.listen = "127.0.0.1:0".into();
    c.ratelimit
        .policies
        .insert("api".into(), pol(Algorithm::FixedWindow, 3, 60_000));
    let d = Daemon::start_ready(c).await?;
    d.ctx.ratelimits.set_test_now(Some(T0));
    let client = d.client().await?;
    for _ in 0..5 {
        client.check("api", "k").await?; // 3 allowed, 2 denied
    }
    redis.stop();
    for i in 0..4 {
        let r = client.check("api", &format!("other-{i}")).await?;
        assert_eq!(r.fallback.as_deref(), Some("closed"));
    }
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    let text = shoal_tests::http_get(addr, "/metrics", &[]).await?;
    let mut total = 0.0;
    let mut by_fallback = BTreeMap::new();
    for line in text.text()?.lines() {
        let Some(rest) = line.strip_prefix("shoal_ratelimit_decisions_total{") else {
            continue;
        };
        let (labels, v) = rest.rsplit_once("} ").context("sample")?;
        let v: f64 = v.parse()?;
        assert!(labels.contains("policy=\"api\""), "{line}");
        total += v;
        let fb = labels
            .split(',')
            .find_map(|l| l.strip_prefix("fallback="))
            .context("fallback label")?
            .trim_matches('"')
            .to_string();
        *by_fallback.entry(fb).or_insert(0.0) += v;
    }
    assert_eq!(
        total, 9.0,
        "nine decisions, each counted once: {by_fallback:?}"
    );
    assert_eq!(by_fallback.get("closed"), Some(&4.0));
    assert_eq!(by_fallback.get("none"), Some(&5.0));
    Ok(())
}

#[tokio::test]
async fn gcra_state_stays_exact_when_an_override_changes_the_limit() -> Result<()> {
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("g", with_burst(pol(Algorithm::Gcra, 999, 1_000), 999))],
        1,
    )
    .await?;
    f.set_now(Some(T0));
    let c = f.c(0);
    // 998 requests at once: the TAT is 998 * 1000/999 ms = 998.998 ms ahead.
    assert!(c.check_cost("g", "k", 998).await?.allowed);
    // The tenant moves to 2 per second, burst 1: the next request conforms
    // at the TAT, 998.998 ms away (999 rounded up), whatever units the state
    // was kept in (read in the new units, it would be 1497 ms).
    c.set_override("g", "k", 2, Some(1)).await?;
    let p = c.peek("g", "k").await?;
    assert!(!p.allowed);
    assert_eq!(ms(p.retry_after), 999, "{p:?}");
    assert_eq!(ms(p.reset_after), 999, "{p:?}");
    Ok(())
}

#[tokio::test]
async fn block_locks_a_key_out_fleet_wide_once_over_the_limit() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut login = pol(Algorithm::FixedWindow, 2, 1_000);
    login.block = Some(Duration::from_secs(15 * 60));
    let f = Fleet::start(&redis, &[("login", login)], 3).await?;
    f.set_now(Some(T0));
    assert!(f.c(0).check("login", "alice").await?.allowed);
    assert!(f.c(1).check("login", "alice").await?.allowed);
    let d = f.c(2).check("login", "alice").await?;
    assert!(!d.allowed);
    assert!(
        d.retry_after > Duration::from_secs(14 * 60),
        "locked out: {d:?}"
    );
    // The window is long over, but the lockout holds on every daemon.
    f.set_now(Some(T0 + 10_000));
    for i in 0..3 {
        let d = f.c(i).check("login", "alice").await?;
        assert!(!d.allowed, "daemon {i}: {d:?}");
        assert!(
            d.retry_after > Duration::from_secs(14 * 60),
            "daemon {i}: {d:?}"
        );
    }
    // Others are unaffected; a reset lifts the lockout.
    assert!(f.c(0).check("login", "bob").await?.allowed);
    assert!(f.c(1).reset_limit("login", "alice").await?);
    assert!(f.c(1).check("login", "alice").await?.allowed);
    wait_allowed(f.c(0), "login", "alice", Duration::from_secs(3)).await?;
    Ok(())
}

/// `(allowed, remaining, retry_after_ms)` of a decision.
fn arr(d: &Decision) -> (bool, u64, u64) {
    (d.allowed, d.remaining, ms(d.retry_after))
}

#[tokio::test]
async fn penalty_and_reward_move_every_algorithm() -> Result<()> {
    let redis = RedisServer::start().await?;
    let policies = [
        ("fw", pol(Algorithm::FixedWindow, 3, 10_000)),
        ("sl", pol(Algorithm::SlidingLog, 3, 10_000)),
        ("sc", pol(Algorithm::SlidingCounter, 3, 10_000)),
        ("tb", with_burst(pol(Algorithm::TokenBucket, 10, 1_000), 5)),
        ("gcra", with_burst(pol(Algorithm::Gcra, 10, 1_000), 5)),
        ("cc", pol(Algorithm::Concurrency, 2, 1_000)),
    ];
    let f = Fleet::start(&redis, &policies, 2).await?;
    let c = f.c(0);

    // Fixed window, sliding log and sliding counter: 3 per 10 s, at T0 + 1 s.
    f.set_now(Some(T0 + 1_000));
    for name in ["fw", "sl", "sc"] {
        assert_eq!(arr(&c.penalty(name, "k", 2).await?), (true, 1, 0), "{name}");
        // Past the limit: nothing asks permission.
        let d = c.penalty(name, "k", 3).await?;
        assert!(!d.allowed && d.remaining == 0, "{name}: {d:?}");
        let denied = f.c(1).check(name, "k").await?;
        assert!(
            !denied.allowed,
            "{name}: the other daemon sees it: {denied:?}"
        );
        // 5 counted: giving back 1 leaves 4, still over; 2 more leave 2.
        assert!(!c.reward(name, "k", 1).await?.allowed, "{name}");
        assert_eq!(arr(&c.reward(name, "k", 2).await?), (true, 1, 0), "{name}");
        // Never above full capacity, and nothing left behind at full.
        assert_eq!(arr(&c.reward(name, "k", 3).await?), (true, 3, 0), "{name}");
        assert_eq!(c.peek(name, "k").await?.remaining, 3, "{name}");
        assert_eq!(c.check(name, "k").await?.remaining, 2, "{name}");
    }
    // A fixed-window penalty lasts until the window ends.
    let d = c.penalty("fw", "w", 3).await?;
    assert_eq!((d.allowed, ms(d.retry_after)), (false, 9_000));
    f.set_now(Some(T0 + 10_000));
    assert!(c.check("fw", "w").await?.allowed, "a new window forgives");
    // A sliding-log penalty lasts until its entry leaves the window.
    f.set_now(Some(T0 + 20_000));
    let d = c.penalty("sl", "w", 3).await?;
    assert_eq!((d.allowed, ms(d.retry_after)), (false, 10_000));
    f.set_now(Some(T0 + 29_999));
    assert!(!c.check("sl", "w").await?.allowed);
    f.set_now(Some(T0 + 30_000));
    assert!(c.check("sl", "w").await?.allowed);

    // Token bucket and GCRA: burst 5, one token every 100 ms.
    for name in ["tb", "gcra"] {
        f.set_now(Some(T0 + 100_000));
        assert_eq!(
            arr(&c.penalty(name, "k", 5).await?),
            (false, 0, 100),
            "{name}"
        );
        // Below empty: 5 more owed, so 6 tokens (600 ms) until one passes.
        assert_eq!(
            arr(&c.penalty(name, "k", 5).await?),
            (false, 0, 600),
            "{name}"
        );
        let d = f.c(1).check(name, "k").await?;
        assert_eq!((d.allowed, ms(d.retry_after)), (false, 600), "{name}");
        f.set_now(Some(T0 + 100_300));
        assert_eq!(arr(&c.peek(name, "k").await?), (false, 0, 300), "{name}");
        // 3 refilled, 2 owed; giving back 4 leaves 2 in the bucket.
        assert_eq!(arr(&c.reward(name, "k", 4).await?), (true, 2, 0), "{name}");
        assert_eq!(arr(&c.reward(name, "k", 5).await?), (true, 5, 0), "{name}");
        assert_eq!(c.peek(name, "k").await?.remaining, 5, "{name}: never above");
        assert_eq!(c.check(name, "k").await?.remaining, 4, "{name}");
    }

    // Bad input: a concurrency policy, zero, more than the capacity, no points.
    let e = c.penalty("cc", "k", 1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    let e = c.reward("cc", "k", 1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    let e = c.penalty("fw", "k", 4).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    assert!(e.to_string().contains("points 4"), "{e}");
    let e = c.reward("nope", "k", 1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy), "{e}");
    let mut raw = RawConn::greeted(&f.daemons[0].socket).await?;
    for (i, points) in [Some(Value::from(0)), Some(Value::from("2")), None]
        .into_iter()
        .enumerate()
    {
        for op in ["ratelimit.penalty", "ratelimit.reward"] {
            let id = 10 + i as u64;
            let mut fields = vec![
                ("op", Value::from(op)),
                ("id", id.into()),
                ("policy", "fw".into()),
                ("key", "k".into()),
            ];
            if let Some(p) = points.clone() {
                fields.push(("points", p));
            }
            raw.send(&req(&fields)).await?;
            let r = raw.recv().await?;
            assert_eq!(
                err_code(&r).as_deref(),
                Some("bad_request"),
                "{op} {i}: {r}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn reward_through_one_daemon_lifts_a_denial_cached_on_another() -> Result<()> {
    let redis = RedisServer::start().await?;
    let f = Fleet::start(
        &redis,
        &[("daily", pol(Algorithm::FixedWindow, 2, 86_400_000))],
        2,
    )
    .await?;
    f.set_now(Some(T0 + 1_000));
    // A penalty through A is a denial on B (B asks Redis).
    assert!(!f.c(0).penalty("daily", "k", 2).await?.allowed);
    let d = f.c(1).check("daily", "k").await?;
    assert!(!d.allowed, "{d:?}");
    // B now answers from its deny cache (until midnight).
    let before = f.rl(1, "ratelimit_denied_local");
    assert_eq!(f.c(1).check("daily", "k").await?, d);
    assert_eq!(f.rl(1, "ratelimit_denied_local"), before + 1);
    // A reward through A: B lets go within its refresh, not at midnight.
    let r = f.c(0).reward("daily", "k", 1).await?;
    assert_eq!((r.allowed, r.remaining), (true, 1));
    let d = wait_allowed(f.c(1), "daily", "k", Duration::from_secs(3)).await?;
    assert_eq!(d.remaining, 0);
    Ok(())
}
