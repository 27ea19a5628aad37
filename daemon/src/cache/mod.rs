//! The two-level cache data path: L1 (this process) in front of L2 (Redis).
//!
//! Reads try L1, then go to Redis through one script that also returns the log
//! position the read saw; the result may fill L1 only under the rules of [`L1::fill`].
//! Concurrent misses of one key share one Redis read (single flight). Writes and
//! invalidations are applied to this daemon's L1 as soon as Redis confirms them, so
//! the daemon that answered serves the new state at once; every other daemon hears
//! through the invalidation channel (see `coherence.rs`).
//!
//! `Cache` alone changes L1's trust (ready, flush, loss of trust), because the
//! single-flight table must change with it: a flight belongs to the generation it
//! began in, and a caller joins it only while it has a waiter, belongs to the
//! current generation and began less than Δ ago. So no caller receives a value
//! read before a gap, read by an abandoned request, or read more than Δ before the
//! caller arrived.

pub mod coherence;
pub mod entry;
pub mod l1;
mod sharded;
pub mod shm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, WeakShared};
use rand::Rng;
use shoal_client::proto::{GetResult, Source};

use crate::cache::l1::{FlushReason, L1};
use crate::ops::stats::Stats;
use crate::store::streamid::StreamId;
use crate::store::{L2Get, L2Value, LeaseRequest, SetOutcome, Store, StoreError};

/// An entry of the single-flight table. It holds the flight weakly: when the last
/// waiter is dropped (a cancelled request), the flight and its Redis read go with it.
struct FlightEntry {
    id: u64,
    flight: WeakShared<BoxFuture<'static, Result<L2Value, StoreError>>>,
    generation: u64,
    started: Instant,
}

/// The cache service of one daemon.
pub struct Cache {
    l1: Arc<L1>,
    store: Store,
    stats: Arc<Stats>,
    flights: Mutex<HashMap<String, FlightEntry>>,
    next_flight: AtomicU64,
    max_staleness: Duration,
    default_ttl: Duration,
    lease_ttl: Duration,
    ttl_jitter: f64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("l1", &self.l1)
            .finish_non_exhaustive()
    }
}

/// Ends a flight's table entry when its caller is done or dropped.
struct EndFlight<'a> {
    cache: &'a Cache,
    key: &'a str,
    id: u64,
}

impl Drop for EndFlight<'_> {
    fn drop(&mut self) {
        self.cache.end_flight(self.key, Some(self.id));
    }
}

/// How long a caller that finds a key under lease is told to wait, at most.
const LEASE_WAIT_CAP_MS: u64 = 50;

fn remaining_ms(deadline: Option<Instant>) -> Option<u64> {
    deadline.map(|d| {
        let ms = d.saturating_duration_since(Instant::now()).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    })
}

fn hit(value: Bytes, from: Source, ttl_ms: Option<u64>) -> GetResult {
    GetResult {
        hit: true,
        value: Some(value),
        from: Some(from),
        ttl_ms,
        lease: None,
        wait_ms: None,
    }
}

impl Cache {
    pub fn new(
        l1: Arc<L1>,
        store: Store,
        stats: Arc<Stats>,
        config: &crate::config::CacheConfig,
    ) -> Cache {
        Cache {
            l1,
            store,
            stats,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(1),
            max_staleness: config.max_staleness,
            default_ttl: config.default_ttl,
            lease_ttl: config.lease_ttl,
            ttl_jitter: config.ttl_jitter,
        }
    }

    /// L1, to read its state (counters, size, trust). Changes to its trust go
    /// through `Cache`: `set_ready`, `set_unready`, `flush`, `prove_delivery`.
    pub fn l1(&self) -> &Arc<L1> {
        &self.l1
    }

    /// A heartbeat sent at `sent` came back on the daemon's own channel: L1 may
    /// serve for Δ after `sent` (the subscriber calls this).
    pub fn prove_delivery(&self, sent: std::time::Instant) {
        self.l1.prove_delivery(sent);
    }

    /// moka's housekeeping, so the byte bound holds even when L1 is only read.
    pub async fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks().await;
    }

    /// L1 can no longer be trusted (the subscriber lost its connection or its
    /// proof): reads bypass L1 and every flight in progress is forgotten.
    pub fn set_unready(&self) {
        self.l1.set_unready();
        self.forget_flights();
    }

    /// The subscriber is caught up as of `proof` (see [`L1::prove_delivery`]).
    pub fn set_ready(&self, proof: Instant) {
        self.l1.prove_delivery(proof);
        self.l1.set_ready();
    }

    /// Group `g` (a cluster bucket) can no longer be trusted: its keys bypass
    /// L1 and every flight in progress is forgotten.
    pub fn set_unready_group(&self, g: usize) {
        self.l1.set_unready_group(g);
        self.forget_flights();
    }

    /// Group `g` is caught up as of `proof`.
    pub fn set_ready_group(&self, g: usize, proof: Instant) {
        self.l1.prove_delivery_group(g, proof);
        self.l1.set_ready_group(g);
    }

    /// A heartbeat of group `g` sent at `sent` came back.
    pub fn prove_delivery_group(&self, g: usize, sent: Instant) {
        self.l1.prove_delivery_group(g, sent);
    }

    /// Empties group `g` alone and forgets every flight in progress.
    pub fn flush_group(&self, g: usize, reason: FlushReason) {
        self.l1.flush_group(g, reason);
        self.forget_flights();
    }

    /// Empties L1 and forgets every flight in progress.
    pub fn flush(&self, reason: FlushReason) {
        self.l1.flush(reason);
        self.forget_flights();
    }

    fn forget_flights(&self) {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// An L1 hit, answered without Redis; `None` means the caller must go to L2.
    pub async fn get_l1(&self, key: &str) -> Option<GetResult> {
        match self.l1.get(key).await {
            Some(e) => {
                self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
                let ttl = remaining_ms(e.l2_expires_at.or(Some(e.expires_at)));
                Some(hit(e.value, Source::L1, ttl))
            }
            None => {
                self.stats.l1_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// An L1 hit answered at once, without a task or a future kept: `None` on a
    /// miss, while L1 is untrusted, or if the cache would have to wait (the
    /// caller then takes the normal path, which counts what happened).
    pub fn l1_hit_now(&self, key: &str) -> Option<GetResult> {
        let e = self.l1.peek(key).now_or_never()??;
        self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
        let ttl = remaining_ms(e.l2_expires_at.or(Some(e.expires_at)));
        Some(hit(e.value, Source::L1, ttl))
    }

    /// `cache.get` after an L1 miss.
    pub async fn get_l2(self: &Arc<Self>, key: &str, lease: bool) -> Result<GetResult, StoreError> {
        if lease {
            return self.get_with_lease(key).await;
        }
        let v = self.flight(key).await?;
        Ok(self.l2_result(v))
    }

    fn l2_result(&self, v: L2Value) -> GetResult {
        match v.value {
            Some(value) => {
                self.stats.l2_hits.fetch_add(1, Ordering::Relaxed);
                hit(value, Source::L2, v.ttl_ms)
            }
            None => {
                self.stats.l2_misses.fetch_add(1, Ordering::Relaxed);
                GetResult::default()
            }
        }
    }

    /// Joins the in-flight read of `key` or starts one. The read fills L1 itself,
    /// so it does not matter which of the waiting callers drives it.
    async fn flight(self: &Arc<Self>, key: &str) -> Result<L2Value, StoreError> {
        let (id, fut, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            let generation = self.l1.generation();
            let joinable = flights.get(key).and_then(|e| {
                let fresh = e.generation == generation && e.started.elapsed() < self.max_staleness;
                fresh
                    .then(|| e.flight.upgrade())
                    .flatten()
                    .map(|f| (e.id, f))
            });
            if let Some((id, f)) = joinable {
                (id, f, false)
            } else {
                let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                let this = Arc::clone(self);
                let k = key.to_string();
                let ticket = self.l1.ticket();
                let fut = async move {
                    let r = this.store.cache_get(&k, None).await?;
                    if let Some(v) = &r.value.value {
                        this.l1
                            .fill(&k, v.clone(), r.value.ttl_ms, r.pos, ticket)
                            .await;
                    }
                    Ok(r.value)
                }
                .boxed()
                .shared();
                let Some(weak) = fut.downgrade() else {
                    // Only a completed Shared has no weak handle; a new one cannot be.
                    return Err(StoreError::Redis("single flight could not start".into()));
                };
                flights.insert(
                    key.to_string(),
                    FlightEntry {
                        id,
                        flight: weak,
                        generation,
                        started: Instant::now(),
                    },
                );
                (id, fut, true)
            }
        };
        if !leader {
            self.stats
                .singleflight_joined
                .fetch_add(1, Ordering::Relaxed);
        }
        // Removes the entry when this caller finishes or is dropped mid-read, so a
        // cancelled read never lingers for later callers to join.
        let _end = EndFlight {
            cache: self,
            key,
            id,
        };
        fut.await
    }

    /// Forgets the flight of `key` (all flights of it when `id` is `None`), so
    /// callers that arrive after a change start a fresh read.
    fn end_flight(&self, key: &str, id: Option<u64>) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = flights.get(key) {
            if id.is_none_or(|id| id == e.id) {
                flights.remove(key);
            }
        }
    }

    async fn get_with_lease(&self, key: &str) -> Result<GetResult, StoreError> {
        let ticket = self.l1.ticket();
        let req = LeaseRequest {
            token: crate::random::random_token(18),
            ttl_ms: self.lease_ttl.as_millis().max(1) as u64,
            max_wait_ms: LEASE_WAIT_CAP_MS,
        };
        let L2Get {
            value,
            pos,
            lease,
            wait_ms,
        } = self.store.cache_get(key, Some(&req)).await?;
        if let Some(v) = &value.value {
            self.l1
                .fill(key, v.clone(), value.ttl_ms, pos, ticket)
                .await;
        }
        let mut r = self.l2_result(value);
        if lease.is_some() {
            self.stats.leases_granted.fetch_add(1, Ordering::Relaxed);
        }
        r.lease = lease;
        r.wait_ms = wait_ms;
        Ok(r)
    }

    /// `cache.mget`: L1 first, all misses in one Redis round trip.
    pub async fn mget(&self, keys: &[String]) -> Result<Vec<GetResult>, StoreError> {
        let mut out: Vec<Option<GetResult>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<&str> = Vec::new();
        for k in keys {
            let r = self.get_l1(k).await;
            if r.is_none() {
                missing.push(k);
            }
            out.push(r);
        }
        if !missing.is_empty() {
            let ticket = self.l1.ticket();
            let values = self.store.cache_mget(&missing).await?;
            let mut values = values.into_iter();
            for (slot, key) in out.iter_mut().zip(keys) {
                if slot.is_some() {
                    continue;
                }
                let Some((v, pos)) = values.next() else { break };
                if let Some(b) = &v.value {
                    self.l1.fill(key, b.clone(), v.ttl_ms, pos, ticket).await;
                }
                *slot = Some(self.l2_result(v));
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn ttl_ms(&self, ttl_ms: Option<u64>) -> u64 {
        let base = ttl_ms.unwrap_or_else(|| self.default_ttl.as_millis().max(1) as u64);
        if self.ttl_jitter > 0.0 && base > 1 {
            let extra = (base as f64 * self.ttl_jitter) as u64;
            if extra > 0 {
                return base + rand::rng().random_range(0..=extra);
            }
        }
        base
    }

    /// `cache.set`: write L2 and announce; then this daemon's L1 holds the new value.
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl_ms: Option<u64>,
        lease: Option<&str>,
        tags: &[String],
    ) -> Result<bool, StoreError> {
        let ttl = self.ttl_ms(ttl_ms);
        let ticket = self.l1.ticket();
        match self.store.cache_set(key, &value, ttl, lease, tags).await? {
            SetOutcome::Stored(id) => {
                self.stats.sets.fetch_add(1, Ordering::Relaxed);
                self.applied_locally(key, id).await;
                self.l1.fill(key, value, Some(ttl), id, ticket).await;
                Ok(true)
            }
            SetOutcome::LeaseLost => {
                self.stats
                    .stale_fills_refused
                    .fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    /// `cache.invalidate`: delete from L2 and every L1. Returns the log id (on
    /// a cluster, where each bucket has its log, the largest of the buckets').
    pub async fn invalidate(&self, keys: &[String]) -> Result<StreamId, StoreError> {
        let changes = self.store.cache_invalidate(keys).await?;
        self.stats
            .invalidations_sent
            .fetch_add(1, Ordering::Relaxed);
        let mut seq = StreamId::ZERO;
        for (id, keys) in &changes {
            for k in keys {
                self.applied_locally(k, *id).await;
            }
            seq = seq.max(*id);
        }
        Ok(seq)
    }

    /// `cache.invalidate_tags`: every key of the tags, as one change per
    /// group (bucket). Returns the largest log id and the number of keys.
    pub async fn invalidate_tags(&self, tags: &[String]) -> Result<(StreamId, u64), StoreError> {
        let changes = self.store.cache_invalidate_tags(tags).await?;
        let mut seq = StreamId::ZERO;
        let mut count = 0u64;
        for (id, keys) in &changes {
            if !keys.is_empty() {
                self.stats
                    .invalidations_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            for k in keys {
                self.applied_locally(k, *id).await;
            }
            seq = seq.max(*id);
            count += keys.len() as u64;
        }
        Ok((seq, count))
    }

    /// A change confirmed by Redis, applied here without waiting for the channel.
    async fn applied_locally(&self, key: &str, id: StreamId) {
        self.end_flight(key, None);
        self.l1.apply_change(key, id).await;
    }

    /// A change heard from the channel or the log.
    pub async fn apply_remote(&self, key: &str, id: StreamId) {
        self.end_flight(key, None);
        self.l1.apply_change(key, id).await;
    }
}
