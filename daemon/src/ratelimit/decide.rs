//! Decisions: `ratelimit.check`, `peek`, `reset`, `penalty`/`reward` and
//! `reserve`, each one script call on Redis's clock, with the local deny cache in
//! front and the fail mode behind (`fallback.rs`) when Redis does not answer.

use shoal_client::proto::{RatelimitDecisionExt, ReserveResult};

use crate::config::Algorithm;
use crate::store::StoreError;

use super::policy::Policy;
use super::scripts::Mode;
use super::types::{Numbers, RatelimitError, Verdict};
use super::{algorithm_name, answer, check_cost, count, inc, RateLimits};

/// `ratelimit.reserve` books at most this many windows ahead unless the policy
/// sets `max_reserve_ahead`.
pub const RESERVE_AHEAD_WINDOWS: u64 = 3;

impl RateLimits {
    /// `ratelimit.check`: decide one request of `cost` and consume it if allowed.
    pub async fn check(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let p = self.rate_policy(policy, "ratelimit.check")?;
        let numbers = p.numbers(key);
        check_cost(p, numbers, cost)?;
        inc(&self.counters.checks);
        if let Some(d) = p.deny.lookup(key, cost, self.clock.local_us()) {
            inc(&self.counters.denied_local);
            inc(&self.counters.denied);
            count(p, false, None);
            return Ok(answer(p, d.into(), None));
        }
        if p.config.block.is_some() {
            match self.blocked(p, key).await {
                Ok(Some(ms)) => {
                    let cap = numbers.capacity(p.algorithm);
                    let v = Verdict::denied(cap, 0, ms, ms);
                    count(p, false, None);
                    inc(&self.counters.denied);
                    p.deny.insert(key, cost, self.clock.local_us(), v.into());
                    return Ok(answer(p, v, None));
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() => return Ok(self.fallback(p, key, numbers, cost, true)),
                Err(e) => return Err(e.into()),
            }
        }
        match self.decide(p, key, Mode::Check, cost, numbers, 0).await {
            Ok(mut v) => {
                if !v.allowed {
                    if let Some(ms) = self.block(p, key).await? {
                        v = Verdict::denied(v.limit, v.remaining, v.reset_after_ms.max(ms), ms);
                    }
                }
                count(p, v.allowed, None);
                if v.allowed {
                    inc(&self.counters.allowed);
                } else {
                    inc(&self.counters.denied);
                    p.deny.insert(key, cost, self.clock.local_us(), v.into());
                }
                Ok(answer(p, v, None))
            }
            Err(e) if e.is_retryable() => Ok(self.fallback(p, key, numbers, cost, true)),
            Err(e) => Err(e.into()),
        }
    }

    /// `ratelimit.peek`: what a `check` of cost 1 would answer, consuming nothing.
    pub async fn peek(
        &self,
        policy: &str,
        key: &str,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let p = self.policy(policy)?;
        let numbers = p.numbers(key);
        let result = if p.algorithm == Algorithm::Concurrency {
            self.leases(p, key, "peek", numbers.limit, 1, "").await
        } else {
            self.decide(p, key, Mode::Peek, 1, numbers, 0).await
        };
        match result {
            Ok(v) => Ok(answer(p, v, None)),
            Err(e) if e.is_retryable() && p.algorithm != Algorithm::Concurrency => {
                Ok(self.fallback(p, key, numbers, 1, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lockout key of `key` (same hash tag as its state).
    pub(super) fn block_key(p: &Policy, key: &str) -> String {
        format!("{}:b", p.state_key(key))
    }

    /// Block policies: the lockout left on `key`, if any (ms).
    pub(super) async fn blocked(&self, p: &Policy, key: &str) -> Result<Option<u64>, StoreError> {
        let left: i64 = self
            .store
            .cmd(redis::cmd("PTTL").arg(Self::block_key(p, key)))
            .await?;
        Ok(u64::try_from(left).ok().filter(|ms| *ms > 0))
    }

    /// Block policies: `key` just went over its limit: lock it out fleet-wide
    /// for `block` (an existing lockout is not extended). Returns what is left.
    pub(super) async fn block(&self, p: &Policy, key: &str) -> Result<Option<u64>, RatelimitError> {
        let Some(block) = p.config.block else {
            return Ok(None);
        };
        let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let bk = Self::block_key(p, key);
        let _: Option<String> = self
            .store
            .cmd(
                redis::cmd("SET")
                    .arg(&bk)
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .arg("NX"),
            )
            .await?;
        Ok(self.blocked(p, key).await?.or(Some(ms)))
    }

    /// `ratelimit.reset`: forgets the key's state; true when there was some.
    pub async fn reset(&self, policy: &str, key: &str) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        p.deny.remove(key);
        p.local.remove(key);
        let state = p.state_key(key);
        let mut del = redis::cmd("DEL");
        del.arg(&state);
        if p.algorithm == Algorithm::SlidingLog {
            // The companion key shares the hash tag, so one DEL stays in one slot.
            del.arg(format!("{state}:n"));
        }
        if p.config.block.is_some() {
            // A reset lifts the lockout too.
            del.arg(Self::block_key(p, key));
        }
        let n: u64 = self.store.cmd(&del).await?;
        // The other daemons may hold a cached denial of this key (for a daily
        // quota, until midnight): moving the policy's version makes each drop
        // its denials at its next refresh, as for an override change.
        let mut inv = self.scripts.set_override.prepare_invoke();
        inv.key(&p.overrides_key).arg("bump").arg("").arg("");
        let _: Vec<i64> = self.store.invoke_script(&inv).await?;
        inc(&self.counters.resets);
        Ok(n > 0)
    }

    /// `ratelimit.penalty` / `ratelimit.reward`: consumes `points` without
    /// asking (the key may go over its limit) or gives them back (never above
    /// full capacity); answers like `peek` after the change. There is no fail
    /// mode: without Redis the points cannot be recorded, so the error is the
    /// answer (`unavailable`, retryable).
    pub async fn adjust(
        &self,
        policy: &str,
        key: &str,
        mode: Mode,
        points: u64,
    ) -> Result<RatelimitDecisionExt, RatelimitError> {
        let op = if mode == Mode::Reward {
            "ratelimit.reward"
        } else {
            "ratelimit.penalty"
        };
        let p = self.rate_policy(policy, op)?;
        let numbers = p.numbers(key);
        // At most one full capacity per call, as for a cost: it keeps the
        // scripts' integer arithmetic exact (a bigger penalty is several calls).
        let cap = numbers.capacity(p.algorithm);
        if points > cap {
            return Err(RatelimitError::BadRequest(format!(
                "points {points} is above the capacity of policy `{}` ({cap}); \
                 penalize or reward at most {cap} per call",
                p.name
            )));
        }
        let v = self.decide(p, key, mode, points, numbers, 0).await?;
        if mode == Mode::Reward {
            // The points are back: a denial cached here, or on any other
            // daemon, may no longer hold. Moving the policy's version makes
            // every daemon drop its denials at its next refresh, as `reset` does.
            p.deny.remove(key);
            p.local.remove(key);
            let mut inv = self.scripts.set_override.prepare_invoke();
            inv.key(&p.overrides_key).arg("bump").arg("").arg("");
            let _: Vec<i64> = self.store.invoke_script(&inv).await?;
        } else if !v.allowed {
            // Other daemons ask Redis on their next check and see the denial.
            p.deny.insert(key, 1, self.clock.local_us(), v.into());
        }
        Ok(answer(p, v, None))
    }

    /// `ratelimit.reserve`: books the next slot for `cost` if it is at most
    /// `max_wait_ms` away.
    pub async fn reserve(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
        max_wait_ms: u64,
    ) -> Result<ReserveResult, RatelimitError> {
        let p = self.policy(policy)?;
        if matches!(
            p.algorithm,
            Algorithm::SlidingCounter | Algorithm::Concurrency
        ) {
            return Err(RatelimitError::BadRequest(format!(
                "policy `{}` is {}, which cannot book future slots; reservations need \
                 fixed_window, sliding_log, token_bucket or gcra",
                p.name,
                algorithm_name(p.algorithm)
            )));
        }
        let numbers = p.numbers(key);
        check_cost(p, numbers, cost)?;
        // The horizon: however long the caller would wait, nothing is booked
        // further ahead than this, so a loop of reservations cannot fill a key
        // with years of bookings (a sliding log would hold one entry each).
        let horizon_ms = p.config.max_reserve_ahead.map_or_else(
            || p.window_ms.saturating_mul(RESERVE_AHEAD_WINDOWS),
            |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        );
        let max_wait_ms = max_wait_ms.min(horizon_ms);
        let v = match self
            .decide(p, key, Mode::Reserve, cost, numbers, max_wait_ms)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_retryable() => {
                // Without Redis nothing can be booked ahead: the fail mode decides
                // now or never.
                let d = self.fallback(p, key, numbers, cost, true);
                Verdict {
                    allowed: d.allowed,
                    limit: d.limit,
                    remaining: d.remaining,
                    reset_after_ms: d.reset_after_ms,
                    retry_after_ms: d.retry_after_ms,
                }
            }
            Err(e) => return Err(e.into()),
        };
        if v.allowed {
            inc(&self.counters.reservations_granted);
        } else {
            inc(&self.counters.reservations_refused);
        }
        Ok(ReserveResult {
            granted: v.allowed,
            wait_ms: v.retry_after_ms,
        })
    }

    /// Runs the policy's decision script.
    pub(super) async fn decide(
        &self,
        p: &Policy,
        key: &str,
        mode: Mode,
        cost: u64,
        numbers: Numbers,
        max_wait_ms: u64,
    ) -> Result<Verdict, StoreError> {
        if self.skip_redis() {
            return Err(StoreError::Unavailable(
                "redis is down (probing in the background)".into(),
            ));
        }
        let state = p.state_key(key);
        let mut inv = self.scripts.decision(p.algorithm).prepare_invoke();
        inv.key(&state);
        if p.algorithm == Algorithm::SlidingLog {
            // The log's companion (total and sequence), in the same slot.
            inv.key(format!("{state}:n"));
        }
        inv.arg(mode.as_str())
            .arg(cost)
            .arg(numbers.limit)
            .arg(p.window_ms)
            .arg(numbers.burst)
            .arg(max_wait_ms)
            .arg(self.clock.script_arg());
        inc(&self.counters.redis_calls);
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        Verdict::from_reply(&reply)
    }
}
