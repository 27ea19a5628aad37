//! The rules a configuration must keep beyond its types (sizes, durations,
//! policies, socket mode), checked once at load: a bad value is refused at
//! startup with the key it concerns, never discovered by a request.

use std::time::Duration;

use super::{Config, ConfigError, RATELIMIT_MAX_UNITS};

impl Config {
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
        if self.redis.prefix.contains(['{', '}']) {
            return bad(
                "redis.prefix",
                "must not contain `{` or `}`: shoal adds its own hash tags on Redis Cluster",
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
        let (shm, slot) = (
            self.cache.shm_bytes.as_u64(),
            self.cache.shm_slot_bytes.as_u64(),
        );
        if !(128..=1 << 20).contains(&slot) {
            return bad("cache.shm_slot_bytes", "must be between 128B and 1MiB");
        }
        if shm != 0 && shm < 4096 + slot {
            return bad(
                "cache.shm_bytes",
                "must be 0 (off) or hold a 4KiB header and one cache.shm_slot_bytes slot",
            );
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
