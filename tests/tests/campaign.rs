//! The fault campaign in CI (issue 12): three daemons, every kind of cache change
//! and read, sessions, and every fault kind injected at random for a minute. The
//! oracle (`shoal_tests::history`) allows exactly Δ = `cache.max_staleness` of
//! staleness; any stale read, revoked session accepted past Δ, or daemon that does
//! not converge after a fault fails the test. The seed is printed;
//! `SHOAL_CAMPAIGN_SEED=<seed>` replays a run's fault schedule.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Result;
use shoal_tests::campaign::{run, CampaignConfig, FaultKind, Topology};

/// What a run must show besides "no failure": enough work checked (at least).
struct Floor {
    reads: u64,
    l1_hits: u64,
    shm_hits: u64,
    session_reads: u64,
}

/// Runs `config` for `default_secs` (or `SHOAL_CAMPAIGN_MINUTES`), prints its
/// tables and fails unless every fault of `kinds` was injected, the work
/// reached `floor`, and the oracle found nothing.
async fn run_checked(
    mut config: CampaignConfig,
    default_secs: u64,
    kinds: &[FaultKind],
    floor: Floor,
) -> Result<()> {
    config.duration = std::env::var("SHOAL_CAMPAIGN_MINUTES")
        .ok()
        .and_then(|m| m.parse::<f64>().ok())
        .map_or(Duration::from_secs(default_secs), |m| {
            Duration::from_secs_f64(m * 60.0)
        });
    let report = run(config).await?;
    println!("{}", report.table());
    let failures = report.failures(20);
    for f in &failures {
        println!("{f}");
    }
    for kind in kinds {
        assert!(
            report.faults.iter().any(|f| f.kind == *kind),
            "{} never injected",
            kind.name()
        );
    }
    let v = &report.verdict;
    assert!(v.reads_checked >= floor.reads, "too few reads checked");
    assert!(
        report.l1_hits >= floor.l1_hits,
        "too few L1 hits: the oracle saw no cache"
    );
    assert!(
        report.shm_hits >= floor.shm_hits,
        "too few shared-memory hits ({}): the oracle saw no shm reader",
        report.shm_hits
    );
    assert!(v.session_reads_checked >= floor.session_reads);
    assert!(
        report.ok(),
        "seed {} (SHOAL_CAMPAIGN_SEED={} to replay): {} failures, first: {:#?}",
        report.config.seed,
        report.config.seed,
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign() -> Result<()> {
    // About a minute in CI; `SHOAL_CAMPAIGN_MINUTES` runs the same test longer.
    // Every fault kind runs, and the workload really runs through them.
    let floor = Floor {
        reads: 10_000,
        l1_hits: 1_000,
        shm_hits: 100,
        session_reads: 500,
    };
    let kinds = FaultKind::of(Topology::Standalone);
    run_checked(CampaignConfig::new(Duration::ZERO), 62, &kinds, floor).await
}

/// The campaign against Sentinel (issue 16): a primary, a replica and three
/// sentinels; besides the faults a standalone Redis meets, `SENTINEL FAILOVER`
/// and a killed primary (promoted replica, old primary back empty). Under a
/// minute in CI (`SHOAL_CAMPAIGN_MINUTES` runs it longer; the bench with
/// `--sentinel` too). Same oracle, same Δ: no stale read, no revoked session
/// accepted, every daemon converges after every fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_on_sentinel() -> Result<()> {
    let mut config = CampaignConfig::new(Duration::ZERO);
    config.topology = Topology::Sentinel;
    let floor = Floor {
        reads: 5_000,
        l1_hits: 500,
        shm_hits: 0,
        session_reads: 200,
    };
    let kinds = [FaultKind::Failover, FaultKind::KillPrimary];
    run_checked(config, 40, &kinds, floor).await
}

/// The campaign against Redis Cluster (issue 16): three primaries, three
/// replicas, the daemons on `[redis.cluster]` with 8 buckets; besides the
/// faults a standalone Redis meets (applied to every node, or to one primary),
/// a resharding (the slot of a bucket holding workload keys migrated to
/// another primary while the workload runs), a shard failover (a primary
/// SIGKILLed, its replica promoted, the old primary back as a replica), an
/// operator's `CLUSTER FAILOVER`, a shard restart (a primary SIGKILLed and
/// back with its AOF) and one that loses the shard's data (back empty, its
/// replica resyncing from it: a data loss of exactly the keys of its
/// buckets). About 40 s in CI (`SHOAL_CAMPAIGN_MINUTES` runs it
/// longer; the bench with `--cluster` too). Same oracle, same Δ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_on_cluster() -> Result<()> {
    let mut config = CampaignConfig::new(Duration::ZERO);
    config.topology = Topology::Cluster;
    config.buckets = 8;
    let floor = Floor {
        reads: 5_000,
        l1_hits: 500,
        shm_hits: 100,
        session_reads: 200,
    };
    run_checked(config, 40, &FaultKind::CLUSTER, floor).await
}

/// Convergence does not depend on Redis being close: a daemon 25 ms (each way)
/// from Redis proves delivery every heartbeat well within Δ (a round trip is
/// 50 ms), so it must become ready, stay ready and serve from L1 — even though
/// its catch-up after subscribing takes a dozen round trips, longer than 2Δ.
#[tokio::test]
async fn a_daemon_25ms_from_redis_converges_and_serves_from_l1() -> Result<()> {
    use shoal_tests::proxy::FaultProxy;
    use shoal_tests::{test_config, Daemon, RedisServer};
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    proxy.set_delay(Duration::from_millis(25));
    let dir = tempfile::tempdir()?;
    let mut c = test_config(&redis, dir.path(), "far");
    c.redis.url = proxy.url();
    c.redis.timeout = Duration::from_secs(2);
    c.cache.heartbeat = Duration::from_millis(50);
    c.cache.max_staleness = Duration::from_millis(250);
    let d = Daemon::start(c).await?;
    d.wait_ready(Duration::from_secs(10)).await?;
    let client = d.client().await?;
    client
        .set_raw("far", bytes::Bytes::from_static(b"v"), None)
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = client.get_full("far", false).await?;
        if r.from == Some(shoal_client::Source::L1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a daemon 25 ms from Redis never served from L1 in 5 s (subscriber reconnects: {}, heartbeat timeouts: {})",
            d.stat("subscriber_reconnects"),
            d.stat("heartbeat_timeouts")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The session half of the bound, without waiting for luck: a daemon whose link
/// to Redis is black-holed (no RST, so nothing tells it) must not accept a
/// session more than Δ after its revocation returned elsewhere — its local
/// session cache needs a revocation proof younger than Δ, like L1.
#[tokio::test]
async fn a_partitioned_daemon_refuses_a_revoked_session_after_delta() -> Result<()> {
    use shoal_tests::proxy::FaultProxy;
    use shoal_tests::{test_config, Daemon, RedisServer};
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let delta = Duration::from_millis(250);
    let config = |name: &str, url: String| {
        let mut c = test_config(&redis, dir.path(), name);
        c.redis.url = url;
        c.cache.heartbeat = Duration::from_millis(50);
        c.cache.max_staleness = delta;
        c
    };
    let near = Daemon::start_ready(config("near", redis.url())).await?;
    let far = Daemon::start_ready(config("far", proxy.url())).await?;
    let (cn, cf) = (near.client().await?, far.client().await?);
    let created = cn
        .session_create_raw("u1", b"d".to_vec(), Default::default())
        .await?;
    // The far daemon validates it (and keeps it in its local cache).
    for _ in 0..3 {
        assert!(cf.session_get_raw(&created.token, false).await?.is_some());
    }
    proxy.blackhole();
    assert!(cn.session_revoke(&created.token).await?);
    let revoked = std::time::Instant::now();
    tokio::time::sleep(delta + Duration::from_millis(20)).await;
    // Any answer but "valid" is fine (unavailable, timeout, not found).
    let late = cf.session_get_raw(&created.token, false).await;
    let began_after = revoked.elapsed();
    proxy.heal();
    assert!(
        !matches!(late, Ok(Some(_))),
        "the partitioned daemon accepted a session {began_after:?} after its revocation returned (Δ {delta:?})"
    );
    Ok(())
}
