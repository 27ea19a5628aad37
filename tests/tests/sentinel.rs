//! Redis Sentinel end to end (issue #16): daemons configured with
//! `[redis.sentinel]` against a real primary, replica and three sentinels.
//!
//! What is proven here: the daemons find the primary through the sentinels; a
//! change that no replica confirmed is not acknowledged (so a failover cannot
//! lose an acknowledged invalidation or revocation); after `SENTINEL FAILOVER`
//! and after the primary is killed, every connection (commands, invalidation
//! subscriber, revocation reader) moves to the new primary, L1 and the session
//! cache are flushed (the promoted replica is another Redis: replaying its log
//! could skip what it never received), and the fleet is coherent again: a
//! change on one daemon is seen by the other, a revoked session is refused.
//!
//! Failovers are awaited through the sentinels' own view, never by sleeping.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use shoal_client::session::SessionOptions;
use shoal_client::{Client, ErrorCode, Source};
use shoal_tests::sentinel::{replication, SentinelSet};
use shoal_tests::{test_config, Daemon};

const WAIT: Duration = Duration::from_secs(30);

/// A daemon on the sentinel set, ready.
async fn daemon(set: &SentinelSet, dir: &std::path::Path, node: &str) -> Result<Daemon> {
    let mut c = test_config(&set.nodes[0], dir, node);
    set.configure(&mut c);
    Daemon::start_ready(c).await
}

/// Retries `f` until it succeeds: after a failover, changes are refused until
/// the new primary has a replica to confirm them (the old primary, once the
/// sentinels have turned it into one).
async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = shoal_client::Result<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                bail!("{what} still failing after {WAIT:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until `d` has flushed for a Redis identity change at least `n` times
/// and is caught up again.
async fn wait_flushed_and_ready(d: &Daemon, n: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while d.stat("l1_flushes_redis_identity") < n {
        if Instant::now() > deadline {
            bail!(
                "L1 was not flushed for the new primary (flushes: {})",
                d.stat("l1_flushes_redis_identity")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.wait_ready(WAIT).await
}

use shoal_tests::read_string as value;

/// Waits until `c` refuses `token` (a revocation made through another
/// daemon reached it).
async fn until_refused(c: &Client, token: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while c.session_get::<String>(token).await?.is_some() {
        if Instant::now() > deadline {
            bail!("still accepts a revoked session after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A node's replication role (`master`, `slave`).
async fn role(node: &shoal_tests::RedisServer) -> Option<String> {
    replication(node).await.get("role").cloned()
}

/// Reads `key` through `c` until it shows `want` (the change must arrive).
async fn until_value(c: &Client, key: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((Some(v), _)) = value(c, key).await {
            if v == want {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{key} never showed {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_change_no_replica_confirmed_is_not_acknowledged() -> Result<()> {
    let set = SentinelSet::start().await?;
    let dir = tempfile::tempdir()?;
    let d = daemon(&set, dir.path(), "a").await?;
    let c = d.client().await?;
    c.set("k", "v1", None).await?;

    // The replica cannot confirm anything: the change may reach the primary,
    // but a failover now could lose it, so it is not acknowledged.
    let replica = 1 - set.primary_index().await?;
    set.nodes[replica].signal(Signal::SIGSTOP)?;
    let refused = c.set("k", "v2", None).await;
    let revoked = c.invalidate(&["k"]).await;
    set.nodes[replica].signal(Signal::SIGCONT)?;
    let e = refused
        .err()
        .context("a set no replica confirmed was acknowledged")?;
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(
        revoked.is_err(),
        "an unconfirmed invalidation was acknowledged"
    );

    c.set("k", "v3", None).await?;
    assert_eq!(value(&c, "k").await?.0.as_deref(), Some("v3"));
    // It is on the replica too (what WAIT confirmed).
    let mut r = set.nodes[replica].conn().await?;
    let on_replica: Option<Vec<u8>> = redis::cmd("GET")
        .arg("shoal:c:k")
        .query_async(&mut r)
        .await?;
    assert!(on_replica.is_some());
    d.stop().await
}

#[tokio::test]
async fn sentinel_failover_moves_every_connection_and_flushes() -> Result<()> {
    let set = SentinelSet::start().await?;
    let dir = tempfile::tempdir()?;
    let a = daemon(&set, dir.path(), "a").await?;
    let b = daemon(&set, dir.path(), "b").await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    let old = set.primary_index().await?;

    ca.set("k", "v1", None).await?;
    until_value(&cb, "k", "v1").await?;
    assert_eq!(
        value(&cb, "k").await?.1,
        Some(Source::L1),
        "b serves k from L1"
    );
    let s = ca
        .session_create("alice", &"profile", SessionOptions::default())
        .await?;
    assert!(cb.session_get::<String>(&s.token).await?.is_some());
    let flushes = (
        a.stat("l1_flushes_redis_identity"),
        b.stat("l1_flushes_redis_identity"),
    );

    set.failover(WAIT).await?;
    let new = set.primary_index().await?;
    assert_ne!(new, old);
    wait_flushed_and_ready(&a, flushes.0 + 1).await?;
    wait_flushed_and_ready(&b, flushes.1 + 1).await?;

    // What was acknowledged before the failover survived it (the replica
    // confirmed it); b reads it from the new primary, not from an L1 filled
    // from the old one.
    let (v, from) = value(&cb, "k").await?;
    assert_eq!(v.as_deref(), Some("v1"));
    assert_ne!(
        from,
        Some(Source::L1),
        "L1 must not outlive the primary it was filled from"
    );

    // Changes flow again, through the new primary, to the other daemon.
    until_ok("set after failover", || ca.set("k", "v2", None)).await?;
    until_value(&cb, "k", "v2").await?;
    let mut p = set.nodes[new].conn().await?;
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("shoal:c:k")
        .query_async(&mut p)
        .await?;
    assert!(raw.is_some(), "the write went to the new primary");
    until_ok("revoke after failover", || ca.session_revoke(&s.token)).await?;
    until_refused(&cb, &s.token).await?;

    // The old primary serves as a replica now; every daemon is caught up.
    set.wait_stable(WAIT).await?;
    assert_eq!(role(&set.nodes[old]).await.as_deref(), Some("slave"));
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn a_killed_primary_is_failed_over_and_followed() -> Result<()> {
    let mut set = SentinelSet::start().await?;
    let dir = tempfile::tempdir()?;
    let a = daemon(&set, dir.path(), "a").await?;
    let b = daemon(&set, dir.path(), "b").await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set("k", "v1", None).await?;
    until_value(&cb, "k", "v1").await?;
    let s = ca
        .session_create("bob", &"profile", SessionOptions::default())
        .await?;
    assert!(cb.session_get::<String>(&s.token).await?.is_some());
    let flushes = b.stat("l1_flushes_redis_identity");

    let killed = set.kill_primary(WAIT).await?;
    wait_flushed_and_ready(&b, flushes + 1).await?;
    wait_flushed_and_ready(&a, 1).await?;
    assert_eq!(value(&cb, "k").await?.0.as_deref(), Some("v1"));

    // Back, empty: the sentinels make it a replica of the new primary, and
    // changes are confirmed again.
    set.restart_node(killed).await?;
    until_ok("set after the primary was killed", || {
        ca.set("k", "v2", None)
    })
    .await?;
    until_value(&cb, "k", "v2").await?;
    until_ok("revoke after the primary was killed", || {
        ca.session_revoke(&s.token)
    })
    .await?;
    until_refused(&cb, &s.token).await?;
    assert_eq!(role(&set.nodes[killed]).await.as_deref(), Some("slave"));
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn shoald_refuses_two_topologies_with_exit_64() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("two.toml");
    std::fs::write(
        &file,
        "[redis]\nurl = \"redis://127.0.0.1:6390\"\n[redis.sentinel]\nmaster = \"mymaster\"\n\
         urls = [\"redis://127.0.0.1:26379\"]\n",
    )?;
    let path = file.to_str().context("utf-8 path")?;
    let (code, _, err) =
        shoal_tests::run_bin("shoald", &["--config", path, "--print-config"]).await?;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("exactly one of redis.url, [redis.sentinel] and [redis.cluster]"),
        "{err}"
    );

    std::fs::write(
        &file,
        "[redis.cluster]\nurls = [\"redis://127.0.0.1:7000\"]\n[redis.sentinel]\n\
         master = \"mymaster\"\nurls = [\"redis://127.0.0.1:26379\"]\n",
    )?;
    let (code, _, err) =
        shoal_tests::run_bin("shoald", &["--config", path, "--print-config"]).await?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("exactly one"), "{err}");

    // A cluster configuration alone is fine, and prints without its password.
    std::fs::write(
        &file,
        "[redis.cluster]\nurls = [\"redis://127.0.0.1:7000\"]\npassword = \"cluster-secret\"\n",
    )?;
    let (code, out, err) =
        shoal_tests::run_bin("shoald", &["--config", path, "--print-config"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("buckets = 16"), "{out}");
    assert!(!out.contains("cluster-secret"), "{out}");

    // A sentinel configuration alone is fine, and prints without secrets.
    std::fs::write(
        &file,
        "[redis.sentinel]\nmaster = \"mymaster\"\nurls = [\"redis://:sentinel-secret@127.0.0.1:26379\"]\n\
         password = \"node-secret\"\n",
    )?;
    let (code, out, err) =
        shoal_tests::run_bin("shoald", &["--config", path, "--print-config"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[redis.sentinel]") && out.contains("mymaster"),
        "{out}"
    );
    assert!(!out.contains("secret"), "{out}");
    Ok(())
}

#[tokio::test]
async fn doctor_follows_the_sentinels_to_the_primary() -> Result<()> {
    let set = SentinelSet::start().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shoal.toml");
    std::fs::write(&file, set.toml_section())?;
    let path = file.to_str().context("utf-8 path")?;
    let (_, out, err) =
        shoal_tests::run_bin("shoalctl", &["--config", path, "doctor", "--json"]).await?;
    let report: serde_json::Value = serde_json::from_str(&out).with_context(|| err.clone())?;
    let primary = set.primary().await?;
    assert_eq!(report["topology"], "sentinel", "{report:#}");
    assert_eq!(
        report["redis_url"],
        format!("redis://127.0.0.1:{}/0", primary.port()),
        "{report:#}"
    );
    assert_eq!(
        finding_of(&report, "sentinel")["severity"],
        "ok",
        "{report:#}"
    );
    assert_eq!(
        finding_of(&report, "replicas")["severity"],
        "ok",
        "{report:#}"
    );
    assert!(
        finding_of(&report, "role").is_null(),
        "the primary is a primary: {report:#}"
    );

    // More replicas asked for than there are: every change would be refused.
    std::fs::write(&file, format!("{}wait_replicas = 2\n", set.toml_section()))?;
    let (code, out, _) =
        shoal_tests::run_bin("shoalctl", &["--config", path, "doctor", "--json"]).await?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        finding_of(&report, "replicas")["severity"],
        "problem",
        "{report:#}"
    );

    // A standalone configuration pointing at the replica is told so.
    let replica = &set.nodes[1 - set.primary_index().await?];
    std::fs::write(&file, format!("[redis]\nurl = \"{}\"\n", replica.url()))?;
    let (code, out, _) =
        shoal_tests::run_bin("shoalctl", &["--config", path, "doctor", "--json"]).await?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["topology"], "standalone");
    assert_eq!(
        finding_of(&report, "role")["severity"],
        "problem",
        "{report:#}"
    );
    Ok(())
}

fn finding_of(report: &serde_json::Value, check: &str) -> serde_json::Value {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["check"] == check)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_readme_sentinel_configuration_is_valid() -> Result<()> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Redis Sentinel")
        .nth(1)
        .context("README has a Redis Sentinel section")?;
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("with a TOML block")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, block)?;
    let config = shoal_tests::shoald::Config::load(Some(&file))?;
    let s = config
        .redis
        .sentinel
        .context("a [redis.sentinel] section")?;
    assert_eq!(s.master, "mymaster");
    assert_eq!(s.urls.len(), 3);
    Ok(())
}

#[tokio::test]
async fn the_sentinels_down_do_not_take_the_daemon_down() -> Result<()> {
    let mut set = SentinelSet::start().await?;
    let dir = tempfile::tempdir()?;
    let a = daemon(&set, dir.path(), "a").await?;
    let c = a.client().await?;
    c.set("k", "v1", None).await?;
    // Every sentinel gone; the primary is fine.
    set.sentinels.clear();
    // The subscriber and the reader reconnect (to the primary named last),
    // and the daemon goes on serving and changing.
    a.wait_ready(WAIT).await?;
    c.set("k", "v2", None).await?;
    assert_eq!(value(&c, "k").await?.0.as_deref(), Some("v2"));
    set.nodes[0].kill_pubsub_clients().await.ok();
    set.nodes[1].kill_pubsub_clients().await.ok();
    let deadline = Instant::now() + WAIT;
    loop {
        if a.ctx.coherence.caught_up() && a.stat("subscriber_reconnects") >= 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the subscriber did not come back without sentinels");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.set("k", "v3", None).await?;
    until_value(&c, "k", "v3").await?;
    a.stop().await
}
