//! Redis Cluster (issue #16): the harness's own faults on a real 3-primary,
//! 3-replica cluster (`redis-cli --cluster create`) — a slot migrated under
//! load, a primary failed over and back as a replica, a shard restarted in
//! place — and `shoalctl doctor` on a healthy and on a broken cluster.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::AsyncCommands;
use shoal_tests::cluster::{bucket_slot, key_slot, ClusterSet};
use shoal_tests::shoald::config::{Algorithm, PolicyConfig};
use shoal_tests::{hammer, Daemon};

/// Writes a `[redis.cluster]` config naming three of the seeds; returns its path.
fn cluster_config(cluster: &ClusterSet, dir: &std::path::Path) -> Result<String> {
    let file = dir.join("shoal.toml");
    let urls: Vec<String> = cluster.urls()[..3]
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    std::fs::write(
        &file,
        format!("[redis.cluster]\nurls = [{}]\n", urls.join(", ")),
    )?;
    Ok(file.to_str().context("utf-8 path")?.to_string())
}

/// A daemon's configuration on `cluster`: node `node`, its socket in `dir`,
/// `buckets` buckets, `redis.timeout` 1 s, no admin listener.
fn daemon_config(
    cluster: &ClusterSet,
    dir: &std::path::Path,
    node: &str,
    buckets: u16,
) -> shoal_tests::shoald::Config {
    let mut c = shoal_tests::shoald::Config::default();
    c.node.id = node.into();
    c.socket.path = dir.join(format!("{node}.sock"));
    c.admin.listen = String::new();
    c.redis.timeout = Duration::from_secs(1);
    c.redis.cluster = Some(shoal_tests::shoald::config::ClusterConfig {
        urls: cluster.urls(),
        buckets,
        ..Default::default()
    });
    c
}

async fn doctor(path: &str) -> Result<(i32, serde_json::Value)> {
    let (code, out, err) =
        shoal_tests::run_bin("shoalctl", &["--config", path, "doctor", "--json"]).await?;
    let report: serde_json::Value = serde_json::from_str(&out).with_context(|| err.clone())?;
    Ok((code, report))
}

fn findings<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["check"] == check)
        .collect()
}

/// A healthy cluster is fine for shoal: the cluster finding is ok, every
/// primary answers (Redis 7+, so sharded Pub/Sub exists), the node checks run
/// on a primary (not a replica seed), and the cluster's own commands are there.
#[tokio::test]
async fn doctor_finds_a_healthy_cluster_ok() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let path = cluster_config(&cluster, dir.path())?;
    let (_, report) = doctor(&path).await?;
    assert_eq!(report["topology"], "cluster", "{report:#}");
    assert_eq!(report["facts"]["cluster_state"], "ok", "{report:#}");
    assert_eq!(report["facts"]["cluster_size"], "3", "{report:#}");
    let primaries = report["facts"]["cluster primaries"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(primaries.split(", ").count(), 3, "{report:#}");
    assert_eq!(report["facts"]["role"], "master", "{report:#}");
    assert_eq!(report["facts"]["buckets"], "16", "{report:#}");
    let spread = report["facts"]["buckets per primary"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(spread.split(", ").count(), 3, "{report:#}");
    let cluster_findings = findings(&report, "cluster");
    assert!(
        cluster_findings.iter().any(|f| f["severity"] == "ok"),
        "{report:#}"
    );
    assert!(
        cluster_findings.iter().all(|f| f["severity"] == "ok"),
        "a healthy cluster has no cluster warning or problem: {report:#}"
    );
    assert!(
        findings(&report, "replicas").is_empty(),
        "every primary has a replica: {report:#}"
    );
    assert!(
        findings(&report, "commands")
            .iter()
            .all(|f| f["severity"] == "ok"),
        "{report:#}"
    );
    assert!(
        findings(&report, "role").is_empty(),
        "the node checks ran on a primary: {report:#}"
    );
    assert!(
        !report.to_string().contains("issue #16"),
        "nothing says shoald cannot use a cluster: {report:#}"
    );
    Ok(())
}

/// On a cluster the sessions live in one slot (`shoal:{s}:`): doctor's node
/// checks run on the primary that holds it, so a cluster without persistence
/// that keeps sessions is a problem (a restart logs every user out), as it is
/// on a standalone Redis, whichever seed the configuration names first.
#[tokio::test]
async fn doctor_finds_the_sessions_on_their_shard_and_asks_for_persistence() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let (_daemons, clients) = cluster_fleet(&cluster, dir.path(), &[], 1).await?;
    clients[0]
        .session_create("alice", &"profile", Default::default())
        .await?;
    let owner = cluster.primary_of_slot(key_slot(b"shoal:{s}:")).await?;
    let path = cluster_config(&cluster, dir.path())?;
    let (code, report) = doctor(&path).await?;
    assert_eq!(
        report["facts"]["sessions on"],
        format!("127.0.0.1:{}", cluster.nodes[owner].port()),
        "{report:#}"
    );
    assert_eq!(report["facts"]["sessions_seen"], "1", "{report:#}");
    let persistence = findings(&report, "persistence");
    assert!(
        persistence.iter().any(|f| f["severity"] == "problem"),
        "sessions without persistence: {report:#}"
    );
    assert_eq!(code, 1, "a problem fails doctor: {report:#}");
    Ok(())
}

/// A password-protected cluster (`requirepass` on every node): with
/// `[redis.cluster] password`, doctor reaches every primary, and a fleet
/// caches, invalidates (the change confirmed by `WAIT` on its shard's replica)
/// and keeps sessions. Without the password the daemon does not become ready
/// and says why.
#[tokio::test]
async fn a_password_protected_cluster_serves_a_fleet_and_doctor() -> Result<()> {
    const PASSWORD: &str = "s3cret pass";
    let cluster = ClusterSet::start_with_password(PASSWORD).await?;
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port()))
        .collect();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        format!(
            "[redis.cluster]\nurls = [{}]\npassword = {PASSWORD:?}\n",
            urls.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    let (_, report) = doctor(path.to_str().context("utf-8 path")?).await?;
    assert_eq!(report["facts"]["cluster_state"], "ok", "{report:#}");
    let primaries = report["facts"]["cluster primaries"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(primaries.split(", ").count(), 3, "{report:#}");
    for check in ["connect", "cluster", "commands"] {
        assert!(
            findings(&report, check)
                .iter()
                .all(|f| f["severity"] == "ok"),
            "{check}: {report:#}"
        );
    }

    let config = |node: &str, password: &str| {
        let mut c = daemon_config(&cluster, dir.path(), node, 16);
        if let Some(cc) = c.redis.cluster.as_mut() {
            // Seeds without the password: it comes from its own field.
            cc.urls = urls.clone();
            cc.password = shoal_tests::shoald::config::Secret(password.into());
        }
        c
    };
    let a = Daemon::start_ready(config("a", PASSWORD)).await?;
    let b = Daemon::start_ready(config("b", PASSWORD)).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.set_raw("row", bytes::Bytes::from_static(b"v1"), None)
        .await?;
    assert_eq!(cb.get_raw("row").await?.as_deref(), Some(&b"v1"[..]));
    let seq = ca.invalidate(["row"]).await?;
    b.wait_applied(&seq, Duration::from_secs(5)).await?;
    assert_eq!(cb.get_raw("row").await?, None, "invalidated on b");
    let created = ca
        .session_create("alice", &"profile", Default::default())
        .await?;
    let seen: Option<shoal_client::Session<String>> = cb.session_get(&created.token).await?;
    assert_eq!(seen.map(|s| s.data).as_deref(), Some("profile"));

    // The wrong password: a change is refused with a message that says so.
    let wrong = Daemon::start(config("c", "wrong")).await?;
    let err = wrong
        .client()
        .await?
        .set_raw("row", bytes::Bytes::from_static(b"v2"), None)
        .await
        .expect_err("a change without the cluster's password");
    let text = err.to_string();
    assert!(
        text.contains("WRONGPASS") || text.to_lowercase().contains("auth"),
        "says the password is wrong: {text}"
    );
    Ok(())
}

/// A cluster losing nodes: a primary whose replica is gone is a problem with
/// `wait_replicas = 1` (the default: changes on its buckets are refused); a
/// shard with neither is one too (`cluster_state:fail`, its slots unserved),
/// and doctor exits 1.
#[tokio::test]
async fn doctor_reports_a_primary_without_replica_and_a_lost_shard() -> Result<()> {
    let mut cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let path = cluster_config(&cluster, dir.path())?;
    let slot = bucket_slot(2);
    let primary = cluster.primary_of_slot(slot).await?;
    let replica = cluster.replica_of(primary).await?;
    cluster.nodes[replica].stop();
    // Until the others flag the replica as failed (the node timeout, 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (_, report) = doctor(&path).await?;
        if !findings(&report, "replicas").is_empty() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let replicas = findings(&report, "replicas");
    assert!(
        replicas.iter().any(|f| f["severity"] == "problem"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("1 primar"))),
        "{report:#}"
    );

    cluster.nodes[primary].stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, report) = loop {
        let (code, report) = doctor(&path).await?;
        if report["facts"]["cluster_state"] == "fail" || Instant::now() > deadline {
            break (code, report);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 1, "{report:#}");
    assert!(
        findings(&report, "cluster")
            .iter()
            .any(|f| f["severity"] == "problem"
                && f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cluster_state is \"fail\""))),
        "{report:#}"
    );
    Ok(())
}

/// The harness's slot function is the cluster's.
#[tokio::test]
async fn key_slot_agrees_with_cluster_keyslot() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let mut c = cluster.conn().await?;
    for key in [
        "k1",
        "shoal:{b7}:c:k1",
        "{user1000}.following",
        "a{}b",
        "foo{bar}{zap}",
        "{b0}",
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await?;
        assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
    }
    Ok(())
}

/// A resharding as an operator runs it: one slot, with its keys, moved to
/// another primary while a client keeps reading and writing them. The client
/// meets `ASK` during the move and `MOVED` after it, and sees every value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_slot_migration_under_load() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let mut c = cluster.conn().await?;
    let slot = bucket_slot(3);
    let keys: Vec<String> = (0..60).map(|i| format!("{{b3}}:k{i}")).collect();
    for k in &keys {
        assert_eq!(key_slot(k.as_bytes()), slot);
        let _: () = c.set(k, format!("{k}=0")).await?;
    }
    let from = cluster.primary_of_slot(slot).await?;
    let to = *cluster
        .primaries()
        .await?
        .iter()
        .find(|p| **p != from)
        .context("another primary")?;

    // A client writing and reading the slot's keys through the whole move.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (mut c, keys, stop) = (cluster.conn().await?, keys.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ops, mut round) = (0u64, 1u64);
            while !stop.is_cancelled() {
                for k in &keys {
                    let v = format!("{k}={round}");
                    let _: () = c.set(k, &v).await?;
                    let got: String = c.get(k).await?;
                    anyhow::ensure!(got == v, "{k}: wrote {v}, read {got}");
                    ops += 2;
                }
                round += 1;
            }
            Ok::<_, anyhow::Error>((ops, round - 1))
        })
    };
    let moved = cluster
        .migrate_slot_paced(slot, to, Duration::from_millis(30))
        .await?;
    // Some more traffic after the hand-over: clients now get MOVED.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let (ops, rounds) = load.await??;
    assert!(moved >= 50, "only {moved} keys moved");
    assert!(ops > 0 && rounds > 0);
    assert_eq!(cluster.primary_of_slot(slot).await?, to);
    for n in &cluster.nodes {
        if let Ok(view) = ClusterSet::view_of(n).await {
            let owner = view.iter().find(|v| v.primary && v.serves(slot));
            assert_eq!(owner.map(|v| v.port), Some(cluster.nodes[to].port()));
        }
    }
    // Every key is on the new owner with the last value written.
    let mut direct = cluster.nodes[to].conn().await?;
    for k in &keys {
        let got: String = redis::cmd("GET").arg(k).query_async(&mut direct).await?;
        assert_eq!(got, format!("{k}={rounds}"));
    }
    let left: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(10)
        .query_async(&mut cluster.nodes[from].conn().await?)
        .await?;
    assert!(left.is_empty(), "keys left behind: {left:?}");
    Ok(())
}

/// Waits until a replica confirmed this connection's writes (`WAIT 1`).
async fn replicated(c: &mut redis::cluster_async::ClusterConnection) -> Result<()> {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(2000).query_async(c).await?;
    anyhow::ensure!(acked >= 1, "no replica confirmed the writes");
    Ok(())
}

/// `GET key`, retried for 10 s while the cluster heals (a failover, a
/// restart); the last error if it never answers.
async fn get_within<T: redis::FromRedisValue>(
    c: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.get::<_, T>(key).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A primary SIGKILLed: its replica is promoted, the cluster answers again
/// with every acknowledged (replicated) key, and the killed node, started
/// again, rejoins as the replica of the node that replaced it; a
/// `CLUSTER FAILOVER` then makes it the primary again.
#[tokio::test]
async fn the_cluster_answers_after_a_primary_fails_over() -> Result<()> {
    let mut cluster = ClusterSet::start().await?;
    let mut c = cluster.conn().await?;
    let slot = bucket_slot(5);
    for i in 0..20 {
        let _: () = c.set(format!("{{b5}}:k{i}"), i).await?;
    }
    // Replicated before the kill (WAIT goes to every primary).
    replicated(&mut c).await?;
    let old = cluster.primary_of_slot(slot).await?;
    let promoted = cluster.kill_primary(old, Duration::from_secs(30)).await?;
    assert_ne!(promoted, old);
    assert_eq!(cluster.primary_of_slot(slot).await?, promoted);
    // The same client follows the new primary.
    let got: i64 = get_within(&mut c, "{b5}:k7").await?;
    assert_eq!(got, 7);
    for i in 0..20 {
        let v: i64 = c.get(format!("{{b5}}:k{i}")).await?;
        assert_eq!(v, i);
    }
    cluster.restart_node(old).await?;
    assert_eq!(cluster.replica_of(promoted).await?, old);
    assert_eq!(cluster.primary_of_slot(slot).await?, promoted);
    // And an operator's CLUSTER FAILOVER hands the shard back, data intact.
    assert_eq!(
        cluster
            .manual_failover(promoted, Duration::from_secs(30))
            .await?,
        old
    );
    assert_eq!(cluster.primary_of_slot(slot).await?, old);
    let v: i64 = c.get("{b5}:k7").await?;
    assert_eq!(v, 7);
    Ok(())
}

/// A shard restart: the primary SIGKILLed and started again with its data
/// directory before the cluster fails it over. With an AOF it is back as the
/// primary of its slots, with its keys.
#[tokio::test]
async fn a_primary_restarted_in_place_keeps_its_slots_and_aof_data() -> Result<()> {
    let mut cluster =
        ClusterSet::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await?;
    let mut c = cluster.conn().await?;
    let slot = bucket_slot(1);
    let _: () = c.set("{b1}:kept", "yes").await?;
    let i = cluster.primary_of_slot(slot).await?;
    let primary_again = cluster
        .restart_primary(i, Duration::from_millis(200))
        .await?;
    assert!(
        primary_again,
        "restarted within the node timeout, it stays the primary"
    );
    assert_eq!(cluster.primary_of_slot(slot).await?, i);
    let got: String = get_within(&mut c, "{b1}:kept").await?;
    assert_eq!(got, "yes");
    Ok(())
}

/// A shard restart that loses the data: the primary comes back within the
/// node timeout with its identity (`nodes.conf`) but nothing else; it keeps
/// its slots, its replica resyncs from it, and its keys are gone — only its.
#[tokio::test]
async fn a_primary_restarted_empty_loses_its_shard_and_only_it() -> Result<()> {
    let mut cluster = ClusterSet::start().await?;
    let mut c = cluster.conn().await?;
    let lost = bucket_slot(1);
    let i = cluster.primary_of_slot(lost).await?;
    let mut kept_bucket = None;
    for b in 0..64 {
        if cluster.primary_of_slot(bucket_slot(b)).await? != i {
            kept_bucket = Some(b);
            break;
        }
    }
    let kept_key = format!(
        "{{b{}}}:kept",
        kept_bucket.context("a bucket on another shard")?
    );
    let _: () = c.set("{b1}:gone", "v").await?;
    let _: () = c.set(&kept_key, "v").await?;
    replicated(&mut c).await?;
    let primary_again = cluster
        .restart_primary_empty(i, Duration::from_millis(200))
        .await?;
    assert!(
        primary_again,
        "back within the node timeout, it keeps its slots"
    );
    assert_eq!(cluster.primary_of_slot(lost).await?, i);
    let gone: Option<String> = get_within(&mut c, "{b1}:gone").await?;
    assert_eq!(gone, None);
    let replica = cluster.replica_of(i).await?;
    let on_replica: i64 = redis::cmd("DBSIZE")
        .query_async(&mut cluster.nodes[replica].conn().await?)
        .await?;
    assert_eq!(on_replica, 0, "the replica resynced from the empty primary");
    let v: String = c.get(&kept_key).await?;
    assert_eq!(v, "v");
    Ok(())
}

// ---- Rate limits on a cluster ----

/// A test epoch, a multiple of every window used here.
const T0: u64 = 1_800_000_000_000;

use shoal_tests::policy as pol;

/// `n` in-process daemons on the cluster (`[redis.cluster]`), with `policies`.
async fn cluster_fleet(
    cluster: &ClusterSet,
    dir: &std::path::Path,
    policies: &[(&str, PolicyConfig)],
    n: usize,
) -> Result<(Vec<Daemon>, Vec<shoal_client::Client>)> {
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = daemon_config(cluster, dir, &format!("d{i}"), 16);
        c.redis.timeout = Duration::from_millis(500);
        for (name, p) in policies {
            c.ratelimit.policies.insert(name.to_string(), p.clone());
        }
        c.ratelimit.override_refresh = Duration::from_millis(100);
        let d = Daemon::start_ready(c).await?;
        clients.push(d.client().await?);
        daemons.push(d);
    }
    Ok((daemons, clients))
}

/// For policy `name`, one key whose state (`{name:key}`) lives on each primary.
async fn keys_on_every_primary(cluster: &ClusterSet, name: &str) -> Result<Vec<String>> {
    let primaries = cluster.primaries().await?;
    let view = cluster.view().await?;
    let mut keys = Vec::new();
    for p in primaries {
        let port = cluster.nodes[p].port();
        let owner = view.iter().find(|v| v.port == port).context("in view")?;
        let key = (0..10_000)
            .map(|i| format!("user{i}"))
            .find(|k| owner.serves(key_slot(format!("{name}:{k}").as_bytes())))
            .context("a key on that primary")?;
        keys.push(key);
    }
    Ok(keys)
}

/// Rate limits stay exact on a cluster: three daemons, every algorithm the
/// standalone exactness test checks, keys whose state lives on each of the
/// three primaries; 240 attempts per key from the three daemons allow exactly
/// the limit. Then again while the slot of one key migrates to another
/// primary (its state moves with `MIGRATE`; decisions meet `ASK`/`TRYAGAIN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_exact_across_three_daemons_on_a_cluster() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
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
    let (daemons, clients) = cluster_fleet(&cluster, dir.path(), &policies, 3).await?;
    let set_now = |ms: Option<u64>| {
        for d in &daemons {
            d.ctx.ratelimits.set_test_now(ms);
        }
    };

    set_now(Some(T0 + 1_234));
    for name in ["fw", "sl", "sc", "tb", "gcra"] {
        let keys = keys_on_every_primary(&cluster, name).await?;
        assert_eq!(keys.len(), 3);
        let mut runs = Vec::new();
        for key in &keys {
            runs.push(hammer(&clients, name, key, 24, 10));
        }
        let allowed = futures::future::try_join_all(runs).await?;
        for (key, n) in keys.iter().zip(&allowed) {
            assert_eq!(*n, 50, "{name} {key}: 240 attempts from 3 daemons");
            let p = clients[0].peek(name, key).await?;
            assert!(!p.allowed && p.remaining == 0, "{name} {key}: {p:?}");
        }
    }

    set_now(None);
    for name in ["sl_real", "tb_real"] {
        for key in keys_on_every_primary(&cluster, name).await? {
            let allowed = hammer(&clients, name, &key, 24, 10).await?;
            assert_eq!(allowed, 50, "{name} {key} on Redis TIME");
        }
    }

    // A resharding under the hammer: the key's state moves to another primary
    // between two batches of decisions; the total stays exact.
    set_now(Some(T0 + 61_234));
    for name in ["fw", "gcra"] {
        let key = "moving";
        let slot = key_slot(format!("{name}:{key}").as_bytes());
        let from = cluster.primary_of_slot(slot).await?;
        let to = *cluster
            .primaries()
            .await?
            .iter()
            .find(|p| **p != from)
            .context("another primary")?;
        // The state exists on the source before the move starts.
        for i in 0..10 {
            assert!(clients[i % 3].check(name, key).await?.allowed);
        }
        let load = hammer(&clients, name, key, 24, 10);
        let moving = cluster.migrate_slot_paced(slot, to, Duration::from_millis(20));
        let (allowed, moved) = tokio::join!(load, moving);
        let (allowed, moved) = (allowed?, moved?);
        assert!(moved >= 1, "the state moved");
        assert_eq!(cluster.primary_of_slot(slot).await?, to);
        assert_eq!(allowed + 10, 50, "{name} during a slot migration");
    }
    Ok(())
}

// ---- An invalidation lost with the subscriber's connection ----

const CACHE_SET_LUA: &str = include_str!("../../lua/cache_set.lua");
const CACHE_INVALIDATE_LUA: &str = include_str!("../../lua/cache_invalidate.lua");

/// The fault the campaign's `CLIENT KILL TYPE pubsub` hits by chance, made
/// deterministic: on the shard of key `k`'s bucket, one transaction kills
/// every Pub/Sub client and then invalidates `k` (the message is published to
/// nobody). redis-rs re-subscribes by itself; a later change in the same
/// bucket is then heard. The daemon must still find `k`'s invalidation (in
/// the bucket's log) and stop serving `k`'s old value from L1 within Δ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_published_while_the_subscriber_was_killed_is_not_skipped() -> Result<()> {
    const BUCKETS: u16 = 8;
    let delta = Duration::from_secs(1);
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let mut c = shoal_tests::shoald::Config::default();
    c.node.id = "reader".into();
    c.socket.path = dir.path().join("reader.sock");
    c.admin.listen = String::new();
    c.redis.timeout = Duration::from_secs(1);
    c.cache.heartbeat = Duration::from_millis(200);
    c.cache.max_staleness = delta;
    c.redis.cluster = Some(shoal_tests::shoald::config::ClusterConfig {
        urls: cluster.urls(),
        buckets: BUCKETS,
        ..Default::default()
    });
    let daemon = Daemon::start_ready(c).await?;
    let client = daemon.client().await?;

    let k = "lost-key";
    let bucket = shoal_tests::cluster::bucket_of(k, BUCKETS);
    let k2 = (0..)
        .map(|i| format!("neighbour{i}"))
        .find(|n| shoal_tests::cluster::bucket_of(n, BUCKETS) == bucket)
        .context("a key in the same bucket")?;
    let names = shoal_tests::cluster::bucket_names("shoal:", k, BUCKETS);
    let node = cluster.primary_of_slot(bucket_slot(bucket)).await?;
    let mut conn = cluster.nodes[node].conn().await?;

    client
        .set_raw(k, bytes::Bytes::from_static(b"old"), None)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_full(k, false).await?.from != Some(shoal_client::Source::L1) {
        anyhow::ensure!(Instant::now() < deadline, "{k} never served from L1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Kill the subscribers, then invalidate k: atomically, so nobody hears it.
    let mut tx = redis::pipe();
    tx.atomic()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .ignore()
        .cmd("EVAL")
        .arg(CACHE_INVALIDATE_LUA)
        .arg(3)
        .arg(names.log())
        .arg(names.value(k))
        .arg(names.lease(k))
        .arg(100_000)
        .arg(names.channel())
        .arg("external")
        .arg(k)
        .ignore();
    let _: () = tx.query_async(&mut conn).await?;
    let invalidated = Instant::now();

    // Once re-subscribed, a change in the same bucket is heard.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subs: (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(names.channel())
            .query_async(&mut conn)
            .await?;
        if subs.1 > 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the daemon never re-subscribed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _: redis::Value = redis::Script::new(CACHE_SET_LUA)
        .key(names.value(&k2))
        .key(names.lease(&k2))
        .key(names.log())
        .arg(shoal_client::proto::to_value(&"v")?)
        .arg(3_600_000)
        .arg("")
        .arg(100_000)
        .arg(names.channel())
        .arg("external")
        .arg(&k2)
        .invoke_async(&mut conn)
        .await?;

    let heard = Instant::now();

    // From Δ after the invalidation on, k's old value is never served.
    let until = heard.max(invalidated + delta) + Duration::from_millis(700);
    let (mut reads_after_delta, mut errors) = (0, Vec::new());
    while Instant::now() < until {
        let began = Instant::now();
        let r = client.get_full(k, false).await;
        if began > invalidated + delta {
            if let Err(e) = &r {
                errors.push(e.to_string());
            }
            if let Ok(r) = &r {
                reads_after_delta += 1;
                assert!(
                    !r.hit,
                    "{k} served ({:?}, from {:?}) {:?} after its invalidation (Δ {delta:?}; \
                     re-subscribed and {k2} heard {:?} after it); subscriber reconnects {}, \
                     replayed log entries {}",
                    r.value,
                    r.from,
                    began - invalidated,
                    heard - invalidated,
                    daemon.stat("subscriber_reconnects"),
                    daemon.stat("log_entries_replayed")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        reads_after_delta > 10,
        "only {reads_after_delta} reads after Δ (re-subscribed and heard {:?} after the invalidation); errors: {errors:?}",
        heard - invalidated
    );
    Ok(())
}

// ---- A daemon through resharding and failover ----

/// Cache and session operations through one daemon, once each: the errors
/// they returned (empty: all succeeded).
async fn one_round(client: &shoal_client::Client, keys: &[String], round: u32) -> Vec<String> {
    let mut errors = Vec::new();
    for k in keys {
        let v = format!("{k}={round}");
        if let Err(e) = client.set_raw(k, v.clone().into_bytes(), None).await {
            errors.push(format!("set {k}: {e}"));
            continue;
        }
        match client.get_full(k, false).await {
            Ok(r) if r.value.as_deref() == Some(v.as_bytes()) => {}
            Ok(r) => errors.push(format!("get {k}: {:?}", r.value)),
            Err(e) => errors.push(format!("get {k}: {e}")),
        }
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if let Err(e) = client.mget_raw(&refs).await {
        errors.push(format!("mget: {e}"));
    }
    match client
        .session_create_raw("u1", b"d".to_vec(), Default::default())
        .await
    {
        Ok(s) => match client.session_get_raw(&s.token, false).await {
            Ok(Some(_)) => {}
            Ok(None) => errors.push("session.get: not found".into()),
            Err(e) => errors.push(format!("session.get: {e}")),
        },
        Err(e) => errors.push(format!("session.create: {e}")),
    }
    errors
}

/// Rounds until one is clean; the errors of the rounds before it. Fails
/// when none is clean within `within`.
async fn settle(
    client: &shoal_client::Client,
    keys: &[String],
    round: &mut u32,
    within: Duration,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        *round += 1;
        let errors = one_round(client, keys, *round).await;
        if errors.is_empty() {
            return Ok(seen);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no clean round within {within:?}; last errors: {errors:?}"
        );
        seen.extend(errors);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What an operator does to a cluster while shoald runs on it: moves the
/// slot of a cache bucket and the sessions' slot to another primary, kills a
/// primary (its replica takes over; the old one comes back as a replica),
/// hands a shard over with `CLUSTER FAILOVER`. After each, the daemon answers
/// every cache and session operation again within seconds, and never with an
/// `internal` error (a `MOVED` is followed, not reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_keeps_serving_through_resharding_and_failovers() -> Result<()> {
    const BUCKETS: u16 = 8;
    let mut cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start_ready(daemon_config(&cluster, dir.path(), "d0", BUCKETS)).await?;
    let client = daemon.client().await?;
    let keys: Vec<String> = (0..24).map(|i| format!("key{i}")).collect();
    let mut round = 0;
    let mut internal = Vec::new();
    let mut check = |what: &str, errors: Vec<String>| {
        internal.extend(
            errors
                .into_iter()
                .filter(|e| e.contains("internal"))
                .map(|e| format!("{what}: {e}")),
        );
    };
    let errors = settle(&client, &keys, &mut round, Duration::from_secs(10)).await?;
    check("start", errors);
    // Operations all along, through every fault below.
    let stop = tokio_util::sync::CancellationToken::new();
    let phase = std::sync::Arc::new(std::sync::Mutex::new(String::from("start")));
    let load = {
        let (client, keys, stop) = (daemon.client().await?, keys.clone(), stop.clone());
        let phase = phase.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut round = 1_000_000;
            while !stop.is_cancelled() {
                round += 1;
                let now = phase.lock().map(|p| p.clone()).unwrap_or_default();
                errors.extend(
                    one_round(&client, &keys, round)
                        .await
                        .into_iter()
                        .map(|e| format!("{now}: {e}")),
                );
            }
            errors
        })
    };
    let set_phase = |p: String| {
        if let Ok(mut g) = phase.lock() {
            *g = p;
        }
    };

    // A cache bucket's slot, then the sessions' slot, to another primary.
    let sessions_slot = key_slot(b"shoal:{s}:");
    for slot in [
        bucket_slot(shoal_tests::cluster::bucket_of("key0", BUCKETS)),
        sessions_slot,
    ] {
        let from = cluster.primary_of_slot(slot).await?;
        let to = *cluster
            .primaries()
            .await?
            .iter()
            .find(|p| **p != from)
            .context("another primary")?;
        set_phase(format!("while slot {slot} moves to node {to}"));
        cluster.migrate_slot(slot, to).await?;
        set_phase(format!("after slot {slot} moved to node {to}"));
        let errors = settle(&client, &keys, &mut round, Duration::from_secs(10)).await?;
        check(&format!("slot {slot} moved"), errors);
    }
    // The primary of key0's bucket killed; back as a replica (until then the
    // promoted node has no replica to confirm changes: `wait_replicas = 1`
    // refuses them, as it should).
    let slot = bucket_slot(shoal_tests::cluster::bucket_of("key0", BUCKETS));
    let old = cluster.primary_of_slot(slot).await?;
    set_phase(format!("while primary node {old} is killed and fails over"));
    let promoted = cluster.kill_primary(old, Duration::from_secs(30)).await?;
    set_phase(format!("after node {promoted} was promoted"));
    cluster.restart_node(old).await?;
    set_phase(format!("after node {old} is back as a replica"));
    let errors = settle(&client, &keys, &mut round, Duration::from_secs(15)).await?;
    check("primary killed, back as a replica", errors);
    // An operator's failover of the sessions' shard.
    let s = cluster.primary_of_slot(sessions_slot).await?;
    set_phase(format!("during CLUSTER FAILOVER of node {s}"));
    cluster.manual_failover(s, Duration::from_secs(30)).await?;
    set_phase("after CLUSTER FAILOVER".into());
    let errors = settle(&client, &keys, &mut round, Duration::from_secs(15)).await?;
    check("CLUSTER FAILOVER", errors);
    stop.cancel();
    let during = load.await?;
    let during_count = during.len();
    check("during the faults", during);
    println!(
        "{during_count} errors during the faults (unavailable while a shard had no replica, ...)"
    );
    assert!(
        internal.is_empty(),
        "internal errors on the way: {internal:#?}"
    );
    Ok(())
}

/// A primary that hangs (SIGSTOP: its connections stay open, nothing answers)
/// past the cluster's node timeout is failed over by its replica; the daemon
/// routes around it: every cache and session operation succeeds again while
/// the hung node is still stopped, within the node timeout plus seconds, and
/// again after it resumes (as a replica). `wait_replicas = 0`, since the
/// promoted shard has no live replica to confirm changes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_failed_over_and_routed_around() -> Result<()> {
    const BUCKETS: u16 = 8;
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let mut c = daemon_config(&cluster, dir.path(), "d0", BUCKETS);
    if let Some(cc) = c.redis.cluster.as_mut() {
        cc.wait_replicas = 0;
    }
    let daemon = Daemon::start_ready(c).await?;
    let client = daemon.client().await?;
    let keys: Vec<String> = (0..24).map(|i| format!("key{i}")).collect();
    let mut round = 0;
    settle(&client, &keys, &mut round, Duration::from_secs(10)).await?;

    let slot = bucket_slot(shoal_tests::cluster::bucket_of("key0", BUCKETS));
    let hung = cluster.primary_of_slot(slot).await?;
    let replica = cluster.replica_of(hung).await?;
    cluster.nodes[hung].signal(nix::sys::signal::Signal::SIGSTOP)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.is_primary(replica).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {replica} was never promoted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();
    let during = settle(&client, &keys, &mut round, Duration::from_secs(20)).await;
    let took = promoted.elapsed();
    // L1 too: every bucket proven again (the promoted shard's through its
    // new primary), while the old one still hangs.
    let ready = daemon.wait_ready(Duration::from_secs(20)).await;
    let trusted = promoted.elapsed();
    cluster.nodes[hung].signal(nix::sys::signal::Signal::SIGCONT)?;
    let during =
        during.with_context(|| format!("while node {hung} hung, {took:?} after the promotion"))?;
    ready.with_context(|| format!("L1 while node {hung} hung, {trusted:?} after the promotion"))?;
    println!(
        "clean {took:?}, L1 trusted {trusted:?} after the promotion ({} errors before)",
        during.len()
    );
    cluster.wait_ok(Duration::from_secs(30)).await?;
    settle(&client, &keys, &mut round, Duration::from_secs(20))
        .await
        .context("after the hung node resumed")?;
    Ok(())
}

/// `quota.usage` (and the `/quotas` page) lists the keys of every shard: a
/// bare `SCAN` through a cluster client visits one node, whose cursor means
/// nothing to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_lists_the_keys_of_every_shard() -> Result<()> {
    let cluster = ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let policies = [("api", pol(Algorithm::FixedWindow, 10, 60_000))];
    let (_daemons, clients) = cluster_fleet(&cluster, dir.path(), &policies, 1).await?;
    let keys: Vec<String> = (0..30).map(|i| format!("tenant:{i}")).collect();
    let mut shards = std::collections::BTreeSet::new();
    for k in &keys {
        assert!(clients[0].check("api", k).await?.allowed);
        let slot = shoal_tests::cluster::key_slot(format!("rl.fw{{api:{k}}}").as_bytes());
        shards.insert(cluster.primary_of_slot(slot).await?);
    }
    assert_eq!(shards.len(), 3, "the keys live on every primary");
    let usage = clients[0].quota_usage("api", None, None).await?;
    assert!(!usage.truncated);
    let mut listed: Vec<String> = usage.keys.iter().map(|k| k.key.clone()).collect();
    listed.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(listed, want);
    assert!(usage.keys.iter().all(|k| k.used == 1 && k.limit == 10));
    Ok(())
}
