//! The concurrency limiter: `ratelimit.acquire_concurrent` takes an expiring
//! lease, `ratelimit.release` gives it back (scripts `rl_concurrency.lua`,
//! `rl_release.lua`).

use shoal_client::proto::ConcurrentResult;

use crate::store::StoreError;

use super::policy::Policy;
use super::types::{RatelimitError, Verdict};
use super::{inc, RateLimits};

impl RateLimits {
    /// `ratelimit.acquire_concurrent`: takes one in-flight slot as a lease.
    pub async fn acquire_concurrent(
        &self,
        policy: &str,
        key: &str,
        lease_ms: Option<u64>,
    ) -> Result<ConcurrentResult, RatelimitError> {
        let p = self.concurrency_policy(policy, "ratelimit.acquire_concurrent")?;
        let limit = p.numbers(key).limit;
        let lease_ms = lease_ms.unwrap_or(p.window_ms);
        let token = crate::random::random_token(16);
        let result = match self
            .leases(p, key, "acquire", limit, lease_ms, &token)
            .await
        {
            Ok(v) => ConcurrentResult {
                acquired: v.allowed,
                lease: v.allowed.then_some(token),
                limit,
                remaining: v.remaining,
                retry_after_ms: if v.allowed { 0 } else { v.retry_after_ms },
                lease_ms,
            },
            Err(e) if e.is_retryable() => self.lease_fallback(p, key, limit, lease_ms),
            Err(e) => return Err(e.into()),
        };
        if result.acquired {
            inc(&self.counters.concurrent_acquired);
        } else {
            inc(&self.counters.concurrent_refused);
        }
        Ok(result)
    }

    /// `ratelimit.release`: gives a lease back; false if it had expired or was
    /// already released.
    pub async fn release(
        &self,
        policy: &str,
        key: &str,
        lease: &str,
    ) -> Result<bool, RatelimitError> {
        let p = self.concurrency_policy(policy, "ratelimit.release")?;
        let released = if lease.starts_with("local.") {
            p.local.release_lease(key, lease, self.clock.local_ms())
        } else {
            let mut inv = self.scripts.release.prepare_invoke();
            inv.key(p.state_key(key))
                .arg(lease)
                .arg(self.clock.script_arg());
            inc(&self.counters.redis_calls);
            let n: i64 = self.store.invoke_script(&inv).await?;
            n == 1
        };
        if released {
            inc(&self.counters.concurrent_released);
        }
        Ok(released)
    }

    /// Runs the concurrency script (`mode` "acquire" or "peek").
    pub(super) async fn leases(
        &self,
        p: &Policy,
        key: &str,
        mode: &str,
        limit: u64,
        lease_ms: u64,
        token: &str,
    ) -> Result<Verdict, StoreError> {
        if self.skip_redis() {
            return Err(StoreError::Unavailable(
                "redis is down (probing in the background)".into(),
            ));
        }
        let mut inv = self.scripts.concurrency.prepare_invoke();
        inv.key(p.state_key(key))
            .arg(mode)
            .arg(limit)
            .arg(lease_ms)
            .arg(token)
            .arg(self.clock.script_arg());
        inc(&self.counters.redis_calls);
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        Verdict::from_reply(&reply)
    }
}
