//! Requests: the typed `Op` enum and the error a bad frame gets; `parse.rs` turns
//! a frame into a `Request` (daemon side), `encode.rs` the other way (client side).
//!
//! Parsing distinguishes the two kinds of bad request PROTOCOL.md defines: an
//! unusable frame (not MessagePack, not a map, no unsigned `id`) closes the
//! connection, while a wrong request (unknown op, missing or mistyped argument,
//! out-of-range value) is answered for its `id` and the connection stays open.

mod encode;
mod fields;
mod parse;

use bytes::Bytes;

use super::ErrorCode;

pub use parse::parse_request;

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

/// Durations beyond this are refused: they overflow Redis PX arithmetic long before
/// anyone means them.
pub const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
