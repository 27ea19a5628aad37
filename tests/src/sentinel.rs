//! A private Redis Sentinel deployment for tests: a primary, a replica and three
//! sentinels, each a real `redis-server` process on a free port, with the two
//! failovers a production deployment meets: `SENTINEL FAILOVER` (an operator's,
//! the old primary still up) and a killed primary.
//!
//! The data nodes are [`RedisServer`]s, so everything a test does with a
//! standalone server (signals, restarts, connections) works on them. Which of
//! them is the primary changes with each failover; [`SentinelSet::primary`]
//! asks the sentinels.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, RedisServer};

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "mymaster";

/// One `redis-server --sentinel` process.
#[derive(Debug)]
pub struct SentinelProcess {
    port: u16,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelProcess {
    /// Starts a sentinel on a free port and waits until it answers. A port
    /// taken between the probe and the bind makes the process exit: it is
    /// retried on another port.
    async fn start(primary_port: u16) -> Result<SentinelProcess> {
        let mut last = None;
        for _ in 0..5 {
            let mut s = Self::spawn(primary_port)?;
            match s.wait_answers().await {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel started")))
    }

    fn spawn(primary_port: u16) -> Result<SentinelProcess> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 4000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display()
            ),
        )?;
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server --sentinel")?;
        Ok(SentinelProcess {
            port,
            _dir: dir,
            child: Some(child),
        })
    }

    /// Waits until the sentinel answers `PING`; fails at once if it exited.
    async fn wait_answers(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.conn().await {
                let ping = redis::cmd("PING").query_async::<String>(&mut c).await;
                if ping.is_ok() {
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                bail!("the sentinel on port {} exited", self.port);
            }
            if Instant::now() > deadline {
                bail!("the sentinel on port {} did not come up", self.port);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// `SENTINEL MASTER mymaster` as a map.
    async fn master_info(&self) -> Result<std::collections::HashMap<String, String>> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER)
            .query_async(&mut c)
            .await?)
    }

    /// The primary's port as this sentinel sees it.
    pub async fn primary_port(&self) -> Result<u16> {
        let mut c = self.conn().await?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut c)
            .await?;
        Ok(port)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A primary, a replica and three sentinels.
#[derive(Debug)]
pub struct SentinelSet {
    /// The data nodes, in start order (index 0 started as the primary).
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

/// `INFO replication` of a node as a map (empty when it does not answer).
pub async fn replication(node: &RedisServer) -> std::collections::HashMap<String, String> {
    let info: Result<String> = async {
        let mut c = node.conn().await?;
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        let fut = cmd.query_async::<String>(&mut c);
        Ok(tokio::time::timeout(Duration::from_secs(1), fut).await??)
    }
    .await;
    info.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl SentinelSet {
    /// Starts the five processes and waits until the sentinels know the
    /// replica and each other (so a killed primary is failed over).
    pub async fn start() -> Result<SentinelSet> {
        let primary = RedisServer::start().await?;
        let port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await?;
        let mut set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels: Vec::new(),
        };
        set.wait_replicated(Duration::from_secs(20)).await?;
        for _ in 0..3 {
            set.sentinels
                .push(SentinelProcess::start(set.nodes[0].port()).await?);
        }
        set.wait_stable(Duration::from_secs(30)).await?;
        Ok(set)
    }

    /// Sentinel addresses, for `redis.sentinel.urls`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProcess::url).collect()
    }

    /// The `[redis.sentinel]` TOML section for a `shoald` process.
    pub fn toml_section(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[redis.sentinel]\nmaster = \"{MASTER}\"\nurls = [{}]\n",
            urls.join(", ")
        )
    }

    /// Points a daemon configuration at the sentinels (and away from `redis.url`).
    pub fn configure(&self, c: &mut shoald::Config) {
        c.redis.url = shoald::config::DEFAULT_REDIS_URL.into();
        c.redis.sentinel = Some(shoald::config::SentinelConfig {
            master: MASTER.into(),
            urls: self.urls(),
            ..shoald::config::SentinelConfig::default()
        });
    }

    /// Index of the data node the sentinels name as the primary.
    pub async fn primary_index(&self) -> Result<usize> {
        let mut last = None;
        for s in &self.sentinels {
            match s.primary_port().await {
                Ok(port) => {
                    return self
                        .nodes
                        .iter()
                        .position(|n| n.port() == port)
                        .context("the sentinels name a node that is not ours")
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    /// The data node the sentinels name as the primary.
    pub async fn primary(&self) -> Result<&RedisServer> {
        Ok(&self.nodes[self.primary_index().await?])
    }

    /// Mutable access to the current primary (to kill or restart it).
    pub async fn primary_mut(&mut self) -> Result<&mut RedisServer> {
        let i = self.primary_index().await?;
        Ok(&mut self.nodes[i])
    }

    /// Waits until node 1 (or whichever is not the primary) replicates with its link up.
    async fn wait_replicated(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut up = 0;
            for n in &self.nodes {
                let r = replication(n).await;
                if r.get("role").map(String::as_str) == Some("slave")
                    && r.get("master_link_status").map(String::as_str) == Some("up")
                {
                    up += 1;
                }
            }
            if up + 1 >= self.nodes.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replica did not sync within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every sentinel agrees on a primary that answers as one,
    /// knows the other two sentinels and a replica whose link is up, and no
    /// failover is in progress.
    pub async fn wait_stable(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.stable().await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("the sentinel set did not settle within {within:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stable(&self) -> Result<()> {
        let mut ports = Vec::new();
        for s in &self.sentinels {
            let m = s.master_info().await?;
            let get = |k: &str| m.get(k).cloned().unwrap_or_default();
            if get("num-other-sentinels") != "2" {
                bail!("a sentinel knows {} others", get("num-other-sentinels"));
            }
            if get("num-slaves") == "0" {
                bail!("a sentinel knows no replica");
            }
            let flags = get("flags");
            if flags != "master" {
                bail!("a sentinel flags the primary {flags}");
            }
            let state = get("failover-state");
            if !state.is_empty() && state != "none" {
                bail!("failover in progress");
            }
            ports.push(s.primary_port().await?);
        }
        ports.dedup();
        if ports.len() != 1 {
            bail!("the sentinels disagree on the primary: {ports:?}");
        }
        let primary = self
            .nodes
            .iter()
            .find(|n| n.port() == ports[0])
            .context("unknown primary")?;
        let r = replication(primary).await;
        if r.get("role").map(String::as_str) != Some("master") {
            bail!("the named primary answers as {:?}", r.get("role"));
        }
        self.wait_replicated(Duration::ZERO).await
    }

    /// `SENTINEL FAILOVER`: the replica is promoted while the old primary is up.
    /// Returns once the sentinels name the new primary (the old one is turned
    /// into its replica some seconds later; [`SentinelSet::wait_stable`] waits
    /// for that).
    ///
    /// A sentinel aborts a forced failover when its last `INFO` of the
    /// replica is older than 5 s (`-failover-abort-no-good-slave`: outside a
    /// failover it polls replicas every 10 s), so the command is repeated
    /// until the switch happens.
    pub async fn failover(&self, within: Duration) -> Result<()> {
        let before = self.primary_index().await?;
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            let mut c = self.sentinels[0].conn().await?;
            if let Err(e) = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER)
                .query_async::<()>(&mut c)
                .await
            {
                // INPROG: the previous attempt still runs; wait for it.
                last = e.to_string();
            }
            match self.wait_switched(before, Duration::from_secs(5)).await {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {}
                Err(e) => bail!("{e:#} (last SENTINEL FAILOVER answer: {last:?})"),
            }
        }
    }

    /// SIGKILLs the primary; returns once the sentinels name another. The old
    /// primary stays down: [`SentinelSet::restart_node`] brings it back.
    pub async fn kill_primary(&mut self, within: Duration) -> Result<usize> {
        let before = self.primary_index().await?;
        self.nodes[before].stop();
        self.wait_switched(before, within).await?;
        Ok(before)
    }

    /// Starts a stopped node again (empty, no persistence): the sentinels turn
    /// it into a replica of the current primary.
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        self.nodes[i].restart_empty().await
    }

    async fn wait_switched(&self, before: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(now) = self.primary_index().await {
                if now != before {
                    let r = replication(&self.nodes[now]).await;
                    if r.get("role").map(String::as_str) == Some("master") {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no failover within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where a data node keeps its files (for diagnostics).
    pub fn node_dir(&self, i: usize) -> &Path {
        self.nodes[i].dir.path()
    }
}
