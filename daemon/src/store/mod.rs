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

pub mod circuit;
pub mod endpoint;
pub mod streamid;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::config::Config;
use crate::store::circuit::{Circuit, Gate};
use crate::store::endpoint::Endpoint;
use crate::store::streamid::StreamId;

/// The scripts, loaded from `lua/` at compile time.
#[derive(Debug)]
struct Scripts {
    get: Script,
    mget: Script,
    set: Script,
    invalidate: Script,
    invalidate_tags: Script,
    epoch: Script,
    heartbeat: Script,
    log_replay: Script,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            get: Script::new(include_str!("../../../lua/cache_get.lua")),
            mget: Script::new(include_str!("../../../lua/cache_mget.lua")),
            set: Script::new(include_str!("../../../lua/cache_set.lua")),
            invalidate: Script::new(include_str!("../../../lua/cache_invalidate.lua")),
            invalidate_tags: Script::new(include_str!("../../../lua/cache_invalidate_tags.lua")),
            epoch: Script::new(include_str!("../../../lua/epoch.lua")),
            heartbeat: Script::new(include_str!("../../../lua/heartbeat.lua")),
            log_replay: Script::new(include_str!("../../../lua/log_replay.lua")),
        }
    }
}

/// One step of a log replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Entries after the position (empty: caught up): (id, keys JSON).
    Entries(Vec<(StreamId, Option<String>)>),
    /// The log no longer reaches back to the position.
    Trimmed,
    /// The position lies beyond the log's last id (given).
    Beyond(StreamId),
    /// There is no log although the position is not zero.
    Empty,
}

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (connection refused, reset, or down for a while).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis was reachable but did not answer within `redis.timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or something shoal did not expect.
    #[error("redis error: {0}")]
    Redis(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Redis(_))
    }
}

/// Names of every key, channel and stream shoal uses under `redis.prefix`.
#[derive(Debug, Clone)]
pub struct KeyNames {
    prefix: String,
}

impl KeyNames {
    pub fn new(prefix: &str) -> Self {
        KeyNames {
            prefix: prefix.to_string(),
        }
    }
    pub fn value(&self, key: &str) -> String {
        format!("{}c:{key}", self.prefix)
    }
    pub fn lease(&self, key: &str) -> String {
        format!("{}l:{key}", self.prefix)
    }
    pub fn tag(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }
    pub fn log(&self) -> String {
        format!("{}log", self.prefix)
    }
    pub fn channel(&self) -> String {
        format!("{}inv", self.prefix)
    }
    pub fn heartbeat_channel(&self, instance: &str) -> String {
        format!("{}hb:{instance}", self.prefix)
    }
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

/// An L2 read of one key.
#[derive(Debug, Clone)]
pub struct L2Value {
    pub value: Option<Bytes>,
    /// Remaining TTL in ms (`None`: no TTL, which shoal never writes).
    pub ttl_ms: Option<u64>,
}

/// `cache_get` result: the value, the log position the read saw, the lease outcome.
#[derive(Debug, Clone)]
pub struct L2Get {
    pub value: L2Value,
    pub pos: StreamId,
    pub lease: Option<String>,
    pub wait_ms: Option<u64>,
}

/// Result of a write that may fill L1.
#[derive(Debug, Clone)]
pub enum SetOutcome {
    Stored(StreamId),
    LeaseLost,
}

/// Lease request of a `cache.get`.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub token: String,
    pub ttl_ms: u64,
    pub max_wait_ms: u64,
}

/// Shared handle to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Where the primary is (fixed, or followed through the sentinels).
    endpoint: Arc<Endpoint>,
    /// Replicas that must confirm a durable write (`WAIT`); 0: none.
    wait_replicas: u32,
    timeout: Duration,
    keys: KeyNames,
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

/// Server error codes that mean "this Redis cannot serve now", with their
/// `kind` label in `/metrics`.
const TROUBLE_CODES: [(&str, &str); 10] = [
    ("OOM", "oom"),
    ("LOADING", "loading"),
    ("READONLY", "readonly"),
    ("MASTERDOWN", "masterdown"),
    ("BUSY", "busy"),
    ("NOSCRIPT", "noscript"),
    ("TRYAGAIN", "tryagain"),
    ("CLUSTERDOWN", "clusterdown"),
    ("MISCONF", "misconf"),
    ("NOREPLICAS", "noreplicas"),
];

/// Every `kind` label of `shoal_redis_command_errors_total`: the trouble codes,
/// then `timeout`, `unreachable`, `circuit_open` and `other` (an error reply
/// shoal did not expect: a bug or a foreign key in the way).
pub const ERROR_KINDS: [&str; TROUBLE_CODES.len() + 4] = [
    "oom",
    "loading",
    "readonly",
    "masterdown",
    "busy",
    "noscript",
    "tryagain",
    "clusterdown",
    "misconf",
    "noreplicas",
    "timeout",
    "unreachable",
    "circuit_open",
    "other",
];

/// Failed Redis calls by kind, and the last trouble seen (for `/readyz`).
#[derive(Debug, Default)]
pub struct ErrorCounts {
    counts: [std::sync::atomic::AtomicU64; ERROR_KINDS.len()],
    last: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long one Redis trouble (an error reply, a timeout) keeps the daemon
/// unready: a command Redis still serves (INFO, PUBLISH while loading; reads
/// while out of memory) must not flip readiness back between failures.
pub const TROUBLE_HOLD: Duration = Duration::from_secs(1);

impl ErrorCounts {
    fn record(&self, kind: &str, msg: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        // A lone missed deadline is a slow moment, not trouble worth a
        // readiness flip (the circuit breaker handles a hung Redis).
        if kind != "other" && kind != "timeout" {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((std::time::Instant::now(), msg.to_string()));
        }
    }

    /// `(kind, count)` for every kind, in [`ERROR_KINDS`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ERROR_KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// The last Redis trouble, in words (kept until the next one).
    pub fn last(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, m)| m.clone())
    }

    /// Whether Redis trouble was seen within `within`.
    pub fn recent(&self, within: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < within)
    }
}

/// Upper bounds (µs) of the Redis command latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Latency of every Redis call shoal makes (scripts and commands), as histogram
/// buckets for `/metrics`: a slow Redis shows here before it shows as timeouts.
#[derive(Debug, Default)]
pub struct Latency {
    pub buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_us: std::sync::atomic::AtomicU64,
}

impl Latency {
    fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.keys.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The error and its `kind` label.
fn classify(e: redis::RedisError, timeout: Duration) -> (StoreError, &'static str) {
    if e.is_timeout() {
        (StoreError::Timeout(timeout), "timeout")
    } else if let Some((code, kind)) = e
        .code()
        .and_then(|c| TROUBLE_CODES.iter().find(|(t, _)| *t == c))
    {
        let detail = e.detail().unwrap_or("").trim();
        (
            StoreError::Unavailable(format!("redis cannot serve now: {code} {detail}")),
            kind,
        )
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        (StoreError::Unavailable(e.to_string()), "unreachable")
    } else {
        (StoreError::Redis(e.to_string()), "other")
    }
}

impl Store {
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
            wait_replicas: config
                .redis
                .sentinel
                .as_ref()
                .map_or(0, |s| s.wait_replicas),
            timeout,
            keys: KeyNames::new(&config.redis.prefix),
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

    /// The shared command connection to the current primary.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.endpoint
            .conn()
            .await
            .map_err(|e| self.trouble("unreachable", e))
    }

    pub fn keys(&self) -> &KeyNames {
        &self.keys
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

    pub async fn cache_get(
        &self,
        key: &str,
        lease: Option<&LeaseRequest>,
    ) -> Result<L2Get, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.get.prepare_invoke();
        inv.key(self.keys.value(key))
            .key(self.keys.lease(key))
            .key(self.keys.log());
        match lease {
            Some(l) => inv.arg("1").arg(&l.token).arg(l.ttl_ms).arg(l.max_wait_ms),
            None => inv.arg("0").arg("").arg(0).arg(0),
        };
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        let [value, pttl, pos, lease, wait] = <[Value; 5]>::try_from(v)
            .map_err(|_| StoreError::Redis("cache_get returned an unexpected shape".into()))?;
        Ok(L2Get {
            value: l2_value(value, pttl)?,
            pos: parse_pos(&pos)?,
            lease: opt_string(lease)?,
            wait_ms: opt_u64(wait)?,
        })
    }

    /// Reads many keys in one round trip; returns the values in order and the log position.
    pub async fn cache_mget(&self, keys: &[&str]) -> Result<(Vec<L2Value>, StreamId), StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.mget.prepare_invoke();
        inv.key(self.keys.log());
        for k in keys {
            inv.key(self.keys.value(k));
        }
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        if v.len() != 1 + 2 * keys.len() {
            return Err(StoreError::Redis(
                "cache_mget returned an unexpected shape".into(),
            ));
        }
        let mut it = v.into_iter();
        let pos = parse_pos(&it.next().unwrap_or(Value::Nil))?;
        let mut out = Vec::with_capacity(keys.len());
        while let (Some(value), Some(pttl)) = (it.next(), it.next()) {
            out.push(l2_value(value, pttl)?);
        }
        Ok((out, pos))
    }

    /// A script that changes what readers see, durable when configured.
    async fn change<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.invoke_durable(inv).await
    }

    pub async fn cache_set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        lease: Option<&str>,
        tags: &[String],
    ) -> Result<SetOutcome, StoreError> {
        let mut inv = self.scripts.set.prepare_invoke();
        inv.key(self.keys.value(key))
            .key(self.keys.lease(key))
            .key(self.keys.log());
        for t in tags {
            inv.key(self.keys.tag(t));
        }
        inv.arg(value)
            .arg(ttl_ms)
            .arg(lease.unwrap_or(""))
            .arg(self.log_len)
            .arg(self.keys.channel())
            .arg(&self.node)
            .arg(key);
        let v: Vec<Value> = self.change(&inv).await?;
        match v.as_slice() {
            [Value::Int(1), id] => Ok(SetOutcome::Stored(parse_pos(id)?)),
            [Value::Int(0), ..] => Ok(SetOutcome::LeaseLost),
            _ => Err(StoreError::Redis(
                "cache_set returned an unexpected shape".into(),
            )),
        }
    }

    pub async fn cache_invalidate(&self, keys: &[String]) -> Result<StreamId, StoreError> {
        let mut inv = self.scripts.invalidate.prepare_invoke();
        inv.key(self.keys.log());
        for k in keys {
            inv.key(self.keys.value(k)).key(self.keys.lease(k));
        }
        inv.arg(self.log_len)
            .arg(self.keys.channel())
            .arg(&self.node);
        for k in keys {
            inv.arg(k);
        }
        let v: Value = self.change(&inv).await?;
        parse_pos(&v)
    }

    /// Invalidates every key of `tags` as one change. Returns the log id and the keys.
    pub async fn cache_invalidate_tags(
        &self,
        tags: &[String],
    ) -> Result<(StreamId, Vec<String>), StoreError> {
        // The members are read first and confirmed inside the script; a set that
        // races in between makes the script ask for another round.
        for _ in 0..8 {
            let mut sunion = redis::cmd("SUNION");
            for t in tags {
                sunion.arg(self.keys.tag(t));
            }
            let members: Vec<String> = self.cmd(&sunion).await?;
            let mut inv = self.scripts.invalidate_tags.prepare_invoke();
            inv.key(self.keys.log());
            for t in tags {
                inv.key(self.keys.tag(t));
            }
            for m in &members {
                inv.key(self.keys.value(m)).key(self.keys.lease(m));
            }
            inv.arg(self.log_len)
                .arg(self.keys.channel())
                .arg(&self.node)
                .arg(tags.len());
            for m in &members {
                inv.arg(m);
            }
            let v: Vec<Value> = self.change(&inv).await?;
            match v.as_slice() {
                [Value::Int(1), id, _] => return Ok((parse_pos(id)?, members)),
                [Value::Int(0), ..] => continue,
                _ => {
                    return Err(StoreError::Redis(
                        "cache_invalidate_tags returned an unexpected shape".into(),
                    ))
                }
            }
        }
        Err(StoreError::Timeout(self.timeout))
    }

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
            &s.epoch,
            &s.heartbeat,
            &s.log_replay,
        ] {
            let mut conn = self.conn().await?;
            self.call(script.load_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// The dataset epoch (created if missing) and the server's run_id.
    pub async fn identity(&self) -> Result<(String, String), StoreError> {
        let mut conn = self.conn().await?;
        let candidate = crate::random_token(16);
        let mut inv = self.scripts.epoch.prepare_invoke();
        inv.key(self.keys.epoch()).arg(candidate);
        let epoch: String = self.call(inv.invoke_async(&mut conn)).await?;
        let info: String = self.cmd(redis::cmd("INFO").arg("server")).await?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let info: String = self.cmd(redis::cmd("INFO").arg("replication")).await?;
        let role = info
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or("")
            .trim()
            .to_string();
        if role != "master" {
            // Catching up against a demoted primary would prove nothing about
            // the changes the new one acknowledges.
            return Err(self.trouble(
                "readonly",
                StoreError::Unavailable(format!(
                    "connected to a redis {role}, not the primary (failover in progress?)"
                )),
            ));
        }
        Ok((epoch, run_id))
    }

    /// The first and last ids of the invalidation log (`None` when it is empty or missing).
    pub async fn log_bounds(&self) -> Result<(Option<StreamId>, Option<StreamId>), StoreError> {
        let log = self.keys.log();
        let first: Vec<(String, Value)> = self
            .cmd(
                redis::cmd("XRANGE")
                    .arg(&log)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map(|v: Vec<Value>| entries_ids(v))?;
        let last: Vec<(String, Value)> = self
            .cmd(
                redis::cmd("XREVRANGE")
                    .arg(&log)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map(|v: Vec<Value>| entries_ids(v))?;
        let p = |v: &[(String, Value)]| v.first().and_then(|(id, _)| StreamId::parse(id));
        Ok((p(&first), p(&last)))
    }

    /// One batch of log entries after `after` (exclusive), at most `count`, read
    /// atomically with the proof that the log still reaches back to `after`.
    pub async fn log_replay(&self, after: StreamId, count: usize) -> Result<Replay, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.log_replay.prepare_invoke();
        inv.key(self.keys.log()).arg(after.to_string()).arg(count);
        let v: Vec<Value> = self.call(inv.invoke_async(&mut conn)).await?;
        let mut it = v.into_iter();
        let tag = it.next().as_ref().and_then(as_string).unwrap_or_default();
        match tag.as_str() {
            "trimmed" => Ok(Replay::Trimmed),
            "empty" => Ok(Replay::Empty),
            "beyond" => {
                let last = it.next().map(|v| parse_pos(&v)).transpose()?;
                Ok(Replay::Beyond(last.unwrap_or(StreamId::ZERO)))
            }
            "ok" => {
                let entries = match it.next() {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let mut out = Vec::with_capacity(entries.len());
                for (id, fields) in entries_ids(entries) {
                    let Some(id) = StreamId::parse(&id) else {
                        return Err(StoreError::Redis(format!("log entry with a bad id {id:?}")));
                    };
                    let mut keys = None;
                    if let Value::Array(f) = fields {
                        let mut it = f.into_iter();
                        while let (Some(k), Some(val)) = (it.next(), it.next()) {
                            if as_string(&k).as_deref() == Some("keys") {
                                keys = as_string(&val);
                            }
                        }
                    }
                    out.push((id, keys));
                }
                Ok(Replay::Entries(out))
            }
            other => Err(StoreError::Redis(format!(
                "log_replay returned an unexpected tag {other:?}"
            ))),
        }
    }

    /// Publishes this daemon's heartbeat (see `lua/heartbeat.lua`).
    pub async fn heartbeat(&self, channel: &str, token: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.epoch())
            .key(self.keys.log())
            .arg(channel)
            .arg(token);
        self.call(inv.invoke_async(&mut conn)).await
    }

    /// Publishes on a channel through the command connection.
    pub async fn publish(&self, channel: &str, msg: &str) -> Result<u64, StoreError> {
        self.cmd(redis::cmd("PUBLISH").arg(channel).arg(msg)).await
    }
}

/// The command connection, with `WAIT` pipelined after every script run
/// through it: the reply of `WAIT` (replicas that confirmed everything this
/// connection wrote so far) is kept in `confirmed`. One pipeline, so both go
/// over the same connection even if the manager reconnects in between.
struct WaitConn {
    inner: ConnectionManager,
    replicas: u32,
    wait_ms: u64,
    confirmed: Option<i64>,
}

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
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone())
                .cmd("WAIT")
                .arg(self.replicas)
                .arg(self.wait_ms);
            let mut replies = self.inner.req_packed_commands(&pipe, 0, 2).await?;
            let wait = replies.pop();
            let reply = replies.pop().unwrap_or(Value::Nil);
            self.confirmed = match wait {
                Some(Value::Int(n)) => Some(n),
                _ => None,
            };
            reply.extract_error()
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

fn entries_ids(v: Vec<Value>) -> Vec<(String, Value)> {
    v.into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if parts.len() == 2 => {
                let fields = parts.pop()?;
                let id = as_string(&parts.pop()?)?;
                Some((id, fields))
            }
            _ => None,
        })
        .collect()
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn parse_pos(v: &Value) -> Result<StreamId, StoreError> {
    as_string(v)
        .and_then(|s| StreamId::parse(&s))
        .ok_or_else(|| StoreError::Redis(format!("expected a stream id, got {v:?}")))
}

fn opt_string(v: Value) -> Result<Option<String>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        other => as_string(&other)
            .map(Some)
            .ok_or_else(|| StoreError::Redis("expected a string".into())),
    }
}

fn opt_u64(v: Value) -> Result<Option<u64>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        Value::Int(i) => Ok(Some(i.max(0) as u64)),
        _ => Err(StoreError::Redis("expected an integer".into())),
    }
}

fn l2_value(value: Value, pttl: Value) -> Result<L2Value, StoreError> {
    let value = match value {
        Value::Nil => None,
        Value::BulkString(b) => Some(Bytes::from(b)),
        _ => return Err(StoreError::Redis("expected a bulk string value".into())),
    };
    let ttl_ms = match pttl {
        Value::Int(i) if i >= 0 => Some(i as u64),
        _ => None,
    };
    Ok(L2Value { value, ttl_ms })
}
