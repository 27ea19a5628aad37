//! Doctor's view of the deployment around the data node: under Sentinel, what
//! every sentinel says about the primary and whether it has the replicas
//! `wait_replicas` needs; under Cluster, the cluster's state, slots,
//! primaries without a replica and primaries too old for sharded Pub/Sub. The
//! node-level checks (`checks.rs`) then run on the primary (under Cluster, on
//! one primary).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{redact_url, Config};
use crate::ops::redis_watch::{info_u64, parse_info};

use super::{Findings, Severity};

/// Asks every sentinel about the primary: reachable, agreeing, knowing each
/// other and a replica. Returns the primary's address and a client for it.
pub(super) async fn check_sentinels(
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

/// A node of `CLUSTER NODES`: `id addr flags primary-id ... slots`.
struct ClusterNode {
    id: String,
    host: String,
    port: u16,
    primary: bool,
    failed: bool,
    primary_id: String,
    /// Slot ranges served (inclusive).
    ranges: Vec<(u16, u16)>,
    slots: u64,
}

impl ClusterNode {
    fn serves(&self, slot: u16) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            // `host:port@cport[,hostname]`
            let addr = f.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let flags = *f.get(2)?;
            let ranges: Vec<(u16, u16)> = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .filter(|(a, b)| b >= a)
                .collect();
            let slots = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
            Some(ClusterNode {
                id: f.first()?.to_string(),
                host: host.trim_matches(['[', ']']).to_string(),
                port: port.parse().ok()?,
                primary: flags.contains("master"),
                failed: flags.contains("fail") || f.get(7) == Some(&"disconnected"),
                primary_id: f.get(3)?.to_string(),
                ranges,
                slots,
            })
        })
        .collect()
}

/// The connection settings of `seed` (credentials, TLS) pointed at another
/// node of the cluster.
fn node_info(seed: &redis::ConnectionInfo, host: &str, port: u16) -> redis::ConnectionInfo {
    let addr = match seed.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
    };
    seed.clone().set_addr(addr)
}

/// `[redis.cluster]`: the first seed that answers describes the cluster
/// (state, slots, primaries with and without replicas), then every primary is
/// asked its version: shoald publishes invalidations with sharded Pub/Sub
/// (`SPUBLISH`/`SSUBSCRIBE`, Redis 7.0+) on every shard. Returns a primary,
/// on which the node-level checks run.
pub(super) async fn check_cluster(
    f: &mut Findings,
    facts: &mut BTreeMap<String, String>,
    config: &Config,
    timeout: Duration,
) -> Option<(String, redis::Client)> {
    let c = config.redis.cluster.as_ref()?;
    let mut reached = None;
    for u in &c.urls {
        let ask = async {
            let mut info = redis::IntoConnectionInfo::into_connection_info(u.as_str())
                .map_err(|e| e.to_string())?;
            let mut settings = info.redis_settings().clone();
            if !c.username.is_empty() {
                settings = settings.set_username(&c.username);
            }
            if !c.password.is_empty() {
                settings = settings.set_password(c.password.expose());
            }
            info = info.set_redis_settings(settings);
            let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let cluster_info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((info, cluster_info, nodes))
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(r)) => {
                reached = Some(r);
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
    let Some((seed, info, nodes)) = reached else {
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
    let nodes = parse_cluster_nodes(&nodes);
    let primaries: Vec<&ClusterNode> = nodes
        .iter()
        .filter(|n| n.primary && !n.failed && n.slots > 0)
        .collect();
    let bare = primaries
        .iter()
        .filter(|p| {
            !nodes
                .iter()
                .any(|n| !n.primary && !n.failed && n.primary_id == p.id)
        })
        .count();
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
    let wait = c.wait_replicas;
    facts.insert("wait_replicas".into(), wait.to_string());
    if bare > 0 && wait > 0 {
        f.add(
            "replicas",
            Severity::Problem,
            format!(
                "{bare} primar(y/ies) without a replica and redis.cluster.wait_replicas = {wait}: \
                 every change to the buckets, sessions and rate limits on them is refused \
                 until a replica confirms it"
            ),
            Some("give every primary a replica (redis-cli --cluster add-node --cluster-slave), or lower redis.cluster.wait_replicas"),
        );
    } else if bare > 0 {
        f.add(
            "replicas",
            Severity::Warning,
            format!("{bare} primar(y/ies) without a replica: losing one loses its slots' data"),
            Some("give every primary a replica (redis-cli --cluster add-node --cluster-slave)"),
        );
    } else if wait == 0 {
        f.add(
            "replicas",
            Severity::Warning,
            "redis.cluster.wait_replicas = 0: changes are acknowledged on a primary's word; \
             a shard's failover may lose acknowledged invalidations and revocations"
                .into(),
            Some("set redis.cluster.wait_replicas = 1"),
        );
    }
    // Where the cache's buckets live: bucket N is the slot of `{bN}`.
    let prefix = &config.redis.prefix;
    let mut per_primary: BTreeMap<String, u32> = primaries
        .iter()
        .map(|p| (format!("{}:{}", p.host, p.port), 0))
        .collect();
    for b in 0..c.buckets {
        // `bucket_of(name, 16384)` is the name's slot.
        let slot = crate::store::KeyNames::bucket_of(
            &crate::store::KeyNames::bucket(prefix, b).log(),
            16384,
        );
        if let Some(p) = primaries.iter().find(|p| p.serves(slot)) {
            *per_primary
                .entry(format!("{}:{}", p.host, p.port))
                .or_default() += 1;
        }
    }
    facts.insert("buckets".into(), c.buckets.to_string());
    facts.insert(
        "buckets per primary".into(),
        per_primary
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let idle: Vec<&String> = per_primary
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(a, _)| a)
        .collect();
    if !idle.is_empty() && state == "ok" {
        f.add(
            "cluster",
            Severity::Warning,
            format!(
                "no cache bucket lives on {}: of redis.cluster.buckets = {}, none hashes to \
                 their slots, so the cache does not use them",
                idle.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
                c.buckets
            ),
            Some("raise redis.cluster.buckets (the same on every daemon and outside writer), or reshard"),
        );
    }
    // Every primary runs Redis 7+ (sharded Pub/Sub). The node-level checks
    // (eviction, persistence with the sessions it keeps) run on the primary
    // holding the sessions' slot, `PREFIX{s}:`, or else the first that answers.
    let sessions = crate::store::KeyNames::cluster_sessions(prefix);
    let sessions_slot = crate::store::KeyNames::bucket_of(sessions.prefix(), 16384);
    let mut ordered = primaries.clone();
    ordered.sort_by_key(|p| !p.serves(sessions_slot));
    if let Some(p) = ordered.first().filter(|p| p.serves(sessions_slot)) {
        facts.insert("sessions on".into(), format!("{}:{}", p.host, p.port));
    }
    let mut chosen = None;
    let mut old = Vec::new();
    let mut versions = Vec::new();
    for p in &ordered {
        let node = node_info(&seed, &p.host, p.port);
        let address = format!("{}:{}", p.host, p.port);
        let ask = async {
            let client = redis::Client::open(node).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let text: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, parse_info(&text)))
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok((client, server))) => {
                let version = server.get("redis_version").cloned().unwrap_or_default();
                if super::parse_version(&version).is_some_and(|v| v < (7, 0, 0)) {
                    old.push(format!("{address} (Redis {version})"));
                }
                versions.push(format!("{address} {version} ({} slots)", p.slots));
                if chosen.is_none() {
                    chosen = Some((address, client));
                }
            }
            Ok(Err(e)) => f.add(
                "cluster",
                Severity::Warning,
                format!("primary {address} does not answer: {e}"),
                Some("check that every node is reachable from here with the same credentials"),
            ),
            Err(_) => f.add(
                "cluster",
                Severity::Warning,
                format!("primary {address} did not answer within {timeout:?}"),
                None,
            ),
        }
    }
    facts.insert("cluster primaries".into(), versions.join(", "));
    if !old.is_empty() {
        f.add(
            "cluster",
            Severity::Problem,
            format!(
                "primaries older than Redis 7.0: {}; shoald publishes invalidations on a cluster \
                 with sharded Pub/Sub (SPUBLISH/SSUBSCRIBE), which they lack",
                old.join(", ")
            ),
            Some("upgrade every node of the cluster to Redis 7.0 or later"),
        );
    }
    if chosen.is_none() {
        f.add(
            "cluster",
            Severity::Problem,
            "no primary of the cluster answers: the node checks cannot run".into(),
            Some("check that the nodes CLUSTER NODES lists are reachable from here"),
        );
    }
    chosen
}

/// Under Sentinel: enough replicas to confirm changes (`wait_replicas`).
pub(super) fn check_replicas(f: &mut Findings, info: &BTreeMap<String, String>, config: &Config) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse_with_slot_counts_and_replicas() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
b2 127.0.0.1:7001@17001,host-b master - 0 1700000000000 2 connected 5461-10922 [10923->-c3]\n\
c3 127.0.0.1:7002@17002 master,fail - 1700000000000 1700000000000 3 disconnected 10923-16383\n\
d4 127.0.0.1:7003@17003 slave a1 0 1700000000000 1 connected\n\
e5 [::1]:7004@17004 slave b2 0 1700000000000 2 connected\n";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 5);
        assert_eq!(
            (nodes[0].port, nodes[0].slots, nodes[0].primary),
            (7000, 5461, true)
        );
        assert_eq!((nodes[1].port, nodes[1].slots), (7001, 5462));
        assert!(nodes[2].failed && !nodes[1].failed);
        assert!(nodes[0].serves(0) && nodes[0].serves(5460) && !nodes[0].serves(5461));
        assert_eq!(
            (nodes[3].primary, nodes[3].primary_id.as_str()),
            (false, "a1")
        );
        assert_eq!((nodes[4].host.as_str(), nodes[4].port), ("::1", 7004));
    }
}
