//! The fault campaign (issue 12): several daemons on one private Redis, clients
//! on every daemon and external writers issuing every kind of cache change and
//! read, sessions created, read and revoked, while faults are injected one after
//! another at random. Every operation goes into a [`History`]; the oracle in
//! [`crate::history`] then decides, with exactly the configured Δ as tolerance,
//! whether any daemon served an overwritten value or a revoked session. After
//! each fault every daemon must converge again (serve a fresh probe value from
//! L1) within a bound, and the time it took is reported per fault kind.
//!
//! `tests/tests/campaign.rs` runs it in CI for about a minute with a logged seed
//! (`SHOAL_CAMPAIGN_SEED` replays one); `cargo bench -p shoal-tests --bench
//! campaign -- --minutes N` runs it long.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use shoal_client::{Client, SetOptions, Source};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterSet;
use crate::history::{
    Got, History, Nanos, Read, ReadKind, Revocation, Revoked, SessionCreate, SessionRead, Target,
    Verdict, Write, WriteKind,
};
use crate::proxy::FaultProxy;
use crate::sentinel::SentinelSet;
use crate::{Daemon, DaemonProcess, RedisServer};

/// Redis key prefix the daemons use (the default).
const PREFIX: &str = "shoal:";
/// TTL of every value the campaign writes: nothing expires during a run.
const TTL: Duration = Duration::from_secs(3600);
/// The session keyed-hash secret every daemon shares (configured, not `skey`).
const TOKEN_HASH_KEY: &str = "campaign-token-hash-key-0123456789abcdef";

const CACHE_SET_LUA: &str = include_str!("../../lua/cache_set.lua");
const CACHE_INVALIDATE_LUA: &str = include_str!("../../lua/cache_invalidate.lua");

/// What a run does.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// How long faults keep coming (the run ends with a final convergence check).
    pub duration: Duration,
    pub seed: u64,
    /// Number of daemons (at least 3): `n0` in-process direct, `n1` in-process
    /// behind a fault proxy, `n2` a `shoald` process behind a fault proxy, then
    /// the same pattern again.
    pub daemons: usize,
    /// `cache.heartbeat` given to every daemon.
    pub heartbeat: Duration,
    /// `cache.max_staleness` (Δ) given to every daemon; the oracle's tolerance.
    pub max_staleness: Duration,
    /// Cache keys the workload uses (plus a few probe keys).
    pub keys: usize,
    /// Bound on convergence after a fault.
    pub converge_within: Duration,
    /// Print each fault as it happens.
    pub verbose: bool,
    /// The Redis deployment the daemons use.
    pub topology: Topology,
    /// `redis.cluster.buckets` under [`Topology::Cluster`].
    pub buckets: u16,
}

/// The Redis deployment of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server; a third of the daemons reach it through fault proxies.
    Standalone,
    /// A primary, a replica and three sentinels; the daemons use
    /// `[redis.sentinel]` (no proxies: the sentinels hand out real addresses).
    Sentinel,
    /// A Redis Cluster of three primaries and three replicas (AOF, `appendfsync
    /// always`); the daemons use `[redis.cluster]` (no proxies: the cluster
    /// hands out real addresses).
    Cluster,
}

impl CampaignConfig {
    /// `duration`, with the seed from `SHOAL_CAMPAIGN_SEED` or a fresh one.
    pub fn new(duration: Duration) -> CampaignConfig {
        let seed = std::env::var("SHOAL_CAMPAIGN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        CampaignConfig {
            duration,
            seed,
            daemons: 3,
            heartbeat: Duration::from_millis(50),
            max_staleness: Duration::from_millis(250),
            keys: 40,
            converge_within: Duration::from_secs(10),
            verbose: std::env::var_os("SHOAL_CAMPAIGN_VERBOSE").is_some(),
            topology: Topology::Standalone,
            buckets: 8,
        }
    }
}

/// The faults, each injected several times per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `CLIENT KILL TYPE pubsub`.
    KillPubsub,
    /// `CLIENT KILL TYPE normal` (the daemons' command connections).
    KillNormal,
    /// Redis `SIGSTOP`, then `SIGCONT`.
    RedisStop,
    /// Redis SIGKILLed and restarted with its data (AOF, `appendfsync always`).
    RestartPersistent,
    /// Redis SIGKILLed and restarted empty.
    RestartEmpty,
    /// `FLUSHALL`.
    FlushAll,
    /// Subscribers killed, then the log trimmed to 2 entries while they replay.
    TrimDuringReplay,
    /// One daemon's link to Redis black-holed (no RST), then healed.
    Partition,
    /// Latency added to every proxied link, then removed.
    Latency,
    /// A `shoald` process SIGKILLed and restarted.
    DaemonKill,
    /// `client-output-buffer-limit pubsub 1kb 1kb 0` under a burst, then restored.
    OutputBuffer,
    /// A foreign publisher's message on the invalidation channel whose id lies
    /// beyond the log's end, then the subscribers killed (so they replay).
    ForeignPublish,
    /// `SENTINEL FAILOVER` (the old primary stays up and becomes a replica).
    Failover,
    /// The primary SIGKILLed; the sentinels promote the replica; the old
    /// primary restarted empty (the sentinels make it a replica).
    KillPrimary,
    /// Cluster: the slot of a bucket holding workload keys (or the sessions'
    /// slot) moved to another primary (`MIGRATE` in batches, `ASK` then
    /// `MOVED`) while the workload runs.
    Reshard,
    /// Cluster: a primary SIGKILLed, its replica promoted; the old primary
    /// restarted with its data directory (it rejoins as a replica).
    ShardFailover,
    /// Cluster: `CLUSTER FAILOVER` on a replica (the old primary up; it hands
    /// over and becomes the replica).
    ClusterFailover,
    /// Cluster: a primary SIGKILLed and restarted with its AOF within the node
    /// timeout (it stays the primary).
    ShardRestart,
    /// Cluster: a primary SIGKILLed and restarted empty (its `nodes.conf`
    /// kept) within the node timeout: it stays the primary, its replica
    /// resyncs from it, the shard's data is lost (and only that shard's).
    ShardRestartEmpty,
    /// Cluster: a primary hangs (SIGSTOP: its connections stay open, nothing
    /// answers) past the node timeout, its replica is promoted, and it
    /// resumes later (it learns it was demoted and becomes a replica).
    ShardHang,
}

impl FaultKind {
    /// The faults of a topology: Sentinel has no proxies (partition, latency)
    /// and restarts its primary through failovers.
    pub fn of(topology: Topology) -> Vec<FaultKind> {
        match topology {
            Topology::Standalone => FaultKind::ALL[..12].to_vec(),
            Topology::Sentinel => vec![
                FaultKind::KillPubsub,
                FaultKind::KillNormal,
                FaultKind::RedisStop,
                FaultKind::FlushAll,
                FaultKind::TrimDuringReplay,
                FaultKind::DaemonKill,
                FaultKind::OutputBuffer,
                FaultKind::ForeignPublish,
                FaultKind::Failover,
                FaultKind::KillPrimary,
            ],
            Topology::Cluster => vec![
                FaultKind::KillPubsub,
                FaultKind::KillNormal,
                FaultKind::RedisStop,
                FaultKind::FlushAll,
                FaultKind::TrimDuringReplay,
                FaultKind::DaemonKill,
                FaultKind::OutputBuffer,
                FaultKind::ForeignPublish,
                FaultKind::Reshard,
                FaultKind::ShardFailover,
                FaultKind::ClusterFailover,
                FaultKind::ShardRestart,
                FaultKind::ShardRestartEmpty,
                FaultKind::ShardHang,
            ],
        }
    }

    /// The faults only a cluster meets.
    pub const CLUSTER: [FaultKind; 6] = [
        FaultKind::Reshard,
        FaultKind::ShardFailover,
        FaultKind::ClusterFailover,
        FaultKind::ShardRestart,
        FaultKind::ShardRestartEmpty,
        FaultKind::ShardHang,
    ];

    pub const ALL: [FaultKind; 20] = [
        FaultKind::KillPubsub,
        FaultKind::KillNormal,
        FaultKind::RedisStop,
        FaultKind::RestartPersistent,
        FaultKind::RestartEmpty,
        FaultKind::FlushAll,
        FaultKind::TrimDuringReplay,
        FaultKind::Partition,
        FaultKind::Latency,
        FaultKind::DaemonKill,
        FaultKind::OutputBuffer,
        FaultKind::ForeignPublish,
        FaultKind::Failover,
        FaultKind::KillPrimary,
        FaultKind::Reshard,
        FaultKind::ShardFailover,
        FaultKind::ClusterFailover,
        FaultKind::ShardRestart,
        FaultKind::ShardRestartEmpty,
        FaultKind::ShardHang,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillPubsub => "CLIENT KILL TYPE pubsub",
            FaultKind::KillNormal => "CLIENT KILL TYPE normal",
            FaultKind::RedisStop => "Redis SIGSTOP/SIGCONT",
            FaultKind::RestartPersistent => "Redis restart, AOF kept",
            FaultKind::RestartEmpty => "Redis restart, empty",
            FaultKind::FlushAll => "FLUSHALL",
            FaultKind::TrimDuringReplay => "log trimmed during replay",
            FaultKind::Partition => "black-hole partition",
            FaultKind::Latency => "latency spike",
            FaultKind::DaemonKill => "daemon SIGKILL + restart",
            FaultKind::OutputBuffer => "pubsub output-buffer kill",
            FaultKind::ForeignPublish => "foreign message beyond the log",
            FaultKind::Failover => "SENTINEL FAILOVER",
            FaultKind::KillPrimary => "primary SIGKILL, failover, restart",
            FaultKind::Reshard => "slot migration (resharding)",
            FaultKind::ShardFailover => "shard primary SIGKILL, replica promoted",
            FaultKind::ClusterFailover => "CLUSTER FAILOVER",
            FaultKind::ShardRestart => "shard primary restart, AOF kept",
            FaultKind::ShardRestartEmpty => "shard primary restart, data lost",
            FaultKind::ShardHang => "shard primary hung past the node timeout",
        }
    }
}

/// One injected fault and how the fleet recovered.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub kind: FaultKind,
    pub detail: String,
    pub start: Nanos,
    pub healed: Nanos,
    /// When every daemon served the probe from L1 again (`None`: not within the bound).
    pub converged: Option<Nanos>,
}

/// Counters of one op kind.
#[derive(Debug, Default, Clone)]
pub struct OpCount {
    pub ok: u64,
    pub err: u64,
    /// Errors by code (or client error kind).
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error kind.
    pub examples: BTreeMap<String, String>,
}

/// A short class for an error: the protocol code, or the client error's kind.
fn err_class(e: &shoal_client::Error) -> String {
    match e.code() {
        Some(c) => format!("{c:?}"),
        None => {
            let d = format!("{e:?}");
            d.split(['(', ' ', '{'])
                .next()
                .unwrap_or("error")
                .to_string()
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub config: CampaignConfig,
    pub elapsed: Duration,
    pub ops: BTreeMap<&'static str, OpCount>,
    pub faults: Vec<FaultEvent>,
    pub verdict: Verdict,
    /// Reads served from L1 (of all successful reads).
    pub l1_hits: u64,
    /// Of those, reads served from the daemon's shared-memory L1 (issue 17).
    pub shm_hits: u64,
    pub convergence_failures: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verdict.ok() && self.convergence_failures.is_empty()
    }

    fn key_name(&self, key: u32) -> String {
        if key as usize >= self.config.keys {
            format!("probe{}", key as usize - self.config.keys)
        } else {
            format!("k{key}")
        }
    }

    /// The kind of the last fault injected before `t`.
    fn fault_kind_at(&self, t: Nanos) -> String {
        self.faults
            .iter()
            .rev()
            .find(|f| f.start <= t)
            .map_or_else(|| "no fault yet".into(), |f| f.kind.name().to_string())
    }

    /// The fault active (or last recovered from) at `t`, for failure reports.
    fn fault_at(&self, t: Nanos) -> String {
        match self.faults.iter().rev().find(|f| f.start <= t) {
            None => "before any fault".into(),
            Some(f) => {
                let since = Duration::from_nanos(t - f.start);
                let state = match f.converged {
                    Some(c) if t > c => "after convergence",
                    _ if t <= f.healed => "during",
                    _ => "recovering from",
                };
                format!("{state} {} ({}) +{since:?}", f.kind.name(), f.detail)
            }
        }
    }

    /// Every failure, one line each (at most `max` per class).
    pub fn failures(&self, max: usize) -> Vec<String> {
        let ms = |n: Nanos| n as f64 / 1e6;
        let mut out = Vec::new();
        for s in self.verdict.stale.iter().take(max) {
            out.push(format!(
                "STALE read: {} daemon n{} {:?} from {} began at {:.1} ms returned version {} \
                 overwritten by a {:?} {:?} before it began (Δ {:?}); {}",
                self.key_name(s.read.key),
                s.read.daemon,
                s.read.kind,
                if s.read.from_l1 { "L1" } else { "L2/unknown" },
                ms(s.read.inv),
                s.read.got.map_or(0, |g| g.version),
                s.overwritten_by,
                s.staleness,
                self.config.max_staleness,
                self.fault_at(s.read.inv)
            ));
        }
        for p in self.verdict.phantoms.iter().take(max) {
            out.push(format!(
                "PHANTOM read: key {} daemon n{} at {:.1} ms: {} ({:?}); {}",
                p.read.key,
                p.read.daemon,
                ms(p.read.inv),
                p.why,
                p.read.got,
                self.fault_at(p.read.inv)
            ));
        }
        for a in self.verdict.accepted_revoked.iter().take(max) {
            out.push(format!(
                "REVOKED SESSION accepted: token #{} daemon n{} at {:.1} ms, {:?} after its {} on n{} completed (invoked at {:.1} ms); {}",
                a.read.token,
                a.read.daemon,
                ms(a.read.inv),
                a.after,
                a.revocation.op,
                a.revocation.daemon,
                ms(a.revocation.inv),
                self.fault_at(a.read.inv)
            ));
        }
        out.extend(self.convergence_failures.iter().take(max).cloned());
        out
    }

    /// The report table (Markdown).
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let v = &self.verdict;
        let _ = writeln!(
            s,
            "campaign: {} Redis, seed {} ({} daemons, {} keys, heartbeat {:?}, Δ = max_staleness {:?}), {:.1} s",
            match self.config.topology {
                Topology::Standalone => "standalone".to_string(),
                Topology::Sentinel => "Sentinel (primary, replica, 3 sentinels)".into(),
                Topology::Cluster => format!(
                    "Cluster (3 primaries, 3 replicas, {} buckets)",
                    self.config.buckets
                ),
            },
            self.config.seed,
            self.config.daemons,
            self.config.keys,
            self.config.heartbeat,
            self.config.max_staleness,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "\n| operation | ok | errors | errors by kind |\n|---|---:|---:|---|"
        );
        for (k, c) in &self.ops {
            let kinds: Vec<String> = c.errors.iter().map(|(e, n)| format!("{e} {n}")).collect();
            let _ = writeln!(s, "| {k} | {} | {} | {} |", c.ok, c.err, kinds.join(", "));
        }
        let mut internal: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for (op, c) in &self.ops {
            for (class, m) in &c.examples {
                if class == "Internal" || self.config.verbose {
                    internal.insert((op, class), m);
                }
            }
        }
        for ((op, class), m) in internal {
            let _ = writeln!(s, "\nfirst `{class}` error of {op}: {m}");
        }
        let _ = writeln!(
            s,
            "\n| fault | count | convergence p50 ms | max ms | not converged |\n|---|---:|---:|---:|---:|"
        );
        for kind in FaultKind::of(self.config.topology) {
            let evs: Vec<&FaultEvent> = self.faults.iter().filter(|f| f.kind == kind).collect();
            let mut conv: Vec<u64> = evs
                .iter()
                .filter_map(|f| f.converged.map(|c| c.saturating_sub(f.healed)))
                .collect();
            conv.sort_unstable();
            let p = |q: usize| {
                if conv.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.0}", conv[(conv.len() - 1) * q / 100] as f64 / 1e6)
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                kind.name(),
                evs.len(),
                p(50),
                p(100),
                evs.len() - conv.len()
            );
        }
        if !v.stale.is_empty() || !v.accepted_revoked.is_empty() {
            let _ = writeln!(
                s,
                "\n| failures attributed to the last fault before the read | stale reads (from L1) | worst staleness | example | revoked sessions accepted |\n|---|---:|---:|---|---:|"
            );
            let mut by: BTreeMap<String, (u64, Duration, String, u64, u64)> = BTreeMap::new();
            for st in &v.stale {
                let e = by.entry(self.fault_kind_at(st.read.inv)).or_default();
                e.0 += 1;
                e.4 += u64::from(st.read.from_l1);
                if st.staleness > e.1 {
                    e.1 = st.staleness;
                    e.2 = format!(
                        "{} on n{} ({:?}, {}), overwritten by {:?}",
                        self.key_name(st.read.key),
                        st.read.daemon,
                        st.read.kind,
                        if st.read.from_l1 { "L1" } else { "L2/unknown" },
                        st.overwritten_by
                    );
                }
            }
            for a in &v.accepted_revoked {
                by.entry(self.fault_kind_at(a.read.inv)).or_default().3 += 1;
            }
            for (f, (n, worst, ex, sess, l1)) in by {
                let _ = writeln!(
                    s,
                    "| {f} | {n} ({l1}) | {:.0} ms | {ex} | {sess} |",
                    worst.as_secs_f64() * 1e3
                );
            }
        }
        let reads_ok = v.reads_checked;
        let _ = writeln!(
            s,
            "\n| check | value |\n|---|---:|\n\
             | cache reads checked (L1 hits, of them from shared memory) | {} ({}, {}) |\n\
             | reads returning an overwritten value (any lag) | {} |\n\
             | stale reads (overwritten more than Δ before the read began) | **{}** |\n\
             | phantom reads | **{}** |\n\
             | largest staleness observed vs Δ | {:.1} ms vs {} ms |\n\
             | session reads checked | {} |\n\
             | revoked sessions accepted more than Δ after revocation | **{}** |\n\
             | largest revoked-session acceptance lag vs Δ | {:.1} ms vs {} ms |\n\
             | convergence failures | **{}** |",
            reads_ok,
            self.l1_hits,
            self.shm_hits,
            v.reads_of_overwritten,
            v.stale.len(),
            v.phantoms.len(),
            v.max_staleness.as_secs_f64() * 1e3,
            self.config.max_staleness.as_millis(),
            v.session_reads_checked,
            v.accepted_revoked.len(),
            v.max_session_lag.as_secs_f64() * 1e3,
            self.config.max_staleness.as_millis(),
            self.convergence_failures.len()
        );
        s
    }
}

/// State every workload task shares.
struct Shared {
    history: History,
    /// Key names; index = the oracle's key id. The last `PROBES` are probe keys.
    keys: Vec<String>,
    key_ids: HashMap<String, u32>,
    tags: usize,
    ops: Mutex<BTreeMap<&'static str, OpCount>>,
    next_token: AtomicU32,
    /// Replicas an outside write must be confirmed by (`WAIT`) before it
    /// counts as completed: under Sentinel a failover may lose what only the
    /// primary had, exactly as it would for the daemons without `WAIT`.
    wait_replicas: u32,
    /// `redis.cluster.buckets` on a cluster: every outside change goes to the
    /// names of its key's bucket and is published with `SPUBLISH`.
    buckets: Option<u16>,
}

/// The Redis of a run.
enum Deployment {
    Single(RedisServer),
    Sentinel(SentinelSet),
    Cluster(ClusterSet),
}

/// How outside writers and fault actions reach the primary (cheap to clone).
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Url(String),
    /// Sentinel addresses: the primary is asked for on every connect.
    Sentinels(Vec<String>),
    /// Cluster seed nodes: a redis-rs cluster connection routes each command
    /// to its slot's primary and follows `MOVED`/`ASK`.
    Cluster(Vec<String>),
}

/// A connection to a standalone or Sentinel primary, or to a cluster.
pub enum AnyConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for AnyConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnyConn::Single(_) => "AnyConn::Single",
            AnyConn::Cluster(_) => "AnyConn::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for AnyConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisTarget {
    /// A fresh connection to the primary (on a cluster, a cluster connection:
    /// `WAIT` then goes to every primary). Not a connection manager: a write
    /// and its `WAIT` must go over one connection, or fail together.
    pub async fn conn(&self) -> Result<AnyConn> {
        let url = match self {
            RedisTarget::Url(u) => u.clone(),
            RedisTarget::Cluster(urls) => {
                let client = redis::cluster::ClusterClient::builder(urls.clone())
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(1))
                    .build()?;
                return Ok(AnyConn::Cluster(client.get_async_connection().await?));
            }
            RedisTarget::Sentinels(urls) => {
                let mut found = None;
                for u in urls {
                    let ask = async {
                        let mut c = redis::Client::open(u.as_str())?
                            .get_multiplexed_async_connection()
                            .await?;
                        let (host, port): (String, u16) = redis::cmd("SENTINEL")
                            .arg("GET-MASTER-ADDR-BY-NAME")
                            .arg(crate::sentinel::MASTER)
                            .query_async(&mut c)
                            .await?;
                        Ok::<_, anyhow::Error>(format!("redis://{host}:{port}"))
                    };
                    if let Ok(Ok(url)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
                        found = Some(url);
                        break;
                    }
                }
                found.context("no sentinel names a primary")?
            }
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None);
        Ok(AnyConn::Single(
            redis::Client::open(url)?
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }
}

impl Deployment {
    fn target(&self) -> RedisTarget {
        match self {
            Deployment::Single(r) => RedisTarget::Url(r.url()),
            Deployment::Sentinel(s) => RedisTarget::Sentinels(s.urls()),
            Deployment::Cluster(c) => RedisTarget::Cluster(c.urls()),
        }
    }
    async fn primary_mut(&mut self) -> Result<&mut RedisServer> {
        match self {
            Deployment::Single(r) => Ok(r),
            Deployment::Sentinel(s) => s.primary_mut().await,
            Deployment::Cluster(c) => {
                let p = c.primaries().await?;
                let i = *p.first().context("no primary")?;
                Ok(&mut c.nodes[i])
            }
        }
    }
    /// The primary's state, for failure messages.
    async fn diagnose(&self) -> String {
        match self {
            Deployment::Single(r) => diagnose(r),
            Deployment::Sentinel(s) => match s.primary().await {
                Ok(p) => diagnose(p),
                Err(e) => format!("no primary: {e:#}"),
            },
            Deployment::Cluster(c) => c
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("node {i}: {}", diagnose(n)))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

const PROBES: usize = 4;
const TAGS: usize = 5;
const USERS: u32 = 8;

impl Shared {
    fn workload_keys(&self) -> usize {
        self.keys.len() - PROBES
    }
    fn tag_of(&self, key: u32) -> String {
        if key as usize >= self.workload_keys() {
            "probe".into()
        } else {
            format!("g{}", key as usize % self.tags)
        }
    }
    fn keys_of_tag(&self, tag: usize) -> Vec<u32> {
        (0..self.workload_keys() as u32)
            .filter(|k| *k as usize % self.tags == tag)
            .collect()
    }
    fn count(&self, op: &'static str, ok: bool) {
        self.count_err(op, (!ok).then(|| ("error".to_string(), String::new())));
    }
    fn count_err(&self, op: &'static str, err: Option<(String, String)>) {
        let mut m = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(op).or_default();
        match err {
            None => c.ok += 1,
            Some((class, message)) => {
                c.err += 1;
                *c.errors.entry(class.clone()).or_default() += 1;
                c.examples.entry(class).or_insert(message);
            }
        }
    }
    /// Counts a daemon call's outcome, errors by code.
    fn outcome<T>(&self, op: &'static str, r: &Result<T, shoal_client::Error>) {
        self.count_err(op, r.as_ref().err().map(|e| (err_class(e), e.to_string())));
    }
    /// The bytes stored for `version` of `key` (a MessagePack string, so typed
    /// reads such as `get_or_load::<String>` decode it).
    fn value(&self, key: u32, version: u64) -> Result<Vec<u8>> {
        Ok(shoal_client::proto::to_value(
            &self.value_str(key, version),
        )?)
    }
    /// The Redis names of `name`'s change: one prefix standalone, its
    /// bucket's on a cluster.
    fn names(&self, name: &str) -> shoald::store::KeyNames {
        match self.buckets {
            None => shoald::store::KeyNames::new(PREFIX),
            Some(b) => crate::cluster::bucket_names(PREFIX, name, b),
        }
    }
    fn value_str(&self, key: u32, version: u64) -> String {
        format!("{}#{version}", self.keys[key as usize])
    }
    /// Parses a returned value; anything unparsable becomes a version nobody wrote.
    fn parse(&self, bytes: &[u8]) -> Got {
        shoal_client::proto::from_value::<String>(bytes)
            .ok()
            .and_then(|s| self.parse_str(&s))
            .unwrap_or(Got {
                version: u64::MAX,
                written_for: u32::MAX,
            })
    }
    fn parse_str(&self, s: &str) -> Option<Got> {
        let (key, v) = s.rsplit_once('#')?;
        Some(Got {
            version: v.parse().ok()?,
            written_for: *self.key_ids.get(key)?,
        })
    }
}

/// Where a daemon runs.
enum Runs {
    InProcess(Option<Daemon>),
    Process {
        proc: Option<DaemonProcess>,
        toml: String,
    },
}

struct Node {
    name: String,
    socket: PathBuf,
    proxy: Option<FaultProxy>,
    runs: Runs,
}

async fn client(socket: &Path) -> Result<Client> {
    client_with(socket, false).await
}

/// A client reading hits from the daemon's shared-memory L1 when `shm`.
async fn client_with(socket: &Path, shm: bool) -> Result<Client> {
    Ok(Client::builder(socket)
        .shm(shm)
        .timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(100))
        .connect()
        .await?)
}

/// Runs one campaign.
pub async fn run(config: CampaignConfig) -> Result<Report> {
    if config.daemons < 3 {
        bail!("the campaign needs at least 3 daemons");
    }
    // Faults make daemons warn all the time; only errors by default.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    println!(
        "campaign seed {} (replay with SHOAL_CAMPAIGN_SEED={}), {:?}, Δ {:?}",
        config.seed, config.seed, config.duration, config.max_staleness
    );
    let mut deployment = match config.topology {
        Topology::Standalone => Deployment::Single(
            RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await?,
        ),
        Topology::Sentinel => Deployment::Sentinel(SentinelSet::start().await?),
        Topology::Cluster => Deployment::Cluster(
            ClusterSet::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await?,
        ),
    };
    let target = deployment.target();
    let dir = tempfile::tempdir()?;

    let mut nodes = Vec::new();
    for i in 0..config.daemons {
        let name = format!("n{i}");
        let (proxy, url) = match &deployment {
            Deployment::Single(redis) => {
                let proxy = if i % 3 == 0 {
                    None
                } else {
                    Some(FaultProxy::start(redis.port()).await?)
                };
                let url = proxy.as_ref().map_or_else(|| redis.url(), FaultProxy::url);
                (proxy, url)
            }
            Deployment::Sentinel(_) | Deployment::Cluster(_) => (None, String::new()),
        };
        let runs = if i % 3 == 2 {
            let redis_toml = match &deployment {
                Deployment::Single(_) => {
                    format!("[redis]\nurl = \"{url}\"\ntimeout = \"300ms\"\n")
                }
                Deployment::Sentinel(set) => {
                    format!("[redis]\ntimeout = \"300ms\"\n{}", set.toml_section())
                }
                Deployment::Cluster(set) => format!(
                    "[redis]\ntimeout = \"300ms\"\n{}",
                    set.toml_section(config.buckets)
                ),
            };
            let toml = process_toml(&config, dir.path(), &name, &redis_toml);
            let mut p = DaemonProcess::spawn(dir.path(), &name, &toml)?;
            p.drain_stderr_to(&dir.path().join(format!("{name}.log")))?;
            p.wait_ready(Duration::from_secs(30)).await?;
            Runs::Process {
                proc: Some(p),
                toml,
            }
        } else {
            let mut c = shoald::Config::default();
            c.node.id = name.clone();
            c.socket.path = dir.path().join(format!("{name}.sock"));
            c.admin.listen = String::new();
            match &deployment {
                Deployment::Single(_) => c.redis.url = url,
                Deployment::Sentinel(set) => set.configure(&mut c),
                Deployment::Cluster(set) => {
                    c.redis.url = shoald::config::DEFAULT_REDIS_URL.into();
                    c.redis.cluster = Some(shoald::config::ClusterConfig {
                        urls: set.urls(),
                        buckets: config.buckets,
                        ..shoald::config::ClusterConfig::default()
                    });
                }
            }
            apply_config(&config, &mut c);
            Runs::InProcess(Some(Daemon::start_ready(c).await?))
        };
        nodes.push(Node {
            socket: dir.path().join(format!("{name}.sock")),
            name,
            proxy,
            runs,
        });
    }

    let mut keys: Vec<String> = (0..config.keys).map(|i| format!("k{i}")).collect();
    keys.extend((0..PROBES).map(|i| format!("probe{i}")));
    let shared = Arc::new(Shared {
        history: History::default(),
        key_ids: keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u32))
            .collect(),
        keys,
        tags: TAGS,
        ops: Mutex::default(),
        next_token: AtomicU32::new(1),
        wait_replicas: u32::from(config.topology != Topology::Standalone),
        buckets: (config.topology == Topology::Cluster).then_some(config.buckets),
    });

    // The workload.
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let sockets: Vec<PathBuf> = nodes.iter().map(|n| n.socket.clone()).collect();
    // Half the readers (one per daemon) read hits from shared memory.
    let mut shm_readers = Vec::new();
    for (i, socket) in sockets.iter().enumerate() {
        let d = i as u8;
        let seed = config.seed.wrapping_add(1000 * (i as u64 + 1));
        tasks.push(tokio::spawn(writer(
            shared.clone(),
            client(socket).await?,
            d,
            StdRng::seed_from_u64(seed),
            stop.clone(),
        )));
        for r in 0..2 {
            let c = client_with(socket, r == 0).await?;
            if r == 0 {
                shm_readers.push(c.clone());
            }
            tasks.push(tokio::spawn(reader(
                shared.clone(),
                c,
                d,
                StdRng::seed_from_u64(seed + 1 + r),
                stop.clone(),
            )));
        }
        let mut all = Vec::new();
        for s in &sockets {
            all.push(client(s).await?);
        }
        tasks.push(tokio::spawn(sessions(
            shared.clone(),
            all,
            i,
            StdRng::seed_from_u64(seed + 10),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(external_writer(
        shared.clone(),
        target.clone(),
        StdRng::seed_from_u64(config.seed.wrapping_add(7)),
        stop.clone(),
    )));
    let mut probes = Vec::new();
    for s in &sockets {
        probes.push(client(s).await?);
    }

    // The faults.
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut faults = Vec::new();
    let mut convergence_failures = Vec::new();
    let mut deck: Vec<FaultKind> = Vec::new();
    let kinds = FaultKind::of(config.topology);
    let mut round = 0usize;
    while started.elapsed() < config.duration {
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
            // The topology's own faults early in the first round (the deck
            // is used from its end), so a short run has them all.
            let early: &[(usize, FaultKind)] = match (round, config.topology) {
                (0, Topology::Sentinel) => &[(1, FaultKind::Failover), (3, FaultKind::KillPrimary)],
                (0, Topology::Cluster) => &[
                    (1, FaultKind::Reshard),
                    (2, FaultKind::ShardFailover),
                    (3, FaultKind::ShardHang),
                    (4, FaultKind::ShardRestart),
                    (6, FaultKind::ClusterFailover),
                    (8, FaultKind::ShardRestartEmpty),
                ],
                _ => &[],
            };
            for (at, kind) in early {
                if let Some(i) = deck.iter().position(|k| k == kind) {
                    let to = deck.len() - at;
                    deck.swap(i, to);
                }
            }
        }
        let Some(kind) = deck.pop() else { break };
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let start = shared.history.now();
        let detail = inject(
            kind,
            &mut deployment,
            &mut nodes,
            &shared,
            &mut rng,
            dir.path(),
        )
        .await
        .with_context(|| format!("injecting {}", kind.name()))?;
        let healed = shared.history.now();
        // A failover leaves the new primary without a replica to confirm
        // changes until the sentinels turn the old one into one (8 s after it
        // is seen as a primary, by Sentinel's design); under Sentinel a
        // primary stopped for over a second may be failed over too.
        let bound = match (config.topology, kind) {
            (Topology::Sentinel, FaultKind::Failover | FaultKind::KillPrimary)
            | (
                Topology::Cluster,
                FaultKind::ShardFailover
                | FaultKind::ClusterFailover
                | FaultKind::ShardRestart
                | FaultKind::ShardRestartEmpty
                | FaultKind::ShardHang,
            ) => config.converge_within * 6,
            (Topology::Sentinel | Topology::Cluster, _) | (_, FaultKind::DaemonKill) => {
                config.converge_within * 3
            }
            _ => config.converge_within,
        };
        let converged = converge(&shared, &target, &probes, round, bound).await;
        if config.verbose {
            println!(
                "{:>7.1}s {} ({detail}): converged {:?}",
                Duration::from_nanos(start).as_secs_f64(),
                kind.name(),
                converged
                    .as_ref()
                    .map(|c| Duration::from_nanos(c - healed))
                    .map_err(|e| format!("{e:#}"))
            );
        }
        let converged = match converged {
            Ok(c) => Some(c),
            Err(e) => {
                convergence_failures.push(format!(
                    "NOT CONVERGED within {bound:?} after {} ({detail}): {e:#}; process logs: {}",
                    kind.name(),
                    log_tails(&nodes, dir.path())
                ));
                None
            }
        };
        faults.push(FaultEvent {
            kind,
            detail,
            start,
            healed,
            converged,
        });
        round += 1;
    }
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    // Every daemon agrees once more at the end.
    let final_bound = match config.topology {
        Topology::Sentinel | Topology::Cluster => config.converge_within * 3,
        Topology::Standalone => config.converge_within,
    };
    if let Err(e) = converge(&shared, &target, &probes, round, final_bound).await {
        convergence_failures.push(format!("NOT CONVERGED at the end: {e:#}"));
    }
    let elapsed = started.elapsed();
    let recorded = shared.history.snapshot();
    let l1_hits = recorded.reads.iter().filter(|r| r.from_l1).count() as u64;
    let shm_hits = shm_readers.iter().map(|c| c.shm_stats().hits).sum();
    let verdict = crate::history::check(&recorded, config.max_staleness);
    let ops = shared.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for n in &mut nodes {
        match &mut n.runs {
            Runs::InProcess(d) => {
                if let Some(d) = d.take() {
                    d.stop().await?;
                }
            }
            Runs::Process { proc, .. } => drop(proc.take()),
        }
    }
    Ok(Report {
        config,
        elapsed,
        ops,
        faults,
        verdict,
        l1_hits,
        shm_hits,
        convergence_failures,
    })
}

/// The last lines each `shoald` process logged (warnings and worse).
fn log_tails(nodes: &[Node], dir: &Path) -> String {
    nodes
        .iter()
        .filter(|n| matches!(n.runs, Runs::Process { .. }))
        .map(|n| {
            let log =
                std::fs::read_to_string(dir.join(format!("{}.log", n.name))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
            format!("{}: [{tail}]", n.name)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Settings of an in-process daemon.
fn apply_config(config: &CampaignConfig, c: &mut shoald::Config) {
    c.cache.heartbeat = config.heartbeat;
    c.cache.max_staleness = config.max_staleness;
    c.redis.timeout = Duration::from_millis(300);
    c.session.token_hash_key = shoald::config::Secret(TOKEN_HASH_KEY.into());
    c.shutdown.grace = Duration::from_secs(2);
}

/// The configuration of a `shoald` process (the same settings).
fn process_toml(config: &CampaignConfig, dir: &Path, node: &str, redis_toml: &str) -> String {
    format!(
        "[node]\nid = \"{node}\"\n[socket]\npath = \"{}\"\n{redis_toml}\
         [admin]\nlisten = \"\"\n[cache]\nheartbeat = \"{}ms\"\nmax_staleness = \"{}ms\"\n\
         [session]\ntoken_hash_key = \"{TOKEN_HASH_KEY}\"\n[shutdown]\ngrace = \"2s\"\n",
        dir.join(format!("{node}.sock")).display(),
        config.heartbeat.as_millis(),
        config.max_staleness.as_millis(),
    )
}

/// `cache.set` / `cache.invalidate` / `cache.invalidate_tags` through one daemon.
async fn writer(
    sh: Arc<Shared>,
    c: Client,
    _daemon: u8,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let n = sh.workload_keys() as u32;
    while !stop.is_cancelled() {
        let key = rng.random_range(0..n);
        let p = rng.random_range(0..100);
        let inv = sh.history.now();
        if p < 65 {
            let version = sh.history.new_version();
            let opts = SetOptions {
                ttl: Some(TTL),
                tags: vec![sh.tag_of(key)],
                ..SetOptions::default()
            };
            let r = c
                .set_with(&sh.keys[key as usize], sh.value(key, version)?, opts)
                .await;
            let comp = sh.history.now();
            sh.outcome("cache.set", &r);
            sh.history.write(Write {
                kind: WriteKind::Set,
                target: Target::Keys(vec![key]),
                version: Some(version),
                inv,
                comp: matches!(r, Ok(true)).then_some(comp),
            });
        } else if p < 90 {
            let mut ks = vec![key];
            for _ in 0..rng.random_range(0..3) {
                let k = rng.random_range(0..n);
                if !ks.contains(&k) {
                    ks.push(k);
                }
            }
            let names: Vec<&str> = ks.iter().map(|k| sh.keys[*k as usize].as_str()).collect();
            let r = c.invalidate(&names).await;
            let comp = sh.history.now();
            sh.outcome("cache.invalidate", &r);
            sh.history.write(Write {
                kind: WriteKind::Invalidate,
                target: Target::Keys(ks),
                version: None,
                inv,
                comp: r.is_ok().then_some(comp),
            });
        } else {
            let tag = key as usize % sh.tags;
            let r = c.invalidate_tags([format!("g{tag}")]).await;
            let comp = sh.history.now();
            sh.outcome("cache.invalidate_tags", &r);
            sh.history.write(Write {
                kind: WriteKind::InvalidateTags,
                target: Target::Keys(sh.keys_of_tag(tag)),
                version: None,
                inv,
                comp: r.is_ok().then_some(comp),
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(4..14))).await;
    }
    Ok(())
}

fn got_of(sh: &Shared, r: &shoal_client::GetResult) -> Option<Got> {
    r.hit
        .then(|| sh.parse(r.value.as_deref().unwrap_or_default()))
}

/// `cache.get` / `cache.mget` / `get_or_load` through one daemon.
async fn reader(
    sh: Arc<Shared>,
    c: Client,
    daemon: u8,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let n = sh.workload_keys() as u32;
    while !stop.is_cancelled() {
        // Mostly a hot subset, so L1 serves most reads.
        let key = if rng.random_bool(0.7) {
            rng.random_range(0..n.min(10))
        } else {
            rng.random_range(0..n)
        };
        let p = rng.random_range(0..100);
        let inv = sh.history.now();
        if p < 70 {
            let r = c.get_full(&sh.keys[key as usize], false).await;
            let comp = sh.history.now();
            sh.outcome("cache.get", &r);
            if let Ok(r) = r {
                sh.history.read(Read {
                    kind: ReadKind::Get,
                    key,
                    inv,
                    comp,
                    got: got_of(&sh, &r),
                    daemon,
                    from_l1: r.from == Some(Source::L1),
                });
            }
        } else if p < 90 {
            let mut ks = vec![key];
            for _ in 0..rng.random_range(1..5) {
                let k = rng.random_range(0..n);
                if !ks.contains(&k) {
                    ks.push(k);
                }
            }
            let names: Vec<&str> = ks.iter().map(|k| sh.keys[*k as usize].as_str()).collect();
            let r = c.mget_full(&names).await;
            let comp = sh.history.now();
            sh.outcome("cache.mget", &r);
            if let Ok(rs) = r {
                sh.history
                    .reads(ks.iter().zip(rs.iter()).map(|(&key, r)| Read {
                        kind: ReadKind::Mget,
                        key,
                        inv,
                        comp,
                        got: got_of(&sh, r),
                        daemon,
                        from_l1: r.from == Some(Source::L1),
                    }));
            }
        } else {
            let version = sh.history.new_version();
            let own = sh.value_str(key, version);
            let opts = SetOptions {
                ttl: Some(TTL),
                tags: vec![sh.tag_of(key)],
                ..SetOptions::default()
            };
            let loaded = own.clone();
            let sh2 = sh.clone();
            let r = c
                .get_or_load_with::<String, std::convert::Infallible, _, _>(
                    &sh.keys[key as usize],
                    opts,
                    move || async move {
                        // The fill's outcome is never seen: an unfinished write.
                        sh2.history.write(Write {
                            kind: WriteKind::Fill,
                            target: Target::Keys(vec![key]),
                            version: Some(version),
                            inv: sh2.history.now(),
                            comp: None,
                        });
                        Ok(loaded)
                    },
                )
                .await;
            let comp = sh.history.now();
            sh.count("get_or_load", r.is_ok());
            if let Ok(s) = r {
                if s != own {
                    sh.history.read(Read {
                        kind: ReadKind::GetOrLoad,
                        key,
                        inv,
                        comp,
                        got: Some(sh.parse_str(&s).unwrap_or(Got {
                            version: u64::MAX,
                            written_for: u32::MAX,
                        })),
                        daemon,
                        from_l1: false,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_micros(rng.random_range(200..1500))).await;
    }
    Ok(())
}

/// An external writer (redis-rs, no daemon): the documented scripts.
async fn external_writer(
    sh: Arc<Shared>,
    target: RedisTarget,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let url = match &target {
        RedisTarget::Url(u) => u.clone(),
        RedisTarget::Sentinels(_) | RedisTarget::Cluster(_) => {
            return external_writer_following(sh, target, rng, stop).await;
        }
    };
    let client = redis::Client::open(url)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    let mut conn = loop {
        match client.get_connection_manager_with_config(cfg.clone()).await {
            Ok(c) => break c,
            Err(e) if stop.is_cancelled() => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let n = sh.workload_keys() as u32;
    while !stop.is_cancelled() {
        let key = rng.random_range(0..n);
        if rng.random_bool(0.7) {
            ext_set(&sh, &mut conn, key).await;
        } else {
            ext_invalidate(&sh, &mut conn, &[key]).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..30))).await;
    }
    Ok(())
}

/// The external writer under Sentinel: one connection to the primary the
/// sentinels name, made again after any failure (a failover moves it). On a
/// cluster: one redis-rs cluster connection, made again after any failure.
async fn external_writer_following(
    sh: Arc<Shared>,
    target: RedisTarget,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let n = sh.workload_keys() as u32;
    let mut conn = None;
    while !stop.is_cancelled() {
        if conn.is_none() {
            conn = tokio::time::timeout(Duration::from_secs(2), target.conn())
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(c) = conn.as_mut() {
            let key = rng.random_range(0..n);
            let ok = if rng.random_bool(0.7) {
                ext_set(&sh, c, key).await.is_some()
            } else {
                ext_invalidate(&sh, c, &[key]).await
            };
            if !ok {
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..30))).await;
    }
    Ok(())
}

/// `WAIT` after an outside write under Sentinel (see [`Shared::wait_replicas`]):
/// whether enough replicas confirmed it.
async fn confirmed<C: redis::aio::ConnectionLike + Send>(sh: &Shared, conn: &mut C) -> bool {
    if sh.wait_replicas == 0 {
        return true;
    }
    let mut wait = redis::cmd("WAIT");
    wait.arg(sh.wait_replicas).arg(200);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), wait.query_async::<i64>(conn)).await,
        Ok(Ok(n)) if n >= i64::from(sh.wait_replicas)
    )
}

/// Sets the Pub/Sub output-buffer limit (`client-output-buffer-limit pubsub`).
async fn pubsub_buffer<C: redis::aio::ConnectionLike + Send>(c: &mut C, limit: &str) -> Result<()> {
    let mut set = redis::cmd("CONFIG");
    set.arg("SET").arg("client-output-buffer-limit").arg(limit);
    cmd::<(), _>(c, &set).await
}

/// 1,200 keys outside the workload, for a burst of large invalidation messages.
fn burst_keys(rng: &mut impl Rng) -> Vec<String> {
    (0..1200)
        .map(|j| format!("burst-key-{:05}", rng.random_range(0..100_000) + j))
        .collect()
}

/// `FLUSHALL` through `c`, recorded as a loss of every key; it counts as done
/// once confirmed (see [`confirmed`]).
async fn flush_all<C: redis::aio::ConnectionLike + Send>(sh: &Shared, c: &mut C) -> Result<String> {
    let inv = sh.history.now();
    let r = cmd::<(), _>(c, &redis::cmd("FLUSHALL")).await;
    let done = r.is_ok() && confirmed(sh, c).await;
    sh.history.write(Write {
        kind: WriteKind::DataLoss,
        target: Target::All,
        version: None,
        inv,
        comp: done.then(|| sh.history.now()),
    });
    r?;
    Ok(String::new())
}

/// `lua/cache_set.lua` as the README tells an outside writer to call it.
/// Returns the version when the write surely completed.
async fn ext_set<C: redis::aio::ConnectionLike + Send>(
    sh: &Shared,
    conn: &mut C,
    key: u32,
) -> Option<u64> {
    let version = sh.history.new_version();
    let name = &sh.keys[key as usize];
    let Ok(value) = sh.value(key, version) else {
        return None;
    };
    let inv = sh.history.now();
    let kn = sh.names(name);
    let script = redis::Script::new(CACHE_SET_LUA);
    let mut call = script.key(kn.value(name));
    call.key(kn.lease(name))
        .key(kn.log())
        .key(kn.tag(&sh.tag_of(key)))
        .arg(value)
        .arg(TTL.as_millis() as u64)
        .arg("")
        .arg(100_000)
        .arg(kn.channel())
        .arg("external")
        .arg(name);
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        call.invoke_async::<redis::Value>(conn),
    )
    .await;
    let ok = matches!(r, Ok(Ok(_))) && confirmed(sh, conn).await;
    let comp = sh.history.now();
    sh.count("external cache_set.lua", ok);
    sh.history.write(Write {
        kind: WriteKind::ExternalSet,
        target: Target::Keys(vec![key]),
        version: Some(version),
        inv,
        comp: ok.then_some(comp),
    });
    ok.then_some(version)
}

/// `lua/cache_invalidate.lua` as the README shows.
/// `n` outside writes of random workload keys, each a set or an invalidation.
async fn ext_changes<C: redis::aio::ConnectionLike + Send>(
    sh: &Shared,
    conn: &mut C,
    rng: &mut StdRng,
    n: usize,
) {
    let n_keys = sh.workload_keys() as u32;
    for _ in 0..n {
        let k = rng.random_range(0..n_keys);
        if rng.random_bool(0.5) {
            ext_set(sh, conn, k).await;
        } else {
            ext_invalidate(sh, conn, &[k]).await;
        }
    }
}

async fn ext_invalidate<C: redis::aio::ConnectionLike + Send>(
    sh: &Shared,
    conn: &mut C,
    keys: &[u32],
) -> bool {
    let names: Vec<&str> = keys.iter().map(|k| sh.keys[*k as usize].as_str()).collect();
    let inv = sh.history.now();
    let ok = invalidate_names(sh, conn, &names).await.is_ok() && confirmed(sh, conn).await;
    let comp = sh.history.now();
    sh.count("external cache_invalidate.lua", ok);
    sh.history.write(Write {
        kind: WriteKind::ExternalInvalidate,
        target: Target::Keys(keys.to_vec()),
        version: None,
        inv,
        comp: ok.then_some(comp),
    });
    ok
}

/// `lua/cache_invalidate.lua` over `names`: one call, or on a cluster one per
/// bucket (a script touches one slot).
async fn invalidate_names<C: redis::aio::ConnectionLike + Send>(
    sh: &Shared,
    conn: &mut C,
    names: &[&str],
) -> Result<()> {
    let mut groups: BTreeMap<String, (shoald::store::KeyNames, Vec<&str>)> = BTreeMap::new();
    for k in names {
        let kn = sh.names(k);
        groups
            .entry(kn.log())
            .or_insert_with(|| (kn, Vec::new()))
            .1
            .push(k);
    }
    for (kn, names) in groups.into_values() {
        let script = redis::Script::new(CACHE_INVALIDATE_LUA);
        let mut inv = script.key(kn.log());
        for k in &names {
            inv.key(kn.value(k)).key(kn.lease(k));
        }
        inv.arg(100_000).arg(kn.channel()).arg("external");
        for k in &names {
            inv.arg(*k);
        }
        tokio::time::timeout(
            Duration::from_secs(1),
            inv.invoke_async::<redis::Value>(conn),
        )
        .await
        .context("timed out")??;
    }
    Ok(())
}

/// A live session the workload knows the token of.
struct Live {
    token: String,
    id: u32,
    user: u32,
}

/// Sessions created on daemon `home`, read everywhere, revoked, rotated.
async fn sessions(
    sh: Arc<Shared>,
    clients: Vec<Client>,
    home: usize,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let mut live: Vec<Live> = Vec::new();
    let mut revoked: VecDeque<(String, u32)> = VecDeque::new();
    let pick = |rng: &mut StdRng| rng.random_range(0..clients.len());
    while !stop.is_cancelled() {
        let p = rng.random_range(0..100);
        if live.len() < 3 || p < 20 {
            let user = rng.random_range(0..USERS);
            let r = clients[home]
                .session_create_raw(&format!("user{user}"), b"d".to_vec(), Default::default())
                .await;
            let comp = sh.history.now();
            sh.outcome("session.create", &r);
            if let Ok(created) = r {
                let id = sh.next_token.fetch_add(1, Ordering::Relaxed);
                sh.history.session_create(SessionCreate {
                    token: id,
                    user,
                    comp,
                });
                live.push(Live {
                    token: created.token,
                    id,
                    user,
                });
            }
        } else if p < 70 {
            // Read a live token, or one revoked a while ago, on any daemon.
            let (token, id) = if p < 45 || revoked.is_empty() {
                let l = &live[rng.random_range(0..live.len())];
                (l.token.clone(), l.id)
            } else {
                revoked[rng.random_range(0..revoked.len())].clone()
            };
            let d = pick(&mut rng);
            let inv = sh.history.now();
            let r = clients[d].session_get_raw(&token, true).await;
            let comp = sh.history.now();
            sh.outcome("session.get", &r);
            if let Ok(found) = r {
                sh.history.session_read(SessionRead {
                    token: id,
                    inv,
                    comp,
                    accepted: found.is_some(),
                    daemon: d as u8,
                });
            }
        } else {
            let l = live.swap_remove(rng.random_range(0..live.len()));
            let d = pick(&mut rng);
            let inv = sh.history.now();
            if p < 80 {
                let r = clients[d].session_revoke(&l.token).await;
                let comp = sh.history.now();
                sh.outcome("session.revoke", &r);
                if r.is_ok() {
                    sh.history.revocation(Revocation {
                        target: Revoked::Token(l.id),
                        inv,
                        comp,
                        op: "session.revoke",
                        daemon: d as u8,
                    });
                }
                revoked.push_back((l.token, l.id));
            } else if p < 90 {
                let r = clients[d].session_rotate(&l.token).await;
                let comp = sh.history.now();
                sh.outcome("session.rotate", &r);
                if let Ok(Some(new)) = r {
                    sh.history.revocation(Revocation {
                        target: Revoked::Token(l.id),
                        inv,
                        comp,
                        op: "session.rotate",
                        daemon: d as u8,
                    });
                    let id = sh.next_token.fetch_add(1, Ordering::Relaxed);
                    sh.history.session_create(SessionCreate {
                        token: id,
                        user: l.user,
                        comp,
                    });
                    live.push(Live {
                        token: new,
                        id,
                        user: l.user,
                    });
                }
                revoked.push_back((l.token, l.id));
            } else {
                let r = clients[d]
                    .session_revoke_user(&format!("user{}", l.user))
                    .await;
                let comp = sh.history.now();
                sh.outcome("session.revoke_user", &r);
                if r.is_ok() {
                    sh.history.revocation(Revocation {
                        target: Revoked::User(l.user),
                        inv,
                        comp,
                        op: "session.revoke_user",
                        daemon: d as u8,
                    });
                }
                let (gone, keep): (Vec<Live>, Vec<Live>) =
                    live.drain(..).partition(|x| x.user == l.user);
                live = keep;
                for x in gone.into_iter().chain([l]) {
                    revoked.push_back((x.token, x.id));
                }
            }
            while revoked.len() > 64 {
                revoked.pop_front();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..8))).await;
    }
    Ok(())
}

/// A fresh connection for one fault action, retried while Redis restarts.
async fn admin_conn(dep: &Deployment) -> Result<AnyConn> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = dep.target();
    loop {
        let conn = async {
            match dep {
                Deployment::Single(redis) => Ok(AnyConn::Single(redis.conn().await?)),
                Deployment::Sentinel(_) | Deployment::Cluster(_) => target.conn().await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), conn).await {
            Ok(Ok(c)) => return Ok(c),
            _ if Instant::now() > deadline => {
                bail!("cannot reach Redis ({})", dep.diagnose().await)
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// What an unreachable Redis is doing: its process state and its answer to a
/// raw `PING`.
fn diagnose(redis: &RedisServer) -> String {
    use std::io::{Read as _, Write as _};
    let state = redis
        .pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .and_then(|s| {
            s.split(") ")
                .nth(1)
                .map(|r| r.chars().take(1).collect::<String>())
        })
        .unwrap_or_else(|| "no process".into());
    let reply = std::net::TcpStream::connect(("127.0.0.1", redis.port()))
        .and_then(|mut t| {
            t.set_read_timeout(Some(Duration::from_secs(1)))?;
            t.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 256];
            let n = t.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
        .unwrap_or_else(|e| e.to_string());
    format!("process state {state}, PING -> {reply}")
}

async fn cmd<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    c: &redis::Cmd,
) -> Result<T> {
    Ok(
        tokio::time::timeout(Duration::from_secs(5), c.query_async::<T>(conn))
            .await
            .context("Redis did not answer")??,
    )
}

async fn pubsub_ids<C: redis::aio::ConnectionLike + Send>(conn: &mut C) -> Result<Vec<String>> {
    let list: String = cmd(
        conn,
        redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"),
    )
    .await?;
    Ok(list
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect())
}

/// Injects one fault and heals it; returns a short description.
async fn inject(
    kind: FaultKind,
    dep: &mut Deployment,
    nodes: &mut [Node],
    sh: &Shared,
    rng: &mut StdRng,
    dir: &Path,
) -> Result<String> {
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    if let (Deployment::Cluster(set), false) = (&mut *dep, kind == FaultKind::DaemonKill) {
        return inject_cluster(kind, set, sh, rng).await;
    }
    match kind {
        FaultKind::KillPubsub => {
            let mut c = admin_conn(dep).await?;
            let n: u64 = cmd(
                &mut c,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
            )
            .await?;
            Ok(format!("{n} killed"))
        }
        FaultKind::KillNormal => {
            let mut c = admin_conn(dep).await?;
            let n: u64 = cmd(
                &mut c,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
            )
            .await?;
            Ok(format!("{n} killed"))
        }
        FaultKind::RedisStop => {
            let ms = rng.random_range(300..1500);
            let redis = dep.primary_mut().await?;
            redis.signal(nix::sys::signal::Signal::SIGSTOP)?;
            sleep(ms).await;
            redis.signal(nix::sys::signal::Signal::SIGCONT)?;
            Ok(format!("{ms} ms"))
        }
        FaultKind::RestartPersistent => {
            let ms = rng.random_range(50..500);
            let redis = dep.primary_mut().await?;
            redis.stop();
            sleep(ms).await;
            redis.restart().await?;
            Ok(format!("down {ms} ms"))
        }
        FaultKind::RestartEmpty => {
            let ms = rng.random_range(50..500);
            let inv = sh.history.now();
            let redis = dep.primary_mut().await?;
            redis.stop();
            sleep(ms).await;
            redis.restart_empty().await?;
            sh.history.write(Write {
                kind: WriteKind::DataLoss,
                target: Target::All,
                version: None,
                inv,
                comp: Some(sh.history.now()),
            });
            Ok(format!("down {ms} ms"))
        }
        FaultKind::FlushAll => {
            // Under Sentinel the flush counts once a replica has it too.
            flush_all(sh, &mut admin_conn(dep).await?).await
        }
        FaultKind::TrimDuringReplay => {
            let mut c = admin_conn(dep).await?;
            let n: u64 = cmd(
                &mut c,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
            )
            .await?;
            let rounds = rng.random_range(2..6);
            for _ in 0..rounds {
                // Changes the reconnecting subscribers must find in the log...
                ext_changes(sh, &mut c, rng, 3).await;
                // ...which is cut to two entries under their replay.
                let _: u64 = cmd(
                    &mut c,
                    redis::cmd("XTRIM")
                        .arg(format!("{PREFIX}log"))
                        .arg("MAXLEN")
                        .arg(2),
                )
                .await?;
                sleep(rng.random_range(0..20)).await;
            }
            Ok(format!("{n} subscribers killed, {rounds} trims"))
        }
        FaultKind::Partition => {
            let proxied: Vec<usize> = (0..nodes.len())
                .filter(|i| nodes[*i].proxy.is_some())
                .collect();
            let i = proxied[rng.random_range(0..proxied.len())];
            let ms = rng.random_range(400..2000);
            let proxy = nodes[i].proxy.as_ref().context("proxied")?;
            proxy.blackhole();
            sleep(ms).await;
            proxy.heal();
            Ok(format!("{} for {ms} ms", nodes[i].name))
        }
        FaultKind::Latency => {
            let delay = rng.random_range(30..250);
            let ms = rng.random_range(500..2000);
            for n in nodes.iter() {
                if let Some(p) = &n.proxy {
                    p.set_delay(Duration::from_millis(delay));
                }
            }
            sleep(ms).await;
            for n in nodes.iter() {
                if let Some(p) = &n.proxy {
                    p.set_delay(Duration::ZERO);
                }
            }
            Ok(format!("+{delay} ms per hop for {ms} ms"))
        }
        FaultKind::DaemonKill => {
            let procs: Vec<usize> = (0..nodes.len())
                .filter(|i| matches!(nodes[*i].runs, Runs::Process { .. }))
                .collect();
            let i = procs[rng.random_range(0..procs.len())];
            let ms = rng.random_range(100..600);
            let name = nodes[i].name.clone();
            if let Runs::Process { proc, toml } = &mut nodes[i].runs {
                if let Some(mut p) = proc.take() {
                    p.signal(nix::sys::signal::Signal::SIGKILL)?;
                    p.wait_exit(Duration::from_secs(5)).await?;
                }
                sleep(ms).await;
                let mut p = DaemonProcess::spawn(dir, &name, toml)?;
                p.drain_stderr_to(&dir.join(format!("{name}.log")))?;
                *proc = Some(p);
            }
            Ok(format!("{name}, down {ms} ms"))
        }
        FaultKind::ForeignPublish => {
            let mut c = admin_conn(dep).await?;
            let ahead = rng.random_range(1..3600u64) * 1000;
            let (secs, micros) = cmd::<(u64, u64), _>(&mut c, &redis::cmd("TIME")).await?;
            let id = format!("{}-0", secs * 1000 + micros / 1000 + ahead);
            let msg = format!(r#"{{"id":"{id}","node":"foreign","keys":["burst-key-0"]}}"#);
            let heard: u64 = cmd(
                &mut c,
                redis::cmd("PUBLISH").arg(format!("{PREFIX}inv")).arg(msg),
            )
            .await?;
            sleep(rng.random_range(5..50)).await;
            let n: u64 = cmd(
                &mut c,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
            )
            .await?;
            Ok(format!("id {id} heard by {heard}, {n} subscribers killed"))
        }
        FaultKind::OutputBuffer => {
            let mut c = admin_conn(dep).await?;
            let before = pubsub_ids(&mut c).await?;
            pubsub_buffer(&mut c, "pubsub 1kb 1kb 0").await?;
            // A burst of large invalidation messages (keys outside the workload).
            let burst = burst_keys(rng);
            let names: Vec<&str> = burst.iter().map(String::as_str).collect();
            for _ in 0..3 {
                let _ = invalidate_names(sh, &mut c, &names).await;
            }
            sleep(50).await;
            let after = pubsub_ids(&mut c).await?;
            pubsub_buffer(&mut c, "pubsub 32mb 8mb 60").await?;
            let killed = before.iter().filter(|id| !after.contains(id)).count();
            Ok(format!("{killed} of {} subscribers dropped", before.len()))
        }
        FaultKind::Failover => {
            let Deployment::Sentinel(set) = dep else {
                bail!("a failover needs Sentinel");
            };
            // The previous failover must be over (the old primary a replica).
            set.wait_stable(Duration::from_secs(60)).await?;
            let before = set.primary_index().await?;
            set.failover(Duration::from_secs(30)).await?;
            Ok(format!("node {before} -> {}", set.primary_index().await?))
        }
        FaultKind::Reshard
        | FaultKind::ShardFailover
        | FaultKind::ClusterFailover
        | FaultKind::ShardRestart
        | FaultKind::ShardRestartEmpty
        | FaultKind::ShardHang => bail!("{} needs a cluster", kind.name()),
        FaultKind::KillPrimary => {
            let Deployment::Sentinel(set) = dep else {
                bail!("a primary kill needs Sentinel");
            };
            set.wait_stable(Duration::from_secs(60)).await?;
            let killed = set.kill_primary(Duration::from_secs(30)).await?;
            let ms = rng.random_range(0..2000);
            sleep(ms).await;
            set.restart_node(killed).await?;
            Ok(format!(
                "node {killed} killed, node {} promoted, restarted empty after {ms} ms",
                set.primary_index().await?
            ))
        }
    }
}

/// `CLIENT KILL TYPE <kind>` on every running node of a cluster; how many.
async fn kill_clients_everywhere(set: &ClusterSet, kind: &str) -> Result<u64> {
    let mut n = 0;
    for node in set.nodes.iter().filter(|n| n.pid().is_some()) {
        let mut c = node.conn().await?;
        n += cmd::<u64, _>(
            &mut c,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind),
        )
        .await?;
    }
    Ok(n)
}

/// A random primary of the cluster, once every shard has its replica back
/// (the previous fault healed).
async fn healthy_primary(set: &ClusterSet, rng: &mut StdRng) -> Result<usize> {
    set.wait_ok(Duration::from_secs(60)).await?;
    let p = set.primaries().await?;
    p.choose(rng).copied().context("no primary")
}

/// The cluster's faults: the standalone ones applied to every node (or to one
/// primary), and the cluster's own (resharding, failovers, shard restart).
async fn inject_cluster(
    kind: FaultKind,
    set: &mut ClusterSet,
    sh: &Shared,
    rng: &mut StdRng,
) -> Result<String> {
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    let target = RedisTarget::Cluster(set.urls());
    let buckets = sh.buckets.context("a cluster run has buckets")?;
    match kind {
        FaultKind::KillPubsub => Ok(format!(
            "{} killed",
            kill_clients_everywhere(set, "pubsub").await?
        )),
        FaultKind::KillNormal => Ok(format!(
            "{} killed",
            kill_clients_everywhere(set, "normal").await?
        )),
        FaultKind::RedisStop => {
            let i = healthy_primary(set, rng).await?;
            // Shorter than the node timeout (2 s): no failover.
            let ms = rng.random_range(300..1500);
            set.nodes[i].signal(nix::sys::signal::Signal::SIGSTOP)?;
            sleep(ms).await;
            set.nodes[i].signal(nix::sys::signal::Signal::SIGCONT)?;
            Ok(format!("node {i}, {ms} ms"))
        }
        FaultKind::FlushAll => {
            // Routed to every primary by the cluster connection.
            flush_all(sh, &mut target.conn().await?).await
        }
        FaultKind::TrimDuringReplay => {
            let n = kill_clients_everywhere(set, "pubsub").await?;
            let mut c = target.conn().await?;
            let rounds = rng.random_range(2..6);
            for _ in 0..rounds {
                ext_changes(sh, &mut c, rng, 3).await;
                // Every bucket's log cut to two entries.
                for b in 0..buckets {
                    let log = shoald::store::KeyNames::bucket(PREFIX, b).log();
                    let _: u64 =
                        cmd(&mut c, redis::cmd("XTRIM").arg(log).arg("MAXLEN").arg(2)).await?;
                }
                sleep(rng.random_range(0..20)).await;
            }
            Ok(format!(
                "{n} subscribers killed, {rounds} trims of {buckets} logs"
            ))
        }
        FaultKind::OutputBuffer => {
            let mut before = 0;
            for node in set.nodes.iter() {
                let mut c = node.conn().await?;
                before += pubsub_ids(&mut c).await?.len();
                pubsub_buffer(&mut c, "pubsub 1kb 1kb 0").await?;
            }
            let burst = burst_keys(rng);
            let names: Vec<&str> = burst.iter().map(String::as_str).collect();
            let mut c = target.conn().await?;
            for _ in 0..3 {
                let _ = invalidate_names(sh, &mut c, &names).await;
            }
            sleep(50).await;
            let mut after = 0;
            for node in set.nodes.iter() {
                let mut c = node.conn().await?;
                after += pubsub_ids(&mut c).await?.len();
                pubsub_buffer(&mut c, "pubsub 32mb 8mb 60").await?;
            }
            Ok(format!(
                "{before} subscribers before the burst, {after} after"
            ))
        }
        FaultKind::ForeignPublish => {
            let mut c = target.conn().await?;
            let b = rng.random_range(0..buckets);
            let kn = shoald::store::KeyNames::bucket(PREFIX, b);
            let ahead = rng.random_range(1..3600u64) * 1000;
            let (secs, micros) = cmd::<(u64, u64), _>(&mut c, &redis::cmd("TIME")).await?;
            let id = format!("{}-0", secs * 1000 + micros / 1000 + ahead);
            let msg = format!(r#"{{"id":"{id}","node":"foreign","keys":["burst-key-0"]}}"#);
            let heard: u64 = cmd(&mut c, redis::cmd("SPUBLISH").arg(kn.channel()).arg(msg)).await?;
            sleep(rng.random_range(5..50)).await;
            let n = kill_clients_everywhere(set, "pubsub").await?;
            Ok(format!(
                "bucket {b}, id {id} heard by {heard}, {n} subscribers killed"
            ))
        }
        FaultKind::Reshard => {
            set.wait_ok(Duration::from_secs(60)).await?;
            // The bucket of a workload key (the hot ones most of the time),
            // or a third of the time the sessions' slot (`PREFIX{s}:`).
            let (what, slot) = if rng.random_bool(1.0 / 3.0) {
                (
                    "sessions".to_string(),
                    crate::cluster::key_slot(format!("{PREFIX}{{s}}:").as_bytes()),
                )
            } else {
                let key = rng.random_range(0..sh.workload_keys().min(10));
                let bucket = crate::cluster::bucket_of(&sh.keys[key], buckets);
                (
                    format!("bucket {bucket}"),
                    crate::cluster::bucket_slot(bucket),
                )
            };
            let from = set.primary_of_slot(slot).await?;
            let others: Vec<usize> = set
                .primaries()
                .await?
                .into_iter()
                .filter(|p| *p != from)
                .collect();
            let to = *others.choose(rng).context("another primary")?;
            let pause = rng.random_range(20..200);
            let moved = set
                .migrate_slot_paced(slot, to, Duration::from_millis(pause))
                .await?;
            Ok(format!(
                "{what} (slot {slot}, {moved} Redis keys) node {from} -> {to}, {pause} ms between batches"
            ))
        }
        FaultKind::ShardFailover => {
            let i = healthy_primary(set, rng).await?;
            let promoted = set.kill_primary(i, Duration::from_secs(30)).await?;
            let ms = rng.random_range(0..2000);
            sleep(ms).await;
            set.restart_node(i).await?;
            Ok(format!(
                "node {i} killed, node {promoted} promoted, node {i} back as a replica after {ms} ms"
            ))
        }
        FaultKind::ClusterFailover => {
            let i = healthy_primary(set, rng).await?;
            let promoted = set.manual_failover(i, Duration::from_secs(30)).await?;
            Ok(format!("node {i} -> node {promoted}"))
        }
        FaultKind::ShardRestart => {
            let i = healthy_primary(set, rng).await?;
            let ms = rng.random_range(50..500);
            let primary = set.restart_primary(i, Duration::from_millis(ms)).await?;
            Ok(format!(
                "node {i}, down {ms} ms, {}",
                if primary {
                    "still the primary"
                } else {
                    "failed over meanwhile"
                }
            ))
        }
        FaultKind::ShardRestartEmpty => {
            let i = healthy_primary(set, rng).await?;
            let port = set.nodes[i].port();
            let view = set.view().await?;
            let shard = view
                .iter()
                .find(|v| v.port == port)
                .context("the primary in CLUSTER NODES")?;
            // Every key (workload and probes) whose bucket lives on the shard.
            let lost: Vec<u32> = (0..sh.keys.len() as u32)
                .filter(|k| {
                    shard.serves(crate::cluster::bucket_slot(crate::cluster::bucket_of(
                        &sh.keys[*k as usize],
                        buckets,
                    )))
                })
                .collect();
            let ms = rng.random_range(50..500);
            let inv = sh.history.now();
            let primary = set
                .restart_primary_empty(i, Duration::from_millis(ms))
                .await?;
            if primary {
                sh.history.write(Write {
                    kind: WriteKind::DataLoss,
                    target: Target::Keys(lost.clone()),
                    version: None,
                    inv,
                    comp: Some(sh.history.now()),
                });
            }
            Ok(format!(
                "node {i}, down {ms} ms, {}: {} keys lost",
                if primary {
                    "still the primary"
                } else {
                    "failed over meanwhile"
                },
                if primary { lost.len() } else { 0 }
            ))
        }
        FaultKind::ShardHang => {
            let i = healthy_primary(set, rng).await?;
            let replica = set.replica_of(i).await?;
            set.nodes[i].signal(nix::sys::signal::Signal::SIGSTOP)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !set.is_primary(replica).await {
                if Instant::now() > deadline {
                    set.nodes[i].signal(nix::sys::signal::Signal::SIGCONT)?;
                    bail!("node {replica} was not promoted while node {i} hung");
                }
                sleep(100).await;
            }
            let ms = rng.random_range(0..2000);
            sleep(ms).await;
            set.nodes[i].signal(nix::sys::signal::Signal::SIGCONT)?;
            Ok(format!(
                "node {i} hung, node {replica} promoted, node {i} resumed {ms} ms later"
            ))
        }
        other => bail!("{} is not a cluster fault", other.name()),
    }
}

/// Convergence: a fresh value of a probe key, written from outside, served from
/// L1 by every daemon; then a second one, which each daemon can serve from L1
/// only after its subscriber evicted the first (so "converged" proves the
/// subscription delivers, not just that L1 fills). Returns the time all had.
async fn converge(
    sh: &Shared,
    target: &RedisTarget,
    probes: &[Client],
    round: usize,
    within: Duration,
) -> Result<Nanos> {
    let deadline = Instant::now() + within;
    let key = (sh.workload_keys() + round % PROBES) as u32;
    let mut slow = Vec::new();
    for _ in 0..2 {
        probe_once(sh, target, probes, key, deadline, &mut slow).await?;
    }
    if !slow.is_empty() {
        tracing::info!(slow = ?slow, "slow convergence");
        if std::env::var_os("SHOAL_CAMPAIGN_VERBOSE").is_some() {
            println!("          slow: {}", slow.join("; "));
        }
    }
    Ok(sh.history.now())
}

async fn probe_once(
    sh: &Shared,
    target: &RedisTarget,
    probes: &[Client],
    key: u32,
    deadline: Instant,
    slow: &mut Vec<String>,
) -> Result<()> {
    let name = sh.keys[key as usize].clone();
    let version = loop {
        if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(2), target.conn()).await {
            if let Some(v) = ext_set(sh, &mut c, key).await {
                break v;
            }
        }
        if Instant::now() > deadline {
            bail!("could not write the probe to {target:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut last = Vec::new();
    for (d, c) in probes.iter().enumerate() {
        let began = Instant::now();
        loop {
            let inv = sh.history.now();
            let r = c.get_full(&name, false).await;
            let comp = sh.history.now();
            match r {
                Ok(r) => {
                    let got = got_of(sh, &r);
                    let from_l1 = r.from == Some(Source::L1);
                    sh.history.read(Read {
                        kind: ReadKind::Probe,
                        key,
                        inv,
                        comp,
                        got,
                        daemon: d as u8,
                        from_l1,
                    });
                    if from_l1 && got.is_some_and(|g| g.version == version) {
                        if began.elapsed() > Duration::from_millis(500) {
                            slow.push(format!(
                                "n{d} {:?} (last before: {:?})",
                                began.elapsed(),
                                last.last()
                            ));
                        }
                        break;
                    }
                    last.push(format!("n{d}: {:?} from {:?}", got, r.from));
                }
                Err(e) => last.push(format!("n{d}: {e}")),
            }
            if Instant::now() > deadline {
                bail!(
                    "n{d} never served {name} version {version} from L1 (last: {:?})",
                    last.last()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}
