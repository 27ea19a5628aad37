//! Where the Redis primary is: a fixed `redis.url`, the primary the sentinels
//! of `[redis.sentinel]` name, followed across failovers, or the nodes of a
//! `[redis.cluster]` (redis-rs's cluster client: slots, `MOVED`/`ASK` and
//! failovers of shards are its business; connected lazily, so shoald starts
//! while the cluster is down).
//!
//! With Sentinel, the command connection is a [`ConnectionManager`] to the
//! primary the sentinels last named. It is replaced (and the generation in
//! [`Endpoint::changes`] advances, so the invalidation subscriber and the
//! revocation reader reconnect too) when
//! - a sentinel announces `+switch-master` for our primary (one Pub/Sub
//!   connection to one sentinel at a time, re-resolving after every reconnect
//!   so an announcement missed while disconnected is not lost), or
//! - a command finds the server demoted (`READONLY`), without its primary
//!   (`MASTERDOWN`) or unreachable: the sentinels are asked again (at most one
//!   lookup at a time, and at most every [`RESOLVE_EVERY`]).
//!
//! Changes that must be confirmed by replicas (`WAIT`) go over a few writer
//! connections of their own: `WAIT` blocks its connection on the server, and
//! must hold up neither the reads nor the other changes.
//!
//! Finding the primary uses redis-rs's own `SentinelClient`, which also checks
//! that the node it names answers `ROLE` as a master. Correctness across a
//! failover does not rest on this module: every connection's catch-up checks
//! Redis's identity (a promoted replica has another run id, so L1 and the
//! session cache are flushed), and every heartbeat re-proves it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{IntoConnectionInfo, RedisConnectionInfo};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::errors::StoreError;
use crate::config::{Config, Topology};

/// Connections for confirmed changes (each waits for replicas in turn).
pub const WRITERS: usize = 8;

/// Sentinel lookups after a command error are at most this frequent.
pub const RESOLVE_EVERY: Duration = Duration::from_millis(100);

/// The current primary: a client for new connections and the shared command
/// connection.
#[derive(Clone)]
struct Primary {
    client: redis::Client,
    conn: ConnectionManager,
    /// Connections for changes followed by `WAIT` (Sentinel only): `WAIT`
    /// blocks its connection on the server until replicas confirm, so it must
    /// not hold up the reads on `conn`, nor one change all the others.
    writers: Arc<[ConnectionManager]>,
    /// `redis://host:port/db`, no credentials.
    address: String,
}

struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    master: String,
    /// Sentinel addresses (with their credentials) for the `+switch-master` watch.
    urls: Vec<redis::ConnectionInfo>,
    /// Last lookup started (rate limit of error-driven lookups).
    last_lookup: Mutex<Option<Instant>>,
}

/// The nodes of a Redis Cluster: clients for the shared command connection,
/// the writers (changes followed by `WAIT`), dedicated blocking readers and
/// sharded Pub/Sub.
struct ClusterNodes {
    urls: Vec<String>,
    username: String,
    password: String,
    /// The shared command connection, made on first use.
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    /// Connections for changes followed by `WAIT` (made on first use).
    writers: tokio::sync::Mutex<Option<Arc<[ClusterConnection]>>>,
    /// When the shared connections were last given up after a timeout.
    renewed: Mutex<Option<Instant>>,
}

/// The way to the primary. Shared by the store and the background tasks.
pub struct Endpoint {
    topology: Topology,
    timeout: Duration,
    mgr_config: ConnectionManagerConfig,
    current: Mutex<Option<Primary>>,
    sentinels: Option<Sentinels>,
    cluster: Option<ClusterNodes>,
    /// Advances every time the primary changes (not on the first lookup).
    generation: tokio::sync::watch::Sender<u64>,
    /// Round robin over the writer connections.
    next_writer: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("topology", &self.topology)
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

fn bad_config(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redis(format!("bad redis configuration: {e}"))
}

/// `redis://host:port/db` of a client, without credentials.
fn address_of(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    format!("redis://{}/{}", info.addr(), info.redis_settings().db())
}

impl Endpoint {
    /// Builds the endpoint without connecting anywhere.
    pub fn new(config: &Config) -> Result<Endpoint, StoreError> {
        let timeout = config.redis.timeout;
        let mgr_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let cluster = config.redis.cluster.as_ref().map(|c| ClusterNodes {
            urls: c.urls.clone(),
            username: c.username.clone(),
            password: c.password.expose().to_string(),
            conn: tokio::sync::Mutex::new(None),
            writers: tokio::sync::Mutex::new(None),
            renewed: Mutex::new(None),
        });
        let (current, sentinels) = match &config.redis.sentinel {
            None if cluster.is_some() => (None, None),
            None => {
                let client = redis::Client::open(config.redis.url.as_str())
                    .map_err(|e| StoreError::Redis(format!("bad redis.url: {e}")))?;
                let conn =
                    ConnectionManager::new_lazy_with_config(client.clone(), mgr_config.clone())
                        .map_err(|e| StoreError::Redis(e.to_string()))?;
                let primary = Primary {
                    client,
                    conn,
                    writers: Arc::new([]),
                    address: crate::config::redis_address(&config.redis.url),
                };
                (Some(primary), None)
            }
            Some(s) => {
                let mut urls = Vec::with_capacity(s.urls.len());
                for u in &s.urls {
                    let mut info = u.as_str().into_connection_info().map_err(bad_config)?;
                    let mut settings = info.redis_settings().clone();
                    if !s.sentinel_username.is_empty() {
                        settings = settings.set_username(&s.sentinel_username);
                    }
                    if !s.sentinel_password.is_empty() {
                        settings = settings.set_password(s.sentinel_password.expose());
                    }
                    info = info.set_redis_settings(settings);
                    urls.push(info);
                }
                let mut node = RedisConnectionInfo::default().set_db(s.db);
                if !s.username.is_empty() {
                    node = node.set_username(&s.username);
                }
                if !s.password.is_empty() {
                    node = node.set_password(s.password.expose());
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
                let client = SentinelClient::build(
                    urls.clone(),
                    &s.master,
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(bad_config)?;
                let sentinels = Sentinels {
                    client: tokio::sync::Mutex::new(client),
                    master: s.master.clone(),
                    urls,
                    last_lookup: Mutex::new(None),
                };
                (None, Some(sentinels))
            }
        };
        Ok(Endpoint {
            topology: config.redis.topology(),
            timeout,
            mgr_config,
            current: Mutex::new(current),
            sentinels,
            cluster,
            generation: tokio::sync::watch::channel(0).0,
            next_writer: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The primary's address (`sentinel:NAME` before the first lookup,
    /// `cluster:` and the seed nodes on a cluster).
    pub fn address(&self) -> String {
        if let Some(c) = &self.cluster {
            let seeds: Vec<String> = c
                .urls
                .iter()
                .map(|u| crate::config::redis_address(u))
                .collect();
            return format!("cluster:{}", seeds.join(","));
        }
        match (self.lock().as_ref(), &self.sentinels) {
            (Some(p), _) => p.address.clone(),
            (None, Some(s)) => format!("sentinel:{}", s.master),
            (None, None) => String::new(),
        }
    }

    /// A cluster client with this endpoint's credentials and deadlines.
    /// `response_timeout` `None`: for blocking reads, which carry their own.
    fn cluster_client(
        &self,
        c: &ClusterNodes,
        response_timeout: Option<Duration>,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<redis::cluster::ClusterClient, StoreError> {
        let mut b = redis::cluster::ClusterClientBuilder::new(c.urls.clone())
            .connection_timeout(self.timeout.max(Duration::from_millis(100)))
            .retries(4)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(t) = response_timeout {
            b = b.response_timeout(t);
        }
        if !c.username.is_empty() {
            b = b.username(&c.username);
        }
        if !c.password.is_empty() {
            b = b.password(&c.password);
        }
        if let Some(tx) = push {
            b = b
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx);
        }
        b.build().map_err(bad_config)
    }

    /// A new connection to the cluster (each has its own connections to the nodes).
    async fn cluster_connect(
        &self,
        c: &ClusterNodes,
        response_timeout: Option<Duration>,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterConnection, StoreError> {
        let client = self.cluster_client(c, response_timeout, push)?;
        let limit = self.timeout.max(Duration::from_secs(1)) * 2;
        match tokio::time::timeout(limit, client.get_async_connection()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "no node of the redis cluster answers: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the redis cluster did not answer within {limit:?}"
            ))),
        }
    }

    /// A Pub/Sub connection to the cluster (RESP3): every push, sharded
    /// messages and disconnections included, goes to `push`. redis-rs
    /// re-subscribes it after reconnects and slot moves (Cluster only).
    pub async fn cluster_pubsub(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<ClusterConnection, StoreError> {
        let Some(c) = &self.cluster else {
            return Err(StoreError::Redis("not a redis cluster".into()));
        };
        self.cluster_connect(c, Some(self.timeout), Some(push))
            .await
    }

    /// A dedicated connection for blocking reads (`XREAD BLOCK`), without a
    /// response timeout (each call carries its own deadline), named `name`
    /// (`CLIENT SETNAME`, except on a cluster).
    pub async fn dedicated(&self, name: &str) -> Result<Conn, StoreError> {
        if let Some(c) = &self.cluster {
            return self.cluster_connect(c, None, None).await.map(Conn::Cluster);
        }
        let limit = self.timeout.max(Duration::from_secs(1));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(None);
        let client = self.client().await?;
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Conn::Multiplexed(conn))
    }

    /// A receiver that sees every change of primary: connections to the old
    /// one must be given up.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Primary>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared command connection to the current primary (found through
    /// the sentinels first if none is known yet), or to the cluster.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = &self.cluster {
            let mut conn = c.conn.lock().await;
            if let Some(conn) = conn.as_ref() {
                return Ok(Conn::Cluster(conn.clone()));
            }
            let made = self.cluster_connect(c, Some(self.timeout), None).await?;
            *conn = Some(made.clone());
            return Ok(Conn::Cluster(made));
        }
        if let Some(p) = self.lock().as_ref() {
            return Ok(Conn::Manager(p.conn.clone()));
        }
        self.resolve().await.map(|p| Conn::Manager(p.conn))
    }

    /// A call on the cluster went unanswered: gives up the shared cluster
    /// connections (at most once per `redis.timeout`, and per second: an
    /// overloaded cluster is not made busier by reconnects), so the next call makes
    /// new ones with the slot map the cluster has now. redis-rs refreshes its
    /// slot map on `MOVED` or a dropped connection, never on a timeout, so a
    /// primary that hangs with its connections open (stopped, frozen, cut off
    /// without a reset) would be asked for its slots forever, even after its
    /// replica took them over. Calls already running keep their clone.
    pub fn renew_cluster_after_timeout(&self) {
        let Some(c) = &self.cluster else { return };
        {
            let mut last = c.renewed.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.timeout.max(Duration::from_secs(1))) {
                return;
            }
            *last = Some(Instant::now());
        }
        // A lock held means a connection is being made right now: it is new.
        if let Ok(mut conn) = c.conn.try_lock() {
            *conn = None;
        }
        if let Ok(mut writers) = c.writers.try_lock() {
            *writers = None;
        }
        tracing::warn!(
            "a redis cluster call went unanswered: reconnecting with a fresh slot map \
             (a primary may hang and have been failed over)"
        );
    }

    /// A connection for a change followed by `WAIT` (one of [`WRITERS`];
    /// the command connection when there are none).
    pub async fn writer(&self) -> Result<Conn, StoreError> {
        let i = self
            .next_writer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            let mut writers = c.writers.lock().await;
            if writers.is_none() {
                let mut made = Vec::with_capacity(WRITERS);
                for _ in 0..WRITERS {
                    made.push(self.cluster_connect(c, Some(self.timeout), None).await?);
                }
                *writers = Some(made.into());
            }
            let w = writers.as_ref().map(|w| w[i % w.len()].clone());
            return w
                .map(Conn::Cluster)
                .ok_or_else(|| StoreError::Unavailable("no cluster writer".into()));
        }
        let pick = |p: &Primary| {
            if p.writers.is_empty() {
                return Conn::Manager(p.conn.clone());
            }
            Conn::Manager(p.writers[i % p.writers.len()].clone())
        };
        if let Some(p) = self.lock().as_ref() {
            return Ok(pick(p));
        }
        self.resolve().await.map(|p| pick(&p))
    }

    /// A client for a dedicated connection (Pub/Sub, blocking reads) to the
    /// primary. With Sentinel the sentinels are asked afresh: this is called
    /// when such a connection is (re)made, often because the old one failed.
    pub async fn client(&self) -> Result<redis::Client, StoreError> {
        if self.cluster.is_some() {
            return Err(StoreError::Redis(
                "a redis cluster has no single primary to connect to".into(),
            ));
        }
        if self.sentinels.is_none() {
            if let Some(p) = self.lock().as_ref() {
                return Ok(p.client.clone());
            }
        }
        match self.resolve().await {
            Ok(p) => Ok(p.client),
            Err(e) => {
                // No sentinel answers: the primary last named is still the
                // best guess (the identity check and heartbeats verify it).
                let known = self.lock().as_ref().map(|p| p.client.clone());
                match known {
                    Some(client) => {
                        tracing::warn!(error = %e, "sentinels unreachable; reconnecting to the primary they named last");
                        Ok(client)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Asks the sentinels where the primary is; adopts it if it moved.
    async fn resolve(&self) -> Result<Primary, StoreError> {
        let Some(s) = &self.sentinels else {
            return self
                .lock()
                .clone()
                .ok_or_else(|| StoreError::Unavailable("no redis configured".into()));
        };
        let mut sentinel = s.client.lock().await;
        *s.last_lookup.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let limit = self.timeout.max(Duration::from_secs(1)) * 2;
        let client = match tokio::time::timeout(limit, sentinel.async_get_client()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "the sentinels do not name a reachable primary for {:?}: {e}",
                    s.master
                )))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the sentinels did not name a primary for {:?} within {limit:?}",
                    s.master
                )))
            }
        };
        drop(sentinel);
        let address = address_of(&client);
        let mut current = self.lock();
        if let Some(p) = current.as_ref() {
            if p.address == address {
                return Ok(p.clone());
            }
        }
        let lazy = || {
            ConnectionManager::new_lazy_with_config(client.clone(), self.mgr_config.clone())
                .map_err(|e| StoreError::Redis(e.to_string()))
        };
        let conn = lazy()?;
        let writers = (0..WRITERS)
            .map(|_| lazy())
            .collect::<Result<Vec<_>, _>>()?;
        let primary = Primary {
            client: client.clone(),
            conn,
            writers: writers.into(),
            address: address.clone(),
        };
        let previous = current.replace(primary.clone());
        drop(current);
        if let Some(old) = previous {
            tracing::warn!(from = %old.address, to = %address, master = %s.master, "redis primary changed (sentinel failover); reconnecting every connection");
            self.generation.send_modify(|g| *g += 1);
        } else {
            tracing::info!(primary = %address, master = %s.master, "redis primary found through the sentinels");
        }
        Ok(primary)
    }

    /// A command failed in a way a failover explains: ask the sentinels again
    /// in the background (one lookup at a time, at most every [`RESOLVE_EVERY`]).
    pub fn suspect(self: &Arc<Self>) {
        let Some(s) = &self.sentinels else { return };
        {
            let mut last = s.last_lookup.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < RESOLVE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if s.client.try_lock().is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.resolve().await {
                tracing::debug!(error = %e, "sentinel lookup failed");
            }
        });
    }

    /// Follows `+switch-master` announcements until `cancel` fires (Sentinel
    /// only; returns at once otherwise).
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let Some(s) = &self.sentinels else { return };
        let mut i = 0usize;
        let mut backoff = Duration::from_millis(50);
        loop {
            let info = s.urls[i % s.urls.len()].clone();
            i += 1;
            let started = Instant::now();
            tokio::select! {
                _ = cancel.cancelled() => return,
                why = self.watch_one(info.clone(), &s.master) => {
                    tracing::debug!(sentinel = %info.addr(), reason = %why, "sentinel watch lost; trying the next sentinel");
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(50);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One sentinel's `+switch-master` channel, from subscribe to loss.
    async fn watch_one(&self, info: redis::ConnectionInfo, master: &str) -> String {
        let limit = self.timeout.max(Duration::from_secs(1));
        let connect = async {
            let client = redis::Client::open(info)?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => return format!("subscribe failed: {e}"),
            Err(_) => return "subscribe timed out".into(),
        };
        // Whatever was announced while we were not listening.
        if let Err(e) = self.resolve().await {
            tracing::warn!(error = %e, "cannot find the redis primary through the sentinels");
        }
        let mut messages = ps.into_on_message();
        while let Some(msg) = messages.next().await {
            // "<master> <old-ip> <old-port> <new-ip> <new-port>"
            let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
            if payload.split(' ').next() != Some(master) {
                continue;
            }
            tracing::info!(announcement = %payload, "sentinel: +switch-master");
            // The announced primary may not answer as one yet: retry briefly.
            for _ in 0..20 {
                match self.resolve().await {
                    Ok(p) if payload.ends_with(&p.address_port()) => break,
                    Ok(_) | Err(_) => tokio::time::sleep(RESOLVE_EVERY).await,
                }
            }
        }
        "connection closed".into()
    }
}

impl Primary {
    /// `"host port"` as sentinels announce it.
    fn address_port(&self) -> String {
        match self.client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(h, p) => format!("{h} {p}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host} {port}"),
            other => other.to_string(),
        }
    }
}
