//! The key that names sessions: `session.token_hash_key` when set, else one
//! random key the fleet agrees on in Redis (proposed by the first daemon, adopted
//! by the rest, re-checked on every reader loop).

use std::sync::Arc;

use crate::store::StoreError;

use super::keys::FleetKey;
use super::{FlushReason, Sessions, TokenHasher};

impl Sessions {
    /// The token hasher, loading the fleet key from Redis if none is configured.
    pub(super) async fn hasher(&self) -> Result<Arc<TokenHasher>, StoreError> {
        let cached = self
            .hasher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|k| k.hasher.clone());
        match cached {
            Some(h) => Ok(h),
            None => self.load_hash_key().await,
        }
    }

    /// Reads (or creates) the fleet key in Redis and adopts it.
    pub(super) async fn load_hash_key(&self) -> Result<Arc<TokenHasher>, StoreError> {
        let key = self.scripts.hash_key(&self.store, &self.cx).await?;
        self.adopt_hash_key(&key)
            .ok_or_else(|| StoreError::Redis("the session hash key in Redis is unusable".into()))
    }

    /// The fleet key this daemon uses, if it manages one through Redis (`""`
    /// when it has none yet); `None` when the key is configured locally.
    pub(super) fn fleet_key_proposal(&self) -> Option<String> {
        if self.key_configured {
            return None;
        }
        let guard = self.hasher.read().unwrap_or_else(|p| p.into_inner());
        Some(
            guard
                .as_ref()
                .map(|k| k.raw.to_string())
                .unwrap_or_default(),
        )
    }

    /// Uses `key` (the fleet's, as Redis holds it) from now on. When it replaces
    /// another key, every session this daemon cached is named differently now:
    /// flush. `None` if the key is unusable.
    pub(super) fn adopt_hash_key(&self, key: &str) -> Option<Arc<TokenHasher>> {
        if self.key_configured {
            return self
                .hasher
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|k| k.hasher.clone());
        }
        let mut guard = self.hasher.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = guard.as_ref().filter(|k| &*k.raw == key) {
            return Some(k.hasher.clone());
        }
        let new = FleetKey::new(key)?;
        let hasher = new.hasher.clone();
        let replaced = guard.replace(new).is_some();
        drop(guard);
        if replaced {
            tracing::warn!(key = %self.cx.keys.hash_key(), "the fleet's session hash key changed; adopting it");
            self.flush(FlushReason::HashKey);
        }
        Some(hasher)
    }
}
