//! The local deny cache: once Redis said a key is denied until T, this daemon
//! answers that key (for the same cost) itself until T, without a Redis call.
//!
//! Why it is safe: a denial stays true until T whatever else happens in the
//! fleet — other daemons only add consumption, which moves T later, never
//! earlier. Only a reset or an override change can free the key sooner; this
//! daemon's own resets and overrides clear its entries at once, and an override
//! changed elsewhere clears the policy's entries at the next refresh, and so does
//! a reset made through another daemon (it moves the policy's version).
//!
//! Times are on the daemon's local clock (µs), measured when the answer arrived,
//! so the local T is never earlier than Redis's: a client told "retry after R"
//! by this cache and waiting exactly R is not denied for being early.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// Denials remembered per key (one per cost; most keys only ever see cost 1).
const COSTS_PER_KEY: usize = 4;

/// (policy id, key).
type Slot = (u32, Arc<str>);

/// The one bounded store behind every policy's cache: `ratelimit.deny_cache_entries`
/// keys in all, least recently used evicted first when full (a fresh denial is
/// always kept; an old one may go, and its key then asks Redis again).
#[derive(Debug)]
pub struct DenyBudget {
    cache: Cache<Slot, Vec<Entry>>,
    max: usize,
    next_policy: AtomicU32,
}

impl DenyBudget {
    pub fn new(max: usize) -> Arc<DenyBudget> {
        Arc::new(DenyBudget {
            cache: Cache::builder()
                .max_capacity(max as u64)
                .eviction_policy(EvictionPolicy::lru())
                .support_invalidation_closures()
                .build(),
            max,
            next_policy: AtomicU32::new(0),
        })
    }

    /// Keys held (after pending evictions are applied).
    pub fn len(&self) -> usize {
        self.cache.run_pending_tasks();
        usize::try_from(self.cache.entry_count()).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    cost: u64,
    until_us: u64,
    reset_at_us: u64,
    limit: u64,
    remaining: u64,
    /// The policy's clear count when it was inserted: a later clear voids it.
    cleared: u64,
}

/// A denial answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDenial {
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
}

/// One policy's deny cache (a view of the shared [`DenyBudget`]).
#[derive(Debug)]
pub struct DenyCache {
    budget: Arc<DenyBudget>,
    policy: u32,
    /// Clears so far. Lookups answer only entries inserted since the latest:
    /// moka's `invalidate_entries_if` frees memory but can leave a matching
    /// entry readable for a while (the `race` test below shows it).
    cleared: AtomicU64,
}

fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

impl DenyCache {
    /// A cache with its own budget (tests).
    #[cfg(test)]
    pub fn new(max: usize) -> DenyCache {
        DenyCache::with_budget(DenyBudget::new(max))
    }

    pub fn with_budget(budget: Arc<DenyBudget>) -> DenyCache {
        let policy = budget.next_policy.fetch_add(1, Ordering::Relaxed);
        DenyCache {
            budget,
            policy,
            cleared: AtomicU64::new(0),
        }
    }

    fn slot(&self, key: &str) -> Slot {
        (self.policy, Arc::from(key))
    }

    /// The cached denial of `key` for `cost`, if it still holds at `now_us`.
    /// Only the same cost is answered: a different cost has a different T.
    pub fn lookup(&self, key: &str, cost: u64, now_us: u64) -> Option<CachedDenial> {
        if self.budget.max == 0 {
            return None;
        }
        let slot = self.slot(key);
        let entries = self.budget.cache.get(&slot)?;
        if entries.iter().all(|e| now_us >= e.until_us) {
            self.budget.cache.invalidate(&slot);
            return None;
        }
        let cleared = self.cleared.load(Ordering::SeqCst);
        let e = *entries
            .iter()
            .find(|e| e.cost == cost && now_us < e.until_us && e.cleared == cleared)?;
        Some(CachedDenial {
            limit: e.limit,
            remaining: e.remaining,
            reset_after_ms: ceil_ms(e.reset_at_us.saturating_sub(now_us)),
            retry_after_ms: ceil_ms(e.until_us - now_us),
        })
    }

    /// Records that `key` is denied for `cost` until `d.retry_after_ms` after
    /// `now_us` (the moment Redis's answer arrived).
    pub fn insert(&self, key: &str, cost: u64, now_us: u64, d: CachedDenial) {
        if self.budget.max == 0 || d.retry_after_ms == 0 {
            return;
        }
        let entry = Entry {
            cost,
            until_us: now_us.saturating_add(d.retry_after_ms.saturating_mul(1000)),
            reset_at_us: now_us.saturating_add(d.reset_after_ms.saturating_mul(1000)),
            limit: d.limit,
            remaining: d.remaining,
            cleared: self.cleared.load(Ordering::SeqCst),
        };
        let slot = self.slot(key);
        let mut entries = self.budget.cache.get(&slot).unwrap_or_default();
        entries.retain(|e| e.cost != cost && e.until_us > now_us && e.cleared == entry.cleared);
        if entries.len() >= COSTS_PER_KEY {
            // Keep the denials that last longest.
            entries.sort_by_key(|e| std::cmp::Reverse(e.until_us));
            entries.truncate(COSTS_PER_KEY - 1);
        }
        entries.push(entry);
        self.budget.cache.insert(slot, entries);
    }

    /// Forgets `key` (reset or override through this daemon).
    pub fn remove(&self, key: &str) {
        self.budget.cache.invalidate(&self.slot(key));
    }

    /// Forgets every key (an override of this policy changed elsewhere).
    pub fn clear(&self) {
        self.cleared.fetch_add(1, Ordering::SeqCst);
        let policy = self.policy;
        // Closures are registered only when a policy has entries to drop.
        if self.budget.cache.iter().any(|(k, _)| k.0 == policy) {
            let _ = self
                .budget
                .cache
                .invalidate_entries_if(move |k, _| k.0 == policy);
        }
    }

    /// Drops expired entries.
    pub fn purge(&self, now_us: u64) {
        let policy = self.policy;
        for (k, es) in self.budget.cache.iter() {
            if k.0 == policy && es.iter().all(|e| e.until_us <= now_us) {
                self.budget.cache.invalidate(k.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn denial(retry_after_ms: u64, reset_after_ms: u64) -> CachedDenial {
        CachedDenial {
            limit: 5,
            remaining: 0,
            reset_after_ms,
            retry_after_ms,
        }
    }

    #[test]
    fn answers_until_t_with_rounded_up_retry() {
        let c = DenyCache::new(10);
        c.insert("k", 1, 1_000_000, denial(250, 900));
        let d = c.lookup("k", 1, 1_000_500).unwrap();
        // 249.5 ms left: rounded up.
        assert_eq!(d.retry_after_ms, 250);
        assert_eq!(d.reset_after_ms, 900);
        assert_eq!(c.lookup("k", 1, 1_249_999).unwrap().retry_after_ms, 1);
        assert_eq!(c.lookup("k", 2, 1_100_000), None, "other costs go to Redis");
        // Another cost's denial is kept beside the first.
        c.insert("k", 2, 1_000_000, denial(400, 900));
        assert_eq!(c.lookup("k", 2, 1_100_000).unwrap().retry_after_ms, 300);
        assert_eq!(c.lookup("k", 1, 1_100_000).unwrap().retry_after_ms, 150);
        assert_eq!(c.lookup("k", 1, 1_250_000), None, "expired at T");
        assert_eq!(c.lookup("k", 2, 1_400_000), None);
        assert_eq!(c.budget.len(), 0);
    }

    #[test]
    fn bounded_by_evicting_the_least_recently_used() {
        let c = DenyCache::new(2);
        c.insert("a", 1, 0, denial(100, 100));
        c.insert("b", 1, 0, denial(100, 100));
        c.insert("c", 1, 0, denial(100, 100));
        assert!(c.budget.len() <= 2);
        assert!(c.lookup("c", 1, 10).is_some(), "the newest is kept");
        // Purging expired entries makes room.
        c.purge(200_000);
        assert_eq!(c.budget.len(), 0);
        c.insert("c", 1, 200_000, denial(100, 100));
        assert!(c.lookup("c", 1, 200_001).is_some());
        c.remove("c");
        assert!(c.lookup("c", 1, 200_001).is_none());
        c.insert("d", 1, 200_000, denial(100, 100));
        let other = DenyCache::with_budget(c.budget.clone());
        other.insert("d", 1, 200_000, denial(100, 100));
        c.clear();
        assert!(c.lookup("d", 1, 200_001).is_none());
        assert!(other.lookup("d", 1, 200_001).is_some(), "only this policy");
        let off = DenyCache::new(0);
        off.insert("a", 1, 0, denial(100, 100));
        assert!(off.lookup("a", 1, 1).is_none());
    }
}

#[cfg(test)]
mod race {
    //! A clear racing with inserts: once `clear` returned, no lookup answers a
    //! denial inserted before it began.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    #[test]
    fn no_denial_from_before_a_clear_is_answered() {
        let budget = DenyBudget::new(100_000);
        let cache = Arc::new(DenyCache::with_budget(budget.clone()));
        let other = DenyCache::with_budget(budget);
        let inserted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let d = CachedDenial {
            limit: 5,
            remaining: 0,
            reset_after_ms: 60_000,
            retry_after_ms: 60_000,
        };
        let writer = {
            let (cache, inserted, stop) = (cache.clone(), inserted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    cache.insert(&format!("k{i}"), 1, 1_000, d);
                    inserted.store(i, Ordering::SeqCst);
                }
            })
        };
        let started = std::time::Instant::now();
        let (mut clears, mut answered) = (0u64, 0u64);
        while started.elapsed() < std::time::Duration::from_secs(2) {
            // Another policy's entry keeps the cache from looking empty.
            other.insert("x", 1, 1_000, d);
            let last = inserted.load(Ordering::SeqCst);
            cache.clear();
            clears += 1;
            for k in last.saturating_sub(50)..=last {
                if k > 0 && cache.lookup(&format!("k{k}"), 1, 2_000).is_some() {
                    answered += 1;
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert_eq!(
            answered, 0,
            "denials from before a clear answered ({clears} clears)"
        );
    }
}
