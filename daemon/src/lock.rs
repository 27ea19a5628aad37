//! Locks with fencing tokens: `lock.acquire`, `lock.extend`, `lock.release`.
//!
//! A lock is a Redis string holding the holder's random token, expiring on
//! Redis's clock (`SET NX PX`); extend and release check the token inside the
//! script, so only the holder can do either. Each acquisition also takes the
//! next value of a per-name counter that never expires: the **fence**, strictly
//! increasing across the fleet, which a protected resource uses to refuse a
//! paused holder's late write. One script per op (`lua/lock_*.lua`).
//!
//! Locks have no fail mode: without Redis nobody can be told who holds what,
//! so every Redis trouble is answered `unavailable`.

use std::time::{Duration, Instant};

use redis::Script;
use shoal_client::proto::{
    encode_ok, ErrorCode, Frame, LockAcquireResult, LockExtendResult, LockReleaseResult, Op,
};

use crate::error::OpError;
use crate::store::{Store, StoreError};

/// Longest a `lock.acquire` waits for the lock (a longer `wait_ms` is cut to it).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between two tries while waiting.
const POLL: Duration = Duration::from_millis(20);

/// The lock service of one daemon.
#[derive(Debug)]
pub struct Locks {
    store: Store,
    prefix: String,
    acquire: Script,
    extend: Script,
    release: Script,
}

impl Locks {
    pub fn new(store: Store, prefix: &str) -> Locks {
        Locks {
            store,
            prefix: prefix.to_string(),
            acquire: Script::new(include_str!("../../lua/lock_acquire.lua")),
            extend: Script::new(include_str!("../../lua/lock_extend.lua")),
            release: Script::new(include_str!("../../lua/lock_release.lua")),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}lk{{{name}}}", self.prefix)
    }

    fn fence_key(&self, name: &str) -> String {
        format!("{}lkf{{{name}}}", self.prefix)
    }

    /// Executes a `lock.*` op.
    pub async fn handle(&self, id: u64, op: Op, max_frame: usize) -> Result<Frame, OpError> {
        match op {
            Op::LockAcquire {
                name,
                ttl_ms,
                wait_ms,
            } => {
                let wait = Duration::from_millis(wait_ms.unwrap_or(0)).min(MAX_WAIT);
                let r = self.acquire(&name, ttl_ms, wait).await?;
                Ok(encode_ok(id, &r, max_frame))
            }
            Op::LockExtend {
                name,
                token,
                ttl_ms,
            } => {
                let mut inv = self.extend.prepare_invoke();
                inv.key(self.key(&name)).arg(&token).arg(ttl_ms);
                let n: i64 = self.store.invoke_durable(&inv).await?;
                Ok(encode_ok(
                    id,
                    &LockExtendResult { extended: n == 1 },
                    max_frame,
                ))
            }
            Op::LockRelease { name, token } => {
                let mut inv = self.release.prepare_invoke();
                inv.key(self.key(&name)).arg(&token);
                let n: i64 = self.store.invoke_durable(&inv).await?;
                Ok(encode_ok(
                    id,
                    &LockReleaseResult { released: n == 1 },
                    max_frame,
                ))
            }
            other => Err(OpError::new(
                ErrorCode::Internal,
                format!("`{}` is not a lock op", other.name()),
            )),
        }
    }

    /// Tries until acquired or `wait` has passed.
    async fn acquire(
        &self,
        name: &str,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<LockAcquireResult, StoreError> {
        let started = Instant::now();
        let token = crate::random::random_token(16);
        loop {
            let mut inv = self.acquire.prepare_invoke();
            inv.key(self.key(name))
                .key(self.fence_key(name))
                .arg(&token)
                .arg(ttl_ms);
            let reply: Vec<i64> = self.store.invoke_durable(&inv).await?;
            let [got, fence, left] = <[i64; 3]>::try_from(reply).map_err(|_| {
                StoreError::Redis("lock_acquire returned an unexpected shape".into())
            })?;
            if got == 1 {
                return Ok(LockAcquireResult {
                    acquired: true,
                    token: Some(token),
                    fence: Some(u64::try_from(fence).unwrap_or(0)),
                    ttl_ms,
                    retry_after_ms: 0,
                });
            }
            let left_ms = u64::try_from(left).unwrap_or(1).max(1);
            let remaining = wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Ok(LockAcquireResult {
                    acquired: false,
                    token: None,
                    fence: None,
                    ttl_ms: 0,
                    retry_after_ms: left_ms,
                });
            }
            // Polling: a release is not announced (the holder's lock may also
            // just expire), so look again soon, never later than its expiry.
            let pause = POLL.min(Duration::from_millis(left_ms)).min(remaining);
            tokio::time::sleep(pause).await;
        }
    }
}
