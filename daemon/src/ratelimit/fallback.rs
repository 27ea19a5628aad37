//! Fail modes when Redis does not answer (`on_unavailable`): `open` allows,
//! `closed` denies, `local` counts this daemon's share (`local.rs`); while Redis is
//! known down, one request per `PROBE_EVERY` tries it and the rest fall back at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_client::proto::{ConcurrentResult, RatelimitDecisionExt};

use crate::config::FailMode;

use super::local::Rule;
use super::policy::Policy;
use super::types::{Numbers, Verdict};
use super::{answer, count, inc, RateLimits};

/// While Redis is known down, at most one request per this interval tries it.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// `closed` fail mode: the retry-after suggested while Redis is unreachable
/// (capped by the policy's window).
pub const CLOSED_RETRY_MS: u64 = 1000;

impl RateLimits {
    /// Whether to skip Redis because it is known down and another request
    /// probed it less than [`PROBE_EVERY`] ago.
    pub(super) fn skip_redis(&self) -> bool {
        if !self.store.is_down() {
            return false;
        }
        let now = self.clock.mono_us();
        let last = self.last_probe_us.load(Ordering::Relaxed);
        let every = PROBE_EVERY.as_micros() as u64;
        if now.saturating_sub(last) < every {
            return true;
        }
        // One caller wins the probe; the others use the fail mode meanwhile.
        self.last_probe_us
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    }

    /// The fail mode's decision while Redis is unreachable.
    pub(super) fn fallback(
        &self,
        p: &Policy,
        key: &str,
        numbers: Numbers,
        cost: u64,
        consume: bool,
    ) -> RatelimitDecisionExt {
        let cap = numbers.capacity(p.algorithm);
        let (v, mode) = match p.config.on_unavailable {
            FailMode::Open => {
                inc(&self.counters.fallback_open);
                let used = if consume { cost } else { 0 };
                (Verdict::allowed(cap, cap.saturating_sub(used), 0), "open")
            }
            FailMode::Closed => {
                inc(&self.counters.fallback_closed);
                let retry = CLOSED_RETRY_MS.min(p.window_ms);
                (Verdict::denied(cap, 0, retry, retry), "closed")
            }
            FailMode::Local => {
                inc(&self.counters.fallback_local);
                let rule = Rule {
                    algorithm: p.algorithm,
                    share: Numbers {
                        limit: p.share(numbers.limit),
                        burst: p.share(numbers.burst),
                    },
                    window_ms: p.window_ms,
                };
                let v = p
                    .local
                    .decide(key, rule, cost, self.clock.local_ms(), consume);
                (v, "local")
            }
        };
        if consume {
            count(p, v.allowed, Some(mode));
            if v.allowed {
                inc(&self.counters.allowed);
            } else {
                inc(&self.counters.denied);
            }
        }
        answer(p, v, Some(mode))
    }

    pub(super) fn lease_fallback(
        &self,
        p: &Policy,
        key: &str,
        limit: u64,
        lease_ms: u64,
    ) -> ConcurrentResult {
        let refused = |retry: u64| ConcurrentResult {
            acquired: false,
            lease: None,
            limit,
            remaining: 0,
            retry_after_ms: retry.max(1),
            lease_ms,
        };
        match p.config.on_unavailable {
            FailMode::Open => {
                inc(&self.counters.fallback_open);
                ConcurrentResult {
                    acquired: true,
                    // Nothing is held anywhere; releasing it is a no-op.
                    lease: Some(format!("local.open.{}", crate::random::random_token(12))),
                    limit,
                    remaining: limit.saturating_sub(1),
                    retry_after_ms: 0,
                    lease_ms,
                }
            }
            FailMode::Closed => {
                inc(&self.counters.fallback_closed);
                refused(CLOSED_RETRY_MS.min(lease_ms))
            }
            FailMode::Local => {
                inc(&self.counters.fallback_local);
                let share = p.share(limit);
                let l = p
                    .local
                    .acquire_lease(key, share, lease_ms, self.clock.local_ms());
                if !l.acquired {
                    return refused(l.retry_after_ms);
                }
                ConcurrentResult {
                    acquired: true,
                    lease: l.token,
                    limit: share,
                    remaining: l.remaining,
                    retry_after_ms: 0,
                    lease_ms,
                }
            }
        }
    }
}
