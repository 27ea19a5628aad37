//! The session service's counters: bumped on the request path and by the
//! revocation reader, merged into the `stats` op (`session_*`) and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ops::stats::LAG_BUCKETS_MS;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) local_hits: AtomicU64,
    pub(super) local_misses: AtomicU64,
    pub(super) redis_reads: AtomicU64,
    pub(super) touches: AtomicU64,
    pub(super) creates: AtomicU64,
    pub(super) updates: AtomicU64,
    pub(super) revocations: AtomicU64,
    pub(super) rotations: AtomicU64,
    pub(super) user_revocations: AtomicU64,
    pub(super) events_applied: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) fills_rejected: AtomicU64,
    pub(super) served_stale: AtomicU64,
    pub(super) denied_unavailable: AtomicU64,
    /// Reads that skipped the local cache because it was not trusted (reader
    /// behind, or its newest proof older than Δ).
    pub(super) local_untrusted: AtomicU64,
    /// Extra script calls because the session's user was not known here (a
    /// truly cold read: the user's epoch key must be named in KEYS).
    pub(super) user_lookups: AtomicU64,
    pub(super) flushes_hash_key: AtomicU64,
    pub(super) reader_reconnects: AtomicU64,
    pub(super) flushes_trimmed: AtomicU64,
    pub(super) flushes_identity: AtomicU64,
    pub(super) flushes_bad_entry: AtomicU64,
    /// Revocation lag histogram, bucketed like the invalidation lag
    /// (`stats::LAG_BUCKETS_MS`; the last slot is above every bound).
    pub(super) lag_buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    pub(super) lag_sum_ms: AtomicU64,
    pub(super) lag_count: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
