//! How a Redis failure is classified: `StoreError` (unavailable, timeout, or a
//! Redis error), the error replies that are a state of Redis (`OOM`, `LOADING`,
//! `READONLY`, ...) counted by kind, and the latency histogram of Redis calls.

use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (connection refused, reset, or down for a while).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis was reachable but did not answer within `redis.timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or something shoal did not expect.
    #[error("redis error: {0}")]
    Redis(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Redis(_))
    }
}

/// Server error codes that mean "this Redis cannot serve now", with their
/// `kind` label in `/metrics`.
const TROUBLE_CODES: [(&str, &str); 12] = [
    ("OOM", "oom"),
    ("LOADING", "loading"),
    ("READONLY", "readonly"),
    ("MASTERDOWN", "masterdown"),
    ("BUSY", "busy"),
    ("NOSCRIPT", "noscript"),
    ("TRYAGAIN", "tryagain"),
    ("CLUSTERDOWN", "clusterdown"),
    ("MISCONF", "misconf"),
    ("NOREPLICAS", "noreplicas"),
    // A slot moving or moved (Redis Cluster) that redis-rs did not follow
    // within the deadline: the cluster's state, retryable.
    ("MOVED", "moved"),
    ("ASK", "ask"),
];

/// Every `kind` label of `shoal_redis_command_errors_total`: the trouble codes,
/// then `timeout`, `unreachable`, `circuit_open` and `other` (an error reply
/// shoal did not expect: a bug or a foreign key in the way).
pub const ERROR_KINDS: [&str; TROUBLE_CODES.len() + 4] = [
    "oom",
    "loading",
    "readonly",
    "masterdown",
    "busy",
    "noscript",
    "tryagain",
    "clusterdown",
    "misconf",
    "noreplicas",
    "moved",
    "ask",
    "timeout",
    "unreachable",
    "circuit_open",
    "other",
];

/// Failed Redis calls by kind, and the last trouble seen (for `/readyz`).
#[derive(Debug, Default)]
pub struct ErrorCounts {
    counts: [std::sync::atomic::AtomicU64; ERROR_KINDS.len()],
    last: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long one Redis trouble (an error reply, a timeout) keeps the daemon
/// unready: a command Redis still serves (INFO, PUBLISH while loading; reads
/// while out of memory) must not flip readiness back between failures.
pub const TROUBLE_HOLD: Duration = Duration::from_secs(1);

impl ErrorCounts {
    pub(super) fn record(&self, kind: &str, msg: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        // A lone missed deadline is a slow moment, not trouble worth a
        // readiness flip (the circuit breaker handles a hung Redis).
        if kind != "other" && kind != "timeout" {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((std::time::Instant::now(), msg.to_string()));
        }
    }

    /// `(kind, count)` for every kind, in [`ERROR_KINDS`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ERROR_KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// The last Redis trouble, in words (kept until the next one).
    pub fn last(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, m)| m.clone())
    }

    /// Whether Redis trouble was seen within `within`.
    pub fn recent(&self, within: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < within)
    }
}

/// Upper bounds (µs) of the Redis command latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Latency of every Redis call shoal makes (scripts and commands), as histogram
/// buckets for `/metrics`: a slow Redis shows here before it shows as timeouts.
#[derive(Debug, Default)]
pub struct Latency {
    pub buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_us: std::sync::atomic::AtomicU64,
}

impl Latency {
    pub(super) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// The error and its `kind` label.
pub(super) fn classify(e: redis::RedisError, timeout: Duration) -> (StoreError, &'static str) {
    if e.is_timeout() {
        (StoreError::Timeout(timeout), "timeout")
    } else if let Some((code, kind)) = e
        .code()
        .and_then(|c| TROUBLE_CODES.iter().find(|(t, _)| *t == c))
    {
        let detail = e.detail().unwrap_or("").trim();
        (
            StoreError::Unavailable(format!("redis cannot serve now: {code} {detail}")),
            kind,
        )
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        (StoreError::Unavailable(e.to_string()), "unreachable")
    } else {
        (StoreError::Redis(e.to_string()), "other")
    }
}
