//! Requests: the typed `Op` enum, its parser (daemon side) and encoder (client side).
//!
//! Parsing distinguishes the two kinds of bad request PROTOCOL.md defines: an
//! unusable frame (not MessagePack, not a map, no unsigned `id`) closes the
//! connection, while a wrong request (unknown op, missing or mistyped argument,
//! out-of-range value) is answered for its `id` and the connection stays open.

use bytes::Bytes;
use rmpv::Value;

use super::ErrorCode;

/// Bounds the parser enforces on arguments.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest key, tag, user, policy or token, in bytes.
    pub max_key: usize,
    /// Most keys or tags in one request.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: super::DEFAULT_MAX_KEY,
            max_batch: 10_000,
        }
    }
}

/// One request: the envelope plus a typed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    /// W3C `traceparent` of the caller's span, if any.
    pub trace: Option<String>,
    pub op: Op,
}

/// Which session `session.revoke` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Token(String),
    SessionId(String),
}

/// Every operation of protocol version 1, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Hello {
        version: u64,
        client: Option<String>,
    },
    Ping,
    CacheGet {
        key: String,
        lease: bool,
    },
    CacheMget {
        keys: Vec<String>,
    },
    CacheSet {
        key: String,
        value: Bytes,
        ttl_ms: Option<u64>,
        lease: Option<String>,
        tags: Vec<String>,
    },
    CacheInvalidate {
        keys: Vec<String>,
    },
    CacheInvalidateTags {
        tags: Vec<String>,
    },
    SessionCreate {
        user: String,
        data: Bytes,
        idle_ttl_ms: Option<u64>,
        absolute_ttl_ms: Option<u64>,
    },
    SessionGet {
        token: String,
        touch: bool,
    },
    SessionUpdate {
        token: String,
        data: Bytes,
    },
    SessionRotate {
        token: String,
    },
    SessionRevoke {
        target: RevokeTarget,
    },
    SessionRevokeUser {
        user: String,
    },
    SessionList {
        user: String,
    },
    RatelimitCheck {
        policy: String,
        key: String,
        cost: u64,
    },
    RatelimitPeek {
        policy: String,
        key: String,
    },
    RatelimitReset {
        policy: String,
        key: String,
    },
    /// Consumes `points` without asking (may go over the limit).
    RatelimitPenalty {
        policy: String,
        key: String,
        points: u64,
    },
    /// Gives back `points`, never above full capacity.
    RatelimitReward {
        policy: String,
        key: String,
        points: u64,
    },
    /// Books the next slot of `cost` within `max_wait_ms` (smoothing outbound calls).
    RatelimitReserve {
        policy: String,
        key: String,
        cost: u64,
        max_wait_ms: u64,
    },
    /// Takes one in-flight slot of a `concurrency` policy, as a lease that expires
    /// after `lease_ms` (default: the policy's window) if never released.
    RatelimitAcquireConcurrent {
        policy: String,
        key: String,
        lease_ms: Option<u64>,
    },
    RatelimitRelease {
        policy: String,
        key: String,
        lease: String,
    },
    /// Stores a runtime override of a key's numbers in Redis (every daemon picks it up).
    RatelimitSetOverride {
        policy: String,
        key: String,
        limit: u64,
        burst: Option<u64>,
    },
    RatelimitClearOverride {
        policy: String,
        key: String,
    },
    /// Takes lock `name` for `ttl_ms` if free, waiting up to `wait_ms` for it.
    LockAcquire {
        name: String,
        ttl_ms: u64,
        wait_ms: Option<u64>,
    },
    /// Extends lock `name` to `ttl_ms` from now, only for the holder's `token`.
    LockExtend {
        name: String,
        token: String,
        ttl_ms: u64,
    },
    /// Releases lock `name`, only for the holder's `token`.
    LockRelease {
        name: String,
        token: String,
    },
    /// Current usage of a policy's keys (SCAN-based, bounded by `max_keys`).
    QuotaUsage {
        policy: String,
        prefix: Option<String>,
        max_keys: Option<u64>,
    },
    Stats,
    /// Extension: which Redis (address without credentials) and prefix this
    /// daemon uses, its node id and version, so a tool that names a daemon acts
    /// on that daemon's Redis.
    AdminInfo,
    /// Extension (issue 17): the daemon's shared-memory L1. The answer's frame
    /// carries the segment's descriptor (SCM_RIGHTS) on its first byte.
    ShmAttach,
}

impl Op {
    /// The wire name of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Ping => "ping",
            Op::CacheGet { .. } => "cache.get",
            Op::CacheMget { .. } => "cache.mget",
            Op::CacheSet { .. } => "cache.set",
            Op::CacheInvalidate { .. } => "cache.invalidate",
            Op::CacheInvalidateTags { .. } => "cache.invalidate_tags",
            Op::SessionCreate { .. } => "session.create",
            Op::SessionGet { .. } => "session.get",
            Op::SessionUpdate { .. } => "session.update",
            Op::SessionRotate { .. } => "session.rotate",
            Op::SessionRevoke { .. } => "session.revoke",
            Op::SessionRevokeUser { .. } => "session.revoke_user",
            Op::SessionList { .. } => "session.list",
            Op::RatelimitCheck { .. } => "ratelimit.check",
            Op::RatelimitPeek { .. } => "ratelimit.peek",
            Op::RatelimitReset { .. } => "ratelimit.reset",
            Op::RatelimitPenalty { .. } => "ratelimit.penalty",
            Op::RatelimitReward { .. } => "ratelimit.reward",
            Op::RatelimitReserve { .. } => "ratelimit.reserve",
            Op::RatelimitAcquireConcurrent { .. } => "ratelimit.acquire_concurrent",
            Op::RatelimitRelease { .. } => "ratelimit.release",
            Op::RatelimitSetOverride { .. } => "ratelimit.set_override",
            Op::RatelimitClearOverride { .. } => "ratelimit.clear_override",
            Op::QuotaUsage { .. } => "quota.usage",
            Op::LockAcquire { .. } => "lock.acquire",
            Op::LockExtend { .. } => "lock.extend",
            Op::LockRelease { .. } => "lock.release",
            Op::Stats => "stats",
            Op::AdminInfo => "admin.info",
            Op::ShmAttach => "shm.attach",
        }
    }

    /// Total length of the keys the request names (for tracing without logging keys).
    pub fn key_len(&self) -> usize {
        match self {
            Op::CacheGet { key, .. } | Op::CacheSet { key, .. } => key.len(),
            Op::CacheMget { keys } | Op::CacheInvalidate { keys } => {
                keys.iter().map(String::len).sum()
            }
            Op::CacheInvalidateTags { tags } => tags.iter().map(String::len).sum(),
            Op::RatelimitCheck { key, .. }
            | Op::RatelimitPeek { key, .. }
            | Op::RatelimitReset { key, .. }
            | Op::RatelimitPenalty { key, .. }
            | Op::RatelimitReward { key, .. }
            | Op::RatelimitReserve { key, .. }
            | Op::RatelimitAcquireConcurrent { key, .. }
            | Op::RatelimitRelease { key, .. }
            | Op::RatelimitSetOverride { key, .. }
            | Op::RatelimitClearOverride { key, .. } => key.len(),
            Op::LockAcquire { name, .. }
            | Op::LockExtend { name, .. }
            | Op::LockRelease { name, .. } => name.len(),
            Op::QuotaUsage { prefix, .. } => prefix.as_ref().map_or(0, String::len),
            _ => 0,
        }
    }
}

/// Why a frame could not be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame is unusable: answer `bad_request` with id 0 and close.
    #[error("unusable frame: {0}")]
    Unusable(String),
    /// The request is wrong: answer for its id, keep the connection.
    #[error("{code}: {msg}")]
    Invalid {
        id: u64,
        code: ErrorCode,
        msg: String,
    },
}

/// Parses one frame body into a request.
pub fn parse_request(body: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let mut rd = body;
    let value = rmpv::decode::read_value(&mut rd)
        .map_err(|e| ParseError::Unusable(format!("not MessagePack: {e}")))?;
    if !rd.is_empty() {
        return Err(ParseError::Unusable(format!(
            "{} trailing bytes after the MessagePack value",
            rd.len()
        )));
    }
    let Value::Map(entries) = value else {
        return Err(ParseError::Unusable("a request must be a map".into()));
    };
    let mut fields = Fields::new(entries);
    let id = match fields.take("id") {
        Some(Value::Integer(i)) => i
            .as_u64()
            .ok_or_else(|| ParseError::Unusable("`id` must be an unsigned integer".into()))?,
        Some(_) => {
            return Err(ParseError::Unusable(
                "`id` must be an unsigned integer".into(),
            ))
        }
        None => return Err(ParseError::Unusable("`id` is missing".into())),
    };
    let args = Args { id, fields, limits };
    args.into_request()
}

/// The map's entries, with string keys, looked up by name.
struct Fields {
    entries: Vec<(Value, Value)>,
}

impl Fields {
    fn new(entries: Vec<(Value, Value)>) -> Self {
        Fields { entries }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let pos = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(name))?;
        Some(self.entries.swap_remove(pos).1)
    }
}

struct Args<'a> {
    id: u64,
    fields: Fields,
    limits: &'a Limits,
}

impl Args<'_> {
    fn bad(&self, msg: impl Into<String>) -> ParseError {
        ParseError::Invalid {
            id: self.id,
            code: ErrorCode::BadRequest,
            msg: msg.into(),
        }
    }

    fn opt(&mut self, name: &str) -> Option<Value> {
        match self.fields.take(name) {
            Some(Value::Nil) | None => None,
            Some(v) => Some(v),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::String(s)) => match s.into_str() {
                Some(s) => Ok(Some(s)),
                None => Err(self.bad(format!("`{name}` must be valid UTF-8"))),
            },
            Some(_) => Err(self.bad(format!("`{name}` must be a string"))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, ParseError> {
        self.opt_string(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))
    }

    /// A key-like string: non-empty and within `max_key`.
    fn key(&mut self, name: &str) -> Result<String, ParseError> {
        let s = self.string(name)?;
        self.check_key(name, &s)?;
        Ok(s)
    }

    fn check_key(&self, name: &str, s: &str) -> Result<(), ParseError> {
        if s.is_empty() {
            return Err(self.bad(format!("`{name}` must not be empty")));
        }
        if s.len() > self.limits.max_key {
            return Err(self.bad(format!(
                "`{name}` is {} bytes, longer than the limit of {} bytes",
                s.len(),
                self.limits.max_key
            )));
        }
        Ok(())
    }

    fn opt_key_array(&mut self, name: &str) -> Result<Option<Vec<String>>, ParseError> {
        let Some(v) = self.opt(name) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.bad(format!("`{name}` must be an array of strings")));
        };
        if items.len() > self.limits.max_batch {
            return Err(self.bad(format!(
                "`{name}` has {} items, more than the limit of {}",
                items.len(),
                self.limits.max_batch
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => match s.into_str() {
                    Some(s) => {
                        self.check_key(name, &s)?;
                        out.push(s);
                    }
                    None => return Err(self.bad(format!("`{name}` items must be valid UTF-8"))),
                },
                _ => return Err(self.bad(format!("`{name}` must be an array of strings"))),
            }
        }
        Ok(Some(out))
    }

    /// A required, non-empty array of keys.
    fn key_array(&mut self, name: &str) -> Result<Vec<String>, ParseError> {
        let v = self
            .opt_key_array(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))?;
        if v.is_empty() {
            return Err(self.bad(format!("`{name}` must not be empty")));
        }
        Ok(v)
    }

    fn opt_bin(&mut self, name: &str) -> Result<Option<Bytes>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Binary(b)) => Ok(Some(Bytes::from(b))),
            Some(_) => Err(self.bad(format!("`{name}` must be MessagePack bin"))),
        }
    }

    fn bin(&mut self, name: &str) -> Result<Bytes, ParseError> {
        self.opt_bin(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))
    }

    fn opt_uint(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Integer(i)) => i
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{name}` must be an unsigned integer"))),
            Some(_) => Err(self.bad(format!("`{name}` must be an unsigned integer"))),
        }
    }

    /// An optional duration in milliseconds: 0 is out of range.
    fn opt_ms(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt_uint(name)? {
            Some(0) => Err(self.bad(format!("`{name}` must be a positive duration"))),
            Some(ms) if ms > MAX_DURATION_MS => Err(self.bad(format!(
                "`{name}` must be at most {MAX_DURATION_MS} ms (about 10 years)"
            ))),
            v => Ok(v),
        }
    }

    /// A rate-limit `cost`: optional (default 1), at least 1.
    fn cost(&mut self) -> Result<u64, ParseError> {
        match self.opt_uint("cost")? {
            None => Ok(1),
            Some(0) => Err(self.bad("`cost` must be at least 1")),
            Some(c) => Ok(c),
        }
    }

    /// A required duration in ms, at least 1 (a lock's lifetime).
    fn ttl(&mut self, name: &str) -> Result<u64, ParseError> {
        match self.opt_ms(name)? {
            None => Err(self.bad(format!("`{name}` is missing"))),
            Some(0) => Err(self.bad(format!("`{name}` must be at least 1"))),
            Some(v) => Ok(v),
        }
    }

    /// An optional count that must be at least 1 when given.
    fn opt_positive(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt_uint(name)? {
            Some(0) => Err(self.bad(format!("`{name}` must be at least 1"))),
            v => Ok(v),
        }
    }

    fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(format!("`{name}` must be a boolean"))),
        }
    }

    fn into_request(mut self) -> Result<Request, ParseError> {
        let trace = match self.fields.take("trace") {
            None | Some(Value::Nil) => None,
            Some(Value::String(s)) => s.into_str(),
            Some(_) => return Err(self.bad("`trace` must be a string")),
        };
        let op_name = match self.fields.take("op") {
            Some(Value::String(s)) => match s.into_str() {
                Some(s) => s,
                None => return Err(self.bad("`op` must be valid UTF-8")),
            },
            Some(_) => return Err(self.bad("`op` must be a string")),
            None => return Err(self.bad("`op` is missing")),
        };
        let op = match op_name.as_str() {
            "hello" => Op::Hello {
                version: self
                    .opt_uint("version")?
                    .ok_or_else(|| self.bad("`version` is missing"))?,
                client: self.opt_string("client")?,
            },
            "ping" => Op::Ping,
            "stats" => Op::Stats,
            "admin.info" => Op::AdminInfo,
            "shm.attach" => Op::ShmAttach,
            "cache.get" => Op::CacheGet {
                key: self.key("key")?,
                lease: self.opt_bool("lease")?.unwrap_or(false),
            },
            "cache.mget" => Op::CacheMget {
                keys: self.key_array("keys")?,
            },
            "cache.set" => Op::CacheSet {
                key: self.key("key")?,
                value: self.bin("value")?,
                ttl_ms: self.opt_ms("ttl_ms")?,
                lease: self.opt_string("lease")?,
                tags: self.opt_key_array("tags")?.unwrap_or_default(),
            },
            "cache.invalidate" => Op::CacheInvalidate {
                keys: self.key_array("keys")?,
            },
            "cache.invalidate_tags" => Op::CacheInvalidateTags {
                tags: self.key_array("tags")?,
            },
            "session.create" => Op::SessionCreate {
                user: self.key("user")?,
                data: self.opt_bin("data")?.unwrap_or_default(),
                idle_ttl_ms: self.opt_ms("idle_ttl_ms")?,
                absolute_ttl_ms: self.opt_ms("absolute_ttl_ms")?,
            },
            "session.get" => Op::SessionGet {
                token: self.key("token")?,
                touch: self.opt_bool("touch")?.unwrap_or(true),
            },
            "session.update" => Op::SessionUpdate {
                token: self.key("token")?,
                data: self.bin("data")?,
            },
            "session.rotate" => Op::SessionRotate {
                token: self.key("token")?,
            },
            "session.revoke" => {
                let token = self.opt_string("token")?;
                let sid = self.opt_string("session_id")?;
                let target = match (token, sid) {
                    (Some(t), None) => {
                        self.check_key("token", &t)?;
                        RevokeTarget::Token(t)
                    }
                    (None, Some(s)) => {
                        self.check_key("session_id", &s)?;
                        RevokeTarget::SessionId(s)
                    }
                    (Some(_), Some(_)) => {
                        return Err(self.bad("give `token` or `session_id`, not both"))
                    }
                    (None, None) => return Err(self.bad("`token` or `session_id` is missing")),
                };
                Op::SessionRevoke { target }
            }
            "session.revoke_user" => Op::SessionRevokeUser {
                user: self.key("user")?,
            },
            "session.list" => Op::SessionList {
                user: self.key("user")?,
            },
            "ratelimit.check" => Op::RatelimitCheck {
                policy: self.key("policy")?,
                key: self.key("key")?,
                cost: self.cost()?,
            },
            "ratelimit.peek" => Op::RatelimitPeek {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "ratelimit.reset" => Op::RatelimitReset {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "ratelimit.penalty" => Op::RatelimitPenalty {
                policy: self.key("policy")?,
                key: self.key("key")?,
                points: self
                    .opt_positive("points")?
                    .ok_or_else(|| self.bad("`points` is missing"))?,
            },
            "ratelimit.reward" => Op::RatelimitReward {
                policy: self.key("policy")?,
                key: self.key("key")?,
                points: self
                    .opt_positive("points")?
                    .ok_or_else(|| self.bad("`points` is missing"))?,
            },
            "ratelimit.reserve" => Op::RatelimitReserve {
                policy: self.key("policy")?,
                key: self.key("key")?,
                cost: self.cost()?,
                max_wait_ms: self
                    .opt_ms("max_wait_ms")?
                    .ok_or_else(|| self.bad("`max_wait_ms` is missing"))?,
            },
            "ratelimit.acquire_concurrent" => Op::RatelimitAcquireConcurrent {
                policy: self.key("policy")?,
                key: self.key("key")?,
                lease_ms: self.opt_ms("lease_ms")?,
            },
            "ratelimit.release" => Op::RatelimitRelease {
                policy: self.key("policy")?,
                key: self.key("key")?,
                lease: self.key("lease")?,
            },
            "ratelimit.set_override" => Op::RatelimitSetOverride {
                policy: self.key("policy")?,
                key: self.key("key")?,
                limit: self
                    .opt_positive("limit")?
                    .ok_or_else(|| self.bad("`limit` is missing"))?,
                burst: self.opt_positive("burst")?,
            },
            "ratelimit.clear_override" => Op::RatelimitClearOverride {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "lock.acquire" => Op::LockAcquire {
                name: self.key("name")?,
                ttl_ms: self.ttl("ttl_ms")?,
                wait_ms: self.opt_ms("wait_ms")?,
            },
            "lock.extend" => Op::LockExtend {
                name: self.key("name")?,
                token: self.key("token")?,
                ttl_ms: self.ttl("ttl_ms")?,
            },
            "lock.release" => Op::LockRelease {
                name: self.key("name")?,
                token: self.key("token")?,
            },
            "quota.usage" => Op::QuotaUsage {
                policy: self.key("policy")?,
                prefix: match self.opt_string("prefix")? {
                    Some(p) if p.len() > self.limits.max_key => {
                        return Err(self.bad(format!(
                            "`prefix` is longer than the limit of {} bytes",
                            self.limits.max_key
                        )))
                    }
                    p => p,
                },
                max_keys: self.opt_positive("max_keys")?,
            },
            other => {
                return Err(ParseError::Invalid {
                    id: self.id,
                    code: ErrorCode::UnknownOp,
                    msg: format!("unknown op `{}`", truncate(other, 64)),
                })
            }
        };
        Ok(Request {
            id: self.id,
            trace,
            op,
        })
    }
}

/// Durations beyond this are refused: they overflow Redis PX arithmetic long before
/// anyone means them.
pub const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- encoding (client side) ----

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
            Op::Ping | Op::Stats | Op::AdminInfo | Op::ShmAttach => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Request, ParseError> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        parse_request(&buf, &Limits::default())
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    }

    #[test]
    fn unusable_frames_close() {
        assert!(matches!(
            parse_request(&[0xc1], &Limits::default()),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(Value::from(3)),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![("op", Value::from("ping"))])),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![
                ("id", Value::from(-1)),
                ("op", Value::from("ping"))
            ])),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![
                ("id", Value::from("7")),
                ("op", Value::from("ping"))
            ])),
            Err(ParseError::Unusable(_))
        ));
    }

    #[test]
    fn wrong_requests_keep_their_id() {
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("nope")),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::UnknownOp,
                ..
            })
        ));
        let e = parse(map(vec![("id", Value::from(9))]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.get")),
            ("key", Value::from(5)),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.set")),
            ("key", Value::from("k")),
            ("value", Value::from("a string, not bin")),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.set")),
            ("key", Value::from("k")),
            ("value", Value::Binary(vec![1])),
            ("ttl_ms", Value::from(0)),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let long = "k".repeat(5000);
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.get")),
            ("key", Value::from(long.as_str())),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    }

    #[test]
    fn encode_then_parse_roundtrips() {
        let reqs = vec![
            Op::Hello {
                version: 1,
                client: Some("t/1".into()),
            },
            Op::Ping,
            Op::CacheGet {
                key: "a".into(),
                lease: true,
            },
            Op::CacheSet {
                key: "a".into(),
                value: Bytes::from_static(b"\x00\x01"),
                ttl_ms: Some(5),
                lease: Some("tok".into()),
                tags: vec!["t".into()],
            },
            Op::CacheMget {
                keys: vec!["a".into(), "b".into()],
            },
            Op::SessionRevoke {
                target: RevokeTarget::SessionId("s".into()),
            },
            Op::RatelimitCheck {
                policy: "p".into(),
                key: "k".into(),
                cost: 3,
            },
        ];
        for (i, op) in reqs.into_iter().enumerate() {
            let r = Request {
                id: i as u64,
                trace: Some("00-ab-cd-01".into()),
                op,
            };
            assert_eq!(parse_request(&r.encode(), &Limits::default()).unwrap(), r);
        }
    }

    #[test]
    fn ratelimit_ops_validate_their_arguments() {
        let bad = |fields: Vec<(&str, Value)>| {
            let mut f = vec![("id", Value::from(4))];
            f.extend(fields);
            matches!(
                parse(map(f)),
                Err(ParseError::Invalid {
                    id: 4,
                    code: ErrorCode::BadRequest,
                    ..
                })
            )
        };
        let pk = || vec![("policy", Value::from("p")), ("key", Value::from("k"))];
        let with = |op: &str, extra: Vec<(&'static str, Value)>| {
            let mut f = vec![("op", Value::from(op))];
            f.extend(pk());
            f.extend(extra);
            f
        };
        assert!(
            bad(with("ratelimit.reserve", vec![])),
            "max_wait_ms missing"
        );
        assert!(bad(with(
            "ratelimit.reserve",
            vec![("max_wait_ms", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.reserve",
            vec![("max_wait_ms", Value::from(5)), ("cost", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.acquire_concurrent",
            vec![("lease_ms", Value::from(0))]
        )));
        assert!(bad(with("ratelimit.release", vec![])), "lease missing");
        assert!(bad(with("ratelimit.set_override", vec![])), "limit missing");
        assert!(bad(with(
            "ratelimit.set_override",
            vec![("limit", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.set_override",
            vec![("limit", Value::from(1)), ("burst", Value::from(0))]
        )));
        assert!(bad(vec![
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
            ("max_keys", Value::from(0)),
        ]));
        assert!(bad(vec![
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
            ("prefix", Value::from(3)),
        ]));
        let ok = parse(map(vec![
            ("id", Value::from(4)),
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
        ]))
        .unwrap();
        assert_eq!(
            ok.op,
            Op::QuotaUsage {
                policy: "p".into(),
                prefix: None,
                max_keys: None
            }
        );
    }
}
