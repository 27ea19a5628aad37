//! Redis errors that production actually produces, end to end against a real
//! redis-server put into each state on purpose: out of memory under
//! `noeviction`, loading a dataset, a replica after failover (`READONLY`), a
//! replica whose master is gone (`MASTERDOWN`), a script past
//! `busy-reply-threshold` (`BUSY`), a flushed script cache (`NOSCRIPT`), and a
//! hung server (`SIGSTOP`).
//!
//! Each must take the rate-limit policy's fail mode and the session
//! `on_unavailable` path, show in `/readyz` and `/metrics` as Redis trouble, and
//! never reach a client as `internal`. A hung Redis must open the circuit so
//! requests stop paying `redis.timeout` each, and a half-open probe closes it
//! when Redis answers again.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_client::proto::ErrorCode;
use shoal_client::Client;
use shoal_tests::shoald::config::{Algorithm, FailMode, PolicyConfig};
use shoal_tests::{http_get, test_config, Daemon, RedisServer};

fn policy(mode: FailMode) -> PolicyConfig {
    PolicyConfig {
        algorithm: Algorithm::FixedWindow,
        limit: 1000,
        window: Duration::from_secs(60),
        burst: None,
        on_unavailable: mode,
        expected_nodes: 1,
        overrides: BTreeMap::new(),
        max_reserve_ahead: None,
        headers: None,
        block: None,
    }
}

/// One daemon with an `open` and a `closed` policy and its admin server.
struct Rig {
    redis: RedisServer,
    daemon: Daemon,
    client: Client,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(timeout: Duration) -> Result<Rig> {
        let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await?;
        let dir = tempfile::tempdir()?;
        let mut c = test_config(&redis, dir.path(), "a");
        c.redis.timeout = timeout;
        c.admin.listen = "127.0.0.1:0".into();
        c.ratelimit
            .policies
            .insert("open".into(), policy(FailMode::Open));
        c.ratelimit
            .policies
            .insert("closed".into(), policy(FailMode::Closed));
        let daemon = Daemon::start_ready(c).await?;
        let client = daemon.client().await?;
        let admin = daemon.admin_addr(Duration::from_secs(5)).await?;
        // Redis decides while it is healthy.
        let d = client.check("closed", "k").await?;
        ensure!(d.allowed && d.fallback.is_none(), "healthy: {d:?}");
        Ok(Rig {
            redis,
            daemon,
            client,
            admin,
            _dir: dir,
        })
    }

    async fn redis_cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T> {
        let mut c = self.redis.conn().await?;
        Ok(cmd.query_async(&mut c).await?)
    }

    /// `shoal_redis_command_errors_total{kind=...}` from `/metrics`.
    async fn errors_metric(&self, kind: &str) -> Result<f64> {
        let text = http_get(self.admin, "/metrics", &[]).await?;
        let want = format!("shoal_redis_command_errors_total{{kind=\"{kind}\"}} ");
        for line in text.text()?.lines() {
            if let Some(v) = line.strip_prefix(&want) {
                return Ok(v.parse()?);
            }
        }
        Ok(0.0)
    }

    /// The promises of issue 13 §1 while Redis is in trouble of `kind`
    /// (`code`: how Redis spells it, as `/readyz` should show it).
    async fn assert_trouble(&self, kind: &str, code: &str) -> Result<()> {
        let d = self.client.check("closed", "k").await?;
        ensure!(
            !d.allowed && d.fallback.as_deref() == Some("closed"),
            "{code}: a closed policy must deny through its fail mode: {d:?}"
        );
        let d = self.client.check("open", "k").await?;
        ensure!(
            d.allowed && d.fallback.as_deref() == Some("open"),
            "{code}: an open policy must allow through its fail mode: {d:?}"
        );
        let e = self
            .client
            .session_create("u", &serde_json::json!({}), Default::default())
            .await
            .expect_err("no session can be created while Redis refuses writes");
        ensure!(
            e.code() == Some(ErrorCode::Unavailable),
            "{code}: session.create must answer unavailable, got {e}"
        );
        let ready = http_get(self.admin, "/readyz", &[]).await?;
        ensure!(ready.status == 503, "{code}: /readyz {}", ready.status);
        let body = ready.text()?.to_string();
        ensure!(
            body.contains(code),
            "{code}: /readyz does not say why: {body}"
        );
        let n = self.errors_metric(kind).await?;
        ensure!(
            n >= 1.0,
            "{code}: /metrics counted {n} errors of kind {kind}"
        );
        Ok(())
    }

    /// Redis healthy again: decisions come from it, readiness returns.
    async fn assert_recovers(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.client.check("closed", "k").await?;
            if d.fallback.is_none() && self.daemon.ctx.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("still failing over: {d:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn oom_under_noeviction_takes_the_fail_mode() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    rig.redis_cmd::<()>(redis::cmd("SET").arg("ballast").arg(vec![b'x'; 2 << 20]))
        .await?;
    rig.redis_cmd::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction"),
    )
    .await?;
    rig.redis_cmd::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1mb"))
        .await?;
    rig.assert_trouble("oom", "OOM").await?;
    rig.redis_cmd::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"))
        .await?;
    rig.assert_recovers().await
}

#[tokio::test]
async fn readonly_replica_after_failover_takes_the_fail_mode() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    // The daemon's Redis is demoted: it now replicates a master that is not
    // there, keeps serving reads and refuses every write.
    let nobody = shoal_tests::free_port()?;
    rig.redis_cmd::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(nobody))
        .await?;
    rig.assert_trouble("readonly", "READONLY").await?;
    rig.redis_cmd::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
        .await?;
    rig.assert_recovers().await
}

#[tokio::test]
async fn masterdown_replica_takes_the_fail_mode() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    rig.redis_cmd::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("replica-serve-stale-data")
            .arg("no"),
    )
    .await?;
    let nobody = shoal_tests::free_port()?;
    rig.redis_cmd::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(nobody))
        .await?;
    rig.assert_trouble("masterdown", "MASTERDOWN").await?;
    rig.redis_cmd::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
        .await?;
    rig.assert_recovers().await
}

#[tokio::test]
async fn busy_script_takes_the_fail_mode() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    rig.redis_cmd::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg("10"),
    )
    .await?;
    // A read-only script that spins until SCRIPT KILL.
    let mut spinner = rig.redis.conn().await?;
    let spin = tokio::spawn(async move {
        redis::cmd("EVAL")
            .arg("while true do redis.call('TIME') end")
            .arg(0)
            .query_async::<()>(&mut spinner)
            .await
    });
    let mut probe = rig.redis.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redis::cmd("PING").query_async::<String>(&mut probe).await {
            Err(e) if e.code() == Some("BUSY") => break,
            _ if Instant::now() > deadline => bail!("Redis never became BUSY"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let result = rig.assert_trouble("busy", "BUSY").await;
    redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async::<()>(&mut probe)
        .await?;
    let killed = spin.await?;
    ensure!(killed.is_err(), "the spinning script was killed");
    result?;
    rig.assert_recovers().await
}

#[tokio::test]
async fn loading_dataset_takes_the_fail_mode() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    // A reload that takes seconds: 3000 keys, 1 ms each.
    rig.redis_cmd::<()>(redis::cmd("DEBUG").arg("POPULATE").arg(3000))
        .await?;
    for (k, v) in [
        ("key-load-delay", "1000"),
        ("loading-process-events-interval-bytes", "1024"),
    ] {
        rig.redis_cmd::<()>(redis::cmd("CONFIG").arg("SET").arg(k).arg(v))
            .await?;
    }
    let mut loader = rig.redis.conn().await?;
    let reload = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("RELOAD")
            .query_async::<()>(&mut loader)
            .await
    });
    let mut probe = rig.redis.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redis::cmd("PING").query_async::<String>(&mut probe).await {
            Err(e) if e.code() == Some("LOADING") => break,
            _ if Instant::now() > deadline => bail!("Redis never reported LOADING"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    rig.assert_trouble("loading", "LOADING").await?;
    reload.await?.context("DEBUG RELOAD")?;
    rig.assert_recovers().await
}

#[tokio::test]
async fn flushed_script_cache_is_reloaded_not_an_error() -> Result<()> {
    let rig = Rig::start(Duration::from_secs(2)).await?;
    for _ in 0..3 {
        rig.redis_cmd::<()>(redis::cmd("SCRIPT").arg("FLUSH"))
            .await?;
        let d = rig.client.check("closed", "k").await?;
        ensure!(
            d.allowed && d.fallback.is_none(),
            "after SCRIPT FLUSH: {d:?}"
        );
        let created = rig
            .client
            .session_create("u", &serde_json::json!({}), Default::default())
            .await?;
        ensure!(!created.token.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn hung_redis_opens_the_circuit_and_a_probe_closes_it() -> Result<()> {
    let timeout = Duration::from_millis(200);
    let rig = Rig::start(timeout).await?;
    rig.redis.signal(nix::sys::signal::Signal::SIGSTOP)?;
    let result = async {
        // The first requests pay the deadline; then the circuit opens and the
        // rest take the fail mode at once.
        let started = Instant::now();
        let mut slow = 0;
        for i in 0..20 {
            let t = Instant::now();
            let d = rig.client.check("closed", "k").await?;
            ensure!(
                !d.allowed && d.fallback.as_deref() == Some("closed"),
                "check {i} while hung: {d:?}"
            );
            if t.elapsed() >= timeout / 2 {
                slow += 1;
            }
        }
        ensure!(
            slow <= 3,
            "{slow} of 20 checks waited for the deadline ({:?} in all)",
            started.elapsed()
        );
        let e = rig
            .client
            .session_create("u", &serde_json::json!({}), Default::default())
            .await
            .expect_err("Redis is hung");
        ensure!(
            e.code() == Some(ErrorCode::Unavailable),
            "session.create while the circuit is open: {e}"
        );
        let ready = http_get(rig.admin, "/readyz", &[]).await?;
        ensure!(ready.status == 503, "/readyz {}", ready.status);
        ensure!(rig.errors_metric("timeout").await? >= 1.0);
        ensure!(rig.errors_metric("circuit_open").await? >= 1.0);
        Ok(())
    }
    .await;
    rig.redis.signal(nix::sys::signal::Signal::SIGCONT)?;
    result?;
    rig.assert_recovers().await
}
