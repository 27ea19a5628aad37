//! The client's hook to the shared-memory L1: holds the mapped segment of the
//! daemon it is connected to, answers `get` hits from it, and counts them.
//!
//! Attached at connect and at every reconnect (the daemon may be a new
//! process); an attach that fails (an older daemon, `cache.shm_bytes = 0`, a
//! segment refused) leaves the client on the socket, which is always correct.
//! Every lookup that is not a clean hit goes to the socket.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::client::ClientConfig;
use crate::proto::{GetResult, Source};
use crate::shm::{Lookup, View};

/// Counters of a client's shared-memory reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShmStats {
    /// A segment is mapped.
    pub attached: bool,
    /// `get`s answered from shared memory.
    pub hits: u64,
    /// `get`s that asked the socket (not there, or not trusted now).
    pub fallbacks: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Local {
    view: RwLock<Option<View>>,
    hits: AtomicU64,
    fallbacks: AtomicU64,
}

impl Local {
    /// Maps the daemon's segment (replacing any older one), if configured.
    pub(crate) async fn attach(&self, config: &ClientConfig) {
        if !config.shm {
            return;
        }
        let got = tokio::time::timeout(
            config.connect_timeout,
            crate::shm::attach(&config.socket_path, &config.client_name),
        )
        .await;
        let view = match got {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no shared-memory L1; using the socket only");
                None
            }
            Err(_) => {
                tracing::debug!("shm.attach timed out; using the socket only");
                None
            }
        };
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// A hit from shared memory, or `None`: ask the socket.
    pub(crate) fn get(&self, key: &str) -> Option<GetResult> {
        let guard = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let view = guard.as_ref()?;
        match view.get(key.as_bytes()) {
            Lookup::Hit { value, ttl_ms } => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(GetResult {
                    hit: true,
                    value: Some(value),
                    from: Some(Source::L1),
                    ttl_ms,
                    lease: None,
                    wait_ms: None,
                })
            }
            Lookup::Miss | Lookup::Untrusted => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub(crate) fn stats(&self) -> ShmStats {
        ShmStats {
            attached: self
                .view
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
            hits: self.hits.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}
