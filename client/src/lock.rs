//! Locks with fencing tokens: `lock.acquire`, `lock.extend`, `lock.release`,
//! and [`LockGuard`], which holds a lock by extending it in the background and
//! releases it when dropped.
//!
//! A lock is a lease, not a mutex: a holder that pauses (GC, a stopped VM, a
//! slow disk) past its TTL loses it without knowing. Each acquisition carries a
//! `fence`, strictly increasing per lock name across the fleet; pass it to the
//! resource you protect and have it refuse writes with a fence older than the
//! newest it has seen. [`LockGuard::is_lost`] says when an extension failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::Result;
use crate::proto::{LockAcquireResult, LockExtendResult, LockReleaseResult, Op};

/// The answer to [`Client::lock_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockAcquired {
    pub acquired: bool,
    pub token: Option<String>,
    pub fence: Option<u64>,
    pub ttl: Duration,
    /// Not acquired: how long the current holder's lock has left.
    pub retry_after: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// `lock.acquire`: takes lock `name` for `ttl` if it is free, waiting up to
    /// `wait` for the holder to release it or let it expire.
    pub async fn lock_acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<LockAcquired> {
        let r: LockAcquireResult = self
            .call(Op::LockAcquire {
                name: name.into(),
                ttl_ms: ms(ttl),
                wait_ms: wait.map(ms),
            })
            .await?;
        Ok(LockAcquired {
            acquired: r.acquired,
            token: r.token,
            fence: r.fence,
            ttl: Duration::from_millis(r.ttl_ms),
            retry_after: Duration::from_millis(r.retry_after_ms),
        })
    }

    /// `lock.extend`: the lock lives `ttl` from now; false if `token` no longer
    /// holds it.
    pub async fn lock_extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool> {
        let r: LockExtendResult = self
            .call(Op::LockExtend {
                name: name.into(),
                token: token.into(),
                ttl_ms: ms(ttl),
            })
            .await?;
        Ok(r.extended)
    }

    /// `lock.release`: false if `token` no longer held the lock.
    pub async fn lock_release(&self, name: &str, token: &str) -> Result<bool> {
        let r: LockReleaseResult = self
            .call(Op::LockRelease {
                name: name.into(),
                token: token.into(),
            })
            .await?;
        Ok(r.released)
    }

    /// Takes lock `name` (waiting up to `wait`) and holds it until the guard is
    /// dropped or released: a background task extends it every `ttl / 3`.
    /// `None` when it could not be taken within `wait`.
    pub async fn lock(
        &self,
        name: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<LockGuard>> {
        let r = self.lock_acquire(name, ttl, wait).await?;
        let (Some(token), Some(fence), true) = (r.token, r.fence, r.acquired) else {
            return Ok(None);
        };
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(keep(
            self.clone(),
            name.to_string(),
            token.clone(),
            ttl,
            lost.clone(),
            stopped,
        ));
        Ok(Some(LockGuard {
            client: self.clone(),
            name: name.to_string(),
            token,
            fence,
            lost,
            stop: Some(stop),
            task: Some(task),
        }))
    }
}

/// Extends the lock every `ttl / 3` until told to stop (then releases it) or
/// an extension is refused (then marks it lost).
async fn keep(
    client: Client,
    name: String,
    token: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = &mut stopped => {
                // Dropped or released: give it back now, not at expiry.
                let _ = client.lock_release(&name, &token).await;
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        match client.lock_extend(&name, &token, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A failed call is retried at the next tick; the TTL decides.
            Err(_) => {}
        }
    }
}

/// A held lock. Dropping it releases the lock (in the background).
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: String,
    token: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LockGuard {
    /// The fencing token of this acquisition.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once an extension was refused: another holder may have it now.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock now; false if it had already been lost.
    pub async fn release(mut self) -> Result<bool> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.stop.take();
        self.client.lock_release(&self.name, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
