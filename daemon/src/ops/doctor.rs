//! `shoalctl doctor`: inspects the Redis a configuration points at and says
//! plainly what is unsafe for shoal, before users find out the hard way.
//!
//! Most ways Redis hurts shoal are silent: an `allkeys-*` (or `volatile-*`)
//! eviction policy drops session keys under memory pressure, a Redis without
//! persistence forgets every session on restart, a small Pub/Sub output buffer
//! limit disconnects the invalidation subscriber during bursts (every daemon
//! then replays the log or flushes L1), an old version lacks a command the
//! scripts call and fails only when that script first runs. Each check here
//! reads what Redis itself reports (`INFO`, `CONFIG GET`, `COMMAND INFO`,
//! timed `PING`s) and turns it into a finding with a fix.
//!
//! A check that cannot run (a managed Redis that denies `CONFIG`) is a
//! warning, never a silent pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, Topology};
use crate::ops::redis_watch::{info_u64, parse_info};

/// Oldest Redis with every command shoal's scripts call (`PEXPIRETIME` is 7.0).
pub const MIN_VERSION: (u64, u64, u64) = (7, 0, 0);

/// Commands shoal sends, or calls from its scripts (a unit test below keeps
/// this in step with `lua/`).
#[rustfmt::skip]
pub const NEEDED_COMMANDS: &[&str] = &[
    // The daemon itself.
    "EVAL", "EVALSHA", "SCRIPT", "SUBSCRIBE", "PUBLISH", "XRANGE", "XREVRANGE", "XREAD",
    "SCAN", "INFO", "PING", "CLIENT", "DEL", "HGET", "HGETALL", "SUNION", "ZRANGE", "ZREM",
    // Its scripts.
    "EXISTS", "GET", "SET", "HDEL", "HEXISTS", "HINCRBY", "HMGET", "HSET", "INCR", "PEXPIRE",
    "PEXPIREAT", "PEXPIRETIME", "PTTL", "SADD", "TIME", "XADD", "ZADD", "ZCARD", "ZCOUNT",
    "ZRANGEBYSCORE", "ZREMRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZSCORE", "XINFO",
];

/// Pub/Sub hard limit below which a burst of invalidations is likely to
/// disconnect the subscriber (a problem), and below which it is worth a look.
const PUBSUB_HARD_PROBLEM: u64 = 1 << 20;
const PUBSUB_HARD_WARN: u64 = 8 << 20;
const PUBSUB_SOFT_PROBLEM: u64 = 256 << 10;

/// Round trips timed for the latency check.
const PINGS: usize = 20;
/// Median round trip above which every L2 read pays noticeably.
const LATENCY_WARN: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Problem,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "PROBLEM",
        }
    }
}

/// One verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier for scripts: `connect`, `version`, `commands`,
    /// `eviction_policy`, `maxmemory`, `evictions`, `persistence`,
    /// `pubsub_buffer`, `latency`, `cluster`, `role`, `sentinel`, `replicas`.
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to do about it (absent when nothing needs doing).
    pub fix: Option<String>,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `redis.url` with any password replaced by `***`; under Sentinel, the
    /// primary the sentinels named (or `sentinel:NAME` when none was found).
    pub redis_url: String,
    /// `standalone`, `sentinel` or `cluster`.
    pub topology: &'static str,
    pub redis_version: Option<String>,
    pub ok: bool,
    pub problems: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
    /// Figures read from Redis, for scripts (`maxmemory_policy`, `used_memory`, ...).
    pub facts: BTreeMap<String, String>,
}

impl Report {
    /// Human output: one line per finding, fixes indented, a verdict last.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "shoal doctor: {}{}",
            self.redis_url,
            self.redis_version
                .as_deref()
                .map(|v| format!(" (Redis {v})"))
                .unwrap_or_default()
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {:8} {:16} {}",
                f.severity.label(),
                f.check,
                f.message
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "  {:8} {:16} fix: {fix}", "", "");
            }
        }
        let verdict = if self.problems > 0 {
            "shoal is NOT safe on this Redis"
        } else if self.warnings > 0 {
            "no problems; read the warnings"
        } else {
            "all good"
        };
        let _ = writeln!(
            out,
            "{} problem(s), {} warning(s): {verdict}",
            self.problems, self.warnings
        );
        out
    }
}

/// Collects findings in order.
#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, check: &'static str, severity: Severity, message: String, fix: Option<&str>) {
        self.0.push(Finding {
            check,
            severity,
            message,
            fix: fix.map(str::to_string),
        });
    }
}

pub use crate::config::redact_url;

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// `client-output-buffer-limit` → (hard, soft, soft seconds) of the pubsub class.
pub fn pubsub_limits(value: &str) -> Option<(u64, u64, u64)> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("pubsub"))?;
    let n = |j: usize| words.get(i + j).and_then(|w| parse_size(w));
    Some((n(1)?, n(2)?, words.get(i + 3)?.parse().ok()?))
}

/// Redis sizes: bytes, or with k/kb/m/mb/g/gb (1000s for k/m/g, 1024s for kb/mb/gb).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// "512 B", "64.0 KiB", "32.0 MiB".
fn human_bytes(bytes: u64) -> String {
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / f64::from(1u32 << 10))
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// A connection and a per-command deadline.
struct Conn {
    conn: redis::aio::MultiplexedConnection,
    timeout: Duration,
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut self.conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// `CONFIG GET name` as a string; `Err` when denied or absent.
    async fn config_get(&mut self, name: &str) -> Result<String, String> {
        let v: Vec<String> = self
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .await?;
        v.get(1)
            .cloned()
            .ok_or_else(|| format!("CONFIG GET {name} returned nothing"))
    }
}

/// Runs every check against the Redis of `config`.
pub async fn run(config: &Config) -> Report {
    let mut f = Findings::default();
    let mut facts = BTreeMap::new();
    // Generous deadline: doctor is interactive, and a slow answer is itself
    // reported by the latency check rather than turned into a failure here.
    let timeout = config.redis.timeout.max(Duration::from_secs(2));
    let topology = config.redis.topology();
    let (url, client) = match topology {
        Topology::Cluster => match check_cluster(&mut f, &mut facts, config, timeout).await {
            Some((url, client)) => (url, Ok(client)),
            None => return finish("cluster".into(), topology, None, f, facts),
        },
        Topology::Sentinel => match check_sentinels(&mut f, &mut facts, config, timeout).await {
            Some((url, client)) => (url, Ok(client)),
            None => {
                let name = config
                    .redis
                    .sentinel
                    .as_ref()
                    .map_or("", |s| s.master.as_str());
                return finish(format!("sentinel:{name}"), topology, None, f, facts);
            }
        },
        _ => (
            redact_url(&config.redis.url),
            redis::Client::open(config.redis.url.as_str())
                .map_err(|e| format!("bad redis.url: {e}")),
        ),
    };
    let conn = match client {
        Ok(client) => {
            match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            }
        }
        Err(e) => Err(e),
    };
    let mut conn = match conn {
        Ok(c) => Conn { conn: c, timeout },
        Err(e) => {
            f.add(
                "connect",
                Severity::Problem,
                format!("cannot connect to Redis at {url}: {e}"),
                Some("check redis.url (host, port, user, password, TLS) and that Redis is up"),
            );
            return finish(url, topology, None, f, facts);
        }
    };
    f.add("connect", Severity::Ok, format!("connected to {url}"), None);

    let info = match conn.query::<String>(&redis::cmd("INFO")).await {
        Ok(text) => parse_info(&text),
        Err(e) => {
            f.add(
                "connect",
                Severity::Problem,
                format!("INFO failed: {e}"),
                Some("grant the shoal user +info (and +config|get, +command|info) in its ACL"),
            );
            return finish(url, topology, None, f, facts);
        }
    };
    for k in [
        "redis_version",
        "redis_mode",
        "maxmemory_policy",
        "used_memory",
        "maxmemory",
        "evicted_keys",
        "aof_enabled",
        "role",
    ] {
        if let Some(v) = info.get(k) {
            facts.insert(k.to_string(), v.clone());
        }
    }
    let version = info.get("redis_version").cloned();

    check_version(&mut f, version.as_deref());
    check_commands(&mut f, &mut conn).await;
    check_eviction(&mut f, &info);
    check_persistence(&mut f, &mut conn, &info, &config.redis.prefix, &mut facts).await;
    check_pubsub_buffer(&mut f, &mut conn).await;
    check_latency(&mut f, &mut conn, config.redis.timeout).await;
    if topology != Topology::Cluster
        && (info.get("cluster_enabled").map(String::as_str) == Some("1")
            || info.get("redis_mode").map(String::as_str) == Some("cluster"))
    {
        f.add(
            "cluster",
            Severity::Problem,
            "Redis runs in cluster mode; this version of shoal needs a standalone (or Sentinel) Redis"
                .into(),
            Some("point redis.url at a standalone primary, or configure [redis.sentinel]"),
        );
    }
    if info.get("role").is_some_and(|r| r != "master") {
        f.add(
            "role",
            Severity::Problem,
            format!(
                "this Redis is a {}: shoal writes (every set, invalidation and session change) fail on it",
                info.get("role").map_or("", String::as_str)
            ),
            Some(match topology {
                Topology::Sentinel => "the sentinels named a replica: check `SENTINEL MASTER` and the failover state",
                _ => "point redis.url at the primary, or configure [redis.sentinel] to follow it across failovers",
            }),
        );
    }
    if topology == Topology::Sentinel {
        check_replicas(&mut f, &info, config);
    }
    finish(url, topology, version, f, facts)
}

fn finish(
    redis_url: String,
    topology: Topology,
    redis_version: Option<String>,
    f: Findings,
    facts: BTreeMap<String, String>,
) -> Report {
    let problems =
        f.0.iter()
            .filter(|x| x.severity == Severity::Problem)
            .count();
    let warnings =
        f.0.iter()
            .filter(|x| x.severity == Severity::Warning)
            .count();
    Report {
        redis_url,
        topology: topology.as_str(),
        redis_version,
        ok: problems == 0,
        problems,
        warnings,
        findings: f.0,
        facts,
    }
}

/// Asks every sentinel about the primary: reachable, agreeing, knowing each
/// other and a replica. Returns the primary's address and a client for it.
async fn check_sentinels(
    f: &mut Findings,
    facts: &mut BTreeMap<String, String>,
    config: &Config,
    timeout: Duration,
) -> Option<(String, redis::Client)> {
    let s = config.redis.sentinel.as_ref()?;
    let mut answered = 0usize;
    let mut primaries = std::collections::BTreeSet::new();
    for u in &s.urls {
        let shown = redact_url(u);
        let ask = async {
            let mut info = redis::IntoConnectionInfo::into_connection_info(u.as_str())
                .map_err(|e| e.to_string())?;
            let mut settings = info.redis_settings().clone();
            if !s.sentinel_username.is_empty() {
                settings = settings.set_username(&s.sentinel_username);
            }
            if !s.sentinel_password.is_empty() {
                settings = settings.set_password(s.sentinel_password.expose());
            }
            info = info.set_redis_settings(settings);
            let client = redis::Client::open(info).map_err(|e| e.to_string())?;
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let m: BTreeMap<String, String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&s.master)
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(m)
        };
        let m = match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                f.add(
                    "sentinel",
                    Severity::Warning,
                    format!("sentinel {shown} does not answer about {:?}: {e}", s.master),
                    Some("check redis.sentinel.urls, the sentinel credentials and `sentinel monitor` on that sentinel"),
                );
                continue;
            }
            Err(_) => {
                f.add(
                    "sentinel",
                    Severity::Warning,
                    format!("sentinel {shown} did not answer within {timeout:?}"),
                    None,
                );
                continue;
            }
        };
        answered += 1;
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        primaries.insert(format!("{}:{}", get("ip"), get("port")));
        let flags = get("flags");
        if flags != "master" {
            f.add(
                "sentinel",
                Severity::Warning,
                format!("sentinel {shown} flags the primary {flags:?}"),
                Some("a failover may be under way; run doctor again in a minute"),
            );
        }
        facts.insert(format!("sentinel {shown} replicas"), get("num-slaves"));
        facts.insert(
            format!("sentinel {shown} other sentinels"),
            get("num-other-sentinels"),
        );
        facts.insert(format!("sentinel {shown} quorum"), get("quorum"));
    }
    facts.insert(
        "sentinels answering".into(),
        format!("{answered} of {}", s.urls.len()),
    );
    if answered == 0 {
        f.add(
            "sentinel",
            Severity::Problem,
            format!(
                "no sentinel of redis.sentinel.urls answers about {:?}",
                s.master
            ),
            Some("check the sentinel addresses and credentials, and that they monitor this name"),
        );
        return None;
    }
    if primaries.len() > 1 {
        f.add(
            "sentinel",
            Severity::Warning,
            format!("the sentinels disagree on the primary: {primaries:?}"),
            Some("a failover may be under way; run doctor again in a minute"),
        );
    }
    if s.urls.len() < 3 {
        f.add(
            "sentinel",
            Severity::Warning,
            format!(
                "{} sentinel address(es) configured: with fewer than three, losing one can stop failovers \
                 and shoald has no other sentinel to hear +switch-master from",
                s.urls.len()
            ),
            Some("run at least three sentinels and list them all in redis.sentinel.urls"),
        );
    }
    let endpoint = match crate::store::endpoint::Endpoint::new(config) {
        Ok(e) => e,
        Err(e) => {
            f.add("sentinel", Severity::Problem, e.to_string(), None);
            return None;
        }
    };
    match endpoint.client().await {
        Ok(client) => {
            let address = endpoint.address();
            f.add(
                "sentinel",
                Severity::Ok,
                format!(
                    "{answered} of {} sentinels answer; they name {address} as the primary of {:?}",
                    s.urls.len(),
                    s.master
                ),
                None,
            );
            Some((address, client))
        }
        Err(e) => {
            f.add(
                "sentinel",
                Severity::Problem,
                e.to_string(),
                Some("check that the primary is up and reachable from here, and the data-node credentials (redis.sentinel.username/password)"),
            );
            None
        }
    }
}

/// `[redis.cluster]`: the first seed that answers describes the cluster
/// (state, slots, primaries with and without replicas). shoald does not run on
/// a cluster yet: that is reported as a problem. Returns the seed, on which the
/// other checks run.
async fn check_cluster(
    f: &mut Findings,
    facts: &mut BTreeMap<String, String>,
    config: &Config,
    timeout: Duration,
) -> Option<(String, redis::Client)> {
    let c = config.redis.cluster.as_ref()?;
    let mut reached = None;
    for u in &c.urls {
        let ask = async {
            let client = redis::Client::open(u.as_str()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, info, nodes))
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(r)) => {
                reached = Some((redact_url(u), r));
                break;
            }
            Ok(Err(e)) => f.add(
                "cluster",
                Severity::Warning,
                format!("seed {} does not answer CLUSTER INFO: {e}", redact_url(u)),
                None,
            ),
            Err(_) => f.add(
                "cluster",
                Severity::Warning,
                format!("seed {} did not answer within {timeout:?}", redact_url(u)),
                None,
            ),
        }
    }
    let Some((url, (client, info, nodes))) = reached else {
        f.add(
            "cluster",
            Severity::Problem,
            "no seed of redis.cluster.urls answers as a cluster node".into(),
            Some("check the seed addresses, credentials, and that the nodes run with cluster-enabled yes"),
        );
        return None;
    };
    let info = parse_info(&info);
    for k in [
        "cluster_state",
        "cluster_slots_assigned",
        "cluster_slots_fail",
        "cluster_known_nodes",
        "cluster_size",
    ] {
        if let Some(v) = info.get(k) {
            facts.insert(k.to_string(), v.clone());
        }
    }
    // CLUSTER NODES: `id addr flags master-id ... slots`; a replica names its primary.
    let mut primaries: BTreeMap<String, usize> = BTreeMap::new();
    let mut replicas_of: Vec<String> = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(flags), Some(master)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        if flags.contains("fail") {
            continue;
        }
        if flags.contains("master") && fields.len() > 8 {
            primaries.entry((*id).to_string()).or_default();
        } else if flags.contains("slave") {
            replicas_of.push((*master).to_string());
        }
    }
    for m in replicas_of {
        if let Some(n) = primaries.get_mut(&m) {
            *n += 1;
        }
    }
    let bare = primaries.values().filter(|n| **n == 0).count();
    let state = info.get("cluster_state").cloned().unwrap_or_default();
    if state == "ok" {
        f.add(
            "cluster",
            Severity::Ok,
            format!(
                "cluster ok: {} primaries serving {} slots, {} node(s) known",
                primaries.len(),
                info.get("cluster_slots_assigned")
                    .map_or("?", String::as_str),
                info.get("cluster_known_nodes").map_or("?", String::as_str)
            ),
            None,
        );
    } else {
        f.add(
            "cluster",
            Severity::Problem,
            format!("cluster_state is {state:?}: some slots are not served"),
            Some("check CLUSTER NODES for failed nodes and unassigned slots"),
        );
    }
    if bare > 0 {
        f.add(
            "replicas",
            Severity::Warning,
            format!("{bare} primar(y/ies) without a replica: losing one loses its slots' data"),
            Some("give every primary a replica (redis-cli --cluster add-node --cluster-slave)"),
        );
    }
    f.add(
        "cluster",
        Severity::Problem,
        "shoald does not run on Redis Cluster yet (issue #16); the checks below ran on one seed"
            .into(),
        Some("use a standalone Redis (redis.url) or Sentinel ([redis.sentinel]) for now"),
    );
    Some((url, client))
}

/// Under Sentinel: enough replicas to confirm changes (`wait_replicas`).
fn check_replicas(f: &mut Findings, info: &BTreeMap<String, String>, config: &Config) {
    let wait = config
        .redis
        .sentinel
        .as_ref()
        .map_or(0, |s| s.wait_replicas);
    let connected = info_u64(info, "connected_slaves").unwrap_or(0);
    if wait == 0 {
        f.add(
            "replicas",
            Severity::Warning,
            format!(
                "redis.sentinel.wait_replicas = 0: changes are acknowledged on the primary's word; \
                 a failover may lose acknowledged invalidations and revocations ({connected} replica(s) connected)"
            ),
            Some("set redis.sentinel.wait_replicas = 1 (or the number of replicas)"),
        );
    } else if connected < u64::from(wait) {
        f.add(
            "replicas",
            Severity::Problem,
            format!(
                "the primary has {connected} connected replica(s) and redis.sentinel.wait_replicas = {wait}: \
                 every cache change, session change and lock is refused until enough replicas are connected"
            ),
            Some("start the replicas, or lower redis.sentinel.wait_replicas"),
        );
    } else {
        f.add(
            "replicas",
            Severity::Ok,
            format!("{connected} replica(s) connected; each change waits for {wait} to confirm it"),
            None,
        );
    }
}

fn check_version(f: &mut Findings, version: Option<&str>) {
    let (maj, min, pat) = MIN_VERSION;
    match version.and_then(parse_version) {
        Some(v) if v >= MIN_VERSION => f.add(
            "version",
            Severity::Ok,
            format!("Redis {} (shoal needs {maj}.{min}.{pat} or later)", version.unwrap_or("?")),
            None,
        ),
        Some(_) => f.add(
            "version",
            Severity::Problem,
            format!(
                "Redis {} is older than {maj}.{min}.{pat}: scripts call commands it lacks (PEXPIRETIME)",
                version.unwrap_or("?")
            ),
            Some("upgrade Redis to 7.0 or later"),
        ),
        None => f.add(
            "version",
            Severity::Warning,
            "cannot tell the Redis version from INFO".into(),
            None,
        ),
    }
}

async fn check_commands(f: &mut Findings, conn: &mut Conn) {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("INFO");
    for c in NEEDED_COMMANDS.iter() {
        cmd.arg(c);
    }
    match conn.query::<Vec<redis::Value>>(&cmd).await {
        Ok(infos) if infos.len() == NEEDED_COMMANDS.len() => {
            let missing: Vec<&str> = NEEDED_COMMANDS
                .iter()
                .zip(&infos)
                .filter(|(_, v)| matches!(v, redis::Value::Nil))
                .map(|(c, _)| *c)
                .collect();
            if missing.is_empty() {
                f.add(
                    "commands",
                    Severity::Ok,
                    format!("all {} commands shoal uses exist", NEEDED_COMMANDS.len()),
                    None,
                );
            } else {
                f.add(
                    "commands",
                    Severity::Problem,
                    format!(
                        "commands shoal uses are missing or renamed: {}",
                        missing.join(", ")
                    ),
                    Some("upgrade Redis, or undo rename-command for these"),
                );
            }
        }
        Ok(_) => f.add(
            "commands",
            Severity::Warning,
            "COMMAND INFO answered an unexpected shape; commands not verified".into(),
            None,
        ),
        Err(e) => f.add(
            "commands",
            Severity::Warning,
            format!("cannot list commands (COMMAND INFO: {e}); commands not verified"),
            None,
        ),
    }
}

fn check_eviction(f: &mut Findings, info: &BTreeMap<String, String>) {
    let policy = info
        .get("maxmemory_policy")
        .map(String::as_str)
        .unwrap_or("");
    let max = info_u64(info, "maxmemory").unwrap_or(0);
    let used = info_u64(info, "used_memory").unwrap_or(0);
    let when = if max == 0 {
        " once a maxmemory is set".to_string()
    } else {
        format!(" when memory reaches maxmemory ({})", human_bytes(max))
    };
    if policy.starts_with("allkeys-") {
        f.add(
            "eviction_policy",
            Severity::Problem,
            format!(
                "maxmemory-policy is {policy}: Redis evicts any key{when}, including sessions \
                 (users are logged out silently) and rate-limit state (limits reset)"
            ),
            Some("CONFIG SET maxmemory-policy noeviction (and persist it in redis.conf), or give sessions their own Redis"),
        );
    } else if policy.starts_with("volatile-") {
        f.add(
            "eviction_policy",
            Severity::Problem,
            format!(
                "maxmemory-policy is {policy}: Redis evicts keys with a TTL{when}, and every \
                 session key has one (users are logged out silently)"
            ),
            Some("CONFIG SET maxmemory-policy noeviction (and persist it in redis.conf), or give sessions their own Redis"),
        );
    } else if policy.is_empty() {
        f.add(
            "eviction_policy",
            Severity::Warning,
            "INFO does not report maxmemory_policy".into(),
            None,
        );
    } else {
        f.add(
            "eviction_policy",
            Severity::Ok,
            format!("maxmemory-policy is {policy}: Redis never drops keys to make room"),
            None,
        );
    }
    if max == 0 {
        f.add(
            "maxmemory",
            Severity::Warning,
            format!(
                "no maxmemory: Redis ({} used) grows until the host runs out of memory",
                human_bytes(used)
            ),
            Some("set maxmemory below the memory Redis may use, with maxmemory-policy noeviction"),
        );
    } else if used as f64 >= max as f64 * 0.9 {
        f.add(
            "maxmemory",
            Severity::Warning,
            format!(
                "Redis uses {} of its {} maxmemory (90% or more)",
                human_bytes(used),
                human_bytes(max)
            ),
            Some("raise maxmemory, or lower cache TTLs / cache.invalidation_log_len"),
        );
    } else {
        f.add(
            "maxmemory",
            Severity::Ok,
            format!(
                "Redis uses {} of {} maxmemory",
                human_bytes(used),
                human_bytes(max)
            ),
            None,
        );
    }
    match info_u64(info, "evicted_keys") {
        Some(n) if n > 0 => f.add(
            "evictions",
            Severity::Warning,
            format!(
                "Redis has evicted {n} keys since it started; sessions may have been among them"
            ),
            Some("find out why (INFO memory) before users do"),
        ),
        _ => {}
    }
}

async fn check_persistence(
    f: &mut Findings,
    conn: &mut Conn,
    info: &BTreeMap<String, String>,
    prefix: &str,
    facts: &mut BTreeMap<String, String>,
) {
    let aof = match conn.config_get("appendonly").await {
        Ok(v) => Some(v.eq_ignore_ascii_case("yes")),
        Err(_) => info.get("aof_enabled").map(|v| v == "1"),
    };
    let save = conn.config_get("save").await.ok();
    let rdb = save.as_ref().map(|s| !s.trim().is_empty());
    if let Some(s) = &save {
        facts.insert("save".into(), s.clone());
    }
    let sessions = count_sessions(conn, prefix).await;
    if let Some(n) = sessions {
        facts.insert("sessions_seen".into(), n.to_string());
    }
    let has_sessions = sessions.is_some_and(|n| n > 0);
    match (aof, rdb) {
        (Some(true), _) | (_, Some(true)) => f.add(
            "persistence",
            Severity::Ok,
            format!(
                "persistence on ({}): sessions survive a Redis restart",
                match (aof, rdb) {
                    (Some(true), Some(true)) => "AOF and RDB",
                    (Some(true), _) => "AOF",
                    _ => "RDB snapshots",
                }
            ),
            None,
        ),
        (Some(false), Some(false)) => f.add(
            "persistence",
            if has_sessions {
                Severity::Problem
            } else {
                Severity::Warning
            },
            format!(
                "no persistence (appendonly no, save \"\"): a Redis restart logs every user out{}",
                if has_sessions {
                    " and sessions are stored here now"
                } else {
                    " once sessions are stored here"
                }
            ),
            Some("CONFIG SET appendonly yes (and persist it in redis.conf), or run a replica"),
        ),
        _ => f.add(
            "persistence",
            Severity::Warning,
            "cannot read the persistence settings (CONFIG GET denied?)".into(),
            Some("check appendonly / save on the server side"),
        ),
    }
}

/// Session keys under `prefix` (`{prefix}s:*`, see `session::keys`), counted by
/// a bounded SCAN: enough to tell "none" from "some" on any dataset size.
async fn count_sessions(conn: &mut Conn, prefix: &str) -> Option<u64> {
    let pattern = format!("{prefix}s:*");
    let mut cursor: u64 = 0;
    let mut found = 0u64;
    for _ in 0..20 {
        let (next, keys): (u64, Vec<String>) = conn
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
            )
            .await
            .ok()?;
        found += keys.len() as u64;
        cursor = next;
        if cursor == 0 || found > 0 {
            break;
        }
    }
    Some(found)
}

async fn check_pubsub_buffer(f: &mut Findings, conn: &mut Conn) {
    let value = match conn.config_get("client-output-buffer-limit").await {
        Ok(v) => v,
        Err(e) => {
            f.add(
                "pubsub_buffer",
                Severity::Warning,
                format!("cannot read client-output-buffer-limit ({e})"),
                None,
            );
            return;
        }
    };
    let Some((hard, soft, secs)) = pubsub_limits(&value) else {
        f.add(
            "pubsub_buffer",
            Severity::Warning,
            format!("cannot parse client-output-buffer-limit {value:?}"),
            None,
        );
        return;
    };
    let consequence = "Redis disconnects the invalidation subscriber, and every daemon then \
                       replays the invalidation log or flushes its L1";
    let fix = "CONFIG SET client-output-buffer-limit \"pubsub 32mb 8mb 60\" (the Redis default) or higher";
    if (hard != 0 && hard < PUBSUB_HARD_PROBLEM) || (soft != 0 && soft < PUBSUB_SOFT_PROBLEM) {
        f.add(
            "pubsub_buffer",
            Severity::Problem,
            format!(
                "pubsub output buffer limit is hard {}, soft {} for {secs} s: a burst of \
                 invalidations exceeds it and {consequence}",
                human_bytes(hard),
                human_bytes(soft)
            ),
            Some(fix),
        );
    } else if hard != 0 && hard < PUBSUB_HARD_WARN {
        f.add(
            "pubsub_buffer",
            Severity::Warning,
            format!("pubsub output buffer hard limit is {}: large bursts may exceed it and {consequence}", human_bytes(hard)),
            Some(fix),
        );
    } else {
        f.add(
            "pubsub_buffer",
            Severity::Ok,
            format!(
                "pubsub output buffer limit: hard {}, soft {} for {secs} s",
                if hard == 0 {
                    "none".to_string()
                } else {
                    human_bytes(hard)
                },
                if soft == 0 {
                    "none".to_string()
                } else {
                    human_bytes(soft)
                },
            ),
            None,
        );
    }
}

async fn check_latency(f: &mut Findings, conn: &mut Conn, deadline: Duration) {
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        if let Err(e) = conn.query::<String>(&redis::cmd("PING")).await {
            f.add(
                "latency",
                Severity::Problem,
                format!("PING failed: {e}"),
                None,
            );
            return;
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    let max = rtts[rtts.len() - 1];
    let text = format!("PING round trip: median {median:.2?}, max {max:.2?} over {PINGS}");
    if max > deadline / 2 {
        f.add(
            "latency",
            Severity::Problem,
            format!("{text}: near redis.timeout ({deadline:?}), requests will time out"),
            Some("run shoald next to Redis (same zone), or raise redis.timeout"),
        );
    } else if median > LATENCY_WARN {
        f.add(
            "latency",
            Severity::Warning,
            format!("{text}: every L2 read and rate-limit decision pays this"),
            Some("run shoald closer to Redis"),
        );
    } else {
        f.add("latency", Severity::Ok, text, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a script calls is one doctor checks for.
    #[test]
    fn needed_commands_cover_the_scripts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let calls = text.split("redis.call(").skip(1);
            for part in calls.chain(text.split("redis.pcall(").skip(1)) {
                let name: String = part
                    .trim_start_matches(['\'', '"'])
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                if name.is_empty() {
                    continue; // a computed command name
                }
                let upper = name.to_ascii_uppercase();
                assert!(
                    NEEDED_COMMANDS.contains(&upper.as_str()),
                    "{} calls {upper}, which doctor does not check",
                    path.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 10, "no scripts found in {dir:?}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn pubsub_limits_parse() {
        assert_eq!(
            pubsub_limits("normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
            Some((33_554_432, 8_388_608, 60))
        );
        assert_eq!(
            pubsub_limits("pubsub 64kb 16kb 10"),
            Some((65_536, 16_384, 10))
        );
        assert_eq!(pubsub_limits("normal 0 0 0"), None);
    }

    #[test]
    fn versions_compare() {
        assert!(parse_version("7.2.4") >= Some(MIN_VERSION));
        assert!(parse_version("6.2.14") < Some(MIN_VERSION));
        assert_eq!(parse_version("7"), Some((7, 0, 0)));
        assert_eq!(parse_version("x"), None);
    }
}
