//! The coherence protocol under faults: races, leases, lost subscribers, trimmed
//! logs, external writers, and a randomized checker across three daemons.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use rand::Rng;
use shoal_client::proto::Source;
use shoal_tests::proxy::FaultProxy;
use shoal_tests::{test_config, Daemon, RedisServer};

async fn last_log_id(redis: &RedisServer) -> Result<String> {
    redis.last_log_id().await
}

#[tokio::test]
async fn three_daemons_invalidate_on_one_evicts_all_and_report_propagation() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut d = Vec::new();
    for i in 0..3 {
        d.push(Daemon::start_ready(test_config(&redis, dir.path(), &format!("n{i}"))).await?);
    }
    let mut clients = Vec::new();
    for x in &d {
        clients.push(x.client().await?);
    }
    let mut lags = Vec::new();
    for round in 0..50 {
        let key = format!("p{round}");
        clients[0]
            .set_raw(&key, Bytes::from_static(b"v"), None)
            .await?;
        for c in &clients[1..] {
            c.get_raw(&key).await?;
            assert_eq!(c.get_full(&key, false).await?.from, Some(Source::L1));
        }
        let started = Instant::now();
        let seq = clients[0].invalidate(&[key.as_str()]).await?;
        for (i, daemon) in d.iter().enumerate().skip(1) {
            daemon.wait_applied(&seq, Duration::from_secs(5)).await?;
            lags.push(started.elapsed());
            assert!(
                !clients[i].get_full(&key, false).await?.hit,
                "stale on n{i}"
            );
        }
    }
    lags.sort();
    println!(
        "invalidation propagation to 2 other daemons: p50 {:?} p99 {:?} max {:?}",
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1]
    );
    Ok(())
}

#[tokio::test]
async fn an_invalidation_racing_an_in_flight_get_never_leaves_the_old_value_in_l1() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "writer")).await?;
    let mut cb = test_config(&redis, dir.path(), "reader");
    cb.redis.url = proxy.url();
    cb.redis.timeout = Duration::from_secs(5);
    let b = Daemon::start_ready(cb).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("acct", Bytes::from_static(b"OLD-BALANCE-100"), None)
        .await?;

    // B's read executes in Redis, but its reply (carrying the old value) is held.
    proxy.hold_replies_matching(b"OLD-BALANCE-100");
    let read = tokio::spawn(async move { cb.get_full("acct", false).await.map(|r| (r, cb)) });
    proxy.wait_held(1, Duration::from_secs(5)).await?;
    // Meanwhile the value changes, and B applies the change.
    let seq = ca.invalidate(&["acct"]).await?;
    b.wait_applied(&seq, Duration::from_secs(5)).await?;
    proxy.release();
    let (r, cb) = read.await??;
    // The caller asked before the change finished: the old value is a fair answer...
    assert_eq!(r.value.as_deref(), Some(&b"OLD-BALANCE-100"[..]));
    // ...but it must not have been kept.
    let again = cb.get_full("acct", false).await?;
    assert!(
        !again.hit,
        "L1 kept a value read before an applied invalidation: {again:?}"
    );
    assert!(b.stat("fills_rejected") >= 1);
    Ok(())
}

#[tokio::test]
async fn leases_give_one_loader_and_refuse_a_stale_set() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "b")).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);

    // First miss takes the lease; a miss on another daemon is told to wait.
    let first = ca.get_full("profile:9", true).await?;
    let token = first.lease.clone().expect("lease token on a miss");
    assert!(token.len() >= 22);
    let second = cb.get_full("profile:9", true).await?;
    assert!(second.lease.is_none());
    let wait = second
        .wait_ms
        .expect("wait_ms while another holds the lease");
    assert!((1..=2000).contains(&wait));

    // The loader's fill with its lease is stored and visible fleet-wide.
    let stored = ca
        .set_with(
            "profile:9",
            Bytes::from_static(b"loaded"),
            shoal_client::SetOptions {
                lease: Some(token.clone()),
                ..Default::default()
            },
        )
        .await?;
    assert!(stored);
    assert_eq!(
        cb.get_raw("profile:9").await?.as_deref(),
        Some(&b"loaded"[..])
    );
    // Reusing a consumed lease stores nothing.
    let again = ca
        .set_with(
            "profile:9",
            Bytes::from_static(b"again"),
            shoal_client::SetOptions {
                lease: Some(token),
                ..Default::default()
            },
        )
        .await?;
    assert!(!again);

    // Stale set: loader A reads the database, a writer invalidates, A's fill is refused.
    ca.invalidate(&["order:1"]).await?;
    let lease = ca.get_full("order:1", true).await?.lease.expect("lease");
    let seq = cb.invalidate(&["order:1"]).await?; // concurrent write elsewhere
    a.wait_applied(&seq, Duration::from_secs(5)).await?;
    let stored = ca
        .set_with(
            "order:1",
            Bytes::from_static(b"stale"),
            shoal_client::SetOptions {
                lease: Some(lease),
                ..Default::default()
            },
        )
        .await?;
    assert!(
        !stored,
        "a fill whose lease was invalidated must be refused"
    );
    assert!(ca.get_raw("order:1").await?.is_none());
    assert!(cb.get_raw("order:1").await?.is_none());
    assert_eq!(
        a.stat("stale_fills_refused"),
        2,
        "the reused lease and the stale fill"
    );
    Ok(())
}

#[tokio::test]
async fn get_or_load_runs_one_loader_across_the_fleet() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut clients = Vec::new();
    let mut daemons = Vec::new();
    for i in 0..3 {
        let d = Daemon::start_ready(test_config(&redis, dir.path(), &format!("g{i}"))).await?;
        clients.push(d.client().await?);
        daemons.push(d);
    }
    let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let c = clients[i % 3].clone();
        let loads = loads.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load("report:42", Some(Duration::from_secs(60)), || async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // A slow database query.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(vec![4u32, 2])
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await?.map_err(|e| anyhow::anyhow!("{e}"))?, vec![4u32, 2]);
    }
    assert_eq!(
        loads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one loader for the fleet"
    );
    Ok(())
}

#[tokio::test]
async fn tags_invalidate_every_tagged_key_as_one_change() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "ta")).await?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "tb")).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    for i in 0..5 {
        ca.set_with(
            &format!("post:{i}"),
            Bytes::from_static(b"p"),
            shoal_client::SetOptions {
                tags: vec!["user:7".into()],
                ..Default::default()
            },
        )
        .await?;
        cb.get_raw(&format!("post:{i}")).await?;
    }
    ca.set_with(
        "post:x",
        Bytes::from_static(b"p"),
        shoal_client::SetOptions {
            tags: vec!["user:8".into()],
            ..Default::default()
        },
    )
    .await?;
    let log_before = last_log_id(&redis).await?;
    let (seq, n) = cb.invalidate_tags(&["user:7"]).await?;
    assert_eq!(n, 5);
    let mut conn = redis.conn().await?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("shoal:log")
        .arg(format!("({log_before}"))
        .arg("+")
        .query_async(&mut conn)
        .await?;
    assert_eq!(entries.len(), 1, "one log entry for the whole tag");
    a.wait_applied(&seq, Duration::from_secs(5)).await?;
    for i in 0..5 {
        assert!(ca.get_raw(&format!("post:{i}")).await?.is_none());
        assert!(cb.get_raw(&format!("post:{i}")).await?.is_none());
    }
    assert!(
        ca.get_raw("post:x").await?.is_some(),
        "other tags untouched"
    );
    Ok(())
}

#[tokio::test]
async fn an_external_writer_invalidates_with_one_eval() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "ext")).await?;
    let c = d.client().await?;
    c.set_raw("sku:1", Bytes::from_static(b"9.99"), None)
        .await?;
    assert_eq!(c.get_full("sku:1", false).await?.from, Some(Source::L1));
    // What a Python or Node writer does, per the README: one EVAL of the script.
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lua/cache_invalidate.lua"
    ))?;
    let mut conn = redis.conn().await?;
    let seq: String = redis::cmd("EVAL")
        .arg(&script)
        .arg(3)
        .arg("shoal:log")
        .arg("shoal:c:sku:1")
        .arg("shoal:l:sku:1")
        .arg(100_000)
        .arg("shoal:inv")
        .arg("python-writer")
        .arg("sku:1")
        .query_async(&mut conn)
        .await?;
    d.wait_applied(&seq, Duration::from_secs(5)).await?;
    assert!(c.get_raw("sku:1").await?.is_none());

    // And shoalctl, which needs no daemon.
    c.set_raw("sku:2", Bytes::from_static(b"1"), None).await?;
    let cfg = dir.path().join("ctl.toml");
    std::fs::write(&cfg, format!("[redis]\nurl = \"{}\"\n", redis.url()))?;
    let out = std::process::Command::new(shoal_tests::workspace_bin("shoalctl")?)
        .arg("--config")
        .arg(&cfg)
        .args(["--json", "invalidate", "sku:2"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    d.wait_applied(
        v["seq"].as_str().unwrap_or_default(),
        Duration::from_secs(5),
    )
    .await?;
    assert!(c.get_raw("sku:2").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_log_trimmed_past_a_daemons_position_flushes_its_l1() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut ca_cfg = test_config(&redis, dir.path(), "w");
    ca_cfg.cache.invalidation_log_len = 100;
    let a = Daemon::start_ready(ca_cfg).await?;
    let mut cb_cfg = test_config(&redis, dir.path(), "r");
    cb_cfg.redis.url = proxy.url();
    let b = Daemon::start_ready(cb_cfg).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("cfg", Bytes::from_static(b"v1"), None).await?;
    cb.get_raw("cfg").await?;
    assert_eq!(cb.get_full("cfg", false).await?.from, Some(Source::L1));

    proxy.block();
    b.wait_unready(Duration::from_secs(5)).await?;
    // While B is away: the key changes, then enough traffic to trim the log.
    ca.set_raw("cfg", Bytes::from_static(b"v2"), None).await?;
    for i in 0..600 {
        ca.invalidate(&[format!("noise{i}").as_str()]).await?;
    }
    proxy.unblock();
    b.wait_ready(Duration::from_secs(10)).await?;
    assert_eq!(b.stat("l1_flushes_log_trimmed"), 1);
    assert_eq!(cb.get_raw("cfg").await?.as_deref(), Some(&b"v2"[..]));
    Ok(())
}

#[tokio::test]
async fn a_short_outage_is_replayed_from_the_log_without_a_flush() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let a = Daemon::start_ready(test_config(&redis, dir.path(), "w")).await?;
    let mut cb_cfg = test_config(&redis, dir.path(), "r");
    cb_cfg.redis.url = proxy.url();
    let b = Daemon::start_ready(cb_cfg).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    for k in ["x", "y"] {
        ca.set_raw(k, Bytes::from_static(b"1"), None).await?;
        cb.get_raw(k).await?;
    }
    proxy.block();
    b.wait_unready(Duration::from_secs(5)).await?;
    let seq = ca.invalidate(&["x"]).await?;
    proxy.unblock();
    b.wait_ready(Duration::from_secs(10)).await?;
    b.wait_applied(&seq, Duration::from_secs(1)).await?;
    assert!(
        cb.get_raw("x").await?.is_none(),
        "missed change replayed from the log"
    );
    assert_eq!(
        cb.get_full("y", false).await?.from,
        Some(Source::L1),
        "L1 kept, no flush"
    );
    assert_eq!(
        b.stat("l1_flushes_log_trimmed") + b.stat("l1_flushes_redis_identity"),
        0
    );
    assert!(b.stat("log_entries_replayed") >= 1);
    Ok(())
}

#[tokio::test]
async fn a_silently_dead_subscriber_is_detected_by_its_heartbeat() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(&redis, dir.path(), "quiet");
    cfg.redis.url = proxy.url();
    let d = Daemon::start_ready(cfg).await?;
    let c = d.client().await?;
    c.set_raw("k", Bytes::from_static(b"v"), None).await?;
    assert_eq!(c.get_full("k", false).await?.from, Some(Source::L1));
    // The TCP connections stay up but nothing comes back: only the heartbeat can tell.
    proxy.hold_replies();
    d.wait_unready(Duration::from_secs(5)).await?;
    assert!(d.stat("heartbeat_timeouts") >= 1);
    proxy.release();
    d.wait_ready(Duration::from_secs(10)).await?;
    assert_eq!(c.get_raw("k").await?.as_deref(), Some(&b"v"[..]));
    Ok(())
}

/// A write the checker knows about: version `v` of a key (0: deleted), issued at
/// `start` and acknowledged at `done` (`None` while in flight, or if it failed).
#[derive(Debug, Clone, Copy)]
struct Written {
    v: u64,
    start: Instant,
    done: Option<Instant>,
}

/// Reads through every daemon while keys are rewritten and subscribers are
/// killed; fails on any read older than the propagation bound, and on any daemon
/// that does not converge.
#[tokio::test]
async fn randomized_checker_with_subscribers_killed_finds_no_stale_read() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let d = Daemon::start_ready(test_config(&redis, dir.path(), &format!("c{i}"))).await?;
        clients.push(d.client().await?);
        daemons.push(d);
    }
    const KEYS: usize = 12;
    // The guarantee, no looser: a read may miss a write that completed less than
    // Δ (`cache.max_staleness`) before it began; anything older is a stale read.
    let bound = daemons[0].ctx.config.cache.max_staleness;
    let history: Arc<Mutex<HashMap<usize, Vec<Written>>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();

    let mut writers = Vec::new();
    for w in 0..2u64 {
        let clients = clients.clone();
        let history = history.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut version = w;
            let mut n = 0u32;
            while !stop.is_cancelled() {
                version += 2;
                let (k, via, inval) = {
                    let mut r = rand::rng();
                    (
                        r.random_range(0..KEYS),
                        r.random_range(0..3),
                        r.random_bool(0.2),
                    )
                };
                let key = format!("chk{k}");
                let v = if inval { 0 } else { version };
                // Recorded before it is sent: a read may see a write still in flight.
                let slot = {
                    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
                    let writes = h.entry(k).or_default();
                    writes.push(Written {
                        v,
                        start: Instant::now(),
                        done: None,
                    });
                    writes.len() - 1
                };
                let res = if inval {
                    clients[via].invalidate(&[key.as_str()]).await.map(|_| ())
                } else {
                    clients[via]
                        .set_raw(&key, Bytes::from(version.to_be_bytes().to_vec()), None)
                        .await
                };
                if res.is_ok() {
                    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(w) = h.get_mut(&k).and_then(|w| w.get_mut(slot)) {
                        w.done = Some(Instant::now());
                    }
                }
                n += 1;
                if n % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Writers race each other on a key, so the checker only trusts what timing
    // proves: a write W that started after the write of the value we read had
    // completed is later in Redis's order. If such a W completed more than `bound`
    // before the read began, the read was stale.
    let test_start = Instant::now();
    let stale = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for (r, c) in clients.iter().enumerate() {
        let c = c.clone();
        let history = history.clone();
        let stop = stop.clone();
        let stale = stale.clone();
        let reads = reads.clone();
        readers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let k = rand::rng().random_range(0..KEYS);
                let began = Instant::now();
                let Ok(v) = c.get_raw(&format!("chk{k}")).await else { continue };
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let got = v.map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[..8]);
                    u64::from_be_bytes(a)
                }).unwrap_or(0);
                let h = history.lock().unwrap_or_else(|p| p.into_inner());
                let Some(writes) = h.get(&k) else { continue };
                // The most generous origin of the value: its latest-acknowledged write
                // (0 may also be "never written").
                // A write still in flight (or failed) counts as "not yet overwritten".
                let origin = writes
                    .iter()
                    .filter(|w| w.v == got)
                    .map(|w| w.done.unwrap_or(began))
                    .max()
                    .or((got == 0).then_some(test_start));
                let Some(origin) = origin else {
                    stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("UNKNOWN: daemon c{r} key chk{k} returned v{got}, never written");
                    continue;
                };
                if let Some(w) = writes
                    .iter()
                    .find(|w| w.start > origin && w.done.is_some_and(|d| d + bound < began))
                {
                    stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!(
                        "STALE: daemon c{r} key chk{k} got v{got}, overwritten by v{} {:?} before the read",
                        w.v,
                        w.done.map(|d| began - d)
                    );
                }
            }
        }));
    }
    // Faults while traffic flows: subscribers killed repeatedly.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.kill_pubsub_clients().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    for t in writers.into_iter().chain(readers) {
        t.await?;
    }
    // Convergence: every daemon ready, caught up to the log, and agreeing with Redis.
    let last = last_log_id(&redis).await?;
    let mut direct = redis.conn().await?;
    for (i, d) in daemons.iter().enumerate() {
        d.wait_ready(Duration::from_secs(10)).await?;
        d.wait_applied(&last, Duration::from_secs(10)).await?;
        for k in 0..KEYS {
            let key = format!("chk{k}");
            let truth: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("shoal:c:{key}"))
                .query_async(&mut direct)
                .await?;
            let got = clients[i].get_raw(&key).await?;
            assert_eq!(
                got.as_deref(),
                truth.as_deref(),
                "daemon c{i} did not converge on {key}"
            );
        }
    }
    let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
    let stale = stale.load(std::sync::atomic::Ordering::Relaxed);
    println!("checker: {reads} reads, {stale} stale, subscribers killed 5 times");
    assert!(reads > 500, "too few reads to mean anything: {reads}");
    assert_eq!(stale, 0);
    assert!(
        daemons
            .iter()
            .map(|d| d.stat("subscriber_reconnects"))
            .sum::<u64>()
            >= 3
    );
    Ok(())
}
