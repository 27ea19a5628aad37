//! The shared-memory L1 end to end (issue 17, part 2): a client on the same host
//! answers hits from the daemon's segment without the socket, and the coherence
//! rules hold for it unchanged — read-your-writes, invalidations from other
//! daemons, loss of trust, flushes, the Δ deadline — with real daemons and Redis.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use shoal_client::shm::Lookup;
use shoal_client::{Client, Source};
use shoal_tests::{test_config, Daemon, RedisServer};

async fn view(d: &Daemon) -> Result<shoal_client::shm::View> {
    Ok(shoal_client::shm::attach(&d.socket, "shm-test").await?)
}

/// A counter of the daemon's `stats` op.
async fn daemon_stat(c: &Client, name: &str) -> Result<u64> {
    let stats = c.stats().await?;
    let found = stats
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
        .and_then(|(_, v)| v.as_u64());
    found.ok_or_else(|| anyhow::anyhow!("no stat {name}"))
}

/// Reads `key` until shared memory serves it (the first read through the socket
/// publishes it); the value it served.
async fn read_until_shm(c: &Client, key: &str) -> Result<Option<Bytes>> {
    for _ in 0..3 {
        let before = c.shm_stats().hits;
        let r = c.get_full(key, false).await?;
        if c.shm_stats().hits > before {
            return Ok(r.value);
        }
    }
    anyhow::bail!("{key} was never served from shared memory")
}

#[tokio::test]
async fn a_hit_is_served_from_shared_memory_without_the_socket() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    assert!(c.shm_stats().attached, "attached at connect");
    c.set_raw(
        "user:1",
        Bytes::from_static(b"alice"),
        Some(Duration::from_secs(60)),
    )
    .await?;
    let first = c.get_full("user:1", false).await?;
    assert_eq!(first.from, Some(Source::L1), "through the socket, from L1");
    assert_eq!(c.shm_stats().hits, 0);
    let socket_hits = d.stat("l1_hits");
    let r = c.get_full("user:1", false).await?;
    assert_eq!(
        (r.hit, r.from, r.value.as_deref()),
        (true, Some(Source::L1), Some(&b"alice"[..]))
    );
    let ttl = r.ttl_ms.unwrap_or(0);
    assert!(ttl > 50_000 && ttl <= 60_000, "ttl {ttl}");
    assert_eq!(c.shm_stats().hits, 1, "served from shared memory");
    assert_eq!(d.stat("l1_hits"), socket_hits, "the daemon never saw it");
    // Typed reads go the same way; a miss still asks the socket.
    assert_eq!(c.get_raw("user:1").await?.as_deref(), Some(&b"alice"[..]));
    assert_eq!(c.shm_stats().hits, 2);
    assert!(c.get_raw("nobody").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn mget_answers_hits_from_shared_memory_and_asks_the_socket_for_the_rest() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    for k in ["a", "b", "c"] {
        c.set_raw(k, Bytes::from(k.to_uppercase()), None).await?;
    }
    read_until_shm(&c, "b").await?;
    let before = c.shm_stats().hits;
    let r = c.mget_full(["a", "b", "nobody", "c"]).await?;
    assert_eq!(c.shm_stats().hits, before + 1, "b from shared memory");
    let values: Vec<Option<&[u8]>> = r.iter().map(|g| g.value.as_deref()).collect();
    assert_eq!(
        values,
        [Some(&b"A"[..]), Some(&b"B"[..]), None, Some(&b"C"[..])],
        "in order"
    );
    assert!(r.iter().all(|g| g.from.is_some() == g.hit));
    // Every key in shared memory: no call at all.
    read_until_shm(&c, "a").await?;
    read_until_shm(&c, "c").await?;
    let requests = d.stat("requests");
    assert_eq!(c.mget_raw(["c", "a", "b"]).await?.len(), 3);
    assert_eq!(d.stat("requests"), requests, "answered without the socket");
    // A change is seen by mget as by get.
    c.set_raw("b", Bytes::from_static(b"B2"), None).await?;
    let r = c.mget_raw(["a", "b"]).await?;
    assert_eq!(r[1].as_deref(), Some(&b"B2"[..]));
    Ok(())
}

#[tokio::test]
async fn writes_and_invalidations_through_the_same_daemon_are_read_at_once() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    for v in 0..20u32 {
        let value = Bytes::from(format!("v{v}"));
        c.set_raw("k", value.clone(), None).await?;
        // Read-your-writes: the old copy was retired before `set` returned.
        assert_eq!(c.get_raw("k").await?, Some(value.clone()), "after set {v}");
        assert_eq!(read_until_shm(&c, "k").await?, Some(value));
    }
    c.invalidate(["k"]).await?;
    assert!(
        c.get_raw("k").await?.is_none(),
        "invalidated: never the old value"
    );
    assert!(daemon_stat(&c, "shm_retired").await? >= 20);
    Ok(())
}

#[tokio::test]
async fn a_change_through_another_daemon_is_never_read_from_shm_once_applied() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "b")).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    for v in 0..10u32 {
        let old = Bytes::from(format!("old{v}"));
        cb.set_raw("row", old.clone(), None).await?;
        // The set reaches `a` asynchronously: until it is applied, `a` may still
        // serve the previous round's value, within the bound. The next log id
        // (of another key) is after the set's.
        let set = cb.invalidate(["marker"]).await?;
        a.wait_applied(&set, Duration::from_secs(5)).await?;
        assert_eq!(read_until_shm(&ca, "row").await?, Some(old.clone()));
        let seq = if v % 2 == 0 {
            cb.invalidate(["row"]).await?
        } else {
            cb.set_raw("row", Bytes::from(format!("new{v}")), None)
                .await?;
            // The set's log id: the next invalidation of another key is after it.
            cb.invalidate(["marker"]).await?
        };
        a.wait_applied(&seq, Duration::from_secs(5)).await?;
        let now = ca.get_raw("row").await?;
        assert_ne!(
            now,
            Some(old),
            "round {v}: the old value after the change was applied"
        );
    }
    Ok(())
}

#[tokio::test]
async fn loss_of_trust_and_flushes_send_readers_to_the_socket() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    let v = view(&d).await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    read_until_shm(&c, "k").await?;
    assert!(matches!(v.get(b"k"), Lookup::Hit { .. }));

    // The subscriber loses its connection: readers stop at once.
    redis.kill_pubsub_clients().await?;
    d.wait_unready(Duration::from_secs(5)).await?;
    assert_eq!(v.get(b"k"), Lookup::Untrusted);
    d.wait_ready(Duration::from_secs(10)).await?;
    // Trusted again, but every copy from before the gap is dead.
    assert_eq!(v.get(b"k"), Lookup::Miss);
    read_until_shm(&c, "k").await?;

    // An unreadable message on the channel flushes L1, and the segment with it.
    let mut conn = redis.conn().await?;
    let channel = d.ctx.store.keys().channel();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("garbage")
        .query_async(&mut conn)
        .await?;
    // Messages are handled in order: once a later change is applied, so is the flush.
    let seq = c.invalidate(["other"]).await?;
    d.wait_applied(&seq, Duration::from_secs(5)).await?;
    assert!(d.stat("l1_flushes_bad_message") >= 1);
    assert_eq!(v.get(b"k"), Lookup::Miss, "flushed");
    Ok(())
}

#[tokio::test]
async fn readers_stop_within_the_bound_when_delivery_proofs_stop() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let delta = d.ctx.config.cache.max_staleness;
    let c = d.client().await?;
    let v = view(&d).await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    read_until_shm(&c, "k").await?;
    // Redis stalls: no heartbeat comes back, the subscription looks alive.
    redis.signal(nix::sys::signal::Signal::SIGSTOP)?;
    let stopped = Instant::now();
    let mut last_hit = None;
    let refused = loop {
        // Taken before the lookup: a hit means the deadline was later than this.
        let at = stopped.elapsed();
        match v.get(b"k") {
            Lookup::Hit { .. } => last_hit = Some(at),
            Lookup::Untrusted => break stopped.elapsed(),
            Lookup::Miss => anyhow::bail!("the copy vanished instead of being refused"),
        }
        assert!(
            stopped.elapsed() < delta * 4,
            "still served {:?} after the stall",
            stopped.elapsed()
        );
        tokio::task::yield_now().await;
    };
    redis.signal(nix::sys::signal::Signal::SIGCONT)?;
    // Every proof heard was sent before the stall, so no hit after Δ...
    assert!(
        last_hit.is_some_and(|t| t < delta),
        "served from shm until {last_hit:?} (Δ {delta:?})"
    );
    // ...and refused soon after (this loop shares its runtime with the daemon).
    assert!(
        refused < delta + Duration::from_millis(100),
        "refused after {refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn shm_is_off_with_zero_bytes_or_when_the_client_opts_out() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(&redis, dir.path(), "off");
    cfg.cache.shm_bytes = bytesize::ByteSize::b(0);
    let off = Daemon::start_ready(cfg).await?;
    let c = off.client().await?;
    assert!(!c.shm_stats().attached);
    let err = shoal_client::shm::attach(&off.socket, "t").await.err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("cache.shm_bytes = 0")),
        "{err:?}"
    );
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    for _ in 0..3 {
        assert_eq!(c.get_full("k", false).await?.from, Some(Source::L1));
    }
    assert_eq!(c.shm_stats().hits, 0);

    let on = Daemon::start_ready(test_config(&redis, dir.path(), "on")).await?;
    let c = Client::builder(&on.socket).shm(false).connect().await?;
    assert!(!c.shm_stats().attached);
    c.set_raw("k2", Bytes::from_static(b"v"), None).await?;
    for _ in 0..3 {
        c.get_raw("k2").await?;
    }
    assert_eq!(c.shm_stats(), shoal_client::ShmStats::default());
    Ok(())
}

#[tokio::test]
async fn values_above_a_slot_stay_on_the_socket() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    let big = Bytes::from(vec![7u8; 2048]);
    c.set_raw("big", big.clone(), None).await?;
    for _ in 0..3 {
        assert_eq!(c.get_raw("big").await?, Some(big.clone()));
    }
    assert_eq!(c.shm_stats().hits, 0);
    assert_eq!(daemon_stat(&c, "shm_published").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_restarted_daemon_hands_out_a_new_segment_on_reconnect() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = test_config(&redis, dir.path(), "a");
    let d = Daemon::start_ready(cfg.clone()).await?;
    let c = d.client().await?;
    c.set_raw("k", Bytes::from_static(b"one"), None).await?;
    read_until_shm(&c, "k").await?;
    d.stop().await?;
    let d = Daemon::start_ready(cfg).await?;
    // The old segment was closed with its daemon: never served from it again.
    c.set_raw("k", Bytes::from_static(b"two"), None).await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"two"[..]));
    assert_eq!(read_until_shm(&c, "k").await?.as_deref(), Some(&b"two"[..]));
    drop(d);
    Ok(())
}

/// The example `shm_probe`, built now (a no-op when it is current).
async fn probe_bin() -> Result<std::path::PathBuf> {
    let mut cmd = tokio::process::Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "shoal-tests", "--example", "shm_probe"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    anyhow::ensure!(cmd.status().await?.success(), "building shm_probe failed");
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/shm-<hash> -> target/<profile>/examples/shm_probe
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))?;
    Ok(dir.join("examples").join("shm_probe"))
}

#[tokio::test]
async fn a_client_whose_monotonic_clock_is_behind_the_daemons_does_not_use_the_segment(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    c.set_raw("probe", Bytes::from_static(b"v"), None).await?;
    let run = |cmd: &mut tokio::process::Command| {
        let out = cmd.output();
        async move {
            let out = out.await?;
            anyhow::ensure!(
                out.status.success(),
                "probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, anyhow::Error>(String::from_utf8(out.stdout)?.trim().to_string())
        }
    };
    let bin = probe_bin().await?;
    // Same clock: the second read comes from shared memory.
    let same = run(tokio::process::Command::new(&bin).arg(&d.socket)).await?;
    assert_eq!(same, "attached=true hits=1 value=v");
    // A time namespace whose CLOCK_MONOTONIC is 5 s behind: the segment's
    // deadlines would mean 5 s later there, so the client reads through the socket.
    let behind = run(tokio::process::Command::new("unshare")
        .args(["--time", "--monotonic", "-5", "--fork"])
        .arg(&bin)
        .arg(&d.socket))
    .await?;
    assert_eq!(behind, "attached=false hits=0 value=v");
    Ok(())
}
