//! Counters of the daemon, shared by every task: the `stats` op reports them, and
//! the admin `/metrics` endpoint exports the same numbers.
//!
//! Plain atomics: the hot path pays one relaxed increment per event, no locks.
//! The two counters every L1 hit bumps are [`Striped`]: one cache line per
//! stripe, so worker threads do not pass a line back and forth on every request.

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

/// A counter split over cache-line-sized stripes, one picked per thread: an
/// increment touches a line no other thread is writing (in the common case);
/// reading sums the stripes.
#[derive(Debug, Default)]
pub struct Striped([Line; STRIPES]);

const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

thread_local! {
    static STRIPE: usize = {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

impl Striped {
    pub fn fetch_add(&self, n: u64, order: Ordering) {
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(n, order);
    }

    pub fn load(&self, order: Ordering) -> u64 {
        self.0.iter().map(|l| l.0.load(order)).sum()
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub l1_hits: Striped,
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
    pub requests: Striped,
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
        m.insert("l1_hits".into(), self.l1_hits.load(Ordering::Relaxed));
        m.insert("requests".into(), self.requests.load(Ordering::Relaxed));
        let mut put = |k: &str, v: &AtomicU64| {
            m.insert(k.to_string(), v.load(Ordering::Relaxed));
        };
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
