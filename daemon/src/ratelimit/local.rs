//! Fail mode `local`: while Redis is unreachable, each daemon limits on its own,
//! allowing its share of the policy (`limit / expected_nodes`, at least 1), so the
//! fleet together stays near the limit without talking to each other.
//!
//! Token bucket and GCRA policies keep a local token bucket with the shared-out
//! rate and burst; the window algorithms keep a local fixed window. Nothing here
//! is merged back into Redis when it returns: the outage's local counts are
//! forgotten, which errs on the side of the limit Redis already enforces.
//!
//! Bounded: an outage can meet any number of keys, so the state lives in moka
//! caches of `ratelimit.local_max_entries` keys that evict the least recently
//! used (a forgotten key starts again with its full share).

use std::sync::Mutex;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::config::Algorithm;

use super::types::Numbers;
use super::types::Verdict;

#[derive(Debug, Clone, Copy)]
enum State {
    /// `units` (1/window token) in the bucket at `at_ms`.
    Bucket { units: u64, at_ms: u64 },
    /// `used` in the window starting at `start_ms`.
    Window { start_ms: u64, used: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: State,
    /// After this, the state is the same as no state (purged).
    expires_ms: u64,
}

/// One policy's local fallback state.
#[derive(Debug)]
pub struct LocalLimits {
    /// Serialises read-modify-write of one policy's local state (an outage
    /// path; contention does not matter, exactness does).
    guard: Mutex<()>,
    slots: Cache<String, Slot>,
    /// Concurrency policies: key -> (lease token, expiry ms).
    leases: Cache<String, Vec<(String, u64)>>,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits::new(100_000)
    }
}

/// What a local decision is made against.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub algorithm: Algorithm,
    /// This daemon's share of the key's numbers.
    pub share: Numbers,
    pub window_ms: u64,
}

/// A lease taken locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    pub acquired: bool,
    pub token: Option<String>,
    pub remaining: u64,
    pub retry_after_ms: u64,
}

impl LocalLimits {
    /// State for at most `max_keys` keys (and as many with leases).
    pub fn new(max_keys: u64) -> LocalLimits {
        LocalLimits {
            guard: Mutex::new(()),
            slots: Cache::builder()
                .max_capacity(max_keys)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            leases: Cache::builder()
                .max_capacity(max_keys)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides one request of `cost` against `rule` at `now_ms` (the daemon's
    /// local clock). `consume` false: a peek.
    pub fn decide(&self, key: &str, rule: Rule, cost: u64, now_ms: u64, consume: bool) -> Verdict {
        let Rule {
            algorithm,
            share,
            window_ms,
        } = rule;
        let _guard = self.lock();
        let existing = self
            .slots
            .get(key)
            .filter(|s| now_ms < s.expires_ms)
            .map(|s| s.state);
        match algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra => {
                let cap = u128::from(share.burst) * u128::from(window_ms);
                let rate = u128::from(share.limit.max(1));
                let mut units = match existing {
                    Some(State::Bucket { units, at_ms }) => u128::from(units)
                        .saturating_add(u128::from(now_ms.saturating_sub(at_ms)) * rate)
                        .min(cap),
                    _ => cap,
                };
                let need = u128::from(cost) * u128::from(window_ms);
                let full_in = |u: u128| to_u64((cap - u.min(cap)).div_ceil(rate));
                let left = |u: u128| to_u64(u / u128::from(window_ms.max(1)));
                if need > cap {
                    // Larger than this daemon's whole share: never passes locally.
                    return Verdict::denied(share.burst, left(units), full_in(units), window_ms);
                }
                if units < need {
                    let wait = to_u64((need - units).div_ceil(rate));
                    return Verdict::denied(share.burst, left(units), full_in(units), wait);
                }
                if consume {
                    units -= need;
                    self.slots.insert(
                        key.to_string(),
                        Slot {
                            state: State::Bucket {
                                units: to_u64(units),
                                at_ms: now_ms,
                            },
                            expires_ms: now_ms.saturating_add(full_in(units)),
                        },
                    );
                }
                Verdict::allowed(share.burst, left(units), full_in(units))
            }
            _ => {
                let w = window_ms.max(1);
                let start = now_ms - now_ms % w;
                let used = match existing {
                    Some(State::Window { start_ms, used }) if start_ms == start => used,
                    _ => 0,
                };
                let limit = share.limit;
                let reset = |u: u64| if u == 0 { 0 } else { start + w - now_ms };
                if cost > limit {
                    return Verdict::denied(limit, limit.saturating_sub(used), reset(used), w);
                }
                if used + cost > limit {
                    return Verdict::denied(limit, limit - used, reset(used), start + w - now_ms);
                }
                let used = if consume {
                    self.slots.insert(
                        key.to_string(),
                        Slot {
                            state: State::Window {
                                start_ms: start,
                                used: used + cost,
                            },
                            expires_ms: start + w,
                        },
                    );
                    used + cost
                } else {
                    used
                };
                Verdict::allowed(limit, limit - used, reset(used))
            }
        }
    }

    /// Takes a local lease of a concurrency policy (`limit` = this daemon's share).
    pub fn acquire_lease(&self, key: &str, limit: u64, lease_ms: u64, now_ms: u64) -> LocalLease {
        let _guard = self.lock();
        let mut held = self.leases.get(key).unwrap_or_default();
        held.retain(|(_, exp)| *exp > now_ms);
        let n = held.len() as u64;
        if n >= limit {
            let oldest = held.iter().map(|(_, e)| *e).min().unwrap_or(now_ms + 1);
            return LocalLease {
                acquired: false,
                token: None,
                remaining: 0,
                retry_after_ms: oldest.saturating_sub(now_ms).max(1),
            };
        }
        // Local leases are told apart from Redis ones by the `local.` prefix
        // (Redis lease tokens are base64url, which has no '.').
        let token = format!("local.{}", crate::random::random_token(16));
        held.push((token.clone(), now_ms.saturating_add(lease_ms)));
        self.leases.insert(key.to_string(), held);
        LocalLease {
            acquired: true,
            token: Some(token),
            remaining: limit - n - 1,
            retry_after_ms: 0,
        }
    }

    /// Gives back a local lease; false if unknown or expired.
    pub fn release_lease(&self, key: &str, token: &str, now_ms: u64) -> bool {
        let _guard = self.lock();
        let Some(mut held) = self.leases.get(key) else {
            return false;
        };
        let before = held.len();
        let mut live = false;
        held.retain(|(t, exp)| {
            if t == token {
                live = *exp > now_ms;
                false
            } else {
                true
            }
        });
        if held.is_empty() {
            self.leases.invalidate(key);
        } else {
            self.leases.insert(key.to_string(), held);
        }
        before != 0 && live
    }

    /// Forgets `key`'s local state (a reset).
    pub fn remove(&self, key: &str) {
        let _guard = self.lock();
        self.slots.invalidate(key);
        self.leases.invalidate(key);
    }

    /// Drops state that no longer matters.
    pub fn purge(&self, now_ms: u64) {
        let _guard = self.lock();
        for (k, s) in self.slots.iter() {
            if s.expires_ms <= now_ms {
                self.slots.invalidate(k.as_str());
            }
        }
        for (k, v) in self.leases.iter() {
            let live: Vec<_> = v.iter().filter(|(_, e)| *e > now_ms).cloned().collect();
            if live.is_empty() {
                self.leases.invalidate(k.as_str());
            } else if live.len() != v.len() {
                self.leases.insert(k.as_ref().clone(), live);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.run_pending_tasks();
        self.leases.run_pending_tasks();
        usize::try_from(self.slots.entry_count() + self.leases.entry_count()).unwrap_or(usize::MAX)
    }
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(limit: u64, burst: u64) -> Numbers {
        Numbers { limit, burst }
    }

    fn rule(algorithm: Algorithm, share: Numbers) -> Rule {
        Rule {
            algorithm,
            share,
            window_ms: 1000,
        }
    }

    #[test]
    fn local_window_allows_the_share() {
        let l = LocalLimits::default();
        let share = n(3, 3);
        let t = 10_500;
        for i in 0..3 {
            let v = l.decide("k", rule(Algorithm::FixedWindow, share), 1, t, true);
            assert!(v.allowed, "request {i}");
        }
        let v = l.decide("k", rule(Algorithm::FixedWindow, share), 1, t, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 500);
        // A peek consumes nothing.
        assert!(
            !l.decide("k", rule(Algorithm::FixedWindow, share), 1, t, false)
                .allowed
        );
        assert!(
            l.decide("k", rule(Algorithm::FixedWindow, share), 1, 11_000, true)
                .allowed
        );
        l.purge(12_000);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn local_bucket_refills_at_the_share_rate() {
        let l = LocalLimits::default();
        // 2 per 1000 ms, burst 2: one token every 500 ms.
        let share = n(2, 2);
        assert!(
            l.decide("k", rule(Algorithm::TokenBucket, share), 2, 0, true)
                .allowed
        );
        let v = l.decide("k", rule(Algorithm::TokenBucket, share), 1, 0, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 500);
        assert_eq!(v.reset_after_ms, 1000);
        assert!(
            l.decide("k", rule(Algorithm::Gcra, share), 1, 500, true)
                .allowed
        );
        // Cost above the local share can never pass here.
        assert!(
            !l.decide("x", rule(Algorithm::TokenBucket, share), 3, 0, true)
                .allowed
        );
    }

    #[test]
    fn local_leases() {
        let l = LocalLimits::default();
        let a = l.acquire_lease("k", 2, 100, 0);
        let b = l.acquire_lease("k", 2, 100, 0);
        assert!(a.acquired && b.acquired);
        assert_eq!(b.remaining, 0);
        let c = l.acquire_lease("k", 2, 100, 10);
        assert!(!c.acquired);
        assert_eq!(c.retry_after_ms, 90);
        assert!(l.release_lease("k", a.token.as_deref().unwrap(), 20));
        assert!(!l.release_lease("k", a.token.as_deref().unwrap(), 20));
        assert!(l.acquire_lease("k", 2, 100, 20).acquired);
        // Expired leases free their slot.
        assert!(l.acquire_lease("k", 2, 100, 150).acquired);
    }
}
