//! The local deny cache: once Redis said a key is denied until T, this daemon
//! answers that key (for the same cost) itself until T, without a Redis call.
//!
//! Why it is safe: a denial stays true until T whatever else happens in the
//! fleet — other daemons only add consumption, which moves T later, never
//! earlier. Only a reset or an override change can free the key sooner; this
//! daemon's own resets and overrides clear its entries at once, and an override
//! changed elsewhere clears the policy's entries at the next refresh. A reset
//! made through another daemon is seen here at T at the latest.
//!
//! Times are on the daemon's local clock (µs), measured when the answer arrived,
//! so the local T is never earlier than Redis's: a client told "retry after R"
//! by this cache and waiting exactly R is not denied for being early.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;
/// Denials remembered per key (one per cost; most keys only ever see cost 1).
const COSTS_PER_KEY: usize = 4;

/// How many keys all policies' caches may hold together.
#[derive(Debug)]
pub struct DenyBudget {
    len: AtomicUsize,
    max: usize,
}

impl DenyBudget {
    pub fn new(max: usize) -> Arc<DenyBudget> {
        Arc::new(DenyBudget {
            len: AtomicUsize::new(0),
            max,
        })
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    cost: u64,
    until_us: u64,
    reset_at_us: u64,
    limit: u64,
    remaining: u64,
}

/// A denial answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDenial {
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
}

/// One policy's deny cache.
#[derive(Debug)]
pub struct DenyCache {
    shards: Vec<Mutex<HashMap<String, Vec<Entry>>>>,
    hasher: RandomState,
    budget: Arc<DenyBudget>,
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
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            budget,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached denial of `key` for `cost`, if it still holds at `now_us`.
    /// Only the same cost is answered: a different cost has a different T.
    pub fn lookup(&self, key: &str, cost: u64, now_us: u64) -> Option<CachedDenial> {
        if self.budget.max == 0 {
            return None;
        }
        let mut shard = self.shard(key);
        let entries = shard.get_mut(key)?;
        entries.retain(|e| now_us < e.until_us);
        if entries.is_empty() {
            shard.remove(key);
            self.budget.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let e = *entries.iter().find(|e| e.cost == cost)?;
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
        };
        let mut shard = self.shard(key);
        if let Some(entries) = shard.get_mut(key) {
            entries.retain(|e| e.cost != cost && e.until_us > now_us);
            if entries.len() >= COSTS_PER_KEY {
                // Keep the denials that last longest.
                entries.sort_by_key(|e| std::cmp::Reverse(e.until_us));
                entries.truncate(COSTS_PER_KEY - 1);
            }
            entries.push(entry);
            return;
        }
        if self.budget.len() >= self.budget.max {
            // Full: skip. The cache is an optimisation (Redis still answers
            // correctly) and the daemon purges expired entries every second.
            return;
        }
        shard.insert(key.to_string(), vec![entry]);
        self.budget.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets `key` (reset or override through this daemon).
    pub fn remove(&self, key: &str) {
        if self.shard(key).remove(key).is_some() {
            self.budget.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets every key (an override of this policy changed elsewhere).
    pub fn clear(&self) {
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            self.budget.len.fetch_sub(s.len(), Ordering::Relaxed);
            s.clear();
        }
    }

    /// Drops expired entries.
    pub fn purge(&self, now_us: u64) {
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.len();
            s.retain(|_, es| {
                es.retain(|e| e.until_us > now_us);
                !es.is_empty()
            });
            self.budget
                .len
                .fetch_sub(before - s.len(), Ordering::Relaxed);
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
    fn bounded_and_clearable() {
        let c = DenyCache::new(2);
        c.insert("a", 1, 0, denial(100, 100));
        c.insert("b", 1, 0, denial(100, 100));
        c.insert("c", 1, 0, denial(100, 100));
        assert_eq!(c.budget.len(), 2);
        assert!(c.lookup("c", 1, 10).is_none());
        // Purging expired entries makes room.
        c.purge(200_000);
        assert_eq!(c.budget.len(), 0);
        c.insert("c", 1, 200_000, denial(100, 100));
        assert!(c.lookup("c", 1, 200_001).is_some());
        c.remove("c");
        assert!(c.lookup("c", 1, 200_001).is_none());
        c.clear();
        assert_eq!(c.budget.len(), 0);
        let off = DenyCache::new(0);
        off.insert("a", 1, 0, denial(100, 100));
        assert!(off.lookup("a", 1, 1).is_none());
    }
}
