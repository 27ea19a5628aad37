//! Locks with fencing tokens (`lock.acquire` / `lock.extend` / `lock.release`),
//! end to end: three in-process daemons on one real redis-server, a holder that
//! pauses past its TTL, and a resource that refuses the paused holder's late
//! write by its fence. Then the client's guard: held by automatic extension
//! well past the TTL, released on drop.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use shoal_client::Client;
use shoal_tests::{test_config, Daemon, RedisServer};

/// A resource that accepts a write only with a fence at least as new as the
/// newest it has seen (what a storage service does with fencing tokens).
struct Resource {
    newest: u64,
    writes: Vec<(u64, &'static str)>,
}

impl Resource {
    fn write(&mut self, fence: u64, what: &'static str) -> bool {
        if fence < self.newest {
            return false;
        }
        self.newest = fence;
        self.writes.push((fence, what));
        true
    }
}

async fn fleet(redis: &RedisServer, dir: &std::path::Path) -> Result<(Vec<Daemon>, Vec<Client>)> {
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for node in ["a", "b", "c"] {
        let d = Daemon::start_ready(test_config(redis, dir, node)).await?;
        clients.push(d.client().await?);
        daemons.push(d);
    }
    Ok((daemons, clients))
}

#[tokio::test]
async fn a_paused_holder_loses_the_lock_and_its_late_write_is_fenced() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (_daemons, c) = fleet(&redis, dir.path()).await?;
    let ttl = Duration::from_millis(300);
    let mut resource = Resource {
        newest: 0,
        writes: Vec::new(),
    };

    // A takes the lock and writes.
    let a = c[0].lock_acquire("orders", ttl, None).await?;
    ensure!(a.acquired, "{a:?}");
    let (a_token, a_fence) = (a.token.context("token")?, a.fence.context("fence")?);
    ensure!(resource.write(a_fence, "a1"));
    // Held: B and C are refused at once, and told how long it has left.
    for (i, other) in c[1..].iter().enumerate() {
        let r = other.lock_acquire("orders", ttl, None).await?;
        ensure!(!r.acquired && r.token.is_none(), "daemon {}: {r:?}", i + 1);
        ensure!(r.retry_after > Duration::ZERO && r.retry_after <= ttl);
    }
    // Only the holder extends or releases.
    ensure!(!c[1].lock_extend("orders", "not-the-token", ttl).await?);
    ensure!(!c[2].lock_release("orders", "not-the-token").await?);
    ensure!(
        c[2].lock_extend("orders", &a_token, ttl).await?,
        "the holder, through any daemon"
    );

    // A pauses past its TTL. B, waiting for it, gets the lock when it expires,
    // with a newer fence.
    let started = Instant::now();
    let b = c[1]
        .lock_acquire("orders", ttl, Some(Duration::from_secs(3)))
        .await?;
    ensure!(b.acquired, "{b:?}");
    ensure!(
        started.elapsed() >= Duration::from_millis(200),
        "B got it while A's lease still ran: {:?}",
        started.elapsed()
    );
    let (b_token, b_fence) = (b.token.context("token")?, b.fence.context("fence")?);
    ensure!(
        b_fence > a_fence,
        "fences increase: {a_fence} then {b_fence}"
    );
    ensure!(resource.write(b_fence, "b1"));

    // A wakes up: it can neither extend nor release B's lock, and the resource
    // refuses its late write.
    ensure!(!c[0].lock_extend("orders", &a_token, ttl).await?);
    ensure!(!c[0].lock_release("orders", &a_token).await?);
    ensure!(!resource.write(a_fence, "a2 (late)"), "fenced out");
    let r = c[2].lock_acquire("orders", ttl, None).await?;
    ensure!(!r.acquired, "B still holds it: {r:?}");

    // B releases; C gets it at once with the next fence.
    ensure!(c[1].lock_release("orders", &b_token).await?);
    ensure!(!c[1].lock_release("orders", &b_token).await?, "only once");
    let cc = c[2].lock_acquire("orders", ttl, None).await?;
    ensure!(cc.acquired && cc.fence > Some(b_fence), "{cc:?}");
    ensure!(resource.writes.iter().map(|w| w.1).collect::<Vec<_>>() == ["a1", "b1"]);

    // Fences survive the lock key: another name has its own sequence.
    let other = c[0].lock_acquire("invoices", ttl, None).await?;
    ensure!(other.acquired && other.fence == Some(1), "{other:?}");
    Ok(())
}

#[tokio::test]
async fn the_guard_extends_while_held_and_releases_on_drop() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (_daemons, c) = fleet(&redis, dir.path()).await?;
    let ttl = Duration::from_millis(300);
    let guard = c[0]
        .lock("job", ttl, None)
        .await?
        .context("free lock not acquired")?;
    let fence = guard.fence();
    // Held for four TTLs: the guard extends it, nobody else gets it.
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        let r = c[1].lock_acquire("job", ttl, None).await?;
        ensure!(!r.acquired, "taken while the guard holds it: {r:?}");
        ensure!(!guard.is_lost(), "the guard lost its lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dropped: released at once, not at expiry.
    drop(guard);
    let started = Instant::now();
    let next = c[2]
        .lock("job", ttl, Some(Duration::from_secs(2)))
        .await?
        .context("lock not released on drop")?;
    ensure!(
        started.elapsed() < ttl,
        "waited {:?}: the drop did not release",
        started.elapsed()
    );
    ensure!(next.fence() > fence);
    ensure!(next.release().await?, "explicit release");
    Ok(())
}

#[tokio::test]
async fn bad_lock_requests_get_clear_errors() -> Result<()> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_ready(test_config(&redis, dir.path(), "a")).await?;
    let c = d.client().await?;
    let e = c
        .lock_acquire("x", Duration::ZERO, None)
        .await
        .expect_err("zero ttl");
    ensure!(e.code() == Some(shoal_client::ErrorCode::BadRequest), "{e}");
    let e = c
        .lock_acquire("", Duration::from_secs(1), None)
        .await
        .expect_err("empty name");
    ensure!(e.code() == Some(shoal_client::ErrorCode::BadRequest), "{e}");
    Ok(())
}
