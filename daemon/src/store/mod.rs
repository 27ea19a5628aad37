//! The Redis side of shoal (L2): one multiplexed command connection, the scripts
//! from `lua/`, key naming, deadlines and error classification.
//!
//! Every call has a deadline (`redis.timeout`), so a stalled or unreachable Redis
//! turns into a prompt `unavailable`/`timeout` answer instead of a hung request.
//! The connection manager reconnects in the background with backoff.
//!
//! Redis trouble is more than a refused connection: a server out of memory
//! under `noeviction` (`OOM`), loading its dataset (`LOADING`), demoted to a
//! replica by a failover (`READONLY`), a replica without its master
//! (`MASTERDOWN`), blocked by a long script (`BUSY`), … answers with an error
//! reply that is a state of the server, not a mistake of shoal. Those are
//! [`StoreError::Unavailable`] (retryable: rate limits take their fail mode,
//! sessions their `on_unavailable`), counted by kind for `/metrics` and kept
//! for `/readyz`. A hung Redis opens the [`Circuit`].
//!
//! This file: the connection, deadlines and the one `call` every command goes
//! through. Beside it: `cache.rs` (L2 reads and writes), `log.rs` (the
//! invalidation log, heartbeats, Redis's identity), `keys.rs` (key names),
//! `scripts.rs`, `errors.rs` (classification, latency), `reply.rs` (decoding
//! replies), `circuit.rs`, `streamid.rs`.

pub mod circuit;
pub mod conn;
pub mod endpoint;
pub mod streamid;

mod cache;
mod errors;
mod keys;
mod log;
mod reply;
mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::config::Config;
use crate::store::circuit::{Circuit, Gate};
use crate::store::conn::Conn;
use crate::store::endpoint::Endpoint;

pub use cache::{L2Get, L2Value, LeaseRequest, SetOutcome};
pub use errors::{ErrorCounts, Latency, StoreError, ERROR_KINDS, LATENCY_BUCKETS_US, TROUBLE_HOLD};
pub use keys::{keyslot, KeyNames};
pub use log::Replay;

use errors::classify;
use scripts::Scripts;

/// Shared handle to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Where the primary is (fixed, or followed through the sentinels).
    endpoint: Arc<Endpoint>,
    /// Replicas that must confirm a durable write (`WAIT`); 0: none.
    wait_replicas: u32,
    timeout: Duration,
    keys: KeyNames,
    /// Hash-tag groups of the cache on Redis Cluster (0: not a cluster, one
    /// group named by `keys`).
    buckets: u16,
    node: String,
    log_len: u64,
    scripts: Arc<Scripts>,
    /// Set on connection-level failures, cleared on success: a deadline that
    /// expires while Redis is known to be down is reported as `unavailable`.
    down: Arc<AtomicBool>,
    latency: Arc<Latency>,
    circuit: Arc<Circuit>,
    errors: Arc<ErrorCounts>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.keys.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Loads every script into Redis's script cache, so the first call of each
    /// after a (re)connect is one EVALSHA, not EVALSHA + NOSCRIPT + EVAL.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let s = &self.scripts;
        for script in [
            &s.get,
            &s.mget,
            &s.set,
            &s.invalidate,
            &s.invalidate_tags,
            &s.identity,
            &s.heartbeat,
            &s.log_replay,
        ] {
            let mut conn = self.conn().await?;
            self.call(script.load_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// Creates the handle without connecting: the daemon starts (and reports not
    /// ready) while Redis is down, and connects when Redis comes up.
    /// Where this store's Redis is, without credentials (`redis://host:port/db`).
    pub fn address(&self) -> String {
        self.endpoint.address()
    }

    /// The prefix of every key, channel and stream.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    pub fn new(config: &Config) -> Result<Store, StoreError> {
        let timeout = config.redis.timeout;
        Ok(Store {
            endpoint: Arc::new(Endpoint::new(config)?),
            wait_replicas: match (&config.redis.sentinel, &config.redis.cluster) {
                (Some(s), _) => s.wait_replicas,
                (None, Some(c)) => c.wait_replicas,
                (None, None) => 0,
            },
            timeout,
            keys: KeyNames::new(&config.redis.prefix),
            buckets: config.redis.cluster.as_ref().map_or(0, |c| c.buckets),
            node: config.node.id.clone(),
            log_len: config.cache.invalidation_log_len,
            scripts: Arc::new(Scripts::load()),
            down: Arc::new(AtomicBool::new(false)),
            latency: Arc::new(Latency::default()),
            circuit: Arc::new(Circuit::new(
                config.redis.circuit_timeouts,
                config.redis.circuit_probe,
                timeout,
            )),
            errors: Arc::new(ErrorCounts::default()),
        })
    }

    /// A client for a dedicated connection (Pub/Sub, blocking reads) to the
    /// current primary (asked of the sentinels afresh with Sentinel).
    pub async fn client(&self) -> Result<redis::Client, StoreError> {
        self.endpoint
            .client()
            .await
            .map_err(|e| self.trouble("unreachable", e))
    }

    /// Where the primary is; its `changes()` tell dedicated connections to
    /// reconnect (Sentinel failover).
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The shared command connection to the current primary (or the cluster).
    async fn conn(&self) -> Result<Conn, StoreError> {
        self.endpoint
            .conn()
            .await
            .map_err(|e| self.trouble("unreachable", e))
    }

    /// The names of the cache's single group (standalone and Sentinel); on a
    /// cluster, names under the bare prefix (use [`Store::keys_of`]).
    pub fn keys(&self) -> &KeyNames {
        &self.keys
    }

    /// Hash-tag groups of the cache: `redis.cluster.buckets` on a cluster, 0
    /// otherwise (one group, [`Store::keys`]).
    pub fn buckets(&self) -> u16 {
        self.buckets
    }

    /// The names of the group that holds cache key `key`.
    pub fn keys_of(&self, key: &str) -> KeyNames {
        if self.buckets == 0 {
            return self.keys.clone();
        }
        KeyNames::cluster_bucket(&self.keys.prefix, key, self.buckets)
    }

    /// The group of `key`: its bucket on a cluster, 0 otherwise.
    pub fn group_of(&self, key: &str) -> u16 {
        if self.buckets == 0 {
            return 0;
        }
        KeyNames::bucket_of(key, self.buckets)
    }

    /// The names of group `n` (bucket `n` on a cluster; the one group otherwise).
    pub fn group_keys(&self, n: u16) -> KeyNames {
        if self.buckets == 0 {
            return self.keys.clone();
        }
        KeyNames::bucket(&self.keys.prefix, n)
    }

    /// The names of the session keys' group: `PREFIX{s}:` on a cluster (one
    /// slot, so every session script touches one slot), the prefix otherwise.
    pub fn session_keys(&self) -> KeyNames {
        if self.buckets == 0 {
            return self.keys.clone();
        }
        KeyNames::cluster_sessions(&self.keys.prefix)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Latency histogram of every Redis call.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Whether the last call failed for Redis reasons (unreachable, refusing
    /// to serve, or the circuit open).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Whether Redis serves shoal: reachable and no trouble within
    /// [`TROUBLE_HOLD`] (for readiness).
    pub fn is_healthy(&self) -> bool {
        !self.is_down() && !self.errors.recent(TROUBLE_HOLD)
    }

    /// Failed calls by kind and the last trouble (for `/metrics`, `/readyz`).
    pub fn errors(&self) -> &ErrorCounts {
        &self.errors
    }

    /// The hung-Redis circuit breaker.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    fn trouble(&self, kind: &str, e: StoreError) -> StoreError {
        self.errors.record(kind, &e.to_string());
        if matches!(
            kind,
            "readonly" | "masterdown" | "unreachable" | "noreplicas"
        ) {
            // A failover explains these: ask the sentinels (no-op otherwise).
            self.endpoint.suspect();
        }
        if matches!(e, StoreError::Unavailable(_)) {
            self.down.store(true, Ordering::Relaxed);
        }
        e
    }

    /// Runs one Redis call under the deadline and classifies its failure.
    async fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        use tracing::Instrument;
        if self.circuit.admit() == Gate::Reject {
            let e = StoreError::Unavailable(format!(
                "redis circuit open: it did not answer within {:?} several times in a row \
                 (probing)",
                self.timeout
            ));
            return Err(self.trouble("circuit_open", e));
        }
        let started = std::time::Instant::now();
        // A child of the request span: a trace shows the Redis part of each call.
        let result = tokio::time::timeout(self.timeout, fut)
            .instrument(tracing::debug_span!("redis"))
            .await;
        self.latency.record(started.elapsed());
        match result {
            Ok(Ok(v)) => {
                self.circuit.on_answer();
                self.down.store(false, Ordering::Relaxed);
                return Ok(v);
            }
            Ok(Err(e)) => {
                let (e, kind) = classify(e, self.timeout);
                if kind != "timeout" {
                    if kind != "unreachable" {
                        // An error reply is an answer: Redis is not hung.
                        self.circuit.on_answer();
                    }
                    return Err(self.trouble(kind, e));
                }
            }
            Err(_) => {}
        }
        // No answer within the deadline.
        self.endpoint.renew_cluster_after_timeout();
        if self.circuit.on_timeout() {
            tracing::warn!(
                timeout = ?self.timeout,
                "redis stopped answering: circuit open, requests take their fail mode \
                 until a probe gets an answer"
            );
        }
        let e = if self.is_down() || self.circuit.is_open() {
            StoreError::Unavailable(format!(
                "redis unreachable (no answer within {:?})",
                self.timeout
            ))
        } else {
            StoreError::Timeout(self.timeout)
        };
        Err(self.trouble("timeout", e))
    }

    /// Runs an arbitrary command (used by background tasks and admin paths).
    pub async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.call(cmd.query_async(&mut conn)).await
    }

    /// Runs a change whose acknowledgement must survive a failover: with
    /// `redis.sentinel.wait_replicas` > 0 the script is followed, in one
    /// pipeline on the same connection, by `WAIT`, and a change fewer replicas
    /// confirmed within `redis.timeout` is `unavailable` (it may or may not
    /// have been applied, as with any failed write).
    pub async fn invoke_durable<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.wait_replicas == 0 {
            return self.invoke_script(inv).await;
        }
        let writer = self
            .endpoint
            .writer()
            .await
            .map_err(|e| self.trouble("unreachable", e))?;
        let mut conn = WaitConn {
            inner: writer,
            replicas: self.wait_replicas,
            wait_ms: (self.timeout.as_millis() as u64 / 2).max(1),
            confirmed: None,
        };
        let v = self.call(inv.invoke_async(&mut conn)).await?;
        match conn.confirmed {
            Some(n) if n >= i64::from(self.wait_replicas) => Ok(v),
            n => Err(self.trouble(
                "noreplicas",
                StoreError::Unavailable(format!(
                    "the change was not confirmed by {} replica(s) within {}ms (confirmed by {}); \
                     it may or may not have been applied",
                    self.wait_replicas,
                    conn.wait_ms,
                    n.unwrap_or(0)
                )),
            )),
        }
    }

    /// Runs a prepared script invocation under the deadline, on the shared
    /// connection (services that keep their own scripts, e.g. sessions).
    pub async fn invoke_script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.call(inv.invoke_async(&mut conn)).await
    }
    /// A script that changes what readers see, durable when configured.
    pub(crate) async fn change<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.invoke_durable(inv).await
    }
}

/// The command connection, with `WAIT` pipelined after every script run
/// through it: the reply of `WAIT` (replicas that confirmed everything this
/// connection wrote so far) is kept in `confirmed`. One pipeline, so both go
/// over the same connection even if the manager reconnects in between.
struct WaitConn {
    inner: Conn,
    replicas: u32,
    wait_ms: u64,
    confirmed: Option<i64>,
}

/// Attempts of a change and its `WAIT` after `MOVED`, `ASK` or `TRYAGAIN`.
const REDIRECTS: usize = 5;

impl redis::aio::ConnectionLike for WaitConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            let is_eval = cmd
                .args_iter()
                .next()
                .is_some_and(|a| matches!(a, redis::Arg::Simple(n) if n.eq_ignore_ascii_case(b"EVALSHA") || n.eq_ignore_ascii_case(b"EVAL")));
            if !is_eval {
                return self.inner.req_packed_command(cmd).await;
            }
            // On a cluster the pipeline goes to the node of the script's slot.
            // A redirect inside a pipeline is not followed by redis-rs, and
            // `WAIT` must run where the script ran, so redirects are followed
            // here: the pipeline goes to the node named (after `ASKING` for
            // `ASK`: the slot is being moved there).
            let mut to: Option<(String, u16, bool)> = None;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut pipe = redis::pipe();
                let asking = to.as_ref().is_some_and(|t| t.2);
                if asking {
                    pipe.cmd("ASKING");
                }
                pipe.add_command(cmd.clone())
                    .cmd("WAIT")
                    .arg(self.replicas)
                    .arg(self.wait_ms);
                let n = if asking { 3 } else { 2 };
                let mut replies = match (&mut self.inner, &to) {
                    (Conn::Cluster(c), Some((host, port, _))) => {
                        let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        c.route_pipeline(pipe, 0, n, route).await?
                    }
                    (inner, _) => inner.req_packed_commands(&pipe, 0, n).await?,
                };
                let wait = replies.pop();
                let reply = replies.pop().unwrap_or(Value::Nil);
                self.confirmed = match wait {
                    Some(Value::Int(n)) => Some(n),
                    _ => None,
                };
                let e = match reply.extract_error() {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                if !matches!(self.inner, Conn::Cluster(_)) || attempt >= REDIRECTS {
                    return Err(e);
                }
                use redis::{ErrorKind, ServerErrorKind};
                match e.kind() {
                    ErrorKind::Server(k @ (ServerErrorKind::Moved | ServerErrorKind::Ask)) => {
                        let Some((host, port)) = e
                            .redirect_node()
                            .and_then(|(addr, _)| addr.rsplit_once(':'))
                            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                        else {
                            return Err(e);
                        };
                        to = Some((host, port, k == ServerErrorKind::Ask));
                    }
                    ErrorKind::Server(ServerErrorKind::TryAgain) => {
                        // Keys of the script on both sides of a moving slot.
                        tokio::time::sleep(std::time::Duration::from_millis(10 * attempt as u64))
                            .await;
                    }
                    _ => return Err(e),
                }
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl Store {
    /// `SCAN … MATCH pattern` over the whole keyspace: the server's, or on a
    /// cluster every primary's, each with its own cursor (redis-rs sends a
    /// bare `SCAN` to any node, whose cursor means nothing to the next).
    /// `visit` gets every key; returning `false` stops. Returns whether the
    /// scan completed (every cursor back to 0 within `max_rounds` per node).
    pub async fn scan_match(
        &self,
        pattern: &str,
        count: u64,
        max_rounds: usize,
        mut visit: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<bool, StoreError> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
        let scan = |cursor: u64| {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count);
            c
        };
        let mut conn = self.conn().await?;
        // (node, cursor) still to scan; `None`: the one server.
        let mut pending: Vec<(Option<(String, u16)>, u64)> = Vec::new();
        match &mut conn {
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let v = self.call(c.route_command(scan(0), all)).await?;
                let Value::Map(nodes) = v else {
                    return Err(StoreError::Redis(
                        "SCAN on every primary: unexpected reply".into(),
                    ));
                };
                for (addr, reply) in nodes {
                    let addr: String = redis::from_redis_value(addr)
                        .map_err(|e| StoreError::Redis(e.to_string()))?;
                    let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)
                        .map_err(|e| StoreError::Redis(e.to_string()))?;
                    for k in keys {
                        if !visit(k) {
                            return Ok(false);
                        }
                    }
                    if next != 0 {
                        let node = addr
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)));
                        let Some(node) = node else {
                            return Err(StoreError::Redis(format!(
                                "a node without a port: {addr}"
                            )));
                        };
                        pending.push((Some(node), next));
                    }
                }
            }
            _ => pending.push((None, 0)),
        }
        for (node, mut cursor) in pending {
            for round in 0.. {
                if round >= max_rounds {
                    return Ok(false);
                }
                let (next, keys): (u64, Vec<Vec<u8>>) = match (&mut conn, &node) {
                    (Conn::Cluster(c), Some((host, port))) => {
                        let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let v = self.call(c.route_command(scan(cursor), to)).await?;
                        redis::from_redis_value(v).map_err(|e| StoreError::Redis(e.to_string()))?
                    }
                    _ => self.cmd(&scan(cursor)).await?,
                };
                for k in keys {
                    if !visit(k) {
                        return Ok(false);
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(true)
    }
}
