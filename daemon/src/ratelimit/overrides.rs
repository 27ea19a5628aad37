//! Runtime overrides of a key's numbers, kept in Redis (`rl_override.lua`):
//! `ratelimit.set_override` / `clear_override`, and the background refresh that
//! loads every policy's overrides when their version moves.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::store::StoreError;

use super::policy::Policy;
use super::types::{Numbers, RatelimitError};
use super::{inc, RateLimits};

impl RateLimits {
    /// `ratelimit.set_override`: stores a runtime override of `key` in Redis;
    /// this daemon applies it at once, the others at their next refresh.
    pub async fn set_override(
        &self,
        policy: &str,
        key: &str,
        limit: u64,
        burst: Option<u64>,
    ) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        let numbers = Numbers::new(limit, burst).ok_or_else(|| {
            RatelimitError::BadRequest("`limit` and `burst` must be at least 1".into())
        })?;
        if !numbers.fits(p.window_ms) {
            return Err(RatelimitError::BadRequest(format!(
                "`limit` (and `burst`) times the window of `{}` ({} ms) must stay below 2^53",
                p.name, p.window_ms
            )));
        }
        let existed = self
            .write_override(p, key, Some(&numbers.to_stored()))
            .await?;
        p.set_runtime(key, Some(numbers));
        p.deny.remove(key);
        Ok(existed)
    }

    /// `ratelimit.clear_override`: removes a runtime override; true if one existed.
    pub async fn clear_override(&self, policy: &str, key: &str) -> Result<bool, RatelimitError> {
        let p = self.policy(policy)?;
        let existed = self.write_override(p, key, None).await?;
        p.set_runtime(key, None);
        p.deny.remove(key);
        Ok(existed)
    }

    pub(super) async fn write_override(
        &self,
        p: &Policy,
        key: &str,
        value: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.set_override.prepare_invoke();
        inv.key(&p.overrides_key);
        match value {
            Some(v) => inv.arg("set").arg(key).arg(v),
            None => inv.arg("clear").arg(key).arg(""),
        };
        let reply: Vec<i64> = self.store.invoke_script(&inv).await?;
        match reply.as_slice() {
            [existed, _version] => Ok(*existed == 1),
            _ => Err(StoreError::Redis(
                "rl_override returned an unexpected shape".into(),
            )),
        }
    }

    /// Loads every policy's runtime overrides whose version changed.
    pub(super) async fn refresh_overrides(&self) -> Result<(), StoreError> {
        let first = !self.loaded.load(Ordering::Relaxed);
        for p in self.policies.values() {
            let version: Option<i64> = self
                .store
                .cmd(redis::cmd("HGET").arg(&p.overrides_key).arg(""))
                .await?;
            let known = *p.loaded_version.lock().unwrap_or_else(|e| e.into_inner());
            if !first && version == known {
                continue;
            }
            let raw: HashMap<Vec<u8>, Vec<u8>> = self
                .store
                .cmd(redis::cmd("HGETALL").arg(&p.overrides_key))
                .await?;
            let mut all = HashMap::with_capacity(raw.len());
            for (k, v) in raw {
                if k.is_empty() {
                    continue; // the version field
                }
                let parsed = String::from_utf8(k).ok().and_then(|k| {
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(Numbers::parse_stored)
                        .filter(|n| n.fits(p.window_ms))
                        .map(|n| (k, n))
                });
                match parsed {
                    Some((k, n)) => {
                        all.insert(k, n);
                    }
                    None => tracing::warn!(
                        policy = %p.name,
                        "ignoring a malformed runtime override in redis"
                    ),
                }
            }
            p.replace_runtime(all);
            *p.loaded_version.lock().unwrap_or_else(|e| e.into_inner()) = version;
            // A limit may have been raised: cached denials may no longer hold.
            p.deny.clear();
            inc(&self.counters.override_loads);
        }
        Ok(())
    }
}
