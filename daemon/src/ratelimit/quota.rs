//! `quota.usage`: the current usage of a policy's keys, found by SCAN (bounded
//! in keys and round trips) and read with peeks, a few in flight at once.

use futures::StreamExt;
use shoal_client::proto::{QuotaKeyUsage, QuotaUsageResult};

use crate::config::Algorithm;

use super::scripts::Mode;
use super::types::RatelimitError;
use super::{algorithm_name, inc, RateLimits};

/// `quota.usage`: keys listed when the caller gives no `max_keys`, and the cap.
pub const QUOTA_DEFAULT_KEYS: u64 = 1000;
pub const QUOTA_MAX_KEYS: u64 = 10_000;
/// `quota.usage`: most SCAN round trips (each `COUNT` [`QUOTA_SCAN_COUNT`]).
pub const QUOTA_MAX_SCANS: usize = 1000;
pub const QUOTA_SCAN_COUNT: u64 = 1000;
/// `quota.usage`: peeks in flight at once.
const QUOTA_PARALLEL: usize = 32;

impl RateLimits {
    /// `quota.usage`: the current usage of a policy's keys (optionally only those
    /// starting with `prefix`), found with a bounded SCAN and read with peeks.
    /// On Redis Cluster this sees the keys of the node the connection reaches.
    pub async fn quota_usage(
        &self,
        policy: &str,
        prefix: Option<&str>,
        max_keys: Option<u64>,
    ) -> Result<QuotaUsageResult, RatelimitError> {
        let p = self.policy(policy)?;
        inc(&self.counters.quota_scans);
        let max_keys = max_keys.unwrap_or(QUOTA_DEFAULT_KEYS).min(QUOTA_MAX_KEYS) as usize;
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}{}", p.state_prefix(), prefix.unwrap_or("")))
        );
        let mut found = std::collections::BTreeSet::new();
        // Every primary's keys on a cluster (see `Store::scan_match`).
        let complete = self
            .store
            .scan_match(&pattern, QUOTA_SCAN_COUNT, QUOTA_MAX_SCANS, |raw| {
                // Keys that are not UTF-8 or not this policy's state are not ours.
                if let Ok(k) = String::from_utf8(raw) {
                    if let Some(user) = p.key_of(&k) {
                        found.insert(user.to_string());
                    }
                }
                found.len() <= max_keys
            })
            .await?;
        let mut truncated = !complete;
        if found.len() > max_keys {
            truncated = true;
        }
        let keys: Vec<String> = found.into_iter().take(max_keys).collect();
        let peeks = futures::stream::iter(keys.into_iter().map(|k| async move {
            let numbers = p.numbers(&k);
            let v = if p.algorithm == Algorithm::Concurrency {
                self.leases(p, &k, "peek", numbers.limit, 1, "").await
            } else {
                self.decide(p, &k, Mode::Peek, 1, numbers, 0).await
            };
            v.map(|v| QuotaKeyUsage {
                used: v.limit.saturating_sub(v.remaining),
                limit: v.limit,
                remaining: v.remaining,
                reset_after_ms: v.reset_after_ms,
                key: k,
            })
        }))
        .buffered(QUOTA_PARALLEL)
        .collect::<Vec<_>>()
        .await;
        let keys = peeks.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(QuotaUsageResult {
            policy: p.name.clone(),
            algorithm: algorithm_name(p.algorithm).to_string(),
            limit: p.config.limit,
            window_ms: p.window_ms,
            keys,
            truncated,
        })
    }

    // ---- internals ----
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("shoal:rl.fw{api:"), "shoal:rl.fw{api:");
    }
}
