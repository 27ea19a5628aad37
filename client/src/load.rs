//! `get_or_load`: cache-aside with one loader for the whole fleet, through fill leases.
//!
//! A plain "get, on miss load and set" lets every process that misses a hot key hit
//! the database at once, and lets a slow loader overwrite a newer value written
//! after an invalidation. Leases fix both: on a miss the daemon hands exactly one
//! caller fleet-wide a lease, tells the others how long to wait, and accepts the
//! fill only while that lease is still held.
//!
//! The cache is an optimisation, never a dependency: when the daemon or Redis is
//! unavailable (any retryable error), `get_or_load` runs the loader and returns its
//! value, so an outage degrades to database load rather than to errors.

use std::future::Future;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;

use crate::client::{Client, SetOptions};
use crate::error::Error;
use crate::proto;

/// Longest single sleep while another caller fills the key: the daemon's `wait_ms`
/// is a hint, and re-reading soon after the fill lands keeps the tail short.
const MAX_WAIT_ROUND: Duration = Duration::from_millis(50);

/// Why [`Client::get_or_load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    /// The cache failed in a way falling back to the loader cannot fix (a bad
    /// request, a cached value that does not decode as the requested type).
    #[error(transparent)]
    Cache(Error),
    /// The loader failed.
    #[error("loader failed: {0}")]
    Load(E),
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what failed.
    pub fn into_load(self) -> Option<E> {
        match self {
            LoadError::Load(e) => Some(e),
            LoadError::Cache(_) => None,
        }
    }
}

impl Client {
    /// The value of `key`; on a miss, loaded with `loader`, stored for `ttl`
    /// (`None`: the daemon's default) and returned.
    ///
    /// Across the fleet, one caller at a time runs the loader for a key: the others
    /// wait for its fill (up to [`ClientConfig::lease_wait_max`](crate::ClientConfig),
    /// default 1 s) and then read it. After that wait they run the loader
    /// themselves and return its value without storing it, since the lease holder
    /// will.
    ///
    /// If the cache fails with a retryable error (daemon unreachable, Redis
    /// `unavailable`, timeout), the loader runs and its value is returned: a cache
    /// outage costs database load, not errors. A fill that fails or is refused
    /// (stale lease) still returns the loaded value. Non-retryable cache errors,
    /// including a cached value that does not decode as `T`, are
    /// [`LoadError::Cache`].
    ///
    /// ```no_run
    /// # async fn demo(client: shoal_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// # async fn query_db(id: u64) -> Result<String, std::io::Error> { Ok(String::new()) }
    /// use std::time::Duration;
    /// let name: String = client
    ///     .get_or_load("user:42:name", Some(Duration::from_secs(300)), || query_db(42))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_or_load_with(
            key,
            SetOptions {
                ttl,
                ..SetOptions::default()
            },
            loader,
        )
        .await
    }

    /// [`get_or_load`](Self::get_or_load) with tags on the stored value.
    /// `opts.lease` is ignored: the lease comes from the daemon.
    pub async fn get_or_load_with<T, E, F, Fut>(
        &self,
        key: &str,
        opts: SetOptions,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let give_up_waiting = Instant::now() + self.config().lease_wait_max;
        loop {
            let r = match self.get_full(key, true).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "cache unavailable, loading directly");
                    return loader().await.map_err(LoadError::Load);
                }
                Err(e) => return Err(LoadError::Cache(e)),
            };
            if r.hit {
                let bytes = r.value.unwrap_or_default();
                return proto::from_value(&bytes).map_err(|e| LoadError::Cache(Error::Codec(e)));
            }
            if let Some(lease) = r.lease {
                let value = loader().await.map_err(LoadError::Load)?;
                let bytes =
                    proto::to_value(&value).map_err(|e| LoadError::Cache(Error::Codec(e)))?;
                let fill = SetOptions {
                    lease: Some(lease),
                    ..opts
                };
                match self.set_with(key, bytes, fill).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!("fill refused: the lease was invalidated"),
                    // Other callers stop waiting after lease_wait_max; the value we
                    // hold is good, so the failed fill costs only a later miss.
                    Err(e) if e.is_retryable() => tracing::debug!(error = %e, "fill failed"),
                    Err(e) => tracing::warn!(error = %e, "fill failed"),
                }
                return Ok(value);
            }
            let now = Instant::now();
            let Some(wait_ms) = r.wait_ms.filter(|_| now < give_up_waiting) else {
                // Either we waited long enough for someone else's fill, or the
                // daemon gave neither a lease nor a wait (it should not): load
                // without storing, since a plain set would cancel the holder's lease.
                return loader().await.map_err(LoadError::Load);
            };
            let nap = Duration::from_millis(wait_ms)
                .clamp(Duration::from_millis(1), MAX_WAIT_ROUND)
                .min(give_up_waiting - now);
            tokio::time::sleep(nap).await;
        }
    }
}
