//! `KeyNames`: the Redis key and channel names of the cache (values, leases,
//! tags, the invalidation log and channel, heartbeats, the epoch), all under
//! `redis.prefix`.
//!
//! On Redis Cluster the cache is spread over `redis.cluster.buckets` hash-tag
//! groups: bucket(key) = `CLUSTER KEYSLOT key` mod buckets, and bucket N uses
//! the same names under the prefix `PREFIX{bN}:`, so a key's value, lease, tag
//! sets, the bucket's log, channel and epoch share one slot and every script
//! touches one slot.

/// Redis Cluster's slot of a key (shared with the shared-memory reader).
pub use shoal_client::keyslot::keyslot;

/// Names of every key, channel and stream shoal uses under `redis.prefix`.
#[derive(Debug, Clone)]
pub struct KeyNames {
    pub(super) prefix: String,
}

impl KeyNames {
    pub fn new(prefix: &str) -> Self {
        KeyNames {
            prefix: prefix.to_string(),
        }
    }
    /// The names of bucket `n` on Redis Cluster (`PREFIX{bN}:`).
    pub fn bucket(prefix: &str, n: u16) -> Self {
        KeyNames {
            prefix: format!("{prefix}{{b{n}}}:"),
        }
    }
    /// The names of the sessions on Redis Cluster (`PREFIX{s}:`): one slot, so
    /// that a session, its user's index and the revocation stream meet in one
    /// script.
    pub fn cluster_sessions(prefix: &str) -> Self {
        KeyNames {
            prefix: format!("{prefix}{{s}}:"),
        }
    }
    /// The bucket that holds `key` among `buckets` (`CLUSTER KEYSLOT key` mod buckets).
    pub fn bucket_of(key: &str, buckets: u16) -> u16 {
        keyslot(key.as_bytes()) % buckets.max(1)
    }
    /// The names of the bucket that holds `key` on Redis Cluster.
    pub fn cluster_bucket(prefix: &str, key: &str, buckets: u16) -> Self {
        Self::bucket(prefix, Self::bucket_of(key, buckets))
    }
    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_one_slot_and_follows_keyslot() {
        // CLUSTER KEYSLOT foo = 12182, bar = 5061 (Redis documentation).
        assert_eq!(KeyNames::bucket_of("foo", 16384), 12182);
        assert_eq!(KeyNames::bucket_of("bar", 16384), 5061);
        assert_eq!(KeyNames::bucket_of("foo", 16), 12182 % 16);
        let k = KeyNames::cluster_bucket("shoal:", "user:1", 16);
        let slot = |s: &str| keyslot(s.as_bytes());
        let names = [
            k.value("user:1"),
            k.lease("user:1"),
            k.tag("t"),
            k.log(),
            k.channel(),
            k.epoch(),
            k.heartbeat_channel("x"),
        ];
        assert!(names.iter().all(|n| slot(n) == slot(&k.log())), "{names:?}");
        assert_eq!(keyslot(b"{user1000}.following"), keyslot(b"user1000"));
        assert_eq!(keyslot(b"foo{}{bar}"), keyslot(b"foo{}{bar}"));
        assert_ne!(keyslot(b"foo{}{bar}"), keyslot(b"bar"));
        assert_eq!(
            k.log(),
            format!("shoal:{{b{}}}:log", KeyNames::bucket_of("user:1", 16))
        );
    }
}
