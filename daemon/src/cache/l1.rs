//! The L1: a bounded in-memory cache (moka) plus the bookkeeping that keeps it
//! coherent with L2.
//!
//! Four things decide whether L1 may serve or be filled:
//! - `ready`: the invalidation subscriber is connected and caught up. While it is
//!   not, L1 is bypassed (reads go to L2) and fills are dropped.
//! - the delivery proof: the send time of the newest heartbeat the subscriber
//!   heard back (every change completed before it has been applied). A hit is
//!   served only while that proof is younger than Δ (`cache.max_staleness`),
//!   checked on the hit path itself, so a subscription that died silently stops
//!   L1 within Δ even before anyone notices the death.
//! - `generation`: bumped whenever trust is lost (subscriber down, flush). A fill
//!   carries the generation of the moment its read was issued ([`Ticket`]) and is
//!   dropped if it changed, so nothing read before a gap is kept after it.
//! - change marks: per stripe of the key space, the highest log id of a change this
//!   daemon applied. A fill read at log position P is kept only if no change of its
//!   stripe later than P has been applied. Striping may refuse a good fill; it never
//!   admits a bad one. Wall clocks are never compared.
//!
//! Trust is kept per group of keys: one group on a standalone Redis or under
//! Sentinel, one per bucket on Redis Cluster (each bucket has its own log,
//! channel and delivery proofs). A bucket whose shard fails over stops
//! serving, and is flushed, alone: every entry records the flush counts of L1
//! and of its group, and a hit compares both.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::Expiry;

pub use crate::ops::stats::FlushReason;
use crate::ops::stats::Stats;
use crate::store::streamid::StreamId;

/// Bytes charged per entry on top of key and value (moka node, Arc, our struct).
pub const ENTRY_OVERHEAD: usize = 128;
const STRIPES: usize = 1 << 16;

pub use crate::cache::entry::Entry;

struct EntryExpiry;

impl Expiry<Arc<str>, Entry> for EntryExpiry {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Entry, now: Instant) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
}

/// Proof that a read was issued while L1 was trusted, in a given generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The trust of one group of keys (see the module documentation).
#[derive(Debug, Default)]
struct Group {
    ready: AtomicBool,
    /// Send time of the newest delivery proof, µs since `origin` (0: none).
    proof_us: AtomicU64,
    /// Flushes of this group alone.
    flushes: AtomicU64,
}

pub struct L1 {
    cache: Cache<Arc<str>, Entry>,
    /// One group, or one per cluster bucket.
    groups: Box<[Group]>,
    /// Cluster buckets (keys are grouped by `CLUSTER KEYSLOT` mod buckets); 0:
    /// one group.
    buckets: u16,
    /// Origin of the proof clock (microseconds since this instant).
    origin: Instant,
    /// Δ in µs.
    max_staleness_us: u64,
    generation: AtomicU64,
    /// Flushes so far. Hits check it themselves, so no moka subtlety
    /// (`invalidate_all` compares timestamps, and two racing calls can move its
    /// cut-off back) can make a flushed entry readable.
    flushes: AtomicU64,
    marks: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    max_ttl: Duration,
    max_bytes: u64,
    stats: Arc<Stats>,
    /// The shared-memory L1 (issue 17), kept under the same rules: see `shm.rs`.
    shm: Option<Arc<crate::cache::shm::Shm>>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("ready", &self.is_ready())
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

fn weigh(key: &Arc<str>, e: &Entry) -> u32 {
    u32::try_from(key.len() + e.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl L1 {
    pub fn new(
        max_bytes: u64,
        max_ttl: Duration,
        max_staleness: Duration,
        stats: Arc<Stats>,
    ) -> L1 {
        let evicted = stats.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .expire_after(EntryExpiry)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.l1_evictions_size.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        L1 {
            cache,
            groups: Box::new([Group::default()]),
            buckets: 0,
            origin: Instant::now(),
            max_staleness_us: u64::try_from(max_staleness.as_micros()).unwrap_or(u64::MAX),
            generation: AtomicU64::new(1),
            flushes: AtomicU64::new(0),
            marks: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            max_ttl,
            max_bytes,
            stats,
            shm: None,
        }
    }

    /// Mirrors this L1's hot entries and trust in `shm` (same-host readers).
    pub fn with_shm(mut self, shm: Option<Arc<crate::cache::shm::Shm>>) -> L1 {
        self.shm = shm;
        self
    }

    /// Keeps trust per cluster bucket (`buckets` > 0; 0: one group).
    pub fn with_buckets(mut self, buckets: u16) -> L1 {
        self.buckets = buckets;
        self.groups = (0..buckets.max(1)).map(|_| Group::default()).collect();
        self
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.marks[(self.hasher.hash_one(key) as usize) & (STRIPES - 1)]
    }

    /// The group of `key`: its bucket on a cluster, 0 otherwise.
    pub fn group_of(&self, key: &str) -> usize {
        if self.buckets == 0 {
            return 0;
        }
        usize::from(crate::store::KeyNames::bucket_of(key, self.buckets))
    }

    /// A key of group `g` (tests pick keys per bucket).
    #[cfg(test)]
    pub(crate) fn a_key_of_group(&self, g: usize) -> String {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| self.group_of(k) == g)
            .unwrap_or_default()
    }

    fn group(&self, g: usize) -> Option<&Group> {
        self.groups.get(g)
    }

    /// Every group is trusted (the subscriber is caught up everywhere).
    pub fn is_ready(&self) -> bool {
        self.groups.iter().all(|g| g.ready.load(Ordering::SeqCst))
    }

    /// L1 is trusted again (subscriber connected and caught up), every group.
    pub fn set_ready(&self) {
        for g in 0..self.groups.len() {
            self.set_ready_group(g);
        }
    }

    /// Group `g` is trusted again. Reads issued before are void (they may have
    /// started while it was not).
    pub fn set_ready_group(&self, g: usize) {
        let Some(group) = self.group(g) else { return };
        self.generation.fetch_add(1, Ordering::SeqCst);
        group.ready.store(true, Ordering::SeqCst);
        self.mirror_trust(g);
    }

    /// L1 can no longer be trusted: reads bypass it, in-flight fills are void.
    pub fn set_unready(&self) {
        for group in self.groups.iter() {
            group.ready.store(false, Ordering::SeqCst);
            group.proof_us.store(0, Ordering::SeqCst);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(shm) = &self.shm {
            shm.set_unready(None);
        }
    }

    /// Group `g` can no longer be trusted (its shard's subscription was lost).
    pub fn set_unready_group(&self, g: usize) {
        let Some(group) = self.group(g) else { return };
        group.ready.store(false, Ordering::SeqCst);
        group.proof_us.store(0, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(shm) = &self.shm {
            shm.set_unready(Some(g));
        }
    }

    fn micros_at(&self, t: Instant) -> u64 {
        // +1 so that a proof taken at `origin` is distinguishable from "none".
        u64::try_from(t.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Records a delivery proof for every group: every change that completed
    /// before `sent` has been applied to this L1.
    pub fn prove_delivery(&self, sent: Instant) {
        for group in self.groups.iter() {
            group
                .proof_us
                .fetch_max(self.micros_at(sent), Ordering::SeqCst);
        }
        for g in 0..self.groups.len() {
            self.mirror_trust(g);
        }
    }

    /// Records a delivery proof for group `g`.
    pub fn prove_delivery_group(&self, g: usize, sent: Instant) {
        let Some(group) = self.group(g) else { return };
        group
            .proof_us
            .fetch_max(self.micros_at(sent), Ordering::SeqCst);
        self.mirror_trust(g);
    }

    /// The shared-memory segment keeps trust per group, as L1 does: group `g`
    /// is served there while it is ready here, until its newest proof + Δ.
    fn mirror_trust(&self, g: usize) {
        let (Some(shm), Some(group)) = (&self.shm, self.group(g)) else {
            return;
        };
        let trusted =
            || group.ready.load(Ordering::SeqCst) && group.proof_us.load(Ordering::SeqCst) != 0;
        let p = group.proof_us.load(Ordering::SeqCst);
        if p == 0 || !trusted() {
            return;
        }
        shm.prove(
            g,
            self.origin + Duration::from_micros(p.saturating_sub(1)),
            trusted,
        );
    }

    /// How old the oldest group's newest delivery proof is (`None`: a group
    /// has none).
    pub fn proof_age(&self) -> Option<Duration> {
        let now = self.micros_at(Instant::now());
        let mut oldest: Option<u64> = None;
        for group in self.groups.iter() {
            let p = group.proof_us.load(Ordering::SeqCst);
            if p == 0 {
                return None;
            }
            oldest = Some(oldest.map_or(p, |o| o.min(p)));
        }
        oldest.map(|p| Duration::from_micros(now.saturating_sub(p)))
    }

    /// Every group ready, with a delivery proof younger than Δ.
    pub fn is_trusted(&self) -> bool {
        (0..self.groups.len()).all(|g| self.is_trusted_group(g))
    }

    /// Group `g` ready, and its newest delivery proof younger than Δ: a hit
    /// served now is never older than Δ.
    pub fn is_trusted_group(&self, g: usize) -> bool {
        let Some(group) = self.group(g) else {
            return false;
        };
        if !group.ready.load(Ordering::SeqCst) {
            return false;
        }
        let p = group.proof_us.load(Ordering::SeqCst);
        p != 0 && self.micros_at(Instant::now()).saturating_sub(p) <= self.max_staleness_us
    }

    /// The current generation (changes on every loss of trust and flush).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// L1's and group `g`'s flushes so far (each only grows, so the sum
    /// changes whenever either does).
    fn flushes_of(&self, g: usize) -> u64 {
        let own = self
            .group(g)
            .map_or(0, |x| x.flushes.load(Ordering::SeqCst));
        self.flushes.load(Ordering::SeqCst).wrapping_add(own)
    }

    /// Taken before an L2 read whose result may fill L1: the generation, which
    /// every loss or regain of trust and every flush changes.
    pub fn ticket(&self) -> Option<Ticket> {
        Some(Ticket(self.generation.load(Ordering::SeqCst)))
    }

    fn ticket_valid(&self, t: Ticket, g: usize) -> bool {
        self.group(g)
            .is_some_and(|x| x.ready.load(Ordering::SeqCst))
            && self.generation.load(Ordering::SeqCst) == t.0
    }

    /// An L1 hit, if the key's group is trusted and L1 holds the key.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        // Taken before the entry is read: a publish checks it did not change.
        let generation = self.generation();
        let g = self.group_of(key);
        if !self.is_trusted_group(g) {
            self.stats.bypassed_reads.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.lookup(key, g, generation).await
    }

    /// As [`L1::get`], counting nothing (the caller counts a hit; a miss is
    /// looked up again, and counted, by the normal path).
    pub async fn peek(&self, key: &str) -> Option<Entry> {
        let generation = self.generation();
        let g = self.group_of(key);
        if !self.is_trusted_group(g) {
            return None;
        }
        self.lookup(key, g, generation).await
    }

    /// `generation`: taken before the trust check, for the shared-memory publish.
    async fn lookup(&self, key: &str, g: usize, generation: u64) -> Option<Entry> {
        let e = self.cache.get(key).await?;
        // A change of this key removed it from moka (exactly); a flush is checked
        // here rather than trusted to `invalidate_all`.
        if self.flushes_of(g) != e.flushes {
            return None;
        }
        // moka expires lazily on its own clock; never serve past our deadline.
        if e.expires_at <= Instant::now() {
            return None;
        }
        if let Some(shm) = &self.shm {
            // The same admission rule as a fill, checked under the writer lock.
            let stripe = self.stripe(key);
            shm.publish(key, &e, || {
                self.generation() == generation
                    && self.is_trusted_group(g)
                    && stripe.load(Ordering::SeqCst) <= e.pos.pack_down()
            });
        }
        Some(e)
    }

    /// Stores a value read from (or written to) L2 at log position `pos`, if the
    /// coherence rules allow. Returns whether it was kept.
    pub async fn fill(
        &self,
        key: &str,
        value: Bytes,
        l2_ttl_ms: Option<u64>,
        pos: StreamId,
        ticket: Option<Ticket>,
    ) -> bool {
        let Some(ticket) = ticket else {
            return false;
        };
        let ttl = match l2_ttl_ms {
            Some(ms) => Duration::from_millis(ms).min(self.max_ttl),
            None => self.max_ttl,
        };
        let size = (key.len() + value.len() + ENTRY_OVERHEAD) as u64;
        // An entry above an eighth of the bound would evict a crowd for one value.
        if ttl.is_zero() || size > self.max_bytes / 8 {
            return false;
        }
        let stripe = self.stripe(key);
        let g = self.group_of(key);
        let flushes = self.flushes_of(g);
        let admissible = |l1: &L1| {
            l1.ticket_valid(ticket, g) && stripe.load(Ordering::SeqCst) <= pos.pack_down()
        };
        if !admissible(self) {
            self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        let now = Instant::now();
        let entry = Entry {
            value,
            expires_at: now + ttl,
            pos,
            l2_expires_at: l2_ttl_ms.map(|ms| now + Duration::from_millis(ms)),
            flushes,
        };
        self.cache.insert(key.clone(), entry).await;
        // A change applied between the check and the insert has not seen our entry;
        // look again and take it back out if so.
        if !admissible(self) {
            self.cache.invalidate(&key).await;
            self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Applies one change (from the channel, the log, or this daemon's own write):
    /// marks the key's stripe and evicts any copy older than the change.
    pub async fn apply_change(&self, key: &str, id: StreamId) {
        self.stripe(key).fetch_max(id.pack_up(), Ordering::SeqCst);
        // Retired before the change counts as applied (the caller advances
        // `applied` or answers the request only after this returns).
        if let Some(shm) = &self.shm {
            shm.retire(key, id);
        }
        if let Some(e) = self.cache.get(key).await {
            if e.pos < id {
                self.cache.invalidate(key).await;
                self.stats
                    .l1_evictions_invalidated
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Empties L1 and voids every fill in flight.
    pub fn flush(&self, reason: FlushReason) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        // The generation bump voids fills read before this point, so old marks
        // (which may be from a previous Redis whose ids were larger) can go.
        for m in self.marks.iter() {
            m.store(0, Ordering::SeqCst);
        }
        if let Some(shm) = &self.shm {
            shm.flush(None);
        }
        self.stats.record_flush(reason);
        tracing::warn!(reason = reason.as_str(), "L1 flushed");
    }

    /// Empties group `g` alone (its shard lost or replaced data) and voids
    /// every fill in flight: its entries are never served again (their flush
    /// count is old) and leave moka by expiry or eviction. The change marks
    /// stay (they may refuse a good fill, never admit a bad one). The
    /// shared-memory segment flushes the same group.
    pub fn flush_group(&self, g: usize, reason: FlushReason) {
        let Some(group) = self.group(g) else { return };
        if self.groups.len() == 1 {
            return self.flush(reason);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        group.flushes.fetch_add(1, Ordering::SeqCst);
        if let Some(shm) = &self.shm {
            shm.flush(Some(g));
        }
        self.stats.record_flush(reason);
        tracing::warn!(
            reason = reason.as_str(),
            bucket = g,
            "L1 flushed for one bucket"
        );
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Lets moka apply pending evictions now (the size bound is enforced lazily).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn l1() -> L1 {
        let l1 = L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Stats::default()),
        );
        l1.set_ready();
        l1.prove_delivery(Instant::now());
        l1
    }

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    #[tokio::test]
    async fn fill_refused_after_a_later_change() {
        let l1 = l1();
        let t = l1.ticket();
        l1.apply_change("k", id(10)).await;
        assert!(
            !l1.fill("k", Bytes::from_static(b"old"), None, id(9), t)
                .await
        );
        assert!(l1.get("k").await.is_none());
        assert!(
            l1.fill("k", Bytes::from_static(b"new"), None, id(10), t)
                .await
        );
        assert_eq!(l1.get("k").await.unwrap().value, Bytes::from_static(b"new"));
    }

    #[tokio::test]
    async fn change_evicts_older_copies_only() {
        let l1 = l1();
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(5), t).await);
        l1.apply_change("k", id(5)).await;
        assert!(
            l1.get("k").await.is_some(),
            "own write at 5 is not older than 5"
        );
        l1.apply_change("k", id(6)).await;
        assert!(l1.get("k").await.is_none());
    }

    #[tokio::test]
    async fn gap_voids_tickets_and_bypasses() {
        let l1 = l1();
        let t = l1.ticket();
        assert!(l1.fill("a", Bytes::from_static(b"v"), None, id(1), t).await);
        l1.set_unready();
        assert!(l1.get("a").await.is_none(), "bypassed while unready");
        let while_unready = l1.ticket();
        assert!(
            !l1.fill("c", Bytes::from_static(b"v"), None, id(1), while_unready)
                .await
        );
        l1.set_ready();
        assert!(
            !l1.fill("c", Bytes::from_static(b"v"), None, id(1), while_unready)
                .await,
            "a read issued while unready never fills"
        );
        l1.prove_delivery(Instant::now());
        assert!(!l1.fill("b", Bytes::from_static(b"v"), None, id(1), t).await);
        assert!(
            l1.get("a").await.is_some(),
            "survives a gap without a flush"
        );
        l1.flush(FlushReason::LogTrimmed);
        assert!(l1.get("a").await.is_none());
    }

    #[tokio::test]
    async fn a_hit_needs_a_proof_younger_than_the_bound() {
        let l1 = L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_millis(100),
            Arc::new(Stats::default()),
        );
        l1.set_ready();
        let t = l1.ticket();
        assert!(l1.fill("k", Bytes::from_static(b"v"), None, id(1), t).await);
        assert!(
            l1.get("k").await.is_none(),
            "ready without any proof: no hit"
        );
        l1.prove_delivery(Instant::now());
        assert!(l1.get("k").await.is_some());
        // A proof from before the bound is not enough.
        let old = L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_millis(100),
            Arc::new(Stats::default()),
        );
        old.set_ready();
        let t = old.ticket();
        assert!(
            old.fill("k", Bytes::from_static(b"v"), None, id(1), t)
                .await
        );
        old.prove_delivery(Instant::now());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(old.get("k").await.is_none(), "proof older than the bound");
        old.prove_delivery(Instant::now());
        assert!(old.get("k").await.is_some());
        old.set_unready();
        old.set_ready();
        assert!(
            old.get("k").await.is_none(),
            "loss of trust drops the proof"
        );
    }

    #[tokio::test]
    async fn a_bucket_loses_trust_and_is_flushed_alone() {
        let l1 = L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Stats::default()),
        )
        .with_buckets(8);
        l1.set_ready();
        l1.prove_delivery(Instant::now());
        let (a, b) = (l1.a_key_of_group(1), l1.a_key_of_group(5));
        let t = l1.ticket();
        assert!(l1.fill(&a, Bytes::from_static(b"a"), None, id(1), t).await);
        assert!(l1.fill(&b, Bytes::from_static(b"b"), None, id(1), t).await);

        // Bucket 1's shard is lost: only its keys go to L2.
        l1.set_unready_group(1);
        assert!(l1.get(&a).await.is_none());
        assert!(l1.get(&b).await.is_some());
        assert!(!l1.is_ready() && !l1.is_trusted());
        l1.set_ready_group(1);
        assert!(l1.get(&a).await.is_none(), "ready again, but no proof yet");
        l1.prove_delivery_group(1, Instant::now());
        assert!(
            l1.get(&a).await.is_some(),
            "a gap without a flush keeps entries"
        );

        // Bucket 5's shard was replaced: its keys are flushed, bucket 1's stay,
        // and a read issued before the flush does not fill.
        let before = l1.ticket();
        l1.flush_group(5, FlushReason::RedisIdentity);
        assert!(l1.get(&b).await.is_none());
        assert!(l1.get(&a).await.is_some());
        assert!(
            !l1.fill(&b, Bytes::from_static(b"old"), None, id(1), before)
                .await
        );
        let after = l1.ticket();
        assert!(
            l1.fill(&b, Bytes::from_static(b"new"), None, id(2), after)
                .await
        );
        assert_eq!(l1.get(&b).await.unwrap().value, Bytes::from_static(b"new"));
    }
}
