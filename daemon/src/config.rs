//! Configuration: the public, stable key names of shoald and how they are layered.
//!
//! Layers, later wins: built-in defaults, the TOML file given by `--config`, `SHOAL_*`
//! environment variables (`__` nests: `SHOAL_REDIS__URL`), then command-line flags.
//! Nothing unknown is accepted: a key or section this version does not know, in the
//! file or as a `SHOAL_*` variable, is an error naming it as the user wrote it (and
//! the file as given, or the variable), with the closest known name as a hint. A
//! typo must not start a daemon on the default Redis.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration of one daemon.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub socket: SocketConfig,
    pub redis: RedisConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    pub session: SessionConfig,
    pub ratelimit: RatelimitConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identifies this daemon in logs, the invalidation log and `hello`. Default: hostname.
    pub id: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let id = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "shoald".to_string());
        NodeConfig { id }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Octal permission bits of the socket file, as a string ("0660").
    pub mode: String,
    pub max_frame: ByteSize,
    pub max_connections: usize,
    /// Requests one connection may have in flight before the daemon stops reading it.
    pub max_inflight: usize,
    /// Longest key, tag, user or policy name, in bytes.
    pub max_key: usize,
    /// Most keys in one `cache.mget` or `cache.invalidate`.
    pub max_batch: usize,
    /// A connection with nothing in flight and nothing received for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deadline for writing one batch of responses: a peer that does not take
    /// them within it (it stopped reading) is disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: PathBuf::from("/run/shoal/shoal.sock"),
            mode: "0660".into(),
            max_frame: ByteSize::mib(16),
            max_connections: 1024,
            max_inflight: 256,
            max_key: 4096,
            max_batch: 10_000,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS, `redis+unix:///path`.
    pub url: String,
    /// Prefixes every key shoal writes, so shoal can share a Redis with other users.
    pub prefix: String,
    /// Deadline of one Redis command (and of one connection attempt).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Interval of the Redis health watch (`INFO` + `PING`): memory, evictions,
    /// eviction policy for `/metrics`, and a log warning when keys are evicted.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Deadlines missed in a row that open the circuit breaker (a hung Redis):
    /// requests then take their fail mode at once. 0 disables the breaker.
    pub circuit_timeouts: u32,
    /// While the circuit is open, one call per this interval probes Redis; the
    /// first answer closes the circuit.
    #[serde(with = "humantime_serde")]
    pub circuit_probe: Duration,
    /// Redis behind Sentinel: the primary is found through the sentinels and
    /// followed across failovers. Exclusive with `url` and `cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster (seed nodes). Exclusive with `url` and `sentinel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `redis.url` unless the user set it: with `[redis.sentinel]` or
/// `[redis.cluster]` it must stay unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `[redis.sentinel]`: where the sentinels are and which primary to follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub master: String,
    /// Sentinel addresses, `redis://host:26379` (credentials may be given here
    /// or as `sentinel_username` / `sentinel_password`).
    pub urls: Vec<String>,
    /// ACL user of the sentinels (empty: none or the one in the URL).
    pub sentinel_username: String,
    /// Password of the sentinels (empty: none or the one in the URL).
    pub sentinel_password: Secret,
    /// ACL user of the data nodes (primary and replicas).
    pub username: String,
    /// Password of the data nodes (`requirepass` / ACL).
    pub password: Secret,
    /// Database number on the data nodes.
    pub db: i64,
    /// Replicas that must confirm a cache write, invalidation, session or lock
    /// change (`WAIT`) before shoal acknowledges it: an acknowledged change
    /// survives a failover. 0 acknowledges on the primary's word alone (a
    /// failover may then lose acknowledged invalidations and revocations).
    pub wait_replicas: u32,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            master: String::new(),
            urls: Vec::new(),
            sentinel_username: String::new(),
            sentinel_password: Secret::default(),
            username: String::new(),
            password: Secret::default(),
            db: 0,
            wait_replicas: 1,
        }
    }
}

/// `[redis.cluster]`: seed nodes of a Redis Cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Seed nodes, `redis://host:port`; the rest of the cluster is discovered.
    pub urls: Vec<String>,
}

/// Why shoald refuses `[redis.cluster]` (exit code 64).
pub const CLUSTER_UNSUPPORTED: &str = "[redis.cluster]: Redis Cluster is not supported by this \
     version of shoald yet (issue #16); use redis.url (standalone) or [redis.sentinel] \
     (`shoalctl doctor` can inspect the cluster)";

/// Which Redis deployment shoal talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Sentinel,
    Cluster,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        }
    }
}

impl RedisConfig {
    /// The topology the configuration names.
    pub fn topology(&self) -> Topology {
        if self.sentinel.is_some() {
            Topology::Sentinel
        } else if self.cluster.is_some() {
            Topology::Cluster
        } else {
            Topology::Standalone
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_REDIS_URL.into(),
            prefix: "shoal:".into(),
            timeout: Duration::from_millis(500),
            watch_interval: Duration::from_secs(10),
            circuit_timeouts: 3,
            circuit_probe: Duration::from_millis(500),
            sentinel: None,
            cluster: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (health, readiness, metrics). Empty disables it.
    pub listen: String,
    /// Most keys (tenants) per policy that `/quotas` shows; the busiest first is
    /// not knowable without scanning, so this bounds the Redis work of one page.
    pub quota_max_keys: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9464".into(),
            quota_max_keys: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound of the in-memory L1 (keys + values + per-entry overhead).
    pub l1_max_bytes: ByteSize,
    /// Longest an entry stays in L1, whatever its L2 TTL.
    #[serde(with = "humantime_serde")]
    pub l1_max_ttl: Duration,
    /// TTL of `cache.set` without `ttl_ms`.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Lifetime of a fill lease.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Approximate length the invalidation log is trimmed to (`XADD MAXLEN ~`).
    pub invalidation_log_len: u64,
    /// Random extra TTL on `cache.set`, as a fraction of the TTL (0.1 = up to +10 %),
    /// so keys written together do not all expire together.
    pub ttl_jitter: f64,
    /// Interval of the heartbeat each daemon publishes to its own channel. A
    /// heartbeat sent at time t and heard back proves that every change completed
    /// before t has been applied here (Pub/Sub delivers in order).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Δ, the staleness bound: L1 (and the local session cache) answers only while
    /// the newest delivery proof is younger than this; past it, reads go to Redis
    /// and a subscriber with no proof is treated as dead. No daemon returns from L1
    /// a value overwritten more than Δ before the read began. At least 2 × heartbeat.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1_max_bytes: ByteSize::mib(64),
            l1_max_ttl: Duration::from_secs(60),
            default_ttl: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(2),
            invalidation_log_len: 100_000,
            ttl_jitter: 0.0,
            heartbeat: Duration::from_millis(50),
            max_staleness: Duration::from_millis(250),
        }
    }
}

/// What a request that needs Redis gets while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionUnavailable {
    /// Answer `unavailable`.
    Deny,
    /// Serve sessions this daemon validated recently, for at most `max_stale`.
    Cached,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub absolute_ttl: Duration,
    pub on_unavailable: SessionUnavailable,
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// Share of the idle window that must pass before a `session.get` refreshes
    /// the sliding expiry in Redis (coalesces writes of busy sessions).
    pub touch_fraction: f64,
    /// Bound of the local cache of validated sessions.
    pub local_max_entries: u64,
    /// Approximate length the revocation stream is trimmed to.
    pub revocation_log_len: u64,
    /// Secret key of the keyed hash (HMAC-SHA256) that names sessions in Redis,
    /// at least 32 bytes, the same on every daemon. Empty: a random key kept in
    /// Redis (`{prefix}skey`) is used, created by the first daemon that needs it.
    pub token_hash_key: Secret,
}

/// A secret string (e.g. `session.token_hash_key`): read and written like a
/// string, never shown by `Debug`, so a logged config cannot leak it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_ttl: Duration::from_secs(30 * 60),
            absolute_ttl: Duration::from_secs(24 * 3600),
            on_unavailable: SessionUnavailable::Deny,
            max_stale: Duration::from_secs(30),
            touch_fraction: 0.1,
            local_max_entries: 100_000,
            revocation_log_len: 100_000,
            token_hash_key: Secret::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    FixedWindow,
    SlidingLog,
    SlidingCounter,
    TokenBucket,
    Gcra,
    /// An in-flight limiter: `limit` leases at once, each expiring after `window`
    /// unless released (`ratelimit.acquire_concurrent` / `ratelimit.release`).
    Concurrency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Allow every request while Redis is unreachable.
    Open,
    /// Deny every request while Redis is unreachable.
    Closed,
    /// Count locally, allowing this daemon's share of the limit.
    Local,
}

/// A per-key override of a policy's numbers (a tenant on a bigger plan).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub limit: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub algorithm: Algorithm,
    pub limit: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default = "default_fail_mode")]
    pub on_unavailable: FailMode,
    /// Daemons expected to share this limit; `local` fail mode allows `limit / expected_nodes`.
    #[serde(default = "default_expected_nodes")]
    pub expected_nodes: u64,
    #[serde(default)]
    pub overrides: BTreeMap<String, PolicyOverride>,
    /// How far ahead `ratelimit.reserve` may book (default: three windows).
    /// Bounds what one key can hold however long callers are willing to wait.
    #[serde(default, with = "humantime_serde")]
    pub max_reserve_ahead: Option<Duration>,
    /// Which rate-limit headers the client's `Decision::headers()` writes for
    /// this policy (express-rate-limit's spellings). Unset: shoal's default
    /// (draft-8 `RateLimit`/`RateLimit-Policy` plus relative `X-RateLimit-*`).
    #[serde(default)]
    pub headers: Option<HeaderStyle>,
    /// Abuse lockout: once a key goes over the limit it is denied for this long,
    /// fleet-wide (brute-force login protection). Unset: no lockout.
    #[serde(default, with = "humantime_serde")]
    pub block: Option<Duration>,
}

/// express-rate-limit's header styles (`standardHeaders` / `legacyHeaders`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderStyle {
    /// `RateLimit-Policy: 100;w=60` and `RateLimit: limit=100, remaining=99, reset=40`.
    #[serde(rename = "draft-7")]
    Draft7,
    /// `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=99;t=40`.
    #[serde(rename = "draft-8")]
    Draft8,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix seconds).
    #[serde(rename = "legacy")]
    Legacy,
}

impl HeaderStyle {
    /// The wire spelling (the decision's `headers` field).
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderStyle::Draft7 => "draft-7",
            HeaderStyle::Draft8 => "draft-8",
            HeaderStyle::Legacy => "legacy",
        }
    }
}

fn default_fail_mode() -> FailMode {
    FailMode::Closed
}

fn default_expected_nodes() -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatelimitConfig {
    pub policies: BTreeMap<String, PolicyConfig>,
    /// How often each daemon looks for runtime overrides changed elsewhere
    /// (`ratelimit.set_override` through another daemon, or `shoalctl`).
    #[serde(with = "humantime_serde")]
    pub override_refresh: Duration,
    /// Bound of the local deny cache (keys known denied until a time, answered
    /// without Redis). 0 disables it. Full: the least recently used go.
    pub deny_cache_entries: usize,
    /// Bound of the `local` fail mode's per-key state (and local leases) per
    /// policy while Redis is unreachable. Full: the least recently used go.
    pub local_max_entries: u64,
}

impl Default for RatelimitConfig {
    fn default() -> Self {
        RatelimitConfig {
            policies: BTreeMap::new(),
            override_refresh: Duration::from_secs(1),
            deny_cache_entries: 100_000,
            local_max_entries: 100_000,
        }
    }
}

/// Largest `limit` (or `burst`) times `window` in ms: the scripts count in
/// units of 1/window per request, and Lua numbers are exact only below 2^53.
pub const RATELIMIT_MAX_UNITS: u64 = 1 << 53;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint for traces; unset disables export.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `grpc`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    pub otlp_protocol: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people; colour only on a terminal) or `json` (one object a
    /// line, for log collectors) on stderr.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight requests before closing connections.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// A configuration that cannot be used. The binary exits with code 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not fit its key (wrong type, unreadable file).
    #[error("configuration error: {0}")]
    Parse(String),
    #[error("configuration error: `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration error: unknown key `{key}` in {file}{hint}")]
    UnknownKey {
        key: String,
        file: String,
        hint: String,
    },
    #[error("configuration error: unknown environment variable {var}{hint}")]
    UnknownEnv { var: String, hint: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

/// `SHOAL_*` variables that are not configuration keys: read by shoald itself
/// (the config file, the log and span filters), by applications (`SHOAL_SOCKET`,
/// where an app's client connects) or by the test and bench harness.
pub const ENV_NOT_CONFIG: &[&str] = &["SHOAL_CONFIG", "SHOAL_LOG", "SHOAL_TRACE", "SHOAL_SOCKET"];
/// Prefixes of `SHOAL_*` variables that are not configuration keys.
pub const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["SHOAL_TEST_", "SHOAL_BENCH_"];

/// Keys that moved: the old name gets the new one as its hint.
const MOVED: &[(&str, &str)] = &[("telemetry.log_format", "log.format")];

fn env_is_config(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    upper.starts_with("SHOAL_")
        && !ENV_NOT_CONFIG.contains(&upper.as_str())
        && !ENV_NOT_CONFIG_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// The key tree of the configuration: every section and key this version knows.
fn schema() -> serde_json::Value {
    // The optional sections are absent from the defaults but known keys.
    let mut c = Config::default();
    c.redis.sentinel = Some(SentinelConfig::default());
    c.redis.cluster = Some(ClusterConfig::default());
    serde_json::to_value(c).unwrap_or_default()
}

/// Below this path names are the user's (policy names, tenant keys).
fn is_free_form(path: &[String]) -> bool {
    path.len() >= 2 && path[0] == "ratelimit" && path[1] == "policies"
}

/// Every dotted path of `schema` (sections and keys), with whether it is a section.
fn known_paths(schema: &serde_json::Value) -> Vec<(String, bool)> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, bool)>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push((path.clone(), v.is_object()));
                if path != "ratelimit.policies" {
                    walk(v, &path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The known dotted path closest to `key`, if it is close enough to be a typo.
fn closest(key: &str, known: &[(String, bool)]) -> Option<(String, bool)> {
    if let Some((_, to)) = MOVED.iter().find(|(from, _)| *from == key) {
        return Some((to.to_string(), false));
    }
    known
        .iter()
        .map(|(p, section)| (edit_distance(key, p), p, *section))
        .filter(|(d, _, _)| *d <= 3 && *d * 3 <= key.len().max(3))
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, p, s)| (p.clone(), s))
}

/// How a known dotted path is written in a TOML file.
fn as_toml(path: &str, section: bool) -> String {
    match (section, path.rsplit_once('.')) {
        (true, _) => format!("[{path}]"),
        (false, Some((table, key))) => format!("`{key}` in [{table}]"),
        (false, None) => format!("`{path}`"),
    }
}

/// Keys of `table` (at `path`) that `schema` does not know.
fn unknown_in(
    table: &toml::Table,
    schema: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    if is_free_form(path) {
        return;
    }
    for (k, v) in table {
        path.push(k.clone());
        match schema.get(k) {
            None => out.push(path.join(".")),
            Some(s) => {
                if let toml::Value::Table(t) = v {
                    unknown_in(t, s, path, out);
                }
            }
        }
        path.pop();
    }
}

/// The first key of the TOML file at `file` that this version does not know.
/// A file that does not parse is left to the loader, which says where.
fn check_file(file: &Path) -> Result<(), ConfigError> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let schema = schema();
    let mut unknown = Vec::new();
    unknown_in(&table, &schema, &mut Vec::new(), &mut unknown);
    let Some(key) = unknown.into_iter().next() else {
        return Ok(());
    };
    let hint = closest(&key, &known_paths(&schema))
        .map(|(p, section)| format!(" (did you mean {}?)", as_toml(&p, section)))
        .unwrap_or_default();
    Err(ConfigError::UnknownKey {
        key,
        file: file.display().to_string(),
        hint,
    })
}

/// The environment variable that sets dotted `key`.
pub fn env_name(key: &str) -> String {
    format!("SHOAL_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The first `SHOAL_*` variable of `vars` that names no configuration key.
pub fn check_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let schema = schema();
    let known = known_paths(&schema);
    for (var, _) in vars {
        if !env_is_config(&var) {
            continue;
        }
        let path: Vec<String> = var["SHOAL_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let mut node = &schema;
        let mut ok = true;
        for (i, seg) in path.iter().enumerate() {
            if is_free_form(&path[..i]) {
                break;
            }
            match node.get(seg) {
                Some(n) => node = n,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            continue;
        }
        let leaves: Vec<(String, bool)> = known
            .iter()
            .filter(|(_, section)| !section)
            .map(|(p, _)| (env_name(p), false))
            .collect();
        let hint = closest(&var.to_ascii_uppercase(), &leaves)
            .map(|(v, _)| format!(" (did you mean {v}?)"))
            .unwrap_or_else(|| {
                " (configuration variables are SHOAL_<SECTION>__<KEY>, e.g. SHOAL_REDIS__URL)"
                    .into()
            });
        return Err(ConfigError::UnknownEnv { var, hint });
    }
    Ok(())
}

/// A loader error in the user's terms: the key as written (no profile name),
/// where it came from (the file as given, the variable, the flag) and what is wrong.
fn render(e: &figment::Error, file: Option<&Path>) -> ConfigError {
    let key = e.path.join(".");
    let source = match e.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => {
                let shown = file.filter(|f| p.ends_with(f) || *f == p.as_path());
                format!(" in {}", shown.unwrap_or(p).display())
            }
            _ if m.name.contains("environment") => format!(" from {}", env_name(&key)),
            _ if m.name.contains("erialized") => " from a command-line flag".to_string(),
            _ => String::new(),
        },
        None => String::new(),
    };
    if key.is_empty() {
        ConfigError::Parse(format!("{}{source}", e.kind))
    } else {
        ConfigError::Parse(format!("`{key}`{source}: {}", e.kind))
    }
}

impl Config {
    /// Defaults, then `file` (if any), then `SHOAL_*` environment variables.
    /// Flags are layered on top by the caller with [`Config::figment`].
    /// Refuses a key or variable this version does not know.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            check_file(path)?;
            fig = fig.merge(Toml::file_exact(path));
        }
        check_env(
            std::env::vars_os().filter_map(|(k, v)| {
                Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
            }),
        )?;
        Ok(fig.merge(
            Env::prefixed("SHOAL_")
                .filter(|k| env_is_config(&format!("SHOAL_{k}")))
                .split("__"),
        ))
    }

    /// Extracts and validates a configuration from a figment. `file` is the
    /// configuration file as the user gave it, for messages.
    pub fn from_figment(fig: Figment, file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| render(&e, file))?;
        // `redis.url` given by the user (file, variable or flag), even when it
        // equals the default, next to another topology: which one was meant?
        let url_given = fig
            .find_metadata("redis.url")
            .is_some_and(|m| m.name != std::any::type_name::<Config>());
        if url_given && config.redis.topology() != Topology::Standalone {
            return Err(ConfigError::Invalid {
                key: "redis.url".into(),
                problem: format!(
                    "is set together with [redis.{}]: configure exactly one of redis.url, \
                     [redis.sentinel] and [redis.cluster]",
                    config.redis.topology().as_str()
                ),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Loads defaults + file + environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(file)?, file)
    }

    /// A copy safe to show: the Redis password and `session.token_hash_key` redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.redis.url = redact_url(&c.redis.url);
        if let Some(s) = c.redis.sentinel.as_mut() {
            s.urls = s.urls.iter().map(|u| redact_url(u)).collect();
            for p in [&mut s.password, &mut s.sentinel_password] {
                if !p.is_empty() {
                    *p = Secret("<redacted>".into());
                }
            }
        }
        if let Some(c) = c.redis.cluster.as_mut() {
            c.urls = c.urls.iter().map(|u| redact_url(u)).collect();
        }
        if !c.session.token_hash_key.is_empty() {
            c.session.token_hash_key = Secret("<redacted>".into());
        }
        c
    }

    /// The socket mode as permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let s = self.socket.mode.trim_start_matches("0o");
        u32::from_str_radix(s, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                key: "socket.mode".into(),
                problem: format!("must be octal permission bits like \"0660\", got {s:?}"),
            })
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, problem: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key: key.into(),
                problem: problem.into(),
            })
        }
        self.socket_mode()?;
        if self.node.id.is_empty() || self.node.id.len() > 256 {
            return bad("node.id", "must be 1 to 256 bytes");
        }
        if self.socket.path.as_os_str().is_empty() {
            return bad("socket.path", "must not be empty");
        }
        let max_frame = self.socket.max_frame.as_u64();
        if !(1024..=u64::from(u32::MAX)).contains(&max_frame) {
            return bad("socket.max_frame", "must be between 1KiB and 4GiB");
        }
        if self.socket.max_connections == 0 {
            return bad("socket.max_connections", "must be at least 1");
        }
        if self.socket.max_inflight == 0 {
            return bad("socket.max_inflight", "must be at least 1");
        }
        if self.socket.max_key == 0 || self.socket.max_key as u64 > max_frame {
            return bad(
                "socket.max_key",
                "must be at least 1 and below socket.max_frame",
            );
        }
        if self.socket.max_batch == 0 {
            return bad("socket.max_batch", "must be at least 1");
        }
        if self.socket.write_timeout.is_zero() {
            return bad("socket.write_timeout", "must be above 0");
        }
        if self.redis.prefix.is_empty() {
            return bad(
                "redis.prefix",
                "must not be empty (it keeps shoal's keys apart)",
            );
        }
        if self.redis.timeout.is_zero() {
            return bad("redis.timeout", "must be positive");
        }
        if self.redis.watch_interval < Duration::from_millis(10) {
            return bad("redis.watch_interval", "must be at least 10ms");
        }
        if self.admin.quota_max_keys == 0 {
            return bad("admin.quota_max_keys", "must be at least 1");
        }
        if !self.redis.url.contains("://") {
            return bad(
                "redis.url",
                format!(
                    "{:?} has no scheme: write redis://{} (rediss:// for TLS, redis+unix:///path for a socket)",
                    self.redis.url, self.redis.url
                ),
            );
        }
        if let Err(e) = redis::Client::open(self.redis.url.as_str()) {
            return bad("redis.url", format!("is not a usable Redis URL: {e}"));
        }
        self.validate_topology()?;
        if self.cache.l1_max_ttl.is_zero() {
            return bad("cache.l1_max_ttl", "must be positive");
        }
        if self.cache.default_ttl.is_zero() {
            return bad("cache.default_ttl", "must be positive");
        }
        if self.cache.lease_ttl.is_zero() {
            return bad("cache.lease_ttl", "must be positive");
        }
        if self.cache.heartbeat.is_zero() {
            return bad("cache.heartbeat", "must be positive");
        }
        if self.cache.max_staleness <= self.cache.heartbeat * 2 {
            return bad(
                "cache.max_staleness",
                format!(
                    "must be more than twice cache.heartbeat ({:?}): a daemon proves it is caught up once per heartbeat",
                    self.cache.heartbeat
                ),
            );
        }
        if self.cache.invalidation_log_len < 100 {
            return bad("cache.invalidation_log_len", "must be at least 100");
        }
        if !(0.0..=1.0).contains(&self.cache.ttl_jitter) {
            return bad("cache.ttl_jitter", "must be a fraction between 0 and 1");
        }
        if self.session.idle_ttl.is_zero() || self.session.absolute_ttl.is_zero() {
            return bad(
                "session.idle_ttl",
                "idle and absolute TTLs must be positive",
            );
        }
        if !(0.0..=1.0).contains(&self.session.touch_fraction) {
            return bad(
                "session.touch_fraction",
                "must be a fraction between 0 and 1",
            );
        }
        if !self.session.token_hash_key.is_empty() && self.session.token_hash_key.0.len() < 32 {
            return bad(
                "session.token_hash_key",
                "must be empty or at least 32 bytes",
            );
        }
        if self.session.revocation_log_len < 100 {
            return bad("session.revocation_log_len", "must be at least 100");
        }
        if self.ratelimit.override_refresh.is_zero() {
            return bad("ratelimit.override_refresh", "must be positive");
        }
        for (name, p) in &self.ratelimit.policies {
            let key = |k: &str| format!("ratelimit.policies.{name}.{k}");
            // Names go into Redis keys as `{policy:key}`: a `:` or a brace would
            // make two policies share state.
            if name.is_empty()
                || name.len() > 128
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return bad(
                    &format!("ratelimit.policies.{name}"),
                    "a policy name must be 1 to 128 of A-Z a-z 0-9 _ - .",
                );
            }
            if p.limit == 0 {
                return bad(&key("limit"), "must be at least 1");
            }
            let window_ms = u64::try_from(p.window.as_millis()).unwrap_or(u64::MAX);
            let units_ok = |n: u64| {
                n.checked_mul(window_ms)
                    .is_some_and(|u| u <= RATELIMIT_MAX_UNITS)
            };
            if !units_ok(p.limit.max(p.burst.unwrap_or(0))) {
                return bad(
                    &key("limit"),
                    "times the window in ms (and burst times it) must stay below 2^53",
                );
            }
            for (k, o) in &p.overrides {
                if !units_ok(o.limit.max(o.burst.unwrap_or(0))) {
                    return bad(
                        &key(&format!("overrides.{k}")),
                        "limit (and burst) times the window in ms must stay below 2^53",
                    );
                }
            }
            if p.window.as_millis() == 0 {
                return bad(&key("window"), "must be at least 1ms");
            }
            if p.burst == Some(0) {
                return bad(&key("burst"), "must be at least 1");
            }
            if p.expected_nodes == 0 {
                return bad(&key("expected_nodes"), "must be at least 1");
            }
            for (k, o) in &p.overrides {
                if o.limit == 0 || o.burst == Some(0) {
                    return bad(
                        &key(&format!("overrides.{k}")),
                        "limit and burst must be at least 1",
                    );
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// Exactly one of `redis.url`, `[redis.sentinel]`, `[redis.cluster]`, each complete.
    fn validate_topology(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, problem: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key: key.into(),
                problem: problem.into(),
            })
        }
        let r = &self.redis;
        if r.sentinel.is_some() && r.cluster.is_some() {
            return bad(
                "redis.cluster",
                "is set together with [redis.sentinel]: configure exactly one of redis.url, \
                 [redis.sentinel] and [redis.cluster]",
            );
        }
        if r.topology() != Topology::Standalone && r.url != DEFAULT_REDIS_URL {
            return bad(
                "redis.url",
                format!(
                    "is set together with [redis.{}]: configure exactly one of redis.url, \
                     [redis.sentinel] and [redis.cluster]",
                    r.topology().as_str()
                ),
            );
        }
        let check_urls = |key: &str, urls: &[String]| -> Result<(), ConfigError> {
            if urls.is_empty() {
                return bad(key, "must list at least one address (redis://host:port)");
            }
            for u in urls {
                if !u.starts_with("redis://") && !u.starts_with("rediss://") {
                    return bad(
                        key,
                        format!("{:?} is not a redis:// or rediss:// address", redact_url(u)),
                    );
                }
                if let Err(e) = redis::Client::open(u.as_str()) {
                    return bad(
                        key,
                        format!("{:?} is not a usable address: {e}", redact_url(u)),
                    );
                }
            }
            Ok(())
        };
        if let Some(s) = &r.sentinel {
            if s.master.is_empty() {
                return bad(
                    "redis.sentinel.master",
                    "must name the primary the sentinels monitor (`sentinel monitor NAME ...`)",
                );
            }
            check_urls("redis.sentinel.urls", &s.urls)?;
            if s.db < 0 {
                return bad("redis.sentinel.db", "must not be negative");
            }
        }
        if let Some(c) = &r.cluster {
            // Valid to describe (`shoalctl doctor` inspects a cluster); shoald
            // itself refuses to run on one (`CLUSTER_UNSUPPORTED`).
            check_urls("redis.cluster.urls", &c.urls)?;
        }
        Ok(())
    }
}

/// `url` with its password replaced by `***` (the user name stays: it is not secret).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
            let masked = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// Where `url` points, without any credentials: `redis://host:port/db`, for logs
/// and for `admin.info`.
pub fn redis_address(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..host_start].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(Some(f.path()))
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn max_staleness_must_exceed_two_heartbeats() {
        let err = load_toml("[cache]\nheartbeat = \"200ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_staleness"), "{err}");
        let c = load_toml("[cache]\nheartbeat = \"200ms\"\nmax_staleness = \"401ms\"\n").unwrap();
        assert_eq!(c.cache.max_staleness, Duration::from_millis(401));
    }

    #[test]
    fn humane_durations_and_sizes() {
        let c = load_toml(
            "[cache]\nl1_max_bytes = \"8MiB\"\nl1_max_ttl = \"250ms\"\n[socket]\nmax_frame = 65536\n",
        )
        .unwrap();
        assert_eq!(c.cache.l1_max_bytes, ByteSize::mib(8));
        assert_eq!(c.cache.l1_max_ttl, Duration::from_millis(250));
        assert_eq!(c.socket.max_frame.as_u64(), 65536);
    }

    #[test]
    fn unknown_key_in_known_section_names_key_and_file() {
        let err = load_toml("[cache]\nl1_max_byte = \"8MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("l1_max_byte"), "{err}");
        assert!(err.contains(".toml") || err.contains("/tmp"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let err = load_toml("[redis]\ntimeout = 5\n").unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn unknown_sections_are_refused_with_a_hint() {
        let err = load_toml("[sesion]\nx = 1\n").unwrap_err().to_string();
        assert!(
            err.contains("`sesion`") && err.contains("[session]"),
            "{err}"
        );
        let err = load_toml("[telemetry]\nlog_format = \"json\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`format` in [log]"), "{err}");
    }

    #[test]
    fn env_typos_get_the_intended_name() {
        let var = |k: &str| vec![(k.to_string(), String::new())];
        let err = check_env(var("SHOAL_REDIS_URL")).unwrap_err().to_string();
        assert!(err.contains("SHOAL_REDIS__URL"), "{err}");
        check_env(var("SHOAL_REDIS__URL")).unwrap();
        check_env(var("SHOAL_RATELIMIT__POLICIES__API__LIMIT")).unwrap();
        check_env(var("SHOAL_SOCKET")).unwrap();
        check_env(var("SHOAL_TEST_SCREENSHOTS")).unwrap();
        check_env(var("HOME")).unwrap();
        assert!(check_env(var("SHOAL_NOPE")).is_err());
    }

    #[test]
    fn urls_are_redacted_and_addressed_without_credentials() {
        assert_eq!(redact_url("redis://app:pw@h:1/2"), "redis://app:***@h:1/2");
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redis_address("redis://app:p@w@h:1/2"), "redis://h:1/2");
        assert_eq!(
            redis_address("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }

    #[test]
    fn policies_parse() {
        let c = load_toml(
            "[ratelimit.policies.api]\nalgorithm = \"token_bucket\"\nlimit = 10\nwindow = \"1s\"\nburst = 20\non_unavailable = \"local\"\n[ratelimit.policies.api.overrides.big]\nlimit = 100\n",
        )
        .unwrap();
        let p = &c.ratelimit.policies["api"];
        assert_eq!(p.algorithm, Algorithm::TokenBucket);
        assert_eq!(p.overrides["big"].limit, 100);
    }
    #[test]
    fn exactly_one_redis_topology() {
        let sentinel =
            "[redis.sentinel]\nmaster = \"mymaster\"\nurls = [\"redis://127.0.0.1:26379\"]\n";
        let c = load_toml(sentinel).expect("a sentinel configuration");
        assert_eq!(c.redis.topology(), Topology::Sentinel);
        assert_eq!(c.redis.sentinel.as_ref().map(|s| s.wait_replicas), Some(1));

        // `url` next to a section, even the default URL written out.
        for url in ["redis://10.0.0.1:6379", DEFAULT_REDIS_URL] {
            let e = load_toml(&format!("[redis]\nurl = \"{url}\"\n{sentinel}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("redis.url") && e.contains("exactly one"), "{e}");
        }
        let both = format!("{sentinel}[redis.cluster]\nurls = [\"redis://127.0.0.1:7000\"]\n");
        let e = load_toml(&both).unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");

        let e = load_toml("[redis.sentinel]\nurls = [\"redis://h:26379\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.sentinel.master"), "{e}");
        let e = load_toml("[redis.sentinel]\nmaster = \"m\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.sentinel.urls"), "{e}");
        let e = load_toml("[redis.sentinel]\nmaster = \"m\"\nurls = [\"h:26379\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.sentinel.urls"), "{e}");
        let e = load_toml("[redis.sentinel]\nmastr = \"m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("redis.sentinel.master"),
            "a typo gets a hint: {e}"
        );

        // A cluster is described (doctor inspects it); shoald refuses to run on it.
        let c = load_toml("[redis.cluster]\nurls = [\"redis://127.0.0.1:7000\"]\n")
            .expect("a cluster configuration");
        assert_eq!(c.redis.topology(), Topology::Cluster);
        let e = load_toml("[redis.cluster]\nurls = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.cluster.urls"), "{e}");
    }

    #[test]
    fn sentinel_secrets_are_redacted() {
        let c = load_toml(
            "[redis.sentinel]\nmaster = \"m\"\nurls = [\"redis://:spw@h:26379\"]\npassword = \"npw\"\nsentinel_password = \"spw2\"\n",
        )
        .expect("valid");
        let shown = toml::to_string(&c.redacted()).expect("printable");
        for secret in ["spw", "npw"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn every_topology_key_is_documented() {
        let doc = include_str!("../../config/shoal.toml");
        let schema = schema();
        for (path, _) in known_paths(&schema) {
            let Some(key) = path
                .strip_prefix("redis.sentinel.")
                .or_else(|| path.strip_prefix("redis.cluster."))
            else {
                continue;
            };
            assert!(
                doc.contains(&format!("# {key} = ")),
                "config/shoal.toml does not document {path}"
            );
        }
        assert!(doc.contains("# [redis.sentinel]") && doc.contains("# [redis.cluster]"));
    }
}
