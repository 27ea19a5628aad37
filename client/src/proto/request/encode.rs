//! Client side: a `Request` to its MessagePack body, written field by field with
//! `rmp` (optional fields left out when they hold their default).

use super::{Op, Request, RevokeTarget};

/// Writes map fields into a Vec, counting them for the map header. Writing to a
/// Vec cannot fail, so the results of `rmp::encode` are ignored.
struct W {
    buf: Vec<u8>,
    n: u32,
}

impl W {
    fn str(&mut self, s: &str) {
        let _ = rmp::encode::write_str(&mut self.buf, s);
    }
    fn field_str(&mut self, name: &str, v: &str) {
        self.n += 1;
        self.str(name);
        self.str(v);
    }
    fn field_uint(&mut self, name: &str, v: u64) {
        self.n += 1;
        self.str(name);
        let _ = rmp::encode::write_uint(&mut self.buf, v);
    }
    fn field_bool(&mut self, name: &str, v: bool) {
        self.n += 1;
        self.str(name);
        let _ = rmp::encode::write_bool(&mut self.buf, v);
    }
    fn field_bin(&mut self, name: &str, v: &[u8]) {
        self.n += 1;
        self.str(name);
        let _ = rmp::encode::write_bin(&mut self.buf, v);
    }
    fn field_strs(&mut self, name: &str, v: &[String]) {
        self.n += 1;
        self.str(name);
        let _ = rmp::encode::write_array_len(&mut self.buf, v.len() as u32);
        for s in v {
            self.str(s);
        }
    }
}

impl Request {
    /// Appends the MessagePack body of this request (no frame header) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = W {
            buf: Vec::with_capacity(64),
            n: 0,
        };
        w.field_uint("id", self.id);
        w.field_str("op", self.op.name());
        if let Some(t) = &self.trace {
            w.field_str("trace", t);
        }
        match &self.op {
            Op::Hello { version, client } => {
                w.field_uint("version", *version);
                if let Some(c) = client {
                    w.field_str("client", c);
                }
            }
            Op::Ping | Op::Stats | Op::AdminInfo => {}
            Op::CacheGet { key, lease } => {
                w.field_str("key", key);
                if *lease {
                    w.field_bool("lease", true);
                }
            }
            Op::CacheMget { keys } | Op::CacheInvalidate { keys } => w.field_strs("keys", keys),
            Op::CacheSet {
                key,
                value,
                ttl_ms,
                lease,
                tags,
            } => {
                w.field_str("key", key);
                w.field_bin("value", value);
                if let Some(t) = ttl_ms {
                    w.field_uint("ttl_ms", *t);
                }
                if let Some(l) = lease {
                    w.field_str("lease", l);
                }
                if !tags.is_empty() {
                    w.field_strs("tags", tags);
                }
            }
            Op::CacheInvalidateTags { tags } => w.field_strs("tags", tags),
            Op::SessionCreate {
                user,
                data,
                idle_ttl_ms,
                absolute_ttl_ms,
            } => {
                w.field_str("user", user);
                w.field_bin("data", data);
                if let Some(t) = idle_ttl_ms {
                    w.field_uint("idle_ttl_ms", *t);
                }
                if let Some(t) = absolute_ttl_ms {
                    w.field_uint("absolute_ttl_ms", *t);
                }
            }
            Op::SessionGet { token, touch } => {
                w.field_str("token", token);
                if !*touch {
                    w.field_bool("touch", false);
                }
            }
            Op::SessionUpdate { token, data } => {
                w.field_str("token", token);
                w.field_bin("data", data);
            }
            Op::SessionRotate { token } => w.field_str("token", token),
            Op::SessionRevoke { target } => match target {
                RevokeTarget::Token(t) => w.field_str("token", t),
                RevokeTarget::SessionId(s) => w.field_str("session_id", s),
            },
            Op::SessionRevokeUser { user } | Op::SessionList { user } => w.field_str("user", user),
            Op::RatelimitCheck { policy, key, cost } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                if *cost != 1 {
                    w.field_uint("cost", *cost);
                }
            }
            Op::RatelimitPeek { policy, key }
            | Op::RatelimitReset { policy, key }
            | Op::RatelimitClearOverride { policy, key } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
            }
            Op::RatelimitPenalty {
                policy,
                key,
                points,
            }
            | Op::RatelimitReward {
                policy,
                key,
                points,
            } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                w.field_uint("points", *points);
            }
            Op::RatelimitReserve {
                policy,
                key,
                cost,
                max_wait_ms,
            } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                if *cost != 1 {
                    w.field_uint("cost", *cost);
                }
                w.field_uint("max_wait_ms", *max_wait_ms);
            }
            Op::RatelimitAcquireConcurrent {
                policy,
                key,
                lease_ms,
            } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                if let Some(l) = lease_ms {
                    w.field_uint("lease_ms", *l);
                }
            }
            Op::RatelimitRelease { policy, key, lease } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                w.field_str("lease", lease);
            }
            Op::RatelimitSetOverride {
                policy,
                key,
                limit,
                burst,
            } => {
                w.field_str("policy", policy);
                w.field_str("key", key);
                w.field_uint("limit", *limit);
                if let Some(b) = burst {
                    w.field_uint("burst", *b);
                }
            }
            Op::LockAcquire {
                name,
                ttl_ms,
                wait_ms,
            } => {
                w.field_str("name", name);
                w.field_uint("ttl_ms", *ttl_ms);
                if let Some(wait) = wait_ms {
                    w.field_uint("wait_ms", *wait);
                }
            }
            Op::LockExtend {
                name,
                token,
                ttl_ms,
            } => {
                w.field_str("name", name);
                w.field_str("token", token);
                w.field_uint("ttl_ms", *ttl_ms);
            }
            Op::LockRelease { name, token } => {
                w.field_str("name", name);
                w.field_str("token", token);
            }
            Op::QuotaUsage {
                policy,
                prefix,
                max_keys,
            } => {
                w.field_str("policy", policy);
                if let Some(p) = prefix {
                    w.field_str("prefix", p);
                }
                if let Some(m) = max_keys {
                    w.field_uint("max_keys", *m);
                }
            }
        }
        let _ = rmp::encode::write_map_len(out, w.n);
        out.extend_from_slice(&w.buf);
    }

    /// The MessagePack body of this request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }
}
