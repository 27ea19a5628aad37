//! `KeyNames`: the Redis key and channel names of the cache (values, leases,
//! tags, the invalidation log and channel, heartbeats, the epoch), all under
//! `redis.prefix`.

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
