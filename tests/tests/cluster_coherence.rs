//! shoald on Redis Cluster (issue #16), end to end: two daemons configured
//! with `[redis.cluster]` on a real 3-primary, 3-replica cluster.
//!
//! What a user checks: a change made through one daemon is never read as the
//! old value through the other once it is acknowledged (L1 copies are evicted
//! through the sharded channels of every bucket), `cache.mget` gathers keys
//! from every shard, a tag invalidation reaches keys in every bucket, a
//! revoked session is refused fleet-wide, and a shard's failover (its primary
//! killed) leaves the fleet coherent: L1 is flushed for the bucket whose
//! server changed and no acknowledged invalidation is lost.
//!
//! Waiting is on events (readiness, counters, values), never on sleeps.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shoal_client::session::SessionOptions;
use shoal_client::{Client, SetOptions, Source};
use shoal_tests::cluster::ClusterSet;
use shoal_tests::{test_config, Daemon};

const WAIT: Duration = Duration::from_secs(30);
const BUCKETS: u16 = 8;

/// A daemon on the cluster, ready.
async fn daemon(cluster: &ClusterSet, dir: &std::path::Path, node: &str) -> Result<Daemon> {
    let mut c = test_config(&cluster.nodes[0], dir, node);
    c.redis.url = shoald::config::DEFAULT_REDIS_URL.to_string();
    c.redis.cluster = Some(shoald::config::ClusterConfig {
        urls: cluster.urls(),
        buckets: BUCKETS,
        ..Default::default()
    });
    c.redis.timeout = Duration::from_secs(1);
    Daemon::start_ready(c).await
}

use shoal_tests::read_string as value;

/// `value` with the tag `catalog`, through `c`.
async fn set_tagged(c: &Client, key: &str, value: &str) -> Result<()> {
    let opts = SetOptions {
        tags: vec!["catalog".into()],
        ..Default::default()
    };
    c.set_with(key, shoal_client::proto::to_value(value)?, opts)
        .await?;
    Ok(())
}

/// Reads `key` through `c` until it answers `want`; fails if that takes
/// longer than `delta` after `since` (the change was acknowledged then).
async fn answers_within(
    c: &Client,
    key: &str,
    want: Option<&str>,
    since: Instant,
    delta: Duration,
) -> Result<()> {
    loop {
        let (v, _) = value(c, key).await?;
        if v.as_deref() == want {
            return Ok(());
        }
        if since.elapsed() > delta {
            bail!(
                "{key}: still {v:?} {:?} after the change (Δ {delta:?})",
                since.elapsed()
            );
        }
    }
}

/// A cluster (every replica in sync: `ClusterSet::start` waits for it) and two
/// daemons on it, with a client each.
struct Fleet {
    cluster: ClusterSet,
    a: Daemon,
    b: Daemon,
    ca: Client,
    cb: Client,
    _dir: tempfile::TempDir,
}

async fn fleet() -> Result<Fleet> {
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let a = daemon(&cluster, dir.path(), "a").await?;
    let b = daemon(&cluster, dir.path(), "b").await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    Ok(Fleet {
        cluster,
        a,
        b,
        ca,
        cb,
        _dir: dir,
    })
}

/// Keys that land in every bucket (and so on every shard).
fn keys_in_every_bucket() -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0.. {
        let k = format!("item:{i}");
        if seen.insert(shoald::store::KeyNames::bucket_of(&k, BUCKETS)) {
            keys.push(k);
        }
        if seen.len() == usize::from(BUCKETS) {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_never_reads_an_invalidated_value() -> Result<()> {
    let f = fleet().await?;
    let (a, ca, cb) = (&f.a, &f.ca, &f.cb);
    let keys = keys_in_every_bucket();

    // Written through a, tagged; read twice through b: the second read is L1's.
    for k in &keys {
        set_tagged(ca, k, &format!("{k}=v1")).await?;
    }
    for k in &keys {
        assert_eq!(value(cb, k).await?.0.as_deref(), Some(&*format!("{k}=v1")));
    }
    for k in &keys {
        let (v, from) = value(cb, k).await?;
        assert_eq!(v.as_deref(), Some(&*format!("{k}=v1")));
        assert_eq!(from, Some(Source::L1), "{k} second read");
    }

    // A new value written through a: b never answers v1 again once a's write
    // is acknowledged and Δ has passed (its L1 copy is evicted by the sharded
    // channel of the key's bucket, usually long before Δ).
    let delta = a.ctx.config.cache.max_staleness;
    for k in &keys {
        ca.set(k, &format!("{k}=v2"), None).await?;
    }
    let written = Instant::now();
    for k in &keys {
        answers_within(cb, k, Some(&format!("{k}=v2")), written, delta).await?;
    }

    // mget through b gathers every shard's keys, in order.
    let got: Vec<Option<String>> = cb.mget(&keys).await?;
    let want: Vec<Option<String>> = keys.iter().map(|k| Some(format!("{k}=v2"))).collect();
    assert_eq!(got, want);

    // Tagged again, then one tag invalidation through b reaches every bucket.
    for k in &keys {
        set_tagged(ca, k, &format!("{k}=v3")).await?;
        assert_eq!(value(ca, k).await?.0.as_deref(), Some(&*format!("{k}=v3")));
    }
    let (_, n) = cb.invalidate_tags(["catalog"]).await?;
    assert_eq!(n, keys.len() as u64, "every tagged key in every bucket");
    let invalidated = Instant::now();
    for k in &keys {
        answers_within(ca, k, None, invalidated, delta).await?;
    }

    // A session revoked through a is refused by b.
    let s = ca
        .session_create("alice", &"profile", SessionOptions::default())
        .await?;
    assert!(cb.session_get::<String>(&s.token).await?.is_some());
    assert!(ca.session_revoke(&s.token).await?);
    let revoked = Instant::now();
    while cb.session_get::<String>(&s.token).await?.is_some() {
        if revoked.elapsed() > delta {
            bail!("b still accepts a session revoked through a");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_replica_of_its_shard_confirmed_is_not_acknowledged() -> Result<()> {
    let f = fleet().await?;
    let (cluster, ca) = (&f.cluster, &f.ca);
    let key = "account:7";
    ca.set(key, "v1", None).await?;

    // The replica of the key's shard cannot confirm anything: a failover now
    // could lose the change, so it is not acknowledged.
    let slot = shoal_tests::cluster::bucket_slot(shoald::store::KeyNames::bucket_of(key, BUCKETS));
    let primary = cluster.primary_of_slot(slot).await?;
    let replica = cluster.replica_of(primary).await?;
    cluster.nodes[replica].signal(nix::sys::signal::Signal::SIGSTOP)?;
    let refused = ca.set(key, "v2", None).await;
    let invalidated = ca.invalidate([key]).await;
    cluster.nodes[replica].signal(nix::sys::signal::Signal::SIGCONT)?;
    let e = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("not confirmed"),
        "set acknowledged without a replica: {e:?}"
    );
    assert!(
        invalidated.is_err(),
        "invalidate acknowledged without a replica"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failover_flushes_only_that_shards_buckets() -> Result<()> {
    let mut f = fleet().await?;
    let (b, ca, cb) = (&f.b, &f.ca, &f.cb);
    let cluster = &mut f.cluster;
    let keys = keys_in_every_bucket();
    for k in &keys {
        ca.set(k, &format!("{k}=v1"), None).await?;
        value(cb, k).await?;
        assert_eq!(value(cb, k).await?.1, Some(Source::L1), "{k} cached in b");
    }

    // The shard of the first key's bucket fails over: its replica (which
    // confirmed every write) is promoted, another server with another run id.
    let slot_of =
        |k: &str| shoal_tests::cluster::bucket_slot(shoald::store::KeyNames::bucket_of(k, BUCKETS));
    let primary = cluster.primary_of_slot(slot_of(&keys[0])).await?;
    let mut on_shard = Vec::new();
    let mut elsewhere = Vec::new();
    for k in &keys {
        if cluster.primary_of_slot(slot_of(k)).await? == primary {
            on_shard.push(k.clone());
        } else {
            elsewhere.push(k.clone());
        }
    }
    assert!(!elsewhere.is_empty(), "8 buckets spread over 3 shards");
    let flushed_before = b.stat("l1_flushes_redis_identity");
    cluster.kill_primary(primary, WAIT).await?;

    // b notices the new server of those buckets (a flush of them) and is
    // caught up on every bucket again.
    let deadline = Instant::now() + WAIT;
    while b.stat("l1_flushes_redis_identity") == flushed_before {
        if Instant::now() > deadline {
            bail!("b never flushed the failed-over shard's buckets");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.wait_ready(WAIT).await?;

    // The other shards' keys were kept: still answered from L1. The failed
    // over shard's keys were flushed: read again from L2, with the value every
    // replica confirmed.
    for k in &elsewhere {
        let (v, from) = value(cb, k).await?;
        assert_eq!(v.as_deref(), Some(&*format!("{k}=v1")));
        assert_eq!(from, Some(Source::L1), "{k} (another shard) kept in L1");
    }
    for k in &on_shard {
        let (v, from) = value(cb, k).await?;
        assert_eq!(
            v.as_deref(),
            Some(&*format!("{k}=v1")),
            "{k} survived the failover"
        );
        assert_eq!(
            from,
            Some(Source::L2),
            "{k} (failed-over shard) flushed from L1"
        );
    }
    Ok(())
}

/// Shared memory keeps trust per bucket too: a stalled shard (its primary
/// SIGSTOPped, so its buckets' heartbeats stop coming back) makes same-host
/// readers refuse its buckets' keys within Δ, while every other bucket's keys
/// are still read from the segment, without the socket. The stall is shorter
/// than the cluster's node timeout: no failover, the shard comes back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_stops_shared_memory_reads_of_its_buckets_only() -> Result<()> {
    use shoal_client::shm::Lookup;
    let f = fleet().await?;
    let (b, ca, cb) = (&f.b, &f.ca, &f.cb);
    let keys = keys_in_every_bucket();
    let view = shoal_client::shm::attach(&b.socket, "shm-test").await?;
    for k in &keys {
        ca.set(k, &format!("{k}=v1"), None).await?;
        value(cb, k).await?;
        // An L1 hit through the socket publishes the entry.
        assert_eq!(value(cb, k).await?.1, Some(Source::L1), "{k} cached in b");
        assert!(
            matches!(view.get(k.as_bytes()), Lookup::Hit { .. }),
            "{k} in shared memory"
        );
    }
    let slot_of =
        |k: &str| shoal_tests::cluster::bucket_slot(shoald::store::KeyNames::bucket_of(k, BUCKETS));
    let primary = f.cluster.primary_of_slot(slot_of(&keys[0])).await?;
    let mut elsewhere = Vec::new();
    for k in &keys {
        if f.cluster.primary_of_slot(slot_of(k)).await? != primary {
            elsewhere.push(k.clone());
        }
    }
    assert!(!elsewhere.is_empty(), "8 buckets spread over 3 shards");

    let delta = b.ctx.config.cache.max_staleness;
    let node = &f.cluster.nodes[primary];
    node.signal(nix::sys::signal::Signal::SIGSTOP)?;
    let stopped = Instant::now();
    // Readers of the stalled shard's keys stop within Δ of its last proof.
    let refused = loop {
        match view.get(keys[0].as_bytes()) {
            Lookup::Untrusted => break Ok(stopped.elapsed()),
            Lookup::Miss => {
                break Err(anyhow::anyhow!(
                    "{} vanished instead of being refused",
                    keys[0]
                ))
            }
            Lookup::Hit { .. } if stopped.elapsed() > delta * 2 => {
                break Err(anyhow::anyhow!(
                    "{} still served {:?} into the stall",
                    keys[0],
                    stopped.elapsed()
                ))
            }
            Lookup::Hit { .. } => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    // The other shards' keys, read while the stall lasts.
    let others: Vec<(String, Lookup)> = elsewhere
        .iter()
        .map(|k| (k.clone(), view.get(k.as_bytes())))
        .collect();
    node.signal(nix::sys::signal::Signal::SIGCONT)?;
    let refused = refused?;
    for (k, r) in &others {
        assert!(
            matches!(r, Lookup::Hit { .. }),
            "{k} (another shard) read from shared memory during the stall, refused {refused:?} in: {r:?}"
        );
    }
    // Back: every bucket trusted again, its keys served.
    b.wait_ready(WAIT).await?;
    for k in &keys {
        assert_eq!(value(cb, k).await?.0.as_deref(), Some(&*format!("{k}=v1")));
    }
    Ok(())
}
