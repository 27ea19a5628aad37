//! A private Redis Cluster for tests: three primaries and three replicas, each a
//! real `redis-server --cluster-enabled yes` on a free port, joined with
//! `redis-cli --cluster create --cluster-replicas 1` exactly as an operator
//! would. Every node is a [`RedisServer`], so tests can signal, kill and
//! restart them.
//!
//! Besides starting it, the harness does to the cluster what operations do:
//! moves a slot with its keys to another primary the way `redis-cli --cluster
//! reshard` does ([`ClusterSet::migrate_slot`]: clients meet `ASK` while it
//! runs and `MOVED` after), kills a primary so that its replica is promoted
//! ([`ClusterSet::kill_primary`]; [`ClusterSet::restart_node`] brings it back
//! as a replica), hands a shard over with `CLUSTER FAILOVER`
//! ([`ClusterSet::manual_failover`]) and restarts a primary in place
//! ([`ClusterSet::restart_primary`]).
//! Which node is a primary changes with each fault; [`ClusterSet::view`] asks
//! the cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::RedisServer;

/// The cluster's hash slot of `key` (`CLUSTER KEYSLOT`), as shoald computes it
/// (`key_slot_agrees_with_cluster_keyslot` checks it against Redis).
pub fn key_slot(key: &[u8]) -> u16 {
    shoald::store::keyslot(key)
}

/// The bucket of cache key `key` among `buckets` (the daemon's hash-tag groups
/// on a cluster): its slot modulo the bucket count.
pub fn bucket_of(key: &str, buckets: u16) -> u16 {
    shoald::store::KeyNames::bucket_of(key, buckets)
}

/// The slot that holds every Redis name of bucket `bucket` (`PREFIX{bN}:...`).
pub fn bucket_slot(bucket: u16) -> u16 {
    key_slot(format!("{{b{bucket}}}").as_bytes())
}

/// The Redis names of the bucket holding `key` (`PREFIX{bN}:c:KEY`, ...).
pub fn bucket_names(prefix: &str, key: &str, buckets: u16) -> shoald::store::KeyNames {
    shoald::store::KeyNames::cluster_bucket(prefix, key, buckets)
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// Flagged `master` (a primary, with or without slots).
    pub primary: bool,
    /// Flagged `fail` or `fail?`, or disconnected.
    pub failed: bool,
    /// A replica's primary.
    pub primary_id: Option<String>,
    /// Slot ranges it serves (inclusive), importing/migrating markers left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    fn parse(line: &str) -> Option<NodeView> {
        let f: Vec<&str> = line.split(' ').collect();
        let port = f.get(1)?.split(['@', ',']).next()?.rsplit_once(':')?.1;
        let flags = *f.get(2)?;
        let slots = f
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect();
        Some(NodeView {
            id: f.first()?.to_string(),
            port: port.parse().ok()?,
            primary: flags.contains("master"),
            failed: flags.contains("fail") || f.get(7) == Some(&"disconnected"),
            primary_id: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
            slots,
        })
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Six nodes forming one cluster.
#[derive(Debug)]
pub struct ClusterSet {
    pub nodes: Vec<RedisServer>,
}

/// A Redis command with a deadline, on a node's own connection (`None` if the
/// node does not answer in time).
async fn ask<T: redis::FromRedisValue>(node: &RedisServer, cmd: &redis::Cmd) -> Result<T> {
    let fut = async {
        let mut c = node.conn().await?;
        Ok::<T, anyhow::Error>(cmd.query_async::<T>(&mut c).await?)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .with_context(|| format!("node {} did not answer", node.port()))?
}

impl ClusterSet {
    /// Starts six nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots assigned.
    pub async fn start() -> Result<ClusterSet> {
        Self::start_with(&[]).await
    }

    /// As [`ClusterSet::start`], every node with extra `redis-server`
    /// arguments (e.g. `--appendonly yes`, so that a restarted primary keeps
    /// its data).
    pub async fn start_with(extra: &[&str]) -> Result<ClusterSet> {
        Self::start_nodes(extra, None).await
    }

    /// As [`ClusterSet::start`], every node requiring `password`
    /// (`requirepass`, and `masterauth` for its replication); the nodes' URLs
    /// carry it.
    pub async fn start_with_password(password: &str) -> Result<ClusterSet> {
        Self::start_nodes(&[], Some(password)).await
    }

    async fn start_nodes(extra: &[&str], password: Option<&str>) -> Result<ClusterSet> {
        let mut nodes = Vec::with_capacity(6);
        for _ in 0..6 {
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ];
            args.extend_from_slice(extra);
            nodes.push(match password {
                Some(p) => RedisServer::start_with_password(&args, p).await?,
                None => RedisServer::start_with(&args).await?,
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .args(password.map_or(Vec::new(), |p| vec!["-a", p, "--no-auth-warning"]))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let set = ClusterSet { nodes };
        set.wait_ok(Duration::from_secs(30)).await?;
        Ok(set)
    }

    /// Seed addresses, for `redis.cluster.urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The `[redis.cluster]` TOML section for a `shoald` process.
    pub fn toml_section(&self, buckets: u16) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[redis.cluster]\nurls = [{}]\nbuckets = {buckets}\n",
            urls.join(", ")
        )
    }

    /// A redis-rs cluster client over every node (it follows `MOVED` and `ASK`
    /// and refreshes its slot map after a failover). Responses time out after
    /// 2 s, so a stopped node makes a command fail instead of hang.
    pub fn client(&self) -> Result<redis::cluster::ClusterClient> {
        Ok(redis::cluster::ClusterClient::builder(self.urls())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2))
            .retries(8)
            .build()?)
    }

    /// A fresh cluster connection (see [`ClusterSet::client`]).
    pub async fn conn(&self) -> Result<redis::cluster_async::ClusterConnection> {
        Ok(self.client()?.get_async_connection().await?)
    }

    /// Index of the node listening on `port`.
    pub fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// `CLUSTER INFO` of one node as a map (empty when it does not answer).
    pub async fn info(node: &RedisServer) -> HashMap<String, String> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("INFO");
        ask::<String>(node, &cmd)
            .await
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// `INFO replication` of one node as a map (empty when it does not answer).
    pub async fn replication(node: &RedisServer) -> HashMap<String, String> {
        crate::sentinel::replication(node).await
    }

    /// `CLUSTER NODES` as `node` sees it.
    pub async fn view_of(node: &RedisServer) -> Result<Vec<NodeView>> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let text: String = ask(node, &cmd).await?;
        Ok(text.lines().filter_map(NodeView::parse).collect())
    }

    /// The cluster as the first node that answers sees it.
    pub async fn view(&self) -> Result<Vec<NodeView>> {
        let mut last = None;
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match Self::view_of(n).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node runs")))
    }

    /// How many replicas `node` sees in `CLUSTER NODES`.
    pub async fn replicas_seen(node: &RedisServer) -> usize {
        Self::view_of(node)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|v| !v.primary && !v.failed)
            .count()
    }

    /// Indexes of the nodes that serve slots now (as currently known).
    pub async fn primaries(&self) -> Result<Vec<usize>> {
        Ok(self
            .view()
            .await?
            .iter()
            .filter(|v| v.primary && !v.failed && !v.slots.is_empty())
            .filter_map(|v| self.index_of(v.port))
            .collect())
    }

    /// Index of the primary serving `slot`.
    pub async fn primary_of_slot(&self, slot: u16) -> Result<usize> {
        let view = self.view().await?;
        let v = view
            .iter()
            .find(|v| v.primary && !v.failed && v.serves(slot))
            .with_context(|| format!("no primary serves slot {slot}"))?;
        self.index_of(v.port).context("a node that is not ours")
    }

    /// Index of the (first) healthy replica of primary `i`.
    pub async fn replica_of(&self, i: usize) -> Result<usize> {
        let view = self.view().await?;
        let id = Self::id_in(&view, self.nodes[i].port())?;
        let v = view
            .iter()
            .find(|v| !v.primary && !v.failed && v.primary_id.as_deref() == Some(id.as_str()))
            .with_context(|| format!("node {i} has no replica"))?;
        self.index_of(v.port).context("a node that is not ours")
    }

    fn id_in(view: &[NodeView], port: u16) -> Result<String> {
        Ok(view
            .iter()
            .find(|v| v.port == port)
            .with_context(|| format!("no node on port {port} in CLUSTER NODES"))?
            .id
            .clone())
    }

    /// Waits until every running node sees the whole cluster healthy, every
    /// primary with a replica whose link is up.
    pub async fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.healthy().await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("the cluster did not become healthy within {within:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn healthy(&self) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pid().is_none() {
                bail!("node {i} is down");
            }
            let info = Self::info(n).await;
            let get = |k: &str| info.get(k).map_or("?", String::as_str);
            if get("cluster_state") != "ok"
                || get("cluster_slots_assigned") != "16384"
                || get("cluster_known_nodes") != "6"
            {
                bail!(
                    "node {i}: state {}, {} slots assigned, {} nodes known",
                    get("cluster_state"),
                    get("cluster_slots_assigned"),
                    get("cluster_known_nodes")
                );
            }
            let view = Self::view_of(n).await?;
            let primaries: Vec<&NodeView> = view
                .iter()
                .filter(|v| v.primary && !v.slots.is_empty())
                .collect();
            if primaries.len() != 3 || view.iter().any(|v| v.failed) {
                bail!(
                    "node {i} sees {} primaries, or a failed node",
                    primaries.len()
                );
            }
            for p in primaries {
                if !view
                    .iter()
                    .any(|v| !v.primary && v.primary_id.as_deref() == Some(p.id.as_str()))
                {
                    bail!("node {i} sees primary {} without a replica", p.port);
                }
            }
            let r = Self::replication(n).await;
            if r.get("role").map(String::as_str) == Some("slave")
                && r.get("master_link_status").map(String::as_str) != Some("up")
            {
                bail!("replica {i} is not in sync with its primary");
            }
        }
        Ok(())
    }

    /// Moves `slot` with its keys to primary `to`, the way `redis-cli --cluster
    /// reshard` does: `CLUSTER SETSLOT IMPORTING` on the target, `MIGRATING` on
    /// the source, the keys moved in batches of 10 with `MIGRATE ... KEYS`,
    /// then `CLUSTER SETSLOT NODE` on every primary. While it runs, commands
    /// for keys already moved get `ASK` (and scripts over keys on both sides
    /// `TRYAGAIN`); after it, `MOVED`. Returns the number of keys moved.
    pub async fn migrate_slot(&self, slot: u16, to: usize) -> Result<usize> {
        self.migrate_slot_paced(slot, to, Duration::ZERO).await
    }

    /// As [`ClusterSet::migrate_slot`], pausing `pause` before each batch and
    /// before the slot is handed over (a slow resharding keeps the slot
    /// half-moved for a while).
    pub async fn migrate_slot_paced(&self, slot: u16, to: usize, pause: Duration) -> Result<usize> {
        let from = self.primary_of_slot(slot).await?;
        if from == to {
            bail!("slot {slot} is already on node {to}");
        }
        let view = self.view().await?;
        let from_id = Self::id_in(&view, self.nodes[from].port())?;
        let to_id = Self::id_in(&view, self.nodes[to].port())?;
        let setslot = |state: &str, id: &str| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(id);
            c
        };
        ask::<()>(&self.nodes[to], &setslot("IMPORTING", &from_id)).await?;
        ask::<()>(&self.nodes[from], &setslot("MIGRATING", &to_id)).await?;
        let mut moved = 0;
        loop {
            tokio::time::sleep(pause).await;
            let mut get = redis::cmd("CLUSTER");
            get.arg("GETKEYSINSLOT").arg(slot).arg(10);
            let keys: Vec<Vec<u8>> = ask(&self.nodes[from], &get).await?;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(self.nodes[to].port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys);
            ask::<redis::Value>(&self.nodes[from], &migrate)
                .await
                .with_context(|| format!("MIGRATE of slot {slot}"))?;
            moved += keys.len();
        }
        tokio::time::sleep(pause).await;
        // The target first (it stops answering ASK-only), then the source,
        // then every other primary, as redis-cli does.
        let node = setslot("NODE", &to_id);
        ask::<()>(&self.nodes[to], &node).await?;
        ask::<()>(&self.nodes[from], &node).await?;
        for p in self.primaries().await? {
            if p != to && p != from {
                ask::<()>(&self.nodes[p], &node).await?;
            }
        }
        Ok(moved)
    }

    /// SIGKILLs primary `i` and waits until its replica is promoted and every
    /// other node sees the cluster `ok` again. Returns the promoted node. The
    /// killed node stays down: [`ClusterSet::restart_node`] brings it back.
    pub async fn kill_primary(&mut self, i: usize, within: Duration) -> Result<usize> {
        let replica = self.replica_of(i).await?;
        self.nodes[i].stop();
        let deadline = Instant::now() + within;
        loop {
            let mut ok = self.is_primary(replica).await;
            for (j, n) in self.nodes.iter().enumerate() {
                if j != i && ok {
                    ok = Self::info(n).await.get("cluster_state").map(String::as_str) == Some("ok");
                }
            }
            if ok {
                return Ok(replica);
            }
            if Instant::now() > deadline {
                bail!("node {replica} was not promoted in place of node {i} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether node `i` answers `role:master`.
    pub async fn is_primary(&self, i: usize) -> bool {
        Self::replication(&self.nodes[i])
            .await
            .get("role")
            .map(String::as_str)
            == Some("master")
    }

    /// `CLUSTER FAILOVER` on the replica of primary `i` (an operator's failover:
    /// the old primary is up, stops writes, hands over once the replica has
    /// caught up, and becomes its replica). Returns the promoted node once every
    /// node sees the cluster whole again.
    pub async fn manual_failover(&self, i: usize, within: Duration) -> Result<usize> {
        let replica = self.replica_of(i).await?;
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("FAILOVER");
        ask::<()>(&self.nodes[replica], &cmd).await?;
        let deadline = Instant::now() + within;
        loop {
            if self.is_primary(replica).await && self.healthy().await.is_ok() {
                return Ok(replica);
            }
            if Instant::now() > deadline {
                bail!("CLUSTER FAILOVER: node {replica} did not take over from node {i} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped node again with its data directory (its `nodes.conf`,
    /// and its AOF if started with one): it rejoins under its own identity,
    /// as a replica if its slots were failed over meanwhile. Waits until the
    /// cluster is whole again (every primary with a synced replica).
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        self.nodes[i].restart().await?;
        self.wait_ok(Duration::from_secs(60)).await
    }

    /// A shard restart that loses the shard's data: primary `i` SIGKILLed
    /// and started again after `down` with every file of its data directory
    /// gone but `nodes.conf` (its identity and slots), as a node without
    /// persistence (or with a lost disk) comes back. Back within the node
    /// timeout it is still the primary, empty, and its replica resyncs from
    /// it: every key of its slots is gone. Returns whether it is a primary
    /// again (`false`: failed over meanwhile, its replica kept the data).
    pub async fn restart_primary_empty(&mut self, i: usize, down: Duration) -> Result<bool> {
        self.nodes[i].stop();
        tokio::time::sleep(down).await;
        for entry in std::fs::read_dir(self.nodes[i].dir.path())? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "nodes.conf") {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        self.restart_node(i).await?;
        Ok(self.is_primary(i).await)
    }

    /// A shard restart: primary `i` SIGKILLed and started again after `down`
    /// with its data directory. Back within the node timeout (2 s) it is still
    /// the primary (with what its AOF kept, nothing without persistence);
    /// later, its replica was promoted and it rejoins as a replica. Returns
    /// whether it is a primary again; waits until the cluster is whole.
    pub async fn restart_primary(&mut self, i: usize, down: Duration) -> Result<bool> {
        self.nodes[i].stop();
        tokio::time::sleep(down).await;
        self.restart_node(i).await?;
        Ok(self.is_primary(i).await)
    }
}
