//! `run`: every check `shoalctl doctor` makes against Redis, one function each
//! (version, commands, eviction policy, persistence, Pub/Sub output buffers,
//! latency), gathered into one `Report`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ops::redis_watch::{info_u64, parse_info};

use crate::config::{redact_url, Config, Topology};

use super::topology::{check_cluster, check_replicas, check_sentinels};
use super::{
    human_bytes, parse_version, pubsub_limits, Conn, Findings, Report, Severity, MIN_VERSION,
    NEEDED_COMMANDS,
};

/// Pub/Sub hard limit below which a burst of invalidations is likely to
/// disconnect the subscriber (a problem), and below which it is worth a look.
const PUBSUB_HARD_PROBLEM: u64 = 1 << 20;

const PUBSUB_HARD_WARN: u64 = 8 << 20;

const PUBSUB_SOFT_PROBLEM: u64 = 256 << 10;

/// Round trips timed for the latency check.
const PINGS: usize = 20;

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
    let cluster_commands: &[&str] = if topology == Topology::Cluster {
        CLUSTER_COMMANDS
    } else {
        &[]
    };
    check_commands(&mut f, &mut conn, cluster_commands).await;
    check_eviction(&mut f, &info);
    // Where the sessions live (on a cluster, the one slot of `PREFIX{s}:`,
    // whose primary `conn` is).
    let sessions = if topology == Topology::Cluster {
        crate::store::KeyNames::cluster_sessions(&config.redis.prefix)
    } else {
        crate::store::KeyNames::new(&config.redis.prefix)
    };
    check_persistence(&mut f, &mut conn, &info, sessions.prefix(), &mut facts).await;
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

/// Median round trip above which every L2 read pays noticeably.
const LATENCY_WARN: Duration = Duration::from_millis(5);

pub(super) fn check_version(f: &mut Findings, version: Option<&str>) {
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

/// Commands shoald sends on a cluster only: sharded Pub/Sub (Redis 7.0+) and
/// the cluster's own.
const CLUSTER_COMMANDS: &[&str] = &["SPUBLISH", "SSUBSCRIBE", "CLUSTER"];

/// Every command of [`NEEDED_COMMANDS`] and `extra` exists (`COMMAND INFO`).
pub(super) async fn check_commands(f: &mut Findings, conn: &mut Conn, extra: &[&str]) {
    let needed: Vec<&str> = NEEDED_COMMANDS.iter().chain(extra).copied().collect();
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("INFO");
    for c in &needed {
        cmd.arg(c);
    }
    match conn.query::<Vec<redis::Value>>(&cmd).await {
        Ok(infos) if infos.len() == needed.len() => {
            let missing: Vec<&str> = needed
                .iter()
                .zip(&infos)
                .filter(|(_, v)| matches!(v, redis::Value::Nil))
                .map(|(c, _)| *c)
                .collect();
            if missing.is_empty() {
                f.add(
                    "commands",
                    Severity::Ok,
                    format!("all {} commands shoal uses exist", needed.len()),
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

pub(super) fn check_eviction(f: &mut Findings, info: &BTreeMap<String, String>) {
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

pub(super) async fn check_persistence(
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

/// Session keys under `prefix` (`{prefix}s:*`, see `session::keys`; `prefix`
/// is `PREFIX` standalone, `PREFIX{s}:` on a cluster), counted by
/// a bounded SCAN: enough to tell "none" from "some" on any dataset size.
pub(super) async fn count_sessions(conn: &mut Conn, prefix: &str) -> Option<u64> {
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

pub(super) async fn check_pubsub_buffer(f: &mut Findings, conn: &mut Conn) {
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

pub(super) async fn check_latency(f: &mut Findings, conn: &mut Conn, deadline: Duration) {
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
