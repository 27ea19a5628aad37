//! Doctor's view of the deployment around the data node: under Sentinel, what
//! every sentinel says about the primary and whether it has the replicas
//! `wait_replicas` needs; under Cluster, the cluster's state, slots and
//! primaries without a replica (and that shoald cannot use it yet). The
//! node-level checks (`checks.rs`) then run on the primary (or one seed).

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

/// `[redis.cluster]`: the first seed that answers describes the cluster
/// (state, slots, primaries with and without replicas). shoald does not run on
/// a cluster yet: that is reported as a problem. Returns the seed, on which the
/// other checks run.
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
