//! Configuration: the public, stable key names of shoald and how they are layered.
//!
//! Layers, later wins: built-in defaults, the TOML file given by `--config`, `SHOAL_*`
//! environment variables (`__` nests: `SHOAL_REDIS__URL`), then command-line flags.
//! Nothing unknown is accepted: a key or section this version does not know, in the
//! file or as a `SHOAL_*` variable, is an error naming it as the user wrote it (and
//! the file as given, or the variable), with the closest known name as a hint. A
//! typo must not start a daemon on the default Redis.

mod load;
mod redact;
mod topology;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use load::{check_env, env_name, ENV_NOT_CONFIG, ENV_NOT_CONFIG_PREFIXES};
pub use redact::{redact_url, redis_address};
pub use topology::{ClusterConfig, SentinelConfig, Topology, DEFAULT_REDIS_URL, MAX_BUCKETS};

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
    /// Size of the shared-memory L1 that same-host clients map read-only and
    /// answer hits from without a system call (0 turns it off).
    pub shm_bytes: ByteSize,
    /// Size of one shared-memory slot; a key plus value longer than it (less 48
    /// bytes of slot header) stays on the socket path.
    pub shm_slot_bytes: ByteSize,
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
            shm_bytes: ByteSize::mib(16),
            shm_slot_bytes: ByteSize::kib(1),
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

impl Config {
    /// A copy safe to show: the Redis password and `session.token_hash_key` redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.redis.url = redact_url(&c.redis.url);
        c.redact_topology();
        if !c.session.token_hash_key.is_empty() {
            c.session.token_hash_key = Secret("<redacted>".into());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    /// `text` as a configuration file (shared with the other config tests).
    pub(crate) fn load_toml(text: &str) -> Result<Config, ConfigError> {
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
}
