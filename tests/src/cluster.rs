//! A private Redis Cluster for tests: three primaries and three replicas, each a
//! real `redis-server --cluster-enabled yes` on a free port, joined with
//! `redis-cli --cluster create --cluster-replicas 1` exactly as an operator
//! would. Every node is a [`RedisServer`], so tests can signal, kill and
//! restart them.
//!
//! shoald does not run on a cluster yet (issue #16); `shoalctl doctor` already
//! inspects one, and this harness is what the cluster work will test against.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::RedisServer;

/// Six nodes forming one cluster.
#[derive(Debug)]
pub struct ClusterSet {
    pub nodes: Vec<RedisServer>,
}

impl ClusterSet {
    /// Starts six nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots assigned.
    pub async fn start() -> Result<ClusterSet> {
        let mut nodes = Vec::with_capacity(6);
        for _ in 0..6 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
                .await?,
            );
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

    /// `CLUSTER INFO` of one node as a map (empty when it does not answer).
    pub async fn info(node: &RedisServer) -> HashMap<String, String> {
        let text: Result<String> = async {
            let mut c = node.conn().await?;
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("INFO");
            let fut = cmd.query_async::<String>(&mut c);
            Ok(tokio::time::timeout(Duration::from_secs(1), fut).await??)
        }
        .await;
        text.unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// How many replicas `node` sees in `CLUSTER NODES`.
    pub async fn replicas_seen(node: &RedisServer) -> usize {
        let text: Result<String> = async {
            let mut c = node.conn().await?;
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("NODES");
            let fut = cmd.query_async::<String>(&mut c);
            Ok(tokio::time::timeout(Duration::from_secs(1), fut).await??)
        }
        .await;
        text.unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("slave")))
            .count()
    }

    /// Waits until every node sees the whole cluster healthy, every primary
    /// with its replica.
    pub async fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = 0;
            for n in &self.nodes {
                let i = Self::info(n).await;
                if i.get("cluster_state").map(String::as_str) == Some("ok")
                    && i.get("cluster_slots_assigned").map(String::as_str) == Some("16384")
                    && i.get("cluster_known_nodes").map(String::as_str) == Some("6")
                    && Self::replicas_seen(n).await == 3
                {
                    ok += 1;
                }
            }
            if ok == self.nodes.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not become healthy within {within:?} ({ok} of 6 nodes ok)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
