//! Policies as the daemon uses them: the config of one `[ratelimit.policies.NAME]`
//! resolved into Redis key names and per-key numbers (config overrides, then
//! runtime overrides from Redis), plus the local state each policy keeps (deny
//! cache, fail-mode counters).
//!
//! Numbers are resolved here, in the daemon, and passed to the scripts as
//! arguments: that keeps each script to the keys of one (policy, key) — one
//! Cluster slot — and lets the daemon refuse an impossible `cost` before any
//! Redis call.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use crate::config::{Algorithm, PolicyConfig};

use super::deny::DenyCache;
use super::local::LocalLimits;
pub use super::types::Numbers;

/// Short code of an algorithm in key names: state of a policy whose algorithm
/// changed between deploys is never read as the wrong type.
pub fn algorithm_code(a: Algorithm) -> &'static str {
    match a {
        Algorithm::FixedWindow => "fw",
        Algorithm::SlidingLog => "sl",
        Algorithm::SlidingCounter => "sc",
        Algorithm::TokenBucket => "tb",
        Algorithm::Gcra => "gcra",
        Algorithm::Concurrency => "cc",
    }
}

/// The wire/config spelling of an algorithm.
pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::FixedWindow => "fixed_window",
        Algorithm::SlidingLog => "sliding_log",
        Algorithm::SlidingCounter => "sliding_counter",
        Algorithm::TokenBucket => "token_bucket",
        Algorithm::Gcra => "gcra",
        Algorithm::Concurrency => "concurrency",
    }
}

/// One configured policy and its per-daemon state.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub algorithm: Algorithm,
    pub window_ms: u64,
    pub config: PolicyConfig,
    /// `{prefix}rl.{code}{{{name}:` — a key's state is this, the key, then `}`.
    /// The braces are a Redis Cluster hash tag: every key of one (policy, key)
    /// lands in one slot, and different keys spread over the cluster.
    state_prefix: String,
    /// `{prefix}rlo{{{name}}}`: runtime overrides of this policy.
    pub overrides_key: String,
    /// Runtime overrides (from Redis), by key.
    runtime: RwLock<HashMap<String, Numbers>>,
    /// Version of the override hash last loaded (`None`: no hash, or not loaded).
    pub loaded_version: Mutex<Option<i64>>,
    pub deny: DenyCache,
    pub local: LocalLimits,
    /// Decisions by (allowed, fallback): index `allowed * 4 + fallback`, with
    /// fallback 0 none, 1 open, 2 closed, 3 local (`/metrics`).
    pub decisions: [std::sync::atomic::AtomicU64; 8],
}

impl Policy {
    pub fn new(name: &str, config: &PolicyConfig, prefix: &str, deny: DenyCache) -> Policy {
        let window_ms = u64::try_from(config.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Policy {
            name: name.to_string(),
            algorithm: config.algorithm,
            window_ms,
            config: config.clone(),
            state_prefix: format!("{prefix}rl.{}{{{name}:", algorithm_code(config.algorithm)),
            overrides_key: format!("{prefix}rlo{{{name}}}"),
            runtime: RwLock::new(HashMap::new()),
            loaded_version: Mutex::new(None),
            deny,
            local: LocalLimits::default(),
            decisions: Default::default(),
        }
    }

    /// The Redis key of `key`'s state.
    pub fn state_key(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.state_prefix.len() + key.len() + 1);
        s.push_str(&self.state_prefix);
        s.push_str(key);
        s.push('}');
        s
    }

    /// The state-key prefix (for SCAN patterns).
    pub fn state_prefix(&self) -> &str {
        &self.state_prefix
    }

    /// The user key of a Redis key found by SCAN, if it is a state key of this
    /// policy (the sliding log's `…}:n` companions and foreign keys are not).
    pub fn key_of<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key
            .strip_prefix(self.state_prefix.as_str())?
            .strip_suffix('}')
            .filter(|k| !k.is_empty())
    }

    /// The policy's own numbers, before any override.
    pub fn base(&self) -> Numbers {
        Numbers {
            limit: self.config.limit,
            burst: self.config.burst.unwrap_or(self.config.limit),
        }
    }

    /// The numbers in force for `key`: a runtime override, else a config
    /// override, else the policy's own.
    pub fn numbers(&self, key: &str) -> Numbers {
        if let Some(n) = self
            .runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return *n;
        }
        match self.config.overrides.get(key) {
            Some(o) => Numbers {
                limit: o.limit,
                burst: o.burst.unwrap_or(o.limit),
            },
            None => self.base(),
        }
    }

    /// Applies one runtime override change made through this daemon.
    pub fn set_runtime(&self, key: &str, numbers: Option<Numbers>) {
        let mut map = self.runtime.write().unwrap_or_else(|p| p.into_inner());
        match numbers {
            Some(n) => map.insert(key.to_string(), n),
            None => map.remove(key),
        };
    }

    /// Replaces every runtime override (a refresh from Redis).
    pub fn replace_runtime(&self, all: HashMap<String, Numbers>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = all;
    }

    pub fn runtime_len(&self) -> usize {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// This daemon's share of `n` in `local` fail mode (at least 1).
    pub fn share(&self, n: u64) -> u64 {
        (n / self.config.expected_nodes.max(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{FailMode, PolicyOverride};
    use std::time::Duration;

    fn policy() -> Policy {
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert(
            "big".to_string(),
            PolicyOverride {
                limit: 100,
                burst: None,
            },
        );
        let cfg = PolicyConfig {
            algorithm: Algorithm::TokenBucket,
            limit: 10,
            window: Duration::from_secs(1),
            burst: Some(20),
            on_unavailable: FailMode::Local,
            expected_nodes: 3,
            overrides,
            max_reserve_ahead: None,
            headers: None,
            block: None,
        };
        Policy::new("api", &cfg, "shoal:", DenyCache::new(16))
    }

    #[test]
    fn keys_are_tagged_and_reversible() {
        let p = policy();
        let k = p.state_key("tenant:1");
        assert_eq!(k, "shoal:rl.tb{api:tenant:1}");
        assert_eq!(p.key_of(&k), Some("tenant:1"));
        // A key that itself ends in "}:n" is still told apart from a companion key.
        let odd = p.state_key("x}:n");
        assert_eq!(p.key_of(&odd), Some("x}:n"));
        assert_eq!(p.key_of("shoal:rl.tb{api:x}:n"), None);
        assert_eq!(p.key_of("shoal:rl.fw{api:x}"), None);
        assert_eq!(p.overrides_key, "shoal:rlo{api}");
    }

    #[test]
    fn overrides_take_precedence() {
        let p = policy();
        assert_eq!(
            p.numbers("x"),
            Numbers {
                limit: 10,
                burst: 20
            }
        );
        assert_eq!(
            p.numbers("big"),
            Numbers {
                limit: 100,
                burst: 100
            }
        );
        p.set_runtime("big", Numbers::new(5, Some(7)));
        assert_eq!(p.numbers("big"), Numbers { limit: 5, burst: 7 });
        p.set_runtime("big", None);
        assert_eq!(p.numbers("big").limit, 100);
        assert_eq!(p.share(10), 3);
        assert_eq!(p.share(2), 1);
    }

    #[test]
    fn stored_numbers_parse() {
        assert_eq!(Numbers::parse_stored("5"), Numbers::new(5, None));
        assert_eq!(Numbers::parse_stored("5:9"), Numbers::new(5, Some(9)));
        assert_eq!(Numbers::parse_stored("0"), None);
        assert_eq!(Numbers::parse_stored("x"), None);
        assert_eq!(Numbers::parse_stored("5:"), None);
        let n = Numbers::new(3, Some(4)).unwrap();
        assert_eq!(Numbers::parse_stored(&n.to_stored()), Some(n));
        assert!(n.fits(1000));
        assert!(!Numbers::new(u64::MAX / 2, None).unwrap().fits(1000));
    }
}
