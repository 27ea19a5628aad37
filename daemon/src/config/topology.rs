//! The Redis deployment shoal talks to: exactly one of `redis.url` (standalone),
//! `[redis.sentinel]` (the primary found and followed through sentinels) or
//! `[redis.cluster]` (seed nodes of a Redis Cluster, the rest discovered).
//! Two of them, or an incomplete section, is a configuration error naming the
//! key.

use serde::{Deserialize, Serialize};

use super::{redact_url, Config, ConfigError, RedisConfig, Secret};

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

/// `[redis.cluster]`: seed nodes of a Redis Cluster, and how shoal spreads
/// its cache over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Seed nodes, `redis://host:port`; the rest of the cluster is discovered.
    pub urls: Vec<String>,
    /// ACL user of the cluster's nodes.
    pub username: String,
    /// Password of the cluster's nodes (`requirepass` / ACL).
    pub password: Secret,
    /// Hash-tag groups the cache is spread over. Each bucket is one slot: its
    /// values, leases, tag sets, invalidation log and sharded channel live
    /// together, so every script touches one slot. More buckets spread the
    /// cache over more shards; each costs one heartbeat per `cache.heartbeat`.
    /// Must be the same for every daemon (and outside writer) of a fleet.
    pub buckets: u16,
    /// Replicas of a shard that must confirm a change (`WAIT`) before shoal
    /// acknowledges it, as `[redis.sentinel] wait_replicas`: an acknowledged
    /// change survives the failover of its shard.
    pub wait_replicas: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: Vec::new(),
            username: String::new(),
            password: Secret::default(),
            buckets: 16,
            wait_replicas: 1,
        }
    }
}

/// Largest `redis.cluster.buckets`.
pub const MAX_BUCKETS: u16 = 1024;

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

impl Config {
    /// Exactly one of `redis.url`, `[redis.sentinel]`, `[redis.cluster]`, each complete.
    pub(super) fn validate_topology(&self) -> Result<(), ConfigError> {
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
            check_urls("redis.cluster.urls", &c.urls)?;
            if c.buckets == 0 || c.buckets > MAX_BUCKETS {
                return bad(
                    "redis.cluster.buckets",
                    format!("must be between 1 and {MAX_BUCKETS}"),
                );
            }
        }
        Ok(())
    }
}

/// Whether `redis.url` was given by the user (file, variable or flag) rather
/// than left at its default: even the default URL written out, next to another
/// topology, is ambiguous.
pub(super) fn url_given(fig: &figment::Figment) -> bool {
    fig.find_metadata("redis.url")
        .is_some_and(|m| m.name != std::any::type_name::<Config>())
}

impl Config {
    /// The `[redis.sentinel]` and `[redis.cluster]` secrets redacted.
    pub(super) fn redact_topology(&mut self) {
        let c = self;
        if let Some(s) = c.redis.sentinel.as_mut() {
            s.urls = s.urls.iter().map(|u| redact_url(u)).collect();
            for p in [&mut s.password, &mut s.sentinel_password] {
                if !p.is_empty() {
                    *p = Secret("<redacted>".into());
                }
            }
        }
        if let Some(cl) = c.redis.cluster.as_mut() {
            cl.urls = cl.urls.iter().map(|u| redact_url(u)).collect();
            if !cl.password.is_empty() {
                cl.password = Secret("<redacted>".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::load::{known_paths, schema};
    use super::super::tests::load_toml;
    use super::*;

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
            e.contains("`master` in [redis.sentinel]"),
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
        let doc = include_str!("../../../config/shoal.toml");
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
