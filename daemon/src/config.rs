//! Configuration: the public, stable key names of shoald and how they are layered.
//!
//! Layers, later wins: built-in defaults, the TOML file given by `--config`, `SHOAL_*`
//! environment variables (`__` nests: `SHOAL_REDIS__URL`), then command-line flags.
//! Every known section rejects unknown keys, so a typo is an error naming the key and
//! the file rather than a silently ignored setting; unknown *sections* are accepted
//! (with a warning) so a config written for a newer shoald still starts an older one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration of one daemon.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub node: NodeConfig,
    pub socket: SocketConfig,
    pub redis: RedisConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    pub session: SessionConfig,
    pub ratelimit: RatelimitConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
    /// Sections this version does not know; kept to warn about them, never used.
    #[serde(flatten, skip_serializing)]
    pub unknown_sections: BTreeMap<String, figment::value::Value>,
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
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "shoal:".into(),
            timeout: Duration::from_millis(500),
            watch_interval: Duration::from_secs(10),
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
    /// Interval of the heartbeat sent through the invalidation subscriber; a
    /// subscriber that misses three is treated as dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
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
            heartbeat: Duration::from_secs(1),
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
    /// without Redis). 0 disables it.
    pub deny_cache_entries: usize,
}

impl Default for RatelimitConfig {
    fn default() -> Self {
        RatelimitConfig {
            policies: BTreeMap::new(),
            override_refresh: Duration::from_secs(1),
            deny_cache_entries: 100_000,
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
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
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
    #[error("configuration error: {0}")]
    Parse(Box<figment::Error>),
    #[error("configuration error: `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

impl Config {
    /// Defaults, then `file` (if any), then `SHOAL_*` environment variables.
    /// Flags are layered on top by the caller with [`Config::figment`].
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        Ok(fig.merge(Env::prefixed("SHOAL_").split("__")))
    }

    /// Extracts and validates a configuration from a figment.
    pub fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads defaults + file + environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(file)?)
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
        if let Err(e) = redis::Client::open(self.redis.url.as_str()) {
            return bad("redis.url", format!("is not a usable Redis URL: {e}"));
        }
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
    fn unknown_sections_parse() {
        let c = load_toml("[future_feature]\nx = 1\n").unwrap();
        assert!(c.unknown_sections.contains_key("future_feature"));
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
