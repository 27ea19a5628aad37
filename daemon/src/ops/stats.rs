//! Counters of the daemon, shared by every task: the `stats` op reports them, and
//! the admin `/metrics` endpoint exports the same numbers.
//!
//! Plain atomics: the hot path pays one relaxed increment per event, no locks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (ms) of the propagation lag histogram buckets.
pub const LAG_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 5000, 30000];

/// Why L1 was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// The log was trimmed past this daemon's applied position.
    LogTrimmed,
    /// Redis lost its data or was replaced (run_id or epoch changed).
    RedisIdentity,
    /// A message on the channel could not be understood.
    BadMessage,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::LogTrimmed => "log_trimmed",
            FlushReason::RedisIdentity => "redis_identity",
            FlushReason::BadMessage => "bad_message",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub l1_hits: AtomicU64,
    pub l1_misses: AtomicU64,
    pub l2_hits: AtomicU64,
    pub l2_misses: AtomicU64,
    pub bypassed_reads: AtomicU64,
    pub fills_rejected: AtomicU64,
    pub l1_evictions_invalidated: AtomicU64,
    pub l1_evictions_size: AtomicU64,
    pub singleflight_joined: AtomicU64,
    pub sets: AtomicU64,
    pub stale_fills_refused: AtomicU64,
    pub leases_granted: AtomicU64,
    pub invalidations_sent: AtomicU64,
    pub invalidations_applied: AtomicU64,
    pub invalidation_messages: AtomicU64,
    pub log_entries_replayed: AtomicU64,
    pub subscriber_reconnects: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub flush_log_trimmed: AtomicU64,
    pub flush_redis_identity: AtomicU64,
    pub flush_bad_message: AtomicU64,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub inflight: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub redis_errors: AtomicU64,
    pub lag_buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    pub lag_sum_ms: AtomicU64,
    pub lag_count: AtomicU64,
}

/// The index in a `[_; LAG_BUCKETS_MS.len() + 1]` histogram of a lag of `ms`
/// (the last slot: above every bound). The invalidation and the session
/// revocation lag share these buckets.
pub fn lag_bucket(ms: u64) -> usize {
    LAG_BUCKETS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LAG_BUCKETS_MS.len())
}

impl Stats {
    pub fn record_flush(&self, reason: FlushReason) {
        let c = match reason {
            FlushReason::LogTrimmed => &self.flush_log_trimmed,
            FlushReason::RedisIdentity => &self.flush_redis_identity,
            FlushReason::BadMessage => &self.flush_bad_message,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time from a change's log id to its application here.
    pub fn record_lag(&self, ms: u64) {
        self.lag_buckets[lag_bucket(ms)].fetch_add(1, Ordering::Relaxed);
        self.lag_sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.lag_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A flat snapshot: name -> value.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: &AtomicU64| {
            m.insert(k.to_string(), v.load(Ordering::Relaxed));
        };
        put("l1_hits", &self.l1_hits);
        put("l1_misses", &self.l1_misses);
        put("l2_hits", &self.l2_hits);
        put("l2_misses", &self.l2_misses);
        put("bypassed_reads", &self.bypassed_reads);
        put("fills_rejected", &self.fills_rejected);
        put("l1_evictions_invalidated", &self.l1_evictions_invalidated);
        put("l1_evictions_size", &self.l1_evictions_size);
        put("singleflight_joined", &self.singleflight_joined);
        put("sets", &self.sets);
        put("stale_fills_refused", &self.stale_fills_refused);
        put("leases_granted", &self.leases_granted);
        put("invalidations_sent", &self.invalidations_sent);
        put("invalidations_applied", &self.invalidations_applied);
        put("invalidation_messages", &self.invalidation_messages);
        put("log_entries_replayed", &self.log_entries_replayed);
        put("subscriber_reconnects", &self.subscriber_reconnects);
        put("heartbeat_timeouts", &self.heartbeat_timeouts);
        put("l1_flushes_log_trimmed", &self.flush_log_trimmed);
        put("l1_flushes_redis_identity", &self.flush_redis_identity);
        put("l1_flushes_bad_message", &self.flush_bad_message);
        put("connections", &self.connections);
        put("connections_total", &self.connections_total);
        put("connections_refused", &self.connections_refused);
        put("inflight", &self.inflight);
        put("requests", &self.requests);
        put("errors", &self.errors);
        put("redis_errors", &self.redis_errors);
        put("propagation_lag_ms_sum", &self.lag_sum_ms);
        put("propagation_lag_count", &self.lag_count);
        for (i, b) in LAG_BUCKETS_MS.iter().enumerate() {
            put(&format!("propagation_lag_ms_le_{b}"), &self.lag_buckets[i]);
        }
        put(
            "propagation_lag_ms_le_inf",
            &self.lag_buckets[LAG_BUCKETS_MS.len()],
        );
        m
    }
}
